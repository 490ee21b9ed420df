"""packed.sequence_attention and the per-sequence loop of packed.attention, copied verbatim
(git HEAD b0f88be of /work/main, refimpl/packed.py, now refimpl/engines/fast/encoder.py)."""

import numpy as np

from tests.baseline import kernels


def sequence_attention(q, k, v, start, stop, num_heads, scale, out):
    length, H = stop - start, q.shape[1]
    d = H // num_heads
    qh = q[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)  # [L, H] -> [nh, L, d]
    kh = k[start:stop].reshape(length, num_heads, d).transpose(1, 2, 0)  # [L, H] -> [nh, d, L]
    vh = v[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)  # [L, H] -> [nh, L, d]
    scores = np.matmul(qh, kh)  # [nh, L, L]
    kernels.softmax_rows(scores, scale)
    out[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)[...] = np.matmul(scores, vh)  # -> [L, H]
    return scores


def attention_loop(q, k, v, cu_seqlens, num_heads, scale, out):
    """The loop of packed.attention (without the projections)."""
    for start, stop in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if stop > start:
            sequence_attention(q, k, v, start, stop, num_heads, scale, out)
    return out
