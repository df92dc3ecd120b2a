"""Idle stretches: ksmd's circles between two events are skipped, with the same outcome.

GIVEN traces whose events are far apart in time (hundreds to billions of
wake-ups between two of them, with smart_scan's cycles, stable chains pruned
by time, the scan-time advisor, a zero sleep, a zero budget), WHEN the engine
replays them, THEN every snapshot after every event equals that of the
engine running every wake-up (``Engine.skip_idle`` off) and, where the
reference model can run every wake-up too, the reference model's; and the
engine needed far fewer calls to ksmd.  A trace of one page and one snapshot
at t = 2**63 replays at once, its counters where the clock's model puts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from randtrace import long_gaps, random_trace
from reference import ReferenceSimulator
from support import counted

from ksmreplay.engine import Engine
from ksmreplay.ksm import ksmd
from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.ksm.stable import Chain
from ksmreplay.timing import sleep_ns
from ksmreplay.trace.events import Alloc, Event, Ksm, Madvise, Snapshot, Write

pytestmark = pytest.mark.usefixtures("both_engines")

PAGE = 4096
BASE = 0x10000000
MS = 1_000_000


def replay_both(
    events: list[Event], mode: str, reference: bool = False, kernel: str = "6.18"
) -> tuple[int, int, int]:
    """Replay ``events`` skipping circles and not, comparing every snapshot (and
    with the reference model); the two engines' calls to ksmd, and the jumps."""
    skipping = Engine(mode, PAGE, kernel_version=kernel)
    every = Engine(mode, PAGE, kernel_version=kernel)
    every.skip_idle = False
    ref = ReferenceSimulator(mode, PAGE, kernel=kernel) if reference else None
    calls = counted(skipping), counted(every)
    jumps = counted(skipping, "jump")
    for event in events:
        skipping.apply(event)
        every.apply(event)
        mine = skipping.snapshot("x", event.t, event.index)
        assert mine == every.snapshot("x", event.t, event.index), f"{mode}, after {event}"
        if ref is not None:
            ref.apply(event)
            assert mine == ref.snapshot("x", event.t, event.index), f"{mode}, after {event}"
    skipping.check_invariants()
    # ksmd's work (wake-ups too) is the same whether circles are skipped or not
    assert skipping.ksmd_work == every.ksmd_work
    if ref is not None:
        assert skipping.ksmd_work == ref.ksmd_work
    assert skipping.next_wake == every.next_wake
    assert skipping.ksmd.seqnr == every.ksmd.seqnr
    return calls[0][0], calls[1][0], jumps[0]


@pytest.mark.parametrize("mode", ["legacy", "v6", "unshare"])
@pytest.mark.parametrize("seed", range(8))
def test_skipping_circles_changes_nothing(seed: int, mode: str) -> None:
    skipped, every, _jumps = replay_both(long_gaps(seed), mode)
    assert skipped <= every


@pytest.mark.parametrize("seed", range(4))
def test_skipping_circles_on_6_1(seed: int) -> None:
    """No smart_scan, the scalar walk and the old visit order: circles still skip exactly."""
    skipped, every, _jumps = replay_both(long_gaps(seed), "legacy", kernel="6.1")
    assert skipped <= every


