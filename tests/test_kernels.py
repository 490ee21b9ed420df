"""Each numba kernel of the fast engine against the plain NumPy function it fuses (forward.py, pooling.py),
and position ids exactly as transformers computes them (the kernels' own accuracy: test_fast_*.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refimpl.batch import cu_seqlens_from_lengths
from refimpl.engines import pooling
from refimpl.engines.fast import encoder as packed
from refimpl.engines.fast.kernels import norms as kernels
from refimpl.engines.fast.pooling import pool_packed
from refimpl.engines.reference import forward
from refimpl.load.config import EncoderConfig
from tests.helpers import check_parity

DTYPES = [np.float32, np.float64]
# float32 kernels reassociate sums (vectorised): a few ulp of values of order 1
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def rng(seed=0):
    return np.random.default_rng(seed)


def config(model_type="roberta", hidden=48, heads=4, pad=1):
    return EncoderConfig(
        model_type=model_type,
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-5,
        pad_token_id=pad,
    )


def exact_gelu(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x.ravel()]).reshape(x.shape))


def test_hand_worked_gelu_values():
    # GELU(0) = 0; GELU(1) = Phi(1) = 0.8413447460685429; GELU(-1) = -(1 - Phi(1))
    for dtype in (np.float32, np.float64):
        h = np.array([[0.0, 1.0, -1.0]], dtype)
        kernels.bias_gelu(h, np.zeros(3, dtype))
        np.testing.assert_allclose(h[0], [0.0, 0.8413447460685429, -0.15865525393145707], atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_matches_numpy(dtype):
    x = rng().normal(0, 3, (37, 53)).astype(dtype)
    b = rng(1).normal(0, 1, 53).astype(dtype)
    fused = x.copy()
    kernels.bias_gelu(fused, b)
    check_parity(f"bias_gelu {dtype.__name__}", fused, forward.gelu(x + b), 3e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_residual_layer_norm_matches_numpy(dtype):
    r = rng()
    y, residual = r.normal(0, 2, (29, 48)).astype(dtype), r.normal(0, 2, (29, 48)).astype(dtype)
    w = {"weight": r.normal(1, 0.2, 48).astype(dtype), "bias": r.normal(0, 0.2, 48).astype(dtype)}
    bias = r.normal(0, 1, 48).astype(dtype)
    expected = forward.layer_norm(y + bias + residual, w, 1e-5)
    out = np.empty_like(y)
    kernels.bias_residual_layer_norm(y.copy(), bias, residual, w["weight"], w["bias"], dtype(1e-5), dtype(1 / 48), out)
    check_parity(f"bias_residual_layer_norm {dtype.__name__}", out, expected, TOL[dtype])
    # in place on the residual, as packed.py may use it
    in_place = residual.copy()
    kernels.bias_residual_layer_norm(
        y.copy(), bias, in_place, w["weight"], w["bias"], dtype(1e-5), dtype(1 / 48), in_place
    )
    check_parity("in place", in_place, expected, TOL[dtype])


@pytest.mark.parametrize("model_type", ["roberta", "bert"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_embeddings_layer_norm_matches_numpy(dtype, model_type):
    cfg = config(model_type)
    r = rng()
    w = {
        "word_embeddings": {"weight": r.normal(0, 1, (50, 48)).astype(dtype)},
        "token_type_embeddings": {"weight": r.normal(0, 1, (2, 48)).astype(dtype)},
        "position_embeddings": {"weight": r.normal(0, 1, (40, 48)).astype(dtype)},
        "LayerNorm": {"weight": r.normal(1, 0.2, 48).astype(dtype), "bias": r.normal(0, 0.2, 48).astype(dtype)},
    }
    lengths = [5, 1, 9]
    ids = [r.integers(2, 50, n) for n in lengths]
    types = [r.integers(0, 2, n) for n in lengths]
    cu = cu_seqlens_from_lengths(lengths)
    fused = packed.embeddings(np.concatenate(ids), np.concatenate(types), cu, w, cfg)
    for b in range(len(lengths)):
        expected = forward.embeddings(ids[b][None], types[b][None], w, cfg)[0]
        check_parity(f"embeddings seq {b}", fused[cu[b] : cu[b + 1]], expected, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_attention_matches_padded_masked_attention(dtype):
    """packed.attention (per-sequence, no mask) against forward.attention on the padded batch (additive mask)."""
    r = rng()
    cfg = config("roberta")
    H = cfg.hidden_size

    def dense(n_out, n_in):
        return {"weight": r.normal(0, 0.2, (n_out, n_in)).astype(dtype), "bias": r.normal(0, 0.2, n_out).astype(dtype)}

    w = {
        "self": {name: dense(H, H) for name in ("query", "key", "value")},
        "output": {
            "dense": dense(H, H),
            "LayerNorm": {"weight": r.normal(1, 0.1, H).astype(dtype), "bias": r.normal(0, 0.1, H).astype(dtype)},
        },
    }
    lengths = [7, 1, 12, 3, 12]
    cu = cu_seqlens_from_lengths(lengths)
    x = r.normal(0, 1, (int(cu[-1]), H)).astype(dtype)
    B, T = len(lengths), max(lengths)
    padded = np.full((B, T, H), 7.0, dtype)  # garbage in the padding must not leak into real tokens
    mask = np.zeros((B, T), np.int64)
    for b, n in enumerate(lengths):
        padded[b, :n] = x[cu[b] : cu[b + 1]]
        mask[b, :n] = 1
    expected = forward.attention(padded, forward.attention_mask_bias(mask, dtype), w, cfg)[0][mask.astype(bool)]
    check_parity(f"packed attention {dtype.__name__}", packed.attention(x, cu, w, cfg)[0], expected, TOL[dtype] * 2)


@pytest.mark.parametrize("prompt_length", [0, 2])
@pytest.mark.parametrize("mode", ["mean", "max", "cls", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_pooling_matches_padded(dtype, mode, prompt_length):
    r = rng()
    lengths = [4, 1, 7, 3]
    cu = cu_seqlens_from_lengths(lengths)
    x = r.normal(0, 1, (int(cu[-1]), 8)).astype(dtype)
    B, T = len(lengths), max(lengths)
    padded = np.full((B, T, 8), 123.0, dtype)  # garbage at padded positions must not leak in
    mask = np.zeros((B, T), np.int64)
    for b, n in enumerate(lengths):
        padded[b, :n] = x[cu[b] : cu[b + 1]]
        mask[b, :n] = 1
    ours = pool_packed(x, cu, [mode], prompt_length)
    expected = pooling.pool_padded(padded, mask, [mode], prompt_length)
    check_parity(f"pool {mode} prompt={prompt_length} {dtype.__name__}", ours, expected, TOL[dtype])


def test_hand_worked_mean_pooling():
    # two sequences: [1, 2] and [3, 5, 7] (one feature) -> means 1.5 and 5; max 2 and 7
    x = np.array([[1.0], [2.0], [3.0], [5.0], [7.0]], np.float32)
    cu = np.array([0, 2, 5])
    np.testing.assert_array_equal(
        pool_packed(x, cu, ["mean", "max", "cls", "lasttoken"]), [[1.5, 2, 1, 2], [5, 7, 3, 7]]
    )


def _transformers_positions(input_ids, padding_idx):
    import torch
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    return RobertaEmbeddings.create_position_ids_from_input_ids(torch.tensor(input_ids), padding_idx).numpy()


def test_position_ids_exactly_as_transformers():
    # right padding, a literal pad id inside a sentence (transformers skips it too), pad id 1 (klue) and 0
    for pad in (1, 0):
        ids = np.array([[9, 7, 5, pad, pad], [9, pad, 6, 8, 4], [9, 3, pad, pad, pad]])
        cfg = config("roberta", pad=pad)
        ours = forward.position_ids(ids, cfg)
        np.testing.assert_array_equal(ours, _transformers_positions(ids, pad))
        # first real token at padding_idx + 1
        assert ours[0, 0] == pad + 1
        # the packed layout gives the same numbers on the real tokens
        lengths = [3, 5, 2]
        flat = np.concatenate([ids[b, :n] for b, n in enumerate(lengths)])
        packed_ids = packed.packed_position_ids(flat, cu_seqlens_from_lengths(lengths), cfg)
        np.testing.assert_array_equal(packed_ids, np.concatenate([ours[b, :n] for b, n in enumerate(lengths)]))
    bert = config("bert", pad=0)
    np.testing.assert_array_equal(forward.position_ids(np.ones((2, 4), np.int64), bert), [[0, 1, 2, 3]] * 2)
    np.testing.assert_array_equal(
        packed.packed_position_ids(np.ones(5, np.int64), np.array([0, 2, 5]), bert), [0, 1, 0, 1, 2]
    )


@pytest.mark.parametrize("tokens", [1, packed.SMALL_BATCH_TOKENS - 1, packed.SMALL_BATCH_TOKENS, 300])
def test_matmul_t_both_orientations(tokens):
    r = rng()
    x = r.normal(0, 1, (tokens, 48)).astype(np.float32)
    w = r.normal(0, 1, (80, 48)).astype(np.float32)
    out = packed.matmul_t(x, w)
    assert out.shape == (tokens, 80) and out.flags.c_contiguous
    check_parity(f"matmul_t with {tokens} tokens", out, x.astype(np.float64) @ w.T.astype(np.float64), 2e-5)
