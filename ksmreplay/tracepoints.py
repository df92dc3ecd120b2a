"""ksmd's decisions as Linux's own KSM tracepoints (``run --tracepoints``, ``exec --tracepoints``).

Linux declares nine trace events for KSM (``include/trace/events/ksm.h``).
The simulator emits them where the kernel does (the rules are in the scalar
ksmd, ``ksm/ksmd.py``, where each emitting step is written; the native core hands
back what it merged so that the same events come out), and ``exec`` reads
the live kernel's own through tracefs (``live/tracefs.py``).  Each event is
one JSON object per line, with the kernel's field names; where the kernel
gives a pointer or a page frame number, the replay names the trace's process
and address instead:

``mm``
    a process: its trace pid.
``rmap_item``
    ksmd's item for a page: the page's trace address (bytes); ``mm`` names
    the process.
``pfn``, ``ksm_page``
    a page frame: ``{"pid": P, "addr": A}``, the page of process P at
    trace address A that became this KSM page (KSM makes a KSM page of the
    first page of a pair, in place); ``"zero"`` for the shared zero page;
    ``ksm_page`` is null where the kernel passes NULL.

Every line starts with ``t`` (trace time, ns: the wake-up of the batch
ksmd emitted it in, or the trace event's time; a ``settle`` runs at its own
time), ``mode``, ``kernel`` and ``event``.  :data:`EVENTS` says when each
event fires and what its fields are.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ksmreplay.errors import UsageError
from ksmreplay.output import open_text_output

EVENTS: Mapping[str, str] = {
    "ksm_start_scan": "ksmd starts a full scan (the cursor leaves the list head for the "
    "first mm): seq, the number of full scans so far; rmap_entries, ksmd's items then",
    "ksm_stop_scan": "ksmd ends a full scan (after the last mm, before full_scans "
    "goes up): seq and rmap_entries as at the start",
    "ksm_enter": "a process joins ksmd's list (its first mergeable madvise, prctl "
    "merge_any, or a fork of a process on the list): mm",
    "ksm_exit": "a process on ksmd's list exits: mm (a process ksmd has already "
    "dropped from its list has none)",
    "ksm_merge_one_page": "a visited page of zeros is offered to the zero page "
    "(use_zero_pages=1, its checksum unchanged since the last visit): pfn (the zero "
    "page), rmap_item, mm, err (0: merged)",
    "ksm_merge_with_ksm_page": "a page is merged into a KSM page: into an existing "
    "one (ksm_page, pfn: that page), or the two pages of a pair from the unstable tree "
    "(first the visited page becomes the KSM page in place: ksm_page null, pfn itself; "
    "then the partner is merged into it); rmap_item, mm of the page merged; err (0: "
    "merged)",
    "ksm_remove_rmap_item": "a stale stable node is removed (its KSM page is gone, or "
    "run=2): one event per item linked to it but the oldest: pfn, rmap_item, mm",
    "ksm_remove_ksm_page": "a stable node is removed (after its items' ksm_remove_rmap_item): pfn",
    "ksm_advisor": "the scan-time advisor at the end of a full scan (advisor_mode="
    "scan-time; before ksm_stop_scan): scan_time (s), pages_to_scan (the new value), "
    "cpu_percent",
}
"""Every KSM trace event, with when it fires and its fields, in the order of
``include/trace/events/ksm.h``."""

SCAN_END = "ksm_stop_scan"
"""The event that ends a full scan (:func:`per_full_scan`)."""

PID_FIELD = "mm"
"""The field that names the process an event is about (``--tracepoints-filter pid=N``)."""

Sink = Callable[[dict[str, Any]], None]
"""Where events go: called with each event (``t``, ``mode``, ``kernel``, ``event``, fields)."""


@dataclass(frozen=True)
class Filter:
    """Which events to keep (``--tracepoints-filter``): by name and by process.

    An empty set keeps everything of its kind; with pids, an event is kept
    when its ``mm`` is one of them (events without ``mm`` go).
    """

    events: frozenset[str] = frozenset()
    pids: frozenset[int] = frozenset()

    def keeps(self, event: Mapping[str, Any]) -> bool:
        if self.events and event["event"] not in self.events:
            return False
        return not self.pids or event.get(PID_FIELD) in self.pids


def parse_filter(values: Iterable[str]) -> Filter:
    """``--tracepoints-filter`` values: event names and ``pid=N``, each a
    comma-separated list (``ksm_enter,ksm_exit``, ``pid=1,2``); several
    values add up.

    :raises UsageError: an unknown event name or a pid that is not a number.
    """
    events: set[str] = set()
    pids: set[int] = set()
    for value in values:
        if value.startswith("pid="):
            for part in value[len("pid=") :].split(","):
                if not part.strip().isdigit():
                    raise UsageError(f"--tracepoints-filter {value}: {part!r} is not a pid")
                pids.add(int(part))
            continue
        for name in value.split(","):
            name = name.strip()
            if name not in EVENTS:
                raise UsageError(
                    f"--tracepoints-filter {value}: unknown event {name!r} "
                    f"(events: {', '.join(EVENTS)}; or pid=N)"
                )
            events.add(name)
    return Filter(frozenset(events), frozenset(pids))


class Writer:
    """A :data:`Sink` writing the events a :class:`Filter` keeps, one JSON object a line."""

    def __init__(self, out: TextIO, keep: Filter) -> None:
        self.out = out
        self.keep = keep

    def __call__(self, event: dict[str, Any]) -> None:
        if self.keep.keeps(event):
            self.out.write(json.dumps(event) + "\n")


@contextlib.contextmanager
def open_tracepoints(
    path: str | None, filters: Sequence[str] = (), report: str | None = None
) -> Iterator[Writer | None]:
    """The ``--tracepoints FILE`` writer (None without a path), written as every
    output file is (``output.py``: complete or not at all); ``report`` is where
    the report goes (``-o``), which must not be standard output too.

    :raises UsageError: a bad ``--tracepoints-filter``, a filter without a
        file, or the events and the report both on standard output.
    """
    keep = parse_filter(filters)
    if path is None:
        if filters:
            raise UsageError("--tracepoints-filter needs --tracepoints FILE")
        yield None
        return
    if path == "-" and report == "-":
        raise UsageError("--tracepoints - needs the report elsewhere (-o FILE)")
    with open_text_output(path) as out:
        yield Writer(out, keep)


class Tracer:
    """One run's events: fills in ``t``, ``mode`` and ``kernel`` and hands each to a sink.

    ksmd calls :meth:`emit` at each tracepoint (``ksm.Ksmd.trace``).  While
    ksmd goes round in circles (``engine._Circles``) the events of one circle
    are kept (:meth:`capture`) so that those of the circles skipped can be
    emitted as they would have been (:meth:`repeat`).
    """

    def __init__(self, sink: Sink, mode: str, kernel: str, page_size: int) -> None:
        self.sink = sink
        self.mode = mode
        self.kernel = kernel
        self.page_size = page_size
        """Bytes per page: ksmd names pages by number, the events by address."""
        self.origins: dict[int, tuple[int, int]] = {}
        """Stable node id -> (pid, page) of the page that became its KSM page."""
        self._kept: list[tuple[int, str, dict[str, Any]]] | None = None

    def emit(self, t: int, name: str, fields: dict[str, Any]) -> None:
        """Event ``name`` at trace time ``t`` (ns) with ``fields``."""
        if self._kept is not None:
            self._kept.append((t, name, fields))
        self.sink({"t": t, "mode": self.mode, "kernel": self.kernel, "event": name, **fields})

    def page(self, pid: int, page: int) -> dict[str, int]:
        """The name of a page frame: the process and trace address (bytes) of ``page``."""
        return {"pid": pid, "addr": page * self.page_size}

    def capture(self) -> None:
        """Keep the events from now on (a circle of passes starts)."""
        self._kept = []

    def drop(self) -> None:
        """Stop keeping events."""
        self._kept = None

    def repeat(self, n: int, circle_ns: int, passes: int) -> None:
        """Emit the kept events ``n`` more times, the k-th copy ``k * circle_ns``
        later and ``k * passes`` full scans on (``seq``); then stop keeping."""
        kept, self._kept = self._kept or [], None
        for k in range(1, n + 1):
            for t, name, fields in kept:
                if "seq" in fields:
                    fields = {**fields, "seq": fields["seq"] + k * passes}
                self.emit(t + k * circle_ns, name, fields)


def per_full_scan(events: Iterable[Mapping[str, Any]]) -> list[dict[str, int]]:
    """How many events of each kind each full scan saw: entry k counts the
    events after the k-th ``ksm_stop_scan`` up to and including the next (the
    last entry, those after the last one), names sorted.  An event between two
    scans (a process entering, exiting, run=2) counts for the scan that follows.
    """
    counts: list[dict[str, int]] = [{}]
    for event in events:
        name = str(event["event"])
        counts[-1][name] = counts[-1].get(name, 0) + 1
        if name == SCAN_END:
            counts.append({})
    return [dict(sorted(c.items())) for c in counts]
