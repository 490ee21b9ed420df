"""AVX-512 kernels (needs avx512f/bw/vl; int8 needs avx512vnni, bf16 needs
avx512bf16 -- ``cpu.select`` falls back to ``avx2.py`` for a mode otherwise).

Register tiles (32 zmm): MR x NR = 8 x 48 for every mode -> 24 accumulators,
3 B vectors, broadcasts folded into the FMA/dot instructions or one register.

* f32 : acc += bcast(x[i,k]) * B[k, 16c:16c+16]              (vfmadd231ps)
* int8: acc += dot4(u8 = q[i,4g:4g+4]+128, s8 = Wq[.., 4g:4g+4])  (vpdpbusd),
        epilogue subtracts 128*colsum(Wq) -> exactly the AVX2 int32 sums
* bf16: acc = vdpbf16ps(acc, bf16 pair of x, bf16 pairs of W)

Loop structure (all modes): work items = (row block of MB rows) x (panel of
48 columns), distributed by ``prange``.  Inside an item the
rows are split into balanced tiles of <= MR rows; each tile runs the K loop of a block of B in registers
while it prefetches a share of the next block into L2 (``common.prefetch_plan``)
(k in increasing order, one chain per output element), is stored to a scratch
tile and finished by the shared epilogue (bias / dequantisation / GELU).  Nothing
about an output element's arithmetic depends on M, the tile, the item or the
thread -> batch invariant.
"""

import sys

import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import common as C
from refimpl.engines.fast.kernels.intrinsics import make_microkernel

NR = 48
MR = 8
# rows per work item (at most; common.block_rows splits M into equal blocks), passed to the kernels
# by the glue below. 256 against 64, side by side in one process (python -m tools.product_rates
# --cold --rows R --mb 64 256): 494 rows float32 +7%, int8 +6%, bf16 +6%; 1,000 rows +1-2%, bf16 0
MB = 256
KC = 192  # k steps per cache block (B block = 192*192 B = 36 KB, in L1)
STEP_BYTES = NR * 4  # bytes of B per k step in every mode: 48 float32, 48 x 4 int8, 48 x 2 bf16
# the prepared inputs the drivers read (common.int8_input / bf16_input): VNNI's unsigned operand
# u8 = q + 128, and bf16 bits for vdpbf16ps (not float32 values)
_INT8_INPUT = np.empty(0, np.uint8)
BF16_AS_FLOAT32 = False
_BF16_INPUT = np.empty(0, np.float32 if BF16_AS_FLOAT32 else np.uint16)
TILES = {"f32": "%dx%d" % (MR, NR), "int8": "%dx%d" % (MR, NR), "bf16": "%dx%d" % (MR, NR)}
FEATURES = {"f32": ("avx512f",), "int8": ("avx512f", "avx512bw", "avx512vnni"), "bf16": ("avx512f", "avx512bf16")}

