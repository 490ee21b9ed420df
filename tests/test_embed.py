"""``model.embed``: a lazy generator over an iterable of any length, in order, warning once."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from tests.helpers import TOPICS, check_parity


def test_embed_generator_yields_batches_in_order(model):
    batches = list(model.embed(iter(TOPICS * 3), batch_size=4, chunk_size=8))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    check_parity("embed vs encode", np.concatenate(batches), model.encode(TOPICS * 3), 1e-6)


def test_embed_generator_is_lazy(model):
    endless = (f"문장 번호 {i}" for i in itertools.count())
    first = list(itertools.islice(model.embed(endless, batch_size=5, chunk_size=10), 3))
    assert [b.shape for b in first] == [(5, 32)] * 3
    with pytest.raises(ValueError, match="int8"):
        next(model.embed(TOPICS, precision="int8"))


def test_embed_warns_once_for_the_whole_run(model, caplog):
    texts = ["서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 10, "짧다"] * 6
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        list(model.embed(texts, batch_size=2, chunk_size=4))
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "6 of 12 inputs" in warnings[0].getMessage()
