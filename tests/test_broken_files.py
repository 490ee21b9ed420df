"""Every broken model file gives an error naming the file and what is wrong, at load time,
before any computation; nothing crashes deep inside NumPy or numba."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.errors import ModelFileError, ModelNotFoundError, UnsafePickleError
from tests.helpers import check_parity, edit_json, load_error


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


@pytest.mark.parametrize(
    "name",
    ["config.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer_config.json"],
)
def test_malformed_json(broken, name):
    (broken / name).write_text('{"hidden_size": 32,, }')
    expect(broken, name, "malformed JSON at line 1 column")


@pytest.mark.parametrize(
    "tokenizer_class, fragment",
    [("PreTrainedTokenizerFast", "not a valid tokenizers file"), ("BertTokenizer", "holds a NoSuchModel model")],
)
def test_malformed_tokenizer_json(broken, tokenizer_class, fragment):
    (broken / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    edit_json(broken / "tokenizer_config.json", lambda c: c.update(tokenizer_class=tokenizer_class))
    expect(broken, "tokenizer.json", fragment)


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
        ({"embedding_dimension": 32, "pooling_mode": []}, "'pooling_mode' must be a mode name or a list"),
        ({"embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling": "mean"}, "unknown key 'pooling'"),
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
        (
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ],
            "Dense",
        ),
        ([{"idx": 0, "name": "0", "path": "", "type": "my_package.EvilModule"}], "my_package.EvilModule"),
        (
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}],
            "Transformer -> Pooling",
        ),
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


def test_module_path_with_a_nul_byte_is_refused(broken):
    entries = json.loads((broken / "modules.json").read_text())
    entries[1]["path"] = "1_Pooling\u0000x"
    (broken / "modules.json").write_text(json.dumps(entries))
    expect(broken, "modules.json", "holds a NUL character")


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
    state["encoder.layer.0.intermediate.dense.weight"] = state["encoder.layer.0.intermediate.dense.weight"][
        :, :16
    ].copy()
    save_file(state, str(broken / "model.safetensors"))
    expect(
        broken, "model.safetensors", "'encoder.layer.0.intermediate.dense.weight' has shape [64, 16], expected [64, 32]"
    )


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


# --- errors that must be refimpl's, naming the file (JSON, safetensors, zip archives) ---


def test_deeply_nested_json(broken):
    (broken / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert load_error(broken).startswith(str(broken / "config.json"))


def test_huge_integer_in_json(broken):
    (broken / "config.json").write_text('{"vocab_size": 1' + "0" * 5000 + "}")
    message = load_error(broken)
    assert message.startswith(str(broken / "config.json")) and "unreadable JSON" in message


@pytest.mark.parametrize("entry", [{"idx": "0"}, {"idx": 1.5}, {"idx": None}])
def test_non_integer_module_index(broken, entry):
    edit_json(broken / "modules.json", lambda modules: modules[0].update(entry))
    assert "'idx'" in load_error(broken)


def rewrite_safetensors(path, change):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header_text, data = raw[8 : 8 + length].decode(), raw[8 + length :]
    header_text, data = change(header_text, data)
    encoded = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("shape past 2**63", "has shape"),
        ("overlapping offsets", "overlaps the tensor before it"),
        ("duplicate key", "appears twice"),
        ("trailing bytes", "cover"),
        ("unknown dtype", "has dtype 'F4'"),
    ],
)
def test_safetensors_as_strict_as_the_safetensors_library(broken, case, fragment):
    def change(header_text, data):
        header = json.loads(header_text)
        names = [n for n in header if n != "__metadata__"]
        first = min(names, key=lambda n: header[n]["data_offsets"][0])
        if case == "shape past 2**63":
            header[first]["shape"] = [2**64, 2**64]
        elif case == "overlapping offsets":
            second = sorted(names, key=lambda n: header[n]["data_offsets"][0])[1]
            size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
            header[second]["data_offsets"] = [0, size]  # on top of the first tensor
        elif case == "duplicate key":
            text = json.dumps(header)
            return text[:-1] + ", " + json.dumps(first) + ": " + json.dumps(header[first]) + "}", data
        elif case == "trailing bytes":
            return json.dumps(header), data + b"\0" * 64
        elif case == "unknown dtype":
            header[first]["dtype"] = "F4"
        return json.dumps(header), data

    rewrite_safetensors(broken / "model.safetensors", change)
    message = load_error(broken)
    assert message.startswith(str(broken / "model.safetensors")) and fragment in message
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if case not in ("unknown dtype", "duplicate key"):  # the reference implementation refuses the same file
        with pytest.raises((SafetensorError, Exception)):
            load_file(str(broken / "model.safetensors"))


def torch_archive(tmp_path):
    import torch

    torch.save({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "ok.bin")
    return tmp_path / "ok.bin"


def damaged_copy(source, target, change):
    """Copy the archive's bytes, letting ``change(bytearray)`` damage them."""
    raw = bytearray(source.read_bytes())
    change(raw)
    target.write_bytes(bytes(raw))


