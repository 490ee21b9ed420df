"""Memory bombs and long texts: crafted files are refused before allocating, long texts are cut
before tokenizing without changing the tokens."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import load_error, run_limited


def test_zero_stride_pickle_is_refused_before_allocating(tmp_path):
    import torch

    torch.save({"w": torch.zeros(1).expand(400_000_000)}, tmp_path / "bomb.bin")  # 1.6 GB if copied densely
    assert (tmp_path / "bomb.bin").stat().st_size < 4096
    result = run_limited(
        "import sys; from refimpl.formats.torch_bin import read_pytorch_bin; read_pytorch_bin(sys.argv[1])",
        600,
        tmp_path / "bomb.bin",
    )
    print(result.stderr[-400:])
    assert "overlapping strides" in result.stderr and "MemoryError" not in result.stderr


def test_zip_bomb_entry_is_refused_before_decompressing(tmp_path):
    import torch

    torch.save({"w": torch.zeros(16 * 2**20)}, tmp_path / "plain.bin")  # 64 MiB of zeros
    with (
        zipfile.ZipFile(tmp_path / "plain.bin") as source,
        zipfile.ZipFile(tmp_path / "bomb.bin", "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    assert (tmp_path / "bomb.bin").stat().st_size < 2**20
    result = run_limited(
        "import sys; from refimpl.formats.torch_bin import read_pytorch_bin; read_pytorch_bin(sys.argv[1])",
        400,
        tmp_path / "bomb.bin",
    )
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
import sys
from refimpl import SentenceTransformer
model = SentenceTransformer(sys.argv[1], engine="reference")
if sys.argv[2] == "unbounded":  # the control: no cutting
    type(model.text_tokenizer).CHARS_PER_TOKEN_WINDOW = 10**9
model.encode(["워밍업"])
def peak_kib():  # VmHWM: getrusage's ru_maxrss would start at the parent's (pytest's) peak, kept through exec
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
texts = [("긴 문장을 만들어 봅니다 " * 800_000)[:10_000_000], "가" * 10_000_000, "a" * 10_000_000, " " * 10_000_000,
         "\u200b" * 9_999_990 + " 끝 문장"]
before = peak_kib()  # after building the texts (80 MB of str): the growth is the encoding's
for text in texts[: 1 if sys.argv[2] == "unbounded" else len(texts)]:
    embedding = model.encode(text)
    del text
print((peak_kib() - before) / 1024)
"""


def test_ten_million_characters_are_cut_before_tokenizing(tiny_model):
    growth = {}
    for mode, limit in (("bounded", 1500), ("unbounded", 6000)):
        result = run_limited(LONG_TEXT_RSS, limit, tiny_model("roberta"), mode)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[mode] = float(result.stdout.strip().splitlines()[-1])
    print(f"encoding texts of 10 million characters grew the peak RSS by {growth} MiB")
    # measured by VmHWM: bounded +39 MiB, the control (tokenizing one text whole) +2.4 GiB (getrusage's ru_maxrss,
    # used before, started at pytest's own peak and hid growth below it: +0 and +0.45 to +2.7 GiB)
    assert growth["bounded"] < 200 and growth["unbounded"] > 300


