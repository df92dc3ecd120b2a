"""Random valid traces for property tests (small address spaces, many collisions)."""

from __future__ import annotations

import random

import numpy as np

from ksmreplay.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Prctl,
    Read,
    Settle,
    Snapshot,
    Write,
)

PAGE = 4096
BASE = 0x10000000


def random_trace(seed: int, n_events: int = 60, max_pages: int = 24) -> list[Event]:
    """A valid trace: a few processes, small mappings, few distinct contents."""
    rng = random.Random(seed)
    events: list[Event] = []
    t = 0
    maps: dict[int, list[tuple[int, int]]] = {}  # pid -> [(first page, pages)]
    next_pid = 1

    def emit(ev: Event) -> None:
        events.append(ev)

    knobs = {
        "run": 1,
        "pages_to_scan": rng.choice([5, 17, 100, 1000]),
        "sleep_millisecs": rng.choice([10, 20, 100]),
        "use_zero_pages": rng.choice([0, 1]),
        "max_page_sharing": rng.choice([2, 3, 256]),
        "smart_scan": rng.choice([0, 1]),
        "stable_node_chains_prune_millisecs": rng.choice([0, 2000]),
    }
    emit(Ksm(1, 0, knobs))
    for _ in range(n_events):
        idx = len(events) + 1
        t += rng.choice([0, 0, 1_000_000, 7_000_000, 20_000_000, 50_000_000])
        pids = sorted(maps)
        op = rng.random()
        if not pids or (op < 0.12 and len(pids) < 4):
            pid = next_pid
            next_pid += 1
            maps[pid] = []
            npages = rng.randint(1, max_pages)
            start = rng.randint(0, 64)
            emit(Alloc(idx, t, pid, BASE + start * PAGE, npages * PAGE))
            maps[pid].append((start, npages))
            continue
        pid = rng.choice(pids)
        if not maps[pid]:
            start = rng.randint(0, 64)
            npages = rng.randint(1, max_pages)
            emit(Alloc(idx, t, pid, BASE + start * PAGE, npages * PAGE))
            maps[pid].append((start, npages))
            continue
        first, npages = rng.choice(maps[pid])
        lo = first + rng.randrange(npages)
        n = rng.randint(1, first + npages - lo)
        addr, length = BASE + lo * PAGE, n * PAGE
        if op < 0.45:
            kind = rng.random()
            if kind < 0.5:
                content: int | np.ndarray | bytes = rng.choice([0, 0, 1, 2, 3])
            elif kind < 0.9:
                content = np.array([rng.choice([0, 1, 2, 3]) for _ in range(n)], np.uint64)
            else:
                # 8 literal bytes inside the range, possibly across a page boundary.
                off = rng.randrange(length - 7)
                emit(Write(idx, t, pid, addr + off, 8, bytes([rng.randrange(3)]) * 8))
                continue
            emit(Write(idx, t, pid, addr, length, content))
        elif op < 0.52:
            emit(Read(idx, t, pid, addr, length))
        elif op < 0.70:
            emit(
                Madvise(
                    idx,
                    t,
                    pid,
                    addr,
                    length,
                    rng.choice(["mergeable", "mergeable", "unmergeable", "dontneed"]),
                )
            )
        elif op < 0.74:
            emit(Prctl(idx, t, pid, "merge_any", rng.random() < 0.7))
        elif op < 0.79 and len(pids) < 5:
            child = next_pid
            next_pid += 1
            maps[child] = list(maps[pid])
            emit(Fork(idx, t, pid, child))
        elif op < 0.82:
            emit(Exit(idx, t, pid))
            del maps[pid]
        elif op < 0.85:
            emit(Free(idx, t, pid, addr, length))
            maps[pid] = _carve(maps[pid], lo, n)
        elif op < 0.90:
            emit(Settle(idx, t, rng.choice([3, 10])))
        elif op < 0.95:
            emit(
                Ksm(
                    idx,
                    t,
                    rng.choice(
                        [
                            {"run": 2},
                            {"run": 1},
                            {"run": 0},
                            {"use_zero_pages": 1},
                            {"max_page_sharing": 2},
                            {"smart_scan": 0},
                        ]
                    ),
                )
            )
        else:
            emit(Snapshot(idx, t, f"s{idx}"))
    return events


def _carve(ranges: list[tuple[int, int]], lo: int, n: int) -> list[tuple[int, int]]:
    out = []
    for first, npages in ranges:
        end = first + npages
        if end <= lo or first >= lo + n:
            out.append((first, npages))
            continue
        if first < lo:
            out.append((first, lo - first))
        if end > lo + n:
            out.append((lo + n, end - lo - n))
    return out
