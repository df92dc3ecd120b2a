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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from randtrace import damaged, encode_trace, valid_traces

from ksmreplay.errors import TraceError
from ksmreplay.trace import RangeSet, TraceReader
from ksmreplay.trace.events import (
    Event,
    Header,
)

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

PAGE = 4096


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
    packed = encode_trace(header, events, "msgpack")
    assert _read(packed) == (header, events)
    as_jsonl = encode_trace(header, events, "jsonl")
    assert _read(as_jsonl) == (header, events)
    assert encode_trace(*_read(as_jsonl), "msgpack") == packed


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
