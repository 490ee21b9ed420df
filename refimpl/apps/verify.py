"""``refimpl verify MODEL``: does refimpl embed this model as sentence-transformers does, and if not,
where does it first differ?

The oracle is sentence-transformers' own pipeline on the model, loaded as sentence-transformers
loads it: its tokenization (input_ids, attention_mask, token_type_ids, and the prompt length when
the model has a default prompt), the hidden states of its own transformers model run on those
features, its own Pooling and Normalize modules, and its ``encode``. refimpl runs the same features
through its encoder, pooling and normalization, and ``encode`` the sentences itself. The stages,
in order: tokens, embeddings, each encoder layer, pooled, normalized, encode; the report names the
first one that differs beyond the tolerance. Each float32 row also says how far both
implementations are from the float64 truth (sentence-transformers' model in float64), so that a
difference can be judged against the rounding both make. Sentences go through both sides in
batches of ``BATCH``, so a long file costs the memory of one batch. transformers,
sentence-transformers and torch are the optional extra ``refimpl[verify]``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

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
BATCH = 32  # sentences per forward pass on each side
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


@dataclass
class Stage:
    """One row, accumulated over the batches."""

    name: str
    output: bool  # pooled / normalized / encode: the output tolerance, all values (not only real tokens)
    max_diff: float = 0.0
    total: float = 0.0
    count: int = 0
    scale: float = 1.0
    truth: list = field(default_factory=lambda: [None, None])  # refimpl and torch vs float64

    def add(self, ours, theirs, truth=None):
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        if ours.shape != theirs.shape:  # another dimension: as different as can be
            self.max_diff = self.total = float("inf")
            self.count += 1
            return
        difference = np.abs(ours - theirs)
        self.max_diff = max(self.max_diff, float(difference.max(initial=0.0)))
        self.total, self.count = self.total + float(difference.sum()), self.count + difference.size
        reference = theirs if truth is None else np.asarray(truth, np.float64)
        self.scale = max(self.scale, float(np.abs(reference).max(initial=0.0)))
        if truth is not None:
            for i, side in enumerate((ours, theirs)):
                gap = float(np.abs(side - reference).max(initial=0.0))
                self.truth[i] = gap if self.truth[i] is None else max(self.truth[i], gap)

    def row(self, dtype: str, atol: float | None) -> Row:
        per_layer, output = TOLERANCES["float32" if self.name == "encode" else dtype]
        tolerance = atol if atol is not None else (output if self.output else per_layer) * self.scale
        mean = self.total / self.count if self.count else 0.0
        return Row(self.name, self.max_diff, mean, self.truth[0], self.truth[1], tolerance)


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


def load_oracle(model_dir):
    """sentence-transformers' SentenceTransformer on the model, on the CPU, loaded as it loads it."""
    _oracle()
    from sentence_transformers import SentenceTransformer as Oracle

    return Oracle(str(model_dir), device="cpu")


def oracle_module(oracle, class_name: str):
    """sentence-transformers' own module of that class in the oracle pipeline (None if it has none)."""
    return next((module for module in oracle if type(module).__name__ == class_name), None)


def default_prompt(oracle) -> str | None:
    """The prompt sentence-transformers' encode applies without arguments (the default prompt), or None."""
    name = oracle.default_prompt_name
    return (oracle.prompts.get(name) or None) if name is not None else None


def oracle_encoders(oracle, directory, dtypes) -> dict:
    """sentence-transformers' transformers model (its config, config_kwargs applied) with eager attention,
    loaded from the weights in each dtype: float32 and float64 (the truth), also when sentence-transformers
    itself computes in float16 or bfloat16 (then ``encode`` shows that difference, and the notes say so)."""
    torch, transformers = _oracle()
    config = copy.deepcopy(oracle[0].auto_model.config)
    encoders = {}
    for dtype in sorted(set(dtypes) | {"float64"}):
        encoders[dtype] = transformers.AutoModel.from_pretrained(
            str(directory),
            config=config,
            dtype=torch.float64 if dtype == "float64" else torch.float32,
            attn_implementation="eager",
        ).eval()
    return encoders


def layer_names(model) -> list[str]:
    names = ["embeddings"] + [f"layer {i + 1}" for i in range(model.config.num_hidden_layers)] + ["pooled"]
    return names + (["normalized"] if model.normalize else [])


# --- tokens ------------------------------------------------------------------------------------------


def _first_difference(what: str, index: int, ours, theirs) -> str:
    if len(ours) != len(theirs):
        return f"sentence {index}: {len(ours)} {what} in refimpl, {len(theirs)} in sentence-transformers"
    position = int(np.flatnonzero(np.asarray(ours) != np.asarray(theirs))[0])
    return (
        f"sentence {index}: {what} differ at position {position} "
        f"(refimpl {int(ours[position])}, sentence-transformers {int(theirs[position])})"
    )


