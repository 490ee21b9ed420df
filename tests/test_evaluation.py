"""STS evaluation: the correlation formulas against scipy, the whole evaluation against
sentence-transformers' EmbeddingSimilarityEvaluator on real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.evaluation import average_ranks, evaluate_sts, load_sts, pearson, spearman
from tests.helpers import st_model


def test_correlations_equal_scipy():
    from scipy.stats import pearsonr, rankdata, spearmanr

    r = np.random.default_rng(2)
    x = np.round(r.uniform(0, 5, 200), 1)  # many ties, like KLUE labels
    y = x + r.normal(0, 1, 200)
    assert abs(pearson(x, y) - pearsonr(x, y)[0]) < 1e-12
    assert abs(spearman(x, y) - spearmanr(x, y)[0]) < 1e-12
    np.testing.assert_array_equal(average_ranks(x), rankdata(x))
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]  # by hand


@pytest.mark.parametrize("label_key", ["label", "real-label"])
def test_eval_sts_matches_the_sentence_transformers_evaluator(minilm_dir, sts_files, label_key):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    folder, pairs = sts_files
    klue = json.loads((folder / "klue-sts.json").read_text(encoding="utf-8"))
    evaluator = EmbeddingSimilarityEvaluator(
        [p["sentence1"] for p in klue],
        [p["sentence2"] for p in klue],
        [p["labels"][label_key] for p in klue],
        batch_size=16,
        similarity_fn_names=["cosine", "euclidean", "manhattan", "dot"],
    )
    theirs = evaluator(st_model(minilm_dir))
    ours = evaluate_sts(SentenceTransformer(minilm_dir), *load_sts(folder / "klue-sts.json", label_key=label_key))
    # the premise that makes 1e-6 hold on any CPU: no two predicted scores closer than float noise
    cosines = np.sort(
        st_model(minilm_dir)
        .similarity_pairwise(
            st_model(minilm_dir).encode([a for a, _, _ in pairs]), st_model(minilm_dir).encode([b for _, b, _ in pairs])
        )
        .numpy()
    )
    print(f"smallest gap between predicted cosines: {np.diff(cosines).min():.1e}")
    assert np.diff(cosines).min() > 1e-5
    assert sorted(ours) == sorted(
        f"{s}_{m}" for s in ("cosine", "euclidean", "manhattan", "dot") for m in ("pearson", "spearman")
    )
    worst = max(abs(value - theirs[f"{key.split('_')[1]}_{key.split('_')[0]}"]) for key, value in ours.items())
    print(ours, f"max |diff| vs the evaluator: {worst:.1e}")
    assert worst < 1e-6
