"""The tokenizer's settings, read as transformers 5 reads them for sentence-transformers 6.

transformers picks a tokenizer class (``tokenizer_class`` of tokenizer_config.json, else of
config.json, else the model type's own), and for the BERT, RoBERTa and XLM-RoBERTa classes it
rebuilds the tokenizer from these settings, taking only the vocabulary from tokenizer.json
(``tokenizer_build.py``). The settings are tokenizer_config.json's keys with the processor kwargs
(sentence_bert_config.json's ``tokenizer_args``) over them; then, unless tokenizer_config.json has
``added_tokens_decoder``, special_tokens_map.json's tokens over those, and the added tokens of
added_tokens.json and tokenizer.json. A key transformers keeps but never reads for these classes
(decoding options, chat templates, file names) has no effect and is ignored; a key that would make it
build something else is refused, naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from refimpl.errors import ModelFileError
from refimpl.io import read_json, read_json_object
from refimpl.load.config import EncoderConfig

NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer class names -> the kind of tokenizer transformers 5 builds for them
CLASSES = {
    "BertTokenizer": "bert",
    "BertTokenizerFast": "bert",
    "RobertaTokenizer": "roberta",
    "RobertaTokenizerFast": "roberta",
    "XLMRobertaTokenizer": "xlm-roberta",
    "XLMRobertaTokenizerFast": "xlm-roberta",
    "PreTrainedTokenizerFast": "backend",  # tokenizer.json as it is
    "TokenizersBackend": "backend",
    "PreTrainedTokenizer": "backend",
}
MODEL_TYPE_CLASSES = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer"}
# the tokenizer.json model each rebuilt class takes its vocabulary from
MODEL_OF_KIND = {"bert": "WordPiece", "roberta": "BPE", "xlm-roberta": "Unigram"}
_ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
CLASS_TOKENS = {
    "bert": {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
    "roberta": _ROBERTA_TOKENS,
    "xlm-roberta": _ROBERTA_TOKENS,
    "backend": {},
}
# the tokens each class builds its tokenizer around: they cannot be null
STRUCTURAL_TOKENS = {
    "bert": ("unk_token", "cls_token", "sep_token"),
    "roberta": ("cls_token", "sep_token"),
    "xlm-roberta": ("bos_token", "eos_token"),
    "backend": (),
}
# options each class reads, with its default (another class's options have no effect)
CLASS_OPTIONS = {
    "bert": {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True},
    "roberta": {"add_prefix_space": False, "trim_offsets": True},
    "xlm-roberta": {"add_prefix_space": True},
    "backend": {},
}
DEFAULT_INPUT_NAMES = {"bert": ("input_ids", "token_type_ids", "attention_mask")}
# keys that would make transformers build another tokenizer than these settings describe
REFUSED_KEYS = {
    "auto_map": "asks for custom tokenizer code",
    "processor_class": "makes transformers load a processor instead of the tokenizer",
    "vocab": "replaces the vocabulary",
    "merges": "replaces the merges",
    "unk_id": "replaces the unknown-token id",
    "tokenizer_object": "replaces the tokenizer",
    "gguf_file": "loads the tokenizer from a GGUF file",
    "post_processor": "replaces the post-processor",
    "tokenizer_padding": "replaces the padding",
    "tokenizer_truncation": "replaces the truncation",
    "_spm_precompiled_charsmap": "replaces the normalizer",
    "model_specific_special_tokens": "adds special tokens",
}
# tokenizer methods: transformers refuses a key named like one (AttributeError)
METHOD_NAMES = (
    "add_special_tokens",
    "add_tokens",
    "apply_chat_template",
    "batch_decode",
    "build_inputs_with_special_tokens",
    "convert_ids_to_tokens",
    "convert_tokens_to_ids",
    "decode",
    "encode",
    "encode_plus",
    "get_special_tokens_mask",
    "get_vocab",
    "num_special_tokens_to_add",
    "pad",
    "prepare_for_model",
    "save_pretrained",
    "tokenize",
    "truncate_sequences",
)
MAX_TOKENIZER_JSON_BYTES = 512 * 2**20  # XLM-RoBERTa's is 17 MB
ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


@dataclass
class TokenizerSettings:
    """What the tokenizer is built from: the class, the merged keys, the special and added tokens."""

    kind: str  # bert, roberta, xlm-roberta or backend
    class_name: str
    class_origin: str  # "tokenizer_config.json key 'tokenizer_class'", ... for messages
    options: dict  # the merged keys (tokenizer_config.json, processor kwargs, special_tokens_map.json)
    origins: dict  # key -> (file, label) it came from
    named: dict  # named special tokens (class defaults filled in): str or AddedToken
    extra: list  # extra special tokens
    added: dict = field(default_factory=dict)  # id -> AddedToken, to add first, in id order
    tokenizer_json: dict | None = None  # tokenizer.json, parsed (None without one)

    def error(self, key: str, problem: str) -> ModelFileError:
        path, label = self.origins.get(key, (self.origins.get("", "tokenizer_config.json"), ""))
        return ModelFileError(path, f"{label}{problem}")

    def option(self, key: str):
        """A class option (do_lower_case, add_prefix_space, ...) or its class default, checked."""
        value = self.options.get(key, CLASS_OPTIONS[self.kind][key])
        if key == "strip_accents" and value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(key, f"key '{key}' must be true or false, got {value!r}")
        return value

    def side(self, key: str, tokenizer_json: dict | None) -> str:
        """truncation_side / padding_side: the key, else tokenizer.json's direction, else "right"."""
        value = self.options.get(key)
        if value is None:
            section = (tokenizer_json or {}).get("truncation" if key == "truncation_side" else "padding") or {}
            value = str(section.get("direction") or "right").lower()
        if value not in ("right", "left"):
            raise self.error(key, f"key '{key}' must be 'right' or 'left', got {value!r}")
        return value

    def model_max_length(self) -> int | None:
        """model_max_length (or the legacy max_len); None when unset or "very large" (1e30)."""
        key = "model_max_length" if "model_max_length" in self.options else "max_len"
        value = self.options.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise self.error(key, f"key '{key}' must be a positive number, got {value!r}")
        return None if value > 1e20 else int(value)

    def type_ids_used(self) -> bool:
        """sentence-transformers passes token_type_ids only when the tokenizer lists them as an input."""
        names = self.options.get(
            "model_input_names", DEFAULT_INPUT_NAMES.get(self.kind, ("input_ids", "attention_mask"))
        )
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise self.error("model_input_names", f"key 'model_input_names' must be a list of names, got {names!r}")
        return "token_type_ids" in names

    def token(self, key: str) -> str:
        """A named special token's text."""
        return str(self.named[key])


