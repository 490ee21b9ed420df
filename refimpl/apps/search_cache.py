"""``refimpl search``'s cache: the corpus embeddings in a .npy beside the corpus, keyed by content."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np

from refimpl.io import fingerprint_dir, fingerprint_file


def corpus_cache_path(corpus: Path, model) -> Path:
    """Beside the corpus, keyed by the model's content (files, dtype, length) and the corpus file's hash."""
    digest = fingerprint_file(corpus)[:16]
    model_key = hashlib.sha256(
        f"{fingerprint_dir(model.model_dir)}|{model.dtype}|{model.max_seq_length}|{model.truncate_dim}".encode()
    ).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(model.model_name_or_path)).name)[:40]
    return corpus.with_name(f"{corpus.name}.{name}-{model_key}.{digest}.npy")


def load_corpus_cache(cache: Path, rows: int, dimension: int):
    """The cached corpus embeddings, or None (saying why) when the file is unreadable or the wrong shape."""
    try:
        embeddings = np.load(cache, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        print(f"refimpl: the cache {cache} is corrupt ({error}); embedding the corpus again", file=sys.stderr)
        return None
    if embeddings.shape != (rows, dimension) or embeddings.dtype.kind != "f" or not np.isfinite(embeddings).all():
        print(
            f"refimpl: the cache {cache} holds {embeddings.shape} {embeddings.dtype} values, not {rows} finite rows "
            f"of {dimension}; embedding the corpus again",
            file=sys.stderr,
        )
        return None
    return embeddings
