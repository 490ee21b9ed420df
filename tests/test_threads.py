"""The worker threads' spin-wait: GNU OpenMP counts spins of one ``pause`` each, and a pause lasts
from ~8 ns (a Sapphire Rapids-class Xeon) to ~25-30 ns (Zen), so threads.short_spincount sets the
count that lasts threads.SPIN_US here, and a fresh process starts with it."""

import os
import subprocess
import sys

import pytest

from refimpl.engines.fast.kernels import policy, threads
from tests.matmul_helpers import ROOT


def test_the_spin_count_lasts_spin_us_within_its_bounds(monkeypatch):
    ns = threads.pause_ns()
    if ns is None:
        pytest.skip("not an x86 CPU: no pause instruction, the fewest spins")
    spins = threads.short_spincount()
    print("pause %.1f ns here: %d spins for %.0f us" % (ns, spins, threads.SPIN_US))
    assert 0.5 < ns < 500
    assert int(threads.DEFAULT_SPINCOUNT) <= spins <= threads.MAX_SPINCOUNT
    want = min(max(threads.SPIN_US * 1000 / ns, int(threads.DEFAULT_SPINCOUNT)), threads.MAX_SPINCOUNT)
    assert abs(spins - want) <= 0.35 * want  # the process measured it once, at import; now is now
    for measured, expected in ((8.5, 2900), (27.0, 1000), (1.0, 5000), (None, 1000)):
        monkeypatch.setattr(threads, "_short_spincount", None)
        monkeypatch.setattr(threads, "pause_ns", lambda measured=measured: measured)
        assert threads.short_spincount() == expected, measured
    monkeypatch.setattr(threads, "_short_spincount", 2900)
    monkeypatch.setattr(policy, "AUTO_PARALLEL", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for count, short in (("2900", True), ("2901", False), ("300000", False)):
        monkeypatch.setenv("GOMP_SPINCOUNT", count)
        assert policy._short_spin() is short, count


SCRIPT = "import os, refimpl.engines.fast.kernels as k; print(os.environ.get('GOMP_SPINCOUNT'))"


@pytest.mark.parametrize("preset", [None, "777"])
def test_a_fresh_process_spins_the_calibrated_count_unless_told(preset):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "FASTMM_THREADS")}
    if preset:
        env["GOMP_SPINCOUNT"] = preset
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = r.stdout.strip()
    print("GOMP_SPINCOUNT in a fresh process:", got)
    if preset:
        assert got == preset  # the user's setting stands
    else:
        assert int(threads.DEFAULT_SPINCOUNT) <= int(got) <= threads.MAX_SPINCOUNT
