"""Row kernels around the matrix products, in parallel over rows: LayerNorm (bias + residual,
embeddings), bias + GELU. Drop-in replacements for refimpl's kernels.py (same arguments, same
semantics), each in two builds with identical per-row arithmetic:

- ``*_serial``: single-threaded, ``nogil`` (what kernels.py does today);
- ``*_parallel``: ``parallel=True``, ``prange`` over rows;
- the un-suffixed function picks one by size (``PARALLEL_MIN_ELEMENTS``), thread count and
  ``policy.AUTO_PARALLEL`` (default: parallel unless numba's workers would spin for long, or beside
  OpenBLAS's threads: ``policy``).

Arithmetic. Every row is computed by the same code whatever thread runs it, and the two sums of
LayerNorm (mean, then mean and variance of the centred row) are fixed-order vector reductions
(``_vector.sum16`` / ``sumsq16``: 16 lanes, fixed tree), not loops left to LLVM's reassociation:
results are bit-identical between serial and parallel builds, across thread counts, and across
AVX2 and AVX-512 hosts (with FMA). kernels.py's ``fastmath={'reassoc','contract'}`` sums are
deterministic across thread counts too (the per-row code does not depend on the thread), but NOT
across hosts: LLVM vectorises a reassociable sum with VF x interleave partial sums, VF = 8 on
AVX2 and 16 on AVX-512 (znver4/5, icelake-server...; skylake-avx512 prefers 256-bit vectors),
so the order of additions -- and the last bits of mean and variance -- differ between an AVX2
and an AVX-512 machine, and even between LLVM versions. Here ``fastmath={'contract'}`` only
(FMAs allowed, no reordering).

Semantics kept from kernels.py: eps and 1/n are passed as scalars of the array's dtype (the
caller casts); float32 stays float32 (float64 works too); ``out`` may be ``residual`` itself;
embeddings raise IndexError for an id outside its table (checked before any row is written); GELU
is transformers' exact erf form (mathf.gelu: gelu_f32 for float32, libm for float64). Differences:
``y`` is only read (kernels.py used it as scratch); the LayerNorm sums are in the fixed order above;
GELU uses mathf's ~1-ulp erf instead of kernels.py's rational erf (3.7e-7 absolute); LayerNorm
centres twice (corrected two-pass, see _layer_norm_row): as accurate as kernels.py and torch on
ordinary rows, 10-100x more on rows with a large mean.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refimpl.engines.fast.kernels import mathf, policy
from refimpl.engines.fast.kernels.lanes import ld, st
from refimpl.engines.fast.kernels.tiles import sum16, sumsq16

_opts = dict(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)
_ONE = np.float32(1.0)  # exact in float32, promoted exactly when it meets float64

# Below this many elements (rows x hidden) the serial build runs: a parallel region's wake-up and
# join cost more than the work (measured: see the report; 17 x 768 LayerNorm rows take ~6 us).
PARALLEL_MIN_ELEMENTS = 64 * 768


@njit(inline="always", **_opts)
def _layer_norm_row(x, off, n, gamma, beta, eps, inv_n, out, out_off):
    """out.flat[out_off:out_off+n] = LayerNorm(x.flat[off:off+n]); x's row is left centred.

    Corrected two-pass: the float32 mean of a row far from 0 is off by ~ulp(mean) (a row of
    values ~300 would lose ~2e-5 of normalised accuracy); x - mean is exact for values near the
    mean (Sterbenz), so the mean of the centred row measures that error and a second centring
    removes it. One more pass over the row; kernels.py and torch do a single centring.
    Flat ld/st on C-contiguous arrays: when out is x (embeddings), the same SSA array and offset
    let LLVM see the in-place update (a row view of another variable would make it fall back to
    its scalar loop after a failed overlap check)."""
    mean = sum16(x, off, n) * inv_n
    for j in range(n):
        st(x, off + j, ld(x, off + j) - mean)
    mean = sum16(x, off, n) * inv_n
    for j in range(n):
        st(x, off + j, ld(x, off + j) - mean)
    var = sumsq16(x, off, n) * inv_n
    inv_std = _ONE / np.sqrt(var + eps)
    for j in range(n):
        st(out, out_off + j, ld(x, off + j) * inv_std * gamma[j] + beta[j])


@njit(inline="always", **_opts)
def _bias_residual_row(i, y, bias, residual, gamma, beta, eps, inv_n, out):
    """The sum is formed in out's row, not y's: y is only read, so its lines (the product's output,
    just written) are not dirtied again and written back (residual is out in a pass)."""
    n = y.shape[1]
    off = i * n
    for j in range(n):
        st(out, off + j, (ld(y, off + j) + bias[j]) + ld(residual, off + j))
    _layer_norm_row(out, off, n, gamma, beta, eps, inv_n, out, off)


@njit(**_opts)
def bias_residual_layer_norm_serial(y, bias, residual, gamma, beta, eps, inv_n, out):
    for i in range(y.shape[0]):
        _bias_residual_row(i, y, bias, residual, gamma, beta, eps, inv_n, out)


@njit(parallel=True, **_opts)
def bias_residual_layer_norm_parallel(y, bias, residual, gamma, beta, eps, inv_n, out):
    for i in prange(y.shape[0]):
        _bias_residual_row(i, y, bias, residual, gamma, beta, eps, inv_n, out)


@njit(**_opts)
def _check_ids(input_ids, token_type_ids, position_ids, n_word, n_type, n_position):
    for i in range(input_ids.shape[0]):
        if not (0 <= input_ids[i] < n_word and 0 <= token_type_ids[i] < n_type and 0 <= position_ids[i] < n_position):
            raise IndexError("a token, type or position id is outside its embedding table")


@njit(inline="always", **_opts)
def _embedding_row(
    i, input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
):
    n = out.shape[1]
    off = i * n
    w, t, p = input_ids[i] * n, token_type_ids[i] * n, position_ids[i] * n
    for j in range(n):
        st(out, off + j, (ld(word, w + j) + ld(token_type, t + j)) + ld(position, p + j))
    _layer_norm_row(out, off, n, gamma, beta, eps, inv_n, out, off)


@njit(**_opts)
def embeddings_layer_norm_serial(
    input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
):
    _check_ids(input_ids, token_type_ids, position_ids, word.shape[0], token_type.shape[0], position.shape[0])
    for i in range(input_ids.shape[0]):
        _embedding_row(
            i, input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
        )


@njit(parallel=True, **_opts)
def embeddings_layer_norm_parallel(
    input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
):
    _check_ids(input_ids, token_type_ids, position_ids, word.shape[0], token_type.shape[0], position.shape[0])
    for i in prange(input_ids.shape[0]):
        _embedding_row(
            i, input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
        )


@njit(inline="always", **_opts)
def _bias_gelu_row(h, bias, i):
    row = h[i]
    for j in range(row.shape[0]):
        row[j] = mathf.gelu(row[j] + bias[j])


@njit(**_opts)
def bias_gelu_serial(h, bias):
    for i in range(h.shape[0]):
        _bias_gelu_row(h, bias, i)


@njit(parallel=True, **_opts)
def bias_gelu_parallel(h, bias):
    for i in prange(h.shape[0]):
        _bias_gelu_row(h, bias, i)


@njit(inline="always", **_opts)
def _gelu_row(h, i):
    row = h[i]
    for j in range(row.shape[0]):
        row[j] = mathf.gelu(row[j])


@njit(**_opts)
def gelu_serial(h):
    for i in range(h.shape[0]):
        _gelu_row(h, i)


@njit(parallel=True, **_opts)
def gelu_parallel(h):
    for i in prange(h.shape[0]):
        _gelu_row(h, i)


def _parallel(elements):
    return policy.use_parallel(elements, PARALLEL_MIN_ELEMENTS)


def _contiguous(*arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("refimpl.engines.fast.kernels.norms: arrays must be C-contiguous")


def bias_residual_layer_norm(y, bias, residual, gamma, beta, eps, inv_n, out):
    """out = LayerNorm(y + bias + residual) (kernels.bias_residual_layer_norm); y: [N, H] C-contiguous,
    read only; residual, out: [N, H] C-contiguous (out may be residual)."""
    _contiguous(y, residual, out)
    kernel = bias_residual_layer_norm_parallel if _parallel(y.size) else bias_residual_layer_norm_serial
    kernel(y, bias, residual, gamma, beta, eps, inv_n, out)


def embeddings_layer_norm(
    input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out
):
    """out[i] = LayerNorm(word[id] + token_type[type] + position[pos]) (kernels.embeddings_layer_norm);
    IndexError for an out-of-table id; tables and out: C-contiguous."""
    _contiguous(word, token_type, position, out)
    kernel = embeddings_layer_norm_parallel if _parallel(out.size) else embeddings_layer_norm_serial
    kernel(input_ids, token_type_ids, position_ids, word, token_type, position, gamma, beta, eps, inv_n, out)


def bias_gelu(h, bias):
    """h = gelu(h + bias) in place (kernels.bias_gelu)."""
    kernel = bias_gelu_parallel if _parallel(h.size) else bias_gelu_serial
    kernel(h, bias)


def gelu(h):
    """h = gelu(h) in place, no bias (the BLAS tier's store, whose bias is already added)."""
    kernel = gelu_parallel if _parallel(h.size) else gelu_serial
    kernel(h)