def added_token(value, path: Path, where: str, special=None):
    """A tokenizers AddedToken from transformers' dict form, checked."""
    from tokenizers import AddedToken

    fields = {k: v for k, v in value.items() if k in ADDED_TOKEN_FIELDS}
    content = fields.pop("content", None)
    if not isinstance(content, str) or not all(isinstance(v, bool) for v in fields.values()):
        raise ModelFileError(path, f"{where} must be a token object with a string 'content', got {value!r}")
    if special is not None:
        fields["special"] = special
    return AddedToken(content, **fields)


def tokenizer_class(tokenizer_config: dict, path: Path, config: EncoderConfig) -> tuple[str, str, str]:
    """(kind, class name, where it was set): tokenizer_config.json's tokenizer_class, else config.json's,
    else the model type's class, as transformers' AutoTokenizer chooses."""
    name, origin = tokenizer_config.get("tokenizer_class"), f"{path.name} key 'tokenizer_class'"
    if name is None:
        name, origin = config.tokenizer_class, f"{config.path.name} key 'tokenizer_class'"
    if name is None:
        name, origin = MODEL_TYPE_CLASSES[config.model_type], f"{config.path.name} model_type {config.model_type!r}"
    if name not in CLASSES:
        where = path if origin.startswith(path.name) else config.path
        raise ModelFileError(
            where, f"tokenizer class {name!r} is not supported; refimpl builds {', '.join(sorted(CLASSES))}"
        )
    return CLASSES[name], name, origin


