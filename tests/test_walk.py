"""walk.c: a batch's windows over a VMA, found and stepped in C.

GIVEN random traces (mappings of hundreds of pages over several page-table
chunks, smart_scan, chains at small max_page_sharing, forks, exits, pages
dropped, VMAs made unmergeable and mergeable again between batches, knobs
changed), WHEN ksmd scans them with the native core walking each VMA's
windows itself (``Ksmd._walk_native``) and running wake-up after wake-up
(``Ksmd.batches``: sleeping or not, with the advisor), THEN the reports,
ksmd's CPU time and the rmap_items (every row's mm and page, the free stack)
are those of one step per window and one call per batch
(``Ksmd.native_walk`` off), and of the scalar walk; the walk ends every way
(the VMA done, the budget used up, before a window it leaves to Python,
after a step Python must finish).  The native core prices a batch and says
when the next starts as ``timing`` does, for any work and knobs.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
from randtrace import large_random_trace, random_trace

from ksmreplay import native, timing
from ksmreplay.engine import Engine
from ksmreplay.ksm import Ksmd
from ksmreplay.ksm.stable import PRUNE_CLAMP
from ksmreplay.trace.events import Alloc, Event, Ksm, Madvise, Snapshot, Write

pytestmark = pytest.mark.skipif(native.native() is None, reason="the native core was not built")

PAGE = 4096


def _replay(events: list[Event], mode: str) -> tuple[Any, ...]:
    """Every snapshot, ksmd's CPU time and work, and the rmap_item table at the
    end: the rows used (mm and page), the free stack, and the table's length."""
    engine = Engine(mode, PAGE)
    snaps = []
    for event in events:
        engine.apply(event)
        if isinstance(event, Snapshot):
            snaps.append(engine.snapshot(event.label, event.t, event.index))
    engine.apply(Snapshot(len(events) + 1, events[-1].t, "end"))
    snaps.append(engine.snapshot("end", events[-1].t, len(events) + 1))
    engine.check_invariants()
    ksmd = engine.ksmd
    items = ksmd.items
    freed, n, fresh, end = items.free_rows(0)
    return (
        snaps,
        ksmd.cpu_ns,
        tuple(ksmd.work_done),
        items.slots(slice(0, fresh)).tolist(),
        items.pages(np.arange(fresh)).tolist(),
        freed[:n].tolist(),
        fresh,
        end,
    )


