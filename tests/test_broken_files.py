"""Every broken model file gives an error naming the file and what is wrong, at load time,
before any computation; nothing crashes deep inside NumPy or numba."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import check_parity, edit_json
from refimpl import SentenceTransformer
from refimpl.errors import ModelFileError, ModelNotFoundError


def safetensors_parts(path):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_safetensors(path, header, data):
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def expect(path, file_name, *fragments):
    with pytest.raises(ModelFileError) as error:
        SentenceTransformer(path)
    message = str(error.value)
    print(message)
    assert message.startswith(str(path / file_name)), message
    for fragment in fragments:
        assert fragment in message, message


# --- missing and malformed files -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "modules.json", "1_Pooling/config.json"])
def test_missing_file(broken, name):
    (broken / name).unlink()
    expect(broken, name, "file is missing")


def test_missing_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").unlink()
    expect(broken, "tokenizer.json", "file is missing", "vocab.txt")


def test_missing_weights(broken):
    (broken / "model.safetensors").unlink()
    expect(broken, "model.safetensors", "file is missing", "pytorch_model.bin")


@pytest.mark.parametrize("name", ["config.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer_config.json"])
def test_malformed_json(broken, name):
    (broken / name).write_text('{"hidden_size": 32,, }')
    expect(broken, name, "malformed JSON at line 1 column")


def test_malformed_tokenizer_json(broken):
    (broken / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    expect(broken, "tokenizer.json", "not a valid tokenizers file")


# --- config values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("model_type", "gpt2", "model_type 'gpt2' is not supported"),
        ("hidden_act", "relu", "hidden_act 'relu' is not supported"),
        ("hidden_act", "gelu_new", "hidden_act 'gelu_new'"),
        ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key'"),
        ("num_attention_heads", 5, "hidden_size 32 is not a multiple of num_attention_heads 5"),
        ("hidden_size", "32", "key 'hidden_size' must be int"),
        ("layer_norm_eps", -1.0, "layer_norm_eps must be positive"),
        ("vocab_size", None, "key 'vocab_size' is missing"),
        ("is_decoder", True, "is_decoder"),
    ],
)
def test_unsupported_or_invalid_config(broken, key, value, fragment):
    def change(cfg):
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value

    edit_json(broken / "config.json", change)
    expect(broken, "config.json", fragment)


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"word_embedding_dimension": 32}, "no pooling mode is set"),
        ({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": False}, "no pooling mode is set"),
        ({"embedding_dimension": 32, "pooling_mode": "median"}, "unknown pooling mode 'median'"),
        ({"pooling_mode": "mean"}, "key 'word_embedding_dimension' is missing"),
    ],
)
def test_pooling_config_without_a_valid_mode(broken, config, fragment):
    (broken / "1_Pooling" / "config.json").write_text(json.dumps(config))
    expect(broken, "1_Pooling/config.json", fragment)


def test_pooling_dimension_must_match_hidden_size(broken):
    edit_json(broken / "1_Pooling" / "config.json", lambda c: c.update(word_embedding_dimension=64))
    expect(broken, "1_Pooling/config.json", "embedding dimension 64 does not match hidden_size 32")


@pytest.mark.parametrize(
    "modules, fragment",
    [
        ([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}], "Dense"),
        ([{"idx": 0, "name": "0", "path": "", "type": "my_package.EvilModule"}], "my_package.EvilModule"),
        ([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}], "Transformer -> Pooling"),
        ({"not": "a list"}, "non-empty JSON list"),
    ],
)
def test_unsupported_module_lists(broken, modules, fragment):
    (broken / "modules.json").write_text(json.dumps(modules))
    expect(broken, "modules.json", fragment)


@pytest.mark.parametrize("module_path", ["../../etc", "/etc", "1_Pooling/../../.."])
def test_module_paths_cannot_leave_the_model_directory(broken, module_path):
    def change(modules):
        modules[1]["path"] = module_path

    edit_json(broken / "modules.json", change)
    expect(broken, "modules.json", repr(module_path))


def test_module_path_through_a_symlink_out_is_refused(broken, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(broken / "1_Pooling", outside)
    os.symlink(outside, broken / "linked")
    edit_json(broken / "modules.json", lambda m: m[1].update(path="linked"))
    expect(broken, "modules.json", "leaves the model directory")


# --- the weights file ------------------------------------------------------------------------------


def test_truncated_safetensors(broken):
    raw = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    expect(broken, "model.safetensors", "file is truncated")


@pytest.mark.parametrize("size", [0, 5])
def test_tiny_safetensors(broken, size):
    (broken / "model.safetensors").write_bytes(b"\x00" * size)
    expect(broken, "model.safetensors", "too short for a safetensors header")


@pytest.mark.parametrize(
    "corruption, fragment",
    [
        (lambda raw: struct.pack("<Q", 10**12) + raw[8:], "corrupt or truncated header"),
        (lambda raw: raw[:8] + b"{not json" + raw[17:], "corrupt header: not valid JSON"),
        (lambda raw: raw[:8] + b"\xff\xfe" + raw[10:], "corrupt header"),
    ],
)
def test_corrupt_safetensors_header(broken, corruption, fragment):
    raw = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(corruption(raw))
    expect(broken, "model.safetensors", fragment)


def test_header_offsets_that_do_not_match_the_shape(broken):
    header, data = safetensors_parts(broken / "model.safetensors")
    name = "encoder.layer.0.attention.self.query.bias"
    header[name]["shape"] = [64]
    write_safetensors(broken / "model.safetensors", header, data)
    expect(broken, "model.safetensors", f"tensor '{name}' of dtype F32 and shape [64] needs 256 bytes")


def test_missing_tensor(broken):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    del state["encoder.layer.1.output.dense.bias"]
    save_file(state, str(broken / "model.safetensors"))
    expect(broken, "model.safetensors", "tensor 'encoder.layer.1.output.dense.bias' is missing")


def test_wrong_shape(broken):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["encoder.layer.0.intermediate.dense.weight"] = state["encoder.layer.0.intermediate.dense.weight"][:, :16].copy()
    save_file(state, str(broken / "model.safetensors"))
    expect(broken, "model.safetensors", "'encoder.layer.0.intermediate.dense.weight' has shape [64, 16], expected [64, 32]")


def test_unsupported_dtype(broken):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["embeddings.LayerNorm.weight"] = state["embeddings.LayerNorm.weight"].astype(np.int32)
    save_file(state, str(broken / "model.safetensors"))
    expect(broken, "model.safetensors", "'embeddings.LayerNorm.weight' has dtype I32")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("hidden_size", 64, "but"),
        ("vocab_size", 100, "vocab_size=100"),
        ("num_hidden_layers", 2, "holds 3 encoder layers"),
        ("num_hidden_layers", 4, "num_hidden_layers=4"),
        ("intermediate_size", 128, "expected [128, 32]"),
    ],
)
def test_config_that_disagrees_with_the_weights(broken, key, value, fragment):
    edit_json(broken / "config.json", lambda c: c.update({key: value}))
    if key == "hidden_size":
        edit_json(broken / "1_Pooling" / "config.json", lambda c: c.update(word_embedding_dimension=64))
    with pytest.raises(ModelFileError) as error:
        SentenceTransformer(broken)
    print(error.value)
    assert fragment in str(error.value)
    assert "config.json" in str(error.value) or "vocab" in str(error.value) or "expected" in str(error.value)


def test_tokenizer_larger_than_the_embedding_table(broken):
    edit_json(broken / "config.json", lambda c: c.update(vocab_size=100))
    with pytest.raises(ModelFileError, match="tokenizer has .* tokens but .* vocab_size=100"):
        SentenceTransformer(broken)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_are_upcast(broken, dtype):
    """float16/bfloat16 weights -> float32, the same numbers transformers computes from them."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    state = load_file(str(broken / "model.safetensors"))
    save_file({k: v.to(getattr(torch, dtype)) for k, v in state.items()}, str(broken / "model.safetensors"))
    model = SentenceTransformer(broken)
    assert model.weights["encoder"]["layer"][0]["intermediate"]["dense"]["weight"].dtype == np.float32
    features = model.tokenize(["반 정밀도 가중치", "half precision weights 16"])
    oracle = AutoModel.from_pretrained(str(broken), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = oracle(**{k: torch.tensor(v) for k, v in features.items()}).last_hidden_state.numpy()
    real = features["attention_mask"].astype(bool)
    check_parity(f"{dtype} weights upcast", model.forward(features)["token_embeddings"][real], theirs[real], 1e-5)


def test_non_finite_weights_never_give_a_silent_embedding(broken):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["encoder.layer.2.output.dense.bias"][3] = np.nan
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        SentenceTransformer(broken).encode("문장")


# --- names that are not models ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "org/name && touch PWNED"])
def test_a_model_name_is_never_a_shell_command(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError):
        SentenceTransformer(name, cache_folder=tmp_path / "cache")
    assert not (tmp_path / "PWNED").exists()


def test_a_file_is_not_a_model_directory(broken):
    with pytest.raises(ModelNotFoundError, match="is a file"):
        SentenceTransformer(broken / "config.json")
