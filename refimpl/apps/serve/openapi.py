"""The OpenAPI 3.0.3 document of the server, written by hand and filled with this model's
limits (dimension, vocabulary, characters per input, inputs per request), so that a generator
such as schemathesis produces requests the server should accept."""

from __future__ import annotations

from refimpl.apps.serve.state import ServerState

REF = "#/components/schemas/"


def _error(openai: bool) -> dict:
    return {"$ref": REF + ("OpenAICompatErrorResponse" if openai else "ErrorResponse")}


def _responses(ok: dict, codes: tuple, openai: bool = False) -> dict:
    described = {
        400: "Batch is empty",
        401: "Missing or wrong API key",
        413: "Batch size, input or body too large",
        422: "Validation error",
        424: "Embedding error",
        429: "Model is overloaded",
        503: "Unhealthy",
    }
    out = {"200": ok}
    for code in codes:
        out[str(code)] = {"description": described[code], "content": {"application/json": {"schema": _error(openai)}}}
    return out


def _json(schema_name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF + schema_name}}}}


def _operation(summary: str, request: str | None, ok: dict, codes: tuple, openai=False, secured=False) -> dict:
    op = {"summary": summary, "responses": _responses(ok, codes, openai)}
    if request:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": REF + request}}}}
    if secured:
        op["security"] = [{"bearer": []}]
    return op


def _input_parts(state: ServerState) -> dict:
    """The pieces the request schemas share, filled with this model's limits."""
    model, settings = state.model, state.settings
    text = {"type": "string", "minLength": 1, "maxLength": state.encoder.max_chars}
    token_id = {"type": "integer", "minimum": 0, "maximum": model.config.vocab_size - 1}
    ids = {"type": "array", "items": token_id, "minItems": 1}
    batch = {
        "type": "array",
        "items": {"oneOf": [text, ids]},
        "minItems": 1,
        "maxItems": settings.max_client_batch_size,
    }
    dims = {"type": "integer", "minimum": 1, "maximum": model.get_sentence_embedding_dimension(), "nullable": True}
    prompt = {"type": "string", "nullable": True}
    if model.prompts:
        prompt["enum"] = sorted(model.prompts) + [None]
    direction = {"type": "string", "enum": ["Left", "Right", "left", "right"], "default": "Right"}
    return {
        "text": text,
        "ids": ids,
        "batch": batch,
        "dims": dims,
        "prompt": prompt,
        "direction": direction,
        "max_batch": settings.max_client_batch_size,
    }


def _embed_requests(parts: dict) -> dict:
    """The input union, and the bodies of /embed and the OpenAI routes."""
    return {
        "Input": {
            "oneOf": [parts["text"], parts["ids"], parts["batch"]],
            "description": "a string, token ids, or a list of strings and token-id lists",
        },
        "EmbedRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "inputs": {"$ref": REF + "Input"},
                "truncate": {"type": "boolean", "nullable": True, "default": False},
                "truncation_direction": parts["direction"],
                "prompt_name": parts["prompt"],
                "normalize": {"type": "boolean", "default": True},
                "dimensions": parts["dims"],
            },
        },
        "OpenAICompatRequest": {
            "type": "object",
            "required": ["input"],
            "properties": {
                "input": {"$ref": REF + "Input"},
                "model": {"type": "string", "nullable": True},
                "user": {"type": "string", "nullable": True},
                "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
                "dimensions": parts["dims"],
            },
        },
    }


def _similarity_request(parts: dict) -> dict:
    text = parts["text"]
    sentences = {"type": "array", "items": text, "minItems": 1, "maxItems": parts["max_batch"] - 1}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "object",
                "required": ["source_sentence", "sentences"],
                "properties": {"source_sentence": text, "sentences": sentences},
            },
            "parameters": {
                "type": "object",
                "nullable": True,
                "properties": {
                    "truncate": {"type": "boolean", "nullable": True},
                    "truncation_direction": parts["direction"],
                    "prompt_name": parts["prompt"],
                },
            },
        },
    }


def _tokenize_request(parts: dict) -> dict:
    text = parts["text"]
    texts = {"type": "array", "items": text, "minItems": 1, "maxItems": parts["max_batch"]}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {"oneOf": [text, texts]},
            "add_special_tokens": {"type": "boolean", "default": True},
            "prompt_name": parts["prompt"],
        },
    }


def _input_schemas(state: ServerState) -> dict:
    parts = _input_parts(state)
    return {
        **_embed_requests(parts),
        "SimilarityRequest": _similarity_request(parts),
        "TokenizeRequest": _tokenize_request(parts),
    }


