"""Numba kernels for everything in the forward pass that is not a matrix product.

Matrix products go to NumPy's BLAS; these kernels do the elementwise and
normalisation work around them in one pass over memory each (bias + GELU,
bias + residual + LayerNorm, embeddings + LayerNorm, attention per sequence,
pooling). Each has a plain NumPy counterpart in ``forward.py`` or
``pooling.py`` and ``tests/test_kernels.py`` checks that both agree.

Conventions:
- Kernels are dtype-generic (float32 or float64) and take their scalar
  constants (``eps``, ``1/n``, the attention scale) as arguments already cast to
  the array's dtype by the caller, so float32 math stays float32.
- Nothing compiles at import: numba compiles each kernel on first call for the
  dtypes it sees and caches the machine code on disk (``cache=True``).
- ``fastmath`` is limited to reassociation and contraction (vectorised sums
  and FMAs); NaN and infinity keep their IEEE meaning.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

FASTMATH = {"reassoc", "contract"}
# float32 constants: exact in float32, and promoted exactly when they meet float64.
_ZERO, _ONE, _NEG_INF = np.float32(0.0), np.float32(1.0), np.float32(-np.inf)

# erf(x) ~= x * P(x^2) / Q(x^2) on |x| <= 4, sign(x) beyond; fitted by tools/fit_erf.py
# (max error 2.1e-8 in float64 arithmetic, 3.7e-7 evaluated in float32).
ERF_CLAMP = 4.0
ERF_P = (
    1.12837897732526860e00, 1.96246290594481482e-01, 5.34668107589260366e-02,
    4.00341680996884209e-03, 2.88017173395975262e-04, 1.97462146269169964e-06,
)
ERF_Q = (
    1.00000000000000000e00, 5.07249913784619477e-01, 1.16475020754098033e-01,
    1.54440171868552821e-02, 1.21626629336364232e-03, 3.74773816329399719e-05,
)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in ERF_P)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5 = (np.float32(c) for c in ERF_Q)
_CLAMP32 = np.float32(ERF_CLAMP)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def erf_rational_f32(x):
    """float32 erf without libm: vectorisable, |error| < 4e-7 (see tools/fit_erf.py)."""
    x = min(max(x, -_CLAMP32), _CLAMP32)
    t = x * x
    p = ((((_P5 * t + _P4) * t + _P3) * t + _P2) * t + _P1) * t + _P0
    q = ((((_Q5 * t + _Q4) * t + _Q3) * t + _Q2) * t + _Q1) * t + _Q0
    return x * p / q


@njit(cache=True)
def erf_exact(x, out):
    """out = erf(x) elementwise with libm's erf (NumPy has no erf); any shape, flat loop."""
    xf, of = x.reshape(-1), out.reshape(-1)
    for i in range(xf.size):
        of[i] = math.erf(xf[i])


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def bias_gelu_f32(h, bias):
    """h = gelu(h + bias) in place, float32, rational erf. Mirrors ACT2FN["gelu"] after nn.Linear."""
    half = np.float32(0.5)
    one = np.float32(1.0)
    inv_sqrt2 = np.float32(0.7071067811865476)
    for i in prange(h.shape[0]):
        row = h[i]
        for j in range(row.shape[0]):
            y = row[j] + bias[j]
            row[j] = half * y * (one + erf_rational_f32(y * inv_sqrt2))


