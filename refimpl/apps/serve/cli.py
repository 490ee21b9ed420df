"""``refimpl serve``: parse the options, take the port, load the model, serve until SIGTERM.

The port is taken before the model loads (a taken port fails in a second, not after a
minute of loading); the socket listens only once the app runs. Every startup failure is
one line on stderr and exit status 1; SIGTERM or Ctrl-C stops accepting connections,
lets in-flight requests finish (up to --shutdown-timeout seconds) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket

from refimpl.apps.arguments import model_options
from refimpl.apps.serve.settings import Settings, add_arguments, from_args

logger = logging.getLogger("refimpl.serve")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from refimpl import DEFAULT_MODEL

    parser = parser or argparse.ArgumentParser(
        prog="refimpl serve", description="Serve sentence embeddings over HTTP (TEI- and OpenAI-compatible routes)."
    )
    add_arguments(parser, DEFAULT_MODEL)
    return parser


def fail(message: str):
    raise SystemExit(f"refimpl serve: {message}")


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket, or exit with one line saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
    # without it every response (headers, then body) waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse TIME_WAIT, never a live port
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        hint = " (another server is using it; pick another --port)" if error.errno == 98 else ""
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}")
    sock.set_inheritable(True)
    return sock


def load_model(args):
    from refimpl import SentenceTransformer
    from refimpl.errors import RefimplError

    try:
        model = SentenceTransformer(args.model, **model_options(args))
    except (RefimplError, OSError, ValueError, KeyError, ImportError, TypeError) as error:
        fail(f"cannot load model {args.model}: {error}")
    try:  # a model that cannot embed one sentence must not start a server
        model.embed_batch(model.tokenize_batch(["warm-up"]))
    except Exception as error:
        fail(f"model {args.model} loaded but cannot embed: {type(error).__name__}: {error}")
    return model


def run(model, settings: Settings, sock: socket.socket):
    import uvicorn

    from refimpl.apps.serve.app import create_app

    try:
        app = create_app(model, settings)
    except ValueError as error:
        fail(str(error))
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout,
        server_header=False,
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    logger.info(
        "listening on http://%s:%d (model %s)", host if ":" not in host else f"[{host}]", port, model.model_name_or_path
    )
    # uvicorn re-raises the signal that stopped it once it is done; a handler of our own makes
    # that a no-op, so a graceful SIGTERM ends with status 0 rather than death by signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    if not server.started:
        fail("the server did not start (see the log above)")


def configure_logging(level: str):
    """INFO lines of refimpl.serve even under `refimpl`'s own WARNING-level logging setup."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s refimpl serve %(levelname)s: %(message)s")
    logger.setLevel(getattr(logging, level.upper()))


def serve(args: argparse.Namespace) -> int:
    """Everything after parsing; `refimpl serve` (refimpl/apps/cli.py, cmd_serve) calls this with its own parse."""
    settings = from_args(args)
    configure_logging(settings.log_level)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        fail('the server needs its extra: pip install "refimpl[serve]"')
    sock = bind(settings.host, settings.port)
    model = load_model(args)
    try:
        run(model, settings, sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def main(argv=None, parser: argparse.ArgumentParser | None = None) -> int:
    return serve(build_parser(parser).parse_args(argv))
