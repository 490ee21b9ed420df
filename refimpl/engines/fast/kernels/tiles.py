"""Explicit SIMD code for numba: register-blocked product tiles and fixed-order row reductions.

numba runs LLVM's loop vectoriser but not its SLP vectoriser (NUMBA_SLP_VECTORIZE=0 by default),
so a register-blocked tile written as scalar accumulators stays scalar. These ``@intrinsic``s emit
the LLVM IR directly, with vector types, and are called from ordinary njit code.

tile(R, C)(A, (a_0..a_{R-1}), B, b, ldb, T, D, (d_0..d_{R-1}), alpha):
    for r < R, c < C:   D[d_r + c] = alpha * sum_{t < T} A[a_r + t] * B[b + t ldb + c]
(flat indices into C-contiguous arrays, no bounds checks: the caller guarantees them). The R*C sums
live in R*C/W vector registers (W = 8 float32 lanes, ymm: 16 registers on AVX2 suffice for
R*C/W <= 8 accumulators plus R broadcasts); each lane is a sequential chain of fma over
t = 0, 1, ..., T-1. The chain of an output element does not depend on the tile shape, on W or on
which rows share a tile: attention built on it is bit-identical across thread counts, batch
composition and hosts with FMA (AVX2 or AVX-512).

sum16(x, off, n) / max16(x, off, n) / sumsq16(x, off, n): the sum / max / sum of squares of
x[off:off+n] in a fixed order: 4 x 16 lane accumulators over chunks of 64, the chunks of 16 left
into the first, (a0 + a1) + (a2 + a3), a fixed pairwise tree over the 16 lanes, then the n mod 16
tail in order. Same result on any host (the order is fixed in the IR, not left to LLVM).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def _data_ptr(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def _fma_fn(module, vty):
    suffix = f"v{vty.count}f32" if isinstance(vty.element, ir.FloatType) else f"v{vty.count}f64"
    return cgutils.get_or_insert_function(module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.{suffix}")


def _splat(builder, value, vty):
    undef = ir.Constant(vty, ir.Undefined)
    v = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, undef, mask)


def _vload(builder, ptr, index, vty):
    p = builder.gep(ptr, [index], inbounds=True)
    p = builder.bitcast(p, vty.as_pointer())
    return builder.load(p, align=vty.element.intrinsic_name == "f64" and 8 or 4)


def _vstore(builder, value, ptr, index, vty):
    p = builder.gep(ptr, [index], inbounds=True)
    p = builder.bitcast(p, vty.as_pointer())
    builder.store(value, p, align=4)


def _lanes(dtype, C, bits):
    """Vector width (elements) for a tile C wide: one ``bits``-bit register, at most C."""
    w = bits // (32 if dtype == types.float32 else 64)
    return min(w, C)


_TILES = {}


def _tile_types_ok(R, A, a_offs, B, D, d_offs):
    """Whether the argument types are ones the R-row tile handles (C-contiguous float arrays, R offsets)."""
    if not (isinstance(A, types.Array) and A.layout == "C" and A.dtype in (types.float32, types.float64)):
        return False
    if not (B.dtype == A.dtype and D.dtype == A.dtype and B.layout == "C" and D.layout == "C"):
        return False
    return (
        isinstance(a_offs, types.UniTuple)
        and a_offs.count == R
        and isinstance(d_offs, types.UniTuple)
        and d_offs.count == R
    )


def _tile_operands(context, builder, signature, args, R):
    """Emit the tile's data pointers and its offsets / counts / alpha cast to int64 / the element type."""
    A_, a_offs_, B_, b_, ldb_, T_, D_, d_offs_, alpha_ = args
    sa = signature.args
    pa = _data_ptr(context, builder, sa[0], A_)
    pb = _data_ptr(context, builder, sa[2], B_)
    pd = _data_ptr(context, builder, sa[6], D_)
    a = [context.cast(builder, builder.extract_value(a_offs_, r), sa[1].dtype, types.int64) for r in range(R)]
    d = [context.cast(builder, builder.extract_value(d_offs_, r), sa[7].dtype, types.int64) for r in range(R)]
    b0 = context.cast(builder, b_, sa[3], types.int64)
    ld = context.cast(builder, ldb_, sa[4], types.int64)
    n = context.cast(builder, T_, sa[5], types.int64)
    alpha = context.cast(builder, alpha_, sa[8], sa[0].dtype)
    return pa, pb, pd, a, d, b0, ld, n, alpha


