"""Attention probabilities from both engines against transformers' ``output_attentions=True``
(eager attention), per layer, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import BATCH, check_parity, hf_model

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def torch_attentions(path, features, dtype):
    import torch

    model = hf_model(path, "float64" if dtype == "float64" else None)
    with torch.no_grad():
        out = model(
            **{key: torch.tensor(features[key]) for key in ("input_ids", "attention_mask", "token_type_ids")},
            output_attentions=True,
        )
    return [a.numpy() for a in out.attentions]


def check_attentions(name, path, model, dtype, tolerance):
    features = model.tokenize(BATCH)
    assert features["attention_mask"].min() == 0, "the batch should be padded"
    theirs = torch_attentions(path, features, dtype)
    out = model.forward(features, output_attentions=True)
    ours = out["attentions"]
    lengths = features["attention_mask"].sum(axis=1)
    assert len(ours) == len(theirs) == model.config.num_hidden_layers
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape and a.dtype == np.dtype(dtype)  # [B, nh, T, T] from both engines
        if model.engine == "reference":  # padding included, as transformers returns it
            check_parity(f"{name} reference {dtype} attentions[{i}]", a, b, tolerance)
        else:  # transformers' real rows and columns (its padded columns are exactly 0); zeros at padding
            for s, n in enumerate(lengths):
                check_parity(f"{name} fast {dtype} attentions[{i}][{s}]", a[s, :, :n, :n], b[s, :, :n, :n], tolerance)
                assert (b[s, :, :n, n:] == 0).all() and not a[s, :, n:].any() and not a[s, :, :, n:].any()
    return ours


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_attentions_match_transformers(tiny_model, model_type, engine, dtype):
    path = tiny_model(model_type)
    check_attentions(model_type, path, SentenceTransformer(path, engine=engine, dtype=dtype), dtype, TOLERANCE[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_klue_shaped_attentions_match_transformers(klue_model, engine):
    check_attentions("klue-shaped", klue_model, SentenceTransformer(klue_model, engine=engine), "float32", 1e-5)


def test_rows_are_probabilities_and_engines_agree(model):
    features = model.tokenize(BATCH)
    reference = model.forward(features, output_attentions=True, engine="reference")["attentions"]
    fast = model.forward(features, output_attentions=True, engine="fast")["attentions"]
    for layer_ref, layer_fast in zip(reference, fast):
        np.testing.assert_allclose(layer_ref.sum(axis=-1), 1, atol=1e-5)
        assert layer_fast.shape == layer_ref.shape  # [B, nh, T, T] from both, as transformers gives them
        for s, n in enumerate(features["attention_mask"].sum(axis=1)):
            check_parity("reference vs fast", layer_ref[s, :, :n, :n], layer_fast[s, :, :n, :n], 1e-5)
            assert not layer_fast[s, :, n:].any() and not layer_fast[s, :, :, n:].any()  # the fast engine skips padding


def test_attentions_are_kept_only_when_asked(model):
    from refimpl.engines.fast import encoder as packed
    from refimpl.engines.reference import forward

    features = model.tokenize(BATCH)
    assert "attentions" not in model.forward(features)
    assert "attentions" not in model.forward(features, engine="reference")
    batch = model.text_tokenizer.encode(BATCH)
    assert (
        packed.encoder(batch.input_ids, batch.token_type_ids, batch.cu_seqlens, model.weights, model.config)[2] is None
    )
    padded = batch.padded(1)
    assert (
        forward.encoder(
            padded["input_ids"], padded["token_type_ids"], padded["attention_mask"], model.weights, model.config
        )[2]
        is None
    )


def test_a_broken_attention_fails_the_check(tiny_model):
    path = tiny_model("roberta")
    model = SentenceTransformer(path, engine="reference", dtype="float64")
    bias = model.weights["encoder"]["layer"][1]["attention"]["self"]["query"]["bias"]
    model.weights["encoder"]["layer"][1]["attention"]["self"]["query"]["bias"] = np.zeros_like(bias)
    with pytest.raises(AssertionError):
        check_attentions("broken query bias", path, model, "float64", 1e-10)


def test_sequence_attentions_are_the_same_from_both_engines(model):
    batch = model.text_tokenizer.encode(BATCH)
    reference = (
        model.pipeline.transformer.engine("reference").encode(batch, output_attentions=True).sequence_attentions()
    )
    fast = model.pipeline.transformer.engine("fast").encode(batch, output_attentions=True).sequence_attentions()
    assert len(reference) == len(fast) == model.config.num_hidden_layers
    for layer_ref, layer_fast in zip(reference, fast):
        assert [a.shape for a in layer_ref] == [a.shape for a in layer_fast]
        for a, b in zip(layer_ref, layer_fast):
            check_parity("sequence_attentions", a, b, 1e-5)
