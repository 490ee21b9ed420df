"""Loading, step 3: the tokenizer (text -> token ids), as sentence-transformers tokenizes.

The Hugging Face ``tokenizers`` library does the work from ``tokenizer.json``
(or, without one, from ``vocab.txt`` + ``tokenizer_config.json`` as a BERT
WordPiece tokenizer). refimpl adds what sentence-transformers adds around it:
lowercasing when ``do_lower_case`` is set (a Lowercase normalizer in front, as
sentence-transformers 6 installs it), truncation to ``max_seq_length`` counting
the special tokens, and no padding (the fast path packs sequences instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refimpl.batch import Encoded
from refimpl.checks import positive_int
from refimpl.errors import ModelFileError
from refimpl.io import read_json_object


def _lowercases(normalizer: dict | None) -> bool:
    """Does this normalizer (tokenizer.json form) lowercase already?"""
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers", []))
    return False


def _token_name(config: dict, key: str, default: str, config_file: Path) -> str | None:
    """A special token's text from tokenizer_config.json: a string, or transformers 4.x's AddedToken dict."""
    value = config.get(key, default)
    if value is None and key in ("pad_token", "mask_token"):
        return None
    if isinstance(value, dict) and value.get("__type") in (None, "AddedToken"):
        value = value.get("content")
    if not isinstance(value, str):
        raise ModelFileError(
            config_file, f"key '{key}' must be a token string or an AddedToken object, got {config.get(key)!r}"
        )
    return value


def _wordpiece_from_vocab(directory: Path):
    """A BERT WordPiece tokenizer built from vocab.txt and tokenizer_config.json (no tokenizer.json)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab_file = directory / "vocab.txt"
    config_file = directory / "tokenizer_config.json"
    config = read_json_object(config_file, required=False) or {}
    try:
        with open(vocab_file, encoding="utf-8") as handle:  # universal newlines, as transformers reads it
            lines = [line.rstrip("\n") for line in handle]
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(vocab_file, f"cannot be read ({error})") from None
    # transformers' load_vocab numbers tokens by line: a repeated line takes its last line number
    vocab = {token: index for index, token in enumerate(lines)}
    names = {
        key: _token_name(config, key, default, config_file)
        for key, default in (
            ("unk_token", "[UNK]"),
            ("cls_token", "[CLS]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("mask_token", "[MASK]"),
        )
    }
    options = {
        key: config.get(key, default)
        for key, default in (("tokenize_chinese_chars", True), ("strip_accents", None), ("do_lower_case", True))
    }
    for key, value in options.items():
        if value is not None and not isinstance(value, bool):
            raise ModelFileError(config_file, f"key '{key}' must be true, false or null, got {value!r}")
    for key in ("unk_token", "cls_token", "sep_token"):
        if names[key] not in vocab:
            raise ModelFileError(
                vocab_file, f"has no {key} {names[key]!r} (from {config_file.name} or the BERT default)"
            )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=names["unk_token"], max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=options["tokenize_chinese_chars"] is not False,
        strip_accents=options["strip_accents"],
        lowercase=options["do_lower_case"] is not False,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = names["cls_token"], names["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    tokenizer.add_special_tokens([n for n in names.values() if n in vocab])
    return tokenizer


def load_backend(directory: Path):
    """The ``tokenizers.Tokenizer`` of a model directory: tokenizer.json, else vocab.txt."""
    from tokenizers import Tokenizer

    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.exists():
        try:
            return Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # the Rust library raises a bare Exception
            raise ModelFileError(tokenizer_file, f"is not a valid tokenizers file ({error})") from None
    if (directory / "vocab.txt").exists():
        return _wordpiece_from_vocab(directory)
    raise ModelFileError(
        tokenizer_file, "file is missing, and there is no vocab.txt to build a WordPiece tokenizer from"
    )


class TextTokenizer:
    """Turns strings into ``Encoded`` ids the way sentence-transformers' Transformer module does."""

    def __init__(self, backend, *, max_length: int, lowercase: bool, pad_token_id: int):
        from tokenizers import normalizers

        self.backend = backend
        self.max_length = max_length
        existing = backend.normalizer
        spec = json.loads(existing.__getstate__()) if existing is not None else None  # its tokenizer.json form
        if lowercase and not _lowercases(spec):
            steps = [normalizers.Lowercase()] + ([existing] if existing is not None else [])
            backend.normalizer = normalizers.Sequence(steps)
        backend.no_padding()
        # below this, the tokenizers library silently skips truncation altogether
        self.min_length = backend.num_special_tokens_to_add(False) + 1
        self.set_max_length(max_length)
        self._untruncated = None
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
        self.backend.enable_truncation(self.max_length, strategy="longest_first", direction="right")

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
                largest_type = max(largest_type, type_id)
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
        type_ids = np.fromiter((i for e in encodings for i in e.type_ids), np.int64, int(lengths.sum()))
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        return Encoded(input_ids, type_ids, lengths, truncated)

    # characters per token of max_length looked at before a long text is tokenized whole
    CHARS_PER_TOKEN_WINDOW = 16

    def _bounded(self, text: str) -> str:
        """``text``, or a shorter text with the same truncated tokens (long_text.py says how)."""
        window = max(4096, self.CHARS_PER_TOKEN_WINDOW * self.max_length)
        if len(text) <= 2 * window:
            return text
        from refimpl.load.long_text import bounded_text

        untruncated = self._untruncated_tokenizer()
        unk = getattr(untruncated.model, "unk_token", None)
        unk_id = untruncated.token_to_id(unk) if isinstance(unk, str) else None
        return bounded_text(text, untruncated, self.max_length, unk_id, window)

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