def _refuse_keys(options: dict, origins: dict, kind: str):
    for key in options:
        problem = REFUSED_KEYS.get(key)
        if key in METHOD_NAMES:
            problem = "is the name of a tokenizer method (transformers refuses to load it)"
        elif key in ("add_bos_token", "add_eos_token") and kind == "backend":
            # (tokenizer_config.json's are dropped beside tokenizer.json; the rebuilt classes replace the template)
            problem = "makes transformers replace tokenizer.json's post-processor"
        if problem:
            path, label = origins[key]
            raise ModelFileError(path, f"{label}key '{key}' {problem}; refimpl does not support it")


def _initial_options(directory: Path, processor_kwargs: dict, processor_origin, has_tokenizer_json: bool):
    """tokenizer_config.json's keys with the processor kwargs over them, and where each came from."""
    path = directory / "tokenizer_config.json"
    tokenizer_config = read_json_object(path, required=False) or {}
    options = {k: v for k, v in tokenizer_config.items() if k not in ("tokenizer_class", "init_inputs")}
    if has_tokenizer_json:  # transformers drops these when tokenizer.json exists
        options.pop("add_bos_token", None)
        options.pop("add_eos_token", None)
    origins = {key: (path, "") for key in options}
    options.update(processor_kwargs)
    origins.update({key: processor_origin for key in processor_kwargs})
    origins[""] = path
    if "additional_special_tokens" in options and not options.get("extra_special_tokens"):
        options["extra_special_tokens"] = options.pop("additional_special_tokens")
        origins["extra_special_tokens"] = origins["additional_special_tokens"]
    return tokenizer_config, options, origins


def _special_tokens_map(directory: Path, options: dict, origins: dict, processor_kwargs: dict):
    """special_tokens_map.json over the options (a processor kwarg that is set wins)."""
    path = directory / "special_tokens_map.json"
    stored = read_json_object(path, required=False) or {}
    for key, value in stored.items():
        if processor_kwargs.get(key):
            continue
        if isinstance(value, dict) and key != "extra_special_tokens":
            value = added_token(value, path, f"key '{key}'", special=True)
        elif key == "extra_special_tokens" and isinstance(value, list):
            merged = list(options.get("extra_special_tokens") or [])
            for token in value:
                token = added_token(token, path, f"key '{key}'", special=True) if isinstance(token, dict) else token
                if token not in merged:
                    merged.append(token)
            value = merged
        options[key] = value
        origins[key] = (path, "")


def _legacy_added_tokens(directory: Path, options: dict, tokenizer_json: dict | None) -> dict:
    """added_tokens.json, then tokenizer.json's added tokens (read when there is no added_tokens_decoder)."""
    added = {}
    path = directory / "added_tokens.json"
    stored = read_json_object(path, required=False)
    if stored is not None:
        from tokenizers import AddedToken

        specials = {str(options[k]) for k in NAMED_TOKENS if options.get(k)}
        specials |= {str(t) for t in options.get("extra_special_tokens") or []}
        for content, index in stored.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ModelFileError(path, f"token {content!r} has id {index!r}; ids are non-negative integers")
            special = content in specials
            added[index] = AddedToken(content, rstrip=False, lstrip=False, normalized=not special, special=special)
    for entry in (tokenizer_json or {}).get("added_tokens") or []:
        if not isinstance(entry, dict) or isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int):
            raise ModelFileError(directory / "tokenizer.json", f"added token {entry!r} has no integer 'id'")
        added[entry["id"]] = added_token(entry, directory / "tokenizer.json", "an added token")
    return added


def _added_tokens_decoder(value, path: Path) -> dict:
    if not isinstance(value, dict):
        raise ModelFileError(path, f"key 'added_tokens_decoder' must map ids to tokens, got {value!r}")
    added = {}
    for index, token in value.items():
        if not str(index).isdigit() or not isinstance(token, dict):
            raise ModelFileError(path, f"added_tokens_decoder entry {index!r}: {token!r} is not an id and a token")
        added[int(index)] = added_token(token, path, f"added_tokens_decoder entry {index}")
    return added


