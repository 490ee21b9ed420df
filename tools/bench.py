"""Benchmark refimpl against sentence-transformers and ONNX Runtime, side by side in one run.

    pip install torch==2.13.0 && pip install -e ".[test,bench]"
    python -m tools.bench                       # ~15 min; builds the klue-shaped model once
    python -m tools.bench --quick               # fewer sentences and repeats, ~6 min
    python -m tools.bench --write docs/performance.md   # also rewrite the table in that file

All three engines run the same weights (random, with the exact klue-sroberta shape, built by
tools/fixtures.py and cached in ~/.cache/refimpl-bench, or $REFIMPL_BENCH_CACHE; or --model DIR), the same sentences, with
the same number of threads (--threads, default 2), in worker processes that take turns: every
repeat runs each engine once before the next repeat, and the report gives medians. ONNX Runtime
runs the same model exported with torch.onnx (dynamo exporter), padded length-sorted batches,
mean pooling in NumPy: how fastembed and optimum use it.

Scenarios: (a) KLUE-STS-like short Korean sentences, batch 32; (b) a long tail (lognormal
lengths, some near 512 tokens), batch 32; (c) batch-1 latency on a short sentence; (d) cold
start in a fresh process (import + load + first embedding; refimpl with an empty and a warm
numba cache); (e) peak RSS; (f) GFLOP/s of refimpl's linear layers against NumPy's sgemm on
the same shapes. The machine should be idle: the tool warns when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.common import CACHE, ROOT, blas_description, klue_model, make_texts, peak_rss_mb, rss_mb, warn_if_busy

ENGINES = ("refimpl", "sentence-transformers", "onnxruntime")


# --- measurements inside a worker process ------------------------------------------------------


class RefimplEngine:
    def __init__(self, model_dir, threads):
        from refimpl import SentenceTransformer

        self.model = SentenceTransformer(model_dir, threads=threads)

    def encode(self, texts, batch_size):
        return self.model.encode(texts, batch_size=batch_size)


class SentenceTransformersEngine:
    def __init__(self, model_dir, threads):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(model_dir), device="cpu")

    def encode(self, texts, batch_size):
        return self.model.encode(texts, batch_size=batch_size)


class OnnxRuntimeEngine:
    """The exported encoder in ONNX Runtime: length-sorted padded batches, mean pooling in NumPy."""

    def __init__(self, model_dir, threads):
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            str(onnx_path(model_dir)), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tokenizer.enable_truncation(512)
        self.tokenizer.no_padding()

    def encode(self, texts, batch_size):
        import numpy as np

        encodings = self.tokenizer.encode_batch([t.strip().lower() for t in texts])
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        out = [None] * len(texts)
        for first in range(0, len(texts), batch_size):
            chosen = order[first : first + batch_size]
            width = max(len(encodings[i].ids) for i in chosen)
            ids = np.ones((len(chosen), width), np.int64)  # pad id 1
            mask = np.zeros((len(chosen), width), np.int64)
            for row, i in enumerate(chosen):
                ids[row, : len(encodings[i].ids)] = encodings[i].ids
                mask[row, : len(encodings[i].ids)] = 1
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
            for row, i in enumerate(chosen):
                out[i] = pooled[row]
        return np.stack(out)


WORKER_ENGINES = {
    "refimpl": RefimplEngine,
    "sentence-transformers": SentenceTransformersEngine,
    "onnxruntime": OnnxRuntimeEngine,
}


def gemm_report(engine, texts, batch_size):
    """(f): time refimpl's linear layers inside the model, then NumPy's sgemm on the same shapes alone."""
    import numpy as np

    from refimpl.engines.fast import encoder as packed

    original = packed.matmul_t
    seen = {"seconds": 0.0, "flops": 0, "shapes": {}}

    def timed(x, weight):
        start = time.perf_counter()
        result = original(x, weight)
        seen["seconds"] += time.perf_counter() - start
        seen["flops"] += 2 * x.shape[0] * x.shape[1] * weight.shape[0]
        key = (x.shape[0], x.shape[1], weight.shape[0])
        seen["shapes"][key] = seen["shapes"].get(key, 0) + 1
        return result

    packed.matmul_t = timed
    start = time.perf_counter()
    engine.encode(texts, batch_size)
    total = time.perf_counter() - start
    packed.matmul_t = original
    rng = np.random.default_rng(0)
    iso_seconds, iso_flops = 0.0, 0
    for (m, k, n), count in seen["shapes"].items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)
        np.matmul(a, w.T)
        start = time.perf_counter()
        for _ in range(count):
            np.matmul(a, w.T)
        iso_seconds += time.perf_counter() - start
        iso_flops += 2 * m * k * n * count
    return {
        "model_linear_gflops": seen["flops"] / seen["seconds"] / 1e9,
        "sgemm_gflops": iso_flops / iso_seconds / 1e9,
        "linear_share": seen["seconds"] / total,
        "linear_flops": seen["flops"],
        "seconds": total,
    }


def worker(engine_name, model_dir, threads):
    """Serve commands from the parent, one JSON object per line."""
    start = time.perf_counter()
    engine = WORKER_ENGINES[engine_name](model_dir, threads)
    print(json.dumps({"load_seconds": time.perf_counter() - start, "rss_after_load": rss_mb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "exit":
            break
        if command["cmd"] == "encode":
            start = time.perf_counter()
            engine.encode(command["texts"], command["batch_size"])
            reply = {"seconds": time.perf_counter() - start}
        elif command["cmd"] == "latency":
            times = []
            for _ in range(command["calls"]):
                start = time.perf_counter()
                engine.encode([command["text"]], 1)
                times.append(time.perf_counter() - start)
            reply = {"seconds": statistics.median(times)}
        elif command["cmd"] == "rss":
            reply = {"peak_rss": peak_rss_mb(), "rss": rss_mb()}
        elif command["cmd"] == "gemm":
            reply = gemm_report(engine, command["texts"], command["batch_size"])
        else:
            reply = {"error": f"unknown command {command['cmd']}"}
        print(json.dumps(reply), flush=True)


class Worker:
    def __init__(self, engine, model_dir, threads):
        self.engine = engine
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools.bench",
                "--worker",
                engine,
                "--model",
                str(model_dir),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(threads),
            cwd=ROOT,
        )
        self.loaded = self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.engine} worker died (exit {self.process.wait()})")
        return json.loads(line)

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command, ensure_ascii=False) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        try:
            self.ask(cmd="exit")
        except Exception:
            pass
        self.process.wait(timeout=60)


def worker_env(threads, **extra):
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


# --- inputs -------------------------------------------------------------------------------------


def scenarios(model_dir, quick):
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    rng = np.random.default_rng(1)
    short = np.clip(rng.lognormal(np.log(16), 0.45, 512 if quick else 1024), 5, 60).astype(int)
    long_tail = np.clip(rng.lognormal(np.log(40), 1.0, 128 if quick else 256), 5, 512).astype(int)
    result = {
        "a": make_texts(tokenizer, short, 2),
        "b": make_texts(tokenizer, long_tail, 3),
        "c": make_texts(tokenizer, [16], 4)[0],
    }
    tokenizer.enable_truncation(512)
    for key in ("a", "b"):
        lengths = [len(e.ids) for e in tokenizer.encode_batch(result[key])]
        result[key + "_tokens"] = sum(lengths)
        result[key + "_stats"] = (statistics.mean(lengths), max(lengths))
    result["c_tokens"] = len(tokenizer.encode(result["c"]).ids)
    return result


# --- the model and its ONNX export ----------------------------------------------------------------


def onnx_path(model_dir) -> Path:
    return CACHE / (Path(model_dir).resolve().name + ".onnx")


def prepare_model(model_dir):
    model_dir = klue_model(model_dir)
    target = onnx_path(model_dir)
    if not target.exists():
        print(f"exporting {model_dir} to {target} with torch.onnx ...", file=sys.stderr)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "tools.workers.export_onnx", str(model_dir), str(target)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
    return model_dir


# --- cold start ----------------------------------------------------------------------------------


def cold_start(engine, model_dir, text, threads, **env):
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "tools.workers.cold_start", engine, str(model_dir), text, str(threads)],
        capture_output=True,
        text=True,
        env=worker_env(threads, **env),
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"cold start of {engine} failed: {out.stderr[-2000:]}")
    return {"seconds": seconds, **json.loads(out.stdout.strip().splitlines()[-1])}


def interpreter_rss(threads):
    """RSS of an interpreter that has imported nothing but the RSS helper."""
    out = subprocess.run(
        [sys.executable, "-m", "tools.common"], capture_output=True, text=True, env=worker_env(threads), cwd=ROOT
    )
    return float(out.stdout)


# --- the report ----------------------------------------------------------------------------------


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def run(args):
    busy_before = warn_if_busy()
    model_dir = prepare_model(args.model)
    weight_mb = (model_dir / "model.safetensors").stat().st_size / 2**20
    data = scenarios(model_dir, args.quick)
    repeats = args.repeats or (2 if args.quick else 3)
    threads = args.threads
    results = {engine: {} for engine in ENGINES}
    print(f"model {model_dir} ({weight_mb:.0f} MiB), threads {threads}, repeats {repeats}", file=sys.stderr)

    # (d) cold starts, before the workers hold memory and cores
    cold = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory() as numba_cache:
        results["refimpl"]["cold_numba"] = cold_start(
            "refimpl", model_dir, data["c"], threads, NUMBA_CACHE_DIR=numba_cache
        )
        for _ in range(3):
            for engine in ENGINES:
                env = {"NUMBA_CACHE_DIR": numba_cache} if engine == "refimpl" else {}
                cold[engine].append(cold_start(engine, model_dir, data["c"], threads, **env))
    for engine in ENGINES:
        results[engine]["cold"] = {key: statistics.median(r[key] for r in cold[engine]) for key in cold[engine][0]}
    baseline_rss = interpreter_rss(threads)

    workers = {engine: Worker(engine, model_dir, threads) for engine in ENGINES}
    try:
        for engine, w in workers.items():
            results[engine]["rss_after_load"] = w.loaded["rss_after_load"]
            w.ask(cmd="encode", texts=data["a"][:64], batch_size=32)  # warm-up: caches, first calls
        plan = [
            ("c", dict(cmd="latency", text=data["c"], calls=30)),
            ("a", dict(cmd="encode", texts=data["a"], batch_size=32)),
            ("b", dict(cmd="encode", texts=data["b"], batch_size=32)),
        ]
        for scenario, command in plan:
            times = {engine: [] for engine in ENGINES}
            for repeat in range(repeats):
                for engine, w in workers.items():  # take turns: drift hits every engine alike
                    times[engine].append(w.ask(**command)["seconds"])
                    print(
                        f"  ({scenario}) repeat {repeat + 1}/{repeats} {engine}: {times[engine][-1]:.3f} s",
                        file=sys.stderr,
                    )
            for engine, w in workers.items():
                results[engine][scenario] = statistics.median(times[engine])
                results[engine][scenario + "_peak_rss"] = w.ask(cmd="rss")["peak_rss"]
        gemm = workers["refimpl"].ask(cmd="gemm", texts=data["a"], batch_size=32)
    finally:
        for w in workers.values():
            w.close()
    busy_after = warn_if_busy()
    return render(results, data, gemm, weight_mb, baseline_rss, threads, repeats, busy_before, busy_after, args)


def render(results, data, gemm, weight_mb, baseline_rss, threads, repeats, busy_before, busy_after, args):
    r, s, o = (results[e] for e in ENGINES)
    tok_a, tok_b = data["a_tokens"], data["b_tokens"]
    flops_per_token = gemm["linear_flops"] / tok_a
    ceiling = gemm["sgemm_gflops"] * 1e9 / flops_per_token
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), {threads} threads for every engine, "
        f"medians of {repeats} alternating repeats; other load: {busy_before:.0%} before, {busy_after:.0%} after. "
        f"Command: `python -m tools.bench{' --quick' if args.quick else ''}`. {blas_description()}.",
        "",
        f"Inputs: (a) {len(data['a'])} KLUE-STS-like sentences, {tok_a} tokens (mean {data['a_stats'][0]:.1f}, max {data['a_stats'][1]}); "
        f"(b) {len(data['b'])} long-tail sentences, {tok_b} tokens (mean {data['b_stats'][0]:.1f}, max {data['b_stats'][1]}); "
        f"(c) one sentence of {data['c_tokens']} tokens. Batch size 32 for (a) and (b).",
        "",
        "| scenario | refimpl | sentence-transformers | ONNX Runtime | refimpl vs ST | refimpl vs ORT |",
        "|---|---|---|---|---|---|",
        f"| (a) short sentences, tokens/s | {tok_a / r['a']:.0f} | {tok_a / s['a']:.0f} | {tok_a / o['a']:.0f} | {ratio(s['a'], r['a'])} | {ratio(o['a'], r['a'])} |",
        f"| (a) sentences/s | {len(data['a']) / r['a']:.0f} | {len(data['a']) / s['a']:.0f} | {len(data['a']) / o['a']:.0f} | | |",
        f"| (b) long tail, tokens/s | {tok_b / r['b']:.0f} | {tok_b / s['b']:.0f} | {tok_b / o['b']:.0f} | {ratio(s['b'], r['b'])} | {ratio(o['b'], r['b'])} |",
        f"| (c) batch-1 latency, ms | {r['c'] * 1e3:.1f} | {s['c'] * 1e3:.1f} | {o['c'] * 1e3:.1f} | {ratio(r['c'], s['c'])} | {ratio(r['c'], o['c'])} |",
        f"| (d) cold start, warm caches, s | {r['cold']['seconds']:.2f} | {s['cold']['seconds']:.2f} | {o['cold']['seconds']:.2f} | {ratio(r['cold']['seconds'], s['cold']['seconds'])} | {ratio(r['cold']['seconds'], o['cold']['seconds'])} |",
        f"| (d) cold start, empty numba cache, s | {r['cold_numba']['seconds']:.2f} | | | | |",
        f"| (e) RSS after load, before the first call, MiB | {r['rss_after_load']:.0f} | {s['rss_after_load']:.0f} | {o['rss_after_load']:.0f} | | |",
        f"| (e) peak RSS after (c), MiB | {r['c_peak_rss']:.0f} | {s['c_peak_rss']:.0f} | {o['c_peak_rss']:.0f} | | |",
        f"| (e) peak RSS after (a), MiB | {r['a_peak_rss']:.0f} | {s['a_peak_rss']:.0f} | {o['a_peak_rss']:.0f} | | |",
        f"| (e) peak RSS after (b), MiB | {r['b_peak_rss']:.0f} | {s['b_peak_rss']:.0f} | {o['b_peak_rss']:.0f} | | |",
        f"| (e) peak RSS of a cold start (d), MiB | {r['cold']['peak_rss']:.0f} | {s['cold']['peak_rss']:.0f} | {o['cold']['peak_rss']:.0f} | | |",
        "",
        "Ratios: for throughput, how many times faster refimpl is; for latency and start-up, refimpl's time as a fraction of the other's.",
        "",
        f"- Weight file {weight_mb:.0f} MiB; refimpl's peak RSS on (a) is {r['a_peak_rss'] / weight_mb:.2f}x the weight file.",
        f"- A bare interpreter is {baseline_rss:.0f} MiB; refimpl after load, before the first call, is {r['rss_after_load'] - baseline_rss:.0f} MiB above it.",
        f"- (f) refimpl's linear layers ran at {gemm['model_linear_gflops']:.0f} GFLOP/s inside the model on (a) "
        f"({gemm['linear_share']:.0%} of its time); NumPy's sgemm on the same shapes alone: {gemm['sgemm_gflops']:.0f} GFLOP/s. "
        f"At that sgemm rate and {flops_per_token / 1e6:.0f} MFLOP per token of linear layers, the fp32 ceiling is "
        f"{ceiling:.0f} tokens/s; refimpl reaches {tok_a / r['a'] / ceiling:.0%} of it on (a).",
    ]
    return "\n".join(lines)


def write_doc(path, report):
    text = Path(path).read_text(encoding="utf-8")
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block to replace")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    Path(path).write_text(before + start + "\n" + report + "\n" + end + after, encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a klue-sroberta-like directory (default: a random one, built once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the bench block of this file with the report")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.threads)
    report = run(args)
    print(report)
    if args.write:
        write_doc(args.write, report)


if __name__ == "__main__":
    main()
