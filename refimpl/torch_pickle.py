"""Read a ``pytorch_model.bin`` state dict without torch and without running its code.

``torch.save`` writes a zip archive: ``<name>/data.pkl``, a pickle of the state dict, and
``<name>/data/<key>``, the raw bytes of each storage. Unpickling runs whatever callables
the pickle names, so a plain ``pickle.load`` on a downloaded file can run any command.
This reader allows exactly what a state dict needs and nothing else:

- ``collections.OrderedDict`` (the dict itself);
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, replaced here by functions
  that build NumPy arrays (after checking that size, stride and offset stay inside the
  storage, so a crafted file cannot read memory out of bounds);
- the typed storage classes (``torch.FloatStorage``, ``HalfStorage``, ``BFloat16Storage``, ...),
  replaced by their NumPy dtype, with storages loaded through ``persistent_load``.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) stops the load
with ``UnsafePickleError`` before it is called. The old non-zip format (torch < 1.6) is
refused. Arrays are copies in memory; ``refimpl convert`` writes a safetensors file once so
that later loads are memory-mapped.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelFileError, UnsafePickleError
from .weights import bfloat16_to_float32


class _Storage:
    """A storage class named by the pickle, standing for its element dtype."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


_STORAGES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class _StorageData:
    def __init__(self, array: np.ndarray, bfloat16: bool):
        self.array, self.bfloat16 = array, bfloat16


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, as a bounds-checked NumPy copy."""
    if not isinstance(storage, _StorageData):
        raise UnsafePickleError("<pickle>", "a tensor is rebuilt from something that is not a storage")
    size, stride = tuple(size), tuple(stride)
    if (
        len(size) != len(stride)
        or not all(isinstance(v, int) and v >= 0 for v in (*size, *stride, storage_offset))
    ):
        raise ModelFileError("<pickle>", f"invalid tensor layout: size {size}, stride {stride}, offset {storage_offset}")
    source = storage.array
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= source.size:
            raise ModelFileError(
                "<pickle>", f"tensor of size {size} and stride {stride} at offset {storage_offset} "
                f"reaches element {last} of a storage of {source.size}",
            )
    item = source.itemsize
    view = np.lib.stride_tricks.as_strided(
        source[storage_offset:] if source.size else source, shape=size, strides=[s * item for s in stride], writeable=False
    )
    array = np.array(view)  # contiguous, owns its memory
    return bfloat16_to_float32(array) if storage.bfloat16 else array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, _StorageData] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGES:
            return _Storage(name, _STORAGES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            self.path, f"refuses to load: the pickle asks for {module}.{name}, which a state dict never needs "
            "(a file that names it may try to run code)",
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise UnsafePickleError(self.path, f"refuses to load: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            entry = f"{self.prefix}/data/{key}"
            try:
                raw = self.archive.read(entry)
            except KeyError:
                raise ModelFileError(self.path, f"storage {entry} is missing from the archive") from None
            bfloat16 = storage_type.dtype == "bfloat16"
            dtype = np.dtype("<u2" if bfloat16 else storage_type.dtype)
            if not isinstance(numel, int) or len(raw) != numel * dtype.itemsize:
                raise ModelFileError(self.path, f"storage {entry} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
            self.storages[key] = _StorageData(np.frombuffer(raw, dtype=dtype), bfloat16)
        return self.storages[key]


def read_pytorch_bin(path) -> dict[str, np.ndarray]:
    """The state dict of a torch.save zip archive as {name: NumPy array}, without torch."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            path, "is not a zip archive: refimpl reads torch.save's format of torch >= 1.6 only "
            "(re-save it with a recent torch, or convert it to model.safetensors)",
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelFileError(path, f"cannot be opened as a zip archive ({error})") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ModelFileError(path, f"expected one <name>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0].split("/")[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
            raise ModelFileError(path, "was saved on a big-endian machine; refimpl reads little-endian archives only")
        unpickler = _StateDictUnpickler(archive.read(pickles[0]), archive, prefix, path)
        try:
            state = unpickler.load()
        except (UnsafePickleError, ModelFileError):
            raise
        except Exception as error:
            raise ModelFileError(path, f"is not a readable state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise ModelFileError(path, "does not hold a state dict of named tensors")
    return dict(state)


def convert_to_safetensors(source, target) -> Path:
    """Write the state dict of ``source`` (pytorch_model.bin) as a safetensors file at ``target``.
    Names are kept; bfloat16 tensors are written as float32 (NumPy has no bfloat16)."""
    from safetensors.numpy import save_file

    state = read_pytorch_bin(source)
    target = Path(target)
    save_file({name: np.ascontiguousarray(array) for name, array in state.items()}, str(target), metadata={"format": "pt"})
    return target
