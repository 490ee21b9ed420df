"""The SentenceTransformer API: shapes, dtypes, options, ordering, and no torch at run time."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import ROOT, TEXTS, TOPICS, check_parity, st_model


def test_shapes_and_dtypes(model):
    dim = model.get_sentence_embedding_dimension()
    assert dim == 32 == model.get_embedding_dimension()
    many = model.encode(TEXTS)
    assert many.shape == (4, dim) and many.dtype == np.float32
    one = model.encode(TEXTS[0])
    assert one.shape == (dim,)
    np.testing.assert_allclose(one, many[0], atol=1e-6)
    assert model.encode([]).shape == (0, dim)
    assert isinstance(model.encode(TEXTS, convert_to_numpy=False), list)
    assert model.encode(TEXTS, convert_to_tensor=True).shape == (4, dim)


def test_order_is_restored_and_batches_do_not_matter(model):
    together = model.encode(TEXTS, batch_size=32)
    alone = np.stack([model.encode(t) for t in TEXTS])
    check_parity("batched vs one at a time", together, alone, 1e-6)
    for batch_size in (1, 2, 3):
        check_parity(f"batch_size={batch_size}", model.encode(TEXTS, batch_size=batch_size), together, 1e-6)
    reversed_ = model.encode(TEXTS[::-1])[::-1]
    check_parity("reversed input order", reversed_, together, 1e-6)


def test_normalize_embeddings(model):
    unit = model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    raw = model.encode(TEXTS)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_float64_mode(tiny_model):
    model64 = SentenceTransformer(tiny_model("roberta"), dtype="float64")
    out = model64.encode(TEXTS)
    assert out.dtype == np.float64
    check_parity("float64 vs float32", out, SentenceTransformer(tiny_model("roberta")).encode(TEXTS), 1e-5)


def test_attributes_like_sentence_transformers(model, tiny_model):
    st = st_model(tiny_model("roberta"))
    assert model.max_seq_length == st.max_seq_length
    assert model.get_sentence_embedding_dimension() == st.get_embedding_dimension()
    assert model.tokenizer.encode(TEXTS[0]).ids == st.tokenizer(TEXTS[0])["input_ids"]


def test_max_seq_length_can_be_lowered(tiny_model, caplog):
    model = SentenceTransformer(tiny_model("roberta"))
    model.max_seq_length = 5
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        tokens = model.encode(TEXTS, output_value="token_embeddings")
    assert max(t.shape[0] for t in tokens) == 5
    assert "3 of 4 inputs were longer than 5 tokens and were truncated to 5 tokens" in caplog.text
    with pytest.raises(ValueError, match="position table"):
        model.max_seq_length = 10_000


def test_no_truncation_warning_when_nothing_is_truncated(model, caplog):
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        model.encode(TEXTS)
    assert "truncated" not in caplog.text


@pytest.mark.parametrize("bad", [{"device": "cuda"}, {"batch_size": 0}, {"output_value": "cls"}, {"precision": "int4"}])
def test_bad_arguments_are_refused(model, bad):
    with pytest.raises(ValueError):
        model.encode(TEXTS, **bad)


def test_constructor_arguments_are_checked(tiny_model):
    with pytest.raises(ValueError, match="dtype"):
        SentenceTransformer(tiny_model("roberta"), dtype="float16")
    with pytest.raises(ValueError, match="engine"):
        SentenceTransformer(tiny_model("roberta"), engine="cuda")
    with pytest.raises(ValueError, match="CPU"):
        SentenceTransformer(tiny_model("roberta"), device="cuda:0")


def test_encoding_never_imports_torch_or_transformers(tiny_model):
    code = f"""
import sys, json
import refimpl
lazy = {{name: name in sys.modules for name in ("numba", "huggingface_hub", "tokenizers")}}
from refimpl import SentenceTransformer
model = SentenceTransformer({str(tiny_model("roberta"))!r})
lazy["numba after load"] = "numba" in sys.modules  # nothing compiles or loads LLVM before the first encode
model.encode(["한 문장", "두 문장"])
heavy = [m for m in ("torch", "transformers", "sentence_transformers", "tensorflow", "jax", "dask", "distributed",
                     "langchain_core", "pandas") if m in sys.modules]
