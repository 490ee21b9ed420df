"""The rate of refimpl's packed matrix products alone, per mode and shape, hot in cache or streamed from DRAM.

    python -m tools.product_rates                  # 494 rows (32 short sentences), every mode
    python -m tools.product_rates --rows 17        # batch 1
    python -m tools.product_rates --cold           # 12 layers of distinct weights, as a forward pass reads them
    REFIMPL_KERNELS=avx2 python -m tools.product_rates
    python -m tools.product_rates --cold --rows 1000 --mb 64 256    # rows per work item, side by side
    python -m tools.product_rates --misaligned     # also each hot product with its weights 16 bytes off a line

Hot: each of one layer's shapes ([out, in] = 768x768, 3072x768 with the GELU store, 768x3072) runs
15 times on the same weights; the best time gives GFLOP/s (GOPS for int8). Cold: the 72 products of
12 layers, each with its own random weights (340 MB in float32: more than the caches), run in a
forward pass's order; the median of 7 passes. ``--mb`` (with ``--cold``) runs the passes with each
given number of rows per work item in turn, in one process, so that the machine's drift hits every
value alike. Compare with ``python -m tools.peaks``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from refimpl.engines.fast.kernels import matmul, packing
from tools import common

SHAPES = [(768, 768), (3072, 768), (768, 3072)]  # [out, in]; the first four of a layer are 768x768
PER_LAYER = (4, 1, 1)
MODES = ("f32", "int8", "bf16")


def layer_flops(rows):
    return sum(2 * rows * n * k * count for (n, k), count in zip(SHAPES, PER_LAYER))


def _misaligned(packed):
    """``packed`` with its weight 16 bytes past a cache line (as NumPy's allocator may leave an array)."""
    w = packed.arrays["w"]
    moved = packing.aligned_empty(w.nbytes + 64, np.uint8)[16 : 16 + w.nbytes].view(w.dtype).reshape(w.shape)
    moved[...] = w
    copy = matmul.PackedLinear(packed.mode, packed.n, packed.k, packed.arrays)
    copy.arrays["w"] = moved  # past the constructor, which would align it again
    return copy


def hot(mode, rows, rng, misaligned=False):
    rates, layer_seconds = [], 0.0
    for (n, k), count in zip(SHAPES, PER_LAYER):
        packed = matmul.pack(rng.standard_normal((n, k)).astype(np.float32) * 0.05, mode)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        out = np.empty((rows, n), np.float32)
        gelu = n == 3072
        matmul.linear(x, packed, bias, gelu=gelu, out=out)
        times = []
        for _ in range(15):
            start = time.perf_counter()
            matmul.linear(x, packed, bias, gelu=gelu, out=out)
            times.append(time.perf_counter() - start)
        rate = f"{n}x{k} {2 * rows * n * k / min(times) / 1e9:.0f}"
        if misaligned:
            off = _misaligned(packed)
            matmul.linear(x, off, bias, gelu=gelu, out=out)
            best = min(_seconds(matmul.linear, x, off, bias, gelu=gelu, out=out) for _ in range(15))
            rate += f" (misaligned {2 * rows * n * k / best / 1e9:.0f})"
        rates.append(rate)
        layer_seconds += min(times) * count
    layer = f"one layer {layer_flops(rows) / layer_seconds / 1e9:.0f} in {layer_seconds * 1e3:.2f} ms"
    return " | ".join(rates) + " | " + layer


def _seconds(work, *args, **kwargs):
    start = time.perf_counter()
    work(*args, **kwargs)
    return time.perf_counter() - start


def cold(mode, rows, rng, rows_per_item=()):
    shapes = [shape for shape, count in zip(SHAPES, PER_LAYER) for _ in range(count)]
    layers = common.random_packed_layers(mode, shapes, rng)
    inputs = {k: rng.standard_normal((rows, k)).astype(np.float32) for k in (768, 3072)}
    outputs = {n: np.empty((rows, n), np.float32) for n in (768, 3072)}

    def forward():
        common.run_products(layers, inputs, outputs)

    if rows_per_item:
        module = matmul.kernel_for(mode)[1]
        default, times = module.MB, {mb: [] for mb in rows_per_item}
        try:
            for repeat in range(6):
                for mb, values in times.items():
                    module.MB = mb
                    start = time.perf_counter()
                    forward()
                    if repeat:  # the first round warms up
                        values.append(time.perf_counter() - start)
        finally:
            module.MB = default
        flops = 12 * layer_flops(rows)
        return ", ".join(f"MB {mb}: {flops / statistics.median(v) / 1e9:.0f}" for mb, v in times.items())
    forward()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return f"72 products {seconds * 1e3:.2f} ms, {12 * layer_flops(rows) / seconds / 1e9:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=494)
    parser.add_argument("--cold", action="store_true", help="12 layers of distinct weights instead of one, hot")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--mb", type=int, nargs="+", default=(), help="rows per work item to compare (with --cold)")
    parser.add_argument("--misaligned", action="store_true", help="hot: also with each weight 16 bytes off a line")
    args = parser.parse_args()
    if args.mb and not args.cold:
        parser.error("--mb compares rows per work item on the --cold passes")
    print(matmul.describe())
    rng = np.random.default_rng(0)
    for mode in args.modes:
        result = cold(mode, args.rows, rng, args.mb) if args.cold else hot(mode, args.rows, rng, args.misaligned)
        print(f"{mode} rows {args.rows}, G/s:", result)


if __name__ == "__main__":
    main()