LONG_TEXTS = [
    "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 2000,
    GIANT_HANGUL := "가" * 50_000,  # one word: WordPiece makes it one [UNK], however long
    "가" * 9000 + "." + " 나다 라마" * 3000,  # a giant word, then punctuation and words
    GIANT_LATIN := "짧은 시작 " + "x" * 20_000 + " 그리고 끝",
    "word " * 9000 + "끝",
    GIANT_KOREAN := "띄어쓰기없이아주긴한국어문장" * 3000,
    ("Mixed 한국어 and English 123, punctuation!? " * 1500) + "\u200b" * 5000,
    " " * 30000 + "공백 뒤의 문장 " * 1000,
    "\u200b" * 30000 + "보이지 않는 문자 뒤 " * 1000,
    "앞" + "\u200b" * 30000 + "뒤 문장 " * 1000,  # one WordPiece word of 30,000 characters, not [UNK]
    "\n\t".join(["줄바꿈과 탭"] * 5000),
]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_cutting_long_text_before_tokenizing_changes_nothing(tiny_model, bpe_model, model_type):
    model = SentenceTransformer(tiny_model(model_type))
    bpe = SentenceTransformer(bpe_model)
    for m in (model, bpe):
        tokenizer = m.text_tokenizer
        for text in LONG_TEXTS:
            # a giant BPE word is tokenized whole: its merges depend on the whole word
            if m is model or not any(text is giant for giant in (GIANT_HANGUL, GIANT_LATIN, GIANT_KOREAN)):
                assert len(tokenizer._bounded(text)) < len(text), "the text should be long enough to be cut"
            whole = tokenizer.backend.encode(text)
            cut = tokenizer.backend.encode(tokenizer._bounded(text))
            assert (
                cut.ids == whole.ids
                and cut.type_ids == whole.type_ids
                and bool(cut.overflowing) == bool(whole.overflowing)
            )
        # the same tokens, so the same embedding: encode takes the bounded path
        whole_tokens = m.text_tokenizer.backend.encode(LONG_TEXTS[0]).ids
        np.testing.assert_array_equal(
            m.encode(LONG_TEXTS[0]), m.forward({"input_ids": np.array([whole_tokens])})["sentence_embedding"][0]
        )


# --- the cut is exact: three counterexamples to cutting by offsets, and a property on random texts ----

from functools import lru_cache  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from refimpl.load.long_text import bounded_text  # noqa: E402

PIECES = ["ab", "a", "b", "ba", "abc", "가", "나다", " ", " ", "  ", "\t", "\n", ".", ",", "…", "ﬁ", "①", "½", "é",
          "e\u0301", "\u0301", "\u200b", "中", "A", "B", "☃", "[MASK]", "x" * 12, "'s"]  # fmt: skip
CORPUS = ["ab a b ba abc 가 나다 . , fi 1 é e 中 a ab abab baba abc abcabc 's", "ab ba ab ba 가나다 나다 가"] * 20


def special_template(tokenizer):
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    return tokenizer


