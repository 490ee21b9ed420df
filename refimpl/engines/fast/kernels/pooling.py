"""numba kernels of the packed pooling (``engines/fast/pooling.py``): sums and maxima over each
sequence's rows, single-threaded (pooling is a sliver of a forward pass)."""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

kernel = functools.partial(njit, cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
_NEG_INF = np.float32(-np.inf)


@kernel
def mean_pool_packed(x, starts, stops, sqrt_len, clamp, out):
    """out[b] = sum(x[starts[b]:stops[b]]) / max(count, clamp), or / sqrt(that) when sqrt_len."""
    for b in range(starts.shape[0]):
        acc = out[b]
        acc[:] = 0
        for i in range(starts[b], stops[b]):
            acc += x[i]
        count = max(float(stops[b] - starts[b]), clamp)
        denominator = math.sqrt(count) if sqrt_len else count
        for j in range(acc.shape[0]):
            acc[j] = acc[j] / denominator


@kernel
def max_pool_packed(x, starts, stops, out):
    """out[b] = elementwise max of x[starts[b]:stops[b]] (-inf when empty, as torch gives)."""
    for b in range(starts.shape[0]):
        acc = out[b]
        acc[:] = _NEG_INF
        for i in range(starts[b], stops[b]):
            for j in range(acc.shape[0]):
                acc[j] = max(acc[j], x[i, j])
