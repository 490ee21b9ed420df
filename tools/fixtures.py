"""Build the test models: tiny random BERT/RoBERTa models, a random model with the exact
klue-sroberta shape and file layout, and a Hugging Face cache holding a model.

Needs torch and transformers (the test extra). Used by tests/ and tools/ (as tools.fixtures);
as a script it writes the klue-shaped model to a directory:

    python -m tools.fixtures klue OUT_DIR        # ~440 MB of random weights
    python -m tools.fixtures tiny OUT_DIR [--model-type bert] [--layers 12 --heads 12]

Every parameter is randomized (biases and LayerNorm included): transformers'
default initialization zeroes biases and makes LayerNorm the identity, which
would let an implementation that forgets a bias pass every test.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "korean_corpus.txt"
KLUE_SPECIAL_TOKENS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]  # ids 0..4, as in klue/roberta-base

# config.json of bespin-global/klue-sroberta-base-continue-learning-by-mnr (transformers 4.x style).
KLUE_CONFIG = {
    "_name_or_path": "klue/roberta-base",
    "architectures": ["RobertaModel"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "tokenizer_class": "BertTokenizer",
    "torch_dtype": "float32",
    "transformers_version": "4.20.1",
    "type_vocab_size": 1,
    "use_cache": True,
    "vocab_size": 32000,
}


# Sentences the parity checks embed: Korean, mixed-case Latin, digits, emoji, empty, outer spaces.
TEST_SENTENCES = [
    "한국어 문장 임베딩을 계산하는 테스트입니다.",
    "고양이는 창가에서 낮잠을 자고 강아지는 마당에서 뛰어논다.",
    "내일 오전 10시에 3층 회의실에서 Project Kickoff 회의가 있습니다.",
    "MIXED Case Latin과 한글이 섞인 문장, 그리고 숫자 12345와 3.14159.",
    "이모지도 들어간다 😀👍🎉 정말 좋아요!",
    "",
    "   앞뒤에 공백이 있는 문장   ",
    "짧다.",
]


def corpus_lines() -> list[str]:
    lines = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines + [line.lower() for line in lines]


def train_wordpiece(vocab_size: int, special_tokens=KLUE_SPECIAL_TOKENS, lowercase=False):
    """A BERT-style WordPiece tokenizer trained with the tokenizers library on our Korean corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens))
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def randomize_(model, seed: int, scale: float = 0.05):
    """Give every parameter a random value: weights ~ N(0, scale), biases ~ N(0, 0.1),
    LayerNorm weights ~ 1 + N(0, 0.1), embeddings ~ N(0, 0.5)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if "LayerNorm.weight" in name:
                value = 1.0 + 0.1 * noise
            elif "embeddings" in name:
                value = 0.5 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            else:
                value = scale * noise
            param.copy_(value.to(param.dtype))
    return model


def _write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_st2_files(
    directory: Path, *, hidden_size: int, max_seq_length, do_lower_case: bool, pooling_modes=("mean",), normalize=False
):
    """The sentence-transformers 2.x files around a Transformer at the root:
    modules.json with 2.x type names, sentence_bert_config.json, 1_Pooling/config.json (legacy keys)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    _write_json(directory / "modules.json", modules)
    sbert = {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}
    _write_json(directory / "sentence_bert_config.json", sbert)
    legacy = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    }
    unknown = set(pooling_modes) - set(legacy.values())
    pooling = {"word_embedding_dimension": hidden_size}
    if unknown:  # weightedmean / lasttoken have no 2.x key everywhere: write the 6.x form
        pooling["pooling_mode"] = list(pooling_modes)
    else:
        pooling.update({key: mode in pooling_modes for key, mode in legacy.items()})
    _write_json(directory / "1_Pooling" / "config.json", pooling)
    _write_json(
        directory / "config_sentence_transformers.json",
        {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.20.1", "pytorch": "1.12.0"}},
    )


def write_tokenizer_files(directory: Path, tokenizer, model_max_length: int, do_lower_case=False):
    """tokenizer.json plus the transformers-side files a BertTokenizer repo has (vocab.txt included)."""
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    names = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    _write_json(directory / "special_tokens_map.json", names)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "do_lower_case": do_lower_case,
            "do_basic_tokenize": True,
            "never_split": None,
            **names,
            "bos_token": "[CLS]",
            "eos_token": "[SEP]",
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_max_length": model_max_length,
            "tokenizer_class": "BertTokenizer",
        },
    )


