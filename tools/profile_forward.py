"""Where the time of one packed forward pass goes, component by component.

    python -m tools.profile_forward                      # 32 KLUE-like sentences (~500 tokens)
    python -m tools.profile_forward --batch-one          # one 16-token sentence (latency)
    python -m tools.profile_forward --model DIR --repeats 20

Any commit can be profiled the same way, which is how docs/performance.md measures what each
optimisation gained:

    git worktree add /tmp/refimpl-old <commit>
    PYTHONPATH=/tmp/refimpl-old:$PWD python tools/profile_forward.py    # refimpl from the old checkout

It wraps every numba kernel of ``refimpl.engines.fast.kernels`` and the BLAS helpers of ``refimpl.engines.fast.encoder``
that the checkout has, runs the forward ``--repeats`` times after a warm-up, and prints each
component's share, the total per batch and tokens/s (median over repeats).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import numpy as np


def wrap_all(times):
    from numba.core.registry import CPUDispatcher

    from refimpl.engines.fast import encoder as packed
    from refimpl.engines.fast import kernels

    def wrap(module, name):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            times[name] += time.perf_counter() - start
            return result

        setattr(module, name, timed)

    for name in dir(kernels):
        if isinstance(getattr(kernels, name), CPUDispatcher) and not name.startswith("_"):
            wrap(kernels, name)
    for name in ("matmul_t", "sequence_attention", "attention_blas"):
        if hasattr(packed, name):
            wrap(packed, name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: the bench's klue-shaped model")
    parser.add_argument("--batch-one", action="store_true", help="one 16-token sentence instead of 32 sentences")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    from refimpl import SentenceTransformer, packed
    from tools.common import klue_model

    model = SentenceTransformer(klue_model(args.model))
    rng = np.random.default_rng(0)
    lengths = np.array([16]) if args.batch_one else np.clip(rng.lognormal(np.log(16), 0.45, 32), 5, 60).astype(int)
    tokens = int(lengths.sum())
    ids = rng.integers(5, 1700, tokens)
    types = np.zeros(tokens, np.int64)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def forward():
        packed.encoder(ids, types, cu, model.weights, model.config)

    forward()
    times = collections.defaultdict(float)
    wrap_all(times)
    forward()
    times.clear()
    totals = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward()
        totals.append(time.perf_counter() - start)
    total = sum(totals)
    print(f"{len(lengths)} sentences, {tokens} tokens, {args.repeats} repeats")
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {name:28s} {seconds / total:6.1%} {seconds / args.repeats * 1e3:8.1f} ms")
    median = statistics.median(totals)
    print(f"median {median * 1e3:.1f} ms per forward, {tokens / median:.0f} tokens/s")


if __name__ == "__main__":
    main()
