"""The fast engine: ``encoder.py`` on packed tokens (no padding at all), numba kernels around
the matrix products, sentences grouped into forward passes by a token budget.

Nothing here imports numba: it loads on the first forward pass, not when the model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.batch import Encoded, token_budget_groups, unpack
from refimpl.checks import COMPUTE_MODES
from refimpl.engines.base import EngineBase, check_indices, weights_dtype

# Length-sorted sentences run in packs of up to this many tokens (a longer sentence goes alone),
# whatever batch_size says: the products are faster on many rows than on the few hundred of 32 short
# sentences, but past ~1,000 rows the activations (1,024 x 3,072 float32 = 12 MiB after the FFN's
# first product) no longer fit the last-level cache beside the weights. Results do not depend on it:
# packed sequences never see each other. docs/performance.md gives the measurement
# (python -m tools.microbench pass-size).
MAX_TOKENS_PER_FORWARD = 1024


@dataclass
class PackedStates:
    last_hidden: np.ndarray  # [N, H]
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
        return [self.last_hidden[cu[b] : cu[b + 1]] for b in range(len(self.batch.lengths))]

    def padded(self):  # zeros at padded positions: the fast engine never computes them
        return unpack(self.last_hidden, self._real())

    def padded_hidden_states(self):
        if self.hidden_states is None:
            return None
        real = self._real()
        return [unpack(h, real) for h in self.hidden_states]

    def padded_attentions(self):
        if self.attentions is None:
            return None
        real = self._real()
        B, T = real.shape
        out = []
        for layer in self.attentions:
            heads = layer[0].shape[0] if layer else 0
            padded = np.zeros((B, heads, T, T), layer[0].dtype if layer else np.float32)
            for b, probabilities in enumerate(layer):
                where = np.flatnonzero(real[b])
                padded[b][:, where[:, None], where[None, :]] = probabilities
            out.append(padded)
        return out

    def pool(self, modes, prompt_length=0):
        from refimpl.engines.fast.pooling import pool_packed

        return pool_packed(self.last_hidden, self.batch.cu_seqlens, modes, prompt_length)


class FastEngine(EngineBase):
    name = "fast"
    compute_modes = COMPUTE_MODES

    def __init__(self, weights, config, pad_token_id, compute="float32", weights_file=None):
        super().__init__(weights, config, pad_token_id, compute, weights_file)
        self._packed_layers = None  # the linear layers packed for the kernels, on the first pass

    def kernel_tier(self) -> str:
        """The tier of kernels this engine runs: the best the CPU has, or the one REFIMPL_KERNELS forces.
        float64 (verification) always runs the BLAS path."""
        if weights_dtype(self.weights) != np.float32:
            return "blas"
        from refimpl.engines.fast.kernels.cpu import requested_tier

        return requested_tier()

    def describe(self) -> dict:
        from refimpl.engines.fast.kernels.cpu import describe_tier

        return dict(super().describe(), **describe_tier(self.kernel_tier(), self.compute))

    def packed_layers(self) -> list[dict] | None:
        """Per layer, its linear layers packed for refimpl's kernels (from the cache, or packed now);
        None on the BLAS tier in float32. The biases and everything else are read from the weights."""
        if self._packed_layers is None and not (self.kernel_tier() == "blas" and self.compute == "float32"):
            from refimpl.engines.fast.packed_weights import packed_layers

            self._packed_layers = packed_layers(self.weights, self.compute, self.weights_file)
        return self._packed_layers

    def plan(self, lengths, batch_size):
        # packed sequences never see each other, so a forward pass need not follow batch_size
        return token_budget_groups(lengths, MAX_TOKENS_PER_FORWARD)

    def encode(self, batch, output_hidden_states=False, output_attentions=False, real=None):
        from refimpl.engines.fast import encoder

        check_indices(self.config, batch.input_ids, batch.token_type_ids, int(batch.lengths.max(initial=0)))
        last_hidden, hidden, attentions = encoder.encoder(
            batch.input_ids,
            batch.token_type_ids,
            batch.cu_seqlens,
            self.weights,
            self.config,
            output_hidden_states,
            output_attentions,
            self.packed_layers(),
        )
        return PackedStates(last_hidden, batch, hidden, attentions, real)

    def encode_padded(self, features, output_hidden_states=False, output_attentions=False):
        mask = features["attention_mask"]
        batch = Encoded.from_padded(features["input_ids"], mask, features["token_type_ids"])
        return self.encode(batch, output_hidden_states, output_attentions, real=mask.astype(bool))
