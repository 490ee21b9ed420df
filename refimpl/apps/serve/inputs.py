"""Request bodies -> checked requests -> packed token ids (``refimpl.batch.Encoded``).

Parsing runs on the event loop (it is cheap); ``InputEncoder.encode`` tokenizes and runs in
the tokenization thread pool. Every refusal is an ``ApiError`` naming the field.

Inputs are TEI's ``Input``: a string, a list of token ids, or a list whose items are strings
or lists of token ids (OpenAI's four forms are among them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from refimpl.apps.serve import errors
from refimpl.apps.serve.errors import validation
from refimpl.batch import Encoded

SHAPES = "a string, a list of token ids, or a list of strings and lists of token ids"


@dataclass
class EmbedRequest:
    items: list  # str, or np.ndarray of token ids
    truncate: bool = False
    direction: str = "right"
    prompt_name: str | None = None
    normalize: bool = True
    dimensions: int | None = None
    single: bool = False  # the input was one string or one id list
    extra: dict = field(default_factory=dict)


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise validation(f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise validation(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def boolean(data: dict, name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise validation(f"`{name}` must be true or false, got {json.dumps(value)[:40]}")
    return value


def direction(data: dict, name: str = "truncation_direction") -> str:
    value = data.get(name)
    if value is None:
        return "right"
    if value not in ("Right", "right", "Left", "left"):
        raise validation(f'`{name}` must be "Right" or "Left", got {json.dumps(value)[:40]}')
    return value.lower()


def optional_string(data: dict, name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise validation(f"`{name}` must be a string, got {type(value).__name__}")
    return value


def dimensions(data: dict, largest: int, name: str = "dimensions") -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
        raise validation(
            f"`{name}` must be an integer from 1 to {largest} (the model's dimension), got {json.dumps(value)[:40]}"
        )
    return value


def _kind(value) -> str:
    """A JSON value's kind as the error messages name it: ``null``, or the Python type's name."""
    return "null" if value is None else type(value).__name__


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids(value: list, where: str, vocab_size: int) -> np.ndarray:
    if not value:
        raise errors.empty(where)
    if not all(_is_id(v) for v in value):
        bad = next(i for i, v in enumerate(value) if not _is_id(v))
        raise validation(f"`{where}[{bad}]` must be a token id (an integer), got {json.dumps(value[bad])[:40]}")
    ids = np.array(value, dtype=object)
    outside = [i for i, v in enumerate(value) if not 0 <= v < vocab_size]
    if outside:
        raise validation(
            f"`{where}[{outside[0]}]` = {value[outside[0]]} is not a token id of this model (0 <= id < {vocab_size})"
        )
    return ids.astype(np.int64)


def _text(value: str, where: str) -> str:
    if not value:
        raise errors.empty(where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise validation(f"`{where}` is not valid Unicode: a lone surrogate at position {error.start}") from None
    return value


def parse_inputs(value, name: str, max_items: int, vocab_size: int) -> tuple[list, bool]:
    """(items, single): each item a str or an int64 array of token ids."""
    if isinstance(value, str):
        return [_text(value, name)], True
    if not isinstance(value, list):
        raise validation(f"`{name}` must be {SHAPES}, got {_kind(value)}")
    if not value:
        raise errors.empty(name)
    if all(_is_id(v) for v in value):
        return [_ids(value, name, vocab_size)], True
    if len(value) > max_items:
        raise errors.too_large(f"batch size {len(value)} > maximum allowed batch size {max_items}", "batch_size")
    items = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if isinstance(item, str):
            items.append(_text(item, where))
        elif isinstance(item, list):
            items.append(_ids(item, where, vocab_size))
        else:
            raise validation(f"`{where}` must be a string or a list of token ids, got {_kind(item)}")
    return items, False


def parse_embed(data: dict, model, settings, openai: bool = False) -> EmbedRequest:
    """TEI's EmbedRequest (``inputs``...) or OpenAI's (``input``, ``encoding_format``...)."""
    name = "input" if openai else "inputs"
    if name not in data:
        raise validation(f"missing field `{name}`")
    largest = model.get_sentence_embedding_dimension()
    items, single = parse_inputs(data[name], name, settings.max_client_batch_size, model.config.vocab_size)
    request = EmbedRequest(items, single=single, dimensions=dimensions(data, largest))
    if openai:
        request.truncate = settings.auto_truncate  # OpenAI's request has no truncate; TEI uses --auto-truncate
        request.extra["model"] = optional_string(data, "model")
        optional_string(data, "user")
        fmt = data.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise validation(f'`encoding_format` must be "float" or "base64", got {json.dumps(fmt)[:40]}')
        request.extra["encoding_format"] = fmt
        return request
    request.truncate = boolean(data, "truncate", settings.auto_truncate)
    request.direction = direction(data)
    request.prompt_name = optional_string(data, "prompt_name")
    request.normalize = boolean(data, "normalize", True)
    return request


def parse_similarity(data: dict, model, settings) -> EmbedRequest:
    """TEI's SimilarityRequest: {"inputs": {"source_sentence", "sentences"}, "parameters": {...}}."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        raise validation('`inputs` must be an object {"source_sentence": ..., "sentences": [...]}')
    source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
    if not isinstance(source, str):
        raise validation(f"`inputs.source_sentence` must be a string, got {_kind(source)}")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise validation("`inputs.sentences` must be a list of strings")
    if not sentences:
        raise errors.empty("inputs.sentences")
    if len(sentences) + 1 > settings.max_client_batch_size:
        raise errors.too_large(
            f"batch size {len(sentences) + 1} > maximum allowed batch size {settings.max_client_batch_size}",
            "batch_size",
        )
    items = [_text(source, "inputs.source_sentence")] + [
        _text(s, f"inputs.sentences[{i}]") for i, s in enumerate(sentences)
    ]
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise validation("`parameters` must be an object")
    return EmbedRequest(
        items,
        truncate=boolean(parameters, "truncate", settings.auto_truncate),
        direction=direction(parameters),
        prompt_name=optional_string(parameters, "prompt_name"),
        normalize=False,
    )


def parse_tokenize(data: dict, settings) -> tuple[list[str], bool, str | None]:
    """TEI's TokenizeRequest: (texts, add_special_tokens, prompt_name)."""
    value = data.get("inputs")
    if isinstance(value, str):
        texts = [_text(value, "inputs")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        if not value:
            raise errors.empty("inputs")
        if len(value) > settings.max_client_batch_size:
            raise errors.too_large(
                f"batch size {len(value)} > maximum allowed batch size {settings.max_client_batch_size}", "batch_size"
            )
        texts = [_text(v, f"inputs[{i}]") for i, v in enumerate(value)]
    else:
        raise validation("`inputs` must be a string or a list of strings")
    return texts, boolean(data, "add_special_tokens", True), optional_string(data, "prompt_name")


def encoded_from_encodings(encodings) -> Encoded:
    lengths = np.array([len(e.ids) for e in encodings], np.int64)
    ids = np.array([i for e in encodings for i in e.ids], np.int64)
    types = np.array([i for e in encodings for i in e.type_ids], np.int64)
    return Encoded(ids, types, lengths, np.array([bool(e.overflowing) for e in encodings], bool))


def ids_encoded(ids: np.ndarray, truncated: bool) -> Encoded:
    return Encoded(ids, np.zeros(len(ids), np.int64), np.array([len(ids)], np.int64), np.array([truncated]))
