"""The small experiments behind the design notes of docs/performance.md, one subcommand each.

    python -m tools.microbench orientation    # x W^T against (W x^T)^T by number of tokens
    python -m tools.microbench split          # one 2-thread BLAS against two threads of 1-thread BLAS
    python -m tools.microbench error-model    # the GELU kernel with numba's python and numpy error models
    python -m tools.microbench numba-gemm     # a register-blocked numba matrix product for small batches
    python -m tools.microbench mapped         # the forward pass on mmap'd against copied weights
    python -m tools.microbench pass-size      # sentences/s by the fast engine's tokens per forward pass
    python -m tools.microbench numba-rss      # what importing numba and loading a kernel add to RSS
    python -m tools.microbench qkv            # query, key and value as three products or one stacked
    python -m tools.microbench attention-call # attention's Python wrapper against its numba driver, batch 1
    python -m tools.microbench attention-parallel  # batch 1's attention serial and parallel, after its product too
    python -m tools.microbench stream         # 12 layers' packed weights read as plain streams (batch 1's floor)
    python -m tools.microbench overlap        # batch-1 products against plain streams of their weights, by rows
    python -m tools.microbench wake           # a parallel region after a pause: when numba's worker is asleep
    python -m tools.microbench between        # batch 1 with attention and LayerNorm parallel too, quiet and busy
    python -m tools.microbench adaptation     # batch 1 with policy.LOAD_ADAPTATION "auto" against "off", quiet and busy
    python -m tools.microbench keep-awake     # batch 1 with an empty parallel region amid each attention
    python -m tools.microbench shared-items   # batch 1 with the products' items shared, not halved
    python -m tools.microbench rounded-ffn    # bf16 encode with and without the FFN's rounding store
    python -m tools.microbench bf16-rounding  # vcvtneps2bf16 against the integer rounding, by size
    python -m tools.microbench kernels-against --old /tmp/old   # attention, LayerNorm: old modules in turn
    python -m tools.microbench products-against --old /tmp/old  # a tier's products: old module in turn
    python -m tools.microbench tile-alone     # each tier's float32 tile alone on one core, by k steps
    python -m tools.microbench one-core-or-two  # cold int8 products on one core and two, beside plain reads
    python -m tools.microbench vnni-rows      # cold int8 products by rows: VNNI's kernel against the tiles

Run on an idle machine; each prints its measurements.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tools import common

SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # one layer's linear maps, [out, in]


def rate(work, flops, seconds=0.6):
    """GFLOP/s of ``work()``."""
    return common.rate(work, flops, seconds) / 1e9


def orientation():
    rng = np.random.default_rng(0)
    layers = [[rng.standard_normal(shape, dtype=np.float32) for shape in SHAPES] for _ in range(12)]
    print("tokens  x W^T  (W x^T)^T   GFLOP/s, 12 layers of distinct weights")
    for tokens in (8, 16, 32, 64, 96, 128, 256, 512):
        inputs = {k: rng.standard_normal((tokens, k), dtype=np.float32) for k in (768, 3072)}
        flops = 12 * sum(2 * tokens * a * b for a, b in SHAPES)
        direct = rate(lambda: [np.matmul(inputs[w.shape[1]], w.T) for layer in layers for w in layer], flops)
        transposed = rate(
            lambda: [np.matmul(w, inputs[w.shape[1]].T).T.copy() for layer in layers for w in layer], flops
        )
        print(f"{tokens:6d} {direct:6.0f} {transposed:10.0f}")


def split():
    from concurrent.futures import ThreadPoolExecutor

    from refimpl.run.threads import set_threads as set_blas_threads

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((3072, 768), dtype=np.float32)
    w2 = rng.standard_normal((768, 3072), dtype=np.float32)
    pool = ThreadPoolExecutor(2)
    for tokens in (256, 512, 1024):
        x = rng.standard_normal((tokens, 768), dtype=np.float32)
        halves = [x[: tokens // 2], x[tokens // 2 :]]
        flops = 4 * tokens * 768 * 3072
        set_blas_threads(2)
        both = rate(lambda: (x @ w1.T) @ w2.T, flops)
        set_blas_threads(1)
        threads = rate(lambda: list(pool.map(lambda h: (h @ w1.T) @ w2.T, halves)), flops)
        set_blas_threads(2)
        print(
            f"{tokens} tokens: one product on 2-thread BLAS {both:.0f} GFLOP/s, "
            f"two threads of 1-thread BLAS {threads:.0f}"
        )


def error_model():
    from numba import njit

    from tests.baseline import kernels  # the kernels these experiments measured, before refimpl's own

    x = np.random.default_rng(0).normal(size=(512, 3072)).astype(np.float32) * 3
    bias = np.zeros(3072, np.float32)
    for model in ("python", "numpy"):
        kernel = njit(fastmath=kernels.FASTMATH, error_model=model)(kernels.bias_gelu.py_func)
        h = x.copy()
        kernel(h, bias)
        times = []
        for _ in range(10):
            h[:] = x
            start = time.perf_counter()
            kernel(h, bias)
            times.append(time.perf_counter() - start)
        print(f"error_model={model!r}: GELU {statistics.median(times) * 1e9 / x.size:.2f} ns per element")


def numba_gemm():
    from numba import njit

    @njit(fastmath={"reassoc", "contract"}, error_model="numpy", nogil=True)
    def linear_small(x, w, out):
        """out = x W^T in 4 x 4 blocks: 16 scalar accumulators, LLVM vectorises along k."""
        M, K = x.shape
        for n in range(0, w.shape[0] - 3, 4):
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            for m in range(0, M - 3, 4):
                x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + 3]
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0)
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0)
                for k in range(K):
                    v0, v1, v2, v3, u0, u1, u2, u3 = x0[k], x1[k], x2[k], x3[k], w0[k], w1[k], w2[k], w3[k]
                    a00 += v0 * u0
                    a01 += v0 * u1
                    a02 += v0 * u2
                    a03 += v0 * u3  # noqa: E702
                    a10 += v1 * u0
                    a11 += v1 * u1
                    a12 += v1 * u2
                    a13 += v1 * u3  # noqa: E702
                    a20 += v2 * u0
                    a21 += v2 * u1
                    a22 += v2 * u2
                    a23 += v2 * u3  # noqa: E702
                    a30 += v3 * u0
                    a31 += v3 * u1
                    a32 += v3 * u2
                    a33 += v3 * u3  # noqa: E702
                out[m, n], out[m, n + 1], out[m, n + 2], out[m, n + 3] = a00, a01, a02, a03
                out[m + 1, n], out[m + 1, n + 1], out[m + 1, n + 2], out[m + 1, n + 3] = a10, a11, a12, a13
                out[m + 2, n], out[m + 2, n + 1], out[m + 2, n + 2], out[m + 2, n + 3] = a20, a21, a22, a23
                out[m + 3, n], out[m + 3, n + 1], out[m + 3, n + 2], out[m + 3, n + 3] = a30, a31, a32, a33

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3072, 768), dtype=np.float32) for _ in range(12)]
    for tokens in (16, 32, 64):
        x = rng.standard_normal((tokens, 768), dtype=np.float32)
        out = np.empty((tokens, 3072), np.float32)
        linear_small(x, weights[0], out)
        assert np.abs(out - x @ weights[0].T).max() < 1e-2
        flops = 12 * 2 * tokens * 768 * 3072
        ours = rate(lambda: [linear_small(x, w, out) for w in weights], flops)
        blas = rate(lambda: [np.matmul(x, w.T) for w in weights], flops)
        print(f"{tokens} tokens: numba, one core {ours:.0f} GFLOP/s; OpenBLAS, 2 threads {blas:.0f}")


def _model():
    from refimpl import SentenceTransformer

    return SentenceTransformer(common.klue_model())


def _batch(sentences, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(16), 0.45, sentences), 5, 60).astype(int)
    return rng.integers(5, 1700, lengths.sum()), lengths


def mapped():
    from refimpl.batch import cu_seqlens_from_lengths
    from refimpl.engines.fast import encoder as packed

    model = _model()
    ids, lengths = _batch(32)
    cu = cu_seqlens_from_lengths(lengths)

    def copy(tree):
        if isinstance(tree, dict):
            return {k: copy(v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [copy(v) for v in tree]
        return np.array(tree)

    variants = {"mapped": model.weights, "copied": copy(model.weights)}
    results = {name: [] for name in variants}
    for _ in range(5):
        for name, weights in variants.items():
            packed.encoder(ids, np.zeros_like(ids), cu, weights, model.config)
            start = time.perf_counter()
            for _ in range(3):
                packed.encoder(ids, np.zeros_like(ids), cu, weights, model.config)
            results[name].append(3 * lengths.sum() / (time.perf_counter() - start))
    for name, values in results.items():
        print(f"{name} weights: median {statistics.median(values):.0f} tokens/s")


def pass_size():
    """Sentences/s of encode() by the fast engine's token budget per forward pass, every mode."""
    from refimpl import SentenceTransformer
    from refimpl.engines import fast
    from tools.bench import klue_sentences

    sentences = klue_sentences(512)
    budgets = (512, 768, 1024, 1536, 2048)
    for mode in ("float32", "int8", "bfloat16"):
        model = SentenceTransformer(str(common.klue_model()), compute=mode)
        model.encode(sentences[:64], batch_size=32)
        results = {budget: [] for budget in budgets}
        for _ in range(3):
            for budget, values in results.items():
                fast.MAX_TOKENS_PER_FORWARD = budget
                start = time.perf_counter()
                model.encode(sentences, batch_size=32)
                values.append(len(sentences) / (time.perf_counter() - start))
        print(mode, ", ".join(f"{b} tokens {statistics.median(v):.0f}" for b, v in results.items()), "sentences/s")


