"""walk.c: a batch's windows over a VMA, found and stepped in C.

GIVEN random traces (mappings of hundreds of pages over several page-table
chunks, smart_scan, chains at small max_page_sharing, forks, exits, pages
dropped, VMAs made unmergeable and mergeable again between batches, knobs
changed), WHEN ksmd scans them with the native core walking each VMA's
windows itself (``Ksmd._walk_native``), THEN the reports, ksmd's CPU time and
the rmap_items (every row's mm and page, the free stack) are those of one
step per window (``Ksmd.native_walk`` off), and of the scalar walk; the walk
ends every way (the VMA done, the budget used up, before a window it leaves
to Python, after a step Python must finish).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from randtrace import large_random_trace, random_trace

from ksmreplay import native
from ksmreplay.engine import Engine
from ksmreplay.ksm import Ksmd
from ksmreplay.trace.events import Event, Snapshot

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
        items.slot[:fresh].tolist(),
        items.page[:fresh].tolist(),
        freed[:n].tolist(),
        fresh,
        end,
    )


def _traces() -> list[list[Event]]:
    return [large_random_trace(seed, 40) for seed in range(8)] + [
        random_trace(seed, 80) for seed in range(4)
    ]


@pytest.mark.parametrize("mode", ["unshare", "legacy"])
def test_the_walk_in_c_is_one_step_per_window(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    found: Counter[int] = Counter()
    walk = native.Native.walk

    def watched(self: native.Native, *args: Any, **kwargs: Any) -> native.Walked:
        done = walk(self, *args, **kwargs)
        found[done.found] += 1
        found[-1] += done.stepped
        return done

    for events in _traces():
        monkeypatch.setattr(Ksmd, "native_walk", False)
        expected = _replay(events, mode)
        monkeypatch.setattr(Ksmd, "native_walk", True)
        with monkeypatch.context() as m:
            m.setattr(native.Native, "walk", watched)
            assert _replay(events, mode) == expected
    every = {native.WALKED_END, native.WALKED_BUDGET, native.WALKED_BEFORE, native.WALKED_AFTER}
    assert every <= set(found)
    assert found[-1] > found[native.WALKED_AFTER]  # (windows done wholly in C)


def test_the_walk_in_c_is_the_scalar_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The scalar walk grows the rmap_item table by other steps: its length differs.)"""
    for events in _traces()[:4]:
        monkeypatch.setenv(native.ENV, "0")
        expected = _replay(events, "unshare")
        monkeypatch.delenv(native.ENV)
        assert _replay(events, "unshare")[:-1] == expected[:-1]
