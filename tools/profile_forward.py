"""Where the time of one packed forward pass goes, component by component.

    python -m tools.profile_forward                      # 32 KLUE-like sentences (~500 tokens)
    python -m tools.profile_forward --batch-one          # one 16-token sentence (latency)
    python -m tools.profile_forward --model DIR --repeats 20 --compute int8
    python -m tools.profile_forward --batch-one --tokens 17 --per-call --compute int8   # each call

Any commit can be profiled the same way, which is how docs/performance.md measures what each
optimisation gained:

    git worktree add /tmp/refimpl-old <commit>
    PYTHONPATH=/tmp/refimpl-old:$PWD python tools/profile_forward.py    # refimpl from the old checkout

It wraps the entry points of the fast engine's forward pass (the linear layers, fused attention,
the LayerNorm kernels), runs the forward ``--repeats`` times after a warm-up, and prints each
component's share, the total per batch and tokens/s (median over repeats), and the minor page faults
per pass (fresh memory touched for the first time).
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def wrap_all(times, calls=None):
    """Time every entry point of one forward pass: the linear layers, attention, the LayerNorm kernels.
    ``calls``, when given, also gets each call's duration in seconds under its own label (the linear
    layers by shape, ``linear 768->2304``)."""
    from refimpl.engines.fast import encoder
    from refimpl.engines.fast.kernels import attention, matmul, norms

    def wrap(module, name, label=None):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            seconds = time.perf_counter() - start
            times[label or name] += seconds
            if calls is not None:
                calls[_call_label(label or name, args)].append(seconds)
            return result

        setattr(module, name, timed)

    wrap(encoder, "linear", "linear layers")
    wrap(matmul, "linear_to_activations", "linear layers")  # bf16: the FFN's first product (encoder.ffn)
    wrap(attention, "attention", "attention (fused)")
    wrap(attention, "attention_qkv", "attention (fused)")  # Q, K and V from one stacked product
    for name in ("bias_residual_layer_norm", "embeddings_layer_norm", "bias_gelu"):
        wrap(norms, name)


def _call_label(label, args):
    if label == "linear layers":  # by the product's shape
        from refimpl.engines.fast.kernels.matmul import PackedLinear

        if isinstance(args[1], PackedLinear):  # matmul.linear_to_activations(x, packed, next_packed, ...)
            return f"linear {args[1].in_features}->{args[1].out_features} (store rounds for the next)"
        x, w, packed = args[0], args[1], args[2] if len(args) > 2 else None  # encoder.linear(x, w, packed, ...)
        if packed is not None:
            return f"linear {packed.in_features}->{packed.out_features}"
        return f"linear {x.shape[1]}->{w['weight'].shape[0]}"
    return label


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: the bench's klue-shaped model")
    parser.add_argument("--batch-one", action="store_true", help="one sentence instead of 32 sentences")
    parser.add_argument("--tokens", type=int, default=16, help="the --batch-one sentence's length (16)")
    parser.add_argument("--per-call", action="store_true", help="also each kind of call: count and median")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compute", default="float32", choices=("float32", "int8", "bfloat16"))
    args = parser.parse_args()
    from refimpl import SentenceTransformer
    from refimpl.engines.fast import encoder
    from tools.common import klue_model

    model = SentenceTransformer(klue_model(args.model), compute=args.compute)
    packed_layers = model.pipeline.transformer.engine().packed_layers()
    print(model.engine_info)
    rng = np.random.default_rng(0)
    if args.batch_one:
        lengths = np.array([args.tokens])
    else:
        lengths = np.clip(rng.lognormal(np.log(16), 0.45, 32), 5, 60).astype(int)
    tokens = int(lengths.sum())
    ids = rng.integers(5, 1700, tokens)
    types = np.zeros(tokens, np.int64)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def forward():
        encoder.encoder(ids, types, cu, model.weights, model.config, packed_layers=packed_layers)

    forward()
    times = collections.defaultdict(float)
    calls = collections.defaultdict(list)
    wrap_all(times, calls)
    forward()
    times.clear()
    calls.clear()
    totals = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.repeats):
        start = time.perf_counter()
        forward()
        totals.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.repeats
    total = sum(totals)
    print(f"{len(lengths)} sentences, {tokens} tokens, {args.repeats} repeats")
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {name:28s} {seconds / total:6.1%} {seconds / args.repeats * 1e3:8.1f} ms")
    median = statistics.median(totals)
    print(f"mean {total / args.repeats * 1e3:.1f} ms per forward (the components are means too)")
    print(f"median {median * 1e3:.1f} ms per forward, {tokens / median:.0f} tokens/s")
    print(f"{faults:.0f} minor page faults per forward (memory the pass touches for the first time)")
    if args.per_call:
        print("per call (median over the repeats), and per forward:")
        for name, seconds in sorted(calls.items(), key=lambda item: -sum(item[1])):
            per_pass = len(seconds) / args.repeats
            print(
                f"  {name:28s} {per_pass:4.0f} calls x {statistics.median(seconds) * 1e6:7.1f} us"
                f" = {sum(seconds) / args.repeats * 1e3:6.2f} ms"
            )
        outside = (total - sum(times.values())) / args.repeats
        print(f"  {'outside these calls':28s} {outside * 1e3:27.2f} ms (the embeddings, pooling, Python between calls)")


if __name__ == "__main__":
    main()
