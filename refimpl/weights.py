"""Step 3 of the pipeline: the weights, memory-mapped and checked against config.json.

``model.safetensors`` is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the raw
tensor bytes. We parse the header ourselves and view the bytes in place with
``np.frombuffer`` on a read-only mmap: float32 weights are never copied, and
rows of the embedding table that no input uses are never read from disk.
(``safetensors.safe_open(framework="np").get_tensor`` would copy each tensor.)

The result is a nested dict whose keys are the checkpoint's own names, e.g.
``weights["encoder"]["layer"][3]["attention"]["self"]["query"]["weight"]``,
so each function of the forward pass receives the sub-dict it mirrors.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .config import EncoderConfig
from .errors import ModelFileError
from .files import PYTORCH_BIN_NAME, SAFETENSORS_NAME

logger = logging.getLogger("refimpl")

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
    "BOOL": (1, np.dtype("?")),
    "F8_E4M3": (1, None),
    "F8_E5M2": (1, None),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# The safetensors library allows 100 MB; a header of many thousand tensors is well under 1 MiB,
# and parsing JSON costs about ten times its size in memory.
MAX_HEADER_BYTES = 16 * 1024 * 1024


def bfloat16_to_float32(raw_uint16: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the bits back into place."""
    return (raw_uint16.astype(np.uint32) << 16).view(np.float32)


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

    def to_numpy(self, dtype: np.dtype) -> np.ndarray:
        """A float array of ``dtype``: a zero-copy view when the stored dtype matches, else a converted copy."""
        if self.dtype not in FLOAT_DTYPES:
            raise ModelFileError(
                self.path, f"tensor '{self.name}' has dtype {self.dtype}; weights must be one of {', '.join(FLOAT_DTYPES)}"
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


def _read_header(path: Path, handle, size: int) -> tuple[dict, int]:
    if size < 8:
        raise ModelFileError(path, f"file is truncated: {size} bytes, too short for a safetensors header")
    header_length = int.from_bytes(handle.read(8), "little")
    if header_length > min(size - 8, MAX_HEADER_BYTES):
        raise ModelFileError(
            path, f"corrupt or truncated header: it claims {header_length} bytes but the file has {size - 8} after the "
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
    return header, 8 + header_length


def read_safetensors(path: Path) -> dict[str, StoredTensor]:
    """Parse and check the header of a safetensors file; map its bytes without reading them.

    As strict as the safetensors library: known dtypes, byte spans that match each shape, and
    tensors that tile the data area exactly (no gaps, no overlaps, no trailing bytes)."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ModelFileError(path, "file is missing") from None
    except OSError as error:
        raise ModelFileError(path, f"cannot be opened ({error})") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        header, data_start = _read_header(path, handle, size)
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    data_size = size - data_start
    tensors = {name: _check_entry(path, name, entry, data_start, data_size, buffer) for name, entry in header.items()}
    position = 0
    for tensor in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if tensor.offset - data_start != position:
            problem = "overlaps the tensor before it" if tensor.offset - data_start < position else "leaves a gap before it"
            raise ModelFileError(path, f"corrupt header: tensor '{tensor.name}' at data offset {tensor.offset - data_start} {problem}")
        position += tensor.nbytes
    if position != data_size:
        raise ModelFileError(path, f"corrupt file: the tensors cover {position} bytes of data but the file has {data_size}")
    return tensors


_MAX_DIMENSION = 2**62


def _check_entry(path, name, entry, data_start, data_size, buffer) -> StoredTensor:
    if not isinstance(entry, dict):
        raise ModelFileError(path, f"corrupt header: entry '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ModelFileError(path, f"corrupt header: tensor '{name}' has dtype {dtype!r}; known: {', '.join(SAFETENSORS_DTYPES)}")
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


# --- from checkpoint keys to the nested dict the forward pass reads ---------------------------

_PREFIXES = ("roberta.", "bert.", "model.")
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")
# Heads and buffers that sentence embeddings never use.
_IGNORED = re.compile(r"^(pooler\.|lm_head\.|cls\.|classifier\.|qa_outputs\.)|position_ids$|token_type_ids$")


def canonical_name(key: str) -> str:
    """'roberta.encoder.layer.0.output.LayerNorm.gamma' -> 'encoder.layer.0.output.LayerNorm.weight'.

    Mirrors transformers' loading: the base-model prefix is optional, and very old
    TensorFlow-converted checkpoints call LayerNorm's weight and bias gamma and beta.
    """
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return key


def expected_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward pass reads, with the shape config.json implies."""
    H, I = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, H),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (I, H)
        shapes[p + "intermediate.dense.bias"] = (I,)
        shapes[p + "output.dense.weight"] = (H, I)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    return shapes


def _shape_of(value) -> tuple[int, ...]:
    return tuple(value.shape)


def select_weights(state: Mapping[str, object], config: EncoderConfig, source: Path) -> dict[str, object]:
    """Map checkpoint keys to canonical names and check every shape against config.json.

    ``state`` values are StoredTensor or NumPy arrays; both have ``.shape``.
    Disagreements are reported in config.json's terms (hidden size, layers, vocabulary).
    """
    canonical: dict[str, object] = {}
    for key, value in state.items():
        name = canonical_name(key)
        if _IGNORED.search(name):
            continue
        if name in canonical:
            raise ModelFileError(source, f"tensor '{name}' is stored twice (as '{key}' and under another prefix)")
        canonical[name] = value

    cfg = config.path or "config.json"
    word = canonical.get("embeddings.word_embeddings.weight")
    if word is not None and _shape_of(word) != (config.vocab_size, config.hidden_size):
        raise ModelFileError(
            source,
            f"embeddings.word_embeddings.weight has shape {list(_shape_of(word))} but {cfg} says "
            f"vocab_size={config.vocab_size}, hidden_size={config.hidden_size}",
        )
    layers = {int(m.group(1)) for name in canonical if (m := _LAYER_KEY.match(name))}
    if layers and max(layers) + 1 != config.num_hidden_layers:
        raise ModelFileError(
            source,
            f"holds {max(layers) + 1} encoder layers (encoder.layer.0-{max(layers)}) but {cfg} says "
            f"num_hidden_layers={config.num_hidden_layers}",
        )
    if config.num_hidden_layers > 0 and not layers:
        raise ModelFileError(source, f"holds no encoder layers but {cfg} says num_hidden_layers={config.num_hidden_layers}")

    shapes = expected_shapes(config)
    selected = {}
    for name, shape in shapes.items():
        if name not in canonical:
            raise ModelFileError(source, f"tensor '{name}' is missing")
        if _shape_of(canonical[name]) != shape:
            raise ModelFileError(
                source,
                f"tensor '{name}' has shape {list(_shape_of(canonical[name]))}, expected {list(shape)} from {cfg}",
            )
        selected[name] = canonical[name]
    unused = sorted(set(canonical) - set(shapes))
    if unused:
        raise ModelFileError(source, f"holds tensors this architecture does not have, e.g. '{unused[0]}' ({len(unused)} in all)")
    return selected


def to_nested(flat: Mapping[str, np.ndarray]) -> dict:
    """{'encoder.layer.0.attention.self.query.weight': W} -> {'encoder': {'layer': [{'attention': ...}]}}."""
    nested: dict = {}
    for name, value in flat.items():
        node = nested
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    encoder = nested.get("encoder", {"layer": {}})
    encoder["layer"] = [encoder["layer"][str(i)] for i in range(len(encoder.get("layer", {})))]
    nested["encoder"] = encoder
    return nested


def load_weights(state: Mapping[str, object], config: EncoderConfig, source: Path, dtype=np.float32) -> dict:
    """Checked, canonically named weights as a nested dict of ``dtype`` arrays."""
    dtype = np.dtype(dtype)
    selected = select_weights(state, config, source)
    arrays = {}
    for name, value in selected.items():
        if isinstance(value, StoredTensor):
            array = value.to_numpy(dtype)
        else:
            array = np.asarray(value)
            if array.dtype.kind != "f":
                raise ModelFileError(source, f"tensor '{name}' has dtype {array.dtype}; weights must be floating point")
            array = array.astype(dtype, copy=False)
        arrays[name] = array
    return to_nested(arrays)


def read_state(transformer_dir: Path):
    """The raw tensors of the Transformer module (safetensors, else pytorch_model.bin) and their file."""
    safetensors_file = transformer_dir / SAFETENSORS_NAME
    if safetensors_file.exists():
        return read_safetensors(safetensors_file), safetensors_file
    bin_file = transformer_dir / PYTORCH_BIN_NAME
    if bin_file.exists():
        from .torch_pickle import read_pytorch_bin

        logger.warning(
            "%s has no %s; reading %s without torch (copied into memory, not mapped). "
            "`refimpl convert %s %s` writes a safetensors file once for fast, mapped loads.",
            transformer_dir, SAFETENSORS_NAME, PYTORCH_BIN_NAME, bin_file, safetensors_file,
        )
        return read_pytorch_bin(bin_file), bin_file
    raise ModelFileError(safetensors_file, f"file is missing (and there is no {PYTORCH_BIN_NAME} either)")
