"""The products' prefetch plan (kernels/common.py: ``prefetch_plan``): the passes over a block of B prefetch
the whole next block, a bounded number of times; and the tile split (``tile_rows``) is balanced.
Prefetches change no result (tests/test_matmul_kernels.py holds every tier to the NumPy reference at the
batch-1 sizes that use them); what is checked here is that they reach the memory the next block reads."""

import pytest

from refimpl.engines.fast.kernels import common
from refimpl.engines.fast.kernels.intrinsics import PREFETCH_FLAG

STEP_BYTES = 192  # 48 float32, 48 x 4 int8, 48 x 2 bf16 per k step


def prefetched_lines(plan, nt, ks, block_byte, step_bytes=STEP_BYTES, sub_panel=0, sub_panel_bytes=0):
    """Every cache line the nt passes over one block prefetch, with how often."""
    lines = {}
    for t in range(nt):
        flag, start, stride = plan(nt, t, ks, block_byte, step_bytes, sub_panel, sub_panel_bytes)
        assert flag % PREFETCH_FLAG == 0 and 0 <= flag // PREFETCH_FLAG <= step_bytes // 64
        for k in range(ks):
            for line in range(flag // PREFETCH_FLAG):
                address = start + k * stride + 64 * line
                lines[address // 64] = lines.get(address // 64, 0) + 1
    return lines


def coverage(plan, nt, ks, block_byte=3 * 192 * 256):
    """(lines of the next block never prefetched, prefetches in all, the next block's lines, lowest line)."""
    lines = prefetched_lines(plan, nt, ks, block_byte)
    next_block = range((block_byte + ks * STEP_BYTES) // 64, (block_byte + 2 * ks * STEP_BYTES) // 64)
    missing = [line for line in next_block if line not in lines]
    return missing, sum(lines.values()), next_block, min(lines, default=None)


@pytest.mark.parametrize("nt", [1, 2, 3, 4, 7, 31, 32])
@pytest.mark.parametrize("ks", [1, 5, 192, 256])
def test_the_passes_prefetch_all_of_the_next_block(nt, ks):
    missing, total, next_block, lowest = coverage(common.prefetch_plan, nt, ks)
    print(f"nt={nt} ks={ks}: {total} prefetches for {len(next_block)} lines, {len(missing)} missed")
    assert not missing, f"nt={nt} ks={ks}: {len(missing)} of the next block's {len(next_block)} lines never prefetched"
    assert total <= 2 * len(next_block), "more than two prefetches per line of the next block"
    assert lowest >= next_block.start, "a pass prefetches the block it is computing on"


@pytest.mark.parametrize("nt", [1, 2, 3, 5, 11])
def test_sub_panels_prefetch_all_of_the_next_block_between_them(nt):
    """AVX2's items are 16-column sub-panels (64 of the 192 bytes of a k step): the three sub-panels'
    passes prefetch the whole next block between them, once when there are 3 passes or more."""
    ks, block_byte = 256, 5 * 192 * 256
    lines = {}
    for sub_panel in range(3):
        for line, count in prefetched_lines(
            common.prefetch_plan, nt, ks, block_byte, STEP_BYTES, sub_panel, 64
        ).items():
            lines[line] = lines.get(line, 0) + count
    next_block = range((block_byte + ks * STEP_BYTES) // 64, (block_byte + 2 * ks * STEP_BYTES) // 64)
    assert sorted(lines) == list(next_block), f"nt={nt}: not exactly the next block's lines"
    assert set(lines.values()) == {1}, f"nt={nt}: a line prefetched more than once"
    if nt >= 3:  # the first sub-panel's passes prefetch it all
        assert prefetched_lines(common.prefetch_plan, nt, ks, block_byte, STEP_BYTES, 1, 64) == {}


def test_a_plan_that_misses_lines_is_caught():
    """Negative control: one line per k step in the first pass only covers a third of the next block."""

    def first_pass_only(nt, t, ks, block_byte, step_bytes, sub_panel, sub_panel_bytes):
        return (PREFETCH_FLAG, block_byte + ks * step_bytes, 64) if t == 0 else (0, 0, 0)

    missing, _, next_block, _ = coverage(first_pass_only, 3, 192)
    print(f"first pass only: {len(missing)} of {len(next_block)} lines missed")
    assert len(missing) == 2 * len(next_block) // 3


@pytest.mark.parametrize("rows", range(1, 70))
def test_tiles_are_balanced_and_cover_the_rows(rows):
    mr = 8
    nt = common.n_tiles(rows, mr)
    tiles = [common.tile_rows(rows, nt, t) for t in range(nt)]
    assert [offset for offset, _ in tiles] == [sum(n for _, n in tiles[:t]) for t in range(nt)]
    assert sum(n for _, n in tiles) == rows and max(n for _, n in tiles) <= mr
    assert max(n for _, n in tiles) - min(n for _, n in tiles) <= 1
