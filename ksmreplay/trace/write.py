"""Writing a trace in either form."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import msgpack
import numpy as np

from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.trace.events import (
    DEFAULT_MAX_FULL_SCANS,
    Alloc,
    Content,
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
from ksmreplay.trace.limits import FORMS, TraceForm

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
