"""The modules of a sentence-transformers pipeline, one class per entry of ``modules.json``.

- ``Transformer`` (sentence_transformers.models.Transformer): tokenizer + encoder; its
  directory holds config.json, the tokenizer files and the weights.
- ``Pooling`` (sentence_transformers.models.Pooling): token states -> one vector per sentence.
- ``Normalize`` (sentence_transformers.models.Normalize): each vector scaled to unit length.

Each has ``from_dir(path)`` and ``__call__``; ``pipeline.load`` builds them from modules.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from refimpl.batch import Encoded
from refimpl.checks import check_compute, positive_int
from refimpl.engines import DEFAULT_ENGINE, Engine, TokenStates, engine_class, pooling
from refimpl.engines.base import weights_dtype
from refimpl.errors import ModelFileError
from refimpl.load.config import EncoderConfig, PoolingConfig, check_normalize_config
from refimpl.load.tokenizer import TextTokenizer, load_tokenizer
from refimpl.load.transformer_config import TransformerSettings, warn_half_precision
from refimpl.load.weights import load_weights, read_state, stored_float_dtype

logger = logging.getLogger("refimpl")


def check_tokenizer_fits(tokenizer: TextTokenizer, config: EncoderConfig, tokenizer_file: Path):
    """Every id the tokenizer can produce must have a row in the embedding tables."""
    largest, token, largest_type = tokenizer.largest_ids()
    if largest >= config.vocab_size:
        raise ModelFileError(
            tokenizer_file,
            f"the tokenizer has {tokenizer.vocab_size()} tokens but {config.path} says vocab_size={config.vocab_size}: "
            f"token {token!r} has id {largest}, and ids from {config.vocab_size} on would have no embedding",
        )
    if largest_type >= config.type_vocab_size:
        raise ModelFileError(
            tokenizer_file,
            f"the post-processor gives token type id {largest_type} but {config.path} says "
            f"type_vocab_size={config.type_vocab_size}",
        )


class Transformer:
    """Tokenizer and encoder; runs batches through one of the engines (engines.py)."""

    def __init__(
        self,
        directory: Path,
        config: EncoderConfig,
        tokenizer: TextTokenizer,
        weights: dict,
        weights_file: Path,
        engine: str = DEFAULT_ENGINE,
        compute: str = "float32",
    ):
        engine_class(engine)  # refuse an unknown name, or a mode the engine cannot run, at load
        check_compute(compute, engine, weights_dtype(weights))
        self.directory, self.tokenizer, self.weights, self.weights_file = directory, tokenizer, weights, weights_file
        self.engine_name, self.compute = engine, compute
        self._config = config
        self._engines: dict[str, Engine] = {}
        self.reference_dtype: str | None = None  # the dtype sentence-transformers computes in, when set

    @classmethod
    def from_dir(
        cls, directory: Path, *, dtype=np.float32, engine: str = DEFAULT_ENGINE, compute: str = "float32"
    ) -> Transformer:
        """The module as sentence-transformers 6 loads it: sentence_bert_config.json (or a legacy name),
        config.json with its config_kwargs, the tokenizer files, the weights."""
        sbert = TransformerSettings.from_dir(directory)
        config = sbert.encoder_config(directory)
        tokenizer = load_tokenizer(directory, sbert, config)
        tokenizer_file = directory / ("tokenizer.json" if (directory / "tokenizer.json").exists() else "vocab.txt")
        check_tokenizer_fits(tokenizer, config, tokenizer_file)
        state, weights_file = read_state(directory)
        reference_dtype, source = sbert.compute_dtype(config, stored_float_dtype(state))
        warn_half_precision(reference_dtype, source, np.dtype(dtype).name)
        weights = load_weights(state, config, weights_file, dtype)
        module = cls(directory, config, tokenizer, weights, weights_file, engine, compute)
        module.reference_dtype = reference_dtype  # what sentence-transformers computes in (None: float32)
        return module

    @property
    def config(self) -> EncoderConfig:
        return self._config

    @config.setter
    def config(self, value: EncoderConfig):
        self._config = value
        self._engines.clear()  # engines are built from the config

    @property
    def hidden_size(self) -> int:
        return self._config.hidden_size

    def set_max_seq_length(self, value: int):
        """Cut inputs at ``value`` tokens from now on; never more than the position table holds."""
        value = positive_int("max_seq_length", value)
        if value > self._config.max_tokens:
            raise ValueError(
                f"max_seq_length {value} exceeds the {self._config.max_tokens} tokens the position table holds"
            )
        self.tokenizer.set_max_length(value)

    def engine(self, name: str | None = None) -> Engine:
        """The engine ``name`` (default: the one chosen at load), built on first use and kept. The chosen
        engine computes in the chosen mode; another one asked for by name (a comparison) in float32."""
        name = self.engine_name if name is None else name
        if name not in self._engines:
            compute = self.compute if name == self.engine_name else "float32"
            self._engines[name] = engine_class(name)(
                self.weights, self._config, self.tokenizer.pad_token_id, compute=compute, weights_file=self.weights_file
            )
        return self._engines[name]

    def __call__(self, batch: Encoded, output_hidden_states: bool = False, engine: str | None = None) -> TokenStates:
        return self.engine(engine).encode(batch, output_hidden_states)


class Pooling:
    """Token states -> [B, len(modes) * H], in the modes' configured order."""

    def __init__(self, config: PoolingConfig, path: Path | None = None):
        self.config, self.path = config, path

    @classmethod
    def from_dir(cls, directory: Path) -> Pooling:
        return cls(PoolingConfig.from_file(directory / "config.json"), directory / "config.json")

    @property
    def output_dimension(self) -> int:
        return self.config.output_dimension

    def __call__(self, states: TokenStates, prompt_length: int = 0) -> np.ndarray:
        return states.pool(self.config.modes, prompt_length)


class Normalize:
    """Each row divided by its L2 norm (torch.nn.functional.normalize)."""

    @classmethod
    def from_dir(cls, directory: Path | None = None) -> Normalize:
        if directory is not None:  # usually absent; sentence-transformers reads the input/output names there
            check_normalize_config(directory / "config.json")
        return cls()

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return pooling.normalize(embeddings)
