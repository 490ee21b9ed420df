"""AMX kernels (Intel Xeon since Sapphire Rapids: amx-tile with amx-int8 and amx-bf16, and Linux's
permission to use the tile state): int8 and bf16 products on the tile unit. float32 stays on
``avx512.py`` (``cpu.select``).

* int8: C[16 x 16] int32 += tdpbusd(A = u8 activations [rows x 64 bytes], B = s8 weights [16 groups of
  4 k x 16 columns x 4 bytes]), three C tiles side by side for a 48-column panel. It reads the same
  packed weights ([NP, K/4, 48, 4]: a B tile is 16 group rows of one 16-column sub-panel, 192 bytes
  apart) and the same prepared activations (u8 = q + 128) as the VNNI kernel, and its epilogue
  subtracts the same 128 * colsum: the int32 sums are the same integers, so the embeddings are
  bit-identical to the AVX2 and AVX-512 tiers'.
* bf16: C[16 x 16] float32 += tdpbf16ps(A = bf16 activations [rows x 32], B = bf16 weight pairs [16
  pairs x 16 columns x 2]): the same byte geometry as int8 (4 bytes per k step of a row of A, 192 per
  k step of a panel of B), on the same packed weights ([NP, K/2, 48, 2]) and prepared inputs (uint16
  bits) as vdpbf16ps. Not the same bits: the tile unit does not round as vdpbf16ps does.
  tests/test_matmul_kernels.py prints the share of elements that agree and holds the products to the
  float32 summation bound against the exact sum of the same bf16 numbers; docs/math.md says what differs.

Tile registers: tmm0-2 the C tiles, tmm3 the A tile, tmm4-6 the B tiles. One work item is (a block of
rows) x (a 48-column panel), as on AVX-512; its rows run in tiles of at most 16, all of one height
(``tile_span``: 17 rows as two tiles of 9 sharing a row). A step is one A tile
and three B tiles: 16 k steps (64 int8 or 32 bf16 of k). K runs in blocks of KC steps, each block's B
(KC x 192 bytes) read by every row tile in turn while it stays in L1; between blocks a tile's sums wait
in T. The K mod 16 steps left over run first, in a configuration of their own. A configuration
(``ldtilecfg``) is loaded only when the shapes change, so chains start with ``tilezero``. Integer sums
do not depend on the order; the bf16 ones are one chain per element, in increasing k, as elsewhere.

Linux's grant of the tile state is asked by ``cpu.amx_permitted`` when ``cpu.select`` checks the tier,
before this module is handed out (no import of ``cpu`` here: ``cpu`` imports this module).

The explicit-register intrinsics (``llvm.x86.tileloadd64`` and friends, as clang's ``_tile_*`` macros
emit) take the tile number as an immediate: one numba intrinsic per (instruction, tiles) below.
"""

import sys

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from refimpl.engines.fast.kernels import common as C
from refimpl.engines.fast.kernels.intrinsics import prefetch

NR = 48
MR = 16  # rows of a tile
TILE_STEPS = 16  # k steps per tile step (groups of 4 int8, pairs of bf16): A 64 bytes wide, B 16 rows
MB = 256  # rows per work item, at most (as avx512.MB)
KC = 128  # k steps per block of B kept in L1: 128 x 192 bytes = 24 KB
STEP_BYTES = NR * 4  # bytes of B per k step: 48 columns x 4 int8 or x 2 bf16
_INT8_INPUT = np.empty(0, np.uint8)  # u8 = q + 128, as avx512's
BF16_AS_FLOAT32 = False  # bf16 bits (uint16), as avx512's
_BF16_INPUT = np.empty(0, np.uint16)
TILES = {"int8": "%dx%d" % (MR, NR), "bf16": "%dx%d" % (MR, NR)}
FEATURES = {"int8": ("amx-tile", "amx-int8"), "bf16": ("amx-tile", "amx-bf16")}

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_PTR = _I8.as_pointer()
_VOID = ir.VoidType()


def _byte_ptr(context, builder, aryty, ary, byte_offset):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.gep(builder.bitcast(data, _PTR), [byte_offset], inbounds=True)


def _call(builder, name, argtypes, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, argtypes), name)
    builder.call(fn, args)


@intrinsic
def load_config(typingctx, cfg):
    """ldtilecfg from the 64 bytes of ``cfg`` (zeroes every tile)."""

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [_byte_ptr(context, builder, sig.args[0], args[0], _I64(0))])

    return types.void(cfg), codegen


@intrinsic
def release(typingctx):
    """tilerelease: back to the init state (the core may sleep deeper, and a context switch saves less)."""

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])

    return types.void(), codegen


def _move(name, tile):
    """tileloadd64 / tilestored64 of tile ``tile``: (array, byte offset, byte stride between rows)."""

    @intrinsic
    def move(typingctx, ary, byte_offset, stride):
        def codegen(context, builder, sig, args):
            ptr = _byte_ptr(context, builder, sig.args[0], args[0], args[1])
            _call(builder, "llvm.x86." + name, [_I8, _PTR, _I64], [_I8(tile), ptr, args[2]])

        return types.void(ary, types.intp, types.intp), codegen

    return move


