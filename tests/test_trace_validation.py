"""Every rule of TRACE_FORMAT.md, broken one at a time, with the exact message.

Each case is its own small trace; the expected message is written out by hand
(``T`` stands for the file's path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ksmreplay.errors import ExitStatus, InputOutputError, TraceError
from ksmreplay.trace import open_trace, read_trace

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the scalar code and with the native core."""

H: dict[str, Any] = {"ksmreplay": 1}
MAP = [0, "alloc", 1, 0x10000, 0x4000]
"""Event 1 of most cases: pid 1 maps 0x10000..0x14000 (4 pages)."""


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


def jsonl(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def error_of(tmp_path: Path, data: bytes, name: str = "t.msgpack") -> str:
    """The message reading ``data`` gives, with the path shown as ``T``."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(TraceError) as info:
        read_trace(str(path))
    assert info.value.exit_status == ExitStatus.INVALID_TRACE
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return "T: " + message[len(str(path)) + 2 :]


# (id, trace bytes, expected message)
CASES: list[tuple[str, bytes, str]] = [
    # --- container and decoding
    ("empty file", b"", "T: event 0: empty trace: no header"),
    ("only blanks", b"  \n", "T: event 0: header must be a map, not int"),
    ("garbage bytes", b"\xc1\xc1\xc1", "T: event 0: invalid msgpack data"),
    ("garbage after header", pack(H) + b"\xc1", "T: event 1: invalid msgpack data"),
    (
        "truncated header",
        pack(H)[:-1],
        "T: event 0: truncated: the trace ends inside the header",
    ),
    (
        "truncated event",
        pack(H, MAP)[:-2],
        "T: event 1: truncated: the trace ends inside this event",
    ),
    (
        "header claims 4-billion-element array",
        b"\xdd\xff\xff\xff\xff",
        "T: event 0: array of 4294967295 items exceeds this reader's limit of 4194304",
    ),
    (
        "event claims 4-billion-element array",
        pack(H) + b"\xdd\xff\xff\xff\xff",
        "T: event 1: array of 4294967295 items exceeds this reader's limit of 4194304",
    ),
    (
        "event claims 4-billion-entry map",
        pack(H) + b"\xdf\xff\xff\xff\xff",
        "T: event 1: map of 4294967295 entries exceeds this reader's limit of 65536",
    ),
    (
        "str longer than the limit",
        pack(H) + b"\xdb\x00\x20\x00\x00" + b"a" * (2**21),
        "T: event 1: str of 2097152 bytes exceeds this reader's limit of 1048576",
    ),
    ("invalid UTF-8", pack(H) + b"\xa2\xff\xfe", "T: event 1: invalid UTF-8 in a str"),
    (
        "int map key",
        pack(H) + b"\x81\x01\x02",
        "T: event 1: map key of type int; map keys must be str",
    ),
    # --- header
    ("header not a map", pack([1]), "T: event 0: header must be a map, not array"),
    (
        "missing version",
        pack({"page_size": 4096}),
        "T: event 0: header has no 'ksmreplay' key (not a ksmreplay trace)",
    ),
    (
        "wrong version",
        pack({"ksmreplay": 2}),
        "T: event 0: unsupported trace format version 2 (this reader knows version 1)",
    ),
    (
        "version as str",
        pack({"ksmreplay": "1"}),
        "T: event 0: header ksmreplay must be an int, not str",
    ),
    (
        "version as bool",
        pack({"ksmreplay": True}),
        "T: event 0: header ksmreplay must be an int, not bool",
    ),
    (
        "page_size not a power of two",
        pack({"ksmreplay": 1, "page_size": 3000}),
        "T: event 0: header page_size 3000 is not a power of two between 4096 and 65536",
    ),
    (
        "page_size too small",
        pack({"ksmreplay": 1, "page_size": 2048}),
        "T: event 0: header page_size 2048 is not a power of two between 4096 and 65536",
    ),
    (
        "page_size too large",
        pack({"ksmreplay": 1, "page_size": 131072}),
        "T: event 0: header page_size 131072 is not a power of two between 4096 and 65536",
    ),
    (
        "page_size float",
        pack({"ksmreplay": 1, "page_size": 4096.0}),
        "T: event 0: header page_size must be an int, not float",
    ),
    (
        "description not str",
        pack({"ksmreplay": 1, "description": 5}),
        "T: event 0: header description must be a str, not int",
    ),
    (
        "meta not a map",
        pack({"ksmreplay": 1, "meta": [1]}),
        "T: event 0: header meta must be a map, not array",
    ),
    (
        "meta holding bin",
        pack({"ksmreplay": 1, "meta": {"a": [1, b"x"]}}),
        "T: event 0: header meta['a'][1] is bin; meta may hold only JSON values",
    ),
    # --- event shape
    ("event not an array", pack(H, {"t": 0}), "T: event 1: event must be an array, not map"),
    (
        "event too short",
        pack(H, [0]),
        "T: event 1: event must be an array [t, op, ...], not 1 item",
    ),
    ("t float", pack(H, [0.5, "alloc", 1, 0, 4096]), "T: event 1: t must be an int, not float"),
    ("t str", pack(H, ["0", "alloc", 1, 0, 4096]), "T: event 1: t must be an int, not str"),
    ("t bool", pack(H, [True, "alloc", 1, 0, 4096]), "T: event 1: t must be an int, not bool"),
    ("t negative", pack(H, [-1, "alloc", 1, 0, 4096]), "T: event 1: t must be >= 0, not -1"),
    (
        "t decreasing",
        pack(H, [5, "alloc", 1, 0, 4096], [3, "alloc", 2, 0, 4096]),
        "T: event 2 (t=3): t goes back in time (previous event at t=5)",
    ),
    ("op not str", pack(H, [0, 7]), "T: event 1 (t=0): op must be a str, not int"),
    ("unknown op", pack(H, [0, "allocate", 1]), "T: event 1 (t=0): unknown op 'allocate'"),
    (
        "alloc arity",
        pack(H, [0, "alloc", 1, 0x10000]),
        "T: event 1 (t=0): alloc takes 3 items after t and op (pid, addr, len), got 2",
    ),
    (
        "write arity",
        pack(H, MAP, [0, "write", 1, 0x10000, 4096]),
        "T: event 2 (t=0): write takes 4 items after t and op (pid, addr, len, content), got 3",
    ),
    (
        "exit arity",
        pack(H, MAP, [0, "exit", 1, 2]),
        "T: event 2 (t=0): exit takes 1 item after t and op (pid), got 2",
    ),
    # --- ranges
    (
        "pid bool",
        pack(H, [0, "alloc", True, 0, 4096]),
        "T: event 1 (t=0): alloc pid must be an int, not bool",
    ),
    (
        "pid nil",
        pack(H, [0, "alloc", None, 0, 4096]),
        "T: event 1 (t=0): alloc pid must be an int, not nil",
    ),
    (
        "pid zero",
        pack(H, [0, "alloc", 0, 0, 4096]),
        "T: event 1 (t=0): alloc pid must be positive, not 0",
    ),
    (
        "addr float",
        pack(H, [0, "alloc", 1, 4096.0, 4096]),
        "T: event 1 (t=0): alloc addr must be an int, not float",
    ),
    (
        "addr negative",
        pack(H, [0, "alloc", 1, -4096, 4096]),
        "T: event 1 (t=0): alloc addr must be >= 0, not -4096",
    ),
    (
        "len str",
        pack(H, [0, "alloc", 1, 0, "4096"]),
        "T: event 1 (t=0): alloc len must be an int, not str",
    ),
    (
        "len zero",
        pack(H, [0, "alloc", 1, 0, 0]),
        "T: event 1 (t=0): alloc len must be > 0, not 0",
    ),
    (
        "read len zero",
        pack(H, MAP, [0, "read", 1, 0x10000, 0]),
        "T: event 2 (t=0): read len must be > 0, not 0",
    ),
    (
        "range past 2**64",
        pack(H, [0, "alloc", 1, 2**64 - 4096, 4096]),
        "T: event 1 (t=0): alloc range ends at 0x10000000000000000; addr + len must be below 2**64",
    ),
    (
        "alloc addr unaligned",
        pack(H, [0, "alloc", 1, 0x10001, 4096]),
        "T: event 1 (t=0): alloc addr 0x10001 is not page-aligned (page_size 4096)",
    ),
    (
        "alloc len unaligned",
        pack(H, [0, "alloc", 1, 0x10000, 100]),
        "T: event 1 (t=0): alloc len 100 is not a multiple of page_size 4096",
    ),
    (
        "free addr unaligned",
        pack(H, MAP, [0, "free", 1, 0x10001, 4096]),
        "T: event 2 (t=0): free addr 0x10001 is not page-aligned (page_size 4096)",
    ),
    (
        "madvise len unaligned",
        pack(H, MAP, [0, "madvise", 1, 0x10000, 100, "mergeable"]),
        "T: event 2 (t=0): madvise len 100 is not a multiple of page_size 4096",
    ),
    (
        "unaligned under a 64 KiB page",
        pack({"ksmreplay": 1, "page_size": 65536}, [0, "alloc", 1, 0x10000, 0x8000]),
        "T: event 1 (t=0): alloc len 32768 is not a multiple of page_size 65536",
    ),
    # --- address space
    (
        "overlapping alloc",
        pack(H, MAP, [0, "alloc", 1, 0x12000, 0x4000]),
        "T: event 2 (t=0): alloc in pid 1 at 0x12000 overlaps an existing mapping",
    ),
    (
        "alloc overlapping from below",
        pack(H, MAP, [0, "alloc", 1, 0xE000, 0x4000]),
        "T: event 2 (t=0): alloc in pid 1 at 0x10000 overlaps an existing mapping",
    ),
    (
        "write past the end of a mapping",
        pack(H, MAP, [0, "write", 1, 0x13000, 0x2000, 7]),
        "T: event 2 (t=0): write to pid 1 at 0x14000 outside any mapping",
    ),
    (
        "read before a mapping",
        pack(H, MAP, [0, "read", 1, 0xFFFF, 2]),
        "T: event 2 (t=0): read from pid 1 at 0xffff outside any mapping",
    ),
    (
        "madvise outside",
        pack(H, MAP, [0, "madvise", 1, 0x20000, 4096, "dontneed"]),
        "T: event 2 (t=0): madvise in pid 1 at 0x20000 outside any mapping",
    ),
    (
        "write into a freed hole",
        pack(H, MAP, [1, "free", 1, 0x11000, 0x1000], [2, "write", 1, 0x10000, 0x3000, 0]),
        "T: event 3 (t=2): write to pid 1 at 0x11000 outside any mapping",
    ),
    (
        "write to unknown pid",
        pack(H, MAP, [0, "write", 9, 0x10000, 4096, 1]),
        "T: event 2 (t=0): write to pid 9, which does not exist",
    ),
    (
        "free of unknown pid",
        pack(H, [0, "free", 3, 0, 4096]),
        "T: event 1 (t=0): free in pid 3, which does not exist",
    ),
    (
        "read of exited pid",
        pack(H, MAP, [1, "exit", 1], [2, "read", 1, 0x10000, 1]),
        "T: event 3 (t=2): read from pid 1, which has exited",
    ),
    (
        "exit twice",
        pack(H, MAP, [1, "exit", 1], [2, "exit", 1]),
        "T: event 3 (t=2): exit of pid 1, which has exited",
    ),
    (
        "fork onto an existing pid",
        pack(H, MAP, [0, "prctl", 2, "merge_any", True], [1, "fork", 1, 2]),
        "T: event 3 (t=1): fork of pid 1: child pid 2 already exists",
    ),
    (
        "fork of unknown pid",
        pack(H, [0, "fork", 7, 8]),
        "T: event 1 (t=0): fork of pid 7, which does not exist",
    ),
    (
        "fork child pid negative",
        pack(H, MAP, [0, "fork", 1, -2]),
        "T: event 2 (t=0): fork child_pid must be positive, not -2",
    ),
    # --- content
    (
        "array content of wrong length",
        pack(H, MAP, [0, "write", 1, 0x10000, 0x2000, [1]]),
        "T: event 2 (t=0): write content has 1 fingerprint for 2 pages",
    ),
    (
        "nested array content",
        pack(H, MAP, [0, "write", 1, 0x10000, 0x2000, [[1], 2]]),
        "T: event 2 (t=0): write content[0] must be an int, not array",
    ),
    (
        "bool in array content",
        pack(H, MAP, [0, "write", 1, 0x10000, 0x2000, [3, True]]),
        "T: event 2 (t=0): write content[1] must be an int, not bool",
    ),
    (
        "negative in array content",
        pack(H, MAP, [0, "write", 1, 0x10000, 0x2000, [3, -5]]),
        "T: event 2 (t=0): write content[1] -5 is not a fingerprint (0..2**64-1)",
    ),
    (
        "bin of wrong length",
        pack(H, MAP, [0, "write", 1, 0x10001, 10, b"abc"]),
        "T: event 2 (t=0): write content has 3 bytes for len 10",
    ),
    (
        "negative content",
        pack(H, MAP, [0, "write", 1, 0x10000, 4096, -1]),
        "T: event 2 (t=0): write content -1 is not a fingerprint (0..2**64-1)",
    ),
    (
        "float content",
        pack(H, MAP, [0, "write", 1, 0x10000, 4096, 1.5]),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not float",
    ),
    (
        "str content",
        pack(H, MAP, [0, "write", 1, 0x10000, 4096, "ab"]),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not str",
    ),
    (
        "ext content",
        pack(H, MAP, [0, "write", 1, 0x10000, 4096, msgpack.ExtType(5, b"x")]),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not ext",
    ),
    (
        "b64 map in msgpack",
        pack(H, MAP, [0, "write", 1, 0x10000, 3, {"b64": "YWJj"}]),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not map",
    ),
    (
        "fingerprint content unaligned",
        pack(H, MAP, [0, "write", 1, 0x10800, 4096, 5]),
        "T: event 2 (t=0): write addr 0x10800 is not page-aligned "
        "(page_size 4096; needed for fingerprint content)",
    ),
    (
        "fingerprint list unaligned len",
        pack(H, MAP, [0, "write", 1, 0x10000, 100, [5]]),
        "T: event 2 (t=0): write len 100 is not a multiple of page_size 4096; "
        "needed for fingerprint content",
    ),
    # --- ksm
    (
        "ksm unknown knob",
        pack(H, [0, "ksm", {"foo": 1}]),
        "T: event 1 (t=0): unknown ksm setting 'foo'",
    ),
    (
        "ksm run 3",
        pack(H, [0, "ksm", {"run": 3}]),
        "T: event 1 (t=0): ksm setting run=3: must be between 0 and 2",
    ),
    (
        "ksm max_page_sharing 1",
        pack(H, [0, "ksm", {"max_page_sharing": 1}]),
        "T: event 1 (t=0): ksm setting max_page_sharing=1: must be >= 2",
    ),
    (
        "ksm advisor_target_scan_time 0",
        pack(H, [0, "ksm", {"advisor_target_scan_time": 0}]),
        "T: event 1 (t=0): ksm setting advisor_target_scan_time=0: must be >= 1",
    ),
    (
        "ksm use_zero_pages 2",
        pack(H, [0, "ksm", {"use_zero_pages": 2}]),
        "T: event 1 (t=0): ksm setting use_zero_pages=2: must be 0 or 1",
    ),
    (
        "ksm smart_scan true",
        pack(H, [0, "ksm", {"smart_scan": True}]),
        "T: event 1 (t=0): ksm setting smart_scan=True: must be an integer",
    ),
    (
        "ksm advisor_mode x",
        pack(H, [0, "ksm", {"advisor_mode": "x"}]),
        "T: event 1 (t=0): ksm setting advisor_mode='x': must be one of 'none', 'scan-time'",
    ),
    (
        "ksm negative",
        pack(H, [0, "ksm", {"pages_to_scan": -1}]),
        "T: event 1 (t=0): ksm setting pages_to_scan=-1: must be >= 0",
    ),
    (
        "ksm empty",
        pack(H, [0, "ksm", {}]),
        "T: event 1 (t=0): ksm settings must not be empty",
    ),
    (
        "ksm not a map",
        pack(H, [0, "ksm", [["run", 1]]]),
        "T: event 1 (t=0): ksm settings must be a map, not array",
    ),
    # --- other ops
    (
        "bad advice",
        pack(H, MAP, [0, "madvise", 1, 0x10000, 4096, "willneed"]),
        "T: event 2 (t=0): madvise advice must be one of 'mergeable', 'unmergeable', "
        "'dontneed', not 'willneed'",
    ),
    (
        "prctl bad option",
        pack(H, [0, "prctl", 1, "merge_all", True]),
        "T: event 1 (t=0): prctl option must be 'merge_any', not 'merge_all'",
    ),
    (
        "prctl int value",
        pack(H, [0, "prctl", 1, "merge_any", 1]),
        "T: event 1 (t=0): prctl merge_any value must be a bool, not int",
    ),
    (
        "settle zero",
        pack(H, [0, "settle", 0]),
        "T: event 1 (t=0): settle max_full_scans must be >= 1, not 0",
    ),
    (
        "settle str",
        pack(H, [0, "settle", "10"]),
        "T: event 1 (t=0): settle max_full_scans must be an int, not str",
    ),
    (
        "settle arity",
        pack(H, [0, "settle", 1, 2]),
        "T: event 1 (t=0): settle takes at most 1 item after t and op (max_full_scans), got 2",
    ),
    (
        "snapshot label int",
        pack(H, [0, "snapshot", 5]),
        "T: event 1 (t=0): snapshot label must be a str, not int",
    ),
    (
        "snapshot without label",
        pack(H, [0, "snapshot"]),
        "T: event 1 (t=0): snapshot takes 1 item after t and op (label), got 0",
    ),
]

JSONL_CASES: list[tuple[str, bytes, str]] = [
    (
        "JSON 1.0 is not an int",
        jsonl('{"ksmreplay": 1}', '[1.0, "alloc", 1, 65536, 16384]'),
        "T: event 1: t must be an int, not float",
    ),
    (
        "JSON version 1.0",
        jsonl('{"ksmreplay": 1.0}'),
        "T: event 0: header ksmreplay must be an int, not float",
    ),
    (
        "JSON content 2**64",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 4096, 18446744073709551616]',
        ),
        "T: event 2 (t=0): write content 18446744073709551616 is not a fingerprint (0..2**64-1)",
    ),
    (
        "JSON array item 2**64",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 8192, [1, 18446744073709551616]]',
        ),
        "T: event 2 (t=0): write content[1] 18446744073709551616 is not a fingerprint (0..2**64-1)",
    ),
    (
        "JSON address past 2**64",
        jsonl('{"ksmreplay": 1}', '[0, "alloc", 1, 18446744073709551616, 4096]'),
        "T: event 1 (t=0): alloc range ends at 0x10000000000001000; addr + len must be below 2**64",
    ),
    (
        "JSON bool content",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 4096, true]',
        ),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not bool",
    ),
    (
        "JSON bad base64",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 3, {"b64": "Y*Jj"}]',
        ),
        "T: event 2 (t=0): write content b64 is not valid base64",
    ),
    (
        "JSON b64 of wrong length",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 4, {"b64": "YWJj"}]',
        ),
        "T: event 2 (t=0): write content has 3 bytes for len 4",
    ),
    (
        "JSON map that is not b64",
        jsonl(
            '{"ksmreplay": 1}',
            '[0, "alloc", 1, 65536, 16384]',
            '[0, "write", 1, 65536, 3, {"b64": "YWJj", "x": 1}]',
        ),
        "T: event 2 (t=0): write content must be an int, an array of ints or a bin, not map",
    ),
    (
        "JSON syntax error",
        jsonl('{"ksmreplay": 1}', '[0, "alloc",'),
        "T: event 1: invalid JSON (Expecting value at column 13)",
    ),
    (
        "JSON header syntax error",
        jsonl('{"ksmreplay": 1'),
        "T: event 0: invalid JSON (Expecting ',' delimiter at column 16)",
    ),
    (
        "JSON NaN in meta",
        jsonl('{"ksmreplay": 1, "meta": {"x": NaN}}'),
        "T: event 0: header meta['x'] is a non-finite float; meta may hold only JSON values",
    ),
    (
        "JSON meta int that msgpack cannot hold",
        jsonl('{"ksmreplay": 1, "meta": {"n": [18446744073709551616]}}'),
        "T: event 0: header meta['n'][0] is an int outside the 64-bit range; "
        "meta may hold only JSON values",
    ),
    (
        "JSON null pid",
        jsonl('{"ksmreplay": 1}', '[0, "exit", null]'),
        "T: event 1 (t=0): exit pid must be an int, not nil",
    ),
    (
        "JSON event not an array, after a comment and a blank line",
        jsonl("# a comment", '{"ksmreplay": 1}', "", '"alloc"'),
        "T: event 1: event must be an array, not str",
    ),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_msgpack_trace(tmp_path: Path, data: bytes, expected: str) -> None:
    assert error_of(tmp_path, data) == expected


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in JSONL_CASES], ids=[c[0] for c in JSONL_CASES]
)
def test_bad_jsonl_trace(tmp_path: Path, data: bytes, expected: str) -> None:
    assert error_of(tmp_path, data, "t.jsonl") == expected


def test_there_are_many_distinct_bad_inputs() -> None:
    datas = [c[1] for c in CASES + JSONL_CASES]
    assert len(set(datas)) == len(datas) >= 35


def test_message_matches_the_format_documents_example(tmp_path: Path) -> None:
    # GIVEN event 1742 writing past the only mapping of pid 7
    events: list[Any] = [[0, "alloc", 7, 0x7F0000000000, 0x3000]]
    events += [[0, "read", 7, 0x7F0000000000, 1]] * 1740
    events.append([3000000, "write", 7, 0x7F0000002000, 0x2000, 5])
    path = tmp_path / "trace.msgpack"
    path.write_bytes(pack(H, *events))
    # THEN the message is the one TRACE_FORMAT.md shows (with the full path)
    with pytest.raises(TraceError) as info:
        read_trace(str(path))
    assert str(info.value) == (
        f"{path}: event 1742 (t=3000000): write to pid 7 at 0x7f0000003000 outside any mapping"
    )
    assert (info.value.index, info.value.t) == (1742, 3000000)


def test_error_after_many_valid_events_has_the_right_index(tmp_path: Path) -> None:
    # Large enough that the events arrive in many decoder batches.
    events: list[Any] = [MAP] + [[i, "write", 1, 0x10000, 0x2000, [i, i + 1]] for i in range(20000)]
    events.append([20000, "write", 1, 0x10000, 0x2000, [1, 2, 3]])
    assert error_of(tmp_path, pack(H, *events)) == (
        "T: event 20002 (t=20000): write content has 3 fingerprints for 2 pages"
    )


def test_semantic_error_before_garbage_is_reported_first(tmp_path: Path) -> None:
    data = pack(H, MAP, [0, "read", 2, 0, 1]) + b"\xc1"
    assert error_of(tmp_path, data) == "T: event 2 (t=0): read from pid 2, which does not exist"


def test_missing_file_is_an_io_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.msgpack"
    with pytest.raises(InputOutputError) as info:
        open_trace(str(path))
    assert str(info.value) == f"{path}: cannot open: No such file or directory"
    assert info.value.exit_status == ExitStatus.IO_ERROR


def test_directory_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(InputOutputError) as info, open_trace(str(tmp_path)) as reader:
        list(reader)
    assert str(info.value).startswith(f"{tmp_path}: cannot ")
    assert info.value.exit_status == ExitStatus.IO_ERROR


def test_json_header_is_checked_like_msgpack(tmp_path: Path) -> None:
    data = (json.dumps({"ksmreplay": 1, "page_size": 1000}) + "\n").encode()
    assert error_of(tmp_path, data, "t.jsonl") == (
        "T: event 0: header page_size 1000 is not a power of two between 4096 and 65536"
    )
