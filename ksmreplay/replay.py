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
from typing import Any, NamedTuple, Protocol, cast

import numpy as np

from ksmreplay import traps
from ksmreplay.errors import UsageError
from ksmreplay.ksm import modes
from ksmreplay.ksm.kernels import DEFAULT_KERNEL, kernel
from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.report import (
    REPORT_VERSION,
    KsmdCost,
    Milestones,
    MilestoneTracker,
    Report,
    Run,
    Snap,
    SnapshotSpool,
    SpooledReport,
    SpooledRun,
    TraceInfo,
    ksmd_cost,
)
from ksmreplay.simulator import Simulator, make_simulator
from ksmreplay.trace.events import Event, Header, Ksm, Settle, Snapshot, WriteRun
from ksmreplay.tracepoints import Sink
from ksmreplay.traps import Trap

MODES: tuple[str, ...] = tuple(modes.MODES)
"""Every mode a simulator can replay, in the order ``all`` lists them (``ksm/modes.py``)."""

MODE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "both": (modes.LEGACY.name, modes.UNSHARE.name),
    "all": MODES,
}
"""Names that stand for several modes (``--mode both``, ``--mode all``)."""

MODE_CHOICES: tuple[str, ...] = (*MODES, *MODE_GROUPS)
"""Everything ``--mode`` accepts."""

PROGRESS_EVERY = 16384

EVERY_LIMIT = 100_000
"""The most ``every@T`` snapshots one replay takes (``run --every``): each is
a snapshot of every run, so a DURATION far below the trace's length would
turn a replay into hours of snapshots."""
"""The progress callback runs after every this many events (and once at the end)."""

ProgressCallback = Callable[[int, int], None]
WarnCallback = Callable[[Trap], None]
SimulatorFactory = Callable[
    [str, int, Mapping[str, KnobValue] | None, Mapping[str, KnobValue] | None, str], Simulator
]


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


def run_pairs(
    modes: Sequence[str], kernels: Sequence[str], only_modes_each_has: bool = False
) -> list[tuple[str, str]]:
    """The runs to make, as (kernel version, mode) pairs, in report order:
    every mode on every version (with ``only_modes_each_has``, every mode the
    version has), versions first.

    :raises UsageError: for an empty, unknown or repeated mode or version, or
        a mode a version lacks.
    """
    if not modes:
        raise UsageError("no mode to replay")
    if not kernels:
        raise UsageError("no kernel version to replay on")
    for i, mode in enumerate(modes):
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        if mode in modes[:i]:
            raise UsageError(f"mode {mode!r} asked for twice")
    pairs: list[tuple[str, str]] = []
    for i, version in enumerate(kernels):
        if version in kernels[:i]:
            raise UsageError(f"kernel {version!r} asked for twice")
        has = kernel(version).modes
        wanted = [m for m in modes if m in has] if only_modes_each_has else list(modes)
        for mode in wanted or list(modes):
            kernel(version).check_mode(mode)
            pairs.append((version, mode))
    return pairs


def run_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """How warnings name each run: its mode, and ``mode@kernel`` when several kernels run."""
    several = len({version for version, _mode in pairs}) > 1
    return [f"{mode}@{version}" if several else mode for version, mode in pairs]


def _warn(
    sims: Sequence[Simulator], names: Sequence[str], warn: WarnCallback | None, final: bool = False
) -> None:
    """Hand the traps the simulators found to ``warn``, each once for all runs."""
    found = [(name, sim.traps(final)) for name, sim in zip(names, sims, strict=True)]
    if warn is not None:
        for trap in traps.merge(found):
            warn(trap)


def check_every(every: int, duration: int) -> None:
    """Refuse ``--every`` when its snapshots up to ``duration`` (ns) would
    exceed :data:`EVERY_LIMIT`.

    :raises UsageError: naming how many snapshots that would be.
    """
    count = duration // every + 1
    if count > EVERY_LIMIT:
        raise UsageError(
            f"--every: {count:,} snapshots per run over the trace's {duration / 1e9:g} s "
            f"(one every {every / 1e9:g} s); at most {EVERY_LIMIT:,}: choose a longer DURATION"
        )


