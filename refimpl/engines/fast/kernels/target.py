"""What the numba target CPU offers (AVX-512 decides the wider attention tiles).

numba compiles for NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set (e.g. a portable cache built with
NUMBA_CPU_NAME=generic), else for the host; the wide (zmm) tiles are used only when that target
has avx512f. Results do not depend on it (kernels/tiles.py), only the speed.
"""

from __future__ import annotations

import os

from llvmlite import binding as llvm
from numba.core import config

VECTOR_WIDTH_VAR = "REFIMPL_VECTOR_WIDTH"
# LLVM's tuning flag that makes its loop vectoriser stop at 256 bits on AVX-512 CPUs (Intel's server
# tunings have it; whether the Zen ones do was not checked), to spare the clock where 512-bit
# instructions lower it
_PREFER_256 = "prefer-256-bit"
# cpu.TIERS whose cpu.REQUIRED lacks avx512f, forced by cpu.ENV_VAR (REFIMPL_KERNELS): named here because
# cpu imports this module (describe); tests/test_vector_width.py checks the two agree
_TIERS_WITHOUT_AVX512 = ("avx2", "blas")


def use_full_vectors() -> int | None:
    """Before any numba function is decorated: on an AVX-512 host, let LLVM vectorise refimpl's plain loops
    (the GELU and dequantising stores, the int8 quantisation, LayerNorm) at 512 bits, by numba's
    target features: the host's with ``-prefer-256-bit``. The register tiles use zmm anyway, so the
    clock is already the 512-bit one. Measured on an Intel Xeon with AMX (two alternating runs each,
    ``python -m tools.profile_forward --compute MODE --repeats 10``, 32 sentences, LLVM's 256 bits
    against ``NUMBA_CPU_FEATURES`` = the host's features + ``-prefer-256-bit``, before this function
    existed; ``REFIMPL_VECTOR_WIDTH=256`` against the default is the same pair now): int8 97.3-100.6 ms
    against 88.4-90.9, float32 328.6-336.2 against 315.8-332.2. The bits do not change: refimpl's sums
    run in a fixed order (tests/test_fast_cross_target.py compares with an AVX2 build).

    numba's target is one per process: every numba function of the process (other libraries' too)
    is compiled for it, and numba's on-disk cache keys on it. Not done when the user chose numba's
    target (NUMBA_CPU_NAME or NUMBA_CPU_FEATURES), when ``REFIMPL_VECTOR_WIDTH=256``, when
    ``REFIMPL_KERNELS`` forces a tier without avx512f (it stands for a CPU without AVX-512), or when
    any numba function was decorated before refimpl's kernels were first imported (numba fixes its
    target then; ``describe()`` says which width applies). Returns the width set (512), or None."""
    width = os.environ.get(VECTOR_WIDTH_VAR, "").strip()
    if width not in ("", "256", "512"):
        raise ValueError(f"{VECTOR_WIDTH_VAR}={width!r}: expected 256 or 512 (bits of LLVM's vectorised loops)")
    if width == "256" or config.CPU_FEATURES is not None or config.CPU_NAME not in (None, "host"):
        return None
    if os.environ.get("REFIMPL_KERNELS", "").strip().lower() in _TIERS_WITHOUT_AVX512:
        return None
    from numba.core.registry import cpu_target

    if "_toplevel_target_context" in cpu_target.__dict__:  # numba's code generator exists: too late
        return None
    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" not in features.split(","):
        return None
    config.CPU_FEATURES = features + ",-" + _PREFER_256
    return 512


def _target_features() -> str:
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    if config.CPU_NAME not in (None, "host"):
        return ""  # a named generic target: assume no AVX-512
    return llvm.get_host_cpu_features().flatten()


VECTOR_WIDTH = use_full_vectors()  # 512, or None: LLVM's own choice
FEATURES = _target_features()
HOST_AVX512 = "+avx512f" in FEATURES.split(",")
HOST_FMA = "+fma" in FEATURES.split(",")
