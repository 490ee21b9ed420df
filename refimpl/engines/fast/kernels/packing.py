"""Weight packing (NumPy, done once per weight).  The formats do not depend on
the tier: AVX-512 uses 48-column panels directly, AVX2 reads them as three
16-column sub-panels, the BLAS tier reshapes them.

W is [N=out, K=in] float32 (torch nn.Linear layout), NP = ceil(N/48).

* f32 : w [NP, K, 48] float32, zero padded columns.
* int8: w [NP, ceil(K/4), 48, 4] int8 (4 consecutive k per column),
        scale [NP*48] float32 (= max|W[j,:]|/127, 0 for padding/zero rows),
        colsum [NP*48] int32 (sum_k w[j,k], for the VNNI u8 = a+128 trick).
* bf16: w [NP, ceil(K/2), 48, 2] uint16 bf16 bits (RNE, float32 denormals -> 0).

Every packed array starts on a 64-byte boundary (``ALIGN``), in memory and in the cache file
(``packed_weights``): a 64-byte vector or tile-row load that straddles two cache lines is split in two.
"""

import math

import numpy as np

NRP = 48
# bytes. Hot products of 494 rows with the weight 16 bytes off a line and on one, the activations and
# tiles' scratch aligned both times (python -m tools.product_rates --misaligned; [out, in]): int8 on AMX
# tiles 768x768 1,429 -> 1,651 GOPS, 768x3072 2,078 -> 2,567; bf16 1,199 -> 1,321 and 1,299 -> 1,677
# GFLOP/s; float32 (zmm) 327 -> 337 and 303 -> 315
ALIGN = 64


def aligned_empty(shape, dtype, align=ALIGN):
    """An uninitialised C-contiguous array whose first byte is on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    # math.prod, not np.prod, which costs more than the allocation: a product's glue calls this for its scratch
    scalar = isinstance(shape, (int, np.integer)) or getattr(shape, "ndim", 1) == 0
    dims = (int(shape),) if scalar else tuple(int(d) for d in shape)
    if min(dims, default=0) < 0:
        raise ValueError("negative dimensions are not allowed: %s" % (shape,))
    nbytes = math.prod(dims) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned(array, align=ALIGN):
    """``array`` if C-contiguous and aligned, else an aligned copy."""
    if array.flags.c_contiguous and array.ctypes.data % align == 0:
        return array
    copy = aligned_empty(array.shape, array.dtype, align)
    copy[...] = array
    return copy


def n_panels(n):
    return (n + NRP - 1) // NRP


def _panelize(buf, NP, steps, group):
    # buf [NP*48, steps*group] -> [NP, steps, 48, group] (or [NP, steps, 48])
    a = buf.reshape(NP, NRP, steps, group).transpose(0, 2, 1, 3)
    if group == 1:
        a = a.reshape(NP, steps, NRP)
    return aligned(a)


def pack_f32(W):
    N, K = W.shape
    NP = n_panels(N)
    buf = np.zeros((NP * NRP, K), np.float32)
    buf[:N] = W
    return {"w": _panelize(buf, NP, K, 1)}


def quantize_weight(W):
    """Symmetric per output channel: scale[j] = max|W[j]|/127 (float32),
    q = clip(rint(W / scale), -127, 127); zero rows -> scale 0, q 0."""
    W = np.asarray(W, np.float32)
    amax = np.max(np.abs(W), axis=1) if W.shape[1] else np.zeros(W.shape[0], np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(W / scale[:, None])
    q = np.clip(q, -127, 127)
    q[scale == 0] = 0
    return q.astype(np.int8), scale


def pack_int8(W):
    N, K = W.shape
    NP = n_panels(N)
    KG = (K + 3) // 4
    q, scale = quantize_weight(W)
    buf = np.zeros((NP * NRP, KG * 4), np.int8)
    buf[:N, :K] = q
    sc = np.zeros(NP * NRP, np.float32)
    sc[:N] = scale
    colsum = buf.astype(np.int32).sum(axis=1).astype(np.int32)
    return {"w": _panelize(buf, NP, KG, 4), "scale": aligned(sc), "colsum": aligned(colsum)}


def f32_to_bf16_bits(x):
    """float32 -> uint16 bf16 bits by vcvtneps2bf16's rule: RNE, quiet NaN, float32 zeros and
    denormals -> signed 0. (Same integer arithmetic as common.f32_to_bf16_bits.)"""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u >> 16) | 0x40, r)
    r = np.where((u & 0x7F800000) == 0, (u >> 16) & 0x8000, r)
    return r.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def pack_bf16(W):
    N, K = W.shape
    NP = n_panels(N)
    KH = (K + 1) // 2
    buf = np.zeros((NP * NRP, KH * 2), np.uint16)
    buf[:N, :K] = f32_to_bf16_bits(W)
    return {"w": _panelize(buf, NP, KH, 2)}


PACKERS = {"f32": pack_f32, "int8": pack_int8, "bf16": pack_bf16}


def unpack_f32(w, N):
    """Inverse of pack_f32 (for the BLAS tier / tests): -> W^T [K, N]."""
    NP, K, _ = w.shape
    return w.transpose(1, 0, 2).reshape(K, NP * NRP)[:, :N]


def unpack_int8(w, N):
    """-> q [N, Kp] int8."""
    NP, KG, _, _ = w.shape
    return w.transpose(0, 2, 1, 3).reshape(NP * NRP, KG * 4)[:N]


def unpack_bf16(w, N):
    """-> bf16 bits [N, Kp2] uint16."""
    NP, KH, _, _ = w.shape
    return w.transpose(0, 2, 1, 3).reshape(NP * NRP, KH * 2)[:N]
