"""Every kernel vs the NumPy reference: fp32 within the sequential-summation
error bound of the float64 result *and* bit-exact vs the fma-chain emulation;
int8 and bf16 bit-exact.  Edge sizes from the brief."""

import numpy as np
import pytest

from refimpl.engines.fast.kernels import matmul as api
from refimpl.engines.fast.kernels import reference as R
from tests.matmul_helpers import (
    MODES,
    OWN_KERNELS,
    SIMD_TIERS,
    assert_bit_equal,
    bf16_error_ratio,
    make_data,
    require_tier,
)

M_EDGE = (1, 2, 5, 6, 7, 13, 17, 64, 100)
N_EDGE = (1, 8, 15, 16, 17, 48)
K_SMALL = (1, 3, 4, 5)
# (M, N, K) with the big sizes (reference cost kept moderate)
BIG = [
    (1, 768, 768),
    (17, 768, 768),
    (7, 3072, 768),
    (13, 17, 3072),
    (5, 768, 3072),
    (2, 3072, 3072),
    (64, 48, 768),
    (100, 16, 768),
    (6, 768, 5),
    (100, 3072, 4),
    (17, 15, 768),
    (1, 1, 3072),
    (560, 100, 768),  # several work items of rows (avx512.MB = 256, avx2.MB = 144), the last one partial
    (300, 130, 1000),  # AVX2: a last panel of three sub-panels, the third of 2 columns; a short last k block
    (300, 120, 200),  # AVX2: a last panel of two sub-panels (the third sub-panel's passes skipped)
    (33, 96, 1000),  # AMX: 240 groups in full tile steps, then a short step of 10 loaded back
    (257, 48, 96),
    (16, 2304, 768),  # batch 1 on the stacked QKV weight: two tiles, each prefetching its share of B
    (9, 768, 3072),
]


def _ref(mode, x, W, b, gelu_=False):
    return R.linear(x, W, mode, b, gelu_)


def _check(mode, tier, M, N, K, gelu_=False, seed=0):
    x, W, b = make_data(M, N, K, seed)
    p = api.pack(W, mode)
    y = api.linear(x, p, b, gelu=gelu_, tier=tier)
    assert y.shape == (M, N) and y.dtype == np.float32
    assert_bit_equal(y, _ref(mode, x, W, b, gelu_), "%s/%s M=%d N=%d K=%d" % (mode, tier, M, N, K))
    return x, W, b, y


@pytest.mark.parametrize("tier,mode", OWN_KERNELS)
def test_edge_grid_small_k(mode, tier):
    require_tier(tier)
    for M in M_EDGE:
        for N in N_EDGE:
            for K in K_SMALL:
                _check(mode, tier, M, N, K)


@pytest.mark.parametrize("tier,mode", OWN_KERNELS)
@pytest.mark.parametrize("M,N,K", BIG)
def test_big_sizes(mode, tier, M, N, K):
    require_tier(tier)
    _check(mode, tier, M, N, K)


@pytest.mark.parametrize("tier", ("avx512", "avx2"))
@pytest.mark.parametrize("M", M_EDGE)
def test_f32_tolerance_vs_float64(tier, M):
    """fp32: |y - y64| <= K * 2^-24 * (|x| @ |W|.T) + |b| * 2^-24 (sequential
    summation bound); prints the max difference and the worst ratio."""
    require_tier(tier)
    for N, K in ((768, 768), (3072, 768), (768, 3072), (17, 5)):
        x, W, b = make_data(M, N, K, seed=3)
        y = api.linear(x, api.pack(W, "f32"), b, tier=tier)
        y64 = R.linear_f32_float64(x, W, b)
        mag = np.abs(x).astype(np.float64) @ np.abs(W).astype(np.float64).T + np.abs(b)
        bound = (K + 1) * 2.0**-24 * mag
        err = np.abs(y - y64)
        ratio = (err / np.maximum(bound, 1e-30)).max()
        print("f32/%s M=%d N=%d K=%d max|diff|=%.3g  max diff/bound=%.3f" % (tier, M, N, K, err.max(), ratio))
        assert ratio <= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_avx2_avx512_bit_identical(mode):
    """Cross-tier identity (all three modes: fp32 is an fma chain in both)."""
    require_tier("avx512")
    for M, N, K in ((17, 768, 768), (100, 3072, 768), (33, 768, 3072), (3, 100, 7)):
        x, W, b = make_data(M, N, K, seed=5)
        p = api.pack(W, mode)
        a = api.linear(x, p, b, gelu=True, tier="avx512")
        c = api.linear(x, p, b, gelu=True, tier="avx2")
        assert_bit_equal(a, c, "%s avx512 vs avx2 %s" % (mode, (M, N, K)))


