"""The reference engine (forward.py): plain NumPy, no numba on its import path, exact erf."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from refimpl.engines.reference import forward
from tests.helpers import BATCH, ROOT, check_parity, torch_hidden_states


def test_numpy_erf_is_within_two_ulp_of_libm():
    x = np.concatenate(
        [
            np.linspace(-7, 7, 400_001),
            np.geomspace(1e-300, 1e-3, 500),
            -np.geomspace(1e-300, 1e-3, 500),
            [0.0, 1.0, -1.0, 2.0, 6.0, 30.0, 1e300, np.inf, -np.inf],
        ]
    )
    exact = np.array([math.erf(v) for v in x])
    ours = forward.erf(x)
    ulps = np.abs(ours - exact) / np.spacing(np.abs(exact))
    print(f"NumPy erf vs libm: max {ulps.max():.0f} ulp, max |diff| {np.abs(ours - exact).max():.1e}")
    assert ulps.max() <= 2
    assert np.isnan(forward.erf(np.array([np.nan]))).all()
    assert forward.erf(np.float32(0.5)).dtype == np.float32 and forward.erf(np.zeros(3, np.float64)).dtype == np.float64


def test_hand_worked_gelu():
    # GELU(1) = Phi(1) = 0.8413447460685429; GELU(-1) = -(1 - Phi(1)); GELU(0) = 0
    np.testing.assert_allclose(
        forward.gelu(np.array([0.0, 1.0, -1.0])), [0.0, 0.8413447460685429, -0.15865525393145707], rtol=0, atol=3e-16
    )


BLOCK_NUMBA = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numba", "llvmlite"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np
from refimpl import SentenceTransformer
model = SentenceTransformer(sys.argv[1], engine="reference", dtype=sys.argv[2])
features = model.tokenize(sys.argv[4:])
out = model.forward(features, output_hidden_states=True)
model.encode(sys.argv[4:])
assert "numba" not in sys.modules and "llvmlite" not in sys.modules
np.savez(sys.argv[3], *out["hidden_states"], **features)
"""


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-10)])
def test_reference_engine_runs_and_matches_transformers_with_numba_blocked(tiny_model, tmp_path, dtype, tolerance):
    path = tiny_model("roberta")
    subprocess.run(
        [sys.executable, "-c", BLOCK_NUMBA, str(path), dtype, str(tmp_path / "out.npz"), *BATCH],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    saved = np.load(tmp_path / "out.npz")
    features = {key: saved[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    ours = [saved[f"arr_{i}"] for i in range(len(saved.files) - 3)]
    theirs = torch_hidden_states(path, features, dtype="float64" if dtype == "float64" else None)
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        check_parity(f"numba blocked, reference {dtype} hidden_states[{i}]", a, b, tolerance)


def test_the_numba_block_works():
    """The check above could pass vacuously if the block did nothing: the fast engine must fail under it."""
    code = BLOCK_NUMBA.split("import numpy")[0] + "from refimpl.engines.fast import kernels\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "blocked in this test" in result.stderr
