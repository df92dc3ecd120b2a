"""Stable node chains and 6.1's visit order in the native core (visit.c).

GIVEN a trace whose contents each need a chain of dups (many sharers, a low
max_page_sharing), with chains pruned while ksmd scans, dups that go stale
(a process exits, a range is freed), copy-on-write breaks and a fork, WHEN
ksmd replays it on the scalar path and with the native core (each test
says which runs: the scalar run sets ``KSMREPLAY_NATIVE=0``), on 6.18 and
6.1 (which searches the stable tree before the checksum), THEN both give
the same snapshots, tracepoint events and work counters, and the native
core makes the new KSM pages, dups and chains itself, handing back to the
scalar ksmd only the rare visits: a new KSM page whose partner is outside
the window, a chain with a stale dup, one that would collapse, a stale node.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from ksmreplay import native
from ksmreplay.engine import Engine
from ksmreplay.ksm import STABLE, UNSTABLE, Chain, Ksmd, StableNode
from ksmreplay.native import SEQNR_MASK
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Settle,
    Snapshot,
    Write,
)

pytestmark = pytest.mark.skipif(native.native() is None, reason="the native core was not built")

PAGE = 4096
BASE = 0x10000000
SECOND = 1_000_000_000
PROCS, PER = 3, 600
SHARED = 8
"""Contents 1..SHARED fill most pages (about 200 sharers each)."""

CASES = [(0, "6.18", "unshare"), (1, "6.18", "unshare"), (0, "6.1", "legacy")]


def chain_trace(seed: int, t0: int = 0) -> list[Event]:
    """Chains of dups (max_page_sharing 8) for every shared content, pruned every 60 ms."""
    rng = np.random.default_rng(seed)
    pages = PROCS * PER
    contents = np.concatenate(
        [
            rng.integers(1, SHARED + 1, pages * 7 // 10).astype(np.uint64),
            np.zeros(pages * 15 // 100, np.uint64),
            np.arange(1000, 1000 + pages - pages * 7 // 10 - pages * 15 // 100, dtype=np.uint64),
        ]
    )
    rng.shuffle(contents)
    knobs = {
        "run": 1,
        "pages_to_scan": 300,
        "sleep_millisecs": 20,
        "max_page_sharing": 8,
        "stable_node_chains_prune_millisecs": 60,
        "use_zero_pages": 0,
    }
    events: list[Event] = []

    def add(kind: Any, *fields: Any) -> None:
        events.append(kind(len(events), *fields))

    add(Ksm, t0, knobs)
    for p in range(PROCS):
        pid, part = p + 1, contents[p * PER : (p + 1) * PER]
        add(Alloc, t0, pid, BASE, PER * PAGE)
        add(Write, t0, pid, BASE, PER * PAGE, part)
        add(Madvise, t0, pid, BASE, PER * PAGE, "mergeable")
    add(Settle, t0, 4)
    add(Snapshot, t0, "merged")
    t = t0 + SECOND
    add(Fork, t, 1, 4)
    for page in np.sort(rng.choice(PER, 120, replace=False)).tolist():
        pid = int(rng.integers(1, PROCS + 1))
        add(Write, t, pid, BASE + page * PAGE, PAGE, int(rng.integers(0, SHARED + 3)))
    add(Exit, t, 3)  # (its dups go stale)
    add(Free, t, 2, BASE + PER // 2 * PAGE, PER // 4 * PAGE)
    add(Snapshot, t, "rewritten")
    t += 2 * SECOND
    add(Snapshot, t, "later")  # wake-ups of 300 visits, 20 ms apart, until then
    for page in np.sort(rng.choice(PER, 60, replace=False)).tolist():
        add(Write, t, 4, BASE + page * PAGE, PAGE, int(rng.integers(1, SHARED + 1)))
    add(Settle, t, 5)
    add(Snapshot, t, "end")
    return events


def _rare(ksmd: Ksmd, row: int, frame: int) -> str | None:
    """Why a visit is one the native core hands back, or None if it is not."""
    fr, it = ksmd.mem.frames, ksmd.items
    if fr.ksm[frame]:
        return "a KSM page not linked to its item"
    if it.state[row] == STABLE and not ksmd.nodes[int(it.node[row])].alive:
        return "an item of a stale node"
    if it.state[row] == UNSTABLE and it.seq[row] == ksmd.seqnr & SEQNR_MASK:
        return "an unstable item of this pass"
    content = int(fr.content[frame])
    entry = ksmd.stable.get(content)
    if isinstance(entry, StableNode) and not entry.alive:
        return "a stale node"
    if isinstance(entry, Chain) and (len(entry.dups) < 2 or not all(d.alive for d in entry.dups)):
        return "a chain with a stale dup, or one that would collapse"
    if ksmd.unstable.get(content) is not None:
        return "an unstable-tree hit (its partner outside the window)"
    return None


@contextmanager
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Count the scalar ksmd's visits and chain lookups, classify the visits;
    sum what the native core made (new KSM pages, chains, dups)."""
    seen: dict[str, list[Any]] = {"visits": [], "lookups": [], "made": [0, 0, 0]}
    cmp_and_merge, choose_dup, take_in = Ksmd._cmp_and_merge, Ksmd._choose_dup, Ksmd._made

    def visit(self: Ksmd, slot: Any, row: int, view: Any, k: int, page: int) -> None:
        seen["visits"].append(_rare(self, row, int(view[k])))
        cmp_and_merge(self, slot, row, view, k, page)

    def lookup(self: Ksmd, chain: Chain, prune_allowed: bool) -> StableNode | None:
        seen["lookups"].append(prune_allowed)
        return choose_dup(self, chain, prune_allowed)

    def made(self: Ksmd, done: Any) -> None:
        for i, n in enumerate((done.pairs, done.chains, done.dups_made)):
            seen["made"][i] += n
        take_in(self, done)

    with monkeypatch.context() as m:
        m.setattr(Ksmd, "_cmp_and_merge", visit)
        m.setattr(Ksmd, "_choose_dup", lookup)
        m.setattr(Ksmd, "_made", made)
        yield seen