def _tile_header(builder, b0, n, R, nv, vty):
    """Emit the t-loop header: phis for t, the B offset p and the R x nv accumulators (zero on entry)."""
    i64 = ir.IntType(64)
    zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * vty.count)
    entry = builder.basic_block
    header = builder.append_basic_block("tile.header")
    body = builder.append_basic_block("tile.body")
    done = builder.append_basic_block("tile.done")
    builder.branch(header)

    builder.position_at_end(header)
    t = builder.phi(i64, "t")
    p = builder.phi(i64, "p")
    acc = [[builder.phi(vty, f"acc{r}_{v}") for v in range(nv)] for r in range(R)]
    t.add_incoming(ir.Constant(i64, 0), entry)
    p.add_incoming(b0, entry)
    for row in acc:
        for phi in row:
            phi.add_incoming(zero, entry)
    builder.cbranch(builder.icmp_signed("<", t, n), body, done)
    return t, p, acc, header, body, done


def _tile_body(builder, pa, pb, a, ld, fma, loop, vty):
    """Emit one t step: broadcast A[a_r + t], load the B row at p, one fma per accumulator, back edge."""
    t, p, acc, header, body, _ = loop
    i64 = ir.IntType(64)
    W = vty.count
    R, nv = len(acc), len(acc[0])
    builder.position_at_end(body)
    xs = []
    for r in range(R):
        x = builder.load(builder.gep(pa, [builder.add(a[r], t)], inbounds=True))
        xs.append(_splat(builder, x, vty))
    ys = [_vload(builder, pb, builder.add(p, ir.Constant(i64, v * W)), vty) for v in range(nv)]
    new = [[builder.call(fma, [xs[r], ys[v], acc[r][v]]) for v in range(nv)] for r in range(R)]
    t_next = builder.add(t, ir.Constant(i64, 1))
    p_next = builder.add(p, ld)
    body_end = builder.basic_block
    t.add_incoming(t_next, body_end)
    p.add_incoming(p_next, body_end)
    for r in range(R):
        for v in range(nv):
            acc[r][v].add_incoming(new[r][v], body_end)
    builder.branch(header)


def _tile_store(builder, pd, d, alpha, acc, vty):
    """Emit the epilogue: D[d_r + c] = alpha * accumulator, one vector store per accumulator."""
    i64 = ir.IntType(64)
    W = vty.count
    av = _splat(builder, alpha, vty)
    for r in range(len(acc)):
        for v in range(len(acc[r])):
            _vstore(builder, builder.fmul(acc[r][v], av), pd, builder.add(d[r], ir.Constant(i64, v * W)), vty)


def _emit_tile(context, builder, signature, args, R, C, W):
    """Emit the whole R x C tile: operands, the t loop of fma chains, then the alpha-scaled stores."""
    fty = context.get_data_type(signature.args[0].dtype)
    vty = ir.VectorType(fty, W)
    nv = C // W
    pa, pb, pd, a, d, b0, ld, n, alpha = _tile_operands(context, builder, signature, args, R)
    fma = _fma_fn(builder.module, vty)
    loop = _tile_header(builder, b0, n, R, nv, vty)
    _tile_body(builder, pa, pb, a, ld, fma, loop, vty)
    builder.position_at_end(loop[-1])
    _tile_store(builder, pd, d, alpha, loop[2], vty)


