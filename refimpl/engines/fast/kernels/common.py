"""numba code shared by every tier: activation quantisation / bf16 rounding,
tile epilogues (bias, int8 dequantisation, GELU) and work splitting.

Everything here is plain IEEE float32/int arithmetic with no FMA contraction,
so it produces the same bits whichever kernel module calls it, and the NumPy
twins in ``reference.py`` reproduce it exactly.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from refimpl.engines.fast.kernels import packing
from refimpl.engines.fast.kernels.intrinsics import (
    PREFETCH_FLAG,
    vbf16_bits,
    vload,
    vload_masked,
    vstore,
    vstore_masked,
)
from refimpl.engines.fast.kernels.mathf import gelu_f32

NRP = 48  # packed panel width (columns) shared by all tiers

_F127 = np.float32(127.0)


# ------------------------------------------------------- int8 activations
@njit(inline="always", cache=True)
def quantize_row(x, i, q, sx, offset):
    K = x.shape[1]
    xr = x[i]
    # max |x| as an integer max over the bit patterns (same order as the float
    # values for non-NaN inputs) -- vectorises, unlike a float max without fastmath
    xu = xr.view(np.uint32)
    m = np.uint32(0)
    for k in range(K):
        u = np.uint32(xu[k] & np.uint32(0x7FFFFFFF))  # numba widens the & to 64 bits: half the lanes
        m = u if u > m else m
    amax = np.uint32(m).view(np.float32)
    s = amax / _F127
    sx[i] = s
    row = q[i]
    low = np.int32(offset)
    if s == np.float32(0.0):
        for k in range(row.size):
            row[k] = offset
    else:
        for k in range(K):
            v = np.rint(xr[k] / s)
            v = min(max(v, np.float32(-127.0)), np.float32(127.0))
            row[k] = np.int32(np.int32(v) + low)  # 32-bit lanes (an int64 offset widened them); same bytes
        for k in range(K, row.size):
            row[k] = offset


@njit(inline="always", cache=True)
def int8_input(x, buf, prepare, kp, like, offset):
    """A driver's int8 input: (q, sx) on ``buf`` (``int8_views``), quantised from x first when ``prepare``
    (else ``int8_activations`` put them there)."""
    q, sx = int8_views(buf, x.shape[0], kp, like)
    if prepare:
        quantize_rows_in_turn(x, q, sx, offset)
    return q, sx


@njit(inline="always", cache=True)
def quantize_rows_in_turn(x, q, sx, offset):
    for i in range(x.shape[0]):
        quantize_row(x, i, q, sx, offset)


SERIAL_BELOW = 1 << 16  # M*K below which activation prep runs in the calling thread (inside the driver)


@njit(cache=True)
def quantize_rows_serial(x, q, sx, offset):
    quantize_rows_in_turn(x, q, sx, offset)


@njit(parallel=True, cache=True)
def quantize_rows(x, q, sx, offset):
    """Symmetric per-row int8: sx[i] = max|x[i]|/127, q = clip(rint(x/sx), +-127) + offset.

    ``q`` is [M, Kp] int8 (offset 0, AVX2 sign trick) or uint8 (offset 128,
    VNNI's unsigned operand); columns K..Kp-1 are padding (= offset).
    A zero row gets sx = 0 and q = offset.
    """
    for i in prange(x.shape[0]):
        quantize_row(x, i, q, sx, offset)


# ------------------------------------------------------------------ bf16
@njit(inline="always", cache=True)
def f32_to_bf16_bits(v):
    """float32 -> bf16 bits (uint16 in a uint32), AVX512-BF16's ``vcvtneps2bf16`` rule (Intel's
    pseudo-code): round to nearest even, NaN -> quiet NaN, a float32 zero or denormal -> signed zero
    (so no bf16 result is denormal: vdpbf16ps would treat it as zero anyway)."""
    u = np.float32(v).view(np.uint32)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x40)
    if (u & np.uint32(0x7F800000)) == np.uint32(0):
        return (u >> np.uint32(16)) & np.uint32(0x8000)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit(inline="always", cache=True)
def bf16_bits_into(src, s_off, dst, d_off, n):
    """dst.flat[d_off:d_off+n] = the bf16 bits of src.flat[s_off:s_off+n] by ``vcvtneps2bf16``
    (f32_to_bf16_bits' rule), 16 at a time and a masked tail: AVX512-BF16 hosts only; flat offsets
    into C-contiguous arrays."""
    k = 0
    while k + 16 <= n:
        vstore(dst, d_off + k, vbf16_bits(vload(src, s_off + k, 16)))
        k += 16
    if k < n:
        vstore_masked(dst, d_off + k, vbf16_bits(vload_masked(src, s_off + k, 16, n - k)), n - k)


@njit(inline="always", cache=True)
def bf16_row_bits(x, i, out):
    """out[i] = the bf16 bits of x[i], zero padded: the input of the AVX-512 BF16 tier, which alone
    reads bits (AVX512-BF16 hosts only). x and out must be C-contiguous (``check_rows``)."""
    K = x.shape[1]
    kp2 = out.shape[1]
    bf16_bits_into(x, i * K, out, i * kp2, K)
    for k in range(K, kp2):
        out[i, k] = np.uint16(0)


@njit(inline="always", cache=True)
def check_rows(x, out):
    """The row kernels address x and out by flat offsets: refuse arrays that are not C-contiguous."""
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("the rows to round to bf16 and their output must be C-contiguous")


@njit(inline="always", cache=True)
def bf16_row_values(x, i, out):
    row = out[i]
    K = x.shape[1]
    for k in range(K):
        row[k] = np.uint32(f32_to_bf16_bits(x[i, k]) << np.uint32(16)).view(np.float32)
    for k in range(K, row.size):
        row[k] = np.float32(0.0)


@njit(inline="always", cache=True)
def bf16_rows_bits_in_turn(x, xa):
    check_rows(x, xa)
    for i in range(x.shape[0]):
        bf16_row_bits(x, i, xa)


@njit(inline="always", cache=True)
def bf16_rows_values_in_turn(x, xa):
    for i in range(x.shape[0]):
        bf16_row_values(x, i, xa)


def bf16_rows_in_turn(x, xa):
    """xa = bf16(x) row by row, as uint16 bits (vdpbf16ps) or float32 values (AVX2's emulation) by xa's
    dtype: a numba function only (the overload below picks one at compile time)."""
    raise NotImplementedError("bf16_rows_in_turn runs inside numba kernels only")


@overload(bf16_rows_in_turn, inline="always")
def _bf16_rows_by_dtype(x, xa):
    if xa.dtype == types.float32:
        return lambda x, xa: bf16_rows_values_in_turn(x, xa)
    return lambda x, xa: bf16_rows_bits_in_turn(x, xa)


@njit(inline="always", cache=True)
def bf16_input(x, buf, prepare, kp2, like):
    """A driver's bf16 input on ``buf`` (``bf16_view``, of ``like``'s dtype: uint16 bits or float32
    values), rounded from x first when ``prepare`` (else ``bf16_activations`` put it there)."""
    xa = bf16_view(buf, x.shape[0], kp2, like)
    if prepare:
        bf16_rows_in_turn(x, xa)
    return xa


@njit(parallel=True, cache=True)
def bf16_rows_u16(x, out):
    """out[M, Kp2] uint16 = bf16(x), zero padded (for vdpbf16ps; AVX512-BF16 hosts only)."""
    check_rows(x, out)
    for i in prange(x.shape[0]):
        bf16_row_bits(x, i, out)


@njit(cache=True)
def bf16_rows_u16_serial(x, out):
    bf16_rows_bits_in_turn(x, out)


@njit(parallel=True, cache=True)
def bf16_rows_f32(x, out):
    """out[M, Kp2] float32 = float32(bf16(x)) exactly, zero padded (AVX2 emulation)."""
    for i in prange(x.shape[0]):
        bf16_row_values(x, i, out)


@njit(cache=True)
def bf16_rows_f32_serial(x, out):
    bf16_rows_values_in_turn(x, out)


# ------------------------------------------- prepared inputs, inside the drivers
# The drivers take a product's float32 input and a byte buffer, and quantise or round the input into
# the buffer themselves, in the calling thread (``prepare``), or read what ``int8_activations`` /
# ``bf16_activations`` put there: one numba call per product instead of two, and no Python between
# them (about 4 us a product at batch 1, where a pass runs 48 products in 4-10 ms). An input of
# SERIAL_BELOW elements or more is prepared on both cores by the glue first (a second parallel loop
# inside every driver cost 3 s more of cold compilation, for nothing at batch 1).


@njit(inline="always", cache=True)
def int8_views(buf, rows, kp, like):
    """(q [rows, kp] of ``like``'s dtype, sx [rows] float32) on the bytes of ``buf`` (1-D uint8), where
    ``int8_activations`` puts them: q from byte 0, sx from the next multiple of 64."""
    q = buf[: rows * kp].view(like.dtype).reshape(rows, kp)
    start = (rows * kp + 63) // 64 * 64
    return q, buf[start : start + 4 * rows].view(np.float32)


@njit(inline="always", cache=True)
def bf16_view(buf, rows, kp2, like):
    """xa [rows, kp2] of ``like``'s dtype (uint16 bits or float32 values) on the bytes of ``buf``."""
    return buf[: rows * kp2 * like.itemsize].view(like.dtype).reshape(rows, kp2)


def carve(buf, offset, shape, dtype):
    """An array of ``shape`` and ``dtype`` on the bytes of ``buf`` (1-D uint8, large enough: see
    ``input_buffer``) from ``offset``. Plain Python."""
    return np.ndarray(shape, dtype, buffer=buf, offset=offset)


def _aligned(nbytes):
    return -(-nbytes // 64) * 64


def int8_activation_bytes(rows, kp):
    """Scratch bytes ``int8_activations`` needs: q [rows, kp] (1 byte each), then sx [rows] float32."""
    return _aligned(rows * kp) + 4 * rows


def bf16_activation_bytes(rows, kp2, as_float32):
    return rows * kp2 * (4 if as_float32 else 2)


def input_buffer(scratch, nbytes, name="scratch"):
    """``scratch`` when given, checked to be a writeable C-contiguous 1-D uint8 array of at least
    ``nbytes`` (the kernels write and read it unchecked), else a new buffer. Plain Python."""
    if scratch is None:
        return packing.aligned_empty(nbytes, np.uint8)
    if not (
        isinstance(scratch, np.ndarray)
        and scratch.dtype == np.uint8
        and scratch.ndim == 1
        and scratch.flags.c_contiguous
        and scratch.flags.writeable
    ):
        raise ValueError(
            "%s must be a writeable C-contiguous 1-D uint8 array, got %s"
            % (name, "%s %s" % (getattr(scratch, "dtype", type(scratch).__name__), getattr(scratch, "shape", "")))
        )
    if nbytes > scratch.size:
        raise ValueError("%s of %d bytes cannot hold a prepared input of %d bytes" % (name, scratch.size, nbytes))
    return scratch


def int8_activations(x, kp, parallel, dtype, offset, scratch=None):
    """Quantised activations for an int8 kernel -> ((q [M, kp] of ``dtype`` = q + ``offset``, sx [M]),
    the buffer holding them): int8 with offset 0 (AVX2's sign trick), uint8 with 128 (VNNI's unsigned
    operand), on ``scratch`` when given (``int8_activation_bytes``) as ``int8_views`` reads them. Plain
    Python, the tiers' glue calls it."""
    rows = x.shape[0]
    buf = input_buffer(scratch, int8_activation_bytes(rows, kp))
    qa = carve(buf, 0, (rows, kp), dtype)
    sx = carve(buf, _aligned(rows * kp), (rows,), np.float32)
    (quantize_rows if parallel and x.size >= SERIAL_BELOW else quantize_rows_serial)(x, qa, sx, offset)
    return (qa, sx), buf


def bf16_activations(x, kp2, parallel, as_float32, scratch=None):
    """bf16-rounded activations, zero padded to kp2 columns: float32 values (AVX2's emulation) or
    uint16 bits (vdpbf16ps), on ``scratch`` when given (``bf16_activation_bytes``) -> ((xa,), the
    buffer). Plain Python, the tiers' glue calls it."""
    rows = x.shape[0]
    buf = input_buffer(scratch, bf16_activation_bytes(rows, kp2, as_float32))
    xa = carve(buf, 0, (rows, kp2), np.float32 if as_float32 else np.uint16)
    parallel = parallel and x.size >= SERIAL_BELOW
    if as_float32:
        (bf16_rows_f32 if parallel else bf16_rows_f32_serial)(x, xa)
    else:
        (bf16_rows_u16 if parallel else bf16_rows_u16_serial)(x, xa)
    return (xa,), buf


class TierGlue:
    """A tier's Python entry points around its numba drivers (``gemm_<mode>`` and ``gemm_<mode>_serial``,
    rows per work item ``MB`` read from the module at each call, so tools can change it): the same for
    every tier but for the layout of the prepared activations and the register tiles' heights.
    Plain Python, because a cached @njit function calling a parallel=True one segfaults when numba loads
    it back from its cache (0.68)."""

    def __init__(self, tier, int8_dtype, int8_offset, bf16_as_float32, tile_rows):
        self.tier = tier  # the tier's module
        self.int8_dtype, self.int8_offset = int8_dtype, int8_offset  # int8 + 0 (sign trick), uint8 + 128 (VNNI)
        self.bf16_as_float32 = bf16_as_float32  # float32 values (emulation), else uint16 bits (vdpbf16ps)
        self.tile_rows = tile_rows  # {mode: MR}

    def _driver(self, mode, parallel):
        return getattr(self.tier, "gemm_" + mode if parallel else "gemm_%s_serial" % mode)

    def _rows_per_item(self, mode, out):
        return block_rows(out.shape[0], self.tier.MB, self.tile_rows[mode])

    def prepare_int8(self, x, kp, parallel=True, scratch=None):
        """Quantised activations for this tier's int8 kernel -> ((q [M, kp], sx [M]), their buffer)."""
        return int8_activations(x, kp, parallel, self.int8_dtype, self.int8_offset, scratch)

    def prepare_bf16(self, x, kp2, parallel=True, scratch=None):
        """bf16-rounded activations for this tier's kernel -> ((xa [M, kp2],), their buffer)."""
        return bf16_activations(x, kp2, parallel, self.bf16_as_float32, scratch)

    def linear_f32(self, x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
        self._driver("f32", parallel)(x, packed["w"], bias, gelu, out, self._rows_per_item("f32", out))

    def _input(self, x, prepared, scratch, nbytes, prepare_first, padded, parallel):
        """(the buffer the driver reads, whether the driver prepares x into it itself): a large x is
        prepared first by ``prepare_first(x, padded, parallel, buffer)``, on both cores when the product
        runs on both."""
        if prepared is not None:
            return input_buffer(prepared, nbytes, "prepared"), False
        buf = input_buffer(scratch, nbytes)
        if x.size < SERIAL_BELOW:
            return buf, True
        prepare_first(x, padded, parallel, buf)
        return buf, False

    def linear_int8(self, x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
        """``prepared``: the buffer ``prepare_int8`` filled from x; else x is quantised into ``scratch`` (or
        a new buffer): by the driver, or for a large x first (``prepare_int8``)."""
        w = packed["w"]
        kp = w.shape[1] * 4
        nbytes = int8_activation_bytes(x.shape[0], kp)
        buf, prepare = self._input(x, prepared, scratch, nbytes, self.prepare_int8, kp, parallel)
        self._driver("int8", parallel)(
            x, buf, prepare, w, packed["scale"], packed["colsum"], bias, gelu, out, self._rows_per_item("int8", out)
        )

    def linear_bf16(self, x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None, rounded=False):
        """``rounded``: out is the next bf16 product's input ([M, kp2] of this tier's prepared dtype,
        from ``bf16_view``), which the store fills with its results rounded (pad columns zeroed)."""
        w = packed["w"]
        kp2 = w.shape[1] * 2
        if rounded:  # the store writes it by flat offsets, in this tier's layout
            want = np.float32 if self.bf16_as_float32 else np.uint16
            n = bias.shape[0]
            if not (out.dtype == want and out.flags.c_contiguous and out.shape[0] == x.shape[0] and out.shape[1] >= n):
                raise ValueError(
                    "a rounded output must be C-contiguous %s [%d, >= %d], got %s %s"
                    % (np.dtype(want), x.shape[0], n, out.dtype, out.shape)
                )
        nbytes = bf16_activation_bytes(x.shape[0], kp2, self.bf16_as_float32)
        buf, prepare = self._input(x, prepared, scratch, nbytes, self.prepare_bf16, kp2, parallel)
        driver = self._driver("bf16", parallel)
        driver(x, buf, prepare, w, bias, gelu, out, self._rows_per_item("bf16", out), True if rounded else None)
        if rounded and out.shape[1] > bias.shape[0]:
            out[:, bias.shape[0] :] = 0

    def linear_bf16_rounded(self, x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
        self.linear_bf16(x, packed, bias, gelu, out, parallel, prepared, scratch, rounded=True)


# ------------------------------------------------------------- epilogues
@njit(inline="always", cache=True)
def epi_f32(T, nr, mr, nc, out, i0, j0, bias, gelu):
    """out[i0+r, j0:j0+nc] = T[r, :nc] + bias[j0:j0+nc]  (then GELU)."""
    b = bias[j0 : j0 + nc]
    for r in range(mr):
        o = out[i0 + r, j0 : j0 + nc]
        t = T[r * nr : r * nr + nc]
        if gelu:
            for j in range(nc):
                o[j] = gelu_f32(t[j] + b[j])
        else:
            for j in range(nc):
                o[j] = t[j] + b[j]


def bf16_row_into(t, out, i, j0, nc):
    """out[i, j0:j0+nc] = t[:nc] rounded to bf16 as the next product reads it: uint16 bits by
    vcvtneps2bf16 (AVX-512 BF16) or float32 values of bf16 numbers (AVX2's emulation), by out's dtype.
    A numba function only (the overload below picks at compile time)."""
    raise NotImplementedError("bf16_row_into runs inside numba kernels only")


@overload(bf16_row_into, inline="always")
def _bf16_row_into_by_dtype(t, out, i, j0, nc):
    if out.dtype == types.uint16:
        return lambda t, out, i, j0, nc: bf16_bits_into(t, 0, out, i * out.shape[1] + j0, nc)

    def values(t, out, i, j0, nc):
        o = out[i, j0 : j0 + nc]
        for j in range(nc):
            o[j] = np.uint32(f32_to_bf16_bits(t[j]) << np.uint32(16)).view(np.float32)

    return values


@njit(inline="always", cache=True)
def epi_bf16_rounded(T, nr, mr, nc, out, i0, j0, bias, gelu):
    """out[i0+r, j0:j0+nc] = bf16(epi_f32's values: bias, then GELU, in float32 in T): the product's
    output rounded as the next product's input, the bits ``bf16_row_bits`` / ``bf16_row_values``
    would give from epi_f32's output."""
    b = bias[j0 : j0 + nc]
    for r in range(mr):
        t = T[r * nr : r * nr + nc]
        if gelu:
            for j in range(nc):
                t[j] = gelu_f32(t[j] + b[j])
        else:
            for j in range(nc):
                t[j] = t[j] + b[j]
        bf16_row_into(t, out, i0 + r, j0, nc)


def epi_bf16(T, nr, mr, nc, out, i0, j0, bias, gelu, rounded):
    """A bf16 product's store: with ``rounded`` None, epi_f32 into float32 ``out``; with True,
    epi_bf16_rounded. A numba function only: the overload below picks by rounded's type at compile
    time (None, not False, so that the plain drivers do not compile the rounding store)."""
    raise NotImplementedError("epi_bf16 runs inside numba kernels only")


@overload(epi_bf16, inline="always")
def _epi_bf16_by_type(T, nr, mr, nc, out, i0, j0, bias, gelu, rounded):
    if isinstance(rounded, types.NoneType):
        return lambda T, nr, mr, nc, out, i0, j0, bias, gelu, rounded: epi_f32(T, nr, mr, nc, out, i0, j0, bias, gelu)
    return lambda T, nr, mr, nc, out, i0, j0, bias, gelu, rounded: epi_bf16_rounded(
        T, nr, mr, nc, out, i0, j0, bias, gelu
    )


@njit(inline="always", cache=True)
def epi_i8(T, nr, mr, nc, out, i0, j0, bias, sx, sw, colsum, corr, gelu):
    """y = float32(acc) * (sx[i] * sw[j]) + bias[j]   (fixed order, no FMA).

    acc = T - corr*colsum[j] (corr = 128 for the VNNI u8 = q+128 trick, else 0).
    """
    b = bias[j0 : j0 + nc]
    w = sw[j0 : j0 + nc]
    cs = colsum[j0 : j0 + nc]
    for r in range(mr):
        o = out[i0 + r, j0 : j0 + nc]
        t = T[r * nr : r * nr + nc]
        s = sx[i0 + r]
        if gelu:
            for j in range(nc):
                acc = np.int32(t[j] - np.int32(corr) * cs[j])
                o[j] = gelu_f32(np.float32(acc) * (s * w[j]) + b[j])
        else:
            for j in range(nc):
                acc = np.int32(t[j] - np.int32(corr) * cs[j])
                o[j] = np.float32(acc) * (s * w[j]) + b[j]


@njit(inline="always", cache=True)
def tile_scratch(n, dtype):
    """np.empty(n, dtype) starting on a 64-byte boundary (numba's own start 32 bytes into a line): the
    tiles' sums go there between k blocks, as 64-byte rows."""
    raw = np.empty(n + 64, dtype)  # 64 elements: at least a line whatever the dtype
    start = (-raw.ctypes.data % 64) // raw.itemsize
    return raw[start : start + n]


def block_rows(rows, most, multiple):
    """Rows per work item for an [rows, K] product: ceil(rows / most) near-equal blocks, each rounded up
    to a multiple of the register tile's height (so a block may exceed ``most`` by less than one
    tile). prange hands each thread a
    contiguous half of the items, so equal blocks keep both cores busy: 257 rows in blocks of 256
    would leave one thread a single row per panel. (Plain Python: called by the drivers' glue.)"""
    blocks = -(-rows // most)
    per = -(-rows // blocks)
    return -(-per // multiple) * multiple


@njit(inline="always", cache=True)
def n_items(M, NP, mb):
    """Work items of an [M, .] x [., NP panels] product: (blocks of mb rows) x panels."""
    return ((M + mb - 1) // mb) * NP


@njit(inline="always", cache=True)
def work_item(it, NP, mb, M):
    """(panel, first row, rows) of work item ``it``: items run panel by panel within a block of rows."""
    blk = it // NP
    r0 = blk * mb
    return it - blk * NP, r0, min(mb, M - r0)


@njit(inline="always", cache=True)
def tile_rows(rows, nt, t):
    """Balanced split of ``rows`` into ``nt`` tiles; returns (first row offset, rows) of tile t.
    (Any split gives identical results: each output element is one sequential k-chain.)"""
    base = rows // nt
    extra = rows - base * nt
    if t < extra:
        return t * (base + 1), base + 1
    return extra * (base + 1) + (t - extra) * base, base


@njit(inline="always", cache=True)
def block_byte(panel, steps, k0, step_bytes):
    """Byte offset in a packed weight ([panels, steps, 48, ...], ``step_bytes`` per k step) of panel
    ``panel``'s k step k0."""
    return (panel * steps + k0) * step_bytes


@njit(inline="always", cache=True)
def prefetch_plan(nt, t, ks, block, step_bytes):
    """What tile pass t of nt over a block of B (``ks`` k steps of ``step_bytes`` from byte ``block``)
    prefetches into L2 -> (PREFETCH_FLAG x lines per k step, byte offset of the pass's first line, bytes
    per k step), or (0, 0, 0).

    The next block, which in the packed layout follows this one in memory (the next k block of the
    panel, else the next panel's first) and, for the klue and MiniLM shapes, is as long (the tiers'
    blocks divide their steps; elsewhere a short last block leaves part of the next panel's first to the hardware
    prefetcher). The passes split it into contiguous parts of whole lines per k step, in order: with 3
    lines per step (192 bytes), all of it for one pass, two thirds and one third for two, a third each
    for the first three of more. On AVX2 the passes are the three 16-column sub-panels' row tiles in
    turn. (A pass walking the whole block at the k step's stride instead, each taking its share of
    every step's lines, was 10-15% slower in int8 and bf16 at 16-17 rows, python -m tools.microbench
    overlap.)

    At batch 1 a product is as much memory as arithmetic. Before, every AVX-512 pass prefetched 16 KB
    ahead of itself into L1, so only the first pass's prefetches went to DRAM: it waited on memory and
    the later passes computed with the memory idle, and a 17-row product (three passes) took about the
    sum of the two times (docs/performance.md, "Against the targets", has the measurements). The AVX2
    tier did the same until its items became whole panels (its 16-column items each prefetched their
    own line 16 KB ahead)."""
    next_block = block + ks * step_bytes
    lines_per_step = step_bytes // 64
    first = (t * lines_per_step + nt - 1) // nt  # in lines per k step: this pass's part starts ks * first lines in
    lines = ((t + 1) * lines_per_step + nt - 1) // nt - first
    if lines <= 0:
        return 0, 0, 0
    return lines * PREFETCH_FLAG, next_block + ks * first * 64, lines * 64


@njit(inline="always", cache=True)
def n_tiles(rows, mr_max):
    return (rows + mr_max - 1) // mr_max
