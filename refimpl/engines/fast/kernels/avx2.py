"""AVX2 + FMA kernels (16 ymm registers).

The packed weights are the same format as for AVX-512 (panels of 48
columns); the AVX2 microkernels work on the 16-column sub-panels of a panel
(B row stride 48), so one packed cache file serves every tier.

Register tiles:
* f32 : 6 x 16  -> 12 ymm accumulators + 2 B + 1 broadcast   (vfmadd231ps)
* int8: 4 x 16  -> 8 accumulators.  Sign trick per 4-k group:
        s = vpsignb(w, a)  (= w*sign(a)),  |a| = vpabsb(a),
        p16 = vpmaddubsw(|a|, s)  (u8*s8 pairs; |a|<=127 so 2*127*127 fits s16),
        p32 = vpmaddwd(p16, 1), acc += p32.  Exact int32 sums == VNNI ones.
* bf16: 5 x 16  -> 10 accumulators (6x16 spills one register on a 16-ymm target).  W bf16 pairs widened to f32 (odd: and
        0xffff0000, even: << 16); acc = fma(a_odd, w_odd, acc);
        acc = fma(a_even, w_even, acc) with MXCSR FTZ+DAZ set around the loop:
        bit-identical to vdpbf16ps (verified on Zen 5, see README/tests).

Same work split / batch-invariance argument as avx512.py.
"""

import sys

import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import common as C
from refimpl.engines.fast.kernels.intrinsics import make_microkernel

NRP = C.NRP  # 48: packed panel width
NR = 16  # sub-panel width of the microkernels
NSUB = NRP // NR
MR_F32, MR_I8, MR_BF16 = 6, 4, 5
# rows per work item (at most, but for bf16's whole 5-row tiles), passed by the glue, and k steps per
# cache block per mode, each dividing the klue and MiniLM shapes' steps (768 and 3072 inputs: float32
# 768/3072/384/1536 k, int8 192/768/96/384 groups, bf16 384/1536/192/768 pairs), so that every block
# prefetches a next block as long as itself. On a Zen 4, against 16-column items of 48 rows and 256
# steps (python -m tools.microbench products-against --old CHECKOUT, 12 layers of distinct weights,
# two runs, with 128 steps in every mode): float32 0.62-0.92x the time at 1 and 17 rows, 0.78-0.83x at
# 494; int8 and bf16 0.62-0.72x at 1 row, 0.80-0.93x at 17, 0.98-1.04x at 494. Beside that, in one
# process (an edited copy of this module per value, one run per mode), at 17 rows 96 steps took 0.93x
# the time of 128 and 0.96x of 192 in int8, 0.87x and 0.81x in float32, the same at 494; in bf16 96
# took 1.10x the time of 128, 192 1.02x; 96 and 256 rows per item were no better than 144 at 494 and
# 983 rows (python -m tools.product_rates --cold --rows R --mb 96 144 256).
MB = 144
KC_F32, KC_I8, KC_BF16 = 96, 96, 192
# the prepared inputs the drivers read (common.int8_input / bf16_input): q itself for the sign
# trick, and bf16 numbers as float32 values for the emulation
_INT8_INPUT = np.empty(0, np.int8)
BF16_AS_FLOAT32 = True
_BF16_INPUT = np.empty(0, np.float32 if BF16_AS_FLOAT32 else np.uint16)
TILES = {"f32": "%dx%d" % (MR_F32, NR), "int8": "%dx%d" % (MR_I8, NR), "bf16": "%dx%d" % (MR_BF16, NR)}
FEATURES = {"f32": ("avx2", "fma"), "int8": ("avx2",), "bf16": ("avx2", "fma")}

STEP_BYTES = NRP * 4  # bytes of a panel per k step in every mode (48 float32, 48 x 4 int8, 48 x 2 bf16)
# the tile passes over a block prefetch the panel's next block into L2 between them (common.prefetch_plan),
# planned as 3 x nt passes: at most one line per k step each (more spill the pointer registers). A last
# panel with fewer than three sub-panels runs only its own passes and leaves the rest to the hardware.
mk_f32 = make_microkernel("f32_avx2", MR_F32, NR, 1, 2)
mk_i8 = make_microkernel("i8_avx2", MR_I8, NR, 1, 2)
mk_bf16 = make_microkernel("bf16_emu", MR_BF16, NR, 1, 2)


