"""The ``SentenceTransformer`` users call: sentence-transformers' constructor, ``encode`` and
attributes, in front of the pipeline (``run/pipeline.py``) that does the work."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from refimpl.batch import Encoded
from refimpl.checks import compute_dtype, cpu_device, streamable_encode_kwargs
from refimpl.engines import DEFAULT_ENGINE, engine_class
from refimpl.load.config import EncoderConfig, PoolingConfig, model_settings, similarity_function_name
from refimpl.load.locate import DEFAULT_MODEL, resolve_model_dir
from refimpl.load.tokenizer import TextTokenizer
from refimpl.run.inputs import as_text_list
from refimpl.run.pipeline import Pipeline, load, warn_truncated
from refimpl.util import PAIRWISE_SIMILARITY, SIMILARITY


class SentenceTransformer:
    """A sentence-transformers model in NumPy: ``sentence_transformers.SentenceTransformer``'s constructor and
    ``encode``, NumPy results. ``dtype="float64"`` computes in float64; ``engine`` is one of ``refimpl.engines``;
    ``compute`` the fast engine's arithmetic: "float32", "int8", "bfloat16" (``engine_info`` names the kernels)."""

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
        engine: str = DEFAULT_ENGINE,
        compute: str = "float32",
        threads: int | None = None,
    ):
        cpu_device(device)
        engine_class(engine)
        self.dtype, self.engine = compute_dtype(dtype), engine
        self.model_dir = resolve_model_dir(
            model_name_or_path,
            revision=revision,
            cache_folder=cache_folder,
            local_files_only=local_files_only,
            token=token,
        )
        self.model_name_or_path = os.fspath(model_name_or_path)
        self._pipeline = load(self.model_dir, dtype=self.dtype, engine=engine, compute=compute)
        settings_file = self.model_dir / "config_sentence_transformers.json"
        self.prompts, self.default_prompt_name, self.similarity_fn_name, self.truncate_dim = model_settings(
            settings_file, prompts, default_prompt_name, similarity_fn_name, truncate_dim
        )
        if threads is not None:
            from refimpl.run.threads import set_threads

            set_threads(threads)

    # --- what the pipeline holds, under the names users and tests reach for ------------------

    @property
    def pipeline(self) -> Pipeline:
        """Transformer -> Pooling [-> Normalize], as modules.json lists them (``refimpl.run.pipeline``)."""
        return self._pipeline

    @property
    def config(self) -> EncoderConfig:
        """The encoder's config.json, parsed."""
        return self._pipeline.transformer.config

    @config.setter
    def config(self, value: EncoderConfig):
        self._pipeline.transformer.config = value

    @property
    def weights(self) -> dict:
        """The encoder's weights, a nested dict under the checkpoint's own names."""
        return self._pipeline.transformer.weights

    @property
    def weights_file(self) -> Path:
        return self._pipeline.transformer.weights_file

    @property
    def pooling_config(self) -> PoolingConfig:
        return self._pipeline.pooling.config

    @property
    def normalize(self) -> bool:
        """Whether modules.json ends with a Normalize module."""
        return self._pipeline.normalize is not None

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """refimpl's tokenizer: sentence-transformers' settings around the ``tokenizers`` backend."""
        return self._pipeline.transformer.tokenizer

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` doing the work (sentence-transformers exposes a transformers tokenizer)."""
        return self.text_tokenizer.backend

    @property
    def engine_info(self) -> dict:
        """What runs the forward pass: the engine and, for the fast engine, its compute mode and kernels."""
        return self._pipeline.transformer.engine().describe()

    @property
    def max_seq_length(self) -> int:
        return self.text_tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int):
        self._pipeline.transformer.set_max_seq_length(value)

    def get_sentence_embedding_dimension(self) -> int:
        dimension = self._pipeline.output_dimension
        return min(dimension, self.truncate_dim) if self.truncate_dim else dimension

    get_embedding_dimension = get_sentence_embedding_dimension

    # --- similarity, as sentence-transformers' model.similarity ------------------------------

    @property
    def similarity_fn_name(self) -> str:
        """ "cosine" (default), "dot", "euclidean" or "manhattan", from config_sentence_transformers.json."""
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str):
        self._similarity_fn_name = similarity_function_name(value)

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """[N, M] scores of every row of embeddings1 against every row of embeddings2."""
        return SIMILARITY[self.similarity_fn_name](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """[N] scores of row i against row i."""
        return PAIRWISE_SIMILARITY[self.similarity_fn_name](embeddings1, embeddings2)

    def __repr__(self):
        c, modes = self.config, "+".join(self.pooling_config.modes)
        return (
            f"SentenceTransformer({str(self.model_dir)!r}, {c.model_type}, {c.num_hidden_layers} layers, dim "
            f"{self.get_sentence_embedding_dimension()}, pooling {modes}{', normalized' if self.normalize else ''}, "
            f"{self.dtype}, engine {self.engine!r})"
        )

    # --- tokenize and forward, as in sentence-transformers ------------------------------------

    def tokenize(self, texts: list[str] | str) -> dict:
        """Padded {input_ids, attention_mask, token_type_ids} arrays [B, T], like ``model.tokenize``."""
        texts, _ = as_text_list(texts)
        return self.text_tokenizer.encode(texts).padded(self.text_tokenizer.pad_token_id)

    def token_count(self, sentences):
        """Tokens of each sentence as the model would tokenize it, special tokens included,
        *before* truncation (compare with ``max_seq_length`` to see what would be cut)."""
        texts, single = as_text_list(sentences)
        counts = self.text_tokenizer.count_tokens(texts)
        return int(counts[0]) if single else counts.tolist()

    def tokenize_batch(self, texts: list[str]) -> Encoded:
        """Token ids of ``texts`` packed without padding (``Encoded``: input_ids, token_type_ids, lengths,
        truncated), cut to ``max_seq_length`` as ``encode`` cuts them."""
        texts, _ = as_text_list(texts)
        return self.text_tokenizer.encode(texts)

    def embed_batch(self, encoded: Encoded, prompt_length: int = 0) -> np.ndarray:
        """[B, D] sentence embeddings of already tokenized sequences (``tokenize_batch``), in their order,
        through the model's modules (Pooling [-> Normalize]); no truncate_dim, normalization or precision."""
        return self._pipeline.embed(encoded, 32, "sentence_embedding", prompt_length)

    def forward(
        self, features: dict, output_hidden_states=False, engine: str | None = None, output_attentions=False
    ) -> dict:
        """Encoder and pooling on a padded batch from ``tokenize``: the features plus ``token_embeddings``
        [B, T, H] and ``sentence_embedding`` [B, D]; ``hidden_states`` (L + 1 arrays [B, T, H], embeddings
        first) and ``attentions`` (L arrays [B, nh, T, T]) as transformers returns them. The fast engine
        skips padding: it leaves zeros there."""
        return self._pipeline.forward(features, output_hidden_states, engine, output_attentions)

    # --- encode ---------------------------------------------------------------------------------

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
        options = dict(locals())  # every argument, by its name
        del options["self"], options["sentences"]
        embeddings, truncated, count = self._encode(sentences, **options)
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
        from refimpl.run.streaming import embed_in_chunks

        def encode_chunk(chunk):
            return self._encode(chunk, batch_size=batch_size, **encode_kwargs)

        streamable_encode_kwargs(encode_kwargs, "from chunk to chunk")
        return embed_in_chunks(encode_chunk, sentences, batch_size, chunk_size, self.max_seq_length)

    def _with_prompt(self, name, kwargs):
        if "prompt" not in kwargs and "prompt_name" not in kwargs and name in self.prompts:
            kwargs = dict(kwargs, prompt_name=name)
        return kwargs

    def _encode(self, sentences, **kwargs):
        """encode, returning also how many of how many inputs were truncated (the callers warn)."""
        from refimpl.run.encode import encode_with_options

        return encode_with_options(self, sentences, **kwargs)
