"""Every setting of docs/settings.md, tested against sentence-transformers 6 on a tiny model that sets it.

Each row copies a tiny model, makes one edit and checks one of three outcomes:
- "changes": refimpl embeds as sentence-transformers does (1e-5), and sentence-transformers' vectors
  differ from the unedited model's (the setting matters, so the row tests something);
- "neutral": refimpl embeds as sentence-transformers does, and the edit changes nothing (a key
  transformers ignores, or a default spelled out);
- "refused": refimpl refuses the model with a ModelFileError naming the file and the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest

from refimpl import SentenceTransformer
from refimpl.errors import ModelFileError
from tests.helpers import (
    DELETE,
    both,
    check_parity,
    cls_only_template,
    copy_model,
    edit_json,
    keys,
    max_abs_diff,
    modules,
    rename,
    st_model,
    template_types,
    tokenizer_json,
    write,
)
from tools import fixtures as builders

LONG = "서울에서 부산까지 기차로 두 시간 반 정도 걸린다. " * 8  # over the tiny models' 38 tokens
TEXTS = [
    "Hello World, ÀÉÎ café naïve",
    "hello world",
    "한국어 문장 임베딩을 계산한다.",
    "漢字와 mixed 文字",
    "  outer spaces  ",
    "[CLS] inside [SEP] <s> </s> <mask> text",
    "ﬁve Ｆｕｌｌ ① ½",
    LONG,
]
ST2 = "sentence_transformers.models."
ST6 = "sentence_transformers.sentence_transformer.modules."
SBERT, TC, STM, CFG, POOL = (
    "sentence_bert_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "1_Pooling/config.json",
)
NO_MAX = keys(SBERT, max_seq_length=DELETE)
BACKEND = keys(TC, tokenizer_class="PreTrainedTokenizerFast")
LOWERCASING_JSON = tokenizer_json(lambda d: d["normalizer"].update(lowercase=True))
WITH_TYPES = keys(TC, model_input_names=["input_ids", "token_type_ids", "attention_mask"])


@dataclass
class Row:
    name: str
    base: str  # bert (WordPiece), bpe (RoBERTa byte-level BPE), unigram (XLM-RoBERTa), minilm (real weights)
    edit: object
    expect: str  # changes, neutral or refused
    file: str = ""  # refused: the file the error names
    fragment: str = ""  # refused: what the message says (the key)


ROWS = [
    # modules.json
    Row("modules.json: entries run in list order, idx disagrees", "bert", modules(ST2 + "Transformer", ST2 + "Pooling", idx=[1, 0]), "refused", "modules.json", "'idx' order"),
    Row("modules.json: an entry without path", "bert", modules(ST2 + "Transformer", ST2 + "Pooling", paths=["", None]), "refused", "modules.json", "no 'path'"),
    Row("modules.json: repeated names", "bert", modules(ST2 + "Transformer", ST2 + "Pooling", names=["0", "0"]), "refused", "modules.json", "names repeat"),
    Row("modules.json: sentence-transformers 6 type names", "bert", modules("sentence_transformers.base.modules.transformer.Transformer", ST6 + "pooling.Pooling"), "neutral"),
    Row("modules.json: another model kind's module", "bert", modules("sentence_transformers.sparse_encoder.modules.Transformer", ST2 + "Pooling"), "refused", "modules.json", "sparse_encoder"),
    # sentence_bert_config.json and its legacy names
    Row("sentence_bert_config.json: max_seq_length", "bert", keys(SBERT, max_seq_length=8), "changes"),
    Row("sentence_bert_config.json: a legacy name", "bert", both(rename(SBERT, "sentence_roberta_config.json"), keys("sentence_roberta_config.json", max_seq_length=8)), "changes"),
    Row("sentence_bert_config.json: {} falls through to the next name", "bert", both(write(SBERT, {}), write("sentence_xlm-roberta_config.json", {"max_seq_length": 8})), "changes"),
    Row("sentence_bert_config.json: an unknown key", "bert", keys(SBERT, pooling="mean"), "refused", SBERT, "unknown key 'pooling'"),
    Row("sentence_bert_config.json: do_lower_case", "bert", keys(SBERT, do_lower_case=True), "changes"),
    Row("sentence_bert_config.json: do_lower_case by truthiness", "bert", keys(SBERT, do_lower_case=1), "changes"),
    Row("sentence_bert_config.json: config_args hidden_act relu", "bert", keys(SBERT, config_args={"hidden_act": "relu"}), "refused", SBERT, "config_args: hidden_act 'relu'"),
    Row("sentence_bert_config.json: config_kwargs layer_norm_eps", "bert", keys(SBERT, config_kwargs={"layer_norm_eps": 0.5}), "changes"),
    Row("sentence_bert_config.json: config_args replaces config_kwargs", "bert", keys(SBERT, config_args={"layer_norm_eps": 0.5}, config_kwargs={"layer_norm_eps": 1e-12}), "changes"),
    Row("sentence_bert_config.json: tokenizer_args model_max_length beats max_seq_length", "bert", keys(SBERT, tokenizer_args={"model_max_length": 8}), "changes"),
    Row("sentence_bert_config.json: processor_kwargs do_lower_case", "bert", keys(SBERT, processor_kwargs={"do_lower_case": True}), "changes"),
    Row("sentence_bert_config.json: tokenizer_args truncation_side left", "bert", keys(SBERT, tokenizer_args={"truncation_side": "left"}), "changes"),
    Row("sentence_bert_config.json: tokenizer_args cls_token beats special_tokens_map.json", "bert", keys(SBERT, tokenizer_args={"cls_token": "[MASK]"}), "changes"),
    Row("sentence_bert_config.json: model_args torch_dtype float32", "bert", keys(SBERT, model_args={"torch_dtype": "float32"}), "neutral"),
    Row("sentence_bert_config.json: model_kwargs attn_implementation sdpa", "bert", keys(SBERT, model_kwargs={"attn_implementation": "sdpa"}), "neutral"),
    Row("sentence_bert_config.json: model_kwargs with another key", "bert", keys(SBERT, model_kwargs={"layer_norm_eps": 0.5}), "refused", SBERT, "model_kwargs key 'layer_norm_eps'"),
    Row("sentence_bert_config.json: loading keys in the kwargs", "bert", keys(SBERT, model_args={"revision": "x", "trust_remote_code": True}, tokenizer_args={"subfolder": "x"}), "neutral"),
    Row("sentence_bert_config.json: unpad_inputs and backend", "bert", keys(SBERT, unpad_inputs=True, backend="torch"), "neutral"),
    Row("sentence_bert_config.json: transformer_task fill-mask", "bert", keys(SBERT, transformer_task="fill-mask"), "refused", SBERT, "key 'transformer_task'"),
    Row("sentence_bert_config.json: processing_kwargs", "bert", keys(SBERT, processing_kwargs={"text": {"max_length": 5}}), "refused", SBERT, "key 'processing_kwargs'"),
    Row("sentence_bert_config.json: query_length", "bert", keys(SBERT, query_length=4), "refused", SBERT, "key 'query_length'"),
    Row("sentence_bert_config.json: tokenizer_name_or_path", "bert", keys(SBERT, tokenizer_name_or_path="other"), "refused", SBERT, "key 'tokenizer_name_or_path'"),
    # config.json
    Row("config.json: hidden_act gelu_python", "bert", keys(CFG, hidden_act="gelu_python"), "neutral"),
    Row("config.json: hidden_act relu", "bert", keys(CFG, hidden_act="relu"), "refused", CFG, "hidden_act 'relu'"),
    Row("config.json: layer_norm_eps", "bert", keys(CFG, layer_norm_eps=0.25), "changes"),
    Row("config.json: pad_token_id null (BERT)", "bert", keys(CFG, pad_token_id=None), "neutral"),
    Row("config.json: tokenizer_class", "bert", both(keys(TC, tokenizer_class=DELETE), keys(CFG, tokenizer_class="PreTrainedTokenizerFast"), LOWERCASING_JSON), "changes"),
    Row("config.json: model_type picks the tokenizer class", "bert", both(keys(TC, tokenizer_class=DELETE), LOWERCASING_JSON), "neutral"),
    Row("config.json: RoBERTa class on a WordPiece tokenizer.json", "roberta", keys(TC, tokenizer_class=DELETE), "refused", "tokenizer.json", "holds a WordPiece model"),
    Row("config.json: quantization_config", "bert", keys(CFG, quantization_config={"quant_method": "bitsandbytes"}), "refused", CFG, "key 'quantization_config'"),
    Row("config.json: auto_map", "bert", keys(CFG, auto_map={"AutoModel": "m.M"}), "refused", CFG, "key 'auto_map'"),
    Row("adapter_config.json (PEFT)", "bert", write("adapter_config.json", {"base_model_name_or_path": "x"}), "refused", "adapter_config.json", "PEFT adapter"),
    Row("model.safetensors.index.json (sharded)", "bert", write("model.safetensors.index.json", {"weight_map": {}}), "refused", "model.safetensors.index.json", "sharded"),
    Row("preprocessor_config.json", "bert", write("preprocessor_config.json", {}), "refused", "preprocessor_config.json", "processor"),
    Row("config.json: position_embedding_type", "bert", keys(CFG, position_embedding_type="relative_key"), "refused", CFG, "position_embedding_type 'relative_key'"),
    # tokenizer_config.json, special_tokens_map.json, added tokens (BertTokenizer)
    Row("tokenizer_config.json: do_lower_case", "bert", keys(TC, do_lower_case=True), "changes"),
    Row("tokenizer_config.json: do_lower_case missing means true", "bert", keys(TC, do_lower_case=DELETE), "changes"),
    Row("tokenizer_config.json: strip_accents", "bert", keys(TC, strip_accents=True), "changes"),
    Row("tokenizer_config.json: tokenize_chinese_chars", "bert", keys(TC, tokenize_chinese_chars=False), "changes"),
    Row("tokenizer_config.json: tokenizer.json's normalizer is not read", "bert", LOWERCASING_JSON, "neutral"),
    Row("tokenizer_config.json: tokenizer.json's max_input_chars_per_word is not read", "bert", tokenizer_json(lambda d: d["model"].update(max_input_chars_per_word=3)), "neutral"),
    Row("tokenizer_config.json: cls_token (special_tokens_map.json wins)", "bert", keys(TC, cls_token="[MASK]"), "neutral"),
    Row("special_tokens_map.json: cls_token", "bert", keys(STM, cls_token="[MASK]"), "changes"),
    Row("special_tokens_map.json: unk_token", "bert", keys(STM, unk_token="[MASK]"), "changes"),
    Row("tokenizer_config.json: added_tokens_decoder (special_tokens_map.json unread)", "bert", both(keys(TC, cls_token="[MASK]", added_tokens_decoder={"4": {"content": "[MASK]", "special": True}}), keys(STM, cls_token="[CLS]")), "changes"),
    Row("tokenizer_config.json: extra_special_tokens", "bert", keys(TC, extra_special_tokens=["hello", "mixed"]), "changes"),
    Row("tokenizer_config.json: additional_special_tokens", "bert", keys(TC, additional_special_tokens=["world"]), "changes"),
    Row("special_tokens_map.json: additional_special_tokens", "bert", keys(STM, additional_special_tokens=["world"]), "changes"),
    Row("added_tokens.json", "bert", write("added_tokens.json", {"hello": 405}), "changes"),
    Row("tokenizer_config.json: split_special_tokens", "bert", keys(TC, split_special_tokens=True), "changes"),
    Row("tokenizer_config.json: type ids of a BertTokenizer are rebuilt", "bert", template_types(1), "neutral"),
    Row("tokenizer_config.json: no token_type_ids input for PreTrainedTokenizerFast", "bert", both(BACKEND, template_types(1)), "neutral"),
    Row("tokenizer_config.json: model_input_names with token_type_ids", "bert", both(BACKEND, template_types(1), WITH_TYPES), "changes"),
    Row("tokenizer_config.json: truncation_side left", "bert", keys(TC, truncation_side="left"), "changes"),
    Row("tokenizer.json: truncation direction left", "bert", tokenizer_json(lambda d: d.update(truncation={"max_length": 512, "strategy": "LongestFirst", "stride": 0, "direction": "Left"})), "changes"),
    Row("tokenizer_config.json: model_max_length", "bert", both(NO_MAX, keys(TC, model_max_length=8)), "changes"),
    Row("tokenizer_config.json: max_len", "bert", both(NO_MAX, keys(TC, model_max_length=DELETE, max_len=8)), "changes"),
    Row("tokenizer_config.json: padding_side left (BERT)", "bert", keys(TC, padding_side="left"), "refused", TC, "padding_side"),
    Row("tokenizer_config.json: padding_side left (RoBERTa)", "bpe", keys(TC, padding_side="left"), "neutral"),
    Row("tokenizer_config.json: keys transformers does not read", "bert", keys(TC, clean_up_tokenization_spaces=True, do_basic_tokenize=False, never_split=["hello"], name_or_path="x", chat_template="{{ x }}"), "neutral"),
    Row("tokenizer_config.json: auto_map", "bert", keys(TC, auto_map={"AutoTokenizer": ["t.T", None]}), "refused", TC, "key 'auto_map'"),
    Row("tokenizer_config.json: a key named like a method", "bert", keys(TC, encode=True), "refused", TC, "key 'encode'"),
    Row("tokenizer_config.json: an unsupported tokenizer class", "bert", keys(TC, tokenizer_class="T5Tokenizer"), "refused", TC, "tokenizer class 'T5Tokenizer'"),
    # RobertaTokenizer (byte-level BPE) and XLMRobertaTokenizer (Unigram)
    Row("RobertaTokenizer: the model as shipped", "bpe", keys(TC), "neutral"),
    Row("RobertaTokenizer: add_prefix_space", "bpe", keys(TC, add_prefix_space=True), "changes"),
    Row("RobertaTokenizer: trim_offsets", "bpe", keys(TC, trim_offsets=False), "neutral"),
    Row("RobertaTokenizer: tokenizer.json's pre-tokenizer is not read", "bpe", tokenizer_json(lambda d: d["pre_tokenizer"].update(add_prefix_space=True)), "neutral"),
    Row("XLMRobertaTokenizer: the model as shipped (tokenizer.json's NFKC dropped)", "unigram", keys(TC), "neutral"),
    Row("XLMRobertaTokenizer: add_prefix_space", "unigram", keys(TC, add_prefix_space=False), "changes"),
    # 1_Pooling/config.json and the Normalize module
    Row("1_Pooling/config.json: no mode means mean", "bert", write(POOL, {"word_embedding_dimension": 32}), "neutral"),
    Row("1_Pooling/config.json: legacy keys all false mean mean", "bert", keys(POOL, pooling_mode_mean_tokens=False), "neutral"),
    Row("1_Pooling/config.json: legacy keys by truthiness", "bert", keys(POOL, pooling_mode_mean_tokens=0, pooling_mode_cls_token=1), "changes"),
    Row("1_Pooling/config.json: pooling_mode list", "bert", write(POOL, {"embedding_dimension": 32, "pooling_mode": ["cls", "max"]}), "changes"),
    Row("1_Pooling/config.json: an unknown key", "bert", keys(POOL, pooling_mode_median=True), "refused", POOL, "unknown key 'pooling_mode_median'"),
    Row("2_Normalize/config.json: the defaults", "bert", both(modules(ST2 + "Transformer", ST2 + "Pooling", ST2 + "Normalize"), write("2_Normalize/config.json", {"module_input_name": "sentence_embedding"})), "changes"),
    Row("2_Normalize/config.json: module_input_name token_embeddings", "bert", both(modules(ST2 + "Transformer", ST2 + "Pooling", ST2 + "Normalize"), write("2_Normalize/config.json", {"module_input_name": "token_embeddings"})), "refused", "2_Normalize/config.json", "module_input_name"),
    # config_sentence_transformers.json
    Row("config_sentence_transformers.json: model_type", "bert", keys("config_sentence_transformers.json", model_type="SparseEncoder"), "refused", "config_sentence_transformers.json", "model_type"),
    Row("config_sentence_transformers.json: an unknown similarity function", "bert", keys("config_sentence_transformers.json", similarity_fn_name="maxsim"), "neutral"),
    # real weights: MiniLM's tokenizer_config.json against its tokenizer.json
    Row("MiniLM: do_lower_case false", "minilm", keys(TC, do_lower_case=False), "changes"),
    Row("MiniLM: strip_accents false (lowercasing strips them by default)", "minilm", keys(TC, strip_accents=False), "changes"),
    Row("MiniLM: tokenize_chinese_chars false", "minilm", keys(TC, tokenize_chinese_chars=False), "changes"),
    Row("MiniLM: cls_token only in special_tokens_map.json", "minilm", both(keys(TC, cls_token=DELETE), keys(STM, cls_token="[MASK]")), "changes"),
]  # fmt: skip


@pytest.fixture(scope="session")
def bases(tiny_model, minilm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("settings-bases")
    return {
        "bert": tiny_model("bert"),
        "roberta": tiny_model("roberta"),
        "bpe": builders.make_bpe_model(root / "bpe", tiny_model("roberta")),
        "unigram": builders.make_unigram_model(root / "unigram", tiny_model("xlm-roberta")),
        "minilm": minilm_dir,
    }


def refused_error(path) -> ModelFileError:
    with pytest.raises(ModelFileError) as error:
        SentenceTransformer(path)
    print(error.value)
    return error.value


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_setting_as_sentence_transformers_reads_it(row, bases, tmp_path):
    path = copy_model(bases[row.base], tmp_path / "model")
    row.edit(path)
    if row.expect == "refused":
        error = refused_error(path)
        assert error.path.endswith(row.file) and row.fragment in error.problem, str(error)
        return
    theirs = st_model(path).encode(TEXTS)
    check_parity(row.name, SentenceTransformer(path).encode(TEXTS), theirs, 1e-5)
    base = st_model(bases[row.base]).encode(TEXTS)
    effect = max_abs_diff(theirs, base) if theirs.shape == base.shape else 1.0  # another shape: changed
    print(f"the edit changes sentence-transformers' vectors by {effect:.2e}")
    assert effect > 1e-4 if row.expect == "changes" else effect < 1e-6


# --- settings that need more than one encode call --------------------------------------------------


@pytest.mark.parametrize(
    "key, value", [("dtype", "bfloat16"), ("torch_dtype", "float16"), ("model_kwargs", {"dtype": "bfloat16"})]
)
def test_half_precision_is_computed_in_float32_with_one_warning(bases, tmp_path, caplog, key, value):
    # (the tiny models' config.json says "dtype": "float32", which wins over torch_dtype)
    """sentence-transformers computes a float16/bfloat16 config in that precision, also on the CPU;
    refimpl computes in float32, warns once, and matches sentence-transformers run in float32."""
    import torch
    from sentence_transformers import SentenceTransformer as Oracle

    path = copy_model(bases["bert"], tmp_path / "model")
    (keys(SBERT, model_kwargs=value) if key == "model_kwargs" else keys(CFG, **{"dtype": DELETE, key: value}))(path)
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        ours = SentenceTransformer(path)
    warnings = [r.getMessage() for r in caplog.records if "computes this model in" in r.getMessage()]
    assert len(warnings) == 1 and ("bfloat16" in warnings[0] or "float16" in warnings[0]), warnings
    assert ours.pipeline.transformer.reference_dtype in ("bfloat16", "float16")
    half = st_model(path).encode(TEXTS)
    full = Oracle(str(path), device="cpu", model_kwargs={"dtype": torch.float32}).encode(TEXTS)
    check_parity(f"{key}={value}: refimpl vs sentence-transformers in float32", ours.encode(TEXTS), full, 1e-5)
    print(f"sentence-transformers in its half precision differs by {max_abs_diff(half, full):.2e}")
    assert max_abs_diff(half, full) > 1e-5


def test_float16_weights_without_a_dtype_warn(bases, tmp_path, caplog):
    """No dtype key: transformers computes in the dtype the weights are stored in."""
    from safetensors.numpy import load_file, save_file

    path = copy_model(bases["bert"], tmp_path / "model")
    (path / "model.safetensors").unlink()
    state = load_file(bases["bert"] / "model.safetensors")
    save_file(
        {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in state.items()}, path / "model.safetensors"
    )
    edit_json(path / CFG, lambda c: (c.pop("torch_dtype", None), c.pop("dtype", None)))
    with caplog.at_level(logging.WARNING, logger="refimpl"):
        SentenceTransformer(path)
    assert any("the weights are stored so" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("template", ["bert", "cls only"])
def test_prompt_length_subtracts_a_final_special_token_only(bases, tmp_path, template):
    """include_prompt=False: sentence-transformers leaves out the prompt's tokens, less one only when
    the tokenized prompt ends in a special id ([SEP] with BertTokenizer; nothing with [CLS] $A)."""
    path = copy_model(bases["bert"], tmp_path / "model")
    keys(POOL, include_prompt=0)(path)  # falsy counts, as in sentence-transformers
    if template == "cls only":
        both(BACKEND, tokenizer_json(cls_only_template))(path)
    ours, theirs = SentenceTransformer(path), st_model(path)
    for prompt in ("질문: ", "query [MASK]", "R S "):
        check_parity(
            f"{template}, prompt {prompt!r}",
            ours.encode(TEXTS, prompt=prompt),
            theirs.encode(TEXTS, prompt=prompt),
            1e-5,
        )


def test_prompts_merge_over_query_and_document(bases, tmp_path):
    """The saved prompts are merged over {"query": "", "document": ""}: encode_query never falls back to
    default_prompt_name; a user prompt is merged with the saved ones, not in place of them."""
    path = copy_model(bases["bert"], tmp_path / "model")
    settings = {"prompts": {"short": "짧게: ", "none": None}, "default_prompt_name": "short"}
    keys("config_sentence_transformers.json", **settings)(path)
    ours, theirs = SentenceTransformer(path), st_model(path)
    assert ours.prompts == theirs.prompts == {"query": "", "document": "", "short": "짧게: ", "none": ""}
    for method in ("encode", "encode_query", "encode_document"):
        check_parity(method, getattr(ours, method)(TEXTS), getattr(theirs, method)(TEXTS), 1e-5)
    user = {"query": "Q: "}
    ours = SentenceTransformer(path, prompts=user)
    assert ours.prompts == {"query": "Q: ", "document": "", "short": "짧게: ", "none": ""}


def test_truncate_dim_from_the_file(bases, tmp_path):
    path = copy_model(bases["bert"], tmp_path / "model")
    keys("config_sentence_transformers.json", truncate_dim=16)(path)
    ours, theirs = SentenceTransformer(path), st_model(path)
    assert ours.truncate_dim == theirs.truncate_dim == 16 and ours.get_sentence_embedding_dimension() == 16
    check_parity("truncate_dim 16", ours.encode(TEXTS), theirs.encode(TEXTS), 1e-5)
    assert SentenceTransformer(path, truncate_dim=8).encode(TEXTS).shape == (len(TEXTS), 8)


def test_minilm_tokenizer_config_keys_give_sentence_transformers_ids(minilm_dir, tmp_path):
    """Real MiniLM: each tokenizer_config.json key against its tokenizer.json, ids and types included."""
    for name, value in (("do_lower_case", False), ("strip_accents", False), ("tokenize_chinese_chars", False)):
        path = copy_model(minilm_dir, tmp_path / name)
        keys(TC, **{name: value})(path)
        features = st_model(path).preprocess(TEXTS)
        ours = SentenceTransformer(path).tokenize(TEXTS)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(ours[key], features[key].numpy(), err_msg=f"{name}: {key}")
