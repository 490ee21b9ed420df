"""The fast engine's numba kernels, in one place, each beside the NumPy arithmetic it is tested against.

- ``target``, ``cpu``: what the CPU offers, and which tier of kernels runs (chosen at load;
  ``REFIMPL_KERNELS`` forces a lower one).
- ``lanes``, ``tiles``, ``intrinsics``: LLVM intrinsics through numba's ``@intrinsic``: fma, bit
  casts, unchecked loads and stores, atomics; register tiles; x86 vector instructions.
- ``mathf``: float32 exp, erf and GELU accurate to about 1 ulp, vectorisable, the same bits everywhere.
- ``attention``: fused per-sequence multi-head attention on packed rows (no BLAS).
- ``norms``: LayerNorm with bias and residual, embeddings + LayerNorm, bias + GELU.
- ``matmul``: the linear layers: weights packed once, float32 / int8 / bfloat16 products, with one
  module per instruction set (``avx2``, ``avx512``) and the NumPy ``reference`` beside them.
- ``pooling``: sums and maxima for the packed pooling.

Nothing here compiles at import: each kernel compiles on its first call and is cached on disk.
"""

# target before threads: its import sets numba's target features, which the first @njit fixes
from refimpl.engines.fast.kernels import cacheguard, target, threads  # noqa: F401

cacheguard.run()  # numba checks only each kernel's own file: drop cached machine code when any source changed
threads.ensure_configured()  # numba's OpenMP layer with a short spin (threads.py says why), before its pool starts
