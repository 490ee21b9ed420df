"""Fuzzing the parsers of untrusted bytes (safetensors, pytorch_model.bin, the JSON configs) with
hypothesis, in a child process with a capped address space: tests/fuzz_targets.py says what each
target mutates and what every outcome must be. A short, reproducible budget runs in CI;
REFIMPL_FUZZ=long runs a long randomized one (docs/reliability.md reports one)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

LONG = os.environ.get("REFIMPL_FUZZ", "") == "long"
EXAMPLES = 10_000 if LONG else 120
MEMORY_MB = 3000


def test_parsers_survive_mutated_files(tiny_model, tmp_path):
    import torch

    torch.save(
        {
            "embeddings.word_embeddings.weight": torch.randn(8, 4),
            "rows": torch.randn(6, 4)[1:4],
            "half": torch.randn(5).half(),
            "ids": torch.arange(3),
        },
        tmp_path / "pytorch_model.bin",
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB * 2**20, MEMORY_MB * 2**20))

    mode = [] if LONG else ["derandomize"]
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "fuzz_targets.py"),
            str(tiny_model("roberta")),
            str(tmp_path / "pytorch_model.bin"),
            str(EXAMPLES),
            *mode,
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        cwd=ROOT,
        timeout=3600,
    )
    print(result.stderr[-4000:])
    assert result.returncode == 0, f"the fuzzer found a failure (exit {result.returncode}):\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(summary, indent=1))
    for target in ("safetensors", "pytorch_model.bin", "json"):
        assert summary[target]["cases"] >= EXAMPLES // 2
        assert any(k.startswith("refused") for k in summary[target]), (
            f"{target}: no mutation was refused; the fuzzer is not biting"
        )
