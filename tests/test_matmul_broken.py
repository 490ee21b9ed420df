"""The checks catch real mistakes: a wrongly packed weight, a wrong k order in
the bf16 emulation, a wrong int8 correction."""

import numpy as np
import pytest
from numba import njit

from refimpl.engines.fast.kernels import intrinsics
from refimpl.engines.fast.kernels import matmul as api
from refimpl.engines.fast.kernels import reference as R
from refimpl.engines.fast.kernels.intrinsics import F32, I32, broadcast_load, fma, ir, load, ptr_add, vec
from tests.matmul_helpers import (
    assert_bit_equal,
    bf16_error_ratio,
    bf16_on_tiles,
    make_data,
    require_features,
    require_tier,
)


def _differs(a, b):
    try:
        assert_bit_equal(a, b)
    except AssertionError:
        return True
    return False


@pytest.mark.parametrize("mode", ("f32", "int8", "bf16"))
def test_wrong_pack_is_caught(mode):
    x, W, b = make_data(17, 100, 64, seed=1)
    p = api.pack(W, mode)
    w = p.arrays["w"].copy()
    w[0, [3, 4]] = w[0, [4, 3]]  # swap two k steps of panel 0
    bad = api.PackedLinear(mode, p.n, p.k, dict(p.arrays, w=w))
    if mode == "bf16" and bf16_on_tiles():  # not vdpbf16ps's bits: the summation bound
        assert bf16_error_ratio(x, W, b, api.linear(x, bad, b))[0] > 1.0
        assert bf16_error_ratio(x, W, b, api.linear(x, p, b))[0] <= 1.0
        return
    assert _differs(api.linear(x, bad, b), R.linear(x, W, mode, b))
    assert not _differs(api.linear(x, p, b), R.linear(x, W, mode, b))


def test_wrong_colsum_is_caught():
    require_tier("avx512")
    require_features("avx512vnni")
    x, W, b = make_data(17, 100, 64, seed=2)
    p = api.pack(W, "int8")
    bad = api.PackedLinear("int8", p.n, p.k, dict(p.arrays, colsum=p.arrays["colsum"] + 1))
    assert _differs(api.linear(x, bad, b, tier="avx512"), R.linear(x, W, "int8", b))


def _step_bf16_emu_swapped(b, k, a_rows, b_k, accs, nvec):
    """Deliberately wrong: even k first (vdpbf16ps does odd first)."""
    hi = ir.Constant(vec(I32, 8), [0xFFFF0000 - (1 << 32)] * 8)
    sh = ir.Constant(vec(I32, 8), [16] * 8)
    raw = [load(b, ptr_add(b, b_k, 16 * c), vec(I32, 8)) for c in range(nvec)]
    bo = [b.bitcast(b.and_(x, hi), vec(F32, 8)) for x in raw]
    be = [b.bitcast(b.shl(x, sh), vec(F32, 8)) for x in raw]
    k2 = b.shl(k, ir.Constant(intrinsics.I64, 1))
    k2p1 = b.add(k2, ir.Constant(intrinsics.I64, 1))
    out = []
    for r, ap in enumerate(a_rows):
        ao = broadcast_load(b, ptr_add(b, ap, k2p1), F32, 8)
        ae = broadcast_load(b, ptr_add(b, ap, k2), F32, 8)
        out.append([fma(b, ao, bo[c], fma(b, ae, be[c], accs[r][c])) for c in range(nvec)])
    return out


intrinsics.KINDS["bf16_emu_swapped"] = (8, F32, _step_bf16_emu_swapped, True)
_good = intrinsics.make_microkernel("bf16_emu", 1, 16)
_bad = intrinsics.make_microkernel("bf16_emu_swapped", 1, 16)


@njit
def _tile(xa, bb, kh, good, T):
    if good:
        _good(xa, 0, xa.size, 1, bb, 0, 96, kh, T, 0, 0, 0)
    else:
        _bad(xa, 0, xa.size, 1, bb, 0, 96, kh, T, 0, 0, 0)


def test_swapped_bf16_order_is_caught():
    require_tier("avx2")
    x, W, _ = make_data(1, 16, 512, seed=3)
    p = api.pack(W, "bf16").arrays["w"]
    xa = R.bf16_round(x)[0].copy()
    want = R.linear_bf16(x, W)[0]
    T = np.zeros(16, np.float32)
    _tile(xa, p, 256, True, T)
    assert_bit_equal(T, want, "correct emulation")
    _tile(xa, p, 256, False, T)
    assert _differs(T, want), "even-first order was not detected"


def test_a_tile_height_without_a_variant_stops_the_process():
    """The microkernel's switch has one case per (rows, prefetch lines); any other value used to fall
    through and leave the tile unwritten (np.empty garbage in the product). Now it traps."""
    require_tier("avx2")
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from refimpl.engines.fast.kernels import intrinsics\n"
        "mk = intrinsics.make_microkernel('f32_avx2', 1, 16)\n"
        "@njit\n"
        "def tile(x, b, T, mr):\n"
        "    mk(x, 0, 4, mr, b, 0, 16, 4, T, 0, 0, 0)\n"
        "x, b, T = np.ones(8, np.float32), np.ones(64, np.float32), np.full(32, 7.0, np.float32)\n"
        "tile(x, b, T, 1)\n"
        "assert (T[:16] == 4.0).all(), T\n"
        "print('one row: ok', flush=True)\n"
        "tile(x, b, T, 2)\n"
        "print('two rows: returned', T)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    print(result.returncode, result.stdout, result.stderr[-500:])
    assert "one row: ok" in result.stdout, "the valid tile did not run"
    assert "two rows: returned" not in result.stdout and result.returncode != 0
