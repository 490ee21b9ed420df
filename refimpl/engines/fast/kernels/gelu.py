"""float32 erf and exact GELU, identical bits in every tier and in NumPy.

``erf32(x)``: float32 -> float32.  Evaluated in float64 (two polynomials,
coefficients from ``gelu_fit.py``; approximation error <= 9.3e-13 relative for
|x| < 1 and <= 7.7e-11 absolute on [1, 3.92]; erf(x) = +-1 for |x| >= XSAT) and rounded once to float32, so
the result is within 0.5 ulp + 0.001 ulp of the true erf: it is the correctly
rounded value except in rare near-tie cases.  Measured exhaustively over every
float32 in [1e-30, 4] (~1.08e9 values, ``python -m refimpl.engines.fast.kernels.gelu --exhaustive``)
against math.erf in float64:  max error 0.5013 ulp at x=2.4586 (ERF_MAX_ULP);
below 1e-30 erf(x)=x*1.1283791.. is also correctly rounded (tested).

``gelu32(y) = (y * 0.5f) * (1f + erf32(y * 0.70710677f))`` in float32 -- the
operation order of PyTorch's CPU kernel (``x * 0.5 * (1 + erf(x * M_SQRT1_2))``).
For y > 0 the result is within 1.69 ulp of exact GELU (exhaustive, GELU_MAX_ULP_POS); for y << 0 the
``1 + erf`` cancellation (inherent in that formula, shared with PyTorch) gives
an absolute error of ~|y| * 3e-8.

All arithmetic is plain IEEE mul/add/select (numba does not contract to FMA
without fastmath), so the numba function, its vectorised form (any width)
and ``erf32_numpy`` / ``gelu32_numpy`` return identical bits.
"""

import math

import numpy as np
from numba import njit

XB = 3.92  # end of the region-B fit interval
XSAT = 3.919205904006958  # float32: smallest x with erf(x) rounding to 1.0f
PA = (
    4.138779625734516e-09,
    -7.557492821680298e-08,
    1.223362614199572e-06,
    -1.7536824687371807e-05,
    0.0002175171632319241,
    -0.0022854856569544946,
    0.019852496688084684,
    -0.1405360890155293,
    0.9654687386698853,
)
PB = (
    2.5497571062695887e-05,
    -3.590360328233219e-06,
    -0.00021551974872324162,
    0.0002332033227795413,
    0.0006044556740431058,
    -0.0016492033375669346,
    0.0008085687043759037,
    0.003356764298089253,
    -0.008477566084161217,
    0.007338378837029126,
    0.006278955204150643,
    -0.028445290869154226,
    0.04515102301402061,
    -0.04504755659646351,
    0.030595963544284253,
    -0.013928969840606488,
    0.0038782108468354715,
    0.9994966462827249,
)
_BS = 2.0 / (XB - 1.0)
_BO = -(1.0 + XB) / (XB - 1.0)
ERF_MAX_ULP = 0.5013  # measured: exhaustive over every float32 in [1e-30, 4] (15.7 s), odd symmetry covers x<0
GELU_MAX_ULP_POS = 1.6924  # measured: exhaustive over float32 y in [1e-30, 16] (y > 16: gelu = y)

_SQRT1_2 = np.float32(0.7071067811865476)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


# Polynomials evaluated with Estrin's scheme (ascending coefficients a_k =
# P[-1-k]): the same multiplies/adds as a Horner loop, but a dependency chain
# of ~6 operations instead of ~2*degree, so the vectorised loop is not
# latency bound (3x faster than Horner here).  Static tuple indices fold to
# constants, so the loop vectorises.  NumPy twin: _poly_a_np/_poly_b_np.


@njit(inline="always", cache=True)
def _poly_a(v):
    v2 = v * v
    v4 = v2 * v2
    v8 = v4 * v4
    b0 = PA[8] + PA[7] * v
    b1 = PA[6] + PA[5] * v
    b2 = PA[4] + PA[3] * v
    b3 = PA[2] + PA[1] * v
    c0 = b0 + b1 * v2
    c1 = b2 + b3 * v2
    d0 = c0 + c1 * v4
    return d0 + PA[0] * v8


@njit(inline="always", cache=True)
def _poly_b(u):
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    u16 = u8 * u8
    b0 = PB[17] + PB[16] * u
    b1 = PB[15] + PB[14] * u
    b2 = PB[13] + PB[12] * u
    b3 = PB[11] + PB[10] * u
    b4 = PB[9] + PB[8] * u
    b5 = PB[7] + PB[6] * u
    b6 = PB[5] + PB[4] * u
    b7 = PB[3] + PB[2] * u
    b8 = PB[1] + PB[0] * u
    c0 = b0 + b1 * u2
    c1 = b2 + b3 * u2
    c2 = b4 + b5 * u2
    c3 = b6 + b7 * u2
    d0 = c0 + c1 * u4
    d1 = c2 + c3 * u4
    e0 = d0 + d1 * u8
    return e0 + b8 * u16


@njit(inline="always", cache=True)
def erf32(x):
    xd = np.float64(x)
    ax = abs(xd)
    ra = xd * _poly_a(xd * xd * 2.0 - 1.0)
    rb = _poly_b(ax * _BS + _BO)
    rb = math.copysign(rb, xd)
    r = ra if ax < 1.0 else rb
    r = math.copysign(1.0, xd) if ax >= XSAT else r  # NaN falls through to rb (NaN)
    return np.float32(r)


