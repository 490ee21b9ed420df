"""cache=True works: a second process loads the compiled kernels from disk."""

import os
import subprocess
import sys

from tests.matmul_helpers import ROOT, require_tier

CODE = r"""
import sys, time, numpy as np
sys.path.insert(0, %r)
t0 = time.perf_counter()
from refimpl.engines.fast.kernels import matmul as api
x = np.ones((3, 40), np.float32); W = np.ones((20, 40), np.float32)
api.linear(x, api.pack(W, "f32"), None, gelu=True, tier=%r)
print("T=%%.3f" %% (time.perf_counter() - t0))
"""


def test_second_process_uses_cache(tmp_path):
    require_tier("avx2")
    from refimpl.engines.fast.kernels import cpu

    tier = "avx512" if not cpu.missing_features("avx512") else "avx2"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    times = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "-c", CODE % (ROOT, tier)], env=env, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stderr[-2000:]
        times.append(float(r.stdout.split("T=")[1]))
    nidx = sum(f.endswith(".nbi") for _, _, fs in os.walk(tmp_path) for f in fs)
    print("first (compile) %.2fs, second (cache) %.2fs, %d index files" % (times[0], times[1], nidx))
    assert nidx > 0
    assert times[1] < times[0] / 2
