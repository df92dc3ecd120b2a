"""Runs of writes applied in one call give what applying them one at a time gives.

GIVEN a random trace heavy in writes (several processes, forks that share
frames copy-on-write, KSM pages and KSM-placed zero pages being written,
ksmd waking in the middle of runs, pages written twice in one instant,
mappings spread over more page-table chunks than one block holds), WHEN one
engine applies every event with ``apply`` and another applies each run of
consecutive writes with ``apply_writes``, THEN the snapshots after every run
are identical and the invariants hold.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from ksmreplay.arrays import DENSE_TABLE_LIMIT
from ksmreplay.engine import Engine
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Ksm,
    Madvise,
    Settle,
    Write,
    WriteRun,
)
from ksmreplay.vm import BLOCK, CHUNK

pytestmark = pytest.mark.usefixtures("both_engines")
"""Every test here runs with the numpy fault path and with the native core's."""

PAGE = 4096
BASE = 0x40000000


def write_heavy_trace(seed: int, sparse: bool = False, first_pid: int = 1) -> list[Event]:
    """Long runs of writes with a few other events between them.

    ``sparse``: one mapping of more than :data:`BLOCK` page-table chunks,
    written a page here and there, so page tables have several blocks.  The
    processes' pids count from ``first_pid``.
    """
    rng = random.Random(seed)
    pages = (BLOCK + 40) * CHUNK if sparse else rng.choice([8, 64, 700])
    events: list[Event] = []
    t = 0

    def emit(make: type, *args: object) -> None:
        events.append(make(len(events) + 1, t, *args))

    emit(
        Ksm,
        {
            "run": 1,
            "pages_to_scan": rng.choice([7, 64, 1000]),
            "sleep_millisecs": 1,
            "use_zero_pages": rng.choice([0, 1]),
            "max_page_sharing": rng.choice([2, 256]),
        },
    )
    pids = [first_pid, first_pid + 1]
    for pid in pids:
        emit(Alloc, pid, BASE, pages * PAGE)
        emit(Madvise, pid, BASE, pages * PAGE, "mergeable")
    next_pid = first_pid + 2
    if sparse:
        # One page in every chunk of process 1: more chunks than one block holds.
        for chunk in range(pages // CHUNK):
            emit(
                Write, 1, BASE + (chunk * CHUNK + rng.randrange(CHUNK)) * PAGE, PAGE, 1 + chunk % 3
            )
    for _ in range(rng.randint(4, 9)):
        for _ in range(rng.randint(1, 60)):
            t += rng.choice([0, 0, 0, 100_000, 1_000_000, 3_000_000])
            pid = rng.choice(pids)
            n = rng.randint(1, 6)
            first = rng.randrange(pages - n + 1)
            if sparse:
                first = rng.randrange(0, pages - n + 1, CHUNK // 2)
            content: int | np.ndarray = (
                rng.choice([0, 1, 2, 3])
                if rng.random() < 0.3
                else np.array([rng.choice([0, 1, 2, 3, 4]) for _ in range(n)], np.uint64)
            )
            emit(Write, pid, BASE + first * PAGE, n * PAGE, content)
        step = rng.random()
        if step < 0.3:
            emit(Settle, 3)
        elif step < 0.5 and len(pids) < 5:
            emit(Fork, rng.choice(pids), next_pid)
            pids.append(next_pid)
            next_pid += 1
        elif step < 0.6 and len(pids) > 1:
            gone = rng.choice(pids)
            emit(Exit, gone)
            pids.remove(gone)
        elif step < 0.7:
            emit(Madvise, rng.choice(pids), BASE, PAGE * min(pages, 16), "dontneed")
    return events


def runs_of(events: list[Event]) -> list[Event | WriteRun]:
    """``events`` with each stretch of consecutive writes as one run."""
    out: list[Event | WriteRun] = []
    pending: list[Write] = []
    for event in [*events, None]:
        if isinstance(event, Write):
            pending.append(event)
            continue
        if pending:
            out.append(WriteRun.of(pending, PAGE))
            pending = []
        if event is not None:
            out.append(event)
    return out


def _compare(events: list[Event], mode: str) -> int:
    """Replay ``events`` both ways; the number of runs applied in one call."""
    one, many = Engine(mode, PAGE), Engine(mode, PAGE)
    applied = 0
    runs = 0
    for item in runs_of(events):
        if isinstance(item, WriteRun):
            for event in item.events():
                one.apply(event)
            many.apply_writes(item)
            runs += 1
            last_t, last_index = item.last_t, item.last_index
            applied += len(item)
        else:
            one.apply(item)
            many.apply(item)
            last_t, last_index = item.t, item.index
            applied += 1
        many.check_invariants()
        assert many.snapshot("x", last_t, last_index) == one.snapshot("x", last_t, last_index), (
            f"after event {last_index}"
        )
    assert applied == len(events)
    return runs


@pytest.mark.parametrize("mode", ["legacy", "v6", "unshare"])
@pytest.mark.parametrize("seed", range(25))
def test_a_run_equals_its_writes_one_by_one(seed: int, mode: str) -> None:
    assert _compare(write_heavy_trace(seed), mode) > 0


@pytest.mark.parametrize("seed", range(3))
def test_page_tables_of_several_blocks(seed: int) -> None:
    events = write_heavy_trace(seed, sparse=True)
    _compare(events, "unshare")
    engine = Engine("unshare", PAGE)
    blocks = 0
    for item in runs_of(events):
        if isinstance(item, WriteRun):
            engine.apply_writes(item)
        else:
            engine.apply(item)
        blocks = max([blocks, *(len(mm.pt.block_rows) for mm in engine.mem.mms.values())])
    assert blocks > 1


@pytest.mark.parametrize("seed", range(5))
def test_pids_too_large_for_a_table(seed: int) -> None:
    """The native core finds a write's process through a table indexed by pid,
    or by a search when pids are that large."""
    assert _compare(write_heavy_trace(seed, first_pid=DENSE_TABLE_LIMIT + 7), "unshare") > 0


def test_writes_to_one_shared_frame_from_two_processes() -> None:
    # GIVEN a page shared copy-on-write by a parent and its child
    events: list[Event] = [
        Alloc(1, 0, 1, BASE, PAGE),
        Write(2, 0, 1, BASE, PAGE, 5),
        Fork(3, 0, 1, 2),
        # WHEN both write it in one instant, the child first
        Write(4, 10, 2, BASE, PAGE, 6),
        Write(5, 10, 1, BASE, PAGE, 7),
    ]
    one, many = Engine("unshare", PAGE), Engine("unshare", PAGE)
    for event in events[:3]:
        one.apply(event)
        many.apply(event)
    frames_before = many.mem.frames.live
    for event in events[3:]:
        one.apply(event)
    many.apply_writes(WriteRun.of(events[3:], PAGE))  # type: ignore[arg-type]
    # THEN the child copied and the parent wrote the old frame in place: one new frame
    assert many.mem.frames.live == frames_before + 1
    assert many.snapshot("x", 10, 5) == one.snapshot("x", 10, 5)
    assert many.mem.fingerprint_at(many.mem.mms[1], BASE // PAGE) == 7
    assert many.mem.fingerprint_at(many.mem.mms[2], BASE // PAGE) == 6


def test_the_last_write_of_a_page_in_an_instant_wins() -> None:
    events: list[Event] = [
        Alloc(1, 0, 1, BASE, 4 * PAGE),
        Write(2, 5, 1, BASE, 4 * PAGE, np.array([1, 2, 3, 4], np.uint64)),
        Write(3, 5, 1, BASE + PAGE, PAGE, 9),
        Write(4, 5, 1, BASE, 2 * PAGE, np.array([7, 8], np.uint64)),
    ]
    engine = Engine("unshare", PAGE)
    engine.apply(events[0])
    engine.apply_writes(WriteRun.of(events[1:], PAGE))  # type: ignore[arg-type]
    mm = engine.mem.mms[1]
    assert [engine.mem.fingerprint_at(mm, BASE // PAGE + i) for i in range(4)] == [7, 8, 3, 4]
    assert mm.rss_anon == 4
    assert engine.mem.frames.live == 4
