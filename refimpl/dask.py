"""Embed corpora larger than one machine with Dask (``pip install "refimpl[dask]"``).

    from refimpl.dask import encode_bag, encode_dataframe
    embeddings = encode_bag(dask.bag.read_text("passages-*.txt").map(str.strip))    # dask array [N, D]
    embeddings = encode_dataframe(ddf, column="text").compute()

    refimpl encode -i BIG.txt -o OUT.npy --workers 2                 # a local cluster
    refimpl encode -i BIG.txt -o OUT.npy --scheduler tcp://HOST:8786  # a running cluster

Each worker process loads the model once, the first time one of its tasks needs it, from the
model id or directory (so workers need the files or Hub access, never a copy from the client),
and keeps it for later tasks. Threads are planned so that worker threads x BLAS threads never
exceed a host's cores. Results are in input order and equal single-process ``encode`` (the fast
engine's packing makes an embedding independent of its neighbours). ``encode_file`` writes one
.npy per partition plus a manifest, so a run that stops (a worker or the client dies) resumes
without recomputing finished partitions; a lost worker's tasks are rerun by Dask itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np

from .checks import streamable_encode_kwargs
from .files import DEFAULT_MODEL

_MODELS: dict = {}  # this process's loaded models, by model and options
_LOCK = threading.Lock()


def _key(model, model_kwargs) -> str:
    return json.dumps([str(model), model_kwargs or {}], sort_keys=True, default=str)


def worker_model(model=DEFAULT_MODEL, model_kwargs=None, blas_threads=None):
    """This process's copy of the model, loaded on first use and kept for later tasks."""
    key = _key(model, model_kwargs)
    with _LOCK:
        if key not in _MODELS:
            from .model import SentenceTransformer
            from .threads import set_threads

            if blas_threads:
                set_threads(blas_threads)
            _MODELS[key] = SentenceTransformer(model, **(model_kwargs or {}))
        return _MODELS[key]


def encode_texts(texts, model, model_kwargs=None, blas_threads=None, batch_size=32, encode_kwargs=None) -> np.ndarray:
    """Embed one partition on a worker: [len(texts), D], also for an empty partition."""
    instance = worker_model(model, model_kwargs, blas_threads)
    texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    out = instance.encode(texts, batch_size=batch_size, **(encode_kwargs or {}))
    if len(texts) == 0:
        probe = instance.encode(["."], **(encode_kwargs or {}))
        out = np.empty((0, probe.shape[1]), probe.dtype)
    return out


def _probe(model, model_kwargs, blas_threads, encode_kwargs):
    out = encode_texts(["."], model, model_kwargs, blas_threads, 1, encode_kwargs)
    return out.shape[1], out.dtype.str


