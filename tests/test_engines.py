"""The engine interface: both engines behind one protocol, unknown names refused, forward checked like encode."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.engines import ENGINES, engine_class
from refimpl.engines.fast import MAX_TOKENS_PER_FORWARD, FastEngine
from refimpl.engines.reference import ReferenceEngine
from tests.helpers import TEXTS, check_parity


def test_registered_engines():
    assert {name: engine_class(name) for name in ENGINES} == {"fast": FastEngine, "reference": ReferenceEngine}
    assert all(engine_class(name).name == name for name in ENGINES)  # the registry's name is the engine's folder
    for name in ("bogus", "", None, "FAST"):
        with pytest.raises(ValueError, match="engine must be one of"):
            engine_class(name)


@pytest.mark.parametrize("engine", ["bogus", "cuda"])
def test_unknown_engine_is_an_error_everywhere(model, tiny_model, engine):
    with pytest.raises(ValueError, match="engine must be one of"):
        model.forward(model.tokenize(TEXTS), engine=engine)
    with pytest.raises(ValueError, match="engine must be one of"):
        SentenceTransformer(tiny_model("roberta"), engine=engine)


@pytest.mark.parametrize("name", ["fast", "reference"])
def test_each_engine_implements_the_interface(model, name):
    engine = model.pipeline.transformer.engine(name)
    assert (
        all(callable(getattr(engine, m, None)) for m in ("plan", "encode", "encode_padded", "describe"))
        and engine.name == name
    )
    batch = model.text_tokenizer.encode(TEXTS)
    states = engine.encode(batch)
    sequences = states.sequences()
    assert [s.shape[0] for s in sequences] == batch.lengths.tolist()
    assert states.padded().shape == (len(TEXTS), batch.lengths.max(), model.config.hidden_size)
    assert states.pool(("mean",)).shape == (len(TEXTS), model.config.hidden_size)
    other = model.pipeline.transformer.engine("reference" if name == "fast" else "fast").encode(batch)
    check_parity(f"{name} pooled vs the other engine", states.pool(("mean", "max")), other.pool(("mean", "max")), 1e-5)


def test_plans():
    budget = MAX_TOKENS_PER_FORWARD
    lengths = np.array([budget * 9 // 20, budget * 8 // 20, budget * 7 // 20, 10, 5])
    reference, fast = ReferenceEngine.plan(None, lengths, 2), FastEngine.plan(None, lengths, 2)
    assert reference == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert fast == [slice(0, 2), slice(2, 5)]  # packs of at most MAX_TOKENS_PER_FORWARD tokens
    assert all(lengths[s].sum() <= budget for s in fast)
    longer = np.array([budget + 1, 3, 2])
    assert FastEngine.plan(None, longer, 2) == [slice(0, 1), slice(1, 3)]  # a longer sentence goes alone


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_forward_refuses_non_finite_results_like_encode(tiny_model, engine):
    model = SentenceTransformer(tiny_model("roberta"), engine=engine)
    model.weights["encoder"]["layer"][0]["output"]["dense"]["bias"] = np.full_like(
        model.weights["encoder"]["layer"][0]["output"]["dense"]["bias"], np.nan
    )
    with pytest.raises(FloatingPointError, match="NaN"):
        model.encode(TEXTS)
    with pytest.raises(FloatingPointError, match="NaN"):
        model.forward(model.tokenize(TEXTS))
