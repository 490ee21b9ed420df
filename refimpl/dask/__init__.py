"""Embed corpora larger than one machine with Dask (``pip install "refimpl[dask]"``).

    from refimpl.dask import encode_bag, encode_dataframe
    embeddings = encode_bag(dask.bag.read_text("passages-*.txt").map(str.strip))    # dask array [N, D]
    embeddings = encode_dataframe(ddf, column="text").compute()

    refimpl encode -i BIG.txt -o OUT.npy --workers 2                 # a local cluster
    refimpl encode -i BIG.txt -o OUT.npy --scheduler tcp://HOST:8786  # a running cluster

Each worker process loads the model once, the first time one of its tasks needs it, from the
model id or directory (so workers need the files or Hub access, never a copy from the client),
and keeps it for later tasks. Threads are planned so that worker threads x kernel threads never
exceed a host's cores. Results are in input order and equal single-process ``encode`` (the fast
engine's packing makes an embedding independent of its neighbours). ``encode_file`` writes one
.npy per partition plus a manifest, so a run that stops (a worker or the client dies) resumes
without recomputing finished partitions; a lost worker's tasks are rerun by Dask itself.

The parts: ``workers`` (each process's model, its threads), ``collections`` (bags and dataframes
to dask arrays), ``files`` (a text file to one .npy, resumably).
"""

from refimpl.dask.collections import encode_bag, encode_dataframe
from refimpl.dask.files import encode_file, local_cluster
from refimpl.dask.workers import encode_texts, plan_blas_threads, plan_kernel_threads, worker_model

__all__ = [
    "encode_bag",
    "encode_dataframe",
    "encode_file",
    "encode_texts",
    "local_cluster",
    "plan_blas_threads",
    "plan_kernel_threads",
    "worker_model",
]