@lru_cache
def random_text_tokenizer(kind: str):
    """Small tokenizers of each model, built with the tokenizers library."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    if kind.startswith("wordpiece"):  # max_input_chars_per_word small (giant words shortened) or huge (never)
        limit = 10**6 if kind == "wordpiece-nfkc" else 8
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=limit))
        trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials)
        tokenizer.normalizer = {
            "wordpiece": normalizers.BertNormalizer(lowercase=True),
            "wordpiece-nfkc": normalizers.NFKC(),
            "wordpiece-nfd": normalizers.Sequence(
                [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
            ),
        }[kind]
        splitter = pre_tokenizers.Whitespace() if kind == "wordpiece-nfd" else pre_tokenizers.BertPreTokenizer()
        tokenizer.pre_tokenizer = splitter
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=80, special_tokens=specials, unk_token="[UNK]")
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
        )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    return special_template(tokenizer)


def same_truncated_tokens(tokenizer, text: str, max_length: int, window: int) -> str:
    from tokenizers import Tokenizer

    untruncated = Tokenizer.from_str(tokenizer.to_str())
    untruncated.no_truncation()
    bounded = bounded_text(text, untruncated, max_length, window)
    tokenizer.enable_truncation(max_length)
    whole, cut = tokenizer.encode(text), tokenizer.encode(bounded)
    assert cut.ids == whole.ids and bool(cut.overflowing) == bool(whole.overflowing), (text, bounded)
    return bounded


def test_a_wordpiece_word_with_a_character_without_a_piece_is_never_cut():
    """With a large max_input_chars_per_word, one character without a piece makes the whole word [UNK]:
    a prefix of the word gives many tokens, so a cut inside it changes them (the cut before issue 18 did)."""
    tokenizer = random_text_tokenizer("wordpiece-nfkc")
    word = "ab" * 4000 + "☃"
    assert tokenizer.encode(word).ids[1:-1] == [tokenizer.token_to_id("[UNK]")]
    assert len(tokenizer.encode(word[:300]).ids) > 20
    assert same_truncated_tokens(tokenizer, word + " ab ba" * 2000, 16, 256).startswith(word)


def odd_one_first_unigram():
    """A Unigram model that puts the odd "a" of a word first: "a" * 9 is ▁a aa aa aa aa, "a" * 8 is ▁aa aa aa aa."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = {"[CLS]": 0.0, "[SEP]": 0.0, "[UNK]": 0.0, "▁": -2.0, "a": -6.0, "aa": -1.0, "▁a": -4.0, "▁aa": -1.0}
    tokenizer = Tokenizer(models.Unigram(list(pieces.items()), 2, False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    return special_template(tokenizer)


def test_a_unigram_word_is_never_cut():
    """Unigram segments a word as a whole: a prefix of it can start with other tokens than the word does."""
    tokenizer = odd_one_first_unigram()
    assert tokenizer.encode("a" * 513).tokens[1] == "▁a" and tokenizer.encode("a" * 512).tokens[1] == "▁aa"
    assert same_truncated_tokens(tokenizer, "a" * 2001 + " aa" * 500, 16, 256).startswith("a" * 2001)
    same_truncated_tokens(random_text_tokenizer("unigram"), "abcabcab" * 800 + " 가 나다" * 500, 16, 256)


def test_an_nfkc_expansion_into_several_words_is_not_split():
    """NFKC turns one "…" into three words ("..."): the cut before issue 18 cut at the character's offset and
    dropped all three, while counting two of them among the tokens kept."""
    tokenizer = random_text_tokenizer("wordpiece-nfkc")
    assert len(tokenizer.encode("…").ids) == 5  # [CLS] . . . [SEP]
    for window in (16, 32, 64):
        for max_length in range(6, 40):
            same_truncated_tokens(tokenizer, "ab…" * 3000, max_length, window)
            same_truncated_tokens(tokenizer, "ab… " * 3000, max_length, window)


@pytest.mark.parametrize("kind", ["wordpiece", "wordpiece-nfkc", "wordpiece-nfd", "bpe", "unigram"])
@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=20, max_size=400), max_length=st.integers(3, 24))
def test_the_cut_text_gives_the_same_truncated_tokens(kind, pieces, max_length):
    """Any text, cut with a small window so that the rules run on short texts: the same truncated tokens."""
    same_truncated_tokens(random_text_tokenizer(kind), "".join(pieces), max_length, 16)


def test_packed_checkpoint_pages_are_released(tmp_path):
    """A packed weight's pages in the mapped checkpoint leave memory (madvise), and read back right."""
    from refimpl.engines.fast.packed_weights import release_tensor_pages
    from refimpl.formats.safetensors import read_safetensors_with_metadata, write_safetensors
    from tools.common import rss_mb

    rng = np.random.default_rng(0)
    original = {f"w{i}": rng.standard_normal((1024, 4096), dtype=np.float32) for i in range(4)}  # 64 MiB
    write_safetensors(original, tmp_path / "model.safetensors")
    tensors, _ = read_safetensors_with_metadata(tmp_path / "model.safetensors")
    mapped = {name: tensor.stored() for name, tensor in tensors.items()}
    del original
    before = rss_mb()
    checksums = {name: float(array.sum(dtype=np.float64)) for name, array in mapped.items()}  # touch every page
    touched = rss_mb()
    for array in mapped.values():
        release_tensor_pages(array)
    released = rss_mb()
    print(f"RSS {before:.0f} MiB, after touching 64 MiB {touched:.0f}, after releasing {released:.0f}")
    assert touched - before > 48, "reading the mapped tensors should have made them resident"
    assert touched - released > 48, "release_tensor_pages left the pages resident"
    assert {name: float(array.sum(dtype=np.float64)) for name, array in mapped.items()} == checksums
    release_tensor_pages(np.zeros(10, np.float32))  # an array that is not mapped: nothing to do


