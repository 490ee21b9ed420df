"""Fused per-sequence multi-head self-attention on packed rows, in numba (no BLAS).

    out[s, h*d:(h+1)*d] = softmax(Q_h K_h^T * scale) V_h     for every sequence s, head h

``q, k, v, out`` are [N, H] C-contiguous rows of B sequences packed without padding
(``cu_seqlens`` [B+1] int64); H = num_heads * d. One work item is a (sequence, head) pair:

1. pack K_h^T into a [d, Lp] scratch (Lp = L rounded up to 8, zero-padded; 8 x 8 blocks transposed
   in registers, ``tiles.transpose8``, when d is a multiple of 8) and V_h into [L, dp];
2. for each block of R query rows (R = 8, then 4 for the last rows, on AVX-512 hosts; 3 on AVX2):
   scores = (Q_h rows . K_h^T) * scale by register-blocked vector tiles (``tiles.tile``) over
   key blocks of 32/24/16/8; row max (fixed order), e = exp(score - max) (``mathf.exp``:
   exp_f32 for float32), l = sum e (fixed order); context = (e . V_h) / l by the same tiles;
3. with ``probabilities``, also write e / l into [nh, L, L] per sequence.

Exactness and determinism: every score and every context element is one sequential fma chain
(over d, then over the L keys), in the same order whatever the tile shape, the vector width, the
thread or the other sequences of the batch; max and sum are in a fixed lane order. So the output
of a sequence is bit-identical across batch compositions, thread counts, the parallel and the
serial driver, AVX2 and AVX-512 hosts (both with FMA), and whether probabilities are asked for.
(tests/test_attention.py checks the first four on this host.)

Work distribution: the pairs are sorted by length, longest first, and threads take them one at a
time from a shared atomic counter (``lanes.atomic_add``), so a thread that starts late or is
descheduled takes fewer pairs instead of stalling the others (see bench.py, "under load").
Scratch is allocated once per call, per thread. Below ``SERIAL_BELOW`` work (in L^2 d units)
the serial driver runs (no parallel region at all: its wake-up costs more than the work), and
by default only when numba's workers do not spin for long and OpenBLAS is not running the
products (``policy``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import mathf, policy
from refimpl.engines.fast.kernels.lanes import atomic_add, ld, st
from refimpl.engines.fast.kernels.target import HOST_AVX512
from refimpl.engines.fast.kernels.tiles import max16, sum16, tile, transpose8

_opts = dict(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
# the helpers are inlined at numba IR level: numba would otherwise compile each one as its own
# library and re-optimise every callee again inside each caller (5 levels: ~2 s each, cold)
_inl = dict(inline="always", error_model="numpy", fastmath={"contract"})

# Tiles (rows x columns): narrow (AVX2 hosts): 3 x {32, 24, 16, 8}, ymm (12 accumulators of 16
# registers); wide (AVX-512 hosts): 8 x {32, 16} in zmm and 8 x {24, 8} in ymm, and the same with 4
# rows for blocks of fewer than 8 rows. A block with fewer real rows than the tile repeats its last
# row (the copies land in unused scratch rows): few tile heights keep the compiled variants (and the
# cold compile time) down; a short block is latency-bound anyway. Measured on one core here: 3x32
# ymm 134 GFLOP/s (also compiled for haswell), 8x32 zmm 267, 4x64 zmm 233, 2x32 ymm 103.
_n32, _n24, _n16, _n8 = (tile(3, c, 256) for c in (32, 24, 16, 8))
_w32, _w16 = (tile(8, c, 512) for c in (32, 16))
_w24, _w8 = (tile(8, c, 256) for c in (24, 8))
_h32, _h16 = (tile(4, c, 512) for c in (32, 16))
_h24, _h8 = (tile(4, c, 256) for c in (24, 8))

# V_h is read in place for short sequences; above this length it is copied into contiguous rows
# (a 489-row V_h in place spans 1.5 MB, one TLB page per row or two; copied, 125 KB).
PACK_V_ABOVE = 64

# Work (sum over pairs of L^2 d) below which the serial driver runs by default: one sentence of
# 17 tokens x 12 heads x d 64 is 2.2e5. See the report / bench.py for the measurement behind it.
SERIAL_BELOW = 400_000


@njit(**_inl)
def _products(A, a0, lda, rows, height, B, b0, ldb, T, D, ldd, width, alpha):
    """D[r*ldd + c] = alpha * sum_t A[a_r + t] B[b0 + t*ldb + c] for c < width (% 8 == 0), r < height
    (8 or 4: wide tiles; 3: narrow), a_r = a0 + min(r, rows - 1) * lda."""
    last = rows - 1
    a1 = a0 + min(1, last) * lda
    a2 = a0 + min(2, last) * lda
    a3 = a0 + min(3, last) * lda
    a4 = a0 + min(4, last) * lda
    a5 = a0 + min(5, last) * lda
    a6 = a0 + min(6, last) * lda
    a7 = a0 + min(7, last) * lda
    c = 0
    while c < width:
        n = width - c
        C = 32 if n >= 32 else n  # 32, 24, 16 or 8
        b = b0 + c
        if height == 8:
            offs = (a0, a1, a2, a3, a4, a5, a6, a7)
            outs = (c, ldd + c, 2 * ldd + c, 3 * ldd + c, 4 * ldd + c, 5 * ldd + c, 6 * ldd + c, 7 * ldd + c)
            if C == 32:
                _w32(A, offs, B, b, ldb, T, D, outs, alpha)
            elif C == 24:
                _w24(A, offs, B, b, ldb, T, D, outs, alpha)
            elif C == 16:
                _w16(A, offs, B, b, ldb, T, D, outs, alpha)
            else:
                _w8(A, offs, B, b, ldb, T, D, outs, alpha)
        elif height == 4:
            offs4 = (a0, a1, a2, a3)
            outs4 = (c, ldd + c, 2 * ldd + c, 3 * ldd + c)
            if C == 32:
                _h32(A, offs4, B, b, ldb, T, D, outs4, alpha)
            elif C == 24:
                _h24(A, offs4, B, b, ldb, T, D, outs4, alpha)
            elif C == 16:
                _h16(A, offs4, B, b, ldb, T, D, outs4, alpha)
            else:
                _h8(A, offs4, B, b, ldb, T, D, outs4, alpha)
        else:
            offs3 = (a0, a1, a2)
            outs3 = (c, ldd + c, 2 * ldd + c)
            if C == 32:
                _n32(A, offs3, B, b, ldb, T, D, outs3, alpha)
            elif C == 24:
                _n24(A, offs3, B, b, ldb, T, D, outs3, alpha)
            elif C == 16:
                _n16(A, offs3, B, b, ldb, T, D, outs3, alpha)
            else:
                _n8(A, offs3, B, b, ldb, T, D, outs3, alpha)
        c += C


@njit(**_inl)
def _pair(q, k, v, ldi, qo, ko, vo, out, H, start, L, col, d, scale, kt, vp, s, o, l, wide, probs, poff, want):
    """One (sequence, head): rows start..start+L, columns col..col+d of the head. q, k and v are flat
    arrays of rows ``ldi`` apart, the head's columns starting at qo + col, ko + col, vo + col (one
    [N, 3H] array with offsets 0, H, 2H, or three [N, H] arrays); out is [N, H], flat."""
    Lp = (L + 7) // 8 * 8
    dp = (d + 7) // 8 * 8
    zero = scale * 0
    one = zero + scale / scale
    if d % 8 == 0:  # K_h^T, zero-padded to Lp columns, by 8 x 8 blocks in registers
        for jb in range(0, Lp, 8):
            for cb in range(0, d, 8):
                transpose8(k, (start + jb) * ldi + ko + col + cb, ldi, L - jb, kt, cb * Lp + jb, Lp)
    else:  # one element at a time (a strided load each: 4x slower for d 64)
        for c in range(d):
            base = c * Lp
            for j in range(L):
                st(kt, base + j, ld(k, (start + j) * ldi + ko + col + c))
            for j in range(L, Lp):
                st(kt, base + j, zero)
    if d == dp and L <= PACK_V_ABOVE:  # V_h read in place: rows of d contiguous values, ldi apart
        vsrc, v0, ldv = v, start * ldi + vo + col, ldi
    else:  # V_h copied into contiguous rows, zero-padded to dp columns
        for j in range(L):
            for c in range(d):
                st(vp, j * dp + c, ld(v, (start + j) * ldi + vo + col + c))
            for c in range(d, dp):
                st(vp, j * dp + c, zero)
        vsrc, v0, ldv = vp, 0, dp
    i = 0
    while i < L:
        height = (8 if L - i >= 8 else 4) if wide else 3
        R = min(height, L - i)  # real rows in this block; the others repeat row i + R - 1
        # scaled scores of rows i..i+R-1 into s[r*Lp : (r+1)*Lp] (columns >= L: zero keys, unused)
        _products(q, (start + i) * ldi + qo + col, ldi, R, height, kt, 0, Lp, d, s, Lp, Lp, scale)
        for r in range(R):
            off = r * Lp
            m = max16(s, off, L)
            for j in range(Lp):  # Lp, not L: whole vectors; the padding is never read
                st(s, off + j, mathf.exp(ld(s, off + j) - m))
            l[r] = sum16(s, off, L)
            if want:
                base = poff + (i + r) * L
                for j in range(L):
                    probs[base + j] = ld(s, off + j) / l[r]
        # context rows: (e . V_h) into o[r*dp : r*dp + dp], then / l
        _products(s, 0, Lp, R, height, vsrc, v0, ldv, L, o, dp, dp, one)
        for r in range(R):
            base = (start + i + r) * H + col
            for c in range(d):
                st(out, base + c, ld(o, r * dp + c) / l[r])
        i += R


@njit(**_opts)
def _worker(
    w, counter, items, q, k, v, ldi, qo, ko, vo, out, H, cu, nh, d, scale, kt, vp, s, o, l, wide, probs, poffs, want
):
    n_items = items.shape[0]
    while True:
        t = atomic_add(counter, 0, 1)
        if t >= n_items:
            break
        item = items[t]
        b = item // nh
        h = item - b * nh
        start = cu[b]
        L = cu[b + 1] - start
        if L <= 0:
            continue
        poff = poffs[b] + h * L * L if want else 0
        kw, vw, sw, ow, lw = kt[w], vp[w], s[w], o[w], l[w]
        _pair(q, k, v, ldi, qo, ko, vo, out, H, start, L, h * d, d, scale, kw, vw, sw, ow, lw, wide, probs, poff, want)


@njit(**_opts)
def _plan(cu, nh, d, workers, dtype_zero):
    """Work items (sequence * nh + head), longest sequences first; per-worker scratch."""
    B = cu.shape[0] - 1
    Lmax = 0
    for b in range(B):
        Lmax = max(Lmax, cu[b + 1] - cu[b])
    # counting sort by length, longest first (stable): items = sequence * nh + head
    count = np.zeros(Lmax + 2, np.int64)
    for b in range(B):
        count[Lmax - (cu[b + 1] - cu[b])] += 1
    pos = 0
    for L in range(Lmax + 1):
        c = count[L]
        count[L] = pos
        pos += c
    items = np.empty(B * nh, np.int64)
    for b in range(B):
        key = Lmax - (cu[b + 1] - cu[b])
        t = count[key]
        count[key] = t + 1
        for h in range(nh):
            items[t * nh + h] = b * nh + h
    Lp = (Lmax + 7) // 8 * 8
    dp = (d + 7) // 8 * 8
    kt = np.empty((workers, max(d * Lp, 1)), dtype_zero.dtype)
    vp = np.empty((workers, max(Lp * dp, 1)), dtype_zero.dtype)
    s = np.empty((workers, 8 * max(Lp, 8)), dtype_zero.dtype)
    o = np.empty((workers, 8 * dp), dtype_zero.dtype)
    l = np.empty((workers, 8), dtype_zero.dtype)
    return items, kt, vp, s, o, l


@njit(**_opts)
def _serial(q, k, v, ldi, qo, ko, vo, cu, nh, scale, out, wide, probs, poffs, want):
    N, H = out.shape
    d = H // nh
    items, kt, vp, s, o, l = _plan(cu, nh, d, 1, np.zeros(1, q.dtype))
    counter = np.zeros(1, np.int64)
    of = out.reshape(N * H)
    _worker(
        np.int64(0), counter, items, q, k, v, ldi, qo, ko, vo, of, H, cu, nh, d, scale, kt, vp, s, o, l, wide, probs,
        poffs, want,
    )  # fmt: skip


@njit(parallel=True, **_opts)
def _parallel(q, k, v, ldi, qo, ko, vo, cu, nh, scale, out, wide, probs, poffs, want, workers):
    N, H = out.shape
    d = H // nh
    items, kt, vp, s, o, l = _plan(cu, nh, d, workers, np.zeros(1, q.dtype))
    counter = np.zeros(1, np.int64)
    of = out.reshape(N * H)
    for w in prange(workers):
        _worker(
            np.int64(w), counter, items, q, k, v, ldi, qo, ko, vo, of, H, cu, nh, d, scale, kt, vp, s, o, l, wide,
            probs, poffs, want,
        )  # fmt: skip


@njit(**_opts)
def _sum_squared_lengths(cu, n):
    """sum over sequences of L^2, or -1 when cu is not [B+1] non-decreasing from 0 to n."""
    if cu.shape[0] < 1 or cu[0] != 0 or cu[cu.shape[0] - 1] != n:
        return -1.0
    total = 0.0
    for b in range(cu.shape[0] - 1):
        length = cu[b + 1] - cu[b]
        if length < 0:
            return -1.0
        total += float(length) * float(length)
    return total


_NO_OFFSETS = np.zeros(1, np.int64)  # the kernels never write probabilities they were not asked for
_NO_PROBABILITIES = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def attention(q, k, v, cu_seqlens, num_heads, scale, out=None, probabilities=False, parallel=None):
    """softmax(Q_h K_h^T * scale) V_h for every packed sequence and head: [N, H] -> [N, H].

    q, k, v: [N, H] float32 (or float64) C-contiguous; cu_seqlens: [B+1] int64, non-decreasing,
    cu_seqlens[0] = 0, cu_seqlens[-1] = N; scale: a scalar of q's dtype (cast if not);
    out: [N, H] C-contiguous, written (allocated when None). ``probabilities``: also return a list
    of B arrays [num_heads, L, L] (views into one allocation). ``parallel``: None = by size
    (SERIAL_BELOW) and ``policy.AUTO_PARALLEL``, True/False to force. Returns out, or
    (out, probabilities).
    The result does not depend on ``parallel``, the thread count or the rest of the batch.
    """
    N, H = q.shape
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k and v must have the same shape and dtype")
    if not (q.flags.c_contiguous and k.flags.c_contiguous and v.flags.c_contiguous):
        raise ValueError("q, k and v must be C-contiguous")
    flat = (q.reshape(N * H), k.reshape(N * H), v.reshape(N * H))
    return _attention(flat, (H, 0, 0, 0), N, H, q.dtype, cu_seqlens, num_heads, scale, out, probabilities, parallel)


def attention_qkv(qkv, cu_seqlens, num_heads, scale, out=None, probabilities=False, parallel=None):
    """``attention`` on Q, K and V side by side in one [N, 3H] C-contiguous array (the output of one
    product with the three weights stacked), with the same results as on the three [N, H] parts."""
    N, H3 = qkv.shape
    if H3 % 3 or not qkv.flags.c_contiguous:
        raise ValueError("qkv must be [N, 3H] C-contiguous, got %s" % (qkv.shape,))
    H = H3 // 3
    flat = qkv.reshape(N * H3)
    return _attention((flat,) * 3, (H3, 0, H, 2 * H), N, H, qkv.dtype, cu_seqlens, num_heads, scale, out,
                      probabilities, parallel)  # fmt: skip


def _attention(flat, layout, N, H, dtype, cu_seqlens, num_heads, scale, out, probabilities, parallel):
    """The checks and the drivers' call for both entry points: ``flat`` (q, k, v) as 1-D arrays,
    ``layout`` (their row stride, and the column where Q, K and V begin)."""
    if H % num_heads:
        raise ValueError("hidden size is not a multiple of num_heads")
    if dtype not in (np.float32, np.float64):
        raise TypeError("float32 or float64 only")
    cu = cu_seqlens
    if not (type(cu) is np.ndarray and cu.dtype == np.int64 and cu.ndim == 1):
        cu = np.asarray(cu_seqlens, dtype=np.int64)
    squared = _sum_squared_lengths(cu, N) if cu.ndim == 1 else -1.0
    if squared < 0:
        raise ValueError("cu_seqlens must be [B+1], non-decreasing, from 0 to N")
    if out is None:
        out = np.empty((N, H), dtype)
    elif out.shape != (N, H) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous [N, H] array of q's dtype")
    scale = dtype.type(scale)
    d = H // num_heads
    wide = bool(HOST_AVX512 and dtype == np.float32)
    if probabilities:
        lengths = np.diff(cu)
        sizes = num_heads * lengths * lengths
        poffs = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(sizes, out=poffs[1:])
        probs = np.empty(int(poffs[-1]), dtype)
    else:
        poffs, probs = _NO_OFFSETS, _NO_PROBABILITIES[dtype]
    if parallel is None:
        parallel = policy.use_parallel(squared * num_heads * d, SERIAL_BELOW)
    args = (*flat, *layout, cu, num_heads, scale, out, wide, probs, poffs, bool(probabilities))
    if parallel:
        _parallel(*args, numba.get_num_threads())
    else:
        _serial(*args)
    if not probabilities:
        return out
    views = [probs[poffs[b] : poffs[b + 1]].reshape(num_heads, L, L) for b, L in enumerate(lengths.tolist())]
    return out, views
