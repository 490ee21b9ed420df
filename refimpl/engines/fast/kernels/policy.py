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
  GOMP_SPINCOUNT at most threads.short_spincount() (what ``threads.ensure_configured`` sets, so
  the default) unless the products run through OpenBLAS (``products_on_blas``; libgomp reads the
  variable when it loads, so a spin count set after another library loaded it is not seen); and
  only above each kernel's size threshold (attention.SERIAL_BELOW,
  norms.PARALLEL_MIN_ELEMENTS).
- True / False: force on (above the thresholds) / off.
Explicit ``parallel=True/False`` arguments and the ``*_parallel`` / ``*_serial`` builds ignore it.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numba

from refimpl.engines.fast.kernels import cpu, threads

AUTO_PARALLEL = None
_forward = threading.local()


@contextlib.contextmanager
def products_on_blas(on: bool = True):
    """While a forward pass runs its products through OpenBLAS (float64, the BLAS tier, no packed
    weights), GNU OpenMP's short spins do not make a parallel region safe: OpenBLAS's own threads
    spin after every product and would fight numba's workers for the two cores."""
    previous = getattr(_forward, "blas", False)
    _forward.blas = on
    try:
        yield
    finally:
        _forward.blas = previous


# the variables the kernels' choices read (wait policy, spin count, forced tier)
VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", cpu.ENV_VAR)


@contextlib.contextmanager
def forward_pass(on_blas: bool = False):
    """One forward pass (``products_on_blas(on_blas)``), with the environment read once at its start:
    its ~100 kernel calls would otherwise look up os.environ ~300 times, 0.5 ms of a 6 ms batch-1
    int8 pass (cProfile). A variable changed during the pass takes effect at the next one."""
    previous = getattr(_forward, "snapshot", None)
    threads.apply_wanted()  # numba's thread count is per calling thread
    with products_on_blas(on_blas):
        snapshot = {name: os.environ.get(name, "") for name in VARIABLES}
        _forward.snapshot = snapshot
        snapshot["allowed"] = _environment_allows()
        snapshot["serial_flops"] = threads.serial_flops()
        try:
            yield
        finally:
            _forward.snapshot = previous


def getenv(name: str) -> str:
    """os.environ.get(name, ""), as it was when the current forward pass began (``forward_pass``)."""
    snapshot = getattr(_forward, "snapshot", None)
    if snapshot is not None and name in snapshot:
        return snapshot[name]
    return os.environ.get(name, "")


def serial_flops() -> float:
    """threads.serial_flops(), once per forward pass."""
    snapshot = getattr(_forward, "snapshot", None)
    return snapshot["serial_flops"] if snapshot is not None else threads.serial_flops()


def _short_spin() -> bool:
    """GNU OpenMP told to spin at most threads.short_spincount() times (the policy ``threads``
    applies): workers sleep after ~25 us, so they neither stall under load nor burn a core."""
    if getenv("OMP_WAIT_POLICY").lower() == "active":
        return False
    try:
        return int(getenv("GOMP_SPINCOUNT")) <= threads.short_spincount()
    except ValueError:
        return False


def _environment_allows() -> bool:
    layer = str(numba.config.THREADING_LAYER).lower()
    if layer in ("tbb", "workqueue"):
        return True
    if getenv("OMP_WAIT_POLICY").lower() == "passive":
        return True
    return _short_spin() and not getattr(_forward, "blas", False)


def use_parallel(work: float, threshold: float) -> bool:
    snapshot = getattr(_forward, "snapshot", None)
    if AUTO_PARALLEL is not None:
        allowed = bool(AUTO_PARALLEL)
    else:
        allowed = snapshot["allowed"] if snapshot is not None else _environment_allows()
    return allowed and work >= threshold and numba.get_num_threads() > 1
