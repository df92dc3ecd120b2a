"""Wake-ups with no event between them run as one call to ksmd, with the same outcome.

GIVEN random traces whose events are far apart in time (many wake-ups
between two events, passes ending inside those stretches, stable chains
pruned by time), WHEN the engine replays them, THEN every snapshot after every
event equals the reference model's, which runs each wake-up on its own, and
over long quiet stretches the engine called ksmd far fewer times than ksmd
woke up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from randtrace import random_trace
from reference import ReferenceSimulator

from ksmreplay.engine import Engine
from ksmreplay.ksm import END
from ksmreplay.timing import next_wake_ns
from ksmreplay.trace.events import Alloc, Event, Ksm, Madvise, Snapshot, Write

pytestmark = pytest.mark.usefixtures("both_engines")

PAGE = 4096
BASE = 0x10000000
SECOND = 1_000_000_000


def stretched(seed: int, factor: int) -> list[Event]:
    """A random trace with its times multiplied by ``factor``, and small batches."""
    events = [dataclasses.replace(e, t=e.t * factor) for e in random_trace(seed, n_events=50)]
    first = events[0]
    assert isinstance(first, Ksm)
    knobs = {**first.settings, "pages_to_scan": 1 + seed % 7, "sleep_millisecs": 10}
    if seed % 2:
        knobs["stable_node_chains_prune_millisecs"] = 30
    events[0] = dataclasses.replace(first, settings=knobs)
    return events


@pytest.mark.parametrize("mode", ["legacy", "unshare"])
@pytest.mark.parametrize("seed", range(12))
def test_grouped_wake_ups_match_the_reference(seed: int, mode: str) -> None:
    engine_calls, wake_ups = replay_both(stretched(seed, 6), mode)
    assert engine_calls <= wake_ups


@pytest.mark.parametrize("prune_ms", [0, 30, 2000])
def test_long_quiet_stretches_take_few_calls(prune_ms: int) -> None:
    # GIVEN 300 pages of 3 contents (chains: at most 2 pages share a KSM page)
    # scanned 7 pages per wake-up, with seconds between the events
    pages = 300
    events: list[Event] = [
        Ksm(
            1,
            0,
            {
                "run": 1,
                "pages_to_scan": 7,
                "sleep_millisecs": 10,
                "max_page_sharing": 2,
                "stable_node_chains_prune_millisecs": prune_ms,
            },
        ),
        Alloc(2, 0, 1, BASE, pages * PAGE),
        Write(3, 0, 1, BASE, pages * PAGE, np.arange(pages, dtype=np.uint64) % 3 + 1),
        Madvise(4, 0, 1, BASE, pages * PAGE, "mergeable"),
        Snapshot(5, 3 * SECOND, "a"),
        Write(6, 3 * SECOND, 1, BASE, 9 * PAGE, 0),
        Snapshot(7, 9 * SECOND, "b"),
    ]
    engine_calls, wake_ups = replay_both(events, "unshare")
    # THEN (besides equal snapshots) the engine needed far fewer calls
    assert wake_ups > 400
    assert engine_calls * 10 < wake_ups


def replay_both(events: list[Event], mode: str) -> tuple[int, int]:
    """Replay ``events`` in the engine and the reference, comparing every snapshot;
    the number of ksmd calls of the engine and of wake-ups of the reference."""
    engine, reference = Engine(mode, 4096), ReferenceSimulator(mode, 4096)
    calls = {"engine": 0, "reference": 0}

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            if args[0] != END:  # (a settle's passes are not wake-ups)
                calls[name] += 1
            return method(*args)

        return counted

    engine.ksmd.batch = counting("engine", engine.ksmd.batch)  # type: ignore[method-assign]
    reference.wake_up = counting("reference", reference.wake_up)  # type: ignore[method-assign]
    for event in events:
        engine.apply(event)
        reference.apply(event)
        mine = engine.snapshot("x", event.t, event.index)
        assert mine == reference.snapshot("x", event.t, event.index), f"{mode}, after {event}"
    engine.check_invariants()
    return calls["engine"], calls["reference"]


@pytest.mark.parametrize(("pages", "ends_in"), [(13, 1), (14, 2), (15, 2)])
def test_time_inside_one_call_is_that_of_the_batch_it_stands_for(pages: int, ends_in: int) -> None:
    # GIVEN one mergeable mapping of `pages` pages, each visited once per pass, in
    # address order: pages 2i and 2i + 1 hold the same content, an odd last page
    # that of pages 0 and 1; and ksmd's trace events
    contents = np.arange(pages, dtype=np.uint64) // 2 + 1
    if pages % 2:
        contents[-1] = 1
    engine = Engine("unshare", PAGE)
    for event in (
        Alloc(1, 0, 1, BASE, pages * PAGE),
        Write(2, 0, 1, BASE, pages * PAGE, contents),
        Madvise(3, 0, 1, BASE, pages * PAGE, "mergeable"),
    ):
        engine.apply(event)
    events: list[dict[str, Any]] = []
    engine.trace(events.append)
    ksmd = engine.ksmd
    # WHEN one call stands for batches of 7 visits, 50 ns apart
    visits = ksmd.batch(7 * 10, 1000, 7, 50)
    # THEN the pass ends in the batch after the one that used up its budget
    assert visits == pages
    assert ksmd.seqnr == 1
    stop = 1000 + ends_in * 50
    assert [(e["event"], e["t"]) for e in events] == [
        ("ksm_start_scan", 1000),
        ("ksm_stop_scan", stop),
    ]
    # and the clock follows the visits: in the next pass, which merges every page,
    # the merge made at the visit of page p (visit p + 1) falls in batch p // 7
    events.clear()
    assert ksmd.batch(7 * 10, 5000, 7, 50) == pages
    first = {int(c): int(np.argmax(contents == c)) for c in np.unique(contents)}
    second = {c: int(np.flatnonzero(contents == c)[1]) for c in first}
    merges = {
        (e["rmap_item"] - BASE) // PAGE: e["t"]
        for e in events
        if e["event"].startswith("ksm_merge")
    }
    assert sorted(merges) == list(range(pages))
    for page, t in merges.items():
        content = int(contents[page])
        visit_page = second[content] if page == first[content] else page
        assert t == 5000 + visit_page // 7 * 50, page
    assert sorted({t for t in merges.values()}) == [
        5000 + b * 50 for b in range((pages - 1) // 7 + 1)
    ]


class OneBatchPerWakeUp(Engine):
    """The engine with every wake-up run on its own (ksm_scan_thread() as written): its
    time loop replaced by one that reads only the engine's public state."""

    def _advance(self, t: int) -> None:
        while self.next_wake is not None and self.next_wake < t:
            wake = self.next_wake
            if not self.should_run():
                self.next_wake = None
                break
            visits = self.ksmd.batch(int(self.settings["pages_to_scan"] or 0), wake)
            sleep = int(self.settings["sleep_millisecs"] or 0)
            self.next_wake = next_wake_ns(wake, visits, sleep) if self.should_run() else None

    def should_run(self) -> bool:
        """``ksmd_should_run()``: run is 1 and some mm is registered."""
        return self.settings["run"] == 1 and bool(self.ksmd.slots)


@pytest.mark.parametrize("mode", ["legacy", "v6", "unshare"])
@pytest.mark.parametrize("seed", range(12, 24))
def test_grouped_wake_ups_match_one_batch_per_wake_up(seed: int, mode: str) -> None:
    grouped, single = Engine(mode, PAGE), OneBatchPerWakeUp(mode, PAGE)
    for event in stretched(seed, 6):
        grouped.apply(event)
        single.apply(event)
        assert grouped.snapshot("x", event.t, event.index) == single.snapshot(
            "x", event.t, event.index
        ), f"seed {seed}, {mode}, after {event}"
