"""The one driver: decode a trace once, feed every event to one simulator per mode.

::

    with open_trace("trace.msgpack") as reader:
        report = replay(reader, expand_modes("both"))           # the whole report in memory
    with open_trace("trace.msgpack") as reader:
        spooled = replay_spooled(reader, expand_modes("both"))  # snapshots in temporary files

The driver owns iteration; each simulator only sees ``apply(event)`` and
``snapshot(label, t, index)`` (``simulator.py``).  The simulators are
independent: the same decoded event object goes to each of them, in the order
the modes were asked for, and none may change it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from ksmreplay import modes
from ksmreplay.errors import UsageError
from ksmreplay.events import Event, Header, Snapshot, WriteRun
from ksmreplay.knobs import KnobValue
from ksmreplay.report import (
    REPORT_VERSION,
    Report,
    Run,
    Snap,
    SnapshotSpool,
    SpooledReport,
    SpooledRun,
    TraceInfo,
)
from ksmreplay.simulator import Simulator, make_simulator

MODES: tuple[str, ...] = tuple(modes.MODES)
"""Every mode a simulator can replay, in the order ``all`` lists them (``modes.py``)."""

MODE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "both": (modes.LEGACY.name, modes.UNSHARE.name),
    "all": MODES,
}
"""Names that stand for several modes (``--mode both``, ``--mode all``)."""

MODE_CHOICES: tuple[str, ...] = (*MODES, *MODE_GROUPS)
"""Everything ``--mode`` accepts."""

PROGRESS_EVERY = 16384
"""The progress callback runs after every this many events (and once at the end)."""

ProgressCallback = Callable[[int, int], None]
SimulatorFactory = Callable[[str, int, Mapping[str, KnobValue] | None], Simulator]


class EventSource(Protocol):
    """What :func:`replay` needs from a trace reader (``ksmreplay.trace.TraceReader``)."""

    @property
    def header(self) -> Header:
        """The decoded header (event 0)."""

    @property
    def name(self) -> str:
        """The name messages and the report show for the trace (``<stdin>`` for ``-``)."""

    def runs(self) -> Iterator[Event | WriteRun]:
        """The validated events, in trace order, each decoded once; runs of
        writes may come as :class:`WriteRun` columns."""


def expand_modes(names: str | Iterable[str]) -> tuple[str, ...]:
    """Turn ``--mode`` values into the list of modes to replay, in the order asked for.

    ``both`` is ``legacy, unshare``; ``all`` is ``legacy, v6, unshare``; a mode
    named twice (``--mode both --mode legacy``) is replayed once, at its first
    place.

    :param names: one ``--mode`` value, or several.
    :raises UsageError: for a name that is neither a mode nor a group.
    """
    if isinstance(names, str):
        names = (names,)
    modes: list[str] = []
    for name in names:
        if name in MODE_GROUPS:
            group = MODE_GROUPS[name]
        elif name in MODES:
            group = (name,)
        else:
            raise UsageError(f"unknown mode {name!r} (choose from {', '.join(MODE_CHOICES)})")
        modes.extend(mode for mode in group if mode not in modes)
    return tuple(modes)


def _bytes_read(reader: EventSource) -> int:
    """How far the reader got into its input, in bytes (0 if it does not say)."""
    value = getattr(reader, "bytes_read", 0)
    return value if isinstance(value, int) else 0


class _SnapshotSink(Protocol):
    """Where the driver puts a run's snapshots: a list, or a :class:`SnapshotSpool`."""

    def append(self, snap: Snap, /) -> None: ...


def _check_modes(modes: Sequence[str]) -> None:
    if not modes:
        raise UsageError("no mode to replay")
    for i, mode in enumerate(modes):
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        if mode in modes[:i]:
            raise UsageError(f"mode {mode!r} asked for twice")


