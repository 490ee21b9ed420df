"""Batch-1 latency of refimpl on the bench's klue-shaped model: median of 30 calls on one sentence.

python -m tools.batch_one float32|int8|bfloat16      # REFIMPL_KERNELS=blas|avx2 forces a tier
python -m tools.batch_one int8 --busy                # also with another process busy on core 0 (as bench.py (g))
GOMP_SPINCOUNT=3000 python -m tools.batch_one int8 --busy   # numba's OpenMP workers spinning 3x longer
python -m tools.batch_one int8 --model DIR               # another model (the fixed costs: a tiny one of 12 layers)
python -m tools.batch_one int8 --tokens 17               # a sentence of 17 tokens, as bench.py's (c)
"""

from __future__ import annotations

import argparse
import statistics
import time

TEXT = "오늘은 날씨가 맑고 바람이 시원하게 분다 내일은"  # 10 tokens with the bench's klue-shaped tokenizer


def median_ms(model, text, calls=30):
    model.encode([text])
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model.encode([text])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    from refimpl import SentenceTransformer
    from tools.common import klue_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compute", choices=("float32", "int8", "bfloat16"))
    parser.add_argument("--busy", action="store_true", help="then again with a NumPy loop pinned to core 0")
    parser.add_argument("--model", help="a model directory (default: the bench's klue-shaped model)")
    parser.add_argument("--tokens", type=int, help="a sentence of this many tokens made as bench.py makes (c)'s")
    args = parser.parse_args()
    model_dir = klue_model(args.model)
    model = SentenceTransformer(str(model_dir), compute=args.compute)
    text = TEXT
    if args.tokens:
        from tokenizers import Tokenizer

        from tools.common import make_texts

        text = make_texts(Tokenizer.from_file(str(model_dir / "tokenizer.json")), [args.tokens], 4)[0]
    line = f"{args.compute} {model.engine_info['kernels']} {median_ms(model, text):.1f} ms"
    if args.busy:
        from tools.bench import BusyCore

        with BusyCore():
            line += f", busy {median_ms(model, text):.1f} ms"
    print(line)


if __name__ == "__main__":
    main()
