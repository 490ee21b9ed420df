"""Embedding quantization with sentence-transformers' semantics (``util.quantize_embeddings``).

- int8 / uint8: each dimension's [min, max] (from ``ranges``, from
  ``calibration_embeddings``, or from the embeddings themselves) is cut into 255
  equal steps; a value becomes the index of its step (uint8), minus 128 (int8).
- binary / ubinary: one bit per dimension, set when the value is > 0, packed
  eight to a byte (``np.packbits``); binary shifts the bytes by -128 into int8.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("refimpl")

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def quantization_ranges(embeddings: np.ndarray, precision: str, calibration_embeddings=None) -> np.ndarray:
    """[2, D]: per-dimension minimum and maximum of the calibration set (or of the embeddings)."""
    data = embeddings if calibration_embeddings is None else np.asarray(calibration_embeddings)
    if calibration_embeddings is None:
        if data.ndim == 1 or data.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding; "
                "pass `ranges` or `calibration_embeddings` from a representative set"
            )
        if data.shape[0] < 100:
            logger.warning(
                "computing %s quantization ranges from only %d embeddings; pass `ranges` or "
                "`calibration_embeddings` from a larger set for stable buckets",
                precision,
                data.shape[0],
            )
    return np.vstack((data.min(axis=0), data.max(axis=0)))


def quantize_embeddings(embeddings, precision: str, ranges=None, calibration_embeddings=None) -> np.ndarray:
    """Quantize float embeddings [N, D] (or [D]) to ``precision``; see the module docstring."""
    check_precision(precision)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype.kind != "f":
        raise TypeError(f"embeddings to quantize must be floating point, got {embeddings.dtype}")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(embeddings > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        return np.zeros(embeddings.shape, np.int8 if precision == "int8" else np.uint8)
    if ranges is None:
        ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
    ranges = np.asarray(ranges, np.float32)
    if ranges.shape != (2, embeddings.shape[-1]):
        raise ValueError(f"ranges must have shape (2, {embeddings.shape[-1]}), got {ranges.shape}")
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
