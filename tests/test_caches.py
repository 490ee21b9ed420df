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


# --- a symlink planted where the temporary of an output used to be (".NAME.tmp-PID") is never followed


def plant(target, victim):
    """A symlink at the temporary name refimpl used before mkstemp, pointing at a file to protect."""
    import os

    link = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    link.symlink_to(victim)
    return link


def bin_checkpoint(model_dir, target):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(model_dir / "model.safetensors")), target)
    return target


@pytest.mark.parametrize("output", ["encode -o", "search cache", "convert", "explain --png"])
def test_a_symlink_at_the_old_temporary_name_is_not_followed(path, tmp_path, output):
    """Every output runs in this process (so the old name's PID is this one); the file the planted link
    points to must keep its content, and the output must be a new regular file."""
    from refimpl import SentenceTransformer
    from refimpl.apps.cli import main
    from refimpl.apps.search_cache import corpus_cache_path

    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    if output == "encode -o":
        targets, command = (
            [tmp_path / "out.npy"],
            ["encode", "하나", "둘", "--model", str(path), "-o", str(tmp_path / "out.npy")],
        )
    elif output == "search cache":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
        targets = [corpus_cache_path(corpus, SentenceTransformer(str(path)))]
        command = ["search", "--corpus", str(corpus), "--model", str(path), TEXTS[0]]
    elif output == "convert":
        source = bin_checkpoint(path, tmp_path / "pytorch_model.bin")
        targets, command = [tmp_path / "w.safetensors"], ["convert", str(source), str(tmp_path / "w.safetensors")]
    else:
        folder = tmp_path / "figures"
        folder.mkdir()
        names = ["s1-attention-layer01.png", "s1-attention-layer02.png", "s1-attention-layer03.png"]
        targets = [folder / n for n in names + ["s1-head-l3-h0.png", "s1-layers.png", "s1-pooling.png"]]
        command = ["explain", "한 문장", "--model", str(path), "--png", str(folder)]
    links = [plant(target, victim) for target in targets]
    main(command)
    assert victim.read_text(encoding="utf-8") == "precious"
    assert all(t.is_file() and not t.is_symlink() and t.stat().st_size > 0 for t in targets)
    assert all(link.is_symlink() for link in links)  # left alone, never written through
