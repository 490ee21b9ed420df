"""Parity with transformers and sentence-transformers, layer by layer.

Tolerances (absolute, on values of order 1 after LayerNorm):
- float32: 1e-5 on tiny models and real MiniLM weights, 2e-5 on the 12-layer
  klue-shaped model (float32 rounding grows with depth and width);
- float64: 1e-10 against torch in float64 (both compute the same sums in a
  different order; what remains is float64 rounding).
Each comparison prints its max |difference|; the broken-model tests at the end
show that the same check fails when the implementation is wrong.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import BATCH, KOREAN_SENTENCES, check_parity, max_abs_diff, st_model, torch_hidden_states

MODEL_TYPES = ["bert", "roberta", "xlm-roberta"]
ENGINES = ["fast", "reference"]
# varied lengths so that the batch is padded, one input long enough to be truncated


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_hidden_state_matches_transformers(tiny_model, model_type, engine):
    path = tiny_model(model_type)
    model = SentenceTransformer(path, engine=engine)
    features = model.tokenize(BATCH)
    assert features["attention_mask"].min() == 0, "the batch should be padded"
    ours = model.forward(features, output_hidden_states=True)["hidden_states"]
    theirs = torch_hidden_states(path, features)
    assert len(ours) == len(theirs) == model.config.num_hidden_layers + 1
    # the fast engine computes real tokens only; the reference engine also the padded positions
    real = (
        features["attention_mask"].astype(bool) if engine == "fast" else np.ones_like(features["attention_mask"], bool)
    )
    for i, (a, b) in enumerate(zip(ours, theirs)):
        check_parity(f"{model_type}/{engine} hidden_states[{i}]", a[real], b[real], 1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_float64_matches_torch_float64(tiny_model, model_type, engine):
    path = tiny_model(model_type)
    model = SentenceTransformer(path, dtype="float64", engine=engine)
    features = model.tokenize(BATCH)
    ours = model.forward(features, output_hidden_states=True)["hidden_states"]
    theirs = torch_hidden_states(path, features, dtype="float64")
    real = features["attention_mask"].astype(bool)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == np.float64
        check_parity(f"{model_type}/{engine} float64 hidden_states[{i}]", a[real], b[real], 1e-10)


@pytest.mark.parametrize(
    "options",
    [
        {"pooling_modes": ("mean",)},
        {"pooling_modes": ("cls",), "normalize": True},
        {"pooling_modes": ("max",)},
        {"pooling_modes": ("mean_sqrt_len_tokens",)},
        {"pooling_modes": ("cls", "max", "mean")},
        {"pooling_modes": ("weightedmean",)},
        {"pooling_modes": ("lasttoken",)},
    ],
    ids=lambda o: "+".join(o["pooling_modes"]) + ("+normalize" if o.get("normalize") else ""),
)
@pytest.mark.parametrize("engine", ENGINES)
def test_sentence_embeddings_match_sentence_transformers(tiny_model, options, engine):
    path = tiny_model("roberta", **options)
    ours = SentenceTransformer(path, engine=engine).encode(BATCH)
    theirs = st_model(path).encode(BATCH)
    check_parity(f"encode {options} {engine}", ours, theirs, 1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lowercasing_matches_sentence_transformers(tiny_model, model_type):
    path = tiny_model(model_type, do_lower_case=True)
    texts = ["KLUE RoBERTa 모델", "MIXED case TEXT", "ÀÉÎ ΣΑΣ İstanbul"]
    model = SentenceTransformer(path)
    assert model.tokenizer.encode("ABC").ids == model.tokenizer.encode("abc").ids
    check_parity(f"{model_type} do_lower_case", model.encode(texts), st_model(path).encode(texts), 1e-5)


@pytest.mark.slow
def test_klue_shaped_model_matches_sentence_transformers(klue_model, caplog):
    long_text = " ".join(KOREAN_SENTENCES[:5]) * 12
    texts = KOREAN_SENTENCES + [long_text]
    model = SentenceTransformer(klue_model)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (768, 12, 32000)
    assert model.max_seq_length == 512
    assert len(model.tokenizer.encode(long_text).ids) == 512, "the long input must reach the truncation"
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        ours = model.encode(texts)
    assert "1 of 9 inputs were longer than 512 tokens" in caplog.text
    theirs = st_model(klue_model).encode(texts)
    assert ours.shape == (len(texts), 768) and ours.dtype == np.float32
    check_parity("klue-shaped encode vs sentence-transformers", ours, theirs, 2e-5)


def test_real_minilm_weights_match_sentence_transformers(minilm_dir):
    texts = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome", "", "😀 emoji only"]
    model = SentenceTransformer(minilm_dir)
    assert model.normalize, "all-MiniLM-L6-v2 has a Normalize module"
    ours = model.encode(texts)
    check_parity("all-MiniLM-L6-v2 encode", ours, st_model(minilm_dir).encode(texts), 1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_token_embeddings_match_sentence_transformers(tiny_model):
    path = tiny_model("roberta")
    ours = SentenceTransformer(path).encode(BATCH, output_value="token_embeddings")
    theirs = st_model(path).encode(BATCH, output_value="token_embeddings")
    assert [o.shape for o in ours] == [tuple(t.shape) for t in theirs]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        check_parity(f"token_embeddings[{i}]", a, b.numpy(), 1e-5)


# --- the check can fail: deliberately broken implementations ------------------------------


def _broken_bias(model):
    layer = model.weights["encoder"]["layer"][1]
    layer["attention"]["output"]["dense"]["bias"] = np.zeros_like(layer["attention"]["output"]["dense"]["bias"])


def _broken_positions(model):
    model.config = dataclasses.replace(model.config, model_type="bert")  # positions 0..T-1, not padding_idx + 1..


@pytest.mark.parametrize("breakage", [_broken_bias, _broken_positions], ids=["bias-dropped", "positions-not-offset"])
@pytest.mark.parametrize("engine", ENGINES)
def test_broken_model_fails_the_parity_check(tiny_model, breakage, engine):
    path = tiny_model("roberta")
    model = SentenceTransformer(path, engine=engine)
    theirs = st_model(path).encode(BATCH)
    check_parity("unbroken", model.encode(BATCH), theirs, 1e-5)
    breakage(model)
    broken = model.encode(BATCH)
    print(f"broken ({breakage.__name__}): max |diff| = {max_abs_diff(broken, theirs):.3e}")
    with pytest.raises(AssertionError):
        check_parity(f"broken {breakage.__name__}", broken, theirs, 1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_layer_norm_eps_fails_the_float64_check(tiny_model, engine):
    """BERT's eps (1e-12) on a RoBERTa model (1e-5) moves embeddings by only ~1e-5, the size of
    float32 noise, so this bug is caught in float64 mode, where the tolerance is 1e-10."""
    path = tiny_model("roberta")
    model = SentenceTransformer(path, dtype="float64", engine=engine)
    features = model.tokenize(BATCH)
    real = features["attention_mask"].astype(bool)
    theirs = torch_hidden_states(path, features, dtype="float64")[-1][real]
    check_parity("unbroken float64", model.forward(features)["token_embeddings"][real], theirs, 1e-10)
    model.config = dataclasses.replace(model.config, layer_norm_eps=1e-12)
    broken = model.forward(features)["token_embeddings"][real]
    print(f"broken (eps 1e-12): max |diff| = {max_abs_diff(broken, theirs):.3e}")
    with pytest.raises(AssertionError):
        check_parity("broken eps float64", broken, theirs, 1e-10)
