"""Properties of the trace layer over random traces (hypothesis).

* any valid trace survives msgpack -> JSON lines -> msgpack unchanged;
* RangeSet agrees with a plain set of pages;
* damaged traces (flipped, inserted, deleted bytes; truncation) are read either
  as a valid trace or rejected with a TraceError: never another exception, and
  never slowly.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmreplay.errors import TraceError
from ksmreplay.trace import RangeSet, TraceReader, TraceWriter
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Header,
    Ksm,
    Madvise,
    Prctl,
    Read,
    Settle,
    Snapshot,
    Write,
)

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

PAGE = 4096
SLOT_PAGES = 8
SLOTS = 4
BASE = 0x7F0000000000


@dataclass
class _Model:
    """What the generator needs to know to emit only valid events."""

    procs: dict[int, set[int]] = field(default_factory=dict)  # pid -> mapped page numbers
    t: int = 0


def _page(slot: int, offset: int) -> int:
    return BASE // PAGE + slot * SLOT_PAGES + offset


@st.composite
def valid_traces(draw: st.DrawFn) -> tuple[Header, list[Event]]:
    page_size = PAGE
    header = Header(
        page_size=page_size,
        description=draw(st.none() | st.text(max_size=8)),
        meta=draw(
            st.dictionaries(
                st.text(max_size=4),
                st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4),
                max_size=2,
            )
        ),
    )
    model = _Model()
    events: list[Event] = []
    for index in range(1, draw(st.integers(0, 40)) + 1):
        model.t += draw(st.sampled_from([0, 0, 1, 1000, 2**40]))
        t = model.t
        live = sorted(model.procs)
        mapped = [(pid, p) for pid in live for p in sorted(model.procs[pid])]
        choices = ["alloc", "prctl", "ksm", "settle", "snapshot"]
        if live:
            choices += ["free", "fork", "exit"]
        if mapped:
            choices += ["write", "write", "write", "read", "madvise"]
        op = draw(st.sampled_from(choices))
        event: Event
        if op == "alloc":
            pid = draw(st.integers(1, 5))
            pages = model.procs.setdefault(pid, set())
            slot = draw(st.integers(0, SLOTS - 1))
            start = draw(st.integers(0, SLOT_PAGES - 1))
            count = draw(st.integers(1, SLOT_PAGES - start))
            wanted = {_page(slot, start + i) for i in range(count)}
            if wanted & pages:
                event = Prctl(index, t, pid, "merge_any", draw(st.booleans()))
            else:
                pages |= wanted
                event = Alloc(index, t, pid, _page(slot, start) * PAGE, count * PAGE)
        elif op == "prctl":
            pid = draw(st.integers(1, 5))
            model.procs.setdefault(pid, set())
            event = Prctl(index, t, pid, "merge_any", draw(st.booleans()))
        elif op == "free":
            pid = draw(st.sampled_from(live))
            first = _page(draw(st.integers(0, SLOTS - 1)), draw(st.integers(0, SLOT_PAGES - 1)))
            count = draw(st.integers(1, 2 * SLOT_PAGES))
            model.procs[pid] -= set(range(first, first + count))
            event = Free(index, t, pid, first * PAGE, count * PAGE)
        elif op == "fork":
            pid = draw(st.sampled_from(live))
            child = draw(st.integers(1, 8).filter(lambda c: c not in model.procs))
            model.procs[child] = set(model.procs[pid])
            event = Fork(index, t, pid, child)
        elif op == "exit":
            pid = draw(st.sampled_from(live))
            del model.procs[pid]
            event = Exit(index, t, pid)
        elif op in ("write", "read", "madvise"):
            pid, first = draw(st.sampled_from(mapped))
            count = 1
            while first + count in model.procs[pid] and draw(st.booleans()):
                count += 1
            addr, length = first * PAGE, count * PAGE
            if op == "madvise":
                advice = draw(st.sampled_from(["mergeable", "unmergeable", "dontneed"]))
                event = Madvise(index, t, pid, addr, length, advice)  # type: ignore[arg-type]
            elif op == "read":
                lo = draw(st.integers(0, length - 1))
                event = Read(index, t, pid, addr + lo, draw(st.integers(1, length - lo)))
            else:
                form = draw(st.sampled_from(["int", "array", "bin"]))
                fps = st.integers(0, 2**64 - 1)
                if form == "int":
                    event = Write(index, t, pid, addr, length, draw(fps))
                elif form == "array":
                    values = draw(st.lists(fps, min_size=count, max_size=count))
                    event = Write(index, t, pid, addr, length, np.array(values, dtype=np.uint64))
                else:
                    lo = draw(st.integers(0, length - 1))
                    size = draw(st.integers(1, min(64, length - lo)))
                    data = draw(st.binary(min_size=size, max_size=size))
                    event = Write(index, t, pid, addr + lo, size, data)
        elif op == "ksm":
            event = Ksm(
                index,
                t,
                draw(
                    st.sampled_from(
                        [{"run": 1}, {"run": 2, "use_zero_pages": 1}, {"advisor_mode": "scan-time"}]
                    )
                ),
            )
        elif op == "settle":
            scans = draw(st.none() | st.integers(1, 20))
            event = Settle(index, t) if scans is None else Settle(index, t, scans)
        else:
            event = Snapshot(index, t, draw(st.text(max_size=6)))
        events.append(event)
    return header, events


def _write(header: Header, events: list[Event], form: str) -> bytes:
    out = io.BytesIO()
    writer = TraceWriter(out, header, form)
    for event in events:
        writer.event(event)
    return out.getvalue()


def _read(data: bytes) -> tuple[Header, list[Event]]:
    with TraceReader(io.BytesIO(data), "fuzz") as reader:
        return reader.header, list(reader)


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(valid_traces())
def test_valid_traces_round_trip(trace: tuple[Header, list[Event]]) -> None:
    header, events = trace
    packed = _write(header, events, "msgpack")
    assert _read(packed) == (header, events)
    as_jsonl = _write(header, events, "jsonl")
    assert _read(as_jsonl) == (header, events)
    assert _write(*_read(as_jsonl), "msgpack") == packed


@settings(
    max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(1, 12)), max_size=30))
def test_rangeset_matches_a_set_of_pages(ops: list[tuple[bool, int, int]]) -> None:
    ranges = RangeSet()
    pages: set[int] = set()
    for add, start, count in ops:
        wanted = set(range(start, start + count))
        if add:
            if ranges.first_overlap(start, start + count) is not None:
                assert wanted & pages
                continue
            assert not wanted & pages
            ranges.add(start, start + count)
            pages |= wanted
        else:
            assert ranges.remove(start, start + count) == len(wanted & pages)
            pages -= wanted
        # sorted, disjoint, never adjacent
        assert all(s < e for s, e in zip(ranges.starts, ranges.ends, strict=True))
        assert all(e < s for e, s in zip(ranges.ends, ranges.starts[1:], strict=False))
        covered = {p for s, e in zip(ranges.starts, ranges.ends, strict=True) for p in range(s, e)}
        assert covered == pages
        assert ranges.total() == len(pages)
    for start in range(0, 50, 7):
        missing = ranges.first_missing(start, start + 5)
        expected = next((p for p in range(start, start + 5) if p not in pages), None)
        assert missing == expected


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    header, events = draw(valid_traces())
    data = bytearray(_write(header, events, draw(st.sampled_from(["msgpack", "jsonl"]))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        else:
            del data[at:]
    return bytes(data)


@settings(
    max_examples=400,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(damaged())
def test_damaged_traces_are_valid_or_a_trace_error(data: bytes) -> None:
    try:
        _read(data)
    except TraceError as exc:
        assert str(exc).startswith("fuzz: ")
        assert "\n" not in str(exc)


@settings(
    max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_trace_error_or_a_trace(data: bytes) -> None:
    with contextlib.suppress(TraceError):
        _read(data)
