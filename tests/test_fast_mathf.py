"""refimpl.engines.fast.kernels.mathf: ulp bounds against float64 libm, special values, flag independence, torch.

The bounds asserted here are the measured maxima over EVERY float32 of the ranges (tools/ulp_sweep.py,
stride 1; see the report) rounded up; the tests sweep a strided subset plus every float32 of a few
narrow intervals around the branch points, so they run in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from refimpl.engines.fast.kernels import mathf
from tools.ulp_sweep import sweep

STRIDE = 613  # ~3.6e6 floats per sweep

# (function, lo, hi, max ulp): exhaustive maxima in the comments
BOUNDS = [
    ("exp_f32", -104.0, 89.0, 0.90),  # 0.8961 (all 2.24e9 floats, subnormal results included)
    ("exp_f32_hp", -104.0, 89.0, 0.5015),  # 0.5013
    ("erf_f32", -10.0, 10.0, 1.20),  # 1.1911 (at 1.0567: the erfc branch just above the split)
    ("one_plus_erf_f32", -1.0, 10.0, 3.2),  # 3.1044 (at -0.815: erfc branch, relative error ~ |Q| ulp)
    ("one_plus_erf_f32", -4.0, 10.0, 41.0),  # 40.72: erfc(4) = 1.5e-8, error 6e-15 absolute
    ("gelu_f32", 0.0, 10.0, 1.7),  # see tools/ulp_sweep_full.txt
    ("gelu_f32", -1.5, 10.0, 7.0),  # 6.9961 (at -1.496; gelu there is -0.1, error < 1e-8)
]


@pytest.mark.parametrize("name,lo,hi,bound", BOUNDS)
def test_ulp_bound_strided(name, lo, hi, bound):
    r = sweep(name, lo, hi, stride=STRIDE)
    print(f"{name} on [{lo}, {hi}] every {STRIDE}th float: max {r['max_ulp']:.4f} ulp at {r['x_max_ulp']!r}")
    assert r["max_ulp"] <= bound


@pytest.mark.parametrize(
    "name,lo,hi,bound",
    [
        ("exp_f32", -88.0, -86.0, 0.90),  # normal -> subnormal results
        ("exp_f32", 88.0, 89.0, 0.90),  # overflow threshold 88.7228
        ("exp_f32", 0.33, 0.36, 0.90),  # n = 0 / 1 reduction boundary
        ("exp_f32", -0.36, -0.33, 0.90),  # n = 0 / -1
        ("exp_f32", -104.0, -100.0, 0.90),  # deep subnormal, underflow to 0 at -103.97
        ("erf_f32", 0.99, 1.01, 1.20),  # branch point
        ("erf_f32", 0.0, 1e-37, 1.20),  # tiny and subnormal x
        ("one_plus_erf_f32", -0.76, -0.74, 3.2),
        ("gelu_f32", 1e-3, 2e-3, 1.8),
        ("gelu_f32", -2e-3, -1e-3, 1.8),
    ],
)
def test_ulp_bound_every_float(name, lo, hi, bound):
    r = sweep(name, lo, hi, stride=1)
    print(f"{name} on [{lo}, {hi}], all {r['count']} floats: max {r['max_ulp']:.4f} ulp")
    assert r["max_ulp"] <= bound


def test_gelu_absolute_error_everywhere():
    r = sweep("gelu_f32", -10.0, 10.0, stride=STRIDE)
    # exhaustive: 3.84e-7 (at y = 4.889, 0.8 ulp); torch's float32 GELU: 1.2e-6 (test below)
    assert r["max_abs"] <= 3.9e-7


def _apply(fn, fastmath):
    @njit(fastmath=fastmath, error_model="numpy")
    def k(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return k


def _sample():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(100_000) * 3,
            rng.uniform(-110, 95, 100_000),
            [0.0, -0.0, 1.0, -1.0, 0.75, -0.75, 6.0, -6.0, 88.7, -87.4, -103.9, -104.5],
        ]
    )
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["exp_f32", "exp_f32_hp", "erf_f32", "one_plus_erf_f32", "gelu_f32"])
def test_same_bits_with_and_without_fastmath(name):
    """The caller's fastmath flags do not change the results (fma intrinsics, no reassociable steps)."""
    fn = getattr(mathf, name)
    x = _sample()
    a, b, c = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    _apply(fn, {"reassoc", "contract"})(x, a)
    _apply(fn, False)(x, b)
    _apply(fn, True)(x, c)  # full fastmath (nnan/ninf assumed): finite inputs only are compared
    assert np.array_equal(a.view(np.int32), b.view(np.int32))
    finite = np.isfinite(b)
    assert np.array_equal(a[finite].view(np.int32), c[finite].view(np.int32))


