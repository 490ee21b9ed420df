"""Plain NumPy implementations of exactly the kernels' arithmetic.

* ``linear_f32_float64``: float64 x @ W.T + b (for tolerance tests).
* ``linear_f32_fmachain``: the kernels' exact fp32 arithmetic -- per output
  element acc = fma(x[i,k], W[j,k], acc) for k = 0..K-1 in order, then + b.
  Bit-exact with every fp32 tier.
* ``linear_int8``: dynamic int8 (bit-exact).  int32 sums computed exactly
  through float64 BLAS (|sum| <= K*127*127 < 2^53), dequantised as
  ``acc.astype(f32) * (sx[:,None]*sw[None,:]).astype(f32) + b`` in float32.
* ``linear_bf16``: vdpbf16ps semantics (bit-exact): per k pair p
  acc = R(acc + x[2p+1]*w[2p+1]); acc = R(acc + x[2p]*w[2p]) with R =
  float32 round-to-nearest-even, flush-to-zero of tiny results (tininess
  after rounding), bf16 inputs already denormal-flushed.

Exact float32 ``fma`` in NumPy (``fma32``): a*b of two float32 is exact in
float64 (48 <= 53 bits).  acc + p is computed in float64 and made exact-ish
by *round-to-odd*: s = fl64(acc + p), e = TwoSum error (exact), and if e != 0
and s has an even last bit, s is moved one ulp toward e.  Round-to-odd to 53
bits followed by RNE to 24 bits equals direct RNE to 24 bits (53 >= 24 + 2),
so ``fma32`` is the correctly rounded fma -- no double-rounding error.  (A
naive np.float32(np.float64(acc) + p) is wrong when the float64 sum lands
exactly on a float32 rounding midpoint.)  FTZ: the unbounded-exponent RNE is
obtained by scaling by 2^100 before the float32 conversion; results whose
magnitude is then < 2^-126 become signed zeros.
"""

import numpy as np

from refimpl.engines.fast.kernels import mathf
from refimpl.engines.fast.kernels.packing import bf16_bits_to_f32, f32_to_bf16_bits, quantize_weight

_TWO100 = np.float64(2.0**100)
_TINY_SCALED = np.float32(2.0**-26)  # 2^-126 * 2^100


