"""Step 7 of the pipeline: the ``SentenceTransformer`` users call.

It loads the files (files -> config -> weights -> tokenizer), then ``encode``
tokenizes, sorts by length, runs the encoder batch by batch, pools, and puts
the embeddings back in input order, as sentence-transformers' ``encode`` does.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from . import pooling
from .config import EncoderConfig, PoolingConfig, SentenceBertConfig, SentenceTransformerConfig, tokenizer_model_max_length
from .errors import ModelFileError
from .files import DEFAULT_MODEL, PYTORCH_BIN_NAME, SAFETENSORS_NAME, read_modules, resolve_model_dir
from .inputs import as_text_list
from .tokenizer import Encoded, TextTokenizer, load_backend
from .weights import load_weights, read_safetensors

logger = logging.getLogger("refimpl")

ENGINES = ("fast", "reference")
DTYPES = ("float32", "float64")
# The fast engine runs length-sorted sentences in packs of up to this many tokens (a longer
# sentence goes alone), whatever batch_size says: BLAS is 5-20% faster at ~2,000 rows than at the
# ~500 of 32 short sentences (tools/microbench.py tokens), activations stay under ~60 MB for any
# mix of lengths, and results do not depend on it (packed sequences never see each other).
MAX_TOKENS_PER_FORWARD = 2048


def _token_budget_groups(lengths, budget: int) -> list[slice]:
    """Consecutive slices of ``lengths`` holding at most ``budget`` tokens each (at least one item)."""
    groups, start, total = [], 0, 0
    for index, length in enumerate(lengths.tolist()):
        if index > start and total + length > budget:
            groups.append(slice(start, index))
            start, total = index, 0
        total += length
    if start < len(lengths):
        groups.append(slice(start, len(lengths)))
    return groups


def read_state(transformer_dir: Path):
    """The raw tensors of the Transformer module and the file they came from."""
    safetensors_file = transformer_dir / SAFETENSORS_NAME
    if safetensors_file.exists():
        return read_safetensors(safetensors_file), safetensors_file
    bin_file = transformer_dir / PYTORCH_BIN_NAME
    if bin_file.exists():
        from .torch_pickle import read_pytorch_bin

        logger.warning(
            "%s has no %s; reading %s without torch (copied into memory, not mapped). "
            "`refimpl convert %s %s` writes a safetensors file once for fast, mapped loads.",
            transformer_dir, SAFETENSORS_NAME, PYTORCH_BIN_NAME, bin_file, safetensors_file,
        )
        return read_pytorch_bin(bin_file), bin_file
    raise ModelFileError(safetensors_file, f"file is missing (and there is no {PYTORCH_BIN_NAME} either)")


class SentenceTransformer:
    """A sentence-transformers model (BERT or RoBERTa encoder, pooling, optional Normalize) in NumPy.

    Drop-in for the common use of ``sentence_transformers.SentenceTransformer``:
    the same constructor arguments for loading, the same ``encode`` arguments
    and results, as NumPy arrays. ``dtype="float64"`` runs everything in float64;
    ``engine="reference"`` runs the padded, plain-NumPy forward of ``forward.py``.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = DEFAULT_MODEL,
        *,
        device: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        cache_folder: str | os.PathLike | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        truncate_dim: int | None = None,
        dtype: str = "float32",
        engine: str = "fast",
        threads: int | None = None,
    ):
        _check_device(device)
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.dtype = np.dtype(str(dtype))
        self.engine = engine
        self.model_dir = resolve_model_dir(
            model_name_or_path, revision=revision, cache_folder=cache_folder,
            local_files_only=local_files_only, token=token,
        )
        self.model_name_or_path = os.fspath(model_name_or_path)

        modules = read_modules(self.model_dir)
        transformer_dir = modules[0].path
        self.config = EncoderConfig.from_file(transformer_dir / "config.json")
        sbert = SentenceBertConfig.from_file(transformer_dir / "sentence_bert_config.json")
        pooling_file = modules[1].path / "config.json"
        self.pooling_config = PoolingConfig.from_file(pooling_file)
        if self.pooling_config.embedding_dimension != self.config.hidden_size:
            raise ModelFileError(
                pooling_file,
                f"embedding dimension {self.pooling_config.embedding_dimension} does not match "
                f"hidden_size {self.config.hidden_size} in {self.config.path}",
            )
        self.normalize = len(modules) == 3
        st_config = SentenceTransformerConfig.from_file(self.model_dir / "config_sentence_transformers.json")
        self.prompts = dict(st_config.prompts) if prompts is None else dict(prompts)
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else st_config.default_prompt_name
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts {sorted(self.prompts)}")
        self.similarity_fn_name = similarity_fn_name or st_config.similarity_fn_name or "cosine"  # checked by the setter
        self.truncate_dim = _check_truncate_dim(truncate_dim)

        # parsed even when max_seq_length is set, so that a broken file is reported, not ignored
        tokenizer_max_length = tokenizer_model_max_length(transformer_dir / "tokenizer_config.json")
        max_length = sbert.max_seq_length or tokenizer_max_length
        if max_length is None:
            max_length = self.config.max_tokens
        if max_length > self.config.max_tokens:
            logger.warning(
                "max_seq_length %d of %s exceeds the %d tokens its position table holds; truncating to %d",
                max_length, self.model_dir, self.config.max_tokens, self.config.max_tokens,
            )
            max_length = self.config.max_tokens
        backend = load_backend(transformer_dir)
        self._tokenizer = TextTokenizer(
            backend, max_length=max_length, lowercase=sbert.do_lower_case,
            pad_token_id=self.config.pad_token_id,
        )
        if self._tokenizer.vocab_size() > self.config.vocab_size:
            raise ModelFileError(
                transformer_dir / "tokenizer.json",
                f"the tokenizer has {self._tokenizer.vocab_size()} tokens but {self.config.path} says "
                f"vocab_size={self.config.vocab_size}: some ids would have no embedding",
            )
        state, self.weights_file = read_state(transformer_dir)
        self.weights = load_weights(state, self.config, self.weights_file, self.dtype)
        # forward passes take turns: BLAS already uses every core, two at once would only slow both
        self._lock = threading.Lock()
        if threads is not None:
            from .threads import set_threads

            set_threads(threads)

    # --- the attributes sentence-transformers users reach for -------------------------------

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` doing the work (sentence-transformers exposes a transformers tokenizer)."""
        return self._tokenizer.backend

    @property
    def max_seq_length(self) -> int:
        return self._tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > self.config.max_tokens:
            raise ValueError(f"max_seq_length {value} exceeds the {self.config.max_tokens} tokens the position table holds")
        self._tokenizer.set_max_length(value)

    def get_sentence_embedding_dimension(self) -> int:
        dimension = self.pooling_config.output_dimension
        return min(dimension, self.truncate_dim) if self.truncate_dim else dimension

    get_embedding_dimension = get_sentence_embedding_dimension

    # --- similarity, as sentence-transformers' model.similarity ------------------------------

    @property
    def similarity_fn_name(self) -> str:
        """"cosine" (default), "dot", "euclidean" or "manhattan", from config_sentence_transformers.json."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str):
        from .util import SIMILARITY

        value = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum
        if value not in SIMILARITY:
            raise ValueError(f"similarity_fn_name must be one of {sorted(SIMILARITY)}, got {value!r}")
        self._similarity_fn_name = value

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """[N, M] scores of every row of embeddings1 against every row of embeddings2."""
        from .util import SIMILARITY

        return SIMILARITY[self.similarity_fn_name](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """[N] scores of row i against row i."""
        from .util import PAIRWISE_SIMILARITY

        return PAIRWISE_SIMILARITY[self.similarity_fn_name](embeddings1, embeddings2)

    def token_count(self, sentences):
        """Tokens of each sentence as the model would tokenize it, special tokens included,
        *before* truncation (compare with ``max_seq_length`` to see what would be cut)."""
        texts, single = as_text_list(sentences)
        counts = self._tokenizer.count_tokens(texts)
        return int(counts[0]) if single else counts.tolist()

    def __repr__(self):
        return (
            f"SentenceTransformer({str(self.model_dir)!r}, {self.config.model_type}, {self.config.num_hidden_layers} layers, "
            f"dim {self.get_sentence_embedding_dimension()}, pooling {'+'.join(self.pooling_config.modes)}"
            f"{', normalized' if self.normalize else ''}, {self.dtype}, engine {self.engine!r})"
        )

    # --- tokenize and forward, as in sentence-transformers --------------------------------

    def tokenize(self, texts: list[str] | str) -> dict:
        """Padded {input_ids, attention_mask, token_type_ids} arrays [B, T], like ``model.tokenize``."""
        texts, _ = as_text_list(texts)
        return self._tokenizer.encode(texts).padded(self._tokenizer.pad_token_id)

    def forward(self, features: dict, output_hidden_states: bool = False, engine: str | None = None) -> dict:
        """Run the encoder and pooling on a padded batch from ``tokenize``.

        Returns the features plus ``token_embeddings`` [B, T, H], ``sentence_embedding``
        [B, D] and, with ``output_hidden_states``, ``hidden_states``: L + 1 arrays [B, T, H]
        (embeddings first), as transformers' ``output_hidden_states=True`` gives them.
        The fast engine leaves zeros at padded positions; the reference engine computes
        them exactly as transformers does.
        """
        engine = engine or self.engine
        ids = np.asarray(features["input_ids"], np.int64)
        mask = np.asarray(features.get("attention_mask", np.ones_like(ids)), np.int64)
        types = np.asarray(features.get("token_type_ids", np.zeros_like(ids)), np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape or types.shape != ids.shape:
            raise ValueError(f"input_ids, attention_mask and token_type_ids must all be [B, T]; got {ids.shape}, {mask.shape}, {types.shape}")
        self._check_ids(ids, types)
        out = dict(features)
        with self._lock:
            if engine == "reference":
                from . import forward

                tokens, hidden = forward.encoder(ids, mask, types, self.weights, self.config, output_hidden_states)
                sentence = pooling.pool_padded(tokens, mask, self.pooling_config.modes)
            else:
                lengths = mask.sum(axis=1)
                if not all((mask[b, :n] == 1).all() for b, n in enumerate(lengths)):
                    raise ValueError("the fast engine needs right-padded batches (attention_mask 1...1 0...0)")
                real = mask.astype(bool)
                encoded = Encoded(ids[real], types[real], lengths, np.zeros(len(lengths), bool))
                packed_tokens, packed_hidden = self._encode_packed(encoded, output_hidden_states)
                sentence = pooling.pool_packed(packed_tokens, encoded.cu_seqlens, self.pooling_config.modes)
                tokens = _unpack(packed_tokens, real)
                hidden = [_unpack(h, real) for h in packed_hidden] if output_hidden_states else None
        if self.normalize:
            sentence = pooling.normalize(sentence)
        out.update(token_embeddings=tokens, sentence_embedding=sentence)
        if output_hidden_states:
            out["hidden_states"] = hidden
        return out

    def _check_ids(self, ids, types):
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0]
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        if types.size and (types.min() < 0 or types.max() >= self.config.type_vocab_size):
            raise ValueError(f"token type ids must be in [0, {self.config.type_vocab_size})")
        if ids.shape[-1] > self.config.max_tokens:
            raise ValueError(f"{ids.shape[-1]} tokens exceed the {self.config.max_tokens} the position table holds")

    def _encode_packed(self, encoded: Encoded, output_hidden_states=False):
        from . import packed

        return packed.encoder(
            encoded.input_ids, encoded.token_type_ids, encoded.cu_seqlens, self.weights, self.config, output_hidden_states
        )

    # --- encode ---------------------------------------------------------------------------

    def _resolve_prompt(self, prompt, prompt_name):
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return None
        if name not in self.prompts:
            raise ValueError(f"prompt_name {name!r} is not one of this model's prompts: {sorted(self.prompts)}")
        return self.prompts[name]

    def encode_query(self, sentences, **kwargs):
        """``encode`` with the model's "query" prompt when it has one (sentence-transformers 5+)."""
        if "prompt" not in kwargs and "prompt_name" not in kwargs and "query" in self.prompts:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        """``encode`` with the model's "document" prompt when it has one (sentence-transformers 5+)."""
        if "prompt" not in kwargs and "prompt_name" not in kwargs and "document" in self.prompts:
            kwargs["prompt_name"] = "document"
        return self.encode(sentences, **kwargs)

    def embed(self, sentences: Iterable[str], batch_size: int = 32, chunk_size: int | None = None, **encode_kwargs):
        """Embed an iterable of any length lazily: yields one array of up to ``batch_size``
        embeddings at a time, in input order, holding only ``chunk_size`` sentences
        (default 16 batches) in memory. Takes ``encode``'s other arguments except
        int8/uint8 precision, whose ranges would differ from chunk to chunk."""
        from itertools import islice

        if isinstance(sentences, str):
            raise TypeError("embed takes an iterable of sentences; use encode for a single string")
        if encode_kwargs.get("precision", "float32") in ("int8", "uint8"):
            raise ValueError("int8/uint8 ranges come from the whole batch; encode everything, or quantize "
                             "the float embeddings with refimpl.quantization.quantize_embeddings(..., ranges=...)")
        if encode_kwargs.get("output_value", "sentence_embedding") != "sentence_embedding":
            raise ValueError("embed yields sentence embeddings only")
        chunk_size = chunk_size or 16 * batch_size
        iterator, offset, truncated = iter(sentences), 0, 0
        while True:
            chunk = list(islice(iterator, chunk_size))
            if not chunk:
                break
            try:
                embeddings, chunk_truncated, _ = self._encode(chunk, batch_size=batch_size, **encode_kwargs)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{error} (in the chunk of inputs starting at index {offset})") from None
            truncated += chunk_truncated
            for start in range(0, len(chunk), batch_size):
                yield embeddings[start : start + batch_size]
            offset += len(chunk)
        self._warn_truncated(truncated, offset)

    def encode(
        self,
        sentences: str | Iterable[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
    ):
        """Embed sentences: a [N, D] array (float32, or float64 in float64 mode), a [D] array for one string.

        Same arguments and results as sentence-transformers' ``encode``; there is no
        torch, so ``convert_to_tensor=True`` gives the same NumPy array. With
        ``output_value="token_embeddings"`` a list of [T_i, H] arrays, one per input.
        """
        embeddings, truncated, count = self._encode(
            sentences, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size,
            show_progress_bar=show_progress_bar, output_value=output_value, precision=precision,
            convert_to_numpy=convert_to_numpy, convert_to_tensor=convert_to_tensor, device=device,
            normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
        )
        self._warn_truncated(truncated, count)
        return embeddings

    def _encode(
        self, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
        output_value="sentence_embedding", precision="float32", convert_to_numpy=True, convert_to_tensor=False,
        device=None, normalize_embeddings=False, truncate_dim=None,
    ):
        """encode, returning also how many of how many inputs were truncated (the callers warn)."""
        _check_device(device)
        texts, single = as_text_list(sentences)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_value not in ("sentence_embedding", "token_embeddings"):
            raise ValueError(f"output_value must be 'sentence_embedding' or 'token_embeddings', got {output_value!r}")
        from .quantization import check_precision

        check_precision(precision)
        truncate_dim = _check_truncate_dim(truncate_dim) or self.truncate_dim
        prompt = self._resolve_prompt(prompt, prompt_name)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)

        embeddings, truncated = self._embed_all(texts, prompt, batch_size, show_progress_bar, output_value)
        if output_value == "token_embeddings":
            return (embeddings[0] if single else embeddings), truncated, len(texts)
        if truncate_dim:
            embeddings = embeddings[:, :truncate_dim]
        if normalize_embeddings:
            embeddings = pooling.normalize(embeddings)
        if precision != "float32":
            from .quantization import quantize_embeddings

            embeddings = quantize_embeddings(embeddings, precision)
        if single:
            embeddings = embeddings[0]
        elif not convert_to_numpy and not convert_to_tensor:
            embeddings = list(embeddings)
        return embeddings, truncated, len(texts)

    def _embed_all(self, texts, prompt, batch_size, show_progress_bar, output_value):
        prompt_length = 0
        if prompt:
            texts = [prompt + text for text in texts]
            if not self.pooling_config.include_prompt:
                # [CLS] + the prompt's tokens, as sentence-transformers counts them (without the final [SEP])
                prompt_length = len(self._tokenizer.encode([prompt]).input_ids) - 1
        encoded = self._tokenizer.encode(texts)
        order = np.argsort(-encoded.lengths, kind="stable")  # longest first, as sentence-transformers sorts
        if self.engine == "fast":
            # packed sequences never see each other, so the pieces need not follow batch_size:
            # fill each forward pass with up to MAX_TOKENS_PER_FORWARD tokens, where BLAS is fastest
            pieces = _token_budget_groups(encoded.lengths[order], MAX_TOKENS_PER_FORWARD)
        else:
            pieces = [slice(first, first + batch_size) for first in range(0, len(texts), batch_size)]
        results: list = [None] * len(texts)
        if show_progress_bar:
            from tqdm import tqdm

            pieces = tqdm(pieces, desc="Batches")
        for piece in pieces:
            chosen = order[piece]
            for i, value in zip(chosen, self._run_batch(encoded.select(chosen), output_value, prompt_length)):
                results[i] = value
        truncated = int(encoded.truncated.sum())
        if output_value == "token_embeddings":
            return results, truncated
        if not results:
            return np.empty((0, self.pooling_config.output_dimension), self.dtype), truncated
        return np.stack(results), truncated

    def _run_batch(self, batch: Encoded, output_value: str, prompt_length: int = 0):
        """Embeddings of one batch, in batch order: rows of [B, D], or [T_i, H] arrays for token embeddings."""
        with self._lock:
            if self.engine == "reference":
                features = batch.padded(self._tokenizer.pad_token_id)
                from . import forward

                tokens, _ = forward.encoder(
                    features["input_ids"], features["attention_mask"], features["token_type_ids"], self.weights, self.config
                )
                if output_value == "token_embeddings":
                    return [tokens[b, :n] for b, n in enumerate(batch.lengths)]
                sentence = pooling.pool_padded(tokens, features["attention_mask"], self.pooling_config.modes, prompt_length)
            else:
                tokens, _ = self._encode_packed(batch)
                if output_value == "token_embeddings":
                    cu = batch.cu_seqlens
                    return [tokens[cu[b] : cu[b + 1]] for b in range(len(batch.lengths))]
                sentence = pooling.pool_packed(tokens, batch.cu_seqlens, self.pooling_config.modes, prompt_length)
        if self.normalize:
            sentence = pooling.normalize(sentence)
        if not np.isfinite(sentence).all():
            raise FloatingPointError(
                f"the model produced NaN or infinity; {self.weights_file} probably holds non-finite weights"
            )
        return sentence

    def _warn_truncated(self, count: int, total):
        """One warning per encode call (or per embed run) when anything was truncated."""
        if count:
            logger.warning(
                "%d of %d inputs were longer than %d tokens and were truncated to %d tokens "
                "(max_seq_length; special tokens included)",
                count, total, self.max_seq_length, self.max_seq_length,
            )


def _unpack(packed_rows, real_mask):
    """[N, H] rows of real tokens -> [B, T, H] with zeros at padded positions."""
    out = np.zeros(real_mask.shape + packed_rows.shape[1:], packed_rows.dtype)
    out[real_mask] = packed_rows
    return out


def _check_device(device):
    if device is not None and str(device) != "cpu":
        raise ValueError(f"refimpl runs on the CPU only; device={device!r} is not available")


def _check_truncate_dim(truncate_dim):
    if truncate_dim is not None and (
        not isinstance(truncate_dim, (int, np.integer)) or isinstance(truncate_dim, bool) or truncate_dim < 1
    ):
        raise ValueError(f"truncate_dim must be a positive integer or None, got {truncate_dim!r}")
    return truncate_dim
