"""Arrays the products read with 64-byte loads start on cache lines (kernels/packing.py: a load that
straddles two lines is split; ``python -m tools.product_rates --misaligned`` measures it): safetensors
files written with ``align``, the kernels' tile scratch, the pass's buffers."""

import json

import numpy as np
import pytest
from numba import njit
from safetensors.numpy import load_file

from refimpl.engines.fast import encoder
from refimpl.engines.fast.kernels import common, packing
from refimpl.formats.safetensors import (
    PADDING_PREFIX,
    read_safetensors_with_metadata,
    without_padding,
    write_safetensors,
)


def _starts(path):
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return {name: 8 + size + entry["data_offsets"][0] for name, entry in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("align", (1, 8, 64, 4096))
def test_written_tensors_start_on_the_boundary_and_read_back_the_same(tmp_path, align):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.random(5).astype(np.float32), "b": np.arange(7, dtype=np.int8), "c": np.zeros((3, 5), np.uint16),
              "d": rng.random((2, 3)).astype(np.float64), "e": np.zeros(0, np.float32)}  # fmt: skip
    path = write_safetensors(arrays, tmp_path / "t.safetensors", metadata={"k": "v"}, align=align)
    starts = _starts(path)
    print({name: start % align for name, start in starts.items()})
    assert all(start % align == 0 for name, start in starts.items() if not name.startswith(PADDING_PREFIX))
    tensors, metadata = read_safetensors_with_metadata(path)
    back = {name: t.stored() for name, t in without_padding(tensors).items()}
    assert metadata == {"k": "v"} and list(back) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
    official = load_file(str(path))  # the safetensors library accepts the fillers: no gaps, no overlaps
    assert set(without_padding(official)) == set(arrays)


def test_unaligned_writes_put_tensors_off_the_line_and_a_reserved_name_is_refused(tmp_path):
    arrays = {"meta": np.zeros(5, np.int64), "w": np.zeros(64, np.float32)}
    starts = _starts(write_safetensors(arrays, tmp_path / "plain.safetensors"))
    assert starts["w"] - starts["meta"] == 40  # without align the next tensor follows the 40 bytes directly
    assert not any(name.startswith(PADDING_PREFIX) for name in starts)  # and no fillers: any reader loads it
    with pytest.raises(ValueError, match="align must be a positive number of bytes"):
        write_safetensors(arrays, tmp_path / "zero.safetensors", align=0)
    with pytest.raises(ValueError, match="reserved for alignment padding"):
        write_safetensors({PADDING_PREFIX + "0": np.zeros(1, np.uint8)}, tmp_path / "bad.safetensors")


def test_packing_and_buffers_are_aligned():
    for shape, dtype in (((3, 5), np.float32), ((7,), np.int8), ((0,), np.uint8), ((33, 2), np.uint16)):
        a = packing.aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % 64 == 0  # NumPy gives an empty view any address
    shapes = (([2, 3], (2, 3)), (np.int64(5), (5,)), ((np.int32(4), 2), (4, 2)), (np.array(3), (3,)))
    for shape, want in shapes:  # as np.empty takes them
        assert packing.aligned_empty(shape, np.float32).shape == want
    with pytest.raises(ValueError, match="negative dimensions"):
        packing.aligned_empty((2, -1), np.float32)
    off = np.empty(100, np.uint8)[3:67].view(np.float32)
    copy = packing.aligned(off)
    assert copy.ctypes.data % 64 == 0 and np.array_equal(copy, off)
    kept = packing.aligned_empty(16, np.float32)
    assert packing.aligned(kept) is kept
    for n in (0, 1, 100, 3 * 16 * 48):

        @njit
        def start(n):
            t = common.tile_scratch(n, np.int32)
            return t.ctypes.data % 64, t.size

        assert start(n) == (0, n)
    scratch = encoder.Scratch((np.dtype(np.float32), 36, 52))
    views = scratch.views(17, 1000)
    assert all(v.ctypes.data % 64 == 0 for v in (scratch.qkvc, scratch.y, views["prepared"]))