def tile(R, C, bits=256):
    """The tile intrinsic with R rows and C columns (C a multiple of the lanes of one ``bits``-bit
    vector: 256 = ymm, AVX2; 512 = zmm, AVX-512 hosts only)."""
    key = (R, C, bits)
    if key in _TILES:
        return _TILES[key]

    @intrinsic
    def _tile(typingctx, A, a_offs, B, b, ldb, T, D, d_offs, alpha):
        if not _tile_types_ok(R, A, a_offs, B, D, d_offs):
            return None
        W = _lanes(A.dtype, C, bits)
        if C % W:
            return None
        sig = types.none(A, a_offs, B, b, ldb, T, D, d_offs, alpha)

        def codegen(context, builder, signature, args):
            _emit_tile(context, builder, signature, args, R, C, W)
            return context.get_dummy_value()

        return sig, codegen

    _TILES[key] = _tile
    return _tile


def _reduction_ops(kind, builder, fty):
    """The identity, the combine ``op`` (fadd or max) and the per-element ``accumulate`` for ``kind``."""
    if kind in ("sum", "sumsq"):
        init = ir.Constant(fty, 0.0)
    else:
        init = ir.Constant(fty, float("-inf"))

    def op(u, v):
        if kind in ("sum", "sumsq"):
            return builder.fadd(u, v)
        return builder.select(builder.fcmp_ordered(">", u, v), u, v)

    def accumulate(acc, v):  # acc (op) element
        if kind == "sumsq":
            fn = (
                _fma_fn(builder.module, acc.type)
                if isinstance(acc.type, ir.VectorType)
                else cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(fty, [fty] * 3),
                    "llvm.fma.f32" if isinstance(fty, ir.FloatType) else "llvm.fma.f64",
                )
            )
            return builder.call(fn, [v, v, acc])
        return op(acc, v)

    return init, op, accumulate


def _reduction_blocks(builder):
    """Append the reduction's basic blocks (in their fixed order) and return them with the entry block."""
    entry = builder.basic_block
    names = ("h1", "b1", "h16", "b16", "tree", "h2", "b2", "done")
    return (entry,) + tuple(builder.append_basic_block(f"red.{name}") for name in names)


def _reduce_by_64(builder, blocks, px, off, stop64, vty, init, accumulate):
    """Emit the main loop: chunks of 64 from ``off`` to ``stop64`` into 4 vector accumulators."""
    i64 = ir.IntType(64)
    entry, h1, b1, h16 = blocks[:4]
    builder.branch(h1)
    builder.position_at_end(h1)
    j = builder.phi(i64)
    accs = [builder.phi(vty) for _ in range(4)]
    j.add_incoming(off, entry)
    for a in accs:
        a.add_incoming(ir.Constant(vty, [init] * 16), entry)
    builder.cbranch(builder.icmp_signed("<", j, stop64), b1, h16)
    builder.position_at_end(b1)
    new = [accumulate(accs[u], _vload(builder, px, builder.add(j, ir.Constant(i64, 16 * u)), vty)) for u in range(4)]
    j.add_incoming(builder.add(j, ir.Constant(i64, 64)), b1)
    for a, v in zip(accs, new):
        a.add_incoming(v, b1)
    builder.branch(h1)
    return j, accs


def _reduce_by_16(builder, blocks, px, j, accs, stop, vty, accumulate):
    """Emit the loop over the remaining chunks of 16 (up to ``stop``), folded into accumulator 0."""
    i64 = ir.IntType(64)
    _, h1, _, h16, b16, tree = blocks[:6]
    builder.position_at_end(h16)
    j16 = builder.phi(i64)
    acc = builder.phi(vty)
    j16.add_incoming(j, h1)
    acc.add_incoming(accs[0], h1)
    builder.cbranch(builder.icmp_signed("<", j16, stop), b16, tree)
    builder.position_at_end(b16)
    acc2 = accumulate(acc, _vload(builder, px, j16, vty))
    j16.add_incoming(builder.add(j16, ir.Constant(i64, 16)), b16)
    acc.add_incoming(acc2, b16)
    builder.branch(h16)
    return acc


