"""`refimpl explain`: a self-contained, valid HTML page whose numbers come from encode's own forward pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.apps.explain import analyse, pair_contributions
from tests.helpers import ROOT

pytest.importorskip(
    "matplotlib", reason='refimpl explain needs `pip install "refimpl[viz]"` (the README test command installs it)'
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Checker(HTMLParser):
    """Nesting must balance; collects images, links and the embedded JSON."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.urls, self.data, self.in_data = [], [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        self.urls += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag not in VOID:
            self.stack.append(tag)
        self.in_data = tag == "script" and attrs.get("id") == "refimpl-data"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        self.in_data = False

    def handle_data(self, data):
        if self.in_data:
            self.data = json.loads(data)


def explain(model_dir, tmp_path, *args):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl",
            "explain",
            *args,
            "--model",
            str(model_dir),
            "-o",
            str(tmp_path / "page.html"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and checker.stack == [], f"unclosed: {checker.stack}"
    return page, checker


def test_one_sentence_page(tiny_model, tmp_path):
    path = tiny_model("roberta", do_lower_case=True)
    text = "KLUE 문장 임베딩을 설명하는 페이지 " * 6  # lowercased, and long enough to be truncated
    page, checker = explain(path, tmp_path, text)
    model = SentenceTransformer(path)
    layers = [img for img in checker.images if img.get("class") == "layer"]
    assert len(layers) == model.config.num_hidden_layers, "one attention figure per layer"
    assert all(url.startswith(("data:image/png;base64,", "#")) for url in checker.urls), "nothing is fetched"
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    np.testing.assert_array_equal(np.array(checker.data["sentences"][0]["embedding"], np.float32), model.encode(text))
    assert "klue 문장" in page and "were cut" in page and "max_seq_length" in page


def test_two_sentences_page_shows_their_similarity(tiny_model, tmp_path):
    path = tiny_model("roberta")
    first, second = "오늘은 날씨가 맑다.", "내일은 비가 온다고 한다."
    page, checker = explain(path, tmp_path, first, second)
    model = SentenceTransformer(path)
    a, b = model.encode([first, second])
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert f"{cosine:.4f}" in page and "The pairs that add most" in page
    assert len([img for img in checker.images if img.get("class") == "layer"]) == 2 * model.config.num_hidden_layers
    for given, shown in zip((first, second), checker.data["sentences"]):
        np.testing.assert_array_equal(np.array(shown["embedding"], np.float32), model.encode(given))


@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("weightedmean",)])
def test_pair_shares_sum_to_the_cosine(tiny_model, modes):
    model = SentenceTransformer(tiny_model("roberta", pooling_modes=modes))
    first, second = analyse(model, "고양이가 창가에 앉아 있다"), analyse(model, "강아지가 마당에서 뛰어논다")
    shares = pair_contributions(first, second, modes)
    a, b = first.embedding, second.embedding
    assert abs(shares.sum() - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 1e-5
    assert abs(first.contributions.sum() - 1) < 1e-5  # each token's share of its pooled vector
    np.testing.assert_allclose(first.attentions[0].sum(axis=-1), 1, atol=1e-5)


def test_png_figures_and_head_choice(tiny_model, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl",
            "explain",
            "한 문장",
            "--model",
            str(tiny_model("bert")),
            "--png",
            str(tmp_path / "figures"),
            "--head",
            "2:3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == [
        "s1-attention-layer01.png",
        "s1-attention-layer02.png",
        "s1-attention-layer03.png",
        "s1-head-l2-h3.png",
        "s1-layers.png",
        "s1-pooling.png",
    ]
    assert all((tmp_path / "figures" / n).read_bytes().startswith(b"\x89PNG") for n in names)
    bad = subprocess.run(
        [sys.executable, "-m", "refimpl", "explain", "x", "--model", str(tiny_model("bert")), "--head", "9:0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "layers 1-3" in bad.stderr and "Traceback" not in bad.stderr


def test_without_matplotlib_explain_says_what_to_install(tiny_model, tmp_path):
    block = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(name)
sys.meta_path.insert(0, Block())
from refimpl.apps.cli import main
main(["explain", "문장", "--model", sys.argv[1], "-o", sys.argv[2]])
"""
    out = subprocess.run(
        [sys.executable, "-c", block, str(tiny_model("roberta")), str(tmp_path / "p.html")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 1 and 'pip install "refimpl[viz]"' in out.stderr and "Traceback" not in out.stderr, (
        out.stderr
    )


def test_a_comment_or_script_tag_in_a_sentence_cannot_break_the_page(tiny_model, tmp_path):
    """Every "<" in the embedded JSON is escaped: "<!--<script>" and "</script>" stay text."""
    text = "앞 <!--<script>alert(1)</script> 뒤 </script><!--"
    page, checker = explain(tiny_model("bert"), tmp_path, text)
    assert checker.data["sentences"][0]["text"] == text
    assert "<!--<script>" not in page and "alert(1)</script>" not in page


def test_a_model_without_layers_is_a_clear_error(tiny_model, tmp_path):
    path = tiny_model("bert", num_layers=0)
    result = subprocess.run(
        [sys.executable, "-m", "refimpl", "explain", "한 문장", "--model", str(path), "-o", str(tmp_path / "p.html")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "num_hidden_layers is 0" in result.stderr and "Traceback" not in result.stderr
