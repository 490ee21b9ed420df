"""A text file to one .npy on a Dask cluster, in resumable partitions.

The file is cut into byte ranges of whole lines (``refimpl.io.line_ranges``), so each partition
reads the same sentences ``refimpl encode -i FILE`` reads from the whole file: one rule for BOM,
CRLF, lone CR and a final line without a line break.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from refimpl.checks import positive_int, streamable_encode_kwargs
from refimpl.dask.workers import encode_texts, plan_kernel_threads
from refimpl.io import (
    fingerprint_dir,
    fingerprint_file,
    line_ranges,
    read_line_range,
    replaced_atomically,
    write_atomically,
    write_json_atomically,
)
from refimpl.load.locate import DEFAULT_MODEL


def encode_file_part(
    path, start, end, part_file, model, model_kwargs, kernel_threads, batch_size, encode_kwargs
) -> int:
    """One partition: read its lines, embed them, write ``part_file`` atomically; the row count."""
    embeddings = encode_texts(
        read_line_range(path, start, end), model, model_kwargs, kernel_threads, batch_size, encode_kwargs
    )
    write_atomically(part_file, lambda handle: np.save(handle, embeddings))
    return len(embeddings)


def model_content(model, model_kwargs) -> str:
    """A digest of the model's files (a directory, or the Hub snapshot in the local cache); a Hub id
    that is not cached here is named by id and revision, the most the client can know."""
    from refimpl.errors import RefimplError
    from refimpl.load.locate import resolve_model_dir

    kwargs = model_kwargs or {}
    try:
        directory = resolve_model_dir(
            model, revision=kwargs.get("revision"), cache_folder=kwargs.get("cache_folder"), local_files_only=True
        )
    except (RefimplError, OSError):
        return f"hub:{model}@{kwargs.get('revision') or 'main'}"
    return fingerprint_dir(directory)


def run_fingerprint(path: Path, lines_per_partition, model, model_kwargs, encode_kwargs) -> dict:
    """What a run's result depends on: the input's content, the partitioning, the model and the options."""
    fingerprint = {
        "input": str(path.resolve()),
        "input_sha256": fingerprint_file(path),
        "lines_per_partition": lines_per_partition,
        "model": str(model),
        "model_content": model_content(model, model_kwargs),
        "model_kwargs": model_kwargs or {},
        "encode_kwargs": encode_kwargs,
    }
    return json.loads(json.dumps(fingerprint, default=str))  # as the manifest stores it


def _valid_part(part: Path) -> int | None:
    try:
        return np.load(part, mmap_mode="r").shape[0]
    except (OSError, ValueError):
        return None


def encode_file(
    input_path,
    output_path,
    model=DEFAULT_MODEL,
    *,
    model_kwargs: dict | None = None,
    client=None,
    batch_size: int = 32,
    lines_per_partition: int = 10_000,
    progress: bool = False,
    **encode_kwargs,
) -> Path:
    """Embed a text file (one sentence per line) into OUTPUT.npy on a Dask cluster.

    Work goes to ``OUTPUT.npy.parts/``: ``manifest.json`` (the input's fingerprint, the model,
    the partitions) and one ``part-NNNNNN.npy`` per finished partition. A rerun with the same
    input, model and options skips finished partitions; the parts are assembled into the output
    through a memory map at the end, then removed."""
    streamable_encode_kwargs(encode_kwargs, "between partitions")
    lines_per_partition = positive_int("lines_per_partition", lines_per_partition)
    batch_size = positive_int("batch_size", batch_size)
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix != ".npy":
        raise ValueError(f"{output_path}: the output of a distributed run must be a .npy file")
    parts_dir = output_path.with_name(output_path.name + ".parts")
    fingerprint = run_fingerprint(input_path, lines_per_partition, model, model_kwargs, encode_kwargs)
    manifest = _open_manifest(parts_dir, fingerprint, input_path, lines_per_partition)
    if manifest.get("complete") and output_path.exists():
        return output_path
    part_files = [parts_dir / f"part-{i:06d}.npy" for i in range(len(manifest["ranges"]))]
    _run_partitions(
        client, manifest, parts_dir, part_files, input_path, model, model_kwargs, batch_size, encode_kwargs, progress
    )
    _assemble(part_files, output_path)
    manifest["complete"] = True
    write_json_atomically(parts_dir / "manifest.json", manifest)
    for part in part_files + list(parts_dir.glob(".part-*.tmp")):  # temporaries of killed workers too
        part.unlink(missing_ok=True)
    return output_path


def _open_manifest(parts_dir: Path, fingerprint: dict, input_path: Path, lines_per_partition: int) -> dict:
    """The manifest of an unfinished run with this fingerprint, or a new one. A finished run is
    replaced by the new one; an unfinished one that differs is refused, naming what differs."""
    manifest_file = parts_dir / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        stored = manifest.get("fingerprint", {})
        differing = sorted(key for key in set(stored) | set(fingerprint) if stored.get(key) != fingerprint.get(key))
        if not differing:
            return manifest
        if not manifest.get("complete"):
            why = {"input_sha256": "the input file's content changed", "model_content": "the model's files changed"}
            reasons = ", ".join(f"{key} ({why[key]})" if key in why else key for key in differing)
            raise ValueError(
                f"{parts_dir} holds an unfinished run that differs in {reasons}; remove it or choose another output"
            )
    parts_dir.mkdir(parents=True, exist_ok=True)
    return {
        "fingerprint": fingerprint,
        "ranges": line_ranges(input_path, lines_per_partition),
        "rows": {},
        "run": 0,
        "computed_in_run": {},
    }


def _run_partitions(
    client, manifest, parts_dir, part_files, input_path, model, model_kwargs, batch_size, encode_kwargs, progress
):
    """Compute the partitions that have no finished part file, recording each in the manifest."""
    from distributed import as_completed

    manifest_file = parts_dir / "manifest.json"
    manifest["run"] += 1  # which run computed each partition stays on record (computed_in_run)
    write_json_atomically(manifest_file, manifest)
    ranges = manifest["ranges"]
    # a part file is written atomically, so one with the right row count is finished, recorded or
    # not (the client may have died between a task's end and the manifest's update)
    rows = {i: lines for i, (_, _, lines) in enumerate(ranges) if _valid_part(part_files[i]) == lines}
    for i in rows:
        manifest["computed_in_run"].setdefault(str(i), manifest["run"] - 1)
    kernel_threads = plan_kernel_threads(client)
    # task keys name this run's input, model and output, so two runs never share (and overwrite) tasks
    key = hashlib.sha256(
        json.dumps([manifest["fingerprint"], str(parts_dir.resolve())], sort_keys=True).encode()
    ).hexdigest()[:16]
    futures = {
        client.submit(
            encode_file_part,
            str(input_path.resolve()),
            start,
            end,
            str(part_files[i].resolve()),
            model,
            model_kwargs,
            kernel_threads,
            batch_size,
            encode_kwargs,
            key=f"refimpl-part-{key}-{i}",
            retries=2,
        ): i
        for i, (start, end, _) in enumerate(ranges)
        if i not in rows
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
        write_json_atomically(manifest_file, manifest)


def _assemble(part_files: list[Path], output_path: Path):
    """Concatenate the parts into the output through a memory map, written to a temporary and renamed."""
    first = np.load(part_files[0], mmap_mode="r") if part_files else np.empty((0, 0), np.float32)
    total = sum(np.load(part, mmap_mode="r").shape[0] for part in part_files)
    with replaced_atomically(output_path) as temporary:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=first.dtype, shape=(total,) + first.shape[1:])
        offset = 0
        for part in part_files:
            block = np.load(part, mmap_mode="r")
            out[offset : offset + len(block)] = block
            offset += len(block)
        out.flush()
        del out


def local_cluster(workers: int):
    """A LocalCluster of ``workers`` processes with one thread each (the kernels get cores // workers threads:
    plan_kernel_threads)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster)
