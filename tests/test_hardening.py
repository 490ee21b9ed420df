"""Crafted files and inputs: nothing reads out of bounds, crashes, allocates without bound,
escapes as a raw traceback, or changes a result silently. One section per class of issue 11;
docs/reliability.md lists the guarantees and points here."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from enum import Enum

import numpy as np
import pytest

from conftest import ROOT, TEXTS, check_parity, edit_json, st_model
from refimpl import SentenceTransformer
from refimpl.errors import ModelFileError, UnsafePickleError


def load_error(path) -> str:
    with pytest.raises(ModelFileError) as error:
        SentenceTransformer(path)
    print(error.value)
    return str(error.value)


def run_limited(code: str, memory_mb: int, *args) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child whose address space is capped, so that a memory bomb fails the test
    (MemoryError or a killed child) instead of taking the machine."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))

    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, cwd=ROOT, timeout=300)


# --- out-of-bounds ids: the tokenizer checked at load, every forward pass checked, kernels checked ---


def test_vocabulary_id_past_the_embedding_table(broken):
    def change(tok):
        token = next(iter(tok["model"]["vocab"]))
        tok["model"]["vocab"][token] = 5000  # vocab_size is ~411
    edit_json(broken / "tokenizer.json", change)
    message = load_error(broken)
    assert message.startswith(str(broken / "tokenizer.json")) and "has id 5000" in message and "vocab_size=" in message


def test_added_token_ids_past_the_embedding_table(broken):
    # the tokenizers library numbers added tokens after the vocabulary: 20 of them pass the 11 spare rows
    edit_json(broken / "tokenizer.json", lambda tok: tok["added_tokens"].extend(
        {"id": 9999 + i, "content": f"<crafted-{i}>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i in range(20)))
    assert "'<crafted-19>' has id" in load_error(broken)


def test_post_processor_special_id_past_the_embedding_table(broken):
    edit_json(broken / "tokenizer.json", lambda tok: tok["post_processor"]["special_tokens"]["[SEP]"].update(ids=[7777]))
    assert "has id 7777" in load_error(broken)


def test_post_processor_type_id_past_the_type_table(broken):
    edit_json(broken / "tokenizer.json", lambda tok: tok["post_processor"]["single"][0]["SpecialToken"].update(type_id=3))
    assert "token type id 3" in load_error(broken) and "type_vocab_size=1" in load_error(broken)


@pytest.mark.parametrize("where", ["sentence_bert_config.json", "tokenizer_config.json"])
def test_max_seq_length_too_small_for_the_special_tokens(broken, where):
    if where == "tokenizer_config.json":
        edit_json(broken / "sentence_bert_config.json", lambda c: c.pop("max_seq_length"))
        edit_json(broken / where, lambda c: c.update(model_max_length=2))
    else:
        edit_json(broken / where, lambda c: c.update(max_seq_length=1))
    message = load_error(broken)
    assert message.startswith(str(broken / where)) and "cannot hold the 2 special tokens" in message


def test_position_table_too_small_for_the_special_tokens(broken):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["embeddings.position_embeddings.weight"] = state["embeddings.position_embeddings.weight"][:4].copy()
    save_file(state, str(broken / "model.safetensors"))
    edit_json(broken / "config.json", lambda c: c.update(max_position_embeddings=4))  # pad 1: room for 2 tokens
    message = load_error(broken)
    assert message.startswith(str(broken / "config.json")) and "cannot hold the 2 special tokens" in message


def test_max_seq_length_assignment_too_small(model):
    for value in (1, 0, -3):
        with pytest.raises(ValueError, match="max_seq_length"):
            model.max_seq_length = value
    assert model.max_seq_length >= 3


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("field, value, message", [
    ("input_ids", 10**6, "outside the vocabulary"), ("input_ids", -1, "outside the vocabulary"),
    ("token_type_ids", 1, "token type id 1"), ("token_type_ids", -2, "token type id -2"),
])
def test_every_forward_pass_checks_its_indices(tiny_model, engine, field, value, message):
    model = SentenceTransformer(tiny_model("roberta"), engine=engine)
    features = model.tokenize(TEXTS)
    features[field] = features[field].copy()
    features[field][0, 1] = value
    with pytest.raises(ValueError, match=message):
        model.forward(features)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_forward_pass_longer_than_the_position_table_is_refused(tiny_model, engine):
    model = SentenceTransformer(tiny_model("roberta"), engine=engine)
    ids = np.full((1, model.config.max_tokens + 1), 5)
    with pytest.raises(ValueError, match="position table holds"):
        model.forward({"input_ids": ids})


def test_the_embeddings_kernel_refuses_indices_itself():
    from refimpl import kernels

    table = np.ones((4, 8), np.float32)
    one = np.ones(8, np.float32)
    for ids, types, positions in [([4], [0], [0]), ([0], [1], [0]), ([0], [0], [4]), ([-1], [0], [0])]:
        with pytest.raises(IndexError, match="outside its embedding table"):
            kernels.embeddings_layer_norm(np.array(ids), np.array(types), np.array(positions), table, table[:1], table, one, one,
                                          np.float32(1e-5), np.float32(1 / 8), np.empty((1, 8), np.float32))


# --- silent differences from sentence-transformers -----------------------------------------------


def test_vocab_txt_with_a_repeated_line_numbers_tokens_as_transformers(broken):
    from transformers import BertTokenizer

    (broken / "tokenizer.json").unlink()
    lines = (broken / "vocab.txt").read_text(encoding="utf-8").split("\n")
    lines.insert(20, lines[30])  # a repeated token: transformers gives it its last line number
    (broken / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    ours = SentenceTransformer(broken)
    theirs = BertTokenizer(str(broken / "vocab.txt"), do_lower_case=False)
    for text in TEXTS + [lines[30]]:
        assert ours.tokenizer.encode(text).ids == theirs(text)["input_ids"], text


def test_added_token_dicts_in_tokenizer_config(broken):
    """transformers 4.x writes special tokens as AddedToken objects; sentence-transformers loads them."""
    (broken / "tokenizer.json").unlink()
    edit_json(broken / "tokenizer_config.json", lambda c: c.update(
        {key: {"__type": "AddedToken", "content": c[key], "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
         for key in ("cls_token", "sep_token", "unk_token", "pad_token", "mask_token")}))
    check_parity("AddedToken dicts", SentenceTransformer(broken).encode(TEXTS), st_model(broken).encode(TEXTS), 1e-5)


class Color(str, Enum):
    SKY = "하늘은 파랗다"


def test_str_subclass_is_embedded_by_its_value(model):
    assert str(Color.SKY) != Color.SKY.value  # the enum's __str__ is "Color.SKY"
    np.testing.assert_array_equal(model.encode([Color.SKY]), model.encode(["하늘은 파랗다"]))


@pytest.fixture(scope="module")
def bpe_model(tiny_model, tmp_path_factory):
    """The tiny RoBERTa with a byte-level BPE tokenizer, where outer spaces are tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path = tmp_path_factory.mktemp("bpe") / "model"
    shutil.copytree(tiny_model("roberta"), path)
    (path / "vocab.txt").unlink()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS * 20 + ["hello world", "  spaced  "] * 20, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("[SEP]", 2), ("[CLS]", 0), add_prefix_space=False)
    tokenizer.save(str(path / "tokenizer.json"))
    edit_json(path / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"))
    return path


def test_outer_whitespace_is_kept_as_sentence_transformers_6_keeps_it(bpe_model):
    texts = ["  hello world  ", "hello world", " 하늘 ", "\t탭\n"]
    ours = SentenceTransformer(bpe_model)
    assert ours.tokenizer.encode(texts[0]).ids != ours.tokenizer.encode(texts[1]).ids  # spaces are tokens here
    check_parity("outer whitespace, byte-level BPE", ours.encode(texts), st_model(bpe_model).encode(texts), 1e-5)


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tiny_model, model, tmp_path):
    (tmp_path / "in.txt").write_text("\ufeff" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "refimpl", "encode", "--model", str(tiny_model("roberta")), "-i", str(tmp_path / "in.txt"),
                    "-o", str(tmp_path / "out.jsonl")], check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["text"] == TEXTS[0]
    np.testing.assert_allclose([r["embedding"] for r in rows], model.encode(TEXTS), atol=1e-6)