def test_amx_bf16_within_the_summation_bound():
    """tdpbf16ps does not round as vdpbf16ps (see amx.py), so its products are held to the float32
    summation bound of the exact sum of the same bf16 numbers, over the edge grid, the big sizes and
    rows with huge, tiny and denormal values; so is the reference (vdpbf16ps's order), for scale.
    A kernel summing a k step twice or dropping one fails it."""
    require_tier("amx")
    from refimpl.engines.fast.kernels import cpu

    if cpu.select("bf16", "amx").module.rsplit(".", 1)[1] != "amx":
        pytest.skip("CPU lacks amx-bf16: the amx tier runs bf16 on vdpbf16ps")
    shapes = [(M, N, K) for M in M_EDGE for N in N_EDGE for K in K_SMALL] + BIG
    worst = {"amx": (0.0, 0.0), "reference": (0.0, 0.0)}
    for M, N, K in shapes:
        for special in (False, True):
            x, W, b = make_data(M, N, K, seed=12)
            if special:
                x[0] = 0
                x[M // 2] *= 2.0**-60  # products ~2^-130: denormal sums, flushed
                x[M - 1] *= 1e30
                W[N // 2] *= 2.0**-66
            p = api.pack(W, "bf16")
            y = api.linear(x, p, b, tier="amx")
            for name, got in (("amx", y), ("reference", _ref("bf16", x, W, b))):
                ratio, diff = bf16_error_ratio(x, W, b, got)
                assert ratio <= 1.0, "bf16/%s M=%d N=%d K=%d special=%s: error %.3g of the bound" % (
                    name, M, N, K, special, ratio)  # fmt: skip
                worst[name] = max(worst[name], (ratio, diff))
        if M * N * K >= 17 * 768 * 768:  # and it is a different rounding, not the same bits by chance
            equal = (y == _ref("bf16", x, W, b)).mean()
            print("bf16/amx M=%d N=%d K=%d: %.3f of the elements equal to vdpbf16ps's order" % (M, N, K, equal))
            assert equal < 1.0
    for name, (ratio, diff) in worst.items():
        print("bf16/%s: worst error %.3f of the bound (max |diff| %.3g)" % (name, ratio, diff))
    x, W, b = make_data(17, 768, 768, seed=12)
    broken = W.copy()
    broken[:, 700] *= 2.0  # one k step summed twice
    ratio, _ = bf16_error_ratio(x, W, b, api.linear(x, api.pack(broken, "bf16"), b, tier="amx"))
    assert ratio > 1.0


def test_amx_int8_bit_identical_to_vnni_and_avx2():
    """The tiles' int32 sums are the VNNI and sign-trick kernels' integers: the same bits, over row
    counts around the 16-row tile and K with and without a short last step."""
    require_tier("amx")
    for M, N, K in ((1, 48, 64), (16, 768, 768), (17, 2304, 768), (100, 3072, 768), (33, 768, 3072), (21, 50, 324)):
        x, W, b = make_data(M, N, K, seed=8)
        p = api.pack(W, "int8")
        a = api.linear(x, p, b, gelu=True, tier="amx")
        for other in ("avx512", "avx2"):
            assert_bit_equal(a, api.linear(x, p, b, gelu=True, tier=other), "int8 amx vs %s %s" % (other, (M, N, K)))


@pytest.mark.parametrize("mode", ("int8", "bf16"))
def test_blas_tier_bit_identical(mode):
    x, W, b = make_data(9, 100, 70, seed=6)
    p = api.pack(W, mode)
    assert_bit_equal(api.linear(x, p, b, gelu=True, tier="blas"), _ref(mode, x, W, b, True), mode)


def test_blas_tier_f32_close():
    x, W, b = make_data(9, 100, 70, seed=6)
    y = api.linear(x, api.pack(W, "f32"), b, tier="blas")
    assert np.abs(y - R.linear_f32_float64(x, W, b)).max() < 1e-4


@pytest.mark.parametrize("tier", SIMD_TIERS + ("blas",))
@pytest.mark.parametrize("mode", MODES)
def test_gelu_epilogue_is_gelu_of_output(mode, tier):
    require_tier(tier)
    x, W, b = make_data(17, 3072, 768, seed=7)
    p = api.pack(W, mode)
    y = api.linear(x, p, b, tier=tier)
    g = api.linear(x, p, b, gelu=True, tier=tier)
    assert_bit_equal(g, R.gelu_f32(y), "gelu %s/%s" % (mode, tier))


@pytest.mark.parametrize("tier,mode", OWN_KERNELS)
def test_special_rows(mode, tier):
    """zero rows (int8 scale 0), huge/tiny magnitudes, denormal-producing bf16."""
    require_tier(tier)
    x, W, b = make_data(12, 50, 64, seed=8)
    x[0] = 0
    x[1] *= 1e-30
    x[2] *= 1e30
    x[3, ::2] = 0
    x[4] = 1e-40  # float32 denormals (bf16 flushes them)
    x[5] *= 2.0**-60  # products ~2^-130 -> denormal sums in bf16
    W[3] = 0
    W[7] *= 2.0**-66
    y = api.linear(x, api.pack(W, mode), b, tier=tier)
    assert_bit_equal(y, _ref(mode, x, W, b), "%s/%s special" % (mode, tier))


def test_bf16_denormal_heavy_native_vs_emulation():
    """vdpbf16ps vs the AVX2 emulation on data that produces denormal
    intermediates (no bias so the raw sums are visible)."""
    require_tier("avx512")
    from tests.matmul_helpers import require_features

    require_features("avx512bf16")
    rng = np.random.default_rng(11)
    M, N, K = 40, 96, 256
    x = (rng.standard_normal((M, K)) * 2.0 ** rng.integers(-70, -50, (M, K))).astype(np.float32)
    W = (rng.standard_normal((N, K)) * 2.0 ** rng.integers(-70, -50, (N, K))).astype(np.float32)
    p = api.pack(W, "bf16")
    zero = np.zeros(N, np.float32)
    a = api.linear(x, p, zero, tier="avx512")
    c = api.linear(x, p, zero, tier="avx2")
    nden = int(((np.abs(a) < 2.0**-126) & (a != 0)).sum())
    assert nden == 0  # FTZ: no denormal results
    assert (a != 0).mean() > 0.3  # but plenty of tiny normal results
    assert_bit_equal(a, c, "bf16 native vs emulation (denormal-heavy)")
    assert_bit_equal(a, R.linear_bf16(x, W, zero), "bf16 native vs reference")
