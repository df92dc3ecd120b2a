"""The driver: one decode, one simulator per mode, snapshots, the report's trace section.

A fake simulator stands in for the engine: it counts what it was given and
reports those counts, so the tests see exactly which events reached which
simulator and when snapshots were taken.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ksmreplay.errors import InvariantError, TraceError, UsageError
from ksmreplay.ksm.knobs import DEFAULTS, KnobValue
from ksmreplay.render import FORMATS, render
from ksmreplay.replay import PROGRESS_EVERY, expand_modes, replay, replay_spooled
from ksmreplay.report import KsmdWork, Pinned, Refusal, Snap, close_spools, summarise, unspool
from ksmreplay.trace import open_trace, write_trace
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Header,
    Ksm,
    Madvise,
    Settle,
    Snapshot,
    Write,
    WriteRun,
)
from ksmreplay.traps import Trap


class FakeReader:
    """A decoded trace: header, display name, events (iterable once, like a stream)."""

    def __init__(self, events: Sequence[Event], header: Header | None = None) -> None:
        self.header = header or Header(page_size=4096, meta={"source": "test"})
        self.name = "fake.msgpack"
        self._events = list(events)
        self.iterations = 0
        self.bytes_read = 0

    def runs(self) -> Iterator[Event]:
        self.iterations += 1
        assert self.iterations == 1, "the driver must decode the trace once"
        for event in self._events:
            self.bytes_read += 10
            yield event


class FakeSimulator:
    """Counts applied events; its snapshot reports what it has seen."""

    log: ClassVar[list[tuple[str, str, int]]] = []  # (mode, what, event index), all instances

    def __init__(
        self,
        mode: str,
        page_size: int,
        settings: Mapping[str, KnobValue] | None,
        pins: Mapping[str, KnobValue] | None = None,
    ) -> None:
        self.mode = mode
        self.page_size = page_size
        self._settings = {**DEFAULTS, **(settings or {})}
        self.applied: list[Event] = []
        self.invariant_checks = 0
        self.fail_invariants_at: int | None = None

    def apply(self, event: Event) -> None:
        self.applied.append(event)
        self.log.append((self.mode, "apply", event.index))
        if isinstance(event, Ksm):
            self._settings.update(event.settings)

    def apply_writes(self, run: WriteRun) -> None:
        for event in run.events():
            self.apply(event)

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        self.log.append((self.mode, f"snapshot {label}", index))
        return {
            "label": label,
            "t": t,
            "event": index,
            "summary": summarise(len(self.applied), 0, 0, self.page_size),
            "ksm": {"pages_scanned": len(self.applied), "page_size": self.page_size},
            "processes": [],
            "memory": {"anon_frames": 0},
            "events": {"merges": 0},
        }

    @property
    def settings(self) -> dict[str, KnobValue]:
        return dict(self._settings)

    @property
    def refused(self) -> list[Refusal]:
        return [{"event": 1, "t": 0, "knob": "max_page_sharing", "value": 2, "error": "EBUSY"}]

    @property
    def pinned(self) -> list[Pinned]:
        return []

    def traps(self, final: bool = False) -> list[Trap]:
        return []

    @property
    def ksmd_work(self) -> KsmdWork:
        n = len(self.applied)
        return {"visits": n, "wakeups": n, "cpu_ns": 1000 * n, "settle_cpu_ns": 0}

    def check_invariants(self) -> None:
        self.invariant_checks += 1
        if self.invariant_checks == self.fail_invariants_at:
            raise InvariantError(f"{self.mode}: broken at check {self.invariant_checks}")


def _factory(made: list[FakeSimulator], fail_at: int | None = None) -> Any:
    def make(
        mode: str,
        page_size: int,
        settings: Mapping[str, KnobValue] | None,
        pins: Mapping[str, KnobValue] | None,
        kernel: str,
    ) -> FakeSimulator:
        sim = FakeSimulator(mode, page_size, settings)
        sim.fail_invariants_at = fail_at
        made.append(sim)
        return sim

    return make


EVENTS: list[Event] = [
    Ksm(1, 0, {"run": 1, "use_zero_pages": 1}),
    Alloc(2, 0, pid=1, addr=0x10000, len=8192),
    Madvise(3, 10, pid=1, addr=0x10000, len=8192, advice="mergeable"),
    Write(4, 20, pid=1, addr=0x10000, len=8192, content=7),
    Settle(5, 30),
    Snapshot(6, 40, "merged"),
    Write(7, 50, pid=1, addr=0x10000, len=4096, content=0),
    Snapshot(8, 60, "written"),
    Settle(9, 70),
]


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    FakeSimulator.log = []


def test_every_event_reaches_every_simulator_in_mode_order() -> None:
    # GIVEN a trace and two modes WHEN it is replayed
    made: list[FakeSimulator] = []
    reader = FakeReader(EVENTS)
    report = replay(reader, ["unshare", "legacy"], factory=_factory(made))
    # THEN one simulator per mode, in the order asked for, each saw the same event objects
    assert [sim.mode for sim in made] == ["unshare", "legacy"]
    for sim in made:
        assert sim.applied == EVENTS
        assert all(a is b for a, b in zip(sim.applied, EVENTS, strict=True))
    assert [run["mode"] for run in report["runs"]] == ["unshare", "legacy"]
    # and for each event, the first mode applies it before the second
    applies = [(mode, index) for mode, what, index in FakeSimulator.log if what == "apply"]
    assert applies[:4] == [("unshare", 1), ("legacy", 1), ("unshare", 2), ("legacy", 2)]


def test_snapshots_are_taken_after_the_snapshot_event() -> None:
    report = replay(FakeReader(EVENTS), ["legacy"], factory=_factory([]))
    run = report["runs"][0]
    assert [(s["label"], s["t"], s["event"]) for s in run["snapshots"]] == [
        ("merged", 40, 6),
        ("written", 60, 8),
    ]
    # the snapshot event itself was applied before the snapshot was taken
    assert [s["ksm"]["pages_scanned"] for s in run["snapshots"]] == [6, 8]
    assert FakeSimulator.log[5:7] == [("legacy", "apply", 6), ("legacy", "snapshot merged", 6)]


def test_final_snapshot_carries_the_last_event() -> None:
    report = replay(FakeReader(EVENTS), ["legacy", "unshare"], factory=_factory([]))
    for run in report["runs"]:
        final = run["final"]
        assert (final["label"], final["t"], final["event"]) == ("final", 70, 9)
        assert final["ksm"]["pages_scanned"] == len(EVENTS)


def test_trace_section_and_run_fields() -> None:
    header = Header(page_size=16384, meta={"host": "vm1", "n": 3})
    report = replay(
        FakeReader(EVENTS, header), ["unshare"], {"pages_to_scan": 7}, factory=_factory([])
    )
    assert report["report"] == 1
    assert report["trace"] == {
        "path": "fake.msgpack",
        "events": 9,
        "duration_ns": 70,
        "page_size": 16384,
        "meta": {"host": "vm1", "n": 3},
    }
    run = report["runs"][0]
    # --set values reach the simulator; the trace's ksm event applied later
    assert run["settings"]["pages_to_scan"] == 7
    assert run["settings"]["use_zero_pages"] == 1
    assert run["refused"] == [
        {"event": 1, "t": 0, "knob": "max_page_sharing", "value": 2, "error": "EBUSY"}
    ]
    assert run["final"]["ksm"]["page_size"] == 16384


def test_a_trace_without_events_has_a_final_snapshot_at_zero() -> None:
    report = replay(FakeReader([]), ["legacy"], factory=_factory([]))
    assert report["trace"]["events"] == 0
    assert report["trace"]["duration_ns"] == 0
    final = report["runs"][0]["final"]
    assert (final["label"], final["t"], final["event"]) == ("final", 0, 0)
    assert report["runs"][0]["snapshots"] == []


def test_invariants_are_checked_after_every_event_only_when_asked() -> None:
    made: list[FakeSimulator] = []
    replay(FakeReader(EVENTS), ["legacy", "unshare"], factory=_factory(made))
    assert [sim.invariant_checks for sim in made] == [0, 0]
    made.clear()
    replay(FakeReader(EVENTS), ["legacy", "unshare"], check_invariants=True, factory=_factory(made))
    assert [sim.invariant_checks for sim in made] == [len(EVENTS)] * 2


def test_a_broken_invariant_stops_the_replay() -> None:
    with pytest.raises(InvariantError, match="legacy: broken at check 3"):
        replay(FakeReader(EVENTS), ["legacy"], check_invariants=True, factory=_factory([], 3))


def test_progress_is_reported_in_steps_and_at_the_end() -> None:
    events: list[Event] = [Settle(i, i) for i in range(1, 2 * PROGRESS_EVERY + 6)]
    calls: list[tuple[int, int]] = []
    replay(
        FakeReader(events),
        ["legacy"],
        progress=lambda n, b: calls.append((n, b)),
        factory=_factory([]),
    )
    n = len(events)
    assert calls == [
        (PROGRESS_EVERY, 10 * PROGRESS_EVERY),
        (2 * PROGRESS_EVERY, 20 * PROGRESS_EVERY),
        (n, 10 * n),
    ]


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        ([], "no mode to replay"),
        (["legacy", "modern"], "unknown mode 'modern'"),
        (["legacy", "legacy"], "mode 'legacy' asked for twice"),
        (["both"], "unknown mode 'both'"),
    ],
)
def test_bad_mode_lists_are_usage_errors(modes: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        replay(FakeReader(EVENTS), modes, factory=_factory([]))


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("both", ("legacy", "unshare")),
        ("all", ("legacy", "v6", "unshare")),
        ("v6", ("v6",)),
        (["unshare", "legacy"], ("unshare", "legacy")),
        (["both", "legacy", "all"], ("legacy", "unshare", "v6")),
    ],
)
def test_expand_modes(names: str | list[str], expected: tuple[str, ...]) -> None:
    assert expand_modes(names) == expected


def test_expand_modes_rejects_unknown_names() -> None:
    with pytest.raises(UsageError) as caught:
        expand_modes("every")
    assert str(caught.value) == "unknown mode 'every' (choose from legacy, v6, unshare, both, all)"


def test_replay_of_a_real_trace_reader(tmp_path: Path) -> None:
    # GIVEN a trace written and read back by the trace module
    path = tmp_path / "small.jsonl"
    header = Header(page_size=4096, meta={"k": [1, 2]})
    write_trace(str(path), header, EVENTS)
    made: list[FakeSimulator] = []
    with open_trace(str(path)) as reader:
        report = replay(reader, ["legacy"], factory=_factory(made))
    # THEN the simulator saw equal events and the trace section comes from the reader
    assert made[0].applied == EVENTS
    assert report["trace"] == {
        "path": str(path),
        "events": len(EVENTS),
        "duration_ns": 70,
        "page_size": 4096,
        "meta": {"k": [1, 2]},
    }


# --- replay_spooled: the same report, its snapshots in temporary files ---------------------


def test_replay_spooled_gives_the_report_replay_gives() -> None:
    whole = replay(FakeReader(EVENTS), ["unshare", "legacy"], factory=_factory([]))
    log = FakeSimulator.log
    FakeSimulator.log = []
    spooled = replay_spooled(FakeReader(EVENTS), ["unshare", "legacy"], factory=_factory([]))
    try:
        # the simulators saw the same calls in the same order
        assert FakeSimulator.log == log
        assert [len(run["snapshots"]) for run in spooled["runs"]] == [2, 2]
        assert unspool(spooled) == whole
        assert list(unspool(spooled)["runs"][0]) == list(whole["runs"][0])
    finally:
        close_spools(spooled)


def test_replay_spooled_of_a_real_trace_in_every_mode(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    write_trace(str(path), Header(page_size=4096, meta={}), EVENTS)
    with open_trace(str(path)) as reader:
        whole = replay(reader, expand_modes("all"))
    with open_trace(str(path)) as reader:
        spooled = replay_spooled(reader, expand_modes("all"))
    try:
        assert unspool(spooled) == whole
    finally:
        close_spools(spooled)


class _FailingReader(FakeReader):
    """Fails like an invalid trace after ``good`` events."""

    def __init__(self, events: Sequence[Event], good: int) -> None:
        super().__init__(events)
        self.good = good

    def runs(self) -> Iterator[Event]:
        for i, event in enumerate(super().runs()):
            if i == self.good:
                raise TraceError(self.name, event.index, event.t, "broken here")
            yield event


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("fail", ["trace", "invariant", "modes"])
def test_replay_spooled_leaves_no_spool_open_on_an_error(fail: str) -> None:
    before = _open_fds()
    with pytest.raises((TraceError, InvariantError, UsageError)):
        if fail == "trace":
            replay_spooled(_FailingReader(EVENTS, 7), ["legacy", "unshare"], factory=_factory([]))
        elif fail == "invariant":
            replay_spooled(
                FakeReader(EVENTS),
                ["legacy"],
                check_invariants=True,
                factory=_factory([], fail_at=8),
            )
        else:
            replay_spooled(FakeReader(EVENTS), ["legacy", "legacy"], factory=_factory([]))
    assert _open_fds() == before


class _BigSnapshots(FakeSimulator):
    """Snapshots of 30 processes, as a host with 30 processes would give."""

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        snap = super().snapshot(label, t, index)
        snap["processes"] = [
            {"pid": pid, "ksm_rmap_items": index + pid, "ksm_merge_any": False}
            for pid in range(1, 31)
        ]
        return snap


class _Discard(io.TextIOBase):
    """An output stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)


