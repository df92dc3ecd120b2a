"""Warnings about traps in a replay: results that are right but probably not what was meant.

A replay is exact whatever the trace and options say, but some combinations
make its answer useless without failing: a ``--set`` knob the trace writes
over, a ``settle`` cut short by its ``max_full_scans`` while ksmd still had
work to do, a ``settle`` or a whole trace with ksmd stopped, a trace larger
than the memory this machine can give the replay.  The engine notes each
as a :class:`Trap`; the driver merges the traps of the modes replayed side by
side (one line when every mode has it, else one naming the modes); the
command line prints them on standard error.  Traps are never part of the
report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SET_OVERWRITTEN = "set-overwritten"
"""A ``--set`` knob changed by one of the trace's ``ksm`` events."""

SETTLE_LIMIT = "settle-limit"
"""A ``settle`` stopped by its ``max_full_scans`` before it converged."""

SETTLE_STOPPED = "settle-stopped"
"""A ``settle`` while ``run`` is not 1: it does nothing."""

NEVER_RAN = "never-ran"
"""``run`` was never 1 in the whole replay: nothing can merge."""

PIN_ADVISOR = "pin-advisor"
"""The trace turns the scan-time advisor on while ``pages_to_scan`` is pinned."""

MEMORY = "memory"
"""The trace is likely to need more memory than the replay may take."""


@dataclass(frozen=True, slots=True)
class Trap:
    """One warning: its kind (one of the names above) and its one-line text."""

    kind: str
    text: str


def merge(per_mode: Sequence[tuple[str, Sequence[Trap]]]) -> list[Trap]:
    """The traps of several modes at one point of the replay, each once.

    A trap every mode has is given as it is; one that only some modes have
    names them first (``[legacy, v6] ...``).  The order is that of the first
    mode that has each.

    :param per_mode: ``(mode, traps)`` for every mode replayed, in report order.
    """
    modes: dict[Trap, list[str]] = {}
    for mode, traps in per_mode:
        for trap in traps:
            having = modes.setdefault(trap, [])
            if mode not in having:
                having.append(mode)
    return [
        trap
        if len(having) == len(per_mode)
        else Trap(trap.kind, f"[{', '.join(having)}] {trap.text}")
        for trap, having in modes.items()
    ]
