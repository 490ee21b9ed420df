"""Similarity functions and semantic search, in NumPy, with sentence-transformers' semantics
(``sentence_transformers.util``): the same names, arguments and results, as arrays.

- ``cos_sim``, ``dot_score``, ``euclidean_sim``, ``manhattan_sim``: [N, D] x [M, D] -> [N, M];
  euclidean and manhattan are *negative* distances, so that larger is more similar.
- ``pairwise_*``: [N, D] x [N, D] -> [N], row i against row i.
- ``semantic_search``: the top_k corpus entries of each query, ``[[{"corpus_id", "score"}]]``.

A 1-D input is one embedding. Scores are computed in the inputs' float dtype.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from refimpl.checks import positive_int
from refimpl.engines.pooling import normalize
from refimpl.load.config import SIMILARITY_FUNCTIONS
from refimpl.quantization import quantize_embeddings  # noqa: F401  (sentence-transformers has it in util too)

# euclidean_sim and manhattan_sim broadcast [rows, M, D]; this many elements per chunk keeps it near 256 MB
_CHUNK_ELEMENTS = 64 * 1024 * 1024


def _as_matrix(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"embeddings must be numeric, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D] or [D], got shape {x.shape}")
    return x


def _pair(a, b):
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dimensions differ: {a.shape[1]} and {b.shape[1]}")
    dtype = np.result_type(a.dtype, b.dtype)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _same_rows(a, b):
    a, b = _pair(a, b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"pairwise scores need as many rows on both sides, got {a.shape[0]} and {b.shape[0]}")
    return a, b


def normalize_embeddings(x) -> np.ndarray:
    """Each row scaled to unit length (torch.nn.functional.normalize: divide by max(norm, 1e-12))."""
    return normalize(_as_matrix(x))


def cos_sim(a, b) -> np.ndarray:
    """[N, M] cosine similarities."""
    a, b = _pair(a, b)
    return normalize_embeddings(a) @ normalize_embeddings(b).T


def dot_score(a, b) -> np.ndarray:
    """[N, M] dot products."""
    a, b = _pair(a, b)
    return a @ b.T


def _distances(a, b, reduce):
    """[N, M] reduce(a_i - b_j) over the last axis, in row chunks so memory stays bounded."""
    a, b = _pair(a, b)
    out = np.empty((a.shape[0], b.shape[0]), a.dtype)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0] * b.shape[1]))
    for start in range(0, a.shape[0], rows):
        out[start : start + rows] = reduce(a[start : start + rows, None, :] - b[None, :, :])
    return out


def euclidean_sim(a, b) -> np.ndarray:
    """[N, M] negative euclidean distances, from the differences themselves: the shortcut
    |a|^2 - 2ab + |b|^2 cancels catastrophically for nearby embeddings."""
    return -_distances(a, b, lambda d: np.sqrt((d * d).sum(axis=2)))


def manhattan_sim(a, b) -> np.ndarray:
    """[N, M] negative manhattan (L1) distances."""
    return -_distances(a, b, lambda d: np.abs(d).sum(axis=2))


def pairwise_cos_sim(a, b) -> np.ndarray:
    a, b = _same_rows(a, b)
    return (normalize_embeddings(a) * normalize_embeddings(b)).sum(axis=1)


def pairwise_dot_score(a, b) -> np.ndarray:
    a, b = _same_rows(a, b)
    return (a * b).sum(axis=1)


def pairwise_euclidean_sim(a, b) -> np.ndarray:
    a, b = _same_rows(a, b)
    return -np.linalg.norm(a - b, axis=1)


def pairwise_manhattan_sim(a, b) -> np.ndarray:
    a, b = _same_rows(a, b)
    return -np.abs(a - b).sum(axis=1)


# In the order of SIMILARITY_FUNCTIONS (the names config_sentence_transformers.json may hold).
SIMILARITY = dict(zip(SIMILARITY_FUNCTIONS, (cos_sim, euclidean_sim, manhattan_sim, dot_score)))
PAIRWISE_SIMILARITY = dict(
    zip(SIMILARITY_FUNCTIONS, (pairwise_cos_sim, pairwise_euclidean_sim, pairwise_manhattan_sim, pairwise_dot_score))
)


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable = cos_sim,
) -> list[list[dict]]:
    """For each query, the ``top_k`` most similar corpus entries, best first:
    ``[[{"corpus_id": int, "score": float}, ...], ...]``. The corpus is scanned in chunks
    of ``corpus_chunk_size`` and queries in chunks of ``query_chunk_size``, so memory stays
    bounded for large corpora, as in sentence-transformers."""
    top_k = positive_int("top_k", top_k)
    query_chunk_size = positive_int("query_chunk_size", query_chunk_size)
    corpus_chunk_size = positive_int("corpus_chunk_size", corpus_chunk_size)
    queries, corpus = _pair(query_embeddings, corpus_embeddings)
    results: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    for corpus_start in range(0, len(corpus), corpus_chunk_size):
        chunk = corpus[corpus_start : corpus_start + corpus_chunk_size]
        if score_function is cos_sim:  # normalise each corpus chunk once, not once per query chunk
            chunk, function = normalize_embeddings(chunk), lambda q, c: normalize_embeddings(q) @ c.T
        else:
            function = score_function
        for query_start in range(0, len(queries), query_chunk_size):
            scores = np.asarray(function(queries[query_start : query_start + query_chunk_size], chunk))
            k = min(top_k, scores.shape[1])
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, candidates in enumerate(best):
                heap = results[query_start + row]
                for corpus_id in candidates:
                    item = (float(scores[row, corpus_id]), int(corpus_id) + corpus_start)
                    if len(heap) < top_k:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heappushpop(heap, item)
    return [
        [
            {"corpus_id": corpus_id, "score": score}
            for score, corpus_id in sorted(heap, key=lambda item: item[0], reverse=True)
        ]
        for heap in results
    ]
