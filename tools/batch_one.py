"""Batch-1 latency of refimpl on the bench's klue-shaped model: median of 30 calls on one sentence.

python -m tools.batch_one float32|int8|bfloat16      # REFIMPL_KERNELS=blas|avx2 forces a tier
"""

from __future__ import annotations

import statistics
import sys
import time


def main():
    from refimpl import SentenceTransformer
    from tools.common import klue_model

    model = SentenceTransformer(klue_model(), compute=sys.argv[1])
    text = "오늘은 날씨가 맑고 바람이 시원하게 분다 내일은"
    model.encode([text])
    times = []
    for _ in range(30):
        start = time.perf_counter()
        model.encode([text])
        times.append(time.perf_counter() - start)
    print(sys.argv[1], model.engine_info["kernels"], f"{statistics.median(times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
