"""Loading the files of the layouts seen in the wild, and weights that are mapped, not copied."""

from __future__ import annotations

import json
import logging
import mmap
import shutil

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import TEXTS, check_parity, st_model

TEXTS = TEXTS + [""]  # and an empty sentence


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_vocab_txt_fallback_without_tokenizer_json(tiny_model, tmp_path):
    path = copy_model(tiny_model("bert"), tmp_path / "no-tokenizer-json")
    (path / "tokenizer.json").unlink()
    model = SentenceTransformer(path)
    check_parity("vocab.txt tokenizer", model.encode(TEXTS), st_model(path).encode(TEXTS), 1e-5)


@pytest.mark.parametrize("prefix", ["roberta.", "bert."])
def test_checkpoint_keys_with_a_base_model_prefix(tiny_model, tmp_path, prefix):
    from safetensors.numpy import load_file, save_file

    source = tiny_model("roberta")
    path = copy_model(source, tmp_path / "prefixed")
    state = load_file(str(path / "model.safetensors"))
    save_file({prefix + key: value for key, value in state.items()}, str(path / "model.safetensors"))
    np.testing.assert_array_equal(SentenceTransformer(path).encode(TEXTS), SentenceTransformer(source).encode(TEXTS))


def test_sentence_transformers_6_layout(tiny_model, tmp_path):
    """A model saved by sentence-transformers 6 (new module paths, pooling_mode key, no do_lower_case key)."""
    source = tiny_model("roberta", pooling_modes=("cls",), normalize=True)
    st_model(source).save(str(tmp_path / "st6"))
    modules = json.loads((tmp_path / "st6" / "modules.json").read_text())
    assert modules[1]["type"] != "sentence_transformers.models.Pooling", "expected the 6.x module path"
    assert "pooling_mode" in json.loads((tmp_path / "st6" / "1_Pooling" / "config.json").read_text())
    model = SentenceTransformer(tmp_path / "st6")
    assert model.normalize and model.pooling_config.modes == ("cls",)
    check_parity("sentence-transformers 6 layout", model.encode(TEXTS), st_model(source).encode(TEXTS), 1e-5)


def test_float32_weights_are_views_of_the_mapped_file(tiny_model):
    model = SentenceTransformer(tiny_model("roberta"))

    def is_mapped(array):
        while isinstance(array, np.ndarray):
            if array.flags.owndata:
                return False
            array = array.base
        if isinstance(array, memoryview):
            array = array.obj
        return isinstance(array, mmap.mmap)

    layer = model.weights["encoder"]["layer"][0]
    for array in (
        model.weights["embeddings"]["word_embeddings"]["weight"],
        layer["attention"]["self"]["query"]["weight"],
        layer["intermediate"]["dense"]["weight"],
        layer["output"]["LayerNorm"]["bias"],
    ):
        assert is_mapped(array), "weights must be views on the mmap, not copies"
        assert not array.flags.writeable
    # [out, in] as stored: the forward pass uses W.T, a view
    assert layer["intermediate"]["dense"]["weight"].shape == (64, 32)


def test_max_seq_length_beyond_the_position_table_is_capped(tiny_model, tmp_path, caplog):
    path = copy_model(tiny_model("roberta"), tmp_path / "too-long")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096, "do_lower_case": False}))
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        model = SentenceTransformer(path)
    # max_position_embeddings 40, RoBERTa offset pad_id + 1 = 2: 38 tokens fit
    assert model.max_seq_length == 38
    assert "exceeds the 38 tokens its position table holds" in caplog.text
    out = model.encode("서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 40)
    assert out.shape == (32,) and np.isfinite(out).all()


def test_max_seq_length_falls_back_to_tokenizer_config(tiny_model, tmp_path):
    path = copy_model(tiny_model("bert"), tmp_path / "no-sbert-config")
    (path / "sentence_bert_config.json").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["model_max_length"] = 17
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert SentenceTransformer(path).max_seq_length == 17
