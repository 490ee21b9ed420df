"""The ``SentenceTransformer`` users call: sentence-transformers' constructor, ``encode`` and
attributes, in front of the pipeline (pipeline.py) that does the work."""

from __future__ import annotations

import logging
import os
from typing import Iterable

import numpy as np

from .checks import cpu_device, positive_int, streamable_encode_kwargs
from .config import SentenceTransformerConfig, resolve_prompt
from .engines import DEFAULT_ENGINE, engine_class
from .files import DEFAULT_MODEL, resolve_model_dir
from .inputs import as_text_list
from .batch import Encoded
from .pipeline import finish, load, warn_truncated

logger = logging.getLogger("refimpl")

DTYPES = ("float32", "float64")
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")


class SentenceTransformer:
    """A sentence-transformers model (BERT or RoBERTa encoder, pooling, optional Normalize) in NumPy.

    Drop-in for the common use of ``sentence_transformers.SentenceTransformer``: the same
    constructor arguments for loading, the same ``encode`` arguments and results, as NumPy
    arrays. ``dtype="float64"`` runs everything in float64; ``engine="reference"`` runs the
    padded, plain-NumPy forward of ``forward.py`` (engines.py lists the engines).
    """

    def __init__(
        self, model_name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None,
        prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None, cache_folder: str | os.PathLike | None = None,
        revision: str | None = None, local_files_only: bool = False, token: str | bool | None = None,
        truncate_dim: int | None = None, dtype: str = "float32", engine: str = DEFAULT_ENGINE, threads: int | None = None,
    ):
        cpu_device(device)
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        engine_class(engine)
        self.dtype, self.engine = np.dtype(str(dtype)), engine
        self.model_dir = resolve_model_dir(
            model_name_or_path, revision=revision, cache_folder=cache_folder, local_files_only=local_files_only, token=token,
        )
        self.model_name_or_path = os.fspath(model_name_or_path)
        self._pipeline = load(self.model_dir, dtype=self.dtype, engine=engine)
        self._lock = self._pipeline.lock
        st_config = SentenceTransformerConfig.from_file(self.model_dir / "config_sentence_transformers.json")
        self.prompts = dict(st_config.prompts) if prompts is None else dict(prompts)
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else st_config.default_prompt_name
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts {sorted(self.prompts)}")
        self.similarity_fn_name = similarity_fn_name or st_config.similarity_fn_name or "cosine"  # checked by the setter
        self.truncate_dim = positive_int("truncate_dim", truncate_dim, allow_none=True)
        if threads is not None:
            from .threads import set_threads

            set_threads(threads)

    # --- what the pipeline holds, under the names users and tests reach for ------------------

    config = property(lambda self: self._pipeline.transformer.config,
                      lambda self, value: setattr(self._pipeline.transformer, "config", value))
    weights = property(lambda self: self._pipeline.transformer.weights)
    weights_file = property(lambda self: self._pipeline.transformer.weights_file)
    pooling_config = property(lambda self: self._pipeline.pooling.config)
    normalize = property(lambda self: self._pipeline.normalize is not None)
    _tokenizer = property(lambda self: self._pipeline.transformer.tokenizer)

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` doing the work (sentence-transformers exposes a transformers tokenizer)."""
        return self._tokenizer.backend

    @property
    def max_seq_length(self) -> int:
        return self._tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int):
        value = positive_int("max_seq_length", value)
        if value > self.config.max_tokens:
            raise ValueError(f"max_seq_length {value} exceeds the {self.config.max_tokens} tokens the position table holds")
        self._tokenizer.set_max_length(value)

    def get_sentence_embedding_dimension(self) -> int:
        dimension = self._pipeline.output_dimension
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

    def __repr__(self):
        return (
            f"SentenceTransformer({str(self.model_dir)!r}, {self.config.model_type}, {self.config.num_hidden_layers} layers, "
            f"dim {self.get_sentence_embedding_dimension()}, pooling {'+'.join(self.pooling_config.modes)}"
            f"{', normalized' if self.normalize else ''}, {self.dtype}, engine {self.engine!r})"
        )

    # --- tokenize and forward, as in sentence-transformers ------------------------------------

    def tokenize(self, texts: list[str] | str) -> dict:
        """Padded {input_ids, attention_mask, token_type_ids} arrays [B, T], like ``model.tokenize``."""
        texts, _ = as_text_list(texts)
        return self._tokenizer.encode(texts).padded(self._tokenizer.pad_token_id)

    def token_count(self, sentences):
        """Tokens of each sentence as the model would tokenize it, special tokens included,
        *before* truncation (compare with ``max_seq_length`` to see what would be cut)."""
        texts, single = as_text_list(sentences)
        counts = self._tokenizer.count_tokens(texts)
        return int(counts[0]) if single else counts.tolist()

    def tokenize_batch(self, texts: list[str]) -> "Encoded":
        """Token ids of ``texts`` packed without padding (``Encoded``: input_ids, token_type_ids, lengths,
        truncated), cut to ``max_seq_length`` as ``encode`` cuts them."""
        texts, _ = as_text_list(texts)
        return self._tokenizer.encode(texts)

    def embed_batch(self, encoded: "Encoded", prompt_length: int = 0) -> np.ndarray:
        """[B, D] sentence embeddings of already tokenized sequences (``tokenize_batch``), in their order,
        through the model's modules (Pooling [-> Normalize]); no truncate_dim, normalization or precision."""
        return self._pipeline.embed(encoded, 32, "sentence_embedding", prompt_length)

    def forward(self, features: dict, output_hidden_states=False, engine: str | None = None, output_attentions=False) -> dict:
        """Encoder and pooling on a padded batch from ``tokenize``: the features plus ``token_embeddings``
        [B, T, H] and ``sentence_embedding`` [B, D]; ``hidden_states`` (L + 1 arrays [B, T, H], embeddings
        first) and ``attentions`` as transformers returns them (the reference engine: L arrays [B, nh, T, T];
        the fast engine: per layer, one [nh, L_i, L_i] per sentence). The fast engine leaves zeros at padding."""
        return self._pipeline.forward(features, output_hidden_states, engine, output_attentions)

    # --- encode ---------------------------------------------------------------------------------

    def encode(
        self, sentences: str | Iterable[str], prompt_name: str | None = None, prompt: str | None = None,
        batch_size: int = 32, show_progress_bar: bool | None = None, output_value: str = "sentence_embedding",
        precision: str = "float32", convert_to_numpy: bool = True, convert_to_tensor: bool = False,
        device: str | None = None, normalize_embeddings: bool = False, truncate_dim: int | None = None,
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
        warn_truncated(truncated, count, self.max_seq_length)
        return embeddings

    def encode_query(self, sentences, **kwargs):
        """``encode`` with the model's "query" prompt when it has one (sentence-transformers 5+)."""
        return self.encode(sentences, **self._with_prompt("query", kwargs))

    def encode_document(self, sentences, **kwargs):
        """``encode`` with the model's "document" prompt when it has one (sentence-transformers 5+)."""
        return self.encode(sentences, **self._with_prompt("document", kwargs))

    def embed(self, sentences: Iterable[str], batch_size: int = 32, chunk_size: int | None = None, **encode_kwargs):
        """Embed an iterable of any length lazily: yields one array of up to ``batch_size``
        embeddings at a time, in input order, holding only ``chunk_size`` sentences
        (default 16 batches) in memory. Takes ``encode``'s other arguments except
        int8/uint8 precision, whose ranges would differ from chunk to chunk."""
        from itertools import islice

        if isinstance(sentences, str):
            raise TypeError("embed takes an iterable of sentences; use encode for a single string")
        batch_size = positive_int("batch_size", batch_size)
        chunk_size = positive_int("chunk_size", chunk_size, allow_none=True) or 16 * batch_size
        streamable_encode_kwargs(encode_kwargs, "from chunk to chunk")
        iterator, offset, truncated = iter(sentences), 0, 0
        while chunk := list(islice(iterator, chunk_size)):
            try:
                embeddings, chunk_truncated, _ = self._encode(chunk, batch_size=batch_size, **encode_kwargs)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{error} (in the chunk of inputs starting at index {offset})") from None
            truncated += chunk_truncated
            for start in range(0, len(chunk), batch_size):
                yield embeddings[start : start + batch_size]
            offset += len(chunk)
        warn_truncated(truncated, offset, self.max_seq_length)

    def _with_prompt(self, name, kwargs):
        if "prompt" not in kwargs and "prompt_name" not in kwargs and name in self.prompts:
            kwargs = dict(kwargs, prompt_name=name)
        return kwargs

    def _encode(
        self, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
        output_value="sentence_embedding", precision="float32", convert_to_numpy=True, convert_to_tensor=False,
        device=None, normalize_embeddings=False, truncate_dim=None,
    ):
        """encode, returning also how many of how many inputs were truncated (the callers warn)."""
        from .quantization import check_precision

        cpu_device(device)
        texts, single = as_text_list(sentences)
        batch_size = positive_int("batch_size", batch_size)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        check_precision(precision)
        truncate_dim = positive_int("truncate_dim", truncate_dim, allow_none=True) or self.truncate_dim
        prompt = resolve_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        prompt_length = 0
        if prompt:
            texts = [prompt + text for text in texts]
            if not self.pooling_config.include_prompt:
                # [CLS] + the prompt's tokens, as sentence-transformers counts them (without the final [SEP])
                prompt_length = len(self._tokenizer.encode([prompt]).input_ids) - 1
        encoded = self._tokenizer.encode(texts)
        embeddings = self._pipeline.embed(encoded, batch_size, output_value, prompt_length, show_progress_bar)
        if output_value == "sentence_embedding":
            embeddings = finish(embeddings, truncate_dim, normalize_embeddings, precision)
        if single:
            embeddings = embeddings[0]
        elif output_value == "sentence_embedding" and not convert_to_numpy and not convert_to_tensor:
            embeddings = list(embeddings)
        return embeddings, int(encoded.truncated.sum()), len(texts)
