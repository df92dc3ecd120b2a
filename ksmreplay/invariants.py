"""Invariant checkers for the engine's state (``validate_*``).

Each raises :class:`~ksmreplay.errors.InvariantError` naming what does not
hold.  The test suite runs :func:`validate_engine` after every event; the CLI
runs it behind the hidden ``--check-invariants`` option.  A failure is always
a bug in ksmreplay, never in the trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ksmreplay.errors import InvariantError
from ksmreplay.ksm import END, NONE, STABLE, UNSTABLE, Chain, Ksmd
from ksmreplay.native import CHAIN_ENTRY, PTE_KSM_ZERO, PTE_ZERO
from ksmreplay.vm import MM, Memory

if TYPE_CHECKING:
    from ksmreplay.engine import Engine


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise InvariantError(what)


def _all_mms(ksmd: Ksmd) -> list[MM]:
    mms = {id(mm): mm for mm in ksmd.mem.mms.values()}
    for slot in ksmd.slots:
        mms.setdefault(id(slot.mm), slot.mm)
    return list(mms.values())


def validate_memory(mem: Memory, mms: list[MM]) -> None:
    """Every PTE maps a live frame; map counts and per-mm page counts add up."""
    fr = mem.frames
    counted = np.zeros(fr.capacity, np.int64)
    for mm in mms:
        rss = ksm_zero = fault_zero = 0
        for vma in mm.vmas:
            for _lo, _hi, view in mm.pt.segments(vma.start, vma.end):
                present = view[view >= 0]
                _check(bool(np.all(fr.mapcount[present] > 0)), f"pid {mm.pid} maps a free frame")
                np.add.at(counted, present, 1)
                rss += len(present)
                ksm_zero += int(np.count_nonzero(view == PTE_KSM_ZERO))
                fault_zero += int(np.count_nonzero(view == PTE_ZERO))
        _check(rss == mm.rss_anon, f"pid {mm.pid}: rss_anon {mm.rss_anon} != {rss} mapped frames")
        _check(ksm_zero == mm.ksm_zero_ptes, f"pid {mm.pid}: ksm zero PTEs miscounted")
        _check(fault_zero == mm.fault_zero_ptes, f"pid {mm.pid}: fault zero PTEs miscounted")
    _check(
        bool(np.array_equal(counted, fr.mapcount.astype(np.int64))),
        "frame map counts differ from the PTEs mapping them",
    )
    _check(int(np.count_nonzero(fr.mapcount)) == fr.live, "live frame count is wrong")
    _check(int(np.count_nonzero(fr.ksm)) == fr.live_ksm, "live KSM frame count is wrong")


def validate_ksmd(ksmd: Ksmd) -> None:
    """Items, nodes and counters agree with each other."""
    it, c = ksmd.items, ksmd.c
    live_rows = np.flatnonzero(it.slots() >= 0)
    _check(len(live_rows) == it.count == c.rmap_items, "rmap_items differs from live items")
    per_slot: dict[int, int] = {}
    for slot in ksmd.slots:
        n = 0
        for lo, _hi, view in slot.items.segments(0, END):
            at = np.flatnonzero(view >= 0)
            rows = view[at]
            rows64 = rows.astype(np.int64)
            _check(bool(np.all(it.slots(rows64) == slot.id)), "item map: another mm's item")
            _check(bool(np.all(it.pages(rows64) == lo + at)), "item map: the wrong page's item")
            n += len(at)
        _check(n == slot.rmap_items, f"pid {slot.mm.pid}: ksm_rmap_items miscounted")
        per_slot[slot.id] = 0
    _check(sum(s.rmap_items for s in ksmd.slots) == c.rmap_items, "per-mm rmap_items do not add up")
    flagged = live_rows[it.flagged(live_rows)]
    _check(len(flagged) == c.zero_pages_sharing, "zero_pages_sharing differs from flagged items")
    _check(bool(np.all(it.state[flagged] == NONE)), "a flagged item is in a tree")
    _check(
        int(np.count_nonzero(it.state[live_rows] == UNSTABLE)) == c.pages_unshared,
        "pages_unshared differs from unstable items",
    )
    shared = sharing = chains = dups = 0
    seen: set[int] = set()
    for content, entry in ksmd.stable.items():
        nodes = entry.dups if isinstance(entry, Chain) else [entry]
        filed = CHAIN_ENTRY + entry.id if isinstance(entry, Chain) else entry.id
        _check(ksmd.stable.index().get(content) == filed, "stable tree index wrong")
        if isinstance(entry, Chain):
            chains += 1
            dups += len(entry.dups)
            walked, nid = 0, entry.head
            while nid >= 0 and walked <= entry.count:
                walked += 1
                nid = int(ksmd.node_cols.dup_next[nid])
            _check(walked == entry.count and nid < 0, "a chain's list of dups and count differ")
            # A chain may be left empty when its last dup is removed as stale;
            # it is freed by the next walk that reaches it (__stable_node_chain()).
        for node in nodes:
            _check(node.content == content, "node filed under another content")
            _check(ksmd.nodes.get(node.id) is node, "node not registered")
            seen.add(node.id)
            linked = ksmd.hlist(node)
            _check(len(set(linked)) == len(linked), "an hlist loops or repeats an item")
            if linked:
                shared += 1
                sharing += len(linked) - 1
                prev = [-1, *linked[:-1]]
                _check(it.hprev[linked].tolist() == prev, "hlist back links wrong")
            for row in linked:
                _check(int(it.state[row]) == STABLE and int(it.node[row]) == node.id, "bad link")
                per_slot[it.slot_of(row)] = per_slot.get(it.slot_of(row), 0) + 1
            _check(int(ksmd.node_cols.size[node.id]) == len(linked), "rmap_hlist_len wrong")
            _check(int(ksmd.node_cols.frame[node.id]) == node.frame, "node frame column wrong")
            fr = ksmd.mem.frames
            names = bool(fr.ksm[node.frame]) and int(fr.node[node.frame]) == node.id
            _check(names == node.alive, "a node's liveness differs from its frame's")
    _check(seen == set(ksmd.nodes), "node table and stable tree differ")
    _check((shared, sharing) == (c.pages_shared, c.pages_sharing), "pages_shared/sharing wrong")
    _check((chains, dups) == (c.stable_node_chains, c.stable_node_dups), "chains/dups wrong")
    stable_rows = live_rows[it.state[live_rows] == STABLE]
    _check(len(stable_rows) == shared + sharing, "stable items outside any node")
    for slot in ksmd.slots:
        _check(
            per_slot.get(slot.id, 0) == slot.merging_pages,
            f"pid {slot.mm.pid}: ksm_merging_pages miscounted",
        )


def validate_engine(engine: Engine) -> None:
    """Every invariant of one engine."""
    validate_memory(engine.mem, _all_mms(engine.ksmd))
    _check(
        engine.mem.mergeable_contents() == engine.mem.count_mergeable_contents(),
        "the remembered count of mergeable contents is stale",
    )
    validate_ksmd(engine.ksmd)
