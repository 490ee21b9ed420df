"""Property-based fuzzing of the three parsers that read untrusted bytes, run by tests/test_fuzz.py
in a child process whose address space is capped (a memory bomb fails it instead of the machine).

    python tests/fuzz_targets.py MODEL_DIR TORCH_BIN EXAMPLES [seed]

Each target starts from a valid file, mutates it with hypothesis, and loads it. Every outcome must
be a loaded model (equal to the unmutated one where the mutation left the weights intact) or a
refimpl error; anything else (another exception, a crash, a MemoryError) fails the run. The last
line printed is a JSON summary: cases run and outcomes per target.
"""

from __future__ import annotations

import collections
import json
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl import SentenceTransformer
from refimpl.errors import RefimplError
from refimpl.formats.torch_bin import read_pytorch_bin
from refimpl.load.config import EncoderConfig
from refimpl.load.weights import load_weights, read_safetensors

OUTCOMES: dict = collections.defaultdict(collections.Counter)
# markers replaced in the JSON text after dumping: what json.dumps itself cannot write
RAW_JSON = {'"__deep__"': "[" * 5000 + "]" * 5000, '"__huge__"': "9" * 5000, '"__nan__"': "NaN"}
JSON_VALUES = st.one_of(
    st.sampled_from([marker.strip('"') for marker in RAW_JSON]),  # half of the values: the hostile ones
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.just([]),
        st.just({}),
    ),
)


def dump(data) -> bytes:
    text = json.dumps(data)
    for marker, raw in RAW_JSON.items():
        text = text.replace(marker, raw)
    return text.encode()


def fuzz_settings(examples: int, derandomize: bool):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )


def record(target: str, outcome: str):
    OUTCOMES[target][outcome] += 1


def mutate_bytes(data: bytes, draw, start: int = 0, end: int | None = None) -> bytes:
    """A few byte-level edits inside [start, end): flips, overwrites, truncation, insertion."""
    data = bytearray(data)
    end = len(data) if end is None else end
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if end <= start:
            break
        at = draw(st.integers(start, end - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0, 0x22, 0x2C, 0x5B, 0x7B, 0x7D, 0x30, 0x39, 0xFF, 0x80]))
        elif kind == "truncate":
            return bytes(data[:at])
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
            end = min(end, len(data))
    return bytes(data)


# --- safetensors --------------------------------------------------------------------------------------


def safetensors_target(model_dir: Path, examples: int, derandomize: bool):
    original_file = model_dir / "model.safetensors"
    raw = original_file.read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_length])
    config = EncoderConfig.from_file(model_dir / "config.json")
    original = {name: tensor.to_numpy(np.float32) for name, tensor in read_safetensors(original_file).items()}
    work = Path(tempfile.mkdtemp())

    def structured(draw) -> bytes:
        edited = json.loads(json.dumps(header))
        name = draw(st.sampled_from(sorted(k for k in edited if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "delete", "duplicate-span", "metadata"]))
        if field == "delete":
            del edited[name]
        elif field == "duplicate-span":
            other = draw(st.sampled_from(sorted(k for k in edited if k != "__metadata__")))
            edited[name]["data_offsets"] = list(edited[other]["data_offsets"])
        elif field == "metadata":
            edited["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3))
        elif field == "dtype":
            edited[name]["dtype"] = draw(
                st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", 7, None])
            )
        elif field == "shape":
            edited[name]["shape"] = draw(st.lists(st.integers(-2, 2**64 + 5), max_size=4) | JSON_VALUES)
        else:
            edited[name]["data_offsets"] = draw(
                st.lists(st.integers(-5, len(raw) * 2), min_size=0, max_size=3) | JSON_VALUES
            )
        text = dump(edited)
        declared = draw(st.sampled_from([len(text), len(text), len(text) + 1, 2**63, 0]))
        return struct.pack("<Q", declared) + text + raw[8 + header_length :]

    @fuzz_settings(examples, derandomize)
    @given(st.data())
    def run(data):
        draw = data.draw
        if draw(st.booleans()):
            mutated = structured(draw)
        else:  # bytes of the header only: the tensor data stays as it was
            mutated = mutate_bytes(raw, draw, 0, 8 + header_length)
        path = work / "model.safetensors"
        path.write_bytes(mutated)
        try:
            load_weights(read_safetensors(path), config, path)
        except RefimplError:
            record("safetensors", "refused")
            return
        # it loaded: every tensor whose header entry and bytes are untouched has its original values
        data_start = 8 + struct.unpack("<Q", mutated[:8])[0]
        data_untouched = mutated[data_start:] == raw[8 + header_length :]
        for name, tensor in read_safetensors(path).items():
            start = tensor.offset - data_start
            entry = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [start, start + tensor.nbytes]}
            if data_untouched and header.get(name) == entry:
                np.testing.assert_array_equal(tensor.to_numpy(np.float32), original[name])
        record("safetensors", "loaded")

    run()


