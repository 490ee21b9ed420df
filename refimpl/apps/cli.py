"""Command line.

refimpl encode "첫 번째 문장" "두 번째 문장"            # JSON lines on stdout
refimpl encode -i sentences.txt -o embeddings.npy      # one sentence per line
cat sentences.txt | refimpl encode -o out.jsonl --model ./my-model
refimpl similarity "오늘 날씨가 좋다" "날씨가 맑다"
refimpl search --corpus passages.txt --top-k 5 "질문 하나" "질문 둘"
refimpl eval-sts klue-sts-v1.1_dev.json [--json]
refimpl convert pytorch_model.bin model.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from refimpl.apps.arguments import (
    add_model_arguments,
    changed_model_options,
    count_argument,
    model_options,
    tolerance_argument,
)
from refimpl.checks import DTYPES
from refimpl.engines import DEFAULT_ENGINE, ENGINES
from refimpl.io import BOM, split_lines, write_atomically
from refimpl.io import read_lines as read_text_lines
from refimpl.load.locate import DEFAULT_MODEL


def load_model(args):
    from refimpl.model import SentenceTransformer

    return SentenceTransformer(args.model, **model_options(args))


def read_lines(path: str | None) -> list[str]:
    """One sentence per line, by the rule every line reader shares (``refimpl.io.split_lines``); '-' is stdin."""
    if path is None or path == "-":
        return split_lines(sys.stdin.read().removeprefix(BOM))
    return read_text_lines(path)


def check_output(path: str | None, suffixes: tuple[str, ...]):
    """Refuse an output path before any work is done: wrong suffix, a directory, a missing folder."""
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise SystemExit(f"refimpl: {path}: is a directory; give a file name")
    if not path.endswith(suffixes):
        raise SystemExit(f"refimpl: {path}: the output must end in {' or '.join(suffixes)}")
    if not target.resolve().parent.is_dir():
        raise SystemExit(f"refimpl: {path}: the folder {target.resolve().parent} does not exist")


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
    elif output.endswith(".npy"):
        write_atomically(output, lambda handle: np.save(handle, embeddings))
    else:

        def write_jsonl(handle):
            for text, row in zip(texts, embeddings):
                line = json.dumps({"text": text, "embedding": [float(v) for v in row]}, ensure_ascii=False) + "\n"
                handle.write(line.encode("utf-8"))

        write_atomically(output, write_jsonl)


def cmd_encode_distributed(args):
    """-i FILE -o OUT.npy on a Dask cluster: resumable partitions (refimpl.dask.encode_file)."""
    if not args.input or args.input == "-" or args.texts:
        raise SystemExit("refimpl: --scheduler/--workers need the input as a file: -i FILE")
    if not args.output or not args.output.endswith(".npy"):
        raise SystemExit("refimpl: --scheduler/--workers write a .npy file: -o OUT.npy")
    check_output(args.output, (".npy",))
    if not Path(args.input).is_file():
        raise SystemExit(
            f"refimpl: {args.input}: no such file" + (" (it is a directory)" if Path(args.input).is_dir() else "")
        )
    try:
        from distributed import Client

        from refimpl.dask import encode_file, local_cluster
    except ImportError:
        raise SystemExit('refimpl: distributed encoding needs Dask: pip install "refimpl[dask]"') from None
    if args.threads is not None:
        raise SystemExit(
            "refimpl: --threads is not used with --scheduler/--workers: each worker's threads are planned from its "
            "host's cores (refimpl.dask.plan_kernel_threads)"
        )
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model  # workers have other cwds
    model_kwargs = changed_model_options(args)  # the run's fingerprint records these (resuming compares them)
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    client = Client(args.scheduler) if args.scheduler else local_cluster(args.workers)
    try:
        out = encode_file(
            args.input,
            args.output,
            model,
            model_kwargs=model_kwargs,
            client=client,
            batch_size=args.batch_size,
            lines_per_partition=args.partition_lines,
            progress=args.progress,
            normalize_embeddings=args.normalize,
        )
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and not args.scheduler:
            cluster.close()
    import numpy as np

    shape = np.load(out, mmap_mode="r").shape
    print(f"{shape[0]} embeddings of dimension {shape[1] if len(shape) > 1 else 0} written to {out}", file=sys.stderr)


def cmd_encode(args):
    if args.scheduler or args.workers is not None:
        return cmd_encode_distributed(args)
    check_output(args.output, (".npy", ".jsonl"))
    texts = _inputs(args)
    model = load_model(args)
    embeddings = model.encode(
        texts, batch_size=args.batch_size, normalize_embeddings=args.normalize, show_progress_bar=args.progress
    )
    write_embeddings(embeddings, texts, args.output)
    if args.output and args.output != "-":
        print(f"{len(texts)} embeddings of dimension {embeddings.shape[1]} written to {args.output}", file=sys.stderr)


def cmd_similarity(args):
    model = load_model(args)
    embeddings = model.encode([args.first, args.second])
    score = float(model.similarity(embeddings[:1], embeddings[1:])[0, 0])
    print(
        f"{score:.6f}"
        if not args.json
        else json.dumps({"similarity_fn_name": model.similarity_fn_name, "score": score})
    )


def cmd_search(args):
    import numpy as np

    from refimpl.apps.search_cache import corpus_cache_path, load_corpus_cache
    from refimpl.util import SIMILARITY, semantic_search

    corpus_path = Path(args.corpus)
    corpus = read_lines(args.corpus)
    if not corpus:
        raise SystemExit(f"refimpl: {args.corpus}: the corpus is empty")
    queries = list(args.queries) or read_lines(None)
    model = load_model(args)
    cache = corpus_cache_path(corpus_path, model)
    corpus_embeddings = None
    if cache.exists() and not args.no_cache:
        corpus_embeddings = load_corpus_cache(cache, len(corpus), model.get_sentence_embedding_dimension())
        if corpus_embeddings is not None:
            print(f"using cached corpus embeddings {cache}", file=sys.stderr)
    if corpus_embeddings is None:
        corpus_embeddings = model.encode(corpus, batch_size=args.batch_size, show_progress_bar=True)
        if not args.no_cache:
            try:
                write_atomically(cache, lambda handle: np.save(handle, corpus_embeddings))
            except OSError as error:
                print(f"refimpl: could not cache the corpus embeddings at {cache}: {error}", file=sys.stderr)
    query_embeddings = model.encode(queries, batch_size=args.batch_size)
    hits = semantic_search(
        query_embeddings, corpus_embeddings, top_k=args.top_k, score_function=SIMILARITY[model.similarity_fn_name]
    )
    if args.json:
        for query, query_hits in zip(queries, hits):
            print(
                json.dumps(
                    {"query": query, "hits": [dict(h, text=corpus[h["corpus_id"]]) for h in query_hits]},
                    ensure_ascii=False,
                )
            )
        return
    for query, query_hits in zip(queries, hits):
        print(f"query: {query}")
        for rank, hit in enumerate(query_hits, start=1):
            print(f"  {rank}. {hit['score']:.4f}  [{hit['corpus_id']}] {corpus[hit['corpus_id']]}")


def cmd_eval_sts(args):
    from refimpl.evaluation import evaluate_sts, format_table, load_sts

    first, second, scores = load_sts(args.file, label_key=args.label_key)
    model = load_model(args)
    metrics = evaluate_sts(model, first, second, scores, batch_size=args.batch_size)
    undefined = sorted(name for name, value in metrics.items() if value != value)
    if undefined:
        print(
            f"refimpl: warning: {', '.join(undefined)} undefined (constant scores); reported as null", file=sys.stderr
        )
    if args.json:
        print(
            json.dumps({name: (None if value != value else value) for name, value in metrics.items()}, allow_nan=False)
        )
    else:
        print(f"{args.file}: {len(scores)} pairs, model {args.model}")
        print(format_table(metrics))


def cmd_convert(args):
    from refimpl.formats.safetensors import write_safetensors
    from refimpl.formats.torch_bin import read_pytorch_bin

    if not Path(args.source).is_file():
        raise SystemExit(
            f"refimpl: {args.source}: no such file" + (" (it is a directory)" if Path(args.source).is_dir() else "")
        )
    check_output(args.target, (".safetensors",))
    # names kept; bfloat16 tensors are written as float32 (NumPy has no bfloat16)
    target = write_safetensors(read_pytorch_bin(args.source), args.target, metadata={"format": "pt"})
    print(f"wrote {target}", file=sys.stderr)


def cmd_verify(args):
    from refimpl.apps.verify import DEFAULT_SENTENCES, format_report, report

    sentences = read_lines(args.sentences) if args.sentences else DEFAULT_SENTENCES
    if not sentences:
        raise SystemExit(f"refimpl: {args.sentences}: no sentences")
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    result = report(args.model, sentences, dtypes, engine=args.engine, atol=args.atol)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    if not result["passed"]:
        raise SystemExit(1)


def cmd_explain(args):
    from refimpl.apps.explain import analyse, figures, html_page

    if len(args.sentences) > 2:
        raise SystemExit(f"refimpl: explain takes one or two sentences, got {len(args.sentences)}")
    if not args.png and not args.output:
        args.output = "explain.html"
    if args.output:
        check_output(args.output, (".html", ".htm"))
    head = None
    if args.head:
        try:
            layer, number = (int(part) for part in args.head.split(":"))
        except ValueError:
            raise SystemExit(f"refimpl: --head {args.head!r}: give LAYER:HEAD, e.g. 12:0") from None
        head = (layer - 1, number)
    model = load_model(args)
    if head is not None and not (
        0 <= head[0] < model.config.num_hidden_layers and 0 <= head[1] < model.config.num_attention_heads
    ):
        raise SystemExit(
            f"refimpl: --head {args.head}: the model has layers 1-{model.config.num_hidden_layers} "
            f"and heads 0-{model.config.num_attention_heads - 1}"
        )
    views = [analyse(model, text) for text in args.sentences]
    pngs = figures(views, model.pooling_config.modes, head)
    if args.png:
        folder = Path(args.png)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in pngs.items():
            write_atomically(folder / name, lambda handle, data=data: handle.write(data))
        print(f"{len(pngs)} figures written to {folder}", file=sys.stderr)
    if args.output:
        page = html_page(model, views, pngs).encode("utf-8")
        write_atomically(args.output, lambda handle: handle.write(page))
        print(f"wrote {args.output}", file=sys.stderr)


def _encode_arguments(encode):
    encode.add_argument("texts", nargs="*", metavar="TEXT", help="sentences to embed")
    encode.add_argument("-i", "--input", metavar="FILE", help="read sentences from FILE, one per line ('-': stdin)")
    encode.add_argument(
        "-o", "--output", metavar="OUT", help="write OUT.npy or OUT.jsonl (default: JSON lines on stdout)"
    )
    encode.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    encode.add_argument("--batch-size", type=count_argument, default=32)
    encode.add_argument("--progress", action="store_true", help="show a progress bar")
    distributed = encode.add_argument_group("distributed (Dask; needs refimpl[dask], -i FILE and -o OUT.npy)")
    distributed.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    distributed.add_argument(
        "--workers", type=count_argument, metavar="N", help="start a local cluster of N worker processes"
    )
    distributed.add_argument(
        "--partition-lines",
        type=count_argument,
        default=10_000,
        metavar="N",
        help="lines per partition, the unit of resuming (default 10000)",
    )


def _similarity_arguments(similarity):
    similarity.add_argument("first")
    similarity.add_argument("second")
    similarity.add_argument("--json", action="store_true")


def _search_arguments(search):
    search.add_argument("queries", nargs="*", metavar="QUERY", help="queries (default: one per line on stdin)")
    search.add_argument("--corpus", required=True, metavar="FILE")
    search.add_argument("--top-k", type=count_argument, default=10)
    search.add_argument("--batch-size", type=count_argument, default=32)
    search.add_argument("--no-cache", action="store_true", help="neither read nor write the embeddings cache")
    search.add_argument("--json", action="store_true", help="one JSON object per query")


def _eval_sts_arguments(sts):
    sts.add_argument("file")
    sts.add_argument("--label-key", default="label", help="KLUE label to use: label (default) or real-label")
    sts.add_argument("--batch-size", type=count_argument, default=16)
    sts.add_argument("--json", action="store_true", help="print one JSON object of the eight metrics")


def _verify_arguments(verify):
    verify.add_argument("model", help="a model directory or Hub id")
    verify.add_argument("--dtype", choices=(*DTYPES, "both"), default="both")
    verify.add_argument("--engine", choices=tuple(ENGINES), default=DEFAULT_ENGINE)
    verify.add_argument(
        "--sentences", metavar="FILE", help="one sentence per line (default: built-in Korean and English)"
    )
    verify.add_argument("--atol", type=tolerance_argument, help="one absolute tolerance (>= 0) for every row")
    verify.add_argument("--json", action="store_true", help="print the numbers as JSON")


def _explain_arguments(explain):
    explain.add_argument("sentences", nargs="+", metavar="SENTENCE", help="one or two sentences")
    explain.add_argument("-o", "--output", metavar="PAGE.html", help="the page (default explain.html, unless --png)")
    explain.add_argument("--png", metavar="DIR", help="write the figures as PNG files into DIR")
    explain.add_argument(
        "--head", metavar="LAYER:HEAD", help="the head to enlarge, e.g. 12:0 (default: last layer, head 0)"
    )


def _convert_arguments(convert):
    convert.add_argument("source", metavar="IN.bin")
    convert.add_argument("target", metavar="OUT.safetensors")


def cmd_serve(args):
    from refimpl.apps.serve.cli import serve

    serve(args)


def _serve_arguments(serve):
    from refimpl.apps.serve.settings import add_arguments

    add_arguments(serve, DEFAULT_MODEL)  # the shared model group plus --served-model-name, and the server's limits


def version_line() -> str:
    from refimpl import __version__

    return f"refimpl {__version__} (`refimpl info` names the CPU features and the kernels it runs)"


def cmd_info(args):
    """The version, the CPU's features, the kernel tier and what each compute mode runs (no model loaded)."""
    import platform

    from refimpl import __version__
    from refimpl.engines.fast.kernels.cpu import describe
    from refimpl.run.threads import blas_info

    lines = [f"refimpl {__version__}, Python {platform.python_version()}, {platform.machine()}", describe()]
    lines += [f"BLAS: {i.get('internal_api')} {i.get('version')} ({i.get('architecture')})" for i in blas_info()]
    print("\n".join(lines))


