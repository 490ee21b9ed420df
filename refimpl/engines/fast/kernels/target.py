"""What the numba target CPU offers (AVX-512 decides the wider attention tiles).

numba compiles for NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set (e.g. a portable cache built with
NUMBA_CPU_NAME=generic), else for the host; the wide (zmm) tiles are used only when that target
has avx512f. Results do not depend on it (kernels/tiles.py), only the speed.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from numba.core import config


def _target_features() -> str:
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    if config.CPU_NAME not in (None, "host"):
        return ""  # a named generic target: assume no AVX-512
    return llvm.get_host_cpu_features().flatten()


FEATURES = _target_features()
HOST_AVX512 = "+avx512f" in FEATURES.split(",")
HOST_FMA = "+fma" in FEATURES.split(",")