def make_tiny_model(
    directory,
    *,
    model_type="roberta",
    num_layers=3,
    hidden_size=32,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    pooling_modes=("mean",),
    normalize=False,
    do_lower_case=False,
    max_seq_length=None,
    seed=0,
    tokenizer_vocab=400,
):
    """A small random BERT/RoBERTa/XLM-RoBERTa sentence-transformers model; returns its directory."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(tokenizer_vocab)
    pad_id = tokenizer.token_to_id("[PAD]")
    classes = {
        "bert": (transformers.BertConfig, transformers.BertModel),
        "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel),
    }
    config_class, model_class = classes[model_type]
    config = config_class(
        vocab_size=tokenizer.get_vocab_size() + 11,  # a few embedding rows no token reaches
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2 if model_type == "bert" else 1,
        pad_token_id=pad_id,
        layer_norm_eps=1e-12 if model_type == "bert" else 1e-5,
        hidden_act="gelu",
    )
    model = randomize_(model_class(config, add_pooling_layer=True), seed)
    model.save_pretrained(directory, safe_serialization=True)
    capacity = max_position_embeddings - (pad_id + 1 if model_type != "bert" else 0)
    write_tokenizer_files(directory, tokenizer, model_max_length=capacity)
    write_st2_files(
        directory,
        hidden_size=hidden_size,
        max_seq_length=max_seq_length or capacity,
        do_lower_case=do_lower_case,
        pooling_modes=pooling_modes,
        normalize=normalize,
    )
    return directory


ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, pad 1 as in the tiny configs
ROBERTA_NAMES = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def _replace_tokenizer(directory: Path, source: Path, tokenizer, tokenizer_config: dict):
    """A copy of the tiny model ``source`` with another tokenizer (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json; no vocab.txt)."""
    directory = Path(directory)
    shutil.copytree(source, directory)
    (directory / "vocab.txt").unlink()
    tokenizer.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json", tokenizer_config)
    _write_json(directory / "special_tokens_map.json", ROBERTA_NAMES)
    return directory


def make_bpe_model(directory, source):
    """The tiny RoBERTa ``source`` with a byte-level BPE tokenizer and tokenizer_class RobertaTokenizer,
    as roberta-base ships it (transformers rebuilds its pre-tokenizer and post-processor)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=380, special_tokens=ROBERTA_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus_lines() + ["Hello World, an English sentence."] * 5, trainer)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    config = {**ROBERTA_NAMES, "add_prefix_space": False, "trim_offsets": True, "model_max_length": 38}
    return _replace_tokenizer(directory, source, tokenizer, {**config, "tokenizer_class": "RobertaTokenizer"})


def make_unigram_model(directory, source):
    """The tiny XLM-RoBERTa ``source`` with a Unigram tokenizer (an NFKC normalizer and a Metaspace
    pre-tokenizer in tokenizer.json, which transformers replaces) and tokenizer_class XLMRobertaTokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=380, special_tokens=ROBERTA_SPECIAL_TOKENS[:4], unk_token="<unk>")
    # a part of the corpus: every character needs a piece, and the embedding table has 411 rows
    tokenizer.train_from_iterator(corpus_lines()[:25] + ["Hello World, an English sentence."] * 5, trainer)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    config = {**ROBERTA_NAMES, "model_max_length": 38, "tokenizer_class": "XLMRobertaTokenizer"}
    return _replace_tokenizer(directory, source, tokenizer, config)


def make_klue_model(directory, seed=0):
    """Random weights with the exact klue-sroberta shape, in the repo's sentence-transformers 2.x layout."""
    import torch
    import transformers
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(KLUE_CONFIG["vocab_size"])
    for token_id, token in enumerate(KLUE_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    config = {key: value for key, value in KLUE_CONFIG.items()}
    _write_json(directory / "config.json", config)
    model = transformers.RobertaModel(transformers.RobertaConfig(**config), add_pooling_layer=True)
    randomize_(model, seed, scale=0.03)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    # transformers 4.x checkpoints stored the position_ids buffer (int64); refimpl must skip it
    state["embeddings.position_ids"] = torch.arange(config["max_position_embeddings"]).unsqueeze(0)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer_files(directory, tokenizer, model_max_length=512)
    write_st2_files(directory, hidden_size=768, max_seq_length=512, do_lower_case=True)
    return directory


def make_hub_cache(
    cache_dir, repo_id: str, model_dir, revision="main", commit="0123456789abcdef0123456789abcdef01234567"
):
    """Lay ``model_dir`` out as huggingface_hub's cache does: models--org--name/{refs,snapshots}."""
    base = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / revision).write_text(commit)
    snapshot = base / "snapshots" / commit
    if not snapshot.exists():
        shutil.copytree(model_dir, snapshot)
    return snapshot


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["klue", "tiny"])
    parser.add_argument("out")
    parser.add_argument("--model-type", default="roberta", choices=["bert", "roberta", "xlm-roberta"])
    parser.add_argument("--layers", type=int, default=3, help="tiny: encoder layers (3; 12 to time klue's fixed costs)")
    parser.add_argument("--heads", type=int, default=4, help="tiny: attention heads (4), of 8 dimensions each")
    args = parser.parse_args()
    if args.kind == "klue":
        print(make_klue_model(args.out))
    else:
        hidden = 8 * args.heads
        print(make_tiny_model(args.out, model_type=args.model_type, num_layers=args.layers, hidden_size=hidden,
                              num_heads=args.heads, intermediate_size=2 * hidden))  # fmt: skip


if __name__ == "__main__":
    main()
