"""Embedding quantization (int8, uint8, binary, ubinary) against sentence-transformers' own."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.quantization import quantize_embeddings
from tests.helpers import TOPICS


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantization_semantics_equal_sentence_transformers(precision, model):
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

    embeddings = model.encode(TOPICS)
    ours = quantize_embeddings(embeddings, precision)
    theirs = st_quantize(embeddings, precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    ranges = np.vstack([embeddings.min(0) - 0.1, embeddings.max(0) + 0.1])
    if precision.endswith("int8"):
        np.testing.assert_array_equal(
            quantize_embeddings(embeddings, precision, ranges=ranges), st_quantize(embeddings, precision, ranges=ranges)
        )
    # encode(precision=...) quantizes the batch's own float embeddings, as sentence-transformers does
    np.testing.assert_array_equal(model.encode(TOPICS, precision=precision), ours)