def _drive(
    reader: EventSource,
    sims: Sequence[Simulator],
    sinks: Sequence[_SnapshotSink],
    progress: ProgressCallback | None,
    check_invariants: bool,
    explain: bool = False,
) -> tuple[TraceInfo, list[Snap]]:
    """Feed every event to every simulator; snapshots go to ``sinks`` (one per simulator).

    With ``explain``, every snapshot also gets the simulator's ``explain()``.

    :returns: the report's ``trace`` section and each simulator's ``final`` snapshot.
    """
    count = 0
    last_t = 0
    last_index = 0

    next_progress = PROGRESS_EVERY
    for item in reader.runs():
        if isinstance(item, WriteRun) and not check_invariants:
            for sim in sims:
                sim.apply_writes(item)
            count += len(item)
            last_t, last_index = item.last_t, item.last_index
        else:
            # One event at a time (runs too when every event's invariants are checked).
            for event in item.events() if isinstance(item, WriteRun) else [item]:
                for sim in sims:
                    sim.apply(event)
                    if check_invariants:
                        sim.check_invariants()
                if isinstance(event, Snapshot):
                    for sim, sink in zip(sims, sinks, strict=True):
                        sink.append(_snapshot(sim, event.label, event.t, event.index, explain))
                count += 1
                last_t, last_index = event.t, event.index
        if progress is not None and count >= next_progress:
            progress(count, _bytes_read(reader))
            next_progress = (count // PROGRESS_EVERY + 1) * PROGRESS_EVERY
    if progress is not None:
        progress(count, _bytes_read(reader))

    header = reader.header
    trace: TraceInfo = {
        "path": reader.name,
        "events": count,
        "duration_ns": last_t,
        "page_size": header.page_size,
        "meta": dict(header.meta),
    }
    return trace, [_snapshot(sim, "final", last_t, last_index, explain) for sim in sims]


def _snapshot(sim: Simulator, label: str, t: int, index: int, explain: bool) -> Snap:
    """``sim.snapshot()``, and with ``explain`` its ``explain()`` as the ``explain`` key."""
    snap = sim.snapshot(label, t, index)
    if explain:
        snap["explain"] = sim.explain()
    return snap


def replay(
    reader: EventSource,
    modes: Sequence[str],
    settings: Mapping[str, KnobValue] | None = None,
    progress: ProgressCallback | None = None,
    check_invariants: bool = False,
    *,
    explain: bool = False,
    factory: SimulatorFactory = make_simulator,
) -> Report:
    """Replay one trace in every mode of ``modes`` and build the report.

    The trace is decoded once; each event goes to one independent simulator per
    mode, in the order of ``modes``.  After a ``snapshot`` event every simulator
    records a snapshot with that event's label, ``t`` and index.  After the last
    event every simulator records the ``final`` snapshot with the last event's
    ``t`` and index (``t`` = 0 and event 0 for a trace with no events).

    The whole report is held in memory, every snapshot of every run; for
    traces with many snapshots, :func:`replay_spooled` keeps them in a
    temporary file instead.

    :param reader: an open trace (:class:`EventSource`: ``header``, ``name``,
        ``runs()`` over validated events), read once from start to end.
    :param modes: mode names (``legacy``, ``v6``, ``unshare``), each at most
        once; use :func:`expand_modes` for ``both``/``all``.
    :param settings: knob values in force before the first event (``--set``);
        the trace's own ``ksm`` events still apply at their times.
    :param progress: called as ``progress(events_done, bytes_read)`` each time
        another :data:`PROGRESS_EVERY` events are done and once after the last one;
        ``bytes_read`` is the reader's ``bytes_read`` attribute when it has one,
        else 0.  For drawing a progress line; the report does not depend on it.
    :param check_invariants: run every simulator's ``check_invariants()`` after
        every event (slow; for tests and ``--check-invariants``).
    :param explain: add ``explain`` to every snapshot (``run --explain``:
        every resident page by why it is or is not merged; ``explain.py``).
    :param factory: builds one simulator, ``factory(mode, page_size,
        settings)``; tests pass a fake.
    :returns: the report of REPORT_FORMAT.md: ``trace`` (``path`` = the
        reader's ``name``, events counted
        without the header, ``duration_ns`` = ``t`` of the last event, page
        size, meta) and one run per mode.
    :raises UsageError: for an empty, unknown or repeated mode.
    :raises TraceError: from the reader, for an invalid trace; nothing is
        reported then.
    :raises InvariantError: when ``check_invariants`` finds a simulator bug.
    """
    _check_modes(modes)
    sims = [factory(mode, reader.header.page_size, settings) for mode in modes]
    snapshots: list[list[Snap]] = [[] for _ in sims]
    trace, finals = _drive(reader, sims, snapshots, progress, check_invariants, explain)
    runs: list[Run] = [
        {
            "mode": mode,
            "settings": dict(sim.settings),
            "refused": list(sim.refused),
            "snapshots": snaps,
            "final": final,
        }
        for mode, sim, snaps, final in zip(modes, sims, snapshots, finals, strict=True)
    ]
    return {"report": REPORT_VERSION, "trace": trace, "runs": runs}


def replay_spooled(
    reader: EventSource,
    modes: Sequence[str],
    settings: Mapping[str, KnobValue] | None = None,
    progress: ProgressCallback | None = None,
    check_invariants: bool = False,
    *,
    explain: bool = False,
    factory: SimulatorFactory = make_simulator,
) -> SpooledReport:
    """:func:`replay`, with each run's snapshots kept in a temporary file, not in memory.

    The same replay and the same report (:func:`~ksmreplay.report.unspool`
    turns it into :func:`replay`'s), but each snapshot goes to its run's
    :class:`~ksmreplay.report.SnapshotSpool` as soon as it is taken, so memory
    stays that of the simulators however many snapshots the trace asks for
    (the file grows by a few hundred bytes per snapshot and mode; see
    :class:`~ksmreplay.report.SnapshotSpool`).  The renderers read the spools
    back in the order their format needs.  Call
    :func:`~ksmreplay.report.close_spools` when done; on an error nothing is
    left open.

    Parameters, errors and the report's content are those of :func:`replay`.

    :raises InputOutputError: when a spool cannot be written.
    """
    _check_modes(modes)
    sims = [factory(mode, reader.header.page_size, settings) for mode in modes]
    with contextlib.ExitStack() as stack:
        spools = [stack.enter_context(SnapshotSpool()) for _ in sims]
        trace, finals = _drive(reader, sims, spools, progress, check_invariants, explain)
        runs: list[SpooledRun] = [
            {
                "mode": mode,
                "settings": dict(sim.settings),
                "refused": list(sim.refused),
                "snapshots": spool,
                "final": final,
            }
            for mode, sim, spool, final in zip(modes, sims, spools, finals, strict=True)
        ]
        stack.pop_all()
    return {"report": REPORT_VERSION, "trace": trace, "runs": runs}
