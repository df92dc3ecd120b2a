"""Measure how fast ksmreplay reads traces and simulates ksmd.

Usage: ``python bench/run.py [--runs N] [--events N] [--pages N]``

* ``read``: decode and validate a generated trace of N fingerprint writes
  (default 1,000,000); events per second.
* ``replay`` (only when the engine exists): replay a generated steady-state
  trace of N mergeable pages (default 200,000) in the unshare mode; simulated
  page visits (``pages_scanned``) per second.

Each measurement runs in a fresh child process, so its peak RSS
(``ru_maxrss``) is its own; the table shows the median of ``--runs`` runs
(default 5) and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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


def make_replay_trace(path: Path, pages: int) -> None:
    """Four processes sharing ``pages`` pages in all, half of them identical across
    processes; ksmd settles, then scans the unchanging memory for one second of trace
    time (20,000 pages per 20 ms wake-up)."""
    from ksmreplay.trace import TraceWriter

    procs = 4
    per = pages // procs
    with path.open("wb") as f:
        w = TraceWriter(f)
        w.ksm(0, {"pages_to_scan": 20000, "sleep_millisecs": 20})
        for pid in range(1, procs + 1):
            w.alloc(0, pid, BASE, per * PAGE)
            fps = [1 + j if j % 2 == 0 else (pid << 32) + j for j in range(per)]
            w.write(0, pid, BASE, per * PAGE, fps)
            w.madvise(0, pid, BASE, per * PAGE, "mergeable")
        w.ksm(1_000_000, {"run": 1})
        w.settle(1_000_000)
        w.snapshot(1_000_000, "settled")
        w.read(1_001_000_000, 1, BASE, PAGE)


def child(kind: str, path: str) -> None:
    """Run one measurement in this process and print it as JSON."""
    from ksmreplay.trace import open_trace

    start = time.perf_counter()
    if kind == "read":
        with open_trace(path) as reader:
            count = sum(1 for _ in reader)
    else:
        from ksmreplay.replay import replay

        with open_trace(path) as reader:
            report = replay(reader, ["unshare"])
        count = report["runs"][0]["final"]["ksm"]["pages_scanned"]
    seconds = time.perf_counter() - start
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"count": count, "seconds": seconds, "maxrss_kib": maxrss_kib}))


def measure(kind: str, path: Path, runs: int) -> dict[str, Any]:
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
    rates = [r["count"] / r["seconds"] for r in results]
    return {
        "count": results[0]["count"],
        "rate": statistics.median(rates),
        "seconds": statistics.median(r["seconds"] for r in results),
        "maxrss_mib": max(r["maxrss_kib"] for r in results) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the read trace")
    parser.add_argument("--pages", type=int, default=200_000, help="pages of the replay trace")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from ksmreplay.render import plain_table

    rows = []
    with tempfile.TemporaryDirectory(prefix="ksmreplay-bench-") as tmp:
        read_path = Path(tmp) / "writes.msgpack"
        make_read_trace(read_path, args.events)
        size_mb = read_path.stat().st_size / 1e6
        r = measure("read", read_path, args.runs)
        rows.append(
            [
                f"read+validate {args.events:,} events ({size_mb:.1f} MB)",
                f"{r['rate']:,.0f} events/s",
                f"{r['seconds']:.2f}",
                f"{r['maxrss_mib']:.0f}",
            ]
        )
        if importlib.util.find_spec("ksmreplay.engine") is None:
            rows.append([f"replay {args.pages:,} pages", "skipped: no engine yet", "", ""])
        else:
            replay_path = Path(tmp) / "steady.msgpack"
            make_replay_trace(replay_path, args.pages)
            r = measure("replay", replay_path, args.runs)
            rows.append(
                [
                    f"replay {args.pages:,} pages, unshare ({r['count']:,} visits)",
                    f"{r['rate']:,.0f} visits/s",
                    f"{r['seconds']:.2f}",
                    f"{r['maxrss_mib']:.0f}",
                ]
            )
    print(f"median of {args.runs} runs, each in a fresh process (Python {sys.version.split()[0]})")
    print(plain_table(["benchmark", "rate", "seconds", "peak RSS MiB"], rows, "lrrr"))


if __name__ == "__main__":
    main()
