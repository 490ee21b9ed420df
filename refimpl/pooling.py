"""Step 6 of the pipeline: token embeddings -> one sentence embedding.

``pool_padded`` mirrors sentence-transformers' ``Pooling._forward_padded`` on a
padded batch and a mask; ``pool_packed`` computes the same on packed tokens
with numba kernels. Several modes concatenate in the configured order. With a
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
            weights = np.arange(1, token_embeddings.shape[1] + 1, dtype=dtype)[None, :, None] * mask  # position-weighted
            outputs.append((token_embeddings * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), dtype.type(CLAMP)))
        elif mode == "lasttoken":
            last = original.shape[1] - 1 - attention_mask[:, ::-1].argmax(axis=1)
            none = attention_mask.max(axis=1) == 0
            picked = (token_embeddings * mask)[np.arange(len(last)), np.where(none, original.shape[1] - 1, last)]
            outputs.append(picked)
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return np.concatenate(outputs, axis=-1)


def pool_packed(x, cu_seqlens, modes, prompt_length=0):
    """Packed tokens [N, H] with sequence offsets [B + 1] -> [B, len(modes) * H]."""
    from . import kernels  # numba loads on the first forward, not when the model loads

    starts, stops = cu_seqlens[:-1], cu_seqlens[1:]
    lengths = stops - starts
    kept = np.minimum(starts + prompt_length, stops)  # first pooled token of each sequence
    B, H = len(starts), x.shape[1]
    # rows to gather, clipped into range: a sequence with nothing to pool reads row 0, then is zeroed
    rows = np.vstack([x, np.zeros((1, H), x.dtype)])  # a zero row at index N for empty sequences
    outputs = []
    for mode in modes:
        out = np.empty((B, H), x.dtype)
        if mode == "cls":
            # the first token after the prompt; a sentence no longer than its prompt gives its [CLS]
            first = np.where(kept < stops, kept, starts)
            out[:] = rows[np.where(first < stops, first, len(x))]
        elif mode == "lasttoken":
            out[:] = rows[np.where(kept < stops, stops - 1, len(x))]
        elif mode == "max":
            kernels.max_pool_packed(x, kept, stops, out)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            kernels.mean_pool_packed(x, kept, stops, mode == "mean_sqrt_len_tokens", CLAMP, out)
        elif mode == "weightedmean":
            sequence = np.repeat(np.arange(B), lengths)
            positions = np.arange(len(x)) - starts[sequence] + 1  # 1-based position in its sentence
            weights = np.where(positions > (kept - starts)[sequence], positions, 0).astype(x.dtype)
            sums = np.zeros((B, H), x.dtype)
            np.add.at(sums, sequence, x * weights[:, None])
            totals = np.zeros(B, x.dtype)
            np.add.at(totals, sequence, weights)
            out[:] = sums / np.maximum(totals, x.dtype.type(CLAMP))[:, None]
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
        outputs.append(out)
    return np.concatenate(outputs, axis=-1)


def normalize(x, eps=1e-12):
    """torch.nn.functional.normalize(p=2): x / max(||x||, eps), row by row (the Normalize module,
    ``normalize_embeddings=True`` and ``util.normalize_embeddings`` all use this one)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, x.dtype.type(eps))
