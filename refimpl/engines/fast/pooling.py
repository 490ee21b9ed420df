"""Pooling on packed tokens [N, H]: the same results as ``engines.pooling.pool_padded``, without padding."""

from __future__ import annotations

import numpy as np

from refimpl.engines.fast.kernels import pooling as kernels
from refimpl.engines.pooling import CLAMP


def pool_packed(x, cu_seqlens, modes, prompt_length=0):
    """Packed tokens [N, H] with sequence offsets [B + 1] -> [B, len(modes) * H]."""
    starts, stops = cu_seqlens[:-1], cu_seqlens[1:]
    lengths = stops - starts
    kept = np.minimum(starts + prompt_length, stops)  # first pooled token of each sequence
    B, H = len(starts), x.shape[1]
    # rows to gather, clipped into range: a sequence with nothing to pool reads row 0, then is zeroed
    rows = np.vstack([x, np.zeros((1, H), x.dtype)])  # a zero row at index N for empty sequences
    outputs = []
    for mode in modes:
        out = np.empty((B, H), x.dtype)
        if mode == "cls":
            # the first token after the prompt; a sentence no longer than its prompt gives its [CLS]
            first = np.where(kept < stops, kept, starts)
            out[:] = rows[np.where(first < stops, first, len(x))]
        elif mode == "lasttoken":
            out[:] = rows[np.where(kept < stops, stops - 1, len(x))]
        elif mode == "max":
            kernels.max_pool_packed(x, kept, stops, out)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            kernels.mean_pool_packed(x, kept, stops, mode == "mean_sqrt_len_tokens", CLAMP, out)
        elif mode == "weightedmean":
            sequence = np.repeat(np.arange(B), lengths)
            positions = np.arange(len(x)) - starts[sequence] + 1  # 1-based position in its sentence
            weights = np.where(positions > (kept - starts)[sequence], positions, 0).astype(x.dtype)
            sums = np.zeros((B, H), x.dtype)
            np.add.at(sums, sequence, x * weights[:, None])
            totals = np.zeros(B, x.dtype)
            np.add.at(totals, sequence, weights)
            out[:] = sums / np.maximum(totals, x.dtype.type(CLAMP))[:, None]
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
        outputs.append(out)
    return np.concatenate(outputs, axis=-1)
