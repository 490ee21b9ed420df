"""Machine peak micro-benchmarks (used by bench.py).

Each ``*_loop(iters)`` intrinsic runs ``iters`` iterations of NACC independent
register accumulators through one instruction (no memory traffic) and returns
a value depending on all of them (so nothing is optimised away):

* fma512 : vfmadd231ps zmm   -> 32 flop / instr
* fma256 : vfmadd231ps ymm   -> 16 flop / instr
* vnni512: vpdpbusd zmm      -> 128 int8 ops (64 MAC) / instr
* bf16512: vdpbf16ps zmm     -> 64 flop (32 MAC) / instr
* avx2i8 : vpsignb+vpmaddubsw+vpmaddwd+vpaddd (the AVX2 int8 sequence; the
           |a| of the constant a is hoisted, as in the kernel per row) on ymm
           -> 64 int8 ops (32 MAC) per sequence
"""

import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from refimpl.engines.fast.kernels import intrinsics as X

NACC = 24


def _make(kind):
    if kind == "fma512":
        vt, W = X.vec(X.F32, 16), 16
    elif kind == "fma256":
        vt, W = X.vec(X.F32, 8), 8
    elif kind in ("vnni512",):
        vt, W = X.vec(X.I32, 16), 16
    elif kind == "bf16512":
        vt, W = X.vec(X.F32, 16), 16
    elif kind == "avx2i8":
        vt, W = X.vec(X.I32, 8), 8
    nacc = NACC if W == 16 else 12

    @intrinsic
    def loop(typingctx, iters):
        sig = types.float64(types.intp)

        def codegen(context, builder, sig, args):
            n = args[0]
            if vt.element == X.F32:
                a = ir.Constant(vt, [1.0000001] * W)
                b = ir.Constant(vt, [1e-7] * W)
            else:
                a = ir.Constant(vt, [0x01010101] * W)
                b = ir.Constant(vt, [0x01010101] * W)
            # make the constants opaque so LLVM cannot fold the loop
            a = builder.asm(ir.FunctionType(vt, [vt]), "", "=v,0", [a], side_effect=False)
            b = builder.asm(ir.FunctionType(vt, [vt]), "", "=v,0", [b], side_effect=False)
            init = [ir.Constant(vt, None)] * nacc
            if kind == "avx2i8":
                init = init + [b]  # b changes every iteration (not loop invariant)

            def body(bld, i, accs):
                out = []
                if kind == "avx2i8":
                    bcur = accs[-1]
                    accs = accs[:-1]
                    b8 = bld.bitcast(bcur, X.vec(X.I8, 32))
                    ones = ir.Constant(X.vec(X.I16, 16), [1] * 16)
                for j, acc in enumerate(accs):
                    if kind in ("fma512", "fma256"):
                        out.append(X.fma(bld, a, acc, b))  # chain through acc
                    elif kind == "vnni512":
                        out.append(X.vpdpbusd512(bld, acc, a, b))
                    elif kind == "bf16512":
                        out.append(
                            X.dpbf16ps512(bld, acc, bld.bitcast(a, X.vec(X.I32, 16)), bld.bitcast(b, X.vec(X.I32, 16)))
                        )
                    else:
                        a8 = bld.bitcast(bld.add(a, ir.Constant(vt, [j] * W)), X.vec(X.I8, 32))
                        s = X.psign_b(bld, b8, a8)
                        p16 = X.pmaddubsw(bld, X.abs_b(bld, a8), s)
                        p32 = X.pmaddwd(bld, p16, ones)
                        out.append(bld.add(acc, p32))
                if kind == "avx2i8":
                    out.append(
                        bld.asm(ir.FunctionType(vt, [vt]), "", "=v,0", [bcur], side_effect=True)
                    )  # opaque: "changes" every iteration
                return out

            res = X.counted_loop(builder, n, init, body, name="peak")
            res = res[:nacc]
            tot = res[0]
            for r in res[1:]:
                tot = builder.add(tot, r) if vt.element != X.F32 else builder.fadd(tot, r)
            e = builder.extract_element(tot, ir.Constant(X.I32, 0))
            if vt.element == X.F32:
                return builder.fpext(e, X.F64)
            return builder.sitofp(e, X.F64)

        return sig, codegen

    return loop, nacc


_fma512, _N512 = _make("fma512")
_fma256, _N256 = _make("fma256")
_vnni512, _ = _make("vnni512")
_bf16512, _ = _make("bf16512")
_avx2i8, _ = _make("avx2i8")


@njit(parallel=True, cache=True)
def _run_fma512(iters, nthreads, out):
    for t in prange(nthreads):
        out[t] = _fma512(iters)


@njit(parallel=True, cache=True)
def _run_fma256(iters, nthreads, out):
    for t in prange(nthreads):
        out[t] = _fma256(iters)


