"""Page-table runs: a window's chunks as few long segments, the same entries.

GIVEN a page table whose chunks were made in a random order (so that rows
follow keys only in places, across several blocks), WHEN a range is read as
runs with a chunk limit, THEN the runs hold exactly the entries the per-chunk
segments hold, in address order, over the first ``limit`` existing chunks;
two runs are never next to each other both in pages and in memory; and
writes through a run reach the page table.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from ksmreplay.native import CHUNK_SHIFT
from ksmreplay.vm import BLOCK, CHUNK, PageTable


def _table(rng: random.Random) -> PageTable:
    pt = PageTable()
    keys = sorted(rng.sample(range(3 * BLOCK), rng.randrange(1, 2 * BLOCK)))
    if rng.random() < 0.5:
        made = list(keys)  # in address order: long runs
    else:
        made = keys[:]
        rng.shuffle(made)
    for key in made:
        pt.chunk(key)[:] = np.arange(CHUNK) + key * CHUNK
    return pt


@pytest.mark.parametrize("seed", range(60))
def test_runs_hold_what_segments_hold(seed: int) -> None:
    rng = random.Random(seed)
    pt = _table(rng)
    start = rng.randrange(0, (3 * BLOCK) << CHUNK_SHIFT)
    end = rng.randrange(start + 1, ((3 * BLOCK) << CHUNK_SHIFT) + 2)
    limit = rng.choice([1, 2, 7, 64, 10**6])
    runs = pt.runs(start, end, limit)
    segs = list(pt.segments(start, end))[:limit]
    flat = [(lo, hi, v.tolist()) for lo, hi, v in runs]
    assert sum(hi - lo for lo, hi, _ in flat) == sum(hi - lo for lo, hi, _ in segs)
    pages = [p for lo, hi, _ in flat for p in range(lo, hi)]
    assert pages == [p for lo, hi, _ in segs for p in range(lo, hi)]
    assert [x for _, _, v in flat for x in v] == [x for _, _, v in segs for x in v.tolist()]
    # Entries hold their own page number: each run is one stretch of pages.
    for lo, hi, v in flat:
        assert v == list(range(lo, hi))
    # Consecutive runs are apart in keys or in rows (or blocks), never both next.
    for (_, hi, a), (lo, _, b) in itertools.pairwise(runs):
        joined = hi == lo and a.base is b.base
        assert not joined or a.ctypes.data + a.nbytes != b.ctypes.data


def test_a_run_is_a_view_of_the_table() -> None:
    pt = PageTable()
    pt.locate(np.arange(4))  # made together: one block
    for key in range(4):
        pt.chunk(key)[:] = -1
    [(lo, hi, view)] = pt.runs(100, 3 * CHUNK + 5, 10)
    assert (lo, hi) == (100, 3 * CHUNK + 5)
    view[:] = 7
    assert pt.get(99) == -1 and pt.get(100) == 7 and pt.get(3 * CHUNK + 4) == 7
    assert pt.get(3 * CHUNK + 5) == -1


def test_runs_stop_at_block_ends_and_gaps() -> None:
    # GIVEN BLOCK + 3 chunks made at once (a full block and part of the next), and one apart
    pt = PageTable()
    pt.locate(np.arange(BLOCK + 3))
    pt.chunk(BLOCK + 10)
    runs = pt.runs(0, 1 << 40, 10**6)
    bounds = [(lo >> CHUNK_SHIFT, hi >> CHUNK_SHIFT) for lo, hi, _ in runs]
    assert bounds == [(0, BLOCK), (BLOCK, BLOCK + 3), (BLOCK + 10, BLOCK + 11)]
    assert pt.covers(0, BLOCK + 2) and not pt.covers(0, BLOCK + 3)


def test_blocks_grow_with_the_table() -> None:
    # GIVEN chunks made one at a time
    pt = PageTable()
    for key in range(3 * BLOCK):
        pt.chunk(2 * key)
    # THEN the first blocks are small (a process with one chunk costs one chunk),
    # later ones double up to BLOCK rows
    sizes = pt.block_rows
    assert sizes[:4] == [1, 1, 2, 4]
    assert max(sizes) == BLOCK and sum(sizes) == 3 * BLOCK + sum(sizes) - pt.rows
    assert pt.rows == 3 * BLOCK
