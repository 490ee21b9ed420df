"""The products' prefetch plan (kernels/common.py: ``prefetch_plan``, ``block_byte``): on AVX-512 the passes
over a block of B prefetch exactly the next block, each line once; on AVX2 each sub-panel's passes its
own line 16 KB ahead; the byte offsets are the packed arrays' own; and the tile split (``tile_rows``) is
balanced. Prefetches change no result
(tests/test_matmul_kernels.py holds every tier to the NumPy reference at the batch-1 sizes that use
them); what is checked here is that they reach the memory the next block reads."""

import numpy as np
import pytest

from refimpl.engines.fast.kernels import avx2, avx512, common
from refimpl.engines.fast.kernels import matmul as api
from refimpl.engines.fast.kernels.intrinsics import PREFETCH_FLAG

STEP_BYTES = 192  # 48 float32, 48 x 4 int8, 48 x 2 bf16 per k step


def prefetched_lines(plan, nt, ks, block, own_line=-1, step_bytes=STEP_BYTES):
    """Every cache line the nt passes over one block prefetch, with how often."""
    lines = {}
    for t in range(nt):
        flag, start, stride = plan(nt, t, ks, block, step_bytes, own_line)
        assert flag % PREFETCH_FLAG == 0 and 0 <= flag // PREFETCH_FLAG <= step_bytes // 64
        for k in range(ks):
            for line in range(flag // PREFETCH_FLAG):
                address = start + k * stride + 64 * line
                lines[address // 64] = lines.get(address // 64, 0) + 1
    return lines


def next_block_lines(ks, block):
    return list(range((block + ks * STEP_BYTES) // 64, (block + 2 * ks * STEP_BYTES) // 64))


@pytest.mark.parametrize("nt", [1, 2, 3, 4, 7, 31, 32])
@pytest.mark.parametrize("ks", [1, 5, 192, 256])
def test_the_passes_prefetch_the_next_block_each_line_once(nt, ks):
    block = 3 * 192 * 256  # any block of a panel
    lines = prefetched_lines(common.prefetch_plan, nt, ks, block)
    print(f"nt={nt} ks={ks}: {sum(lines.values())} prefetches for {len(next_block_lines(ks, block))} lines")
    assert sorted(lines) == next_block_lines(ks, block), f"nt={nt} ks={ks}: not exactly the next block's lines"
    assert set(lines.values()) == {1}, f"nt={nt} ks={ks}: a line prefetched twice"


@pytest.mark.parametrize("nt", [1, 2, 3, 5, 11])
def test_sub_panels_prefetch_their_own_line_ahead(nt):
    """AVX2's items are 16-column sub-panels (64 of the 192 bytes of a k step): the first three passes of
    each prefetch its own line of every k step, AHEAD_BYTES ahead of the step they compute."""
    ks, block = 256, 5 * 192 * 256
    for sub_panel in range(3):
        lines = prefetched_lines(common.prefetch_plan, nt, ks, block, own_line=sub_panel)
        own = [(block + sub_panel * 64 + common.AHEAD_BYTES + k * STEP_BYTES) // 64 for k in range(ks)]
        assert sorted(lines) == own, f"sub-panel {sub_panel}: not its own lines, {common.AHEAD_BYTES} bytes ahead"
        assert set(lines.values()) == {min(nt, 3)}


def test_a_plan_that_misses_lines_is_caught():
    """Negative control: one line per k step in the first pass only covers a third of the next block."""

    def first_pass_only(nt, t, ks, block, step_bytes, own_line):
        return (PREFETCH_FLAG, block + ks * step_bytes, 64) if t == 0 else (0, 0, 0)

    lines = prefetched_lines(first_pass_only, 3, 192, 0)
    missing = set(next_block_lines(192, 0)) - set(lines)
    print(f"first pass only: {len(missing)} of {len(next_block_lines(192, 0))} lines missed")
    assert len(missing) == 2 * 192


@pytest.mark.parametrize("mode", ["f32", "int8", "bf16"])
def test_block_byte_is_the_packed_arrays_offset(mode):
    """The drivers' byte offset of (panel, k step) is where the packed array holds it, in every mode."""
    rng = np.random.default_rng(0)
    w = api.pack(rng.standard_normal((100, 70), dtype=np.float32), mode).arrays["w"]
    panels, steps = w.shape[:2]
    assert avx512.STEP_BYTES == avx2.STEP_BYTES == w[0, 0].nbytes == STEP_BYTES
    for panel in range(panels):
        for k0 in range(steps):
            where = w[panel, k0].ctypes.data - w.ctypes.data
            assert common.block_byte(panel, steps, k0, STEP_BYTES) == where, (mode, panel, k0)


@pytest.mark.parametrize("mr", [4, 5, 6, 8])
@pytest.mark.parametrize("rows", range(1, 70))
def test_tiles_are_balanced_and_cover_the_rows(rows, mr):
    nt = common.n_tiles(rows, mr)
    tiles = [common.tile_rows(rows, nt, t) for t in range(nt)]
    assert [offset for offset, _ in tiles] == [sum(n for _, n in tiles[:t]) for t in range(nt)]
    assert sum(n for _, n in tiles) == rows and max(n for _, n in tiles) <= mr
    assert max(n for _, n in tiles) - min(n for _, n in tiles) <= 1
