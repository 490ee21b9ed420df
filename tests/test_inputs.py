"""What encode accepts and what it refuses, and properties that must hold for any text.

Strings of any content are embedded exactly as sentence-transformers embeds them; anything that is
not a string is refused with a TypeError naming its position and type; text that is not valid
Unicode (a lone surrogate) is refused with a ValueError naming its position. docs/reliability.md
lists every case. Property tests run 200 examples each in CI; set REFIMPL_HYPOTHESIS=thorough
(or pass --hypothesis-profile=thorough) for 5,000.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl import SentenceTransformer
from tests.helpers import check_parity, max_abs_diff, st_model

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "thorough", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("REFIMPL_HYPOTHESIS", "ci"))

STRINGS = {
    "empty": "",
    "only whitespace": " \t\n\u3000\u00a0 ",
    "control characters": "제어\x00문자\x07와\x1b[31m 색\x7f",
    "zero-width": "제\u200b로\u200c폭\u200d\ufeff문자",
    "combining": "e\u0301 a\u0308 한\u0300글 n\u0303",
    "decomposed hangul": "\u1112\u1161\u11ab\u1100\u1173\u11af",  # 한글 as conjoining jamo
    "emoji": "😀👍🏽👨‍👩‍👧‍👦🇰🇷",
    "mixed scripts": "한국어 English 日本語 العربية русский 123",
    "special token text": "[CLS] [SEP] [PAD] [MASK] [UNK] <s> </s>",
    "100,000 characters": "가나다라마바사 " * 12_500,
}


@pytest.mark.parametrize("name", list(STRINGS))
def test_any_string_is_embedded_as_sentence_transformers_embeds_it(model, path, name):
    text = STRINGS[name]
    ours = model.encode([text, "보통 문장"])
    assert np.isfinite(ours).all()
    check_parity(f"{name!r}", ours, st_model(path).encode([text, "보통 문장"]), 1e-5)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (None, TypeError, "got None"),
        (3, TypeError, "got int"),
        (3.5, TypeError, "got float"),
        (b"bytes", TypeError, "decode bytes"),
        ({"a": "b"}, TypeError, "got dict"),
        ([["nested", "list"]], TypeError, r"sentences\[0\] is a list; nested"),
        (["ok", None, "ok"], TypeError, r"sentences\[1\] is None"),
        (["ok", 7], TypeError, r"sentences\[1\] is int"),
        (["ok", b"x"], TypeError, r"sentences\[1\] is bytes"),
        (np.array([["a", "b"]]), TypeError, "one-dimensional"),
        (["ok", "bad \ud800 surrogate"], ValueError, r"sentences\[1\] is not valid Unicode: '\\ud800' at position 4"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_refused_inputs_name_the_problem(model, value, error, message):
    with pytest.raises(error, match=message):
        model.encode(value)


def test_accepted_containers(model):
    expected = model.encode(["하나", "둘"])
    np.testing.assert_array_equal(model.encode(("하나", "둘")), expected)
    np.testing.assert_array_equal(model.encode(np.array(["하나", "둘"])), expected)
    np.testing.assert_array_equal(model.encode(s for s in ["하나", "둘"]), expected)
    np.testing.assert_array_equal(model.encode(np.array("하나")), expected[0])
    assert model.encode([]).shape == (0, 32) and model.encode(iter([])).shape == (0, 32)
    assert model.encode([], output_value="token_embeddings") == []


def test_long_input_is_truncated_with_a_warning(model, caplog):
    with caplog.at_level("WARNING", logger="refimpl"):
        model.encode(STRINGS["100,000 characters"])
    assert f"1 of 1 inputs were longer than {model.max_seq_length} tokens" in caplog.text


# --- properties ---------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
valid_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@given(texts=st.lists(any_text, min_size=1, max_size=5))
def test_arbitrary_unicode_never_crashes(model, texts):
    try:
        out = model.encode(texts)
    except ValueError as error:
        assert "not valid Unicode" in str(error)
        assert any(any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in texts)
        return
    assert out.shape == (len(texts), 32) and np.isfinite(out).all()


@given(
    target=valid_text, others=st.lists(valid_text, max_size=6), position=st.integers(0, 6), batch_size=st.integers(1, 8)
)
def test_an_embedding_does_not_depend_on_its_batch(model, target, others, position, batch_size):
    alone = model.encode(target)
    batch = list(others)
    batch.insert(min(position, len(batch)), target)
    together = model.encode(batch, batch_size=batch_size)[min(position, len(others))]
    assert max_abs_diff(together, alone) <= 1e-5


@given(texts=st.lists(valid_text, min_size=1, max_size=4))
def test_float64_agrees_with_float32(model, path, texts):
    model64 = _model64(path)
    assert max_abs_diff(model64.encode(texts), model.encode(texts)) <= 1e-4


_CACHE = {}


def _model64(path):
    if path not in _CACHE:
        _CACHE[path] = SentenceTransformer(path, dtype="float64")
    return _CACHE[path]
