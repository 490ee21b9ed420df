"""float32 exp, erf and GELU for numba kernels: branch-free, vectorisable, about 0.5-1 ulp.

Every function here is a scalar ``@njit(inline='always')`` function meant to be called inside a
kernel's loop: it contains no libm call, no division and no data-dependent branch (both halves of
each piecewise approximation are computed and one is selected), so LLVM vectorises the caller's
loop (8 lanes with AVX2, 16 with AVX-512). All the rounding-sensitive steps go through
``_intrinsics.fma`` (``llvm.fma``), which the caller's fastmath flags cannot split or reorder:
the results are the same whether the calling kernel uses ``fastmath={'reassoc', 'contract'}``
or no fastmath at all, and the same on every AVX2+FMA host (tests/test_mathf.py checks both
flag sets). Coefficients: tools/fit_mathf.py (minimax by LP, rounded to float32 one at a time).

Measured error against float64 libm (math.exp / math.erf / math.erfc, whose own error is < 1e-3
float32 ulp), in ulps of the exact result (ulp of a subnormal = 2**-149), over EVERY float32 of
the range (``tools/ulp_sweep.py``; output in tools/ulp_sweep_full.txt; tests/test_mathf.py
re-checks a strided subset and every float of the intervals around the branch points):

=================  ============  ===========  ===============================================
function           range         max error    note
=================  ============  ===========  ===============================================
exp_f32            [-104, 89]    0.896 ulp    all 2.24e9 floats, subnormal results included
exp_f32_hp         [-104, 89]    0.5013 ulp   float64 inside; correctly rounded but 1e-10-close ties
erf_f32            [-10, 10]     1.191 ulp    max at 1.0567 (just above the branch point 1)
one_plus_erf_f32   [-1, 10]      3.10 ulp     = erfc(-x); for x < -1 relative error grows like
                   [-4, 10]      40.7 ulp     |Q(x)| 2^-24 (absolute error <= 1.2e-7 everywhere)
gelu_f32           [0, 10]       1.69 ulp     max absolute error on [-10, 10]: 3.84e-7 (at 4.889)
                   [-1.5, 10]    7.0 ulp      (torch's float32 GELU: 1.2e-6 absolute, 4.4 ulp on
                   [-3, 10]      17.2 ulp     [0, 10], 1800 ulp on [-3, 0]: it computes 1 + erf)
=================  ============  ===========  ===============================================

Cost on this host (AVX-512, one core, loop over 512 floats): exp_f32 0.19 ns/element, exp_f32_hp
0.34, erf_f32 and gelu_f32 0.40-0.42 (the BLAS engine's rational GELU, tests/baseline/kernels.py: 0.16,
with 3.7e-7 erf error).

Special values: exp(NaN) = NaN, exp(+inf) = +inf, exp(-inf) = 0, exp(x > 88.73) = +inf,
exp(x < -103.98) = 0; erf(NaN) = NaN, erf(+-inf) = +-1; gelu(NaN) = NaN, gelu(+inf) = +inf,
gelu(-inf) = NaN in torch (-inf * 0) and here gelu(y < -8.5) = -0.0 (the true value is below
1e-16 in magnitude) and gelu(-inf) = NaN as well.

float64: ``exp``, ``erf`` and ``gelu`` are generic (overloaded by dtype): float32 takes the
functions here, float64 takes libm (math.exp / math.erf), as refimpl's kernels do today.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from refimpl.engines.fast.kernels.lanes import f32_bits, f32_from_bits, f64_bits, f64_from_bits, fma

FASTMATH = {"reassoc", "contract"}
_inline = njit(inline="always", error_model="numpy", fastmath=FASTMATH, cache=True)

_F = np.float32
_ZERO, _HALF, _ONE, _TWO = _F(0.0), _F(0.5), _F(1.0), _F(2.0)

# ---- exp -------------------------------------------------------------------------------------
# exp(x) = 2^n e^r, n = round(x log2 e), r = x - n ln2 (two fma steps: ln2 = LN2_HI + LN2_LO, the
# first step exact), e^r = 1 + r + r^2 P(r) on |r| <= 0.3473, P of degree 4 (fit error 3.7e-9
# relative), and 2^n added to the exponent bits (with a 2^+-64 factor so that subnormal and
# overflowing results are rounded once, by an IEEE multiply).
EXP_P = (5.000000000e-01, 1.666653305e-01, 4.166724160e-02, 8.367614821e-03, 1.386366202e-03)
_E0, _E1, _E2, _E3, _E4 = (_F(c) for c in EXP_P)
LOG2E = _F(1.4426950408889634)
LN2_HI = _F(0.6931471805599453)
LN2_LO = _F(0.6931471805599453 - float(LN2_HI))
_EXP_LO, _EXP_HI = _F(-104.0), _F(89.0)  # exp(-104) < 2^-150 rounds to 0; exp(89) > FLT_MAX


@_inline
def _exp_reduced(x):
    """(e^r in [0.70, 1.42], n as int32) with exp(x) = e^r 2^n; x finite, |x| <= 104."""
    n = np.floor(fma(x, LOG2E, _HALF))
    r = fma(n, -LN2_HI, x)
    r = fma(n, -LN2_LO, r)
    p = fma(_E4, r, _E3)
    p = fma(p, r, _E2)
    p = fma(p, r, _E1)
    p = fma(p, r, _E0)
    return fma(r, fma(p, r, _ONE), _ONE), np.int32(n)  # 1 + r (1 + r P(r))


@_inline
def exp_normal_f32(x):
    """exp_f32 for x in [-87.3, 88.7] only (normal results; no clamping, NaN or subnormal handling):
    the same values as exp_f32 there, fewer instructions."""
    y, k = _exp_reduced(x)
    return f32_from_bits(f32_bits(y) + (k << 23))


@_inline
def exp_f32(x):
    """exp of a float32, <= 0.79 ulp (module docstring), vectorisable."""
    xc = x if x > _EXP_LO else _EXP_LO  # NaN -> _EXP_LO here, restored at the end
    xc = xc if xc < _EXP_HI else _EXP_HI
    y, k = _exp_reduced(xc)  # k in [-150, 129]
    m = np.int32(-64) if k < -64 else (np.int32(64) if k > 64 else np.int32(0))
    z = f32_from_bits(f32_bits(y) + ((k - m) << 23))  # y 2^(n-m): a normal float, exact
    z = z * f32_from_bits((m + 127) << 23)  # * 2^m: one rounding (subnormal or overflow)
    return z if x == x else x


# exp_f32_hp: the same reduction in float64 arithmetic (degree-7 polynomial, fit error 9.7e-11), then
# one rounding to float32: correctly rounded but for results within ~1e-10 relative of a rounding
# boundary. Half the lanes of exp_f32 per vector instruction (float64), ~1.6x its cost.
_EXP64_P = (
    0.5,
    0.16666665566847938,
    0.041666459655947466,
    0.008333588591620821,
    0.0013935419180374658,
    0.00019732868267606103,
)
_D0, _D1, _D2, _D3, _D4, _D5 = _EXP64_P
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 0.6931471805599453
_LN2_LO64 = 2.3190468138462996e-17


@_inline
def exp_f32_hp(x):
    """exp of a float32 computed in float64 and rounded once: <= 0.502 ulp, vectorisable."""
    xc = x if x > _EXP_LO else _EXP_LO
    xc = xc if xc < _EXP_HI else _EXP_HI
    xd = np.float64(xc)
    n = np.floor(fma(xd, _LOG2E64, 0.5))
    r = fma(n, -_LN2_HI64, xd)
    r = fma(n, -_LN2_LO64, r)
    p = fma(_D5, r, _D4)
    p = fma(p, r, _D3)
    p = fma(p, r, _D2)
    p = fma(p, r, _D1)
    p = fma(p, r, _D0)
    y = fma(r, fma(p, r, 1.0), 1.0)
    z = f64_from_bits(f64_bits(y) + (np.int64(n) << 52))
    return np.float32(z) if x == x else x


# ---- erf -------------------------------------------------------------------------------------
# |x| <= 1:  erf(x) = x + x R(x^2), R of degree 6 (fit error 2.4e-9 relative)
# |x| >  1:  erf(x) = sign(x) (1 - exp(Q(|x|))), Q ~ log erfc of degree 9 on [0.75, 6] (fit error
#            3.4e-8 |Q|); erfc(t) < 2.2e-17 beyond 6, where erf is +-1 in float32.
ERF_R = (
    1.283791661e-01,
    -3.761262596e-01,
    1.128358543e-01,
    -2.685381286e-02,
    5.188327748e-03,
    -8.010193706e-04,
    7.853862189e-05,
)
_R0, _R1, _R2, _R3, _R4, _R5, _R6 = (_F(c) for c in ERF_R)
ERFC_Q = (
    2.944767766e-04,
    -1.130186081e00,
    -6.317705512e-01,
    -1.103124097e-01,
    2.669913135e-02,
    -4.934185650e-03,
    6.608496769e-04,
    -5.985239113e-05,
    3.255262982e-06,
    -7.985158135e-08,
)
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9 = (_F(c) for c in ERFC_Q)
ERF_SPLIT = _F(1.0)  # |x| above: the erfc form
ERFC_LO, ERFC_HI = _F(0.75), _F(6.0)  # Q's fitted range
ONE_PLUS_ERF_SPLIT = _F(-0.75)  # 1 + erf(x) = erfc(-x) below this


@_inline
def _erf_small(x):
    s = x * x
    r = fma(_R6, s, _R5)
    r = fma(r, s, _R4)
    r = fma(r, s, _R3)
    r = fma(r, s, _R2)
    r = fma(r, s, _R1)
    r = fma(r, s, _R0)
    return fma(x, r, x)


@_inline
def _erfc_large(a):
    """erfc(a) for a >= 0.75 (a clamped to [0.75, 6]; 0 above 6), relative error ~ |Q| 2^-24."""
    t = a if a > ERFC_LO else ERFC_LO
    t = t if t < ERFC_HI else ERFC_HI
    q = fma(_Q9, t, _Q8)
    q = fma(q, t, _Q7)
    q = fma(q, t, _Q6)
    q = fma(q, t, _Q5)
    q = fma(q, t, _Q4)
    q = fma(q, t, _Q3)
    q = fma(q, t, _Q2)
    q = fma(q, t, _Q1)
    q = fma(q, t, _Q0)  # in [-38, -0.9]
    e = exp_normal_f32(q)
    return _ZERO if a > ERFC_HI else e


@_inline
def erf_f32(x):
    """erf of a float32, <= 0.87 ulp (module docstring), vectorisable."""
    a = abs(x)
    small = _erf_small(x)
    large = _ONE - _erfc_large(a)
    large = large if x > _ZERO else -large
    return large if a > ERF_SPLIT else small  # NaN: the small branch, NaN


@_inline
def one_plus_erf_f32(x):
    """1 + erf(x) = erfc(-x) without the cancellation of 1 + erf_f32(x) for negative x."""
    a = abs(x)
    small = _erf_small(x) + _ONE
    e = _erfc_large(a)
    if x > ERF_SPLIT:
        return _TWO - e
    if x < ONE_PLUS_ERF_SPLIT:
        return e
    return small  # NaN lands here


INV_SQRT2 = _F(0.7071067811865476)


@_inline
def gelu_f32(y):
    """Exact (erf) GELU of a float32: 0.5 y (1 + erf(y / sqrt 2)), transformers' ACT2FN["gelu"].

    ``1 + erf`` is ``one_plus_erf_f32`` (erfc(-u) for u < -0.75, so negative inputs keep their
    relative accuracy instead of the ~6e-8 absolute error of 1 + erf). Vectorisable, no libm.
    Error vs float64: see tools/ulp_sweep.py and the report (dominated by the rounding of
    y / sqrt 2, as in torch's float32 GELU).
    """
    return (_HALF * y) * one_plus_erf_f32(y * INV_SQRT2)


# ---- dtype-generic front ends ------------------------------------------------------------------
def exp(x):
    """exp of one float inside a kernel: exp_f32 for float32, libm for float64."""
    return math.exp(x)


def erf(x):
    """erf of one float inside a kernel: erf_f32 for float32, libm for float64."""
    return math.erf(x)


def gelu(y):
    """GELU of one float inside a kernel: gelu_f32 for float32, libm erf for float64."""
    return 0.5 * y * (1.0 + math.erf(y / math.sqrt(2.0)))


_JIT_OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy"}


@overload(exp, inline="always", jit_options=_JIT_OPTIONS)
def _exp_by_dtype(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: math.exp(x)


@overload(erf, inline="always", jit_options=_JIT_OPTIONS)
def _erf_by_dtype(x):
    if x == types.float32:
        return lambda x: erf_f32(x)
    return lambda x: math.erf(x)


@overload(gelu, inline="always", jit_options=_JIT_OPTIONS)
def _gelu_by_dtype(y):
    if y == types.float32:
        return lambda y: gelu_f32(y)
    return lambda y: 0.5 * y * (1.0 + math.erf(y / math.sqrt(2.0)))  # libm's erf, as the BLAS engine's float64 GELU
