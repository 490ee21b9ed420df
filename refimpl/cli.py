"""Command line: ``refimpl encode ...`` (and the other subcommands).

    refimpl encode "첫 번째 문장" "두 번째 문장"            # JSON lines on stdout
    refimpl encode -i sentences.txt -o embeddings.npy      # one sentence per line
    cat sentences.txt | refimpl encode -o out.jsonl --model ./my-model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .files import DEFAULT_MODEL


def _add_model_arguments(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"Hub id or local directory (default: {DEFAULT_MODEL})")
    group.add_argument("--revision", help="Hub branch, tag or commit")
    group.add_argument("--cache-folder", help="Hugging Face cache directory")
    group.add_argument("--local-files-only", action="store_true", help="never contact the Hub (also: HF_HUB_OFFLINE=1)")
    group.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    group.add_argument("--threads", type=int, help="threads for BLAS and kernels (default: all cores)")


def load_model(args):
    from .model import SentenceTransformer

    return SentenceTransformer(
        args.model, revision=args.revision, cache_folder=args.cache_folder,
        local_files_only=args.local_files_only, dtype=args.dtype, threads=args.threads,
    )


def read_lines(path: str | None) -> list[str]:
    """One sentence per line (a trailing newline does not make an extra sentence); '-' is stdin."""
    if path is None or path == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SystemExit(f"refimpl: {path}: no such file") from None
        except UnicodeDecodeError as error:
            raise SystemExit(f"refimpl: {path}: not UTF-8 text ({error})") from None
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def _inputs(args) -> list[str]:
    if args.texts and args.input:
        raise SystemExit("refimpl: give sentences as arguments or with -i FILE, not both")
    if args.texts:
        return list(args.texts)
    if args.input is None and sys.stdin.isatty():
        raise SystemExit("refimpl: no sentences: pass them as arguments, with -i FILE, or on stdin")
    return read_lines(args.input)


def write_embeddings(embeddings, texts, output: str | None):
    import numpy as np

    if output is None or output == "-":
        for row in embeddings:
            sys.stdout.write(json.dumps([float(v) for v in row]) + "\n")
        return
    if output.endswith(".npy"):
        np.save(output, embeddings)
    elif output.endswith(".jsonl"):
        with open(output, "w", encoding="utf-8") as handle:
            for text, row in zip(texts, embeddings):
                handle.write(json.dumps({"text": text, "embedding": [float(v) for v in row]}, ensure_ascii=False) + "\n")
    else:
        raise SystemExit(f"refimpl: {output}: the output must end in .npy or .jsonl")


def cmd_encode(args):
    texts = _inputs(args)
    if args.output and not args.output.endswith((".npy", ".jsonl")) and args.output != "-":
        raise SystemExit(f"refimpl: {args.output}: the output must end in .npy or .jsonl")
    model = load_model(args)
    embeddings = model.encode(
        texts, batch_size=args.batch_size, normalize_embeddings=args.normalize, show_progress_bar=args.progress,
    )
    write_embeddings(embeddings, texts, args.output)
    if args.output and args.output != "-":
        print(f"{len(texts)} embeddings of dimension {embeddings.shape[1]} written to {args.output}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refimpl", description="Sentence embeddings in NumPy, no PyTorch.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    encode = sub.add_parser("encode", help="embed sentences", description="Embed sentences; one per line from -i FILE or stdin.")
    encode.add_argument("texts", nargs="*", metavar="TEXT", help="sentences to embed")
    encode.add_argument("-i", "--input", metavar="FILE", help="read sentences from FILE, one per line ('-': stdin)")
    encode.add_argument("-o", "--output", metavar="OUT", help="write OUT.npy or OUT.jsonl (default: JSON lines on stdout)")
    encode.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    encode.add_argument("--batch-size", type=int, default=32)
    encode.add_argument("--progress", action="store_true", help="show a progress bar")
    _add_model_arguments(encode)
    encode.set_defaults(func=cmd_encode)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="refimpl: %(message)s")
    from .errors import RefimplError

    try:
        args.func(args)
    except (RefimplError, TypeError, ValueError) as error:
        raise SystemExit(f"refimpl: {error}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
