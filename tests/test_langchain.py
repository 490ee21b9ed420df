"""LangChain: RefimplEmbeddings with HuggingFaceEmbeddings' semantics, in a vector store (not imported by refimpl)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests.helpers import ROOT, TOPICS, check_parity, st_model


def test_langchain_embeddings_semantics(path, model):
    from langchain_core.embeddings import Embeddings

    from refimpl.langchain import RefimplEmbeddings

    embeddings = RefimplEmbeddings(
        str(path), encode_kwargs={"batch_size": 2}, query_encode_kwargs={"normalize_embeddings": True}
    )
    assert isinstance(embeddings, Embeddings)
    documents = embeddings.embed_documents(["첫 줄\n둘째 줄", TOPICS[1]])
    assert isinstance(documents, list) and isinstance(documents[0], list) and isinstance(documents[0][0], float)
    # HuggingFaceEmbeddings: newlines become spaces, no normalization unless asked
    st = st_model(path)
    check_parity("embed_documents", documents, st.encode(["첫 줄 둘째 줄", TOPICS[1]]), 1e-5)
    query = embeddings.embed_query(TOPICS[2])
    check_parity(
        "embed_query (normalized by query_encode_kwargs)", query, st.encode(TOPICS[2], normalize_embeddings=True), 1e-5
    )
    assert asyncio.run(embeddings.aembed_documents(TOPICS[:2])) == embeddings.embed_documents(TOPICS[:2])
    assert asyncio.run(embeddings.aembed_query(TOPICS[2])) == query


def test_langchain_in_memory_vector_store(path, model):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from refimpl.langchain import RefimplEmbeddings

    store = InMemoryVectorStore(RefimplEmbeddings(model=model))
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TOPICS)])
    for i, text in enumerate(TOPICS):
        hit = store.similarity_search(text, k=1)[0]
        assert hit.metadata["i"] == i, (text, hit)


def test_importing_refimpl_does_not_import_langchain():
    code = "import sys, refimpl; from refimpl import util; print([m for m in sys.modules if m.startswith('langchain')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
