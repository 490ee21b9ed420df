"""The ``tokenizers.Tokenizer`` transformers 5 builds from the settings of ``tokenizer_settings.py``.

For BertTokenizer, RobertaTokenizer and XLMRobertaTokenizer, transformers takes only the vocabulary
(and the BPE merges, and XLM-RoBERTa's precompiled character map) from tokenizer.json and builds
everything else itself, from the settings and the class's constants: the normalizer, the
pre-tokenizer, the model's options and the post-processor. PreTrainedTokenizerFast (TokenizersBackend)
takes tokenizer.json as it is. Then, for every class, the added tokens in id order, the special
tokens not added yet, and the post-processor of the class, with ids looked up after adding.
"""

from __future__ import annotations

import base64
from pathlib import Path

from refimpl.errors import ModelFileError
from refimpl.load.tokenizer_settings import MODEL_OF_KIND, TokenizerSettings


def _vocab_txt(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:  # universal newlines, as transformers reads it
            lines = [line.rstrip("\n") for line in handle]
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(path, f"cannot be read ({error})") from None
    # transformers' load_vocab numbers tokens by line: a repeated line takes its last line number
    return {token: index for index, token in enumerate(lines)}


def _vocabulary(settings: TokenizerSettings, directory: Path):
    """The vocabulary (and merges) the class takes: from tokenizer.json, or vocab.txt for BERT."""
    tokenizer_file = directory / "tokenizer.json"
    model = (settings.tokenizer_json or {}).get("model")
    if model is None:
        if settings.kind == "bert" and (directory / "vocab.txt").exists():
            return _vocab_txt(directory / "vocab.txt"), None
        missing = ", and there is no vocab.txt to build a WordPiece tokenizer from" if settings.kind == "bert" else ""
        raise ModelFileError(tokenizer_file, f"file is missing{missing} (tokenizer class {settings.class_name})")
    expected = MODEL_OF_KIND[settings.kind]
    if model.get("type") != expected:
        raise ModelFileError(
            tokenizer_file,
            f"holds a {model.get('type')} model, but {settings.class_origin} makes transformers build a "
            f"{settings.class_name}, which reads it as a {expected} vocabulary; refimpl refuses the mismatch",
        )
    vocab = model.get("vocab")
    if settings.kind != "xlm-roberta" and isinstance(vocab, list):
        vocab = {token[0] if isinstance(token, list) else token: i for i, token in enumerate(vocab)}
    if settings.kind == "xlm-roberta":
        vocab = [tuple(item) for item in vocab or []]
        if len(vocab) < 4:
            raise ModelFileError(tokenizer_file, "a Unigram vocabulary needs at least 4 pieces (the unknown one is 3)")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    return vocab, merges


def _precompiled_charsmap(tokenizer_json: dict) -> bytes | None:
    """XLM-RoBERTa keeps only a Precompiled normalizer of tokenizer.json (alone or in a Sequence)."""
    normalizer = tokenizer_json.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "Precompiled" and "precompiled_charsmap" in step:
            return base64.b64decode(step["precompiled_charsmap"])
    return None


def _rebuilt(settings: TokenizerSettings, directory: Path):
    """The class's own model, normalizer and pre-tokenizer around the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = _vocabulary(settings, directory)
    if settings.kind == "bert":
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=settings.token("unk_token")))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=settings.option("tokenize_chinese_chars"),
            strip_accents=settings.option("strip_accents"),
            lowercase=settings.option("do_lower_case"),
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    elif settings.kind == "roberta":
        bpe = models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=settings.option("add_prefix_space"))
        tokenizer.decoder = decoders.ByteLevel()
    else:
        tokenizer = Tokenizer(models.Unigram(vocab, 3, False))  # transformers fixes unk_id 3, no byte fallback
        charsmap = _precompiled_charsmap(settings.tokenizer_json)
        if charsmap is not None:
            tokenizer.normalizer = normalizers.Precompiled(charsmap)
        scheme = "always" if settings.option("add_prefix_space") else "never"
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)]
        )
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    return tokenizer


def _add_tokens(tokenizer, settings: TokenizerSettings):
    """TokenizersBackend.__init__: the added tokens by id, then the special tokens not among them."""
    from tokenizers import AddedToken

    present = tokenizer.get_added_tokens_decoder()
    present_reprs = {repr(token) for token in present.values()}
    to_add = [token for _, token in sorted(settings.added.items()) if repr(token) not in present_reprs]
    encoder = [token.content for token in present.values()] + [str(token) for token in to_add]
    for token in [*settings.named.values(), *settings.extra]:
        if str(token) not in encoder and token not in to_add:
            to_add.append(token)
    named = {str(token) for token in settings.named.values()}
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in named:
            token.special = True
        tokens.append(token)
    if tokens:
        tokenizer.add_tokens(tokens)


def _post_processor(tokenizer, settings: TokenizerSettings):
    """The class's post-processor (tokenizer.json's for the backend class, else none: ``$A``)."""
    from tokenizers import processors

    token, ids = settings.token, tokenizer.token_to_id
    if settings.kind == "bert":
        cls, sep = token("cls_token"), token("sep_token")
        return processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, ids(cls)), (sep, ids(sep))],
        )
    if settings.kind == "roberta":
        sep, cls = token("sep_token"), token("cls_token")
        return processors.RobertaProcessing(
            (sep, ids(sep)), (cls, ids(cls)), settings.option("trim_offsets"), settings.option("add_prefix_space")
        )
    if settings.kind == "xlm-roberta":
        bos, eos = token("bos_token"), token("eos_token")
        return processors.TemplateProcessing(
            single=[bos, "$A", eos],
            pair=[bos, "$A", eos, eos, "$B", eos],
            special_tokens=[(bos, ids(bos)), (eos, ids(eos))],
        )
    if tokenizer.post_processor is not None:
        return tokenizer.post_processor
    return processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])


def build_backend(settings: TokenizerSettings, directory: Path):
    """The tokenizers.Tokenizer transformers 5 would hold for this directory."""
    from tokenizers import Tokenizer

    tokenizer_file = directory / "tokenizer.json"
    try:
        if settings.kind == "backend":
            if settings.tokenizer_json is None:
                raise ModelFileError(tokenizer_file, f"file is missing (tokenizer class {settings.class_name})")
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        else:
            tokenizer = _rebuilt(settings, directory)
        _add_tokens(tokenizer, settings)
        tokenizer.post_processor = _post_processor(tokenizer, settings)
    except ModelFileError:
        raise
    except Exception as error:  # the Rust library raises bare Exceptions (and TypeErrors on wrong types)
        raise ModelFileError(
            tokenizer_file, f"is not a valid tokenizers file for {settings.class_name} ({error})"
        ) from None
    split = settings.options.get("split_special_tokens", False)
    if not isinstance(split, bool):
        raise settings.error("split_special_tokens", f"key 'split_special_tokens' must be true or false, got {split!r}")
    tokenizer.encode_special_tokens = split
    return tokenizer


def special_ids(tokenizer, settings: TokenizerSettings) -> frozenset[int]:
    """transformers' all_special_ids: the named and extra special tokens' ids (the unknown token's id
    for one that is not in the vocabulary)."""
    unk = settings.named.get("unk_token")
    unk_id = tokenizer.token_to_id(str(unk)) if unk is not None else None
    found = {tokenizer.token_to_id(str(token)) for token in [*settings.named.values(), *settings.extra]}
    return frozenset(unk_id if i is None else i for i in found) - {None}


def lowercase_first(tokenizer):
    """sentence-transformers' do_lower_case: a Lowercase normalizer in front, unless the normalizer is a
    Lowercase or a Sequence holding one (a BertNormalizer that lowercases does not count)."""
    from tokenizers import normalizers

    existing = tokenizer.normalizer
    if isinstance(existing, normalizers.Lowercase):
        return
    steps = list(existing) if isinstance(existing, normalizers.Sequence) else [existing] if existing is not None else []
    if any(isinstance(step, normalizers.Lowercase) for step in steps):
        return
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), *steps])