print(json.dumps({{"lazy": lazy, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    assert result["heavy"] == [], f"encoding imported {result['heavy']}"
    assert not any(result["lazy"].values()), f"`import refimpl` imported {result['lazy']}"


# --- options and attributes as in sentence-transformers ------------------------------------


def test_truncate_dim_like_sentence_transformers(path, model):
    check_parity(
        "truncate_dim=8", model.encode(TOPICS, truncate_dim=8), st_model(path).encode(TOPICS, truncate_dim=8), 1e-5
    )
    short = SentenceTransformer(path, truncate_dim=8)
    assert short.get_sentence_embedding_dimension() == 8 and short.encode(TOPICS).shape == (6, 8)
    unit = short.encode(TOPICS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)  # normalized after truncating


@pytest.fixture(scope="module")
def prompted(tiny_model, tmp_path_factory):
    def make(include_prompt=True):
        base = tiny_model("roberta")
        path = tmp_path_factory.mktemp("prompted") / "model"
        shutil.copytree(base, path)
        (path / "config_sentence_transformers.json").write_text(
            json.dumps(
                {
                    "prompts": {"query": "질문: ", "document": "문서: "},
                    "default_prompt_name": "query",
                    "similarity_fn_name": "dot",
                }
            )
        )
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        pooling["include_prompt"] = include_prompt
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        return path

    return make


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_like_sentence_transformers(prompted, include_prompt):
    path = prompted(include_prompt)
    ours, theirs = SentenceTransformer(path), st_model(path)
    assert ours.prompts == {"query": "질문: ", "document": "문서: "} and ours.default_prompt_name == "query"
    assert ours.similarity_fn_name == "dot"
    check_parity("default prompt", ours.encode(TOPICS), theirs.encode(TOPICS), 1e-5)
    check_parity(
        "prompt_name", ours.encode(TOPICS, prompt_name="document"), theirs.encode(TOPICS, prompt_name="document"), 1e-5
    )
    check_parity("prompt", ours.encode(TOPICS, prompt="맞춤 지시: "), theirs.encode(TOPICS, prompt="맞춤 지시: "), 1e-5)
    check_parity("encode_query", ours.encode_query(TOPICS), theirs.encode_query(TOPICS), 1e-5)
    check_parity("encode_document", ours.encode_document(TOPICS), theirs.encode_document(TOPICS), 1e-5)
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        ours.encode(TOPICS, prompt_name="nope")


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_model_similarity_like_sentence_transformers(path, name):
    ours, theirs = SentenceTransformer(path, similarity_fn_name=name), st_model(path)
    a, b = ours.encode(TOPICS[:4]), ours.encode(TOPICS[2:])
    theirs.similarity_fn_name = name
    try:
        check_parity(f"similarity {name}", ours.similarity(a, b), theirs.similarity(a, b).numpy(), 1e-5)
        check_parity(
            f"similarity_pairwise {name}",
            ours.similarity_pairwise(a, b),
            theirs.similarity_pairwise(a, b).numpy(),
            1e-5,
        )
    finally:
        theirs.similarity_fn_name = "cosine"
    with pytest.raises(ValueError, match="similarity_fn_name"):
        ours.similarity_fn_name = "jaccard"


def test_token_count(model, path):
    tokenizer = st_model(path).tokenizer
    long_text = "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 20
    counts = model.token_count(TOPICS + [long_text])
    assert counts == [len(tokenizer(t, truncation=False)["input_ids"]) for t in TOPICS + [long_text]]
    assert counts[-1] > model.max_seq_length, "counted before truncation"
    assert model.token_count("한 문장") == len(tokenizer("한 문장")["input_ids"])


def test_progress_bar(model, capsys, caplog):
    model.encode(TOPICS, show_progress_bar=True, batch_size=2)
    assert "Batches" in capsys.readouterr().err
    model.encode(TOPICS)
    assert "Batches" not in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="refimpl"):
        model.encode(TOPICS)  # like sentence-transformers: shown when the logger is at INFO
    assert "Batches" in capsys.readouterr().err
