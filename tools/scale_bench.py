"""Throughput of refimpl.dask on this machine: one process, then a LocalCluster of 1 and 2 workers.

    python -m tools.scale_bench                  # the klue-shaped model of tools.bench, 4,096 sentences
    python -m tools.scale_bench --sentences 8192 --repeats 3

The same KLUE-like sentences go through (1) ``SentenceTransformer.encode`` in this process,
(2) ``refimpl.dask.encode_file`` on a LocalCluster of 1 worker (2 threads) and (3) of 2 workers
(1 thread each), in turns; the clusters are started (and the model loaded on every worker by
a warm-up run) before timing, and that start-up is reported on its own.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tools.common import klue_model, make_texts, warn_if_busy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="default: the bench's klue-shaped model")
    parser.add_argument("--sentences", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--partition-lines", type=int, default=512)
    args = parser.parse_args()

    import numpy as np
    from tokenizers import Tokenizer

    from refimpl import SentenceTransformer
    from refimpl.dask import encode_file, local_cluster

    args.model = klue_model(args.model)
    warn_if_busy()
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    rng = np.random.default_rng(7)
    texts = make_texts(tokenizer, np.clip(rng.lognormal(np.log(16), 0.45, args.sentences), 5, 60).astype(int), 8)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
    work = Path(tempfile.mkdtemp())
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")

    single = SentenceTransformer(args.model)
    single.encode(texts[:64])
    warm = work / "warm.txt"  # 64 lines per worker: loads the model and its kernels everywhere
    clusters = {}
    for workers in (1, 2):
        warm.write_text("\n".join(texts[: 64 * workers]) + "\n", encoding="utf-8")
        start = time.perf_counter()
        client = local_cluster(workers)
        encode_file(warm, work / f"warm-{workers}.npy", str(args.model), client=client, lines_per_partition=64)
        clusters[workers] = (client, time.perf_counter() - start)

    times = {"one process": [], "1 worker": [], "2 workers": []}
    reference = single.encode(texts)
    for repeat in range(args.repeats):
        start = time.perf_counter()
        single.encode(texts)
        times["one process"].append(time.perf_counter() - start)
        for workers, (client, _) in clusters.items():
            out = work / f"run-{workers}-{repeat}.npy"
            start = time.perf_counter()
            encode_file(corpus, out, str(args.model), client=client, lines_per_partition=args.partition_lines)
            times[f"{workers} worker{'s' if workers > 1 else ''}"].append(time.perf_counter() - start)
            assert np.abs(np.load(out) - reference).max() < 1e-5
            shutil.rmtree(out.with_name(out.name + ".parts"))
    for client, _ in clusters.values():
        cluster = client.cluster
        client.close()
        cluster.close()
    shutil.rmtree(work)

    print(
        f"{args.sentences} sentences, {tokens} tokens, partitions of {args.partition_lines} lines, "
        f"medians of {args.repeats} alternating repeats. Command: `python -m tools.scale_bench`"
    )
    print()
    print("| setup | seconds | sentences/s | tokens/s | start-up (cluster + model on every worker), s |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        seconds = statistics.median(values)
        startup = {"1 worker": clusters[1][1], "2 workers": clusters[2][1]}.get(name)
        print(
            f"| {name} | {seconds:.1f} | {args.sentences / seconds:.0f} | {tokens / seconds:.0f} | "
            f"{f'{startup:.1f}' if startup is not None else '-'} |"
        )


if __name__ == "__main__":
    main()