def _reduce_tree(builder, blocks, op, acc, accs):
    """Emit (acc0 op acc1) op (acc2 op acc3), then the fixed pairwise tree over the 16 lanes."""
    tree, h2 = blocks[5:7]
    builder.position_at_end(tree)
    total = op(op(acc, accs[1]), op(accs[2], accs[3]))
    lanes = [builder.extract_element(total, ir.Constant(ir.IntType(32), i)) for i in range(16)]
    while len(lanes) > 1:
        lanes = [op(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
    builder.branch(h2)
    return lanes[0]


def _reduce_tail(builder, blocks, px, stop, end, fty, lane, accumulate):
    """Emit the scalar tail loop over x[stop:end] in order, starting from the tree's result ``lane``."""
    i64 = ir.IntType(64)
    tree, h2, b2, done = blocks[5:9]
    builder.position_at_end(h2)
    k = builder.phi(i64)
    r = builder.phi(fty)
    k.add_incoming(stop, tree)
    r.add_incoming(lane, tree)
    builder.cbranch(builder.icmp_signed("<", k, end), b2, done)
    builder.position_at_end(b2)
    r2 = accumulate(r, builder.load(builder.gep(px, [k], inbounds=True)))
    k.add_incoming(builder.add(k, ir.Constant(i64, 1)), b2)
    r.add_incoming(r2, b2)
    builder.branch(h2)
    builder.position_at_end(done)
    return r


def _emit_reduction(kind, context, builder, signature, args):
    """Emit the fixed-order reduction of x[off:off+n] and return the scalar result."""
    x_, off_, n_ = args
    sa = signature.args
    i64 = ir.IntType(64)
    fty = context.get_data_type(sa[0].dtype)
    vty = ir.VectorType(fty, 16)
    px = _data_ptr(context, builder, sa[0], x_)
    off = context.cast(builder, off_, sa[1], types.int64)
    n = context.cast(builder, n_, sa[2], types.int64)
    init, op, accumulate = _reduction_ops(kind, builder, fty)

    # main loop: chunks of 64 into 4 vector accumulators (chunk lane k of 16 -> acc k), then
    # chunks of 16 into acc 0, then acc0 op acc1, acc2 op acc3, those two, a 16-lane tree,
    # and the n mod 16 tail in order: a fixed order, 4 independent chains per lane.
    m64 = builder.sub(n, builder.srem(n, ir.Constant(i64, 64)))
    m = builder.sub(n, builder.srem(n, ir.Constant(i64, 16)))
    stop64 = builder.add(off, m64)
    stop = builder.add(off, m)
    end = builder.add(off, n)
    blocks = _reduction_blocks(builder)
    j, accs = _reduce_by_64(builder, blocks, px, off, stop64, vty, init, accumulate)
    acc = _reduce_by_16(builder, blocks, px, j, accs, stop, vty, accumulate)
    lane = _reduce_tree(builder, blocks, op, acc, accs)
    return _reduce_tail(builder, blocks, px, stop, end, fty, lane, accumulate)


def _reduction(kind):
    """The ``@intrinsic`` reducing x[off:off+n] by ``kind`` ("sum", "max" or "sumsq") in a fixed order."""

    @intrinsic
    def _reduce(typingctx, x, off, n):
        if not (isinstance(x, types.Array) and x.layout == "C" and x.dtype in (types.float32, types.float64)):
            return None
        sig = x.dtype(x, off, n)

        def codegen(context, builder, signature, args):
            return _emit_reduction(kind, context, builder, signature, args)

        return sig, codegen

    return _reduce


sum16 = _reduction("sum")
max16 = _reduction("max")
sumsq16 = _reduction("sumsq")  # sum of x^2, each lane a chain of fma(x, x, acc)


def _emit_transpose8(context, builder, signature, args):
    """Emit D[d_off + c*ldd + r] = A[a_off + r*lda + c] for r, c < 8, rows r >= ``rows`` as zeros
    (their memory not read: masked loads): 8 loads, a 3-stage shuffle network, 8 stores."""
    A_, a_off_, lda_, rows_, D_, d_off_, ldd_ = args
    sa = signature.args
    i64, i32 = ir.IntType(64), ir.IntType(32)
    fty = context.get_data_type(sa[0].dtype)
    vty = ir.VectorType(fty, 8)
    pa = _data_ptr(context, builder, sa[0], A_)
    pd = _data_ptr(context, builder, sa[4], D_)
    a_off, lda, rows, d_off, ldd = (
        context.cast(builder, v, t, types.int64) for v, t in zip((a_off_, lda_, rows_, d_off_, ldd_), sa[1:4] + sa[5:7])
    )
    mty = ir.VectorType(ir.IntType(1), 8)
    fnty = ir.FunctionType(vty, [vty.as_pointer(), i32, mty, vty])
    name = "llvm.masked.load.v8%s.p0" % ("f32" if isinstance(fty, ir.FloatType) else "f64")
    masked_load = cgutils.get_or_insert_function(builder.module, fnty, name)
    align = ir.Constant(i32, 4 if isinstance(fty, ir.FloatType) else 8)
    v = []
    for r in range(8):
        valid = builder.icmp_signed(">", rows, ir.Constant(i64, r))
        mask = builder.insert_element(ir.Constant(mty, ir.Undefined), valid, ir.Constant(i32, 0))
        mask = builder.shuffle_vector(mask, ir.Constant(mty, ir.Undefined), ir.Constant(ir.VectorType(i32, 8), [0] * 8))
        p = builder.gep(pa, [builder.add(a_off, builder.mul(lda, ir.Constant(i64, r)))], inbounds=True)
        v.append(builder.call(masked_load, [builder.bitcast(p, vty.as_pointer()), align, mask, ir.Constant(vty, None)]))

    def shuffle(x, y, lanes):
        return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 8), lanes))

    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = [shuffle(v[r], v[r + 1], half) for r in range(0, 8, 2) for half in (lo, hi)]  # t0 t1 (v0 v1), t2 t3 ...
    lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = {}
    for base in (0, 4):  # rows 0-3, rows 4-7
        u[base + 0] = shuffle(t[base], t[base + 2], lo2)  # columns 0 and 4
        u[base + 1] = shuffle(t[base], t[base + 2], hi2)  # 1 and 5
        u[base + 2] = shuffle(t[base + 1], t[base + 3], lo2)  # 2 and 6
        u[base + 3] = shuffle(t[base + 1], t[base + 3], hi2)  # 3 and 7
    for c in range(4):
        for column, lanes in ((c, [0, 1, 2, 3, 8, 9, 10, 11]), (c + 4, [4, 5, 6, 7, 12, 13, 14, 15])):
            w = shuffle(u[c], u[4 + c], lanes)
            _vstore(builder, w, pd, builder.add(d_off, builder.mul(ldd, ir.Constant(i64, column))), vty)


@intrinsic
def transpose8(typingctx, A, a_off, lda, rows, D, d_off, ldd):
    """transpose8(A, a_off, lda, rows, D, d_off, ldd): the 8 x 8 block of A whose row r starts at flat
    index a_off + r * lda written transposed to D (its row c from d_off + c * ldd), rows r >= rows as
    zeros, not read. C-contiguous float32 or float64 arrays of one dtype, no bounds checks."""
    if not (isinstance(A, types.Array) and A.layout == "C" and A.dtype in (types.float32, types.float64)):
        return None
    if not (isinstance(D, types.Array) and D.layout == "C" and D.dtype == A.dtype):
        return None
    sig = types.none(A, a_off, lda, rows, D, d_off, ldd)

    def codegen(context, builder, signature, args):
        _emit_transpose8(context, builder, signature, args)
        return context.get_dummy_value()

    return sig, codegen
