"""Dask bags and dataframes of strings to dask arrays of embeddings, in order."""

from __future__ import annotations

import numpy as np

from refimpl.checks import streamable_encode_kwargs
from refimpl.dask.workers import default_client_or_none, embedding_shape, encode_texts, plan_kernel_threads
from refimpl.load.locate import DEFAULT_MODEL


def _encode_delayed(partitions, model, batch_size, model_kwargs, encode_kwargs):
    import dask
    import dask.array as da

    streamable_encode_kwargs(encode_kwargs, "between partitions")
    client = default_client_or_none()
    kernel_threads = plan_kernel_threads(client) if client is not None else None
    dim, dtype = dask.delayed(embedding_shape, pure=True)(model, model_kwargs, kernel_threads, encode_kwargs).compute()
    encode = dask.delayed(encode_texts, pure=True)
    arrays = [
        da.from_delayed(
            encode(part, model, model_kwargs, kernel_threads, batch_size, encode_kwargs),
            shape=(np.nan, dim),
            dtype=dtype,
        )
        for part in partitions
    ]
    if not arrays:
        return da.empty((0, dim), dtype=dtype)
    return da.concatenate(arrays, axis=0)


def encode_bag(bag, model=DEFAULT_MODEL, batch_size: int = 32, model_kwargs: dict | None = None, **encode_kwargs):
    """A dask array [N, D] of the bag's strings, one row per item, in order (chunk sizes unknown
    until computed). ``model_kwargs`` go to ``SentenceTransformer``, the rest to ``encode``."""
    return _encode_delayed(bag.to_delayed(), model, batch_size, model_kwargs, encode_kwargs)


def encode_dataframe(
    ddf,
    column: str = "text",
    model=DEFAULT_MODEL,
    batch_size: int = 32,
    model_kwargs: dict | None = None,
    **encode_kwargs,
):
    """A dask array [N, D] of ``ddf[column]``, one row per row of the dataframe, in order."""
    if column not in ddf.columns:
        raise KeyError(f"the dataframe has no column {column!r}; its columns are {list(ddf.columns)}")
    return _encode_delayed(ddf[column].to_delayed(), model, batch_size, model_kwargs, encode_kwargs)
