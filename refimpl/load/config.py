"""Loading, step 2: the configuration files, parsed and checked.

Each class reads one file and refuses values refimpl cannot run, naming the
file, the key and the value. Defaults are transformers' and
sentence-transformers' own defaults for a missing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refimpl.checks import positive_int
from refimpl.errors import ModelFileError
from refimpl.io import read_json_object

# RoBERTa-style models offset positions by padding_idx + 1 (RobertaEmbeddings);
# XLM-RoBERTa uses the same embedding code.
ROBERTA_LIKE = ("roberta", "xlm-roberta")
SUPPORTED_MODEL_TYPES = ("bert",) + ROBERTA_LIKE
# transformers' ACT2FN["gelu"] and ["gelu_python"] are both the exact erf GELU; the tanh variants are not supported.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_python")
# sentence-transformers' SimilarityFunction values, in the order its STS evaluator reports them.
SIMILARITY_FUNCTIONS = ("cosine", "euclidean", "manhattan", "dot")
# config.json's dtype / torch_dtype values (torch's names and aliases) -> the dtype's name
TORCH_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
}
HALF_PRECISION = ("float16", "bfloat16")
# the attention implementations transformers runs on the CPU with the same equations
ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa")


class Source:
    """A configuration's keys and, for each, the file it came from: a JSON file, and optionally a
    dict of overrides from another file (sentence_bert_config.json's config_kwargs over config.json),
    so that every error names the file and the key that set the value."""

    def __init__(self, data: dict, path: Path, overrides: dict | None = None, overrides_path=None, label=""):
        self.path = Path(path) if path is not None else None
        self.overrides, self.overrides_path, self.label = overrides or {}, overrides_path, label
        self.data = {**data, **self.overrides}

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.data

    def error(self, key: str, problem: str) -> ModelFileError:
        if key in self.overrides:
            return ModelFileError(self.overrides_path, f"{self.label}: {problem}")
        return ModelFileError(self.path, problem)


def _typed_value(source: Source, key: str, kind, default=None, minimum=None):
    value = source.get(key, default)
    if value is None:
        raise source.error(key, f"key '{key}' is missing")
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise source.error(key, f"key '{key}' must be {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise source.error(key, f"key '{key}' must be at least {minimum}, got {value!r}")
    return value


def declared_dtype(source: Source, keys=("dtype", "torch_dtype")) -> tuple[str | None, str | None]:
    """(dtype name, the key that set it) from the first of ``keys`` that is set, as transformers reads
    them (``dtype`` wins over the older ``torch_dtype``); "auto" and missing mean None."""
    for key in keys:
        value = source.get(key)
        if value is None or value == "auto":
            continue
        name = TORCH_DTYPES.get(value.removeprefix("torch.")) if isinstance(value, str) else None
        if name is None:
            raise source.error(key, f"key '{key}' must be one of {sorted(TORCH_DTYPES)} or 'auto', got {value!r}")
        return name, key
    return None, None


@dataclass(frozen=True)
class EncoderConfig:
    """config.json of a BERT or RoBERTa encoder (transformers' BertConfig / RobertaConfig)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    hidden_act: str = "gelu"
    path: Path | None = field(default=None, compare=False)
    # the compute dtype config.json (or config_kwargs) declares, and where: "config.json key 'dtype'"
    declared_dtype: str | None = field(default=None, compare=False)
    declared_dtype_source: str | None = field(default=None, compare=False)
    # the tokenizer class config.json names (used when tokenizer_config.json names none)
    tokenizer_class: str | None = field(default=None, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def roberta_positions(self) -> bool:
        return self.model_type in ROBERTA_LIKE

    @property
    def max_tokens(self) -> int:
        """How many tokens (specials included) the position table can place.

        RoBERTa's first real position is padding_idx + 1, so 514 rows hold 512 tokens.
        """
        if self.roberta_positions:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_file(
        cls, path: Path, overrides: dict | None = None, overrides_path: Path | None = None, label="config_kwargs"
    ) -> EncoderConfig:
        """config.json, with ``overrides`` (sentence_bert_config.json's config_kwargs) applied over it
        first, as transformers' AutoConfig.from_pretrained(**config_kwargs) does: every check sees the
        merged value and names the file that set it."""
        source = Source(read_json_object(path), path, overrides, overrides_path, label)
        model_type = source.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise source.error(
                "model_type",
                f"model_type {model_type!r} is not supported; refimpl runs {', '.join(SUPPORTED_MODEL_TYPES)}",
            )
        _refuse_unsupported_architecture(source)
        roberta = model_type in ROBERTA_LIKE
        pad_default = 1 if roberta else 0
        if not roberta and "pad_token_id" in source and source.get("pad_token_id") is None:
            pad_default = 0  # BERT only uses it as the embedding's padding_idx: null is valid there
            source.data.pop("pad_token_id")
        dtype, dtype_key = declared_dtype(source)
        config = cls(
            model_type=model_type,
            vocab_size=_typed_value(source, "vocab_size", int, minimum=1),
            hidden_size=_typed_value(source, "hidden_size", int, minimum=1),
            num_hidden_layers=_typed_value(source, "num_hidden_layers", int, minimum=0),
            num_attention_heads=_typed_value(source, "num_attention_heads", int, minimum=1),
            intermediate_size=_typed_value(source, "intermediate_size", int, minimum=1),
            max_position_embeddings=_typed_value(source, "max_position_embeddings", int, minimum=1),
            type_vocab_size=_typed_value(source, "type_vocab_size", int, default=2, minimum=1),
            layer_norm_eps=_typed_value(source, "layer_norm_eps", float, default=1e-12),
            pad_token_id=_typed_value(source, "pad_token_id", int, default=pad_default, minimum=0),
            hidden_act=source.get("hidden_act", "gelu"),
            path=Path(path),
            declared_dtype=dtype,
            declared_dtype_source=None if dtype is None else _key_origin(source, dtype_key),
            tokenizer_class=source.get("tokenizer_class"),
        )
        _check_shapes(config, source)
        return config


def _key_origin(source: Source, key: str) -> str:
    if key in source.overrides:
        return f"{source.overrides_path} {source.label} key '{key}'"
    return f"{source.path} key '{key}'"


def _refuse_unsupported_architecture(source: Source):
    """Keys that make transformers compute something refimpl does not: each names itself."""
    hidden_act = source.get("hidden_act", "gelu")
    if hidden_act not in SUPPORTED_ACTIVATIONS:
        raise source.error(
            "hidden_act", f"hidden_act {hidden_act!r} is not supported; refimpl implements 'gelu' (exact erf)"
        )
    position_type = source.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise source.error(
            "position_embedding_type", f"position_embedding_type {position_type!r} is not supported; only 'absolute'"
        )
    for key in ("is_decoder", "add_cross_attention", "is_encoder_decoder"):
        if source.get(key):
            raise source.error(key, f"{key} is set; refimpl runs bidirectional encoders only")
    for key in ("attn_implementation", "_attn_implementation"):
        if source.get(key) not in ATTENTION_IMPLEMENTATIONS:
            raise source.error(key, f"{key} {source.get(key)!r} is not supported; only 'eager' or 'sdpa'")
    for key, what in (("quantization_config", "a quantized model"), ("auto_map", "custom model code")):
        if source.get(key):
            raise source.error(key, f"key '{key}' asks for {what}; refimpl runs plain BERT/RoBERTa weights")
    tokenizer_class = source.get("tokenizer_class")
    if tokenizer_class is not None and not isinstance(tokenizer_class, str):
        raise source.error("tokenizer_class", f"key 'tokenizer_class' must be a class name, got {tokenizer_class!r}")


def _check_shapes(config: EncoderConfig, source: Source):
    if not config.layer_norm_eps > 0:
        raise source.error("layer_norm_eps", f"layer_norm_eps must be positive, got {config.layer_norm_eps!r}")
    if config.hidden_size % config.num_attention_heads:
        raise source.error(
            "hidden_size",
            f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}",
        )
    if config.roberta_positions and config.max_tokens < 1:
        raise source.error(
            "max_position_embeddings",
            f"max_position_embeddings {config.max_position_embeddings} leaves no room after "
            f"the RoBERTa offset pad_token_id + 1 = {config.pad_token_id + 1}",
        )


# sentence-transformers' legacy boolean keys, in the order its Pooling concatenates them.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(LEGACY_POOLING_KEYS.values())


POOLING_KEYS = ("pooling_mode", "embedding_dimension", "word_embedding_dimension", "include_prompt")


def _pooling_modes(source: Source) -> tuple[str, ...]:
    """sentence-transformers' rule: ``pooling_mode`` (a name or a list), else the legacy keys that are
    truthy, in their order; neither means "mean"."""
    if "pooling_mode" in source:  # sentence-transformers >= 6; the legacy keys are then dropped
        value = source.get("pooling_mode")
        modes = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else None
        if not modes or not all(isinstance(m, str) for m in modes):
            raise source.error("pooling_mode", f"'pooling_mode' must be a mode name or a list of them, got {value!r}")
    else:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if source.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise source.error("pooling_mode", f"unknown pooling mode {unknown[0]!r}; known: {', '.join(POOLING_MODES)}")
    return modes


@dataclass(frozen=True)
class PoolingConfig:
    """1_Pooling/config.json: which pooling modes, concatenated in order."""

    modes: tuple[str, ...]
    embedding_dimension: int
    include_prompt: bool = True

    @property
    def output_dimension(self) -> int:
        return len(self.modes) * self.embedding_dimension

    @classmethod
    def from_file(cls, path: Path) -> PoolingConfig:
        source = Source(read_json_object(path), path)
        unknown = sorted(set(source.data) - set(POOLING_KEYS) - set(LEGACY_POOLING_KEYS))
        if unknown:  # sentence-transformers' Pooling(**config) raises a TypeError on them
            known = ", ".join(POOLING_KEYS + tuple(LEGACY_POOLING_KEYS))
            raise ModelFileError(path, f"unknown key '{unknown[0]}'; sentence-transformers' Pooling takes {known}")
        key = "embedding_dimension" if "embedding_dimension" in source else "word_embedding_dimension"
        include_prompt = bool(source.get("include_prompt", True))  # read by truthiness, as sentence-transformers
        return cls(_pooling_modes(source), _typed_value(source, key, int, minimum=1), include_prompt)


NORMALIZE_DEFAULT = "sentence_embedding"


def check_normalize_config(path: Path):
    """The Normalize module's optional config.json: sentence-transformers reads ``module_input_name`` and
    ``module_output_name`` from it (other keys are dropped); refimpl runs the default, which normalizes the
    sentence embedding, and refuses anything else."""
    cfg = read_json_object(path, required=False) or {}
    input_name = cfg.get("module_input_name", NORMALIZE_DEFAULT)
    for key, default in (("module_input_name", NORMALIZE_DEFAULT), ("module_output_name", input_name)):
        if cfg.get(key, default) != NORMALIZE_DEFAULT:
            raise ModelFileError(
                path, f"key '{key}' is {cfg[key]!r}; refimpl normalizes only '{NORMALIZE_DEFAULT}' (the default)"
            )


@dataclass(frozen=True)
class SentenceTransformerConfig:
    """config_sentence_transformers.json (optional): prompts, the similarity function, truncate_dim."""

    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    truncate_dim: int | None = None

    @classmethod
    def from_file(cls, path: Path) -> SentenceTransformerConfig:
        cfg = read_json_object(path, required=False)
        if cfg is None:
            return cls()
        source = Source(cfg, path)
        model_type = cfg.get("model_type", "SentenceTransformer")
        if model_type != "SentenceTransformer":  # sentence-transformers would convert it into another model
            raise ModelFileError(path, f"key 'model_type' is {model_type!r}; refimpl loads SentenceTransformer models")
        prompts = cfg.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in prompts.items()
        ):
            raise ModelFileError(path, f"'prompts' must map names to strings, got {prompts!r}")
        default = cfg.get("default_prompt_name")
        if default is not None and not isinstance(default, str):
            raise ModelFileError(path, f"key 'default_prompt_name' must be a prompt name, got {default!r}")
        # a similarity function sentence-transformers does not know is ignored by it, so here too
        similarity = cfg.get("similarity_fn_name")
        similarity = similarity if similarity in SIMILARITY_FUNCTIONS else None
        truncate_dim = None
        if cfg.get("truncate_dim") is not None:
            truncate_dim = _typed_value(source, "truncate_dim", int, minimum=1)
        return cls(dict(prompts), default, similarity, truncate_dim)


def similarity_function_name(value) -> str:
    """A similarity function's name, checked (sentence-transformers' SimilarityFunction enum gives its value)."""
    value = getattr(value, "value", value)
    if value not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity_fn_name must be one of {SIMILARITY_FUNCTIONS}, got {value!r}")
    return value


def merged_prompts(user: dict | None, stored: dict) -> dict:
    """sentence-transformers' prompts: {"query": "", "document": ""}, the user's over them, then the
    saved ones wherever a name is missing or None; None becomes ""."""
    if user is not None and (
        not isinstance(user, dict) or not all(isinstance(v, str) or v is None for v in user.values())
    ):
        raise TypeError(f"prompts must map prompt names to strings, got {user!r}")
    prompts = {"query": None, "document": None, **(user or {})}
    for name, text in stored.items():
        if prompts.get(name) is None:
            prompts[name] = text
    return {name: "" if text is None else text for name, text in prompts.items()}


def model_settings(
    path: Path, prompts, default_prompt_name, similarity_fn_name, truncate_dim=None
) -> tuple[dict, str | None, str, int | None]:
    """(prompts, default prompt name, similarity function, truncate_dim): the constructor's arguments
    where given, else config_sentence_transformers.json's, as sentence-transformers resolves them."""
    stored = SentenceTransformerConfig.from_file(path)
    prompts = merged_prompts(prompts, stored.prompts)
    default = default_prompt_name if default_prompt_name is not None else stored.default_prompt_name
    if default is not None and default not in prompts:
        raise ValueError(f"default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
    similarity = similarity_function_name(similarity_fn_name or stored.similarity_fn_name or "cosine")
    truncate_dim = positive_int("truncate_dim", truncate_dim, allow_none=True)
    return prompts, default, similarity, truncate_dim if truncate_dim is not None else stored.truncate_dim


def resolve_prompt(prompts: dict, default_prompt_name, prompt, prompt_name) -> str | None:
    """The prompt text encode uses: ``prompt`` itself, else ``prompts[prompt_name]``, else the default's."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return prompt
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is not None and name not in prompts:
        raise ValueError(f"prompt_name {name!r} is not one of this model's prompts: {sorted(prompts)}")
    return None if name is None else prompts[name]