def test_vectorised():
    """The calling loop is vectorised (no libm call, ymm/zmm arithmetic)."""
    for name in ("exp_f32", "erf_f32", "gelu_f32"):
        k = _apply(getattr(mathf, name), {"reassoc", "contract"})
        x = np.ones(64, np.float32)
        k(x, np.empty_like(x))
        asm = k.inspect_asm(k.signatures[0])
        assert "mm" in asm and ("vfmadd" in asm)
        assert "expf" not in asm and "erff" not in asm, name


def test_special_values():
    f32 = np.float32
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 89.0, 88.73, -104.0, -103.0, 1e-45], f32)
    e = np.empty_like(x)
    _apply(mathf.exp_f32, {"reassoc", "contract"})(x, e)
    assert np.isnan(e[0]) and e[1] == np.inf and e[2] == 0 and e[3] == 1 and e[4] == 1
    assert e[5] == np.inf and e[6] == np.inf and e[7] == 0
    assert e[8] == f32(math.exp(-103.0)) and e[8] > 0  # subnormal, correctly rounded
    assert e[9] == 1
    r = np.empty_like(x)
    _apply(mathf.erf_f32, {"reassoc", "contract"})(x, r)
    assert np.isnan(r[0]) and r[1] == 1 and r[2] == -1 and r[3] == 0 and np.signbit(r[4])
    assert r[9] == f32(2 / math.sqrt(math.pi) * 1e-45)
    g = np.empty_like(x)
    _apply(mathf.gelu_f32, {"reassoc", "contract"})(x, g)
    assert np.isnan(g[0]) and g[1] == np.inf and g[3] == 0
    y = np.array([-9.0, -20.0, -1e30], f32)
    gy = np.empty_like(y)
    _apply(mathf.gelu_f32, {"reassoc", "contract"})(y, gy)
    assert np.all(gy == 0)  # true values below 1e-18 in magnitude


def test_gelu_not_worse_than_torch():
    torch = pytest.importorskip("torch")
    bits = np.arange(0, 0x41200000, 211, dtype=np.int64).astype(np.int32)  # every 211th float in [0, 10]
    pos = bits.view(np.float32)
    y = np.concatenate([pos, -pos])
    y64 = y.astype(np.float64)
    truth = 0.5 * y64 * np.array([math.erfc(-t / math.sqrt(2)) for t in y64])
    ours = np.empty_like(y)
    _apply(mathf.gelu_f32, {"reassoc", "contract"})(y, ours)
    theirs = torch.nn.functional.gelu(torch.from_numpy(y)).numpy()
    for lo in (-10.0, -3.0, 0.0):
        m = y64 >= lo
        e_ours = np.abs(ours[m] - truth[m]).max()
        e_torch = np.abs(theirs[m] - truth[m]).max()
        print(f"gelu y >= {lo}: max abs error ours {e_ours:.3g}, torch {e_torch:.3g}")
        assert e_ours <= e_torch


def test_generic_front_ends_float64_is_libm():
    @njit
    def f(x):
        return mathf.exp(x), mathf.erf(x), mathf.gelu(x)

    for x in (0.3, -2.5, 7.0):
        e, r, g = f(x)
        assert e == math.exp(x) and r == math.erf(x)
        assert g == 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    x32 = np.array([0.3, -2.5, 7.0], np.float32)
    for name, generic in (("exp_f32", 0), ("erf_f32", 1), ("gelu_f32", 2)):
        want = np.empty_like(x32)
        _apply(getattr(mathf, name), {"reassoc", "contract"})(x32, want)
        assert [np.float32(f(v)[generic]) for v in x32] == list(want)


def test_numpy_twin_is_bit_identical():
    """kernels/reference.gelu_f32 (NumPy, correctly rounded fma) repeats mathf.gelu_f32 bit for bit,
    so the matrix products' GELU store can be checked bit-exactly against NumPy."""
    from refimpl.engines.fast.kernels import reference

    rng = np.random.default_rng(0)
    y = np.concatenate(
        [
            rng.standard_normal(400_000) * 3,
            rng.uniform(-12, 12, 100_000),
            rng.standard_normal(1000) * 1e-30,
            np.linspace(-1.5, -1.4, 20001),  # around the erfc(-u) switch at u = -0.75
            np.linspace(1.4, 1.45, 20001),  # and at u = 1
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 8.4852, 8.4853, -8.4853, 3e38, -3e38],
        ]
    ).astype(np.float32)
    ours = np.empty_like(y)
    _apply(mathf.gelu_f32, set())(y, ours)
    twin = reference.gelu_f32(y)
    differ = ours.view(np.uint32) != twin.view(np.uint32)
    differ &= ~(np.isnan(ours) & np.isnan(twin))
    print(f"gelu_f32 numba vs NumPy twin: {int(differ.sum())} of {y.size} differ")
    assert not differ.any(), y[differ][:10]
    broken = twin.copy()
    broken[7] = np.nextafter(broken[7], np.float32(np.inf))
    assert (broken.view(np.uint32) != ours.view(np.uint32)).sum() == 1
