"""Threading policy for the kernels (numba ``prange``, 2 cores, shared machine).

Findings on this 2-vCPU KVM guest (numba 0.68.1; tbb is not installed, so the
usable layers are 'omp' (GNU libgomp) and 'workqueue'); bench.py --load and
proto measurements, "busy" = a `while True: pass` pinned to core 0:

* omp, default wait policy (GOMP_SPINCOUNT 300000 = several ms of spinning):
  lowest idle overhead (~1.5 us per parallel region) but back-to-back calls
  stall under load: the waiting thread spins on the free core while the
  thread it waits for sits behind the busy process -> ~8 ms (one scheduler
  slice) per call, medians 40-48x slower for 17x768x3072.  Not graceful.
* omp + GOMP_SPINCOUNT=1000 (~15-30 us of spinning, then sleep; 25-30 us on a Zen 5,
  python -m tools.microbench wake): same idle speed
  for real work, 2.0-3.1x slower with one core busy, no stalls (reproduced
  twice).  GOMP_SPINCOUNT=10000 still stalls (0.5 ms medians).
* omp + OMP_WAIT_POLICY=PASSIVE: graceful (1.5-1.9x) but waking the worker
  costs ~40 us per region; the 72-linear batch-1 pass gets no speed-up from
  the second thread at all (22 ms vs 12 ms with spinning omp).
* workqueue: graceful, but ~50-60 us per parallel region even when idle.
* numba.set_parallel_chunksize (dynamic scheduling): 2-10 us extra per call,
  no better under load.

Default (``ensure_configured()``, applied when the kernels are imported -- and
again by api.linear -- unless FASTMM_THREADS=none, the user already set these
variables, or numba's pool is already running): layer 'omp' and
GOMP_SPINCOUNT = ``short_spincount()``: the spins that last SPIN_US, 1000 at least. libgomp
counts spins, each a ``pause``: 1000 of them lasted 25-30 us on the Zen 5 they were chosen on
(above), but a pause takes 8.5-9 ns on a Sapphire Rapids-class Xeon (KVM; ``pause_ns``), whose
workers then fell asleep after 9 us, before the next product's Python glue was done: batch 1 in
int8 took 11.5-12.0 ms at 1000 and 9.0-10.0 ms at 3000, with core 0 busy 16.0-16.3 and 18.8-19.3
ms (``GOMP_SPINCOUNT=N python -m tools.batch_one int8 --tokens 17 --busy``, alternating, two runs
each). Import refimpl.engines.fast.kernels (or call configure()) before running any
other numba parallel code, or the pool starts with libgomp's defaults.  Products below
``serial_flops()`` run in the calling thread (``api.linear(parallel=None)``).
Results are bit-identical whatever the policy.  Settings only take effect
before numba starts its thread pool (libgomp reads them when loaded).
"""

import importlib.util
import os

_SERIAL_PASSIVE = 24e6
_SERIAL_SPIN = 2e6
DEFAULT_SPINCOUNT = "1000"  # the fewest spins: what the Zen CPUs were measured with
SPIN_US = 25.0  # how long the workers spin after a region: 1000 spins on a Zen 5
MAX_SPINCOUNT = 5000  # a spin-wait of 10,000 stalled under load (see above)
_short_spincount = None
configured = False
_wanted = None  # the thread count use_threads asked for, applied by every forward pass (apply_wanted)


