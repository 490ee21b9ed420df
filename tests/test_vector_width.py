"""kernels/target.py: on an AVX-512 host numba's loops are vectorised at 512 bits (LLVM's
prefer-256-bit tuning off), unless the user chose numba's target, asked for 256, forced a tier without
AVX-512, or decorated a numba function before refimpl's kernels were imported. Each case runs in a fresh
interpreter: numba fixes its target at the first decorated function."""

import os
import subprocess
import sys

import llvmlite.binding as llvm
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")

REPORT = """
from numba import njit
import numpy as np
from numba.core import config
from refimpl.engines.fast.kernels import target

@njit
def double(x, out):
    for i in range(x.size):
        out[i] = x[i] * np.float32(2.0)

x = np.ones(1000, np.float32)
double(x, np.empty_like(x))
asm = double.inspect_asm(double.signatures[0])
print(target.VECTOR_WIDTH, "zmm" if "%zmm" in asm else "no-zmm", str(config.CPU_FEATURES).endswith("-prefer-256-bit"))
"""


def _run(env_extra, code=REPORT):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "REFIMPL_VECTOR", "REFIMPL_KERNELS"))}
    env.update(env_extra)
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not AVX512, reason="the host has no avx512f: LLVM's loops stay at 256 bits")
def test_avx512_host_vectorises_loops_at_512_bits():
    r = _run({})
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    assert r.stdout.split() == ["512", "zmm", "True"]


@pytest.mark.skipif(not AVX512, reason="the host has no avx512f: nothing to turn off")
def test_256_on_request_and_the_users_target_untouched():
    r = _run({"REFIMPL_VECTOR_WIDTH": "256"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[::2] == ["None", "False"]  # LLVM's own choice (256 bits on Intel's tuning)
    r = _run({"REFIMPL_KERNELS": "avx2"})  # the forced AVX2 tier stands for a CPU without AVX-512
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[::2] == ["None", "False"]
    features = llvm.get_host_cpu_features().flatten()
    r = _run({"NUMBA_CPU_FEATURES": features})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "None" and r.stdout.split()[2] == "False"
    compiled_first = "from numba import njit\nnjit(lambda: 1)()\n" + REPORT  # numba's target already made
    r = _run({}, compiled_first)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "None" and r.stdout.split()[2] == "False"


def test_a_width_refimpl_does_not_honour_is_refused():
    r = _run({"REFIMPL_VECTOR_WIDTH": "1024"}, "import refimpl.engines.fast.kernels")
    assert r.returncode != 0
    assert "REFIMPL_VECTOR_WIDTH='1024': expected 256 or 512" in r.stderr


def test_the_tiers_without_avx512_are_cpus():
    from refimpl.engines.fast.kernels import cpu, target

    assert cpu.ENV_VAR == "REFIMPL_KERNELS"
    assert set(target._TIERS_WITHOUT_AVX512) == {t for t in cpu.TIERS if "avx512f" not in cpu.REQUIRED[t]}