def _assert_same(ours, reference):
    if isinstance(reference, dict):
        assert set(ours) == set(reference)
        for key in reference:
            _assert_same(ours[key], reference[key])
    elif isinstance(reference, list):
        assert len(ours) == len(reference)
        for a, b in zip(ours, reference):
            _assert_same(a, b)
    else:
        np.testing.assert_array_equal(ours, reference)


# --- pytorch_model.bin ----------------------------------------------------------------------------------


def torch_bin_target(torch_bin: Path, examples: int, derandomize: bool):
    reference = read_pytorch_bin(torch_bin)
    with zipfile.ZipFile(torch_bin) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    raw = torch_bin.read_bytes()
    work = Path(tempfile.mkdtemp())

    def rebuilt(draw) -> bytes:
        """The archive rewritten with one entry's content mutated (valid zip, hostile content)."""
        chosen = draw(st.integers(0, len(entries) - 1))
        compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
        path = work / "rebuilt.bin"
        with zipfile.ZipFile(path, "w", compression) as archive:
            for index, (info, content) in enumerate(entries):
                if index == chosen:
                    content = mutate_bytes(content, draw) if content else draw(st.binary(max_size=16))
                archive.writestr(info.filename, content)
        return path.read_bytes()

    @fuzz_settings(examples, derandomize)
    @given(st.data())
    def run(data):
        draw = data.draw
        mutated = rebuilt(draw) if draw(st.booleans()) else mutate_bytes(raw, draw)
        path = work / "pytorch_model.bin"
        path.write_bytes(mutated)
        try:
            state = read_pytorch_bin(path)
        except RefimplError:
            record("pytorch_model.bin", "refused")
            return
        if mutated == raw:
            _assert_same(state, reference)
        for value in state.values():
            assert isinstance(value, np.ndarray) and value.nbytes <= len(mutated) * 16 + 2**20
        record("pytorch_model.bin", "loaded")

    run()


# --- the JSON configuration files -----------------------------------------------------------------------


CONFIG_FILES = [
    "config.json",
    "modules.json",
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "tokenizer_config.json",
    "config_sentence_transformers.json",
]


def json_target(model_dir: Path, examples: int, derandomize: bool):
    work = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(model_dir, work)
    (work / "tokenizer.json").unlink()  # so that tokenizer_config.json and vocab.txt are read too, half the time
    reference = SentenceTransformer(model_dir, engine="reference").encode(["문장 하나"])
    originals = {
        name: (model_dir / name).read_bytes() if (model_dir / name).exists() else None for name in CONFIG_FILES
    }

    def mutated_json(draw, original: bytes) -> bytes:
        if draw(st.booleans()):
            return mutate_bytes(original, draw)
        data = json.loads(original)
        if isinstance(data, list) and data:
            target = data[draw(st.integers(0, len(data) - 1))]
        else:
            target = data
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            if draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(JSON_VALUES)
        else:
            data = draw(JSON_VALUES)
        return dump(data)

    @fuzz_settings(examples, derandomize)
    @given(st.data())
    def run(data):
        draw = data.draw
        for name, content in originals.items():  # restore, then break one or two files
            if content is not None:
                (work / name).write_bytes(content)
        if draw(st.booleans()):
            shutil.copy(model_dir / "tokenizer.json", work / "tokenizer.json")
        else:
            (work / "tokenizer.json").unlink(missing_ok=True)
        for name in draw(
            st.lists(st.sampled_from([n for n, c in originals.items() if c is not None]), min_size=1, max_size=2)
        ):
            (work / name).write_bytes(mutated_json(draw, originals[name]))
        try:
            model = SentenceTransformer(work, engine="reference")
            embedding = model.encode(["문장 하나"])
        except RefimplError:
            record("json", "refused at load")
            return
        except (ValueError, TypeError, FloatingPointError) as error:  # arguments refimpl itself checks at encode
            record("json", f"refused at encode: {type(error).__name__}")
            return
        assert np.isfinite(embedding).all()
        if embedding.shape == reference.shape and np.array_equal(embedding, reference):
            record("json", "loaded, same embedding")
        else:
            record("json", "loaded, changed by the edit")

    run()


def main():
    model_dir, torch_bin, examples = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    derandomize = len(sys.argv) > 4 and sys.argv[4] == "derandomize"
    safetensors_target(model_dir, examples, derandomize)
    torch_bin_target(torch_bin, examples, derandomize)
    json_target(model_dir, examples, derandomize)
    print(json.dumps({target: dict(counts) | {"cases": sum(counts.values())} for target, counts in OUTCOMES.items()}))


if __name__ == "__main__":
    main()
