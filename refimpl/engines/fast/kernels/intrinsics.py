"""LLVM-level building blocks for the matrix-product kernels.

Two layers:

1. *Emitters* (plain Python functions taking an ``llvmlite.ir.IRBuilder``):
   vector load/store (unaligned), masked load/store (``llvm.masked.*``),
   broadcast, ``llvm.fma.vNf32``, the x86 int8 ops (``llvm.x86.avx2.psign.b``,
   ``llvm.x86.avx2.pmadd.ub.sw``, ``llvm.x86.avx2.pmadd.wd``,
   ``llvm.x86.avx512.vpdpbusd.512``), bf16 ``llvm.x86.avx512bf16.dpbf16ps.512``
   (llvmlite has no bfloat type: ``BFloat16Type`` prints as ``bfloat`` and
   ``<16 x i32>`` values are bitcast to ``<32 x bfloat>``), MXCSR access, and a
   counted loop with phi-carried values.

2. *numba intrinsics* built from them:
   * ``make_microkernel(kind, mr_max, nr, prefetch_lines, locality)`` -> an ``@intrinsic``
     ``mk(A, a_off, lda, mr, B, b_off, ldb, ksteps, T, accum, pf, pf_stride)`` that computes one
     register tile: ``T[r*nr + j] = sum_k A[a_off + r*lda + k] * B[b_off + k*ldb + j]``
     for ``r < mr`` (``1 <= mr <= mr_max``, one fully unrolled variant per mr,
     selected by an IR ``switch``), accumulating in registers in k order and
     storing the tile once (float32 or int32), while it prefetches the lines the
     caller names (``pf``, ``pf_stride``: what the next block's passes will read).  The hot
     loop is only loads, prefetches, broadcasts and FMA / dot instructions (see
     tests/test_matmul_asm.py).
   * generic vector helpers on a numba ``Vec`` type: ``vload``, ``vstore``,
     ``vload_masked``, ``vstore_masked``, ``vbroadcast``, ``vfma``, ``vadd``,
     ``vget`` (used by tests, available to other engine code).

Nothing here is compiled at import time: numba compiles an intrinsic into the
calling function the first time that function is called, so AVX-512
intrinsics are never compiled on a machine that never calls an AVX-512 kernel.
"""

from collections.abc import Callable
from typing import NamedTuple

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F32, F64 = ir.FloatType(), ir.DoubleType()
VOID = ir.VoidType()


