"""Helpers of the matrix-product kernel tests (tests/test_matmul_*.py): random data, bit equality, skips
that name the missing CPU feature."""

import os

import numpy as np
import pytest

from refimpl.engines.fast.kernels import cpu, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root

SIMD_TIERS = ("amx", "avx512", "avx2")
ALL_TIERS = ("amx", "avx512", "avx2", "blas")
MODES = ("f32", "int8", "bf16")
# (tier, mode) pairs with a kernel of their own that gives the reference's bits: the amx tier runs int8
# and bf16 on the tiles and float32 on the avx512 tier's kernels (tested there); its bf16 rounds
# otherwise (AMX_BF16: held to the summation bound in tests/test_matmul_kernels.py)
OWN_KERNELS = [(t, m) for t in SIMD_TIERS for m in MODES if t != "amx" or m == "int8"]
AMX_BF16 = ("amx", "bf16")


def require_tier(tier):
    miss = cpu.missing_features(tier)
    if miss:
        pytest.skip("CPU lacks %s needed by tier %s" % (", ".join(miss), tier))


def require_features(*feats):
    have = cpu.host_features()
    miss = [f for f in feats if f not in have]
    if miss:
        pytest.skip("CPU lacks %s" % ", ".join(miss))


def kernel_module(tier, mode):
    """The module cpu.select picks for (mode, tier) -- skips if unusable."""
    require_tier(tier)
    return cpu.select(mode, tier).kernel_module()


def make_data(M, N, K, seed=0, wscale=0.05):
    rng = np.random.default_rng(seed + 1000 * M + 10 * N + K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    W = (rng.standard_normal((N, K)) * wscale).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return x, W, b


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_bit_equal(got, want, what=""):
    g, w = bits(got), bits(want)
    if g.shape != w.shape:
        raise AssertionError("%s: shape %s != %s" % (what, g.shape, w.shape))
    bad = g != w
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            "%s: %d / %d elements differ, first at %s: %r vs %r" % (what, bad.sum(), bad.size, idx, got[idx], want[idx])
        )


def bf16_error_ratio(x, W, b, y):
    """max |y - exact| / bound over the elements, where exact is the float64 sum of the bf16 numbers the
    kernels multiply and bound = (K + 2) 2^-24 (|x| @ |W|^T + |b|) + K 2^-126: a float32 rounding per k
    and the bias, and each product or sum below 2^-126 flushed to zero."""
    xb, wb = reference.bf16_round(x).astype(np.float64), reference.bf16_round(W).astype(np.float64)
    K = x.shape[1]
    exact = xb @ wb.T + b
    bound = (K + 2) * 2.0**-24 * (np.abs(xb) @ np.abs(wb).T + np.abs(b)) + K * 2.0**-126
    return (np.abs(y - exact) / bound).max(), np.abs(y - exact).max()


def bf16_on_tiles(tier=None):
    """Whether bf16 products on ``tier`` (default: the one in use) run on AMX's tiles, which round
    otherwise than vdpbf16ps (kernels/amx.py): such results are held to the summation bound."""
    return cpu.select("bf16", tier).module.endswith(".amx")
