"""visit.c: the visits of a scan window, in C but for the rare ones.

GIVEN pages that merge (new KSM pages, stable merges, zero pages, unique
pages), then are written (copy-on-write breaks, changed checksums) and
scanned again, WHEN ksmd scans them with the native core, THEN the C loop
does every visit, new KSM pages included, and hands back only the
unstable-tree hits whose partner is outside the window (in another
process, here); the outcome is the one of the scalar walk.  (The
engine-against-reference tests run the accelerated scan on random traces:
chains, stale nodes, forks; tests/test_chains.py chains and 6.1.)
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from randtrace import large_random_trace, random_trace

from ksmreplay import arrays, native
from ksmreplay.engine import Engine
from ksmreplay.ksm import Ksmd
from ksmreplay.ksm import contentmap as contentmap_module
from ksmreplay.ksm import items as items_module
from ksmreplay.ksm.contentmap import ContentMap
from ksmreplay.trace.events import Alloc, Event, Ksm, Madvise, Settle, Snapshot, Write
from ksmreplay.vm import frames as frames_module

pytestmark = pytest.mark.skipif(native.native() is None, reason="the native core was not built")

PAGE = 4096
BASE = 0x10000000
SECOND = 1_000_000_000


def _trace(pages: int, seed: int, procs: int = 1) -> list[Event]:
    rng = np.random.default_rng(seed)
    # A quarter zero pages, half of 40 shared contents, a quarter unique.
    contents = rng.choice(
        np.concatenate(
            [
                np.zeros(pages // 4, np.uint64),
                rng.integers(1, 41, pages // 2).astype(np.uint64),
                np.arange(1000, 1000 + pages - pages // 4 - pages // 2, dtype=np.uint64),
            ]
        ),
        pages,
        replace=False,
    )
    dirty = np.sort(rng.choice(pages, pages // 10, replace=False))
    per = pages // procs
    events: list[Event] = [
        Ksm(0, 0, {"run": 1, "pages_to_scan": 500, "use_zero_pages": 1, "smart_scan": 1})
    ]
    for pid in range(1, procs + 1):
        part = contents[(pid - 1) * per : pid * per]
        events += [
            Alloc(len(events), 0, pid, BASE, per * PAGE),
            Write(len(events) + 1, 0, pid, BASE, per * PAGE, part),
            Madvise(len(events) + 2, 0, pid, BASE, per * PAGE, "mergeable"),
        ]
    events += [Settle(len(events), 0, 3), Snapshot(len(events) + 1, 0, "merged")]
    for page in dirty.tolist():
        pid, page = 1 + page // per % procs, page % per
        events.append(
            Write(len(events), SECOND, pid, BASE + page * PAGE, PAGE, int(rng.integers(1, 60)))
        )
    n = len(events)
    events += [Settle(n, SECOND, 3), Snapshot(n + 1, SECOND, "rewritten")]
    return events


def _replay(events: list[Event]) -> list[dict[str, Any]]:
    engine = Engine("unshare", PAGE)
    snaps = []
    for event in events:
        engine.apply(event)
        engine.check_invariants()
        if isinstance(event, Snapshot):
            snaps.append(engine.snapshot(event.label, event.t, event.index))
    return snaps


def _handed_back(
    events: list[Event], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[dict[str, Any]], list[tuple[bool, bool]], int]:
    """The native core's replay, each visit it handed back (an unstable-tree
    hit?, its partner in another process?) and the new KSM pages it made."""
    handed: list[tuple[bool, bool]] = []
    made = [0]
    cmp_and_merge, take_in = Ksmd._cmp_and_merge, Ksmd._made

    def watched(self: Ksmd, slot: Any, row: int, view: Any, k: int, page: int) -> None:
        frame = int(view[k])
        partner = self.unstable.get(int(self.mem.frames.content[frame]))
        hit = not self.mem.frames.ksm[frame] and partner is not None
        elsewhere = hit and self.items.slot_of(partner) != slot.id
        handed.append((hit, elsewhere))
        cmp_and_merge(self, slot, row, view, k, page)

    def counted(self: Ksmd, done: Any) -> None:
        made[0] += done.pairs
        take_in(self, done)

    with monkeypatch.context() as m:
        m.setattr(Ksmd, "_cmp_and_merge", watched)
        m.setattr(Ksmd, "_made", counted)
        return _replay(events), handed, made[0]


@pytest.mark.parametrize("seed", range(2))
def test_every_visit_is_done_in_c(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process: every partner is in the window, so nothing is handed back."""
    events = _trace(3000, seed)
    monkeypatch.setenv(native.ENV, "0")
    expected = _replay(events)
    monkeypatch.delenv(native.ENV)
    got, handed, made = _handed_back(events, monkeypatch)
    assert got == expected
    assert handed == []
    assert made >= expected[0]["ksm"]["pages_shared"] > 0


