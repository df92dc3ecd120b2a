"""Round trips between the two forms of a trace, over random traces (hypothesis).

The traces are drawn as raw objects, not through the writer, with values at
and beyond every limit (ints around 2**63 and 2**64, negative ones, lone
surrogates, non-finite floats, deep and odd ``meta``), so that many are
invalid.  For every trace:

* written as msgpack and as JSON lines (when the form can hold it), both
  readers accept it or both refuse it, and accept it as the same records;
* a trace a reader accepts, converted to the other form and back (as
  ``convert`` does, with :class:`TraceWriter`), is accepted by both readers
  and gives the same header and events.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ksmreplay.errors import TraceError
from ksmreplay.trace import FORMS, TraceReader, TraceWriter
from ksmreplay.trace.events import Event, Header

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

EDGE_INTS = [0, 1, 2, 4096, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63), -(2**63) - 1, 10**30]
ODD_TEXT = ["", "é", '\x00\n\t\\"', "\ud800", "a\udfff", "\u2028", "x" * 40]
TOP = 2**64 - 0x5000
"""The highest mapping of the drawn traces: 4 pages, up to the last page below 2**64."""

texts = st.text(max_size=6) | st.sampled_from(ODD_TEXT)
ints = st.sampled_from(EDGE_INTS) | st.integers(-5, 5)
scalars = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=True, allow_infinity=True, width=64)
    | texts
)
meta_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
valid_texts = st.text(max_size=6)
valid_meta_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | valid_texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(valid_texts, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def raw_traces(draw: st.DrawFn) -> list[Any]:
    """A header and events as plain objects, mostly valid, with values at the
    limits; each field is out of bounds with a chance that varies per trace."""
    wildness = draw(st.integers(0, 3))

    def pick(good: list[Any], bad: list[Any]) -> Any:
        if draw(st.integers(0, 19)) < wildness:
            return draw(st.sampled_from(bad))
        return draw(st.sampled_from(good))

    some_texts = texts if wildness else valid_texts
    header: dict[str, Any] = {"ksmreplay": 1}
    if draw(st.booleans()):
        header["page_size"] = pick([4096], [8192, 4097, 2**64])
    if draw(st.booleans()):
        header["description"] = draw(some_texts)
    if draw(st.booleans()):
        keys, values = (texts, meta_values) if wildness else (valid_texts, valid_meta_values)
        header["meta"] = draw(st.dictionaries(keys, values, max_size=3))
    objects: list[Any] = [header]
    t = 0
    live = {pick([1, 2**63 - 1], [2**63, 2**64, 0, -1])}
    for pid in live:
        objects.append([t, "alloc", pid, 0x10000, 0x4000])
        objects.append([t, "alloc", pid, TOP, 0x4000])
    for _ in range(draw(st.integers(0, 10))):
        t = pick([t, t + 1, t + 10**9, 2**64 - 1], [2**64, t - 1, 10**30])
        t = max(t, 0) if isinstance(t, int) and t > -2 else t
        op = draw(
            st.sampled_from(
                [
                    *["alloc", "write", "write", "write", "write", "free", "read", "madvise"],
                    *["prctl", "fork", "exit", "ksm", "settle", "snapshot"],
                ]
            )
        )
        pid = pick(sorted(live) or [1], [2**63, 2**64 - 1, 2**64, 0, 5])
        addr = pick([0x10000, 0x11000, TOP, TOP + 0x1000], [0x10001, 2**64, -0x1000])
        length = pick([0x1000, 0x2000], [0x4000 + 0x1000, 1, 0, 2**64])
        obj: list[Any]
        if op in ("alloc", "free", "read"):
            obj = [t, op, pid, addr if op != "alloc" else 0x20000, length]
        elif op == "write":
            kind = draw(st.sampled_from(["int", "list", "bin"]))
            content: Any
            pages = length // 0x1000 if isinstance(length, int) and 0 < length < 2**20 else 1
            if kind == "int":
                content = pick([0, 7, 2**64 - 1], [2**64, -1])
            elif kind == "list":
                fps = st.sampled_from([0, 5, 2**63, 2**64 - 1]) | ints
                content = draw(st.lists(fps, min_size=pages, max_size=pages + 1))
            else:
                size = length if isinstance(length, int) and 0 < length <= 0x2000 else 3
                content = draw(st.binary(min_size=size, max_size=size))
            obj = [t, "write", pid, addr, length, content]
        elif op == "madvise":
            advice = pick(["mergeable", "unmergeable", "dontneed"], ["\ud800", "x"])
            obj = [t, "madvise", pid, addr, length, advice]
        elif op == "prctl":
            obj = [t, "prctl", pid, "merge_any", draw(st.booleans())]
        elif op == "fork":
            child = pick([7, 2**63 - 2], [2**63, 2**64, 0])
            live.add(child)
            obj = [t, "fork", pid, child]
        elif op == "exit":
            live.discard(pid)
            obj = [t, "exit", pid]
        elif op == "ksm":
            obj = [t, "ksm", {"pages_to_scan": pick([1, 2**64 - 1], [2**64, -1])}]
        elif op == "settle":
            obj = [t, "settle"] if draw(st.booleans()) else [t, "settle", draw(ints)]
        else:
            obj = [t, "snapshot", draw(some_texts)]
        objects.append(obj)
    return objects


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(type(value).__name__)


def encode(objects: list[Any], form: str) -> bytes | None:
    """The objects in ``form``, or None when that form cannot hold them."""
    try:
        if form == "msgpack":
            return b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)
        lines = (json.dumps(o, default=_json_default) + "\n" for o in objects)
        return "".join(lines).encode()
    except (OverflowError, UnicodeEncodeError, ValueError):
        return None


def read(data: bytes) -> tuple[Header, list[Event]] | None:
    """What a reader makes of ``data``; None if it refuses it."""
    try:
        with TraceReader(io.BytesIO(data), "t") as reader:
            return reader.header, list(reader)
    except TraceError:
        return None


def write(trace: tuple[Header, list[Event]], form: str) -> bytes:
    out = io.BytesIO()
    writer = TraceWriter(out, trace[0], form)
    for record in trace[1]:
        writer.event(record)
    return out.getvalue()


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw_traces())
def test_both_forms_agree_and_every_valid_trace_converts_both_ways(objects: list[Any]) -> None:
    read_as: dict[str, tuple[Header, list[Event]] | None] = {}
    for form in FORMS:
        data = encode(objects, form)
        if data is not None:
            read_as[form] = read(data)
    if len(read_as) == 2:
        # One set of limits: what one reader accepts, the other accepts as the same trace.
        assert read_as["msgpack"] == read_as["jsonl"]
    for form, trace in read_as.items():
        event("accepted" if trace is not None else "refused")
        if trace is None:
            continue
        other = "jsonl" if form == "msgpack" else "msgpack"
        converted = read(write(trace, other))
        assert converted == trace
        assert read(write(converted, form)) == trace