def header_offset(raw: bytearray, name_part: bytes, signature=b"PK\x01\x02", name_at=28) -> int:
    """Offset of the zip header (central by default, local with b"PK\x03\x04", 26) naming ``name_part``."""
    position = 0
    while (position := raw.find(signature, position)) >= 0:
        name_length = struct.unpack("<H", raw[position + name_at : position + name_at + 2])[0]
        start = position + name_at + (18 if signature == b"PK\x01\x02" else 4)
        if name_part in raw[start : start + name_length]:
            return position
        position += 4
    raise AssertionError(name_part)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("bad crc", "cannot be read from the archive"),
        ("encrypted", "cannot be read from the archive"),
        ("unknown compression", "cannot be read from the archive"),
        ("broken deflate stream", "cannot be read from the archive"),
        ("truncated", ""),
        ("multi-disk end record", "cannot be read as a zip archive"),  # found by the fuzzer: zipfile.is_zipfile raised
    ],
)
def test_zip_level_corruption(tmp_path, damage, fragment):
    from refimpl.formats.torch_bin import read_pytorch_bin

    source = torch_archive(tmp_path)
    if damage == "broken deflate stream":
        with (
            zipfile.ZipFile(source) as plain,
            zipfile.ZipFile(tmp_path / "deflated.bin", "w", zipfile.ZIP_DEFLATED) as deflated,
        ):
            for info in plain.infolist():
                deflated.writestr(info.filename, plain.read(info.filename))
        source = tmp_path / "deflated.bin"

    def change(raw):
        central = header_offset(raw, b"data/0")  # zipfile trusts the central directory's fields
        local = header_offset(raw, b"data/0", b"PK\x03\x04", 26)
        if damage == "bad crc":
            raw[central + 16] ^= 0xFF
        elif damage == "encrypted":
            raw[central + 8] |= 1
            raw[local + 6] |= 1
        elif damage == "unknown compression":
            raw[central + 10 : central + 12] = struct.pack("<H", 99)
            raw[local + 8 : local + 10] = struct.pack("<H", 99)
        elif damage == "broken deflate stream":
            start = local + 30 + sum(struct.unpack("<HH", raw[local + 26 : local + 30]))
            raw[start : start + 8] = b"\xff" * 8
        elif damage == "truncated":
            del raw[len(raw) // 2 :]
        else:  # a zip64 end-of-central-directory locator claiming two disks, just before the end record
            end = raw.rfind(b"PK\x05\x06")
            raw[end:end] = b"PK\x06\x07" + struct.pack("<LQL", 0, 0, 2)

    damaged_copy(source, tmp_path / "bad.bin", change)
    with pytest.raises(ModelFileError) as error:
        read_pytorch_bin(tmp_path / "bad.bin")
    print(error.value)
    assert str(error.value).startswith(str(tmp_path / "bad.bin")) and fragment in str(error.value)


def test_pickle_build_cannot_touch_the_allowed_functions(tmp_path):
    from refimpl.formats import torch_bin as torch_pickle

    # GLOBAL torch._utils._rebuild_parameter; {"evil": 1}; BUILD: the C unpickler would set the attribute
    payload = b"\x80\x02ctorch._utils\n_rebuild_parameter\n}X\x04\x00\x00\x00evilK\x01sb."
    with zipfile.ZipFile(tmp_path / "build.bin", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match="sets the state of a function"):
        torch_pickle.read_pytorch_bin(tmp_path / "build.bin")
    assert not hasattr(torch_pickle._rebuild_parameter, "evil")


def test_state_dict_metadata_build_is_still_read(tmp_path):
    """torch.save's state_dict() carries _metadata, set with BUILD on the fresh OrderedDict."""
    import torch

    from refimpl.formats.torch_bin import read_pytorch_bin

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.bin")
    assert sorted(read_pytorch_bin(tmp_path / "linear.bin")) == ["bias", "weight"]
