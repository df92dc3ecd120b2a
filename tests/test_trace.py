"""Reading and writing traces: round trips, forms, the address-space rules that pass."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from ksmreplay.errors import TraceError
from ksmreplay.trace import (
    RangeSet,
    TraceReader,
    TraceWriter,
    form_for_path,
    open_trace,
    read_trace,
    write_trace,
)
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
    WriteRun,
)
from ksmreplay.trace.validate import _Validator

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

BASE = 0x7F0000000000
PAGE = 4096


def every_kind_of_event() -> list[Event]:
    """One event of every op and every content form, indexes from 1."""
    records: list[Event] = [
        Ksm(0, 0, {"run": 1, "use_zero_pages": 1, "advisor_mode": "scan-time"}),
        Alloc(0, 0, 1, BASE, 8 * PAGE),
        Madvise(0, 10, 1, BASE, 8 * PAGE, "mergeable"),
        Write(0, 10, 1, BASE, 2 * PAGE, 0),
        Write(0, 20, 1, BASE + 2 * PAGE, PAGE, 2**64 - 1),
        Write(0, 20, 1, BASE + 3 * PAGE, 3 * PAGE, np.array([1, 0, 2**63 + 5], dtype=np.uint64)),
        Write(0, 30, 1, BASE + 7, 5000, bytes(range(256)) * 19 + b"\x00" * 136),
        Write(0, 30, 1, BASE + 6 * PAGE, 2 * PAGE, b"\xab" * (2 * PAGE)),
        Read(0, 40, 1, BASE + 1, 3),
        Prctl(0, 50, 2, "merge_any", True),
        Prctl(0, 50, 2, "merge_any", False),
        Fork(0, 60, 1, 3),
        Madvise(0, 70, 3, BASE, PAGE, "dontneed"),
        Madvise(0, 70, 3, BASE + PAGE, PAGE, "unmergeable"),
        Free(0, 80, 1, BASE - PAGE, 3 * PAGE),
        Settle(0, 90),
        Settle(0, 90, 3),
        Snapshot(0, 100, "after settle ✓"),
        Exit(0, 110, 3),
        Alloc(0, 120, 3, BASE, PAGE),
    ]
    return [_with_index(r, i + 1) for i, r in enumerate(records)]


def _with_index(record: Event, index: int) -> Event:
    fields = {name: getattr(record, name) for name in record.__dataclass_fields__}
    fields["index"] = index
    return type(record)(**fields)


HEADER = Header(page_size=PAGE, description="every op", meta={"host": "x", "n": [1, 2.5, None]})


def write_to_bytes(header: Header, records: list[Event], form: str) -> bytes:
    out = io.BytesIO()
    writer = TraceWriter(out, header, form)
    for record in records:
        writer.event(record)
    return out.getvalue()


def read_bytes(data: bytes, name: str = "mem") -> tuple[Header, list[Event], TraceReader]:
    with TraceReader(io.BytesIO(data), name) as reader:
        return reader.header, list(reader), reader


@pytest.mark.parametrize("form", ["msgpack", "jsonl"])
def test_every_op_and_content_form_round_trips(form: str) -> None:
    records = every_kind_of_event()
    header, back, reader = read_bytes(write_to_bytes(HEADER, records, form))
    assert reader.form == form
    assert header == HEADER
    assert back == records
    for mine, theirs in zip(records, back, strict=True):
        assert type(mine) is type(theirs)
        if isinstance(theirs, Write):
            assert isinstance(mine, Write)
            assert type(theirs.content) is type(mine.content)
            if isinstance(theirs.content, np.ndarray):
                assert theirs.content.dtype == np.uint64
    assert reader.events == len(records)
    assert reader.duration_ns == 120
    assert reader.processes == 4  # 1, 2, 3 (forked), 3 again after exit


def test_msgpack_jsonl_msgpack_is_lossless_and_stable() -> None:
    records = every_kind_of_event()
    first = write_to_bytes(HEADER, records, "msgpack")
    header, back, _ = read_bytes(first)
    as_jsonl = write_to_bytes(header, back, "jsonl")
    header2, back2, _ = read_bytes(as_jsonl)
    again = write_to_bytes(header2, back2, "msgpack")
    assert again == first
    assert write_to_bytes(*read_bytes(again)[:2], "jsonl") == as_jsonl


def test_jsonl_form_is_one_object_per_line() -> None:
    records: list[Event] = [
        Alloc(1, 0, 1, 0x10000, 2 * PAGE),
        Write(2, 5, 1, 0x10000, 2 * PAGE, np.array([3, 4], dtype=np.uint64)),
        Write(3, 5, 1, 0x10001, 3, b"abc"),
        Prctl(4, 6, 1, "merge_any", True),
        Settle(5, 7),
        Ksm(6, 8, {"run": 1, "pages_to_scan": 10}),
    ]
    text = write_to_bytes(Header(description="é"), records, "jsonl").decode()
    assert text == (
        '{"ksmreplay": 1, "page_size": 4096, "description": "é"}\n'
        '[0, "alloc", 1, 65536, 8192]\n'
        '[5, "write", 1, 65536, 8192, [3, 4]]\n'
        '[5, "write", 1, 65537, 3, {"b64": "YWJj"}]\n'
        '[6, "prctl", 1, "merge_any", true]\n'
        '[7, "settle"]\n'
        '[8, "ksm", {"run": 1, "pages_to_scan": 10}]\n'
    )


def test_writer_methods_match_records() -> None:
    out = io.BytesIO()
    w = TraceWriter(out, None, "msgpack")
    w.alloc(0, 1, BASE, 4 * PAGE)
    w.write(1, 1, BASE, 2 * PAGE, [5, 6])
    w.write(1, 1, BASE + 2 * PAGE, PAGE, np.array([7], dtype=np.uint64))
    w.write(2, 1, BASE + 3 * PAGE, PAGE, 9)
    w.write(2, 1, BASE + 1, 2, b"hi")
    w.read(3, 1, BASE, 1)
    w.madvise(3, 1, BASE, PAGE, "mergeable")
    w.prctl(4, 1, True)
    w.fork(5, 1, 2)
    w.free(6, 2, BASE, PAGE)
    w.exit(7, 2)
    w.ksm(8, {"run": 1})
    w.settle(9)
    w.settle(9, 2)
    w.snapshot(10, "s")
    header, events, _ = read_bytes(out.getvalue())
    assert header == Header()
    assert [e.op for e in events] == [
        "alloc", "write", "write", "write", "write", "read", "madvise", "prctl", "fork",
        "free", "exit", "ksm", "settle", "settle", "snapshot",
    ]  # fmt: skip
    write = events[1]
    assert isinstance(write, Write) and isinstance(write.content, np.ndarray)
    assert write.content.tolist() == [5, 6]
    assert events[3] == Write(4, 2, 1, BASE + 3 * PAGE, PAGE, 9)
    assert events[4] == Write(5, 2, 1, BASE + 1, 2, b"hi")
    assert events[12] == Settle(13, 9, 10)
    assert events[13] == Settle(14, 9, 2)


def test_write_trace_picks_the_form_from_the_suffix(tmp_path: Path) -> None:
    records = every_kind_of_event()
    for name, form in [("a.msgpack", "msgpack"), ("a.jsonl", "jsonl"), ("a.bin", "msgpack")]:
        path = tmp_path / name
        write_trace(str(path), HEADER, records)
        with open_trace(str(path)) as reader:
            assert reader.form == form
            assert list(reader) == records
    assert form_for_path("x.JSONL") == "jsonl"
    assert form_for_path("-") is None


def test_form_is_detected_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "really-jsonl.msgpack"
    path.write_bytes(b'\n  \n{"ksmreplay": 1}\n[0, "prctl", 1, "merge_any", true]\n')
    _, events = read_trace(str(path))
    assert events == [Prctl(1, 0, 1, "merge_any", True)]


def test_jsonl_skips_comments_and_blank_lines() -> None:
    data = (
        b"# flags: --mode legacy\n"
        b'{"ksmreplay": 1}\n'
        b"\n"
        b"  # note\n"
        b'[0, "prctl", 1, "merge_any", true]\r\n'
    )
    _, events, _ = read_bytes(data)
    assert events == [Prctl(1, 0, 1, "merge_any", True)]


def test_unknown_header_keys_are_ignored_and_defaults_apply() -> None:
    header, events, _ = read_bytes(msgpack.packb({"ksmreplay": 1, "future": [1, 2]}))
    assert header == Header(version=1, page_size=4096, description=None, meta={})
    assert events == []


def test_empty_trace_has_no_events_and_zero_duration() -> None:
    _, events, reader = read_bytes(msgpack.packb({"ksmreplay": 1, "page_size": 65536}))
    assert events == [] and reader.events == 0 and reader.duration_ns == 0
    assert reader.header.page_size == 65536


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


H = {"ksmreplay": 1}


def test_address_space_rules_that_allow() -> None:
    data = pack(
        H,
        # adjacent allocs join; a write may span them
        [0, "alloc", 1, 0x10000, 0x2000],
        [0, "alloc", 1, 0x12000, 0x2000],
        [1, "write", 1, 0x11000, 0x2000, [1, 2]],
        # free may cover unmapped parts; what remains is still mapped
        [2, "free", 1, 0x8000, 0x9000],
        [3, "read", 1, 0x11000, 0x3000],
        # read and bin writes need no alignment
        [3, "read", 1, 0x11003, 7],
        [3, "write", 1, 0x13FFE, 2, b"ab"],
        # fork copies the mappings; freeing the parent's leaves the child's
        [4, "fork", 1, 2],
        [5, "free", 1, 0x11000, 0x3000],
        [6, "write", 2, 0x11000, 0x3000, 0],
        # a pid may come back after exit, by alloc or by prctl
        [7, "exit", 2],
        [8, "alloc", 2, 0x11000, 0x1000],
        [9, "exit", 2],
        [10, "prctl", 2, "merge_any", True],
        [11, "fork", 2, 5],
        [12, "exit", 5],
        [13, "fork", 2, 5],
        # a process created by prctl alone has no mappings, and may map later
        [14, "alloc", 5, 0x11000, 0x1000],
        [15, "snapshot", ""],
    )
    _, events, reader = read_bytes(data)
    assert len(events) == reader.events == 19
    assert reader.processes == 6  # 1; 2 by fork, alloc and prctl; 5 by fork twice
    assert reader.duration_ns == 15


def test_free_then_alloc_reuses_the_hole() -> None:
    data = pack(
        H,
        [0, "alloc", 1, 0x10000, 0x4000],
        [0, "free", 1, 0x11000, 0x1000],
        [0, "alloc", 1, 0x11000, 0x1000],
        [0, "write", 1, 0x10000, 0x4000, 1],
    )
    assert len(read_bytes(data)[1]) == 4


def test_huge_mappings_cost_nothing_per_page() -> None:
    span = 2**46
    data = pack(
        H,
        [0, "alloc", 1, 0, span],
        [0, "alloc", 1, span, span],
        [1, "write", 1, span - PAGE, 2 * PAGE, [1, 2]],
        [2, "free", 1, PAGE, 2 * span - 2 * PAGE],
        [3, "read", 1, 0, PAGE],
        [3, "read", 1, 2 * span - PAGE, PAGE],
    )
    assert len(read_bytes(data)[1]) == 6


def test_stdin_is_read_when_path_is_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pack(H, [0, "prctl", 1, "merge_any", True])
    fake = io.TextIOWrapper(io.BytesIO(data))
    monkeypatch.setattr(sys, "stdin", fake)
    with open_trace("-") as reader:
        assert reader.name == "<stdin>"
        assert list(reader) == [Prctl(1, 0, 1, "merge_any", True)]
    assert not fake.buffer.closed  # the reader does not close stdin


def test_stdin_errors_name_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pack([]))))
    with pytest.raises(TraceError) as info:
        open_trace("-")
    assert str(info.value) == "<stdin>: event 0: header must be a map, not array"


def test_a_reader_iterates_once() -> None:
    with TraceReader(io.BytesIO(pack(H)), "mem") as reader:
        list(reader)
        with pytest.raises(RuntimeError):
            iter(reader)


class _Trickle(io.RawIOBase):
    """A stream that hands out one byte per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.pos >= len(self.data):
            return 0
        buffer[0] = self.data[self.pos]
        self.pos += 1
        return 1


