"""Random valid traces for property tests (small address spaces, many collisions),
from a seed or drawn by hypothesis, and damaged ones."""

from __future__ import annotations

import dataclasses
import io
import random
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Header,
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


def long_gaps(seed: int, n_events: int = 30) -> list[Event]:
    """A random trace whose gaps hold a few hundred passes, with random clock knobs."""
    rng = random.Random(seed)
    sleep = rng.choice([0, 1, 10])
    knobs: dict[str, KnobValue] = {
        "pages_to_scan": rng.choice([1, 3, 7, 100]),
        "sleep_millisecs": sleep,
    }
    if rng.random() < 0.4:
        knobs["stable_node_chains_prune_millisecs"] = rng.choice([0, 30, 2000])
    if rng.random() < 0.25:
        knobs["advisor_mode"] = "scan-time"
        knobs["advisor_target_scan_time"] = rng.choice([1, 200])
    events = random_trace(seed, n_events=n_events)
    # A pass of these small traces takes microseconds with a zero sleep,
    # else some 10 ms: stretch the gaps (up to 50 ms) to a few hundred passes.
    scale = (1, 10) if sleep == 0 else (100, 1)
    events = [dataclasses.replace(e, t=e.t * scale[0] // scale[1]) for e in events]
    first = events[0]
    assert isinstance(first, Ksm)
    events[0] = dataclasses.replace(first, settings={**first.settings, **knobs})
    return events


# -- hypothesis strategies: valid traces of every event kind, and damaged ones -------

SLOT_PAGES = 8
"""The pages of one slot of :func:`valid_traces`'s address space."""
SLOTS = 4
DRAWN_BASE = 0x7F0000000000


@dataclass
class _Model:
    """What the generator needs to know to emit only valid events."""

    procs: dict[int, set[int]] = field(default_factory=dict)  # pid -> mapped page numbers
    t: int = 0


def _page(slot: int, offset: int) -> int:
    return DRAWN_BASE // PAGE + slot * SLOT_PAGES + offset


@st.composite
def valid_traces(draw: st.DrawFn) -> tuple[Header, list[Event]]:
    """A hypothesis strategy: a valid trace (header, events) of every event kind, small
    mappings in :data:`SLOTS` slots of :data:`SLOT_PAGES` pages."""
    page_size = PAGE
    header = Header(
        page_size=page_size,
        description=draw(st.none() | st.text(max_size=8)),
        meta=draw(
            st.dictionaries(
                st.text(max_size=4),
                st.integers(-(2**63), 2**64 - 1) | st.text(max_size=4),
                max_size=2,
            )
        ),
    )
    model = _Model()
    events: list[Event] = []
    for index in range(1, draw(st.integers(0, 40)) + 1):
        model.t += draw(st.sampled_from([0, 0, 1, 1000, 2**40]))
        t = model.t
        live = sorted(model.procs)
        mapped = [(pid, p) for pid in live for p in sorted(model.procs[pid])]
        choices = ["alloc", "prctl", "ksm", "settle", "snapshot"]
        if live:
            choices += ["free", "fork", "exit"]
        if mapped:
            choices += ["write", "write", "write", "read", "madvise"]
        op = draw(st.sampled_from(choices))
        event: Event
        if op == "alloc":
            pid = draw(st.integers(1, 5))
            pages = model.procs.setdefault(pid, set())
            slot = draw(st.integers(0, SLOTS - 1))
            start = draw(st.integers(0, SLOT_PAGES - 1))
            count = draw(st.integers(1, SLOT_PAGES - start))
            wanted = {_page(slot, start + i) for i in range(count)}
            if wanted & pages:
                event = Prctl(index, t, pid, "merge_any", draw(st.booleans()))
            else:
                pages |= wanted
                event = Alloc(index, t, pid, _page(slot, start) * PAGE, count * PAGE)
        elif op == "prctl":
            pid = draw(st.integers(1, 5))
            model.procs.setdefault(pid, set())
            event = Prctl(index, t, pid, "merge_any", draw(st.booleans()))
        elif op == "free":
            pid = draw(st.sampled_from(live))
            first = _page(draw(st.integers(0, SLOTS - 1)), draw(st.integers(0, SLOT_PAGES - 1)))
            count = draw(st.integers(1, 2 * SLOT_PAGES))
            model.procs[pid] -= set(range(first, first + count))
            event = Free(index, t, pid, first * PAGE, count * PAGE)
        elif op == "fork":
            pid = draw(st.sampled_from(live))
            child = draw(st.integers(1, 8).filter(lambda c: c not in model.procs))
            model.procs[child] = set(model.procs[pid])
            event = Fork(index, t, pid, child)
        elif op == "exit":
            pid = draw(st.sampled_from(live))
            del model.procs[pid]
            event = Exit(index, t, pid)
        elif op in ("write", "read", "madvise"):
            pid, first = draw(st.sampled_from(mapped))
            count = 1
            while first + count in model.procs[pid] and draw(st.booleans()):
                count += 1
            addr, length = first * PAGE, count * PAGE
            if op == "madvise":
                advice = draw(st.sampled_from(["mergeable", "unmergeable", "dontneed"]))
                event = Madvise(index, t, pid, addr, length, advice)  # type: ignore[arg-type]
            elif op == "read":
                lo = draw(st.integers(0, length - 1))
                event = Read(index, t, pid, addr + lo, draw(st.integers(1, length - lo)))
            else:
                form = draw(st.sampled_from(["int", "array", "bin"]))
                fps = st.integers(0, 2**64 - 1)
                if form == "int":
                    event = Write(index, t, pid, addr, length, draw(fps))
                elif form == "array":
                    values = draw(st.lists(fps, min_size=count, max_size=count))
                    event = Write(index, t, pid, addr, length, np.array(values, dtype=np.uint64))
                else:
                    lo = draw(st.integers(0, length - 1))
                    size = draw(st.integers(1, min(64, length - lo)))
                    data = draw(st.binary(min_size=size, max_size=size))
                    event = Write(index, t, pid, addr + lo, size, data)
        elif op == "ksm":
            event = Ksm(
                index,
                t,
                draw(
                    st.sampled_from(
                        [{"run": 1}, {"run": 2, "use_zero_pages": 1}, {"advisor_mode": "scan-time"}]
                    )
                ),
            )
        elif op == "settle":
            scans = draw(st.none() | st.integers(1, 20))
            event = Settle(index, t) if scans is None else Settle(index, t, scans)
        else:
            event = Snapshot(index, t, draw(st.text(max_size=6)))
        events.append(event)
    return header, events


def encode_trace(header: Header, events: list[Event], form: str) -> bytes:
    """The bytes of a trace in ``form`` (``msgpack`` or ``jsonl``), as TraceWriter writes it."""
    out = io.BytesIO()
    writer = TraceWriter(out, header, form)
    for event in events:
        writer.event(event)
    return out.getvalue()


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A hypothesis strategy: the bytes of a valid trace with a few bytes flipped, set,
    inserted or deleted, or cut short."""
    header, events = draw(valid_traces())
    data = bytearray(encode_trace(header, events, draw(st.sampled_from(["msgpack", "jsonl"]))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        else:
            del data[at:]
    return bytes(data)
