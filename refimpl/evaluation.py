"""STS evaluation as sentence-transformers' ``EmbeddingSimilarityEvaluator`` computes it.

Both sides of every pair are embedded (batch size 16), each pair is scored with cosine,
euclidean and manhattan similarity (negative distances) and the dot product, and each
score list is correlated with the gold labels: Pearson, and Spearman (Pearson of the
ranks, ties sharing their average rank, as ``scipy.stats.spearmanr``).

Data: the KLUE-STS JSON format (a list of {"sentence1", "sentence2", "labels": {"label",
"real-label", "binary-label"}}; ``label_key`` picks the label), or a CSV/TSV file with a
header naming sentence1, sentence2 and score columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from refimpl.io import read_user_text
from refimpl.load.config import SIMILARITY_FUNCTIONS
from refimpl.util import PAIRWISE_SIMILARITY


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"correlation needs two equally long lists of at least 2 values, got {len(x)} and {len(y)}")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator else float("nan")


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    group_start = np.flatnonzero(starts)
    group_end = np.concatenate([group_start[1:], [len(values)]])
    mean_rank = (group_start + group_end + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def _pair(path, where: str, first, second, label) -> tuple[str, str, float]:
    """One checked pair: two strings and a finite score; anything else names the item and the problem."""
    for name, sentence in (("sentence1", first), ("sentence2", second)):
        if not isinstance(sentence, str):
            raise ValueError(f"{path}: {where}: {name} must be a string, got {sentence!r}")
    try:
        score = float(label)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where}: score {label!r} is not a number") from None
    if isinstance(label, bool) or not np.isfinite(score):
        raise ValueError(f"{path}: {where}: score {label!r} is not a finite number")
    return first, second, score


def _json_pairs(path, text, label_key):
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as error:
        raise ValueError(f"{path}: malformed JSON ({error})") from None
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of sentence pairs")
    pairs = []
    for index, item in enumerate(data):
        try:
            label = item["labels"][label_key] if "labels" in item else item[label_key]
            first, second = item["sentence1"], item["sentence2"]
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: item {index} lacks sentence1, sentence2 or labels.{label_key} ({error})"
            ) from None
        pairs.append(_pair(path, f"item {index}", first, second, label))
    return pairs


def _csv_pairs(path, text, label_key):
    lines = text.splitlines()
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in lines[0] else ","
    reader = csv.DictReader(
        lines, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    )
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    score_column = next((columns[c] for c in ("score", label_key.lower(), "label", "similarity") if c in columns), None)
    if "sentence1" not in columns or "sentence2" not in columns or score_column is None:
        raise ValueError(
            f"{path}: the header must name sentence1, sentence2 and score columns, got {reader.fieldnames}"
        )
    return [
        _pair(path, f"line {number}", row[columns["sentence1"]], row[columns["sentence2"]], row[score_column])
        for number, row in enumerate(reader, start=2)
    ]


def load_sts(path, label_key: str = "label"):
    """(sentences1, sentences2, scores) from a KLUE-STS JSON file or a CSV/TSV file with a header."""
    path = Path(path)
    text = read_user_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    is_json = path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{"))
    pairs = (_json_pairs if is_json else _csv_pairs)(path, text, label_key)
    if len(pairs) < 2:
        raise ValueError(f"{path}: {len(pairs)} sentence pairs; a correlation needs at least 2")
    first, second, scores = (list(column) for column in zip(*pairs))
    return first, second, scores


def evaluate_sts(model, sentences1, sentences2, scores, batch_size: int = 16) -> dict[str, float]:
    """Pearson and Spearman of the four similarity functions against the gold scores."""
    if not (len(sentences1) == len(sentences2) == len(scores)):
        raise ValueError("sentences1, sentences2 and scores must be equally long")
    embeddings1 = model.encode(sentences1, batch_size=batch_size, convert_to_numpy=True)
    embeddings2 = model.encode(sentences2, batch_size=batch_size, convert_to_numpy=True)
    metrics = {}
    for name, pairwise in PAIRWISE_SIMILARITY.items():
        predicted = pairwise(embeddings1, embeddings2)
        metrics[f"{name}_pearson"] = pearson(scores, predicted)
        metrics[f"{name}_spearman"] = spearman(scores, predicted)
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    lines = ["| similarity | Pearson | Spearman |", "|---|---|---|"]
    for name in SIMILARITY_FUNCTIONS:
        lines.append(f"| {name} | {metrics[name + '_pearson']:.4f} | {metrics[name + '_spearman']:.4f} |")
    return "\n".join(lines)
