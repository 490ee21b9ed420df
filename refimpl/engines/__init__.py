"""The engine interface, and the registry of engines: how a batch of token ids becomes token
states and then sentence vectors.

An engine is built once per model from its weights and config, and does three things:

- ``plan(lengths, batch_size)``: which length-sorted sentences share one forward pass;
- ``encode(batch)`` / ``encode_padded(features)``: run the encoder, returning ``TokenStates``;
- ``TokenStates.pool(modes, prompt_length)``: pool the token states into sentence vectors,
  with the pooling code that suits the engine's layout.

Each engine is a folder here, named as users name it:

- ``reference/``: ``forward.py`` on a padded ``[B, T]`` batch, plain NumPy (no numba is
  imported on its path), the equations as transformers writes them;
- ``fast/``: ``encoder.py`` on packed tokens with numba kernels, no padding at all.

Adding an engine is one more folder whose ``__init__.py`` defines a class with this interface
(``base.EngineBase`` holds what they share), and one line in ``ENGINES`` below; the facade
(``model.py``) and the pipeline (``run/pipeline.py``) only see this interface.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

from refimpl.batch import Encoded


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

    def padded_attentions(self) -> list[np.ndarray] | None:
        """L arrays [B, nh, T, T] as transformers returns ``attentions``, when asked for (rows and columns
        of padding: what transformers computes in the reference engine, zeros in an engine that skips padding)."""

    def pool(self, modes, prompt_length: int = 0) -> np.ndarray:
        """[B, len(modes) * H] sentence vectors."""


class Engine(Protocol):
    name: ClassVar[str]

    def describe(self) -> dict:
        """What it runs (engine, compute mode, kernels), for ``model.engine_info``."""

    def plan(self, lengths: np.ndarray, batch_size: int) -> list[slice]:
        """Slices of length-sorted sentences (longest first), one per forward pass."""

    def encode(
        self, batch: Encoded, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> TokenStates:
        """Run the encoder on a batch of packed ids."""

    def encode_padded(
        self, features: dict, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> TokenStates:
        """Run the encoder on a padded {input_ids, attention_mask, token_type_ids} batch of [B, T] arrays."""


# One line per engine: its name (the folder's) and its class, imported only when it is used.
ENGINES = {"fast": "refimpl.engines.fast:FastEngine", "reference": "refimpl.engines.reference:ReferenceEngine"}
DEFAULT_ENGINE = "fast"


def engine_class(name) -> type:
    """The engine registered as ``name``; an unknown name is an error, never a silent default."""
    import importlib

    if name not in ENGINES:
        raise ValueError(f"engine must be one of {tuple(ENGINES)}, got {name!r}")
    module, _, attribute = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
