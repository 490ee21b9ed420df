"""`refimpl encode`: arguments, files, stdin, .npy and .jsonl output, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from refimpl import SentenceTransformer

TEXTS = ["첫 번째 문장입니다.", "두 번째 문장.", "Third sentence 3"]


def run(*args, stdin=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "refimpl", *map(str, args)], input=stdin, capture_output=True, text=True, check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("roberta")


@pytest.fixture(scope="module")
def expected(model_dir):
    return SentenceTransformer(model_dir).encode(TEXTS)


def test_texts_as_arguments_print_json_lines(model_dir, expected):
    out = run("encode", "--model", model_dir, *TEXTS)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_file_to_npy(model_dir, expected, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    run("encode", "--model", model_dir, "-i", tmp_path / "in.txt", "-o", tmp_path / "out.npy")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)


def test_stdin_to_jsonl_with_normalize(model_dir, expected, tmp_path):
    run("encode", "--model", model_dir, "--normalize", "--batch-size", "2", "-o", tmp_path / "out.jsonl", stdin="\n".join(TEXTS))
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines] == TEXTS
    normalized = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose([line["embedding"] for line in lines], normalized, atol=1e-6)


def test_empty_lines_are_kept_as_empty_sentences(model_dir, tmp_path):
    (tmp_path / "in.txt").write_text("a\n\nb\n", encoding="utf-8")
    run("encode", "--model", model_dir, "-i", tmp_path / "in.txt", "-o", tmp_path / "out.npy")
    assert np.load(tmp_path / "out.npy").shape == (3, 32)


@pytest.mark.parametrize(
    "args, message",
    [
        (["encode", "--model", "/no/such/model", "x"], "no such model directory"),
        (["encode", "-i", "/no/such/file.txt"], "no such file"),
        (["encode", "x", "-o", "out.csv"], "must end in .npy or .jsonl"),
    ],
)
def test_errors_are_one_line_not_tracebacks(args, message):
    result = run(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
