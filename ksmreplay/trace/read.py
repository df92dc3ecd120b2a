"""Reading a trace: open it, check it, iterate its events."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import IO

from ksmreplay.errors import InputOutputError, TraceError
from ksmreplay.native import native
from ksmreplay.trace.decode import _detect, _JsonlSource, _MsgpackSource, _ScannedMsgpackSource
from ksmreplay.trace.events import (
    Event,
    Header,
    WriteRun,
)
from ksmreplay.trace.limits import TraceForm
from ksmreplay.trace.validate import Footprint, _check_header, _Validator

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
