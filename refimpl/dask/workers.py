"""Dask workers' side: each process loads the model once and keeps it; threads planned per host."""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from refimpl.load.locate import DEFAULT_MODEL

_MODELS: dict = {}  # this process's loaded models, by model and options
_LOCK = threading.Lock()


def _key(model, model_kwargs) -> str:
    return json.dumps([str(model), model_kwargs or {}], sort_keys=True, default=str)


def worker_model(model=DEFAULT_MODEL, model_kwargs=None, kernel_threads=None, *, blas_threads=None):
    """This process's copy of the model, loaded on first use and kept for later tasks (``blas_threads``:
    kernel_threads's name before refimpl ran its own kernels, still accepted)."""
    kernel_threads = kernel_threads if kernel_threads is not None else blas_threads
    key = _key(model, model_kwargs)
    with _LOCK:
        if key not in _MODELS:
            from refimpl.model import SentenceTransformer
            from refimpl.run.threads import set_threads

            if kernel_threads:
                set_threads(kernel_threads)
            _MODELS[key] = SentenceTransformer(model, **(model_kwargs or {}))
        return _MODELS[key]


def loaded_models() -> list:
    """The models this process holds (for tests and monitoring: one per model and options)."""
    with _LOCK:
        return list(_MODELS.values())


def encode_texts(
    texts, model, model_kwargs=None, kernel_threads=None, batch_size=32, encode_kwargs=None, *, blas_threads=None
) -> np.ndarray:
    """Embed one partition on a worker: [len(texts), D], also for an empty partition (``blas_threads``: as
    worker_model's)."""
    instance = worker_model(model, model_kwargs, kernel_threads, blas_threads=blas_threads)
    texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
    out = instance.encode(texts, batch_size=batch_size, **(encode_kwargs or {}))
    if len(texts) == 0:
        probe = instance.encode(["."], **(encode_kwargs or {}))
        out = np.empty((0, probe.shape[1]), probe.dtype)
    return out


def embedding_shape(model, model_kwargs, kernel_threads, encode_kwargs):
    out = encode_texts(["."], model, model_kwargs, kernel_threads, 1, encode_kwargs)
    return out.shape[1], out.dtype.str


def default_client_or_none():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def plan_kernel_threads(client) -> int:
    """Threads per worker for refimpl's kernels (its products, attention, LayerNorm; OpenBLAS's on the BLAS
    tier) such that, on every host, worker threads x kernel threads <= cores."""
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


plan_blas_threads = plan_kernel_threads  # the name before refimpl ran its own kernels; kept for callers
