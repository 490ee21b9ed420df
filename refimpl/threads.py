"""How many threads refimpl computes with.

Only BLAS runs threads: the numba kernels are single-threaded (kernels.py says
why), so BLAS and numba never compete for cores. OpenBLAS defaults to the
number of cores, or to OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when set before
start-up. ``set_threads(n)`` changes it at run time through the C entry point
of the OpenBLAS that NumPy loaded, found with ctypes (threadpoolctl does the
same, but is not a dependency). When NumPy uses another BLAS, only the
environment variables set before start-up apply.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger("refimpl")

_SETTERS = (
    "scipy_openblas_set_num_threads64_",  # NumPy >= 2 wheels (scipy-openblas, 64-bit ints)
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _loaded_openblas() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(paths)


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count; False when no OpenBLAS entry point was found."""
    import numpy  # noqa: F401  (loads NumPy's BLAS so that /proc/self/maps lists it)

    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return True
    logger.debug("no OpenBLAS found to set threads on; set OPENBLAS_NUM_THREADS before start-up instead")
    return False


def set_threads(n: int | None):
    """Use ``n`` BLAS threads (None: the number of cores)."""
    if n is None:
        n = os.cpu_count() or 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    set_blas_threads(n)
