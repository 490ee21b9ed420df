"""The fast engine's linear layers, packed once for the kernels and cached on disk.

Every layer has six linear layers (query, key, value, the attention output, the FFN's two). They
are packed into the microkernel's panel layout in the compute mode's format (float32, int8 with
per-channel scales, bfloat16) as four products: query, key and value stacked into one [3H, H]
weight ("attention.self.qkv": one product and one parallel region instead of three, 16-26% less
time for the three at batch 1 in int8, ``python -m tools.microbench qkv``; every output column's
arithmetic is the same as alone), then the
attention output and the FFN's two. Packing the klue-sized model takes seconds, so the packed arrays
go to a safetensors file in the cache folder, keyed by the weights file's fingerprint and the format:

    $REFIMPL_CACHE, else $XDG_CACHE_HOME/refimpl, else ~/.cache/refimpl
        packed/<fingerprint>-<mode>-v<format>.<layout>.safetensors

Later loads map that file read-only (the pages are shared between processes, Dask workers
included) and check it: a truncated file fails the layout check of ``formats.safetensors``, a
corrupt one its SHA-256 (in the file's metadata), a stale one has another name. Either way it is
rebuilt, saying so. A cache folder that cannot be written leaves the packed weights in memory.
Each weight's pages in the mapped checkpoint are dropped from memory as soon as it is packed
(``madvise(MADV_DONTNEED)``), and the packed copy in memory is freed before the cache file is
mapped, so no weight is resident twice, not even while packing.

The packed copy is taken on the engine's first forward pass: a weight matrix replaced in
``model.weights`` after that is not seen by the kernels (biases and LayerNorms are read live from
the weights at every pass); load the model again instead.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
from pathlib import Path

import numpy as np

from refimpl.io import fingerprint_weights_file

logger = logging.getLogger("refimpl")

LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")  # fmt: skip
MODES = {"float32": "f32", "int8": "int8", "bfloat16": "bf16"}  # refimpl's names -> the kernels'
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
# the packed products: the first is QKV's three weights stacked (rows: query's, key's, value's)
PACKED = ("attention.self.qkv", "attention.output.dense", "intermediate.dense", "output.dense")
# of the cache file, by mode: 1 packed the six linear layers one by one, 2 stacks QKV, and bf16's 3 rounds
# the weights by vcvtneps2bf16's rule (a float32 denormal to zero, where 2 could round one up to the
# smallest normal); then every array on a 64-byte boundary of the file (f32 3, int8 3, bf16 4)
LAYOUT = {"float32": 3, "int8": 3, "bfloat16": 4}


def cache_folder() -> Path:
    if os.environ.get("REFIMPL_CACHE"):
        return Path(os.environ["REFIMPL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "refimpl"


def sub_dict(weights: dict, dotted: str) -> dict:
    """``weights["attention"]["self"]["query"]`` for ``"attention.self.query"``."""
    for part in dotted.split("."):
        weights = weights[part]
    return weights


def pack_all(weights: dict, mode: str) -> dict[str, np.ndarray]:
    """Every packed product, as one flat dict of arrays ("layer.3.attention.self.qkv.w", ...)."""
    from refimpl.engines.fast.kernels.matmul import pack

    arrays = {}
    for index, layer in enumerate(weights["encoder"]["layer"]):
        for name in PACKED:
            parts = [sub_dict(layer, n)["weight"] for n in QKV] if name == "attention.self.qkv" else None
            weight = np.concatenate(parts) if parts else sub_dict(layer, name)["weight"]  # [3H, H] for QKV
            packed = pack(weight, MODES[mode])
            arrays.update(packed.to_dict(prefix=f"layer.{index}.{name}."))
            for part in parts or [weight]:
                release_tensor_pages(part)  # its packed copy replaces it: never both for the whole model
    return arrays


def _mapping_of(tensor: np.ndarray):
    """The mmap a checkpoint tensor is a view of (through NumPy views and a memoryview), or None."""
    base = tensor
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) and hasattr(base, "madvise") else None


def release_tensor_pages(tensor: np.ndarray):
    """Drop the resident pages of one tensor of the read-only mapped checkpoint (a page it shares with
    a neighbour is read back from the file when the neighbour is used). No-op for other arrays."""
    mapping = _mapping_of(tensor)
    if mapping is None or tensor.nbytes == 0:
        return
    start = tensor.ctypes.data - np.frombuffer(mapping, np.uint8, count=1).ctypes.data
    first = start // mmap.PAGESIZE * mmap.PAGESIZE
    mapping.madvise(mmap.MADV_DONTNEED, first, start + tensor.nbytes - first)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).view(np.uint8).data)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, mapped read-only, or None (saying why) when the file is not sound."""
    from refimpl.errors import ModelFileError
    from refimpl.formats.safetensors import read_safetensors_with_metadata, without_padding

    try:
        tensors, metadata = read_safetensors_with_metadata(path)
        arrays = {name: tensor.stored() for name, tensor in without_padding(tensors).items()}
    except ModelFileError as error:
        logger.warning("refimpl: the packed-weight cache %s is unreadable (%s); packing again", path, error.problem)
        return None
    if metadata.get("sha256") != _digest(arrays):
        logger.warning("refimpl: the packed-weight cache %s is corrupt (checksum mismatch); packing again", path)
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray], source: Path) -> bool:
    from refimpl.engines.fast.kernels.packing import ALIGN
    from refimpl.formats.safetensors import write_safetensors

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"sha256": _digest(arrays), "source": str(source)}
        write_safetensors(arrays, path, metadata=metadata, align=ALIGN)  # mapped, each array aligned
        return True
    except OSError as error:
        logger.warning("refimpl: cannot write the packed-weight cache %s (%s); keeping the packed weights in memory",
                       path, error)  # fmt: skip
        return False


