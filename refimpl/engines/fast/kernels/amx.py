"""AMX kernels (Intel Xeon since Sapphire Rapids: amx-tile + amx-int8, and Linux's permission to use the
tile state): int8 products on the tile unit. float32 and bf16 stay on ``avx512.py`` (``cpu.select``).
Opt-in (``REFIMPL_KERNELS=amx``): it measured no faster than the VNNI kernel yet (``cpu``'s docstring
has the figures), since every 16-row tile streams its panel of B again; keeping B in the tiles over
more rows (k outer, row tiles inner) is the next step.

* int8: C[16 x 16] int32 += tdpbusd(A = u8 activations [rows x 64 bytes], B = s8 weights [16 groups of
  4 k x 16 columns x 4 bytes]), three C tiles side by side for a 48-column panel. It reads the same
  packed weights ([NP, K/4, 48, 4]: a B tile is 16 group rows of one 16-column sub-panel, 192 bytes
  apart) and the same prepared activations (u8 = q + 128) as the VNNI kernel, and its epilogue
  subtracts the same 128 * colsum: the int32 sums are the same integers, so the embeddings are
  bit-identical to the AVX2 and AVX-512 tiers'.
* bf16 is not run on the tiles: tdpbf16ps does not round as vdpbf16ps does (measured on a Sapphire
  Rapids: about 1 element in 6 of a 16 x 48 x 768 product equal to either pair order, closer to the exact
  sum than both), and refimpl's bf16 results do not depend on the CPU.

Tile registers: tmm0-2 the C tiles, tmm3 the A tile, tmm4-6 the B tiles. One work item is (a block of
rows) x (a 48-column panel), as on AVX-512; its rows run in tiles of at most 16, each over all of K:
16 groups (64 k) per step, then a last step of K/4 mod 16 groups with its own tile shapes. A tile
configuration (``ldtilecfg``) zeroes the tiles, so the short step runs first and the long steps load
its sums back. Integer sums do not depend on the order.

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
from numba.extending import intrinsic

from refimpl.engines.fast.kernels import common as C

NR = 48
MR = 16  # rows of a tile
GROUPS = 16  # k groups of 4 per full tile step: A 64 bytes wide, B 16 rows
MB = 256  # rows per work item, at most (as avx512.MB)
STEP_BYTES = NR * 4  # bytes of B per k group: 48 columns x 4 int8
_INT8_INPUT = np.empty(0, np.uint8)  # u8 = q + 128, as avx512's
BF16_AS_FLOAT32 = False  # (unused: bf16 runs avx512's kernels)
TILES = {"int8": "%dx%d" % (MR, NR)}
FEATURES = {"int8": ("amx-tile", "amx-int8")}

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


def _dot(c, a, b):
    """tdpbusd tmm_c += tmm_a (u8) . tmm_b (s8), four byte products per int32."""

    @intrinsic
    def dot(typingctx):
        def codegen(context, builder, sig, args):
            _call(builder, "llvm.x86.tdpbusd", [_I8, _I8, _I8], [_I8(c), _I8(a), _I8(b)])

        return types.void(), codegen

    return dot


load_a = _move("tileloadd64", 3)
load_b0, load_b1, load_b2 = (_move("tileloadd64", 4 + s) for s in range(3))
load_c0, load_c1, load_c2 = (_move("tileloadd64", s) for s in range(3))
store_c0, store_c1, store_c2 = (_move("tilestored64", s) for s in range(3))
zero_c0, zero_c1, zero_c2 = (_zero(s) for s in range(3))
dot0, dot1, dot2 = (_dot(s, 3, 4 + s) for s in range(3))


@njit(inline="always", cache=True)
def configure(cfg, rows, groups):
    """Palette 1: C tiles [rows x 64 bytes], A [rows x 4*groups bytes], B [groups x 64 bytes]."""
    cfg[:] = 0
    cfg[0] = 1
    for t in range(7):
        colsb = 4 * groups if t == 3 else 64
        cfg[16 + 2 * t] = colsb
        cfg[48 + t] = groups if t > 3 else rows


@njit(inline="always", cache=True)
def _step(qa, a, lda, bq, b):
    """One k step: the A tile at byte a (rows lda bytes apart), the three B tiles at byte b."""
    load_a(qa, a, lda)
    load_b0(bq, b, STEP_BYTES)
    load_b1(bq, b + 64, STEP_BYTES)
    load_b2(bq, b + 128, STEP_BYTES)
    dot0()
    dot1()
    dot2()


@njit(inline="always", cache=True)
def _store(T):
    store_c0(T, 0, STEP_BYTES)
    store_c1(T, 64, STEP_BYTES)
    store_c2(T, 128, STEP_BYTES)


@njit(inline="always", cache=True)
def tile_int32(qa, a, lda, bq, b, KG, rows, T, cfg):
    """T[r * 48 + j] = the int32 sums over all KG groups of rows a.. of qa and the panel at byte b."""
    tail = KG % GROUPS
    full = KG - tail
    if tail:
        configure(cfg, rows, tail)
        load_config(cfg)
        _step(qa, a + 4 * full, lda, bq, b + full * STEP_BYTES)
        if full:  # the next configuration zeroes the tiles
            _store(T)
    if full:
        configure(cfg, rows, GROUPS)
        load_config(cfg)  # zeroed tiles, or the short step's sums loaded back
        if tail:
            load_c0(T, 0, STEP_BYTES)
            load_c1(T, 64, STEP_BYTES)
            load_c2(T, 128, STEP_BYTES)
        for g in range(0, full, GROUPS):
            _step(qa, a + 4 * g, lda, bq, b + g * STEP_BYTES)
    _store(T)


@njit(inline="always", cache=True)
def _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb):
    M, Kp = qa.shape
    N = out.shape[1]
    NP = bq.shape[0]
    KG = bq.shape[1]
    p, r0, rows = C.work_item(it, NP, mb, M)
    j0 = p * NR
    nc = min(NR, N - j0)
    nt = C.n_tiles(rows, MR)
    T = np.empty(MR * NR, np.int32)
    cfg = np.empty(64, np.uint8)
    for t in range(nt):
        off, mr = C.tile_rows(rows, nt, t)
        tile_int32(qa, (r0 + off) * Kp, Kp, bq, p * KG * STEP_BYTES, KG, mr, T, cfg)
        C.epi_i8(T, NR, mr, nc, out, r0 + off, j0, bias, sx, sw, colsum, 128, gelu)
    release()


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


# ------------------------------------------------------------ entry points
_glue = C.TierGlue(sys.modules[__name__], _INT8_INPUT.dtype, 128, BF16_AS_FLOAT32, {"int8": MR})
prepare_int8, linear_int8 = _glue.prepare_int8, _glue.linear_int8