def _traces(
    knobs: dict[str, Any] | None = None, n: int = 8, until: int | None = None
) -> list[list[Event]]:
    """Random traces, ``n`` large and half as many small, up to time ``until``;
    ``knobs`` set with the first knob event."""
    traces = [large_random_trace(seed, 40) for seed in range(n)] + [
        random_trace(seed, 80) for seed in range(n // 2)
    ]
    if until is not None:
        traces = [[ev for ev in events if ev.t <= until] for events in traces]
    if knobs:
        for events in traces:
            first = next(i for i, ev in enumerate(events) if isinstance(ev, Ksm))
            ev = events[first]
            assert isinstance(ev, Ksm)
            events[first] = dataclasses.replace(ev, settings={**ev.settings, **knobs})
    return traces


CASES = [
    ("unshare", None, None),
    ("legacy", None, None),
    ("v6", None, None),
    ("unshare", {"pages_to_scan": 1000}, None),
    ("v6", {"pages_to_scan": 1000}, None),
    ("legacy", {"pages_to_scan": 300, "sleep_millisecs": 0}, 150_000_000),
    ("unshare", {"pages_to_scan": 800, "advisor_mode": "scan-time"}, None),
]
"""Modes, the knobs of the traces (as drawn, or so that wake-ups run in C:
``Engine._steady_period`` can never merge them) and where they end (ksmd
without a sleep runs many batches)."""


@pytest.mark.parametrize(("mode", "knobs", "until"), CASES)
def test_the_walk_in_c_is_one_step_per_window(
    mode: str, knobs: dict[str, Any] | None, until: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    found: Counter[int] = Counter()
    walk = native.Native.walk

    def watched(self: native.Native, *args: Any, **kwargs: Any) -> native.Walked:
        done = walk(self, *args, **kwargs)
        found[done.found] += 1
        found[-1] += done.stepped
        clock = args[14] if len(args) > 14 else kwargs.get("clock")
        if clock is not None:
            found[-2] += self.clocked().batches
            found[-3] += bool(clock.since)  # (a batch going on in the next VMA or mm)
        return done

    for events in _traces(knobs, 8 if knobs is None else 3, until):
        monkeypatch.setattr(Ksmd, "native_walk", False)
        expected = _replay(events, mode)
        monkeypatch.setattr(Ksmd, "native_walk", True)
        with monkeypatch.context() as m:
            m.setattr(native.Native, "walk", watched)
            assert _replay(events, mode) == expected
    assert found[-1] > found[native.WALKED_AFTER]  # (windows done wholly in C)
    if knobs is None:
        every = {native.WALKED_END, native.WALKED_BUDGET, native.WALKED_BEFORE}
        assert every | {native.WALKED_AFTER} <= set(found)
    else:
        assert found[-2] > 0  # (batches run whole in C)
    assert found[-3] > 0  # (batches that went on in C in the next VMA or mm)


@pytest.mark.parametrize("mode", ["unshare", "v6"])
def test_a_batch_goes_on_in_c_in_the_next_vma_and_mm(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where C walks a VMA to its end within a batch, the batch goes on in C
    (``Ksmd._following``) in the mm's next mergeable VMA, or in the next mm's
    when no item trails (else Python finishes the mm): the same as one step
    per window, and each way is taken."""
    ways: Counter[str] = Counter()
    following = Ksmd._following

    def watched(self: Ksmd, slot: Any, vma: Any) -> Any:
        found = following(self, slot, vma)
        ways["python" if found is None else "same mm" if found[0] is slot else "next mm"] += 1
        return found

    knobs = {"pages_to_scan": 300, "sleep_millisecs": 0}
    for events in [*_traces(knobs, 4, 150_000_000), _trailing()]:
        monkeypatch.setattr(Ksmd, "native_walk", False)
        expected = _replay(events, mode)
        monkeypatch.setattr(Ksmd, "native_walk", True)
        with monkeypatch.context() as m:
            m.setattr(Ksmd, "_following", watched)
            assert _replay(events, mode) == expected
    assert ways["same mm"] and ways["next mm"] and ways["python"], ways


def _trailing() -> list[Event]:
    """Five processes of 1,500 pages (a few contents, some pages zero; the
    later ones at lower addresses), mergeable in two VMAs, scanned a while;
    then a page in the first one's mapping is dropped, the head and the middle
    of the second's are made unmergeable (items before its first mergeable
    VMA), the whole of the third's (an mm with no mergeable VMA) and the tail
    of the fourth's (its items trailing); then scanned again."""
    rng = random.Random(3)
    n = 1500
    events: list[Event] = [Ksm(1, 0, {"run": 1, "pages_to_scan": 170, "sleep_millisecs": 0})]

    def add(event: type[Event], *args: Any) -> None:
        events.append(event(len(events) + 1, *args))

    def at(pid: int, page: int) -> int:
        return ((6 - pid) << 32) + page * PAGE

    for pid in range(1, 6):
        fps = np.array([rng.choice([0, 0, 1, 2, 3, rng.randrange(10**6)]) for _ in range(n)])
        add(Alloc, 0, pid, at(pid, 0), n * PAGE)
        add(Write, 0, pid, at(pid, 0), n * PAGE, fps.astype(np.uint64))
        add(Madvise, 0, pid, at(pid, 0), 700 * PAGE, "mergeable")
        add(Madvise, 0, pid, at(pid, 700), (n - 700) * PAGE, "mergeable")
    t = 30_000_000
    add(Snapshot, t, "scanned")
    add(Madvise, t, 1, at(1, 1000), PAGE, "dontneed")
    add(Madvise, t, 2, at(2, 0), 100 * PAGE, "unmergeable")
    add(Madvise, t, 2, at(2, 600), 300 * PAGE, "unmergeable")
    add(Madvise, t, 3, at(3, 0), n * PAGE, "unmergeable")
    add(Madvise, t, 4, at(4, 1100), 400 * PAGE, "unmergeable")
    add(Snapshot, 90_000_000, "again")
    return events


def test_the_native_clock_is_timing_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random work, working sets, sleeps and starts: ``ksr_batch_cost`` and
    ``ksr_next_wake`` give :func:`timing.batch_cost_ns` and
    :func:`timing.next_wake_ns`."""
    core = native.native()
    assert core is not None
    # (ksmreplay.h names the kinds of work in timing.Work's order)
    module = native._core
    kinds = [getattr(module, f"WORK_{name.upper()}") for name in timing.Work._fields]
    assert kinds == list(range(module.WORK_FIELDS))
    rng = random.Random(5)
    sleeps = [0, 1, 4, 5, 20, 100, 252, 1000, 5000, 60_000, 10**7, 2**40]
    for _ in range(3000):
        work = timing.Work(*(rng.choice([0, 1, rng.randrange(10**4)]) for _ in timing.Work._fields))
        pages = rng.choice([None, 0, 10, 3000, 10**6, rng.randrange(10**7)])
        msecs = rng.choice([*sleeps, rng.randrange(10**6)])
        start = rng.choice([0, rng.randrange(10**12), rng.randrange(PRUNE_CLAMP)])
        timeout, shift = timing.wake_clock(msecs)
        clock = native.Clock(
            tuple(timing.unit_prices(pages)), 0, 0, 0, 0, PRUNE_CLAMP, timeout, shift,
            timing.CPU_SHARE_PERCENT, timing.JIFFY_NS,
        )  # fmt: skip
        cost = timing.batch_cost_ns(work, pages)
        assert core.clock(tuple(work), clock, start) == (
            cost,
            timing.next_wake_ns(start, cost, msecs),
        )


def test_the_walk_in_c_is_the_scalar_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The scalar walk grows the rmap_item table by other steps: its length differs.)"""
    for events in _traces()[:4]:
        monkeypatch.setenv(native.ENV, "0")
        expected = _replay(events, "unshare")
        monkeypatch.delenv(native.ENV)
        assert _replay(events, "unshare")[:-1] == expected[:-1]
