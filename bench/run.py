"""Measure how fast ksmreplay reads traces and simulates ksmd.

Usage: ``python bench/run.py [--runs N] [--events N] [--pages N] [--only NAME ...]``

Every trace is generated here, deterministically, into a temporary directory:

* ``read``: decode and validate N fingerprint writes (default 1,000,000);
  events per second.
* ``steady``: N mergeable pages (default 200,000) in 4 processes, 1,000
  distinct contents, already merged (a ``settle`` before the timed part); the
  timed part is one second of trace time in which ksmd wakes every 20 ms and
  scans a whole pass per wake-up (``pages_to_scan`` = N).
* ``merge``: the same pages, from ksmd's first pass until settled (the
  ``settle`` itself is timed).
* ``distinct``: N all-different pages, settled (checksums, the unstable
  tree; nothing merges).
* ``zero``: N zero-filled pages with ``use_zero_pages=1``, settled.

Figures: simulated page visits (``pages_scanned`` during the timed part) per
second of the timed part; trace events per second of the whole run
(decoding included); peak RSS; and bytes of peak RSS per simulated page above
the RSS of the process before the trace was read.  Each measurement runs in
a fresh child process, so its peak RSS (``ru_maxrss``) is its own; the table
shows medians of ``--runs`` runs (default 5) and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAGE = 4096
BASE = 0x7F0000000000
PROCS = 4
SECOND = 1_000_000_000
START, END = "bench-start", "bench-end"
"""Labels of the snapshot events around the timed part of a replay trace."""

REPLAYS = ("steady", "merge", "distinct", "zero")


def make_read_trace(path: Path, events: int) -> None:
    """``events`` one-page fingerprint writes cycling over 1024 mergeable pages."""
    from ksmreplay.trace import TraceWriter

    pages = 1024
    with path.open("wb") as f:
        w = TraceWriter(f)
        w.alloc(0, 1, BASE, pages * PAGE)
        w.madvise(0, 1, BASE, pages * PAGE, "mergeable")
        for i in range(events - 2):
            w.write(i * 1000, 1, BASE + (i % pages) * PAGE, PAGE, (i * 2654435761) % 2**32 + 1)


def make_replay_trace(path: Path, kind: str, pages: int) -> None:
    """One of the replay traces (see the module docstring), ``pages`` pages in all."""
    from ksmreplay.trace import TraceWriter

    per = pages // PROCS
    knobs: dict[str, int] = {"pages_to_scan": max(pages, 1), "sleep_millisecs": 20}
    if kind == "zero":
        knobs["use_zero_pages"] = 1
    with path.open("wb") as f:
        w = TraceWriter(f)
        w.ksm(0, knobs)
        for p in range(PROCS):
            pid = p + 1
            first = p * per
            if kind in ("steady", "merge"):
                fps = [1 + (first + j) % 1000 for j in range(per)]
            elif kind == "distinct":
                fps = [1 + first + j for j in range(per)]
            else:
                fps = [0] * per
            w.alloc(0, pid, BASE, per * PAGE)
            w.write(0, pid, BASE, per * PAGE, fps)
            w.madvise(0, pid, BASE, per * PAGE, "mergeable")
        t = SECOND
        w.ksm(t, {"run": 1})
        if kind == "steady":
            # Settle untimed, then one second of wake-ups, each a whole pass.
            w.settle(t)
            w.snapshot(t, START)
            w.snapshot(2 * SECOND, END)
        else:
            w.snapshot(t, START)
            w.settle(t)
            w.snapshot(t, END)


def child(kind: str, path: str) -> None:
    """Run one measurement in this process and print it as JSON."""
    from ksmreplay.trace import open_trace, read_trace

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "read":
        with open_trace(path) as reader:
            count = events = sum(1 for _ in reader)
        timed = time.perf_counter() - start
        total = timed
    else:
        from ksmreplay.events import Snapshot
        from ksmreplay.simulator import make_simulator

        header, evs = read_trace(path)
        sim = make_simulator("unshare", header.page_size, None)
        marks: dict[str, tuple[float, int]] = {}
        for ev in evs:
            sim.apply(ev)
            if isinstance(ev, Snapshot) and ev.label in (START, END):
                snap = sim.snapshot(ev.label, ev.t, ev.index)
                marks[ev.label] = (time.perf_counter(), int(snap["ksm"]["pages_scanned"]))
        total = time.perf_counter() - start
        timed = marks[END][0] - marks[START][0]
        count = marks[END][1] - marks[START][1]
        events = len(evs)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "count": count,
                "timed": timed,
                "events": events,
                "total": total,
                "maxrss_kib": maxrss_kib,
                "base_kib": base_kib,
            }
        )
    )


def measure(kind: str, path: Path, runs: int, pages: int) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"bench: the {kind} measurement failed:\n{done.stderr}")
        results.append(json.loads(done.stdout))
    peak = max(r["maxrss_kib"] for r in results)
    grown = statistics.median(r["maxrss_kib"] - r["base_kib"] for r in results)
    return {
        "count": results[0]["count"],
        "rate": statistics.median(r["count"] / r["timed"] for r in results),
        "events_rate": statistics.median(r["events"] / r["total"] for r in results),
        "events": results[0]["events"],
        "seconds": statistics.median(r["total"] for r in results),
        "maxrss_mib": peak / 1024,
        "per_page": grown * 1024 / pages if pages else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the read trace")
    parser.add_argument("--pages", type=int, default=200_000, help="pages of the replay traces")
    parser.add_argument(
        "--only", nargs="+", choices=("read", *REPLAYS), help="run only these measurements"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from ksmreplay.render import plain_table

    kinds = args.only or ("read", *REPLAYS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ksmreplay-bench-") as tmp:
        for kind in kinds:
            path = Path(tmp) / f"{kind}.msgpack"
            if kind == "read":
                make_read_trace(path, args.events)
                name = f"read-{args.events // 1000}k"
            else:
                make_replay_trace(path, kind, args.pages)
                name = f"{kind}-{args.pages // 1000}k"
            r = measure(kind, path, args.runs, 0 if kind == "read" else args.pages)
            rows.append(
                [
                    name,
                    "" if kind == "read" else f"{r['count']:,}",
                    "" if kind == "read" else f"{r['rate']:,.0f}",
                    f"{r['events_rate']:,.0f}",
                    f"{r['seconds']:.2f}",
                    f"{r['maxrss_mib']:.0f}",
                    "" if r["per_page"] is None else f"{r['per_page']:.0f}",
                ]
            )
    print(
        f"median of {args.runs} runs, each in a fresh process "
        f"(Python {platform.python_version()}, {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs)"
    )
    print(
        plain_table(
            ["trace", "visits", "visits/s", "events/s", "seconds", "peak RSS MiB", "bytes/page"],
            rows,
            "lrrrrrr",
        )
    )


if __name__ == "__main__":
    main()
