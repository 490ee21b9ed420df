"""Peak RSS of one process that loads a model in a compute mode and embeds 256 sentences.

    python -m tools.peak_rss MODEL_DIR MODE        # MODE: float32, int8 or bfloat16

Run it twice (the first run may compile kernels and pack the weights) and subtract the same
command's figure on a tiny model (interpreter, libraries, compiled kernels), as docs/performance.md does.
"""

from __future__ import annotations

import sys


def main():
    from refimpl import SentenceTransformer
    from tools.common import peak_rss_mb

    model = SentenceTransformer(sys.argv[1], compute=sys.argv[2])
    model.encode(["오늘은 날씨가 맑고 바람이 시원하게 분다. 내일은 비가 온다고 한다."] * 256)
    print(f"{peak_rss_mb():.1f}")


if __name__ == "__main__":
    main()
