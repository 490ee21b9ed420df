"""Caches keyed by content (the search cache) and atomic writes that keep the previous file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import TEXTS


def search(model_dir, corpus, *queries):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl",
            "search",
            "--corpus",
            str(corpus),
            "--json",
            "--model",
            str(model_dir),
            *queries,
        ],
        capture_output=True,
        text=True,
        check=True,
    )


def test_search_cache_follows_the_model_files_and_repairs_itself(broken, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    first = search(broken, corpus, TEXTS[0])
    (cache,) = tmp_path.glob("corpus.txt.*.npy")
    # weights changed in place, same path: the old vectors must not be reused
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"] + 1
    save_file(state, str(broken / "model.safetensors"))
    changed = search(broken, corpus, TEXTS[0])
    assert "using cached" not in changed.stderr and changed.stdout != first.stdout
    (new_cache,) = set(tmp_path.glob("corpus.txt.*.npy")) - {cache}
    for damage, words in [(lambda raw: raw[: len(raw) // 2], "corrupt"), (None, "not 4 finite rows")]:
        if damage is None:
            np.save(new_cache, np.zeros((9, 32), np.float32))  # extra rows
        else:
            new_cache.write_bytes(damage(new_cache.read_bytes()))
        repaired = search(broken, corpus, TEXTS[0])
        assert words in repaired.stderr and "embedding the corpus again" in repaired.stderr, repaired.stderr
        assert repaired.stdout == changed.stdout and "Traceback" not in repaired.stderr
    assert "using cached" in search(broken, corpus, TEXTS[0]).stderr


def test_atomic_writes_keep_the_previous_file(tmp_path):
    from refimpl.io import write_atomically

    target = tmp_path / "out.npy"
    target.write_bytes(b"previous")

    def fails_midway(handle):
        handle.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, fails_midway)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["out.npy"]
