"""Dask: a LocalCluster of 2 worker processes gives single-process results, loads the model once per
worker, survives a killed worker, and a resumed file run skips finished partitions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refimpl import SentenceTransformer
from tests.helpers import check_parity, random_sentences

pytest.importorskip(
    "distributed", reason='the Dask tests need `pip install "refimpl[dask]"` (the README test command installs it)'
)


@pytest.fixture(scope="module")
def client():
    from refimpl.dask import local_cluster

    client = local_cluster(2)
    yield client
    cluster = client.cluster
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def path(tiny_model):
    return str(tiny_model("roberta"))


def test_encode_bag_equals_single_process_encode(client, path):
    import dask.bag as db

    from refimpl.dask import encode_bag

    texts = random_sentences(300)
    bag = db.from_sequence(texts, npartitions=6)
    array = encode_bag(bag, model=path, batch_size=16)
    out = array.compute()
    single = SentenceTransformer(path).encode(texts)
    print(f"encode_bag vs encode: max |diff| {np.abs(out - single).max():.1e}")
    assert out.shape == single.shape and out.dtype == single.dtype
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-6)
    # a worker runs its kernels on 1 thread, this process on 2: the last bits may differ across processes
    # (a tolerance), and within this process the same input gives the same bits every time
    first = bag.to_delayed()[0].compute()
    alone = SentenceTransformer(path).encode(first)
    np.testing.assert_allclose(out[: len(first)], alone, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(SentenceTransformer(path).encode(first), alone)


def test_encode_dataframe_in_input_order(client, path):
    import dask.dataframe as dd
    import pandas as pd

    from refimpl.dask import encode_dataframe

    texts = random_sentences(120, seed=1)
    ddf = dd.from_pandas(pd.DataFrame({"id": range(120), "body": texts}), npartitions=4)
    out = encode_dataframe(ddf, column="body", model=path, normalize_embeddings=True).compute()
    single = SentenceTransformer(path).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="no column 'text'"):
        encode_dataframe(ddf, model=path)


def test_the_model_is_loaded_once_per_worker_not_shipped(client, path):
    import dask.bag as db

    from refimpl.dask import encode_bag

    def loaded_models():
        from refimpl.dask.workers import loaded_models as held

        return [id(m) for m in held()]

    runs = []
    for _ in range(2):
        encode_bag(db.from_sequence(random_sentences(200, seed=2), npartitions=8), model=path).compute()
        runs.append(client.run(loaded_models))
    print(f"models held per worker after each run: {runs}")
    assert all(len(ids) <= 1 for ids in runs[1].values()) and sum(map(len, runs[1].values())) >= 1
    assert all(runs[1][worker] == ids for worker, ids in runs[0].items() if ids), "a worker loaded the model again"
    assert loaded_models() == [], "the client never loads the model"


def test_threads_never_exceed_the_cores(client):
    from refimpl.dask import plan_blas_threads, plan_kernel_threads

    workers = client.scheduler_info()["workers"].values()
    threads = sum(w["nthreads"] for w in workers)
    kernel = plan_kernel_threads(client)
    assert threads * kernel <= os.cpu_count() and plan_blas_threads is plan_kernel_threads
    per_worker = threads // len(workers)
    print(f"{len(workers)} workers x {per_worker} thread x {kernel} kernel threads on {os.cpu_count()} cores")


def test_the_old_keyword_blas_threads_is_still_accepted(path, monkeypatch):
    """encode_texts / worker_model took blas_threads= before refimpl ran its own kernels; it still sets the
    kernels' threads (in this process, with its own model store so that no other test sees the model)."""
    from refimpl.dask import workers

    monkeypatch.setattr(workers, "_MODELS", {})
    asked = []
    monkeypatch.setattr("refimpl.run.threads.set_threads", asked.append)
    out = workers.encode_texts(["하나", "둘"], path, blas_threads=1)
    assert out.shape[0] == 2 and asked == [1]
    np.testing.assert_array_equal(out, workers.encode_texts(["하나", "둘"], path, kernel_threads=1))


def test_int8_is_refused_for_partitions(client, path):
    import dask.bag as db

    from refimpl.dask import encode_bag

    with pytest.raises(ValueError, match="int8"):
        encode_bag(db.from_sequence(["a"]), model=path, precision="int8")


def write_corpus(path, count, seed):
    texts = random_sentences(count, seed)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts


