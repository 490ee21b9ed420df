"""Plumbing the tools share: where benchmark models are cached, the benchmark model itself,
benchmark sentences, RSS, timing and machine-load helpers.

Run every tool from the repository root as a module (``python -m tools.bench``), so that
``tools`` (with the fixture builders, ``tools.fixtures``) imports without editing ``sys.path``.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# REFIMPL_BENCH_CACHE moves everything the tools build (models, ONNX exports, numba caches)
CACHE = Path(os.environ.get("REFIMPL_BENCH_CACHE", Path.home() / ".cache" / "refimpl-bench"))
KLUE_MODEL = CACHE / "klue-sroberta-random"


def klue_model(model_dir=None) -> Path:
    """``model_dir``, or the cached klue-shaped random model, built on first use (~440 MB)."""
    if model_dir is not None:
        return Path(model_dir)
    if not (KLUE_MODEL / "model.safetensors").exists():
        from tools import fixtures

        print(f"building the klue-shaped random model in {KLUE_MODEL} ...", file=sys.stderr)
        fixtures.make_klue_model(KLUE_MODEL)
    return KLUE_MODEL


def corpus_words() -> list[str]:
    from tools import fixtures

    return " ".join(fixtures.corpus_lines()).split()


def make_texts(tokenizer, targets, seed):
    """Korean sentences from the test corpus, each grown word by word to a target token count."""
    import numpy as np

    words = corpus_words()
    rng = np.random.default_rng(seed)
    texts = []
    for target in targets:
        chosen = []
        while True:
            chosen.extend(words[i] for i in rng.integers(0, len(words), max(1, (target - 2) // 3)))
            if len(tokenizer.encode(" ".join(chosen)).ids) >= target:
                break
        while len(chosen) > 1 and len(tokenizer.encode(" ".join(chosen[:-1])).ids) >= target:
            chosen.pop()
        texts.append(" ".join(chosen))
    return texts


def _status_mb(field: str) -> float | None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    mb = _status_mb("VmRSS")
    return float("nan") if mb is None else mb


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the
    parent through fork and exec, so a worker started by a large process (the bench's parent after
    exporting the model with torch) would report the parent's peak as its own."""
    mb = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if mb is None else mb


def rate(work, amount, seconds=0.6) -> float:
    """``amount`` per second of ``work()`` (after one warm-up call), over at least ``seconds``."""
    work()
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        work()
        runs += 1
    return amount * runs / (time.perf_counter() - start)


def busy_fraction(seconds=1.0) -> float:
    """Share of all CPU time that something else used during ``seconds`` of waiting."""

    def sample():
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def warn_if_busy() -> float:
    share = busy_fraction()
    if share > 0.05:
        print(
            f"WARNING: the machine is not idle ({share:.0%} of CPU time used by other processes); "
            "BLAS timings suffer badly when another process holds a core",
            file=sys.stderr,
        )
    return share


def blas_description() -> str:
    """Which BLAS kernel NumPy runs (threadpoolctl's architecture) and the OPENBLAS_* variables set."""
    from refimpl.run.threads import blas_info

    libraries = (
        ", ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, {i.get('num_threads')} threads)"
            for i in blas_info()
        )
        or "none found"
    )
    variables = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")) or "none"
    return f"BLAS: {libraries}; OPENBLAS_* variables: {variables}"


if __name__ == "__main__":  # the interpreter's own RSS, for tools.bench's baseline
    print(rss_mb())


def random_packed_layers(mode, shapes, rng, layers=12):
    """``layers`` layers of random packed products, each a list of (PackedLinear, bias) for the [out, in]
    ``shapes`` in order (kernels' mode names: f32, int8, bf16): distinct weights, as a pass streams them."""
    import numpy as np

    from refimpl.engines.fast.kernels import matmul

    return [
        [
            (
                matmul.pack(rng.standard_normal(shape).astype(np.float32) * 0.05, mode),
                rng.standard_normal(shape[0]).astype(np.float32),
            )
            for shape in shapes
        ]
        for _ in range(layers)
    ]


def run_products(layers, inputs, outputs):
    """Every product of ``random_packed_layers`` as a forward pass runs them (its environment read once,
    GELU on the FFN's first): inputs and outputs by width."""
    from refimpl.engines.fast.kernels import matmul, policy

    with policy.forward_pass():
        for layer in layers:
            for packed, bias in layer:
                matmul.linear(inputs[packed.k], packed, bias, gelu=packed.n == 3072, out=outputs[packed.n])