@pytest.mark.parametrize("seed", [0, 7])
def test_large_states_compare_by_hash(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN states too large to copy (here: all), kept as hashes
    monkeypatch.setattr(ksmd, "KEEP_BYTES", 0)
    # THEN skipping circles still changes nothing, and circles are skipped
    _skipped, _every, jumps = replay_both(long_gaps(seed), "unshare")
    assert jumps


def test_circles_are_skipped() -> None:
    # GIVEN the same traces WHEN ksmd made hundreds of passes in one THEN
    # some of them were skipped
    for seed in range(8):
        engine = Engine("unshare", PAGE)
        jumps = counted(engine, "jump")
        for event in long_gaps(seed):
            engine.apply(event)
        assert jumps[0] or engine.ksmd.seqnr < 500, f"seed {seed}"


@pytest.mark.parametrize("seed", range(3))
def test_skipping_circles_matches_the_reference(seed: int) -> None:
    events = long_gaps(100 + seed, n_events=12)
    skipped, every, _jumps = replay_both(events, "unshare", reference=True)
    assert skipped <= every


def one_page(smart_scan: int, sleep: int, until: int, **knobs: KnobValue) -> list[Event]:
    settings = {"run": 1, "smart_scan": smart_scan, "sleep_millisecs": sleep, **knobs}
    return [
        Ksm(1, 0, settings),
        Alloc(2, 0, 1, BASE, 3 * PAGE),
        Write(3, 0, 1, BASE, 3 * PAGE, np.array([5, 6, 5], np.uint64)),
        Madvise(4, 0, 1, BASE, 3 * PAGE, "mergeable"),
        Write(5, MS, 1, BASE + PAGE, PAGE, 7),
        Snapshot(6, until, "end"),
    ]


@pytest.mark.parametrize(
    "knobs",
    [
        {"smart_scan": 1, "sleep": 0},
        {"smart_scan": 0, "sleep": 0},
        {"smart_scan": 0, "sleep": 1},
        {"smart_scan": 1, "sleep": 20, "pages_to_scan": 0},
        {"smart_scan": 1, "sleep": 20, "advisor_mode": "scan-time"},
    ],
    ids=str,
)
def test_a_long_quiet_stretch(knobs: dict[str, Any]) -> None:
    # GIVEN two merged pages and one alone, then a long time without events
    knobs = dict(knobs)
    smart, sleep = knobs.pop("smart_scan"), knobs.pop("sleep")
    # (a minute where each wake-up is one call, without a budget or with the advisor)
    one_call_each = knobs.get("pages_to_scan") == 0 or "advisor_mode" in knobs
    until = 20 * MS if sleep == 0 else 60_000 * MS if one_call_each else 20_000 * MS
    skipped, every, _jumps = replay_both(one_page(smart, sleep, until, **knobs), "unshare")
    # THEN (besides equal snapshots) thousands of wake-ups took a few calls
    assert every > 1000
    assert skipped * 20 < every


def chain_leftover(smart_scan: int, sleep: int, until: int, prune_ms: int = 2000) -> list[Event]:
    """Five pages of one content with max_page_sharing=2: two full dups in a
    chain, and a page left over that looks at the chain at every visit (no
    dup has room for it) and stays alone in the unstable tree."""
    settings = {
        "run": 1,
        "smart_scan": smart_scan,
        "sleep_millisecs": sleep,
        "max_page_sharing": 2,
        "use_zero_pages": 0,
        "stable_node_chains_prune_millisecs": prune_ms,
    }
    return [
        Ksm(1, 0, settings),
        Alloc(2, 0, 1, BASE, 8 * PAGE),
        Write(3, 0, 1, BASE, 5 * PAGE, 9),
        Write(4, 0, 1, BASE + 5 * PAGE, 3 * PAGE, np.array([5, 6, 7], np.uint64)),
        Madvise(5, 0, 1, BASE, 8 * PAGE, "mergeable"),
        Snapshot(6, MS, "start"),
        Snapshot(7, until, "end"),
    ]


@pytest.mark.parametrize(
    ("smart_scan", "sleep", "prune_ms", "until"),
    [
        (1, 20, 2000, 300_000),
        (0, 20, 2000, 300_000),
        (0, 1, 30, 20_000),
        (1, 0, 10, 100),
        (0, 0, 10, 100),
    ],
    ids=str,
)
def test_a_chain_looked_at_in_a_long_quiet_stretch(
    smart_scan: int, sleep: int, prune_ms: int, until: int
) -> None:
    # GIVEN a chain looked at in every pass, so that every circle of passes
    # depends on when the chain was last pruned (in whole jiffies), and a long
    # time without events (hundreds of prunes)
    events = chain_leftover(smart_scan, sleep, until * MS, prune_ms)
    # WHEN replayed skipping circles and not THEN the snapshots are the same
    skipped, every, jumps = replay_both(events, "unshare")
    # and circles were skipped: where the passes start on the timer's ticks,
    # circles of as many passes as bring the prunes back where they were; with
    # a zero sleep (no two prunes alike), circles up to the next prune
    assert jumps
    assert skipped * 10 < every


def test_a_chain_pruned_in_an_idle_stretch_keeps_its_prune_time() -> None:
    # GIVEN the chain above, quiet for a minute THEN its last prune is where
    # running every wake-up puts it (a snapshot does not show it)
    events = chain_leftover(0, 20, 60_000 * MS)
    skipping, every = Engine("unshare", PAGE), Engine("unshare", PAGE)
    every.skip_idle = False
    for event in events:
        skipping.apply(event)
        every.apply(event)
    [mine] = [e for e in skipping.ksmd.stable.values() if isinstance(e, Chain)]
    [theirs] = [e for e in every.ksmd.stable.values() if isinstance(e, Chain)]
    assert mine.prune_time == theirs.prune_time
    assert mine.prune_time > 50_000 * MS


def run_cli(events: list[Event], tmp_path: Path, timeout: float) -> dict[str, Any]:
    """``ksmreplay run --format json`` of ``events`` (JSON lines) in a subprocess."""
    path = tmp_path / "trace.jsonl"
    lines = [json.dumps({"ksmreplay": 1})]
    for e in events:
        fields = {k: v for k, v in dataclasses.asdict(e).items() if k not in ("index", "op")}
        row: list[Any] = [fields.pop("t"), e.op]
        if isinstance(e, Ksm):
            row.append(fields["settings"])
        else:
            row += [v.tolist() if isinstance(v, np.ndarray) else v for v in fields.values()]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ksmreplay",
            "run",
            "--mode",
            "unshare",
            "--format",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_snapshot_at_t_2_63(tmp_path: Path) -> None:
    # GIVEN three pages that never merge and a snapshot at t = 2**63
    events: list[Event] = [
        Ksm(1, 0, {"run": 1}),
        Alloc(2, 0, 1, BASE, 3 * PAGE),
        Write(3, 0, 1, BASE, 3 * PAGE, np.array([5, 6, 8], np.uint64)),
        Madvise(4, 0, 1, BASE, 3 * PAGE, "mergeable"),
        Snapshot(5, 2**63, "end"),
    ]
    # WHEN replayed THEN it takes seconds
    ksm = run_cli(events, tmp_path, timeout=60)["runs"][0]["final"]["ksm"]
    # and every wake-up before 2**63 ran: each pass walks the 3 pages, visiting
    # or skipping each, in one batch far shorter than a jiffy that starts on a
    # tick, so ksmd wakes every sleep_ns(20) (24 ms) from t = 0 on, one pass
    # each; the last pass started before 2**63, the next one not.
    passes, visits = ksm["full_scans"], ksm["pages_scanned"]
    assert visits + ksm["pages_skipped"] == 3 * passes
    assert passes == (2**63 - 1) // sleep_ns(20) + 1
    assert passes > 10**11


def test_a_zero_sleep(tmp_path: Path) -> None:
    # GIVEN two pages merged and one alone, scanned without sleeping or
    # skipping, for 0.21 s (half a million passes)
    events = one_page(0, 0, 210 * MS)
    # WHEN replayed THEN it takes seconds, and every pass ran
    ksm = run_cli(events, tmp_path, timeout=60)["runs"][0]["final"]["ksm"]
    assert ksm["full_scans"] > 100_000
    assert ksm["pages_sharing"] == 1


def frame_columns(engine: Engine) -> tuple[tuple[int, int], bytes]:
    """The frame table's change count and size, and a hash of its four columns."""
    fr = engine.mem.frames
    h = hashlib.blake2b(digest_size=16)
    for column in (fr.content, fr.mapcount, fr.ksm, fr.node):
        h.update(np.ascontiguousarray(column).tobytes())
    return (fr.changes, fr.capacity), h.digest()


@pytest.mark.parametrize("mode", ["legacy", "v6", "unshare"])
@pytest.mark.parametrize("seed", range(12))
def test_every_frame_write_moves_the_change_count(seed: int, mode: str) -> None:
    """``Ksmd.idle_state`` leaves the frame columns to ``FrameTable.changes``:
    a write to a frame that did not raise it would let two different states
    pass for one, and a circle be skipped that is not one."""
    # GIVEN random traces (writes in place and copy-on-write, forks, merges,
    # zero pages, unmerging, exits), the frame table observed after every event
    # and every call to ksmd
    engine = Engine(mode, PAGE)
    seen: list[tuple[tuple[int, int], bytes, str]] = []
    batch = engine.ksmd.batch

    def observed(*args: Any) -> Any:
        visits = batch(*args)
        seen.append((*frame_columns(engine), f"ksmd at {args[1]}"))
        return visits

    engine.ksmd.batch = observed  # type: ignore[method-assign]
    for event in random_trace(seed, n_events=80):
        engine.apply(event)
        seen.append((*frame_columns(engine), f"after {event}"))
    # THEN wherever the count (and size) stayed, so did every column
    writes = 0
    for (count, columns, _), (count2, columns2, where) in itertools.pairwise(seen):
        if count == count2:
            assert columns == columns2, f"seed {seed} {mode}: a frame changed uncounted, {where}"
        else:
            writes += 1
    assert writes > 10  # (the traces write frames)


def test_a_content_written_in_place_between_two_gaps() -> None:
    # GIVEN mergeable pages that settle, a long gap (20 ms: thousands of
    # back-to-back passes with sleep_millisecs=0), one page written in place
    # (a private frame: nothing but its content changes), a long gap
    events: list[Event] = [
        Ksm(1, 0, {"run": 1, "pages_to_scan": 4, "sleep_millisecs": 0}),
        Alloc(2, 0, 1, BASE, 16 * PAGE),
        Write(3, 0, 1, BASE, 16 * PAGE, np.arange(16, dtype=np.uint64) % 5 + 1),
        Madvise(4, 0, 1, BASE, 16 * PAGE, "mergeable"),
        Snapshot(5, 20 * MS, "settled"),
        Write(6, 20 * MS, 1, BASE + 15 * PAGE, PAGE, 99),
        Snapshot(7, 40 * MS, "rewritten"),
        Write(8, 40 * MS, 1, BASE + 15 * PAGE, PAGE, 1),
        Snapshot(9, 60 * MS, "merged again"),
    ]
    # THEN skipping circles changes nothing, and circles were skipped
    for mode in ("legacy", "unshare"):
        _skipped, _every, jumps = replay_both(events, mode)
        assert jumps, mode
