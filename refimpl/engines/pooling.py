"""Pooling: token embeddings -> one sentence embedding, shared by the engines.

``pool_padded`` mirrors sentence-transformers' ``Pooling._forward_padded`` on a
padded batch and a mask, in plain NumPy; ``engines.fast.pooling.pool_packed``
computes the same on packed tokens with numba kernels. Several modes concatenate in the configured order. With a
prompt and ``include_prompt=False``, the first ``prompt_length`` tokens
(the [CLS] and the prompt) are left out, as sentence-transformers does.
"""

from __future__ import annotations

import numpy as np

CLAMP = 1e-9  # sentence-transformers clamps the token count before dividing


def _prompt_free_mask(attention_mask, prompt_length):
    mask = attention_mask.copy()
    mask[:, :prompt_length] = 0  # right padding: every row starts with its [CLS] and prompt
    return mask


def pool_padded(token_embeddings, attention_mask, modes, prompt_length=0):
    """[B, T, H] and a [B, T] mask -> [B, len(modes) * H], plain NumPy."""
    original = attention_mask
    if prompt_length:
        attention_mask = _prompt_free_mask(attention_mask, prompt_length)
    dtype = token_embeddings.dtype
    mask = attention_mask[:, :, None].astype(dtype)  # [B, T] -> [B, T, 1]
    outputs = []
    for mode in modes:
        if mode == "cls":
            first = attention_mask.argmax(axis=1)  # first unmasked token ([CLS], or the first after the prompt)
            outputs.append(token_embeddings[np.arange(len(first)), first])
        elif mode == "max":
            outputs.append(np.where(mask > 0, token_embeddings, -np.inf).max(axis=1).astype(dtype))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (token_embeddings * mask).sum(axis=1)  # [B, T, H] -> [B, H]
            count = np.maximum(mask.sum(axis=1), dtype.type(CLAMP))  # [B, 1]
            outputs.append(total / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            weights = (
                np.arange(1, token_embeddings.shape[1] + 1, dtype=dtype)[None, :, None] * mask
            )  # position-weighted
            outputs.append(
                (token_embeddings * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), dtype.type(CLAMP))
            )
        elif mode == "lasttoken":
            last = original.shape[1] - 1 - attention_mask[:, ::-1].argmax(axis=1)
            none = attention_mask.max(axis=1) == 0
            picked = (token_embeddings * mask)[np.arange(len(last)), np.where(none, original.shape[1] - 1, last)]
            outputs.append(picked)
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return np.concatenate(outputs, axis=-1)


def normalize(x, eps=1e-12):
    """torch.nn.functional.normalize(p=2): x / max(||x||, eps), row by row (the Normalize module,
    ``normalize_embeddings=True`` and ``util.normalize_embeddings`` all use this one)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, x.dtype.type(eps))
