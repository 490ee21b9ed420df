"""Fallback tier for CPUs without AVX2+FMA: NumPy / BLAS, no numba kernels.

* f32 : batched sgemm over the packed panels (not bit-identical to the fma
        chain of the SIMD tiers -- BLAS picks its own summation order).
* int8: exact int32 sums through float64 dgemm, same quantisation and
        dequantisation as the other tiers -> bit-identical to them.
* bf16: the NumPy emulation in reference.py (bit-identical, slow).
GELU is mathf.gelu_f32 through a numba loop (norms.gelu): the same bits as the other tiers'
store, without reference.py's NumPy twin (~25 emulated fma passes over the whole output).
"""

import numpy as np

from refimpl.engines.fast.kernels import norms, packing, reference

TILES = {"f32": "-", "int8": "-", "bf16": "-"}


def _store(y, bias, gelu, out):
    out[...] = y + bias[None, :]
    if gelu:
        norms.gelu(out)


def linear_f32(x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
    w = packed["w"]  # [NP, K, 48]
    N = out.shape[1]
    y = np.matmul(x[None], w)  # [NP, M, 48]
    y = y.transpose(1, 0, 2).reshape(x.shape[0], -1)[:, :N]
    _store(y.astype(np.float32), bias, gelu, out)


def linear_int8(x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
    N = out.shape[1]
    qw = packing.unpack_int8(packed["w"], N)  # [N, Kp]
    qx, sx = reference.quantize_rows(x)
    K = x.shape[1]
    acc = (qx.astype(np.float64) @ qw[:, :K].astype(np.float64).T).astype(np.int32)
    out[...] = reference.int8_dequant(acc, sx, packed["scale"][:N], bias)
    if gelu:
        norms.gelu(out)


def linear_bf16(x, packed, bias, gelu, out, parallel=True, prepared=None, scratch=None):
    N = out.shape[1]
    K = x.shape[1]
    wb = packing.bf16_bits_to_f32(packing.unpack_bf16(packed["w"], N))[:, :K]
    out[...] = reference.linear_bf16_from_rounded(reference.bf16_round(x), wb, bias)
    if gelu:
        norms.gelu(out)
