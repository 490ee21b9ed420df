"""The engine interface: how a batch of token ids becomes token states and then sentence vectors.

An engine is built once per model from its weights and config, and does three things:

- ``plan(lengths, batch_size)``: which length-sorted sentences share one forward pass;
- ``encode(batch)`` / ``encode_padded(features)``: run the encoder, returning ``TokenStates``;
- ``TokenStates.pool(modes, prompt_length)``: pool the token states into sentence vectors,
  with the pooling code that suits the engine's layout.

Two engines implement it:

- ``reference``: ``forward.py`` on a padded ``[B, T]`` batch, plain NumPy (no numba is
  imported on its path), the equations as transformers writes them;
- ``fast``: ``packed.py`` on packed tokens with numba kernels, no padding at all.

Another engine (own matrix products, other precisions) is one more class registered in
``ENGINES``; the facade (``model.py``) and the pipeline (``pipeline.py``) only see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from . import pooling
from .batch import MAX_TOKENS_PER_FORWARD, Encoded, fixed_size_groups, token_budget_groups, unpack
from .config import EncoderConfig


class TokenStates(Protocol):
    """The encoder's output for one batch, in the layout of the engine that made it."""

    def sequences(self) -> list[np.ndarray]:
        """One [L_i, H] array of token embeddings per sentence (real tokens only)."""

    def padded(self) -> np.ndarray:
        """[B, T, H] as transformers returns ``last_hidden_state``."""

    def padded_hidden_states(self) -> list[np.ndarray] | None:
        """L + 1 arrays [B, T, H] (embeddings first), when they were asked for."""

    def sequence_attentions(self) -> list[list[np.ndarray]] | None:
        """Per layer, one [nh, L_i, L_i] array of attention probabilities per sentence (real tokens), when asked for."""

    def pool(self, modes, prompt_length: int = 0) -> np.ndarray:
        """[B, len(modes) * H] sentence vectors."""


class Engine(Protocol):
    name: ClassVar[str]

    def plan(self, lengths: np.ndarray, batch_size: int) -> list[slice]:
        """Slices of length-sorted sentences (longest first), one per forward pass."""

    def encode(self, batch: Encoded, output_hidden_states: bool = False, output_attentions: bool = False) -> TokenStates:
        """Run the encoder on a batch of packed ids."""

    def encode_padded(self, features: dict, output_hidden_states: bool = False, output_attentions: bool = False) -> TokenStates:
        """Run the encoder on a padded {input_ids, attention_mask, token_type_ids} batch of [B, T] arrays."""


@dataclass
class PaddedStates:
    tokens: np.ndarray  # [B, T, H]
    attention_mask: np.ndarray  # [B, T]
    hidden_states: list | None
    attentions: list | None = None  # L arrays [B, nh, T, T], padding included, as transformers gives them

    def sequences(self):
        return [self.tokens[b, :n] for b, n in enumerate(self.attention_mask.sum(axis=1))]

    def padded(self):
        return self.tokens

    def padded_hidden_states(self):
        return self.hidden_states

    def sequence_attentions(self):
        if self.attentions is None:
            return None
        real = self.attention_mask.astype(bool)
        return [[layer[b][:, real[b]][:, :, real[b]] for b in range(len(real))] for layer in self.attentions]

    def pool(self, modes, prompt_length=0):
        return pooling.pool_padded(self.tokens, self.attention_mask, modes, prompt_length)


@dataclass
class PackedStates:
    tokens: np.ndarray  # [N, H]
    batch: Encoded
    hidden_states: list | None  # of [N, H]
    attentions: list | None = None  # per layer, one [nh, L, L] per sequence
    real: np.ndarray | None = None  # [B, T] of the padded batch it came from, if any

    def sequence_attentions(self):
        return self.attentions

    def _real(self):
        return self.batch.real_mask() if self.real is None else self.real

    def sequences(self):
        cu = self.batch.cu_seqlens
        return [self.tokens[cu[b] : cu[b + 1]] for b in range(len(self.batch.lengths))]

    def padded(self):  # zeros at padded positions: the fast engine never computes them
        return unpack(self.tokens, self._real())

    def padded_hidden_states(self):
        if self.hidden_states is None:
            return None
        real = self._real()
        return [unpack(h, real) for h in self.hidden_states]

    def pool(self, modes, prompt_length=0):
        return pooling.pool_packed(self.tokens, self.batch.cu_seqlens, modes, prompt_length)


