"""batch.py: packing, length groups, padding and unpacking, worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.batch import Encoded, cu_seqlens_from_lengths, fixed_size_groups, token_budget_groups, unpack
from refimpl.checks import positive_int


def encoded():
    # three sentences of 3, 1 and 2 tokens
    return Encoded(
        np.array([10, 11, 12, 20, 30, 31]),
        np.array([0, 0, 0, 0, 0, 1]),
        np.array([3, 1, 2]),
        np.array([False, True, False]),
    )


def test_cu_seqlens():
    assert cu_seqlens_from_lengths([3, 1, 2]).tolist() == [0, 3, 4, 6]
    assert cu_seqlens_from_lengths([]).tolist() == [0]


def test_padded_and_back():
    batch = encoded()
    padded = batch.padded(pad_id=1)
    assert padded["input_ids"].tolist() == [[10, 11, 12], [20, 1, 1], [30, 31, 1]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert padded["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    again = Encoded.from_padded(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"])
    assert again.input_ids.tolist() == batch.input_ids.tolist() and again.lengths.tolist() == [3, 1, 2]
    rows = np.arange(6, dtype=np.float32)[:, None]
    assert unpack(rows, batch.real_mask())[..., 0].tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    with pytest.raises(ValueError, match="right-padded"):
        Encoded.from_padded(padded["input_ids"], np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0]]), padded["token_type_ids"])


def test_select_and_concatenate():
    batch = encoded()
    picked = batch.select(np.array([2, 0]))
    assert picked.input_ids.tolist() == [30, 31, 10, 11, 12] and picked.truncated.tolist() == [False, False]
    both = Encoded.concatenate([batch, picked])
    assert both.lengths.tolist() == [3, 1, 2, 2, 3] and len(both.input_ids) == 11
    assert batch.select(np.array([], np.int64)).input_ids.size == 0


def test_groups():
    assert token_budget_groups([5, 4, 3, 2], 7) == [slice(0, 1), slice(1, 3), slice(3, 4)]
    assert token_budget_groups([50, 1], 7) == [slice(0, 1), slice(1, 2)]  # a long sentence goes alone
    assert token_budget_groups([], 7) == []
    assert fixed_size_groups(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize(
    "value, ok",
    [
        (1, True),
        (np.int64(3), True),
        (np.int32(2), True),
        (0, False),
        (-1, False),
        (2.5, False),
        (2.0, False),
        (True, False),
        ("3", False),
        (None, False),
    ],
)
def test_positive_int_is_one_rule(value, ok):
    if ok:
        assert positive_int("n", value) == int(value) and type(positive_int("n", value)) is int
    else:
        with pytest.raises(ValueError, match="n must be a positive integer"):
            positive_int("n", value)
    assert positive_int("n", None, allow_none=True) is None
