"""`refimpl verify`: passes on good models; fails, naming the first stage that differs, on a broken refimpl
and on each class of setting read the old way; says what to install without the oracle."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import pytest

from refimpl.apps.cli import main
from tests.helpers import (
    DELETE,
    ROOT,
    both,
    cls_only_template,
    copy_model,
    keys,
    modules,
    rename,
    template_types,
    tokenizer_json,
    write,
)


def verify(capsys, *args):
    capsys.readouterr()  # what was printed before is not the report
    try:
        main(["verify", *map(str, args), "--json"])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr().out
    assert out.strip(), f"verify printed no report: {code}"  # a load error ends in SystemExit("refimpl: ...")
    try:
        result = json.loads(out)
    except ValueError:
        raise AssertionError(f"not a JSON report: {out[:500]}") from None
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
    assert [r["name"] for r in rows] == ["embeddings", "layer 1", "layer 2", "layer 3", "pooled", "encode"]
    assert all(r["refimpl_vs_float64"] is not None for r in rows[:-1])
    assert max(r["max_diff"] for r in result["dtypes"]["float64"]["rows"] if r["name"] != "encode") < 1e-12


def test_verify_passes_on_real_minilm_weights(minilm_dir, capsys):
    code, result = verify(capsys, minilm_dir, "--dtype", "float32")
    assert code == 0 and [r["name"] for r in result["dtypes"]["float32"]["rows"][-2:]] == ["normalized", "encode"]


@pytest.mark.parametrize(
    "engine, target",
    [("fast", "refimpl.engines.fast.encoder.linear"), ("reference", "refimpl.engines.reference.forward.gelu")],
)
def test_verify_fails_on_a_broken_refimpl(tiny_model, capsys, monkeypatch, engine, target):
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    if engine == "fast":

        def broken(x, w, packed=None, with_bias=True, gelu=False, **buffers):
            y = original(x, w, packed, with_bias, gelu, **buffers)
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
    assert result["first_difference"] == "layer 1"


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


# --- each class of setting, read the old way: verify must fail at the stage where the difference starts


def old_tokenizer_json(settings, directory):
    """refimpl before issue 18: tokenizer.json as it is, whatever tokenizer_config.json says."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def without(field):
    """TransformerSettings.from_dir as before issue 18 for one of its kwargs dicts: not read."""
    import dataclasses

    from refimpl.load.transformer_config import TransformerSettings

    original = TransformerSettings.from_dir.__func__

    def from_dir(cls, directory):
        return dataclasses.replace(original(cls, directory), **{field: {}})

    return "refimpl.load.transformer_config.TransformerSettings.from_dir", classmethod(from_dir)


def old_prompt_length(self, prompt):
    return len(self.encode([prompt]).input_ids) - 1  # always one special token at the end


def ignore_prompt(self, states, prompt_length=0):
    return states.pool(self.config.modes, 0)


PROMPTED = {"prompts": {"q": "R S "}, "default_prompt_name": "q"}
NORMALIZED = modules(
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)
OLD_WAYS = [
    # (class, edit, what is patched back to the old behaviour, the stage verify must name)
    ("tokenizer_config.json do_lower_case (default true)", keys("tokenizer_config.json", do_lower_case=DELETE), ("refimpl.load.tokenizer.build_backend", old_tokenizer_json), "tokens"),
    ("token_type_ids of the template", both(keys("tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast"), template_types(1)), ("refimpl.load.tokenizer_settings.TokenizerSettings.type_ids_used", lambda self: True), "tokens"),
    ("special_tokens_map.json precedence", keys("special_tokens_map.json", cls_token="[MASK]"), ("refimpl.load.tokenizer_settings._special_tokens_map", lambda *args: None), "tokens"),
    ("tokenizer class from config.json", both(keys("tokenizer_config.json", tokenizer_class=DELETE), keys("config.json", tokenizer_class="BertTokenizer"), tokenizer_json(lambda d: d["normalizer"].update(lowercase=True))), ("refimpl.load.tokenizer.build_backend", old_tokenizer_json), "tokens"),
    ("legacy sentence_bert_config.json name", both(rename("sentence_bert_config.json", "sentence_roberta_config.json"), keys("sentence_roberta_config.json", max_seq_length=8)), ("refimpl.load.transformer_config.SBERT_CONFIG_NAMES", ("sentence_bert_config.json",)), "tokens"),
    ("config_kwargs layer_norm_eps", keys("sentence_bert_config.json", config_kwargs={"layer_norm_eps": 0.5}), without("config_kwargs"), "embeddings"),
    ("config_args hidden_act relu", keys("sentence_bert_config.json", config_args={"hidden_act": "relu"}), without("config_kwargs"), "layer 1"),
    ("tokenizer_args model_max_length", keys("sentence_bert_config.json", tokenizer_args={"model_max_length": 8}), without("processor_kwargs"), "tokens"),
    ("truncation_side left", keys("tokenizer_config.json", truncation_side="left"), ("refimpl.load.tokenizer_settings.TokenizerSettings.side", lambda self, key, tj: "right"), "tokens"),
    ("prompt length with include_prompt false", both(keys("1_Pooling/config.json", include_prompt=False), keys("tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast"), tokenizer_json(cls_only_template), keys("config_sentence_transformers.json", **PROMPTED)), ("refimpl.load.tokenizer.TextTokenizer.prompt_length", old_prompt_length), "tokens"),
    ("pooling without the prompt", both(keys("1_Pooling/config.json", include_prompt=False), keys("config_sentence_transformers.json", **PROMPTED)), ("refimpl.run.modules.Pooling.__call__", ignore_prompt), "pooled"),
    ("2_Normalize/config.json module_input_name", both(NORMALIZED, write("2_Normalize/config.json", {"module_input_name": "token_embeddings"})), ("refimpl.run.modules.check_normalize_config", lambda path: None), "normalized"),
    ("config_sentence_transformers.json truncate_dim", keys("config_sentence_transformers.json", truncate_dim=16), ("refimpl.load.config.SentenceTransformerConfig.truncate_dim", None), "encode"),
]  # fmt: skip


