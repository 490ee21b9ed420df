import os

import numpy as np
import pytest

from refimpl.engines.fast.kernels import matmul as api
from refimpl.engines.fast.kernels import packing
from tests.matmul_helpers import ALL_TIERS, MODES, assert_bit_equal, make_data, require_features, require_tier


@pytest.mark.parametrize("mode", MODES)
def test_roundtrip_dict_and_mmap(mode, tmp_path):
    x, W, b = make_data(9, 100, 70)
    p = api.pack(W, mode)
    d = p.to_dict(prefix="layer0.")
    assert all(isinstance(v, np.ndarray) for v in d.values())
    for k, v in d.items():
        np.save(os.path.join(tmp_path, k + ".npy"), v)
    mm = {k: np.load(os.path.join(tmp_path, k + ".npy"), mmap_mode="r") for k in d}
    q = api.PackedLinear.from_dict(mm, prefix="layer0.")
    assert (q.mode, q.n, q.k) == (mode, 100, 70)
    assert not q.arrays["w"].flags.writeable
    assert_bit_equal(api.linear(x, q, b), api.linear(x, p, b), mode + " mmap")


def test_safetensors_roundtrip(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    x, W, b = make_data(5, 64, 32)
    p = api.pack(W, "int8")
    f = os.path.join(tmp_path, "w.safetensors")
    st.save_file(p.to_dict(), f)
    q = api.PackedLinear.from_dict(st.load_file(f))
    assert_bit_equal(api.linear(x, q, b), api.linear(x, p, b), "safetensors")


def test_out_bias_none_and_noncontiguous():
    x, W, b = make_data(8, 40, 30)
    p = api.pack(W, "f32")
    out = np.full((8, 40), np.nan, np.float32)
    r = api.linear(x, p, b, out=out)
    assert r is out and np.isfinite(out).all()
    y0 = api.linear(x, p, None)
    assert_bit_equal(y0, api.linear(x, p, np.zeros(40, np.float32)), "bias None")
    xt = np.asfortranarray(x)
    assert_bit_equal(api.linear(xt, p, b), r, "fortran x")
    assert_bit_equal(api.linear(x.astype(np.float64), p, b), r, "float64 x")
    assert api.linear(x[:0], p, b).shape == (0, 40)


def test_errors():
    x, W, b = make_data(8, 40, 30)
    p = api.pack(W, "bf16")
    with pytest.raises(ValueError):
        api.linear(x[:, :29], p, b)
    with pytest.raises(ValueError):
        api.linear(x, p, b[:39])
    with pytest.raises(ValueError):
        api.linear(x, p, b, out=np.empty((8, 41), np.float32))
    with pytest.raises(ValueError):
        api.pack(W, "fp8")
    d = p.to_dict()
    d["meta"] = d["meta"].copy()
    d["meta"][0] = 999
    with pytest.raises(ValueError, match="repack"):
        api.PackedLinear.from_dict(d)


def test_pack_layouts():
    x, W, b = make_data(1, 100, 70)
    f = api.pack(W, "f32").arrays
    assert f["w"].shape == (3, 70, 48)
    np.testing.assert_array_equal(packing.unpack_f32(f["w"], 100), W.T)
    i = api.pack(W, "int8").arrays
    assert i["w"].shape == (3, 18, 48, 4) and i["colsum"].dtype == np.int32
    q, s = packing.quantize_weight(W)
    np.testing.assert_array_equal(packing.unpack_int8(i["w"], 100)[:, :70], q)
    np.testing.assert_array_equal(i["colsum"][:100], q.astype(np.int32).sum(1))
    assert (i["scale"][100:] == 0).all() and np.abs(q).max() == 127
    h = api.pack(W, "bf16").arrays
    assert h["w"].shape == (3, 35, 48, 2) and h["w"].dtype == np.uint16


_BF16_SPECIAL = np.array(
    [
        0,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0x7F800001,
        0x00000001,
        0x807FFFFF,
        0x00800000,
        0x7F7FFFFF,
        0x3F808000,
        0x3F818000,
        0x3F80FFFF,
        0x007FFFFF,
        0x007F8000,
    ],
    np.uint32,
)


def _bf16_rounding_inputs():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([u, _BF16_SPECIAL]).view(np.float32).reshape(1, -1)


def test_bf16_rounding_rule():
    """vcvtneps2bf16's rule (Intel's pseudo-code): round to nearest even, quiet NaN, and a float32
    denormal goes to signed zero even where rounding would carry it into the smallest normal."""
    bits = packing.f32_to_bf16_bits(_BF16_SPECIAL.view(np.float32))
    expected = [0, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7FC0, 0, 0x8000, 0x0080, 0x7F80, 0x3F80, 0x3F82, 0x3F81, 0, 0]
    assert [int(b) for b in bits] == expected
    e = packing.f32_to_bf16_bits(np.array([1.00390625, 1.01171875], np.float32))  # ties
    assert list(e) == [0x3F80, 0x3F82]


def test_bf16_rounding_numba_values_match_numpy():
    """The AVX2 emulation's input (float32 values of bf16, scalar integer code) against NumPy."""
    from refimpl.engines.fast.kernels import common

    v = _bf16_rounding_inputs()
    for kernel in (common.bf16_rows_f32, common.bf16_rows_f32_serial):
        out = np.empty((1, v.shape[1] + 3), np.float32)
        kernel(v, out)
        expected = packing.bf16_bits_to_f32(packing.f32_to_bf16_bits(v[0]))
        np.testing.assert_array_equal(out[0, : v.shape[1]].view(np.uint32), expected.view(np.uint32))
        assert (out[0, v.shape[1] :] == 0).all()


@pytest.mark.parametrize("columns", [1, 15, 16, 17, 383, 768, 200015])
def test_bf16_rounding_native_matches_numpy(columns):
    """The AVX-512 BF16 tier's input: vcvtneps2bf16, 16 at a time with a masked tail, zero padded."""
    from refimpl.engines.fast.kernels import common

    require_features("avx512bf16")
    v = np.ascontiguousarray(np.tile(_bf16_rounding_inputs(), (2, 1))[:, -columns:])
    for kernel in (common.bf16_rows_u16, common.bf16_rows_u16_serial):
        out = np.full((2, columns + 5), 0x1234, np.uint16)
        kernel(v, out)
        np.testing.assert_array_equal(out[:, :columns], packing.f32_to_bf16_bits(v))
        assert (out[:, columns:] == 0).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        common.bf16_rows_u16_serial(np.ones((2, 64), np.float32)[:, ::2], np.empty((2, 32), np.uint16))


def test_int8_quantize_numba_matches_numpy():
    from refimpl.engines.fast.kernels import common
    from refimpl.engines.fast.kernels import reference as R

    x, _, _ = make_data(50, 1, 333, seed=4)
    x[0] = 0
    x[1, 5] = 1e30
    qa = np.empty((50, 336), np.int8)
    sx = np.empty(50, np.float32)
    common.quantize_rows(x, qa, sx, 0)
    q, s = R.quantize_rows(x)
    np.testing.assert_array_equal(sx, s)
    np.testing.assert_array_equal(qa[:, :333], q)
    assert (qa[:, 333:] == 0).all() and sx[0] == 0
    qu = np.empty((50, 336), np.uint8)
    common.quantize_rows(x, qu, sx, 128)
    np.testing.assert_array_equal(qu.astype(np.int32) - 128, qa)


@pytest.mark.parametrize("tier", ALL_TIERS)
@pytest.mark.parametrize("mode", MODES)
def test_activations_prepared_once_give_the_same_bits(mode, tier):
    """Q, K and V share one quantised / rounded input: the products equal those that prepare their own."""
    require_tier(tier)
    x, W, b = make_data(37, 100, 70)
    packed = [api.pack(W, mode), api.pack(W[::-1] * 1.5, mode)]  # two products of the same input
    fresh = api.activations(x, packed[0], tier)
    if mode == "f32" or tier == "blas":
        assert fresh is None and api.activation_bytes(packed[0], 37, tier) == 0
        return
    scratch = np.full(api.activation_bytes(packed[0], 37, tier), 0xAB, np.uint8)  # stale bytes must not leak
    on_scratch = api.activations(x, packed[0], tier, scratch=scratch)
    assert np.shares_memory(on_scratch.arrays[0], scratch)
    for p in packed:
        alone = api.linear(x, p, b, gelu=True, tier=tier)
        for prepared in (fresh, on_scratch):
            assert_bit_equal(api.linear(x, p, b, gelu=True, tier=tier, activations=prepared), alone, mode + " " + tier)
    other = api.activations(2 * x, packed[0], tier)  # the products read what they are given, not x
    assert not np.array_equal(
        api.linear(x, packed[0], b, tier=tier, activations=other), api.linear(x, packed[0], b, tier=tier)
    )


def test_activations_of_another_product_are_refused():
    x, W, b = make_data(9, 40, 30)
    int8, bf16 = api.pack(W, "int8"), api.pack(W, "bf16")
    tier = api.kernel_for("int8")[0].tier
    if tier == "blas":
        pytest.skip("the BLAS tier prepares no activations")
    prepared = api.activations(x, int8)
    with pytest.raises(ValueError, match=r"activations prepared for int8 .* \[9, 30\], used for bf16"):
        api.linear(x, bf16, b, activations=prepared)
    with pytest.raises(ValueError, match=r"\[9, 30\], used for int8 on .*, \[8, 30\]"):
        api.linear(x[:8], int8, b, activations=prepared)
    with pytest.raises(ValueError, match="scratch of 10 bytes cannot hold"):
        api.activations(x, int8, scratch=np.empty(10, np.uint8))


@pytest.mark.parametrize("tier", ALL_TIERS)
@pytest.mark.parametrize("mode", ("int8", "bf16"))
@pytest.mark.parametrize("parallel", (True, False))
@pytest.mark.parametrize("rows", (3, 700))  # 700 x 100: the parallel driver prepares on both cores (SERIAL_BELOW)
def test_products_prepare_their_input_into_the_scratch(mode, tier, parallel, rows):
    """linear(scratch=) quantises / rounds x inside the kernel's driver, into the caller's buffer: the
    same bits as activations() then linear(activations=), and the buffer holds what activations() puts
    there (the BLAS tier prepares nothing and leaves it alone)."""
    require_tier(tier)
    x, W, b = make_data(rows, 60, 100)
    p = api.pack(W, mode)
    nbytes = max(api.activation_bytes(p, rows, tier), 1)
    scratch = np.full(nbytes, 0xAB, np.uint8)  # stale bytes must not leak into the product
    y = api.linear(x, p, b, gelu=True, tier=tier, parallel=parallel, scratch=scratch)
    prepared = api.activations(x, p, tier)
    if prepared is None:
        assert tier == "blas" and (scratch == 0xAB).all()
        return
    assert_bit_equal(y, api.linear(x, p, b, gelu=True, tier=tier, activations=prepared), mode + " " + tier)
    for array in prepared.arrays:  # the same arrays at the same places (not the padding between them)
        offset = array.ctypes.data - prepared.buffer.ctypes.data
        np.testing.assert_array_equal(np.ndarray(array.shape, array.dtype, buffer=scratch, offset=offset), array)
    with pytest.raises(ValueError, match="scratch of 10 bytes cannot hold a prepared input of %d bytes" % nbytes):
        api.linear(x, p, b, tier=tier, scratch=np.empty(10, np.uint8))


@pytest.mark.parametrize("tier", ("amx", "avx512", "avx2"))
@pytest.mark.parametrize("parallel", (False, True))
@pytest.mark.parametrize("rows,n", ((3, 101), (17, 96), (1000, 50)))  # 1000 x 70: x rounded first by the glue
@pytest.mark.parametrize("gelu", (False, True))
def test_a_product_rounding_its_output_for_the_next_gives_the_same_bits(tier, parallel, rows, n, gelu):
    """linear_to_activations: the product's output rounded by its store as the next bf16 product's
    input, bit for bit what activations(linear(...)) gives, pad column zeroed over stale bytes (odd n),
    and the next product's result the same."""
    require_tier(tier)
    x, W, b = make_data(rows, n, 70)
    W2 = make_data(1, 40, n, seed=1)[1]
    p, p2 = api.pack(W, "bf16"), api.pack(W2, "bf16")
    y = api.linear(x, p, b, gelu=gelu, tier=tier, parallel=parallel)
    expected = api.activations(y, p2, tier, parallel=parallel)
    buffer = np.full(api.activation_bytes(p2, rows, tier), 0xAB, np.uint8)
    rounded = api.linear_to_activations(x, p, p2, b, gelu, tier, parallel, buffer=buffer)
    assert rounded.buffer is buffer and rounded[:4] == expected[:4]
    assert_bit_equal(rounded.arrays[0], expected.arrays[0], "rounded output on %s" % tier)
    assert_bit_equal(api.linear(y, p2, tier=tier, activations=rounded), api.linear(y, p2, tier=tier), "next product")
    assert_bit_equal(api.linear(None, p2, tier=tier, activations=rounded), api.linear(y, p2, tier=tier), "x=None")
    scratch = np.full(api.activation_bytes(p, rows, tier), 0xCD, np.uint8)
    given = api.linear_to_activations(x, p, p2, b, gelu, tier, parallel, api.activations(x, p, tier))
    into_scratch = api.linear_to_activations(x, p, p2, b, gelu, tier, parallel, scratch=scratch)
    for other, how in ((given, "activations="), (into_scratch, "scratch=")):
        assert_bit_equal(other.arrays[0], expected.arrays[0], "rounded output with " + how)
    damaged = api.linear_to_activations(x, p, p2, b * 1.01, gelu, tier, parallel)
    assert not np.array_equal(damaged.arrays[0], expected.arrays[0])  # the comparison can fail


def test_a_product_that_cannot_round_for_the_next_is_refused():
    x, W, b = make_data(5, 48, 64)
    bf16, bf16_other_k = api.pack(W, "bf16"), api.pack(make_data(1, 8, 47)[1], "bf16")
    with pytest.raises(ValueError, match="two bf16 products"):
        api.linear_to_activations(x, bf16, api.pack(make_data(1, 8, 48)[1], "int8"))
    with pytest.raises(ValueError, match="two bf16 products"):
        api.linear_to_activations(x, bf16, bf16_other_k)
    with pytest.raises(ValueError, match="two bf16 products"):
        api.linear_to_activations(x, bf16, api.pack(make_data(1, 8, 48)[1], "bf16"), tier="blas")
    nxt = api.pack(make_data(1, 8, 48)[1], "bf16")
    with pytest.raises(ValueError, match="buffer of 10 bytes"):
        api.linear_to_activations(x, bf16, nxt, buffer=np.empty(10, np.uint8))
    choice, module = api.kernel_for("bf16")
    if choice.tier != "blas":  # the tier's store writes by flat offsets: a wrong array is refused
        with pytest.raises(ValueError, match="rounded output must be C-contiguous"):
            module.linear_bf16_rounded(x, bf16.arrays, bf16.zero_bias(), False, np.empty((5, 48), np.float64))
    shared = np.empty(1 << 16, np.uint8)  # the output would overwrite the input the product still reads
    with pytest.raises(ValueError, match="shares memory with scratch"):
        api.linear_to_activations(x, bf16, nxt, scratch=shared[:30000], buffer=shared[20000:])
    with pytest.raises(ValueError, match="shares memory with x"):
        api.linear_to_activations(x, bf16, nxt, buffer=x.reshape(-1).view(np.uint8))
    with pytest.raises(ValueError, match="shares memory with activations"):
        before = api.activations(x, bf16)
        api.linear_to_activations(x, bf16, nxt, activations=before, buffer=before.buffer)


@pytest.mark.parametrize("mode", ("int8", "bf16"))
def test_a_scratch_the_kernels_cannot_use_is_refused(mode):
    """The drivers write and read the buffer unchecked: anything but a large enough writeable
    C-contiguous 1-D uint8 array is refused before it reaches them, and so is a prepared input whose
    buffer is too short."""
    x, W, b = make_data(7, 60, 100)
    p = api.pack(W, mode)
    tier = api.kernel_for(mode)[0].tier
    if tier == "blas":
        pytest.skip("the BLAS tier prepares no input")
    nbytes = api.activation_bytes(p, 7)
    read_only = np.zeros(nbytes, np.uint8)
    read_only.flags.writeable = False
    for bad in (
        np.zeros(nbytes, np.float32),
        np.zeros((1, nbytes), np.uint8),
        np.zeros(2 * nbytes, np.uint8)[::2],
        read_only,
        [0] * nbytes,
    ):
        with pytest.raises(ValueError, match="scratch must be a writeable C-contiguous 1-D uint8 array"):
            api.linear(x, p, b, scratch=bad)
    prepared = api.activations(x, p)
    short = prepared._replace(buffer=prepared.buffer[: nbytes - 8])
    with pytest.raises(
        ValueError, match="prepared of %d bytes cannot hold a prepared input of %d" % (nbytes - 8, nbytes)
    ):
        api.linear(x, p, b, activations=short)