def numba_rss():
    def rss_by_mapping():
        total, mappings, current = 0, {}, "[anonymous]"
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:
                    current = fields[5] if len(fields) >= 6 else "[anonymous]"
                elif fields[0] == "Rss:":
                    kib = int(fields[1])
                    total += kib
                    mappings[current] = mappings.get(current, 0) + kib
        return total / 1024, mappings

    before, _ = rss_by_mapping()
    import numba  # noqa: F401

    imported, mappings = rss_by_mapping()
    llvm = sum(kib for name, kib in mappings.items() if "llvmlite" in name) / 1024
    from tests.baseline import kernels  # the kernels these experiments measured, before refimpl's own

    h = np.ones((4, 8), np.float32)
    kernels.bias_gelu(h, np.ones(8, np.float32))
    loaded, mappings = rss_by_mapping()
    llvm_loaded = sum(kib for name, kib in mappings.items() if "llvmlite" in name) / 1024
    print(
        f"RSS with NumPy {before:.0f} MiB; importing numba adds {imported - before:.0f} MiB "
        f"({llvm:.0f} MiB of pages of libllvmlite.so); the first cached kernel adds {loaded - imported:.0f} MiB "
        f"(libllvmlite.so pages now {llvm_loaded:.0f} MiB); in all {loaded - before:.0f} MiB"
    )


