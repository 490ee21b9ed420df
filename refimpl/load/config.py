"""Loading, step 2: the configuration files, parsed and checked.

Each class reads one file and refuses values refimpl cannot run, naming the
file, the key and the value. Defaults are transformers' and
sentence-transformers' own defaults for a missing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refimpl.errors import ModelFileError
from refimpl.io import read_json, read_json_object

# RoBERTa-style models offset positions by padding_idx + 1 (RobertaEmbeddings);
# XLM-RoBERTa uses the same embedding code.
ROBERTA_LIKE = ("roberta", "xlm-roberta")
SUPPORTED_MODEL_TYPES = ("bert",) + ROBERTA_LIKE
# transformers' ACT2FN["gelu"] is the exact erf GELU; the tanh variants are not supported.
SUPPORTED_ACTIVATIONS = ("gelu",)
# sentence-transformers' SimilarityFunction values, in the order its STS evaluator reports them.
SIMILARITY_FUNCTIONS = ("cosine", "euclidean", "manhattan", "dot")
# Beyond this, a tokenizer's model_max_length means "unset" (transformers uses 1e30).
_UNSET_MODEL_MAX_LENGTH = 1_000_000


def _typed_value(cfg: dict, key: str, path: Path, kind, default=None, minimum=None):
    value = cfg.get(key, default)
    if value is None:
        raise ModelFileError(path, f"key '{key}' is missing")
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ModelFileError(path, f"key '{key}' must be {kind.__name__}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ModelFileError(path, f"key '{key}' must be at least {minimum}, got {value!r}")
    return value


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
    def from_file(cls, path: Path) -> EncoderConfig:
        cfg = read_json_object(path)
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelFileError(
                path, f"model_type {model_type!r} is not supported; refimpl runs {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        hidden_act = cfg.get("hidden_act", "gelu")
        if hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ModelFileError(
                path, f"hidden_act {hidden_act!r} is not supported; refimpl implements 'gelu' (exact erf)"
            )
        position_type = cfg.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ModelFileError(path, f"position_embedding_type {position_type!r} is not supported; only 'absolute'")
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise ModelFileError(
                path, "is_decoder/add_cross_attention is set; refimpl runs bidirectional encoders only"
            )
        roberta = model_type in ROBERTA_LIKE
        config = cls(
            model_type=model_type,
            vocab_size=_typed_value(cfg, "vocab_size", path, int, minimum=1),
            hidden_size=_typed_value(cfg, "hidden_size", path, int, minimum=1),
            num_hidden_layers=_typed_value(cfg, "num_hidden_layers", path, int, minimum=0),
            num_attention_heads=_typed_value(cfg, "num_attention_heads", path, int, minimum=1),
            intermediate_size=_typed_value(cfg, "intermediate_size", path, int, minimum=1),
            max_position_embeddings=_typed_value(cfg, "max_position_embeddings", path, int, minimum=1),
            type_vocab_size=_typed_value(cfg, "type_vocab_size", path, int, default=2, minimum=1),
            layer_norm_eps=_typed_value(cfg, "layer_norm_eps", path, float, default=1e-12),
            pad_token_id=_typed_value(cfg, "pad_token_id", path, int, default=1 if roberta else 0, minimum=0),
            hidden_act=hidden_act,
            path=Path(path),
        )
        if not config.layer_norm_eps > 0:
            raise ModelFileError(path, f"layer_norm_eps must be positive, got {config.layer_norm_eps!r}")
        if config.hidden_size % config.num_attention_heads:
            raise ModelFileError(
                path,
                f"hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}",
            )
        if roberta and config.max_tokens < 1:
            raise ModelFileError(
                path,
                f"max_position_embeddings {config.max_position_embeddings} leaves no room after "
                f"the RoBERTa offset pad_token_id + 1 = {config.pad_token_id + 1}",
            )
        return config


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
        cfg = read_json_object(path)
        if "pooling_mode" in cfg:  # sentence-transformers >= 6
            modes = cfg["pooling_mode"]
            modes = (modes,) if isinstance(modes, str) else tuple(modes) if isinstance(modes, list) else None
            if not modes or not all(isinstance(m, str) for m in modes):
                raise ModelFileError(
                    path, f"'pooling_mode' must be a mode name or a list of them, got {cfg['pooling_mode']!r}"
                )
        else:
            modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if cfg.get(key) is True)
        if not modes:
            raise ModelFileError(
                path,
                "no pooling mode is set: give 'pooling_mode' (one of "
                f"{', '.join(POOLING_MODES)}) or set one of {', '.join(LEGACY_POOLING_KEYS)} to true",
            )
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown:
            raise ModelFileError(path, f"unknown pooling mode {unknown[0]!r}; known: {', '.join(POOLING_MODES)}")
        key = "embedding_dimension" if "embedding_dimension" in cfg else "word_embedding_dimension"
        include_prompt = cfg.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise ModelFileError(path, f"key 'include_prompt' must be true or false, got {include_prompt!r}")
        return cls(modes, _typed_value(cfg, key, path, int, minimum=1), include_prompt)


@dataclass(frozen=True)
class SentenceBertConfig:
    """sentence_bert_config.json (optional): truncation length and lowercasing."""

    max_seq_length: int | None = None
    do_lower_case: bool = False

    @classmethod
    def from_file(cls, path: Path) -> SentenceBertConfig:
        cfg = read_json_object(path, required=False)
        if cfg is None:
            return cls()
        max_seq_length = cfg.get("max_seq_length")
        if max_seq_length is not None:
            max_seq_length = _typed_value(cfg, "max_seq_length", path, int, minimum=1)
        do_lower_case = cfg.get("do_lower_case", False)
        if not isinstance(do_lower_case, bool):
            raise ModelFileError(path, f"key 'do_lower_case' must be true or false, got {do_lower_case!r}")
        return cls(max_seq_length, do_lower_case)


@dataclass(frozen=True)
class SentenceTransformerConfig:
    """config_sentence_transformers.json (optional): prompts and the similarity function."""

    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> SentenceTransformerConfig:
        cfg = read_json_object(path, required=False)
        if cfg is None:
            return cls()
        prompts = cfg.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
        ):
            raise ModelFileError(path, f"'prompts' must map names to strings, got {prompts!r}")
        default = cfg.get("default_prompt_name")
        if default is not None and default not in prompts:
            raise ModelFileError(path, f"default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
        similarity = cfg.get("similarity_fn_name")
        if similarity is not None and similarity not in SIMILARITY_FUNCTIONS:
            raise ModelFileError(path, f"similarity_fn_name {similarity!r} is not one of {SIMILARITY_FUNCTIONS}")
        return cls(dict(prompts), default, similarity)


def similarity_function_name(value) -> str:
    """A similarity function's name, checked (sentence-transformers' SimilarityFunction enum gives its value)."""
    value = getattr(value, "value", value)
    if value not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity_fn_name must be one of {SIMILARITY_FUNCTIONS}, got {value!r}")
    return value


def model_settings(path: Path, prompts, default_prompt_name, similarity_fn_name) -> tuple[dict, str | None, str]:
    """(prompts, default prompt name, similarity function): the constructor's arguments where given,
    else config_sentence_transformers.json's, as sentence-transformers resolves them."""
    stored = SentenceTransformerConfig.from_file(path)
    prompts = dict(stored.prompts) if prompts is None else dict(prompts)
    default = default_prompt_name if default_prompt_name is not None else stored.default_prompt_name
    if default is not None and default not in prompts:
        raise ValueError(f"default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}")
    return prompts, default, similarity_function_name(similarity_fn_name or stored.similarity_fn_name or "cosine")


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


def tokenizer_model_max_length(path: Path) -> int | None:
    """tokenizer_config.json's model_max_length, or None when absent or 'unset' (1e30)."""
    cfg = read_json(path, required=False)
    if not isinstance(cfg, dict):
        return None
    value = cfg.get("model_max_length")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _UNSET_MODEL_MAX_LENGTH:
        return None
    return int(value)
