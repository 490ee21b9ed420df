"""``refimpl verify MODEL``: does refimpl reproduce transformers on this checkpoint, layer by layer?

The same sentences go through refimpl and through transformers (eager attention) plus
sentence-transformers' Pooling, on refimpl's tokenization (checked against
sentence-transformers' own first). For every layer (embeddings, each encoder layer, the pooled
and the normalized vector) it reports the max and mean |difference| over real tokens, and how far
each float32 implementation is from the float64 truth (torch in float64), so that a difference
can be judged against the rounding both make. transformers, sentence-transformers and torch are
the optional extra ``refimpl[verify]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from refimpl.errors import RefimplError

# Korean and English, of different lengths (a padded batch), and one long enough to be truncated
DEFAULT_SENTENCES = [
    "오늘은 날씨가 맑고 바람이 시원하게 분다.",
    "고양이가 창가에 앉아 햇볕을 쬐고 있다.",
    "주식 시장이 이틀 연속으로 하락세를 보였다.",
    "A man is playing a guitar on stage.",
    "Mixed 한국어 and English, 숫자 12345와 emoji 😀.",
    "짧다.",
    " ".join(["서울에서 부산까지 기차로 두 시간 반 정도 걸리고, 창밖으로는 논과 산이 지나간다."] * 60),
]
# per layer and on the output, for values of order 1: float32 rounding grows with depth and width;
# float64 is exact to ~1e-14. A layer whose values reach |x| > 1 (real BERT hidden states reach
# 10-20 in a few dimensions) gets the tolerance times that magnitude: float32 keeps 7 digits.
TOLERANCES = {"float32": (1e-5, 2e-5), "float64": (1e-10, 1e-10)}
INSTALL = (
    "refimpl verify compares against transformers and sentence-transformers, which are not installed: "
    'pip install torch==2.13.0 && pip install "refimpl[verify]" (torch first, so that pip takes the CPU build)'
)


class OracleMissing(RefimplError):
    """transformers / sentence-transformers / torch are not installed."""


@dataclass
class Row:
    name: str
    max_diff: float
    mean_diff: float
    refimpl_vs_float64: float | None
    torch_vs_float64: float | None
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_diff <= self.tolerance)


def _oracle():
    try:
        import sentence_transformers  # noqa: F401
        import torch
        import transformers
    except ImportError:
        raise OracleMissing(INSTALL) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return torch, transformers


def _differences(ours, theirs) -> tuple[float, float]:
    difference = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    return (float(difference.max()), float(difference.mean())) if difference.size else (0.0, 0.0)


def pooling_module(oracle):
    """sentence-transformers' own Pooling module of the oracle pipeline, found by its class."""
    return next(module for module in oracle if type(module).__name__ == "Pooling")