def test_streamed_safetensors_file_reads_back_in_the_library(tmp_path):
    """write_safetensors streams its arrays; safetensors' own loader reads every dtype back."""
    from safetensors.numpy import load_file

    from refimpl.formats.safetensors import write_safetensors

    arrays = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f64": np.linspace(0, 1, 5),
        "i8": np.array([-127, 0, 127], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "u16": np.arange(7, dtype=np.uint16),
        "i32": np.array([-(2**31), 2**31 - 1], np.int32),
        "i64": np.array([[1, 2], [3, 4]], np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "big_endian": np.arange(4, dtype=">f4"),
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
    }
    write_safetensors(arrays, tmp_path / "t.safetensors", metadata={"note": "x"})
    back = load_file(tmp_path / "t.safetensors")
    for name, array in arrays.items():
        assert back[name].shape == array.shape and np.array_equal(back[name], array), name
    with pytest.raises(ValueError, match="complex64"):
        write_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path / "c.safetensors")


@pytest.mark.parametrize("compute", ["float32", "int8", "bfloat16"])
def test_a_forward_pass_reuses_its_buffers(klue_model, compute):
    """A pass writes Q, K, V, the FFN's activations and the products' quantised inputs into buffers kept
    from the pass before (encoder.Scratch): fresh arrays of a few MB fault in every 4 KB page they touch
    (3,200 faults, an eighth of an int8 pass of 494 tokens, measured before the buffers were kept). So a
    second pass allocates little more than its result: the hidden state and the embeddings."""
    import tracemalloc

    from refimpl.engines.fast.kernels import cpu
    from tests.helpers import random_sentences

    if cpu.requested_tier() == "blas":
        pytest.skip("the BLAS tier's products allocate their own results (numpy.matmul)")
    model = SentenceTransformer(klue_model, compute=compute)
    texts = random_sentences(32, seed=5, max_words=20)
    tokens = int(model.tokenize(texts)["attention_mask"].sum())
    model.encode(texts, batch_size=32)
    tracemalloc.start()
    try:
        model.encode(texts, batch_size=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    hidden_state = tokens * model.pipeline.transformer.config.hidden_size * 4
    print(f"{compute}: {tokens} tokens, peak of new allocations {peak / hidden_state:.2f} hidden states")
    assert peak < 2.5 * hidden_state  # with fresh arrays in every layer: 8-9 hidden states (measured)


def test_a_pass_larger_than_encodes_keeps_no_buffers(tiny_model):
    """forward() runs a whole batch in one pass; its buffers are dropped after it, while those of
    encode's passes (at most MAX_TOKENS_PER_FORWARD tokens) are kept for the next pass."""
    from refimpl.engines import fast
    from refimpl.engines.fast import encoder

    assert encoder.KEEP_TOKENS == fast.MAX_TOKENS_PER_FORWARD
    model = SentenceTransformer(tiny_model("bert"), compute="int8")
    weights, config = model.weights, model.pipeline.transformer.config
    packed = model.pipeline.transformer.engine().packed_layers()

    def kept_after(tokens):
        encoder._idle.clear()
        ids = np.full(tokens, 5, np.int64)
        cu = np.arange(0, tokens + 1, 8, dtype=np.int64)
        encoder.encoder(ids, np.zeros(tokens, np.int64), cu, weights, config, packed_layers=packed)
        return [scratch.tokens for scratch in encoder._idle]

    assert kept_after(encoder.KEEP_TOKENS) == [encoder.KEEP_TOKENS]
    assert kept_after(2 * encoder.KEEP_TOKENS) == []
