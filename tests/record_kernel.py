"""Record the live kernel's answer to the traces of a directory (needs root and KSM).

    .venv/bin/python tests/record_kernel.py DIR [--runs N] [NAME ...]
    .venv/bin/python tests/record_kernel.py DIR --spread N [NAME ...]

For the scenarios (``tests/scenarios``), the ported selftests
(``tests/selftests``) and the golden cases (``tests/cases``).  Replays each
4 KiB ``NAME.jsonl`` of DIR (or only the NAMEs given) on the running kernel
``--runs`` times (default 2) through ``ksmreplay.live.execute``, which holds
the live-kernel lock and restores KSM afterwards; refuses to record a trace
whose reports differ between runs; and writes ``NAME.kernel.json`` with the
trace path normalised to the file name.  Traces of other page sizes cannot run
on this kernel and are skipped.

With ``--spread N`` (the timed scenarios, ``tests/scenarios/timed``, whose
answers depend on how fast ksmd runs) each trace is replayed N times and
``NAME.kernel-spread.json`` records, at every snapshot, every run's
``full_scans`` and ``pages_scanned`` with their median and 10th and 90th
percentiles (``kernel_answer.spread_of``), and alike ksmd's CPU time and the
real time since the replay started.  Before each replay it waits
until no other process has mergeable memory: ksmd would scan that too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from kernel_answer import SPREAD_VERSION, spread_of

from ksmreplay.live import execute
from ksmreplay.live.kernel import exclusive_lock, free_leftover_items, mergeable_processes
from ksmreplay.trace import open_trace

ALONE_TIMEOUT_S = 7200.0
"""Longest wait for other processes' mergeable memory to go (seconds)."""


def live_names(directory: Path) -> list[str]:
    """The traces of ``directory`` that the live kernel can run (4 KiB pages)."""
    names = []
    for path in sorted(directory.glob("*.jsonl")):
        with open_trace(str(path)) as reader:
            if reader.header.page_size == 4096:
                names.append(path.name[: -len(".jsonl")])
    return names


def replay(directory: Path, name: str, clock: bool = False) -> dict[str, Any]:
    with open_trace(str(directory / f"{name}.jsonl")) as reader:
        report: dict[str, Any] = dict(execute(reader, ksmd_clock=clock))
    report["trace"]["path"] = f"{name}.jsonl"
    return report


def wait_alone() -> None:
    """Wait until no other process of the machine has mergeable memory."""
    deadline = time.monotonic() + ALONE_TIMEOUT_S
    said = False
    while others := mergeable_processes():
        if time.monotonic() > deadline:
            raise SystemExit(f"other processes keep mergeable memory: {others}")
        if not said:
            print(f"waiting for {others} to end", flush=True)
            said = True
        time.sleep(5)


def record_spread(directory: Path, name: str, runs: int) -> None:
    reports: list[dict[str, Any]] = []
    while len(reports) < runs:
        wait_alone()
        with exclusive_lock(timeout=ALONE_TIMEOUT_S):  # (others replay live too)
            if mergeable_processes():
                continue
            free_leftover_items()
            report = replay(directory, name, clock=True)["runs"][0]
        if not mergeable_processes():  # (else it came while the replay ran: again)
            reports.append(report)
    spread = {
        "spread": SPREAD_VERSION,
        "trace": f"{name}.jsonl",
        "kernel": reports[0]["kernel"],
        "runs": runs,
        "snapshots": spread_of(reports),
    }
    (directory / f"{name}.kernel-spread.json").write_text(json.dumps(spread, indent=1) + "\n")
    print(f"{name}: {runs} runs", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--spread", type=int, default=0, metavar="N")
    parser.add_argument("names", nargs="*")
    args = parser.parse_intermixed_args()
    unstable = []
    directory: Path = args.dir
    if args.spread:
        for name in args.names or live_names(directory):
            record_spread(directory, name, args.spread)
        return 0
    for name in args.names or live_names(directory):
        reports = [replay(directory, name) for _ in range(args.runs)]
        same = len({json.dumps(r, sort_keys=True) for r in reports}) == 1
        print(f"{name}: {'ok' if same else 'NOT REPRODUCIBLE'}", flush=True)
        if same:
            (directory / f"{name}.kernel.json").write_text(json.dumps(reports[0], indent=1) + "\n")
        else:
            unstable.append(name)
    return 1 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
