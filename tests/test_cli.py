"""The command line: encode (arguments, files, stdin, .npy and .jsonl, Ctrl-C), similarity, search, eval-sts, errors."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from refimpl import SentenceTransformer, util
from tests.helpers import TEXTS, TOPICS, random_sentences, run_limited


def run(*args, stdin=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "refimpl", *map(str, args)], input=stdin, capture_output=True, text=True, check=False
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
    run(
        "encode",
        "--model",
        model_dir,
        "--normalize",
        "--batch-size",
        "2",
        "-o",
        tmp_path / "out.jsonl",
        stdin="\n".join(TEXTS),
    )
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


def test_eval_sts_reads_tsv_the_same(path, sts_files):
    folder, _ = sts_files

    def metrics(file):
        return json.loads(run("eval-sts", file, "--model", path, "--json").stdout)

    assert metrics(folder / "sts.tsv") == metrics(folder / "klue-sts.json")
    table = run("eval-sts", folder / "sts.tsv", "--model", path).stdout
    assert "| cosine |" in table and "| manhattan |" in table


def test_cli_similarity(path, model):
    out = run("similarity", TOPICS[0], TOPICS[1], "--model", path)
    a, b = model.encode(TOPICS[:2])
    assert abs(float(out.stdout) - float(util.cos_sim(a, b)[0, 0])) < 1e-5


def test_cli_search_caches_the_corpus(path, model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOPICS) + "\n", encoding="utf-8")
    command = ["search", "--corpus", corpus, "--top-k", "2", "--json", "--model", path, TOPICS[3], TOPICS[0]]
    first = run(*command)
    hits = [json.loads(line) for line in first.stdout.splitlines()]
    assert [h["hits"][0]["corpus_id"] for h in hits] == [3, 0]
    assert hits[0]["hits"][0]["text"] == TOPICS[3] and len(hits[0]["hits"]) == 2
    caches = list(tmp_path.glob("corpus.txt.*.npy"))
    assert len(caches) == 1 and "Batches" in first.stderr
    np.testing.assert_allclose(np.load(caches[0]), model.encode(TOPICS), atol=1e-6)
    second = run(*command)
    assert "using cached corpus embeddings" in second.stderr and second.stdout == first.stdout
    corpus.write_text("\n".join(TOPICS[::-1]) + "\n", encoding="utf-8")  # a changed file gets a new cache
    third = run(*command)
    assert "using cached" not in third.stderr and len(list(tmp_path.glob("corpus.txt.*.npy"))) == 2


def test_ctrl_c_on_the_command_line_exits_quietly(tiny_model, tmp_path):
    (tmp_path / "big.txt").write_text("\n".join(random_sentences(60_000, seed=2)), encoding="utf-8")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refimpl",
            "encode",
            "--model",
            str(tiny_model("roberta")),
            "-i",
            str(tmp_path / "big.txt"),
            "-o",
            str(tmp_path / "out.npy"),
            "--progress",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, deadline = "", time.monotonic() + 120
    while (
        "Batches" not in seen and time.monotonic() < deadline
    ):  # interrupt once it is encoding, however slow the machine
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "Batches" in seen, seen
    assert process.returncode == 130, seen + stderr
    assert "Traceback" not in stderr


# --- errors before any work, quiet pipes, strict output ---


def cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "refimpl", *map(str, args)], capture_output=True, text=True, input=stdin
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["encode", "x", "-o", "/no/such/folder/out.npy"], "does not exist"),
        (["encode", "x", "-o", "{tmp}"], "is a directory"),
        (["encode", "-i", "{tmp}", "-o", "{tmp}/out.npy"], "is a directory"),
        (["convert", "/no/such/pytorch_model.bin", "{tmp}/out.safetensors"], "no such file"),
        (["convert", "{tmp}", "{tmp}/out.safetensors"], "is a directory"),
    ],
)
def test_cli_errors_are_one_line_before_any_work(tiny_model, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--model", str(tiny_model("roberta"))] * (
        args[0] == "encode"
    )
    result = cli(*args)
    print(result.stderr)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["many", "0", "-3"])
@pytest.mark.parametrize("flag", ["--batch-size", "--threads", "--workers", "--partition-lines"])
def test_cli_counts_are_positive_integers_or_a_usage_error(flag, value):
    result = cli("encode", "x", flag, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument {flag}" in result.stderr and (
        "not an integer" in result.stderr or "not a positive" in result.stderr
    )


SERVE_COUNTS = [
    "--threads",
    "--max-batch-tokens",
    "--max-concurrent-requests",
    "--max-client-batch-size",
    "--payload-limit",
    "--max-input-chars",
    "--tokenization-workers",
]


@pytest.mark.parametrize("value", ["many", "0", "-3"])
@pytest.mark.parametrize("flag", SERVE_COUNTS)
def test_serve_counts_follow_the_same_rule(flag, value):
    result = cli("serve", flag, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"argument {flag}" in result.stderr and (
        "not an integer" in result.stderr or "not a positive" in result.stderr
    ), result.stderr


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--port", "many", "not an integer"),
        ("--port", "70000", "not a port"),
        ("--shutdown-timeout", "nan", "finite number >= 0"),
        ("--shutdown-timeout", "-5", "finite number >= 0"),
        ("--shutdown-timeout", "soon", "not a number"),
    ],
)
def test_serve_port_and_timeout_are_checked(flag, value, message):
    result = cli("serve", flag, value)
    assert result.returncode == 2 and f"argument {flag}" in result.stderr and message in result.stderr, result.stderr


def _model_group(parser):
    group = next(g for g in parser._action_groups if g.title == "model")
    return {
        action.dest: (
            tuple(action.option_strings),
            action.default,
            action.choices,
            action.type,
            action.nargs,
            action.help,
            action.metavar,
        )
        for action in group._group_actions
    }


def test_every_command_that_loads_a_model_takes_the_same_model_options():
    """One rule (refimpl.apps.arguments): encode, search, ... and serve take the same model options, with
    the same choices, defaults, checks and help; serve adds only the name it serves the model under."""
    from refimpl.apps.cli import COMMANDS, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    loading = [name for name, _, _, loads_model, _, _ in COMMANDS if loads_model]
    groups = {name: _model_group(commands[name]) for name in loading}
    serve = _model_group(commands["serve"])
    assert serve.pop("served_model_name")[0] == ("--served-model-name",)
    assert len(groups) >= 5
    for name, group in groups.items():
        assert group == serve, name
    assert serve["compute"][2] == ("float32", "int8", "bfloat16") and serve["dtype"][2] == ("float32", "float64")


def test_serve_passes_every_model_option_on(monkeypatch):
    """refimpl serve builds its model from the shared options, each one (the warm-up embeds one sentence)."""
    import refimpl
    from refimpl.apps.serve.cli import build_parser, load_model

    seen = {}

    class Recorder:
        def __init__(self, model, **options):
            seen.update(model=model, **options)

        def tokenize_batch(self, texts):
            return texts

        def embed_batch(self, batch):
            return None

    monkeypatch.setattr(refimpl, "SentenceTransformer", Recorder)
    args = build_parser().parse_args(
        ["--model", "M", "--revision", "r1", "--cache-folder", "C", "--local-files-only", "--dtype", "float64"]
        + ["--compute", "int8", "--threads", "3"]
    )
    load_model(args)
    assert seen == dict(
        model="M", revision="r1", cache_folder="C", local_files_only=True, dtype="float64", compute="int8", threads=3
    )


def test_threads_with_workers_is_refused_not_ignored(tmp_path):
    (tmp_path / "in.txt").write_text("a\n", encoding="utf-8")
    output = str(tmp_path / "o.npy")
    result = cli("encode", "-i", str(tmp_path / "in.txt"), "-o", output, "--workers", "2", "--threads", "1")
    assert result.returncode == 1 and "--threads is not used with --scheduler/--workers" in result.stderr, result.stderr
    assert not (tmp_path / "o.npy").exists()


def test_broken_pipe_is_quiet(tiny_model):
    command = f"{sys.executable} -m refimpl encode --model {tiny_model('roberta')} -i - | head -c 10"
    result = subprocess.run(["bash", "-c", command], input="\n".join(TEXTS * 3000), capture_output=True, text=True)
    assert len(result.stdout) == 10 and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, (
        result.stderr
    )


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_embed_checks_batch_size_like_encode(model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.encode(TEXTS, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(model.embed(TEXTS, batch_size=batch_size))


def sts_file(tmp_path, rows):
    path = tmp_path / "sts.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "rows, message",
    [
        ("", "the file is empty"),
        ([{"sentence1": "a", "sentence2": "b", "labels": {"label": float("nan")}}] * 3, "not a finite number"),
        ([{"sentence1": None, "sentence2": "b", "labels": {"label": 1}}] * 3, "sentence1 must be a string"),
        ([{"sentence1": "a", "sentence2": 5, "labels": {"label": 1}}] * 3, "sentence2 must be a string"),
        ([{"sentence1": "a", "sentence2": "b", "labels": {"label": 1}}], "at least 2"),
    ],
)
def test_eval_sts_refuses_bad_data(tiny_model, tmp_path, rows, message):
    path = tmp_path / "sts.json"
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows), encoding="utf-8")
    result = cli("eval-sts", path, "--model", tiny_model("roberta"))
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_eval_sts_json_is_strict_json_with_null_for_undefined(tiny_model, tmp_path):
    # constant gold scores: every correlation is undefined, whatever float noise does to the predictions
    rows = [
        {"sentence1": a, "sentence2": b, "labels": {"label": 2.5}}
        for a, b in (("가", "나"), ("다", "라"), ("마", "바"))
    ]
    result = cli("eval-sts", sts_file(tmp_path, rows), "--model", tiny_model("roberta"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert set(metrics.values()) == {None} and "undefined" in result.stderr


def test_crafted_files_never_crash_the_interpreter_under_a_memory_cap(broken):
    """A last sweep in one capped child: each crafted model directory ends in a refimpl error."""
    code = """
import json, sys
from pathlib import Path
from refimpl import SentenceTransformer
from refimpl.errors import RefimplError
for directory in sys.argv[1:]:
    try:
        SentenceTransformer(directory, engine="reference").encode(["문장"])
    except (RefimplError, ValueError) as error:
        print("refused", type(error).__name__)
    else:
        print("loaded")
"""
    directories = []
    for i, change in enumerate(
        [
            lambda p: (p / "config.json").write_text("[" * 50_000),
            lambda p: (p / "modules.json").write_text(
                '[{"idx": "x", "type": "sentence_transformers.models.Transformer"}]'
            ),
            lambda p: (p / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}"),
            lambda p: (p / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}" + b"\0" * 10),
        ]
    ):
        target = broken.parent / f"crafted-{i}"
        shutil.copytree(broken, target)
        change(target)
        directories.append(target)
    result = run_limited(code, 1500, *directories)
    print(result.stdout, result.stderr[-1000:])
    assert result.returncode == 0 and result.stdout.split().count("refused") == len(directories)
