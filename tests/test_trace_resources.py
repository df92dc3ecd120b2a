"""What reading a trace costs follows the work the trace declares: the events
and the fingerprints it lists, never the values of its pids nor the size of
its ranges; and ``validate_first`` finds an error before any event is handed
out.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmreplay.errors import TraceError
from ksmreplay.trace import RangeSet, TraceReader, open_trace
from ksmreplay.trace.events import Event, WriteRun

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

H: dict[str, Any] = {"ksmreplay": 1}
PAGE = 4096


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


def drain(data: bytes) -> TraceReader:
    """Read all of ``data`` as the replay does (keeping nothing)."""
    with TraceReader(io.BytesIO(data), "t") as reader:
        for _ in reader.runs():
            pass
    return reader


def peak_bytes(work: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once while doing ``work``, in bytes."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- pids


def test_cost_does_not_follow_the_pid_values() -> None:
    # 1,000 write/read pairs of pid 4194303: each write is a run of its own,
    # and a table of max(pid) entries per run took 36 MB (and 23 s to validate).
    pid = 4194303
    body = [[0, "alloc", pid, PAGE, PAGE]]
    for i in range(1, 1001):
        body += [[i, "write", pid, PAGE, PAGE, i], [i, "read", pid, PAGE, PAGE]]
    data = pack(H, *body)
    assert peak_bytes(lambda: drain(data)) < 16 * 2**20  # the native reader's columns: 8 MiB


@pytest.mark.parametrize("order", ["interleaved", "grouped"])
def test_many_one_page_processes_validate_in_linear_time(order: str) -> None:
    # 100,000 one-page processes, each mapping a page and writing it (68 s before).
    n = 100_000
    allocs = [[p, "alloc", p, PAGE, PAGE] for p in range(1, n + 1)]
    writes = [[p, "write", p, PAGE, PAGE, p] for p in range(1, n + 1)]
    if order == "interleaved":
        body = [event for pair in zip(allocs, writes, strict=True) for event in pair]
    else:
        body = allocs + [[n + 1, *w[1:]] for w in writes]
    data = pack(H, *body)
    start = time.process_time()
    reader = drain(data)
    assert (reader.events, reader.processes) == (2 * n, n)
    assert time.process_time() - start < 20


@st.composite
def runs_over_many_mappings(draw: st.DrawFn) -> tuple[list[Any], int | None]:
    """Processes with one or several mappings, then a long run of writes, some
    outside every mapping; and the index of the first bad write (None: all good)."""
    objects: list[Any] = []
    ranges: dict[int, RangeSet] = {}
    for pid in range(1, draw(st.integers(1, 6)) + 1):
        ranges[pid] = RangeSet()
        for slot in sorted(draw(st.sets(st.integers(0, 200), min_size=1, max_size=40))):
            objects.append([0, "alloc", pid, slot * 2 * PAGE, PAGE])
            ranges[pid].add(slot * 2 * PAGE, slot * 2 * PAGE + PAGE)
    first_bad = None
    for i in range(draw(st.integers(9, 120))):
        pid = draw(st.sampled_from(sorted(ranges)))
        addr = draw(st.integers(0, 401)) * PAGE
        if ranges[pid].first_missing(addr, addr + PAGE) is not None and first_bad is None:
            first_bad = len(objects) + 1
        objects.append([1 + i, "write", pid, addr, PAGE, draw(st.integers(0, 9))])
    return objects, first_bad


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(runs_over_many_mappings())
def test_runs_over_several_mappings_stop_at_the_first_write_outside(
    case: tuple[list[Any], int | None],
) -> None:
    objects, first_bad = case
    data = pack(H, *objects)
    if first_bad is None:
        assert drain(data).events == len(objects)
    else:
        with pytest.raises(TraceError, match=rf"^t: event {first_bad} \(t=\d+\): write to pid"):
            drain(data)


# --------------------------------------------------------------------------- ranges


def test_fill_writes_are_not_expanded_beyond_a_bound() -> None:
    # 64 writes of one fingerprint over 2**18 pages each (1 GiB): the reader
    # expanded a batch of them into 128 MiB of per-page fingerprints.
    pages = 2**18
    body: list[Any] = [[0, "alloc", 1, 0, 64 * pages * PAGE]]
    body += [[1, "write", 1, i * pages * PAGE, pages * PAGE, i] for i in range(64)]
    data = pack(H, *body)
    events: list[Event | WriteRun] = []

    def read() -> None:
        with TraceReader(io.BytesIO(data), "t") as reader:
            events.extend(
                item if not isinstance(item, WriteRun) else item.events()[0]
                for item in reader.runs()
            )

    assert peak_bytes(read) < 32 * 2**20
    assert [e.content for e in events[1:]] == list(range(64))  # type: ignore[union-attr]


# --------------------------------------------------------------------------- validate_first


def _trace_file(tmp_path: Path, writes: int, *extra: Any) -> Path:
    path = tmp_path / "t.msgpack"
    body = [[0, "alloc", 1, 0, 16 * PAGE]] + [[i, "write", 1, 0, PAGE, i] for i in range(writes)]
    path.write_bytes(pack(H, *body, *extra))
    return path


def test_validate_first_fails_before_handing_out_an_event(tmp_path: Path) -> None:
    path = _trace_file(tmp_path, 100_000, [10**6, "write", 1, 64 * PAGE, PAGE, 1])
    with pytest.raises(TraceError) as info:
        open_trace(str(path), validate_first=True)
    assert str(info.value) == (
        f"{path}: event 100002 (t=1000000): write to pid 1 at 0x40000 outside any mapping"
    )
    with open_trace(str(path)) as reader:  # without: when the iteration gets there
        assert reader.validated_ahead is False
        assert next(iter(reader)).index == 1


def _events(reader: TraceReader) -> Iterator[Event]:
    with reader:
        yield from reader


def test_validate_first_then_reads_from_where_the_stream_was(tmp_path: Path) -> None:
    path = _trace_file(tmp_path, 100)
    expected = list(_events(open_trace(str(path))))
    with open_trace(str(path), validate_first=True) as reader:
        assert reader.validated_ahead
        assert list(reader) == expected
    # A stream something has read a little of (stdin redirected from a file).
    prefixed = tmp_path / "prefixed"
    prefixed.write_bytes(b"junk" + path.read_bytes())
    with prefixed.open("rb") as stream:
        stream.read(4)
        reader = TraceReader(stream, "p", close=False, validate_first=True)
        assert reader.validated_ahead
        assert list(_events(reader)) == expected


def test_validate_first_reads_stdin_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _trace_file(tmp_path, 100)
    with path.open("rb") as raw:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        with open_trace("-", validate_first=True) as reader:
            assert reader.validated_ahead
            assert reader.name == "<stdin>"
            assert sum(1 for _ in reader) == 101


def test_validate_first_reads_a_pipe_once(tmp_path: Path) -> None:
    bad = [10**6, "write", 1, 64 * PAGE, PAGE, 1]
    data = _trace_file(tmp_path, 100_000, bad).read_bytes()
    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    feeder.start()
    try:
        with os.fdopen(read_end, "rb") as stream:
            reader = TraceReader(stream, "pipe", close=False, validate_first=True)
            assert not reader.validated_ahead
            it = iter(reader)
            assert next(it).index == 1  # events come before the error
            with pytest.raises(TraceError, match="event 100002"):
                list(it)
    finally:
        feeder.join()
