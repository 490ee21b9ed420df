"""Same bits on an AVX2 host: the kernels compiled for an AVX2 + FMA target (NUMBA_CPU_NAME=haswell
with haswell's feature list: no AVX-512, 16 vector registers) in a subprocess give exactly this
host's results (which use the AVX-512 tiles when the host has them).

(First run compiles everything for haswell into .numba_cache_haswell: ~30 s; cached after. Note
that numba's disk cache is keyed on the file defining each function only: after editing
refimpl/engines/fast/kernels/_vector.py, _intrinsics.py or mathf.py, delete the cache directories.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from refimpl.engines.fast.kernels import norms, mathf, target as cpu
from refimpl.engines.fast.kernels.attention import attention
from numba import njit
rng = np.random.default_rng(0)
lengths = [1, 3, 17, 64, 129, 200]
cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
N = int(cu[-1])
q, k, v = ((rng.standard_normal((N, 768)) * 3 ** 0.5).astype(np.float32) for _ in range(3))
att = attention(q, k, v, cu, 12, np.float32(0.125))
y = rng.standard_normal((N, 768)).astype(np.float32)
res = (rng.standard_normal((N, 768)) * 5 + 3).astype(np.float32)
g = rng.standard_normal(768).astype(np.float32)
ln = np.empty_like(y)
norms.bias_residual_layer_norm_parallel(y.copy(), g, res, g, g, np.float32(1e-5), np.float32(1 / 768), ln)
h = (rng.standard_normal((N, 3072)) * 3).astype(np.float32)
norms.bias_gelu_parallel(h, np.zeros(3072, np.float32))
x = np.concatenate([rng.uniform(-104, 89, 200000), rng.standard_normal(200000) * 4]).astype(np.float32)
@njit(fastmath={"reassoc", "contract"}, error_model="numpy")
def apply(x, e, r):
    for i in range(x.shape[0]):
        e[i] = mathf.exp_f32(x[i])
        r[i] = mathf.erf_f32(x[i])
e, r = np.empty_like(x), np.empty_like(x)
apply(x, e, r)
np.savez(sys.argv[1], att=att, ln=ln, gelu=h, exp=e, erf=r, wide=np.array(cpu.HOST_AVX512))
"""


HASWELL = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+lzcnt,+mmx,+movbe,"
    "+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt,"
    "-avx512f,-avx512vl,-avx512bw,-avx512dq,-avx512cd"
)


def run(tmp_path, name, env_extra):
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, **env_extra)
    subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(ROOT)], env=env, check=True, timeout=600)
    return np.load(out)


def test_avx2_build_gives_the_same_bits(tmp_path):
    host = run(tmp_path, "host", {})
    hsw = run(
        tmp_path,
        "haswell",
        {
            "NUMBA_CPU_NAME": "haswell",
            "NUMBA_CPU_FEATURES": HASWELL,
            "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache-haswell"),
        },
    )
    assert not bool(hsw["wide"]), "the haswell build must use the narrow (AVX2) tiles"
    for key in ("att", "ln", "gelu", "exp", "erf"):
        assert np.array_equal(host[key].view(np.int32), hsw[key].view(np.int32)), key
