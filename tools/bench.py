"""Benchmark refimpl's compute modes and kernel tiers against ONNX Runtime and OpenVINO, side by side in one run.

    pip install torch==2.13.0 && pip install -e ".[test,bench]"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m tools.bench           # ~15 min
    python -m tools.bench --quick                                                 # ~5 min
    python -m tools.bench --engines refimpl-int8 onnxruntime-int8 --write docs/performance.md

Every engine runs the same weights (random, with the exact klue-sroberta shape, built by
tools/fixtures.py and cached in ~/.cache/refimpl-bench, or $REFIMPL_BENCH_CACHE; or --model DIR), the
same sentences and the same number of threads (--threads, default 2), each in its own worker process;
the workers take turns (every repeat runs each engine once before the next repeat) and the report
gives medians. ONNX Runtime and OpenVINO run the encoder exported with torch.onnx, on length-sorted
padded batches with mean pooling in NumPy, as fastembed and optimum use them; ONNX Runtime int8 is
``quantize_dynamic`` with per-channel QInt8 weights, OpenVINO bf16 the same ONNX file compiled with
``INFERENCE_PRECISION_HINT=bf16``.

Engines are named ``refimpl-MODE[@TIER]`` (MODE float32, int8, bfloat16; TIER forces a kernel tier
through REFIMPL_KERNELS), ``onnxruntime-fp32``, ``onnxruntime-int8``, ``openvino-fp32``,
``openvino-bf16`` and ``sentence-transformers``.

Scenarios: (a) 512 real Korean sentences (KLUE-NLI premises from ../shared/data when present, else
corpus sentences of KLUE-like lengths), batch 32; (b) a long tail (lognormal lengths up to 512
tokens), batch 32; (c) batch-1 latency on a 17-token sentence (every engine runs it untimed for
LATENCY_WARM_SECONDS first); (g) (c) and (a) again while another
process keeps one core busy (a NumPy loop pinned to core 0). The report adds the machine's measured
peaks (fp32 FMA, int8 dot products, bf16 dot products, DRAM read) and each refimpl mode's batch-1
time as a share of its floor (the linear layers' operations at the peak of the mode).
Run it on an otherwise idle machine, with OPENBLAS_CORETYPE unset as on a user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.common import CACHE, ROOT, blas_description, klue_model, make_texts, peak_rss_mb, rss_mb, warn_if_busy

DEFAULT_ENGINES = (
    "refimpl-float32",
    "refimpl-int8",
    "refimpl-bfloat16",
    "onnxruntime-fp32",
    "onnxruntime-int8",
    "openvino-fp32",
    "openvino-bf16",
)
KLUE_NLI = ROOT.parent / "shared" / "data" / "klue-nli-v1.1_dev.json"


# --- engines, inside a worker process -----------------------------------------------------------


class RefimplEngine:
    def __init__(self, model_dir, threads, mode):
        from refimpl import SentenceTransformer

        self.model = SentenceTransformer(model_dir, threads=threads, compute=mode)
        self.info = self.model.engine_info

    def encode(self, texts, batch_size):
        return self.model.encode(texts, batch_size=batch_size)


class SentenceTransformersEngine:
    def __init__(self, model_dir, threads, mode):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.info = {"torch": torch.__version__}

    def encode(self, texts, batch_size):
        return self.model.encode(texts, batch_size=batch_size)


class PaddedOnnxEngine:
    """An exported encoder on length-sorted padded batches, mean pooling in NumPy."""

    def __init__(self, model_dir, threads):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tokenizer.enable_truncation(512)
        self.tokenizer.no_padding()

    def run(self, ids, mask):
        raise NotImplementedError

    def encode(self, texts, batch_size):
        import numpy as np

        encodings = self.tokenizer.encode_batch(texts)
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
            hidden = self.run(ids, mask)
            pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
            for row, i in enumerate(chosen):
                out[i] = pooled[row]
        return np.stack(out)


class OnnxRuntimeEngine(PaddedOnnxEngine):
    def __init__(self, model_dir, threads, mode):
        import onnxruntime

        super().__init__(model_dir, threads)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = onnx_path(model_dir, "int8" if mode == "int8" else "fp32")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.info = {"onnxruntime": onnxruntime.__version__, "file": path.name}

    def run(self, ids, mask):
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


class OpenVinoEngine(PaddedOnnxEngine):
    def __init__(self, model_dir, threads, mode):
        import openvino

        super().__init__(model_dir, threads)
        core = openvino.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if mode == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": str(threads),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(str(onnx_path(model_dir, "fp32"))), "CPU", config)
        self.info = {"openvino": openvino.__version__, **config}

    def run(self, ids, mask):
        return self.compiled({"input_ids": ids, "attention_mask": mask})[0]


def make_engine(spec, model_dir, threads):
    family, _, mode = spec.partition("-")
    mode = mode.split("@")[0]
    classes = {
        "refimpl": RefimplEngine,
        "onnxruntime": OnnxRuntimeEngine,
        "openvino": OpenVinoEngine,
        "sentence": SentenceTransformersEngine,
    }
    return classes[family](model_dir, threads, mode)


LATENCY_WARM_SECONDS = 0.3


def worker(spec, model_dir, threads):
    """Serve commands from the parent, one JSON object per line."""
    start = time.perf_counter()
    engine = make_engine(spec, model_dir, threads)
    loaded = {"load_seconds": time.perf_counter() - start, "rss_after_load": rss_mb(), "info": engine.info}
    print(json.dumps(loaded, default=str), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "exit":
            break
        if command["cmd"] == "encode":
            start = time.perf_counter()
            engine.encode(command["texts"], command["batch_size"])
            reply = {"seconds": time.perf_counter() - start}
        elif command["cmd"] == "latency":
            # every engine runs the sentence untimed for LATENCY_WARM_SECONDS first, as a busy server
            # would have: right after another engine's turn refimpl's load readings (policy.LoadMonitor,
            # 0.1 s windows) still see that engine's work, and would run the first calls on one core
            until = time.perf_counter() + LATENCY_WARM_SECONDS
            while time.perf_counter() < until:
                engine.encode([command["text"]], 1)
            times = []
            for _ in range(command["calls"]):
                start = time.perf_counter()
                engine.encode([command["text"]], 1)
                times.append(time.perf_counter() - start)
            reply = {"seconds": statistics.median(times)}
        elif command["cmd"] == "rss":
            reply = {"peak_rss": peak_rss_mb(), "rss": rss_mb()}
        else:
            reply = {"error": f"unknown command {command['cmd']}"}
        print(json.dumps(reply), flush=True)


# --- the parent's side -----------------------------------------------------------------------------


class Worker:
    def __init__(self, spec, model_dir, threads):
        self.spec = spec
        env = worker_env(threads)
        if "@" in spec:
            env["REFIMPL_KERNELS"] = spec.split("@", 1)[1]
        command = [sys.executable, "-m", "tools.bench", "--worker", spec, "--model", str(model_dir)]
        self.process = subprocess.Popen(
            command + ["--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.loaded = self.read()

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.spec} worker died (exit {self.process.wait()})")
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


def klue_sentences(count):
    """Real Korean sentences: KLUE-NLI premises (CC BY-SA 4.0), read from ../shared/data, never copied."""
    if not KLUE_NLI.exists():
        return None
    pairs = json.loads(KLUE_NLI.read_text(encoding="utf-8"))
    return [pair["premise"] for pair in pairs[:count]]


def scenarios(model_dir, quick):
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    rng = np.random.default_rng(1)
    short = klue_sentences(256 if quick else 512)
    if short is None:
        short = make_texts(
            tokenizer, np.clip(rng.lognormal(np.log(16), 0.45, 256 if quick else 512), 5, 60).astype(int), 2
        )
    long_tail = np.clip(rng.lognormal(np.log(40), 1.0, 64 if quick else 128), 5, 512).astype(int)
    result = {"a": short, "b": make_texts(tokenizer, long_tail, 3), "c": make_texts(tokenizer, [17], 4)[0]}
    tokenizer.enable_truncation(512)
    for key in ("a", "b"):
        lengths = [len(e.ids) for e in tokenizer.encode_batch(result[key])]
        result[key + "_tokens"], result[key + "_stats"] = sum(lengths), (statistics.mean(lengths), max(lengths))
    result["c_tokens"] = len(tokenizer.encode(result["c"]).ids)
    return result


def onnx_path(model_dir, precision) -> Path:
    return CACHE / f"{Path(model_dir).resolve().name}-{precision}.onnx"


def prepare_model(model_dir, engines):
    model_dir = klue_model(model_dir)
    fp32, int8 = onnx_path(model_dir, "fp32"), onnx_path(model_dir, "int8")
    if any(not e.startswith("refimpl") for e in engines) and not fp32.exists():
        print(f"exporting {model_dir} to {fp32} with torch.onnx ...", file=sys.stderr)
        CACHE.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tools.workers.export_onnx", str(model_dir), str(fp32)]
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    if "onnxruntime-int8" in engines and not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        print(f"quantizing {fp32} to {int8} (dynamic, per-channel QInt8) ...", file=sys.stderr)
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    return model_dir


class BusyCore:
    """Another process keeping core 0 busy with NumPy products, as a neighbour on a shared machine would."""

    LOOP = "import numpy as np\na = np.ones((192, 192), np.float32)\nwhile True:\n    a = (a @ a) * 1e-3 + 1"

    def __enter__(self):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", self.LOOP], env=env)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def measure(workers, plan, repeats, results):
    for scenario, command in plan:
        times = {spec: [] for spec in workers}
        for repeat in range(repeats):
            for spec, w in workers.items():  # take turns: drift hits every engine alike
                times[spec].append(w.ask(**command)["seconds"])
                print(f"  ({scenario}) {repeat + 1}/{repeats} {spec}: {times[spec][-1]:.3f} s", file=sys.stderr)
        for spec in workers:
            results[spec][scenario] = statistics.median(times[spec])


def run(args):
    busy_before = warn_if_busy()
    engines = list(args.engines)
    model_dir = prepare_model(args.model, engines)
    data = scenarios(model_dir, args.quick)
    repeats = args.repeats or (2 if args.quick else 3)
    from tools.peaks import machine_peaks

    peaks = machine_peaks(args.threads)
    print(f"peaks: {peaks}", file=sys.stderr)
    results = {spec: {} for spec in engines}
    workers = {spec: Worker(spec, model_dir, args.threads) for spec in engines}
    try:
        for spec, w in workers.items():
            results[spec]["info"] = w.loaded["info"]
            results[spec]["rss_after_load"] = w.loaded["rss_after_load"]
            results[spec]["load_seconds"] = w.loaded["load_seconds"]
            w.ask(cmd="encode", texts=data["a"][:64], batch_size=32)  # warm-up: caches, first calls
        calls = 15 if args.quick else 30
        quiet = [
            ("c", dict(cmd="latency", text=data["c"], calls=calls)),
            ("a", dict(cmd="encode", texts=data["a"], batch_size=32)),
            ("b", dict(cmd="encode", texts=data["b"], batch_size=32)),
        ]
        measure(workers, quiet, repeats, results)
        with BusyCore():
            busy = [
                ("c_busy", dict(cmd="latency", text=data["c"], calls=calls)),
                ("a_busy", dict(cmd="encode", texts=data["a"], batch_size=32)),
            ]
            measure(workers, busy, max(1, repeats - 1), results)
        for spec, w in workers.items():
            results[spec]["peak_rss"] = w.ask(cmd="rss")["peak_rss"]
    finally:
        for w in workers.values():
            w.close()
    return render(results, data, peaks, args, busy_before, warn_if_busy(), repeats, model_dir)


LINEAR_OPS_PER_TOKEN = 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 12 layers: q, k, v, o, FFN in and out


def floor_seconds(spec, tokens, peaks):
    """The linear layers' operations at the machine's measured peak of the mode (None for other engines)."""
    mode = spec.split("-", 1)[1].split("@")[0]
    rate = {"float32": peaks.get("fp32_gflops"), "int8": peaks.get("int8_gops"), "bfloat16": peaks.get("bf16_gflops")}
    peak = rate.get(mode) if spec.startswith("refimpl") else None
    return tokens * LINEAR_OPS_PER_TOKEN / (peak * 1e9) if peak else None


def command_line():
    """This run's arguments, without --write and its file (what reproduces the table)."""
    words, skip = [], False
    for word in sys.argv[1:]:
        if skip or word.startswith("--write="):
            skip = False
            continue
        if word == "--write":
            skip = True
            continue
        words.append(word)
    return " ".join(words)


