"""How many threads refimpl computes with.

Two pools can run: numba's, for refimpl's own kernels (the fast engine's matrix products, attention
and LayerNorm on the AVX2 and AVX-512 tiers), and BLAS's, for NumPy's products (the BLAS tier, float64
mode and the reference engine). A forward pass uses one of them for its products, never both at once.
Both default to the number of cores (or NUMBA_NUM_THREADS / OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when
set before start-up). ``set_threads(n)`` changes both at run time, for the whole process: BLAS's through
threadpoolctl, which finds the BLAS library NumPy loaded (OpenBLAS, MKL or BLIS), numba's with
``numba.set_num_threads`` in every thread that runs a forward pass (numba's count is per thread).
"""

from __future__ import annotations

import os

from refimpl.checks import positive_int


def set_threads(n: int | None):
    """Use ``n`` threads from now on (None: the number of cores), in BLAS and in numba's kernels."""
    from threadpoolctl import threadpool_limits

    from refimpl.engines.fast.kernels import threads  # sets numba's threading layer up before its pool starts

    n = positive_int("threads", (os.cpu_count() or 1) if n is None else n)
    threadpool_limits(limits=n, user_api="blas")
    threads.use_threads(n)  # numba's count, in every thread that runs a pass from now on


def blas_info() -> list[dict]:
    """threadpoolctl's description of the BLAS libraries loaded (library, version, architecture, threads)."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that threadpoolctl sees it)
    from threadpoolctl import threadpool_info

    return [info for info in threadpool_info() if info.get("user_api") == "blas"]