def token_difference(model, features, texts, prompt, first_index: int) -> str | None:
    """The first way refimpl's tokenization of ``texts`` differs from sentence-transformers' features
    (input_ids, attention_mask, token_type_ids, prompt length), or None."""
    ours = model.text_tokenizer.encode([prompt + t for t in texts] if prompt else list(texts))
    mask = features["attention_mask"].numpy().astype(bool)
    ids = features["input_ids"].numpy()
    types = features["token_type_ids"].numpy() if "token_type_ids" in features else np.zeros_like(ids)
    ends = np.cumsum(ours.lengths)
    for i, (start, end) in enumerate(zip(ends - ours.lengths, ends)):
        for what, mine, theirs in (
            ("input_ids", ours.input_ids[start:end], ids[i][mask[i]]),
            ("token_type_ids", ours.token_type_ids[start:end], types[i][mask[i]]),
        ):
            if len(mine) != len(theirs) or not np.array_equal(mine, theirs):
                return _first_difference(what, first_index + i, mine, theirs)
    if prompt and "prompt_length" in features:
        mine, theirs = model.text_tokenizer.prompt_length(prompt), int(features["prompt_length"])
        if mine != theirs:
            return f"the prompt {prompt!r} counts {mine} tokens in refimpl, {theirs} in sentence-transformers"
    return None


def right_padded(features, pad_token_id: int) -> dict:
    """sentence-transformers' features with the real tokens first in each row (the same tokens and
    positions: RoBERTa's come from the mask, and BERT with left padding is refused at load)."""
    mask = features["attention_mask"].numpy().astype(bool)
    ids = features["input_ids"].numpy()
    types = features["token_type_ids"].numpy() if "token_type_ids" in features else np.zeros_like(ids)
    lengths = mask.sum(axis=1)
    out = {
        "input_ids": np.full(ids.shape, pad_token_id, np.int64),
        "attention_mask": np.zeros(ids.shape, np.int64),
        "token_type_ids": np.zeros(ids.shape, np.int64),
    }
    for i, length in enumerate(lengths):
        out["input_ids"][i, :length] = ids[i][mask[i]]
        out["attention_mask"][i, :length] = 1
        out["token_type_ids"][i, :length] = types[i][mask[i]]
    return out


# --- the stages of one batch -------------------------------------------------------------------------


def torch_stages(encoder, features: dict, oracle, has_types: bool, prompt_length) -> dict:
    """sentence-transformers' transformers model on the features, then its own Pooling and Normalize."""
    torch, _ = _oracle()
    inputs = {key: torch.tensor(features[key]) for key in ("input_ids", "attention_mask")}
    if has_types:  # sentence-transformers passes them only when its tokenizer lists them as an input
        inputs["token_type_ids"] = torch.tensor(features["token_type_ids"])
    with torch.no_grad():
        hidden = encoder(**inputs, output_hidden_states=True).hidden_states
        module_features = {"token_embeddings": hidden[-1], "attention_mask": inputs["attention_mask"].clone()}
        if prompt_length is not None:
            module_features["prompt_length"] = prompt_length
        pooled = oracle_module(oracle, "Pooling")(dict(module_features))["sentence_embedding"]
        normalize = oracle_module(oracle, "Normalize")
        output = normalize(dict(module_features, sentence_embedding=pooled)) if normalize is not None else None
    stages = {name: h.numpy() for name, h in zip(_hidden_names(len(hidden)), hidden)}
    stages["pooled"] = pooled.numpy()
    stages["normalized"] = (output["sentence_embedding"] if output is not None else pooled).numpy()
    return stages


def _hidden_names(count: int) -> list[str]:
    return ["embeddings"] + [f"layer {i}" for i in range(1, count)]


def refimpl_stages(model, features: dict, prompt_length: int) -> dict:
    """refimpl's engine, Pooling and Normalize modules on the same features."""
    pipeline = model.pipeline
    with pipeline.lock:
        states = pipeline.transformer.engine().encode_padded(features, output_hidden_states=True)
        pooled = pipeline.pooling(states, prompt_length)
    hidden = states.padded_hidden_states()
    stages = dict(zip(_hidden_names(len(hidden)), hidden))
    stages["pooled"] = pooled
    if pipeline.normalize is not None:
        stages["normalized"] = pipeline.normalize(pooled)
    return stages


def _compare_batch(stages: list, ours: dict, theirs: dict, truth: dict | None, real):
    for stage in stages:
        if stage.name == "encode":
            continue
        pick = (lambda a: a) if stage.output else (lambda a: a[real])
        stage.add(pick(ours[stage.name]), pick(theirs[stage.name]), None if truth is None else pick(truth[stage.name]))


