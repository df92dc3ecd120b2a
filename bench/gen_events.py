"""Generate a large synthetic trace of fingerprint-list writes (for timing the reader).

Usage: ``python bench/gen_events.py OUT [--events N] [--pages-per-write K] [--processes P]``

Each process maps one region; the trace is then ``write`` events of ``K`` pages
each, with fingerprint lists drawn from a small pool so that pages repeat, a
``ksm`` event turning ksmd on, ``madvise`` making the regions mergeable, and
a ``snapshot`` at the end.  ``N`` counts every event after the header.
"""

from __future__ import annotations

import argparse
import random

from ksmreplay.trace import TraceWriter, form_for_path
from ksmreplay.trace.events import Header


def generate(
    path: str, events: int, pages_per_write: int = 4, processes: int = 8, seed: int = 1
) -> None:
    """Write a trace of ``events`` events to ``path`` (form from the suffix, else msgpack)."""
    rng = random.Random(seed)
    page = 4096
    region_pages = 1 << 16
    region = region_pages * page
    base = 0x7F0000000000
    with open(path, "wb") as stream:
        writer = TraceWriter(
            stream,
            Header(description="bench: fingerprint writes"),
            form_for_path(path) or "msgpack",
        )
        t = 0
        writer.ksm(t, {"run": 1, "pages_to_scan": 1000})
        for pid in range(1, processes + 1):
            writer.alloc(t, pid, base, region)
            writer.madvise(t, pid, base, region, "mergeable")
        written = 1 + 2 * processes
        slots = region_pages // pages_per_write
        while written < events - 1:
            t += 1000
            pid = rng.randrange(1, processes + 1)
            addr = base + rng.randrange(slots) * pages_per_write * page
            fps = [rng.randrange(1, 5000) for _ in range(pages_per_write)]
            writer.write(t, pid, addr, pages_per_write * page, fps)
            written += 1
        writer.snapshot(t, "end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--pages-per-write", type=int, default=4)
    parser.add_argument("--processes", type=int, default=8)
    args = parser.parse_args()
    generate(args.out, args.events, args.pages_per_write, args.processes)


if __name__ == "__main__":
    main()
