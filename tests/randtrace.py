"""Random valid traces for property tests (small address spaces, many collisions)."""

from __future__ import annotations

import random

import numpy as np

from ksmreplay.trace.events import (
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


def large_random_trace(seed: int, n_events: int = 25) -> list[Event]:
    """A valid trace with mappings of hundreds of pages and up to 5,000 contents.

    Big enough that one batch spans several page-table chunks and creates many
    KSM pages at once (the engine's bulk paths); small enough for the
    reference model.
    """
    rng = random.Random(seed)
    events: list[Event] = []
    t = 0
    contents = rng.choice([3, 50, 700, 5000])

    def fingerprints(n: int) -> np.ndarray:
        return np.array([rng.randrange(contents) for _ in range(n)], np.uint64)

    events.append(
        Ksm(
            1,
            0,
            {
                "run": 1,
                "pages_to_scan": rng.choice([100, 700, 5000]),
                "sleep_millisecs": rng.choice([10, 20]),
                "use_zero_pages": rng.choice([0, 1]),
                "max_page_sharing": rng.choice([2, 5, 256]),
                "smart_scan": rng.choice([0, 1]),
            },
        )
    )
    procs: dict[int, tuple[int, int]] = {}
    next_pid = 1
    for _ in range(rng.randint(1, 3)):
        n, start = rng.randint(300, 1500), rng.randint(0, 600)
        procs[next_pid] = (start, n)
        addr = BASE + start * PAGE
        events.append(Alloc(len(events) + 1, t, next_pid, addr, n * PAGE))
        events.append(Write(len(events) + 1, t, next_pid, addr, n * PAGE, fingerprints(n)))
        events.append(Madvise(len(events) + 1, t, next_pid, addr, n * PAGE, "mergeable"))
        next_pid += 1
    for _ in range(n_events):
        t += rng.choice([0, 5_000_000, 30_000_000, 100_000_000])
        idx = len(events) + 1
        pid = rng.choice(sorted(procs))
        start, n = procs[pid]
        lo = start + rng.randrange(n)
        k = rng.randint(1, start + n - lo)
        addr, length = BASE + lo * PAGE, k * PAGE
        r = rng.random()
        if r < 0.4:
            events.append(Write(idx, t, pid, addr, length, fingerprints(k)))
        elif r < 0.5:
            events.append(Madvise(idx, t, pid, addr, length, "dontneed"))
        elif r < 0.58 and len(procs) < 5:
            events.append(Fork(idx, t, pid, next_pid))
            procs[next_pid] = procs[pid]
            next_pid += 1
        elif r < 0.63 and len(procs) > 1:
            events.append(Exit(idx, t, pid))
            del procs[pid]
        elif r < 0.7:
            advice = rng.choice(["unmergeable", "mergeable"])
            events.append(Madvise(idx, t, pid, addr, length, advice))
        elif r < 0.75:
            knob = rng.choice(
                [{"max_page_sharing": rng.choice([2, 5, 256])}, {"use_zero_pages": 1}]
            )
            events.append(Ksm(idx, t, knob))
        elif r < 0.9:
            events.append(Settle(idx, t, 10))
        else:
            events.append(Read(idx, t, pid, addr, length))
    return events