def _quiet_encode(model, batch):
    """refimpl's encode without its truncation warning (the report counts truncated sentences)."""
    import logging

    log = logging.getLogger("refimpl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return model.encode(batch, batch_size=BATCH)
    finally:
        log.setLevel(level)


class Verification:
    """refimpl (one model per dtype) against the oracle, batch by batch."""

    def __init__(self, models: dict, oracle):
        self.models, self.oracle = models, oracle
        self.first = next(iter(models.values()))
        self.encoders = oracle_encoders(oracle, self.first.pipeline.transformer.directory, list(models))
        self.prompt = default_prompt(oracle)
        self.stages = {
            dtype: [Stage(name, name in ("pooled", "normalized")) for name in layer_names(model)]
            + [Stage("encode", True)]
            for dtype, model in models.items()
        }
        self.tokens = {"match": True, "difference": None, "tokens": 0, "truncated": 0}

    def run(self, batch: list[str], start: int):
        features = self.oracle.preprocess(batch, prompt=self.prompt) if self.prompt else self.oracle.preprocess(batch)
        difference = token_difference(self.first, features, batch, self.prompt, start)
        if difference and self.tokens["match"]:
            self.tokens.update(match=False, difference=difference)
        self.tokens["tokens"] += int(features["attention_mask"].sum())
        texts = [self.prompt + t for t in batch] if self.prompt else batch
        self.tokens["truncated"] += int((np.asarray(self.first.token_count(texts)) > self.first.max_seq_length).sum())
        padded = right_padded(features, self.first.text_tokenizer.pad_token_id)
        real = padded["attention_mask"].astype(bool)
        theirs_prompt = int(features["prompt_length"]) if "prompt_length" in features else None
        ours_prompt = 0
        if self.prompt and not self.first.pooling_config.include_prompt:
            ours_prompt = self.first.text_tokenizer.prompt_length(self.prompt)
        has_types = "token_type_ids" in features
        computed = {}
        for dtype in sorted(set(self.models) | {"float64"}):
            computed[dtype] = torch_stages(self.encoders[dtype], padded, self.oracle, has_types, theirs_prompt)
        encoded = self.oracle.encode(batch, batch_size=BATCH)
        for dtype, model in self.models.items():
            ours = refimpl_stages(model, padded, ours_prompt)
            truth = computed["float64"] if dtype == "float32" else None
            _compare_batch(self.stages[dtype], ours, computed[dtype], truth, real)
            self.stages[dtype][-1].add(_quiet_encode(model, batch), encoded)

    def notes(self) -> list[str]:
        reference = self.first.pipeline.transformer.reference_dtype
        if reference in ("float16", "bfloat16"):
            return [
                f"sentence-transformers computes this model in {reference} (set by the model's files); refimpl "
                "computes in float32, so encode differs by more than float32 rounding while the layers agree"
            ]
        return []


def report(model_dir, sentences, dtypes, engine="fast", atol=None) -> dict:
    """Tokenization and every stage of refimpl against sentence-transformers, for each dtype in ``dtypes``."""
    from refimpl.model import SentenceTransformer

    models = {dtype: SentenceTransformer(model_dir, dtype=dtype, engine=engine) for dtype in dtypes}
    check = Verification(models, load_oracle(next(iter(models.values())).model_dir))
    for start in range(0, len(sentences), BATCH):
        check.run(list(sentences[start : start + BATCH]), start)
    result = {
        "model": str(check.first.model_dir),
        "engine": engine,
        "sentences": len(sentences),
        "prompt": check.prompt,
        "tokens": check.tokens,
        "dtypes": {},
        "notes": check.notes(),
    }
    failed = [] if check.tokens["match"] else ["tokens"]
    for dtype, stages in check.stages.items():
        rows = [stage.row(dtype, atol) for stage in stages]
        result["dtypes"][dtype] = {"passed": all(r.ok for r in rows), "rows": [asdict(r) | {"ok": r.ok} for r in rows]}
        failed += [r.name for r in rows if not r.ok and r.name not in failed]
    order = ["tokens"] + [stage.name for stage in next(iter(check.stages.values()))]
    result["first_difference"] = min(failed, key=order.index) if failed else None
    result["passed"] = not failed
    return result


def format_report(result: dict) -> str:
    tokens = result["tokens"]
    prompt = f", default prompt {result['prompt']!r}" if result.get("prompt") else ""
    lines = [
        f"model {result['model']}, engine {result['engine']}: {result['sentences']} sentences{prompt}, "
        f"{tokens['tokens']} tokens, {tokens['truncated']} truncated; tokenization (input_ids, attention_mask, "
        "token_type_ids) "
        + (
            "matches sentence-transformers"
            if tokens["match"]
            else f"DIFFERS from sentence-transformers: {tokens['difference']}"
        )
    ]
    for dtype, table in result["dtypes"].items():
        lines += [
            "",
            f"{dtype}: refimpl vs sentence-transformers (its transformers model on its features; real tokens)",
            "",
            "| stage | max abs diff | mean abs diff | refimpl vs float64 | torch vs float64 "
            "| tolerance (x max(1, max abs value)) | |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in table["rows"]:
            truth = [f"{v:.2e}" if v is not None else "-" for v in (r["refimpl_vs_float64"], r["torch_vs_float64"])]
            lines.append(
                f"| {r['name']} | {r['max_diff']:.2e} | {r['mean_diff']:.2e} | {truth[0]} | {truth[1]} | "
                f"{r['tolerance']:.0e} | {'ok' if r['ok'] else 'FAIL'} |"
            )
    lines += [""] + [f"note: {note}" for note in result.get("notes", [])]
    if result["passed"]:
        lines.append("PASSED")
    else:
        lines.append(
            f"FAILED at {result['first_difference']}: refimpl differs from sentence-transformers from there on"
        )
    return "\n".join(lines)