@njit(cache=True, parallel=True)
def bias_gelu_exact(h, bias):
    """h = gelu(h + bias) in place with libm's exact erf (the float64 verification mode)."""
    for i in prange(h.shape[0]):
        row = h[i]
        for j in range(row.shape[0]):
            y = row[j] + bias[j]
            row[j] = 0.5 * y * (1.0 + math.erf(y / math.sqrt(2.0)))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _layer_norm_row(x, gamma, beta, eps, inv_n, out):
    total = _ZERO
    for j in range(x.shape[0]):
        total += x[j]
    mean = total * inv_n
    spread = _ZERO
    for j in range(x.shape[0]):
        d = x[j] - mean
        spread += d * d
    inv_std = _ONE / np.sqrt(spread * inv_n + eps)
    for j in range(x.shape[0]):
        out[j] = (x[j] - mean) * inv_std * gamma[j] + beta[j]


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def bias_residual_layer_norm(y, bias, residual, gamma, beta, eps, inv_n, out):
    """out = LayerNorm(y + bias + residual): the tail of RobertaSelfOutput and RobertaOutput.

    ``out`` may be ``residual`` itself (updated in place); ``y`` is used as scratch.
    """
    for i in prange(y.shape[0]):
        row = y[i]
        res = residual[i]
        for j in range(row.shape[0]):
            row[j] = (row[j] + bias[j]) + res[j]
        _layer_norm_row(row, gamma, beta, eps, inv_n, out[i])


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def embeddings_layer_norm(input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out):
    """out[i] = LayerNorm(word[id] + token_type[type] + position[pos]): RobertaEmbeddings.forward."""
    for i in prange(input_ids.shape[0]):
        row = out[i]
        w, t, p = word[input_ids[i]], token_type[token_type_ids[i]], position[position_ids[i]]
        for j in range(row.shape[0]):
            row[j] = (w[j] + t[j]) + p[j]
        _layer_norm_row(row, gamma, beta, eps, inv_n, row)


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def attention_packed(q, k, v, bq, bk, bv, cu_seqlens, num_heads, scale, out):
    """Self-attention on packed sequences, each attending only to itself, one (sequence, head) per task.

    q, k, v: [N, H] projections *without* their biases (added here); cu_seqlens: [B + 1]
    offsets of each sequence in the N packed tokens; out: [N, H] context vectors.
    Equivalent to softmax(Q K^T * scale + mask) V on a padded batch, with no padding at all.
    """
    n_seqs = cu_seqlens.shape[0] - 1
    d = q.shape[1] // num_heads
    for task in prange(n_seqs * num_heads):
        s, h = task // num_heads, task % num_heads
        start, length = cu_seqlens[s], cu_seqlens[s + 1] - cu_seqlens[s]
        if length == 0:
            continue
        c0 = h * d
        # this head's slice of q, k, v with bias, contiguous for the inner loops
        qh = np.empty((length, d), q.dtype)
        kh = np.empty((length, d), q.dtype)
        vh = np.empty((length, d), q.dtype)
        for i in range(length):
            for c in range(d):
                qh[i, c] = q[start + i, c0 + c] + bq[c0 + c]
                kh[i, c] = k[start + i, c0 + c] + bk[c0 + c]
                vh[i, c] = v[start + i, c0 + c] + bv[c0 + c]
        scores = np.empty(length, q.dtype)
        context = np.empty(d, q.dtype)
        for i in range(length):
            top = _NEG_INF
            for j in range(length):
                acc = _ZERO
                for c in range(d):
                    acc += qh[i, c] * kh[j, c]
                scores[j] = acc * scale
                top = max(top, scores[j])
            norm = _ZERO
            for j in range(length):
                scores[j] = np.exp(scores[j] - top)
                norm += scores[j]
            context[:] = 0
            for j in range(length):
                p = scores[j]
                for c in range(d):
                    context[c] += p * vh[j, c]
            for c in range(d):
                out[start + i, c0 + c] = context[c] / norm


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def masked_softmax(scores, mask_bias, out):
    """out = softmax(scores + mask_bias) over the last axis; scores [B, nh, Tq, Tk], mask_bias [B, Tk].

    The additive mask is finite (dtype min, as transformers uses), so a row never
    produces NaN, and padded keys get exactly zero weight after exp underflows.
    """
    B, nh, Tq, Tk = scores.shape
    for task in prange(B * nh):
        b, h = task // nh, task % nh
        for i in range(Tq):
            row, dst = scores[b, h, i], out[b, h, i]
            top = _NEG_INF
            for j in range(Tk):
                dst[j] = row[j] + mask_bias[b, j]
                top = max(top, dst[j])
            norm = _ZERO
            for j in range(Tk):
                dst[j] = np.exp(dst[j] - top)
                norm += dst[j]
            for j in range(Tk):
                dst[j] = dst[j] / norm


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def mean_pool_packed(x, starts, stops, sqrt_len, out):
    """out[b] = sum(x[starts[b]:stops[b]]) / max(count, 1e-9), or / sqrt(that) when sqrt_len."""
    for b in prange(starts.shape[0]):
        acc = out[b]
        acc[:] = 0
        for i in range(starts[b], stops[b]):
            acc += x[i]
        count = max(float(stops[b] - starts[b]), 1e-9)
        denominator = math.sqrt(count) if sqrt_len else count
        for j in range(acc.shape[0]):
            acc[j] = acc[j] / denominator


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def max_pool_packed(x, starts, stops, out):
    """out[b] = elementwise max of x[starts[b]:stops[b]] (-inf when empty, as torch gives)."""
    for b in prange(starts.shape[0]):
        acc = out[b]
        acc[:] = _NEG_INF
        for i in range(starts[b], stops[b]):
            for j in range(acc.shape[0]):
                acc[j] = max(acc[j], x[i, j])