def _round_to_odd_sum(a, b):
    """float64 a+b rounded to odd (exact inputs in float64)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)  # TwoSum: s + e == a + b exactly
    even = (s.view(np.int64) & 1) == 0
    fix = (e != 0) & even
    if np.any(fix):
        toward = np.where(e > 0, np.inf, -np.inf)
        s = np.where(fix, np.nextafter(s, toward), s)
    return s


def fma32(a, b, c, ftz=False):
    """Correctly rounded float32 fma(a, b, c) (arrays broadcast)."""
    p = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    s = _round_to_odd_sum(p, np.asarray(c, np.float32).astype(np.float64))
    if not ftz:
        with np.errstate(over="ignore"):
            return s.astype(np.float32)
    with np.errstate(over="ignore"):
        out = s.astype(np.float32)
        r = (s * _TWO100).astype(np.float32)  # RNE with unbounded exponent (small s)
    tiny = (np.abs(s) < 2.0**-125) & (np.abs(r) < _TINY_SCALED)
    return np.where(tiny, np.copysign(np.float32(0), s).astype(np.float32), out).astype(np.float32)


# ---- mathf.gelu_f32, step for step: the kernels' store applies it to every FFN-in output
def _horner_fma(coefficients, t):
    """fma Horner chain over float32 ``coefficients`` (highest degree last), as mathf writes it."""
    c = [np.float32(v) for v in coefficients]
    acc = fma32(c[-1], t, c[-2])
    for v in reversed(c[:-2]):
        acc = fma32(acc, t, v)
    return acc


def exp_normal_f32(x):
    """mathf.exp_normal_f32: 2^n e^r with the exponent added to the bits (normal results only)."""
    n = np.floor(fma32(x, mathf.LOG2E, np.float32(0.5)))
    r = fma32(n, -mathf.LN2_HI, x)
    r = fma32(n, -mathf.LN2_LO, r)
    p = _horner_fma(mathf.EXP_P, r)
    y = fma32(r, fma32(p, r, np.float32(1)), np.float32(1))
    with np.errstate(invalid="ignore"):
        k = n.astype(np.int32)
    return (y.view(np.int32) + (k << np.int32(23))).view(np.float32)


def one_plus_erf_f32(x):
    """mathf.one_plus_erf_f32: 1 + erf(x), erfc(-x) below -0.75."""
    with np.errstate(all="ignore"):
        a = np.abs(x)
        s = x * x
        small = fma32(x, _horner_fma(mathf.ERF_R, s), x) + np.float32(1)
        t = np.where(a > mathf.ERFC_LO, a, mathf.ERFC_LO)
        t = np.where(t < mathf.ERFC_HI, t, mathf.ERFC_HI)
        e = np.where(a > mathf.ERFC_HI, np.float32(0), exp_normal_f32(_horner_fma(mathf.ERFC_Q, t)))
        r = np.where(x < mathf.ONE_PLUS_ERF_SPLIT, e, small)
        return np.where(x > mathf.ERF_SPLIT, np.float32(2) - e, r).astype(np.float32)


def gelu_f32(y):
    """mathf.gelu_f32 in NumPy, bit for bit: (0.5 y) (1 + erf(y / sqrt 2))."""
    y = np.asarray(y, np.float32)
    with np.errstate(all="ignore"):
        return ((np.float32(0.5) * y) * one_plus_erf_f32(y * mathf.INV_SQRT2)).astype(np.float32)


def _finish(y, bias, gelu):
    if bias is not None:
        y = (y + np.asarray(bias, np.float32)[None, :]).astype(np.float32)
    else:
        y = (y + np.float32(0)).astype(np.float32)
    return gelu_f32(y) if gelu else y


# ------------------------------------------------------------------ f32
def linear_f32_float64(x, W, bias=None, gelu=False):
    """float64 result (no GELU rounding games): for tolerance tests."""
    y = np.asarray(x, np.float64) @ np.asarray(W, np.float64).T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :]
    return y


def linear_f32_fmachain(x, W, bias=None, gelu=False):
    x = np.asarray(x, np.float32)
    W = np.asarray(W, np.float32)
    acc = np.zeros((x.shape[0], W.shape[0]), np.float32)
    for k in range(x.shape[1]):
        acc = fma32(x[:, k, None], W[None, :, k], acc)
    return _finish(acc, bias, gelu)


# ----------------------------------------------------------------- int8
def quantize_rows(x):
    """NumPy twin of common.quantize_rows -> (q int8 [M,K], sx float32 [M])."""
    x = np.asarray(x, np.float32)
    amax = np.max(np.abs(x), axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    sx = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(x / sx[:, None])
    q = np.clip(q, np.float32(-127), np.float32(127))
    q[sx == 0] = 0
    return q.astype(np.int8), sx


def int8_dequant(acc, sx, sw, bias=None, gelu=False):
    s = (sx[:, None] * sw[None, :]).astype(np.float32)
    y = (acc.astype(np.float32) * s).astype(np.float32)
    return _finish(y, bias, gelu)


def linear_int8_from_q(qx, sx, qw, sw, bias=None, gelu=False):
    acc = (qx.astype(np.float64) @ qw.astype(np.float64).T).astype(np.int32)
    return int8_dequant(acc, sx, sw, bias, gelu)


def linear_int8(x, W, bias=None, gelu=False):
    qx, sx = quantize_rows(x)
    qw, sw = quantize_weight(W)
    return linear_int8_from_q(qx, sx, qw, sw, bias, gelu)


# ----------------------------------------------------------------- bf16
def bf16_round(x):
    """float32 values of bf16(x) (RNE; float32 zeros and denormals to signed zero, as vcvtneps2bf16)."""
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def linear_bf16_from_rounded(xb, wb, bias=None, gelu=False):
    """xb [M,K], wb [N,K]: float32 arrays already holding bf16 values."""
    M, K = xb.shape
    if K % 2:
        xb = np.concatenate([xb, np.zeros((M, 1), np.float32)], axis=1)
        wb = np.concatenate([wb, np.zeros((wb.shape[0], 1), np.float32)], axis=1)
    acc = np.zeros((M, wb.shape[0]), np.float32)
    for p in range(xb.shape[1] // 2):
        acc = fma32(xb[:, 2 * p + 1, None], wb[None, :, 2 * p + 1], acc, ftz=True)
        acc = fma32(xb[:, 2 * p, None], wb[None, :, 2 * p], acc, ftz=True)
    return _finish(acc, bias, gelu)


def linear_bf16(x, W, bias=None, gelu=False):
    return linear_bf16_from_rounded(bf16_round(x), bf16_round(W), bias, gelu)


def linear(x, W, mode, bias=None, gelu=False):
    """Bit-exact reference for ``mode`` (f32 -> the fma-chain emulation)."""
    if mode == "f32":
        return linear_f32_fmachain(x, W, bias, gelu)
    if mode == "int8":
        return linear_int8(x, W, bias, gelu)
    if mode == "bf16":
        return linear_bf16(x, W, bias, gelu)
    raise ValueError(mode)
