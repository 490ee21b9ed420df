"""The command-line rules every refimpl command shares: argument types, and the model options.

``refimpl encode`` (and the other commands that load a model) and ``refimpl serve`` take the same
model options with the same checks, and build the model from them the same way (``model_options``;
``encode --workers`` passes them on to Dask's workers, without ``--threads``, which it refuses). Kept
light: no engine and no model code are imported, so ``--help`` and a usage error cost little.
"""

from __future__ import annotations

import argparse
import math

from refimpl.checks import COMPUTE_MODES, DTYPES
from refimpl.load.locate import DEFAULT_MODEL


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def count_argument(text: str) -> int:
    """argparse type of every count refimpl takes (threads, batch size, workers, lines, limits): a positive integer."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _finite_nonnegative(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: {what} is a finite number >= 0")
    return value


def tolerance_argument(text: str) -> float:
    """argparse type of a tolerance: a finite number >= 0 (NaN would make every comparison fail)."""
    return _finite_nonnegative(text, "a tolerance")


def seconds_argument(text: str) -> float:
    """argparse type of a duration in seconds: a finite number >= 0."""
    return _finite_nonnegative(text, "a duration in seconds")


def port_argument(text: str) -> int:
    """argparse type of a TCP port: an integer 0-65535 (0: any free port)."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL):
    """Which model, and how it computes: the "model" group (returned, so a command can add to it)."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", "-m", default=default_model, help=f"Hub id or local directory (default: {default_model})"
    )
    group.add_argument("--revision", help="Hub branch, tag or commit")
    group.add_argument("--cache-folder", help="Hugging Face cache directory")
    group.add_argument("--local-files-only", action="store_true", help="never contact the Hub (also: HF_HUB_OFFLINE=1)")
    group.add_argument("--dtype", choices=DTYPES, default="float32")
    group.add_argument(
        "--compute", choices=COMPUTE_MODES, default="float32", help="the fast engine's arithmetic (default float32)"
    )
    group.add_argument(
        "--threads", type=count_argument, help="threads for the matrix products and kernels (default: all cores)"
    )
    return group


def model_options(args: argparse.Namespace) -> dict:
    """SentenceTransformer's keyword arguments from the model options (the model itself is ``args.model``)."""
    return dict(
        revision=args.revision,
        cache_folder=args.cache_folder,
        local_files_only=args.local_files_only,
        dtype=args.dtype,
        compute=args.compute,
        threads=args.threads,
    )


def changed_model_options(args: argparse.Namespace) -> dict:
    """``model_options`` without the ones left at their defaults (the defaults read from the model group
    itself): what a run must record to be repeated, and nothing that changes with refimpl's defaults."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    defaults = model_options(parser.parse_args([]))
    return {key: value for key, value in model_options(args).items() if value != defaults[key]}