@pytest.mark.parametrize("seed", [0])
def test_partners_in_another_process_are_handed_back(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three processes: a new KSM page whose partner is in another process's
    window is made by the scalar ksmd, and nothing else is handed back."""
    events = _trace(3000, seed, procs=3)
    monkeypatch.setenv(native.ENV, "0")
    expected = _replay(events)
    monkeypatch.delenv(native.ENV)
    got, handed, made = _handed_back(events, monkeypatch)
    assert got == expected
    assert handed and all(hit and elsewhere for hit, elsewhere in handed)
    assert made > 0
    assert len(handed) < 3000 // 10


def test_a_window_step_ends_every_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes, pages dropped between passes: the native step of a
    window ends every way (too few free items for its new pages, a visit
    handed back, all done with stale items freed in C), and the outcome is
    the scalar walk's.  (The engine-against-reference tests take windows with
    stale items before them, in steps.)"""
    events = _trace(3000, 1, procs=3)
    n = len(events)
    # Every eighth page of the first process goes (its items go stale).
    events += [
        Madvise(n + i, 2 * SECOND, 1, BASE + page * PAGE, PAGE, "dontneed")
        for i, page in enumerate(range(0, 1000, 8))
    ]
    n = len(events)
    events += [Settle(n, 2 * SECOND, 2), Snapshot(n + 1, 2 * SECOND, "dropped")]
    monkeypatch.setenv(native.ENV, "0")
    expected = _replay(events)
    monkeypatch.delenv(native.ENV)
    endings: list[int] = []
    freed = [0]
    step, walk, walked_step = native.Native.step, native.Native.walk, native.Native.walked_step

    def watched(self: native.Native, *args: Any, **kwargs: Any) -> native.Stepped:
        done = step(self, *args, **kwargs)
        endings.append(done.status)
        freed[0] += done.freed
        return done

    def walked(self: native.Native, *args: Any, **kwargs: Any) -> native.Walked:
        done = walk(self, *args, **kwargs)
        freed[0] += done.freed
        return done

    def left(self: native.Native) -> native.Stepped:
        done = walked_step(self)
        endings.append(done.status)
        freed[0] += done.freed
        return done

    monkeypatch.setattr(native.Native, "step", watched)
    monkeypatch.setattr(native.Native, "walk", walked)
    monkeypatch.setattr(native.Native, "walked_step", left)
    assert _replay(events) == expected
    assert {native.STEP_ALLOC, native.STEP_HANDED, native.STEP_DONE} <= set(endings)
    assert freed[0] > 0


def _items(events: list[Event]) -> tuple[Any, ...]:
    """The rmap_item table after a replay: each row's mm slot and page, and its free stack."""
    engine = Engine("unshare", PAGE)
    for event in events:
        engine.apply(event)
    items = engine.ksmd.items
    n, fresh, end = items.free_rows(0)[1:]
    freed = items.free_rows(0)[0][:n]
    return items.slots().tolist(), items.where.tolist(), freed.tolist(), fresh, end


def test_a_window_step_takes_the_rows_the_scalar_walk_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages dropped (their items freed), then more pages than that: the
    native step makes the new pages' items from the rows freed (the last
    freed first) and then from the rows never used (lowest first), in one
    window, as the scalar walk's ItemTable.alloc() does: every item has the
    same row, and the free stacks are the same."""
    events = _trace(1200, 2, procs=2)
    n = len(events)
    events += [
        Madvise(n + i, 2 * SECOND, 1, BASE + page * PAGE, PAGE, "dontneed")
        for i, page in enumerate(range(0, 80, 8))
    ]
    n = len(events)
    events += [Settle(n, 2 * SECOND, 2)]
    extra = BASE + (1 << 30)
    events += [
        Alloc(n + 1, 3 * SECOND, 1, extra, 400 * PAGE),
        Write(n + 2, 3 * SECOND, 1, extra, 400 * PAGE, 99),
        Madvise(n + 3, 3 * SECOND, 1, extra, 400 * PAGE, "mergeable"),
        Settle(n + 4, 3 * SECOND, 2),
    ]
    monkeypatch.setenv(native.ENV, "0")
    expected = _items(events)
    monkeypatch.delenv(native.ENV)
    mixed = []
    step = native.Native.step

    def watched(self: native.Native, *args: Any, **kwargs: Any) -> native.Stepped:
        n_free, fresh, _end = args[6]
        done = step(self, *args, **kwargs)
        if done.status != native.STEP_ALLOC and done.items > n_free:
            mixed.append((done.items, n_free, done.fresh - fresh))
        return done

    monkeypatch.setattr(native.Native, "step", watched)
    assert _items(events) == expected
    # (a step took every freed row and then unused ones)
    assert any(0 < n_free < made == n_free + unused for made, n_free, unused in mixed)


def test_tables_the_native_core_holds_still_grow_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rmap_items and the frames grow while ksmd's scan holds them for
    the native core: ksmd lets them go first, so that they grow in place
    (the same arrays made longer), not as copies beside the old rows."""
    grown: list[tuple[str, bool]] = []

    def watched(owner: object, name: str, length: int) -> None:
        # (an id, not the array: holding it here would keep it from growing in place)
        before, had = id(getattr(owner, name)), len(getattr(owner, name))
        arrays.grow_rows(owner, name, length)
        if had:
            grown.append((f"{type(owner).__name__}.{name}", id(getattr(owner, name)) == before))

    monkeypatch.setattr(items_module, "grow_rows", watched)
    monkeypatch.setattr(frames_module, "grow_rows", watched)
    events = _trace(3000, 0)
    n, more = len(events), BASE + (1 << 30)
    # (a second area after the first scans: the frames grow too while held)
    events += [
        Alloc(n, 2 * SECOND, 1, more, 3000 * PAGE),
        Write(n + 1, 2 * SECOND, 1, more, 3000 * PAGE, 5),
        Madvise(n + 2, 2 * SECOND, 1, more, 3000 * PAGE, "mergeable"),
        Settle(n + 3, 2 * SECOND, 2),
        Snapshot(n + 4, 2 * SECOND, "more"),
    ]
    _replay(events)
    tables = {name for name, _ in grown if not name.startswith("FreeStack")}
    assert {"ItemTable.hot", "ItemTable.hnext", "FrameTable.content"} <= tables
    assert all(in_place for name, in_place in grown if name in tables)


