"""`refimpl verify`: passes on good models, fails on a broken refimpl, says what to install without the oracle."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import pytest

from refimpl.apps.cli import main
from tests.helpers import ROOT


def verify(capsys, *args):
    try:
        main(["verify", *map(str, args), "--json"])
        code = 0
    except SystemExit as exit:
        code = exit.code
    result = json.loads(capsys.readouterr().out)
    for dtype, table in result["dtypes"].items():
        for row in table["rows"]:
            print(f"{dtype} {row['name']}: max |diff| {row['max_diff']:.2e} (tolerance {row['tolerance']:.0e})")
    return code, result


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta"])
def test_verify_passes_on_the_tiny_models(tiny_model, capsys, model_type, engine):
    code, result = verify(capsys, tiny_model(model_type), "--engine", engine)
    assert code == 0 and result["passed"] and result["tokens"]["match"] and result["tokens"]["truncated"] == 1
    rows = result["dtypes"]["float32"]["rows"]
    assert [r["name"] for r in rows] == ["embeddings", "layer 1", "layer 2", "layer 3", "pooled"]
    assert all(r["refimpl_vs_float64"] is not None for r in rows)
    assert max(r["max_diff"] for r in result["dtypes"]["float64"]["rows"]) < 1e-12


def test_verify_passes_on_real_minilm_weights(minilm_dir, capsys):
    code, result = verify(capsys, minilm_dir, "--dtype", "float32")
    assert code == 0 and result["dtypes"]["float32"]["rows"][-1]["name"] == "normalized"


@pytest.mark.parametrize(
    "engine, target",
    [("fast", "refimpl.engines.fast.encoder.linear"), ("reference", "refimpl.engines.reference.forward.gelu")],
)
def test_verify_fails_on_a_broken_refimpl(tiny_model, capsys, monkeypatch, engine, target):
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    if engine == "fast":

        def broken(x, w, packed=None, with_bias=True, gelu=False):
            y = original(x, w, packed, with_bias, gelu)
            if gelu:
                y[:, 0] += 1e-3  # one feature off by 1e-3 after each GELU
            return y
    else:

        def broken(x):
            return original(x) * (1 + 1e-3)

    monkeypatch.setattr(module, name, broken)
    code, result = verify(capsys, tiny_model("roberta"), "--engine", engine)
    failed = [r["name"] for r in result["dtypes"]["float32"]["rows"] if not r["ok"]]
    print("failed rows:", failed)
    assert code == 1 and not result["passed"] and "layer 1" in failed and "embeddings" not in failed


def test_text_report_and_sentences_file(tiny_model, tmp_path):
    (tmp_path / "s.txt").write_text("첫 문장\n두 번째 문장입니다\n", encoding="utf-8")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl",
            "verify",
            str(tiny_model("bert")),
            "--sentences",
            str(tmp_path / "s.txt"),
            "--dtype",
            "float64",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    print(out.stdout)
    assert out.returncode == 0 and "| layer 3 |" in out.stdout and out.stdout.strip().endswith("PASSED")
    assert "2 sentences" in out.stdout and "float32" not in out.stdout


def test_without_the_oracle_verify_says_what_to_install(tiny_model):
    block = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "sentence_transformers"):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
from refimpl.apps.cli import main
main(["verify", sys.argv[1]])
"""
    out = subprocess.run(
        [sys.executable, "-c", block, str(tiny_model("roberta"))], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 1 and 'pip install "refimpl[verify]"' in out.stderr and "Traceback" not in out.stderr, (
        out.stderr
    )


def test_an_unsupported_config_is_refused_naming_the_key(tiny_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model("roberta"), path)
    config = json.loads((path / "config.json").read_text())
    config["hidden_act"] = "gelu_new"
    (path / "config.json").write_text(json.dumps(config))
    out = subprocess.run(
        [sys.executable, "-m", "refimpl", "verify", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert (
        out.returncode == 1 and "hidden_act 'gelu_new' is not supported" in out.stderr and "Traceback" not in out.stderr
    )
