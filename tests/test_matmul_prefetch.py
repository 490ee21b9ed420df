"""The products' prefetch plan (kernels/common.py: ``prefetch_plan``, ``block_byte``): the passes over a
block of B (on AVX2 the row tiles of the panel's three 16-column sub-panels in turn) prefetch exactly the
next block, each line once; the byte offsets are the packed arrays' own; and the tile split
(``tile_rows``) is balanced. Prefetches change no result
(tests/test_matmul_kernels.py holds every tier to the NumPy reference at the batch-1 sizes that use
them); what is checked here is that they reach the memory the next block reads."""

import numpy as np
import pytest

from refimpl.engines.fast.kernels import amx, avx2, avx512, common
from refimpl.engines.fast.kernels import matmul as api
from refimpl.engines.fast.kernels.intrinsics import PREFETCH_FLAG

STEP_BYTES = 192  # 48 float32, 48 x 4 int8, 48 x 2 bf16 per k step


def prefetched_lines(plan, nt, ks, block, step_bytes=STEP_BYTES):
    """Every cache line the nt passes over one block prefetch, with how often."""
    lines = {}
    for t in range(nt):
        flag, start, stride = plan(nt, t, ks, block, step_bytes)
        assert flag % PREFETCH_FLAG == 0 and 0 <= flag // PREFETCH_FLAG <= step_bytes // 64
        for k in range(ks):
            for line in range(flag // PREFETCH_FLAG):
                address = start + k * stride + 64 * line
                lines[address // 64] = lines.get(address // 64, 0) + 1
    return lines


def next_block_lines(ks, block):
    return list(range((block + ks * STEP_BYTES) // 64, (block + 2 * ks * STEP_BYTES) // 64))


@pytest.mark.parametrize("nt", [1, 2, 3, 4, 6, 7, 9, 31, 32, 72, 108])  # AVX2: 3 sub-panels x 1-36 row tiles
@pytest.mark.parametrize("ks", sorted({1, 5, avx2.KC_F32, avx2.KC_I8, avx2.KC_BF16, avx512.KC, 256}))
def test_the_passes_prefetch_the_next_block_each_line_once(nt, ks):
    block = 3 * 192 * 256  # any block of a panel
    lines = prefetched_lines(common.prefetch_plan, nt, ks, block)
    print(f"nt={nt} ks={ks}: {sum(lines.values())} prefetches for {len(next_block_lines(ks, block))} lines")
    assert sorted(lines) == next_block_lines(ks, block), f"nt={nt} ks={ks}: not exactly the next block's lines"
    assert set(lines.values()) == {1}, f"nt={nt} ks={ks}: a line prefetched twice"


@pytest.mark.parametrize("tiles", range(1, 40))
def test_avx2_passes_prefetch_at_most_one_line_per_step(tiles):
    """The AVX2 microkernels are built for one prefetched line per k step (more spill their pointer
    registers); a pass asked for more would stop the process (llvm.trap). The items plan for three
    sub-panels' row tiles, 3 x tiles passes, whatever the last panel holds."""
    for ks in (1, 96, 192):
        for t in range(3 * tiles):
            flag, _, _ = common.prefetch_plan(3 * tiles, t, ks, 0, STEP_BYTES)
            assert flag // PREFETCH_FLAG <= 1, f"{tiles} tiles, pass {t}: {flag // PREFETCH_FLAG} lines"


def test_a_plan_that_misses_lines_is_caught():
    """Negative control: one line per k step in the first pass only covers a third of the next block."""

    def first_pass_only(nt, t, ks, block, step_bytes):
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


@pytest.mark.parametrize("rows", range(1, 300))
def test_amx_tiles_are_one_height_and_cover_the_rows(rows):
    """amx.tile_span (plain Python: runs without AMX): every tile of a work item as tall, at most 16
    rows, inside the item, every row covered, and only the last tile moved back onto the one before."""
    nt = common.n_tiles(rows, amx.MR)
    tiles = [amx.tile_span.py_func(rows, nt, t) for t in range(nt)]
    assert len({height for _, height in tiles}) == 1 and 1 <= tiles[0][1] <= amx.MR
    assert all(0 <= first and first + height <= rows for first, height in tiles)
    assert set().union(*(range(first, first + height) for first, height in tiles)) == set(range(rows))
    starts = [first for first, _ in tiles]
    assert starts[:-1] == [t * tiles[0][1] for t in range(nt - 1)] and starts == sorted(starts)