def test_a_killed_worker_is_recovered(client, path, tmp_path):
    """Kill a worker process while partitions run: Dask reruns its tasks, the output is complete."""
    import threading

    from refimpl.dask import encode_file

    texts = write_corpus(tmp_path / "in.txt", 3000, seed=3)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    parts_dir = tmp_path / "out.npy.parts"

    def kill_when_running():
        deadline = time.time() + 60
        while time.time() < deadline and not any(parts_dir.glob("part-*.npy")):
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    out = encode_file(tmp_path / "in.txt", tmp_path / "out.npy", path, client=client, lines_per_partition=100)
    killer.join()
    assert victim not in client.run(os.getpid).values(), "the worker should have been killed and replaced"
    np.testing.assert_allclose(np.load(out), SentenceTransformer(path).encode(texts), rtol=0, atol=1e-6)


def test_cli_run_resumes_after_the_client_dies(path, tmp_path):
    texts = write_corpus(tmp_path / "in.txt", 6000, seed=4)
    command = [
        sys.executable,
        "-m",
        "refimpl",
        "encode",
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.npy"),
        "--workers",
        "2",
        "--model",
        path,
        "--partition-lines",
        "200",
    ]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts_dir = tmp_path / "out.npy.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts_dir.glob("part-*.npy"))) < 3:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the client and its local cluster die mid-run
    first.wait()
    manifest = json.loads((parts_dir / "manifest.json").read_text())
    finished = {int(p.stem.split("-")[1]) for p in parts_dir.glob("part-*.npy")}  # written atomically: all complete
    assert 0 < len(finished) < len(manifest["ranges"]), "the first run should stop part-way"

    second = subprocess.run(command + ["--progress"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (parts_dir / "part-000000.npy").exists(), "parts are removed once assembled"
    out = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(out, SentenceTransformer(path).encode(texts), rtol=0, atol=1e-6)
    manifest = json.loads((parts_dir / "manifest.json").read_text())
    computed = {int(i): run for i, run in manifest["computed_in_run"].items()}
    assert manifest["complete"] and manifest["run"] == 2 and set(computed) == set(range(len(manifest["ranges"])))
    assert all(computed[i] == 1 for i in finished), "a partition finished by the first run was recomputed"
    assert all(run == 2 for i, run in computed.items() if i not in finished)
    assert f"Partitions ({len(finished)} already done)" in second.stderr
    print(f"resumed: {len(finished)} of {len(computed)} partitions kept from the first run")
    # a third run finds the output complete and does nothing
    third = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and json.loads((parts_dir / "manifest.json").read_text())["run"] == 2


def test_a_resume_with_other_model_files_is_refused(client, tiny_model, tmp_path):
    """The manifest records the model's content: weights changed under the same path must not mix."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from refimpl.dask.files import run_fingerprint

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model("roberta"), model_dir)
    write_corpus(tmp_path / "in.txt", 50, seed=5)
    parts_dir = tmp_path / "out.npy.parts"  # an unfinished run of the model as it was
    parts_dir.mkdir()
    (parts_dir / "manifest.json").write_text(
        json.dumps(
            {
                "fingerprint": run_fingerprint(tmp_path / "in.txt", 10, str(model_dir), None, {}),
                "ranges": [],
                "rows": {},
                "run": 1,
                "computed_in_run": {},
            }
        )
    )
    state = load_file(str(model_dir / "model.safetensors"))
    state["embeddings.LayerNorm.bias"] = state["embeddings.LayerNorm.bias"] + 1
    save_file(state, str(model_dir / "model.safetensors"))
    from refimpl.dask import encode_file

    with pytest.raises(ValueError, match="differs in model_content"):
        encode_file(tmp_path / "in.txt", tmp_path / "out.npy", str(model_dir), client=client, lines_per_partition=10)


def test_two_runs_on_one_input_keep_their_own_parts(client, tiny_model, path, tmp_path):
    """Task keys name the output and the model: two concurrent runs on the same input never share tasks."""
    from concurrent.futures import ThreadPoolExecutor

    from refimpl.dask import encode_file

    texts = write_corpus(tmp_path / "in.txt", 400, seed=6)
    other = str(tiny_model("roberta", seed=3))
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(
                encode_file,
                tmp_path / "in.txt",
                tmp_path / f"out-{i}.npy",
                model,
                client=client,
                lines_per_partition=50,
            )
            for i, model in enumerate([path, other])
        ]
        first, second = (run.result() for run in runs)
    np.testing.assert_allclose(np.load(first), SentenceTransformer(path).encode(texts), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(second), SentenceTransformer(other).encode(texts), rtol=0, atol=1e-6)


# One rule for reading users' line files: a BOM, CRLF and lone CR line breaks, empty lines and a final
# line without a line break read the same by `refimpl encode -i`, by --workers and by refimpl.dask.
AWKWARD_FILE = b"\xef\xbb\xbfhello world\r\n  spaced  \rsecond\n\n\r\nhello\r\rlast line"
AWKWARD_LINES = ["hello world", "  spaced  ", "second", "", "", "hello", "", "last line"]


def test_line_files_read_the_same_everywhere(bpe_model, client, tmp_path):
    from refimpl.dask import encode_file
    from refimpl.io import line_ranges, read_line_range, read_lines

    source = tmp_path / "awkward.txt"
    source.write_bytes(AWKWARD_FILE)
    assert read_lines(source) == AWKWARD_LINES
    for per in (1, 2, 3, 100):  # partitions cut at every possible place read the same sentences
        assert [line for r in line_ranges(source, per) for line in read_line_range(source, *r[:2])] == AWKWARD_LINES
        assert sum(r[2] for r in line_ranges(source, per)) == len(AWKWARD_LINES)
    model = SentenceTransformer(bpe_model)
    expected = model.encode(AWKWARD_LINES)
    assert not np.allclose(model.encode(["\ufeffhello world"]), expected[:1], atol=1e-4)  # a BOM kept would show
    assert not np.allclose(model.encode(["hello\r"]), expected[5:6], atol=1e-4)  # so would a CR kept
    single = [sys.executable, "-m", "refimpl", "encode", "-i", str(source), "--model", str(bpe_model)]
    subprocess.run(single + ["-o", str(tmp_path / "one.npy")], check=True, capture_output=True, timeout=300)
    subprocess.run(
        single + ["-o", str(tmp_path / "workers.npy"), "--workers", "2", "--partition-lines", "3"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    encode_file(source, tmp_path / "dask.npy", str(bpe_model), client=client, lines_per_partition=2)
    for name in ("one", "workers", "dask"):
        check_parity(f"{name} vs encode on the lines", np.load(tmp_path / f"{name}.npy"), expected, 1e-6)


@pytest.mark.parametrize("flag", [["--workers", "0"], ["--workers", "-1"], ["--partition-lines", "0"]])
def test_distributed_counts_must_be_positive(path, tmp_path, flag):
    (tmp_path / "in.txt").write_text("a\n", encoding="utf-8")
    command = [sys.executable, "-m", "refimpl", "encode", "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")]
    result = subprocess.run(command + ["--model", str(path)] + flag, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a positive integer" in result.stderr, result.stderr


def test_a_finished_run_is_replaced_on_an_edited_input(client, path, tmp_path):
    """A complete run followed by an edited input runs again (it used to be refused as a changed model)."""
    from refimpl.dask import encode_file

    texts = write_corpus(tmp_path / "in.txt", 60, seed=7)
    out = encode_file(tmp_path / "in.txt", tmp_path / "out.npy", path, client=client, lines_per_partition=20)
    np.testing.assert_allclose(np.load(out), SentenceTransformer(path).encode(texts), rtol=0, atol=1e-6)
    edited = write_corpus(tmp_path / "in.txt", 80, seed=8)
    out = encode_file(tmp_path / "in.txt", tmp_path / "out.npy", path, client=client, lines_per_partition=20)
    np.testing.assert_allclose(np.load(out), SentenceTransformer(path).encode(edited), rtol=0, atol=1e-6)


def test_an_unfinished_run_on_an_edited_input_names_input_sha256(client, path, tmp_path):
    from refimpl.dask import encode_file
    from refimpl.dask.files import run_fingerprint

    write_corpus(tmp_path / "in.txt", 50, seed=9)
    parts_dir = tmp_path / "out.npy.parts"  # an unfinished run of the input as it was
    parts_dir.mkdir()
    fingerprint = run_fingerprint(tmp_path / "in.txt", 10, path, None, {})
    manifest = {"fingerprint": fingerprint, "ranges": [], "rows": {}, "run": 1, "computed_in_run": {}}
    (parts_dir / "manifest.json").write_text(json.dumps(manifest))
    write_corpus(tmp_path / "in.txt", 50, seed=10)
    with pytest.raises(ValueError, match=r"differs in input_sha256 \(the input file's content changed\)"):
        encode_file(tmp_path / "in.txt", tmp_path / "out.npy", path, client=client, lines_per_partition=10)
