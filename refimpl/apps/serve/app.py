"""The app factory: ``create_app(model, settings)`` -> a Starlette ASGI app.

Starlette is a small ASGI toolkit (routing, requests, responses, lifespan) with no
validation layer or dependency injection to work around; uvicorn is the standard ASGI
server (HTTP/1.1 via h11 or httptools, graceful shutdown on SIGTERM). Together they are
two pure-Python wheels; request checking is our own (inputs.py), so every refusal has
TEI's status code and error body.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from refimpl.apps.serve import errors
from refimpl.apps.serve.batcher import Batcher
from refimpl.apps.serve.routes import ROUTES
from refimpl.apps.serve.settings import Settings
from refimpl.apps.serve.state import ClientGone, ServerState, error_response

logger = logging.getLogger("refimpl.serve")


def _wrap(state: ServerState, handler, inference: bool, protected: bool):
    """Auth, the concurrency limit, error bodies, metrics and one log line around a handler."""

    async def endpoint(request: Request) -> Response:
        began, path = time.perf_counter(), request.url.path
        stats, acquired, outcome = {"inputs": 0, "tokens": 0}, False, None
        if path not in ("/metrics", "/health"):
            state.metrics.requests.inc(route=path)
        try:
            if protected:
                state.check_key(request)
            if inference:
                if state.in_flight >= state.settings.max_concurrent_requests:
                    raise errors.overloaded()
                state.in_flight, acquired = state.in_flight + 1, True
                state.metrics.in_flight.set(state.in_flight)
            response = await handler(state, request, stats)
        except errors.ApiError as error:
            response, outcome = error_response(error, path), error.metric
        except (ClientGone, ClientDisconnect):
            response, outcome = Response(status_code=499), "cancelled"  # nobody reads it; logged as nginx does
        except Exception as error:  # a bug: answer JSON, log the traceback, never send it
            logger.exception("unexpected error on %s %s", request.method, path)
            response = error_response(errors.ApiError(500, "Backend", f"internal error ({type(error).__name__})"), path)
            outcome = "internal"
        finally:
            if acquired:
                state.in_flight -= 1
                state.metrics.in_flight.set(state.in_flight)
        _account(state, request, response, stats, outcome, began)
        return response

    return endpoint


def _account(state: ServerState, request: Request, response: Response, stats: dict, outcome, began: float):
    elapsed = time.perf_counter() - began
    path, quiet = request.url.path, request.url.path in ("/metrics", "/health")
    if outcome is not None:
        state.metrics.failure.inc(err=outcome)
    elif not quiet:
        state.metrics.success.inc(route=path)
        state.metrics.inputs.inc(stats["inputs"])
        state.metrics.tokens.inc(stats["tokens"])
        state.metrics.duration.observe(elapsed)
    log = logger.debug if quiet and response.status_code < 400 else logger.info
    log(
        "%s %s %d inputs=%d tokens=%d %.1fms%s",
        request.method,
        path,
        response.status_code,
        stats["inputs"],
        stats["tokens"],
        elapsed * 1000,
        f" ({outcome})" if outcome else "",
    )


def _http_error(state: ServerState):
    async def handler(request: Request, exc: HTTPException) -> Response:
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "Validation")
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        state.metrics.failure.inc(err=kind.lower())
        logger.info("%s %s %d (%s)", request.method, request.url.path, exc.status_code, kind)
        response = error_response(errors.ApiError(exc.status_code, kind, message), request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    return handler


def create_app(model, settings: Settings | None = None) -> Starlette:
    """The server for a loaded ``refimpl.SentenceTransformer``; /health says 200 once the
    batching worker has run a warm-up embedding."""
    settings = settings or Settings()
    if settings.max_batch_tokens < model.max_seq_length:
        raise ValueError(
            f"--max-batch-tokens {settings.max_batch_tokens} is below the model's max_seq_length "
            f"{model.max_seq_length}: one full-length input would not fit a forward pass"
        )
    state = ServerState(model, settings)

    @asynccontextmanager
    async def lifespan(app):
        state.batcher = Batcher(model, settings, state.metrics)
        state.batcher.start()
        try:
            yield
        finally:
            await state.batcher.close()  # uvicorn has already waited for in-flight requests
            state.close()

    routes = [
        Route(path, _wrap(state, handler, inference, protected), methods=methods)
        for path, methods, handler, inference, protected in ROUTES
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error(state)})
    app.state.server = state
    return app
