"""refimpl: sentence embeddings with BERT/RoBERTa encoders in NumPy, no PyTorch.

    from refimpl import SentenceTransformer
    model = SentenceTransformer()          # bespin-global/klue-sroberta-base-continue-learning-by-mnr
    embeddings = model.encode(["첫 번째 문장", "두 번째 문장"])

Submodules load lazily: ``import refimpl`` imports neither numba nor huggingface_hub.
"""

from __future__ import annotations

from refimpl.load.locate import DEFAULT_MODEL

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "SentenceTransformer", "__version__"]


def __getattr__(name):
    if name == "SentenceTransformer":
        from refimpl.model import SentenceTransformer

        return SentenceTransformer
    if name in ("util", "quantization", "langchain", "dask"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'refimpl' has no attribute {name!r}")
