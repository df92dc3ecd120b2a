"""Generate ``traces/demo.msgpack``, the trace ``make demo`` replays.

Usage: ``python traces/make_demo.py [OUTPUT]`` (default: ``demo.msgpack`` beside
this script).  The output is deterministic; a test checks that the bundled file
is exactly what this script writes.

The story (page size 4096, use_zero_pages=1):

* pid 1 and pid 2 are two virtual machines of 32 pages each, madvised
  mergeable: 16 pages of one shared guest image, 8 zero-filled pages, 8 pages
  of their own;
* pid 3 is a container that turns on merge_any with prctl: 8 pages of the same
  image, 4 zero-filled pages, 2 of its own, and 2 pages it only reads (they
  map the zero page by a read fault, which KSM does not count);
* ksmd runs, the trace settles and takes the snapshot ``merged``;
* pid 2 says MADV_UNMERGEABLE on all its memory: the unshare mode turns its 8
  KSM-placed zero pages back into private pages, the legacy mode leaves them
  mapped to the zero page and uncounted;
* pid 1 writes into one KSM page and one KSM-placed zero page (two copy-on-write
  breaks), and the trace settles again before the final state.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import BinaryIO

from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import Header

PAGE = 4096
MS = 1_000_000  # trace time is in nanoseconds

VM_BASE = 0x7F0000000000
CONTAINER_BASE = 0x7F4000000000
VM_PAGES = 32
CONTAINER_PAGES = 16

IMAGE = [0x1000 + i for i in range(16)]
"""Fingerprints of the pages every guest holds (say, a shared kernel image)."""


def _own(pid: int, n: int) -> list[int]:
    """``n`` fingerprints that only process ``pid`` holds."""
    return [(pid << 20) + 0x100 + i for i in range(n)]


def write_demo(stream: BinaryIO) -> None:
    """Write the demo trace to a binary stream."""
    header = Header(
        page_size=PAGE,
        description="two VMs and a container under KSM with use_zero_pages=1; one VM unmerges",
        meta={"generator": "traces/make_demo.py"},
    )
    w = TraceWriter(stream, header)
    w.ksm(0, {"use_zero_pages": 1, "pages_to_scan": 1000})

    for pid in (1, 2):
        w.alloc(0, pid, VM_BASE, VM_PAGES * PAGE)
        w.write(0, pid, VM_BASE, VM_PAGES * PAGE, IMAGE + [0] * 8 + _own(pid, 8))
        w.madvise(0, pid, VM_BASE, VM_PAGES * PAGE, "mergeable")

    w.prctl(0, 3, True)
    w.alloc(0, 3, CONTAINER_BASE, CONTAINER_PAGES * PAGE)
    w.write(0, 3, CONTAINER_BASE, 14 * PAGE, IMAGE[:8] + [0] * 4 + _own(3, 2))
    w.read(0, 3, CONTAINER_BASE + 14 * PAGE, 2 * PAGE)

    w.ksm(1 * MS, {"run": 1})
    w.settle(1 * MS)
    w.snapshot(1 * MS, "merged")

    w.madvise(2 * MS, 2, VM_BASE, VM_PAGES * PAGE, "unmergeable")
    w.write(3 * MS, 1, VM_BASE, PAGE, 0xDEADBEEF)  # a KSM page: copy on write
    w.write(3 * MS, 1, VM_BASE + 16 * PAGE, PAGE, 0xC0FFEE)  # a KSM zero page
    w.settle(4 * MS)


def build() -> bytes:
    """The bytes of the demo trace."""
    out = io.BytesIO()
    write_demo(out)
    return out.getvalue()


def main(argv: list[str]) -> None:
    target = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("demo.msgpack")
    target.write_bytes(build())


if __name__ == "__main__":
    main(sys.argv)