def test_a_content_map_the_native_core_holds_grows_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three processes' pages, first all alike, then each unique: the
    unstable tree's table grows while ksmd's scan holds it for the native
    core; ksmd lets it go first, so that it grows in place (the same array
    made longer, its entries moved within it), never as a new table beside
    the old one or a copy of its entries; and the map still finds them all."""
    grown: list[tuple[int, int, bool]] = []
    copies: list[int] = []
    new_table = ContentMap._new_table

    def watched(owner: object, name: str, length: int) -> None:
        # (an id, not the array: holding it here would keep it from growing in place)
        before, had = id(getattr(owner, name)), len(getattr(owner, name))
        arrays.grow_rows(owner, name, length)
        grown.append((had, length, id(getattr(owner, name)) == before))

    def making(self: ContentMap) -> None:
        copies.append(1)
        new_table(self)

    monkeypatch.setattr(contentmap_module, "grow_rows", watched)
    monkeypatch.setattr(ContentMap, "_new_table", making)
    per = 3000
    events: list[Event] = [Ksm(0, 0, {"run": 1, "pages_to_scan": 500})]
    for pid in (1, 2, 3):
        events += [
            Alloc(len(events), 0, pid, BASE, per * PAGE),
            Write(len(events) + 1, 0, pid, BASE, per * PAGE, 7),
            Madvise(len(events) + 2, 0, pid, BASE, per * PAGE, "mergeable"),
        ]
    events.append(Settle(len(events), 0, 3))
    for pid in (1, 2, 3):
        unique = np.arange(pid * per, (pid + 1) * per, dtype=np.uint64) + 100
        events.append(Write(len(events), SECOND, pid, BASE, per * PAGE, unique))
    events += [Settle(len(events), SECOND, 3), Snapshot(len(events) + 1, SECOND, "unique")]
    snapshots = _replay(events)
    # (a growth from more than the first table: made while the scan held it)
    assert len(grown) >= 2 and grown[-1][0] > 1024
    assert all(in_place for _had, _length, in_place in grown)
    assert len(copies) == 2  # (the stable and unstable trees' first tables only)
    # the same outcome as the scalar walk, whose table is made anew at each growth
    monkeypatch.setenv(native.ENV, "0")
    assert _replay(events) == snapshots
    assert len(copies) > 4


def test_a_grown_content_map_keeps_its_entries() -> None:
    """A table grown in place with tombstones and old generations in it: the
    live entries are all found after, the deleted ones not, under the next
    generation."""
    m = ContentMap(bits=6)
    keys = np.arange(1, 200, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    m.insert_new(keys[:40], np.arange(40, dtype=np.int64))
    m.clear()  # (an older generation left in the slots)
    m.insert_new(keys[40:80], np.arange(40, 80, dtype=np.int64))
    for key in keys[40:50].tolist():
        del m[key]  # (tombstones)
    m.insert_new(keys[80:], np.arange(80, 199, dtype=np.int64))  # (grows)
    want = np.concatenate([np.full(50, -1), np.arange(50, 199)])
    assert m.find(keys).tolist() == want.tolist()
    assert len(m) == 149 and sorted(v for _k, v in m.items()) == list(range(50, 199))


# -- the scalar walk and the native core agree -------------------------------------


def _snapshots(events: list[Event]) -> tuple[list[dict[str, Any]], bool]:
    """The v6 snapshot after every event (invariants checked), and whether the native core ran."""
    engine = Engine("v6", PAGE)
    snaps = []
    for event in events:
        engine.apply(event)
        engine.check_invariants()
        snaps.append(dict(engine.snapshot("x", event.t, event.index)))
    return snaps, engine.ksmd.native is not None


@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
def test_scalar_and_native_agree_in_v6(large: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN random traces with zero pages, use_zero_pages, unmerging, forks and exits
    traces = (
        [large_random_trace(s) for s in range(6)]
        if large
        else [random_trace(s, n_events=90) for s in range(30)]
    )
    flagged = unflagged = 0
    for events in traces:
        # WHEN v6 replays each on the scalar walk and on the native core
        monkeypatch.setenv(native.ENV, "0")
        scalar, ran_native = _snapshots(events)
        assert not ran_native
        monkeypatch.delenv(native.ENV)
        core, ran_native = _snapshots(events)
        assert ran_native, "v6 did not run on the native core"
        # THEN every snapshot is the same
        assert core == scalar
        counts = [s["ksm"]["zero_pages_sharing"] for s in scalar]
        flagged += sum(b > a for a, b in itertools.pairwise(counts))
        unflagged += sum(b < a for a, b in itertools.pairwise(counts))
    # and the traces flagged items and cleared flags
    assert flagged > 0 and unflagged > 0