def _zero(tile):
    @intrinsic
    def zero(typingctx):
        def codegen(context, builder, sig, args):
            _call(builder, "llvm.x86.tilezero", [_I8], [_I8(tile)])

        return types.void(), codegen

    return zero


def _dot(name, c, a, b):
    """tdpbusd (u8 . s8, four byte products per int32) or tdpbf16ps (bf16 pairs into float32):
    tmm_c += tmm_a . tmm_b."""

    @intrinsic
    def dot(typingctx):
        def codegen(context, builder, sig, args):
            _call(builder, "llvm.x86." + name, [_I8, _I8, _I8], [_I8(c), _I8(a), _I8(b)])

        return types.void(), codegen

    return dot


@intrinsic
def prefetch_l2(typingctx, ary, byte_offset):
    """prefetcht1 of the line at byte ``byte_offset`` of ``ary`` (a hint: never faults)."""

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        prefetch(builder, builder.gep(builder.bitcast(data, _PTR), [args[1]]), 2)

    return types.void(ary, types.intp), codegen


load_a = _move("tileloadd64", 3)
load_b0, load_b1, load_b2 = (_move("tileloadd64", 4 + s) for s in range(3))
load_c0, load_c1, load_c2 = (_move("tileloadd64", s) for s in range(3))
store_c0, store_c1, store_c2 = (_move("tilestored64", s) for s in range(3))
zero_c0, zero_c1, zero_c2 = (_zero(s) for s in range(3))
dot_i8_0, dot_i8_1, dot_i8_2 = (_dot("tdpbusd", s, 3, 4 + s) for s in range(3))
dot_bf16_0, dot_bf16_1, dot_bf16_2 = (_dot("tdpbf16ps", s, 3, 4 + s) for s in range(3))


def dots(T):
    """The three C tiles += the A tile . the three B tiles: tdpbusd for int32 sums ``T``, tdpbf16ps for
    float32 ones. A numba function only (the overload picks by T's dtype at compile time)."""
    raise NotImplementedError("dots runs inside numba kernels only")


@overload(dots, inline="always")
def _dots_by_sums(T):
    if T.dtype == types.int32:

        def int8(T):
            dot_i8_0()
            dot_i8_1()
            dot_i8_2()

        return int8

    def bf16(T):
        dot_bf16_0()
        dot_bf16_1()
        dot_bf16_2()

    return bf16


@njit(inline="always", cache=True)
def configure(cfg, rows, steps, current):
    """Palette 1: C tiles [rows x 64 bytes], A [rows x 4*steps bytes], B [steps x 64 bytes], loaded
    unless ``current`` (the key this returns) says it is loaded already."""
    key = rows * 64 + steps
    if key == current:
        return key
    cfg[:] = 0
    cfg[0] = 1
    for t in range(7):
        colsb = 4 * steps if t == 3 else 64
        cfg[16 + 2 * t] = colsb
        cfg[48 + t] = steps if t > 3 else rows
    load_config(cfg)
    return key


@njit(inline="always", cache=True)
def _step(xa, a, lda, bw, b, T):
    """One tile step: the A tile at byte a (rows lda bytes apart), the three B tiles at byte b."""
    load_a(xa, a, lda)
    load_b0(bw, b, STEP_BYTES)
    load_b1(bw, b + 64, STEP_BYTES)
    load_b2(bw, b + 128, STEP_BYTES)
    dots(T)


@njit(inline="always", cache=True)
def _zero_c():
    zero_c0()
    zero_c1()
    zero_c2()


@njit(inline="always", cache=True)
def _load_c(T, t):
    at = t * MR * STEP_BYTES
    load_c0(T, at, STEP_BYTES)
    load_c1(T, at + 64, STEP_BYTES)
    load_c2(T, at + 128, STEP_BYTES)


@njit(inline="always", cache=True)
def _store_c(T, t):
    at = t * MR * STEP_BYTES
    store_c0(T, at, STEP_BYTES)
    store_c1(T, at + 64, STEP_BYTES)
    store_c2(T, at + 128, STEP_BYTES)


@njit(inline="always", cache=True)
def _prefetch_ahead(bw, at):
    """Into L2, the B of one tile step a block ahead (at batch 1 the products wait on DRAM: the first
    row tile of a block asks for the next block's lines while it computes on this one's). In memory
    the next block follows, then the panel's short last steps, then the next panel's first block."""
    end = min(at + TILE_STEPS * STEP_BYTES, bw.size * bw.itemsize)
    for line in range(at, end, 64):
        prefetch_l2(bw, line)


@njit(inline="always", cache=True)
def tile_span(rows, nt, t):
    """(first row, rows) of row tile t of nt over ``rows`` rows: every tile as tall, ceil(rows / nt), the
    last one moved back to end at the last row, so that it may share rows with the one before. One
    height means one tile configuration for the whole item: 17 rows as 9 and 8 reloaded the
    configuration (``ldtilecfg``, which also zeroes the tiles) at every switch between the two. A row
    computed twice gets the same sums both times (they do not depend on the other rows of a tile), and
    both epilogues store the same values."""
    height = (rows + nt - 1) // nt
    return min(t * height, rows - height), height


