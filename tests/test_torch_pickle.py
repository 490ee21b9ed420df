"""pytorch_model.bin without torch: real torch.save files read exactly, malicious pickles refused
without running anything, and `refimpl convert`."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.errors import ModelFileError, UnsafePickleError
from refimpl.formats.torch_bin import read_pytorch_bin
from tests.helpers import TEXTS, check_parity


def torch_reference(value):
    import torch

    return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()


def test_reads_what_torch_save_writes(tmp_path):
    import torch

    base = torch.randn(6, 4)
    state = {
        "fp32": torch.randn(3, 5),
        "fp16": torch.randn(7).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "fp64": torch.randn(4, dtype=torch.float64),
        "int64": torch.arange(5),
        "bool": torch.tensor([True, False]),
        "base": base,
        "shared_rows": base[2:5],  # the same storage, at an offset
        "transposed": base.t(),  # non-contiguous view
        "strided": base[::2, 1::2],
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    torch.save(state, tmp_path / "state.bin")
    ours = read_pytorch_bin(tmp_path / "state.bin")
    assert set(ours) == set(state)
    for name, value in state.items():
        expected = torch_reference(value)
        assert ours[name].shape == expected.shape and ours[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_model_with_only_pytorch_model_bin(tiny_model, tmp_path, dtype, caplog):
    import torch
    from safetensors.torch import load_file

    source = tiny_model("roberta")
    path = tmp_path / "bin-only"
    shutil.copytree(source, path)
    state = load_file(str(path / "model.safetensors"))
    torch.save({"roberta." + k: v.to(getattr(torch, dtype)) for k, v in state.items()}, path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    model = SentenceTransformer(path)
    assert "convert" in caplog.text and model.weights_file.name == "pytorch_model.bin"
    reference = SentenceTransformer(source).encode(TEXTS)
    tolerance = {"float32": 1e-6, "float16": 2e-2, "bfloat16": 1e-1}[dtype]  # the weights themselves were rounded
    check_parity(f"pytorch_model.bin ({dtype})", model.encode(TEXTS), reference, tolerance)

    # convert once, then the safetensors file is mapped and gives the same embeddings
    subprocess.run(
        [sys.executable, "-m", "refimpl", "convert", str(path / "pytorch_model.bin"), str(path / "model.safetensors")],
        check=True,
        capture_output=True,
    )
    converted = SentenceTransformer(path)
    assert converted.weights_file.name == "model.safetensors"
    np.testing.assert_array_equal(converted.encode(TEXTS), model.encode(TEXTS))


def test_float16_weights_against_transformers(tiny_model, tmp_path):
    """float16 weights are upcast to float32: the same numbers as transformers gives on the same fp16 weights."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    path = tmp_path / "fp16"
    shutil.copytree(tiny_model("bert"), path)
    state = load_file(str(path / "model.safetensors"))
    save_file({k: v.half() for k, v in state.items()}, str(path / "model.safetensors"))
    model = SentenceTransformer(path)
    features = model.tokenize(TEXTS)
    ours = model.forward(features)["token_embeddings"]
    oracle = AutoModel.from_pretrained(str(path), attn_implementation="eager", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = oracle(**{k: torch.tensor(v) for k, v in features.items()}).last_hidden_state.numpy()
    real = features["attention_mask"].astype(bool)
    check_parity("float16 weights, upcast", ours[real], theirs[real], 1e-5)


def malicious_archive(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path(MARKER).touch()",))


@pytest.mark.parametrize("kind", ["os.system", "eval", "inside-a-state-dict"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = pickle.dumps(RunsCommand(f"touch {marker}"), protocol=2)
    elif kind == "eval":
        payload = pickle.dumps(Evaluates(), protocol=2).replace(b"MARKER", repr(str(marker)).encode())
    else:
        payload = pickle.dumps({"embeddings.word_embeddings.weight": RunsCommand(f"touch {marker}")}, protocol=2)
    malicious_archive(tmp_path / "pytorch_model.bin", payload)
    with pytest.raises(UnsafePickleError) as error:
        read_pytorch_bin(tmp_path / "pytorch_model.bin")
    print(error.value)
    assert "refuses to load" in str(error.value) and str(tmp_path / "pytorch_model.bin") in str(error.value)
    assert not marker.exists(), "the pickle's command ran"


def test_legacy_non_zip_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCommand(f"touch {marker}")))
    with pytest.raises(ModelFileError, match="not a zip archive"):
        read_pytorch_bin(tmp_path / "pytorch_model.bin")
    assert not marker.exists()


def test_out_of_bounds_tensor_layout_is_refused(tmp_path):
    import torch

    torch.save({"w": torch.randn(4)}, tmp_path / "ok.bin")
    with zipfile.ZipFile(tmp_path / "ok.bin") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in entries if name.endswith("data.pkl"))
    # size (4,) -> (400,): a crafted layout that would read past the 4-element storage
    entries[pickle_name] = entries[pickle_name].replace(b"K\x04\x85", b"M\x90\x01\x85")
    with zipfile.ZipFile(tmp_path / "bad.bin", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match="reaches element"):
        read_pytorch_bin(tmp_path / "bad.bin")