def _embedding_outputs() -> dict:
    """The answers of /embed, /similarity and the OpenAI routes."""
    vector = {"type": "array", "items": {"type": "number"}}
    item = {
        "type": "object",
        "required": ["object", "embedding", "index"],
        "properties": {
            "object": {"type": "string", "enum": ["embedding"]},
            "embedding": {"oneOf": [vector, {"type": "string"}]},
            "index": {"type": "integer"},
        },
    }
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
    }
    return {
        "EmbedResponse": {"type": "array", "items": vector},
        "SimilarityResponse": {"type": "array", "items": {"type": "number"}},
        "OpenAICompatResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": item},
                "model": {"type": "string"},
                "usage": usage,
            },
        },
    }


def _tokenize_and_info_outputs() -> dict:
    nullable_int = {"type": "integer", "nullable": True}
    return {
        "SimpleToken": {
            "type": "object",
            "required": ["id", "text", "special", "start", "stop"],
            "properties": {
                "id": {"type": "integer"},
                "text": {"type": "string"},
                "special": {"type": "boolean"},
                "start": nullable_int,
                "stop": nullable_int,
            },
        },
        "TokenizeResponse": {"type": "array", "items": {"type": "array", "items": {"$ref": REF + "SimpleToken"}}},
        "Info": {
            "type": "object",
            "required": ["model_id", "max_input_length", "embedding_dimension", "version"],
            "additionalProperties": True,
            "properties": {
                "model_id": {"type": "string"},
                "max_input_length": {"type": "integer"},
                "embedding_dimension": {"type": "integer"},
                "version": {"type": "string"},
            },
        },
    }


def _error_outputs() -> dict:
    return {
        "ErrorResponse": {
            "type": "object",
            "required": ["error", "error_type"],
            "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
        },
        "OpenAICompatErrorResponse": {
            "type": "object",
            "required": ["message", "code", "type"],
            "properties": {"message": {"type": "string"}, "code": {"type": "integer"}, "type": {"type": "string"}},
        },
    }


def _output_schemas() -> dict:
    return {**_embedding_outputs(), **_tokenize_and_info_outputs(), **_error_outputs()}


def _inference_paths(secured: bool) -> dict:
    """The routes that embed or tokenize (behind the API key when there is one)."""
    inference = (400, 413, 422, 424, 429) + ((401,) if secured else ())
    plain = (400, 413, 422) + ((401,) if secured else ())
    openai_embeddings = _json("OpenAICompatResponse", "Embeddings")
    return {
        "/embed": {
            "post": _operation(
                "Embed inputs (TEI)", "EmbedRequest", _json("EmbedResponse", "Embeddings"), inference, secured=secured
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "Embed inputs (OpenAI)", "OpenAICompatRequest", openai_embeddings, inference, True, secured
            )
        },
        "/embeddings": {
            "post": _operation(
                "Embed inputs (OpenAI, TEI's alias)", "OpenAICompatRequest", openai_embeddings, inference, True, secured
            )
        },
        "/similarity": {
            "post": _operation(
                "Cosine similarity of sentences to a source sentence (TEI)",
                "SimilarityRequest",
                _json("SimilarityResponse", "Similarities"),
                inference,
                secured=secured,
            )
        },
        "/tokenize": {
            "post": _operation(
                "Tokenize inputs (TEI)", "TokenizeRequest", _json("TokenizeResponse", "Tokens"), plain, secured=secured
            )
        },
    }


def _service_paths(secured: bool) -> dict:
    """/info (behind the API key when there is one), and the public /health, /metrics, /openapi.json."""
    metrics = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    this = {"description": "OpenAPI 3.0.3", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "/info": {
            "get": _operation(
                "Served model info", None, _json("Info", "Info"), (401,) if secured else (), secured=secured
            )
        },
        "/health": {
            "get": _operation("200 once the model is loaded and warmed up", None, {"description": "Healthy"}, (503,))
        },
        "/metrics": {"get": _operation("Prometheus metrics", None, metrics, ())},
        "/openapi.json": {"get": _operation("This document", None, this, ())},
    }


def document(state: ServerState) -> dict:
    from refimpl import __version__

    secured = bool(state.settings.api_key)
    components = {"schemas": {**_input_schemas(state), **_output_schemas()}}
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "refimpl serve",
            "version": __version__,
            "description": "Sentence embeddings over HTTP, TEI- and OpenAI-compatible",
        },
        "paths": {**_inference_paths(secured), **_service_paths(secured)},
        "components": components,
    }
