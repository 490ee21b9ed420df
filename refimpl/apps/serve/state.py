"""What the routes share: the model, settings, metrics, tokenizer pool, batcher, and the
helpers every route uses (body limit, API key, disconnect watch, JSON responses)."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from refimpl.apps.serve import errors
from refimpl.apps.serve.encoder import InputEncoder
from refimpl.apps.serve.metrics import Metrics

try:  # optional: 10-20x faster JSON for vectors; the standard library otherwise
    import orjson
except ImportError:  # pragma: no cover
    orjson = None


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def json_response(payload, status: int = 200) -> Response:
    if orjson is not None:
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY, default=_numpy_default)
    else:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, default=_numpy_default).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json")


def _numpy_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def error_response(error: errors.ApiError, path: str) -> Response:
    response = json_response(error.body(path), error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _until_disconnect(request: Request):
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ServerState:
    def __init__(self, model, settings):
        self.model, self.settings = model, settings
        self.metrics = Metrics(model.max_seq_length)
        self.encoder = InputEncoder(model, settings)
        self.tokenizers = ThreadPoolExecutor(settings.tokenization_workers, thread_name_prefix="refimpl-tokenize")
        self.batcher = None  # made in the lifespan: it needs the running loop
        self.in_flight = 0
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # our threads already run tokenizers in parallel

    def check_key(self, request: Request):
        key = self.settings.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {key}".encode()):
            raise errors.unauthorized()

    async def read_json(self, request: Request) -> dict:
        from refimpl.apps.serve.inputs import parse_json

        limit = self.settings.payload_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise errors.too_large(
                f"the request body has {declared} bytes; the limit is {limit} (--payload-limit)", "payload"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise errors.too_large(f"the request body is over {limit} bytes (--payload-limit)", "payload")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    async def race(self, request: Request, awaitable, watcher: asyncio.Future):
        """``awaitable``'s result, unless the client disconnects first (then it is cancelled)."""
        task = asyncio.ensure_future(awaitable)
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise ClientGone()

    async def embed(self, request: Request, embed_request, name="inputs") -> tuple[np.ndarray, int]:
        """[B, D] sentence vectors (no normalization) and the tokens they took."""
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(_until_disconnect(request))
        try:
            work = loop.run_in_executor(self.tokenizers, self._encode, embed_request, name)
            encoded, prompt_length = await self.race(request, work, watcher)
            try:
                rows = await self.race(request, self.batcher.submit(encoded, prompt_length), watcher)
            except (ClientGone, errors.ApiError):
                raise
            except Exception as error:
                raise errors.backend(f"{type(error).__name__}: {error}") from None
        finally:
            watcher.cancel()
        for length in encoded.lengths.tolist():
            self.metrics.input_length.observe(length)
        return rows, int(encoded.lengths.sum())

    def _encode(self, embed_request, name):
        try:
            return self.encoder.encode(embed_request, name)
        except (TypeError, ValueError) as error:  # refimpl's own input checks
            raise errors.validation(str(error)) from None

    def close(self):
        self.tokenizers.shutdown(wait=False, cancel_futures=True)
