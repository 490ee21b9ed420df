"""Helpers the tests share: the parity check, the oracles, shared inputs. Imported as
``tests.helpers`` (a package import, so ``--import-mode=importlib`` works)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tools import fixtures as builders

ROOT = Path(__file__).resolve().parents[1]


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
WORDS = (
    "오늘 날씨가 맑고 바람이 시원하게 분다 내일 아침에는 비가 내릴 예정이다 고양이가 창가에 앉아 있다 English words 123"
).split()
ENGLISH = [
    "A man is playing a guitar on stage.",
    "A woman is slicing tomatoes in the kitchen.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.",
    "A child is riding a red bicycle.",
    "The chef is cooking pasta for dinner.",
    "Heavy rain caused flooding in the city.",
    "A cat sleeps on a sunny windowsill.",
    "The team won the championship game.",
    "Scientists discovered a new species of frog.",
    "A man plays the violin in the park.",
    "Investors worry about rising interest rates.",
    "A puppy chases a ball in the yard.",
    "The train to Busan leaves at noon.",
    "She is reading a novel in the library.",
    "A storm knocked out power across the region.",
    "The band performed a new song tonight.",
    "Someone is chopping onions for soup.",
]


def random_sentences(count, seed=0, max_words=13):
    """``count`` sentences of 1 to ``max_words`` random words from WORDS."""
    r = np.random.default_rng(seed)
    return [" ".join(r.choice(WORDS, r.integers(1, max_words + 1))) for _ in range(count)]


def edit_json(path, change):
    """Load a JSON file, let ``change`` edit the data in place, write it back."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    change(data)
    Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# --- editing model directories: one setting at a time (tests/test_settings.py, tests/test_verify.py) --

DELETE = object()


def keys(name, **updates):
    """Set (or, with DELETE, remove) keys of the JSON file ``name`` (created if missing)."""

    def edit(path: Path):
        if not (path / name).exists():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text("{}", encoding="utf-8")

        def change(data):
            for key, value in updates.items():
                if value is DELETE:
                    data.pop(key, None)
                else:
                    data[key] = value

        edit_json(path / name, change)

    return edit


def write(name, data):
    def edit(path: Path):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(json.dumps(data), encoding="utf-8")

    return edit


def rename(old, new):
    return lambda path: (path / old).rename(path / new)


def both(*edits):
    def edit(path: Path):
        for one in edits:
            one(path)

    return edit


def tokenizer_json(change):
    return lambda path: edit_json(path / "tokenizer.json", change)


def template_types(type_id):
    """tokenizer.json's post-processor with ``type_id`` for every token of a single sentence."""

    def change(data):
        for piece in data["post_processor"]["single"]:
            next(iter(piece.values()))["type_id"] = type_id

    return tokenizer_json(change)


def cls_only_template(data):
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [0], "tokens": ["[CLS]"]}},
    }


def modules(*types, idx=None, names=None, paths=None):
    entries = []
    for i, kind in enumerate(types):
        entry = {"idx": i if idx is None else idx[i], "name": str(i) if names is None else names[i], "type": kind}
        entry["path"] = ["", "1_Pooling", "2_Normalize"][i] if paths is None else paths[i]
        if entry["path"] is None:
            del entry["path"]
        entries.append(entry)
    return write("modules.json", entries)


def copy_model(source: Path, target: Path) -> Path:
    """A copy of a model directory; large weight files are linked, not copied."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in Path(source).rglob("*.safetensors"):
        (target / weights.relative_to(source)).symlink_to(weights)
    return target


# --- the parity oracle's batch ------------------------------------------------------------------

BATCH = [
    "짧은 문장.",
    "오늘은 날씨가 맑고 바람이 시원하게 분다. 내일은 비가 온다고 한다.",
    "Python과 NumPy로 트랜스포머 모델을 직접 구현했다.",
    "가",
    "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 6,
]


def torch_hidden_states(path, features, dtype=None):
    import torch

    model = hf_model(path, dtype)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(features["input_ids"]),
            attention_mask=torch.tensor(features["attention_mask"]),
            token_type_ids=torch.tensor(features["token_type_ids"]),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states]


def load_error(path) -> str:
    import pytest

    from refimpl import SentenceTransformer
    from refimpl.errors import ModelFileError

    with pytest.raises(ModelFileError) as error:
        SentenceTransformer(path)
    print(error.value)
    return str(error.value)


def run_limited(code: str, memory_mb: int, *args) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child whose address space is capped, so that a memory bomb fails the test
    (MemoryError or a killed child) instead of taking the machine."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))

    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        cwd=ROOT,
        timeout=300,
    )
