"""What a trace holds, without replaying it through ksmd (``ksmreplay inspect``).

:func:`inspect_trace` reads a trace once and summarises it: the header, the
duration, how many events of each op, each process's peak mapped and peak
written pages, how many distinct fingerprints were written, how many pages were
written as zeros, and every change of the KSM settings.

"Written pages" are the pages of a process that hold content a ``write`` put
there: ``fork`` gives the child a copy of the parent's, while ``free``,
``madvise dontneed`` and ``exit`` drop them.  The state kept is one dict entry
per written page and one range per mapping, so memory grows with the pages
written, not with the size of the mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ksmreplay.content import PageStore, literal_write
from ksmreplay.events import (
    OPS,
    Alloc,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Prctl,
    Write,
)
from ksmreplay.trace import RangeSet, TraceReader


@dataclass
class _Process:
    """One live process: its mappings and the fingerprint of each written page."""

    ranges: RangeSet = field(default_factory=RangeSet)
    mapped: int = 0
    """Mapped bytes."""
    written: dict[int, int] = field(default_factory=dict)
    """Page number -> fingerprint, for pages holding written content."""


@dataclass
class _Peaks:
    mapped_pages: int = 0
    written_pages: int = 0


class _Lookup:
    """``current(page)`` for :func:`literal_write`: a page's fingerprint, 0 if unwritten."""

    __slots__ = ("written",)

    def __init__(self, written: dict[int, int]) -> None:
        self.written = written

    def __call__(self, page: int) -> int:
        return self.written.get(page, 0)


def _drop(written: dict[int, int], first: int, count: int) -> None:
    """Forget written pages ``first .. first+count-1``, in time proportional to the smaller side."""
    if count <= len(written):
        for page in range(first, first + count):
            written.pop(page, None)
    else:
        end = first + count
        for page in [p for p in written if first <= p < end]:
            del written[page]


def inspect_trace(reader: TraceReader) -> dict[str, Any]:
    """Read every event of ``reader`` and summarise the trace.

    :returns: a dict, keys in this order: ``path``, ``form`` (``msgpack`` or
        ``jsonl``), ``header`` (``version``, ``page_size`` in bytes,
        ``description``, ``meta``), ``events`` (number of events, header not
        counted), ``duration_ns``, ``ops`` (count per op, every op in
        :data:`~ksmreplay.events.OPS` order), ``processes`` (one entry per pid,
        by pid: ``pid``, ``peak_mapped_pages``, ``peak_written_pages``; a pid
        reused after ``exit`` reports its peaks over all its lives),
        ``distinct_fingerprints`` (distinct page contents ever written, zeros
        included), ``zero_pages_written`` (pages a write left all zero), and
        ``ksm_settings`` (``t``, ``event`` index and ``settings`` of each
        ``ksm`` event).
    :raises TraceError: the trace is invalid.
    """
    header = reader.header
    page_size = header.page_size
    shift = page_size.bit_length() - 1
    store = PageStore(page_size)
    ops = dict.fromkeys(OPS, 0)
    procs: dict[int, _Process] = {}
    peaks: dict[int, _Peaks] = {}
    fingerprints: set[int] = set()
    zero_pages = 0
    settings_changes: list[dict[str, Any]] = []

    def note(pid: int, proc: _Process) -> None:
        peak = peaks.setdefault(pid, _Peaks())
        peak.mapped_pages = max(peak.mapped_pages, proc.mapped >> shift)
        peak.written_pages = max(peak.written_pages, len(proc.written))

    for event in reader:
        ops[event.op] += 1
        if isinstance(event, Write):
            proc = procs[event.pid]
            content = event.content
            first = event.addr >> shift
            if isinstance(content, bytes):
                first, fps = literal_write(
                    event.addr, content, page_size, _Lookup(proc.written), store
                )
                proc.written.update(zip(range(first, first + len(fps)), fps, strict=True))
                fingerprints.update(fps)
                zero_pages += fps.count(0)
            elif isinstance(content, np.ndarray):
                values = content.tolist()
                proc.written.update(zip(range(first, first + len(values)), values, strict=True))
                fingerprints.update(values)
                zero_pages += values.count(0)
            else:
                count = event.len >> shift
                proc.written.update(dict.fromkeys(range(first, first + count), content))
                fingerprints.add(content)
                if content == 0:
                    zero_pages += count
            note(event.pid, proc)
        elif isinstance(event, Alloc):
            proc = procs.setdefault(event.pid, _Process())
            proc.ranges.add(event.addr, event.addr + event.len)
            proc.mapped += event.len
            note(event.pid, proc)
        elif isinstance(event, Free):
            proc = procs[event.pid]
            proc.mapped -= proc.ranges.remove(event.addr, event.addr + event.len)
            _drop(proc.written, event.addr >> shift, event.len >> shift)
        elif isinstance(event, Madvise):
            if event.advice == "dontneed":
                _drop(procs[event.pid].written, event.addr >> shift, event.len >> shift)
        elif isinstance(event, Prctl):
            if event.pid not in procs:
                procs[event.pid] = _Process()
                note(event.pid, procs[event.pid])
        elif isinstance(event, Fork):
            parent = procs[event.pid]
            child = procs[event.child_pid] = _Process(
                parent.ranges.copy(), parent.mapped, dict(parent.written)
            )
            note(event.child_pid, child)
        elif isinstance(event, Exit):
            del procs[event.pid]
        elif isinstance(event, Ksm):
            settings_changes.append(
                {"t": event.t, "event": event.index, "settings": dict(event.settings)}
            )

    return {
        "path": reader.name,
        "form": reader.form,
        "header": {
            "version": header.version,
            "page_size": page_size,
            "description": header.description,
            "meta": dict(header.meta),
        },
        "events": reader.events,
        "duration_ns": reader.duration_ns,
        "ops": ops,
        "processes": [
            {
                "pid": pid,
                "peak_mapped_pages": peaks[pid].mapped_pages,
                "peak_written_pages": peaks[pid].written_pages,
            }
            for pid in sorted(peaks)
        ],
        "distinct_fingerprints": len(fingerprints),
        "zero_pages_written": zero_pages,
        "ksm_settings": settings_changes,
    }
