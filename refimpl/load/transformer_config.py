"""sentence_bert_config.json (or one of its six legacy names): the Transformer module's settings,
read as sentence-transformers 6 reads them.

The first of the seven names that holds a non-empty JSON object wins; an empty ``{}`` falls
through to the next. Its keys are the keyword arguments of sentence-transformers' Transformer, so
every key is known here: used, checked to hold its default, or refused (an unknown key makes
sentence-transformers fail with a TypeError). The older names ``model_args``, ``tokenizer_args`` and
``config_args`` replace the newer ``model_kwargs``, ``processor_kwargs`` and ``config_kwargs``
wholesale, as sentence-transformers renames them; loading keys inside them (``revision``,
``subfolder``, ...) are overwritten by the loader's own, so they have no effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from refimpl.errors import ModelFileError
from refimpl.io import read_json_object
from refimpl.load.config import HALF_PRECISION, EncoderConfig, Source, declared_dtype
from refimpl.load.locate import SBERT_CONFIG_NAMES

logger = logging.getLogger("refimpl")

RENAMED = {"model_args": "model_kwargs", "tokenizer_args": "processor_kwargs", "config_args": "config_kwargs"}
# the loader's own keys: sentence-transformers overwrites them in all three dicts
LOADING_KEYS = ("subfolder", "token", "cache_dir", "revision", "local_files_only", "trust_remote_code")
# keys with no effect on a text model's embedding on the CPU
NO_EFFECT_KEYS = ("unpad_inputs", "backend", "cache_dir")
TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
# keys refimpl accepts only at the value that means "plain text embedding", with what else would do
DEFAULT_ONLY_KEYS = {
    "transformer_task": (("feature-extraction",), "selects another model head"),
    "modality_config": ((TEXT_MODALITY,), "routes inputs to other model outputs"),
    "module_output_name": (("token_embeddings",), "names another output"),
    "processing_kwargs": (({},), "changes the tokenizer call (max_length, special tokens, ...)"),
    "query_length": ((), "truncates encode_query inputs to another length"),
    "document_length": ((), "truncates encode_document inputs to another length"),
    "query_expansion": ((), "pads queries with [MASK] tokens"),
    "tokenizer_name_or_path": ((), "loads the tokenizer from another directory"),
}
USED_KEYS = ("max_seq_length", "do_lower_case", *RENAMED, *RENAMED.values())
# model_kwargs sentence-transformers passes to AutoModel.from_pretrained that refimpl honours
MODEL_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "low_cpu_mem_usage")


# files that make sentence-transformers load something else than the plain checkpoint and tokenizer
FOREIGN_FILES = {
    "adapter_config.json": "a PEFT adapter (sentence-transformers loads its base model and the adapter)",
    "processor_config.json": "a processor (transformers' AutoProcessor may load it instead of the tokenizer)",
    "preprocessor_config.json": "a processor (transformers' AutoProcessor may load it instead of the tokenizer)",
    "video_preprocessor_config.json": "a processor (transformers' AutoProcessor may load it instead of the tokenizer)",
    "model.safetensors.index.json": "a sharded checkpoint",
    "pytorch_model.bin.index.json": "a sharded checkpoint",
}


def refuse_foreign_files(directory: Path):
    for name, what in FOREIGN_FILES.items():
        if (directory / name).exists():
            raise ModelFileError(directory / name, f"the model holds {what}; refimpl does not load it")


def find_sbert_config(directory: Path) -> tuple[dict, Path | None]:
    """(the settings, the file they came from): the first of the seven names with a non-empty object."""
    for name in SBERT_CONFIG_NAMES:
        cfg = read_json_object(directory / name, required=False)
        if cfg:
            return cfg, directory / name
    return {}, None


def _kwargs(cfg: dict, path: Path, new_name: str) -> tuple[dict, str]:
    """One of the three kwargs dicts (old name over new, wholesale), without the loader's keys."""
    old_name = next(old for old, new in RENAMED.items() if new == new_name)
    name = old_name if old_name in cfg else new_name
    value = cfg.get(name)
    if value is None:
        return {}, name
    if not isinstance(value, dict):
        raise ModelFileError(path, f"key '{name}' must be a JSON object, got {value!r}")
    return {key: v for key, v in value.items() if key not in LOADING_KEYS}, name


