"""The safetensors format, read and written without the safetensors library's copies.

A file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the raw tensor bytes.
``read_safetensors`` parses the header itself and maps the bytes read-only: ``StoredTensor.to_numpy``
views a tensor in place with ``np.frombuffer`` when its stored dtype is the one asked for (a float32
checkpoint in float32 mode), so rows of the embedding table that no input uses are never read from
disk. Any other combination (float16 or bfloat16 stored, float64 mode, a misaligned tensor) is one copy.
(``safetensors.safe_open(framework="np").get_tensor`` would copy every tensor.)
"""

from __future__ import annotations

import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refimpl.errors import ModelFileError
from refimpl.formats.dtypes import bfloat16_to_float32

# safetensors dtype -> (bytes per element, NumPy dtype or None when NumPy has none)
SAFETENSORS_DTYPES = {
    "F64": (8, np.dtype("<f8")),
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, None),
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
    "I16": (2, np.dtype("<i2")),
    "I8": (1, np.dtype("i1")),
    "U8": (1, np.dtype("u1")),
    "U16": (2, np.dtype("<u2")),
    "U32": (4, np.dtype("<u4")),
    "U64": (8, np.dtype("<u8")),
    "BOOL": (1, np.dtype("?")),
    "F8_E4M3": (1, None),
    "F8_E5M2": (1, None),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# The safetensors library allows 100 MB; a header of many thousand tensors is well under 1 MiB,
# and parsing JSON costs about ten times its size in memory.
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StoredTensor:
    """A tensor described by the safetensors header; its bytes stay in the mmap until asked for."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: object  # the mmap
    offset: int  # absolute byte offset in the file
    path: Path

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype][0]

    def stored(self) -> np.ndarray:
        """The tensor as stored, a read-only view of the mapped bytes (bfloat16 as its uint16 bits)."""
        stored = np.dtype("<u2") if self.dtype == "BF16" else SAFETENSORS_DTYPES[self.dtype][1]
        if stored is None:
            raise ModelFileError(self.path, f"tensor '{self.name}' has dtype {self.dtype}, which NumPy cannot hold")
        return np.frombuffer(self.buffer, dtype=stored, count=math.prod(self.shape), offset=self.offset).reshape(
            self.shape
        )

    def to_numpy(self, dtype: np.dtype) -> np.ndarray:
        """A float array of ``dtype``: a zero-copy view when the stored dtype matches, else a converted copy."""
        if self.dtype not in FLOAT_DTYPES:
            raise ModelFileError(
                self.path,
                f"tensor '{self.name}' has dtype {self.dtype}; weights must be one of {', '.join(FLOAT_DTYPES)}",
            )
        count = math.prod(self.shape)
        if self.dtype == "BF16":
            raw = np.frombuffer(self.buffer, dtype="<u2", count=count, offset=self.offset)
            array = bfloat16_to_float32(raw).astype(dtype, copy=False)
        else:
            stored = SAFETENSORS_DTYPES[self.dtype][1]
            array = np.frombuffer(self.buffer, dtype=stored, count=count, offset=self.offset)
            if array.dtype != dtype or not array.flags.aligned:
                array = array.astype(dtype)  # float16 upcast, float64 mode, or a misaligned tensor: one copy
        return array.reshape(self.shape)


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key '{duplicate}' appears twice")
    return dict(pairs)


def _read_header(path: Path, handle, size: int) -> tuple[dict, int, dict]:
    if size < 8:
        raise ModelFileError(path, f"file is truncated: {size} bytes, too short for a safetensors header")
    header_length = int.from_bytes(handle.read(8), "little")
    if header_length > min(size - 8, MAX_HEADER_BYTES):
        raise ModelFileError(
            path,
            f"corrupt or truncated header: it claims {header_length} bytes but the file has {size - 8} after the "
            f"length (and a header may have at most {MAX_HEADER_BYTES // 2**20} MiB)",
        )
    try:
        header = json.loads(handle.read(header_length).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelFileError(path, f"corrupt header: not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "corrupt header: not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(path, "corrupt header: __metadata__ must map names to strings")
    return header, 8 + header_length, metadata


def read_safetensors(path: Path) -> dict[str, StoredTensor]:
    """Parse and check the header of a safetensors file; map its bytes without reading them.

    As strict as the safetensors library: known dtypes, byte spans that match each shape, and
    tensors that tile the data area exactly (no gaps, no overlaps, no trailing bytes)."""
    return read_safetensors_with_metadata(path)[0]


def read_safetensors_with_metadata(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """``read_safetensors`` and the header's ``__metadata__`` (names to strings)."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ModelFileError(path, "file is missing") from None
    except OSError as error:
        raise ModelFileError(path, f"cannot be opened ({error})") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        header, data_start, metadata = _read_header(path, handle, size)
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    data_size = size - data_start
    tensors = {name: _check_entry(path, name, entry, data_start, data_size, buffer) for name, entry in header.items()}
    position = 0
    for tensor in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if tensor.offset - data_start != position:
            problem = (
                "overlaps the tensor before it" if tensor.offset - data_start < position else "leaves a gap before it"
            )
            raise ModelFileError(
                path, f"corrupt header: tensor '{tensor.name}' at data offset {tensor.offset - data_start} {problem}"
            )
        position += tensor.nbytes
    if position != data_size:
        raise ModelFileError(
            path, f"corrupt file: the tensors cover {position} bytes of data but the file has {data_size}"
        )
    return tensors, metadata


