"""Loading, step 1: find the model's files and read its module list.

A model is a sentence-transformers directory: ``modules.json`` lists the
modules (Transformer, Pooling, optionally Normalize), each in a sub-directory.
The directory is either local or a snapshot of a Hub repository, fetched with
``huggingface_hub.snapshot_download`` (imported only when a Hub id is used).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refimpl.errors import ModelFileError, ModelNotFoundError
from refimpl.io import read_json

DEFAULT_MODEL = "bespin-global/klue-sroberta-base-continue-learning-by-mnr"

# sentence-transformers 6 reads the first non-empty one of these seven (load/transformer_config.py)
SBERT_CONFIG_NAMES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
# Every file refimpl reads, or refuses a model for holding; a Hub download fetches these and nothing
# else, at the root and in module sub-directories (1_Pooling/config.json, a Transformer in 0_Transformer/).
_READ_FILES = [
    "modules.json",
    "config.json",
    "config_sentence_transformers.json",
    *SBERT_CONFIG_NAMES,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    # files that make sentence-transformers load something refimpl does not run (refused when present)
    "adapter_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
]
HUB_CONFIG_PATTERNS = _READ_FILES + [f"*/{name}" for name in _READ_FILES]
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = "pytorch_model.bin"

# modules.json names modules by class path. These are the paths sentence-transformers 6 resolves to
# its Transformer, Pooling and Normalize classes under the names its releases wrote: 2.x-5.x
# "sentence_transformers.models.Pooling", 6.x the full module path. Others that happen to resolve
# to the same classes (sparse_encoder.modules.Transformer, ...) belong to other model kinds: refused.
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
MODULE_TYPES = {
    **{f"sentence_transformers.models.{kind}": kind for kind in SUPPORTED_MODULES},
    **{f"sentence_transformers.models.{kind}.{kind}": kind for kind in SUPPORTED_MODULES},
    **{f"sentence_transformers.sentence_transformer.modules.{kind}": kind for kind in SUPPORTED_MODULES},
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "Pooling",
    "sentence_transformers.sentence_transformer.modules.normalize.Normalize": "Normalize",
    "sentence_transformers.base.modules.Transformer": "Transformer",
    "sentence_transformers.base.modules.transformer.Transformer": "Transformer",
    "sentence_transformers.base.modules.Normalize": "Normalize",
    "sentence_transformers.base.modules.normalize.Normalize": "Normalize",
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read at call time, not at import."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _looks_like_path(name: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else is meant as a directory.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_folder: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Return a local directory holding the model: ``name_or_path`` itself if it
    is a directory, otherwise a Hub snapshot (downloaded or from the cache)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model_name_or_path must be a string or path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    name = os.fspath(name_or_path)
    if path.exists():
        raise ModelNotFoundError(f"{name}: is a file; a model is a directory holding modules.json")
    if _looks_like_path(name) or not name.strip():
        raise ModelNotFoundError(f"{name}: no such model directory")
    return _snapshot(name, revision, cache_folder, local_files_only or hub_offline(), token)


def _snapshot(repo_id, revision, cache_folder, local_files_only, token) -> Path:
    # Imported here so that loading a local directory never pays for huggingface_hub.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    def download(patterns):
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=os.fspath(cache_folder) if cache_folder is not None else None,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=patterns,
                library_name="refimpl",
            )
        )

    where = f"'{repo_id}'" + (f" (revision '{revision}')" if revision else "")
    try:
        snapshot = download(HUB_CONFIG_PATTERNS + [SAFETENSORS_NAME])
        if not (snapshot / SAFETENSORS_NAME).exists():
            # Older repos ship only pytorch_model.bin; fetch it only when needed.
            snapshot = download([PYTORCH_BIN_NAME])
    except HFValidationError as error:
        raise ModelNotFoundError(f"{repo_id}: neither a local directory nor a valid Hub model id ({error})") from None
    except Exception as error:  # huggingface_hub's errors differ between releases
        offline = (
            "offline mode is on (HF_HUB_OFFLINE or local_files_only)"
            if local_files_only
            else ("the Hub could not be reached or refused the request")
        )
        raise ModelNotFoundError(
            f"Could not load model {where}: {offline}, and no complete copy is in the cache "
            f"({cache_folder or 'the default Hugging Face cache'}). "
            f"Download it where there is network access (`hf download {repo_id}`) "
            f"or point refimpl at a local directory: SentenceTransformer('/path/to/model') "
            f"or `refimpl encode --model DIR`. Cause: {type(error).__name__}: {error}"
        ) from error
    return snapshot


@dataclass(frozen=True)
class ModuleEntry:
    """One entry of modules.json: its kind and the directory holding its files."""

    kind: str  # "Transformer", "Pooling" or "Normalize"
    path: Path


def module_kind(type_name: str) -> str | None:
    """Transformer, Pooling or Normalize for a type name sentence-transformers 6 resolves to that class."""
    return MODULE_TYPES.get(type_name) if isinstance(type_name, str) else None


def path_inside(root: Path, relative: str, what: Path) -> Path:
    """``root / relative``, refusing paths that leave ``root`` (``../../etc``, absolute paths, links out)."""
    if not isinstance(relative, str):
        raise ModelFileError(what, f"module path must be a string, got {relative!r}")
    if "\0" in relative:
        raise ModelFileError(what, f"module path {relative!r} holds a NUL character; no file has such a name")
    candidate = Path(relative)
    if candidate.is_absolute() or candidate.drive:
        raise ModelFileError(what, f"module path {relative!r} is absolute; it must stay inside {root}")
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ModelFileError(what, f"module path {relative!r} leaves the model directory {root}")
    return resolved


def _module_entry(model_dir: Path, modules_file: Path, position: int, entry) -> ModuleEntry:
    if not isinstance(entry, dict) or "type" not in entry:
        raise ModelFileError(modules_file, f"entry {position} is not an object with a 'type': {entry!r}")
    index = entry.get("idx", position)
    if isinstance(index, bool) or not isinstance(index, int):
        raise ModelFileError(modules_file, f"entry {position} has 'idx' {index!r}; it must be an integer")
    kind = module_kind(entry["type"])
    if kind is None:
        raise ModelFileError(
            modules_file,
            f"module {position} has type {entry['type']!r}; refimpl supports only "
            "sentence-transformers Transformer, Pooling and Normalize modules",
        )
    for key in ("name", "path"):  # sentence-transformers fails with KeyError without them
        if key not in entry:
            raise ModelFileError(modules_file, f"entry {position} has no '{key}'")
    if isinstance(entry["name"], bool) or not isinstance(entry["name"], (str, int)):
        raise ModelFileError(modules_file, f"entry {position} has 'name' {entry['name']!r}; it must be a string")
    return ModuleEntry(kind, path_inside(model_dir, entry["path"], modules_file))


def read_modules(model_dir: Path) -> list[ModuleEntry]:
    """Parse modules.json into [Transformer, Pooling, (Normalize)], refusing anything else.

    sentence-transformers runs the entries in list order and ignores ``idx``; a list whose ``idx``
    order differs is refused rather than guessed at, as are repeated names (the later module would
    replace the earlier one)."""
    model_dir = Path(model_dir).resolve()
    modules_file = model_dir / "modules.json"
    entries = read_json(modules_file)
    if not isinstance(entries, list) or not entries:
        raise ModelFileError(modules_file, "must be a non-empty JSON list of modules")
    modules = [_module_entry(model_dir, modules_file, position, entry) for position, entry in enumerate(entries)]
    indices = [entry.get("idx", position) for position, entry in enumerate(entries)]
    if indices != sorted(indices):
        raise ModelFileError(
            modules_file, f"entries are not in 'idx' order ({indices}); sentence-transformers runs them in list order"
        )
    names = [entry["name"] for entry in entries]
    if len(set(names)) != len(names):
        raise ModelFileError(modules_file, f"module names repeat ({names}); each module needs its own 'name'")
    kinds = [m.kind for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ModelFileError(
            modules_file, f"modules are {kinds}; refimpl runs Transformer -> Pooling [-> Normalize] in that order"
        )
    return modules