def _check_keys(cfg: dict, path: Path):
    known = set(USED_KEYS) | set(NO_EFFECT_KEYS) | set(DEFAULT_ONLY_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ModelFileError(
            path, f"unknown key '{unknown[0]}'; sentence-transformers' Transformer would not load with it"
        )
    for key, (accepted, effect) in DEFAULT_ONLY_KEYS.items():
        if cfg.get(key) is not None and cfg[key] not in accepted:
            raise ModelFileError(
                path, f"key '{key}' is {cfg[key]!r}; it {effect}, which refimpl does not run (use null or remove it)"
            )


@dataclass(frozen=True)
class TransformerSettings:
    """The Transformer module's sentence-transformers settings (empty when no file sets any)."""

    path: Path | None = None
    max_seq_length: int | None = None
    do_lower_case: bool = False
    config_kwargs: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    processor_kwargs: dict = field(default_factory=dict)
    # the names the file used for the three dicts ("tokenizer_args" or "processor_kwargs", ...)
    names: dict = field(default_factory=lambda: {new: new for new in RENAMED.values()})

    @classmethod
    def from_dir(cls, directory: Path) -> TransformerSettings:
        refuse_foreign_files(directory)
        cfg, path = find_sbert_config(directory)
        if path is None:
            return cls()
        _check_keys(cfg, path)
        max_seq_length = cfg.get("max_seq_length")
        if max_seq_length is not None and (
            isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ModelFileError(path, f"key 'max_seq_length' must be a positive integer, got {max_seq_length!r}")
        kwargs = {new: _kwargs(cfg, path, new) for new in RENAMED.values()}
        settings = cls(
            path,
            max_seq_length,
            bool(cfg.get("do_lower_case", False)),  # read by truthiness, as sentence-transformers
            kwargs["config_kwargs"][0],
            kwargs["model_kwargs"][0],
            kwargs["processor_kwargs"][0],
            {new: name for new, (_, name) in kwargs.items()},
        )
        settings.check_model_kwargs()
        return settings

    def label(self, new_name: str) -> str:
        """The name the file gave a kwargs dict, for messages: "sentence_bert_config.json tokenizer_args"."""
        return self.names[new_name]

    def check_model_kwargs(self):
        name = self.label("model_kwargs")
        for key, value in self.model_kwargs.items():
            if key not in MODEL_KWARGS:
                raise ModelFileError(
                    self.path, f"{name} key '{key}' is not supported; refimpl honours {', '.join(MODEL_KWARGS)}"
                )
            if key == "attn_implementation" and value not in ("eager", "sdpa"):
                raise ModelFileError(self.path, f"{name} attn_implementation {value!r}: only 'eager' or 'sdpa'")
        declared_dtype(Source({}, self.path, self.model_kwargs, self.path, name))  # checks the values

    def encoder_config(self, directory: Path) -> EncoderConfig:
        """config.json with config_kwargs applied over it (every check sees the merged values)."""
        return EncoderConfig.from_file(
            directory / "config.json", self.config_kwargs, self.path, self.label("config_kwargs")
        )

    def compute_dtype(self, config: EncoderConfig, stored_dtype: str | None) -> tuple[str | None, str | None]:
        """(the dtype sentence-transformers computes in, and what set it), as transformers decides with
        dtype="auto": model_kwargs ``dtype`` (else ``torch_dtype``), else config.json's, else the dtype
        the checkpoint's floating tensors are stored in."""
        name = self.label("model_kwargs")
        dtype, key = declared_dtype(Source({}, self.path, self.model_kwargs, self.path, name))
        if dtype is not None:
            return dtype, f"{self.path} {name} key '{key}'"
        if config.declared_dtype is not None:
            return config.declared_dtype, config.declared_dtype_source
        return stored_dtype, None if stored_dtype is None else f"{config.path.parent} (the weights are stored so)"


def warn_half_precision(dtype: str | None, source: str | None, computed: str):
    """sentence-transformers computes a float16/bfloat16 model in that precision, also on the CPU;
    refimpl computes in float32 (or float64) and says so, once per load."""
    if dtype in HALF_PRECISION:
        logger.warning(
            "%s sets %s: sentence-transformers computes this model in %s, refimpl in %s, so the two differ "
            "by more than float32 rounding (~1e-3 for float16, ~1e-2 for bfloat16); sentence-transformers "
            'with model_kwargs={"dtype": torch.float32} gives refimpl\'s numbers',
            source,
            dtype,
            dtype,
            computed,
        )