def use_threads(n):
    """Run numba's kernels on ``n`` threads (at most NUMBA_NUM_THREADS) from now on, in every thread
    that runs a forward pass: ``numba.set_num_threads`` sets the calling thread's count only, so a
    model loaded with threads=1 and used from a server's or the user's other threads would otherwise
    run there on all of numba's threads. ``policy.forward_pass`` calls ``apply_wanted``."""
    import numba

    global _wanted
    _wanted = min(int(n), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(_wanted)


def apply_wanted():
    """Give the calling thread the count ``use_threads`` asked for (nothing when it was never called)."""
    if _wanted is not None:
        import numba

        if numba.get_num_threads() != _wanted:
            numba.set_num_threads(_wanted)


def launched():
    """True once numba has started its thread pool (layer fixed from then)."""
    try:
        from numba.np.ufunc import parallel

        return bool(parallel._is_initialized)
    except Exception:  # pragma: no cover
        return False


def available_layers():
    """Threading layers numba could load here (without loading them)."""
    out = []
    for name, mod in (
        ("omp", "numba.np.ufunc.omppool"),
        ("workqueue", "numba.np.ufunc.workqueue"),
        ("tbb", "numba.np.ufunc.tbbpool"),
    ):
        if importlib.util.find_spec(mod) is None:
            continue
        if name == "tbb":
            import ctypes.util

            if ctypes.util.find_library("tbb") is None and importlib.util.find_spec("tbb") is None:
                continue
        out.append(name)
    return out


def pause_ns():
    """How long one ``pause`` takes here: the fastest of 5 runs of 2,000 (a preempted run only
    lengthens it, so the spin count errs short). None off x86."""
    import platform
    import time

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    from refimpl.engines.fast.kernels import intrinsics

    best = None
    for _ in range(6):  # the first call may compile or load the function from numba's cache
        t = time.perf_counter()
        intrinsics.pauses(2000)
        elapsed = time.perf_counter() - t
        best = elapsed if best is None else min(best, elapsed)
    return best * 1e9 / 2000


def short_spincount():
    """GNU OpenMP spins that last about SPIN_US on this CPU, within [DEFAULT_SPINCOUNT, MAX_SPINCOUNT]
    (measured once per process)."""
    global _short_spincount
    if _short_spincount is None:
        ns = pause_ns()
        spins = int(DEFAULT_SPINCOUNT) if not ns else round(SPIN_US * 1000 / ns, -2)
        _short_spincount = int(min(max(spins, int(DEFAULT_SPINCOUNT)), MAX_SPINCOUNT))
    return _short_spincount


def ensure_configured():
    """Apply the default policy once, before numba's pool starts (no-op after)."""
    global configured
    if configured:
        return
    configured = True
    if os.environ.get("FASTMM_THREADS", "").lower() == "none" or launched():
        return
    from numba.core import config

    if "NUMBA_THREADING_LAYER" not in os.environ and "omp" in available_layers():
        config.THREADING_LAYER = "omp"
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(short_spincount())


def configure(layer="omp", spincount="short", wait_policy=None, num_threads=None):
    """Select the threading layer / OpenMP spin count ("short": ``short_spincount()``) or wait policy
    before first use.

    Returns a dict of what will be used.  Raises RuntimeError if numba's
    thread pool is already running with different settings.
    """
    import numba
    from numba.core import config

    if launched():
        active = numba.threading_layer()
        if layer and active != layer:
            raise RuntimeError("numba thread pool already running with layer %r" % active)
        if wait_policy and active == "omp" and os.environ.get("OMP_WAIT_POLICY", "").upper() != wait_policy.upper():
            raise RuntimeError(
                "OpenMP already initialised; set OMP_WAIT_POLICY=%s before the first parallel call" % wait_policy
            )
    else:
        if layer:
            if layer not in available_layers():
                raise ValueError("threading layer %r not available (have %s)" % (layer, available_layers()))
            config.THREADING_LAYER = layer
        if wait_policy:
            os.environ["OMP_WAIT_POLICY"] = wait_policy.upper()
        if spincount is not None:
            os.environ["GOMP_SPINCOUNT"] = str(short_spincount() if spincount == "short" else spincount)
    global configured
    configured = True
    if num_threads:
        numba.set_num_threads(num_threads)
    return info()


def serial_flops():
    """Flop count below which api.linear runs in the calling thread."""
    from numba.core import config

    pol = os.environ.get("OMP_WAIT_POLICY", "").upper()
    layer = config.THREADING_LAYER
    if launched():
        import numba

        layer = numba.threading_layer()
    if layer == "workqueue" or pol == "PASSIVE":
        return _SERIAL_PASSIVE
    return _SERIAL_SPIN


def info():
    import numba
    from numba.core import config

    return {
        "available": available_layers(),
        "requested": config.THREADING_LAYER,
        "active": numba.threading_layer() if launched() else None,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "threads": numba.get_num_threads() if launched() else config.NUMBA_NUM_THREADS,
        "serial_flops": serial_flops(),
    }