# the tiles prefetch the next block of B into L2 while they compute on this one (common.prefetch_plan)
mk_f32 = make_microkernel("f32_avx512", MR, NR, STEP_BYTES // 64, 2)
mk_i8 = make_microkernel("i8_vnni", MR, NR, STEP_BYTES // 64, 2)
mk_bf16 = make_microkernel("bf16_avx512", MR, NR, STEP_BYTES // 64, 2)


# ----------------------------------------------------------- work items
# One work item = (row block of MB rows) x (panel of 48 columns).  The same
# item function runs under ``prange`` (gemm_*) or a plain loop (gemm_*_serial,
# used for small products: no parallel-region wake-up, no second core needed).


@njit(inline="always", cache=True)
def _item_f32(it, x, bp, bias, gelu, out, mb):
    M, K = x.shape
    N = out.shape[1]
    NP = bp.shape[0]
    p, r0, rows = C.work_item(it, NP, mb, M)
    j0 = p * NR
    nc = min(NR, N - j0)
    nt = C.n_tiles(rows, MR)
    T = C.tile_scratch(nt * MR * NR, np.float32)
    for k0 in range(0, K, KC):
        ks = min(KC, K - k0)
        for t in range(nt):
            off, mr = C.tile_rows(rows, nt, t)
            lines, pf, pf_stride = C.prefetch_plan(nt, t, ks, C.block_byte(p, K, k0, STEP_BYTES), STEP_BYTES)
            mk_f32(
                x,
                (r0 + off) * K + k0,
                K,
                mr + lines,
                bp,
                (p * K + k0) * NR,
                NR,
                ks,
                T[t * MR * NR : (t + 1) * MR * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for t in range(nt):
        off, mr = C.tile_rows(rows, nt, t)
        C.epi_f32(T[t * MR * NR : (t + 1) * MR * NR], NR, mr, nc, out, r0 + off, j0, bias, gelu)


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
    T = C.tile_scratch(nt * MR * NR, np.int32)
    for k0 in range(0, KG, KC):
        ks = min(KC, KG - k0)
        for t in range(nt):
            off, mr = C.tile_rows(rows, nt, t)
            lines, pf, pf_stride = C.prefetch_plan(nt, t, ks, C.block_byte(p, KG, k0, STEP_BYTES), STEP_BYTES)
            mk_i8(
                qa,
                (r0 + off) * Kp + 4 * k0,
                Kp,
                mr + lines,
                bq,
                (p * KG + k0) * NR * 4,
                NR * 4,
                ks,
                T[t * MR * NR : (t + 1) * MR * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for t in range(nt):
        off, mr = C.tile_rows(rows, nt, t)
        C.epi_i8(T[t * MR * NR : (t + 1) * MR * NR], NR, mr, nc, out, r0 + off, j0, bias, sx, sw, colsum, 128, gelu)


@njit(inline="always", cache=True)
def _item_bf16(it, xa, bb, bias, gelu, out, mb, rounded):
    M, Kp2 = xa.shape
    N = bias.shape[0]  # out may be wider: the next product's padded input (rounded)
    NP = bb.shape[0]
    KH = bb.shape[1]
    p, r0, rows = C.work_item(it, NP, mb, M)
    j0 = p * NR
    nc = min(NR, N - j0)
    nt = C.n_tiles(rows, MR)
    T = C.tile_scratch(nt * MR * NR, np.float32)
    for k0 in range(0, KH, KC):
        ks = min(KC, KH - k0)
        for t in range(nt):
            off, mr = C.tile_rows(rows, nt, t)
            lines, pf, pf_stride = C.prefetch_plan(nt, t, ks, C.block_byte(p, KH, k0, STEP_BYTES), STEP_BYTES)
            mk_bf16(
                xa,
                (r0 + off) * Kp2 + 2 * k0,
                Kp2,
                mr + lines,
                bb,
                (p * KH + k0) * NR * 2,
                NR * 2,
                ks,
                T[t * MR * NR : (t + 1) * MR * NR],
                1 if k0 > 0 else 0,
                pf,
                pf_stride,
            )
    for t in range(nt):
        off, mr = C.tile_rows(rows, nt, t)
        C.epi_bf16(T[t * MR * NR : (t + 1) * MR * NR], NR, mr, nc, out, r0 + off, j0, bias, gelu, rounded)


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
    """x [M,K] float32, quantised (u8 = q+128) into ``buf`` first when ``prepare`` (else buf holds it:
    common.int8_activations); bq [NP,Kp/4,48,4] int8."""
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
    """x [M,K] float32, rounded to bf16 bits into ``buf`` first when ``prepare``; bb [NP,Kp2/2,48,2] uint16.
    ``rounded`` None: out [M, N] float32; True: the store rounds its results as the next bf16 product's
    input, out [M, kp2 >= N] of this tier's prepared dtype (uint16 bits; common.epi_bf16). numba
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

_glue = C.TierGlue(sys.modules[__name__], _INT8_INPUT.dtype, 128, BF16_AS_FLOAT32, {"f32": MR, "int8": MR, "bf16": MR})
prepare_int8, prepare_bf16 = _glue.prepare_int8, _glue.prepare_bf16
linear_f32, linear_int8, linear_bf16 = _glue.linear_f32, _glue.linear_int8, _glue.linear_bf16
linear_bf16_rounded = _glue.linear_bf16_rounded