@pytest.mark.parametrize("name, edit, patch, stage", OLD_WAYS, ids=[way[0] for way in OLD_WAYS])
def test_verify_fails_where_an_old_reading_differs(tiny_model, tmp_path, capsys, monkeypatch, name, edit, patch, stage):
    path = copy_model(tiny_model("bert"), tmp_path / "model")
    edit(path)
    target, value = patch
    if target.endswith("SentenceTransformerConfig.truncate_dim"):
        monkeypatch.setattr("refimpl.load.config.SentenceTransformerConfig.from_file", ignore_truncate_dim())
    else:
        monkeypatch.setattr(target, value)
    code, result = verify(capsys, path, "--dtype", "float32")
    print(name, "->", result["first_difference"], result["tokens"]["difference"])
    assert code == 1 and not result["passed"] and result["first_difference"] == stage


def ignore_truncate_dim():
    import dataclasses

    from refimpl.load.config import SentenceTransformerConfig

    original = SentenceTransformerConfig.from_file.__func__
    return classmethod(lambda cls, path: dataclasses.replace(original(cls, path), truncate_dim=None))


def test_the_same_models_pass_verify_without_the_old_readings(tiny_model, tmp_path, capsys):
    for index, (name, edit, _, _) in enumerate(OLD_WAYS):
        if "relu" in name or "module_input_name" in name:
            continue  # refused by refimpl (documented): nothing to verify
        path = copy_model(tiny_model("bert"), tmp_path / f"model{index}")
        edit(path)
        code, result = verify(capsys, path, "--dtype", "float32")
        assert code == 0 and result["passed"], (name, result["first_difference"], result["tokens"]["difference"])


def test_half_precision_fails_verify_at_encode_with_a_note(tiny_model, tmp_path, capsys):
    path = copy_model(tiny_model("bert"), tmp_path / "model")
    keys("config.json", dtype="bfloat16")(path)
    code, result = verify(capsys, path, "--dtype", "float32")
    assert code == 1 and result["first_difference"] == "encode" and "bfloat16" in result["notes"][0]


def test_verify_runs_in_batches(tiny_model, capsys, tmp_path, monkeypatch):
    """1,000 long lines go through both sides BATCH sentences at a time (all at once blew an 8 GB cap)."""
    from refimpl.apps import verify as module

    sizes = []
    original = module.torch_stages

    def spy(encoder, features, *args):
        sizes.append(len(features["input_ids"]))
        return original(encoder, features, *args)

    monkeypatch.setattr(module, "torch_stages", spy)
    lines = [f"{i}번째 줄은 길게 이어지는 문장이다. " * 40 for i in range(1000)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, result = verify(capsys, tiny_model("bert"), "--sentences", tmp_path / "lines.txt", "--dtype", "float32")
    assert code == 0 and result["sentences"] == 1000 and result["tokens"]["truncated"] == 1000
    assert max(sizes) <= module.BATCH and len(sizes) == 2 * -(-1000 // module.BATCH)  # float32 and float64 passes


@pytest.mark.parametrize("atol", ["nan", "-1e-5", "inf", "x"])
def test_a_tolerance_that_is_not_a_finite_number_is_a_usage_error(tiny_model, capsys, atol):
    with pytest.raises(SystemExit) as exit:
        main(["verify", str(tiny_model("bert")), "--atol", atol])
    assert exit.value.code == 2 and "--atol" in capsys.readouterr().err
