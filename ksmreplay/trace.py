"""Read, validate and write traces (TRACE_FORMAT.md, version 1).

:func:`open_trace` opens a trace file (or ``-`` for stdin), tells the msgpack
stream from the JSON-lines form by its content, reads and validates the header,
and then yields one typed record (:mod:`ksmreplay.events`) per event while it
streams through the file.  Every rule of the trace format is checked exactly
once, here; a broken rule raises :class:`~ksmreplay.errors.TraceError` naming
the file, the event index (0 = header) and ``t``::

    with open_trace("trace.msgpack") as reader:
        for event in reader:
            ...
        print(reader.events, reader.duration_ns)

The reader keeps, per live process, only the sorted list of its mapped address
ranges (:class:`RangeSet`), so memory does not grow with the size of mappings
or the length of the trace.

``reader.runs()`` yields the same events with each run of consecutive
fingerprint writes as one :class:`~ksmreplay.events.WriteRun` (columns), the
form the replay uses.  Where the native core (:mod:`ksmreplay.native`) is
available, msgpack traces are decoded by it a few MiB at a time: write events
straight into columns, anything else (and every error) by the pure-Python
path, so both give the same events and messages.

Limits: one set, the same in both forms and checked when a trace is
validated, so that a trace valid in one form is valid in the other and
``convert`` can always write it (README, "The trace format, in short"):

* every int of an event is below 2**64 (``t``, ``addr + len``, fingerprints,
  ``max_full_scans``, knob values); ``pid`` and ``child_pid`` are below
  :data:`PID_LIMIT` (2**63: they fit a signed 64-bit column);
* a snapshot label, the header's description and every str of ``meta`` (keys
  too) are valid Unicode of at most :data:`MAX_STR_BYTES` bytes of UTF-8;
* ``meta`` holds JSON values only (ints from -2**63 to 2**64-1, finite
  floats), nested at most :data:`MAX_META_DEPTH` deep, no map of more than
  :data:`MAX_MAP_ITEMS` entries nor array of more than :data:`MAX_ARRAY_ITEMS`
  items, and takes at most :data:`MAX_META_BYTES` bytes written as msgpack;
* a literal write stores at most :data:`MAX_BIN_BYTES` bytes; a fingerprint
  array has at most :data:`MAX_ARRAY_ITEMS` items.

Then every valid event fits :data:`MAX_EVENT_BYTES` bytes of msgpack and
:data:`MAX_LINE_BYTES` bytes of JSON, the sizes the decoders accept.

A write's fingerprint array may be a view of one uint64 array shared by the
writes decoded in the same batch; the views never overlap.

The JSON-lines form also accepts blank lines and lines whose first non-blank
character is ``#`` (comments); both are skipped and not counted as events.

:class:`TraceWriter` writes either form; whatever it writes, the reader accepts
and decodes to equal records.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import re
import stat
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate, chain, pairwise
from types import TracebackType
from typing import IO, Any, Literal, NoReturn

import msgpack
import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import dense_ranks
from ksmreplay.errors import InputOutputError, TraceError
from ksmreplay.events import (
    ADVICES,
    DEFAULT_MAX_FULL_SCANS,
    DEFAULT_PAGE_SIZE,
    Alloc,
    Content,
    Event,
    Exit,
    FingerprintArray,
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
from ksmreplay.knobs import KnobValue, check_settings
from ksmreplay.native import SCAN_FULL, SCAN_OTHER, Native, native

FORMAT_VERSION = 1
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 65536
ADDR_LIMIT = 2**64
"""``addr + len`` must stay below this."""
INT_LIMIT = 2**64
"""Every int of an event (``t``, fingerprints, ``max_full_scans``) is below this."""
PID_LIMIT = 2**63
"""pids and child pids are below this (they fit the signed 64-bit pid columns)."""

MAX_BIN_BYTES = 64 * 2**20
"""Largest literal write (a ``bin`` content), in bytes."""
MAX_ARRAY_ITEMS = 2**22
"""Largest array (the fingerprints of one write, an array in ``meta``), in items."""
MAX_MAP_ITEMS = 2**16
"""Largest map (``ksm`` settings, a map in ``meta``), in entries."""
MAX_STR_BYTES = 2**20
"""Longest str (snapshot label, description, a str of ``meta``), in bytes of UTF-8."""
MAX_META_BYTES = 2**20
"""Largest header ``meta``, in bytes written as msgpack."""
MAX_META_DEPTH = 32
"""Deepest nesting of maps and arrays in the header's ``meta`` (``meta`` itself is 1)."""
MAX_EVENT_BYTES = MAX_BIN_BYTES + 4096
"""Largest msgpack object (header or event) the reader decodes, in bytes."""
MAX_LINE_BYTES = 4 * MAX_EVENT_BYTES
"""Longest JSON line the reader decodes, in bytes."""

TraceForm = Literal["msgpack", "jsonl"]
FORMS: tuple[str, ...] = ("msgpack", "jsonl")

_READ_SIZE = 256 * 1024
_FEED_SIZE = 4096
_BLANK = b" \t\r\n"

# How each op names the process it acts on, for messages.
_PHRASE = {
    "alloc": "alloc in pid",
    "free": "free in pid",
    "write": "write to pid",
    "read": "read from pid",
    "madvise": "madvise in pid",
    "prctl": "prctl of pid",
    "fork": "fork of pid",
    "exit": "exit of pid",
}

# Items after t and op, per op (settle takes 0 or 1).
_ITEMS = {
    "alloc": ("pid", "addr", "len"),
    "free": ("pid", "addr", "len"),
    "write": ("pid", "addr", "len", "content"),
    "read": ("pid", "addr", "len"),
    "madvise": ("pid", "addr", "len", "advice"),
    "prctl": ("pid", "option", "value"),
    "fork": ("pid", "child_pid"),
    "exit": ("pid",),
    "ksm": ("settings",),
    "settle": ("max_full_scans",),
    "snapshot": ("label",),
}


def kind(value: object) -> str:
    """The trace-format name of a decoded value's type (for messages)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray)):
        return "bin"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "map"
    return "ext"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class RangeSet:
    """A set of byte addresses kept as sorted, disjoint, non-adjacent ``[start, end)`` ranges.

    Costs one pair of ints per range however many pages a range spans.
    """

    __slots__ = ("ends", "starts")

    def __init__(self, starts: list[int] | None = None, ends: list[int] | None = None) -> None:
        self.starts: list[int] = starts if starts is not None else []
        self.ends: list[int] = ends if ends is not None else []

    def copy(self) -> RangeSet:
        """An independent copy (``fork``)."""
        return RangeSet(self.starts.copy(), self.ends.copy())

    def total(self) -> int:
        """Number of addresses in the set (bytes)."""
        return sum(self.ends) - sum(self.starts)

    def first_missing(self, start: int, end: int) -> int | None:
        """The lowest address of ``[start, end)`` not in the set, or None if all are."""
        i = bisect_right(self.starts, start) - 1
        if i < 0 or self.ends[i] <= start:
            return start
        if self.ends[i] < end:
            return self.ends[i]
        return None

    def first_overlap(self, start: int, end: int) -> int | None:
        """The lowest address of ``[start, end)`` in the set, or None if none is."""
        starts = self.starts
        i = bisect_right(starts, start) - 1
        if i >= 0 and self.ends[i] > start:
            return start
        if i + 1 < len(starts) and starts[i + 1] < end:
            return starts[i + 1]
        return None

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, which must not overlap the set."""
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, start)
        join_prev = i > 0 and ends[i - 1] == start
        join_next = i < len(starts) and starts[i] == end
        if join_prev and join_next:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif join_prev:
            ends[i - 1] = end
        elif join_next:
            starts[i] = start
        else:
            starts.insert(i, start)
            ends.insert(i, end)

    def remove(self, start: int, end: int) -> int:
        """Remove ``[start, end)`` (parts not in the set are ignored); return the bytes removed."""
        starts, ends = self.starts, self.ends
        lo = bisect_right(ends, start)
        hi = bisect_left(starts, end)
        if lo >= hi:
            return 0
        removed = sum(ends[lo:hi]) - sum(starts[lo:hi])
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[lo] < start:
            new_starts.append(starts[lo])
            new_ends.append(start)
            removed -= start - starts[lo]
        if ends[hi - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[hi - 1])
            removed -= ends[hi - 1] - end
        starts[lo:hi] = new_starts
        ends[lo:hi] = new_ends
        return removed