_MAX_DIMENSION = 2**62


def _check_entry(path, name, entry, data_start, data_size, buffer) -> StoredTensor:
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"corrupt header: entry '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ModelFileError(
            path, f"corrupt header: tensor '{name}' has dtype {dtype!r}; known: {', '.join(SAFETENSORS_DTYPES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIMENSION for d in shape
    ):
        raise ModelFileError(path, f"corrupt header: tensor '{name}' has shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFileError(path, f"corrupt header: tensor '{name}' has data_offsets {offsets!r}")
    if offsets[1] > data_size:
        raise ModelFileError(
            path,
            f"file is truncated: tensor '{name}' ends at byte {data_start + offsets[1]} "
            f"but the file has {data_start + data_size} bytes",
        )
    expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype][0]  # Python ints: no overflow
    if offsets[1] - offsets[0] != expected:
        raise ModelFileError(
            path,
            f"corrupt header: tensor '{name}' of dtype {dtype} and shape {shape} needs {expected} bytes, "
            f"its data_offsets span {offsets[1] - offsets[0]}",
        )
    return StoredTensor(name, dtype, tuple(shape), buffer, data_start + offsets[0], path)


PADDING_PREFIX = "__padding__."  # the names of align's filler tensors (uint8, zeros)


def write_safetensors(
    tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None, align: int = 1
) -> Path:
    """Write NumPy arrays as a safetensors file, atomically, streaming each array's bytes to the file
    (safetensors' own ``save`` builds the whole file in memory first: 3x the weights at peak).

    ``align`` (bytes, default 1: no fillers, the plain format every reader loads): every tensor starts at
    a multiple of it in the file, so in a mapping of the file (whose
    start is page-aligned): the header is padded with spaces, and a tensor that would start off the
    boundary is preceded by a uint8 filler named ``PADDING_PREFIX`` + its index (the format has no gaps
    between tensors; readers that skip the fillers: ``without_padding``)."""
    import json

    from refimpl.io import write_atomically

    if not (isinstance(align, int) and align >= 1):
        raise ValueError(f"{path}: align must be a positive number of bytes, got {align!r}")
    codes = {numpy_dtype: code for code, (_, numpy_dtype) in SAFETENSORS_DTYPES.items() if numpy_dtype is not None}
    arrays, end = {}, 0
    for name, array in tensors.items():
        if name.startswith(PADDING_PREFIX):
            raise ValueError(f"{path}: tensor name {name!r} is reserved for alignment padding")
        gap = -end % align
        if gap:
            arrays[f"{PADDING_PREFIX}{len(arrays)}"] = np.zeros(gap, np.uint8)
        arrays[name] = np.ascontiguousarray(array)
        end += gap + arrays[name].nbytes
    header, offset = {}, 0
    for name, array in arrays.items():
        code = codes.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if code is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % max(align, 8))  # the data starts aligned (8 + header bytes)

    def write(handle):
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for array in arrays.values():
            handle.write(array.astype(array.dtype.newbyteorder("<"), copy=False).data if array.size else b"")

    write_atomically(path, write)
    return Path(path)


def without_padding(tensors: dict) -> dict:
    """``tensors`` without the fillers ``write_safetensors(align=)`` put between them."""
    return {name: tensor for name, tensor in tensors.items() if not name.startswith(PADDING_PREFIX)}