@pytest.mark.parametrize("form", ["msgpack", "jsonl"])
def test_reading_a_byte_at_a_time_gives_the_same_events(form: str) -> None:
    records = every_kind_of_event()
    data = write_to_bytes(HEADER, records, form)
    with TraceReader(io.BufferedReader(_Trickle(data), buffer_size=1), "slow") as reader:
        assert list(reader) == records


def test_events_stream_without_reading_ahead_unboundedly() -> None:
    # The reader decodes a few KiB at a time, not the whole trace.
    body = [[0, "alloc", 1, 0, 1 << 30]] + [
        [i, "write", 1, (i % 1000) * PAGE, PAGE, i] for i in range(100_000)
    ]
    data = pack(H, *body)
    with TraceReader(io.BytesIO(data), "mem") as reader:
        it = iter(reader)
        next(it)
        assert reader.bytes_read <= 16384 < len(data)
        assert sum(1 for _ in it) == 100_000
    assert reader.bytes_read == len(data)


def test_fast_and_general_paths_give_equal_records() -> None:
    objs: list[object] = [
        [0, "alloc", 1, 0, 0x4000],
        [1, "write", 1, 0, 0x2000, [2**64 - 1, 0]],
        [1, "write", 1, 0x2000, 0x2000, [5, 6]],
        [2, "write", 1, 0x1000, 0x1000, 7],
        *([3, "write", 1, 0x3000, 0x1000, [i]] for i in range(8)),
    ]
    items = _Validator("mem", PAGE, jsonl=False).batch(1, objs)
    # The writes, fingerprint lists and one fingerprint alike, come as one run
    # (a run long enough for columns: a short one takes the general path).
    assert [type(item) for item in items] == [Alloc, WriteRun]
    fast = [r for item in items for r in (item.events() if isinstance(item, WriteRun) else [item])]
    general_validator = _Validator("mem", PAGE, jsonl=False)
    general = [general_validator.general(i + 1, o) for i, o in enumerate(objs)]
    assert fast == general
    for record in fast[1:3]:
        assert isinstance(record, Write) and isinstance(record.content, np.ndarray)
        assert record.content.dtype == np.uint64
    assert general_validator.last_t == 3