def _torch_layers(directory, features, oracle, normalize: bool, dtype):
    """transformers' hidden states, then sentence-transformers' own Pooling module on the last,
    and the normalization of its Normalize module."""
    torch, transformers = _oracle()
    model = transformers.AutoModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    model = model.to(torch.float64 if dtype == "float64" else torch.float32)
    inputs = {key: torch.tensor(features[key]) for key in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        features_in = {"token_embeddings": hidden[-1], "attention_mask": inputs["attention_mask"]}
        pooled = pooling_module(oracle)(features_in)["sentence_embedding"]
        layers = [h.numpy() for h in hidden] + [pooled.numpy()]
        if normalize:
            layers.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
    return layers


def _refimpl_layers(model, features):
    from refimpl.engines import pooling

    out = model.forward(features, output_hidden_states=True)
    pooled = pooling.pool_padded(out["token_embeddings"], features["attention_mask"], model.pooling_config.modes)
    return list(out["hidden_states"]) + [pooled] + ([pooling.normalize(pooled)] if model.normalize else [])


def layer_names(model) -> list[str]:
    names = ["embeddings"] + [f"layer {i + 1}" for i in range(model.config.num_hidden_layers)] + ["pooled"]
    return names + (["normalized"] if model.normalize else [])


def load_oracle(model_dir):
    _oracle()
    from sentence_transformers import SentenceTransformer as Oracle

    return Oracle(str(model_dir), device="cpu")


def check_tokenization(model, oracle, sentences) -> dict:
    """refimpl's ids against sentence-transformers' tokenizer (padding and truncation included)."""
    ours = model.tokenize(sentences)
    preprocess = getattr(oracle, "preprocess", None) or oracle.tokenize  # sentence-transformers 6 renamed it
    theirs = preprocess(sentences)
    same = all(
        np.array_equal(ours[key], theirs[key].numpy()) for key in ("input_ids", "attention_mask") if key in theirs
    )
    return {
        "match": bool(same),
        "tokens": int(ours["attention_mask"].sum()),
        "truncated": int((np.asarray(model.token_count(sentences)) > model.max_seq_length).sum()),
    }


def compare(model, features, torch_layers, atol: float | None = None) -> list[Row]:
    """One Row per layer: ``model`` (its dtype and engine) against ``torch_layers(dtype)``, which
    gives torch's layers on the same ``features`` in that dtype."""
    dtype = model.dtype.name
    real = features["attention_mask"].astype(bool)
    ours, theirs, truth = _refimpl_layers(model, features), torch_layers(dtype), torch_layers("float64")
    per_layer, output = TOLERANCES[dtype]
    low = dtype == "float32"
    rows = []
    for index, name in enumerate(layer_names(model)):
        pick = (lambda a: a[real]) if index <= model.config.num_hidden_layers else (lambda a: a)
        a, b, t = pick(ours[index]), pick(theirs[index]), pick(truth[index])
        scale = max(1.0, float(np.abs(t).max(initial=0.0)))
        tolerance = (
            atol if atol is not None else (per_layer if index <= model.config.num_hidden_layers else output) * scale
        )
        rows.append(
            Row(
                name,
                *_differences(a, b),
                _differences(a, t)[0] if low else None,
                _differences(b, t)[0] if low else None,
                tolerance,
            )
        )
    return rows


def report(model_dir, sentences, dtypes, engine="fast", atol=None) -> dict:
    """Tokenization and every layer of refimpl against the oracle, for each dtype in ``dtypes``."""
    from refimpl.model import SentenceTransformer

    models = {dtype: SentenceTransformer(model_dir, dtype=dtype, engine=engine) for dtype in dtypes}
    first = next(iter(models.values()))
    oracle = load_oracle(first.model_dir)
    features = first.tokenize(sentences)  # the tokenizer does not depend on the dtype
    computed: dict = {}

    def torch_layers(dtype):  # each dtype's torch pass once, float64 shared as the truth
        if dtype not in computed:
            computed[dtype] = _torch_layers(
                first.pipeline.transformer.directory, features, oracle, first.normalize, dtype
            )
        return computed[dtype]

    result = {
        "model": str(first.model_dir),
        "engine": engine,
        "sentences": len(sentences),
        "tokens": check_tokenization(first, oracle, sentences),
        "dtypes": {},
    }
    for dtype, model in models.items():
        rows = compare(model, features, torch_layers, atol)
        result["dtypes"][dtype] = {"passed": all(r.ok for r in rows), "rows": [asdict(r) | {"ok": r.ok} for r in rows]}
    result["passed"] = result["tokens"]["match"] and all(d["passed"] for d in result["dtypes"].values())
    return result


def format_report(result: dict) -> str:
    tokens = result["tokens"]
    lines = [
        f"model {result['model']}, engine {result['engine']}: {result['sentences']} sentences, "
        f"{tokens['tokens']} tokens, {tokens['truncated']} truncated; tokenization "
        f"{'matches' if tokens['match'] else 'DIFFERS from'} sentence-transformers"
    ]
    for dtype, table in result["dtypes"].items():
        lines += [
            "",
            f"{dtype}: refimpl vs transformers (real tokens)",
            "",
            "| layer | max abs diff | mean abs diff | refimpl vs float64 | torch vs float64 "
            "| tolerance (x max(1, max abs value)) | |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in table["rows"]:
            truth = [f"{v:.2e}" if v is not None else "-" for v in (r["refimpl_vs_float64"], r["torch_vs_float64"])]
            lines.append(
                f"| {r['name']} | {r['max_diff']:.2e} | {r['mean_diff']:.2e} | {truth[0]} | {truth[1]} | "
                f"{r['tolerance']:.0e} | {'ok' if r['ok'] else 'FAIL'} |"
            )
    lines += ["", "PASSED" if result["passed"] else "FAILED: refimpl differs from transformers beyond the tolerance"]
    return "\n".join(lines)
