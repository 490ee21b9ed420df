"""A forward pass adapts to the machine's load (policy.LOAD_ADAPTATION): on an otherwise idle machine
the small kernels run in parallel too, so that numba's worker never sleeps between the products; with
other processes busy on some cores, the pass runs on the cores they leave free. The load is read from
/proc/stat (policy.LoadMonitor); the choice never changes a result."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest

from refimpl.engines.fast.kernels import attention as attention_kernels
from refimpl.engines.fast.kernels import policy


class FakeMachine:
    """/proc/stat's busy seconds, this process's CPU seconds and the clock, set by the test."""

    def __init__(self, cpus=2):
        self.now, self.stat, self.own, self.cpus, self.reads = 100.0, 50.0, 3.0, cpus, 0
        self.readable = True
        self.running = 0  # other threads running at this moment (/proc/loadavg)

    def read_stat(self):
        self.reads += 1
        return (self.stat, self.cpus) if self.readable else None

    def monitor(self, window=0.1, stale_after=0.3):
        return policy.LoadMonitor(
            window, self.read_stat, lambda: self.now, lambda: self.own, stale_after, lambda: self.running
        )


def test_the_monitor_counts_other_processes_work_over_its_window():
    machine = FakeMachine()
    monitor = machine.monitor()
    assert monitor.busy(2) is None and monitor.free_cores() is None  # one reading: no window yet
    machine.now += 0.2
    machine.stat += 0.3  # 0.3 s of busy CPU time in 0.2 s, 0.1 s of it this process's own
    machine.own += 0.1
    assert monitor.busy(2) is True  # (0.3 - 0.1) / 0.2 = 1 core of other work: 1 free for 2 threads
    assert monitor.busy(1) is False  # room for one
    assert monitor.others == pytest.approx(1.0) and monitor.free_cores() == pytest.approx(1.0)
    reads = machine.reads
    machine.now += 0.05  # within the window: the last reading answers
    machine.stat += 10.0
    assert monitor.busy(2) is True and machine.reads == reads
    machine.now += 0.2  # 10.02 s busy, all of them ours: nobody else
    machine.stat += 0.02
    machine.own += 10.02
    assert monitor.busy(2) is False and monitor.others == pytest.approx(0.0, abs=1e-9)
    assert monitor.free_cores() == pytest.approx(2.0)
    assert monitor.busy(3) is True  # 2 CPUs cannot hold 3 threads
    machine.now += 0.2
    machine.stat += 0.08  # 0.4 of a core: 1.6 free, SPARE_CORES (0.5) short of 2 at most
    assert monitor.busy(2) is False and monitor.others == pytest.approx(0.4)
    machine.readable = False
    machine.now += 0.2
    assert monitor.busy(2) is None and monitor.free_cores() is None


def test_after_a_pause_the_monitor_counts_the_threads_running_now():
    """A neighbour busy on both cores for 6 s while this process waited, stopped now: the average over
    the pause says busy, the moment says quiet (tools/bench.py's engines in turn)."""
    machine = FakeMachine()
    monitor = machine.monitor()
    monitor.busy(2)
    machine.now += 6.0
    machine.stat += 12.0
    assert monitor.busy(2) is False and monitor.others == 0.0
    machine.now += 0.1  # one window later the counts answer again: nobody else in it
    machine.stat += 0.15
    machine.own += 0.15
    assert monitor.busy(2) is False and monitor.others == pytest.approx(0.0, abs=1e-9)
    machine.now += 2.0  # a pause with a neighbour running now: one other thread
    machine.running = 1
    assert monitor.busy(2) is True and monitor.others == 1.0 and monitor.free_cores() == 1.0
    machine.running = 5
    machine.now += 2.0
    assert monitor.busy(2) is True and monitor.others == 2.0  # never more than the CPUs counted
    machine.running = None  # /proc/loadavg unreadable, or this process pinned to some CPUs only: the average
    machine.now += 2.0
    machine.stat += 1.0
    assert monitor.busy(2) is False and monitor.others == pytest.approx(0.5)
    machine.running = 0
    machine.now += 0.5  # not a pause: this process ran on a core and a half, others on a core for 0.5 s
    machine.own += 0.75
    machine.stat += 1.25
    assert monitor.busy(2) is True and monitor.others == pytest.approx(1.0)
    machine.now += 0.31  # a pause just past stale_after, this process under half a core busy: the moment
    machine.own += 0.14
    machine.stat += 0.9
    assert monitor.busy(2) is False and monitor.others == 0.0
    machine.readable = False
    machine.now += 2.0
    assert monitor.busy(2) is None and monitor.free_cores() is None


def test_running_others_counts_the_machine_less_this_process(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.73 1.38 1.39 4/87 4545\n")
    tasks = tmp_path / "task"
    for tid, state in ((1, "R"), (2, "S"), (3, "R"), (4, "D"), (5, "R")):
        (tasks / str(tid)).mkdir(parents=True)
        (tasks / str(tid) / "stat").write_text(f"{tid} (py (x) thread) {state} 1 2 3\n")  # brackets in the name
    (tasks / "5" / "stat").unlink()  # a thread that ended between the listing and the read
    all_cpus = set(range(os.cpu_count()))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: all_cpus)
    others = policy.running_others(str(loadavg), str(tasks))
    print("others running:", others)
    assert others == 2  # 4 on the machine, 2 of them this process's
    loadavg.write_text("0.73 1.38 1.39 1/87 4545\n")
    assert policy.running_others(str(loadavg), str(tasks)) == 0  # never below none
    loadavg.write_text("0.73 1.38\n")
    assert policy.running_others(str(loadavg), str(tasks)) is None
    assert policy.running_others(str(tmp_path / "absent"), str(tasks)) is None
    if os.cpu_count() > 1:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # pinned: whose CPUs are busy is unknown
        loadavg.write_text("0.73 1.38 1.39 4/87 4545\n")
        assert policy.running_others(str(loadavg), str(tasks)) is None
    monkeypatch.undo()
    real = policy.running_others()
    print("on this machine now:", real)
    if len(os.sched_getaffinity(0)) == os.cpu_count() and os.path.exists("/proc/loadavg"):
        assert real is not None


def test_proc_stat_is_read_for_the_cpus_this_process_may_use(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    ticks = os.sysconf("SC_CLK_TCK")
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
    for cpu in range(max(allowed) + 2):  # one more CPU than allowed: not counted
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{cpu} 10 1 5 1000 7 2 3 4 0 0")
    lines.append("intr 12345 1 2 3")
    stat = tmp_path / "stat"
    stat.write_text("\n".join(lines) + "\n")
    seconds, cpus = policy.proc_stat_busy_seconds(str(stat))
    print("busy seconds", seconds, "on", cpus, "CPUs")
    assert cpus == len(allowed)
    assert seconds == pytest.approx(len(allowed) * (10 + 1 + 5 + 2 + 3 + 4) / ticks)  # idle and iowait left out
    stat.write_text("cpu0 10 x 5 1000 7 2 3 4\n")
    assert policy.proc_stat_busy_seconds(str(stat)) is None
    stat.write_text("cpu0 10 1 5\n")  # too few fields
    assert policy.proc_stat_busy_seconds(str(stat)) is None
    assert policy.proc_stat_busy_seconds(str(tmp_path / "absent")) is None
    real = policy.proc_stat_busy_seconds()
    if real is None:
        pytest.skip("no /proc/stat here: the pass does not adapt (state off)")
    assert real[1] >= 1 and real[0] > 0


def test_a_busy_core_is_seen():
    """A process spinning on one core for a second: the monitor sees about one core of other work."""
    if policy.proc_stat_busy_seconds() is None:
        pytest.skip("no /proc/stat here")
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    hog = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # the interpreter is running its loop
        monitor = policy.LoadMonitor(window=0.4)
        monitor.busy(1)
        time.sleep(0.5)
        busy = monitor.busy(len(os.sched_getaffinity(0)))  # every CPU wanted: the busy one is not free
        print(f"other work: {monitor.others:.2f} cores of {monitor.cpus}")
        assert busy is True and 0.6 < monitor.others < monitor.cpus + 0.2
    finally:
        hog.kill()
        hog.wait()


def test_threads_under_load():
    assert policy.threads_under_load(2, None) == 2
    assert policy.threads_under_load(2, 1.0) == 1
    assert policy.threads_under_load(2, 0.2) == 1  # at least one
    assert policy.threads_under_load(2, 1.6) == 2
    assert policy.threads_under_load(4, 2.4) == 2
    assert policy.threads_under_load(2, 7.0) == 2  # never more than asked for


@pytest.fixture
def spinning_briefly(monkeypatch):
    """The environment refimpl sets up: GNU OpenMP with a short spin, parallel regions allowed."""
    monkeypatch.setattr(policy, "AUTO_PARALLEL", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing to run in parallel")


def test_each_state_of_a_pass(monkeypatch, spinning_briefly):
    threads = numba.get_num_threads()
    seen = {}
    for state in ("quiet", "busy", "off"):
        monkeypatch.setattr(policy, "LOAD_ADAPTATION", state)
        with policy.forward_pass():
            seen[state] = (policy.use_parallel(1.0, 1e9), numba.get_num_threads())
        assert numba.get_num_threads() == threads, "the thread count is given back after the pass"
        with policy.forward_pass(on_blas=True):  # OpenBLAS's threads are not numba's to share
            assert not policy.use_parallel(1.0, 1e9) and numba.get_num_threads() == threads
    print(seen)
    assert seen == {"quiet": (True, threads), "busy": (False, 1), "off": (False, threads)}
    assert not policy.use_parallel(1.0, 1e9), "outside a pass the thresholds hold"
    monkeypatch.setattr(policy, "LOAD_ADAPTATION", "sometimes")
    with pytest.raises(ValueError, match="LOAD_ADAPTATION must be auto, quiet, busy or off, not 'sometimes'"):
        policy.load_state()


def test_auto_follows_the_monitor(monkeypatch, spinning_briefly):
    machine = FakeMachine()
    monitor = machine.monitor()
    monkeypatch.setattr(policy, "LOAD", monitor)
    monkeypatch.setattr(policy, "LOAD_ADAPTATION", "auto")
    monitor.busy(2)
    assert policy.load_state() == "off"  # no window yet: as before the monitor existed
    machine.now += 0.2
    machine.stat += 0.2  # one core of others' work
    assert policy.load_state() == "busy"
    with policy.forward_pass():
        assert numba.get_num_threads() == 1
    machine.now += 0.2
    assert policy.load_state() == "quiet"
    with policy.forward_pass():
        assert policy.use_parallel(1.0, 1e9) and numba.get_num_threads() >= 2


def test_the_states_give_the_same_embeddings(klue_model, monkeypatch, spinning_briefly):
    """Batch 1 on the klue-shaped model in every state, every compute mode: the same bits; "quiet" runs
    attention's parallel driver, the others its serial one (so the states did differ)."""
    from refimpl import SentenceTransformer

    calls = []
    real_serial, real_parallel = attention_kernels._serial, attention_kernels._parallel
    monkeypatch.setattr(attention_kernels, "_serial", lambda *a: (calls.append("serial"), real_serial(*a)))
    monkeypatch.setattr(attention_kernels, "_parallel", lambda *a: (calls.append("parallel"), real_parallel(*a)))
    text = ["오늘은 날씨가 맑고 바람이 시원하게 분다"]
    for compute in ("float32", "int8", "bfloat16"):
        model = SentenceTransformer(str(klue_model), compute=compute)
        vectors = {}
        for state in ("off", "quiet", "busy"):
            monkeypatch.setattr(policy, "LOAD_ADAPTATION", state)
            calls.clear()
            vectors[state] = model.encode(text)
            assert set(calls) == {"parallel" if state == "quiet" else "serial"}, (state, calls)
        diffs = {state: float(np.abs(v - vectors["off"]).max()) for state, v in vectors.items()}
        print(compute, "max difference to 'off':", diffs)
        assert all(np.array_equal(v, vectors["off"]) for v in vectors.values())
