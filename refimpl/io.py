"""Files a user or a model hands refimpl: JSON configuration, users' text and line files, atomic
writes, content fingerprints. One home for each rule, shared by the loader, the CLI and Dask."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from refimpl.errors import ModelFileError


def read_json(path: Path, *, required: bool = True, max_bytes: int | None = None):
    """Parse a JSON file; a missing or malformed file names itself in the error. Configuration files
    may hold MAX_JSON_BYTES; ``max_bytes`` raises the bound (a tokenizer.json holds a vocabulary)."""
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except FileNotFoundError:
        if not required:
            return None
        raise ModelFileError(path, "file is missing") from None
    except OSError as error:
        raise ModelFileError(path, f"cannot be read ({error})") from None
    if len(raw) > max_bytes:
        raise ModelFileError(path, f"is larger than {max_bytes // 2**20} MiB; a configuration file is a few kB")
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


def _process_umask() -> int:
    mask = os.umask(0)  # read once, at import, before any thread could race on it
    os.umask(mask)
    return mask


_UMASK = _process_umask()


@contextmanager
def replaced_atomically(path):
    """Yield a new temporary file's path beside ``path``; when the block succeeds it replaces ``path``.

    The temporary is created exclusively (``mkstemp``: a random name, ``O_EXCL``), so a symlink
    planted beside the target is never followed; a failure midway (a full disk, Ctrl-C) leaves any
    previous file untouched and removes the temporary."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(handle, 0o666 & ~_UMASK)  # the permissions a plain open() would give, not mkstemp's 0600
    os.close(handle)
    try:
        yield Path(name)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def write_atomically(path, write):
    """``write(handle)`` into a binary temporary beside ``path``, then rename it into place."""
    with replaced_atomically(path) as temporary, open(temporary, "r+b") as handle:
        write(handle)


def write_json_atomically(path, data):
    write_atomically(path, lambda handle: handle.write(json.dumps(data, indent=1, default=str).encode("utf-8")))


def read_user_text(path) -> str:
    """A user's UTF-8 text file (sentences, an STS set) as written, line breaks untranslated, without
    a leading byte order mark; a missing file, a directory or another encoding is a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a text file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    return text.removeprefix(BOM)


BOM = "\ufeff"
# The line breaks of Python's universal newlines: a lone CR ends a line too. str.splitlines would
# also split at form feeds, U+2028 and others, which users' sentences may contain.
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """One sentence per line; a final line break ends the last line, it does not start an empty one.
    The one rule for every reader of users' line files (the CLI, stdin, Dask partitions)."""
    if not text:
        return []
    lines = LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def read_lines(path) -> list[str]:
    """The sentences of a UTF-8 file, one per line (BOM dropped, CRLF, CR and LF line breaks)."""
    return split_lines(read_user_text(path))


def line_ranges(path, lines_per_range: int) -> list[tuple[int, int, int]]:
    """(start, end, lines) byte ranges of ``lines_per_range`` lines each, cut just after a line break,
    so that ``read_line_range`` on each and ``read_lines`` on the whole file give the same sentences."""
    ranges, lines = [], 0
    with open(path, "rb") as handle:
        start = position = 3 if handle.read(3) == BOM.encode() else 0
        handle.seek(start)
        for chunk in handle:  # split after each b"\n", so a b"\r\n" never straddles two chunks
            ends = [match.end() for match in _LINE_BREAK_BYTES.finditer(chunk)]
            if not ends or ends[-1] != len(chunk):
                ends.append(len(chunk))  # a final line without a line break
            for end in ends:
                lines += 1
                if lines == lines_per_range:
                    ranges.append((start, position + end, lines))
                    start, lines = position + end, 0
            position += len(chunk)
    if position > start:
        ranges.append((start, position, lines))
    return ranges


def read_line_range(path, start: int, end: int) -> list[str]:
    """The sentences in bytes [start, end) of a file cut by ``line_ranges``."""
    with open(path, "rb") as handle:
        handle.seek(start)
        raw = handle.read(end - start)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text at byte {start + error.start}") from None
    return split_lines(text.removeprefix(BOM) if start == 0 else text)


def fingerprint_file(path) -> str:
    """The SHA-256 of a file's bytes: caches keyed by a user's input, not its name or time stamp."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_WHOLE_FILE_HASH_LIMIT = 4 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024


def _update_with_file(digest, path: Path, name: str):
    """Feed a file's name, size, modification time and content (small files whole, large ones by their
    first and last MiB, which hold a safetensors header) to ``digest``."""
    stat = path.stat()
    digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    with open(path, "rb") as handle:
        if stat.st_size <= _WHOLE_FILE_HASH_LIMIT:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_EDGE_BYTES))
            handle.seek(-_EDGE_BYTES, os.SEEK_END)
            digest.update(handle.read(_EDGE_BYTES))


def fingerprint_weights_file(path) -> str:
    """A quick digest of one (possibly large) file, as ``fingerprint_dir`` digests each of its files."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    _update_with_file(digest, path, str(path))
    return digest.hexdigest()


def fingerprint_dir(directory) -> str:
    """A digest of a model directory's content, for caches keyed by the model rather than its name.

    Every file's relative path, size and modification time; small files (configs, tokenizer) hashed
    whole, large ones (weights) by their first and last MiB, which hold the safetensors header."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        _update_with_file(digest, path, str(path.relative_to(directory)))
    return digest.hexdigest()
