"""Numba kernels for everything in the forward pass that is not a matrix product.

Matrix products go to NumPy's BLAS; these kernels do the elementwise and
normalisation work around them in one pass over memory each (bias + GELU,
bias + residual + LayerNorm, embeddings + LayerNorm, attention's softmax,
pooling). Each has a plain NumPy counterpart in ``forward.py`` or
``pooling.py`` and ``tests/test_kernels.py`` checks that both agree.

Conventions:
- Kernels are single-threaded and release the GIL (``nogil``). BLAS owns the
  cores: numba's worker threads spin after each parallel region and would steal
  the cores from OpenBLAS's threads (docs/performance.md measures the difference).
- Kernels are dtype-generic (float32 or float64) and take their scalar
  constants (``eps``, ``1/n``, the attention scale) as arguments already cast to
  the array's dtype by the caller, so float32 math stays float32.
- Nothing compiles at import: numba compiles each kernel on first call for the
  dtypes it sees and caches the machine code on disk (``cache=True``).
- ``fastmath`` is limited to reassociation and contraction (vectorised sums
  and FMAs); NaN and infinity keep their IEEE meaning.
- ``error_model="numpy"``: a division is the IEEE one. numba's default puts a
  zero-divisor check (raising ZeroDivisionError) in front of every division,
  and that branch alone stops LLVM from vectorising a loop (measured by
  ``python -m tools.microbench error-model``, docs/performance.md). No kernel here
  divides by zero: LayerNorm adds eps, softmax sums are >= 1, pooling clamps its counts.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

FASTMATH = {"reassoc", "contract"}
kernel = functools.partial(njit, cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
inline_kernel = functools.partial(njit, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
# float32 constants: exact in float32, and promoted exactly when they meet float64.
_ZERO, _ONE, _NEG_INF = np.float32(0.0), np.float32(1.0), np.float32(-np.inf)

# erf(x) ~= x * P(x^2) / Q(x^2) on |x| <= 4, sign(x) beyond; fitted by tools/fit_approximations.py
# (max error 2.1e-8 in float64 arithmetic, 3.7e-7 evaluated in float32).
ERF_CLAMP = 4.0
ERF_P = (
    1.12837897732526860e00,
    1.96246290594481482e-01,
    5.34668107589260366e-02,
    4.00341680996884209e-03,
    2.88017173395975262e-04,
    1.97462146269169964e-06,
)
ERF_Q = (
    1.00000000000000000e00,
    5.07249913784619477e-01,
    1.16475020754098033e-01,
    1.54440171868552821e-02,
    1.21626629336364232e-03,
    3.74773816329399719e-05,
)
_P0, _P1, _P2, _P3, _P4, _P5 = (np.float32(c) for c in ERF_P)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5 = (np.float32(c) for c in ERF_Q)
_CLAMP32 = np.float32(ERF_CLAMP)

# exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln2 (ln2 in two parts), e^r by a degree-6
# polynomial; fitted by tools/fit_approximations.py (max relative error 1.1e-7 in float32).
EXP_P = (
    1.00000000055413429e00,
    1.00000003631979917e00,
    4.99999920797995989e-01,
    1.66664201829305414e-01,
    4.16682256488533631e-02,
    8.37481483500398909e-03,
    1.38368383814483427e-03,
)
_E0, _E1, _E2, _E3, _E4, _E5, _E6 = (np.float32(c) for c in EXP_P)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_FLOOR = np.float32(-87.0)  # exp(-87) is still a normal float32
_HALF = np.float32(0.5)


@inline_kernel
def erf_rational_f32(x):
    """float32 erf without libm: vectorisable, |error| < 4e-7 (see tools/fit_approximations.py)."""
    x = min(max(x, -_CLAMP32), _CLAMP32)
    t = x * x
    p = ((((_P5 * t + _P4) * t + _P3) * t + _P2) * t + _P1) * t + _P0
    q = ((((_Q5 * t + _Q4) * t + _Q3) * t + _Q2) * t + _Q1) * t + _Q0
    return x * p / q


@inline_kernel
def gelu_erf(y):
    """transformers' exact GELU, y/2 (1 + erf(y / sqrt 2)), with libm's erf (the float64 mode)."""
    return 0.5 * y * (1.0 + math.erf(y / math.sqrt(2.0)))


def gelu(y):
    """GELU of one float inside a kernel, compiled per dtype (see the overload below)."""
    return gelu_erf(y)


@overload(gelu, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _gelu_by_dtype(y):
    if y == types.float32:
        half, one, inv_sqrt2 = np.float32(0.5), np.float32(1.0), np.float32(0.7071067811865476)

        def gelu_f32(y):  # the rational erf: vectorisable, no libm call
            return half * y * (one + erf_rational_f32(y * inv_sqrt2))

        return gelu_f32
    return lambda y: gelu_erf(y)


@kernel
def bias_gelu(h, bias):
    """h = gelu(h + bias) in place: ACT2FN["gelu"] after nn.Linear (RobertaIntermediate)."""
    for i in range(h.shape[0]):
        row = h[i]
        for j in range(row.shape[0]):
            row[j] = gelu(row[j] + bias[j])


def exp_into(x, out, count, scratch):
    """out[:count] = exp(x[:count]); compiled per dtype (see the overload)."""
    for j in range(count):
        out[j] = math.exp(x[j])


@overload(exp_into, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _exp_into_by_dtype(x, out, count, scratch):
    if x.dtype == types.float32:

        def exp_f32(x, out, count, scratch):
            # two vectorisable passes: e^r into out and 2^n as float bits into scratch, then multiply
            powers = scratch.view(np.float32)
            for j in range(count):
                v = max(x[j], _EXP_FLOOR)
                n = np.floor(v * _LOG2E + _HALF)
                r = (v - n * _LN2_HI) - n * _LN2_LO
                out[j] = (((((_E6 * r + _E5) * r + _E4) * r + _E3) * r + _E2) * r + _E1) * r + _E0
                scratch[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
            for j in range(count):
                out[j] = out[j] * powers[j]

        return exp_f32

    def exp_exact(x, out, count, scratch):
        for j in range(count):
            out[j] = math.exp(x[j])

    return exp_exact


@inline_kernel
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


@kernel
def bias_residual_layer_norm(y, bias, residual, gamma, beta, eps, inv_n, out):
    """out = LayerNorm(y + bias + residual): the tail of RobertaSelfOutput and RobertaOutput.

    ``out`` may be ``residual`` itself (updated in place); ``y`` is used as scratch.
    """
    for i in range(y.shape[0]):
        row = y[i]
        res = residual[i]
        for j in range(row.shape[0]):
            row[j] = (row[j] + bias[j]) + res[j]
        _layer_norm_row(row, gamma, beta, eps, inv_n, out[i])


@kernel
def embeddings_layer_norm(
    input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
):
    """out[i] = LayerNorm(word[id] + token_type[type] + position[pos]): RobertaEmbeddings.forward.

    numba does not bounds-check: the indices are checked here (the callers check them too)."""
    for i in range(input_ids.shape[0]):
        row = out[i]
        if not (
            0 <= input_ids[i] < word.shape[0]
            and 0 <= token_type_ids[i] < token_type.shape[0]
            and 0 <= position_ids[i] < position.shape[0]
        ):
            raise IndexError("a token, type or position id is outside its embedding table")
        w, t, p = word[input_ids[i]], token_type[token_type_ids[i]], position[position_ids[i]]
        for j in range(row.shape[0]):
            row[j] = (w[j] + t[j]) + p[j]
        _layer_norm_row(row, gamma, beta, eps, inv_n, row)


@kernel
def softmax_rows(scores, scale):
    """scores = softmax(scores * scale) over the last axis, in place, one pass per row.

    Scale, shift by the row max (so exp never overflows), exp, normalise: the softmax of
    eager_attention_forward, fused. No mask: packed attention never sees padding.
    """
    rows = scores.reshape(-1, scores.shape[-1])
    n = rows.shape[1]
    shifted = np.empty(n, scores.dtype)
    scratch = np.empty(n, np.int32)
    for r in range(rows.shape[0]):
        row = rows[r]
        top = _NEG_INF
        for j in range(n):
            row[j] *= scale
            top = max(top, row[j])
        for j in range(n):
            shifted[j] = row[j] - top
        exp_into(shifted, row, n, scratch)
        total = _ZERO
        for j in range(n):
            total += row[j]
        for j in range(n):
            row[j] = row[j] / total


@kernel
def mean_pool_packed(x, starts, stops, sqrt_len, clamp, out):
    """out[b] = sum(x[starts[b]:stops[b]]) / max(count, clamp), or / sqrt(that) when sqrt_len."""
    for b in range(starts.shape[0]):
        acc = out[b]
        acc[:] = 0
        for i in range(starts[b], stops[b]):
            acc += x[i]
        count = max(float(stops[b] - starts[b]), clamp)
        denominator = math.sqrt(count) if sqrt_len else count
        for j in range(acc.shape[0]):
            acc[j] = acc[j] / denominator


@kernel
def max_pool_packed(x, starts, stops, out):
    """out[b] = elementwise max of x[starts[b]:stops[b]] (-inf when empty, as torch gives)."""
    for b in range(starts.shape[0]):
        acc = out[b]
        acc[:] = _NEG_INF
        for i in range(starts[b], stops[b]):
            for j in range(acc.shape[0]):
                acc[j] = max(acc[j], x[i, j])