def _best_microseconds(work, calls):
    work()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            work()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def qkv():
    """The three 768x768 products of Q, K and V on one input against one product of the stacked
    [2304, 768] weight, hot, in a forward pass's policy (refimpl's own kernels, each mode)."""
    from refimpl.engines.fast.kernels import matmul, policy

    rng = np.random.default_rng(0)
    for mode in ("int8", "bf16", "f32"):
        weights = [rng.standard_normal((768, 768), dtype=np.float32) for _ in range(3)]
        separate = [matmul.pack(w, mode) for w in weights]
        stacked = matmul.pack(np.concatenate(weights), mode)
        for rows in (17, 494):
            x = rng.standard_normal((rows, 768), dtype=np.float32)
            outs = [np.empty((rows, 768), np.float32) for _ in range(3)]
            out = np.empty((rows, 2304), np.float32)
            calls = 2000 if rows < 100 else 50
            with policy.forward_pass():
                prepared = matmul.activations(x, separate[0])
                three = _best_microseconds(
                    lambda: [matmul.linear(x, p, out=o, activations=prepared) for p, o in zip(separate, outs)], calls
                )
                one = _best_microseconds(lambda: matmul.linear(x, stacked, out=out, activations=prepared), calls)
            print(f"{mode} {rows} rows: three products {three:.1f} us, one stacked {one:.1f} us")


def attention_call():
    """One 17-token sentence's attention (12 heads of 64): the public function (checks, then the
    serial driver) against the numba driver alone."""
    from refimpl.engines.fast.kernels import attention as A

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((17, 768), dtype=np.float32) for _ in range(3))
    cu, out = np.array([0, 17], np.int64), np.empty((17, 768), np.float32)
    wide = bool(A.HOST_AVX512)
    no_probabilities, no_offsets = np.empty(0, np.float32), np.zeros(1, np.int64)
    flat = (q.reshape(-1), k.reshape(-1), v.reshape(-1))
    driver = _best_microseconds(
        lambda: A._serial(
            *flat, 768, 0, 0, 0, cu, 12, np.float32(0.125), out, wide, no_probabilities, no_offsets, False
        ),
        3000,
    )
    public = _best_microseconds(lambda: A.attention(q, k, v, cu, 12, 0.125, out=out, parallel=False), 3000)
    print(f"attention(..., parallel=False) {public:.1f} us, its serial driver alone {driver:.1f} us")


def attention_parallel():
    """One 17-token sentence's attention (12 heads of 64) serial and parallel, in turn: called again
    and again (operands in cache), and right after the stacked query-key-value product that writes its
    input, on one of eight weight copies in rotation (the weights stream from memory, as in a pass).
    The variants run in turn, so the parallel call "called again" follows the serial one (over 25 us)
    and includes a wake-up of numba's worker; after the product, as in a pass, it does not."""
    from refimpl.engines.fast.kernels import attention as A
    from refimpl.engines.fast.kernels import matmul

    rng = np.random.default_rng(0)
    x = rng.standard_normal((17, 768), dtype=np.float32)
    copies = [matmul.pack(rng.standard_normal((3 * 768, 768), dtype=np.float32) * 0.03, "f32") for _ in range(8)]
    qkv = matmul.linear(x, copies[0])
    cu, out = np.array([0, 17], np.int64), np.empty((17, 768), np.float32)
    turn = [0]

    def call(parallel, after_product):
        def work():
            if after_product:
                turn[0] = (turn[0] + 1) % len(copies)
                matmul.linear(x, copies[turn[0]], out=qkv)
            start = time.perf_counter()
            A.attention_qkv(qkv, cu, 12, 0.125, out=out, parallel=parallel)
            return time.perf_counter() - start

        return work

    variants = {(p, a): call(p, a) for a in (False, True) for p in (False, True)}
    times = {key: [] for key in variants}
    for work in variants.values():
        work()
    for _ in range(300):
        for key, work in variants.items():
            times[key].append(work())
    for (parallel, after_product), values in times.items():
        where = "after its product" if after_product else "called again     "
        print(f"{'parallel' if parallel else 'serial  '} {where}: median {statistics.median(values) * 1e6:.1f} us")


