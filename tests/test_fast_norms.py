"""kernels/norms.py against NumPy (float64 truth) and the kernels before it; serial == parallel bit for bit."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from refimpl.engines.fast.kernels import norms
from tests.baseline import kernels as base

H = 768
EPS = 1e-5


def layer_norm64(x, gamma, beta, eps=EPS):
    x = x.astype(np.float64)
    mu = x.mean(1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + eps) * gamma + beta


def data(n, dtype=np.float32, seed=0, H=H):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal((n, H)) * 2).astype(dtype)
    bias = rng.standard_normal(H).astype(dtype)
    res = (rng.standard_normal((n, H)) * 5 + 1).astype(dtype)  # offset: the mean matters
    gamma = (rng.standard_normal(H) * 0.5 + 1).astype(dtype)
    beta = (rng.standard_normal(H) * 0.1).astype(dtype)
    return y, bias, res, gamma, beta


def scalars(dtype, H=H):
    return np.dtype(dtype).type(EPS), np.dtype(dtype).type(1.0 / H)


KERNELS = {
    "serial": norms.bias_residual_layer_norm_serial,
    "parallel": norms.bias_residual_layer_norm_parallel,
    "auto": norms.bias_residual_layer_norm,
}


@pytest.mark.parametrize("n", [1, 17, 300])
@pytest.mark.parametrize("which", list(KERNELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_residual_layer_norm(n, which, dtype):
    y, bias, res, gamma, beta = data(n, dtype)
    truth = layer_norm64((y.astype(np.float64) + bias) + res, gamma, beta)
    out = np.empty_like(y)
    KERNELS[which](y.copy(), bias, res, gamma, beta, *scalars(dtype), out)
    assert out.dtype == dtype
    err = np.abs(out - truth).max()
    y2 = y.copy()
    out2 = np.empty_like(y)
    base.bias_residual_layer_norm(y2, bias, res, gamma, beta, *scalars(dtype), out2)
    err_base = np.abs(out2 - truth).max()
    print(f"LayerNorm n={n} {which} {np.dtype(dtype).name}: max err {err:.3g} (kernels.py: {err_base:.3g})")
    assert err <= (2e-6 if dtype == np.float32 else 1e-13)
    assert err <= 2 * err_base + 1e-7


def test_layer_norm_out_aliases_residual_and_y_is_only_read():
    y, bias, res, gamma, beta = data(40)
    want = np.empty_like(y)
    norms.bias_residual_layer_norm_serial(y.copy(), bias, res, gamma, beta, *scalars(np.float32), want)
    for kernel in (norms.bias_residual_layer_norm_serial, norms.bias_residual_layer_norm_parallel):
        r, y_given = res.copy(), y.copy()
        kernel(y_given, bias, r, gamma, beta, *scalars(np.float32), r)
        assert np.array_equal(r, want)
        assert np.array_equal(y_given, y)  # the product's output is not written over


def test_layer_norm_float32_stays_float32():
    """eps and 1/n as float32 scalars: the float32 kernel does float32 arithmetic (a float64
    computation rounded at the end would be more accurate than this on a large-mean row)."""
    y, bias, res, gamma, beta = data(8)
    out = np.empty_like(y)
    norms.bias_residual_layer_norm_serial(y.copy(), bias, res, gamma, beta, *scalars(np.float32), out)
    ref64 = layer_norm64((y.astype(np.float64) + bias) + res, gamma, beta).astype(np.float32)
    assert not np.array_equal(out, ref64)


def _threads(n):
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return old


def test_bit_identical_serial_parallel_threads_and_row_position():
    y, bias, res, gamma, beta = data(257, seed=3)
    want = np.empty_like(y)
    norms.bias_residual_layer_norm_serial(y.copy(), bias, res, gamma, beta, *scalars(np.float32), want)
    for threads in (1, 2):
        old = _threads(threads)
        try:
            for kernel in (norms.bias_residual_layer_norm_parallel, norms.bias_residual_layer_norm):
                out = np.empty_like(y)
                kernel(y.copy(), bias, res, gamma, beta, *scalars(np.float32), out)
                assert np.array_equal(out, want)
            h = y.copy()
            norms.bias_gelu_parallel(h, bias)
            h2 = y.copy()
            norms.bias_gelu_serial(h2, bias)
            assert np.array_equal(h, h2)
        finally:
            numba.set_num_threads(old)
    # a row alone gives the same bits as inside the batch
    out1 = np.empty_like(y[100:101])
    norms.bias_residual_layer_norm_parallel(
        y[100:101].copy(), bias, res[100:101], gamma, beta, *scalars(np.float32), out1
    )
    assert np.array_equal(out1[0], want[100])


def embedding_data(n, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    word = rng.standard_normal((1000, H)).astype(dtype)
    types_ = rng.standard_normal((2, H)).astype(dtype)
    position = rng.standard_normal((514, H)).astype(dtype)
    ids = rng.integers(0, 1000, n)
    tt = rng.integers(0, 2, n)
    pos = rng.integers(2, 514, n)
    gamma = (rng.standard_normal(H) * 0.5 + 1).astype(dtype)
    beta = (rng.standard_normal(H) * 0.1).astype(dtype)
    return ids, tt, pos, word, types_, position, gamma, beta


@pytest.mark.parametrize(
    "kernel", [norms.embeddings_layer_norm_serial, norms.embeddings_layer_norm_parallel, norms.embeddings_layer_norm]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embeddings_layer_norm(kernel, dtype):
    ids, tt, pos, word, types_, position, gamma, beta = embedding_data(200, dtype)
    truth = layer_norm64((word[ids].astype(np.float64) + types_[tt]) + position[pos], gamma, beta)
    out = np.empty((200, H), dtype)
    kernel(ids, tt, pos, word, types_, position, gamma, beta, *scalars(dtype), out)
    err = np.abs(out - truth).max()
    print(f"embeddings {kernel.__name__ if hasattr(kernel, '__name__') else kernel} {np.dtype(dtype).name}: {err:.3g}")
    assert err <= (2e-6 if dtype == np.float32 else 1e-13)
    if kernel is not norms.embeddings_layer_norm_serial:
        want = np.empty_like(out)
        norms.embeddings_layer_norm_serial(ids, tt, pos, word, types_, position, gamma, beta, *scalars(dtype), want)
        assert np.array_equal(out, want)


@pytest.mark.parametrize("kernel", [norms.embeddings_layer_norm_serial, norms.embeddings_layer_norm_parallel])
@pytest.mark.parametrize("which,value", [(0, 1000), (0, -1), (1, 2), (1, -1), (2, 514), (2, -3)])
def test_embeddings_index_error(kernel, which, value):
    args = list(embedding_data(100))
    bad = args[which].copy()
    bad[57] = value
    args[which] = bad
    out = np.zeros((100, H), np.float32)
    with pytest.raises(IndexError):
        kernel(*args, *scalars(np.float32), out)
    assert not out.any(), "checked before any row is written"


@pytest.mark.parametrize("kernel", [norms.bias_gelu_serial, norms.bias_gelu_parallel, norms.bias_gelu])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gelu(kernel, dtype):
    rng = np.random.default_rng(5)
    h = (rng.standard_normal((100, 3072)) * 2).astype(dtype)
    bias = rng.standard_normal(3072).astype(dtype)
    x = h.astype(np.float64) + bias.astype(np.float64)
    truth = 0.5 * x * np.vectorize(lambda t: math.erfc(-t / math.sqrt(2)))(x)
    got = h.copy()
    kernel(got, bias)
    err = np.abs(got - truth).max()
    old = h.copy()
    base.bias_gelu(old, bias)
    print(f"bias_gelu {np.dtype(dtype).name}: max err {err:.3g} (kernels.py {np.abs(old - truth).max():.3g})")
    if dtype == np.float32:
        assert err <= 4e-7 * max(1, np.abs(x).max() / 5)
        assert err <= np.abs(old - truth).max()
    else:
        assert err <= 1e-15 * np.abs(x).max()


def test_wrong_layer_norm_is_caught():
    """An accuracy check like the ones above passes for ours and fails for the usual mistakes, on
    rows with a large mean (hidden states of trained models have outlier dimensions)."""
    y, bias, res, gamma, beta = data(17)
    res = res + np.float32(300)
    x32 = (y + bias) + res  # the kernel's float32 row: the truth is LayerNorm of exactly that
    truth = layer_norm64(x32, gamma, beta)
    ours = np.empty_like(y)
    norms.bias_residual_layer_norm_parallel(y.copy(), bias, res, gamma, beta, *scalars(np.float32), ours)
    assert np.abs(ours - truth).max() <= 2e-6

    def one_pass_variance(y, bias, res, gamma, beta, eps, inv_n, out):  # E[x^2] - E[x]^2 in float32
        x = (y + bias) + res
        m = x.mean(1, keepdims=True, dtype=np.float32)
        v = (x * x).mean(1, keepdims=True, dtype=np.float32) - m * m
        out[...] = (x - m) / np.sqrt(v + eps) * gamma + beta

    def no_eps(y, bias, res, gamma, beta, eps, inv_n, out):
        x = (y + bias) + res
        m = x.mean(1, keepdims=True)
        out[...] = (x - m) / np.sqrt(((x - m) ** 2).mean(1, keepdims=True)) * gamma + beta

    for wrong in (one_pass_variance, no_eps):
        out = np.empty_like(y)
        wrong(y.copy(), bias, res, gamma, beta, *scalars(np.float32), out)
        assert np.abs(out - truth).max() > 2e-6, wrong.__name__
