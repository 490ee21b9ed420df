"""The fast engine's encoder: the same forward pass on packed tokens, with no padding at all.

The B sentences of a batch are concatenated into N = sum(lengths) tokens;
``cu_seqlens`` ([B + 1], cumulative lengths) says where each begins. The
linear layers are one BLAS product over all N real tokens, the elementwise work
runs in fused numba kernels (``kernels.py`` beside this file), and attention runs per sequence
on its own length, so no work is spent on padding and no mask is needed. The
result equals ``forward.encoder`` on the real tokens (tests/test_parity.py).
"""

from __future__ import annotations

import numpy as np

from refimpl.engines.fast import kernels
from refimpl.load.config import EncoderConfig


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
        input_ids,
        token_type_ids,
        packed_position_ids(input_ids, cu_seqlens, config),
        word,
        w["token_type_embeddings"]["weight"],
        w["position_embeddings"]["weight"],
        w["LayerNorm"]["weight"],
        w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, dtype),
        _scalar(1.0 / config.hidden_size, dtype),
        out,
    )
    return out


# Below this many tokens, OpenBLAS is faster computing (W x^T)^T than x W^T: it repacks the
# weight on every call, and the transposed problem packs it better (docs/performance.md has
# the measurement). Batch-1 latency lives here.
SMALL_BATCH_TOKENS = 96


def matmul_t(x, weight):
    """x W^T through BLAS on the [out, in] layout (no transposed copy of W); the bias is
    added by the kernel that follows."""
    if x.shape[0] < SMALL_BATCH_TOKENS:
        return np.matmul(weight, x.T).T.copy()  # [out, in] x [in, N] -> [out, N] -> [N, out]
    return np.matmul(x, weight.T)  # [N, in] -> [N, out]


def sequence_attention(q, k, v, start, stop, num_heads, scale, out):
    """softmax(Q K^T * scale) V for one sequence, all heads at once: [L, H] -> [L, H].

    The products go through BLAS on head views of the packed rows (no copies); the
    softmax is one fused kernel. No mask: the sequence attends only to itself.
    Returns the attention probabilities [nh, L, L].
    """
    length, H = stop - start, q.shape[1]
    d = H // num_heads
    qh = q[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)  # [L, H] -> [nh, L, d]
    kh = k[start:stop].reshape(length, num_heads, d).transpose(1, 2, 0)  # [L, H] -> [nh, d, L]
    vh = v[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)  # [L, H] -> [nh, L, d]
    scores = np.matmul(qh, kh)  # [nh, L, L]
    kernels.softmax_rows(scores, scale)
    out[start:stop].reshape(length, num_heads, d).transpose(1, 0, 2)[...] = np.matmul(scores, vh)  # -> [L, H]
    return scores


def attention(x, cu_seqlens, w, config: EncoderConfig, keep_probabilities=False):
    """RobertaAttention on packed tokens: projections, per-sequence attention, dense + residual + LayerNorm;
    with ``keep_probabilities`` also each sequence's attention probabilities [nh, L, L]."""
    sw = w["self"]
    q = matmul_t(x, sw["query"]["weight"])  # [N, H] -> [N, H]
    k = matmul_t(x, sw["key"]["weight"])
    v = matmul_t(x, sw["value"]["weight"])
    q += sw["query"]["bias"]
    k += sw["key"]["bias"]
    v += sw["value"]["bias"]
    context = np.empty_like(x)
    scale = _scalar(config.head_dim**-0.5, x.dtype)
    kept = [] if keep_probabilities else None
    for start, stop in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if stop > start:
            probabilities = sequence_attention(q, k, v, start, stop, config.num_attention_heads, scale, context)
        else:
            probabilities = np.empty((config.num_attention_heads, 0, 0), x.dtype)
        if keep_probabilities:
            kept.append(probabilities)
    return dense_residual_layer_norm(context, x, w["output"], config), kept


def dense_residual_layer_norm(h, residual, w, config: EncoderConfig):
    """LayerNorm(h W^T + b + residual): RobertaSelfOutput / RobertaOutput, LayerNorm fused with bias and residual."""
    y = matmul_t(h, w["dense"]["weight"])  # [N, in] -> [N, H]
    out = np.empty_like(residual)
    kernels.bias_residual_layer_norm(
        y,
        w["dense"]["bias"],
        residual,
        w["LayerNorm"]["weight"],
        w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, y.dtype),
        _scalar(1.0 / config.hidden_size, y.dtype),
        out,
    )
    return out


def ffn(x, w, config: EncoderConfig):
    """RobertaIntermediate + RobertaOutput: dense, bias + GELU fused, dense + residual + LayerNorm."""
    h = matmul_t(x, w["intermediate"]["dense"]["weight"])  # [N, H] -> [N, I]
    kernels.bias_gelu(h, w["intermediate"]["dense"]["bias"])
    return dense_residual_layer_norm(h, x, w["output"], config)  # [N, I] -> [N, H]


def layer(x, cu_seqlens, w, config: EncoderConfig, keep_probabilities=False):
    """RobertaLayer on packed tokens (and, when asked, its attention probabilities per sequence)."""
    x, probabilities = attention(x, cu_seqlens, w["attention"], config, keep_probabilities)
    return ffn(x, w, config), probabilities


def encoder(
    input_ids,
    token_type_ids,
    cu_seqlens,
    weights,
    config: EncoderConfig,
    output_hidden_states=False,
    output_attentions=False,
):
    """The last hidden state of every real token, [N, H]; optionally every layer's, and every
    layer's attention probabilities as one [nh, L, L] array per sequence (no padding)."""
    x = embeddings(input_ids, token_type_ids, cu_seqlens, weights["embeddings"], config)
    hidden_states = [x] if output_hidden_states else None  # kept only when asked: 13 x [N, H]
    attentions = [] if output_attentions else None
    for layer_weights in weights["encoder"]["layer"]:
        x, probabilities = layer(x, cu_seqlens, layer_weights, config, output_attentions)
        if output_hidden_states:
            hidden_states.append(x)
        if output_attentions:
            attentions.append(probabilities)
    return x, hidden_states, attentions
