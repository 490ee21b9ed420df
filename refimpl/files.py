"""Step 1 of the pipeline: find the model's files and read its module list.

A model is a sentence-transformers directory: ``modules.json`` lists the
modules (Transformer, Pooling, optionally Normalize), each in a sub-directory.
The directory is either local or a snapshot of a Hub repository, fetched with
``huggingface_hub.snapshot_download`` (imported only when a Hub id is used).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError, ModelNotFoundError

DEFAULT_MODEL = "bespin-global/klue-sroberta-base-continue-learning-by-mnr"

# Every file refimpl reads; a Hub download fetches these and nothing else.
# "*/config.json" covers the module sub-directories (1_Pooling/config.json, ...).
HUB_CONFIG_PATTERNS = [
    "modules.json",
    "config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "*/config.json",
]
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_BIN_NAME = "pytorch_model.bin"

# modules.json names modules by class path; sentence-transformers 2.x-5.x wrote
# "sentence_transformers.models.Pooling", 6.x writes the full module path
# ("sentence_transformers.sentence_transformer.modules.pooling.Pooling").
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


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
        raise ModelNotFoundError(
            f"{repo_id}: neither a local directory nor a valid Hub model id ({error})"
        ) from None
    except Exception as error:  # huggingface_hub's errors differ between releases
        offline = "offline mode is on (HF_HUB_OFFLINE or local_files_only)" if local_files_only else (
            "the Hub could not be reached or refused the request"
        )
        raise ModelNotFoundError(
            f"Could not load model {where}: {offline}, and no complete copy is in the cache "
            f"({cache_folder or 'the default Hugging Face cache'}). "
            f"Download it where there is network access (`hf download {repo_id}`) "
            f"or point refimpl at a local directory: SentenceTransformer('/path/to/model') "
            f"or `refimpl encode --model DIR`. Cause: {type(error).__name__}: {error}"
        ) from error
    return snapshot


def read_json(path: Path, *, required: bool = True):
    """Parse a JSON file; a missing or malformed file names itself in the error."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        if not required:
            return None
        raise ModelFileError(path, "file is missing") from None
    except OSError as error:
        raise ModelFileError(path, f"cannot be read ({error})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(path, f"is larger than {MAX_JSON_BYTES // 2**20} MiB; a configuration file is a few kB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFileError(path, f"cannot be read ({error})") from None
    return parse_json(path, text)


MAX_JSON_BYTES = 16 * 1024 * 1024  # the configuration files refimpl parses are a few kB


def parse_json(path, text):
    """json.loads with every failure as a ModelFileError naming the file: malformed text, nesting
    past Python's recursion limit, numbers past Python's integer-conversion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFileError(path, f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except (ValueError, RecursionError) as error:  # e.g. an integer of more than 4300 digits
        raise ModelFileError(path, f"unreadable JSON ({error})") from None


def read_json_object(path: Path, *, required: bool = True) -> dict | None:
    """read_json for files that must hold one JSON object (None when optional and missing)."""
    data = read_json(path, required=required)
    if data is not None and not isinstance(data, dict):
        raise ModelFileError(path, "must be a JSON object")
    return data


def write_atomically(path, write):
    """``write(handle)`` into a temporary file beside ``path``, then rename it into place: a failure
    midway (a full disk, Ctrl-C) leaves any previous file untouched."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_user_text(path) -> str:
    """A user's UTF-8 text file (sentences, an STS set), without a leading byte order mark;
    a missing file, a directory or another encoding is a ValueError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a text file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    return text.removeprefix("\ufeff")


_WHOLE_FILE_HASH_LIMIT = 4 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024


def fingerprint_dir(directory) -> str:
    """A digest of a model directory's content, for caches keyed by the model rather than its name.

    Every file's relative path, size and modification time; small files (configs, tokenizer) hashed
    whole, large ones (weights) by their first and last MiB, which hold the safetensors header."""
    import hashlib

    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(directory)}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(path, "rb") as handle:
            if stat.st_size <= _WHOLE_FILE_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(-_EDGE_BYTES, os.SEEK_END)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()


@dataclass(frozen=True)
class Module:
    """One entry of modules.json: its kind and the directory holding its files."""

    kind: str  # "Transformer", "Pooling" or "Normalize"
    path: Path


def module_kind(type_name: str) -> str | None:
    if not isinstance(type_name, str) or not type_name.startswith("sentence_transformers."):
        return None
    last = type_name.rsplit(".", 1)[-1]
    return last if last in SUPPORTED_MODULES else None


def inside(root: Path, relative: str, what: Path) -> Path:
    """``root / relative``, refusing paths that leave ``root`` (``../../etc``, absolute paths, links out)."""
    if not isinstance(relative, str):
        raise ModelFileError(what, f"module path must be a string, got {relative!r}")
    candidate = Path(relative)
    if candidate.is_absolute() or candidate.drive:
        raise ModelFileError(what, f"module path {relative!r} is absolute; it must stay inside {root}")
    resolved = (root / candidate).resolve()
    if resolved != root and root not in resolved.parents:
        raise ModelFileError(what, f"module path {relative!r} leaves the model directory {root}")
    return resolved


def read_modules(model_dir: Path) -> list[Module]:
    """Parse modules.json into [Transformer, Pooling, (Normalize)], refusing anything else."""
    model_dir = Path(model_dir).resolve()
    modules_file = model_dir / "modules.json"
    entries = read_json(modules_file)
    if not isinstance(entries, list) or not entries:
        raise ModelFileError(modules_file, "must be a non-empty JSON list of modules")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "type" not in entry:
            raise ModelFileError(modules_file, f"entry {position} is not an object with a 'type': {entry!r}")
        index = entry.get("idx", position)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ModelFileError(modules_file, f"entry {position} has 'idx' {index!r}; it must be an integer")
    modules = []
    for position, entry in enumerate(sorted(entries, key=lambda e: e.get("idx", 0))):
        kind = module_kind(entry["type"])
        if kind is None:
            raise ModelFileError(
                modules_file,
                f"module {position} has type {entry['type']!r}; refimpl supports only "
                "sentence-transformers Transformer, Pooling and Normalize modules",
            )
        modules.append(Module(kind, inside(model_dir, entry.get("path", ""), modules_file)))
    kinds = [m.kind for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ModelFileError(
            modules_file,
            f"modules are {kinds}; refimpl runs Transformer -> Pooling [-> Normalize] in that order",
        )
    return modules