@njit(inline="always", cache=True)
def gelu32(y):
    return (y * _HALF) * (_ONE + erf32(y * _SQRT1_2))


@njit(cache=True)
def gelu_inplace(v):
    """v[:] = gelu(v) for a 1-D contiguous float32 array/view (vectorised)."""
    for j in range(v.size):
        v[j] = gelu32(v[j])


@njit(cache=True)
def gelu_inplace_2d(a, r0, r1, c0, c1):
    """a[r0:r1, c0:c1] = gelu(a[r0:r1, c0:c1]) (float32)."""
    for i in range(r0, r1):
        gelu_inplace(a[i, c0:c1])


@njit(cache=True)
def erf32_array(x):
    out = np.empty_like(x)
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        of[i] = erf32(xf[i])
    return out


@njit(cache=True)
def gelu32_array(x):
    out = np.empty_like(x)
    xf = x.ravel()
    of = out.ravel()
    for i in range(xf.size):
        of[i] = gelu32(xf[i])
    return out


# ------------------------------------------------------------- NumPy twins
def _poly_a_np(v):
    v2 = v * v
    v4 = v2 * v2
    v8 = v4 * v4
    b0 = PA[8] + PA[7] * v
    b1 = PA[6] + PA[5] * v
    b2 = PA[4] + PA[3] * v
    b3 = PA[2] + PA[1] * v
    c0 = b0 + b1 * v2
    c1 = b2 + b3 * v2
    d0 = c0 + c1 * v4
    return d0 + PA[0] * v8


def _poly_b_np(u):
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    u16 = u8 * u8
    b = [PB[17 - 2 * i] + PB[16 - 2 * i] * u for i in range(9)]
    c = [b[2 * i] + b[2 * i + 1] * u2 for i in range(4)]
    d0 = c[0] + c[1] * u4
    d1 = c[2] + c[3] * u4
    e0 = d0 + d1 * u8
    return e0 + b[8] * u16


def erf32_numpy(x):
    x = np.asarray(x, dtype=np.float32)
    xd = x.astype(np.float64)
    ax = np.abs(xd)
    with np.errstate(all="ignore"):
        ra = xd * _poly_a_np(xd * xd * 2.0 - 1.0)
        rb = np.copysign(_poly_b_np(ax * _BS + _BO), xd)
    r = np.where(ax < 1.0, ra, rb)
    r = np.where(ax >= XSAT, np.copysign(1.0, xd), r)
    return r.astype(np.float32)


def gelu32_numpy(y):
    y = np.asarray(y, dtype=np.float32)
    return (y * _HALF) * (_ONE + erf32_numpy(y * _SQRT1_2))


# ---------------------------------------------------------- error measuring
@njit(cache=True)
def _erf_ulp_scan(lo_bits, hi_bits, step):
    """max ulp error of erf32 vs math.erf (float64) over float32 bit patterns."""
    worst = 0.0
    wx = np.float32(0)
    b = lo_bits
    while b < hi_bits:
        x = np.uint32(b).view(np.float32)
        ref = math.erf(np.float64(x))
        got = np.float64(erf32(x))
        # ulp of float32 numbers in the binade of ref
        m, e = math.frexp(ref)
        ulp = 2.0 ** max(e - 24, -149)
        err = abs(got - ref) / ulp
        if err > worst:
            worst = err
            wx = x
        b += step
    return worst, wx


@njit(cache=True)
def _gelu_ulp_scan(lo_bits, hi_bits, step):
    """max ulp error of gelu32 vs float64 0.5*y*(1+erf(y/sqrt2)) (y > 0)."""
    worst = 0.0
    wx = np.float32(0)
    b = lo_bits
    while b < hi_bits:
        y = np.uint32(b).view(np.float32)
        yd = np.float64(y)
        ref = 0.5 * yd * (1.0 + math.erf(yd * 0.7071067811865476))
        got = np.float64(gelu32(y))
        m, e = math.frexp(ref)
        ulp = 2.0 ** max(e - 24, -149)
        err = abs(got - ref) / ulp
        if err > worst:
            worst = err
            wx = y
        b += step
    return worst, wx


def measure_gelu_ulp(step=1, hi=16.0):
    """Scan positive float32 y in [1e-30, hi] (every ``step``-th bit pattern)."""
    lo = int(np.float32(1e-30).view(np.uint32))
    return _gelu_ulp_scan(lo, int(np.float32(hi).view(np.uint32)) + 1, step)


def measure_erf_ulp(step=1):
    """Scan float32 in [1e-30, 4] (every ``step``-th bit pattern)."""
    lo = int(np.float32(1e-30).view(np.uint32))
    hi = int(np.float32(4.0).view(np.uint32)) + 1
    return _erf_ulp_scan(lo, hi, step)


if __name__ == "__main__":
    import sys
    import time

    t0 = time.time()
    step = 1 if "--exhaustive" in sys.argv else 997
    w, x = measure_erf_ulp(step)
    print("erf32 max error %.4f ulp at x=%r (step %d, %.1fs)" % (w, float(x), step, time.time() - t0))
    t0 = time.time()
    w, x = measure_gelu_ulp(step)
    print("gelu32 (y>0) max error %.4f ulp at y=%r (step %d, %.1fs)" % (w, float(x), step, time.time() - t0))
