"""What every engine shares: the weights it is built from, and the index check before any lookup."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from refimpl.load.config import EncoderConfig


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


def weights_dtype(weights: dict) -> np.dtype:
    return weights["embeddings"]["LayerNorm"]["weight"].dtype


class EngineBase:
    """What every engine is built from: the checkpoint's weights, config.json, the padding id, the
    compute mode and the file the weights came from (for caches keyed by it)."""

    name: ClassVar[str]
    compute_modes: ClassVar[tuple[str, ...]] = ("float32",)

    def __init__(self, weights: dict, config: EncoderConfig, pad_token_id: int, compute="float32", weights_file=None):
        if compute not in self.compute_modes:
            raise ValueError(f"the {self.name!r} engine computes in {self.compute_modes}, not {compute!r}")
        self.weights, self.config, self.pad_token_id = weights, config, pad_token_id
        self.compute, self.weights_file = compute, weights_file

    def describe(self) -> dict:
        """What the engine runs, for ``model.engine_info`` and ``refimpl info``."""
        return {"engine": self.name, "compute": self.compute, "dtype": weights_dtype(self.weights).name}