def cache_path(weights_file: Path, mode: str) -> Path:
    from refimpl.engines.fast.kernels.matmul import FORMAT_VERSION

    return (
        cache_folder()
        / "packed"
        / f"{fingerprint_weights_file(weights_file)[:32]}-{mode}-v{FORMAT_VERSION}.{LAYOUT[mode]}.safetensors"
    )


def load_or_pack(weights: dict, mode: str, weights_file: Path | None, use_cache: bool = True) -> dict:
    """The packed arrays of every linear layer: from the cache when it holds them, else packed now
    (and cached). Returns {"layer.I.NAME.": PackedLinear}."""
    from refimpl.engines.fast.kernels.matmul import PackedLinear

    arrays = None
    path = cache_path(weights_file, mode) if use_cache and weights_file is not None else None
    if path is not None and path.exists():
        arrays = _read_cache(path)
    if arrays is None:
        arrays = pack_all(weights, mode)
        if path is not None and _write_cache(path, arrays, weights_file):
            _remove_older_formats(path)
            arrays = None  # freed before the file is mapped and checked: one packed copy at a time
            arrays = _read_cache(path) or pack_all(weights, mode)  # (unreadable just after writing: warned)
        release_checkpoint_pages(weights)
    prefixes = sorted({name.rsplit(".", 1)[0] + "." for name in arrays})
    return {prefix: PackedLinear.from_dict(arrays, prefix=prefix) for prefix in prefixes}


def _format_of(name: str, prefix: str):
    """(format version, layout) of a cache file named ``prefix-vF[.L].safetensors`` (layout 1 when
    absent), or None for any other name."""
    match = re.fullmatch(re.escape(prefix) + r"-v(\d+)(?:\.(\d+))?\.safetensors", name)
    return (int(match.group(1)), int(match.group(2) or 1)) if match else None


def _remove_older_formats(path: Path):
    """Delete this weights file's caches in the mode of an older format or layout (v1 beside v1.3):
    nothing reads them again, and each is as large as the packed weights. Newer ones are kept (another
    refimpl sharing the folder reads them); a process still mapping one keeps its pages."""
    prefix = path.name.split("-v", 1)[0]  # fingerprint-mode
    current = _format_of(path.name, prefix)
    for other in path.parent.glob(f"{prefix}-v*.safetensors"):
        version = _format_of(other.name, prefix)
        if version is not None and version < current:
            try:
                other.unlink()
                logger.info("refimpl: removed the packed-weight cache %s of an older format", other)
            except OSError:
                pass


def release_checkpoint_pages(weights: dict):
    """Drop every page of the mapped checkpoint that packing read: they are not needed again (the
    packed copy is), and the kernel reads them back from the file if anything asks."""
    for layer in weights["encoder"]["layer"]:
        for name in LINEARS:
            release_tensor_pages(sub_dict(layer, name)["weight"])


def packed_layers(weights: dict, mode: str, weights_file: Path | None) -> list[dict]:
    """Per layer, {"attention.self.qkv": PackedLinear, ...}: the packed form of its linear layers (PACKED)."""
    packed = load_or_pack(weights, mode, weights_file)
    layers = []
    for index, layer in enumerate(weights["encoder"]["layer"]):
        products = {name: packed[f"layer.{index}.{name}."] for name in PACKED}
        # the stacked product's bias, stacked once here (not in every pass: batch 1 runs 12 of them in
        # a gap where numba's worker may fall asleep); the weights are read-only, as packed once
        products["attention.self.qkv"].bias = np.concatenate([sub_dict(layer, name)["bias"] for name in QKV])
        layers.append(products)
    return layers
