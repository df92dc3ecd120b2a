"""Write the timed scenarios of this directory (``NAME.jsonl``).

    .venv/bin/python tests/scenarios/timed/make_timed.py

Each is one process with N distinct mergeable pages (fingerprints 1 to N),
ksmd started at t = 0 with the scenario's knobs, and snapshots at set times
of trace time: what ksmd's clock decides (how many batches and passes fit)
and nothing else.  Their answers are spreads over many live replays
(``NAME.kernel-spread.json``, written by ``tests/record_kernel.py --spread``).
The test suite checks that this script and the files agree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = 4096
ADDR = 0x10000
MS = 1_000_000

ADVISOR = {
    "advisor_min_pages_to_scan": 10000,
    "advisor_max_pages_to_scan": 1000,
    "advisor_max_cpu": 5000,
    "advisor_target_scan_time": 1,
}
"""Advisor knobs under which every evaluation gives advisor_max_pages_to_scan,
whatever ksmd's CPU time before the trace (which the first evaluation reads)."""

SCENARIOS: dict[str, tuple[str, int, Mapping[str, object], Sequence[int]]] = {
    # name: (description, pages, knobs, snapshot times in ms)
    **{
        f"sleep0_n{n}": (
            f"sleep_millisecs 0: ksmd scans back to back, {n} pages, pages_to_scan 100",
            n,
            {"sleep_millisecs": 0, "pages_to_scan": 100},
            (5, 10, 20),
        )
        for n in (99, 100, 101, 200)
    },
    "sleep0_n1000_smart": (
        "sleep_millisecs 0 with smart_scan: most passes skip most of the 1000 pages",
        1000,
        {"sleep_millisecs": 0, "pages_to_scan": 100, "smart_scan": 1},
        (10, 50, 100),
    ),
    "sleep0_n1000_nosmart": (
        "sleep_millisecs 0 without smart_scan: every pass visits the 1000 pages",
        1000,
        {"sleep_millisecs": 0, "pages_to_scan": 100, "smart_scan": 0},
        (10, 50, 100),
    ),
    "sleep1_n250": (
        "sleep_millisecs 1: rounded up to a jiffy, the timer fires on the tick after",
        250,
        {"sleep_millisecs": 1, "pages_to_scan": 100},
        (40, 100, 200),
    ),
    "sleep4_n250": (
        "sleep_millisecs 4: one jiffy, the timer fires on the tick after",
        250,
        {"sleep_millisecs": 4, "pages_to_scan": 100},
        (40, 100, 200),
    ),
    **{
        f"sleep20_n{n}": (
            f"sleep_millisecs 20 (the default), {n} pages, pages_to_scan 100: "
            f"a pass of {n // 100 + 1} batches",
            n,
            {"sleep_millisecs": 20, "pages_to_scan": 100},
            (100, 250, 500, 1000),
        )
        for n in (199, 200, 201)
    },
    "sleep100_n250": (
        "sleep_millisecs 100: 25 jiffies, the timer fires on the tick after",
        250,
        {"sleep_millisecs": 100, "pages_to_scan": 100},
        (300, 600, 1200),
    ),
    "advisor_n15000": (
        "the scan-time advisor: pages_to_scan 10000 for the first pass (two batches of "
        "up to 10000 visits), then 1000 at every pass end",
        15000,
        {"sleep_millisecs": 20, "advisor_mode": "scan-time", **ADVISOR},
        (200, 500, 1000, 2000),
    ),
}


def lines(
    description: str, pages: int, knobs: Mapping[str, object], times: Sequence[int]
) -> list[object]:
    length = pages * PAGE
    settings = {k: v for k, v in knobs.items() if k != "advisor_mode"}
    out: list[object] = [
        {"ksmreplay": 1, "description": description},
        [0, "ksm", settings],
    ]
    if "advisor_mode" in knobs:
        out.append([0, "ksm", {"advisor_mode": knobs["advisor_mode"]}])
    out += [
        [0, "alloc", 1, ADDR, length],
        [0, "write", 1, ADDR, length, list(range(1, pages + 1))],
        [0, "madvise", 1, ADDR, length, "mergeable"],
        [0, "ksm", {"run": 1}],
    ]
    out += [[ms * MS, "snapshot", f"{ms}ms"] for ms in times]
    return out


def text(name: str) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines(*SCENARIOS[name]))


def main() -> int:
    for name in SCENARIOS:
        (HERE / f"{name}.jsonl").write_text(text(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