def _peak_bytes(snapshots: int, replayer: Callable[..., Any], fmt: str) -> int:
    """Peak of Python's allocations while replaying and rendering ``snapshots`` snapshots."""
    events: list[Event] = [Snapshot(i, i, f"s{i}") for i in range(1, snapshots + 1)]

    def make(
        mode: str,
        page_size: int,
        settings: Mapping[str, KnobValue] | None,
        pins: Mapping[str, KnobValue] | None,
        kernel: str,
    ) -> Any:
        return _BigSnapshots(mode, page_size, settings)

    tracemalloc.start()
    try:
        report = replayer(FakeReader(events), ["legacy", "unshare"], factory=make)
        render(report, fmt, _Discard())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if replayer is replay_spooled:
        close_spools(report)
    return peak


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_does_not_grow_with_the_snapshots_when_spooled(fmt: str) -> None:
    # GIVEN 50 and then 200 snapshots of 30 processes in two modes
    # WHEN they are replayed and rendered whole, then through the spools
    whole_few, whole_many = _peak_bytes(50, replay, fmt), _peak_bytes(200, replay, fmt)
    few, many = _peak_bytes(50, replay_spooled, fmt), _peak_bytes(200, replay_spooled, fmt)
    # THEN the whole report's peak grows with the snapshots (so this test can fail) and the
    # spooled one's hardly (what grows is the fake simulators' logs of the events)
    assert whole_many - whole_few > 1_000_000
    assert many - few < (whole_many - whole_few) / 10, (few, many, whole_few, whole_many)
