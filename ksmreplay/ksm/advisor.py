"""The scan-time advisor's state (``struct advisor_ctx``); its step at each
pass end is :meth:`~ksmreplay.ksm.ksmd.Ksmd._advise`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Advisor:
    """``struct advisor_ctx`` of the scan-time advisor."""

    start_scan: int = 0
    scan_time: int = 0
    change: int = 0
    cpu_time: int = 0
