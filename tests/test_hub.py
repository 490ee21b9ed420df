"""The Hub path (huggingface_hub.snapshot_download) against a local cache the test builds, offline."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import DEFAULT_MODEL, SentenceTransformer
from refimpl.errors import ModelFileError, ModelNotFoundError
from refimpl.load.locate import HUB_CONFIG_PATTERNS
from tests.helpers import TEXTS, builders

REPO = "refimpl-test/tiny-roberta"


@pytest.fixture()
def hub_cache(tmp_path, tiny_model):
    cache = tmp_path / "hub"
    builders.make_hub_cache(cache, REPO, tiny_model("roberta"), revision="main", commit="a" * 40)
    builders.make_hub_cache(cache, REPO, tiny_model("roberta", seed=7), revision="v2", commit="b" * 40)
    return cache


def test_hub_id_loads_from_the_offline_cache(hub_cache, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_hub = SentenceTransformer(REPO, cache_folder=hub_cache)
    assert from_hub.model_dir.name == "a" * 40
    local = SentenceTransformer(tiny_model("roberta"))
    np.testing.assert_array_equal(from_hub.encode(TEXTS), local.encode(TEXTS))


def test_revision_selects_the_snapshot(hub_cache, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    v2 = SentenceTransformer(REPO, cache_folder=hub_cache, revision="v2")
    assert v2.model_dir.name == "b" * 40
    np.testing.assert_array_equal(v2.encode(TEXTS), SentenceTransformer(tiny_model("roberta", seed=7)).encode(TEXTS))
    by_commit = SentenceTransformer(REPO, cache_folder=hub_cache, revision="b" * 40)
    assert by_commit.model_dir == v2.model_dir


def test_local_files_only_needs_no_offline_variable(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    model = SentenceTransformer(REPO, cache_folder=hub_cache, local_files_only=True)
    assert model.encode("x").shape == (32,)


@pytest.mark.parametrize("repo", [DEFAULT_MODEL, "nobody/missing-model"])
def test_missing_model_says_how_to_use_a_local_directory(tmp_path, monkeypatch, repo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        SentenceTransformer(repo, cache_folder=tmp_path / "empty-cache")
    message = str(error.value)
    print(message)
    assert repo in message and "offline" in message and "local directory" in message and "--model DIR" in message


def test_default_model_is_klue_sroberta(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="bespin-global/klue-sroberta-base-continue-learning-by-mnr"):
        SentenceTransformer(cache_folder=tmp_path)


def test_download_asks_only_for_the_files_refimpl_reads(tmp_path, tiny_model, monkeypatch):
    """snapshot_download gets the revision, cache, token and offline settings, and narrow allow_patterns;
    pytorch_model.bin is asked for only when the snapshot has no model.safetensors."""
    import huggingface_hub

    calls = []
    snapshot = tmp_path / "snap"
    builders.shutil.copytree(tiny_model("roberta"), snapshot)

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    SentenceTransformer("org/name", revision="r1", cache_folder=tmp_path / "c", token="hf_secret")
    assert len(calls) == 1
    repo_id, kwargs = calls[0]
    assert repo_id == "org/name"
    assert kwargs["revision"] == "r1" and kwargs["token"] == "hf_secret" and kwargs["local_files_only"] is False
    assert kwargs["cache_dir"] == str(tmp_path / "c")
    assert kwargs["allow_patterns"] == HUB_CONFIG_PATTERNS + ["model.safetensors"]
    assert not any(p.endswith((".bin", ".h5", ".onnx", ".msgpack", "*")) for p in kwargs["allow_patterns"])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the variable turns into local_files_only
    calls.clear()
    SentenceTransformer("org/name")
    assert calls[0][1]["local_files_only"] is True

    (snapshot / "model.safetensors").unlink()
    calls.clear()
    with pytest.raises(ModelFileError, match="model.safetensors: file is missing"):
        SentenceTransformer("org/name")  # no weights at all in the fake snapshot
    assert [c[1]["allow_patterns"] for c in calls] == [
        HUB_CONFIG_PATTERNS + ["model.safetensors"],
        ["pytorch_model.bin"],
    ]


@pytest.mark.parametrize("name", ["./does-not-exist", "/no/such/dir", "a/b/c"])
def test_a_path_that_does_not_exist_is_not_sent_to_the_hub(name):
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        SentenceTransformer(name)