def _stream_reader():
    """A 2-thread xor reader of one array (tools.peaks' loop) that, with ``ahead`` > 0, also prefetches
    the first ``ahead`` bytes of the next array into L2 during the second half of its own read."""
    from numba import njit, prange, types
    from numba.extending import intrinsic

    from refimpl.engines.fast.kernels import intrinsics as X
    from tools.peaks import _xor_range

    @intrinsic
    def prefetch_l2(typingctx, array, offset):
        def codegen(context, builder, sig, args):
            base = builder.bitcast(X.data_ptr(context, builder, sig.args[0], args[0]), X.I8.as_pointer())
            X.prefetch(builder, X.ptr_add(builder, base, args[1]), 2)
            return context.get_dummy_value()

        return types.void(array, types.intp), codegen

    @njit(parallel=True)
    def read(a, following, ahead, nthreads):
        per = (a.size + nthreads - 1) // nthreads
        sums = np.zeros(nthreads, np.uint64)
        for t in prange(nthreads):
            lo, hi = t * per, min(a.size, (t + 1) * per)
            chunk, share = (hi - lo) // 16, ahead // nthreads
            total = np.uint64(0)
            for i in range(16):
                total ^= _xor_range(a, lo + i * chunk, lo + (i + 1) * chunk)
                if ahead and i >= 8:  # this thread's share of the next array's start, in 8 pieces
                    first = t * share + (i - 8) * share // 8
                    for byte in range(first, min(first + share // 8, following.size * 8), 64):
                        prefetch_l2(following, byte)
            sums[t] = total
        return sums[0]

    return read


def stream():
    """The packed weights of 12 klue-shaped layers (random) read as 72 plain streams, one array after
    the other as the products read them at batch 1, without and with prefetching the next array's start."""
    read = _stream_reader()
    rng = np.random.default_rng(0)
    for mode in ("f32", "bf16", "int8"):
        layers = common.random_packed_layers(mode, SHAPES, rng)
        arrays = [packed.arrays["w"].reshape(-1).view(np.uint64) for layer in layers for packed, _ in layer]
        nbytes = sum(a.nbytes for a in arrays)
        read(arrays[0][:4096], arrays[1], 0, 2)
        times = {0: [], 128 << 10: []}
        for _ in range(5):
            for ahead, values in times.items():
                start = time.perf_counter()
                for i, a in enumerate(arrays):
                    read(a, arrays[(i + 1) % len(arrays)], ahead, 2)
                values.append(time.perf_counter() - start)
        plain, ahead = (statistics.median(v) for v in times.values())
        print(
            f"{mode}: {nbytes / 1e6:.0f} MB in {plain * 1e3:.2f} ms ({nbytes / plain / 1e9:.1f} GB/s); "
            f"prefetching 128 KB of the next array: {ahead * 1e3:.2f} ms"
        )


STACKED = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # one layer's products with QKV stacked


def overlap():
    """A pass's 48 products (12 random klue-shaped layers, QKV stacked) at 1, 8, 16 and 17 rows, beside
    plain streams of the same weights, alternating in one process: at batch 1 the products read as much
    memory as they compute, and a product time near the stream's means the two overlap. To run it on
    another checkout's refimpl: PYTHONPATH=OLD_CHECKOUT python tools/microbench.py overlap (``python -m``
    would put this checkout first on the path)."""
    read = _stream_reader()
    rng = np.random.default_rng(0)
    row_counts = (1, 8, 16, 17)
    for mode in ("f32", "bf16", "int8"):
        layers = common.random_packed_layers(mode, STACKED, rng)
        arrays = [packed.arrays["w"].reshape(-1).view(np.uint64) for layer in layers for packed, _ in layer]
        inputs = {
            rows: {k: rng.standard_normal((rows, k)).astype(np.float32) for k in (768, 3072)} for rows in row_counts
        }
        outputs = {rows: {n: np.empty((rows, n), np.float32) for n in (768, 2304, 3072)} for rows in row_counts}

        def products(rows):
            common.run_products(layers, inputs[rows], outputs[rows])

        def streams():
            for i, a in enumerate(arrays):
                read(a, arrays[(i + 1) % len(arrays)], 0, 2)

        cases = {"stream": streams, **{f"{rows} rows": (lambda rows=rows: products(rows)) for rows in row_counts}}
        times = {name: [] for name in cases}
        for repeat in range(10):
            for name, run in cases.items():
                start = time.perf_counter()
                run()
                if repeat:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        plain = statistics.median(times["stream"])
        nbytes = sum(a.nbytes for a in arrays)
        print(
            f"{mode}: {nbytes / 1e6:.0f} MB, "
            + ", ".join(
                f"{name} {statistics.median(v) * 1e3:.2f} ms ({statistics.median(v) / plain:.2f}x)"
                for name, v in times.items()
            )
        )


def wake():
    """A tiny parallel region after the calling thread has worked alone for a while: numba's GNU OpenMP
    worker spins for GOMP_SPINCOUNT rounds (refimpl sets 1000 unless told otherwise), then sleeps, and a
    region that has to wake it costs more."""
    from numba import njit, prange

    import refimpl.engines.fast.kernels  # noqa: F401  (applies refimpl's threading defaults first)

    @njit(parallel=True)
    def region(a):
        for i in prange(2):
            total = 0.0
            for j in range(2000):
                total += a[j] * 1.0001
            a[i] = total * 1e-9

    def alone(microseconds):
        until = time.perf_counter() + microseconds * 1e-6
        while time.perf_counter() < until:
            pass

    a = np.ones(4000)
    for _ in range(100):
        region(a)
    print("pause before the region (us): median region time (us)")
    for pause in (0, 10, 15, 20, 25, 30, 40, 60, 100):
        times = []
        for _ in range(300):
            region(a)
            alone(pause)
            start = time.perf_counter()
            region(a)
            times.append(time.perf_counter() - start)
        print(f"{pause:4d}: {statistics.median(times) * 1e6:.1f}")


def between():
    """Batch 1 with the kernels between the products (attention, the LayerNorms) serial, as refimpl runs
    them, and parallel (their size thresholds set to 0, so that numba's worker never waits long enough
    to sleep), in turn in one process, on an idle machine and with another process busy on core 0
    (batch_one's 10-token sentence)."""
    from refimpl.engines.fast.kernels import attention, norms
    from tools import batch_one

    def parallel():
        defaults = attention.SERIAL_BELOW, norms.PARALLEL_MIN_ELEMENTS
        attention.SERIAL_BELOW, norms.PARALLEL_MIN_ELEMENTS = 0, 0

        def restore():
            attention.SERIAL_BELOW, norms.PARALLEL_MIN_ELEMENTS = defaults

        return restore

    for mode in ("int8", "bfloat16", "float32"):
        _variants_quiet_and_busy(mode, {"parallel": parallel}, calls=10, text=batch_one.TEXT)


def _variants_quiet_and_busy(mode, variants, calls=15, rounds=6, text=None):
    """Batch 1 on ``text`` (default: the bench's 17-token sentence) under each variant (a function that
    installs it and returns a function that puts refimpl's back), in turn, quiet and with core 0 busy;
    checks that each variant gives refimpl's embedding bit for bit."""
    from tokenizers import Tokenizer

    from refimpl import SentenceTransformer
    from tools import batch_one
    from tools.bench import BusyCore

    model_dir = common.klue_model()
    model = SentenceTransformer(str(model_dir), compute=mode)
    if text is None:
        text = common.make_texts(Tokenizer.from_file(str(model_dir / "tokenizer.json")), [17], 4)[0]
    reference = model.encode([text])
    for install in variants.values():
        restore = install()
        same = np.array_equal(model.encode([text]), reference)
        restore()
        assert same, "a variant changed the embedding"

    def run():
        times = {"refimpl's": [], **{name: [] for name in variants}}
        for _ in range(rounds):
            times["refimpl's"].append(batch_one.median_ms(model, text, calls))
            for name, install in variants.items():
                restore = install()
                times[name].append(batch_one.median_ms(model, text, calls))
                restore()
        return ", ".join(f"{name} {statistics.median(v):.2f} ms" for name, v in times.items())

    quiet = run()
    with BusyCore():
        busy = run()
    print(f"{mode}: idle: {quiet}; core 0 busy: {busy}")


def adaptation():
    """Batch 1 (the bench's 17-token sentence) with the pass adapting to the load (refimpl's default,
    policy.LOAD_ADAPTATION "auto") and without ("off": the small kernels serial, numba's threads as
    set), in turn, quiet and with core 0 busy."""
    from refimpl.engines.fast.kernels import policy

    def off():
        previous, policy.LOAD_ADAPTATION = policy.LOAD_ADAPTATION, "off"
        return lambda: setattr(policy, "LOAD_ADAPTATION", previous)

    for mode in ("int8", "bfloat16", "float32"):
        _variants_quiet_and_busy(mode, {"off": off})


def keep_awake():
    """numba's worker falls asleep during each layer's attention (``wake``). Splitting the attention's
    heads in two halves with an empty parallel region between keeps it spinning: one cheap region
    instead of a wake-up in the product after attention."""
    from numba import njit, prange

    from refimpl.engines.fast.kernels import attention as A

    @njit(**A._opts)
    def heads(q, k, v, ldi, qo, ko, vo, cu, nh, scale, out, wide, probs, poffs, want, first, last):
        n, width = out.shape
        items, kt, vp, s, o, l = A._plan(cu, nh, width // nh, 1, np.zeros(1, q.dtype))
        counter = np.zeros(1, np.int64)
        A._worker(
            np.int64(0), counter, items[first:last], q, k, v, ldi, qo, ko, vo, out.reshape(n * width), width, cu,
            nh, width // nh, scale, kt, vp, s, o, l, wide, probs, poffs, want,
        )  # fmt: skip

    @njit(parallel=True)
    def empty_region(a):
        for i in prange(2):
            a[i] = i

    flag = np.zeros(2, np.int64)
    original = A.attention_qkv

    def split(qkv, cu_seqlens, num_heads, scale, out=None, probabilities=False, parallel=None):
        if probabilities or len(cu_seqlens) != 2 or out is None:
            return original(qkv, cu_seqlens, num_heads, scale, out, probabilities, parallel)
        width = qkv.shape[1] // 3
        flat = qkv.reshape(-1)
        args = (flat, flat, flat, 3 * width, 0, width, 2 * width, cu_seqlens, num_heads, qkv.dtype.type(scale), out,
                bool(A.HOST_AVX512), A._NO_PROBABILITIES[qkv.dtype], A._NO_OFFSETS, False)  # fmt: skip
        heads(*args, 0, num_heads // 2)
        empty_region(flag)
        heads(*args, num_heads // 2, num_heads)
        return out

    def install():
        A.attention_qkv = split
        return lambda: setattr(A, "attention_qkv", original)

    for mode in ("int8", "bfloat16", "float32"):
        _variants_quiet_and_busy(mode, {"attention in two halves": install})


def shared_items():
    """The AVX-512 products with their work items taken from two shared counters (each thread its own
    half first, then what is left of the other's) instead of prange's two fixed halves: a thread that
    starts late (a wake-up, a busy core) would do less."""
    from numba import njit, prange

    from refimpl.engines.fast.kernels import avx512 as X
    from refimpl.engines.fast.kernels import common as C
    from refimpl.engines.fast.kernels.lanes import atomic_add

    @njit(inline="always")
    def take(counters, w, n):
        half, w = (n + 1) // 2, np.int64(w)  # w: prange's index, unsigned
        for turn in range(2):
            side = w if turn == 0 else 1 - w
            t = atomic_add(counters, side, 1) + side * half
            if t < min(n, (side + 1) * half):
                return t
        return -1

    @njit(parallel=True)
    def gemm_f32(x, bp, bias, gelu, out, mb):
        n, counters = X._n_items(x.shape[0], bp.shape[0], mb), np.zeros(2, np.int64)
        for w in prange(2):
            it = take(counters, w, n)
            while it >= 0:
                X._item_f32(it, x, bp, bias, gelu, out, mb)
                it = take(counters, w, n)

    @njit(parallel=True)
    def gemm_int8(x, buf, prepare, bq, sw, colsum, bias, gelu, out, mb):
        qa, sx = C.int8_input(x, buf, prepare, bq.shape[1] * 4, X._INT8_INPUT, 128)
        n, counters = X._n_items(x.shape[0], bq.shape[0], mb), np.zeros(2, np.int64)
        for w in prange(2):
            it = take(counters, w, n)
            while it >= 0:
                X._item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb)
                it = take(counters, w, n)

    @njit(parallel=True)
    def gemm_bf16(x, buf, prepare, bb, bias, gelu, out, mb, rounded):
        xa = C.bf16_input(x, buf, prepare, bb.shape[1] * 2, X._BF16_INPUT)
        n, counters = X._n_items(x.shape[0], bb.shape[0], mb), np.zeros(2, np.int64)
        for w in prange(2):
            it = take(counters, w, n)
            while it >= 0:
                X._item_bf16(it, xa, bb, bias, gelu, out, mb, rounded)
                it = take(counters, w, n)

    shared = {"gemm_f32": gemm_f32, "gemm_int8": gemm_int8, "gemm_bf16": gemm_bf16}

    def install():
        originals = {name: getattr(X, name) for name in shared}
        for name, driver in shared.items():
            setattr(X, name, driver)
        return lambda: [setattr(X, name, driver) for name, driver in originals.items()]

    for mode in ("int8", "bfloat16", "float32"):
        _variants_quiet_and_busy(mode, {"shared items": install})


def rounded_ffn():
    """bf16: 256 KLUE-NLI premises encoded with the FFN's first product rounding its output for the
    second (encoder.ROUNDED_FFN) and without, in turn in one process, six rounds."""
    from refimpl.engines.fast import encoder
    from tools import bench

    model, sentences = _bf16_model(), bench.klue_sentences(256)
    times = {True: [], False: []}
    for round_ in range(7):
        for rounded in times:
            encoder.ROUNDED_FFN = rounded
            start = time.perf_counter()
            model.encode(sentences, batch_size=32)
            if round_:  # the first round warms up
                times[rounded].append(time.perf_counter() - start)
    encoder.ROUNDED_FFN = True
    for rounded, values in times.items():
        print(f"ROUNDED_FFN={rounded}: best {256 / min(values):.1f}, median {256 / statistics.median(values):.1f} "
              "sentences/s")  # fmt: skip


def _bf16_model():
    from refimpl import SentenceTransformer

    return SentenceTransformer(str(common.klue_model(None)), compute="bfloat16")


def bf16_rounding():
    """Rounding float32 rows to bf16 on both cores and on one: vcvtneps2bf16 (the AVX-512 BF16 tier's
    input, uint16 bits) against the integer rule (the AVX2 tier's input, float32 values)."""
    from refimpl.engines.fast.kernels import common as C
    from refimpl.engines.fast.kernels import cpu

    if "avx512bf16" not in cpu.host_features():
        raise SystemExit("this CPU lacks avx512bf16")
    rng = np.random.default_rng(0)
    for rows, k in ((17, 768), (494, 768), (494, 3072), (983, 3072)):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        bits, values = np.empty((rows, k), np.uint16), np.empty((rows, k), np.float32)
        kernels = {
            "vcvtneps2bf16, 2 threads": lambda: C.bf16_rows_u16(x, bits),
            "vcvtneps2bf16, 1 thread": lambda: C.bf16_rows_u16_serial(x, bits),
            "integer rule, 2 threads": lambda: C.bf16_rows_f32(x, values),
            "integer rule, 1 thread": lambda: C.bf16_rows_f32_serial(x, values),
        }
        line = ", ".join(f"{name} {_best_microseconds(run, 50):.1f} us" for name, run in kernels.items())
        print(f"{rows} x {k}: {line}")


def tile_alone():
    """Each tier's float32 register tile alone on one core, its operands in L1 (the same rows of x and
    block of weights again and again), by k steps per call: what the tile itself can do, without the
    items, epilogues, caches or the second thread around it."""
    from numba import njit

    from refimpl.engines.fast.kernels import avx2, avx512, cpu
    from refimpl.engines.fast.kernels.packing import aligned

    x = aligned(np.random.default_rng(0).random(8 * 1024).astype(np.float32))  # 8 rows of 1,024
    weights = aligned(np.random.default_rng(1).random(1024 * 48).astype(np.float32))  # a panel of 1,024 k steps
    tile = np.zeros(8 * 48, np.float32)
    for module, name in ((avx2, "avx2"), (avx512, "avx512")):
        if cpu.missing_features(name):
            print(f"{name}: skipped, the CPU lacks {cpu.missing_features(name)}")
            continue
        mk, rows, columns = module.mk_f32, (avx2.MR_F32 if name == "avx2" else avx512.MR), module.NR

        @njit
        def calls(x, weights, tile, count, steps, mk=mk, rows=rows):
            for _ in range(count):
                mk(x, 0, 1024, rows, weights, 0, 48, steps, tile, 1, 0, 0)

        for steps in (64, 128, 256, 1024):
            count = 4_000_000 // (rows * columns * steps // 8)
            calls(x, weights, tile, 10, steps)
            best = min(_timed(lambda: calls(x, weights, tile, count, steps)) for _ in range(5))
            print(f"{name} {rows} x {columns}, {steps} k steps per call: "
                  f"{2 * rows * columns * steps * count / best / 1e9:.1f} GFLOP/s on one core")  # fmt: skip


def _timed(work):
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _cold_copies(base, nbytes):
    """Copies of the PackedLinear ``base`` filling ``nbytes``: read in turn, each comes from DRAM as a
    forward pass's weights do."""
    from refimpl.engines.fast.kernels import matmul

    arrays = base.arrays
    return [matmul.PackedLinear(base.mode, base.n, base.k, {k: v.copy() for k, v in arrays.items()})
            for _ in range(max(1, int(nbytes // base.nbytes())))]  # fmt: skip


def _alternating(cases, rounds, warmup=0):
    """Seconds of each of ``cases`` ({name: function}) per round, the order reversed every round (whatever
    ran second in a round came out 2-5% faster against an identical checkout), the first ``warmup``
    rounds dropped -> {name: [seconds]}."""
    times = {name: [] for name in cases}
    for round_ in range(rounds):
        for name in list(cases)[:: 1 if round_ % 2 else -1]:
            start = time.perf_counter()
            cases[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def one_core_or_two():
    """Two klue-shaped int8 products (3072x768 and 768x3072), cold (copies of the weight filling 400 MB,
    read in turn), at 1 and 17 rows, on one core and on both, beside a plain read of the same arrays
    with as many threads, on the two best tiers the CPU has (``--tier`` picks one), alternating in
    one process. It shows where a batch-1 product loses its time: on one core against a one-thread
    read, on two against a two-thread one. Run it again with ``GOMP_SPINCOUNT=300000`` (workers that do
    not fall asleep between the products) to see what the wake-ups cost."""
    from refimpl.engines.fast.kernels import cpu, matmul, policy

    read = _stream_reader()
    rng = np.random.default_rng(0)

    def runs_on(tier):  # the module whose int8 kernel a tier runs: avx2's on an AVX-512 CPU without VNNI
        return cpu.select("int8", tier).module.rsplit(".", 1)[1]

    if _ARGS.tier:
        tiers = [runs_on(_ARGS.tier)]
    else:  # the two best kernels the CPU has, each once
        tiers = list(dict.fromkeys(runs_on(t) for t in ("amx", "avx512", "avx2") if not cpu.missing_features(t)))[:2]
    for shape in ((3072, 768), (768, 3072)):
        base = matmul.pack(rng.standard_normal(shape).astype(np.float32) * 0.05, "int8")
        copies = _cold_copies(base, 400e6)
        arrays = [p.arrays["w"].reshape(-1).view(np.uint64) for p in copies]
        bias = np.zeros(shape[0], np.float32)
        for rows in (1, 17):
            x = rng.standard_normal((rows, shape[1])).astype(np.float32)
            out = np.empty((rows, shape[0]), np.float32)
            for threads in (1, 2):
                times = {}
                for repeat in range(4):
                    for name in (*tiers, "read"):
                        with policy.forward_pass():
                            start = time.perf_counter()
                            if name == "read":
                                for i, a in enumerate(arrays):
                                    read(a, arrays[(i + 1) % len(arrays)], 0, threads)
                            else:
                                for p in copies:
                                    matmul.linear(x, p, bias, out=out, tier=name, parallel=threads == 2)
                            seconds = (time.perf_counter() - start) / len(copies)
                        if repeat:  # the first round warms up
                            times.setdefault(name, []).append(seconds)
                print(f"int8 {shape[0]}x{shape[1]}, {rows} rows, {threads} thread(s): "
                      + ", ".join(f"{name} {min(v) * 1e6:.0f} us ({base.arrays['w'].nbytes / min(v) / 1e9:.1f} GB/s)"
                                  for name, v in times.items()), flush=True)  # fmt: skip


def vnni_rows():
    """Whether the amx tier should hand int8 products of a few rows to the VNNI kernel (the same
    integers, so the same bits): cold int8 products (copies of each weight filling 300 MB, read in
    turn) at 2-17 rows on the tiles and on the VNNI kernel, alternating in one process, six rounds (the
    first warms up, the order turns each round). Prints the VNNI kernel's median time over the tiles'
    by rows. AMX CPUs only."""
    from refimpl.engines.fast.kernels import amx, avx512, cpu, matmul, policy

    cpu.check_tier("amx")
    rng = np.random.default_rng(0)
    products = {"tiles": amx.linear_int8, "vnni": avx512.linear_int8}
    for shape in ((2304, 768), (3072, 768), (768, 3072)):
        base = matmul.pack(rng.standard_normal(shape).astype(np.float32) * 0.05, "int8")
        copies = _cold_copies(base, 300e6)
        bias = np.zeros(shape[0], np.float32)
        ratios = []
        for rows in (2, 4, 6, 8, 10, 12, 16, 17):
            x = rng.standard_normal((rows, shape[1])).astype(np.float32)
            out = np.empty((rows, shape[0]), np.float32)

            def run(product):
                with policy.forward_pass():
                    for p in copies:
                        product(x, p.arrays, bias, False, out)

            cases = {name: (lambda product=product: run(product)) for name, product in products.items()}
            times = _alternating(cases, 6, warmup=1)
            ratios.append(f"{rows}: {statistics.median(times['vnni']) / statistics.median(times['tiles']):.2f}")
        print(f"int8 {shape[0]}x{shape[1]}, VNNI's time over the tiles' by rows: " + ", ".join(ratios), flush=True)


def _old_kernels(*names):
    """The named modules of kernels/ from the --old checkout, loaded as copies under other names (old_NAME),
    each importing the others' old copies (numba cannot reload its cache of such a module: a fresh place
    each run); the last one is returned."""
    import importlib.util
    import sys
    import tempfile
    from pathlib import Path

    old_root = Path(_ARGS.old) / "refimpl" / "engines" / "fast" / "kernels"
    copies = Path(tempfile.mkdtemp())
    module = None
    for name in names:
        text = (old_root / (name + ".py")).read_text()
        for other in names:
            text = text.replace(f"from refimpl.engines.fast.kernels import {other} as", f"import old_{other} as")
        (copies / f"old_{name}.py").write_text(text)
        spec = importlib.util.spec_from_file_location("old_" + name, copies / f"old_{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["old_" + name] = module
        spec.loader.exec_module(module)
    return module


def products_against():
    """The 48 products of 12 klue-shaped layers of distinct random weights (query, key and value stacked;
    as a pass reads them: more than the caches), at 1, 17 and 494 rows, in every mode, on one tier
    (``--tier``, default avx2; amx: int8 and bf16), every product on both cores (the engine runs the smallest on one):
    this checkout's tier module and another checkout's (``--old``, with its common.py) in turn in one
    process, ten rounds, each in the other order than the one before (run second, an identical checkout measured
    2-5% faster), medians; the outputs must be the same bits."""
    from refimpl.engines.fast.kernels import amx, avx2, avx512, cpu, matmul, threads

    tier = _ARGS.tier or "avx2"
    cpu.check_tier(tier)
    threads.ensure_configured()
    modules = {"old": _old_kernels("common", tier), "new": {"avx2": avx2, "avx512": avx512, "amx": amx}[tier]}
    rng = np.random.default_rng(0)
    shapes = [(2304, 768, False), (768, 768, False), (3072, 768, True), (768, 3072, False)]
    for mode in ("f32", "int8", "bf16"):
        runs_on = cpu.select(mode, tier).module.rsplit(".", 1)[1]
        if runs_on != tier:  # float32 on amx, int8 without VNNI, bf16 without BF16: another tier's module
            print(f"{tier} {mode}: skipped, this CPU runs it on {runs_on}'s kernel")
            continue
        layers = [(matmul.pack(rng.standard_normal((n, k), np.float32) * 0.05, mode), np.zeros(n, np.float32), gelu)
                  for _ in range(12) for n, k, gelu in shapes]  # fmt: skip
        for rows in (1, 17, 494):
            xs = {k: rng.standard_normal((rows, k)).astype(np.float32) for k in (768, 3072)}

            def pass_of(module):
                glue = module._glue
                outs = [np.empty((rows, p.n), np.float32) for p, _, _ in layers]
                inputs = []
                for p, _, _ in layers:  # prepared once, outside the timing: the products alone
                    if mode == "int8":
                        inputs.append(glue.prepare_int8(xs[p.k], p.arrays["w"].shape[1] * 4)[1])
                    elif mode == "bf16":
                        inputs.append(glue.prepare_bf16(xs[p.k], p.arrays["w"].shape[1] * 2)[1])
                    else:
                        inputs.append(None)
                linear = getattr(glue, "linear_" + mode)

                def run():
                    for (p, bias, gelu), out, prepared in zip(layers, outs, inputs):
                        linear(xs[p.k], p.arrays, bias, gelu, out, True, prepared)

                return run, outs

            runs = {label: pass_of(module) for label, module in modules.items()}
            for run, _ in runs.values():
                run()
            times = _alternating({label: run for label, (run, _) in runs.items()}, 10)
            same = all(np.array_equal(a, b) for a, b in zip(runs["old"][1], runs["new"][1]))
            assert same, f"{mode}, {rows} rows: old and new products differ"
            flops = sum(2 * rows * p.n * p.k for p, _, _ in layers)
            median = {label: statistics.median(v) for label, v in times.items()}
            print(f"{tier} {mode}, {rows} rows: "
                  + ", ".join(f"{k} {m * 1e3:.2f} ms ({flops / m / 1e9:.0f} G/s)" for k, m in median.items())
                  + f"; new / old {median['new'] / median['old']:.2f}", flush=True)  # fmt: skip


def kernels_against():
    """Attention (32 and 128 sequences of 8-23 tokens, 12 heads of 64) and the LayerNorm after a bf16
    product (494 rows), this checkout's module and another checkout's (``--old``) in turn in one
    process; the outputs must be the same bits."""
    from refimpl.engines.fast.kernels import attention, matmul, norms

    rng = np.random.default_rng(0)
    old = {"attention": _old_kernels("attention"), "norms": _old_kernels("norms")}
    for sequences in (32, 128):
        lengths = rng.integers(8, 24, sequences)
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        qkv = rng.standard_normal((int(cu[-1]), 2304)).astype(np.float32)
        for parallel in (False, True):
            outs = {}

            def run(module, out):
                module.attention_qkv(qkv, cu, 12, np.float32(0.125), out=out, parallel=parallel)

            times = {}
            for label, module in (("old", old["attention"]), ("new", attention)):
                outs[label] = np.empty((int(cu[-1]), 768), np.float32)
                run(module, outs[label])
                times[label] = []
            for _ in range(60):
                for label, module in (("old", old["attention"]), ("new", attention)):
                    start = time.perf_counter()
                    run(module, outs[label])
                    times[label].append(time.perf_counter() - start)
            assert np.array_equal(outs["old"], outs["new"]), "attention: old and new differ"
            print(f"attention, {sequences} sequences, {'parallel' if parallel else 'serial'}: "
                  + ", ".join(f"{k} min {min(v) * 1e6:.0f} median {statistics.median(v) * 1e6:.0f} us"
                              for k, v in times.items()))  # fmt: skip
    packed = matmul.pack(rng.standard_normal((768, 3072)).astype(np.float32) * 0.02, "bf16")
    h, y = rng.standard_normal((494, 3072)).astype(np.float32), np.empty((494, 768), np.float32)
    bias, residual = rng.standard_normal(768).astype(np.float32), rng.standard_normal((494, 768)).astype(np.float32)
    ones, zeros, eps, inv = np.ones(768, np.float32), np.zeros(768, np.float32), np.float32(1e-5), np.float32(1 / 768)
    scratch, times, outs = np.empty(matmul.activation_bytes(packed, 494), np.uint8), {"old": [], "new": []}, {}
    for round_ in range(80):
        for label, module in (("old", old["norms"]), ("new", norms)):
            out = residual.copy()
            matmul.linear(h, packed, None, out=y, scratch=scratch)  # y fresh from a product, as in a pass
            start = time.perf_counter()
            module.bias_residual_layer_norm(y, bias, out, ones, zeros, eps, inv, out)
            if round_ >= 5:
                times[label].append(time.perf_counter() - start)
            outs[label] = out
    assert np.array_equal(outs["old"], outs["new"]), "LayerNorm: old and new differ"
    print("LayerNorm after a product, 494 rows: "
          + ", ".join(f"{k} min {min(v) * 1e6:.0f} median {statistics.median(v) * 1e6:.0f} us"
                      for k, v in times.items()))  # fmt: skip


_ARGS = None


def main():
    commands = {
        "wake": wake,
        "between": between,
        "keep-awake": keep_awake,
        "adaptation": adaptation,
        "shared-items": shared_items,
        "overlap": overlap,
        "stream": stream,
        "qkv": qkv,
        "attention-call": attention_call,
        "attention-parallel": attention_parallel,
        "orientation": orientation,
        "split": split,
        "error-model": error_model,
        "numba-gemm": numba_gemm,
        "mapped": mapped,
        "pass-size": pass_size,
        "numba-rss": numba_rss,
        "rounded-ffn": rounded_ffn,
        "bf16-rounding": bf16_rounding,
        "kernels-against": kernels_against,
        "products-against": products_against,
        "tile-alone": tile_alone,
        "one-core-or-two": one_core_or_two,
        "vnni-rows": vnni_rows,
    }
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(commands))
    parser.add_argument(
        "--old", help="kernels-against, products-against: another checkout (git worktree add /tmp/old REV)"
    )
    parser.add_argument(
        "--tier", choices=("avx2", "avx512", "amx"), help="products-against (default avx2), one-core-or-two: the tier"
    )
    global _ARGS
    _ARGS = parser.parse_args()
    if _ARGS.experiment in ("kernels-against", "products-against") and not _ARGS.old:
        parser.error(f"{_ARGS.experiment} needs --old CHECKOUT")
    commands[_ARGS.experiment]()


if __name__ == "__main__":
    main()
