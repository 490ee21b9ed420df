"""Benchmark of `refimpl serve` against `model.encode` in one process (not a test).

Run it from the repository root as a module:

    python -m tools.serve_bench                                  # the cached klue-shaped random model
    python -m tools.serve_bench --model DIR --threads 1 --sentences 2000 --rss-requests 10000

Three numbers, each with its target:
- throughput: 64 concurrent clients sending 1-8 short sentences per request, sentences/s,
  against model.encode(all of them, batch_size=32) offline (target >= 0.85x);
- latency: one short sentence per request on an idle server, median, against a batch-1
  model.encode (target <= 1.5x + 2 ms);
- memory: the server's RSS before and after --rss-requests requests (target growth < 5%).

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams (httpx costs
more CPU per request than a tiny model's forward pass, and client and server share the
machine's cores). Requests go to /v1/embeddings with encoding_format=base64; the server
runs with --auto-truncate so that long sentences are cut as model.encode cuts them.
The sentences are the hypotheses of KLUE-NLI dev (short Korean sentences, CC BY-SA 4.0), read
from ../shared/data/klue-nli-v1.1_dev.json beside the repository when it is there, never copied;
otherwise the Korean test corpus (tools/data/korean_corpus.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.common import ROOT, klue_model

KLUE_NLI = ROOT.parent / "shared" / "data" / "klue-nli-v1.1_dev.json"  # ../shared/data, beside the repository
SERVER = [sys.executable, "-m", "refimpl", "serve"]
COMMAND = "python -m tools.serve_bench"


def benchmark_sentences() -> tuple[list[str], str]:
    """(sentences, where they come from): KLUE-NLI dev hypotheses when present, else the test corpus."""
    if KLUE_NLI.exists():
        rows = json.loads(KLUE_NLI.read_text(encoding="utf-8"))
        return [row["hypothesis"] for row in rows], f"KLUE-NLI dev hypotheses ({KLUE_NLI})"
    from tools.fixtures import CORPUS, corpus_lines

    sentences = list(dict.fromkeys(corpus_lines()))  # corpus_lines adds lowercased copies: Korean has no case
    return sentences, f"the Korean test corpus (tools/data/{CORPUS.name}; {KLUE_NLI} is absent)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection: POST JSON, read one Content-Length response."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def decode(body: bytes) -> np.ndarray:
    data = json.loads(body)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])


async def load(port: int, requests: list[list[str]], clients: int) -> tuple[float, list]:
    """Send ``requests`` over ``clients`` connections; (seconds, [(sentences, vectors)])."""
    results = []

    async def client(mine):
        connection = Connection(port)
        try:
            for batch in mine:
                status, body = await connection.post("/v1/embeddings", {"input": batch, "encoding_format": "base64"})
                if status != 200:
                    raise RuntimeError(f"status {status}: {body[:200]!r}")
                results.append((batch, body))
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(requests[i::clients]) for i in range(clients)))
    return time.perf_counter() - began, results


async def latency(port: int, sentences: list[str], count: int) -> list[float]:
    connection, times = Connection(port), []
    try:
        for sentence in sentences[:count]:
            began = time.perf_counter()
            status, _ = await connection.post("/v1/embeddings", {"input": [sentence], "encoding_format": "base64"})
            times.append(time.perf_counter() - began)
            assert status == 200
    finally:
        connection.close()
    return times


def start_server(model: str, threads: int | None) -> tuple[subprocess.Popen, int, object]:
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-bench-", suffix=".log", delete=False)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    command = [
        *SERVER,
        "--model",
        model,
        "--port",
        str(port),
        "--auto-truncate",
        "--max-client-batch-size",
        "64",
        "--log-level",
        "warning",
    ] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {Path(log.name).read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port, log
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server not healthy in 300 s")


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def make_requests(sentences: list[str], total: int, rng: random.Random) -> list[list[str]]:
    requests, used = [], 0
    while used < total:
        size = min(rng.randint(1, 8), total - used)
        requests.append([sentences[(used + i) % len(sentences)] for i in range(size)])
        used += size
    return requests


def offline(model, flat: list[str], singles: list[str]) -> tuple[float, list[float], np.ndarray]:
    model.encode(flat[:64], batch_size=32)  # warm-up
    began = time.perf_counter()
    embeddings = model.encode(flat, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - began
    times = []
    for sentence in singles:
        began = time.perf_counter()
        model.encode([sentence], batch_size=1)
        times.append(time.perf_counter() - began)
    return seconds, times, embeddings


def progress(message: str):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(rows: list[tuple], command: str):
    print(f"\n$ {command}\n")
    print(f"| {'measure':<38} | {'server':>12} | {'offline':>12} | {'ratio':>7} | {'target':<18} | ok |")
    print(f"|{'-' * 40}|{'-' * 14}|{'-' * 14}|{'-' * 9}|{'-' * 20}|----|")
    for name, server, base, ratio, target, ok in rows:
        print(f"| {name:<38} | {server:>12} | {base:>12} | {ratio:>7} | {target:<18} | {'yes' if ok else 'NO':<2} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="model directory (default: the klue-shaped random model, cached; built on first use)"
    )
    parser.add_argument("--sentences", type=int, default=4000, help="sentences in the throughput run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument(
        "--threads", type=int, help="kernel threads, the same for server and offline (default: all cores)"
    )
    return parser.parse_args()


def measure_server(args, sentences: list[str], requests: list[list[str]], singles: list[str]) -> dict:
    """Latency, throughput (with the vectors received) and RSS of one server, then SIGTERM."""
    proc, port, log = start_server(args.model, args.threads)
    try:
        asyncio.run(load(port, requests[:64], args.clients))  # warm-up
        times = asyncio.run(latency(port, singles, args.latency_requests))
        progress(f"server latency: {statistics.median(times) * 1e3:.2f} ms")
        seconds, results = asyncio.run(load(port, requests, args.clients))
        progress(f"server: {sum(map(len, requests))} sentences in {seconds:.1f} s")
        got = {}
        for batch, body in results:
            got.update(zip(batch, decode(body)))
        rss_requests = [[sentences[i % len(sentences)]] for i in range(args.rss_requests)]
        asyncio.run(load(port, rss_requests[:1000], args.clients))
        before = rss(proc.pid)
        rss_seconds, _ = asyncio.run(load(port, rss_requests, args.clients))
        progress(f"rss: {args.rss_requests} requests in {rss_seconds:.1f} s")
        after = rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
        os.unlink(log.name)
    return dict(times=times, seconds=seconds, got=got, before=before, after=after, rss_seconds=rss_seconds, code=code)


def table_rows(args, sentences: int, server: dict, seconds_offline: float, times_offline: list[float]) -> list:
    tput_server, tput_offline = sentences / server["seconds"], sentences / seconds_offline
    lat_server, lat_offline = statistics.median(server["times"]) * 1e3, statistics.median(times_offline) * 1e3
    before, after = server["before"], server["after"]
    growth = (after - before) / before
    return [
        (
            f"throughput, {args.clients} clients (sentences/s)",
            f"{tput_server:.0f}",
            f"{tput_offline:.0f}",
            f"{tput_server / tput_offline:.2f}x",
            ">= 0.85x",
            tput_server >= 0.85 * tput_offline,
        ),
        (
            "latency, 1 short sentence, median (ms)",
            f"{lat_server:.2f}",
            f"{lat_offline:.2f}",
            f"{lat_server / lat_offline:.2f}x",
            f"<= {1.5 * lat_offline + 2:.2f} ms",
            lat_server <= 1.5 * lat_offline + 2,
        ),
        (
            f"server RSS over {args.rss_requests} requests (MB)",
            f"{after / 2**20:.1f}",
            f"{before / 2**20:.1f}",
            f"{growth * 100:+.1f}%",
            "< +5%",
            growth < 0.05,
        ),
    ]


def main():
    args = parse_args()
    args.model = str(klue_model(args.model))
    from refimpl import SentenceTransformer

    rng = random.Random(0)
    sentences, source = benchmark_sentences()
    progress(f"sentences: {source}")
    requests = make_requests(sentences, args.sentences, rng)
    flat = [s for r in requests for s in r]
    singles = sentences[: args.latency_requests]

    model = SentenceTransformer(args.model, threads=args.threads)
    seconds_offline, times_offline, expected = offline(model, flat, singles)
    progress(f"offline: {len(flat)} sentences in {seconds_offline:.1f} s")

    server = measure_server(args, sentences, requests, singles)
    error = max(float(np.abs(server["got"][s] - e).max()) for s, e in zip(flat, expected))
    report(table_rows(args, len(flat), server, seconds_offline, times_offline), " ".join([COMMAND] + sys.argv[1:]))
    print(
        f"\nsentences: {source}; model: {args.model}\n"
        f"max |server - encode| over {len(flat)} sentences: {error:.2e}; {len(requests)} requests; "
        f"{args.rss_requests} requests in {server['rss_seconds']:.1f} s; "
        f"server exit status after SIGTERM: {server['code']}"
    )


if __name__ == "__main__":
    main()
