"""When the un-suffixed entry points (attention(..., parallel=None), norms.bias_gelu, ...) may
run their parallel builds.

Measured (bench.py load; report): numba's default threading layer here is GNU OpenMP (TBB is not
installed), whose workers spin after every parallel region; next to OpenBLAS's own threads that
made a whole encoder layer 3-18x slower. Parallel regions also cost a wake-up per call (OMP
passive ~40 us, workqueue ~100 us x 2 rounds, TBB ~10 us) and, when another process holds a
core, can wait a whole scheduler slice (ms) for the descheduled worker.

AUTO_PARALLEL:
- None (default): allowed only when the environment makes numba's workers sleep instead of spin:
  NUMBA_THREADING_LAYER=tbb or workqueue, OMP_WAIT_POLICY=passive, or GNU OpenMP with
  GOMP_SPINCOUNT at most threads.DEFAULT_SPINCOUNT (what ``threads.ensure_configured`` sets, so
  the default); and only above each kernel's size threshold (attention.SERIAL_BELOW,
  norms.PARALLEL_MIN_ELEMENTS).
- True / False: force on (above the thresholds) / off.
Explicit ``parallel=True/False`` arguments and the ``*_parallel`` / ``*_serial`` builds ignore it.
"""

from __future__ import annotations

import os

import numba

from refimpl.engines.fast.kernels import threads

AUTO_PARALLEL = None


def _short_spin() -> bool:
    """GNU OpenMP told to spin at most threads.DEFAULT_SPINCOUNT times (the policy ``threads``
    applies): workers sleep after ~15 us, so they neither stall under load nor burn a core."""
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "active":
        return False
    try:
        return int(os.environ.get("GOMP_SPINCOUNT", "")) <= int(threads.DEFAULT_SPINCOUNT)
    except ValueError:
        return False


def _environment_allows() -> bool:
    layer = str(numba.config.THREADING_LAYER).lower()
    if layer in ("tbb", "workqueue"):
        return True
    return os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive" or _short_spin()


def use_parallel(work: float, threshold: float) -> bool:
    allowed = _environment_allows() if AUTO_PARALLEL is None else bool(AUTO_PARALLEL)
    return allowed and work >= threshold and numba.get_num_threads() > 1
