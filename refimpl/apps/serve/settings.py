"""`refimpl serve` settings: one dataclass, and the command line that fills it.

Defaults follow Text Embeddings Inference (TEI) where TEI has the same knob
(router/src/main.rs): --max-concurrent-requests 512, --max-batch-tokens 16384,
--max-client-batch-size 32, --payload-limit 2000000 bytes, and a per-input
character bound of max_input_length x 250. TEI listens on 0.0.0.0:3000; this server
listens on 127.0.0.1:8080 unless told otherwise, so nothing is exposed by accident.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from refimpl.apps.arguments import add_model_arguments as add_common_model_arguments
from refimpl.apps.arguments import count_argument, port_argument, seconds_argument

CHARS_PER_TOKEN = 250  # TEI's MAX_CHAR_MULTIPLIER (core/src/tokenization.rs)


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 32
    payload_limit: int = 2_000_000
    max_input_chars: int | None = None  # None: max_seq_length * CHARS_PER_TOKEN, as TEI
    api_key: str | None = None
    auto_truncate: bool = False
    served_model_name: str | None = None
    tokenization_workers: int = max(1, min(4, os.cpu_count() or 1))
    compute: str = "float32"
    shutdown_timeout: float = 30.0
    access_log: bool = False
    log_level: str = "info"
    # Not a user knob: the tests slow every forward pass down to hold requests in the queue.
    debug_forward_delay: float = 0.0

    def input_chars(self, max_seq_length: int) -> int:
        return self.max_input_chars or max_seq_length * CHARS_PER_TOKEN


def add_arguments(parser: argparse.ArgumentParser, default_model: str):
    """The serve options, on ``parser`` (``refimpl serve`` adds them to its subcommand)."""
    defaults = Settings()
    add_model_arguments(parser, default_model)
    add_server_arguments(parser, defaults)
    add_limit_arguments(parser, defaults)


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str):
    """Which model, and how it computes: the options of every refimpl command that loads one, and the name it
    is served under."""
    model = add_common_model_arguments(parser, default_model)
    model.add_argument("--served-model-name", help="the `model` name /v1/embeddings reports (default: --model)")


def add_server_arguments(parser: argparse.ArgumentParser, d: Settings):
    """Where to listen, the API key, shutdown and logging."""
    net = parser.add_argument_group("server")
    net.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    net.add_argument(
        "--port", "-p", type=port_argument, default=d.port, help=f"port (default {d.port}; 0: any free port)"
    )
    net.add_argument(
        "--api-key",
        default=os.environ.get("REFIMPL_API_KEY"),
        help="require `Authorization: Bearer KEY` (default: $REFIMPL_API_KEY, else no key)",
    )
    net.add_argument(
        "--shutdown-timeout",
        type=seconds_argument,
        default=d.shutdown_timeout,
        help=f"seconds to finish in-flight requests after SIGTERM (default {d.shutdown_timeout:g})",
    )
    net.add_argument("--access-log", action="store_true", help="also log uvicorn's access lines (default off)")
    net.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    net.add_argument("--debug-forward-delay", type=float, default=0.0, help=argparse.SUPPRESS)


def add_limit_arguments(parser: argparse.ArgumentParser, d: Settings):
    """Batching and the request limits (defaults as TEI's)."""
    limits = parser.add_argument_group("batching and limits (defaults as TEI's)")
    limits.add_argument(
        "--max-batch-tokens",
        type=count_argument,
        default=d.max_batch_tokens,
        help=f"tokens per forward pass (default {d.max_batch_tokens})",
    )
    limits.add_argument(
        "--max-concurrent-requests",
        type=count_argument,
        default=d.max_concurrent_requests,
        help=f"requests in flight before 429 Overloaded (default {d.max_concurrent_requests})",
    )
    limits.add_argument(
        "--max-client-batch-size",
        type=count_argument,
        default=d.max_client_batch_size,
        help=f"inputs per request before 413 (default {d.max_client_batch_size})",
    )
    limits.add_argument(
        "--payload-limit",
        type=count_argument,
        default=d.payload_limit,
        help=f"request body bytes before 413 (default {d.payload_limit})",
    )
    limits.add_argument(
        "--max-input-chars",
        type=count_argument,
        help=f"characters per input before 413 (default: max_seq_length x {CHARS_PER_TOKEN})",
    )
    limits.add_argument(
        "--auto-truncate",
        action="store_true",
        help="truncate over-long inputs when a request does not say (default: refuse them with 413)",
    )
    limits.add_argument(
        "--tokenization-workers",
        type=count_argument,
        default=d.tokenization_workers,
        help=f"threads that tokenize (default {d.tokenization_workers})",
    )


def from_args(args: argparse.Namespace) -> Settings:
    names = [f for f in Settings.__dataclass_fields__ if hasattr(args, f)]
    return Settings(**{name: getattr(args, name) for name in names})