def check_indices(config: EncoderConfig, input_ids: np.ndarray, token_type_ids: np.ndarray, longest: int):
    """The last line of defence before any table lookup: every token id, type id and position
    must have its row (``longest``: the most tokens one sequence has). Vectorised: costs nothing
    next to a forward pass. The kernels never index memory they do not own."""
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)][0]
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {config.vocab_size})")
    if token_type_ids.size and (token_type_ids.min() < 0 or token_type_ids.max() >= config.type_vocab_size):
        bad = token_type_ids[(token_type_ids < 0) | (token_type_ids >= config.type_vocab_size)][0]
        raise ValueError(f"token type id {bad} is outside [0, {config.type_vocab_size})")
    if longest > config.max_tokens:
        raise ValueError(f"a sequence of {longest} tokens exceeds the {config.max_tokens} the position table holds")


class _EngineBase:
    """What every engine is built from: the checkpoint's weights, config.json, the padding id."""

    name: ClassVar[str]

    def __init__(self, weights: dict, config: EncoderConfig, pad_token_id: int):
        self.weights, self.config, self.pad_token_id = weights, config, pad_token_id


class ReferenceEngine(_EngineBase):
    """forward.py on padded batches of ``batch_size`` sentences, as sentence-transformers batches them."""

    name = "reference"

    def plan(self, lengths, batch_size):
        return fixed_size_groups(len(lengths), batch_size)

    def encode(self, batch, output_hidden_states=False, output_attentions=False):
        return self.encode_padded(batch.padded(self.pad_token_id), output_hidden_states, output_attentions)

    def encode_padded(self, features, output_hidden_states=False, output_attentions=False):
        from . import forward

        mask = features["attention_mask"]
        check_indices(self.config, features["input_ids"], features["token_type_ids"], features["input_ids"].shape[-1])
        tokens, hidden, attentions = forward.encoder(
            features["input_ids"], features["token_type_ids"], mask, self.weights, self.config,
            output_hidden_states, output_attentions,
        )
        return PaddedStates(tokens, mask, hidden, attentions)


class PackedEngine(_EngineBase):
    """packed.py on packed tokens: no padding, numba kernels, BLAS products."""

    name = "fast"

    def plan(self, lengths, batch_size):
        # packed sequences never see each other, so a forward pass need not follow batch_size
        return token_budget_groups(lengths, MAX_TOKENS_PER_FORWARD)

    def encode(self, batch, output_hidden_states=False, output_attentions=False):
        from . import packed

        check_indices(self.config, batch.input_ids, batch.token_type_ids, int(batch.lengths.max(initial=0)))
        tokens, hidden, attentions = packed.encoder(
            batch.input_ids, batch.token_type_ids, batch.cu_seqlens, self.weights, self.config,
            output_hidden_states, output_attentions,
        )
        return PackedStates(tokens, batch, hidden, attentions)

    def encode_padded(self, features, output_hidden_states=False, output_attentions=False):
        mask = features["attention_mask"]
        batch = Encoded.from_padded(features["input_ids"], mask, features["token_type_ids"])
        states = self.encode(batch, output_hidden_states, output_attentions)
        states.real = mask.astype(bool)
        return states


ENGINES: dict[str, type] = {engine.name: engine for engine in (PackedEngine, ReferenceEngine)}
DEFAULT_ENGINE = "fast"


def engine_class(name) -> type:
    """The engine registered as ``name``; an unknown name is an error, never a silent default."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {tuple(ENGINES)}, got {name!r}")
    return ENGINES[name]
