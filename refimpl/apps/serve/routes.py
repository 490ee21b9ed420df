"""The routes: TEI's /embed, /similarity, /tokenize, /info, /health, /metrics, OpenAI's
/v1/embeddings (and /embeddings), and /openapi.json. Each handler returns a Response and
fills ``stats`` (inputs, tokens) for the request log line and the metrics."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from refimpl.apps.serve import errors
from refimpl.apps.serve.inputs import parse_embed, parse_similarity, parse_tokenize
from refimpl.apps.serve.state import ServerState, json_response


def finish(rows: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """sentence-transformers' order, as ``encode``: keep the first ``dimensions``, then L2-normalize
    (the same expression as refimpl's, so the bits match model.encode(normalize_embeddings=True))."""
    if dimensions:
        rows = rows[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(rows, axis=-1, keepdims=True)
        rows = rows / np.maximum(norms, rows.dtype.type(1e-12))
    return np.ascontiguousarray(rows, dtype=np.float32)  # orjson serializes C-contiguous arrays only


async def embed(state: ServerState, request: Request, stats: dict) -> Response:
    req = parse_embed(await state.read_json(request), state.model, state.settings)
    rows, tokens = await state.embed(request, req)
    stats.update(inputs=len(req.items), tokens=tokens)
    return json_response(finish(rows, req.dimensions, req.normalize))


async def openai_embed(state: ServerState, request: Request, stats: dict) -> Response:
    req = parse_embed(await state.read_json(request), state.model, state.settings, openai=True)
    rows, tokens = await state.embed(request, req, "input")
    stats.update(inputs=len(req.items), tokens=tokens)
    vectors = finish(rows, req.dimensions, True)  # TEI's OpenAI route always normalizes
    if req.extra["encoding_format"] == "base64":  # little-endian float32 bytes, as OpenAI's clients decode them
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        data = list(vectors)
    served = state.settings.served_model_name or state.model.model_name_or_path
    return json_response(
        {
            "object": "list",
            "data": [{"object": "embedding", "embedding": item, "index": i} for i, item in enumerate(data)],
            "model": served,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def similarity_field(index: int) -> str:
    return "inputs.source_sentence" if index == 0 else f"inputs.sentences[{index - 1}]"


async def similarity(state: ServerState, request: Request, stats: dict) -> Response:
    req = parse_similarity(await state.read_json(request), state.model, state.settings)
    rows, tokens = await state.embed(request, req, similarity_field)
    stats.update(inputs=len(req.items), tokens=tokens)
    rows = rows.astype(np.float64)
    norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
    scores = (rows[1:] @ rows[0]) / (norms[1:] * norms[0])  # cosine, as TEI's /similarity
    return json_response(scores.astype(np.float32))


async def tokenize(state: ServerState, request: Request, stats: dict) -> Response:
    texts, add_special, prompt_name = parse_tokenize(await state.read_json(request), state.settings)
    loop = asyncio.get_running_loop()
    tokens = await loop.run_in_executor(state.tokenizers, state.encoder.tokenize, texts, add_special, prompt_name)
    stats.update(inputs=len(texts), tokens=sum(len(t) for t in tokens))
    return json_response(tokens)


def engine_description(model) -> dict:
    """The kernel tier from ``model.engine_info`` when refimpl has it (an attribute, a method, a dict
    or a string), else what the model says of its engine and dtype."""
    info = getattr(model, "engine_info", None)
    try:
        info = info() if callable(info) else info
    except Exception as error:  # an informational field must never break /info
        info = f"unavailable ({type(error).__name__})"
    if info is None:
        info = {"engine": getattr(model, "engine", None)}
    return info if isinstance(info, dict) else {"description": str(info)}


def info_payload(state: ServerState) -> dict:
    """TEI's Info fields (router/src/lib.rs), then refimpl's own."""
    from refimpl import __version__

    model, settings = state.model, state.settings
    pooling = "+".join(model.pooling_config.modes)
    return {
        "model_id": model.model_name_or_path,
        "model_sha": None,
        "model_dtype": str(getattr(model, "dtype", "float32")),
        "served_model_name": settings.served_model_name or model.model_name_or_path,
        "model_type": {"embedding": {"pooling": pooling}},
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_input_length": model.max_seq_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_client_batch_size,
        "auto_truncate": settings.auto_truncate,
        "tokenization_workers": settings.tokenization_workers,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "embedding_dimension": model.get_sentence_embedding_dimension(),
        "normalized": bool(model.normalize),
        "pooling": list(model.pooling_config.modes),
        "prompts": dict(model.prompts or {}),
        "compute": str(getattr(model, "compute", settings.compute)),
        "engine_info": engine_description(model),
        "payload_limit": settings.payload_limit,
        "max_input_chars": state.encoder.max_chars,
    }


async def info(state: ServerState, request: Request, stats: dict) -> Response:
    return json_response(info_payload(state))


async def health(state: ServerState, request: Request, stats: dict) -> Response:
    if state.batcher is None or not state.batcher.ready or not state.batcher.alive:
        raise errors.unhealthy()
    return Response(status_code=200)


async def metrics(state: ServerState, request: Request, stats: dict) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(state: ServerState, request: Request, stats: dict) -> Response:
    from refimpl.apps.serve.openapi import document

    return json_response(document(state))


# path, methods, handler, is an inference route (counts against --max-concurrent-requests), needs the API key
ROUTES = [
    ("/embed", ["POST"], embed, True, True),
    ("/v1/embeddings", ["POST"], openai_embed, True, True),
    ("/embeddings", ["POST"], openai_embed, True, True),
    ("/similarity", ["POST"], similarity, True, True),
    ("/tokenize", ["POST"], tokenize, False, True),
    ("/info", ["GET"], info, False, True),
    ("/health", ["GET"], health, False, False),
    ("/metrics", ["GET"], metrics, False, False),
    ("/openapi.json", ["GET"], openapi, False, False),
]
