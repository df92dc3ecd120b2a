"""The front of a scan window: window.c and the numpy path agree exactly.

GIVEN random windows (present and missing pages, pages with and without
items, KSM pages linked to their item or not, flagged items, every smart_scan
age and skip count) and budgets that stop the walk anywhere, WHEN the front
runs with and without the accelerator on copies of the same state, THEN it
lists the same positions with the same visit counts and skips, finds the same
stale items, counts the same, and leaves the same ages, skip counts and item
states (skipped items of an earlier pass's unstable tree leave it).
"""

from __future__ import annotations

import numpy as np
import pytest

from ksmreplay import accel
from ksmreplay.contentmap import SLOT
from ksmreplay.ksm import ITEM_COLD, ITEM_HOT, NONE, STABLE, UNSTABLE, ZERO_PAGE_FLAG, Ksmd
from ksmreplay.modes import MODES
from ksmreplay.vm import PTE_KSM_ZERO, PTE_NONE, PTE_ZERO

pytestmark = pytest.mark.skipif(
    accel.build_accelerator() is None, reason="the accelerator cannot be built here"
)

FRAMES, ITEMS = 300, 400


def _ksmd(rng: np.random.Generator, smart: bool, seed: int) -> Ksmd:
    knobs = {"smart_scan": int(smart)}
    ksmd = Ksmd(MODES["v6"], knobs.__getitem__, lambda _n: None)
    fr, it = ksmd.mem.frames, ksmd.items
    fr.ksm = rng.random(FRAMES) < 0.4
    fr.node = np.where(fr.ksm, rng.integers(0, 5, FRAMES), -1).astype(np.int32)
    it.age[:ITEMS] = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 254, 255], np.uint8), ITEMS)
    it.skips[:ITEMS] = rng.integers(0, 9, ITEMS).astype(np.uint8)
    it.state[:ITEMS] = rng.choice(np.array([NONE, UNSTABLE, STABLE], np.int8), ITEMS)
    passes = np.random.default_rng([seed, 1])  # (leaves the draws above as they were)
    it.seq[:ITEMS] = passes.integers(0, 3, ITEMS).astype(np.uint8)
    ksmd.seqnr = int(passes.integers(0, 3)) + 256 * int(passes.integers(0, 2))
    it.node[:ITEMS] = rng.integers(0, 5, ITEMS).astype(np.int32)
    it.flags[:ITEMS] = np.where(rng.random(ITEMS) < 0.1, ZERO_PAGE_FLAG, 0).astype(np.uint16)
    return ksmd


def _window(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    present = rng.random(n) < rng.random()
    markers = rng.choice(np.array([PTE_NONE, PTE_ZERO, PTE_KSM_ZERO]), n)
    ptes = np.where(present, rng.integers(0, FRAMES, n), markers).astype(np.int64)
    # Items at distinct rows; some pages without one.
    imap = rng.permutation(ITEMS)[:n].astype(np.int64)
    imap[rng.random(n) < 0.2] = -1
    return ptes, imap


def _front(
    seed: int, accelerated: bool, monkeypatch: pytest.MonkeyPatch, merge: bool = False
) -> tuple[object, ...]:
    monkeypatch.setenv(accel.ENV, "1" if accelerated else "0")
    rng = np.random.default_rng(seed)
    smart = bool(seed % 3)
    ksmd = _ksmd(rng, smart, seed)
    n = int(rng.integers(1, 300))
    ptes, imap = _window(rng, n)
    budget = int(rng.integers(1, n + 2))
    front = ksmd._window_front(ptes, imap, budget, merge)
    found = None if front is None else tuple(np.asarray(f).tolist() for f in front)
    it = ksmd.items
    return found, it.age.tolist(), it.skips.tolist(), it.state.tolist()


def test_the_item_records_are_laid_out_alike() -> None:
    """window.c and visit.c read ItemTable.hot and .cold as item.h's structs."""
    fast = accel.build_accelerator()
    assert fast is not None
    layout = []
    for dtype in (ITEM_HOT, ITEM_COLD):
        assert dtype.fields is not None
        layout += [dtype.fields[name][1] for name in dtype.names or ()] + [dtype.itemsize]
    assert fast.item_layout() == layout


def test_the_table_slots_are_laid_out_alike() -> None:
    """contentmap.c and visit.c read ContentMap's table as slot.h's struct slot."""
    fast = accel.build_accelerator()
    assert fast is not None
    assert SLOT.fields is not None
    offsets = [SLOT.fields[name][1] for name in SLOT.names or ()]
    assert fast.slot_layout() == [*offsets, SLOT.itemsize]


@pytest.mark.parametrize("seed", range(300))
def test_window_c_matches_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _front(seed, True, monkeypatch) == _front(seed, False, monkeypatch)


@pytest.mark.parametrize("seed", range(100))
def test_a_merged_front_lists_the_stale_items_in_place(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For visit.c, window.c lists the stale positions too, in address order."""
    plain, *items = _front(seed, False, monkeypatch)
    merged, *merged_items = _front(seed, True, monkeypatch, merge=True)
    assert merged_items == items
    if plain is None:
        assert merged is None
        return
    assert isinstance(plain, tuple) and isinstance(merged, tuple)
    pos, cum, skip, stale, *counts = plain
    entries = sorted(
        [(p, c, int(k)) for p, c, k in zip(pos, cum, skip, strict=True)]
        + [(p, -1, accel.LISTED_STALE) for p in stale]
    )
    m_pos, m_cum, m_kind, m_stale, *m_counts = merged
    assert [(p, k) for p, _c, k in entries] == list(zip(m_pos, m_kind, strict=True))
    listed = [i for i, (_p, _c, k) in enumerate(entries) if k != accel.LISTED_STALE]
    assert [entries[i][1] for i in listed] == [m_cum[i] for i in listed]
    assert (m_stale, m_counts) == (stale, counts)


def test_the_fronts_differ_when_they_should(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is not vacuous: windows list things, skip, stop and find stale items."""
    fronts = [_front(seed, False, monkeypatch)[0] for seed in range(300)]
    present = [f for f in fronts if f is not None]
    assert len(present) > 200
    assert sum(1 for f in present if f[7]) > 50  # stopped by the budget
    assert sum(1 for f in present if f[5]) > 50  # something skipped
    assert sum(1 for f in present if f[3]) > 50  # stale items
    assert sum(1 for f in present if len(f[0]) < f[4]) > 50  # linked visits left out
    assert sum(1 for f in present if f[8]) > 30  # skipped items left an unstable tree