@njit(parallel=True, cache=True)
def _run_vnni512(iters, nthreads, out):
    for t in prange(nthreads):
        out[t] = _vnni512(iters)


@njit(parallel=True, cache=True)
def _run_bf16512(iters, nthreads, out):
    for t in prange(nthreads):
        out[t] = _bf16512(iters)


@njit(parallel=True, cache=True)
def _run_avx2i8(iters, nthreads, out):
    for t in prange(nthreads):
        out[t] = _avx2i8(iters)


# kind: (runner, instructions per iteration, ops per instruction)
PEAKS = {
    "fma512": (_run_fma512, _N512, 32),
    "fma256": (_run_fma256, _N256, 16),
    "vnni512": (_run_vnni512, _N512, 128),
    "bf16512": (_run_bf16512, _N512, 64),
    "avx2i8": (_run_avx2i8, _N256, 64),
}


def measure(kind, nthreads=2, seconds=0.3, repeats=3):
    """Peak Gop/s (flop or int8 op) with ``nthreads`` threads (best of repeats)."""
    run, per_it, ops = PEAKS[kind]
    out = np.zeros(nthreads)
    run(1000, nthreads, out)
    iters = 100000
    while True:
        t0 = time.perf_counter()
        run(iters, nthreads, out)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        iters *= 4
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(iters, nthreads, out)
        dt = time.perf_counter() - t0
        best = max(best, iters * per_it * ops * nthreads / dt / 1e9)
    return best


@intrinsic
def _stream_xor(typingctx, arr, lo, nblk):
    """xor-reduce arr[lo : lo + 64*nblk] (uint64) with 8 x 512-bit loads per
    iteration (what the kernels' weight streams look like)."""
    sig = types.uint64(arr, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        vt = X.vec(X.I64, 8)
        base = X.ptr_add(builder, X.data_ptr(context, builder, sig.args[0], args[0]), args[1])

        def body(b, i, accs):
            p = X.ptr_add(b, base, b.mul(i, ir.Constant(X.I64, 64)))
            return [b.xor(acc, X.load(b, X.ptr_add(b, p, 8 * j), vt, align=1)) for j, acc in enumerate(accs)]

        res = X.counted_loop(builder, args[2], [ir.Constant(vt, None)] * 8, body, name="rd")
        tot = res[0]
        for r in res[1:]:
            tot = builder.xor(tot, r)
        out = builder.extract_element(tot, ir.Constant(X.I32, 0))
        for j in range(1, 8):
            out = builder.xor(out, builder.extract_element(tot, ir.Constant(X.I32, j)))
        return out

    return sig, codegen


@njit(cache=True)
def _xor_range(a, lo, hi):
    return _stream_xor(a, lo, (hi - lo) // 64)


@njit(parallel=True, cache=True)
def _read_sum(a, nthreads):
    n = a.size
    s = np.zeros(nthreads, np.uint64)
    per = (n + nthreads - 1) // nthreads
    for t in prange(nthreads):
        lo = t * per
        s[t] = _xor_range(a, lo, min(n, lo + per))
    return s[0]


def dram_read_gbs(nbytes=512 << 20, nthreads=2, repeats=3):
    """Streaming read bandwidth (GB/s) over a buffer much larger than L3."""
    a = np.ones(nbytes // 8, np.uint64)
    _read_sum(a[:1000], nthreads)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        _read_sum(a, nthreads)
        best = max(best, nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def machine_peaks(nthreads=2) -> dict:
    """The measured peaks tools/bench.py reports: fp32 FMA, int8 and bf16 dot products, DRAM read."""
    from refimpl.engines.fast.kernels import cpu

    features = cpu.host_features()
    peaks = {"features": " ".join(f for f in ("avx2", "fma", "avx512f", "avx512vnni", "avx512bf16") if f in features)}
    wide = not cpu.missing_features("avx512")
    peaks["fp32_gflops"] = measure("fma512" if wide else "fma256", nthreads)
    if wide and "avx512vnni" in features:
        peaks["int8_gops"], peaks["int8_instruction"] = measure("vnni512", nthreads), "vpdpbusd"
    else:
        peaks["int8_gops"], peaks["int8_instruction"] = measure("avx2i8", nthreads), "vpmaddubsw"
    if wide and "avx512bf16" in features:
        peaks["bf16_gflops"], peaks["bf16_instruction"] = measure("bf16512", nthreads), "vdpbf16ps"
    else:
        peaks["bf16_gflops"], peaks["bf16_instruction"] = peaks["fp32_gflops"], "fma (bf16 widened)"
    peaks["dram_gbs"] = dram_read_gbs(nthreads=nthreads)
    return peaks


if __name__ == "__main__":
    print(machine_peaks())