# ----------------------------------------------------------- work items
# One work item = (row block of MB rows) x (panel of 48 columns), as on AVX-512: its three 16-column
# sub-panels take turns over each block of k steps (KC_<mode>), and their passes prefetch the panel's next block
# into L2 between them (common.prefetch_plan), so a batch-1 product streams its weights while it
# computes. The same item function runs under ``prange`` (gemm_*) or a plain loop (gemm_*_serial,
# used for small products: no parallel-region wake-up, no second core needed).


@njit(inline="always", cache=True)
def _pass_at(q, nt, rows, p):
    """Pass q of an item over panel p: (its sub-panel, its tile's first row and rows, its first output column)."""
    s = q // nt
    off, mr = C.tile_rows(rows, nt, q - s * nt)
    return s, off, mr, p * NRP + s * NR


@njit(inline="always", cache=True)
def _passes(N, p, nt):
    """The item's tile passes per block: nt row tiles for each of panel p's sub-panels within N."""
    return min(NSUB, (N - p * NRP + NR - 1) // NR) * nt


@njit(inline="always", cache=True)
def _item_f32(it, x, bp, bias, gelu, out, mb):
    M, K = x.shape
    N = out.shape[1]
    NP = bp.shape[0]
    p, r0, rows = C.work_item(it, NP, mb, M)
    nt = C.n_tiles(rows, MR_F32)
    nq = _passes(N, p, nt)
    T = C.tile_scratch(nq * MR_F32 * NR, np.float32)
    for k0 in range(0, K, KC_F32):
        ks = min(KC_F32, K - k0)
        for q in range(nq):
            s, off, mr, _ = _pass_at(q, nt, rows, p)
            lines, pf, pf_stride = C.prefetch_plan(NSUB * nt, q, ks, C.block_byte(p, K, k0, STEP_BYTES), STEP_BYTES)
            mk_f32(
                x,
                (r0 + off) * K + k0,
                K,
                mr + lines,
                bp,
                (p * K + k0) * NRP + s * NR,
                NRP,
                ks,
                T[q * MR_F32 * NR : (q + 1) * MR_F32 * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for q in range(nq):
        _, off, mr, j0 = _pass_at(q, nt, rows, p)
        C.epi_f32(T[q * MR_F32 * NR : (q + 1) * MR_F32 * NR], NR, mr, min(NR, N - j0), out, r0 + off, j0, bias, gelu)


@njit(inline="always", cache=True)
def _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb):
    M, Kp = qa.shape
    N = out.shape[1]
    NP = bq.shape[0]
    KG = bq.shape[1]
    p, r0, rows = C.work_item(it, NP, mb, M)
    nt = C.n_tiles(rows, MR_I8)
    nq = _passes(N, p, nt)
    T = C.tile_scratch(nq * MR_I8 * NR, np.int32)
    for k0 in range(0, KG, KC_I8):
        ks = min(KC_I8, KG - k0)
        for q in range(nq):
            s, off, mr, _ = _pass_at(q, nt, rows, p)
            lines, pf, pf_stride = C.prefetch_plan(NSUB * nt, q, ks, C.block_byte(p, KG, k0, STEP_BYTES), STEP_BYTES)
            mk_i8(
                qa,
                (r0 + off) * Kp + 4 * k0,
                Kp,
                mr + lines,
                bq,
                (p * KG + k0) * NRP * 4 + s * NR * 4,
                NRP * 4,
                ks,
                T[q * MR_I8 * NR : (q + 1) * MR_I8 * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for q in range(nq):
        _, off, mr, j0 = _pass_at(q, nt, rows, p)
        tile = T[q * MR_I8 * NR : (q + 1) * MR_I8 * NR]
        C.epi_i8(tile, NR, mr, min(NR, N - j0), out, r0 + off, j0, bias, sx, sw, colsum, 0, gelu)


@njit(inline="always", cache=True)
def _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded):
    M, Kp2 = xa.shape
    N = bias.shape[0]  # out may be wider: the next product's padded input (rounded)
    NP = bb.shape[0]
    KH = bb.shape[1]
    p, r0, rows = C.work_item(it, NP, mb, M)
    nt = C.n_tiles(rows, MR_BF16)
    nq = _passes(N, p, nt)
    T = C.tile_scratch(nq * MR_BF16 * NR, np.float32)
    for k0 in range(0, KH, KC_BF16):
        ks = min(KC_BF16, KH - k0)
        for q in range(nq):
            s, off, mr, _ = _pass_at(q, nt, rows, p)
            lines, pf, pf_stride = C.prefetch_plan(NSUB * nt, q, ks, C.block_byte(p, KH, k0, STEP_BYTES), STEP_BYTES)
            mk_bf16(
                xa,
                (r0 + off) * Kp2 + 2 * k0,
                Kp2,
                mr + lines,
                bb,
                (p * KH + k0) * NRP * 2 + s * NR * 2,
                NRP * 2,
                ks,
                T[q * MR_BF16 * NR : (q + 1) * MR_BF16 * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for q in range(nq):
        _, off, mr, j0 = _pass_at(q, nt, rows, p)
        tile = T[q * MR_BF16 * NR : (q + 1) * MR_BF16 * NR]
        C.epi_bf16(tile, NR, mr, min(NR, N - j0), out, r0 + off, j0, bias, gelu, rounded)


@njit(parallel=True, cache=True)
def gemm_f32(x, bp, bias, gelu, out, mb):
    """out = x @ W.T + bias (+GELU).  x [M,K] f32 C-contig, bp [NP,K,48]."""
    for it in prange(C.n_items(x.shape[0], bp.shape[0], mb)):
        _item_f32(it, x, bp, bias, gelu, out, mb)


@njit(cache=True)
def gemm_f32_serial(x, bp, bias, gelu, out, mb):
    for it in range(C.n_items(x.shape[0], bp.shape[0], mb)):
        _item_f32(it, x, bp, bias, gelu, out, mb)


@njit(parallel=True, cache=True)
def gemm_int8(x, buf, prepare, bq, sw, colsum, bias, gelu, out, mb):
    """x [M,K] float32, quantised (int8 q) into ``buf`` first when ``prepare`` (else buf holds it:
    common.int8_activations); bq [NP,Kp/4,48,4] int8."""
    qa, sx = C.int8_input(x, buf, prepare, bq.shape[1] * 4, _INT8_INPUT, 0)
    for it in prange(C.n_items(x.shape[0], bq.shape[0], mb)):
        _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb)


@njit(cache=True)
def gemm_int8_serial(x, buf, prepare, bq, sw, colsum, bias, gelu, out, mb):
    qa, sx = C.int8_input(x, buf, prepare, bq.shape[1] * 4, _INT8_INPUT, 0)
    for it in range(C.n_items(x.shape[0], bq.shape[0], mb)):
        _item_int8(it, qa, sx, bq, sw, colsum, bias, gelu, out, mb)


@njit(parallel=True, cache=True)
def gemm_bf16(x, buf, prepare, bb, bias, gelu, out, mb, rounded):
    """x [M,K] float32, rounded to bf16 (as float32 values) into ``buf`` first when ``prepare``;
    bb [NP,Kp2/2,48,2] uint16.
    ``rounded`` None: out [M, N] float32; True: the store rounds its results as the next bf16 product's
    input, out [M, kp2 >= N] of this tier's prepared dtype (float32 values; common.epi_bf16). numba
    compiles one specialisation per type, so the plain products never carry the rounding store."""
    xa = C.bf16_input(x, buf, prepare, bb.shape[1] * 2, _BF16_INPUT)
    for it in prange(C.n_items(x.shape[0], bb.shape[0], mb)):
        _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded)


@njit(cache=True)
def gemm_bf16_serial(x, buf, prepare, bb, bias, gelu, out, mb, rounded):
    xa = C.bf16_input(x, buf, prepare, bb.shape[1] * 2, _BF16_INPUT)
    for it in range(C.n_items(x.shape[0], bb.shape[0], mb)):
        _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded)


# ------------------------------------------------------------ entry points
# The glue (common.TierGlue) is Python: the parallel=True drivers are only ever called from Python.

_TILE_ROWS = {"f32": MR_F32, "int8": MR_I8, "bf16": MR_BF16}
_glue = C.TierGlue(sys.modules[__name__], _INT8_INPUT.dtype, 0, BF16_AS_FLOAT32, _TILE_ROWS)
prepare_int8, prepare_bf16 = _glue.prepare_int8, _glue.prepare_bf16
linear_f32, linear_int8, linear_bf16 = _glue.linear_f32, _glue.linear_int8, _glue.linear_bf16
linear_bf16_rounded = _glue.linear_bf16_rounded