# --------------------------------------------------------------------------- decoding


_LIMIT_RE = re.compile(r"^(\d+) exceeds max_(\w+)_len\((\d+)\)$")
_MAP_KEY_RE = re.compile(r"^(\w+) is not allowed for map key")
_UNITS = {"array": "items", "map": "entries", "str": "bytes", "bin": "bytes", "ext": "bytes"}
_TYPE_NAMES = {"int": "int", "float": "float", "bytes": "bin", "list": "array", "dict": "map"}


def _msgpack_problem(exc: Exception) -> str:
    """One line saying what is wrong with undecodable msgpack data."""
    if isinstance(exc, msgpack.exceptions.BufferFull):
        return f"event larger than this reader's limit of {MAX_EVENT_BYTES} bytes"
    if isinstance(exc, msgpack.exceptions.StackError):
        return "msgpack objects nested too deeply"
    if isinstance(exc, msgpack.exceptions.FormatError):
        return "invalid msgpack data"
    if isinstance(exc, UnicodeDecodeError):
        return "invalid UTF-8 in a str"
    text = str(exc)
    m = _LIMIT_RE.match(text)
    if m:
        what = m.group(2)
        return (
            f"{what} of {m.group(1)} {_UNITS.get(what, 'bytes')} exceeds "
            f"this reader's limit of {m.group(3)}"
        )
    m = _MAP_KEY_RE.match(text)
    if m:
        return f"map key of type {_TYPE_NAMES.get(m.group(1), m.group(1))}; map keys must be str"
    return f"invalid msgpack data ({text})" if text else "invalid msgpack data"


class _MsgpackSource:
    """The objects of a msgpack stream, in batches, with bounded sizes.

    The stream is fed to the decoder a chunk at a time; each batch is every
    object the chunk completed, so a batch never holds more than one chunk's
    worth of events plus the one object that straddled into it.
    """

    def __init__(
        self, stream: IO[bytes], prefix: bytes, name: str, first: int = 0, offset: int = 0
    ) -> None:
        self._read = getattr(stream, "read1", stream.read)
        self._prefix = prefix
        self._name = name
        self._first = first
        self._offset = offset
        self.bytes_read = offset
        self._unpacker = msgpack.Unpacker(
            max_buffer_size=MAX_EVENT_BYTES,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_BIN_BYTES,
            max_array_len=MAX_ARRAY_ITEMS,
            max_map_len=MAX_MAP_ITEMS,
            max_ext_len=MAX_STR_BYTES,
        )

    def batches(self) -> Iterator[list[object]]:
        unpacker = self._unpacker
        name = self._name
        count = self._first  # objects decoded so far; the next one has this event index
        fed = self._offset
        data = self._prefix
        while True:
            if not data:
                try:
                    data = self._read(_READ_SIZE)
                except OSError as exc:
                    raise InputOutputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
                if not data:
                    break
            # Small feeds keep batches small, so that their objects die young
            # (the cyclic garbage collector then has little to traverse).
            view = memoryview(data)
            data = b""
            for start in range(0, len(view), _FEED_SIZE):
                chunk = view[start : start + _FEED_SIZE]
                try:
                    unpacker.feed(chunk)
                except msgpack.exceptions.BufferFull as exc:
                    raise TraceError(name, count, None, _msgpack_problem(exc)) from exc
                fed += len(chunk)
                self.bytes_read = fed
                batch: list[object] = []
                try:
                    batch.extend(unpacker)
                except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
                    if batch:
                        yield batch  # events before the bad bytes are checked first
                    raise TraceError(name, count + len(batch), None, _msgpack_problem(exc)) from exc
                if batch:
                    count += len(batch)
                    yield batch
        if not _at_object_boundary(unpacker):
            where = "the header" if count == 0 else "this event"
            raise TraceError(name, count, None, f"truncated: the trace ends inside {where}")


def _at_object_boundary(unpacker: Any) -> bool:
    """Whether the decoder holds no part of an object (call at the end of the stream).

    ``Unpacker.tell()`` counts the bytes of a partly decoded object too, so it
    cannot tell.  Instead feed one ``nil``: a decoder between objects returns
    exactly that ``nil``; one inside an object swallows it as part of that
    object (returning nothing, or the object, or failing).
    """
    try:
        unpacker.feed(b"\xc0")
        tail = list(unpacker)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException):
        return False
    return len(tail) == 1 and tail[0] is None


_JSONL_BATCH = 100


_LIMITS = {
    "max_str_len": MAX_STR_BYTES,
    "max_bin_len": MAX_BIN_BYTES,
    "max_array_len": MAX_ARRAY_ITEMS,
    "max_map_len": MAX_MAP_ITEMS,
    "max_ext_len": MAX_STR_BYTES,
}
_SCAN_READ_SIZE = 4 * 2**20
"""Bytes the native reader reads at a time: big batches make long write runs."""
_SCAN_EVENTS = 1 << 17
"""Most write events one native scan decodes."""
_SCAN_FPS = 1 << 18
"""Fingerprints one native scan starts with room for (doubled when one write needs more)."""
_FILL_PAGES = _SCAN_FPS
"""Most pages the fill writes (one fingerprint for the whole range) of one batch
are expanded to, one fingerprint per page, to join a run of columns; a fill
write beyond that comes as a :class:`Write` with its one fingerprint, so that
the reader's memory does not follow the size of the ranges."""


_WRITES = (b"\x96", b"\xdc", b"\xdd", b"")
"""First bytes of an object the scanner may decode as a write: an array of 6
items (as a fixarray, array 16 or array 32), or the end of the buffer."""
_NOT_WRITES = frozenset(bytes([b]) for b in range(256)) - set(_WRITES)
"""First bytes of an object that cannot be a write: no need to call the scanner."""
_OTHER_BATCH = 256
"""Most objects other than writes in one batch of the native reader."""