def render(results, data, peaks, args, busy_before, busy_after, repeats, model_dir):
    tok_a, tok_b = data["a_tokens"], data["b_tokens"]
    base = {"float32": "onnxruntime-fp32", "int8": "onnxruntime-int8", "bfloat16": "openvino-bf16"}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), {args.threads} threads for "
        f"every engine, medians of {repeats} alternating repeats; other load: {busy_before:.0%} before, "
        f"{busy_after:.0%} after. Command: `python -m tools.bench {command_line()}`. "
        f"{blas_description()}.",
        "",
        f"Machine peaks measured by `python -m tools.peaks`: fp32 FMA {peaks.get('fp32_gflops', 0):.0f} GFLOP/s, "
        f"int8 dot products {peaks.get('int8_gops', 0):.0f} GOPS ({peaks.get('int8_instruction', '?')}), bf16 "
        f"{peaks.get('bf16_gflops', 0):.0f} GFLOP/s ({peaks.get('bf16_instruction', '?')}), DRAM read "
        f"{peaks.get('dram_gbs', 0):.1f} GB/s. CPU features: {peaks.get('features', '?')}.",
        "",
        f"Inputs: (a) {len(data['a'])} {'KLUE-NLI premises' if KLUE_NLI.exists() else 'corpus sentences'}, "
        f"{tok_a} tokens (mean {data['a_stats'][0]:.1f}, max {data['a_stats'][1]}); (b) {len(data['b'])} long-tail "
        f"sentences, {tok_b} tokens (mean {data['b_stats'][0]:.1f}, max {data['b_stats'][1]}); (c) one sentence of "
        f"{data['c_tokens']} tokens; (g) (c) and (a) with another process busy on core 0. Batch size 32.",
        "",
        "| engine | kernels | (a) sentences/s | (a) tokens/s | (b) tokens/s | (c) batch-1 ms | (c) / floor "
        "| (g) busy batch-1 ms | (g) busy (a) sentences/s | vs baseline (a) | vs baseline (c) | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, r in results.items():
        floor = floor_seconds(spec, data["c_tokens"], peaks)
        mode = spec.split("-", 1)[1].split("@")[0]
        other = results.get(base.get(mode, ""))
        vs_a = f"{other['a'] / r['a']:.2f}x" if other and spec.startswith("refimpl") else ""
        vs_c = f"{r['c'] / other['c']:.2f}x" if other and spec.startswith("refimpl") else ""
        kernels = r["info"].get("kernels", "") if isinstance(r["info"], dict) else ""
        share = f"{r['c'] / floor:.2f}x" if floor else ""
        lines.append(
            f"| {spec} | {kernels} | {len(data['a']) / r['a']:.0f} | {tok_a / r['a']:.0f} | {tok_b / r['b']:.0f} | "
            f"{r['c'] * 1e3:.1f} | {share} | {r['c_busy'] * 1e3:.1f} | "
            f"{len(data['a']) / r['a_busy']:.0f} | {vs_a} | {vs_c} | {r['peak_rss']:.0f} |"
        )
    lines += [
        "",
        "Baselines: float32 against ONNX Runtime fp32, int8 against ONNX Runtime int8, bfloat16 against OpenVINO bf16; "
        "for throughput how many times faster refimpl is, for latency refimpl's time as a fraction of the other's. "
        "(c) / floor: batch-1 time over the linear layers' operations at the mode's measured peak.",
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
    parser.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES, help="engines to compare (see above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", metavar="DOC", help="replace the bench block of this Markdown file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.threads)
    report = run(args)
    print(report)
    if args.write:
        write_doc(args.write, report)


if __name__ == "__main__":
    main()