def _default_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def plan_blas_threads(client) -> int:
    """BLAS threads per worker such that, on every host, worker threads x BLAS threads <= cores."""
    workers = client.scheduler_info()["workers"]
    if not workers:
        return 1
    cores = client.run(os.cpu_count)
    per_host: dict = {}
    for address, info in workers.items():
        host = info.get("host", address)
        threads, host_cores = per_host.get(host, (0, cores.get(address) or 1))
        per_host[host] = (threads + info.get("nthreads", 1), host_cores)
    return max(1, min(host_cores // max(threads, 1) for threads, host_cores in per_host.values()))


def _encode_delayed(partitions, model, batch_size, model_kwargs, encode_kwargs):
    import dask
    import dask.array as da

    streamable_encode_kwargs(encode_kwargs, "between partitions")
    client = _default_client()
    blas = plan_blas_threads(client) if client is not None else None
    dim, dtype = dask.delayed(_probe, pure=True)(model, model_kwargs, blas, encode_kwargs).compute()
    encode = dask.delayed(encode_texts, pure=True)
    arrays = [
        da.from_delayed(encode(part, model, model_kwargs, blas, batch_size, encode_kwargs), shape=(np.nan, dim), dtype=dtype)
        for part in partitions
    ]
    if not arrays:
        return da.empty((0, dim), dtype=dtype)
    return da.concatenate(arrays, axis=0)


def encode_bag(bag, model=DEFAULT_MODEL, batch_size: int = 32, model_kwargs: dict | None = None, **encode_kwargs):
    """A dask array [N, D] of the bag's strings, one row per item, in order (chunk sizes unknown
    until computed). ``model_kwargs`` go to ``SentenceTransformer``, the rest to ``encode``."""
    return _encode_delayed(bag.to_delayed(), model, batch_size, model_kwargs, encode_kwargs)


def encode_dataframe(ddf, column: str = "text", model=DEFAULT_MODEL, batch_size: int = 32, model_kwargs: dict | None = None,
                     **encode_kwargs):
    """A dask array [N, D] of ``ddf[column]``, one row per row of the dataframe, in order."""
    if column not in ddf.columns:
        raise KeyError(f"the dataframe has no column {column!r}; its columns are {list(ddf.columns)}")
    return _encode_delayed(ddf[column].to_delayed(), model, batch_size, model_kwargs, encode_kwargs)


# --- a text file to one .npy, in resumable partitions ------------------------------------------------


def line_ranges(path: Path, lines_per_partition: int) -> list[tuple[int, int, int]]:
    """(start, end, lines) of each partition: byte ranges of ``lines_per_partition`` lines, cut
    just after a newline, and how many sentences each holds."""
    ranges, start, position, lines = [], 0, 0, 0
    with open(path, "rb") as handle:
        for line in handle:
            position += len(line)
            lines += 1
            if lines == lines_per_partition:
                ranges.append((start, position, lines))
                start, lines = position, 0
    if position > start:
        ranges.append((start, position, lines))
    return ranges


def read_range(path, start: int, end: int) -> list[str]:
    """The lines in bytes [start, end), split as ``refimpl encode -i`` splits a file."""
    with open(path, "rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode("utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n")


def encode_file_part(path, start, end, part_file, model, model_kwargs, blas_threads, batch_size, encode_kwargs) -> int:
    """One partition: read its lines, embed them, write ``part_file`` atomically; the row count."""
    embeddings = encode_texts(read_range(path, start, end), model, model_kwargs, blas_threads, batch_size, encode_kwargs)
    part_file = Path(part_file)
    temporary = part_file.with_name(f".{part_file.stem}.tmp-{os.getpid()}-{threading.get_ident()}.npy")
    np.save(temporary, embeddings)
    os.replace(temporary, part_file)
    return len(embeddings)


def model_content(model, model_kwargs) -> str:
    """A digest of the model's files (a directory, or the Hub snapshot in the local cache); a Hub id
    that is not cached here is named by id and revision, the most the client can know."""
    from .errors import RefimplError
    from .files import fingerprint_dir, resolve_model_dir

    kwargs = model_kwargs or {}
    try:
        directory = resolve_model_dir(model, revision=kwargs.get("revision"), cache_folder=kwargs.get("cache_folder"),
                                      local_files_only=True)
    except (RefimplError, OSError):
        return f"hub:{model}@{kwargs.get('revision') or 'main'}"
    return fingerprint_dir(directory)


def _fingerprint(path: Path, lines_per_partition, model, model_kwargs, encode_kwargs) -> dict:
    stat = path.stat()
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
    fingerprint = {
        "input": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head,
        "lines_per_partition": lines_per_partition, "model": str(model), "model_content": model_content(model, model_kwargs),
        "model_kwargs": model_kwargs or {}, "encode_kwargs": encode_kwargs,
    }
    return json.loads(json.dumps(fingerprint, default=str))  # as the manifest stores it


def _write_json(path: Path, data):
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(temporary, path)


def _valid_part(part: Path) -> int | None:
    try:
        return np.load(part, mmap_mode="r").shape[0]
    except (OSError, ValueError):
        return None


def encode_file(
    input_path, output_path, model=DEFAULT_MODEL, *, model_kwargs: dict | None = None, client=None,
    batch_size: int = 32, lines_per_partition: int = 10_000, progress: bool = False, **encode_kwargs,
) -> Path:
    """Embed a text file (one sentence per line) into OUTPUT.npy on a Dask cluster.

    Work goes to ``OUTPUT.npy.parts/``: ``manifest.json`` (the input's fingerprint, the model,
    the partitions) and one ``part-NNNNNN.npy`` per finished partition. A rerun with the same
    input, model and options skips finished partitions; the parts are assembled into the output
    through a memory map at the end, then removed."""
    streamable_encode_kwargs(encode_kwargs, "between partitions")
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix != ".npy":
        raise ValueError(f"{output_path}: the output of a distributed run must be a .npy file")
    parts_dir = output_path.with_name(output_path.name + ".parts")
    fingerprint = _fingerprint(input_path, lines_per_partition, model, model_kwargs, encode_kwargs)
    manifest = _open_manifest(parts_dir, fingerprint, input_path, lines_per_partition)
    if manifest.get("complete") and output_path.exists():
        return output_path
    part_files = [parts_dir / f"part-{i:06d}.npy" for i in range(len(manifest["ranges"]))]
    _run_partitions(client, manifest, parts_dir, part_files, input_path, model, model_kwargs, batch_size, encode_kwargs, progress)
    _assemble(part_files, output_path)
    manifest["complete"] = True
    _write_json(parts_dir / "manifest.json", manifest)
    for part in part_files + list(parts_dir.glob(".part-*.tmp-*")):  # temporaries of killed workers too
        part.unlink(missing_ok=True)
    return output_path


def _open_manifest(parts_dir: Path, fingerprint: dict, input_path: Path, lines_per_partition: int) -> dict:
    """The manifest of an unfinished run with this fingerprint, or a new one; a mismatch is refused."""
    manifest_file = parts_dir / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        stored = manifest.get("fingerprint", {})
        differing = sorted(key for key in set(stored) | set(fingerprint) if stored.get(key) != fingerprint.get(key))
        if differing:
            raise ValueError(f"{parts_dir} holds an unfinished run that differs in {', '.join(differing)} "
                             "(model_content: the model's files changed); remove it or choose another output")
        return manifest
    parts_dir.mkdir(parents=True, exist_ok=True)
    return {"fingerprint": fingerprint, "ranges": line_ranges(input_path, lines_per_partition), "rows": {},
            "run": 0, "computed_in_run": {}}


def _run_partitions(client, manifest, parts_dir, part_files, input_path, model, model_kwargs, batch_size, encode_kwargs, progress):
    """Compute the partitions that have no finished part file, recording each in the manifest."""
    from distributed import as_completed

    manifest_file = parts_dir / "manifest.json"
    manifest["run"] += 1  # which run computed each partition stays on record (computed_in_run)
    _write_json(manifest_file, manifest)
    ranges = manifest["ranges"]
    # a part file is written atomically, so one with the right row count is finished, recorded or
    # not (the client may have died between a task's end and the manifest's update)
    rows = {i: lines for i, (_, _, lines) in enumerate(ranges) if _valid_part(part_files[i]) == lines}
    for i in rows:
        manifest["computed_in_run"].setdefault(str(i), manifest["run"] - 1)
    blas = plan_blas_threads(client)
    # task keys name this run's input, model and output, so two runs never share (and overwrite) tasks
    key = hashlib.sha256(json.dumps([manifest["fingerprint"], str(parts_dir.resolve())], sort_keys=True).encode()).hexdigest()[:16]
    futures = {
        client.submit(encode_file_part, str(input_path.resolve()), start, end, str(part_files[i].resolve()), model,
                      model_kwargs, blas, batch_size, encode_kwargs, key=f"refimpl-part-{key}-{i}", retries=2): i
        for i, (start, end, _) in enumerate(ranges) if i not in rows
    }
    done = as_completed(futures)
    if progress:
        from tqdm import tqdm

        done = tqdm(done, total=len(futures), initial=0, desc=f"Partitions ({len(rows)} already done)")
    for future in done:
        index = futures[future]
        rows[index] = future.result()
        manifest["rows"] = {str(i): n for i, n in sorted(rows.items())}
        manifest["computed_in_run"][str(index)] = manifest["run"]
        _write_json(manifest_file, manifest)


def _assemble(part_files: list[Path], output_path: Path):
    """Concatenate the parts into the output through a memory map, written to a temporary and renamed."""
    first = np.load(part_files[0], mmap_mode="r") if part_files else np.empty((0, 0), np.float32)
    total = sum(np.load(part, mmap_mode="r").shape[0] for part in part_files)
    temporary = output_path.with_name(output_path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(temporary, mode="w+", dtype=first.dtype, shape=(total,) + first.shape[1:])
    offset = 0
    for part in part_files:
        block = np.load(part, mmap_mode="r")
        out[offset : offset + len(block)] = block
        offset += len(block)
    out.flush()
    del out
    os.replace(temporary, output_path)


def local_cluster(workers: int):
    """A LocalCluster of ``workers`` processes with one thread each (BLAS gets cores // workers)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster)