class BFloat16Type(ir.Type):
    """LLVM ``bfloat`` (llvmlite does not provide one)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, BFloat16Type)

    def __hash__(self):
        return hash("bfloat")

    @property
    def intrinsic_name(self):
        return "bf16"


BF16 = BFloat16Type()


def vec(t, n):
    return ir.VectorType(t, n)


def _vname(vt):
    """Intrinsic-name suffix of a vector type, e.g. v16f32."""
    e = vt.element
    if isinstance(e, ir.FloatType):
        s = "f32"
    elif isinstance(e, ir.DoubleType):
        s = "f64"
    elif isinstance(e, ir.IntType):
        s = "i%d" % e.width
    else:
        s = e.intrinsic_name
    return "v%d%s" % (vt.count, s)


# ---------------------------------------------------------------- emitters
def call_intrinsic(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


def data_ptr(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def ptr_add(builder, ptr, off):
    """``ptr + off`` elements (``off`` an ir value or Python int)."""
    if isinstance(off, int):
        if off == 0:
            return ptr
        off = ir.Constant(I64, off)
    return builder.gep(ptr, [off], inbounds=True)


def cast_ptr(builder, ptr, ty):
    return builder.bitcast(ptr, ty.as_pointer())


def load(builder, ptr, ty, align=1):
    """Unaligned load of type ``ty`` (scalar or vector) at ``ptr``."""
    return builder.load(cast_ptr(builder, ptr, ty), align=align)


def store(builder, val, ptr, align=1):
    builder.store(val, cast_ptr(builder, ptr, val.type), align=align)


def lane_mask(builder, count, n):
    """``<n x i1>`` with lanes ``i < count`` set (count: i64 ir value)."""
    idx = ir.Constant(vec(I64, n), list(range(n)))
    c = splat(builder, count, n)
    return builder.icmp_signed("<", idx, c)


def masked_load(builder, ptr, vt, mask, passthru=None, align=4):
    """``llvm.masked.load``: lanes with mask=0 are not touched in memory."""
    if passthru is None:
        passthru = ir.Constant(vt, None)
    name = "llvm.masked.load.%s.p0" % _vname(vt)
    return call_intrinsic(builder, name, vt, [cast_ptr(builder, ptr, vt), ir.Constant(I32, align), mask, passthru])


def masked_store(builder, val, ptr, mask, align=4):
    name = "llvm.masked.store.%s.p0" % _vname(val.type)
    call_intrinsic(builder, name, VOID, [val, cast_ptr(builder, ptr, val.type), ir.Constant(I32, align), mask])


def splat(builder, scalar, n):
    vt = vec(scalar.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(vec(I32, n), [0] * n))


def broadcast_load(builder, ptr, ty, n):
    """Load one scalar of type ``ty`` at ``ptr`` and splat it to n lanes."""
    return splat(builder, load(builder, ptr, ty), n)


def zeros(vt):
    return ir.Constant(vt, None)


def fma(builder, a, b, c):
    """``a*b + c`` with a single rounding (``llvm.fma``)."""
    return call_intrinsic(builder, "llvm.fma.%s" % _vname(a.type), a.type, [a, b, c])


def psign_b(builder, a, b):
    """AVX2 ``vpsignb``: a * sign(b) per byte (<32 x i8>)."""
    return call_intrinsic(builder, "llvm.x86.avx2.psign.b", vec(I8, 32), [a, b])


def abs_b(builder, a):
    """per-byte |a| (``vpabsb``) via the generic ``llvm.abs``."""
    return call_intrinsic(builder, "llvm.abs.%s" % _vname(a.type), a.type, [a, ir.Constant(I1, 0)])


def pmaddubsw(builder, u8, s8):
    """AVX2 ``vpmaddubsw``: u8 x s8 pairs -> saturated s16 (<16 x i16>)."""
    return call_intrinsic(builder, "llvm.x86.avx2.pmadd.ub.sw", vec(I16, 16), [u8, s8])


def pmaddwd(builder, a, b):
    """AVX2 ``vpmaddwd``: s16 x s16 pairs -> s32 (<8 x i32>)."""
    return call_intrinsic(builder, "llvm.x86.avx2.pmadd.wd", vec(I32, 8), [a, b])


def vpdpbusd512(builder, acc, u8, s8):
    """AVX512-VNNI ``vpdpbusd``: acc += sum of 4 (u8 x s8) per i32 lane.

    LLVM >= 21 types the byte operands as <64 x i8>; older LLVMs used
    <16 x i32>.  We bitcast to whatever the running LLVM expects.
    """
    bt = vec(I8, 64) if _llvm_major() >= 21 else vec(I32, 16)
    return call_intrinsic(
        builder, "llvm.x86.avx512.vpdpbusd.512", vec(I32, 16), [acc, builder.bitcast(u8, bt), builder.bitcast(s8, bt)]
    )


def vpdpbusd256(builder, acc, u8, s8):
    bt = vec(I8, 32) if _llvm_major() >= 21 else vec(I32, 8)
    return call_intrinsic(
        builder, "llvm.x86.avx512.vpdpbusd.256", vec(I32, 8), [acc, builder.bitcast(u8, bt), builder.bitcast(s8, bt)]
    )


def dpbf16ps512(builder, acc, a, b):
    """AVX512-BF16 ``vdpbf16ps``: per f32 lane j,
    acc = acc + a[2j+1]*b[2j+1] (rounded) + a[2j]*b[2j] (rounded), DAZ/FTZ.
    ``a``/``b`` are <16 x i32> holding bf16 pairs (low half = even k)."""
    bt = vec(BF16, 32)
    return call_intrinsic(
        builder, "llvm.x86.avx512bf16.dpbf16ps.512", vec(F32, 16), [acc, builder.bitcast(a, bt), builder.bitcast(b, bt)]
    )


def cvtneps2bf16_512(builder, v):
    """AVX512-BF16 ``vcvtneps2bf16``: <16 x float> -> <16 x i16> bf16 bits, round to nearest even,
    NaN -> quiet NaN, denormal inputs and outputs -> signed zero, whatever MXCSR says
    (common.f32_to_bf16_bits is the same rule in plain integers)."""
    out = call_intrinsic(builder, "llvm.x86.avx512bf16.cvtneps2bf16.512", vec(BF16, 16), [v])
    return builder.bitcast(out, vec(I16, 16))


def prefetch(builder, ptr, locality=3):
    """``llvm.prefetch`` (read) of the cache line holding ``ptr``."""
    call_intrinsic(
        builder,
        "llvm.prefetch.p0",
        VOID,
        [builder.bitcast(ptr, I8.as_pointer()), ir.Constant(I32, 0), ir.Constant(I32, locality), ir.Constant(I32, 1)],
    )


@intrinsic
def spin_pause(typingctx):
    """The ``pause`` instruction (GNU OpenMP's spin-wait step): threads.short_spincount times it."""

    def codegen(context, builder, sig, args):
        call_intrinsic(builder, "llvm.x86.sse2.pause", VOID, [])

    return types.void(), codegen


@njit(cache=True)
def pauses(n):
    """``n`` pause instructions in a row."""
    for _ in range(n):
        spin_pause()


def barrier(builder):
    """Compiler memory barrier (empty asm with a memory clobber)."""
    builder.asm(ir.FunctionType(VOID, []), "", "~{memory}", [], side_effect=True)


def get_mxcsr(builder):
    slot = cgutils.alloca_once(builder, I32)
    call_intrinsic(builder, "llvm.x86.sse.stmxcsr", VOID, [builder.bitcast(slot, I8.as_pointer())])
    return builder.load(slot)


def set_mxcsr(builder, val):
    """ldmxcsr, fenced by compiler barriers so no memory op crosses it."""
    slot = cgutils.alloca_once(builder, I32)
    builder.store(val, slot)
    barrier(builder)
    call_intrinsic(builder, "llvm.x86.sse.ldmxcsr", VOID, [builder.bitcast(slot, I8.as_pointer())])
    barrier(builder)


MXCSR_FTZ_DAZ = 0x8040
PREFETCH_FLAG = 64  # ``mr + L * PREFETCH_FLAG`` selects the variant prefetching L cache lines per k step


def counted_loop(builder, n, init, body, name="loop"):
    """Emit ``for i in range(n)`` carrying the values ``init`` in phi nodes.

    ``body(builder, i, vals) -> new_vals``.  Returns the values after the loop.
    """
    pre = builder.block
    fn = builder.function
    loop = fn.append_basic_block(name + ".body")
    done = fn.append_basic_block(name + ".done")
    zero = ir.Constant(n.type, 0)
    builder.cbranch(builder.icmp_signed(">", n, zero), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(n.type, name=name + ".i")
    i.add_incoming(zero, pre)
    phis = []
    for v in init:
        p = builder.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    new = body(builder, i, phis)
    inext = builder.add(i, ir.Constant(n.type, 1))
    latch = builder.block
    i.add_incoming(inext, latch)
    for p, v in zip(phis, new):
        p.add_incoming(v, latch)
    builder.cbranch(builder.icmp_signed("<", inext, n), loop, done)
    builder.position_at_end(done)
    out = []
    for v0, v in zip(init, new):
        p = builder.phi(v0.type)
        p.add_incoming(v0, pre)
        p.add_incoming(v, latch)
        out.append(p)
    return out


_LLVM_MAJOR = None


def _llvm_major():
    global _LLVM_MAJOR
    if _LLVM_MAJOR is None:
        import llvmlite.binding as llb

        _LLVM_MAJOR = llb.llvm_version_info[0]
    return _LLVM_MAJOR


# ------------------------------------------------------- microkernel steps
# A "kind" describes one register-tile algorithm: the vector width W
# (lanes of the accumulator), accumulator type and the per-k-step emitter.
#   step(builder, k, a_rows, b_k, accs) -> accs
# a_rows[r]: pointer to the first element of A row r of the tile,
# b_k: pointer to the k-th step of the packed panel (NR columns contiguous).


def _step_f32(W):
    def step(b, k, a_rows, b_k, accs, nvec):
        bv = [load(b, ptr_add(b, b_k, c * W), vec(F32, W)) for c in range(nvec)]
        out = []
        for r, ap in enumerate(a_rows):
            s = broadcast_load(b, ptr_add(b, ap, k), F32, W)
            out.append([fma(b, s, bv[c], accs[r][c]) for c in range(nvec)])
        return out

    return step


def _step_i8_avx2(b, k, a_rows, b_k, accs, nvec):
    # B: int8, step = NR columns x 4 k;  A: int8 rows, 4 bytes per step.
    bv = [load(b, ptr_add(b, b_k, 32 * c), vec(I8, 32)) for c in range(nvec)]
    ones = ir.Constant(vec(I16, 16), [1] * 16)
    k4 = b.shl(k, ir.Constant(I64, 2))
    out = []
    for r, ap in enumerate(a_rows):
        a32 = load(b, ptr_add(b, ap, k4), I32)
        av = b.bitcast(splat(b, a32, 8), vec(I8, 32))
        aa = abs_b(b, av)
        row = []
        for c in range(nvec):
            sb = psign_b(b, bv[c], av)  # w * sign(a)  (s8)
            p16 = pmaddubsw(b, aa, sb)  # |a| * (w*sign a) pairs -> s16
            p32 = pmaddwd(b, p16, ones)  # pairs -> s32
            row.append(b.add(accs[r][c], p32))
        out.append(row)
    return out


def _step_i8_vnni(b, k, a_rows, b_k, accs, nvec):
    # A: uint8 (q + 128), B: int8.  acc = sum (a+128)*w ; caller subtracts 128*colsum.
    bv = [load(b, ptr_add(b, b_k, 64 * c), vec(I32, 16)) for c in range(nvec)]
    k4 = b.shl(k, ir.Constant(I64, 2))
    out = []
    for r, ap in enumerate(a_rows):
        av = broadcast_load(b, ptr_add(b, ap, k4), I32, 16)
        out.append([vpdpbusd512(b, accs[r][c], av, bv[c]) for c in range(nvec)])
    return out


def _step_bf16_avx512(b, k, a_rows, b_k, accs, nvec):
    # A, B: uint16 bf16, pairs (even k in the low half of each 32-bit word).
    bv = [load(b, ptr_add(b, b_k, 32 * c), vec(I32, 16)) for c in range(nvec)]
    k2 = b.shl(k, ir.Constant(I64, 1))
    out = []
    for r, ap in enumerate(a_rows):
        av = broadcast_load(b, ptr_add(b, ap, k2), I32, 16)
        out.append([dpbf16ps512(b, accs[r][c], av, bv[c]) for c in range(nvec)])
    return out


def _step_bf16_emu(b, k, a_rows, b_k, accs, nvec):
    # A: float32 holding bf16-rounded values; B: uint16 bf16 pairs.
    # Same arithmetic as vdpbf16ps: acc = fma(a_odd, b_odd, acc); acc = fma(a_even, b_even, acc)
    # (with MXCSR FTZ+DAZ set by the microkernel prologue).
    hi = ir.Constant(vec(I32, 8), [0xFFFF0000 - (1 << 32)] * 8)
    sh = ir.Constant(vec(I32, 8), [16] * 8)
    # Two passes (all odd products, then all even ones) so that only one half
    # of the widened B is live at a time: 10 acc + 2 raw B + 2 widened B + 1 broadcast <= 16 ymm.
    raw = [load(b, ptr_add(b, b_k, 16 * c), vec(I32, 8)) for c in range(nvec)]
    k2 = b.shl(k, ir.Constant(I64, 1))
    k2p1 = b.add(k2, ir.Constant(I64, 1))
    bo = [b.bitcast(b.and_(x, hi), vec(F32, 8)) for x in raw]
    mid = []
    for r, ap in enumerate(a_rows):
        ao = broadcast_load(b, ptr_add(b, ap, k2p1), F32, 8)
        mid.append([fma(b, ao, bo[c], accs[r][c]) for c in range(nvec)])
    be = [b.bitcast(b.shl(x, sh), vec(F32, 8)) for x in raw]
    out = []
    for r, ap in enumerate(a_rows):
        ae = broadcast_load(b, ptr_add(b, ap, k2), F32, 8)
        out.append([fma(b, ae, be[c], mid[r][c]) for c in range(nvec)])
    return out


KINDS = {
    # kind: (lanes W, accumulator element, step emitter, needs FTZ/DAZ)
    "f32_avx2": (8, F32, _step_f32(8), False),
    "f32_avx512": (16, F32, _step_f32(16), False),
    "i8_avx2": (8, I32, _step_i8_avx2, False),
    "i8_vnni": (16, I32, _step_i8_vnni, False),
    "bf16_emu": (8, F32, _step_bf16_emu, True),
    "bf16_avx512": (16, F32, _step_bf16_avx512, False),
}


class _MkSpec(NamedTuple):
    """The compile-time parameters of one microkernel (kind, tile shape, prefetch distance)."""

    W: int
    nr: int
    nvec: int
    acc_t: ir.VectorType
    step: Callable
    ftz: bool
    mr_max: int
    prefetch_lines: int  # most cache lines a variant prefetches per k step (0: no prefetching variants)
    locality: int  # llvm.prefetch locality: 3 = into L1, 2 = into L2


def _mk_init_accs(spec, builder, t_ptr, acc_, m):
    """Emit the accumulators' start values: the tile T if ``accum`` != 0, else zeros."""
    cont = builder.icmp_signed("!=", acc_, ir.Constant(acc_.type, 0))
    nr, W, acc_t = spec.nr, spec.W, spec.acc_t
    return [
        builder.select(cont, load(builder, ptr_add(builder, t_ptr, r * nr + c * W), acc_t, align=4), zeros(acc_t))
        for r in range(m)
        for c in range(spec.nvec)
    ]


def _mk_k_step(spec, b, k, flat, a_rows, b_ptr, ldb_, prefetching):
    """Emit one k step of the tile: the prefetch of ``lines`` cache lines from pf_base + k * pf_stride
    (bytes), then the kind's step emitter."""
    nvec = spec.nvec
    accs = [flat[r * nvec : (r + 1) * nvec] for r in range(len(a_rows))]
    b_k = ptr_add(b, b_ptr, b.mul(k, ldb_))
    lines, pf_base, pf_stride = prefetching
    if lines:
        # a plain (not inbounds) gep: the prefetched lines may lie past B's end, which a prefetch may touch
        start = b.gep(pf_base, [b.mul(k, pf_stride)])
        for line in range(lines):
            prefetch(b, b.gep(start, [ir.Constant(I64, 64 * line)]), spec.locality)
    new = spec.step(b, k, a_rows, b_k, accs, nvec)
    return [x for row in new for x in row]


def _mk_emit_variant(spec, builder, ptrs, offs, m, prefetching):
    """Emit the fully unrolled variant for ``m`` rows: init, the k loop, the single store of the tile."""
    a_ptr, b_ptr, t_ptr = ptrs
    a_off_, lda_, ldb_, ks_, acc_ = offs
    a_rows = [ptr_add(builder, a_ptr, builder.add(a_off_, builder.mul(lda_, ir.Constant(I64, r)))) for r in range(m)]
    init = _mk_init_accs(spec, builder, t_ptr, acc_, m)

    def body(b, k, flat):
        return _mk_k_step(spec, b, k, flat, a_rows, b_ptr, ldb_, prefetching)

    res = counted_loop(builder, ks_, init, body, name="mk%dpf%d" % (m, prefetching[0]))
    for r in range(m):
        for c in range(spec.nvec):
            store(builder, res[r * spec.nvec + c], ptr_add(builder, t_ptr, r * spec.nr + c * spec.W), align=4)


def _mk_codegen(spec, context, builder, sig, args):
    """Emit the microkernel: pointers, FTZ/DAZ if the kind needs it, and a switch on mr over the variants."""
    A_, a_off_, lda_, mr_, B_, b_off_, ldb_, ks_, T_, acc_, pf_, pf_stride_ = args
    a_ptr = data_ptr(context, builder, sig.args[0], A_)
    b_data = data_ptr(context, builder, sig.args[4], B_)
    b_ptr = ptr_add(builder, b_data, b_off_)
    pf_base = builder.gep(builder.bitcast(b_data, I8.as_pointer()), [pf_])
    t_ptr = data_ptr(context, builder, sig.args[8], T_)
    if spec.ftz:
        old = get_mxcsr(builder)
        set_mxcsr(builder, builder.or_(old, ir.Constant(I32, MXCSR_FTZ_DAZ)))
    fn = builder.function
    done = fn.append_basic_block("mk.done")
    bad = fn.append_basic_block("mk.bad")  # an mr with no variant: stop rather than leave T as it was
    sw = builder.switch(mr_, bad)
    with builder.goto_block(bad):
        call_intrinsic(builder, "llvm.trap", VOID, [])
        builder.unreachable()
    for lines in range(spec.prefetch_lines + 1):
        for m in range(1, spec.mr_max + 1):
            bb = fn.append_basic_block("mk.mr%dpf%d" % (m, lines))
            sw.add_case(ir.Constant(mr_.type, m + lines * PREFETCH_FLAG), bb)
            builder.position_at_end(bb)
            prefetching = (lines, pf_base, pf_stride_)
            _mk_emit_variant(spec, builder, (a_ptr, b_ptr, t_ptr), (a_off_, lda_, ldb_, ks_, acc_), m, prefetching)
            builder.branch(done)
    builder.position_at_end(done)
    if spec.ftz:
        set_mxcsr(builder, old)
    return context.get_dummy_value()


def make_microkernel(kind, mr_max, nr, prefetch_lines=0, locality=3):
    """Build the register-tile intrinsic for ``kind`` with up to ``mr_max`` rows
    and ``nr`` columns (multiple of the vector width).

    numba signature: ``mk(A, a_off, lda, mr, B, b_off, ldb, ksteps, T, accum, pf, pf_stride)``
      A      : activations (1-D or C-contiguous), element offsets a_off/lda
      mr     : rows in this tile, 1..mr_max (one specialised variant each), plus
               L * PREFETCH_FLAG to prefetch L <= ``prefetch_lines`` cache lines per k step
      B      : packed panel array, b_off = first element of the NR-column
               sub-panel, ldb = elements between consecutive k steps
      ksteps : number of k steps (K for f32, K/4 groups int8, K/2 pairs bf16)
      T      : scratch tile, T[r*nr + j], float32 (or int32 for int8 kinds)
      accum  : 0 -> start from zero, 1 -> continue from the values in T
      pf     : byte offset into B's data of the first line prefetched (any value: prefetches
               never fault), pf_stride: bytes the prefetched lines advance per k step.
               k step k prefetches the L lines at pf + k * pf_stride + 64 * l, l < L, with
               ``locality`` (3: into L1, 2: into L2). The driver says what to stream in while the
               tile computes: the next block of B (common.prefetch_plan).
      An mr with no variant (rows outside 1..mr_max, or more prefetch lines than
      ``prefetch_lines``) stops the process (llvm.trap) instead of returning T unwritten.
               (K blocking: the k chain of every element stays one sequential
               chain because float32/int32 values round-trip exactly)
    """
    W, acc_el, step, ftz = KINDS[kind]
    assert nr % W == 0
    spec = _MkSpec(W, nr, nr // W, vec(acc_el, W), step, ftz, mr_max, prefetch_lines, locality)

    @intrinsic
    def mk(typingctx, A, a_off, lda, mr, B, b_off, ldb, ksteps, T, accum, pf, pf_stride):
        intp = types.intp
        sig = types.void(A, intp, intp, intp, B, intp, intp, intp, T, intp, intp, intp)

        def codegen(context, builder, sig, args):
            return _mk_codegen(spec, context, builder, sig, args)

        return sig, codegen

    mk.__name__ = "mk_%s_%dx%d_pf%d" % (kind, mr_max, nr, prefetch_lines)
    return mk


# -------------------------------------------------- generic numba vectors
class Vec(types.Type):
    """numba type of an LLVM vector <count x dtype> (register value)."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name="Vec(%s x %d)" % (dtype, count))


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be = vec(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.count)
        super().__init__(dmm, fe_type, be)


def _lit(t):
    return getattr(t, "literal_value", None)


@intrinsic(prefer_literal=True)
def vload(typingctx, arr, off, n):
    """``vload(arr, off, n)``: unaligned load of arr[off:off+n] (n literal)."""
    cnt = _lit(n)
    if not isinstance(arr, types.Array) or cnt is None:
        return None
    vt = Vec(arr.dtype, cnt)
    sig = vt(arr, types.intp, n)

    def codegen(context, builder, sig, args):
        p = ptr_add(builder, data_ptr(context, builder, sig.args[0], args[0]), args[1])
        return load(builder, p, context.get_value_type(vt))

    return sig, codegen


@intrinsic
def vstore(typingctx, arr, off, v):
    """``vstore(arr, off, v)``: unaligned store of v to arr[off:off+n]."""
    if not isinstance(v, Vec):
        return None
    sig = types.void(arr, types.intp, v)

    def codegen(context, builder, sig, args):
        p = ptr_add(builder, data_ptr(context, builder, sig.args[0], args[0]), args[1])
        store(builder, args[2], p)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def vload_masked(typingctx, arr, off, n, count):
    """Load lanes ``i < count`` of arr[off:off+n]; other lanes are 0 and their
    memory is never touched (``llvm.masked.load``)."""
    cnt = _lit(n)
    if not isinstance(arr, types.Array) or cnt is None:
        return None
    vt = Vec(arr.dtype, cnt)
    sig = vt(arr, types.intp, n, types.intp)

    def codegen(context, builder, sig, args):
        p = ptr_add(builder, data_ptr(context, builder, sig.args[0], args[0]), args[1])
        lt = context.get_value_type(vt)
        m = lane_mask(builder, args[3], cnt)
        return masked_load(builder, p, lt, m, align=arr.dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def vstore_masked(typingctx, arr, off, v, count):
    """Store lanes ``i < count`` of v to arr[off:...] (``llvm.masked.store``)."""
    if not isinstance(v, Vec):
        return None
    sig = types.void(arr, types.intp, v, types.intp)

    def codegen(context, builder, sig, args):
        p = ptr_add(builder, data_ptr(context, builder, sig.args[0], args[0]), args[1])
        m = lane_mask(builder, args[3], v.count)
        masked_store(builder, args[2], p, m, align=v.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def vbroadcast(typingctx, x, n):
    cnt = _lit(n)
    if cnt is None or not isinstance(x, (types.Float, types.Integer)):
        return None
    dt = x.literal_type if isinstance(x, types.Literal) else x
    vt = Vec(dt, cnt)
    sig = vt(dt, n)

    def codegen(context, builder, sig, args):
        return splat(builder, args[0], cnt)

    return sig, codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Fused ``a*b + c`` (llvm.fma) on float Vec values."""
    if not (isinstance(a, Vec) and a == b == c and isinstance(a.dtype, types.Float)):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, sig, args):
        return fma(builder, *args)

    return sig, codegen


@intrinsic
def vadd(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, sig, args):
        if isinstance(a.dtype, types.Float):
            return builder.fadd(*args)
        return builder.add(*args)

    return sig, codegen


@intrinsic
def vget(typingctx, v, i):
    """Extract lane i."""
    if not isinstance(v, Vec):
        return None
    sig = v.dtype(v, types.intp)

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])

    return sig, codegen


@intrinsic
def vbf16_bits(typingctx, v):
    """bf16 bits (Vec(uint16 x 16)) of a Vec(float32 x 16), by ``vcvtneps2bf16``: AVX512-BF16 hosts only."""
    if not (isinstance(v, Vec) and v.dtype == types.float32 and v.count == 16):
        return None
    sig = Vec(types.uint16, 16)(v)

    def codegen(context, builder, sig, args):
        return cvtneps2bf16_512(builder, args[0])

    return sig, codegen