class _Driver:
    """Feeds every event to every simulator; snapshots go to ``sinks`` (one per simulator).

    With ``every`` (ns), a snapshot ``every@T`` is also taken for T = 0,
    ``every``, 2 ``every``, ... up to the trace's end, as if an event
    ``[T, "snapshot", "every@T"]`` stood after every other event at time T:
    it is applied (ksmd runs the wake-ups due before T) and recorded once
    every event up to T is in.  Its ``event`` is the index of the last event
    before it (0, the header, if none).
    """

    def __init__(
        self,
        sims: Sequence[Simulator],
        names: Sequence[str],
        sinks: Sequence[_SnapshotSink],
        check_invariants: bool,
        every: int | None,
        warn: WarnCallback | None,
        explain: bool = False,
    ) -> None:
        self.sims = sims
        self.explain = explain
        self.names = names
        self.warn = warn
        self.sinks = sinks
        self.check_invariants = check_invariants
        self.every = every
        self.next_every: int | None = 0 if every else None
        self.milestones = [MilestoneTracker() for _ in sims]
        self.count = 0
        self.last_t = 0
        self.last_index = 0

    def run(self, reader: EventSource, progress: ProgressCallback | None) -> None:
        next_progress = PROGRESS_EVERY
        for item in reader.runs():
            if isinstance(item, WriteRun) and not self.check_invariants:
                self._write_run(item)
            else:
                # One event at a time (runs too when every event's invariants are checked).
                for event in item.events() if isinstance(item, WriteRun) else [item]:
                    self._every_before(event.t)
                    for sim in self.sims:
                        sim.apply(event)
                        if self.check_invariants:
                            sim.check_invariants()
                    if isinstance(event, Snapshot):
                        self._record(event.label, event.t, event.index)
                    elif isinstance(event, Ksm | Settle):
                        _warn(self.sims, self.names, self.warn)
                    self.count += 1
                    self.last_t, self.last_index = event.t, event.index
            if progress is not None and self.count >= next_progress:
                progress(self.count, _bytes_read(reader))
                next_progress = (self.count // PROGRESS_EVERY + 1) * PROGRESS_EVERY
        self._every_before(self.last_t + 1)
        if progress is not None:
            progress(self.count, _bytes_read(reader))
        _warn(self.sims, self.names, self.warn, final=True)

    def _write_run(self, run: WriteRun) -> None:
        """A run of writes, cut where an ``every@T`` snapshot falls between two of them."""
        t = run.t
        n = len(run)
        lo = 0
        while self.next_every is not None and self.next_every < int(t[-1]):
            hi = int(t.searchsorted(np.uint64(self.next_every), "right"))
            if hi > lo:
                self._apply_writes(run if hi - lo == n else run.cut(lo, hi))
            self._every_before(int(t[hi]))
            lo = hi
        if lo < n:
            self._apply_writes(run if lo == 0 else run.cut(lo, n))

    def _apply_writes(self, run: WriteRun) -> None:
        for sim in self.sims:
            sim.apply_writes(run)
        self.count += len(run)
        self.last_t, self.last_index = run.last_t, run.last_index

    def _every_before(self, t: int) -> None:
        """Take the ``every@T`` snapshots due before an event at ``t``.

        :raises UsageError: more than :data:`EVERY_LIMIT` would be taken (a
            trace read once, from a pipe, is found out only here).
        """
        while self.next_every is not None and self.next_every < t:
            at = self.next_every
            assert self.every is not None
            check_every(self.every, at)
            label = f"every@{at}"
            event = Snapshot(self.last_index, at, label)
            for sim in self.sims:
                sim.apply(event)
            self._record(label, at, self.last_index)
            self.next_every = at + self.every

    def _record(self, label: str, t: int, index: int) -> None:
        for sim, sink, milestones in zip(self.sims, self.sinks, self.milestones, strict=True):
            snap = _snapshot(sim, label, t, index, self.explain)
            sink.append(snap)
            milestones.add(t, snap["summary"]["saved_pages"])


def _drive(
    reader: EventSource,
    sims: Sequence[Simulator],
    names: Sequence[str],
    sinks: Sequence[_SnapshotSink],
    progress: ProgressCallback | None,
    check_invariants: bool,
    every: int | None,
    warn: WarnCallback | None = None,
    explain: bool = False,
    tracepoints: Sink | None = None,
) -> tuple[TraceInfo, list[_Ending]]:
    """Feed every event to every simulator; snapshots go to ``sinks`` (one per simulator).

    Traps (``traps.py``) come only from ``ksm`` and ``settle`` events and from
    the end of the trace; they go to ``warn`` as soon as every simulator has
    applied the event.  With ``explain``, every snapshot also gets the
    simulator's ``explain()``; with ``tracepoints``, every simulator's
    tracepoint events go there as they come.

    :returns: the report's ``trace`` section and, per simulator, its ``final``
        snapshot, ``ksmd`` and ``milestones``.
    """
    if tracepoints is not None:
        for sim in sims:
            sim.trace(tracepoints)
    driver = _Driver(sims, names, sinks, check_invariants, every, warn, explain)
    driver.run(reader, progress)
    header = reader.header
    trace: TraceInfo = {
        "path": reader.name,
        "events": driver.count,
        "duration_ns": driver.last_t,
        "page_size": header.page_size,
        "meta": dict(header.meta),
    }
    endings = [
        _Ending(
            _snapshot(sim, "final", driver.last_t, driver.last_index, explain),
            ksmd_cost(sim.ksmd_work, driver.last_t),
            milestones.milestones(),
        )
        for sim, milestones in zip(sims, driver.milestones, strict=True)
    ]
    return trace, endings


def _snapshot(sim: Simulator, label: str, t: int, index: int, explain: bool) -> Snap:
    """``sim.snapshot()``, and with ``explain`` its ``explain()`` as the ``explain`` key."""
    snap = sim.snapshot(label, t, index)
    if explain:
        snap["explain"] = sim.explain()
    return snap


class _Ending(NamedTuple):
    """What a run ends with: its ``final`` snapshot, ``ksmd`` and ``milestones``."""

    final: Snap
    ksmd: KsmdCost
    milestones: Milestones


def _run(
    sim: Simulator,
    version: str,
    pins: Mapping[str, KnobValue] | None,
    end: _Ending,
    snapshots: object,
) -> dict[str, Any]:
    """One run of the report, its keys in the report's order: mode, kernel,
    settings, refused, (with pins) pinned, ksmd, milestones, snapshots, final."""
    run: dict[str, Any] = {
        "mode": sim.mode,
        "kernel": version,
        "settings": dict(sim.settings),
        "refused": list(sim.refused),
    }
    if pins:
        run["pinned"] = sim.pinned
    run["ksmd"] = end.ksmd
    run["milestones"] = end.milestones
    run["snapshots"] = snapshots
    run["final"] = end.final
    return run


def replay(
    reader: EventSource,
    modes: Sequence[str],
    settings: Mapping[str, KnobValue] | None = None,
    progress: ProgressCallback | None = None,
    check_invariants: bool = False,
    *,
    kernels: Sequence[str] = (DEFAULT_KERNEL,),
    only_modes_each_has: bool = False,
    pins: Mapping[str, KnobValue] | None = None,
    warn: WarnCallback | None = None,
    every: int | None = None,
    explain: bool = False,
    tracepoints: Sink | None = None,
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
    :param kernels: kernel versions (``kernels.KERNELS``), each at most once;
        every mode is replayed on every version, versions first: with
        ``kernels=("6.12", "6.18")`` and ``modes=("legacy", "unshare")`` the
        runs are (6.12, legacy), (6.12, unshare), (6.18, legacy), (6.18,
        unshare).  A mode a version lacks (``unshare`` on 6.1) is a usage error.
    :param only_modes_each_has: leave out, on each version, the modes it
        lacks (the CLI's default ``both`` on 6.1 is then ``legacy``).
    :param pins: knob values in force before the first event and kept for the
        whole replay (``--pin``): the trace's writes of them are ignored and
        listed in each run's ``pinned`` (a key present only with pins).
    :param warn: called with each warning (:class:`~ksmreplay.traps.Trap`)
        as the replay finds it, once for all runs; warnings are never part of
        the report.
    :param every: take a snapshot ``every@T`` at every multiple T of this
        many nanoseconds (0 included) up to the trace's end, as if the event
        ``[T, "snapshot", "every@T"]`` stood after every other event at time
        T (``run --every``); its ``event`` is the index of the last event
        before it.  Every snapshot, these too, counts for ``milestones``.
    :param explain: add ``explain`` to every snapshot (``run --explain``:
        every resident page by why it is or is not merged; ``explain.py``).
    :param tracepoints: where every run's KSM tracepoint events go, as they
        come (``run --tracepoints``; ``tracepoints.py``); each names its
        run by ``mode`` and ``kernel``.
    :param factory: builds one simulator, ``factory(mode, page_size,
        settings, pins, kernel)``; tests pass a fake.
    :returns: the report of REPORT_FORMAT.md: ``trace`` (``path`` = the
        reader's ``name``, events counted
        without the header, ``duration_ns`` = ``t`` of the last event, page
        size, meta) and one run per mode.
    :raises UsageError: for an empty, unknown or repeated mode.
    :raises TraceError: from the reader, for an invalid trace; nothing is
        reported then.
    :raises InvariantError: when ``check_invariants`` finds a simulator bug.
    """
    pairs = run_pairs(modes, kernels, only_modes_each_has)
    sims = [
        factory(mode, reader.header.page_size, settings, pins, version) for version, mode in pairs
    ]
    snapshots: list[list[Snap]] = [[] for _ in sims]
    trace, endings = _drive(
        reader,
        sims,
        run_names(pairs),
        snapshots,
        progress,
        check_invariants,
        every,
        warn,
        explain,
        tracepoints,
    )
    runs: list[Run] = [
        cast(Run, _run(sim, version, pins, end, snaps))
        for (version, _mode), sim, snaps, end in zip(pairs, sims, snapshots, endings, strict=True)
    ]
    return {"report": REPORT_VERSION, "trace": trace, "runs": runs}


def replay_spooled(
    reader: EventSource,
    modes: Sequence[str],
    settings: Mapping[str, KnobValue] | None = None,
    progress: ProgressCallback | None = None,
    check_invariants: bool = False,
    *,
    kernels: Sequence[str] = (DEFAULT_KERNEL,),
    only_modes_each_has: bool = False,
    pins: Mapping[str, KnobValue] | None = None,
    warn: WarnCallback | None = None,
    every: int | None = None,
    explain: bool = False,
    tracepoints: Sink | None = None,
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
    pairs = run_pairs(modes, kernels, only_modes_each_has)
    sims = [
        factory(mode, reader.header.page_size, settings, pins, version) for version, mode in pairs
    ]
    with contextlib.ExitStack() as stack:
        spools = [stack.enter_context(SnapshotSpool()) for _ in sims]
        trace, endings = _drive(
            reader,
            sims,
            run_names(pairs),
            spools,
            progress,
            check_invariants,
            every,
            warn,
            explain,
            tracepoints,
        )
        runs: list[SpooledRun] = [
            cast(SpooledRun, _run(sim, version, pins, end, spool))
            for (version, _mode), sim, spool, end in zip(pairs, sims, spools, endings, strict=True)
        ]
        stack.pop_all()
    return {"report": REPORT_VERSION, "trace": trace, "runs": runs}
