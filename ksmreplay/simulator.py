"""The two-call interface every replay engine offers, and how time works.

A simulator replays one trace in one mode.  The driver (``replay.py``) owns
iteration: it decodes the trace once and hands every event, in order, to one
independent simulator per requested mode::

    sim = make_simulator("unshare", page_size=4096, settings={"pages_to_scan": 1000})
    for event in events:
        sim.apply(event)
        if isinstance(event, Snapshot):
            snaps.append(sim.snapshot(event.label, event.t, event.index))
    final = sim.snapshot("final", last.t, last.index)

Time.  ``apply(event)`` first lets ksmd run every wake-up due strictly before
``event.t``, then applies the event.  Events that share a ``t`` form one
instant: ksmd never runs between them.  A wake-up due at exactly ``t`` runs
after the instant at ``t`` (order key ``(t, priority, seq)`` with events at
priority 0 and ksmd at priority 1).  When ``run`` becomes 1, or the first mm
registers while ``run`` is 1, ksmd wakes at once, i.e. right after the current
instant.  The final snapshot is taken right after the last event: no wake-up
due at the last ``t`` runs before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ksmreplay.ksm.kernels import DEFAULT_KERNEL
from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.report import Explain, KsmdWork, Pinned, Refusal, Snap
from ksmreplay.trace.events import Event, WriteRun
from ksmreplay.tracepoints import Sink
from ksmreplay.traps import Trap


class Simulator(Protocol):
    """What the driver needs from one mode's engine."""

    mode: str

    def apply(self, event: Event) -> None:
        """Advance ksmd to ``event.t`` (wake-ups strictly before it), then apply ``event``."""

    def apply_writes(self, run: WriteRun) -> None:
        """The same as ``apply`` on every event of ``run.events()``, in one call."""

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        """The statistics now, as REPORT_FORMAT.md's SNAP (a fresh dict, never shared)."""

    def explain(self) -> Explain:
        """Why pages are (not) merged now: REPORT_FORMAT.md's ``SNAP.explain``
        (asked for right after ``snapshot``, only with ``run --explain``)."""

    def trace(self, sink: Sink) -> None:
        """Hand the KSM tracepoint events to ``sink`` from now on (only with
        ``run --tracepoints``: ``tracepoints.py``)."""

    @property
    def settings(self) -> dict[str, KnobValue | None]:
        """Every knob's value now (all knobs, not only those the trace set; None
        for a knob the kernel version does not have)."""

    @property
    def refused(self) -> list[Refusal]:
        """``ksm`` writes Linux refused, in trace order."""

    @property
    def pinned(self) -> list[Pinned]:
        """The knobs pinned (``run --pin``), each with the trace's writes it ignored."""

    def traps(self, final: bool = False) -> list[Trap]:
        """The warnings found since the last call (``final``: at the end of the
        trace, with those about the whole replay)."""

    @property
    def ksmd_work(self) -> KsmdWork:
        """ksmd's modelled work so far: visits, wake-ups in trace time, CPU time (ns)
        of those and of ``settle`` scans."""

    def check_invariants(self) -> None:
        """Raise :class:`ksmreplay.errors.InvariantError` if the state is inconsistent."""


def make_simulator(
    mode: str,
    page_size: int,
    settings: Mapping[str, KnobValue] | None = None,
    pins: Mapping[str, KnobValue] | None = None,
    kernel: str = DEFAULT_KERNEL,
) -> Simulator:
    """Build the engine for ``mode`` (``legacy``, ``v6`` or ``unshare``) on ``kernel``.

    ``settings`` overrides Linux's default knob values before the first event
    (the CLI's ``--set``); the trace's own ``ksm`` events still apply later.
    ``pins`` (``--pin``) does too, and the knobs it names then keep their
    values: the trace's writes of them are ignored (and listed).  Both are
    written as the trace's ``ksm`` events write knobs, side effects included.
    ``kernel`` is a version of ``kernels.KERNELS`` (``6.1``, ``6.12``, ``6.18``).
    """
    from ksmreplay.engine import Engine

    return Engine(mode, page_size, settings, kernel, pins=pins)
