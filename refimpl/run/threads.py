"""How many threads refimpl computes with.

Only BLAS runs threads: the numba kernels are single-threaded (kernels.py says
why), so BLAS and numba never compete for cores. BLAS defaults to the number of
cores, or to OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when set before start-up.
``set_threads(n)`` changes it at run time through threadpoolctl, which finds the
BLAS library NumPy loaded (OpenBLAS, MKL or BLIS).
"""

from __future__ import annotations

import os

from refimpl.checks import positive_int


def set_threads(n: int | None):
    """Use ``n`` BLAS threads from now on (None: the number of cores)."""
    from threadpoolctl import threadpool_limits

    n = positive_int("threads", (os.cpu_count() or 1) if n is None else n)
    threadpool_limits(limits=n, user_api="blas")


def blas_info() -> list[dict]:
    """threadpoolctl's description of the BLAS libraries loaded (library, version, architecture, threads)."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that threadpoolctl sees it)
    from threadpoolctl import threadpool_info

    return [info for info in threadpool_info() if info.get("user_api") == "blas"]
