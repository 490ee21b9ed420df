"""The fast engine's compute modes (float32, int8, bfloat16) and kernel tiers, end to end: accuracy against
sentence-transformers on real weights, the same bits on every tier that has the instructions, batch
invariance, the packed-weight cache, and refusals."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.engines.fast.kernels import cpu
from tests.helpers import ENGLISH, KOREAN_SENTENCES, TEXTS, check_parity, st_model

MODES = ("float32", "int8", "bfloat16")
# min cosine to sentence-transformers' float32 vectors on real MiniLM weights: on sentences in the model's
# language, and on inputs that are mostly [UNK] for its English vocabulary (Korean, the empty string),
# where a few tokens with outlier activations set each row's int8 scale (measured: 0.9857 for int8)
MIN_COSINE = {"int8": 0.995, "bfloat16": 0.9998}
MIN_COSINE_UNKNOWN_WORDS = {"int8": 0.98, "bfloat16": 0.9998}
SENTENCES = ENGLISH + KOREAN_SENTENCES + TEXTS


def usable_tiers():
    return [tier for tier in cpu.TIERS if not cpu.missing_features(tier)]


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test module packs into its own cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path_factory.getbasetemp() / "refimpl-cache"))


@pytest.mark.parametrize("mode", ["int8", "bfloat16"])
def test_quantized_modes_stay_close_to_sentence_transformers_on_real_weights(minilm_dir, mode):
    model = SentenceTransformer(minilm_dir, compute=mode)
    for name, sentences, floor in [
        ("English", ENGLISH, MIN_COSINE[mode]),
        ("Korean and short (mostly [UNK] for MiniLM)", KOREAN_SENTENCES + TEXTS, MIN_COSINE_UNKNOWN_WORDS[mode]),
    ]:
        similarity = cosines(model.encode(sentences), st_model(minilm_dir).encode(sentences))
        print(f"MiniLM {mode}, {name}: cosine to ST float32 mean {similarity.mean():.6f}, min {similarity.min():.6f}")
        assert similarity.min() >= floor


def test_float32_fast_engine_keeps_parity_on_real_weights(minilm_dir):
    theirs = st_model(minilm_dir).encode(SENTENCES)
    check_parity("MiniLM fast float32", SentenceTransformer(minilm_dir).encode(SENTENCES), theirs, 2e-5)


@pytest.mark.parametrize("mode", ["int8", "bfloat16"])
def test_a_broken_quantized_model_fails_the_accuracy_check(minilm_dir, mode):
    model = SentenceTransformer(minilm_dir, compute=mode)
    weights = model.weights["encoder"]["layer"][2]["intermediate"]["dense"]
    weights["bias"] = weights["bias"] + 0.5  # a deliberately broken layer
    similarity = cosines(model.encode(ENGLISH), st_model(minilm_dir).encode(ENGLISH))
    assert similarity.min() < MIN_COSINE[mode]


# AMX's tdpbf16ps against vdpbf16ps and its emulation (amx.py): the same bf16 inputs, sums rounded
# otherwise, so now and then an activation rounds to the neighbouring bf16 number. Measured on the
# klue-shaped fixture (Sapphire Rapids-class Xeon): max |difference| 5.6e-6, min cosine 1.0000000 to 7
# places (printed by the test below); 1e-5 leaves room for other models.
AMX_BF16_MIN_COSINE = 0.99999


def amx_bf16_on_tiles():
    return "amx" in usable_tiers() and cpu.select("bf16", "amx").module.endswith(".amx")


@pytest.mark.parametrize("mode", MODES)
def test_every_tier_gives_the_same_int8_and_bfloat16_bits(path, monkeypatch, mode):
    """int8 sums are exact integers and bf16 follows vdpbf16ps's order: the tiers must agree bit for bit,
    but for bf16 on AMX's tiles (its own rounding: within AMX_BF16_MIN_COSINE of the others);
    float32 agrees bit for bit between the AVX tiers (the same fma chain) and within 1e-5 with BLAS."""
    tiers = usable_tiers()
    results = {}
    for tier in tiers:
        monkeypatch.setenv(cpu.ENV_VAR, tier)
        model = SentenceTransformer(path, compute=mode)
        assert model.engine_info["kernels"] == tier
        results[tier] = model.encode(SENTENCES)
    print(f"{mode}: tiers {tiers}")
    tiles = mode == "bfloat16" and amx_bf16_on_tiles()
    exact = [t for t in tiers if (t != "blas" or mode != "float32") and (t != "amx" or not tiles)]
    for tier in exact[1:]:
        assert np.array_equal(results[tier], results[exact[0]]), f"{mode}: {tier} differs from {exact[0]}"
    if "blas" in results and mode == "float32" and len(tiers) > 1:
        check_parity("float32 packed vs BLAS", results[tiers[0]], results["blas"], 1e-5)
    if tiles:
        similarity = cosines(results["amx"], results[exact[0]])
        difference = np.abs(results["amx"] - results[exact[0]]).max()
        print(f"bf16 amx vs {exact[0]}: max |difference| {difference:.3g}, min cosine {similarity.min():.7f}")
        assert similarity.min() >= AMX_BF16_MIN_COSINE and not np.array_equal(results["amx"], results[exact[0]])


@pytest.mark.parametrize("tier", ["amx", "avx512", "avx2"])
def test_the_ffn_rounding_its_output_for_the_next_product_gives_the_same_bits(path, monkeypatch, tier):
    """bf16: the FFN's first product stores its output rounded as the second's input
    (encoder.ROUNDED_FFN); the embeddings must be those of rounding a float32 output."""
    from refimpl.engines.fast import encoder
    from refimpl.engines.fast.kernels import matmul

    if cpu.missing_features(tier):
        pytest.skip("CPU lacks %s needed by tier %s" % (", ".join(cpu.missing_features(tier)), tier))
    monkeypatch.setenv(cpu.ENV_VAR, tier)
    model = SentenceTransformer(path, compute="bfloat16")
    calls = []
    original = matmul.linear_to_activations
    monkeypatch.setattr(matmul, "linear_to_activations", lambda *a, **k: calls.append(1) or original(*a, **k))
    results = {}
    for rounded in (False, True):
        monkeypatch.setattr(encoder, "ROUNDED_FFN", rounded)
        calls.clear()
        results[rounded] = model.encode(SENTENCES)
        assert bool(calls) == rounded, "the rounding store ran %d times with ROUNDED_FFN=%s" % (len(calls), rounded)
    difference = np.abs(results[True] - results[False]).max()
    print(f"{tier}: max difference with and without the rounding store {difference:.3g}")
    assert np.array_equal(results[True], results[False])


@pytest.mark.parametrize("mode", MODES)
def test_a_sentence_has_the_same_vector_whatever_it_is_batched_with(path, mode):
    if cpu.requested_tier() == "blas":
        pytest.skip("batch invariance is promised for refimpl's own kernels; this CPU runs the BLAS tier")
    model = SentenceTransformer(path, compute=mode)
    alone = np.stack([model.encode([s])[0] for s in SENTENCES[:12]])
    together = model.encode(SENTENCES)[:12]
    shuffled = model.encode(SENTENCES[:12][::-1] + SENTENCES)[:12][::-1]
    assert np.array_equal(alone, together) and np.array_equal(alone, shuffled)


def test_a_tier_the_cpu_lacks_is_refused_before_anything_runs(path, monkeypatch):
    monkeypatch.setattr(cpu, "host_features", lambda refresh=False: frozenset({"avx2", "fma"}))
    monkeypatch.setenv(cpu.ENV_VAR, "avx512")
    with pytest.raises(ValueError, match="avx512f"):
        SentenceTransformer(path, compute="int8").encode(["x"])
    monkeypatch.setenv(cpu.ENV_VAR, "sse9")
    with pytest.raises(ValueError, match="unknown kernel tier"):
        SentenceTransformer(path).encode(["x"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compute": "int4"}, "compute must be one of"),
        ({"compute": "int8", "engine": "reference"}, "needs the fast engine"),
        ({"compute": "bfloat16", "dtype": "float64"}, "float64"),
    ],
)
def test_impossible_modes_are_refused_at_load(path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SentenceTransformer(path, **kwargs)


def test_engine_info_names_the_mode_and_the_kernels(path):
    info = SentenceTransformer(path, compute="int8").engine_info
    print(info)
    assert info["engine"] == "fast" and info["compute"] == "int8" and info["kernels"] in cpu.TIERS


def cached_files():
    folder = cpu_cache_folder()
    return sorted(folder.glob("packed/*.safetensors")) if folder.exists() else []


def cpu_cache_folder():
    from refimpl.engines.fast.packed_weights import cache_folder

    return cache_folder()


def test_the_packed_weights_are_cached_and_a_damaged_cache_is_rebuilt(tiny_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path / "cache"))
    path = tiny_model("roberta", seed=11)
    expected = SentenceTransformer(path, compute="int8").encode(TEXTS)
    (cache,) = cached_files()
    np.testing.assert_array_equal(SentenceTransformer(path, compute="int8").encode(TEXTS), expected)  # from the cache
    data = bytearray(cache.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the packed weights
    cache.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        np.testing.assert_array_equal(SentenceTransformer(path, compute="int8").encode(TEXTS), expected)
    assert "corrupt" in caplog.text
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        np.testing.assert_array_equal(SentenceTransformer(path, compute="int8").encode(TEXTS), expected)
    assert "unreadable" in caplog.text


def test_a_cache_of_an_older_layout_is_replaced(tiny_model, tmp_path, monkeypatch):
    """A cache file of another format or layout (v1: six products per layer; now QKV is stacked) is never
    read: it is rebuilt under its own name, and an older one is deleted; newer ones and other models'
    files are kept."""
    monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path / "cache"))
    path = tiny_model("roberta", seed=12)
    expected = SentenceTransformer(path, compute="bfloat16").encode(TEXTS)
    (cache,) = cached_files()
    prefix = cache.name.split("-v", 1)[0]
    older = cache.with_name(prefix + "-v1.safetensors")
    older.write_bytes(b"the packed weights of an older refimpl")
    newer = cache.with_name(prefix + "-v9.1.safetensors")  # a later refimpl sharing the folder
    newer.write_bytes(b"the packed weights of a newer refimpl")
    unrelated = cache.with_name("0" * 32 + "-bfloat16-v1.safetensors")
    unrelated.write_bytes(b"another model's")
    cache.unlink()
    np.testing.assert_array_equal(SentenceTransformer(path, compute="bfloat16").encode(TEXTS), expected)
    assert cache.exists() and not older.exists() and newer.exists() and unrelated.exists()


def test_a_read_only_cache_folder_packs_in_memory(tiny_model, tmp_path, monkeypatch, caplog):
    if os.geteuid() == 0:
        target = tmp_path / "not-a-folder"
        target.write_text("a file where the cache folder should be")
    else:
        target = tmp_path / "read-only"
        target.mkdir(mode=0o500)
    monkeypatch.setenv("REFIMPL_CACHE", str(target))
    path = tiny_model("roberta", seed=12)
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        ours = SentenceTransformer(path, compute="bfloat16").encode(TEXTS)
    assert "cannot write the packed-weight cache" in caplog.text
    monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path / "writable"))
    np.testing.assert_array_equal(SentenceTransformer(path, compute="bfloat16").encode(TEXTS), ours)


@pytest.mark.parametrize("mode", ("float32", "int8", "bfloat16"))
def test_the_packed_weights_sit_on_cache_lines_in_the_file_and_in_memory(tiny_model, tmp_path, monkeypatch, mode):
    """Every packed array starts on a 64-byte boundary (kernels/packing.py says what a split line costs):
    in the cache file, which the safetensors library still reads, so in its mapping, and when packed
    in memory (a read-only cache folder)."""
    import json

    from safetensors.numpy import load_file

    from refimpl.formats.safetensors import PADDING_PREFIX

    monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path / "cache"))
    path = tiny_model("roberta", seed=13, hidden_size=36, intermediate_size=52)  # shapes off every line
    model = SentenceTransformer(path, compute=mode)
    model.encode(TEXTS)
    (cache,) = cached_files()
    data = cache.read_bytes()
    header_bytes = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_bytes])
    starts = {
        name: 8 + header_bytes + entry["data_offsets"][0] for name, entry in header.items() if name != "__metadata__"
    }
    print({name: start % 64 for name, start in starts.items() if not name.startswith(PADDING_PREFIX)})
    assert all(start % 64 == 0 for name, start in starts.items() if not name.startswith(PADDING_PREFIX))
    assert any(name.startswith(PADDING_PREFIX) for name in starts)  # the 40-byte meta arrays needed some
    assert set(load_file(str(cache))) == set(starts)
    for source in ("mapped", "packed"):
        if source == "packed":
            monkeypatch.setenv("REFIMPL_CACHE", str(tmp_path / "no-cache-here" / "file"))
            (tmp_path / "no-cache-here").mkdir()
            (tmp_path / "no-cache-here" / "file").write_text("not a folder")
            model = SentenceTransformer(path, compute=mode)
        engine = model.pipeline.transformer.engine()
        if engine.packed_layers() is None:
            pytest.skip("float32 on the blas tier packs nothing")
        if source == "mapped":  # the cache's own pages, not copies PackedLinear made of misaligned ones
            arrays = [a for layer in engine.packed_layers() for p in layer.values() for a in p.arrays.values()]
            assert not any(a.flags.writeable for a in arrays)
        offsets = {
            name: a.ctypes.data % 64
            for layer in engine.packed_layers()
            for p in layer.values()
            for name, a in p.arrays.items()
        }
        print(source, offsets)
        assert set(offsets.values()) == {0}


@pytest.mark.parametrize("mode", MODES)
def test_stacked_qkv_bias_is_stacked_once_at_load(path, mode):
    """The packed query-key-value product carries its bias, stacked once at load as its weight was; the
    pass uses it (a broken one changes the vectors), and a pass on packed layers without it stacks the
    weights' biases itself, to the same bits."""
    from refimpl.engines.fast.kernels import matmul

    model = SentenceTransformer(path, compute=mode)
    engine = model.pipeline.transformer.engine()
    layers = engine.packed_layers()
    if layers is None:
        pytest.skip("float32 on the blas tier packs nothing: no stacked product")
    weights = model.pipeline.transformer.weights["encoder"]["layer"]
    for layer, packed in zip(weights, layers):
        sw = layer["attention"]["self"]
        want = np.concatenate([sw[name]["bias"] for name in ("query", "key", "value")])
        assert np.array_equal(packed["attention.self.qkv"].bias, want)
    expected = model.encode(TEXTS)
    stacked = layers[0]["attention.self.qkv"]
    kept = stacked.bias
    try:
        stacked.bias = None  # a packed dict built by hand: encoder.attention stacks the biases itself
        assert np.array_equal(model.encode(TEXTS), expected)
        stacked.bias = kept + np.float32(0.5)  # deliberately broken: the pass must read it
        changed = np.abs(model.encode(TEXTS) - expected).max()
        print(f"{mode}: max change with the stacked bias off by 0.5: {changed:.3g}")
        assert changed > 1e-3
    finally:
        stacked.bias = kept
    with pytest.raises(ValueError, match=r"bias must be \[%d\], got \(3,\)" % stacked.n):
        matmul.PackedLinear(stacked.mode, stacked.n, stacked.k, stacked.arrays, bias=np.zeros(3, np.float32))
