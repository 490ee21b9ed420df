"""Step 5 of the pipeline: the encoder forward pass, written as the equations.

This is the reference path: a padded batch ``[B, T]`` with an attention mask,
plain NumPy, one short function per concept, each naming the transformers code
it mirrors (``transformers/models/roberta/modeling_roberta.py``; BERT's is the
same but for position ids). The fast path in ``packed.py`` computes the same
thing without padding and with fused kernels; the tests hold both to the
transformers oracle and to each other.

Shapes: B sentences, T tokens (padded), H hidden size, nh heads of d = H / nh,
I intermediate (FFN) size. Weights are the checkpoint's own sub-dicts, e.g.
``w["query"]["weight"]`` is ``[H, H]`` stored ``[out, in]`` as torch stores it.
"""

from __future__ import annotations

import math

import numpy as np

from .config import EncoderConfig


def linear(x, w):
    """torch.nn.Linear: x W^T + b, with W stored [out, in] (a transposed view, never a copy)."""
    return x @ w["weight"].T + w["bias"]  # [..., in] -> [..., out]


def layer_norm(x, w, eps):
    """torch.nn.LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch uses
    return (x - mean) / np.sqrt(var + eps) * w["weight"] + w["bias"]


def erf(x):
    """The error function, elementwise (NumPy has none; this calls libm's erf per element)."""
    from .kernels import erf_exact

    out = np.empty_like(x)
    erf_exact(np.ascontiguousarray(x), out)
    return out


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
    """RobertaSelfAttention with eager_attention_forward: softmax(Q K^T / sqrt(d) + mask) V per head."""
    B, T, H = x.shape
    d = H // num_heads

    def split_heads(t):
        return t.reshape(B, T, num_heads, d).transpose(0, 2, 1, 3)  # [B, T, H] -> [B, nh, T, d]

    q, k, v = (split_heads(linear(x, w[name])) for name in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + mask_bias  # [B, nh, T, d] -> [B, nh, T, T]
    context = softmax(scores) @ v  # [B, nh, T, T] -> [B, nh, T, d]
    return context.transpose(0, 2, 1, 3).reshape(B, T, H)  # [B, nh, T, d] -> [B, T, H]


def attention(x, mask_bias, w, config: EncoderConfig):
    """RobertaAttention: self-attention, then RobertaSelfOutput (dense, residual, LayerNorm)."""
    context = self_attention(x, mask_bias, w["self"], config.num_attention_heads)
    return layer_norm(linear(context, w["output"]["dense"]) + x, w["output"]["LayerNorm"], config.layer_norm_eps)


def ffn(x, w, config: EncoderConfig):
    """RobertaIntermediate + RobertaOutput: dense, GELU, dense, residual, LayerNorm."""
    h = gelu(linear(x, w["intermediate"]["dense"]))  # [B, T, H] -> [B, T, I]
    return layer_norm(linear(h, w["output"]["dense"]) + x, w["output"]["LayerNorm"], config.layer_norm_eps)  # -> [B, T, H]


def layer(x, mask_bias, w, config: EncoderConfig):
    """RobertaLayer (post-LayerNorm): attention block, then feed-forward block."""
    return ffn(attention(x, mask_bias, w["attention"], config), w, config)


def encoder(input_ids, attention_mask, token_type_ids, weights, config: EncoderConfig, output_hidden_states=False):
    """RobertaModel.forward without the pooler: the last hidden state [B, T, H], and with
    ``output_hidden_states`` every layer's (embeddings first, L + 1 arrays), as transformers returns them."""
    dtype = weights["embeddings"]["word_embeddings"]["weight"].dtype
    x = embeddings(input_ids, token_type_ids, weights["embeddings"], config)
    mask_bias = attention_mask_bias(attention_mask, dtype)
    hidden_states = [x] if output_hidden_states else None
    for layer_weights in weights["encoder"]["layer"]:
        x = layer(x, mask_bias, layer_weights, config)
        if output_hidden_states:
            hidden_states.append(x)
    return x, hidden_states
