"""Step 5, fast path: the same encoder on packed tokens, with no padding at all.

The B sentences of a batch are concatenated into N = sum(lengths) tokens;
``cu_seqlens`` ([B + 1], cumulative lengths) says where each begins. The
linear layers are one BLAS product over all N real tokens, the elementwise work
runs in fused numba kernels (``kernels.py``), and attention runs per sequence
on its own length, so no work is spent on padding and no mask is needed. The
result equals ``forward.encoder`` on the real tokens (tests/test_parity.py).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .config import EncoderConfig


def cu_seqlens_from_lengths(lengths) -> np.ndarray:
    """[3, 1, 2] -> [0, 3, 4, 6]: where each sequence starts in the packed tokens."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def packed_position_ids(input_ids, cu_seqlens, config: EncoderConfig) -> np.ndarray:
    """forward.position_ids, per packed sequence (RoBERTa: cumsum(mask) * mask + padding_idx)."""
    lengths = np.diff(cu_seqlens)
    starts = np.repeat(cu_seqlens[:-1], lengths)  # [N]: each token's sequence start
    if config.roberta_positions:
        mask = (input_ids != config.pad_token_id).astype(np.int64)
        counts = np.cumsum(mask)
        before = np.concatenate([[0], counts])[starts]  # real tokens of earlier sequences
        return (counts - before) * mask + config.pad_token_id
    return np.arange(input_ids.shape[0], dtype=np.int64) - starts


def _scalar(value, dtype):
    return np.dtype(dtype).type(value)


def embeddings(input_ids, token_type_ids, cu_seqlens, w, config: EncoderConfig):
    """word + token_type + position embeddings and LayerNorm, fused: [N] ids -> [N, H]."""
    word = w["word_embeddings"]["weight"]
    dtype = word.dtype
    out = np.empty((input_ids.shape[0], config.hidden_size), dtype)
    kernels.embeddings_layer_norm(
        input_ids, token_type_ids, packed_position_ids(input_ids, cu_seqlens, config),
        word, w["token_type_embeddings"]["weight"], w["position_embeddings"]["weight"],
        w["LayerNorm"]["weight"], w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, dtype), _scalar(1.0 / config.hidden_size, dtype), out,
    )
    return out


def matmul_t(x, weight, out=None):
    """x W^T through BLAS on the [out, in] layout; the bias is added by the kernel that follows."""
    return np.matmul(x, weight.T, out=out)  # [N, in] -> [N, out]


def attention(x, cu_seqlens, w, config: EncoderConfig):
    """RobertaAttention on packed tokens: projections, per-sequence attention, dense + residual + LayerNorm."""
    sw = w["self"]
    q = matmul_t(x, sw["query"]["weight"])  # [N, H] -> [N, H]
    k = matmul_t(x, sw["key"]["weight"])
    v = matmul_t(x, sw["value"]["weight"])
    context = np.empty_like(x)
    kernels.attention_packed(
        q, k, v, sw["query"]["bias"], sw["key"]["bias"], sw["value"]["bias"], cu_seqlens,
        config.num_attention_heads, _scalar(config.head_dim ** -0.5, x.dtype), context,
    )
    return dense_residual_layer_norm(context, x, w["output"], config)


def dense_residual_layer_norm(h, residual, w, config: EncoderConfig):
    """LayerNorm(h W^T + b + residual): RobertaSelfOutput / RobertaOutput, the LayerNorm fused with bias and residual."""
    y = matmul_t(h, w["dense"]["weight"])  # [N, in] -> [N, H]
    out = np.empty_like(residual)
    kernels.bias_residual_layer_norm(
        y, w["dense"]["bias"], residual, w["LayerNorm"]["weight"], w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, y.dtype), _scalar(1.0 / config.hidden_size, y.dtype), out,
    )
    return out


def ffn(x, w, config: EncoderConfig):
    """RobertaIntermediate + RobertaOutput: dense, bias + GELU fused, dense + residual + LayerNorm."""
    h = matmul_t(x, w["intermediate"]["dense"]["weight"])  # [N, H] -> [N, I]
    if h.dtype == np.float32:
        kernels.bias_gelu_f32(h, w["intermediate"]["dense"]["bias"])
    else:
        kernels.bias_gelu_exact(h, w["intermediate"]["dense"]["bias"])
    return dense_residual_layer_norm(h, x, w["output"], config)  # [N, I] -> [N, H]


def layer(x, cu_seqlens, w, config: EncoderConfig):
    """RobertaLayer on packed tokens."""
    return ffn(attention(x, cu_seqlens, w["attention"], config), w, config)


def encoder(input_ids, token_type_ids, cu_seqlens, weights, config: EncoderConfig, output_hidden_states=False):
    """The last hidden state of every real token, [N, H], and optionally every layer's."""
    x = embeddings(input_ids, token_type_ids, cu_seqlens, weights["embeddings"], config)
    hidden_states = [x]
    for layer_weights in weights["encoder"]["layer"]:
        x = layer(x, cu_seqlens, layer_weights, config)
        hidden_states.append(x)
    return x, (hidden_states if output_hidden_states else None)
