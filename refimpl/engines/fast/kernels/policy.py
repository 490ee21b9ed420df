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

LOAD_ADAPTATION (passes whose products run on refimpl's kernels):
below their size thresholds attention and the LayerNorms run serial, and a serial stretch longer
than GNU OpenMP's short spin (~25 us) puts numba's worker to sleep; the next product then waits
35-60 us for it (on a KVM guest, ``python -m tools.microbench wake``), three times a layer at
batch 1. Run in parallel, they keep the worker awake (batch 1 in int8: 7.1 instead of 8.8 ms on
that guest). But with another process busy on a core every parallel region waits for the worker to
be scheduled beside it, and the same change made batch 1 22-34% slower (``python -m tools.microbench
between``); there a pass does better on the free cores alone. So, per pass:
- "auto" (default): ``LoadMonitor`` tells how busy other processes keep the CPUs this process may
  run on (over the last ``LOAD_WINDOW`` seconds). If the cores they leave free hold all of numba's
  threads (``SPARE_CORES`` short at most): as "quiet". Otherwise: as "busy". Unknown (no /proc/stat):
  as "off". The readings lag: for ``LOAD_WINDOW`` after other work starts or stops, a pass may
  still act on the state before. After a pause (``STALE_AFTER`` with this process mostly idle) the
  average since the last reading tells how busy the others were while this process waited, not now:
  a neighbour that ran then may just have stopped (in tools/bench.py, the engine before in turn: the
  first pass of each turn ran on one core, and the long tail took 1.35-1.42 s against 1.02 alone, on
  the Zen 4). The first reading after a pause counts other processes' threads running at that moment
  instead (``running_others``), or, where that count cannot be had, keeps the average.
- "quiet": the small kernels in parallel too (``use_parallel`` ignores their thresholds).
- "busy": numba's thread count lowered, for the pass, to the cores the others leave free (at least 1).
- "off": neither.
The serial and parallel builds give the same bits at any thread count: the choice never changes a result.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numba

from refimpl.engines.fast.kernels import cpu, threads

AUTO_PARALLEL = None
LOAD_ADAPTATION = "auto"
SPARE_CORES = 0.5  # the free cores may fall this much short of numba's threads and still count as room for them
LOAD_WINDOW = 0.1  # seconds: /proc/stat counts in 10 ms ticks, so over 0.1 s it is within 0.1 core per CPU
STALE_AFTER = 0.3  # seconds since the last reading with this process under half a core busy: a pause
_forward = threading.local()


class LoadMonitor:
    """How busy the CPUs this process may run on are with other processes' work: the non-idle time
    /proc/stat counts on them (steal included: a hypervisor's other guests take the core just the same),
    less this process's own CPU time, over the last window of at least ``window`` seconds.

    ``busy()`` reads at most once per window (a read costs ~10 us on 2 CPUs) and answers from the last
    reading in between; None when the counts cannot be read. The first reading after a pause of at
    least ``stale_after`` seconds, in which this process kept under half a core busy, takes the other
    processes' threads running at that moment (``read_running``, ~90 us for a process of six
    threads) instead of the average over the pause, when it can be had. A snapshot misses a neighbour
    whose threads happen to be off the CPU at that moment, or catches another process's thread passing
    through: that pass then runs as "quiet", or "busy", and the next window's reading corrects it."""

    def __init__(
        self, window=LOAD_WINDOW, read_stat=None, clock=time.monotonic, own_seconds=None,
        stale_after=STALE_AFTER, read_running=None,
    ):  # fmt: skip
        self.window = window
        self.stale_after = stale_after
        self._read_stat = read_stat or proc_stat_busy_seconds
        self._read_running = read_running or running_others
        self._clock = clock
        self._own_seconds = own_seconds or own_cpu_seconds
        self._last = None  # (time, busy seconds of the CPUs, own seconds)
        self._lock = threading.Lock()
        self.others = None  # cores' worth of other processes' work in the last window
        self.cpus = None  # CPUs counted

    def busy(self, threads):
        """Whether other processes leave too few cores free for ``threads`` threads (SPARE_CORES short at
        most), or None."""
        now = self._clock()
        with self._lock:
            if self._last is None or now - self._last[0] >= self.window:
                self._sample(now)
            others, cpus = self.others, self.cpus
        if others is None:
            return None
        return cpus - others < threads - SPARE_CORES

    def free_cores(self):
        """Cores' worth of the CPUs that other processes leave free (at the last reading), or None."""
        with self._lock:
            others, cpus = self.others, self.cpus
        if others is None:
            return None
        return max(0.0, cpus - others)

    def _sample(self, now):
        reading = self._read_stat()
        if reading is None:
            self._last, self.others = None, None
            return
        stat, cpus = reading
        own = self._own_seconds()
        if self._last is not None and now > self._last[0]:
            then, stat_before, own_before = self._last
            gap = now - then
            running = None
            if gap >= self.stale_after and (own - own_before) / gap < 0.5:
                running = self._read_running()
            if running is not None:
                self.others = float(min(running, cpus))
            else:
                self.others = max(0.0, (stat - stat_before) - (own - own_before)) / gap
            self.cpus = cpus
        self._last = (now, stat, own)


def own_cpu_seconds():
    times = os.times()
    return times.user + times.system


def running_others(loadavg="/proc/loadavg", own_tasks="/proc/self/task", readings=2):
    """Threads of other processes running or ready to run right now: /proc/loadavg's fourth field counts
    the whole machine's (the least of ``readings`` reads, so that a thread passing through is not taken
    for a neighbour), less this process's own in state R (the tokenizer's threads may still be spinning
    after it ran). None when the files cannot be read or this process may not run on every CPU (the
    count cannot tell which CPUs the others hold)."""
    try:
        if len(os.sched_getaffinity(0)) != os.cpu_count():
            return None
        # ours first: a thread of ours that stops meanwhile is then not taken for another process's
        own = _running_threads(own_tasks)
        machine = min(int(_read_small(loadavg).split()[3].split(b"/")[0]) for _ in range(readings))
        return max(0, machine - own)
    except (OSError, AttributeError, IndexError, ValueError):
        return None


def _running_threads(tasks):
    running = 0
    for task in os.listdir(tasks):
        try:
            # the state follows the name in brackets, which may itself hold ")" and spaces
            state = _read_small(os.path.join(tasks, task, "stat")).rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended
        running += state == b"R"
    return running


def _read_small(path):
    """The first 4 KiB of a /proc file as bytes: os.read costs a third of open().read() (8 against 24 us)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_IDLE_FIELDS = (3, 4)  # idle, iowait (the fields after the "cpuN" label: user nice system idle iowait ...)


def proc_stat_busy_seconds(path="/proc/stat"):
    """(seconds of non-idle time /proc/stat counts on the CPUs this process may run on, how many CPUs
    it counted), or None."""
    try:
        allowed = os.sched_getaffinity(0)
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, AttributeError):
        return None
    total = 0
    seen = 0
    for line in lines:
        label, _, rest = line.partition(" ")
        if not (label.startswith("cpu") and label[3:].isdigit() and int(label[3:]) in allowed):
            continue
        fields = rest.split()[:8]  # user nice system idle iowait irq softirq steal (guest is in user)
        if len(fields) < 8 or not all(v.isdigit() for v in fields):
            return None
        total += sum(int(v) for i, v in enumerate(fields) if i not in _IDLE_FIELDS)
        seen += 1
    return (total / _TICKS, seen) if seen else None


LOAD = LoadMonitor()
LOAD.busy(1)  # the first reading, so that a window has passed by the first forward pass (loading a model)


def load_state() -> str:
    """How the next pass of the calling thread adapts to the machine's load: "quiet", "busy" or "off"
    (LOAD_ADAPTATION)."""
    if LOAD_ADAPTATION != "auto":
        if LOAD_ADAPTATION not in ("quiet", "busy", "off"):
            raise ValueError(f"policy.LOAD_ADAPTATION must be auto, quiet, busy or off, not {LOAD_ADAPTATION!r}")
        return LOAD_ADAPTATION
    busy = LOAD.busy(numba.get_num_threads())
    return "off" if busy is None else "busy" if busy else "quiet"


def threads_under_load(current: int, free_cores) -> int:
    """numba threads for a pass when others keep some cores busy: the free ones, at least 1, at most
    ``current``."""
    if free_cores is None:
        return current
    return max(1, min(current, int(free_cores + 0.5)))


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
        state = "off" if on_blas else load_state()  # OpenBLAS's own threads: not numba's to share
        snapshot["load"] = state
        snapshot["keep_awake"] = state == "quiet" and snapshot["allowed"]
        snapshot["serial_flops"] = threads.serial_flops()
        before = numba.get_num_threads() if state == "busy" else None
        if before is not None:
            numba.set_num_threads(threads_under_load(before, LOAD.free_cores() if LOAD_ADAPTATION == "auto" else 1))
        try:
            yield
        finally:
            if before is not None:
                numba.set_num_threads(before)
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
    """Whether a kernel of ``work`` runs its parallel build: allowed (AUTO_PARALLEL) and either at least
    ``threshold`` or, inside a forward pass that keeps numba's worker awake (LOAD_ADAPTATION "quiet"), any size."""
    snapshot = getattr(_forward, "snapshot", None)
    if AUTO_PARALLEL is not None:
        allowed = bool(AUTO_PARALLEL)
    else:
        allowed = snapshot["allowed"] if snapshot is not None else _environment_allows()
    big_enough = work >= threshold or (snapshot is not None and snapshot["keep_awake"])
    return allowed and big_enough and numba.get_num_threads() > 1
