"""Four small processes that hold pages in common: the program ``recorded-family.msgpack`` records.

Run as ``python3 traces/recorded_family.py`` (``traces/README.md`` has the
``ksmreplay record`` command).  The first process forks three more; each maps
4 MiB of private anonymous memory and fills it: 20 % of its pages zeros, 40 %
pages every process holds (made from one seed, as guests booted from one image
hold the same kernel and libraries), the rest its own.  Then, for 2 s, each
rewrites 50 of its own pages every 100 ms (one in ten with zeros), as a guest
at work dirties its memory; then all wait 1 s and exit.  The stand-in for a few
small guests where a hypervisor is not at hand: it is small, quick and shows
merging between processes.
"""

from __future__ import annotations

import mmap
import os
import random
import sys
import time

PAGE = mmap.PAGESIZE
PAGES = (4 << 20) // PAGE
PROCESSES = 4
ZEROS = PAGES * 20 // 100
COMMON = PAGES * 40 // 100
DIRTY_EVERY_S = 0.1
DIRTY_PAGES = 50
DIRTY_S = 2.0
IDLE_S = 1.0


def fill(k: int) -> tuple[mmap.mmap, list[int], random.Random]:
    """Process ``k``'s memory, filled; its own pages (page numbers); its random source."""
    rng = random.Random(100 + k)
    common = random.Random(7)
    area = mmap.mmap(-1, PAGES * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    order = list(range(PAGES))
    rng.shuffle(order)
    for i, page in enumerate(order):
        if i < ZEROS:
            area[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
        elif i < ZEROS + COMMON:
            area[page * PAGE : (page + 1) * PAGE] = common.randbytes(PAGE)
        else:
            area[page * PAGE : (page + 1) * PAGE] = rng.randbytes(PAGE)
    return area, order[ZEROS + COMMON :], rng


def work(k: int) -> None:
    """Fill process ``k``'s memory, dirty it for DIRTY_S, idle for IDLE_S."""
    area, own, rng = fill(k)
    end = time.monotonic() + DIRTY_S
    while time.monotonic() < end:
        for page in rng.sample(own, DIRTY_PAGES):
            new = bytes(PAGE) if rng.random() < 0.1 else rng.randbytes(PAGE)
            area[page * PAGE : (page + 1) * PAGE] = new
        time.sleep(DIRTY_EVERY_S)
    time.sleep(IDLE_S)
    area.close()


def main() -> None:
    children = []
    for k in range(1, PROCESSES):
        pid = os.fork()
        if pid == 0:
            work(k)
            os._exit(0)
        children.append(pid)
    work(0)
    for pid in children:
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
