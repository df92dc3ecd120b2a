"""visit.c: the visits of a scan window, in C but for the rare ones.

GIVEN pages that merge (new KSM pages, stable merges, zero pages, unique
pages), then are written (copy-on-write breaks, changed checksums) and
scanned again, WHEN ksmd scans them with the native core, THEN the C loop
does every visit but the unstable-tree hits that make a new KSM page, and the
outcome is the one of the scalar walk.  (The engine-against-reference tests
run the accelerated scan on random traces: chains, stale nodes, forks.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ksmreplay import native
from ksmreplay.engine import Engine
from ksmreplay.ksm import Ksmd
from ksmreplay.trace.events import Alloc, Event, Ksm, Madvise, Settle, Snapshot, Write

pytestmark = pytest.mark.skipif(native.native() is None, reason="the native core was not built")

PAGE = 4096
BASE = 0x10000000
SECOND = 1_000_000_000


def _trace(pages: int, seed: int) -> list[Event]:
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
    events: list[Event] = [
        Ksm(1, 0, {"run": 1, "pages_to_scan": 500, "use_zero_pages": 1, "smart_scan": 1}),
        Alloc(2, 0, 1, BASE, pages * PAGE),
        Write(3, 0, 1, BASE, pages * PAGE, contents),
        Madvise(4, 0, 1, BASE, pages * PAGE, "mergeable"),
        Settle(5, 0, 3),
        Snapshot(6, 0, "merged"),
    ]
    for i, page in enumerate(dirty.tolist()):
        events.append(Write(7 + i, SECOND, 1, BASE + page * PAGE, PAGE, int(rng.integers(1, 60))))
    n = len(events) + 1
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


@pytest.mark.parametrize("seed", range(3))
def test_only_unstable_tree_hits_are_handed_back(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _trace(3000, seed)
    monkeypatch.setenv(native.ENV, "0")
    expected = _replay(events)
    monkeypatch.delenv(native.ENV)
    hits: list[bool] = []
    cmp_and_merge = Ksmd._cmp_and_merge

    def watched(self: Ksmd, slot: Any, row: int, view: Any, k: int, page: int) -> None:
        frame = int(view[k])
        content = int(self.mem.frames.content[frame])
        hits.append(not self.mem.frames.ksm[frame] and self.unstable.get(content) is not None)
        cmp_and_merge(self, slot, row, view, k, page)

    monkeypatch.setattr(Ksmd, "_cmp_and_merge", watched)
    assert _replay(events) == expected
    assert all(hits)
    # ... and those are the new KSM pages, not a handful of the visits.
    assert expected[0]["ksm"]["pages_shared"] <= len(hits) < 3000 // 10