class _ScannedMsgpackSource:
    """A msgpack stream decoded with the native core (``ksmreplay.native``).

    Runs of write events come out as unchecked :class:`WriteRun` s; every
    other object is cut out with ``ksr_skip`` and decoded by the msgpack
    library on its own (consecutive ones in one batch, up to the next object
    that may be a write).  Where the scanner finds only short runs (writes
    between other events), the msgpack library decodes the next
    :data:`_OTHER_BATCH` objects, writes too, as one batch: that costs less
    than a call of the scanner per write.  At the first thing out of the
    ordinary (bytes that are not msgpack, an object over the size limits, the
    stream ending inside an object) the rest of the stream goes to
    :class:`_MsgpackSource`, which words the error exactly as without the native
    core.  ``shift`` (log2 of the page size) must be set once the
    header has been read; until then nothing is scanned as a write.
    """

    def __init__(self, stream: IO[bytes], prefix: bytes, name: str, scanner: Native) -> None:
        self._stream = stream
        self._read = stream.read  # whole chunks, from pipes too
        self._prefix = prefix
        self._name = name
        self._scanner = scanner
        self._legacy: _MsgpackSource | None = None
        self._bytes = 0
        self.shift: int | None = None

    @property
    def bytes_read(self) -> int:
        return self._legacy.bytes_read if self._legacy is not None else self._bytes

    def batches(self) -> Iterator[list[object] | WriteRun]:
        scanner = self._scanner
        buf = self._prefix
        pos = 0
        base = 0  # stream offset of buf[0]
        count = 0  # objects decoded so far
        eof = False
        room = _SCAN_FPS
        mixed = False  # the last scan found a short run: decode the next batch as objects
        while True:
            status = SCAN_OTHER
            if (
                count
                and self.shift is not None
                and not mixed
                and buf[pos : pos + 1] not in _NOT_WRITES
            ):
                columns, pos, status = scanner.scan(
                    buf,
                    pos,
                    self.shift,
                    MAX_ARRAY_ITEMS,
                    _FILL_PAGES,
                    MAX_EVENT_BYTES,
                    _SCAN_EVENTS,
                    room,
                )
                self._bytes = base + pos
                found = 0 if columns is None else len(columns[0])
                mixed = status == SCAN_OTHER and found <= _SHORT_RUN
                if columns is not None:
                    count += found
                    yield WriteRun(0, *columns)
                elif status == SCAN_FULL:
                    room *= 2  # one write holds more fingerprints than there is room for
                if status == SCAN_FULL:
                    continue
            if status == SCAN_OTHER:
                objs: list[object] = []
                failed = False
                while True:
                    end = scanner.skip(buf, pos)
                    if end < 0 or end - pos > MAX_EVENT_BYTES:
                        break
                    try:
                        objs.append(msgpack.unpackb(buf[pos:end], **_LIMITS))
                    except (ValueError, TypeError, msgpack.exceptions.UnpackException):
                        failed = True
                        break
                    pos = end
                    if not count or len(objs) == _OTHER_BATCH:
                        break  # the header alone; a full batch
                    if not mixed and buf[pos : pos + 1] in _WRITES:
                        break  # a write for the scanner
                mixed = False
                if objs:
                    self._bytes = base + pos
                    count += len(objs)
                    yield objs  # events before the bad bytes are checked first
                if failed:
                    break
                if objs:
                    continue
                if end != -1 or len(buf) - pos > MAX_EVENT_BYTES:
                    break
            if eof:
                break
            try:
                data = self._read(max(_SCAN_READ_SIZE, len(buf) - pos))
            except OSError as exc:
                raise InputOutputError(f"{self._name}: cannot read: {exc.strerror or exc}") from exc
            if not data:
                eof = True
                continue
            base += pos
            buf = buf[pos:] + data
            pos = 0
        if pos < len(buf) or not eof:
            # Something out of the ordinary: the pure-Python reader takes over.
            self._legacy = _MsgpackSource(self._stream, buf[pos:], self._name, count, base + pos)
            yield from self._legacy.batches()


class _JsonlSource:
    """The objects of a JSON-lines stream, in batches of lines."""

    def __init__(self, stream: IO[bytes], prefix: bytes, name: str) -> None:
        self._lines = io.BufferedReader(_Prefixed(prefix, stream), buffer_size=_READ_SIZE)
        self._name = name
        self.bytes_read = 0

    def _problem(self, exc: Exception) -> str:
        if isinstance(exc, json.JSONDecodeError):
            return f"invalid JSON ({exc.msg} at column {exc.colno})"
        if isinstance(exc, UnicodeDecodeError):
            return "invalid UTF-8 in a line"
        if isinstance(exc, RecursionError):
            return "JSON nested too deeply"
        return f"invalid JSON ({exc})"

    def batches(self) -> Iterator[list[object]]:
        name = self._name
        readline = self._lines.readline
        loads = json.loads
        count = 0
        batch: list[object] = []
        size = 0
        while True:
            try:
                line = readline(MAX_LINE_BYTES + 1)
            except OSError as exc:
                raise InputOutputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
            if not line:
                break
            self.bytes_read += len(line)
            problem = None
            if len(line) > MAX_LINE_BYTES:
                problem = f"line longer than this reader's limit of {MAX_LINE_BYTES} bytes"
            else:
                stripped = line.strip(_BLANK)
                if not stripped or stripped[:1] == b"#":
                    continue
                try:
                    batch.append(loads(stripped))
                except (ValueError, RecursionError) as exc:
                    problem = self._problem(exc)
            if problem is not None:
                if batch:
                    yield batch  # events before the bad line are checked first
                raise TraceError(name, count + len(batch), None, problem)
            size += len(line)
            if len(batch) >= _JSONL_BATCH or size >= _FEED_SIZE:
                count += len(batch)
                yield batch
                batch = []
                size = 0
        if batch:
            yield batch


_BOM = b"\xef\xbb\xbf"
_TEXT_FIRST = frozenset(range(0x21, 0x7F))
"""First non-blank bytes of a JSON-lines file: printable ASCII (``{``, ``[``, a digit,
``#``...).  In msgpack each is a positive fixint, never a valid header (a map
starts with 0x80..0x8f, 0xde or 0xdf), so reading such a file as JSON lines
loses no msgpack trace and gives a text file a message about its text."""


def _detect(stream: IO[bytes], name: str) -> tuple[TraceForm, bytes]:
    """Read up to the first non-blank byte; return the form and the bytes read.

    A first non-blank byte of printable ASCII (:data:`_TEXT_FIRST`) means JSON
    lines, any other byte msgpack.

    :raises TraceError: the data starts with a UTF-8 byte order mark (a
        JSON-lines file saved with one: as msgpack, it would be an int).
    """
    read = getattr(stream, "read1", stream.read)
    prefix = b""
    while True:
        chunk = read(_READ_SIZE)
        body = (prefix + chunk).lstrip(_BLANK)
        if body[:3] == _BOM:
            raise TraceError(
                name,
                0,
                None,
                "the trace starts with a UTF-8 byte order mark; "
                "JSON lines must be UTF-8 without one (save the file without the BOM)",
            )
        if not chunk:
            return "msgpack", prefix
        prefix += chunk
        if body and not _BOM.startswith(body[:3]):
            return ("jsonl" if body[0] in _TEXT_FIRST else "msgpack"), prefix


class _Prefixed(io.RawIOBase):
    """A raw stream that yields ``prefix`` and then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._read = getattr(stream, "read1", stream.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)


# --------------------------------------------------------------------------- validation


def _short(text: str) -> str:
    """``repr(text)``, cut short for messages."""
    return repr(text) if len(text) <= 40 else repr(text[:32]) + "..."


def _str_problem(value: str, where: str) -> str | None:
    """Why the str ``value`` breaks the limits of a str (valid Unicode, size), or None."""
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{where} is a str that is not valid Unicode"
    if size > MAX_STR_BYTES:
        return f"{where} is a str of {size} bytes, over the limit of {MAX_STR_BYTES}"
    return None


_NOT_JSON = "; meta may hold only JSON values"


def _json_value_problem(value: object, where: str, depth: int = 1) -> str | None:
    """Why ``value`` cannot be carried into a JSON report and written in both
    forms (a value of ``meta``, at nesting ``depth``), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            return f"{where} is an int outside the 64-bit range{_NOT_JSON}"
        return None
    if isinstance(value, str):
        return _str_problem(value, where)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is a non-finite float{_NOT_JSON}"
    if not isinstance(value, (list, dict)):
        return f"{where} is {kind(value)}{_NOT_JSON}"
    if depth > MAX_META_DEPTH:
        return f"{where} is nested deeper than the limit of {MAX_META_DEPTH}"
    if isinstance(value, list):
        if len(value) > MAX_ARRAY_ITEMS:
            return f"{where} is an array of {len(value)} items, over the limit of {MAX_ARRAY_ITEMS}"
        for i, item in enumerate(value):
            problem = _json_value_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if len(value) > MAX_MAP_ITEMS:
        return f"{where} is a map of {len(value)} entries, over the limit of {MAX_MAP_ITEMS}"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"{where} has a {kind(key)} key{_NOT_JSON}"
        problem = _str_problem(key, f"{where} key {_short(key)}") or _json_value_problem(
            item, f"{where}[{_short(key)}]", depth + 1
        )
        if problem:
            return problem
    return None