def replay(
    events: list[Event], kernel: str, mode: str, trace: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[int, ...], bool]:
    """Snapshots, tracepoint events, ksmd's work counters, whether the native core ran."""
    engine = Engine(mode, PAGE, kernel_version=kernel)
    out: list[dict[str, Any]] = []
    if trace:
        engine.trace(out.append)
    snaps = []
    for event in events:
        engine.apply(event)
        if isinstance(event, Snapshot):
            engine.check_invariants()
            snaps.append(engine.snapshot(event.label, event.t, event.index))
    return snaps, out, tuple(engine.ksmd.work_done), engine.ksmd.native is not None


@pytest.mark.parametrize(("seed", "kernel", "mode"), CASES)
def test_scalar_and_native_agree_on_chains(
    seed: int, kernel: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = chain_trace(seed)
    monkeypatch.setenv(native.ENV, "0")
    with watched(monkeypatch) as scalar:
        expected = replay(events, kernel, mode, trace=False)
    assert not expected[3], "the scalar run used the native core"
    traced = replay(events, kernel, mode)
    monkeypatch.delenv(native.ENV)
    with watched(monkeypatch) as core:
        got = replay(events, kernel, mode, trace=False)
    assert got[3], f"Linux {kernel} did not run the native core"
    assert got[0] == expected[0] == traced[0]
    assert got[2] == expected[2]
    assert replay(events, kernel, mode)[:3] == traced[:3]  # (tracing, new KSM pages go back)
    # The trace makes chains and looks them up by the thousand ...
    final = expected[0][-1]["ksm"]
    assert final["stable_node_chains"] >= SHARED
    assert final["stable_node_dups"] > 8 * SHARED
    lookups = sum(scalar["lookups"])
    assert lookups > 1000
    # ... and the native core hands back only the rare visits, a few per cent
    # (here forks, new KSM pages and new dups, prunes every 60 ms, stale dups).
    common = [r for r in core["visits"] if r is None]
    assert not common, f"{len(common)} common visits were handed back"
    assert len(core["visits"]) < len(scalar["visits"]) // 10
    assert sum(core["lookups"]) < lookups // 10
    # ... and makes most new KSM pages, chains and dups itself.
    pairs, chains, dups = core["made"]
    assert pairs > final["pages_shared"] and chains > 0 and dups > final["stable_node_dups"]


def test_chain_lookups_at_times_past_the_clamp_are_handed_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN the trace at t = 2^63 (ksmd's clock past PRUNE_CLAMP) THEN the native
    core leaves every chain lookup to the scalar ksmd, with the same outcome."""
    events = chain_trace(0, t0=1 << 63)
    kernel, mode = "6.1", "legacy"
    monkeypatch.setenv(native.ENV, "0")
    with watched(monkeypatch) as scalar:
        expected = replay(events, kernel, mode, trace=False)
    monkeypatch.delenv(native.ENV)
    with watched(monkeypatch) as core:
        got = replay(events, kernel, mode, trace=False)
    assert got[3]
    assert got[::2] == expected[::2]
    assert sum(core["lookups"]) == sum(scalar["lookups"]) > 1000
    assert core["made"] == [0, 0, 0]