def test_content_arrays_of_one_batch_are_independent() -> None:
    data = pack(
        H,
        [0, "alloc", 1, 0, 0x4000],
        [0, "write", 1, 0, 0x2000, [1, 2]],
        [0, "write", 1, 0x2000, 0x2000, [3, 4]],
    )
    _, (_, a, b), _ = read_bytes(data)
    assert isinstance(a, Write) and isinstance(b, Write)
    assert isinstance(a.content, np.ndarray) and isinstance(b.content, np.ndarray)
    a.content[:] = 9
    assert b.content.tolist() == [3, 4]


# --------------------------------------------------------------------------- RangeSet


def test_rangeset_joins_adjacent_ranges_and_splits_on_remove() -> None:
    ranges = RangeSet()
    ranges.add(10, 20)
    ranges.add(30, 40)
    ranges.add(20, 30)
    assert (ranges.starts, ranges.ends) == ([10], [40])
    assert ranges.remove(15, 25) == 10
    assert (ranges.starts, ranges.ends) == ([10, 25], [15, 40])
    assert ranges.remove(0, 100) == 20
    assert (ranges.starts, ranges.ends) == ([], [])
    assert ranges.remove(0, 100) == 0


def test_rangeset_answers() -> None:
    ranges = RangeSet([10, 30], [20, 40])
    assert ranges.first_missing(10, 20) is None
    assert ranges.first_missing(12, 25) == 20
    assert ranges.first_missing(5, 15) == 5
    assert ranges.first_missing(20, 21) == 20
    assert ranges.first_overlap(0, 10) is None
    assert ranges.first_overlap(0, 11) == 10
    assert ranges.first_overlap(20, 30) is None
    assert ranges.first_overlap(25, 35) == 30
    assert ranges.first_overlap(35, 36) == 35
    assert ranges.total() == 20
    copy = ranges.copy()
    copy.remove(10, 40)
    assert ranges.total() == 20
