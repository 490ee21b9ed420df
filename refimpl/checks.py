"""Argument checks shared by the whole package, so that each rule has one wording and one result."""

from __future__ import annotations

import numbers

import numpy as np


def positive_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """``value`` as a Python int when it is a whole number >= 1 (int or NumPy integer, never bool).

    Everything else raises ``ValueError`` naming the argument; ``None`` passes when ``allow_none``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def cpu_device(device) -> None:
    """refimpl computes on the CPU; any other device sentence-transformers accepts is refused."""
    if device is not None and str(device) != "cpu":
        raise ValueError(f"refimpl runs on the CPU only; device={device!r} is not available")


def streamable_encode_kwargs(encode_kwargs: dict, where: str) -> None:
    """Refuse ``encode`` options whose result would depend on how the input is split (``embed``, Dask)."""
    if encode_kwargs.get("precision", "float32") in ("int8", "uint8"):
        raise ValueError(
            f"int8/uint8 ranges come from the embeddings quantized together and would differ {where}; "
            "quantize the float embeddings afterwards with "
            "refimpl.quantization.quantize_embeddings(..., ranges=...)"
        )
    if encode_kwargs.get("output_value", "sentence_embedding") != "sentence_embedding":
        raise ValueError(f"only sentence embeddings can be streamed ({where} they are assembled row by row)")


DTYPES = ("float32", "float64")


def compute_dtype(dtype) -> np.dtype:
    """The dtype the model computes in: float32, or float64 for verification."""
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype(str(dtype))


COMPUTE_MODES = ("float32", "int8", "bfloat16")


def check_compute(compute, engine: str, dtype: np.dtype):
    """The fast engine computes in float32, int8 or bfloat16; the reference engine and float64 mode only
    in their dtype: anything else is refused, never silently run in another mode."""
    if compute not in COMPUTE_MODES:
        raise ValueError(f"compute must be one of {COMPUTE_MODES}, got {compute!r}")
    if compute != "float32" and engine != "fast":
        raise ValueError(
            f"compute={compute!r} needs the fast engine; the {engine!r} engine computes in float32/float64"
        )
    if compute != "float32" and dtype != np.float32:
        raise ValueError(f"compute={compute!r} runs float32 weights; dtype={dtype.name} is for float64 verification")
