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
from ksmreplay.trace.events import Event, Ksm, Snapshot

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
        if len(args) > 13 or "clock" in kwargs:
            found[-2] += self.clocked().batches
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