def _check_header(obj: object, name: str) -> Header:
    def fail(message: str) -> NoReturn:
        raise TraceError(name, 0, None, message)

    if not isinstance(obj, dict):
        fail(f"header must be a map, not {kind(obj)}")
    if "ksmreplay" not in obj:
        fail("header has no 'ksmreplay' key (not a ksmreplay trace)")
    version = obj["ksmreplay"]
    if type(version) is not int:
        fail(f"header ksmreplay must be an int, not {kind(version)}")
    if version != FORMAT_VERSION:
        fail(f"unsupported trace format version {_int_text(version)} (this reader knows version 1)")
    page_size = obj.get("page_size", DEFAULT_PAGE_SIZE)
    if type(page_size) is not int:
        fail(f"header page_size must be an int, not {kind(page_size)}")
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE) or page_size & (page_size - 1):
        fail(
            f"header page_size {_int_text(page_size)} is not a power of two between 4096 and 65536"
        )
    description = obj.get("description")
    if description is not None and not isinstance(description, str):
        fail(f"header description must be a str, not {kind(description)}")
    if description is not None:
        problem = _str_problem(description, "header description")
        if problem:
            fail(problem)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        fail(f"header meta must be a map, not {kind(meta)}")
    problem = _json_value_problem(meta, "header meta")
    if problem:
        fail(problem)
    if meta:
        size = len(msgpack.packb(meta))
        if size > MAX_META_BYTES:
            fail(f"header meta takes {size} bytes as msgpack, over the limit of {MAX_META_BYTES}")
    return Header(version=version, page_size=page_size, description=description, meta=meta)


def _int_text(value: int) -> str:
    """``value`` in decimal, cut short for messages when it is very long."""
    if -(10**30) < value < 10**30:
        return str(value)
    digits = len(str(abs(value)))
    return f"{str(value)[:12]}...({digits} digits)"


_INT_ONLY = {int}