@njit(inline="always", cache=True)
def item_sums(it, xa, bw, T, mb):
    """Work item ``it``'s sums into T (tile t's rows at T[t * 16 * 48:], 48 apart) -> (panel, first row,
    rows). xa: the prepared input (uint8 [M, K] or uint16 [M, K]); bw: the packed weight, k steps on
    axis 1 (groups of 4 int8, pairs of bf16)."""
    M = xa.shape[0]
    lda = xa.shape[1] * xa.itemsize
    NP, S = bw.shape[0], bw.shape[1]
    p, r0, rows = C.work_item(it, NP, mb, M)
    panel = p * S * STEP_BYTES
    nt = C.n_tiles(rows, MR)
    cfg = np.empty(64, np.uint8)
    current = -1
    tail = S % TILE_STEPS
    full = S - tail
    if tail:
        for t in range(nt):
            off, mr = tile_span(rows, nt, t)
            current = configure(cfg, mr, tail, current)
            _zero_c()
            _step(xa, (r0 + off) * lda + 4 * full, lda, bw, panel + full * STEP_BYTES, T)
            _store_c(T, t)
    for k0 in range(0, full, KC):
        k1 = min(k0 + KC, full)
        for t in range(nt):
            off, mr = tile_span(rows, nt, t)
            current = configure(cfg, mr, TILE_STEPS, current)
            if k0 == 0 and not tail:
                _zero_c()
            else:
                _load_c(T, t)
            a = (r0 + off) * lda
            for k in range(k0, k1, TILE_STEPS):
                if t == 0:
                    _prefetch_ahead(bw, panel + (k + KC) * STEP_BYTES)
                _step(xa, a + 4 * k, lda, bw, panel + k * STEP_BYTES, T)
            _store_c(T, t)
    release()
    return p, r0, rows


@njit(inline="always", cache=True)
def _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb):
    T = C.tile_scratch(C.n_tiles(mb, MR) * MR * NR, np.int32)
    p, r0, rows = item_sums(it, qa, bq, T, mb)
    j0 = p * NR
    nc = min(NR, out.shape[1] - j0)
    nt = C.n_tiles(rows, MR)
    for t in range(nt):
        off, mr = tile_span(rows, nt, t)
        C.epi_i8(T[t * MR * NR :], NR, mr, nc, out, r0 + off, j0, bias, sx, sw, colsum, 128, gelu)


@njit(inline="always", cache=True)
def _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded):
    T = C.tile_scratch(C.n_tiles(mb, MR) * MR * NR, np.float32)
    p, r0, rows = item_sums(it, xa, bb, T, mb)
    j0 = p * NR
    nc = min(NR, bias.shape[0] - j0)  # out may be wider: the next product's padded input (rounded)
    nt = C.n_tiles(rows, MR)
    for t in range(nt):
        off, mr = tile_span(rows, nt, t)
        C.epi_bf16(T[t * MR * NR :], NR, mr, nc, out, r0 + off, j0, bias, gelu, rounded)


@njit(parallel=True, cache=True)
def gemm_int8(x, buf, prepare, bq, sw, colsum, bias, gelu, out, mb):
    """As avx512.gemm_int8 (same arguments, same bits), on the tiles."""
    qa, sx = C.int8_input(x, buf, prepare, bq.shape[1] * 4, _INT8_INPUT, 128)
    for it in prange(C.n_items(x.shape[0], bq.shape[0], mb)):
        _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb)


@njit(cache=True)
def gemm_int8_serial(x, buf, prepare, bq, sw, colsum, bias, gelu, out, mb):
    qa, sx = C.int8_input(x, buf, prepare, bq.shape[1] * 4, _INT8_INPUT, 128)
    for it in range(C.n_items(x.shape[0], bq.shape[0], mb)):
        _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb)


@njit(parallel=True, cache=True)
def gemm_bf16(x, buf, prepare, bb, bias, gelu, out, mb, rounded):
    """As avx512.gemm_bf16 (same arguments and inputs), on the tiles: within rounding, not the same bits."""
    xa = C.bf16_input(x, buf, prepare, bb.shape[1] * 2, _BF16_INPUT)
    for it in prange(C.n_items(x.shape[0], bb.shape[0], mb)):
        _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded)


@njit(cache=True)
def gemm_bf16_serial(x, buf, prepare, bb, bias, gelu, out, mb, rounded):
    xa = C.bf16_input(x, buf, prepare, bb.shape[1] * 2, _BF16_INPUT)
    for it in range(C.n_items(x.shape[0], bb.shape[0], mb)):
        _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded)


# ------------------------------------------------------------ entry points
_glue = C.TierGlue(sys.modules[__name__], _INT8_INPUT.dtype, 128, BF16_AS_FLOAT32, {"int8": MR, "bf16": MR})
prepare_int8, prepare_bf16 = _glue.prepare_int8, _glue.prepare_bf16
linear_int8, linear_bf16, linear_bf16_rounded = _glue.linear_int8, _glue.linear_bf16, _glue.linear_bf16_rounded
