"""Number formats NumPy lacks, as bit patterns."""

from __future__ import annotations

import numpy as np


def bfloat16_to_float32(raw_uint16: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the bits back into place."""
    return (raw_uint16.astype(np.uint32) << 16).view(np.float32)
