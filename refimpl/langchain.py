"""LangChain embeddings backed by refimpl, a drop-in for ``HuggingFaceEmbeddings``.

    from refimpl.langchain import RefimplEmbeddings
    embeddings = RefimplEmbeddings()        # bespin-global/klue-sroberta-base-continue-learning-by-mnr
    vectors = embeddings.embed_documents(["첫 문서", "두 번째 문서"])
    query = embeddings.embed_query("질문")

The same arguments and results as ``langchain_huggingface.HuggingFaceEmbeddings``:
``model_kwargs`` go to the ``SentenceTransformer`` constructor, ``encode_kwargs`` to
``encode`` for documents, ``query_encode_kwargs`` (or else ``encode_kwargs``) for queries;
newlines become spaces; vectors are lists of floats, not normalized unless
``encode_kwargs={"normalize_embeddings": True}``.

With langchain-core installed (``pip install "refimpl[langchain]"``) the class is a
``langchain_core.embeddings.Embeddings`` and plugs into any vector store (Chroma, FAISS,
Qdrant, InMemoryVectorStore); without it, it still works as a plain object. Importing
``refimpl`` never imports this module, nor LangChain.
"""

from __future__ import annotations

import asyncio
from typing import Any

from refimpl.load.locate import DEFAULT_MODEL

try:
    from langchain_core.embeddings import Embeddings as _Embeddings
except ImportError:  # langchain-core is optional

    class _Embeddings:  # type: ignore[no-redef]
        """Stands in for langchain_core.embeddings.Embeddings when LangChain is not installed."""


class RefimplEmbeddings(_Embeddings):
    """refimpl's ``SentenceTransformer`` behind LangChain's ``Embeddings`` interface."""

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        *,
        cache_folder: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        encode_kwargs: dict[str, Any] | None = None,
        query_encode_kwargs: dict[str, Any] | None = None,
        show_progress: bool = False,
        model=None,
    ):
        from refimpl.model import SentenceTransformer

        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        self.encode_kwargs = dict(encode_kwargs or {})
        self.query_encode_kwargs = dict(query_encode_kwargs or {})
        self.show_progress = show_progress
        # ``model`` lets several LangChain objects share one loaded model
        self.client = (
            model
            if model is not None
            else SentenceTransformer(model_name, cache_folder=cache_folder, **self.model_kwargs)
        )

    def _embed(self, texts: list[str], encode_kwargs: dict[str, Any]) -> list[list[float]]:
        texts = [text.replace("\n", " ") for text in texts]
        embeddings = self.client.encode(texts, show_progress_bar=self.show_progress, **encode_kwargs)
        if isinstance(embeddings, list):
            raise TypeError("encode_kwargs must leave convert_to_numpy on: LangChain needs one array of embeddings")
        return embeddings.tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per document."""
        return self._embed(list(texts), self.encode_kwargs)

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (query_encode_kwargs when given, else encode_kwargs)."""
        return self._embed([text], self.query_encode_kwargs or self.encode_kwargs)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_query, text)
