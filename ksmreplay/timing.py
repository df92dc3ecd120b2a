"""ksmd's clock: how trace time maps onto wake-ups and batch cost.

Linux sleeps ``msecs_to_jiffies(sleep_millisecs)`` between batches
(``ksm_scan_thread()``); with HZ=250 (the oracle's configuration) a jiffy is
4 ms, so sleeps round up to a multiple of 4 ms.  A timed sleep of N > 0
jiffies ends on the timer tick after N whole jiffies have passed, one jiffy
later than N: measured on the live 6.18 kernel over 2 s of one-page passes,
sleep_millisecs 20, 10 and 100 gave periods of about 24, 16 and 104 ms.
A batch is not free on Linux either: the next sleep starts when it ends.
The simulator charges each visit :data:`VISIT_COST_NS` of ksmd CPU time,
which both delays the next wake-up and feeds the scan-time advisor's CPU
measurement (KSM_MODEL.md section 2.8).
"""

from __future__ import annotations

HZ = 250
"""Timer frequency of the modelled kernel."""

JIFFY_NS = 1_000_000_000 // HZ

VISIT_COST_NS = 400
"""Modelled ksmd CPU time per visit (about 2.5 M visits/s, a steady-state ksmd)."""

MS = 1_000_000


def jiffies_ns(msecs: int) -> int:
    """``msecs`` rounded up to whole jiffies, in nanoseconds (``msecs_to_jiffies()``)."""
    jiffies = -(-msecs * HZ // 1000)
    return jiffies * JIFFY_NS


def batch_cost_ns(visits: int) -> int:
    """Modelled ksmd CPU time of a batch of ``visits`` visits."""
    return visits * VISIT_COST_NS


def sleep_ns(msecs: int) -> int:
    """How long ksmd's timed sleep of ``msecs`` lasts (one jiffy more when not zero)."""
    slept = jiffies_ns(msecs)
    return slept + JIFFY_NS if slept else 0


def next_wake_ns(batch_start: int, visits: int, sleep_millisecs: int) -> int:
    """When ksmd wakes again after a batch that started at ``batch_start``.

    A batch that visited nothing with a zero sleep would spin forever in trace
    time; such a wake-up waits one jiffy instead (Linux would spin on the CPU,
    finding nothing to do, so no counter can tell the difference except
    ``full_scans`` counting empty passes more slowly).
    """
    delay = batch_cost_ns(visits) + sleep_ns(sleep_millisecs)
    return batch_start + (delay if delay > 0 else JIFFY_NS)
