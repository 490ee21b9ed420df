"""One cold start, timed by the parent: import, load a model, embed one sentence; prints RSS as JSON.

python -m tools.workers.cold_start ENGINE MODEL_DIR TEXT THREADS
"""

from __future__ import annotations

import json
import sys

from tools.common import peak_rss_mb, rss_mb


def load(engine, model_dir, threads):
    if engine == "refimpl":
        from refimpl import SentenceTransformer

        model = SentenceTransformer(model_dir)
        return lambda text: model.encode(text)
    if engine == "sentence-transformers":
        import torch

        torch.set_num_threads(threads)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")
        return lambda text: model.encode(text)
    from tools.bench import OnnxRuntimeEngine

    model = OnnxRuntimeEngine(model_dir, threads, "fp32")
    return lambda text: model.encode([text], 1)


def main():
    engine, model_dir, text, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    encode = load(engine, model_dir, threads)
    loaded = rss_mb()
    encode(text)
    print(json.dumps({"rss_after_load": loaded, "peak_rss": peak_rss_mb()}))


if __name__ == "__main__":
    main()
