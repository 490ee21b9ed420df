"""Out-of-bounds ids: the tokenizer checked against the tables at load, every forward pass checked,
the kernels checked: nothing reads memory it does not own."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import TEXTS, edit_json, load_error


def test_vocabulary_id_past_the_embedding_table(broken):
    def change(tok):
        token = next(iter(tok["model"]["vocab"]))
        tok["model"]["vocab"][token] = 5000  # vocab_size is ~411

    edit_json(broken / "tokenizer.json", change)
    message = load_error(broken)
    assert message.startswith(str(broken / "tokenizer.json")) and "has id 5000" in message and "vocab_size=" in message


def test_added_token_ids_past_the_embedding_table(broken):
    # the tokenizers library numbers added tokens after the vocabulary: 20 of them pass the 11 spare rows
    edit_json(
        broken / "tokenizer.json",
        lambda tok: tok["added_tokens"].extend(
            {
                "id": 9999 + i,
                "content": f"<crafted-{i}>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in range(20)
        ),
    )
    assert "'<crafted-19>' has id" in load_error(broken)


def use_tokenizer_json_as_it_is(model_dir, **settings):
    """PreTrainedTokenizerFast: transformers takes tokenizer.json whole (BertTokenizer rebuilds the post-processor)."""
    edit_json(
        model_dir / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast", **settings)
    )


def test_post_processor_special_id_past_the_embedding_table(broken):
    use_tokenizer_json_as_it_is(broken)
    edit_json(
        broken / "tokenizer.json", lambda tok: tok["post_processor"]["special_tokens"]["[SEP]"].update(ids=[7777])
    )
    assert "has id 7777" in load_error(broken)


def test_post_processor_type_id_past_the_type_table(broken):
    use_tokenizer_json_as_it_is(broken, model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    edit_json(
        broken / "tokenizer.json", lambda tok: tok["post_processor"]["single"][0]["SpecialToken"].update(type_id=3)
    )
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
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("input_ids", 10**6, "outside the vocabulary"),
        ("input_ids", -1, "outside the vocabulary"),
        ("token_type_ids", 1, "token type id 1"),
        ("token_type_ids", -2, "token type id -2"),
    ],
)
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
    from refimpl.engines.fast.kernels import norms as kernels

    table = np.ones((4, 8), np.float32)
    one = np.ones(8, np.float32)
    for ids, types, positions in [([4], [0], [0]), ([0], [1], [0]), ([0], [0], [4]), ([-1], [0], [0])]:
        with pytest.raises(IndexError, match="outside its embedding table"):
            kernels.embeddings_layer_norm(
                np.array(ids),
                np.array(types),
                np.array(positions),
                table,
                table[:1],
                table,
                one,
                one,
                np.float32(1e-5),
                np.float32(1 / 8),
                np.empty((1, 8), np.float32),
            )
