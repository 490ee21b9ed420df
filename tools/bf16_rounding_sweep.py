"""Every float32 through the AVX-512 BF16 tier's rounding (``vcvtneps2bf16``) and through refimpl's
integer rule (``common.f32_to_bf16_bits``, which the AVX2 tier and the packing use): the number of
the 2^32 bit patterns where they differ (0 is the claim in docs/math.md). Needs avx512bf16.

    python -m tools.bf16_rounding_sweep
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import common, cpu

ROW = 4096
CHUNK = 1 << 26


@njit(parallel=True)
def mismatches(start, rounded):
    count = 0
    for r in prange(rounded.shape[0]):
        for j in range(ROW):
            u = np.uint32(start + r * ROW + j)
            if rounded[r, j] != np.uint16(common.f32_to_bf16_bits(u.view(np.float32))):
                count += 1
    return count


def main():
    if "avx512bf16" not in cpu.host_features():
        raise SystemExit("this CPU lacks avx512bf16: vcvtneps2bf16 cannot run here")
    began, total = time.perf_counter(), 0
    for start in range(0, 1 << 32, CHUNK):
        x = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32).view(np.float32).reshape(-1, ROW)
        rounded = np.empty(x.shape, np.uint16)
        common.bf16_rows_u16(x, rounded)
        total += mismatches(start, rounded)
    print(f"{total} of 2^32 float32 inputs round differently ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