def _as_token(value, key: str, settings_origin):
    """A special token as transformers passes it on: a str, or an AddedToken from its ``__type`` dict."""
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return added_token(value, settings_origin[0], f"{settings_origin[1]}key '{key}'")
    return value


def _named_tokens(kind: str, options: dict, origins: dict) -> tuple[dict, list]:
    """The named special tokens (class defaults, then the keys) and the extra special tokens."""
    from tokenizers import AddedToken

    named = dict(CLASS_TOKENS[kind])
    for key, value in list(options.items()):
        value = options[key] = _as_token(value, key, origins.get(key, (origins[""], "")))
        if key in NAMED_TOKENS and value is not None and not isinstance(value, (str, AddedToken)):
            path, label = origins[key]
            raise ModelFileError(path, f"{label}key '{key}' must be a token string or an AddedToken, got {value!r}")
        if key in STRUCTURAL_TOKENS[kind] and value is None:
            path, label = origins[key]
            raise ModelFileError(path, f"{label}key '{key}' is null; the {kind} tokenizer is built around it")
        if key.endswith("_token") and isinstance(value, (str, AddedToken)):
            named[key] = value  # the named tokens and model-specific ones (transformers adds both)
        elif key in NAMED_TOKENS and value is None:
            named.pop(key, None)  # null: no such token
    if "additional_special_tokens" in options and "extra_special_tokens" not in options:
        options["extra_special_tokens"] = options.pop("additional_special_tokens")
        origins["extra_special_tokens"] = origins["additional_special_tokens"]
    extra = options.get("extra_special_tokens") or []
    where = origins.get("extra_special_tokens", (origins[""], ""))
    if isinstance(extra, dict):
        named.update({k: _as_token(v, k, where) for k, v in extra.items()})
        extra = []
    extra = [_as_token(t, "extra_special_tokens", where) for t in extra] if isinstance(extra, (list, tuple)) else None
    if extra is None or not all(isinstance(t, (str, AddedToken)) for t in extra + list(named.values())):
        raise ModelFileError(where[0], f"{where[1]}key 'extra_special_tokens' must list token strings or AddedTokens")
    return named, extra


def read_tokenizer_settings(
    directory: Path, config: EncoderConfig, processor_kwargs: dict, processor_origin
) -> TokenizerSettings:
    """The settings transformers 5 builds this directory's tokenizer from (see the module doc).

    ``processor_kwargs``: sentence_bert_config.json's tokenizer_args (with model_max_length set from its
    max_seq_length, as sentence-transformers sets it); ``processor_origin``: (that file, "tokenizer_args ")."""
    tokenizer_json = _tokenizer_json(directory)
    has_json = tokenizer_json is not None
    tokenizer_config, options, origins = _initial_options(directory, processor_kwargs, processor_origin, has_json)
    kind, class_name, class_origin = tokenizer_class(tokenizer_config, directory / "tokenizer_config.json", config)
    _refuse_keys(options, origins, kind)
    if "added_tokens_decoder" in options:  # then the only source of added tokens
        added = _added_tokens_decoder(options["added_tokens_decoder"], origins["added_tokens_decoder"][0])
    else:
        _special_tokens_map(directory, options, origins, processor_kwargs)
        added = _legacy_added_tokens(directory, options, tokenizer_json)
    by_content = {str(token): token for token in added.values()}
    for key in NAMED_TOKENS:  # transformers passes on the added token of the same text, flags and all
        if options.get(key) is not None and by_content:
            options[key] = by_content.get(str(options[key]), options[key])
    named, extra = _named_tokens(kind, options, origins)
    return TokenizerSettings(kind, class_name, class_origin, options, origins, named, extra, added, tokenizer_json)


def _tokenizer_json(directory: Path) -> dict | None:
    path = directory / "tokenizer.json"
    if not path.exists():
        return None
    data = read_json(path, max_bytes=MAX_TOKENIZER_JSON_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelFileError(path, "is not a valid tokenizers file (no 'model' object)")
    return data
