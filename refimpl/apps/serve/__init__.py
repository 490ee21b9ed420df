"""``refimpl serve``: an embedding HTTP server (TEI- and OpenAI-compatible) with dynamic batching.

    refimpl serve --model ./my-model --port 8080
    curl -s localhost:8080/embed -H 'Content-Type: application/json' -d '{"inputs": ["hello"]}'

Needs the ``serve`` extra (Starlette and uvicorn); the core library never imports it, and
importing this package does not import them either until ``create_app`` is used.
"""

from refimpl.apps.serve.cli import main
from refimpl.apps.serve.settings import Settings

__all__ = ["Settings", "create_app", "main"]


def __getattr__(name):
    if name == "create_app":
        from refimpl.apps.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