_MAX_B64_CHARS = -(-MAX_BIN_BYTES // 3) * 4
"""Length of the base64 text of a bin of :data:`MAX_BIN_BYTES` bytes."""


def _bin_over_limit(size: int) -> str:
    return f"write content is a bin of {size} bytes, over the limit of {MAX_BIN_BYTES}"


def _fingerprint_views(contents: list[list[Any]]) -> list[FingerprintArray | None]:
    """One uint64 array per fingerprint list, as views of one array built in one go.

    All None when any item is not an int in 0..2**64-1 (the general path then
    finds and names the bad one).
    """
    if not contents:
        return []
    flat = list(chain.from_iterable(contents))
    if set(map(type, flat)) == _INT_ONLY:
        try:
            whole = np.array(flat, dtype=np.uint64)
        except OverflowError:
            pass
        else:
            offsets = list(accumulate(map(len, contents), initial=0))
            return [whole[lo:hi] for lo, hi in pairwise(offsets)]
    return [None] * len(contents)


_SHORT_RUN = 8
"""Runs of at most this many writes are checked one event at a time."""


def _ranks(values: npt.NDArray[np.int64]) -> tuple[list[int], npt.NDArray[np.int64]]:
    """:func:`~ksmreplay.arrays.dense_ranks` of positive ``values``, in time
    that follows their number, not their size (a table only when it is short)."""
    if len(values) and int(values.max()) < 4 * len(values) + 64:
        return dense_ranks(values)
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct.tolist(), inverse.astype(np.int64).reshape(-1)


def _column_object(cols: WriteRun, i: int) -> list[object]:
    """Event ``i`` of ``cols`` as the msgpack library would have decoded it."""
    lo = int(cols.fp_end[i - 1]) if i else 0
    hi = int(cols.fp_end[i])
    content: object = int(cols.fps[lo]) if cols.fill[i] else cols.fps[lo:hi].tolist()
    return [
        int(cols.t[i]),
        "write",
        int(cols.pid[i]),
        int(cols.addr[i]),
        int(cols.len[i]),
        content,
    ]


class Footprint:
    """An upper bound on the pages a trace keeps resident, kept while it is validated.

    Per process, the pages its writes and reads touched, never more than it
    has mapped (a ``fork`` child starts with its parent's; ``free`` lowers
    the bound to what stays mapped; ``exit`` drops it).  Counted per event
    from lengths, never page by page, so the cost follows the events, not
    their sizes.  :func:`ksmreplay.arrays.estimate_replay` turns the peak into
    bytes before a replay starts.

    :ivar peak_pages: the most pages resident at once, at most (pages).
    :ivar peak_processes: the most processes alive at once.
    """

    __slots__ = ("_mapped", "_total", "_touched", "peak_pages", "peak_processes")

    def __init__(self) -> None:
        self._mapped: dict[int, int] = {}
        self._touched: dict[int, int] = {}
        self._total = 0
        self.peak_pages = 0
        self.peak_processes = 0

    def _set(self, pid: int, pages: int) -> None:
        self._total += pages - self._touched.get(pid, 0)
        self._touched[pid] = pages
        self.peak_pages = max(self.peak_pages, self._total)

    def mapped(self, pid: int, pages: int) -> None:
        """``pid`` has ``pages`` pages more (or, negative, fewer) mapped."""
        mapped = self._mapped[pid] = self._mapped.get(pid, 0) + pages
        self.peak_processes = max(self.peak_processes, len(self._mapped))
        if self._touched.get(pid, 0) > mapped:
            self._set(pid, mapped)

    def touched(self, pid: int, pages: int) -> None:
        """``pid`` wrote or read ``pages`` pages."""
        self._set(pid, min(self._touched.get(pid, 0) + pages, self._mapped.get(pid, 0)))

    def touched_columns(self, pid: npt.NDArray[np.int64], pages: npt.NDArray[np.float64]) -> None:
        """:meth:`touched` for a run of writes, one pid and page count per write."""
        if not len(pid):
            return
        if pid[0] == pid.min() == pid.max():
            self.touched(int(pid[0]), int(pages.sum()))
            return
        pids, ranks = dense_ranks(pid)
        for one, n in zip(pids, np.bincount(ranks, weights=pages).tolist(), strict=True):
            self.touched(one, int(n))

    def fork(self, parent: int, child: int) -> None:
        self._mapped[child] = self._mapped.get(parent, 0)
        self.peak_processes = max(self.peak_processes, len(self._mapped))
        self._set(child, self._touched.get(parent, 0))

    def exit(self, pid: int) -> None:
        self._set(pid, 0)
        del self._touched[pid]
        self._mapped.pop(pid, None)


class _Validator:
    """Checks events one at a time and turns them into typed records."""

    def __init__(self, name: str, page_size: int, jsonl: bool) -> None:
        self.name = name
        self.page_size = page_size
        self.mask = page_size - 1
        self.shift = page_size.bit_length() - 1
        self.jsonl = jsonl
        self.last_t = 0
        self.procs: dict[int, RangeSet] = {}
        self.exited: set[int] = set()
        self.created = 0
        self.footprint = Footprint()
        self.handlers: dict[str, Callable[[int, int, list[Any]], Event]] = {
            "alloc": self._alloc,
            "free": self._free,
            "write": self._write,
            "read": self._read,
            "madvise": self._madvise,
            "prctl": self._prctl,
            "fork": self._fork,
            "exit": self._exit,
            "ksm": self._ksm,
            "settle": self._settle,
            "snapshot": self._snapshot,
        }

    # -- helpers ---------------------------------------------------------------

    def fail(self, index: int, t: int | None, message: str) -> NoReturn:
        raise TraceError(self.name, index, t, message)

    def batch(self, first: int, objs: list[object]) -> list[Event | WriteRun]:
        """Check the events ``objs`` (event indexes from ``first``) and return their records.

        Writes of the common shape (what the native core decodes: integer
        fields, a fingerprint or a list of them), the bulk of large traces,
        gather into runs of columns, checked by :meth:`check_run` as the
        native core's are; the fingerprint lists of the whole batch become one
        uint64 array in one go.  Anything else takes the general path, which
        also says what is wrong.
        """
        plain = [self._plain_write(o) for o in objs]
        lists = [p[5] for p in plain if p is not None and type(p[5]) is list]
        views = iter(_fingerprint_views(lists))
        out: list[Event | WriteRun] = []
        run: list[list[Any]] = []
        run_contents: list[int | FingerprintArray] = []
        start = first
        budget = _FILL_PAGES  # pages that fill writes of this batch may expand to
        for i, (obj, write) in enumerate(zip(objs, plain, strict=True)):
            if write is not None:
                content = write[5]
                if type(content) is not int:
                    content = next(views)
                elif write[4] >> self.shift <= budget:
                    budget -= write[4] >> self.shift
                else:
                    content = None
                if content is not None:
                    if not run:
                        start = first + i
                    run.append(write)
                    run_contents.append(content)
                    continue
            if run:
                out.extend(self._run(start, run, run_contents))
                run, run_contents = [], []
            out.append(self.general(first + i, obj))
        if run:
            out.extend(self._run(start, run, run_contents))
        return out

    def _run(
        self, index: int, writes: list[list[Any]], contents: list[int | FingerprintArray]
    ) -> list[Event | WriteRun]:
        """The checked records of consecutive writes of the common shape.

        A short run takes the general path, one record per write: columns
        for a few events would cost more than the events.
        """
        if len(writes) <= _SHORT_RUN:
            return [self.general(index + i, obj) for i, obj in enumerate(writes)]
        return self.check_run(index, self._unchecked(index, writes, contents))

    def _unchecked(
        self, index: int, writes: list[list[Any]], contents: list[int | FingerprintArray]
    ) -> WriteRun:
        """The write events ``writes`` (shapes checked, values not) as one run."""
        fields = [(w[0], w[2], w[3], w[4]) for w in writes]
        return WriteRun.build(index, fields, contents, self.shift)

    def _plain_write(self, obj: object) -> list[Any] | None:
        """``obj`` if it has the shape of a common write event (its values unchecked).

        A fingerprint for the whole range also needs an aligned range of at
        most :data:`_FILL_PAGES` pages (it is expanded to every page); a list
        of fingerprints at most :data:`MAX_ARRAY_ITEMS` items.
        """
        if type(obj) is not list or len(obj) != 6 or obj[1] != "write":
            return None
        t, _, pid, addr, length, content = obj
        if not (
            type(t) is int
            and type(pid) is int
            and type(addr) is int
            and type(length) is int
            and 0 <= t < INT_LIMIT
            and 0 < pid < PID_LIMIT
            and 0 <= addr < ADDR_LIMIT
            and 0 <= length < ADDR_LIMIT
        ):
            return None
        if type(content) is list:
            return obj if 0 < len(content) <= MAX_ARRAY_ITEMS else None
        fill = (
            type(content) is int
            and 0 <= content < INT_LIMIT
            and length > 0
            and not (addr | length) & self.mask
            and length >> self.shift <= _FILL_PAGES
        )
        return obj if fill else None

    def check_run(self, first: int, cols: WriteRun) -> list[Event | WriteRun]:
        """Check a run of write events of the common shape (event indexes from ``first``).

        Every rule of a write, on whole columns (one event at a time for a
        short run, where numpy's cost per call would outweigh the work); the
        valid events come out as :class:`WriteRun` s, and the first invalid
        one goes through the general path as a Python object, which says
        exactly what is wrong.
        """
        out: list[Event | WriteRun] = []
        n = len(cols.t)
        lo = 0
        if n <= _SHORT_RUN and self._valid_prefix_short(cols, 0) == n:
            # All valid (the rule for short runs): the columns as they are.
            self.last_t = int(cols.t[-1])
            self._touched(cols.pid, cols.len)
            fields = (cols.t, cols.pid, cols.addr, cols.len, cols.fill, cols.fp_end, cols.fps)
            return [WriteRun(first, *fields)]
        while lo < n:
            if n - lo <= _SHORT_RUN:
                bad = lo + self._valid_prefix_short(cols, lo)
            else:
                bad = lo + self._valid_prefix(cols, lo)
            if bad > lo:
                base = int(cols.fp_end[lo - 1]) if lo else 0
                out.append(
                    WriteRun(
                        first + lo,
                        cols.t[lo:bad],
                        cols.pid[lo:bad],
                        cols.addr[lo:bad],
                        cols.len[lo:bad],
                        cols.fill[lo:bad],
                        cols.fp_end[lo:bad] - base,
                        cols.fps[base : cols.fp_end[bad - 1]],
                    )
                )
                self.last_t = int(cols.t[bad - 1])
                self._touched(cols.pid[lo:bad], cols.len[lo:bad])
            if bad < n:
                out.append(self.general(first + bad, _column_object(cols, bad)))
                bad += 1
            lo = bad
        return out

    def _touched(self, pid: npt.NDArray[np.int64], length: npt.NDArray[np.uint64]) -> None:
        """The valid writes of a run in the footprint (whole pages: they are aligned)."""
        self.footprint.touched_columns(pid, (length >> np.uint64(self.shift)).astype(np.float64))

    def _valid_prefix_short(self, cols: WriteRun, lo: int) -> int:
        """:meth:`_valid_prefix`, one event at a time."""
        mask, shift, procs = self.mask, self.shift, self.procs
        last = self.last_t
        before = int(cols.fp_end[lo - 1]) if lo else 0
        rows = zip(
            cols.t[lo:].tolist(),
            cols.pid[lo:].tolist(),
            cols.addr[lo:].tolist(),
            cols.len[lo:].tolist(),
            cols.fp_end[lo:].tolist(),
            strict=True,
        )
        for i, (t, pid, addr, length, fp_end) in enumerate(rows):
            ranges = procs.get(pid)
            if (
                t < last
                or length <= 0
                or (addr | length) & mask
                or addr + length >= ADDR_LIMIT
                or length >> shift != fp_end - before
                or ranges is None
                or ranges.first_missing(addr, addr + length) is not None
            ):
                return i
            last, before = t, fp_end
        return len(cols.t) - lo

    def _valid_prefix(self, cols: WriteRun, lo: int) -> int:
        """How many events of ``cols`` from ``lo`` on pass every check of a write."""
        t, pid, addr, length = cols.t[lo:], cols.pid[lo:], cols.addr[lo:], cols.len[lo:]
        prev = np.empty_like(t)
        prev[0] = self.last_t
        prev[1:] = t[:-1]
        pages = np.diff(cols.fp_end[lo:], prepend=cols.fp_end[lo - 1] if lo else 0)
        ok = (
            (t >= prev)
            & (length > 0)
            & (((addr | length) & np.uint64(self.mask)) == 0)
            & (addr <= ~length)  # addr + len < 2**64
            & ((length >> np.uint64(self.shift)).astype(np.int64) == pages)
        )
        ok &= self._mapped(pid, addr, addr + length)  # the sum wraps only where ok is False
        return len(ok) if ok.all() else int(np.argmin(ok))

    def _mapped(
        self, pid: npt.NDArray[np.int64], addr: npt.NDArray[np.uint64], end: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Whether each range ``[addr, end)`` lies inside one mapping of its live ``pid``.

        Costs follow the events and the processes they name, never the pid
        values: ranks come from a table only when it is no longer than the run.
        """
        pids, rank = _ranks(pid)
        ranges = [self.procs.get(p) for p in pids]
        # A process with one mapping (the common case) needs no search: its
        # bounds per rank; none for a process with none (nothing fits in [0, 0)).
        lows = np.zeros(len(pids), np.uint64)
        highs = np.zeros(len(pids), np.uint64)
        several = []
        for i, r in enumerate(ranges):
            if r is None or not r.starts:
                continue
            if len(r.starts) == 1:
                lows[i] = r.starts[0]
                highs[i] = r.ends[0]
            else:
                several.append(i)
        ok = (lows[rank] <= addr) & (highs[rank] >= end)
        if not several:
            return ok
        # Processes with several mappings: their events grouped by process.
        in_several = np.zeros(len(pids), np.bool_)
        in_several[several] = True
        events = np.flatnonzero(in_several[rank])
        events = events[np.argsort(rank[events], kind="stable")]
        cuts = np.flatnonzero(np.diff(rank[events])) + 1
        for group in np.split(events, cuts):
            r = ranges[int(rank[group[0]])]
            assert r is not None
            if 4 * len(group) < len(r.starts):
                # Few events for many mappings: search the list, not a copy of it.
                missing = r.first_missing
                ok[group] = [
                    missing(a, e) is None
                    for a, e in zip(addr[group].tolist(), end[group].tolist(), strict=True)
                ]
            else:
                slot = np.searchsorted(np.array(r.starts, np.uint64), addr[group], "right") - 1
                found = np.array(r.ends, np.uint64)[np.maximum(slot, 0)] >= end[group]
                ok[group] = (slot >= 0) & found
        return ok

    def general(self, index: int, obj: object) -> Event:
        if type(obj) is not list:
            self.fail(index, None, f"event must be an array, not {kind(obj)}")
        if len(obj) < 2:
            self.fail(
                index, None, f"event must be an array [t, op, ...], not {_plural(len(obj), 'item')}"
            )
        t = obj[0]
        if type(t) is not int:
            self.fail(index, None, f"t must be an int, not {kind(t)}")
        if t < 0:
            self.fail(index, None, f"t must be >= 0, not {_int_text(t)}")
        if t >= INT_LIMIT:
            self.fail(index, None, f"t must be below 2**64, not {_int_text(t)}")
        if t < self.last_t:
            self.fail(index, t, f"t goes back in time (previous event at t={self.last_t})")
        op = obj[1]
        if type(op) is not str:
            self.fail(index, t, f"op must be a str, not {kind(op)}")
        handler = self.handlers.get(op)
        if handler is None:
            self.fail(index, t, f"unknown op {op!r}")
        event = handler(index, t, obj)
        self.last_t = t
        return event

    def arity(self, index: int, t: int, op: str, obj: list[Any]) -> NoReturn:
        names = _ITEMS[op]
        expected = "at most 1 item" if op == "settle" else _plural(len(names), "item")
        self.fail(
            index,
            t,
            f"{op} takes {expected} after t and op ({', '.join(names)}), got {len(obj) - 2}",
        )

    def int_field(self, index: int, t: int, op: str, field: str, value: object) -> int:
        if type(value) is not int:
            self.fail(index, t, f"{op} {field} must be an int, not {kind(value)}")
        return value

    def pid_field(self, index: int, t: int, op: str, field: str, value: object) -> int:
        pid = self.int_field(index, t, op, field, value)
        if pid <= 0:
            self.fail(index, t, f"{op} {field} must be positive, not {_int_text(pid)}")
        if pid >= PID_LIMIT:
            self.fail(index, t, f"{op} {field} must be below 2**63, not {_int_text(pid)}")
        return pid

    def range_fields(self, index: int, t: int, op: str, obj: list[Any]) -> tuple[int, int, int]:
        """pid, addr, len of a range event (checked for type and bounds)."""
        pid, addr, length = obj[2], obj[3], obj[4]
        if (
            type(pid) is int
            and type(addr) is int
            and type(length) is int
            and 0 < pid < PID_LIMIT
            and addr >= 0
            and length > 0
            and addr + length < ADDR_LIMIT
        ):
            return pid, addr, length
        self.pid_field(index, t, op, "pid", pid)
        self.int_field(index, t, op, "addr", addr)
        self.int_field(index, t, op, "len", length)
        if addr < 0:
            self.fail(index, t, f"{op} addr must be >= 0, not {_int_text(addr)}")
        if length <= 0:
            self.fail(index, t, f"{op} len must be > 0, not {_int_text(length)}")
        end = addr + length
        shown = f"{end:#x}" if end < 2**128 else f"an address of {end.bit_length()} bits"
        self.fail(index, t, f"{op} range ends at {shown}; addr + len must be below 2**64")

    def aligned(self, index: int, t: int, op: str, addr: int, length: int, why: str = "") -> None:
        if (addr | length) & self.mask:
            if addr & self.mask:
                self.fail(
                    index,
                    t,
                    f"{op} addr {addr:#x} is not page-aligned (page_size {self.page_size}{why})",
                )
            self.fail(
                index,
                t,
                f"{op} len {length} is not a multiple of page_size {self.page_size}{why}",
            )

    def process(self, index: int, t: int, op: str, pid: int) -> RangeSet:
        ranges = self.procs.get(pid)
        if ranges is None:
            state = "has exited" if pid in self.exited else "does not exist"
            self.fail(index, t, f"{_PHRASE[op]} {pid}, which {state}")
        return ranges

    def mapped(self, index: int, t: int, op: str, pid: int, addr: int, length: int) -> None:
        ranges = self.process(index, t, op, pid)
        missing = ranges.first_missing(addr, addr + length)
        if missing is not None:
            self.fail(index, t, f"{_PHRASE[op]} {pid} at {missing:#x} outside any mapping")

    def create(self, pid: int) -> RangeSet:
        ranges = self.procs.get(pid)
        if ranges is None:
            ranges = self.procs[pid] = RangeSet()
            self.exited.discard(pid)
            self.created += 1
            self.footprint.mapped(pid, 0)
        return ranges

    # -- ops ---------------------------------------------------------------------

    def _alloc(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "alloc", obj)
        pid, addr, length = self.range_fields(index, t, "alloc", obj)
        self.aligned(index, t, "alloc", addr, length)
        ranges = self.procs.get(pid)
        if ranges is not None:
            overlap = ranges.first_overlap(addr, addr + length)
            if overlap is not None:
                self.fail(
                    index, t, f"alloc in pid {pid} at {overlap:#x} overlaps an existing mapping"
                )
        self.create(pid).add(addr, addr + length)
        self.footprint.mapped(pid, length >> self.shift)
        return Alloc(index, t, pid, addr, length)

    def _free(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "free", obj)
        pid, addr, length = self.range_fields(index, t, "free", obj)
        self.aligned(index, t, "free", addr, length)
        removed = self.process(index, t, "free", pid).remove(addr, addr + length)
        self.footprint.mapped(pid, -(removed >> self.shift))
        return Free(index, t, pid, addr, length)

    def _write(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 6:
            self.arity(index, t, "write", obj)
        pid, addr, length = self.range_fields(index, t, "write", obj)
        content: Any = obj[5]
        ctype = type(content)
        if ctype is int:
            self.aligned(index, t, "write", addr, length, "; needed for fingerprint content")
            if content < 0 or content >= INT_LIMIT:
                self.fail(
                    index,
                    t,
                    f"write content {_int_text(content)} is not a fingerprint (0..2**64-1)",
                )
        elif ctype is list:
            self.aligned(index, t, "write", addr, length, "; needed for fingerprint content")
            content = self.fingerprints(index, t, content, length >> self.shift)
        elif ctype is bytes:
            if len(content) > MAX_BIN_BYTES:
                self.fail(index, t, _bin_over_limit(len(content)))
            if len(content) != length:
                self.fail(index, t, f"write content has {len(content)} bytes for len {length}")
        elif ctype is dict and self.jsonl:
            content = self.b64(index, t, content, length)
        else:
            self.fail(
                index,
                t,
                f"write content must be an int, an array of ints or a bin, not {kind(content)}",
            )
        self.mapped(index, t, "write", pid, addr, length)
        self.footprint.touched(pid, ((addr & self.mask) + length + self.mask) >> self.shift)
        return Write(index, t, pid, addr, length, content)

    def fingerprints(self, index: int, t: int, items: list[Any], pages: int) -> Content:
        if len(items) > MAX_ARRAY_ITEMS:
            self.fail(
                index,
                t,
                f"write content is an array of {len(items)} fingerprints, "
                f"over the limit of {MAX_ARRAY_ITEMS}",
            )
        if len(items) != pages:
            self.fail(
                index,
                t,
                f"write content has {_plural(len(items), 'fingerprint')} for "
                f"{_plural(pages, 'page')}",
            )
        if set(map(type, items)) == _INT_ONLY and min(items) >= 0 and max(items) < INT_LIMIT:
            return np.array(items, dtype=np.uint64)
        for i, item in enumerate(items):
            if type(item) is not int:
                self.fail(index, t, f"write content[{i}] must be an int, not {kind(item)}")
            if item < 0 or item >= INT_LIMIT:
                self.fail(
                    index,
                    t,
                    f"write content[{i}] {_int_text(item)} is not a fingerprint (0..2**64-1)",
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def b64(self, index: int, t: int, content: dict[str, Any], length: int) -> bytes:
        if list(content) != ["b64"]:
            self.fail(index, t, "write content must be an int, an array of ints or a bin, not map")
        text = content["b64"]
        if not isinstance(text, str):
            self.fail(index, t, f"write content b64 must be a str, not {kind(text)}")
        if len(text) > _MAX_B64_CHARS:
            self.fail(
                index,
                t,
                f"write content b64 has {len(text)} characters, more than a bin of "
                f"the limit of {MAX_BIN_BYTES} bytes takes",
            )
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            self.fail(index, t, "write content b64 is not valid base64")
        if len(data) > MAX_BIN_BYTES:
            self.fail(index, t, _bin_over_limit(len(data)))
        if len(data) != length:
            self.fail(index, t, f"write content has {len(data)} bytes for len {length}")
        return data

    def _read(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "read", obj)
        pid, addr, length = self.range_fields(index, t, "read", obj)
        self.mapped(index, t, "read", pid, addr, length)
        self.footprint.touched(pid, ((addr & self.mask) + length + self.mask) >> self.shift)
        return Read(index, t, pid, addr, length)

    def _madvise(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 6:
            self.arity(index, t, "madvise", obj)
        pid, addr, length = self.range_fields(index, t, "madvise", obj)
        advice = obj[5]
        if not isinstance(advice, str) or advice not in ADVICES:
            choices = ", ".join(repr(a) for a in ADVICES)
            self.fail(index, t, f"madvise advice must be one of {choices}, not {advice!r}")
        self.aligned(index, t, "madvise", addr, length)
        self.mapped(index, t, "madvise", pid, addr, length)
        return Madvise(index, t, pid, addr, length, advice)  # type: ignore[arg-type]

    def _prctl(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "prctl", obj)
        pid = self.pid_field(index, t, "prctl", "pid", obj[2])
        option, value = obj[3], obj[4]
        if option != "merge_any" or type(option) is not str:
            self.fail(index, t, f"prctl option must be 'merge_any', not {option!r}")
        if type(value) is not bool:
            self.fail(index, t, f"prctl merge_any value must be a bool, not {kind(value)}")
        self.create(pid)
        return Prctl(index, t, pid, option, value)

    def _fork(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 4:
            self.arity(index, t, "fork", obj)
        pid = self.pid_field(index, t, "fork", "pid", obj[2])
        child = self.pid_field(index, t, "fork", "child_pid", obj[3])
        ranges = self.process(index, t, "fork", pid)
        if child in self.procs:
            self.fail(index, t, f"fork of pid {pid}: child pid {child} already exists")
        self.procs[child] = ranges.copy()
        self.exited.discard(child)
        self.created += 1
        self.footprint.fork(pid, child)
        return Fork(index, t, pid, child)

    def _exit(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "exit", obj)
        pid = self.pid_field(index, t, "exit", "pid", obj[2])
        self.process(index, t, "exit", pid)
        del self.procs[pid]
        self.exited.add(pid)
        self.footprint.exit(pid)
        return Exit(index, t, pid)

    def _ksm(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "ksm", obj)
        settings = obj[2]
        if not isinstance(settings, dict):
            self.fail(index, t, f"ksm settings must be a map, not {kind(settings)}")
        problem = check_settings(settings)
        if problem is not None:
            self.fail(index, t, problem)
        typed: dict[str, KnobValue] = settings
        return Ksm(index, t, typed)

    def _settle(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) == 2:
            return Settle(index, t)
        if len(obj) != 3:
            self.arity(index, t, "settle", obj)
        scans = obj[2]
        if type(scans) is not int:
            self.fail(index, t, f"settle max_full_scans must be an int, not {kind(scans)}")
        if scans < 1:
            self.fail(index, t, f"settle max_full_scans must be >= 1, not {_int_text(scans)}")
        if scans >= INT_LIMIT:
            self.fail(
                index, t, f"settle max_full_scans must be below 2**64, not {_int_text(scans)}"
            )
        return Settle(index, t, scans)

    def _snapshot(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "snapshot", obj)
        label = obj[2]
        if not isinstance(label, str):
            self.fail(index, t, f"snapshot label must be a str, not {kind(label)}")
        problem = _str_problem(label, "snapshot label")
        if problem:
            self.fail(index, t, problem)
        return Snapshot(index, t, label)


# --------------------------------------------------------------------------- reader


def _one_by_one(items: Iterator[Event | WriteRun]) -> Iterator[Event]:
    for item in items:
        if isinstance(item, WriteRun):
            yield from item.events()
        else:
            yield item


class TraceReader:
    """A validated, streaming view of one trace; iterate it once for its events.

    :ivar name: the file name used in messages (``<stdin>`` for ``-``).
    :ivar form: ``"msgpack"`` or ``"jsonl"``.
    :ivar header: the validated header.
    :ivar events: events yielded so far (the header is not counted).
    :ivar duration_ns: ``t`` of the last event yielded, in ns (0 if none).
    :ivar validated_ahead: the whole trace was read and found valid before
        the first event (``validate_first``).
    :ivar footprint: then, what the whole trace keeps resident at most
        (:class:`Footprint`); None when the trace was not validated ahead.
    :ivar declared_duration_ns: then, ``t`` of the trace's last event, in ns;
        None when the trace was not validated ahead.

    With ``validate_first``, the reader first reads and validates the whole
    stream (as fast as ``validate`` does, handing out nothing), then goes
    back to where it started and reads it again for the events: an invalid
    trace fails here, before a replay has done any work.  That needs a
    stream that can be read twice (a regular file, also as stdin, or an
    in-memory one); a pipe or a terminal is read once, its events checked as
    they are handed out, as without ``validate_first``.
    """

    def __init__(
        self, stream: IO[bytes], name: str, close: bool = True, validate_first: bool = False
    ) -> None:
        self.name = name
        self._stream = stream
        self._close = close
        self.events = 0
        self.duration_ns = 0
        self._iterated = False
        self.validated_ahead = False
        self.footprint: Footprint | None = None
        self.declared_duration_ns: int | None = None
        try:
            if validate_first:
                ahead = _validate_ahead(stream, name)
                if ahead is not None:
                    self.footprint, self.declared_duration_ns = ahead
                self.validated_ahead = ahead is not None
            form, prefix = _detect(stream, name)
            self.form: TraceForm = form
            core = native() if form == "msgpack" else None
            source: _JsonlSource | _MsgpackSource | _ScannedMsgpackSource
            if core is not None:
                source = _ScannedMsgpackSource(stream, prefix, name, core)
            elif form == "msgpack":
                source = _MsgpackSource(stream, prefix, name)
            else:
                source = _JsonlSource(stream, prefix, name)
            self._source = source
            self._batches = source.batches()
            batch = next(self._batches, None)
            if batch is None:
                raise TraceError(name, 0, None, "empty trace: no header")
            assert isinstance(batch, list)  # the header is never scanned as a write
            self.header = _check_header(batch[0], name)
            if isinstance(source, _ScannedMsgpackSource):
                source.shift = self.header.page_size.bit_length() - 1
            self._rest: list[object] | WriteRun = batch[1:]
        except OSError as exc:
            self.close()
            raise InputOutputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise
        self._validator = _Validator(name, self.header.page_size, form == "jsonl")

    def __iter__(self) -> Iterator[Event]:
        """The events, one record each (runs of writes taken apart)."""
        return _one_by_one(self.runs())

    def runs(self) -> Iterator[Event | WriteRun]:
        """The events, with runs of fingerprint writes as :class:`WriteRun` columns.

        The same events as iterating the reader, in the same order; the replay
        uses this form.  Iterate a reader once, in either form.
        """
        if self._iterated:
            raise RuntimeError("a TraceReader can be iterated only once")
        self._iterated = True
        return self._iterate()

    def _iterate(self) -> Iterator[Event | WriteRun]:
        validator = self._validator
        batches = self._batches
        batch: list[object] | WriteRun | None = self._rest
        self._rest = []
        index = 0
        while batch is not None:
            if len(batch):
                if isinstance(batch, list):
                    items = validator.batch(index + 1, batch)
                    index += len(batch)
                else:
                    items = validator.check_run(index + 1, batch)
                    index += len(batch.t)
                self.events = index
                last = items[-1]
                self.duration_ns = last.last_t if isinstance(last, WriteRun) else last.t
                yield from items
            batch = next(batches, None)

    @property
    def bytes_read(self) -> int:
        """Bytes of the input read so far (for progress lines)."""
        return self._source.bytes_read

    @property
    def processes(self) -> int:
        """Processes created so far (a pid reused after ``exit`` counts again)."""
        return self._validator.created

    def close(self) -> None:
        """Close the underlying file (not stdin)."""
        if self._close:
            self._stream.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _validate_ahead(stream: IO[bytes], name: str) -> tuple[Footprint, int] | None:
    """Read and validate all of ``stream``, then go back to where it was; the
    trace's :class:`Footprint` and duration (ns), or None (nothing read) when
    it cannot be read twice.

    :raises TraceError: the trace is invalid.
    """
    try:
        regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: in memory
        regular = True
    try:
        if not (regular and stream.seekable()):
            return None
        start = stream.tell()
    except (AttributeError, OSError, ValueError):
        return None
    with TraceReader(stream, name, close=False) as first:
        for _ in first.runs():
            pass
    try:
        stream.seek(start)
    except OSError as exc:
        raise InputOutputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return first._validator.footprint, first.duration_ns


def open_trace(path: str, validate_first: bool = False) -> TraceReader:
    """Open the trace at ``path`` (``-`` for stdin) and read its header.

    :param validate_first: read and validate the whole trace first, when it
        is a regular file (by path or as stdin), so that an invalid trace
        fails here, before any event is handed out; then the reader starts
        again from the beginning (:class:`TraceReader`).  A pipe is read once.
    :raises InputOutputError: the file cannot be opened or read.
    :raises TraceError: the header breaks the trace format (with
        ``validate_first``: any event does).
    """
    if path == "-":
        return TraceReader(sys.stdin.buffer, "<stdin>", close=False, validate_first=validate_first)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the reader
    except OSError as exc:
        raise InputOutputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    return TraceReader(stream, path, validate_first=validate_first)


def read_trace(path: str) -> tuple[Header, list[Event]]:
    """Read a whole trace into memory (for tests and small traces)."""
    with open_trace(path) as reader:
        return reader.header, list(reader)


# --------------------------------------------------------------------------- writer


def header_object(header: Header) -> dict[str, Any]:
    """The header map as written to a trace."""
    obj: dict[str, Any] = {"ksmreplay": header.version, "page_size": header.page_size}
    if header.description is not None:
        obj["description"] = header.description
    if header.meta:
        obj["meta"] = dict(header.meta)
    return obj


def event_array(event: Event) -> list[Any]:
    """The event array of a typed record, as msgpack would carry it (bin as bytes)."""
    if isinstance(event, (Alloc, Free, Read)):
        return [event.t, event.op, event.pid, event.addr, event.len]
    if isinstance(event, Write):
        content = event.content
        if isinstance(content, np.ndarray):
            content = content.tolist()
        return [event.t, "write", event.pid, event.addr, event.len, content]
    if isinstance(event, Madvise):
        return [event.t, "madvise", event.pid, event.addr, event.len, event.advice]
    if isinstance(event, Prctl):
        return [event.t, "prctl", event.pid, event.option, event.value]
    if isinstance(event, Fork):
        return [event.t, "fork", event.pid, event.child_pid]
    if isinstance(event, Exit):
        return [event.t, "exit", event.pid]
    if isinstance(event, Ksm):
        return [event.t, "ksm", dict(event.settings)]
    if isinstance(event, Settle):
        if event.max_full_scans == DEFAULT_MAX_FULL_SCANS:
            return [event.t, "settle"]
        return [event.t, "settle", event.max_full_scans]
    if isinstance(event, Snapshot):
        return [event.t, "snapshot", event.label]
    raise TypeError(f"not a trace event: {event!r}")


def _json_default(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot write {type(value).__name__} to a trace")


def _msgpack_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot write {type(value).__name__} to a trace")


class TraceWriter:
    """Write a trace, event by event, to a binary stream it does not own.

    The header is written at once.  The writer does not validate; the caller
    keeps to the trace format.
    """

    def __init__(
        self, stream: IO[bytes], header: Header | None = None, form: str = "msgpack"
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown trace form {form!r}")
        self.stream = stream
        self.form = form
        self.header = header if header is not None else Header()
        if form == "msgpack":
            packer = msgpack.Packer(use_bin_type=True, default=_msgpack_default)
            self._encode: Callable[[object], bytes] = packer.pack
        else:
            encoder = json.JSONEncoder(
                ensure_ascii=False, separators=(", ", ": "), default=_json_default
            )

            def encode(obj: object) -> bytes:
                return (encoder.encode(obj) + "\n").encode("utf-8")

            self._encode = encode
        self._put(header_object(self.header))

    def _put(self, obj: object) -> None:
        self.stream.write(self._encode(obj))

    def event(self, record: Event) -> None:
        """Write one typed record (its ``index`` is ignored)."""
        self._put(event_array(record))

    def alloc(self, t: int, pid: int, addr: int, len: int) -> None:
        self._put([t, "alloc", pid, addr, len])

    def free(self, t: int, pid: int, addr: int, len: int) -> None:
        self._put([t, "free", pid, addr, len])

    def write(self, t: int, pid: int, addr: int, len: int, content: Content | list[int]) -> None:
        self._put([t, "write", pid, addr, len, content])

    def read(self, t: int, pid: int, addr: int, len: int) -> None:
        self._put([t, "read", pid, addr, len])

    def madvise(self, t: int, pid: int, addr: int, len: int, advice: str) -> None:
        self._put([t, "madvise", pid, addr, len, advice])

    def prctl(self, t: int, pid: int, value: bool) -> None:
        self._put([t, "prctl", pid, "merge_any", value])

    def fork(self, t: int, pid: int, child_pid: int) -> None:
        self._put([t, "fork", pid, child_pid])

    def exit(self, t: int, pid: int) -> None:
        self._put([t, "exit", pid])

    def ksm(self, t: int, settings: Mapping[str, KnobValue]) -> None:
        self._put([t, "ksm", dict(settings)])

    def settle(self, t: int, max_full_scans: int | None = None) -> None:
        self._put([t, "settle"] if max_full_scans is None else [t, "settle", max_full_scans])

    def snapshot(self, t: int, label: str) -> None:
        self._put([t, "snapshot", label])

    def flush(self) -> None:
        self.stream.flush()


def form_for_path(path: str) -> TraceForm | None:
    """The form a file name asks for by its suffix (``.msgpack``/``.jsonl``), or None."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".msgpack":
        return "msgpack"
    if suffix == ".jsonl":
        return "jsonl"
    return None


def write_trace(
    path: str, header: Header | None, records: Iterable[Event], form: str | None = None
) -> None:
    """Write a whole trace to ``path``; the form defaults to the suffix, else msgpack."""
    chosen = form or form_for_path(path) or "msgpack"
    with open(path, "wb") as stream:
        writer = TraceWriter(stream, header, chosen)
        for record in records:
            writer.event(record)
