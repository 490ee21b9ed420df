"""A row's output must not depend on what it is batched with, on M, on its
position inside a register tile / work item, on the thread count or on the
scheduling -- bit for bit, every mode and tier."""

import numba
import numpy as np
import pytest

from refimpl.engines.fast.kernels import matmul as api
from tests.matmul_helpers import MODES, assert_bit_equal, make_data, require_tier


@pytest.mark.parametrize("tier", ("amx", "avx512", "avx2", "blas"))
@pytest.mark.parametrize("mode", MODES)
def test_rows_alone_vs_batched(mode, tier):
    require_tier(tier)
    if tier == "blas" and mode == "f32":
        pytest.skip("BLAS sgemm picks its own blocking: fp32 blas tier is not batch invariant")
    M, N, K = 150, 3072 if mode != "bf16" else 768, 768
    x, W, b = make_data(M, N, K, seed=21)
    p = api.pack(W, mode)
    full = api.linear(x, p, b, gelu=True, tier=tier)
    rows = [0, 1, 6, 7, 8, 47, 48, 63, 64, 65, 100, 149]
    for i in rows:  # every row alone (M=1)
        assert_bit_equal(
            api.linear(x[i : i + 1], p, b, gelu=True, tier=tier),
            full[i : i + 1],
            "%s/%s row %d alone" % (mode, tier, i),
        )
    for lo, hi in ((3, 20), (5, 6), (10, 27), (1, 150), (64, 129), (140, 150), (0, 17)):
        assert_bit_equal(
            api.linear(x[lo:hi], p, b, gelu=True, tier=tier), full[lo:hi], "%s/%s rows %d:%d" % (mode, tier, lo, hi)
        )
    # across work items of rows: rows of a 600-row product alone and in other slices
    tall = make_data(600, 96, K, seed=22)[0]
    p_tall = api.pack(make_data(600, 96, K, seed=23)[1], mode)
    whole = api.linear(tall, p_tall, None, gelu=True, tier=tier)
    for lo, hi in ((255, 258), (500, 600), (0, 1), (511, 513)):
        assert_bit_equal(
            api.linear(tall[lo:hi], p_tall, None, gelu=True, tier=tier),
            whole[lo:hi],
            "%s/%s tall %d:%d" % (mode, tier, lo, hi),
        )
    # the same sentence embedded among different neighbours
    other = make_data(40, N, K, seed=99)[0]
    mix = np.concatenate([other[:13], x[30:47], other[13:]], axis=0)
    assert_bit_equal(
        api.linear(mix, p, b, gelu=True, tier=tier)[13:30], full[30:47], "%s/%s mixed batch" % (mode, tier)
    )


@pytest.mark.parametrize("tier", ("amx", "avx512", "avx2"))
@pytest.mark.parametrize("mode", MODES)
def test_threads_and_scheduling(mode, tier):
    require_tier(tier)
    x, W, b = make_data(70, 768, 768, seed=22)
    p = api.pack(W, mode)
    ref = api.linear(x, p, b, tier=tier)
    nmax = numba.config.NUMBA_NUM_THREADS
    try:
        for nt in sorted({1, nmax}):
            numba.set_num_threads(nt)
            for par in (True, False, None):
                assert_bit_equal(
                    api.linear(x, p, b, tier=tier, parallel=par),
                    ref,
                    "%s/%s threads=%d parallel=%s" % (mode, tier, nt, par),
                )
                for chunk in (1, 3):  # numba dynamic scheduling
                    old = numba.set_parallel_chunksize(chunk)
                    try:
                        assert_bit_equal(
                            api.linear(x, p, b, tier=tier, parallel=True),
                            ref,
                            "%s/%s threads=%d chunk=%d" % (mode, tier, nt, chunk),
                        )
                    finally:
                        numba.set_parallel_chunksize(old)
    finally:
        numba.set_num_threads(nmax)
