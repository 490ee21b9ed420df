"""Memory bombs and long texts: crafted files are refused before allocating, long texts are cut
before tokenizing without changing the tokens."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import load_error, run_limited


def test_zero_stride_pickle_is_refused_before_allocating(tmp_path):
    import torch

    torch.save({"w": torch.zeros(1).expand(400_000_000)}, tmp_path / "bomb.bin")  # 1.6 GB if copied densely
    assert (tmp_path / "bomb.bin").stat().st_size < 4096
    result = run_limited(
        "import sys; from refimpl.formats.torch_bin import read_pytorch_bin; read_pytorch_bin(sys.argv[1])",
        600,
        tmp_path / "bomb.bin",
    )
    print(result.stderr[-400:])
    assert "overlapping strides" in result.stderr and "MemoryError" not in result.stderr


def test_zip_bomb_entry_is_refused_before_decompressing(tmp_path):
    import torch

    torch.save({"w": torch.zeros(16 * 2**20)}, tmp_path / "plain.bin")  # 64 MiB of zeros
    with (
        zipfile.ZipFile(tmp_path / "plain.bin") as source,
        zipfile.ZipFile(tmp_path / "bomb.bin", "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    assert (tmp_path / "bomb.bin").stat().st_size < 2**20
    result = run_limited(
        "import sys; from refimpl.formats.torch_bin import read_pytorch_bin; read_pytorch_bin(sys.argv[1])",
        400,
        tmp_path / "bomb.bin",
    )
    print(result.stderr[-400:])
    assert "would decompress" in result.stderr


def test_huge_safetensors_metadata_is_refused(broken):
    raw = (broken / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {"junk": "x" * (17 * 2**20)}
    encoded = json.dumps(header).encode()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    assert "a header may have at most 16 MiB" in load_error(broken)
    header["__metadata__"] = {"nested": {"not": "a string"}}
    encoded = json.dumps(header).encode()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    assert "__metadata__ must map names to strings" in load_error(broken)


LONG_TEXT_RSS = """
import resource, sys
from refimpl import SentenceTransformer
model = SentenceTransformer(sys.argv[1], engine="reference")
if sys.argv[2] == "unbounded":  # the control: no cutting
    type(model.text_tokenizer).CHARS_PER_TOKEN_WINDOW = 10**9
model.encode(["워밍업"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
texts = [("긴 문장을 만들어 봅니다 " * 800_000)[:10_000_000], "가" * 10_000_000, "a" * 10_000_000, " " * 10_000_000,
         "\u200b" * 9_999_990 + " 끝 문장"]
for text in texts[: 1 if sys.argv[2] == "unbounded" else len(texts)]:
    embedding = model.encode(text)
    del text
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_ten_million_characters_are_cut_before_tokenizing(tiny_model):
    growth = {}
    for mode, limit in (("bounded", 1500), ("unbounded", 6000)):
        result = run_limited(LONG_TEXT_RSS, limit, tiny_model("roberta"), mode)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[mode] = float(result.stdout.strip().splitlines()[-1])
    print(f"encoding texts of 10 million characters grew the peak RSS by {growth} MiB")
    assert growth["bounded"] < 200 and growth["unbounded"] > 1000  # tokenizing one whole takes +2.2 to +2.7 GiB


LONG_TEXTS = [
    "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 2000,
    GIANT_HANGUL := "가" * 50_000,  # one word: WordPiece makes it one [UNK], however long
    "가" * 9000 + "." + " 나다 라마" * 3000,  # a giant word, then punctuation and words
    GIANT_LATIN := "짧은 시작 " + "x" * 20_000 + " 그리고 끝",
    "word " * 9000 + "끝",
    GIANT_KOREAN := "띄어쓰기없이아주긴한국어문장" * 3000,
    ("Mixed 한국어 and English 123, punctuation!? " * 1500) + "\u200b" * 5000,
    " " * 30000 + "공백 뒤의 문장 " * 1000,
    "\u200b" * 30000 + "보이지 않는 문자 뒤 " * 1000,
    "앞" + "\u200b" * 30000 + "뒤 문장 " * 1000,  # one WordPiece word of 30,000 characters, not [UNK]
    "\n\t".join(["줄바꿈과 탭"] * 5000),
]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_cutting_long_text_before_tokenizing_changes_nothing(tiny_model, bpe_model, model_type):
    model = SentenceTransformer(tiny_model(model_type))
    bpe = SentenceTransformer(bpe_model)
    for m in (model, bpe):
        tokenizer = m.text_tokenizer
        for text in LONG_TEXTS:
            # a giant BPE word is tokenized whole: its merges depend on the whole word
            if m is model or not any(text is giant for giant in (GIANT_HANGUL, GIANT_LATIN, GIANT_KOREAN)):
                assert len(tokenizer._bounded(text)) < len(text), "the text should be long enough to be cut"
            whole = tokenizer.backend.encode(text)
            cut = tokenizer.backend.encode(tokenizer._bounded(text))
            assert (
                cut.ids == whole.ids
                and cut.type_ids == whole.type_ids
                and bool(cut.overflowing) == bool(whole.overflowing)
            )
        # the same tokens, so the same embedding: encode takes the bounded path
        whole_tokens = m.text_tokenizer.backend.encode(LONG_TEXTS[0]).ids
        np.testing.assert_array_equal(
            m.encode(LONG_TEXTS[0]), m.forward({"input_ids": np.array([whole_tokens])})["sentence_embedding"][0]
        )
