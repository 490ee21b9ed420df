"""The reference engine's encoder forward pass, written as the equations.

This is the reference engine: a padded batch ``[B, T]`` with an attention mask,
plain NumPy (nothing here imports numba), one short function per concept, each naming the transformers code
it mirrors (``transformers/models/roberta/modeling_roberta.py``; BERT's is the
same but for position ids). The fast engine (``engines/fast/encoder.py``) computes the same
thing without padding and with fused kernels; the tests hold both to the
transformers oracle and to each other.

Shapes: B sentences, T tokens (padded), H hidden size, nh heads of d = H / nh,
I intermediate (FFN) size. Weights are the checkpoint's own sub-dicts, e.g.
``w["query"]["weight"]`` is ``[H, H]`` stored ``[out, in]`` as torch stores it.
"""

from __future__ import annotations

import math

import numpy as np

from refimpl.load.config import EncoderConfig


def linear(x, w):
    """torch.nn.Linear: x W^T + b, with W stored [out, in] (a transposed view, never a copy)."""
    return x @ w["weight"].T + w["bias"]  # [..., in] -> [..., out]


def layer_norm(x, w, eps):
    """torch.nn.LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch uses
    return (x - mean) / np.sqrt(var + eps) * w["weight"] + w["bias"]


# erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)): 22 terms reach float64 rounding on |x| < 1
_ERF_MACLAURIN = tuple((-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(22))
# 1 <= |x| < 6: erfc by its continued fraction, this many terms per band (fewer converge further out)
_ERFC_BANDS = ((1.0, 2.0, 200), (2.0, 6.0, 70))


def _erfc_continued_fraction(x, terms):
    """erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated from the tail."""
    tail = x.copy()
    for k in range(terms, 0, -1):
        tail = x + (k / 2) / tail
    return np.exp(-x * x) / math.sqrt(math.pi) / tail


def erf(x):
    """The error function in plain NumPy, within 2 ulp of libm's erf (tests/test_forward.py).

    A Maclaurin series (Horner form) below |x| = 1, the continued fraction of erfc up to 6,
    and +-1 beyond, where 1 - erfc(6) already rounds to 1 in float64. Computed in float64.
    """
    x = np.asarray(x)
    a = np.abs(x).astype(np.float64)
    out = np.ones_like(a)
    small = a < 1.0
    s = a[small]
    series = np.zeros_like(s)
    for coefficient in _ERF_MACLAURIN[::-1]:
        series = series * (s * s) + coefficient
    out[small] = 2.0 / math.sqrt(math.pi) * s * series
    for low, high, terms in _ERFC_BANDS:
        band = (a >= low) & (a < high)
        out[band] = 1.0 - _erfc_continued_fraction(a[band], terms)
    out[np.isnan(a)] = np.nan
    return np.copysign(out, x).astype(x.dtype, copy=False)


def gelu(x):
    """transformers' ACT2FN["gelu"]: the exact GELU, x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x):
    """Softmax over the last axis, shifted by the row max so exp never overflows."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def position_ids(input_ids, config: EncoderConfig):
    """RobertaEmbeddings.create_position_ids_from_input_ids, or BERT's 0..T-1.

    RoBERTa numbers real tokens from padding_idx + 1 and gives padding
    padding_idx: position = cumsum(mask) * mask + padding_idx, mask = id != pad.
    """
    if config.roberta_positions:
        mask = (input_ids != config.pad_token_id).astype(np.int64)
        return np.cumsum(mask, axis=1) * mask + config.pad_token_id  # [B, T]
    return np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)  # [B, T]


def embeddings(input_ids, token_type_ids, w, config: EncoderConfig):
    """RobertaEmbeddings.forward: word + token_type + position embeddings, then LayerNorm."""
    x = w["word_embeddings"]["weight"][input_ids]  # [B, T] -> [B, T, H]
    x = x + w["token_type_embeddings"]["weight"][token_type_ids]
    x = x + w["position_embeddings"]["weight"][position_ids(input_ids, config)]
    return layer_norm(x, w["LayerNorm"], config.layer_norm_eps)


def attention_mask_bias(attention_mask, dtype):
    """The additive mask transformers builds: 0 for real keys, the dtype's most negative
    finite value for padding (finite, so a row never becomes NaN)."""
    return (1.0 - attention_mask[:, None, None, :].astype(dtype)) * np.finfo(dtype).min  # [B, T] -> [B, 1, 1, T]


def self_attention(x, mask_bias, w, num_heads):
    """RobertaSelfAttention with eager_attention_forward: softmax(Q K^T / sqrt(d) + mask) V per head.

    Returns the context [B, T, H] and the attention probabilities [B, nh, T, T], which
    transformers returns with ``output_attentions=True``."""
    B, T, H = x.shape
    d = H // num_heads

    def split_heads(t):
        return t.reshape(B, T, num_heads, d).transpose(0, 2, 1, 3)  # [B, T, H] -> [B, nh, T, d]

    q, k, v = (split_heads(linear(x, w[name])) for name in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + mask_bias  # [B, nh, T, d] -> [B, nh, T, T]
    probabilities = softmax(scores)
    context = probabilities @ v  # [B, nh, T, T] -> [B, nh, T, d]
    return context.transpose(0, 2, 1, 3).reshape(B, T, H), probabilities  # [B, nh, T, d] -> [B, T, H]


def attention(x, mask_bias, w, config: EncoderConfig):
    """RobertaAttention: self-attention, then RobertaSelfOutput (dense, residual, LayerNorm)."""
    context, probabilities = self_attention(x, mask_bias, w["self"], config.num_attention_heads)
    out = layer_norm(linear(context, w["output"]["dense"]) + x, w["output"]["LayerNorm"], config.layer_norm_eps)
    return out, probabilities


def ffn(x, w, config: EncoderConfig):
    """RobertaIntermediate + RobertaOutput: dense, GELU, dense, residual, LayerNorm."""
    h = gelu(linear(x, w["intermediate"]["dense"]))  # [B, T, H] -> [B, T, I]
    return layer_norm(
        linear(h, w["output"]["dense"]) + x, w["output"]["LayerNorm"], config.layer_norm_eps
    )  # -> [B, T, H]


def layer(x, mask_bias, w, config: EncoderConfig):
    """RobertaLayer (post-LayerNorm): attention block, then feed-forward block; and the attention probabilities."""
    x, probabilities = attention(x, mask_bias, w["attention"], config)
    return ffn(x, w, config), probabilities


def encoder(
    input_ids,
    token_type_ids,
    attention_mask,
    weights,
    config: EncoderConfig,
    output_hidden_states=False,
    output_attentions=False,
):
    """RobertaModel.forward without the pooler: the last hidden state [B, T, H]; with
    ``output_hidden_states`` every layer's (embeddings first, L + 1 arrays), with
    ``output_attentions`` every layer's attention probabilities (L arrays [B, nh, T, T]),
    as transformers returns them. What is not asked for is not kept."""
    dtype = weights["embeddings"]["word_embeddings"]["weight"].dtype
    x = embeddings(input_ids, token_type_ids, weights["embeddings"], config)
    mask_bias = attention_mask_bias(attention_mask, dtype)
    hidden_states = [x] if output_hidden_states else None
    attentions = [] if output_attentions else None
    for layer_weights in weights["encoder"]["layer"]:
        x, probabilities = layer(x, mask_bias, layer_weights, config)
        if output_hidden_states:
            hidden_states.append(x)
        if output_attentions:
            attentions.append(probabilities)
    return x, hidden_states, attentions
