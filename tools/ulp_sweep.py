"""Error of refimpl.engines.fast.kernels.mathf's float32 functions against float64 libm, over every float32 of a range.

    python tools/ulp_sweep.py               # every float32 in the documented ranges (~1 min, 2 cores)
    python tools/ulp_sweep.py --stride 97   # every 97th float32 (what tests/test_mathf.py runs)

Errors are in ulps of the exact result (float64 libm, error < 1e-3 float32 ulp), ulp(t) being
2**(floor(log2 |t|) - 23) for normal t and 2**-149 below 2**-126. The kernels under test are
inlined into a kernel compiled with the engine's flags (fastmath reassoc + contract) or, with
``fastmath=False``, none.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import mathf
from refimpl.engines.fast.kernels.lanes import f32_from_bits

FLT_MAX = float(np.finfo(np.float32).max)
OVERFLOW = FLT_MAX + 2.0**103  # exact results >= this round to +inf in float32


@njit(inline="always")
def _ulp(t):
    a = abs(t)
    if a < 2.0**-126:
        return 2.0**-149
    m, e = math.frexp(a)
    return math.ldexp(1.0, e - 24)


@njit(inline="always")
def _err(y, ref):
    """(ulp error, absolute error) of float32 y against the float64 exact value ref."""
    if ref != ref:
        return (0.0, 0.0) if y != y else (math.inf, math.inf)
    if abs(ref) >= OVERFLOW:
        return (0.0, 0.0) if (y == math.inf and ref > 0) or (y == -math.inf and ref < 0) else (math.inf, math.inf)
    if y != y or abs(y) == math.inf:
        return math.inf, math.inf
    d = abs(np.float64(y) - ref)
    return d / _ulp(ref), d


def make_sweep(fn, ref, fastmath):
    """An njit sweep(sign, start_bits, stop_bits, stride) -> per-chunk (max ulp, its x, max abs, its x)."""

    @njit(parallel=True, fastmath=fastmath, error_model="numpy")
    def sweep(sign, start, stop, stride, n_chunks):
        worst = np.zeros((n_chunks, 4))
        span = stop - start
        for c in prange(n_chunks):
            lo = start + (span * c) // n_chunks
            hi = start + (span * (c + 1)) // n_chunks
            lo = lo + (-(lo - start)) % stride  # align to the global stride
            w_ulp, x_ulp, w_abs, x_abs = 0.0, 0.0, 0.0, 0.0
            for b in range(lo, hi, stride):
                x = f32_from_bits(b | sign)
                y = fn(x)
                u, a = _err(y, ref(np.float64(x)))
                if u > w_ulp:
                    w_ulp, x_ulp = u, x
                if a > w_abs:
                    w_abs, x_abs = a, x
            worst[c, 0], worst[c, 1], worst[c, 2], worst[c, 3] = w_ulp, x_ulp, w_abs, x_abs
        return worst

    return sweep


@njit
def _exp64(x):
    return math.exp(x)


@njit
def _erf64(x):
    return math.erf(x)


@njit
def _one_plus_erf64(x):
    return math.erfc(-x)


@njit
def _gelu64(y):
    return 0.5 * y * math.erfc(-y / math.sqrt(2.0))


FUNCTIONS = {  # name: (float32 function, float64 reference, the range swept)
    "exp_f32": (mathf.exp_f32, _exp64, (-104.0, 89.0)),
    "exp_f32_hp": (mathf.exp_f32_hp, _exp64, (-104.0, 89.0)),
    "erf_f32": (mathf.erf_f32, _erf64, (-10.0, 10.0)),
    "one_plus_erf_f32": (mathf.one_plus_erf_f32, _one_plus_erf64, (-10.0, 10.0)),
    "gelu_f32": (mathf.gelu_f32, _gelu64, (-10.0, 10.0)),
}
# the ranges reported by main(): ulp errors are meaningless where the result is ~0 in float32
# terms (one_plus_erf below -6 is set to 0; gelu below -5 is < 4e-6 and its absolute error counts)
REPORT = [
    ("exp_f32", -104.0, 89.0),
    ("exp_f32", -87.33, 88.72),
    ("exp_f32_hp", -104.0, 89.0),
    ("erf_f32", -10.0, 10.0),
    ("one_plus_erf_f32", -10.0, 10.0),
    ("one_plus_erf_f32", -1.0, 10.0),
    ("one_plus_erf_f32", -4.0, 10.0),
    ("one_plus_erf_f32", -6.0, 10.0),
    ("gelu_f32", -10.0, 10.0),
    ("gelu_f32", 0.0, 10.0),
    ("gelu_f32", -1.5, 10.0),
    ("gelu_f32", -3.0, 10.0),
    ("gelu_f32", -5.0, 10.0),
]
_SWEEPS = {}


def sweep(name, lo=None, hi=None, stride=1, fastmath=mathf.FASTMATH):
    """Worst errors of ``name`` over every ``stride``-th float32 in [lo, hi] (both signs as needed):
    dict(max_ulp, x_max_ulp, max_abs, x_max_abs, count)."""
    fn, ref, (dlo, dhi) = FUNCTIONS[name]
    lo = dlo if lo is None else lo
    hi = dhi if hi is None else hi
    key = (name, bool(fastmath))
    if key not in _SWEEPS:
        _SWEEPS[key] = make_sweep(fn, ref, fastmath if fastmath else False)
    kernel = _SWEEPS[key]
    rows, count = [], 0
    for sign, a, b in ((0, max(lo, 0.0), hi), (np.int64(0x80000000), max(-hi, 0.0), -lo)):
        if b < a or (sign and b <= 0):
            continue
        start = int(f32_bits_py(np.float32(a)))
        stop = int(f32_bits_py(np.float32(b))) + 1
        count += len(range(start, stop, stride))
        rows.append(kernel(np.int64(sign), np.int64(start), np.int64(stop), np.int64(stride), 64))
    w = np.concatenate(rows)
    i, j = int(np.argmax(w[:, 0])), int(np.argmax(w[:, 2]))
    return dict(max_ulp=w[i, 0], x_max_ulp=w[i, 1], max_abs=w[j, 2], x_max_abs=w[j, 3], count=count)


def f32_bits_py(x):
    return np.array(x, np.float32).view(np.int32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("names", nargs="*", default=list(FUNCTIONS))
    parser.add_argument("--no-fastmath", action="store_true", help="callers compiled without fastmath")
    args = parser.parse_args()
    for name, lo, hi in REPORT:
        if name not in args.names:
            continue
        t = time.perf_counter()
        r = sweep(name, lo, hi, stride=args.stride, fastmath=False if args.no_fastmath else mathf.FASTMATH)
        print(
            f"{name} on [{lo}, {hi}], {r['count']:.3e} floats (stride {args.stride}): max {r['max_ulp']:.4f} ulp"
            f" at x = {r['x_max_ulp']!r}; max abs {r['max_abs']:.3e} at x = {r['x_max_abs']!r}"
            f" ({time.perf_counter() - t:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
