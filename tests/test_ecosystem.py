"""What sentence-transformers and LangChain users reach for: encode options, similarity, search,
STS evaluation, LangChain, and the CLI around them; each against sentence-transformers itself."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, check_parity, st_model
from refimpl import SentenceTransformer, util
from refimpl.evaluation import average_ranks, pearson, spearman
from refimpl.quantization import quantize_embeddings

TEXTS = [
    "오늘은 날씨가 맑고 바람이 시원하게 분다.",
    "내일 아침에는 전국적으로 비가 내릴 예정이다.",
    "고양이가 창가에 앉아 햇볕을 쬐고 있다.",
    "강아지가 주인을 보자마자 꼬리를 흔들었다.",
    "주식 시장이 이틀 연속으로 하락세를 보였다.",
    "서울에서 부산까지 기차로 두 시간 반 걸린다.",
]


# --- encode options ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_quantization_semantics_equal_sentence_transformers(precision, model):
    from sentence_transformers.util.quantization import quantize_embeddings as st_quantize

    embeddings = model.encode(TEXTS)
    ours = quantize_embeddings(embeddings, precision)
    theirs = st_quantize(embeddings, precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    ranges = np.vstack([embeddings.min(0) - 0.1, embeddings.max(0) + 0.1])
    if precision.endswith("int8"):
        np.testing.assert_array_equal(quantize_embeddings(embeddings, precision, ranges=ranges), st_quantize(embeddings, precision, ranges=ranges))
    # encode(precision=...) quantizes the batch's own float embeddings, as sentence-transformers does
    np.testing.assert_array_equal(model.encode(TEXTS, precision=precision), ours)


def test_truncate_dim_like_sentence_transformers(path, model):
    check_parity("truncate_dim=8", model.encode(TEXTS, truncate_dim=8), st_model(path).encode(TEXTS, truncate_dim=8), 1e-5)
    short = SentenceTransformer(path, truncate_dim=8)
    assert short.get_sentence_embedding_dimension() == 8 and short.encode(TEXTS).shape == (6, 8)
    unit = short.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)  # normalized after truncating


@pytest.fixture(scope="module")
def prompted(tiny_model, tmp_path_factory):
    def make(include_prompt=True):
        base = tiny_model("roberta")
        path = tmp_path_factory.mktemp("prompted") / "model"
        shutil.copytree(base, path)
        (path / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": {"query": "질문: ", "document": "문서: "}, "default_prompt_name": "query", "similarity_fn_name": "dot"}
        ))
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        pooling["include_prompt"] = include_prompt
        (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        return path

    return make


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_like_sentence_transformers(prompted, include_prompt):
    path = prompted(include_prompt)
    ours, theirs = SentenceTransformer(path), st_model(path)
    assert ours.prompts == {"query": "질문: ", "document": "문서: "} and ours.default_prompt_name == "query"
    assert ours.similarity_fn_name == "dot"
    check_parity("default prompt", ours.encode(TEXTS), theirs.encode(TEXTS), 1e-5)
    check_parity("prompt_name", ours.encode(TEXTS, prompt_name="document"), theirs.encode(TEXTS, prompt_name="document"), 1e-5)
    check_parity("prompt", ours.encode(TEXTS, prompt="맞춤 지시: "), theirs.encode(TEXTS, prompt="맞춤 지시: "), 1e-5)
    check_parity("encode_query", ours.encode_query(TEXTS), theirs.encode_query(TEXTS), 1e-5)
    check_parity("encode_document", ours.encode_document(TEXTS), theirs.encode_document(TEXTS), 1e-5)
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        ours.encode(TEXTS, prompt_name="nope")


# --- similarity and search --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan"])
def test_model_similarity_like_sentence_transformers(path, name):
    ours, theirs = SentenceTransformer(path, similarity_fn_name=name), st_model(path)
    a, b = ours.encode(TEXTS[:4]), ours.encode(TEXTS[2:])
    theirs.similarity_fn_name = name
    try:
        check_parity(f"similarity {name}", ours.similarity(a, b), theirs.similarity(a, b).numpy(), 1e-5)
        check_parity(f"similarity_pairwise {name}", ours.similarity_pairwise(a, b), theirs.similarity_pairwise(a, b).numpy(), 1e-5)
    finally:
        theirs.similarity_fn_name = "cosine"
    with pytest.raises(ValueError, match="similarity_fn_name"):
        ours.similarity_fn_name = "jaccard"


def test_util_functions_equal_sentence_transformers():
    from sentence_transformers import util as st_util

    r = np.random.default_rng(0)
    a, b = r.normal(size=(7, 16)).astype(np.float32), r.normal(size=(5, 16)).astype(np.float32)
    for name in ("cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"):
        check_parity(name, getattr(util, name)(a, b), getattr(st_util, name)(a, b).numpy(), 1e-5)
    for name in ("pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"):
        check_parity(name, getattr(util, name)(a, a[::-1].copy()), getattr(st_util, name)(a, a[::-1].copy()).numpy(), 1e-5)
    assert util.cos_sim(a[0], b).shape == (1, 5)  # a single embedding is a row


@pytest.mark.parametrize("chunks", [(100, 500000), (2, 3)])
def test_semantic_search_equals_sentence_transformers(chunks):
    from sentence_transformers import util as st_util

    r = np.random.default_rng(1)
    queries, corpus = r.normal(size=(5, 16)).astype(np.float32), r.normal(size=(40, 16)).astype(np.float32)
    query_chunk, corpus_chunk = chunks
    for function in (util.cos_sim, util.dot_score):
        ours = util.semantic_search(queries, corpus, top_k=7, query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk, score_function=function)
        st_function = st_util.cos_sim if function is util.cos_sim else st_util.dot_score
        theirs = st_util.semantic_search(queries, corpus, top_k=7, query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk, score_function=st_function)
        assert [[h["corpus_id"] for h in q] for q in ours] == [[h["corpus_id"] for h in q] for q in theirs]
        check_parity(f"semantic_search {function.__name__}", [[h["score"] for h in q] for q in ours], [[h["score"] for h in q] for q in theirs], 1e-5)
    assert len(util.semantic_search(queries, corpus[:3], top_k=10)[0]) == 3
    # positional arguments in sentence-transformers' order: query_chunk_size, corpus_chunk_size, top_k
    assert util.semantic_search(queries, corpus, 2, 7, 4) == util.semantic_search(queries, corpus, query_chunk_size=2, corpus_chunk_size=7, top_k=4)


# --- tokens, progress, the generator ------------------------------------------------------------


def test_token_count(model, path):
    tokenizer = st_model(path).tokenizer
    long_text = "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 20
    counts = model.token_count(TEXTS + [long_text])
    assert counts == [len(tokenizer(t, truncation=False)["input_ids"]) for t in TEXTS + [long_text]]
    assert counts[-1] > model.max_seq_length, "counted before truncation"
    assert model.token_count("한 문장") == len(tokenizer("한 문장")["input_ids"])


def test_progress_bar(model, capsys, caplog):
    model.encode(TEXTS, show_progress_bar=True, batch_size=2)
    assert "Batches" in capsys.readouterr().err
    model.encode(TEXTS)
    assert "Batches" not in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="refimpl"):
        model.encode(TEXTS)  # like sentence-transformers: shown when the logger is at INFO
    assert "Batches" in capsys.readouterr().err


def test_embed_generator_yields_batches_in_order(model):
    batches = list(model.embed(iter(TEXTS * 3), batch_size=4, chunk_size=8))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 2]
    check_parity("embed vs encode", np.concatenate(batches), model.encode(TEXTS * 3), 1e-6)


def test_embed_generator_is_lazy(model):
    endless = (f"문장 번호 {i}" for i in itertools.count())
    first = list(itertools.islice(model.embed(endless, batch_size=5, chunk_size=10), 3))
    assert [b.shape for b in first] == [(5, 32)] * 3
    with pytest.raises(ValueError, match="int8"):
        next(model.embed(TEXTS, precision="int8"))


def test_embed_warns_once_for_the_whole_run(model, caplog):
    texts = ["서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 10, "짧다"] * 6
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        list(model.embed(texts, batch_size=2, chunk_size=4))
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "6 of 12 inputs" in warnings[0].getMessage()


# --- LangChain ------------------------------------------------------------------------------------


def test_langchain_embeddings_semantics(path, model):
    from langchain_core.embeddings import Embeddings

    from refimpl.langchain import RefimplEmbeddings

    embeddings = RefimplEmbeddings(str(path), encode_kwargs={"batch_size": 2}, query_encode_kwargs={"normalize_embeddings": True})
    assert isinstance(embeddings, Embeddings)
    documents = embeddings.embed_documents(["첫 줄\n둘째 줄", TEXTS[1]])
    assert isinstance(documents, list) and isinstance(documents[0], list) and isinstance(documents[0][0], float)
    # HuggingFaceEmbeddings: newlines become spaces, no normalization unless asked
    st = st_model(path)
    check_parity("embed_documents", documents, st.encode(["첫 줄 둘째 줄", TEXTS[1]]), 1e-5)
    query = embeddings.embed_query(TEXTS[2])
    check_parity("embed_query (normalized by query_encode_kwargs)", query, st.encode(TEXTS[2], normalize_embeddings=True), 1e-5)
    assert asyncio.run(embeddings.aembed_documents(TEXTS[:2])) == embeddings.embed_documents(TEXTS[:2])
    assert asyncio.run(embeddings.aembed_query(TEXTS[2])) == query


def test_langchain_in_memory_vector_store(path, model):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from refimpl.langchain import RefimplEmbeddings

    store = InMemoryVectorStore(RefimplEmbeddings(model=model))
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TEXTS)])
    for i, text in enumerate(TEXTS):
        hit = store.similarity_search(text, k=1)[0]
        assert hit.metadata["i"] == i, (text, hit)


def test_importing_refimpl_does_not_import_langchain():
    code = "import sys, refimpl; from refimpl import util; print([m for m in sys.modules if m.startswith('langchain')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --- STS evaluation -----------------------------------------------------------------------------------


def test_correlations_equal_scipy():
    from scipy.stats import pearsonr, rankdata, spearmanr

    r = np.random.default_rng(2)
    x = np.round(r.uniform(0, 5, 200), 1)  # many ties, like KLUE labels
    y = x + r.normal(0, 1, 200)
    assert abs(pearson(x, y) - pearsonr(x, y)[0]) < 1e-12
    assert abs(spearman(x, y) - spearmanr(x, y)[0]) < 1e-12
    np.testing.assert_array_equal(average_ranks(x), rankdata(x))
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]  # by hand


ENGLISH = [
    "A man is playing a guitar on stage.", "A woman is slicing tomatoes in the kitchen.", "Two dogs run across a snowy field.",
    "The stock market fell sharply on Monday.", "A child is riding a red bicycle.", "The chef is cooking pasta for dinner.",
    "Heavy rain caused flooding in the city.", "A cat sleeps on a sunny windowsill.", "The team won the championship game.",
    "Scientists discovered a new species of frog.", "A man plays the violin in the park.", "Investors worry about rising interest rates.",
    "A puppy chases a ball in the yard.", "The train to Busan leaves at noon.", "She is reading a novel in the library.",
    "A storm knocked out power across the region.", "The band performed a new song tonight.", "Someone is chopping onions for soup.",
]


@pytest.fixture(scope="module")
def sts_files(tmp_path_factory):
    """KLUE-STS JSON and TSV versions of the same English pairs (real weights give scores with a healthy spread)."""
    r = np.random.default_rng(3)
    pairs = [(ENGLISH[i], ENGLISH[j], round(float(r.uniform(0, 5)), 1)) for i, j in r.integers(0, len(ENGLISH), (40, 2))]
    folder = tmp_path_factory.mktemp("sts")
    klue = [{"guid": f"g{i}", "sentence1": a, "sentence2": b, "labels": {"label": s, "real-label": s + 0.01 * (i % 7), "binary-label": int(s >= 3)}}
            for i, (a, b, s) in enumerate(pairs)]
    (folder / "klue-sts.json").write_text(json.dumps(klue, ensure_ascii=False), encoding="utf-8")
    (folder / "sts.tsv").write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs), encoding="utf-8")
    return folder, pairs


@pytest.mark.parametrize("label_key", ["label", "real-label"])
def test_eval_sts_matches_the_sentence_transformers_evaluator(minilm_dir, sts_files, label_key):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    folder, pairs = sts_files
    klue = json.loads((folder / "klue-sts.json").read_text(encoding="utf-8"))
    evaluator = EmbeddingSimilarityEvaluator(
        [p["sentence1"] for p in klue], [p["sentence2"] for p in klue], [p["labels"][label_key] for p in klue],
        batch_size=16, similarity_fn_names=["cosine", "euclidean", "manhattan", "dot"],
    )
    theirs = evaluator(st_model(minilm_dir))
    out = subprocess.run(
        [sys.executable, "-m", "refimpl", "eval-sts", str(folder / "klue-sts.json"), "--model", str(minilm_dir), "--json", "--label-key", label_key],
        capture_output=True, text=True, check=True,
    )
    ours = json.loads(out.stdout)
    assert sorted(ours) == sorted(f"{s}_{m}" for s in ("cosine", "euclidean", "manhattan", "dot") for m in ("pearson", "spearman"))
    worst = max(abs(value - theirs[f"{key.split('_')[1]}_{key.split('_')[0]}"]) for key, value in ours.items())
    print(ours, f"max |diff| vs the evaluator: {worst:.1e}")
    assert worst < 1e-6


def test_eval_sts_reads_tsv_the_same(path, sts_files):
    folder, _ = sts_files
    run = lambda f: json.loads(subprocess.run([sys.executable, "-m", "refimpl", "eval-sts", str(f), "--model", str(path), "--json"],
                                              capture_output=True, text=True, check=True).stdout)
    assert run(folder / "sts.tsv") == run(folder / "klue-sts.json")
    table = subprocess.run([sys.executable, "-m", "refimpl", "eval-sts", str(folder / "sts.tsv"), "--model", str(path)],
                           capture_output=True, text=True, check=True).stdout
    assert "| cosine |" in table and "| manhattan |" in table


# --- CLI: similarity and search -------------------------------------------------------------------


def test_cli_similarity(path, model):
    out = subprocess.run([sys.executable, "-m", "refimpl", "similarity", TEXTS[0], TEXTS[1], "--model", str(path)],
                         capture_output=True, text=True, check=True)
    a, b = model.encode(TEXTS[:2])
    assert abs(float(out.stdout) - float(util.cos_sim(a, b)[0, 0])) < 1e-5


def test_cli_search_caches_the_corpus(path, model, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "refimpl", "search", "--corpus", str(corpus), "--top-k", "2", "--json", "--model", str(path), TEXTS[3], TEXTS[0]]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    hits = [json.loads(line) for line in first.stdout.splitlines()]
    assert [h["hits"][0]["corpus_id"] for h in hits] == [3, 0]
    assert hits[0]["hits"][0]["text"] == TEXTS[3] and len(hits[0]["hits"]) == 2
    caches = list(tmp_path.glob("corpus.txt.*.npy"))
    assert len(caches) == 1 and "Batches" in first.stderr
    np.testing.assert_allclose(np.load(caches[0]), model.encode(TEXTS), atol=1e-6)
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "using cached corpus embeddings" in second.stderr and second.stdout == first.stdout
    corpus.write_text("\n".join(TEXTS[::-1]) + "\n", encoding="utf-8")  # a changed file gets a new cache
    third = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "using cached" not in third.stderr and len(list(tmp_path.glob("corpus.txt.*.npy"))) == 2
