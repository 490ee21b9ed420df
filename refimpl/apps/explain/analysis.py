"""``refimpl explain``, the numbers: what the model does with one sentence (tokens, attention per layer
and head, hidden-state norms and cosines, pooling weights) and which token pairs make two sentences similar.

They come from one forward pass of the model's own engine, the one ``encode`` runs, so the sentence
vector on the page is ``encode``'s (a test checks this). ``figures.py`` draws them, ``page.py`` lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refimpl.engines import pooling as pooling_ops
from refimpl.errors import ModelFileError

MEAN_LIKE = ("mean", "mean_sqrt_len_tokens", "weightedmean")


@dataclass
class SentenceView:
    text: str
    normalized: str  # what the tokenizer's normalizer makes of it (lowercasing shown)
    token_texts: list[str]
    ids: list[int]
    tokens_before_truncation: int
    hidden_states: list  # L + 1 arrays [T, H]
    attentions: list  # L arrays [nh, T, T]
    embedding: np.ndarray  # [D], what encode returns
    pooled: np.ndarray  # [D] before Normalize
    pooling_weights: np.ndarray  # [T]: each token's weight in the (first) pooling mode
    norms: np.ndarray = field(init=False)  # [L + 1, T]
    cosines: np.ndarray = field(init=False)  # [L + 1, T]: each token's cosine to the sentence vector

    def __post_init__(self):
        hidden = np.stack(self.hidden_states)  # [L + 1, T, H]
        self.norms = np.linalg.norm(hidden, axis=-1)
        direction = self.pooled[: hidden.shape[-1]]
        self.cosines = hidden @ direction / np.maximum(self.norms * np.linalg.norm(direction), 1e-12)

    @property
    def contributions(self) -> np.ndarray:
        """[T]: each token's share of the pooled vector, (w_t h_t . p) / |p|^2 (sums to 1 for mean pooling)."""
        last, p = self.hidden_states[-1], self.pooled[: self.hidden_states[-1].shape[-1]]
        return (self.pooling_weights[:, None] * last) @ p / max(float(p @ p), 1e-12)


def pooling_weights(modes, token_states: np.ndarray) -> np.ndarray:
    """[T] weights with which the first pooling mode combines the tokens (max: share of dimensions won)."""
    T = token_states.shape[0]
    mode = modes[0]
    if mode == "mean":
        return np.full(T, 1.0 / T)
    if mode == "mean_sqrt_len_tokens":
        return np.full(T, 1.0 / np.sqrt(T))
    if mode == "weightedmean":
        positions = np.arange(1, T + 1, dtype=np.float64)
        return positions / positions.sum()
    if mode == "cls":
        return np.eye(T)[0]
    if mode == "lasttoken":
        return np.eye(T)[-1]
    return np.bincount(token_states.argmax(axis=0), minlength=T) / token_states.shape[1]  # max


def analyse(model, text: str) -> SentenceView:
    """One sentence through the model: tokens, every layer, every attention, the pooled vector."""
    if model.config.num_hidden_layers == 0:
        raise ModelFileError(
            model.config.path, "num_hidden_layers is 0: the model has no attention, and explain shows it per layer"
        )
    tokenizer = model.text_tokenizer
    features = model.tokenize([text])
    out = model.forward(features, output_hidden_states=True, output_attentions=True)
    hidden = [h[0] for h in out["hidden_states"]]
    attentions = [layer[0] for layer in out["attentions"]]  # [nh, T, T]: one sentence, no padding
    pooled = pooling_ops.pool_padded(out["token_embeddings"], features["attention_mask"], model.pooling_config.modes)[0]
    normalizer = tokenizer.backend.normalizer
    ids = features["input_ids"][0].tolist()
    return SentenceView(
        text=text,
        normalized=normalizer.normalize_str(text) if normalizer is not None else text,
        token_texts=[tokenizer.backend.id_to_token(i) or f"<{i}>" for i in ids],
        ids=ids,
        tokens_before_truncation=model.token_count(text),
        hidden_states=hidden,
        attentions=attentions,
        embedding=out["sentence_embedding"][0],
        pooled=pooled,
        pooling_weights=pooling_weights(model.pooling_config.modes, hidden[-1]),
    )


def pair_contributions(first: SentenceView, second: SentenceView, modes) -> np.ndarray | None:
    """[T1, T2]: token pair (i, j)'s share of the cosine of the two pooled vectors u = sum w_i a_i and
    v = sum w_j b_j: w_i w_j (a_i . b_j) / (|u| |v|); the shares sum to the cosine. None when the
    pooled vector is not such a weighted sum (max pooling, several modes)."""
    if len(modes) != 1 or modes[0] == "max":
        return None
    a, b = first.hidden_states[-1], second.hidden_states[-1]
    u, v = first.pooled, second.pooled
    products = (first.pooling_weights[:, None] * a) @ (second.pooling_weights[:, None] * b).T
    return products / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)