# name, function, its arguments, whether it loads a model, help, description
COMMANDS = [
    (
        "encode",
        cmd_encode,
        _encode_arguments,
        True,
        "embed sentences",
        "Embed sentences; one per line from -i FILE or stdin.",
    ),
    (
        "similarity",
        cmd_similarity,
        _similarity_arguments,
        True,
        "score two sentences with the model's similarity function",
        None,
    ),
    (
        "search",
        cmd_search,
        _search_arguments,
        True,
        "semantic search in a corpus file",
        "Embed the corpus (one passage per line) once, cache the embeddings beside it (.npy keyed by the model's files "
        "and the corpus's hash), and print the top-k passages of each query.",
    ),
    (
        "eval-sts",
        cmd_eval_sts,
        _eval_sts_arguments,
        True,
        "Pearson/Spearman on an STS set, as sentence-transformers' EmbeddingSimilarityEvaluator",
        "FILE: KLUE-STS JSON (sentence1, sentence2, labels.label) or CSV/TSV with sentence1, sentence2, score.",
    ),
    (
        "verify",
        cmd_verify,
        _verify_arguments,
        False,
        "check refimpl against transformers on a model, layer by layer (needs refimpl[verify])",
        "Run the same sentences through refimpl and transformers / sentence-transformers and print, per layer, the max "
        "and mean |difference| and each side's float32 error against float64. Exits 1 when a difference is over "
        "tolerance (float32: 1e-5 per layer, 2e-5 on the output; float64: 1e-10; each times the layer's largest "
        "magnitude when it is over 1).",
    ),
    (
        "explain",
        cmd_explain,
        _explain_arguments,
        True,
        "an HTML page of what the model does with one or two sentences (needs refimpl[viz])",
        "Tokens, attention of every layer and head, how each layer moves the tokens, how pooling weighs them, and for "
        "two sentences which token pairs make their similarity; one self-contained page.",
    ),
    ("convert", cmd_convert, _convert_arguments, False, "pytorch_model.bin -> model.safetensors, without torch", None),
    (
        "serve",
        cmd_serve,
        _serve_arguments,
        False,
        "an embedding server for TEI and OpenAI clients (needs refimpl[serve])",
        "Serve the model over HTTP: TEI's /embed, /similarity, /tokenize, /info, /health, /metrics and OpenAI's "
        "/v1/embeddings, with dynamic batching. See docs/serving.md.",
    ),
    ("info", cmd_info, lambda parser: None, False, "the version, CPU features and kernels refimpl runs", None),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refimpl", description="Sentence embeddings in NumPy, no PyTorch.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, function, arguments, loads_model, help_text, description in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=description or help_text)
        arguments(command)
        if loads_model:
            add_model_arguments(command)
        command.set_defaults(func=function)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="refimpl: %(message)s")
    from refimpl.errors import RefimplError

    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`refimpl encode ... | head`): stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except (RefimplError, TypeError, ValueError, FloatingPointError) as error:
        raise SystemExit(f"refimpl: {error}") from None
    except OSError as error:
        raise SystemExit(
            f"refimpl: {error.filename + ': ' if error.filename else ''}{error.strerror or error}"
        ) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
