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
import math
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from refimpl.errors import ModelFileError, UnsafePickleError
from refimpl.formats.dtypes import bfloat16_to_float32


class _Storage:
    """A storage class named by the pickle, standing for its element dtype."""

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


_STORAGES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageData:
    def __init__(self, array: np.ndarray, bfloat16: bool):
        self.array, self.bfloat16 = array, bfloat16


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, as a bounds-checked NumPy copy."""
    if not isinstance(storage, _StorageData):
        raise UnsafePickleError("<pickle>", "a tensor is rebuilt from something that is not a storage")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise ModelFileError("<pickle>", f"invalid tensor layout: size {size!r}, stride {stride!r}")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in (*size, *stride, storage_offset)
    ):
        raise ModelFileError(
            "<pickle>", f"invalid tensor layout: size {size}, stride {stride}, offset {storage_offset}"
        )
    source = storage.array
    count = math.prod(size)
    if count:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= source.size:
            raise ModelFileError(
                "<pickle>",
                f"tensor of size {size} and stride {stride} at offset {storage_offset} "
                f"reaches element {last} of a storage of {source.size}",
            )
    if count > source.size:
        # only overlapping strides (stride 0, expand()) make more elements than the storage holds:
        # copying such a view densely is how a tiny file asks for gigabytes
        raise ModelFileError(
            "<pickle>",
            f"a tensor of size {size} has {count} elements but views a storage of "
            f"{source.size} (overlapping strides); refused",
        )
    item = source.itemsize
    view = np.lib.stride_tricks.as_strided(
        source[storage_offset:] if source.size else source,
        shape=size,
        strides=[s * item for s in stride],
        writeable=False,
    )
    array = np.array(view)  # contiguous, owns its memory
    return bfloat16_to_float32(array) if storage.bfloat16 else array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
# what a damaged or hostile archive can raise from zipfile and zlib while an entry is read
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, OSError, ValueError)
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # a state dict's data.pkl: names and layouts, a few hundred kB
MAX_COMPRESSION_RATIO = 16  # torch.save stores entries uncompressed; weights deflate to ~90%


def read_entry(archive: zipfile.ZipFile, name: str, expected: int, path: Path) -> bytes:
    """The bytes of one archive entry, never decompressing more than ``expected`` bytes."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(path, f"{name} is missing from the archive") from None
    if info.file_size != expected:
        raise ModelFileError(path, f"{name} holds {info.file_size} bytes, expected {expected}")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 2**20:
        raise ModelFileError(path, f"{name} would decompress {info.compress_size} bytes to {info.file_size}; refused")
    try:
        with archive.open(info) as entry:
            data = entry.read(expected + 1)
    except _ZIP_ERRORS as error:
        raise ModelFileError(
            path, f"{name} cannot be read from the archive ({type(error).__name__}: {error})"
        ) from None
    if len(data) != expected:
        raise ModelFileError(path, f"{name} decompresses to {len(data)} bytes, expected {expected}")
    return data


class _StateDictUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that BUILD can be refused (the C one applies it to anything)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, _StorageData] = {}
        self.made: dict[int, collections.OrderedDict] = {}  # the dicts this load created

    def _ordered_dict(self, *args):
        made = collections.OrderedDict(*args)
        self.made[id(made)] = made
        return made

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGES:
            return _Storage(name, _STORAGES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return self._ordered_dict
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(
            self.path,
            f"refuses to load: the pickle asks for {module}.{name}, which a state dict never needs "
            "(a file that names it may try to run code)",
        )

    def load_build(self):
        """BUILD sets an object's state. torch.save uses it only for a state dict's ``_metadata``
        (dropped here: refimpl does not need it); on anything else (an allowed function, a class,
        a tensor) it would change objects that outlive this load, so it is refused."""
        self.stack.pop()
        target = self.stack[-1]
        if self.made.get(id(target)) is not target:
            raise UnsafePickleError(
                self.path,
                f"refuses to load: the pickle sets the state of a {type(target).__name__}, "
                "which a state dict never does",
            )

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise UnsafePickleError(self.path, f"refuses to load: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            bfloat16 = storage_type.dtype == "bfloat16"
            dtype = np.dtype("<u2" if bfloat16 else storage_type.dtype)
            if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < 2**62:
                raise ModelFileError(self.path, f"storage {key} has {numel!r} elements")
            raw = read_entry(self.archive, f"{self.prefix}/data/{key}", numel * dtype.itemsize, self.path)
            self.storages[key] = _StorageData(np.frombuffer(raw, dtype=dtype), bfloat16)
        return self.storages[key]


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        is_zip = zipfile.is_zipfile(path)
    except _ZIP_ERRORS as error:  # is_zipfile itself raises on some damaged end records (found by fuzzing)
        raise ModelFileError(path, f"cannot be read as a zip archive ({type(error).__name__}: {error})") from None
    if not is_zip:
        raise ModelFileError(
            path,
            "is not a zip archive: refimpl reads torch.save's format of torch >= 1.6 only "
            "(re-save it with a recent torch, or convert it to model.safetensors)",
        )
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as error:
        raise ModelFileError(path, f"cannot be opened as a zip archive ({error})") from None


def read_pytorch_bin(path) -> dict[str, np.ndarray]:
    """The state dict of a torch.save zip archive as {name: NumPy array}, without torch."""
    path = Path(path)
    with _open_archive(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ModelFileError(path, f"expected one <name>/data.pkl in the archive, found {pickles}")
        prefix = pickles[0].split("/")[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in names:
            order = archive.getinfo(byteorder)
            if order.file_size > 16 or read_entry(archive, byteorder, order.file_size, path).strip() not in (
                b"little",
                b"",
            ):
                raise ModelFileError(
                    path, "was saved on a big-endian machine; refimpl reads little-endian archives only"
                )
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise ModelFileError(path, f"{pickles[0]} has {info.file_size} bytes; a state dict's pickle is far smaller")
        unpickler = _StateDictUnpickler(read_entry(archive, pickles[0], info.file_size, path), archive, prefix, path)
        try:
            state = unpickler.load()
        except (UnsafePickleError, ModelFileError) as error:
            if error.path != "<pickle>":
                raise
            raise type(error)(path, error.problem) from None
        except Exception as error:
            raise ModelFileError(path, f"is not a readable state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise ModelFileError(path, "does not hold a state dict of named tensors")
    return dict(state)
