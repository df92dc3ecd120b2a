"""The trace format's limits: one set, the same in msgpack and JSON lines,
checked when a trace is validated; so whatever ``validate`` accepts, ``convert``
writes in the other form, and that form's reader accepts it unchanged.

Values only JSON can hold (ints of 2**64 and more, lone surrogates) and values
over a limit of the msgpack decoder (a 2 MiB str, a long array) are refused in
JSON lines too, with a message naming the field; values at the limits are
accepted in both forms and survive both conversions.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner, Result

from ksmreplay.cli import cli
from ksmreplay.errors import ExitStatus, TraceError
from ksmreplay.trace import (
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_MAP_ITEMS,
    MAX_STR_BYTES,
    TraceReader,
    TraceWriter,
)
from ksmreplay.trace.events import Event, Header

MAX_META_BYTES = 2**20
"""The largest meta, in bytes as msgpack (README, "The trace format, in short")."""
MAX_META_DEPTH = 32
"""The deepest nesting of meta (README)."""

H: dict[str, Any] = {"ksmreplay": 1}
MAP = [0, "alloc", 1, 0x10000, 0x4000]
"""pid 1 maps 0x10000..0x14000 (4 pages)."""


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


def jsonl(*objects: Any) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, which json.loads reads back.
    return "".join(json.dumps(o) + "\n" for o in objects).encode()


def read(data: bytes) -> tuple[Header, list[Event]]:
    with TraceReader(io.BytesIO(data), "T") as reader:
        return reader.header, list(reader)


def error(data: bytes) -> str:
    with pytest.raises(TraceError) as info:
        read(data)
    assert info.value.exit_status == ExitStatus.INVALID_TRACE
    return str(info.value)


def write(header: Header, events: list[Event], form: str) -> bytes:
    out = io.BytesIO()
    writer = TraceWriter(out, header, form)
    for event in events:
        writer.event(event)
    return out.getvalue()


def nested(depth: int) -> Any:
    """A map nested ``depth`` deep (the outermost counts 1)."""
    value: Any = 0
    for _ in range(depth):
        value = {"a": value}
    return value


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


# (id, trace objects, message after "T: ")
ONLY_JSON_CAN_HOLD: list[tuple[str, list[Any], str]] = [
    (
        "t of 2**64 before a write",
        [H, [2**64, "alloc", 1, 0, 4096], [2**64, "write", 1, 0, 4096, 5]],
        "event 1: t must be below 2**64, not 18446744073709551616",
    ),
    (
        "t of 2**64 going back to a write",
        [H, [2**64, "alloc", 1, 0, 4096], [1, "write", 1, 0, 4096, 5]],
        "event 1: t must be below 2**64, not 18446744073709551616",
    ),
    (
        "t of 2**64 in a settle",
        [H, [2**64, "settle"]],
        "event 1: t must be below 2**64, not 18446744073709551616",
    ),
    (
        "pid of 2**64",
        [H, [0, "alloc", 2**64, 0, 4096]],
        "event 1 (t=0): alloc pid must be below 2**63, not 18446744073709551616",
    ),
    (
        "child pid of 2**64",
        [H, MAP, [1, "fork", 1, 2**64]],
        "event 2 (t=1): fork child_pid must be below 2**63, not 18446744073709551616",
    ),
    (
        "max_full_scans of 2**64",
        [H, [0, "settle", 2**64]],
        "event 1 (t=0): settle max_full_scans must be below 2**64, not 18446744073709551616",
    ),
    (
        "a 100-digit t",
        [H, [10**99, "settle"]],
        "event 1: t must be below 2**64, not 100000000000...(100 digits)",
    ),
    (
        "a meta key holding a lone surrogate",
        [{"ksmreplay": 1, "meta": {"\ud800": 1}}],
        "event 0: header meta key '\\ud800' is a str that is not valid Unicode",
    ),
    (
        "a label holding a lone surrogate",
        [H, [0, "snapshot", "a\udfff"]],
        "event 1 (t=0): snapshot label is a str that is not valid Unicode",
    ),
]


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize(
    ("objects", "message"),
    [pytest.param(o, m, id=i) for i, o, m in ONLY_JSON_CAN_HOLD],
)
def test_values_only_json_can_hold_are_refused(objects: list[Any], message: str) -> None:
    assert error(jsonl(*objects)) == "T: " + message


# (id, trace objects, message after "T: ") of traces msgpack can encode, over a limit
OVER_A_LIMIT: list[tuple[str, list[Any], str]] = [
    (
        "pid of 2**63 next to a write",
        [H, [0, "alloc", 2**63, 0, 4096], [1, "write", 2**63, 0, 4096, 5]],
        "event 1 (t=0): alloc pid must be below 2**63, not 9223372036854775808",
    ),
    (
        "pid of 2**64-1 in a prctl",
        [H, [0, "prctl", 2**64 - 1, "merge_any", True]],
        "event 1 (t=0): prctl pid must be below 2**63, not 18446744073709551615",
    ),
    (
        "a 2 MiB label",
        [H, [0, "snapshot", "x" * (2 * MAX_STR_BYTES)]],
        "event 1 (t=0): snapshot label is a str of 2097152 bytes, over the limit of 1048576",
    ),
    (
        "a description of 1 MiB and 1 byte in UTF-8",
        [{"ksmreplay": 1, "description": "é" * (MAX_STR_BYTES // 2) + "x"}],
        "event 0: header description is a str of 1048577 bytes, over the limit of 1048576",
    ),
    (
        "meta nested too deeply",
        [{"ksmreplay": 1, "meta": nested(MAX_META_DEPTH + 1)}],
        "event 0: header meta"
        + "['a']" * MAX_META_DEPTH
        + " is nested deeper than the limit of 32",
    ),
    (
        "a meta map of too many entries",
        [{"ksmreplay": 1, "meta": {"m": {str(i): 0 for i in range(MAX_MAP_ITEMS + 1)}}}],
        "event 0: header meta['m'] is a map of 65537 entries, over the limit of 65536",
    ),
    (
        "meta too large as a whole",
        [{"ksmreplay": 1, "meta": {"a": "x" * 600_000, "b": "y" * 600_000}}],
        "event 0: header meta takes 1200015 bytes as msgpack, over the limit of 1048576",
    ),
]


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize(
    ("objects", "message"),
    [pytest.param(o, m, id=i) for i, o, m in OVER_A_LIMIT],
)
def test_over_a_limit_is_refused_in_both_forms(objects: list[Any], message: str) -> None:
    assert error(jsonl(*objects)) == "T: " + message
    # The msgpack decoder may stop first (a str over its limit), in its own words.
    assert error(pack(*objects)).startswith("T: event ")


@pytest.mark.usefixtures("both_engines")
def test_values_at_the_limits_are_accepted_and_convert_both_ways() -> None:
    objects = [
        {
            "ksmreplay": 1,
            "description": "d" * MAX_STR_BYTES,
            "meta": {
                "deep": nested(MAX_META_DEPTH - 1),
                "ints": [-(2**63), 2**64 - 1],
                "many": {str(i): i for i in range(MAX_MAP_ITEMS)},
            },
        },
        [0, "alloc", 2**63 - 1, 0, 0x4000],
        [1, "write", 2**63 - 1, 0, 0x4000, [2**64 - 1, 0, 1, 2]],
        [1, "write", 2**63 - 1, 0, 0x4000, 2**64 - 1],
        [2, "fork", 2**63 - 1, 2**63 - 2],
        [3, "settle", 2**64 - 1],
        [2**64 - 1, "snapshot", "s" * MAX_STR_BYTES],
    ]
    assert len(msgpack.packb(objects[0]["meta"])) <= MAX_META_BYTES
    for data in (pack(*objects), jsonl(*objects)):
        header, events = read(data)
        assert len(events) == 6
        for form in ("msgpack", "jsonl"):
            assert read(write(header, events, form)) == (header, events)


def test_a_json_fingerprint_array_over_the_limit_is_refused() -> None:
    pages = MAX_ARRAY_ITEMS + 1
    data = jsonl(H, [0, "alloc", 1, 0, pages * 4096], [1, "write", 1, 0, pages * 4096, [0] * pages])
    assert error(data) == (
        "T: event 2 (t=1): write content is an array of 4194305 fingerprints, "
        "over the limit of 4194304"
    )


def test_a_json_literal_write_over_the_limit_is_refused() -> None:
    size = MAX_BIN_BYTES + 1
    text = base64.b64encode(bytes(size)).decode()
    data = jsonl(H, [0, "alloc", 1, 0, 2 * MAX_BIN_BYTES], [1, "write", 1, 0, size, {"b64": text}])
    assert error(data) == (
        "T: event 2 (t=1): write content is a bin of 67108865 bytes, over the limit of 67108864"
    )
    # Text longer than the base64 of any bin within the limit is not decoded at all.
    data = jsonl(H, [0, "alloc", 1, 0, 0x1000], [1, "write", 1, 0, 0x1000, {"b64": text + "AAAA"}])
    assert error(data) == (
        "T: event 2 (t=1): write content b64 has 89478492 characters, "
        "more than a bin of the limit of 67108864 bytes takes"
    )


@pytest.mark.usefixtures("both_engines")
def test_a_json_lines_file_with_a_byte_order_mark_gets_a_clear_message() -> None:
    data = b"\xef\xbb\xbf" + jsonl(H, MAP)
    assert error(data) == (
        "T: event 0: the trace starts with a UTF-8 byte order mark; "
        "JSON lines must be UTF-8 without one (save the file without the BOM)"
    )


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"null\n" + jsonl(MAP), "header must be a map, not nil"),
        (jsonl([0, "snapshot", "s"]), "header must be a map, not array"),
        (b' \n\t "ksmreplay"\n' + jsonl(MAP), "header must be a map, not str"),
        (b"true\n", "header must be a map, not bool"),
        (b"1.5\n", "header must be a map, not float"),
        (b"nul\n", "invalid JSON (Expecting value at column 1)"),
        (b"ksmreplay: 1\n", "invalid JSON (Expecting value at column 1)"),
        (b"-\n", "invalid JSON (Expecting value at column 1)"),
    ],
    ids=["null", "array", "str", "bool", "float", "nul", "word", "minus"],
)
def test_a_text_file_whose_first_line_is_not_a_map_is_read_as_json_lines(
    data: bytes, message: str
) -> None:
    """GIVEN a file whose first non-blank byte is printable ASCII (in msgpack a small
    positive int, never a valid header) THEN it is read as JSON lines, not msgpack."""
    assert error(data) == f"T: event 0: {message}"


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pack([1]), "header must be a map, not array"),
        (pack(7), "header must be a map, not int"),
        (pack(None), "header must be a map, not nil"),
        (b"\xc1", "invalid msgpack data"),
    ],
    ids=["array", "int", "nil", "garbage"],
)
def test_a_binary_file_whose_first_object_is_not_a_map_is_read_as_msgpack(
    data: bytes, message: str
) -> None:
    assert error(data) == f"T: event 0: {message}"


@pytest.mark.parametrize(
    ("objects", "message"),
    [pytest.param(o, m, id=i) for i, o, m in ONLY_JSON_CAN_HOLD + OVER_A_LIMIT[:3]],
)
def test_convert_refuses_with_one_line_what_validate_refuses(
    tmp_path: Path, objects: list[Any], message: str
) -> None:
    source = tmp_path / "t.jsonl"
    source.write_bytes(jsonl(*objects))
    checked = invoke("validate", str(source))
    converted = invoke("convert", str(source), str(tmp_path / "t.msgpack"))
    for result in (checked, converted):
        assert result.exit_code == ExitStatus.INVALID_TRACE
        assert result.stderr == f"ksmreplay: {source}: {message}\n"
    assert not (tmp_path / "t.msgpack").exists()


def test_synth_refuses_a_seed_the_trace_format_cannot_hold(tmp_path: Path) -> None:
    out = tmp_path / "t.msgpack"
    result = invoke("synth", "zero-heavy", "--seed", str(2**64), "-o", str(out))
    assert result.exit_code == ExitStatus.USAGE
    assert result.stderr == (
        "ksmreplay: seed must be between 0 and 2**64-1, not 18446744073709551616\n"
    )
    assert not out.exists()
    assert invoke("synth", "zero-heavy", "--seed", str(2**64 - 1), "-o", str(out)).exit_code == 0
    assert invoke("convert", str(out), str(tmp_path / "t.jsonl")).exit_code == 0
    assert invoke("validate", str(tmp_path / "t.jsonl")).exit_code == 0
