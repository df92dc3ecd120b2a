"""Decoding a trace's bytes into objects: msgpack (pure Python, or scanned a few
MiB at a time by the native core) and JSON lines."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import IO, Any

import msgpack

from ksmreplay.errors import InputOutputError, TraceError
from ksmreplay.native import SCAN_FULL, SCAN_OTHER, Native
from ksmreplay.trace.events import (
    WriteRun,
)
from ksmreplay.trace.limits import (
    _SHORT_RUN,
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_EVENT_BYTES,
    MAX_LINE_BYTES,
    MAX_MAP_ITEMS,
    MAX_STR_BYTES,
    TraceForm,
)

_READ_SIZE = 256 * 1024
_FEED_SIZE = 4096
_BLANK = b" \t\r\n"


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
