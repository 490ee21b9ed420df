"""Tokenization as sentence-transformers does it, on inputs where a silent difference could hide:
repeated vocab lines, added tokens, str subclasses, outer whitespace, a byte order mark."""

from __future__ import annotations

import json
import subprocess
import sys
from enum import Enum

import numpy as np

from refimpl import SentenceTransformer
from tests.helpers import TEXTS, check_parity, edit_json, st_model


def test_vocab_txt_with_a_repeated_line_numbers_tokens_as_transformers(broken):
    from transformers import BertTokenizer

    (broken / "tokenizer.json").unlink()
    lines = (broken / "vocab.txt").read_text(encoding="utf-8").split("\n")
    lines.insert(20, lines[30])  # a repeated token: transformers gives it its last line number
    (broken / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    ours = SentenceTransformer(broken)
    theirs = BertTokenizer(str(broken / "vocab.txt"), do_lower_case=False)
    for text in TEXTS + [lines[30]]:
        assert ours.tokenizer.encode(text).ids == theirs(text)["input_ids"], text


def test_added_token_dicts_in_tokenizer_config(broken):
    """transformers 4.x writes special tokens as AddedToken objects; sentence-transformers loads them."""
    (broken / "tokenizer.json").unlink()
    edit_json(
        broken / "tokenizer_config.json",
        lambda c: c.update(
            {
                key: {
                    "__type": "AddedToken",
                    "content": c[key],
                    "lstrip": False,
                    "normalized": True,
                    "rstrip": False,
                    "single_word": False,
                }
                for key in ("cls_token", "sep_token", "unk_token", "pad_token", "mask_token")
            }
        ),
    )
    check_parity("AddedToken dicts", SentenceTransformer(broken).encode(TEXTS), st_model(broken).encode(TEXTS), 1e-5)


class Color(str, Enum):
    SKY = "하늘은 파랗다"


def test_str_subclass_is_embedded_by_its_value(model):
    assert str(Color.SKY) != Color.SKY.value  # the enum's __str__ is "Color.SKY"
    np.testing.assert_array_equal(model.encode([Color.SKY]), model.encode(["하늘은 파랗다"]))


def test_outer_whitespace_is_kept_as_sentence_transformers_6_keeps_it(bpe_model):
    texts = ["  hello world  ", "hello world", " 하늘 ", "\t탭\n"]
    ours = SentenceTransformer(bpe_model)
    assert ours.tokenizer.encode(texts[0]).ids != ours.tokenizer.encode(texts[1]).ids  # spaces are tokens here
    check_parity("outer whitespace, byte-level BPE", ours.encode(texts), st_model(bpe_model).encode(texts), 1e-5)


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tiny_model, model, tmp_path):
    (tmp_path / "in.txt").write_text("\ufeff" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl",
            "encode",
            "--model",
            str(tiny_model("roberta")),
            "-i",
            str(tmp_path / "in.txt"),
            "-o",
            str(tmp_path / "out.jsonl"),
        ],
        check=True,
        capture_output=True,
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["text"] == TEXTS[0]
    np.testing.assert_allclose([r["embedding"] for r in rows], model.encode(TEXTS), atol=1e-6)
