"""refimpl.util: similarity functions and semantic search against sentence_transformers.util."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import util
from tests.helpers import check_parity


def test_util_functions_equal_sentence_transformers():
    from sentence_transformers import util as st_util

    r = np.random.default_rng(0)
    a, b = r.normal(size=(7, 16)).astype(np.float32), r.normal(size=(5, 16)).astype(np.float32)
    for name in ("cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"):
        check_parity(name, getattr(util, name)(a, b), getattr(st_util, name)(a, b).numpy(), 1e-5)
    for name in ("pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"):
        check_parity(
            name, getattr(util, name)(a, a[::-1].copy()), getattr(st_util, name)(a, a[::-1].copy()).numpy(), 1e-5
        )
    assert util.cos_sim(a[0], b).shape == (1, 5)  # a single embedding is a row


@pytest.mark.parametrize("chunks", [(100, 500000), (2, 3)])
def test_semantic_search_equals_sentence_transformers(chunks):
    from sentence_transformers import util as st_util

    r = np.random.default_rng(1)
    queries, corpus = r.normal(size=(5, 16)).astype(np.float32), r.normal(size=(40, 16)).astype(np.float32)
    query_chunk, corpus_chunk = chunks
    for function in (util.cos_sim, util.dot_score):
        ours = util.semantic_search(
            queries,
            corpus,
            top_k=7,
            query_chunk_size=query_chunk,
            corpus_chunk_size=corpus_chunk,
            score_function=function,
        )
        st_function = st_util.cos_sim if function is util.cos_sim else st_util.dot_score
        theirs = st_util.semantic_search(
            queries,
            corpus,
            top_k=7,
            query_chunk_size=query_chunk,
            corpus_chunk_size=corpus_chunk,
            score_function=st_function,
        )
        assert [[h["corpus_id"] for h in q] for q in ours] == [[h["corpus_id"] for h in q] for q in theirs]
        check_parity(
            f"semantic_search {function.__name__}",
            [[h["score"] for h in q] for q in ours],
            [[h["score"] for h in q] for q in theirs],
            1e-5,
        )
    assert len(util.semantic_search(queries, corpus[:3], top_k=10)[0]) == 3
    # positional arguments in sentence-transformers' order: query_chunk_size, corpus_chunk_size, top_k
    assert util.semantic_search(queries, corpus, 2, 7, 4) == util.semantic_search(
        queries, corpus, query_chunk_size=2, corpus_chunk_size=7, top_k=4
    )