# --- caches and resumable runs keyed by content --------------------------------------------------


def search(model_dir, corpus, *queries):
    return subprocess.run([sys.executable, "-m", "refimpl", "search", "--corpus", str(corpus), "--json", "--model", str(model_dir),
                           *queries], capture_output=True, text=True, check=True)


def test_search_cache_follows_the_model_files_and_repairs_itself(broken, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    first = search(broken, corpus, TEXTS[0])
    (cache,) = tmp_path.glob("corpus.txt.*.npy")
    # weights changed in place, same path: the old vectors must not be reused
    from safetensors.numpy import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    state["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"] + 1
    save_file(state, str(broken / "model.safetensors"))
    changed = search(broken, corpus, TEXTS[0])
    assert "using cached" not in changed.stderr and changed.stdout != first.stdout
    (new_cache,) = set(tmp_path.glob("corpus.txt.*.npy")) - {cache}
    for damage, words in [(lambda raw: raw[: len(raw) // 2], "corrupt"), (None, "not 4 finite rows")]:
        if damage is None:
            np.save(new_cache, np.zeros((9, 32), np.float32))  # extra rows
        else:
            new_cache.write_bytes(damage(new_cache.read_bytes()))
        repaired = search(broken, corpus, TEXTS[0])
        assert words in repaired.stderr and "embedding the corpus again" in repaired.stderr, repaired.stderr
        assert repaired.stdout == changed.stdout and "Traceback" not in repaired.stderr
    assert "using cached" in search(broken, corpus, TEXTS[0]).stderr


def test_atomic_writes_keep_the_previous_file(tmp_path):
    from refimpl.files import write_atomically

    target = tmp_path / "out.npy"
    target.write_bytes(b"previous")

    def fails_midway(handle):
        handle.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, fails_midway)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["out.npy"]


# --- memory bombs --------------------------------------------------------------------------------


def test_zero_stride_pickle_is_refused_before_allocating(tmp_path):
    import torch

    torch.save({"w": torch.zeros(1).expand(400_000_000)}, tmp_path / "bomb.bin")  # 1.6 GB if copied densely
    assert (tmp_path / "bomb.bin").stat().st_size < 4096
    result = run_limited("import sys; from refimpl.torch_pickle import read_pytorch_bin; read_pytorch_bin(sys.argv[1])", 600,
                         tmp_path / "bomb.bin")
    print(result.stderr[-400:])
    assert "overlapping strides" in result.stderr and "MemoryError" not in result.stderr


def test_zip_bomb_entry_is_refused_before_decompressing(tmp_path):
    import torch

    torch.save({"w": torch.zeros(16 * 2**20)}, tmp_path / "plain.bin")  # 64 MiB of zeros
    with zipfile.ZipFile(tmp_path / "plain.bin") as source, zipfile.ZipFile(tmp_path / "bomb.bin", "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    assert (tmp_path / "bomb.bin").stat().st_size < 2**20
    result = run_limited("import sys; from refimpl.torch_pickle import read_pytorch_bin; read_pytorch_bin(sys.argv[1])", 400,
                         tmp_path / "bomb.bin")
    print(result.stderr[-400:])
    assert "would decompress" in result.stderr


def test_huge_safetensors_metadata_is_refused(broken):
    raw = (broken / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = {"junk": "x" * (17 * 2**20)}
    encoded = json.dumps(header).encode()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    assert "a header may have at most 16 MiB" in load_error(broken)
    header["__metadata__"] = {"nested": {"not": "a string"}}
    encoded = json.dumps(header).encode()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    assert "__metadata__ must map names to strings" in load_error(broken)


LONG_TEXT_RSS = """
import resource, sys
from refimpl import SentenceTransformer
model = SentenceTransformer(sys.argv[1], engine="reference")
if sys.argv[2] == "unbounded":  # the control: no cutting
    type(model._tokenizer).CHARS_PER_TOKEN_WINDOW = 10**9
model.encode(["워밍업"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
texts = [("긴 문장을 만들어 봅니다 " * 800_000)[:10_000_000], "가" * 10_000_000, "a" * 10_000_000, " " * 10_000_000,
         "\u200b" * 9_999_990 + " 끝 문장"]
for text in texts[: 1 if sys.argv[2] == "unbounded" else len(texts)]:
    embedding = model.encode(text)
    del text
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_ten_million_characters_are_cut_before_tokenizing(tiny_model):
    growth = {}
    for mode, limit in (("bounded", 1500), ("unbounded", 6000)):
        result = run_limited(LONG_TEXT_RSS, limit, tiny_model("roberta"), mode)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[mode] = float(result.stdout.strip().splitlines()[-1])
    print(f"encoding texts of 10 million characters grew the peak RSS by {growth} MiB")
    assert growth["bounded"] < 200 and growth["unbounded"] > 1000  # tokenizing one whole takes +2.2 to +2.7 GiB


LONG_TEXTS = [
    "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 2000,
    "가" * 50_000,  # one word: WordPiece makes it one [UNK], however long
    "가" * 9000 + "." + " 나다 라마" * 3000,  # a giant word, then punctuation and words
    "짧은 시작 " + "x" * 20_000 + " 그리고 끝",
    "word " * 9000 + "끝",
    "띄어쓰기없이아주긴한국어문장" * 3000,
    ("Mixed 한국어 and English 123, punctuation!? " * 1500) + "\u200b" * 5000,
    " " * 30000 + "공백 뒤의 문장 " * 1000,
    "\u200b" * 30000 + "보이지 않는 문자 뒤 " * 1000,
    UNDECIDED := "앞" + "\u200b" * 30000 + "뒤 문장 " * 1000,  # one WordPiece word of 30,000 characters, not [UNK]
    "\n\t".join(["줄바꿈과 탭"] * 5000),
]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_cutting_long_text_before_tokenizing_changes_nothing(tiny_model, bpe_model, model_type):
    model = SentenceTransformer(tiny_model(model_type))
    bpe = SentenceTransformer(bpe_model)
    for m in (model, bpe):
        tokenizer = m._tokenizer
        for text in LONG_TEXTS:
            if text is not UNDECIDED or m is bpe:  # undecided: the whole text is tokenized, the safe side
                assert len(tokenizer._bounded(text)) < len(text), "the text should be long enough to be cut"
            whole = tokenizer.backend.encode(text)
            cut = tokenizer.backend.encode(tokenizer._bounded(text))
            assert cut.ids == whole.ids and cut.type_ids == whole.type_ids and bool(cut.overflowing) == bool(whole.overflowing)
        # the same tokens, so the same embedding: encode takes the bounded path
        whole_tokens = m._tokenizer.backend.encode(LONG_TEXTS[0]).ids
        np.testing.assert_array_equal(m.encode(LONG_TEXTS[0]), m.forward({"input_ids": np.array([whole_tokens])})["sentence_embedding"][0])


# --- errors that must be refimpl's, naming the file ----------------------------------------------


def test_deeply_nested_json(broken):
    (broken / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert load_error(broken).startswith(str(broken / "config.json"))


def test_huge_integer_in_json(broken):
    (broken / "config.json").write_text('{"vocab_size": 1' + "0" * 5000 + "}")
    message = load_error(broken)
    assert message.startswith(str(broken / "config.json")) and "unreadable JSON" in message


@pytest.mark.parametrize("entry", [{"idx": "0"}, {"idx": 1.5}, {"idx": None}])
def test_non_integer_module_index(broken, entry):
    edit_json(broken / "modules.json", lambda modules: modules[0].update(entry))
    assert "'idx'" in load_error(broken)


def rewrite_safetensors(path, change):
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header_text, data = raw[8 : 8 + length].decode(), raw[8 + length :]
    header_text, data = change(header_text, data)
    encoded = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize("case, fragment", [
    ("shape past 2**63", "has shape"),
    ("overlapping offsets", "overlaps the tensor before it"),
    ("duplicate key", "appears twice"),
    ("trailing bytes", "cover"),
    ("unknown dtype", "has dtype 'F4'"),
])
def test_safetensors_as_strict_as_the_safetensors_library(broken, case, fragment):
    def change(header_text, data):
        header = json.loads(header_text)
        names = [n for n in header if n != "__metadata__"]
        first = min(names, key=lambda n: header[n]["data_offsets"][0])
        if case == "shape past 2**63":
            header[first]["shape"] = [2**64, 2**64]
        elif case == "overlapping offsets":
            second = sorted(names, key=lambda n: header[n]["data_offsets"][0])[1]
            size = header[second]["data_offsets"][1] - header[second]["data_offsets"][0]
            header[second]["data_offsets"] = [0, size]  # on top of the first tensor
        elif case == "duplicate key":
            text = json.dumps(header)
            return text[:-1] + ", " + json.dumps(first) + ": " + json.dumps(header[first]) + "}", data
        elif case == "trailing bytes":
            return json.dumps(header), data + b"\0" * 64
        elif case == "unknown dtype":
            header[first]["dtype"] = "F4"
        return json.dumps(header), data

    rewrite_safetensors(broken / "model.safetensors", change)
    message = load_error(broken)
    assert message.startswith(str(broken / "model.safetensors")) and fragment in message
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if case not in ("unknown dtype", "duplicate key"):  # the reference implementation refuses the same file
        with pytest.raises((SafetensorError, Exception)):
            load_file(str(broken / "model.safetensors"))


def torch_archive(tmp_path):
    import torch

    torch.save({"w": torch.arange(64, dtype=torch.float32)}, tmp_path / "ok.bin")
    return tmp_path / "ok.bin"


def damaged_copy(source, target, change):
    """Copy the archive's bytes, letting ``change(bytearray)`` damage them."""
    raw = bytearray(source.read_bytes())
    change(raw)
    target.write_bytes(bytes(raw))


def header_offset(raw: bytearray, name_part: bytes, signature=b"PK\x01\x02", name_at=28) -> int:
    """Offset of the zip header (central by default, local with b"PK\x03\x04", 26) naming ``name_part``."""
    position = 0
    while (position := raw.find(signature, position)) >= 0:
        name_length = struct.unpack("<H", raw[position + name_at : position + name_at + 2])[0]
        start = position + name_at + (18 if signature == b"PK\x01\x02" else 4)
        if name_part in raw[start : start + name_length]:
            return position
        position += 4
    raise AssertionError(name_part)


@pytest.mark.parametrize("damage, fragment", [
    ("bad crc", "cannot be read from the archive"),
    ("encrypted", "cannot be read from the archive"),
    ("unknown compression", "cannot be read from the archive"),
    ("broken deflate stream", "cannot be read from the archive"),
    ("truncated", ""),
    ("multi-disk end record", "cannot be read as a zip archive"),  # found by the fuzzer: zipfile.is_zipfile raised
])
def test_zip_level_corruption(tmp_path, damage, fragment):
    from refimpl.torch_pickle import read_pytorch_bin

    source = torch_archive(tmp_path)
    if damage == "broken deflate stream":
        with zipfile.ZipFile(source) as plain, zipfile.ZipFile(tmp_path / "deflated.bin", "w", zipfile.ZIP_DEFLATED) as deflated:
            for info in plain.infolist():
                deflated.writestr(info.filename, plain.read(info.filename))
        source = tmp_path / "deflated.bin"

    def change(raw):
        central = header_offset(raw, b"data/0")  # zipfile trusts the central directory's fields
        local = header_offset(raw, b"data/0", b"PK\x03\x04", 26)
        if damage == "bad crc":
            raw[central + 16] ^= 0xFF
        elif damage == "encrypted":
            raw[central + 8] |= 1
            raw[local + 6] |= 1
        elif damage == "unknown compression":
            raw[central + 10 : central + 12] = struct.pack("<H", 99)
            raw[local + 8 : local + 10] = struct.pack("<H", 99)
        elif damage == "broken deflate stream":
            start = local + 30 + sum(struct.unpack("<HH", raw[local + 26 : local + 30]))
            raw[start : start + 8] = b"\xff" * 8
        elif damage == "truncated":
            del raw[len(raw) // 2 :]
        else:  # a zip64 end-of-central-directory locator claiming two disks, just before the end record
            end = raw.rfind(b"PK\x05\x06")
            raw[end:end] = b"PK\x06\x07" + struct.pack("<LQL", 0, 0, 2)

    damaged_copy(source, tmp_path / "bad.bin", change)
    with pytest.raises(ModelFileError) as error:
        read_pytorch_bin(tmp_path / "bad.bin")
    print(error.value)
    assert str(error.value).startswith(str(tmp_path / "bad.bin")) and fragment in str(error.value)


def test_pickle_build_cannot_touch_the_allowed_functions(tmp_path):
    from refimpl import torch_pickle

    # GLOBAL torch._utils._rebuild_parameter; {"evil": 1}; BUILD: the C unpickler would set the attribute
    payload = b"\x80\x02ctorch._utils\n_rebuild_parameter\n}X\x04\x00\x00\x00evilK\x01sb."
    with zipfile.ZipFile(tmp_path / "build.bin", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match="sets the state of a function"):
        torch_pickle.read_pytorch_bin(tmp_path / "build.bin")
    assert not hasattr(torch_pickle._rebuild_parameter, "evil")


def test_state_dict_metadata_build_is_still_read(tmp_path):
    """torch.save's state_dict() carries _metadata, set with BUILD on the fresh OrderedDict."""
    import torch

    from refimpl.torch_pickle import read_pytorch_bin

    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.bin")
    assert sorted(read_pytorch_bin(tmp_path / "linear.bin")) == ["bias", "weight"]


# --- the command line and the Python API ---------------------------------------------------------


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "refimpl", *map(str, args)], capture_output=True, text=True, input=stdin)


@pytest.mark.parametrize("args, message", [
    (["encode", "x", "-o", "/no/such/folder/out.npy"], "does not exist"),
    (["encode", "x", "-o", "{tmp}"], "is a directory"),
    (["encode", "-i", "{tmp}", "-o", "{tmp}/out.npy"], "is a directory"),
    (["convert", "/no/such/pytorch_model.bin", "{tmp}/out.safetensors"], "no such file"),
    (["convert", "{tmp}", "{tmp}/out.safetensors"], "is a directory"),
    (["encode", "x", "--batch-size", "0"], "batch_size must be a positive integer"),
])
def test_cli_errors_are_one_line_before_any_work(tiny_model, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--model", str(tiny_model("roberta"))] * (args[0] == "encode")
    result = cli(*args)
    print(result.stderr)
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_usage_errors_exit_2():
    result = cli("encode", "--batch-size", "many")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_broken_pipe_is_quiet(tiny_model):
    command = f"{sys.executable} -m refimpl encode --model {tiny_model('roberta')} -i - | head -c 10"
    result = subprocess.run(["bash", "-c", command], input="\n".join(TEXTS * 3000), capture_output=True, text=True)
    assert len(result.stdout) == 10 and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_embed_checks_batch_size_like_encode(model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.encode(TEXTS, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(model.embed(TEXTS, batch_size=batch_size))


def sts_file(tmp_path, rows):
    path = tmp_path / "sts.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("rows, message", [
    ("", "the file is empty"),
    ([{"sentence1": "a", "sentence2": "b", "labels": {"label": float("nan")}}] * 3, "not a finite number"),
    ([{"sentence1": None, "sentence2": "b", "labels": {"label": 1}}] * 3, "sentence1 must be a string"),
    ([{"sentence1": "a", "sentence2": 5, "labels": {"label": 1}}] * 3, "sentence2 must be a string"),
    ([{"sentence1": "a", "sentence2": "b", "labels": {"label": 1}}], "at least 2"),
])
def test_eval_sts_refuses_bad_data(tiny_model, tmp_path, rows, message):
    path = tmp_path / "sts.json"
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows), encoding="utf-8")
    result = cli("eval-sts", path, "--model", tiny_model("roberta"))
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_eval_sts_json_is_strict_json_with_null_for_undefined(tiny_model, tmp_path):
    # constant gold scores: every correlation is undefined, whatever float noise does to the predictions
    rows = [{"sentence1": a, "sentence2": b, "labels": {"label": 2.5}} for a, b in (("가", "나"), ("다", "라"), ("마", "바"))]
    result = cli("eval-sts", sts_file(tmp_path, rows), "--model", tiny_model("roberta"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert set(metrics.values()) == {None} and "undefined" in result.stderr


def test_crafted_files_never_crash_the_interpreter_under_a_memory_cap(broken):
    """A last sweep in one capped child: each crafted model directory ends in a refimpl error."""
    code = """
import json, sys
from pathlib import Path
from refimpl import SentenceTransformer
from refimpl.errors import RefimplError
for directory in sys.argv[1:]:
    try:
        SentenceTransformer(directory, engine="reference").encode(["문장"])
    except (RefimplError, ValueError) as error:
        print("refused", type(error).__name__)
    else:
        print("loaded")
"""
    directories = []
    for i, change in enumerate([
        lambda p: (p / "config.json").write_text("[" * 50_000),
        lambda p: (p / "modules.json").write_text('[{"idx": "x", "type": "sentence_transformers.models.Transformer"}]'),
        lambda p: (p / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}"),
        lambda p: (p / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}" + b"\0" * 10),
    ]):
        target = broken.parent / f"crafted-{i}"
        shutil.copytree(broken, target)
        change(target)
        directories.append(target)
    result = run_limited(code, 1500, *directories)
    print(result.stdout, result.stderr[-1000:])
    assert result.returncode == 0 and result.stdout.split().count("refused") == len(directories)
