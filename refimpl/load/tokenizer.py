"""Loading, step 3: the tokenizer (text -> token ids), as sentence-transformers 6 tokenizes.

transformers 5 builds the tokenizer from the model's tokenizer files (``tokenizer_settings.py``
reads them, ``tokenizer_build.py`` builds the ``tokenizers`` object); refimpl adds what
sentence-transformers adds around it: lowercasing when ``do_lower_case`` is set (a Lowercase
normalizer in front, as sentence-transformers 6 installs it), truncation to ``max_seq_length``
counting the special tokens on the tokenizer's truncation side, token type ids only when the
tokenizer lists them as an input, and no padding (the fast path packs sequences instead).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from refimpl.batch import Encoded
from refimpl.checks import positive_int
from refimpl.errors import ModelFileError
from refimpl.load.config import EncoderConfig
from refimpl.load.tokenizer_build import build_backend, lowercase_first, special_ids
from refimpl.load.tokenizer_settings import TokenizerSettings, read_tokenizer_settings
from refimpl.load.transformer_config import TransformerSettings

logger = logging.getLogger("refimpl")


def max_seq_length(
    settings: TokenizerSettings, processor_kwargs: dict, sbert: TransformerSettings, config: EncoderConfig
) -> tuple[int, Path]:
    """(max_seq_length, the file it came from), as sentence-transformers 6 sets the tokenizer's
    model_max_length: tokenizer_args' model_max_length, else sentence_bert_config.json's
    max_seq_length, else tokenizer_config.json's model_max_length (or max_len) capped at
    max_position_embeddings, else max_position_embeddings. refimpl never goes past what the position
    table holds (sentence-transformers fails on such inputs): a longer setting is lowered, with a warning."""
    explicit = "model_max_length" in processor_kwargs
    value = settings.model_max_length()
    if explicit and value is not None:
        source = sbert.path
    elif value is not None and not explicit:
        value, source = min(value, config.max_position_embeddings), settings.origins[""]
    else:
        value, source = config.max_position_embeddings, config.path
    if value > config.max_tokens:
        if source != config.path:
            logger.warning(
                "max_seq_length %d of %s exceeds the %d tokens its position table holds; truncating to %d",
                value,
                source,
                config.max_tokens,
                config.max_tokens,
            )
        value, source = config.max_tokens, config.path
    return value, source


def load_tokenizer(directory: Path, sbert: TransformerSettings, config: EncoderConfig) -> TextTokenizer:
    """The Transformer module's tokenizer, with sentence-transformers' settings applied."""
    processor_kwargs = dict(sbert.processor_kwargs)
    if sbert.max_seq_length is not None and "model_max_length" not in processor_kwargs:
        processor_kwargs["model_max_length"] = sbert.max_seq_length  # as sentence-transformers passes it on
    origin = (sbert.path, f"{sbert.label('processor_kwargs')} ")
    settings = read_tokenizer_settings(directory, config, processor_kwargs, origin)
    if settings.side("padding_side", settings.tokenizer_json) == "left" and not config.roberta_positions:
        raise settings.error(
            "padding_side",
            "padding_side 'left' shifts BERT's absolute positions with each batch's padding; refimpl refuses it",
        )
    backend = build_backend(settings, directory)
    if sbert.do_lower_case:
        lowercase_first(backend)
    max_length, source = max_seq_length(settings, processor_kwargs, sbert, config)
    tokenizer_file = directory / ("tokenizer.json" if settings.tokenizer_json is not None else "vocab.txt")
    try:
        return TextTokenizer(
            backend,
            max_length=max_length,
            pad_token_id=config.pad_token_id,
            truncation_side=settings.side("truncation_side", settings.tokenizer_json),
            type_ids=settings.type_ids_used(),
            special_ids=special_ids(backend, settings),
        )
    except ValueError as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(source, f"{error} (with {tokenizer_file.name})") from None


class TextTokenizer:
    """Turns strings into ``Encoded`` ids the way sentence-transformers' Transformer module does."""

    def __init__(
        self,
        backend,
        *,
        max_length: int,
        pad_token_id: int,
        truncation_side: str = "right",
        type_ids: bool = True,
        special_ids=frozenset(),
    ):
        self.backend = backend
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.type_ids = type_ids  # token_type_ids from the post-processor, else zeros
        self.special_ids = frozenset(special_ids)  # transformers' all_special_ids
        backend.no_padding()
        # below this, the tokenizers library silently skips truncation altogether
        self.min_length = backend.num_special_tokens_to_add(False) + 1
        self.set_max_length(max_length)
        self._untruncated = None
        self._cut_rules = None  # long_text.CutRules, False when texts cannot be cut
        pad_token = backend.id_to_token(pad_token_id)
        self.pad_token_id = pad_token_id if pad_token is not None else 0

    def set_max_length(self, max_length: int):
        max_length = positive_int("max_seq_length", max_length)
        if max_length < self.min_length:
            raise ValueError(
                f"max_seq_length {max_length} cannot hold the {self.min_length - 1} special tokens "
                f"this tokenizer adds plus one token; use at least {self.min_length}"
            )
        self.max_length = max_length
        self.backend.enable_truncation(self.max_length, strategy="longest_first", direction=self.truncation_side)

    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def largest_ids(self) -> tuple[int, str, int]:
        """(largest token id, its token, largest token type id) the tokenizer can produce for one text:
        its vocabulary and added tokens, and what its post-processor adds (seen by encoding probes)."""
        vocab = self.backend.get_vocab(with_added_tokens=True)
        token, largest = max(vocab.items(), key=lambda item: item[1], default=("", -1))
        probes = ["", "a"] + ([min(vocab, key=vocab.get)] if vocab else [])
        largest_type = 0
        for encoding in self.backend.encode_batch(probes, add_special_tokens=True):
            for token_id, type_id in zip(encoding.ids, encoding.type_ids):
                if token_id > largest:
                    token, largest = encoding.tokens[encoding.ids.index(token_id)], token_id
                largest_type = max(largest_type, type_id if self.type_ids else 0)
        return largest, token, largest_type

    # tokenizers' Encoding objects take ~2 KB each: convert them to arrays a slice at a time
    SLICE = 4096

    def encode(self, texts: list[str]) -> Encoded:
        """Tokenize with special tokens, truncate; ``texts`` must already be validated strings.

        Outer whitespace is kept, as sentence-transformers 6 keeps it (byte-level BPE tokenizers
        make tokens of it; WordPiece ignores it)."""
        if len(texts) <= self.SLICE:
            return self._encode_slice(texts)
        parts = [self._encode_slice(texts[start : start + self.SLICE]) for start in range(0, len(texts), self.SLICE)]
        return Encoded.concatenate(parts)

    def _encode_slice(self, texts: list[str]) -> Encoded:
        encodings = self.backend.encode_batch([self._bounded(text) for text in texts], add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        input_ids = np.fromiter((i for e in encodings for i in e.ids), np.int64, int(lengths.sum()))
        if self.type_ids:
            type_ids = np.fromiter((i for e in encodings for i in e.type_ids), np.int64, int(lengths.sum()))
        else:
            type_ids = np.zeros(int(lengths.sum()), np.int64)
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        return Encoded(input_ids, type_ids, lengths, truncated)

    # characters per token of max_length looked at before a long text is tokenized whole
    CHARS_PER_TOKEN_WINDOW = 16

    def _bounded(self, text: str) -> str:
        """``text``, or a shorter text with the same truncated tokens (long_text.py says how and when)."""
        window = max(4096, self.CHARS_PER_TOKEN_WINDOW * self.max_length)
        if len(text) <= 2 * window or self.truncation_side != "right":  # left truncation keeps the end
            return text
        from refimpl.load.long_text import CutRules, bounded_text

        untruncated = self._untruncated_tokenizer()
        if self._cut_rules is None:  # worked out once: where this tokenizer lets a text be cut (or nowhere)
            self._cut_rules = CutRules.of(untruncated) or False
        if self._cut_rules is False:
            return text
        return bounded_text(text, untruncated, self.max_length, window, self._cut_rules)

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens as sentence-transformers counts them for include_prompt=False: the
        tokenized prompt (special tokens added, truncated), less one when its last id is a special id."""
        ids = self.encode([prompt]).input_ids
        return len(ids) - (1 if len(ids) and int(ids[-1]) in self.special_ids else 0)

    def _untruncated_tokenizer(self):
        if self._untruncated is None:  # a second tokenizer, so the shared one is never reconfigured
            from tokenizers import Tokenizer

            untruncated = Tokenizer.from_str(self.backend.to_str())
            untruncated.no_truncation()
            self._untruncated = untruncated
        return self._untruncated

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        """Tokens per text before truncation, special tokens included."""
        encodings = self._untruncated_tokenizer().encode_batch(texts, add_special_tokens=True)
        return np.array([len(e.ids) for e in encodings], np.int64)
