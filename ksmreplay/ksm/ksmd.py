"""ksmd: the mm list and cursor, rmap_items, the stable and unstable trees.

This follows ``mm/ksm.c`` of Linux 6.18 as KSM_MODEL.md describes it; the
kernel function each step comes from is named in its docstring.

State
-----
Per-item state is a set of numpy columns (:class:`~ksmreplay.ksm.items.ItemTable`), indexed by
item number; each mm's items are found by address through a sparse
per-page map with the same layout as a page table (``vm.PageTable``), so the
kernel's address-sorted ``rmap_list`` is implicit: walking pages in address
order walks the list.  Stable nodes and chains are few (one per distinct
merged content) and are small Python objects; a node's hlist is a linked
list through two item columns, its length and KSM frame node columns
(:class:`~ksmreplay.ksm.stable.NodeColumns`), and a chain's dups a list
through a node column (:class:`~ksmreplay.ksm.stable.ChainColumns`), so
that compiled code can link and unlink items and pick a chain's dup.

Abstractions (KSM_MODEL.md section 2), and why they cannot change a counter
at a full-scan boundary:

* Trees are hash tables keyed by content (a dictionary for the stable tree,
  a :class:`~ksmreplay.ksm.contentmap.ContentMap` for the unstable one), not
  red-black trees ordered by ``memcmp``.  A stable search resolves only the
  entry of the searched content, so a stale node is noticed when one of its
  items is unlinked, when its own content is searched, or at run=2 — never
  because a walk for another content passed it.  Every item of a stale node is revisited (or freed)
  within one pass, so the node is gone by the pass's end either way.
* The unstable tree is looked up by the content its items had when they were
  inserted.  If that item's page has since vanished, changed, or become a KSM
  page, or is the very same frame (fork), the lookup aborts and the current
  page stays volatile this pass (``unstable_tree_search_insert()``'s aborts).
* Merges never fail (no page locks, no extra references, no THP).
* A batch runs at one instant of trace time.

The scan is written twice: here, page by page as the kernel walks
(:meth:`Ksmd._walk_window`, :meth:`Ksmd._should_skip`,
:meth:`Ksmd._cmp_and_merge`: the place where a KSM rule is read and a new
mode prototyped), and in the native core, a window of page-table chunks at a
time, in one call per window (``Native.step``): ``window.c`` makes
smart_scan's decisions, counts the visits that change nothing and makes and
frees the window's items, ``visit.c`` does the common visits in address
order, chains, new KSM pages and 6.1's visit order included, and hands the
rare outcomes it does not do (a new KSM page whose partner is outside the
window, a chain with a stale dup or that would collapse, a stale node) back
to :meth:`Ksmd._cmp_and_merge` (:meth:`Ksmd._visit_listed`), and the nodes
and chains it made to :meth:`Ksmd._made`.  A mode runs the native core only
if it says it can (``Mode.native_scan``).  Both give the same state, as the tests check
against each other and against a one-at-a-time reference model.
"""

from __future__ import annotations

import hashlib
import heapq
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray
from ksmreplay.errors import ResourceError
from ksmreplay.ksm.advisor import Advisor
from ksmreplay.ksm.contentmap import ContentMap
from ksmreplay.ksm.counters import Counters
from ksmreplay.ksm.items import NONE, STABLE, UNSTABLE, ItemTable, Slot
from ksmreplay.ksm.kernels import LINUX_6_18, Kernel
from ksmreplay.ksm.knobs import Knobs
from ksmreplay.ksm.modes import Mode
from ksmreplay.ksm.stable import (
    MADE_ROOM,
    PRUNE_CLAMP,
    Chain,
    ChainColumns,
    NodeColumns,
    StableNode,
    StableTree,
)
from ksmreplay.ksm.v6 import FlaggedItems, WalkResult
from ksmreplay.ksm.window import WINDOW_CHUNKS, Front, _Pages, _write_back
from ksmreplay.native import (
    AGE_MAX,
    CHUNK_SHIFT,
    ITEM_SLOT_LIMIT,
    LISTED_STALE,
    PTE_KSM_ZERO,
    PTE_ZERO,
    SEQNR_MASK,
    STEP_ALLOC,
    STEP_HANDED,
    STEP_NONE,
    WALKED_AFTER,
    WALKED_BEFORE,
    WALKED_BUDGET,
    WALKED_END,
    Clock,
    Entries,
    Native,
    Stepped,
    VisitArgs,
    Visited,
    Walked,
    native,
)
from ksmreplay.timing import (
    CPU_SHARE_PERCENT,
    JIFFY_NS,
    Work,
    batch_cost_ns,
    cached_pages,
    jiffies_ns,
    next_wake_ns,
    unit_prices,
    unstable_levels,
    wake_clock,
)
from ksmreplay.vm import (
    CHUNK,
    MM,
    NULL,
    Memory,
    Vma,
)

if TYPE_CHECKING:
    from ksmreplay.tracepoints import Tracer

END = 1 << 62
"""A page number beyond every mapping."""


class _Marks(NamedTuple):
    """The counters :meth:`Ksmd.work` takes differences of."""

    skipped: int
    hits: int
    checksums: int
    searches: int
    pairs: int
    merges: int
    zero_merges: int
    dups: int
    passes: int
    items: int
    item_changes: int


def _chunks_used(segs: list[tuple[int, int, Entries]], last: int) -> int:
    """The page-table chunks of a window's runs ``segs`` up to page ``last``."""
    if len(segs) == 1:
        lo, hi, _v = segs[0]
        return (min(hi - 1, last) >> CHUNK_SHIFT) - (lo >> CHUNK_SHIFT) + 1
    return sum(
        ((min(hi - 1, last) >> CHUNK_SHIFT) - (lo >> CHUNK_SHIFT) + 1)
        for lo, hi, _v in segs
        if lo <= last
    )


def _seg_rows(segs: list[tuple[int, int, Entries]]) -> IntArray:
    """A window's runs of pages as the native core takes them: (first page, end
    page, first position) each, flat."""
    out: list[int] = []
    at = 0
    for lo, hi, _v in segs:
        out += (lo, hi, at)
        at += hi - lo
    return np.array(out, np.int64)


class Ksmd(FlaggedItems):
    """ksmd and the KSM core around it, over one :class:`~ksmreplay.vm.Memory`.

    ``knobs`` are the sysfs knobs' current values; ``set_pages_to_scan``
    lets the advisor write ``pages_to_scan``.  The scan uses the native core
    if there is one when it is made (``KSMREPLAY_NATIVE``) and the mode can use
    it (``Mode.native_scan``).  ``kernel`` is the
    version whose rules differ from 6.18's (``kernels.py``): the visit order
    (:meth:`_cmp_and_merge`) and the chain lookup (:meth:`_choose_dup`).
    """

    native_walk = True
    """Whether the native core walks a VMA's windows itself (:meth:`_walk_native`);
    the tests turn it off to compare with one step per window."""

    def __init__(
        self,
        mem: Memory,
        mode: Mode,
        knobs: Knobs,
        set_pages_to_scan: Callable[[int], None],
        kernel: Kernel = LINUX_6_18,
    ) -> None:
        self.mode = mode
        self.knobs = knobs
        """The sysfs knobs' current values (the engine writes them)."""
        self.set_pages_to_scan = set_pages_to_scan
        self.checksum_first = kernel.checksum_first
        self.chain_collapse_any = kernel.chain_collapse_any
        self.mem = mem
        """The memory it scans, made by the engine; it tells ksmd of KSM pages freed."""
        mem.on_ksm_pages_freed = self._ksm_pages_freed
        self.native = native() if mode.native_scan else None
        """The native core of the scan, or None: the scalar walk (:meth:`_walk_window`)."""
        self._tables_obj: Any = None
        self._tables_key: tuple[int, ...] = ()
        """The native core's tables (:meth:`_tables`) and what they were made of."""
        mem.frames.on_grow = self._forget_tables
        if self.native is not None:
            self._args = VisitArgs(self.native.visit_args)
            """The native core's args, kept from window to window (:meth:`_set_args`)."""
            self._args.set("jiffy_ns", JIFFY_NS)
            self._args.set("checksum_first", self.checksum_first)
            self._args.set("collapse_any", self.chain_collapse_any)
            self._args.set("room", MADE_ROOM)
            self._args.set("flag_zero", mode.flags_zero_page_items)
        self.items = ItemTable()
        self.items.on_grow = self._forget_tables
        self.c = Counters()
        self.slots: list[Slot] = []
        self.slot_of: dict[int, Slot] = {}  # id(mm) -> slot
        self.slot_by_id: dict[int, Slot] = {}
        self._next_slot_id = 0
        self._free_slot_ids: list[int] = []  # (a heap: the lowest is taken first)
        self.cursor: Slot | None = None
        self.cursor_page = 0
        self.cursor_item_page = 0
        self.cursor_saw_mergeable = False
        self.seqnr = 0
        self.nodes: dict[int, StableNode] = {}
        self.node_cols = NodeColumns()
        self.chains = ChainColumns(self.nodes, self.node_cols)
        self._next_node_id = 0
        self.stable = StableTree()
        self.unstable = ContentMap()
        """The unstable tree: content -> item."""
        self.stable.index().on_grow = self.unstable.on_grow = self._forget_tables
        self.now = 0
        self.cpu_ns = 0
        """ksmd's modelled CPU time so far (ns): every batch's cost
        (:func:`~ksmreplay.timing.batch_cost_ns`), settles included."""
        self.work_done = Work()
        """What every batch so far did, by kind (:class:`~ksmreplay.timing.Work`)."""
        self.batch_ns = 0
        """The modelled CPU time of the last :meth:`batch` call (ns)."""
        self._batch_marks = self._marks()
        self._pass_marks = (0, 0)
        """Unstable searches and pages_shared at the start of the current pass."""
        self.pass_pages = 0
        """The pages of the mergeable mappings ksmd walks in the current pass,
        counted at its start: its working set
        (:func:`~ksmreplay.timing.cache_percent`)."""
        self.advisor = Advisor()
        self._clock = (0, 0, 0)
        """(start, sub_budget, period) of the batch running; see :meth:`batch`."""
        self._window_visits = 0
        """Visits of the running batch before the window being scanned."""
        self._visits_per_chunk = CHUNK
        """Visits per page-table chunk of the last window (sizes the next one)."""
        self.tracer: Tracer | None = None
        """Where the tracepoint events go (``run --tracepoints``), or None: none
        is made.  Every step that emits one says so (``trace_*`` in its docstring)."""

    # -- tracepoints (tracepoints.py) ------------------------------------------

    def _emit(self, name: str, **fields: Any) -> None:
        """Trace event ``name`` now (only called with a tracer)."""
        assert self.tracer is not None
        self.tracer.emit(self.now, name, fields)

    def _item_page(self, row: int) -> tuple[int, int]:
        """(pid, page) of an item."""
        return self.slot_by_id[self.items.slot_of(row)].mm.pid, self.items.page_of(row)

    def _kpage(self, node: StableNode) -> dict[str, int] | None:
        """The name of a stable node's KSM page (its ``kpfn``): the page that became it."""
        assert self.tracer is not None
        origin = self.tracer.origins.get(node.id)
        return None if origin is None else self.tracer.page(*origin)

    def _emit_merge(self, row: int, ksm_page: dict[str, int] | None, pfn: Any) -> None:
        """``trace_ksm_merge_with_ksm_page()`` for item ``row`` (merged: err 0)."""
        assert self.tracer is not None
        pid, page = self._item_page(row)
        self._emit(
            "ksm_merge_with_ksm_page",
            ksm_page=ksm_page,
            pfn=pfn,
            rmap_item=page * self.tracer.page_size,
            mm=pid,
            err=0,
        )

    def _emit_zero(self, row: int) -> None:
        """``trace_ksm_merge_one_page()`` of a zero-page merge of item ``row`` (err 0)."""
        assert self.tracer is not None
        pid, page = self._item_page(row)
        self._emit(
            "ksm_merge_one_page",
            pfn="zero",
            rmap_item=page * self.tracer.page_size,
            mm=pid,
            err=0,
        )

    # -- hooks ---------------------------------------------------------------

    def _ksm_pages_freed(self, node_ids: IntArray) -> None:
        for n in node_ids:
            node = self.nodes.get(int(n))
            if node is not None:
                node.alive = False

    # -- registration (__ksm_enter / __ksm_exit) -----------------------------

    def registered(self, mm: MM) -> bool:
        return id(mm) in self.slot_of

    def enter(self, mm: MM) -> bool:
        """``__ksm_enter()``: give ``mm`` a slot; True if the list was empty.

        The slot goes just before the cursor's slot, so the current pass does
        not reach it and the next one does; while run is 2 it goes last.
        Emits ``trace_ksm_enter()``.
        """
        if self._free_slot_ids:
            slot = Slot(heapq.heappop(self._free_slot_ids), mm)
        elif self._next_slot_id < ITEM_SLOT_LIMIT:
            slot = Slot(self._next_slot_id, mm)
            self._next_slot_id += 1
        else:
            raise ResourceError(
                f"pid {mm.pid}: the simulator gives at most {ITEM_SLOT_LIMIT:,} processes "
                "a KSM slot at once"
            )
        self.slot_of[id(mm)] = slot
        self.slot_by_id[slot.id] = slot
        was_empty = not self.slots
        if self.cursor is None or self.knobs.run == 2:
            self.slots.append(slot)
        else:
            self.slots.insert(self.slots.index(self.cursor), slot)
        if self.tracer is not None:
            self._emit("ksm_enter", mm=mm.pid)
        return was_empty

    def exit(self, mm: MM) -> None:
        """``__ksm_exit()``, before the exiting mm's page tables are torn down.

        Only an mm with a slot (``MMF_VM_MERGEABLE``) gets there, and emits
        ``trace_ksm_exit()``.
        """
        slot = self.slot_of.get(id(mm))
        if slot is None:
            return
        if self.tracer is not None:
            self._emit("ksm_exit", mm=mm.pid)
        if slot is self.cursor:
            return
        self.slots.remove(slot)
        if slot.rmap_items == 0:
            self._forget(slot)
        else:
            at = 0 if self.cursor is None else self.slots.index(self.cursor) + 1
            self.slots.insert(at, slot)

    def _forget(self, slot: Slot) -> None:
        """The slot is gone; its id, which no item holds any more, is free
        for the next mm to enter (the item record has room for few ids)."""
        assert slot.rmap_items == 0, "a slot forgotten while items hold its id"
        del self.slot_of[id(slot.mm)]
        del self.slot_by_id[slot.id]
        heapq.heappush(self._free_slot_ids, slot.id)

    def _drop(self, slot: Slot) -> None:
        """Remove a slot from the list and clear MMF_VM_MERGEABLE."""
        self.slots.remove(slot)
        self._forget(slot)

    # -- items ---------------------------------------------------------------

    def _free_items(self, slot: Slot, start: int, end: int, passed: bool = False) -> None:
        """Free every item of ``slot`` at pages [start, end) (stale or trailing items).

        ``passed``: the scan walked past these pages; in the v6 design a
        flagged item at a zero page of a mergeable VMA is then kept.
        """
        keep = passed and self.mode.flags_zero_page_items
        for lo, _hi, view in slot.items.segments(start, end):
            at = np.flatnonzero(view >= 0)
            if keep and len(at):
                flagged = at[self.items.flagged(view[at])]
                kept = [
                    k
                    for k in flagged.tolist()
                    if self._walk(slot.mm, lo + k) is WalkResult.ZERO_PAGE
                ]
                if kept:
                    at = np.setdiff1d(at, np.array(kept, np.int64))
            if len(at):
                self._free_rows(slot, view[at].copy())
                view[at] = NULL

    def _free_rows(self, slot: Slot, rows: IntArray) -> None:
        """``remove_rmap_item_from_tree()`` then ``free_rmap_item()`` (the map is the caller's)."""
        if self.mode.flags_zero_page_items:
            flagged = rows[self.items.flagged(rows)]
            if len(flagged):
                self._free_flagged(slot, flagged)
        self._unlink_rows(rows)
        self.items.release(rows)
        slot.rmap_items -= len(rows)
        self.c.rmap_items -= len(rows)

    def _unlink_rows(self, rows: IntArray) -> None:
        """``remove_rmap_item_from_tree()`` for several items."""
        state = self.items.state[rows]
        unstable = rows[state == UNSTABLE]
        if len(unstable):
            self._unlink_unstable(unstable)
        stable = rows[state == STABLE]
        if len(stable):
            nodes = [self.nodes[n] for n in self.items.node[stable].tolist()]
            live = np.fromiter((n.alive for n in nodes), np.bool_, len(nodes))
            if live.any():
                self._unlink_from_live(stable[live])
            for r in stable[~live].tolist():
                # Unlinking one item of a stale node unlinks all its items.
                if self.items.state[r] == STABLE:
                    self._unlink_stable(r)

    def _unlink_unstable(self, rows: IntArray) -> None:
        it = self.items
        self.c.pages_unshared -= len(rows)
        current = rows[it.seq[rows] == (self.seqnr & SEQNR_MASK)]
        for r in current:
            key = int(it.checksum[r])
            if self.unstable.get(key) == int(r):
                del self.unstable[key]
        it.state[rows] = NONE

    def _unlink_stable(self, row: int) -> None:
        """Unlink one stable item: from its node, or the whole node if stale."""
        node = self.nodes[int(self.items.node[row])]
        if node.alive:
            self._unlink_from_live(np.array([row], np.int64))
        else:
            self._remove_node(node)

    def _unlink_from_live(self, rows: IntArray) -> None:
        """Unlink items of live nodes from their nodes (``rmap_hlist_len`` and the
        sharing counters go down; the last item of a node leaves it unshared)."""
        it, c, cols = self.items, self.c, self.node_cols
        nids = it.node[rows].astype(np.int64)
        head, nxt, prv = cols.head, it.hnext, it.hprev
        # One at a time: an item's neighbours may be leaving too.
        for row, nid in zip(rows.tolist(), nids.tolist(), strict=True):
            before, after = int(prv[row]), int(nxt[row])
            if before >= 0:
                nxt[before] = after
            else:
                head[nid] = after
            if after >= 0:
                prv[after] = before
        np.subtract.at(cols.size, nids, 1)
        emptied = int(np.count_nonzero(cols.size[np.unique(nids)] == 0))
        c.pages_sharing -= len(rows) - emptied
        c.pages_shared -= emptied
        self._merging_down(rows)
        it.state[rows] = NONE
        it.node[rows] = NULL

    def _merging_down(self, rows: IntArray) -> None:
        """Items ``rows`` leave their nodes: their mms' ``merging_pages`` go down."""
        slots, counts = np.unique(self.items.slots(rows), return_counts=True)
        for sid, n in zip(slots.tolist(), counts.tolist(), strict=True):
            self.slot_by_id[sid].merging_pages -= n

    def unlink(self, row: int) -> None:
        """``remove_rmap_item_from_tree()``."""
        state = int(self.items.state[row])
        if state == STABLE:
            self._unlink_stable(row)
        elif state == UNSTABLE:
            self._unlink_unstable(np.array([row], np.int64))

    # -- stable tree -----------------------------------------------------------

    def _remove_node(self, node: StableNode) -> None:
        """``remove_node_from_stable_tree()``: unlink all its items, detach, free.

        Emits ``trace_ksm_remove_rmap_item()`` for each item of its hlist but
        the last (the oldest: the one that counted in ``pages_shared``), then
        ``trace_ksm_remove_ksm_page()``.
        """
        it = self.items
        rows = np.array(self.hlist(node), np.int64)
        if self.tracer is not None:
            kpage = self._kpage(node)
            for row in rows[:-1].tolist():
                pid, page = self._item_page(row)
                self._emit(
                    "ksm_remove_rmap_item",
                    pfn=kpage,
                    rmap_item=page * self.tracer.page_size,
                    mm=pid,
                )
            self._emit("ksm_remove_ksm_page", pfn=kpage)
            self.tracer.origins.pop(node.id, None)
        if len(rows):
            self.c.pages_sharing -= len(rows) - 1
            self.c.pages_shared -= 1
            self._merging_down(rows)
            it.state[rows] = NONE
            it.node[rows] = NULL
            self.node_cols.head[node.id] = NULL
            self.node_cols.size[node.id] = 0
        if node.chain is not None:
            node.chain.remove(node)
            node.chain = None
            self.c.stable_node_dups -= 1
        elif self.stable.get(node.content) is node:
            del self.stable[node.content]
        del self.nodes[node.id]
        if node.alive:
            self.mem.frames.node[node.frame] = NULL
            self.mem.frames.changes += 1

    def _choose_dup(self, chain: Chain, prune_allowed: bool) -> StableNode | None:
        """``stable_node_dup()`` + ``__stable_node_chain()``: pick a dup, prune, collapse.

        With pruning (at most every stable_node_chains_prune_millisecs) every
        dup is checked and the fullest candidate wins; without, the walk stops
        at the first candidate.  A chain left with one dup collapses into a
        plain node; a chain left with none is freed.  Before 6.11
        (``chain_collapse_any`` False) only candidates are chosen (None if no
        dup has room) and only a pruning lookup collapses the chain.
        """
        maxps = self.knobs.max_page_sharing
        interval = jiffies_ns(self.knobs.stable_node_chains_prune_millisecs)
        chain.looked_at += 1
        prune = prune_allowed and self.now >= prunable_from(chain.prune_time, interval)
        if prune:
            chain.prune_time = self.now
        found: StableNode | None = None
        for dup in chain.walk():
            self.c.dups += 1
            if not dup.alive:
                self._remove_node(dup)
                continue
            if not self.chain_collapse_any:
                if self._candidate(dup, maxps) and (
                    found is None or self._size(dup) > self._size(found)
                ):
                    found = dup
                    if not prune:
                        break
                continue
            if found is None or (
                self._candidate(dup, maxps)
                and (not self._candidate(found, maxps) or self._size(dup) > self._size(found))
            ):
                found = dup
            if not prune and self._candidate(found, maxps):
                break
        if found is None:
            if not chain.count:
                del self.stable[chain.content]
                self.c.stable_node_chains -= 1
            return None
        if chain.count == 1 and (prune or self.chain_collapse_any):
            chain.clear()
            found.chain = None
            self.stable[chain.content] = found
            self.c.stable_node_chains -= 1
            self.c.stable_node_dups -= 1
        elif chain.head != found.id and self._candidate(found, maxps - 1):
            # __is_page_sharing_candidate(found, 1): room for one more item.
            chain.remove(found)
            chain.push(found)
        return found

    @staticmethod
    def _jiffies(t: int) -> int:
        return t // JIFFY_NS

    def _stable_search(self, content: int) -> StableNode | None:
        """``stable_tree_search()`` for an ordinary page: a KSM page to merge into, or None."""
        entry = self.stable.get(content)
        if entry is None:
            return None
        if isinstance(entry, Chain):
            node = self._choose_dup(entry, prune_allowed=True)
            if node is None:
                return None
        else:
            node = entry
            if not node.alive:
                self._remove_node(node)
                return None
        return node if self._candidate(node, self.knobs.max_page_sharing) else None

    def _stable_insert(self, content: int, frame: int) -> StableNode:
        """``stable_tree_insert()``: a node for a new KSM page; a new dup if the content exists."""
        entry: StableNode | Chain | None = self.stable.get(content)
        if isinstance(entry, Chain):
            self._choose_dup(entry, prune_allowed=False)
            entry = self.stable.get(content)
        if isinstance(entry, StableNode) and not entry.alive:
            self._remove_node(entry)
            entry = None
        node = StableNode(self._next_node_id, content, frame)
        self._next_node_id += 1
        self.nodes[node.id] = node
        self.node_cols.add(node.id, np.array([frame], np.int64))
        self.mem.frames.node[frame] = node.id
        self.mem.frames.changes += 1
        if entry is None:
            self.stable[content] = node
            return node
        if isinstance(entry, StableNode):
            chain = self.chains.new(content, self.now)
            chain.push(entry)
            entry.chain = chain
            self.stable[content] = chain
            self.c.stable_node_chains += 1
            self.c.stable_node_dups += 1
            entry = chain
        entry.push(node)
        node.chain = entry
        self.c.stable_node_dups += 1
        return node

    def _append(self, row: int, node: StableNode) -> None:
        """``stable_tree_append()``: link an item to a node."""
        cols, it, nid = self.node_cols, self.items, node.id
        first = int(cols.head[nid])
        it.hnext[row], it.hprev[row] = first, NULL
        if first >= 0:
            it.hprev[first] = row
        cols.head[nid] = row
        cols.size[nid] += 1
        if cols.size[nid] > 1:
            self.c.pages_sharing += 1
        else:
            self.c.pages_shared += 1
        self.slot_by_id[self.items.slot_of(row)].merging_pages += 1
        self.items.state[row] = STABLE
        self.items.node[row] = node.id

    def _size(self, node: StableNode) -> int:
        """``rmap_hlist_len``."""
        return int(self.node_cols.size[node.id])

    def _candidate(self, node: StableNode, max_page_sharing: int) -> bool:
        """``is_page_sharing_candidate()``: 0 < rmap_hlist_len < max_page_sharing."""
        return 0 < self._size(node) < max_page_sharing

    def hlist(self, node: StableNode) -> list[int]:
        """The items linked to ``node``."""
        rows: list[int] = []
        row, nxt = int(self.node_cols.head[node.id]), self.items.hnext
        while row >= 0 and len(rows) <= len(nxt):  # (a broken list may loop)
            rows.append(row)
            row = int(nxt[row])
        return rows

    def remove_all_stable_nodes(self) -> bool:
        """``remove_all_stable_nodes()``: drop the nodes whose page is gone; True if some remain."""
        remain = False
        for entry in self.stable.values():
            dups = entry.dups if isinstance(entry, Chain) else [entry]
            for node in dups:
                if node.alive:
                    remain = True
                else:
                    self._remove_node(node)
            if isinstance(entry, Chain) and not entry.count:
                del self.stable[entry.content]
                self.c.stable_node_chains -= 1
        return remain

    # -- the scan ------------------------------------------------------------

    def batch(
        self,
        budget: int,
        now: int,
        sub_budget: int = 0,
        period: int = 0,
        resumed: tuple[int, tuple[int, ...], bool] | None = None,
    ) -> int:
        """``ksm_do_scan(budget)``: visit up to ``budget`` items; return the visits.

        The batch ends early when a pass ends (``scan_get_next_rmap_item()``
        returning nothing), forfeiting the rest of the budget.

        With ``sub_budget``, the call stands for back-to-back batches of
        ``sub_budget`` visits each, the j-th starting at ``now + j * period``
        (wake-ups with no event between them): one batch ending where the
        next begins walks exactly as they would, so only the time differs,
        and what reads the time (chain pruning, the advisor) sees that of the
        batch it falls in.  The pass-starting work can only come first.

        ``resumed`` goes on with a batch :meth:`batches` began in C: its
        visits so far, its counts so far (``Work``'s fields), and whether
        C left the window at the cursor after its step.
        """
        self.now = now
        self._clock = (now, sub_budget, period)
        self._batch_marks = self._marks()
        if self.native is not None:
            self._batch_args(budget)
        visits, pending = 0, False
        if resumed is not None:
            visits, counts, pending = resumed
            done, m = Work(*counts), self._batch_marks
            self._batch_marks = m._replace(
                skipped=m.skipped - done.skips,
                hits=m.hits - done.hits,
                checksums=m.checksums - done.checksums,
                searches=m.searches - done.searches,
                pairs=m.pairs - done.pairs,
                merges=m.merges - done.merges,
                zero_merges=m.zero_merges - done.zero_merges,
                dups=m.dups - done.dups,
                items=m.items - (done.allocs - done.frees),
                item_changes=m.item_changes - (done.allocs + done.frees),
            )
        while visits < budget:
            if self.cursor is None:
                if not self.slots:
                    break
                self._start_pass()
            slot = self.cursor
            assert slot is not None
            finished, visits = self._scan_mm(slot, budget, visits, pending)
            pending = False
            if not finished:
                break
            # The batch that ends the pass is the one after the last visit's,
            # when that visit used up its budget.
            self._tick(visits + 1)
            if self._next_mm(slot):
                break
        batches = min(budget // sub_budget, visits // sub_budget + 1) if sub_budget else 1
        self._account(self.work(self._batch_marks, batches))
        return visits

    def batches(self, budget: int, wake: int, t: int) -> int | None:
        """The wake-ups from ``wake`` on before ``t``, each a :meth:`batch` of
        ``budget`` visits and the next starting when it says
        (:func:`~ksmreplay.timing.next_wake_ns`); the next wake-up.

        The native core runs them (:meth:`Native.walk` with a clock), pricing
        each batch as :meth:`work` and :meth:`_account` do, while they stay
        in the cursor's VMA and need nothing of Python.  Where a batch
        reaches the end of the VMA, it goes on in C in the next mergeable
        VMA (:meth:`_following`: of the same mm, or of the next mm where
        finishing this one needs nothing but moving the cursor); a batch C
        stops in otherwise is finished by :meth:`batch`.  None, with nothing
        run, where it cannot start (no native core, a tracer, a pass to
        start, the cursor outside a mergeable VMA, ``t`` from
        :data:`PRUNE_CLAMP` on).  For the engine, which calls it only where
        no two wake-ups may run as one call (``Engine._steady_period``).
        """
        core, it, c = self.native, self.items, self.c
        slot = self.cursor
        if (
            core is None
            or not self._walks()
            or slot is None
            or slot.mm.exiting
            or budget <= 0
            or t >= PRUNE_CLAMP  # (the native core's clock is 64 bits)
        ):
            return None
        mm = slot.mm
        i = mm.vma_index(self.cursor_page)
        if i == len(mm.vmas) or not mm.vmas[i].mergeable:
            return None
        vma = mm.vmas[i]
        sleep = self.knobs.sleep_millisecs
        timeout, shift = wake_clock(sleep)
        prices = unit_prices(self._cached_pages())
        base, shared = self._pass_marks
        visits = 0
        since: tuple[int, ...] = ()  # (the batch in progress, if C goes on with one)
        while True:
            self.cursor_saw_mergeable = True
            self.now = wake
            self._clock = (wake, 0, 0)
            self._batch_args(budget)
            free_rows, n_free, fresh, rows = it.free_rows(WINDOW_CHUNKS * CHUNK)
            self._reserve_made()
            self._window_args(slot)
            clock = Clock(
                prices, t, wake, c.searches - base, shared.bit_length(), PRUNE_CLAMP, timeout,
                shift, CPU_SHARE_PERCENT, JIFFY_NS, since,
            )  # fmt: skip
            walked = core.walk(
                self._tables(core, free_rows), slot.mm.pt.directory(), slot.items.directory(),
                max(self.cursor_page, vma.start), vma.end, budget, visits,
                self._visits_per_chunk, self.cursor_item_page, bool(self.knobs.smart_scan),
                (n_free, fresh, rows), self.unstable.room(), self._args.bytes, MADE_ROOM, clock,
            )  # fmt: skip
            ran = core.clocked()
            self._took(slot, walked)
            if ran.batches:
                self.work_done = Work(*map(operator.add, self.work_done, ran.work))
                self.cpu_ns += ran.cpu
                self.batch_ns = ran.cost
            if walked.found == WALKED_BUDGET:
                # (every batch ran whole: the last one's clock stays)
                self.cursor_page = walked.stop + 1
                self.now = ran.last
                self._clock = (ran.last, 0, 0)
                return ran.wake
            wake = ran.wake
            if walked.found == WALKED_END:
                following = self._following(slot, vma)
                if following is not None:
                    slot, vma = following
                    visits, since = walked.visits, ran.since
                    continue
            break
        # A batch in progress: Python goes on with it from the window C stopped at.
        self.cursor_page = walked.start
        self.batch(budget, wake, resumed=(walked.visits, ran.since, walked.found == WALKED_AFTER))
        return next_wake_ns(wake, self.batch_ns, sleep)

    def _following(self, slot: Slot, vma: Vma) -> tuple[Slot, Vma] | None:
        """Where :meth:`batches` goes on in C after walking ``slot``'s VMA
        ``vma`` to its end in a batch: the next mergeable VMA of the mm; or,
        when there is none, the first of the next mm's, where finishing this
        mm (:meth:`_next_mm`) only moves the cursor (no trailing item to free,
        the pass not ending, the next mm not exiting).  The cursor is moved
        there; None, with nothing changed, where :meth:`batch` has more to do.
        """
        mm = slot.mm
        for v in mm.vmas[mm.vma_index(vma.end) :]:
            if v.mergeable:
                self.cursor_page = v.start
                return slot, v
        i = self.slots.index(slot) + 1
        if i == len(self.slots):
            return None
        nxt = self.slots[i]
        if nxt.mm.exiting:
            return None
        first = next((v for v in nxt.mm.vmas if v.mergeable), None)
        if first is None or any(
            (view >= 0).any() for _lo, _hi, view in slot.items.segments(self.cursor_item_page, END)
        ):
            return None
        self._next_mm(slot)  # (it frees nothing and ends no pass here)
        self.cursor_page = first.start
        return nxt, first

    # -- ksmd's CPU time (timing.Work) -------------------------------------

    def _marks(self) -> _Marks:
        c, it = self.c, self.items
        return _Marks(
            c.pages_skipped,
            c.hits,
            c.checksums,
            c.searches,
            c.pairs,
            c.merges,
            c.zero_merges,
            c.dups,
            c.passes,
            it.count,
            it.changes,
        )

    def work(self, since: _Marks, batches: int) -> Work:
        """What ksmd did since ``since`` (:meth:`_marks`, within one pass), by
        ``batches`` batches: the kinds of visit as counted by the walk, items
        made and freed from the item table's count and changes, and the tree
        walks' depths (:func:`~ksmreplay.timing.unstable_levels`; the stable
        tree's as deep as ``pages_shared`` at the pass start says).
        """
        now = self._marks()
        d = _Marks(*map(operator.sub, now, since))
        base, shared = self._pass_marks
        levels = unstable_levels(max(since.searches - base, 0), now.searches - base)
        return Work(
            batches=batches,
            passes=d.passes,
            skips=d.skipped,
            hits=d.hits,
            checksums=d.checksums,
            searches=d.searches,
            pairs=d.pairs,
            merges=d.merges,
            zero_merges=d.zero_merges,
            allocs=(d.item_changes + d.items) // 2,
            frees=(d.item_changes - d.items) // 2,
            dups=d.dups,
            unstable_levels=levels,
            stable_levels=(d.searches + d.merges) * shared.bit_length(),
        )

    def _account(self, work: Work) -> None:
        """Charge a batch call's ``work`` to ksmd's CPU time (:attr:`cpu_ns`)."""
        self.work_done = Work(*map(operator.add, self.work_done, work))
        self.batch_ns = batch_cost_ns(work, self._cached_pages())
        self.cpu_ns += self.batch_ns

    def _cached_pages(self) -> int | None:
        """The working set the running batch may find in the cache
        (:func:`~ksmreplay.timing.cached_pages`)."""
        return cached_pages(self.pass_pages, self.knobs.sleep_millisecs)

    def idle_batches(self, n: int) -> None:
        """Charge ``n`` batches that visit nothing (``pages_to_scan`` = 0)."""
        self._account(Work(batches=n))

    def _tick(self, visit: int) -> None:
        """Set :attr:`now` to the start of the batch the ``visit``-th visit (from 1) falls in."""
        start, sub, period = self._clock
        if sub:
            self.now = start + (max(visit, 1) - 1) // sub * period

    def _start_pass(self) -> None:
        """Start of a pass: advisor clock, ``trace_ksm_start_scan()``, empty
        unstable tree, cursor on the first mm."""
        if self.knobs.advisor_mode == "scan-time":
            self.advisor.start_scan = self.now
        if self.tracer is not None:
            self._emit("ksm_start_scan", seq=self.seqnr, rmap_entries=self.c.rmap_items)
        self._pass_marks = (self.c.searches, self.c.pages_shared)
        self.pass_pages = sum(
            v.end - v.start
            for slot in self.slots
            if not slot.mm.exiting
            for v in slot.mm.vmas
            if v.mergeable
        )
        self.unstable.clear()
        self.cursor = self.slots[0]
        self.cursor_page = 0
        self.cursor_item_page = 0
        self.cursor_saw_mergeable = False

    def _next_mm(self, slot: Slot) -> bool:
        """Finish the cursor's mm and move on; True when that ended the pass."""
        # remove_trailing_rmap_items()
        self._free_items(slot, self.cursor_item_page, END, passed=True)
        i = self.slots.index(slot)
        nxt = self.slots[i + 1] if i + 1 < len(self.slots) else None
        if not self.cursor_saw_mergeable or slot.mm.exiting:
            self._drop(slot)
        self.cursor = nxt
        self.cursor_page = 0
        self.cursor_item_page = 0
        self.cursor_saw_mergeable = False
        if nxt is None:
            self._end_pass()
            return True
        return False

    def _end_pass(self) -> None:
        """End of a pass: the advisor, ``trace_ksm_stop_scan()``, ``full_scans`` up."""
        # (a pass is charged where it ends: the batch that ends it does no more)
        self.c.passes += 1
        if self.knobs.advisor_mode == "scan-time":
            self._advise()
        if self.tracer is not None:
            self._emit("ksm_stop_scan", seq=self.seqnr, rmap_entries=self.c.rmap_items)
        self.seqnr += 1

    def _scan_mm(
        self, slot: Slot, budget: int, visits: int, pending: bool = False
    ) -> tuple[bool, int]:
        """Walk the cursor's mm from the cursor; (mm finished, visits so far).

        With the native core (and no tracer), the windows of a VMA are
        walked in C (:meth:`_walk_native`) until one needs Python, which is
        done here as without it (:meth:`_scan_window`, which goes on from the
        step C made of it, if C made one), and C goes on after it.
        With ``pending``, the window at the cursor is one C left after its
        step (:meth:`batches`).
        """
        mm = slot.mm
        if mm.exiting:
            # An exiting mm has no VMAs, and its whole item list is trailing.
            self.cursor_item_page = 0
            return True, visits
        walks = self._walks()
        i = mm.vma_index(self.cursor_page)
        vmas = mm.vmas
        while i < len(vmas):
            vma = vmas[i]
            i += 1
            if not vma.mergeable:
                continue
            self.cursor_saw_mergeable = True
            start = max(self.cursor_page, vma.start)
            while start < vma.end:
                found = WALKED_BEFORE
                if pending:
                    found, pending = WALKED_AFTER, False
                elif walks:
                    found, start, visits = self._walk_native(slot, start, vma.end, budget, visits)
                    if found == WALKED_END:
                        break
                    if found == WALKED_BUDGET:
                        return False, visits
                # A window of at most WINDOW_CHUNKS page-table chunks, sized to
                # the budget left at the visits per chunk the last window had.
                chunks = min(WINDOW_CHUNKS, (budget - visits) // self._visits_per_chunk + 1)
                segs = mm.pt.runs(start, vma.end, chunks)
                if not segs:
                    break
                self._window_visits = visits
                done, stop = self._scan_window(
                    slot, segs, budget - visits, walked=found == WALKED_AFTER
                )
                visits += done
                # Chunks the visits came from: up to the last visit's when cut short.
                used = _chunks_used(segs, END if stop is None else stop)
                self._visits_per_chunk = max(done // used, 1)
                if stop is not None:
                    self.cursor_page = stop + 1
                    return False, visits
                start = segs[-1][1]
            self.cursor_page = vma.end
        return True, visits

    def _walks(self) -> bool:
        """Whether the native core walks windows itself (:meth:`_walk_native`,
        :meth:`batches`): with no tracer, which wants every visit's events."""
        return self.native_walk and self.native is not None and self.tracer is None

    def _walk_native(
        self, slot: Slot, start: int, end: int, budget: int, visits: int
    ) -> tuple[int, int, int]:
        """The windows of pages [``start``, ``end``) of ``slot``'s mm in C
        (:meth:`Native.walk`), from ``visits`` of ``budget`` on, until one
        needs Python; what the windows done did is taken in here as
        :meth:`_scan_window` takes it in.  Returns how the walk ended
        (``WALKED_*``), where it stopped and the visits so far; with
        ``WALKED_BUDGET`` the cursor is set."""
        core, it = self.native, self.items
        assert core is not None
        free_rows, n_free, fresh, rows = it.free_rows(WINDOW_CHUNKS * CHUNK)
        self._reserve_made()
        self._window_args(slot)
        walked = core.walk(
            self._tables(core, free_rows), slot.mm.pt.directory(), slot.items.directory(),
            start, end, budget, visits, self._visits_per_chunk, self.cursor_item_page,
            bool(self.knobs.smart_scan), (n_free, fresh, rows), self.unstable.room(),
            self._args.bytes, MADE_ROOM,
        )  # fmt: skip
        self._took(slot, walked)
        if walked.stepped:
            self._tick(walked.window_visits + 1)
        if walked.found == WALKED_BUDGET:
            self.cursor_page = walked.stop + 1
        return walked.found, walked.start, walked.visits

    def _took(self, slot: Slot, walked: Walked) -> None:
        """Take in what the windows :meth:`Native.walk` did wholly did, as
        :meth:`_scan_window` takes a window's in."""
        it, c = self.items, self.c
        made, freed = walked.made, walked.freed
        it.took(made, freed, walked.free, walked.fresh)
        if walked.stepped:
            slot.rmap_items += made - freed
            c.rmap_items += made - freed
            c.pages_skipped += walked.skipped
            c.pages_unshared -= walked.unshared
            c.pages_scanned += walked.scanned
            c.hits += walked.hits
            self._visited(slot, walked.done)
            self.cursor_item_page = walked.item_page
        self._visits_per_chunk = walked.per_chunk

    def _scan_window(
        self, slot: Slot, segs: list[tuple[int, int, Entries]], budget: int, walked: bool = False
    ) -> tuple[int, int | None]:
        """Handle the present pages of consecutive page-table segments, in address order.

        ``segs`` are ``PageTable.runs()`` of the mm.  The runs' PTEs and
        item-map entries are flat arrays (``ptes``, ``imap``, indexed by
        position in the window, ``pages`` giving each position's page).  A
        window of one run (the rule) works on the page table and item map
        themselves; a window of several gathers copies, and writes the item
        map back (and, with the native core, the PTEs it changes).  The walk
        is :meth:`_walk_window`'s, or the native core's: one
        :meth:`Native.step`, then :meth:`_visit_listed` for what it handed
        back (or, with items to free before the window or too few free
        rows for its new items, :meth:`_window_front`, :meth:`_take_listed`
        and :meth:`_visit_listed`: the same in steps).

        With ``walked``, the window is the one :meth:`_walk_native` left to
        Python after its step (``WALKED_AFTER``): C wrote it back, so it is
        gathered as here, and goes on from that step (:meth:`_stepped`).

        Returns the visits made and, if the budget ran out, the page of the
        last visit (the cursor stops right after it).
        """
        pages: IntArray | _Pages
        if len(segs) == 1:
            lo, hi, ptes = segs[0]  # the page table itself: nothing to write back
            pages = _Pages(lo)
        else:
            ptes = np.concatenate([v for _lo, _hi, v in segs])
            pages = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi, _v in segs])
        imap_views = []
        items = slot.items
        keys = [(lo >> CHUNK_SHIFT, (hi - 1) >> CHUNK_SHIFT) for lo, hi, _v in segs]
        missing = [
            k
            for first, last in keys
            if not items.covers(first, last)
            for k in range(first, last + 1)
        ]
        if missing:
            if not (ptes >= 0).any():
                return 0, None  # (and no item map made where no page is)
            items.locate(np.array(missing, np.int64))  # (made at once: in few blocks)
        for (lo, hi, _v), (first, last) in zip(segs, keys, strict=True):
            for _lo, _hi, v in items.runs(lo, hi, last - first + 1):
                imap_views.append(v)
        imap = imap_views[0] if len(imap_views) == 1 else np.concatenate(imap_views)
        if self.native is None:
            return self._walk_window(slot, ptes, imap, imap_views, pages, budget)
        core, it = self.native, self.items
        seg_rows = _seg_rows(segs)
        self._window_args(slot)
        if walked:
            step = core.walked_step()
            return self._stepped(slot, segs, seg_rows, ptes, imap, imap_views, pages, step)
        traced = self.tracer is not None
        if self.cursor_item_page < segs[0][0] and any(
            (view >= 0).any()
            for _lo, _hi, view in items.segments(self.cursor_item_page, segs[0][0])
        ):
            # Items the walk passes before the window are freed after the
            # front, before the window's items are made: in steps.
            found = self._window_front(core, ptes, imap, budget)
            if found is None:
                return 0, None
            front: Front = found
            self._tick(self._window_visits + 1)
            self._free_items(slot, self.cursor_item_page, int(pages[0]), passed=True)
            rows, stale_rows = self._take_listed(
                slot, front, ptes, imap, imap_views, pages, imap[front.pos].astype(np.int64)
            )
            return self._window_done(
                core, slot, segs, seg_rows, ptes, pages, front, rows, stale_rows, None
            )
        free_rows, n_free, fresh, end = it.free_rows(len(ptes))
        self._reserve(min(len(ptes), budget))
        step = core.step(
            self._tables(core, free_rows), ptes, imap, seg_rows, budget,
            bool(self.knobs.smart_scan), (n_free, fresh, end), self._args.bytes, MADE_ROOM,
            traced,
        )  # fmt: skip
        return self._stepped(slot, segs, seg_rows, ptes, imap, imap_views, pages, step)

    def _stepped(
        self,
        slot: Slot,
        segs: list[tuple[int, int, IntArray]],
        seg_rows: IntArray,
        ptes: IntArray,
        imap: IntArray,
        imap_views: list[IntArray],
        pages: IntArray | _Pages,
        step: Stepped,
    ) -> tuple[int, int | None]:
        """The rest of :meth:`_scan_window` after the window's step: take in
        what it did, and go on where it stopped."""
        core, it, c = self.native, self.items, self.c
        assert core is not None
        traced = self.tracer is not None
        if step.status == STEP_NONE:
            return 0, None
        self._tick(self._window_visits + 1)
        if step.status == STEP_ALLOC:
            front = Front(*core.front())
            rows, stale_rows = self._take_listed(
                slot, front, ptes, imap, imap_views, pages, core.listed_rows()
            )
            return self._window_done(
                core, slot, segs, seg_rows, ptes, pages, front, rows, stale_rows, None
            )
        made, freed = step.items, step.freed
        it.took(made, freed, step.free, step.fresh)
        slot.rmap_items += made - freed
        c.rmap_items += made - freed
        if len(imap_views) > 1 and (made or step.stale):
            _write_back(imap_views, imap)
        # (the stale items are freed, unless a visit was handed back or the
        # v6 design's flags are to be seen to)
        unfreed = step.stale if step.freed == 0 else 0
        if step.status == STEP_HANDED or traced or unfreed:
            front = Front(*core.front())
            rows = core.listed_rows()
            return self._window_done(
                core, slot, segs, seg_rows, ptes, pages, front, rows,
                rows[front.kind == LISTED_STALE] if unfreed else None, step.done,
            )  # fmt: skip
        # Every event done, nothing to trace: the counts are all there is.
        done = step.done
        assert done is not None
        stop = self._counted(step, pages)
        self._visited(slot, done)
        if done.ptes_changed and len(segs) > 1:
            _write_back([v for _lo, _hi, v in segs], ptes)
        return step.visits, stop

    def _counted(self, front: Front | Stepped, pages: IntArray | _Pages) -> int | None:
        """Take in a window front's counts (of :meth:`_window_front` or of a
        step) and move the item cursor past its last page; the page of the
        last visit if the budget ran out there, else None."""
        c = self.c
        c.pages_skipped += front.skipped
        c.pages_unshared -= front.unshared
        c.pages_scanned += front.visits
        c.hits += front.hits
        self.cursor_item_page = int(pages[front.last]) + 1
        return int(pages[front.last]) if front.stopped else None

    def _window_done(
        self,
        core: Native,
        slot: Slot,
        segs: list[tuple[int, int, Entries]],
        seg_rows: IntArray,
        ptes: Entries,
        pages: IntArray | _Pages,
        front: Front,
        rows: IntArray,
        stale_rows: IntArray | None,
        done: Visited | None,
    ) -> tuple[int, int | None]:
        """The rest of a window after its front, with the native core: the
        counts, the listed events from where ``done`` stopped (all of them
        if it is None), the stale items ``stale_rows`` freed; as
        :meth:`_scan_window` returns."""
        stop = self._counted(front, pages)
        self._visit_listed(core, slot, segs, seg_rows, ptes, pages, front, rows, done)
        if stale_rows is not None and len(stale_rows):
            self._free_rows(slot, stale_rows)  # unlinked above
        return front.visits, stop

    def _take_listed(
        self,
        slot: Slot,
        front: Front,
        ptes: Entries,
        imap: Entries,
        imap_views: list[Entries],
        pages: IntArray | _Pages,
        rows: IntArray,
    ) -> tuple[IntArray, IntArray]:
        """The items of a window's listed positions, ``rows`` (-1: none yet):
        the stale ones taken out of the item map (``imap``: of the window's
        positions), fresh ones made for pages without one (``alloc_rmap_item()``);
        returns them, and the stale items (freed once the events are done)."""
        it, c = self.items, self.c
        stale_rows = imap[front.stale].astype(np.int64)
        imap[front.stale] = NULL
        new = np.flatnonzero(rows < 0)
        if len(new):
            at = front.pos[new]
            fresh = it.alloc(slot.id, pages[at])
            rows[new] = fresh
            imap[at] = fresh
            slot.rmap_items += len(new)
            c.rmap_items += len(new)
            if self.knobs.smart_scan:
                it.age[fresh[~self.mem.frames.ksm[ptes[at]]]] = 1  # skip_age() of a first visit
        if (len(new) or len(front.stale)) and len(imap_views) > 1:
            _write_back(imap_views, imap)
        return rows, stale_rows

    def _walk_window(
        self,
        slot: Slot,
        ptes: Entries,
        imap: Entries,
        imap_views: list[Entries],
        pages: IntArray | _Pages,
        budget: int,
    ) -> tuple[int, int | None]:
        """The window page by page, as ``scan_get_next_rmap_item()`` walks an mm.

        The scalar ksmd, and the place where a KSM rule is read: for each
        present page in address order, the items of the pages passed that are
        no longer present are freed (``get_next_rmap_item()``; in the v6
        design a flagged item at a zero page is kept), the page's item is
        found or made, smart_scan may skip it (:meth:`_should_skip`), and
        otherwise it is visited (:meth:`_cmp_and_merge`), until ``budget``
        visits were made.  Used without the native core, and for the modes it
        does not know (``Mode.native_scan``); the native core does the same
        (``window.c``, ``visit.c``, handing back to :meth:`_cmp_and_merge`).
        Visits change only their own page's PTE and earlier ones (a merge
        partner was visited before), so ``ptes`` holds every page's PTE at the
        time the walk reaches it; the visits themselves work on the page table.
        """
        present = np.flatnonzero(ptes >= 0)
        if len(present) == 0:
            return 0, None
        mm, it, c, fr = slot.mm, self.items, self.c, self.mem.frames
        smart = bool(self.knobs.smart_scan)
        v6 = self.mode.flags_zero_page_items
        # Unlinks the walk makes belong to the batch of the next visit.
        self._tick(self._window_visits + 1)
        self._free_items(slot, self.cursor_item_page, int(pages[0]), passed=True)
        visits = 0
        last = int(present[-1])
        stop = None
        imap_changed = False
        # Items at pages that are not present are stale, freed as the walk
        # passes them (a visit never gives a later page an item or a PTE).
        stale = np.flatnonzero((ptes < 0) & (imap >= 0)).tolist()
        s = 0
        for p in present.tolist():
            # Items of the pages passed since the last present page are stale.
            while s < len(stale) and stale[s] < p:
                q = stale[s]
                s += 1
                row = int(imap[q])
                if row < 0:
                    continue
                self._tick(self._window_visits + visits + 1)
                if v6 and ptes[q] in (PTE_ZERO, PTE_KSM_ZERO) and it.is_flagged(row):
                    continue  # v6: a flagged item at a zero page stays (WalkResult.ZERO_PAGE)
                self._free_rows(slot, np.array([row], np.int64))
                imap[q] = NULL
                imap_changed = True
            row = int(imap[p])
            frame = int(ptes[p])
            if row < 0:
                row = int(it.alloc(slot.id, np.array([pages[p]], np.int64))[0])
                imap[p] = row
                imap_changed = True
                slot.rmap_items += 1
                c.rmap_items += 1
            if smart and self._should_skip(row, bool(fr.ksm[frame]), visits + 1):
                continue
            visits += 1
            page = int(pages[p])
            self._tick(self._window_visits + visits)
            view = mm.pt.chunk(page >> CHUNK_SHIFT)
            self._cmp_and_merge(slot, row, view, page & (CHUNK - 1), page)
            if visits == budget:
                last, stop = p, page
                break
        self.cursor_item_page = int(pages[last]) + 1
        if imap_changed and len(imap_views) > 1:
            _write_back(imap_views, imap)
        c.pages_scanned += visits
        return visits, stop

    def _should_skip(self, row: int, is_ksm: bool, next_visit: int) -> bool:
        """``should_skip_rmap_item()`` with smart_scan on, for the item of a present page.

        A KSM page is never skipped.  Otherwise the item ages (up to 255); an
        item younger than 3 passes is never skipped; else, with no skips left,
        it gets ``skip_age()`` more and is visited, and with some left one is
        used: the page is skipped and its item leaves its tree (in the batch
        of the window's ``next_visit``-th visit).
        """
        if is_ksm:
            return False
        it = self.items
        age = int(it.age[row])
        if age != AGE_MAX:
            it.age[row] = age + 1
        if age < 3:
            return False
        left = int(it.skips[row])
        if left == 0:
            it.skips[row] = 1 if age <= 3 else 2 if age <= 5 else 4 if age <= 8 else 8
            return False
        it.skips[row] = left - 1
        self.c.pages_skipped += 1
        if it.state[row] != NONE:
            self._tick(self._window_visits + next_visit)
            self.unlink(row)  # remove_rmap_item_from_tree()
        return True

    def _visit_listed(
        self,
        core: Native,
        slot: Slot,
        segs: list[tuple[int, int, Entries]],
        seg_rows: IntArray,
        ptes: Entries,
        pages: IntArray | _Pages,
        front: Front,
        rows: IntArray,
        done: Visited | None,
    ) -> None:
        """The listed visits and unlinks of a window and the unlinks of its
        stale items, in address order, with ``visit.c``.  ``front`` is merged
        (stale items listed, see :attr:`Front.kind`); ``rows`` are the listed
        items; ``done``, if not None, is what the window's step already did
        (the events before ``done.stop``).

        The C loop hands back what it does not do (see there); that event is
        done here, and the loop goes on after it.  A window of several runs
        works on a copy of the PTEs (``ptes``): the copy is written back before
        a handed-back event, which works on the page table, and gathered again
        after it.
        """
        order, kind, when = front.pos, front.kind, front.cum
        mm = slot.mm
        copied = len(segs) > 1
        views = [v for _lo, _hi, v in segs]
        traced = self.tracer is not None
        n, start = len(order), 0
        while True:
            if done is None:
                self._reserve(n - start)
                done = core.visit(
                    self._tables(core, self.items.free_rows(0)[0]),
                    start, order, rows, kind, when, ptes, seg_rows,
                    self._args.bytes, MADE_ROOM, traced,
                )  # fmt: skip
            self._visited(slot, done)
            if traced:
                self._emit_visited(done, rows, when)
            if copied and done.ptes_changed:
                _write_back(views, ptes)
            k = done.stop
            if k == n:
                break
            row, p = int(rows[k]), int(pages[order[k]])
            if kind[k]:
                self._tick(self._window_visits + int(when[k]) + 1)
                self.unlink(row)
            else:
                self._tick(self._window_visits + int(when[k]))
                view = mm.pt.chunk(p >> CHUNK_SHIFT)
                self._cmp_and_merge(slot, row, view, p & (CHUNK - 1), p)
            if copied:
                ptes[:] = np.concatenate(views)
            start = k + 1
            done = None

    def _reserve(self, visits: int) -> None:
        """Room for what ``visits`` visits of the native core may add: unstable-tree
        entries, and the nodes, chains and stable-tree entries of new KSM pages
        (their ids go to the visits' args)."""
        self.unstable.reserve(visits)
        self._reserve_made()

    def _reserve_made(self) -> None:
        """:meth:`_reserve` but for the unstable tree."""
        self.node_cols.reserve(self._next_node_id + MADE_ROOM)
        self.chains.reserve(MADE_ROOM)
        self.stable.index().reserve(MADE_ROOM)
        self._args.set("next_node", self._next_node_id)
        self._args.set("next_chain", self.chains.next_id)

    def _tables(self, core: Native, free_rows: npt.NDArray[np.int32]) -> Any:
        """The tables of the scan for the native core (:meth:`Native.tables`),
        made again when one of them moved or a tree's table changed.  Made
        ahead of each call: Python code in between may grow any of them."""
        fr, it, cols = self.mem.frames, self.items, self.node_cols
        chains = self.chains.columns()
        st, un = self.stable.index().table(), self.unstable.table()
        key = (
            id(fr.content), id(fr.mapcount), id(fr.ksm), id(fr.node),
            id(it.hot), id(it.cold), id(it.hnext), id(it.hprev), id(free_rows),
            id(cols.size), id(cols.frame), id(cols.head), id(cols.dup_next),
            *map(id, chains), id(st[0]), st[1], st[2], id(un[0]), un[1], un[2],
        )  # fmt: skip
        if key != self._tables_key:
            # (the object holds the arrays: their ids stay theirs while it lives)
            self._tables_obj = None
            self._tables_obj = core.tables(
                (fr.content, fr.mapcount, fr.ksm, fr.node),
                (it.hot, it.cold, it.hnext, it.hprev),
                free_rows,
                it.blanks,
                (cols.size, cols.frame, cols.head, cols.dup_next),
                chains,
                st,
                un,
            )
            self._tables_key = key
        return self._tables_obj

    def _forget_tables(self) -> None:
        """Let the tables go (before Python grows one of them)."""
        self._tables_obj = None
        self._tables_key = ()

    def _batch_args(self, budget: int) -> None:
        """:meth:`Native.step`'s and :meth:`Native.visit`'s ``args`` for a batch call
        of up to ``budget`` visits: the knobs, and ksmd's clock as :meth:`_tick`
        keeps it (:meth:`_window_args` sets a window's, :meth:`_reserve` the next
        ids of nodes and chains; this kernel version's rules are set once).
        Chains and new KSM pages are left to :meth:`_cmp_and_merge` when a time
        the call may reach is :data:`PRUNE_CLAMP` (ns) or later."""
        start, sub, period = self._clock
        if not sub:
            start, period = self.now, 0
        latest = start + (max(budget, 1) - 1) // sub * period if sub else start
        in_range = max(start, period, latest) < PRUNE_CLAMP
        a = self._args
        a.set("max_page_sharing", self.knobs.max_page_sharing)
        a.set("now", start if in_range else 0)
        a.set("sub_budget", sub if in_range else 0)
        a.set("period", period if in_range else 0)
        a.set("prune_ns", jiffies_ns(self.knobs.stable_node_chains_prune_millisecs))
        a.set("use_zero_pages", bool(self.knobs.use_zero_pages))
        a.set("chains", in_range)
        a.set("pairs", in_range)

    def _window_args(self, slot: Slot) -> None:
        """The ``args`` of a window of ``slot``'s mm (see :meth:`_batch_args`)."""
        a = self._args
        a.set("visits", self._window_visits)
        a.set("seqnr", self.seqnr & SEQNR_MASK)
        a.set("slot", slot.id)

    def _emit_visited(self, done: Visited, rows: IntArray, when: IntArray) -> None:
        """The tracepoints of the merges ``visit.c`` made (``Visited.traced``):
        event ``i`` merged item ``rows[i]`` into node ``node`` (-1: the zero page),
        in the batch of its visit (``when[i]``)."""
        for i, nid in done.traced.tolist():
            self._tick(self._window_visits + int(when[i]))
            row = int(rows[i])
            if nid < 0:
                self._emit_zero(row)
            else:
                kpage = self._kpage(self.nodes[nid])
                self._emit_merge(row, kpage, kpage)

    def _visited(self, slot: Slot, done: Visited) -> None:
        """Take in what ``visit.c`` did: counters, hlists, nodes made, frames freed."""
        c, mm, events = self.c, slot.mm, self.mem.events
        if done.pairs:
            self._made(done)
        c.pages_shared += done.shared
        c.pages_sharing += done.sharing
        c.pages_unshared += done.unshared
        slot.merging_pages += done.merging
        events["merges"] += done.merges
        events["zero_pages_merged"] += done.zero
        mm.rss_anon -= done.zero
        mm.ksm_zero_ptes += done.zero
        if self.mode.flags_zero_page_items:
            # v6: each zero-page merge flagged its item, each visit of a flagged
            # item with a normal page cleared the flag.
            flagged = done.zero - done.unflagged
            self.c.zero_pages_sharing += flagged
            mm.zero_pages_sharing += flagged
        self.unstable.added(done.inserted)
        # Each merge and zero-page merge moved a mapping between two frames.
        self.mem.frames.changes += done.merges + done.zero
        c.hits += done.hits
        c.checksums += done.checksums
        c.searches += done.searches
        c.dups += done.dups
        c.merges += done.merges
        c.zero_merges += done.zero
        self.mem.free_frames(done.dead)

    def _made(self, done: Visited) -> None:
        """Take in the new KSM pages ``visit.c`` made (``try_to_merge_two_pages()``,
        ``stable_tree_insert()``): their nodes and chains as objects, counters."""
        fr, c = self.mem.frames, self.c
        c.pairs += done.pairs
        c.stable_node_chains += done.chains
        c.stable_node_dups += done.dups_made
        self.mem.events["merges"] += 2 * done.pairs
        fr.live_ksm += done.pairs
        fr.changes += 3 * done.pairs  # (a KSM page, a mapping moved, its node)
        self.stable.index().added(done.stable_added)
        self.unstable.deleted(done.unstable_deleted)
        for chain_id, new_chain in done.made.tolist():
            nid = self._next_node_id
            self._next_node_id += 1
            frame = int(self.node_cols.frame[nid])
            content = int(fr.content[frame])
            node = StableNode(nid, content, frame)
            self.nodes[nid] = node
            if chain_id < 0:
                self.stable.file(content, node)
                continue
            if new_chain:
                first = self.stable[content]
                assert isinstance(first, StableNode)
                first.chain = self.chains.adopt(chain_id, content)
                self.stable.file(content, first.chain)
            chain = self.stable[content]
            assert isinstance(chain, Chain)
            node.chain = chain

    def _window_front(
        self, core: Native, ptes: Entries, imap: Entries, budget: int
    ) -> Front | None:
        """The present pages of a window up to the budget: smart_scan, counting, listing.

        ``ptes`` and ``imap`` are the window's PTEs and item rows.
        ``window.c`` walks the present pages in address order until the
        ``budget``-th visit; makes smart_scan's decision for each page that has
        an item (updating its age and remaining skips, and unlinking it if it
        is skipped in an earlier pass's unstable tree; a page without an item
        is never skipped) and lists what needs more than counting, the stale
        positions among them (see :class:`Front`).  None if no page is present.
        """
        fr, it = self.mem.frames, self.items
        found = core.window(
            ptes,
            imap,
            fr.ksm,
            fr.node,
            it.hot,
            it.cold,
            bool(self.knobs.smart_scan),
            self.mode.flags_zero_page_items,
            self.seqnr & SEQNR_MASK,
            budget,
        )
        return None if found is None else Front(*found)

    def _cmp_and_merge(self, slot: Slot, row: int, view: Entries, k: int, page: int) -> None:
        """``cmp_and_merge_page()``.

        Linux 6.11+ order: checksum, zero page, stable tree, unstable tree.
        Before 6.11 (``checksum_first`` False) the stable tree was searched
        first, while the item was still linked where it was, and only a page
        that did not join a KSM page went on to the checksum test and the
        zero page.  A merge emits ``trace_ksm_merge_one_page()`` (the zero
        page) or ``trace_ksm_merge_with_ksm_page()`` (a KSM page: one event,
        or two for a new pair; also for a KSM page reached through fork,
        merged with itself).
        """
        fr, it = self.mem.frames, self.items
        frame = int(view[k])
        if self.mode.flags_zero_page_items and it.is_flagged(row):
            # v6: a flagged item visited with a normal page there loses its flag.
            self._clear_zero(slot, np.array([row], np.int64))
        if fr.ksm[frame]:
            # A KSM page reached through fork, or an item linked elsewhere:
            # stable_tree_search() returns the page itself; append with bypass.
            node = self.nodes[int(fr.node[frame])]
            self.c.hits += 1
            if int(it.state[row]) == STABLE and int(it.node[row]) == node.id:
                return
            self.unlink(row)
            if self.tracer is not None:
                # try_to_merge_with_ksm_page() of the page with itself: merged.
                kpage = self._kpage(node)
                self._emit_merge(row, kpage, kpage)
            self._append(row, node)
            return
        content = int(fr.content[frame])
        if not self.checksum_first:
            found = self._stable_search(content)
            self.unlink(row)
            if found is not None:
                self._join(row, slot, view, k, frame, found)
                return
        else:
            self.unlink(row)
        if not it.is_checked(row) or int(it.checksum[row]) != content:
            it.record_checksum(row, content)
            self.c.checksums += 1
            return
        if content == 0 and self.knobs.use_zero_pages:
            self.c.zero_merges += 1
            self._merge_zero(slot.mm, view, k, frame)
            if self.tracer is not None:
                self._emit_zero(row)
            if self.mode.flags_zero_page_items:
                self._flag_zero(slot, np.array([row], np.int64))
            return
        if self.checksum_first:
            found = self._stable_search(content)
            if found is not None:
                self._join(row, slot, view, k, frame, found)
                return
        self.c.searches += 1
        partner = self._unstable_search_insert(row, content, frame)
        if partner is None:
            return
        self.c.pairs += 1
        # try_to_merge_two_pages(): this page becomes the KSM page in place,
        # the partner's PTE is pointed at it.
        p_slot = self.slot_by_id[it.slot_of(partner)]
        p_page = it.page_of(partner)
        p_view = p_slot.mm.pt.chunk(p_page >> CHUNK_SHIFT)
        p_k = p_page & (CHUNK - 1)
        fr.ksm[frame] = True
        fr.live_ksm += 1
        fr.changes += 1
        self._replace(p_slot.mm, p_view, p_k, int(p_view[p_k]), frame)
        self.mem.events["merges"] += 2
        self.unlink(partner)
        if self.tracer is not None:
            # Two try_to_merge_with_ksm_page(): this page into itself (no KSM
            # page yet), then the partner into it.
            kpage = self.tracer.page(slot.mm.pid, page)
            self._emit_merge(row, None, kpage)
            self._emit_merge(partner, kpage, kpage)
        node = self._stable_insert(content, frame)
        if self.tracer is not None:
            self.tracer.origins[node.id] = (slot.mm.pid, page)
        self._append(partner, node)
        self._append(row, node)

    def _join(
        self, row: int, slot: Slot, view: Entries, k: int, frame: int, node: StableNode
    ) -> None:
        """``try_to_merge_with_ksm_page()`` (emits ``trace_ksm_merge_with_ksm_page()``)
        then ``stable_tree_append()``."""
        self._replace(slot.mm, view, k, frame, node.frame)
        self.mem.events["merges"] += 1
        self.c.merges += 1
        if self.tracer is not None:
            kpage = self._kpage(node)
            self._emit_merge(row, kpage, kpage)
        self._append(row, node)

    def _replace(self, mm: MM, view: Entries, k: int, old: int, kframe: int) -> None:
        """``replace_page()``: point one PTE at a KSM page, drop the old page."""
        view[k] = kframe
        self.mem.frames.mapcount[kframe] += 1
        self.mem.frames.changes += 1
        self.mem.put_frame(old)

    def _merge_zero(self, mm: MM, view: Entries, k: int, frame: int) -> None:
        """``try_to_merge_with_zero_page()``: map the shared zero page instead."""
        view[k] = PTE_KSM_ZERO
        mm.rss_anon -= 1
        mm.ksm_zero_ptes += 1
        self.mem.events["zero_pages_merged"] += 1
        self.mem.put_frame(frame)

    def _unstable_search_insert(self, row: int, content: int, frame: int) -> int | None:
        """``unstable_tree_search_insert()``: an equal unstable item, or insert this one."""
        it = self.items
        partner = self.unstable.get(content)
        if partner is None:
            self.unstable[content] = row
            it.state[row] = UNSTABLE
            it.seq[row] = self.seqnr & SEQNR_MASK
            self.c.pages_unshared += 1
            return None
        p_mm = self.slot_by_id[it.slot_of(partner)].mm
        p_page = it.page_of(partner)
        pte = p_mm.pt.get(p_page)
        fr = self.mem.frames
        if (
            p_mm.exiting
            or pte < 0
            or not p_mm.mergeable(p_page)
            or bool(fr.ksm[pte])
            or int(fr.content[pte]) != content
            or pte == frame
        ):
            return None
        return partner

    # -- unmerging -----------------------------------------------------------

    def unmerge(self, mm: MM, start: int, end: int) -> None:
        """``unmerge_ksm_pages()``: ``break_ksm()`` on every page of [start, end).

        KSM pages become private copies; whether KSM-placed zero pages are
        unshared too is the mode's (``Mode.marks_zero_pages``).  Items are left
        for ksmd to free when it passes.
        """
        self.mem.unshare(mm, start, end, self.mode.marks_zero_pages)

    def unmerge_all(self) -> None:
        """``unmerge_and_remove_all_rmap_items()`` (run=2), synchronously."""
        for slot in list(self.slots):
            mm = slot.mm
            if not mm.exiting:
                for vma in list(mm.vmas):
                    if vma.mergeable:
                        self.unmerge(mm, vma.start, vma.end)
            self._free_items(slot, 0, END)
            if mm.exiting:
                self._drop(slot)
        self.remove_all_stable_nodes()
        self.unstable.clear()
        self.seqnr = 0
        self.cursor = None
        self.cursor_page = self.cursor_item_page = 0

    # -- the scan-time advisor -------------------------------------------------

    def advisor_reset(self) -> None:
        """``set_advisor_defaults()`` on switching to scan-time: state zeroed."""
        self.advisor = Advisor()

    def _advise(self) -> None:
        """``scan_time_advisor()`` at the end of a pass: a new pages_to_scan;
        emits ``trace_ksm_advisor()``."""
        adv = self.advisor
        scan_time = max((self.now - adv.start_scan) // 1_000_000_000, 1)
        # task_sched_runtime(): the batches so far and this one up to here.
        cpu = self.cpu_ns + batch_cost_ns(self.work(self._batch_marks, 1), self._cached_pages())
        # The first evaluation measures ksmd's whole lifetime.
        cpu_ms = (cpu - adv.cpu_time) // 1_000_000
        cpu_percent = max(cpu_ms * 100 // (scan_time * 1000), 1)
        last = adv.scan_time or scan_time
        factor = max(self.knobs.advisor_target_scan_time * 100 // scan_time, 1)
        change = max(scan_time * 100 // last, 1)
        change = (70 * adv.change + 30 * change) // 100
        pages_to_scan = self.knobs.pages_to_scan
        pages = pages_to_scan * 100 // factor
        pages = pages * change // 100
        per_page_cost = max(pages_to_scan // cpu_percent, 1)
        pages = min(pages, per_page_cost * self.knobs.advisor_max_cpu)
        pages = max(pages, per_page_cost * 10)
        pages = min(pages, self.knobs.advisor_max_pages_to_scan)
        adv.change = change
        adv.scan_time = scan_time
        adv.cpu_time = cpu
        self.set_pages_to_scan(pages)
        if self.tracer is not None:
            self._emit(
                "ksm_advisor", scan_time=scan_time, pages_to_scan=pages, cpu_percent=cpu_percent
            )

    # -- idle stretches --------------------------------------------------------

    def idle_state(self, wake: int, keep: bool = False) -> IdleState:
        """ksmd's state between two passes (the cursor at the list head), for
        skipping idle stretches (``engine.Engine``); ``wake`` is when the next
        pass starts, in ns.

        :attr:`IdleState.key` and :attr:`IdleState.arrays` are everything the
        passes to come depend on, in a form that repeats once ksmd goes round
        in circles: smart_scan ages of 9 and more are alike (they decide the
        same), an unstable item's pass counts from the current one, the
        advisor's clocks from ``wake`` and ksmd's CPU time.  A chain's prune
        time matters only if the chain is looked at; :meth:`IdleState.circles`
        compares it for the chains looked at between two states, and
        :attr:`IdleState.phase` says how far each chain is from its next prune.
        :attr:`IdleState.marks` are the values that advance from pass to pass.
        With ``keep``, the arrays are copies (to compare with a later state),
        else some are the live columns.
        """
        assert self.cursor is None
        it, c, fr, adv = self.items, self.c, self.mem.frames, self.advisor
        interval = jiffies_ns(self.knobs.stable_node_chains_prune_millisecs)
        chains = []
        prunes = {}
        since = []
        for content, entry in sorted(self.stable.items(), key=lambda kv: kv[0]):
            if isinstance(entry, Chain):
                ripe = wake >= prunable_from(entry.prune_time, interval)
                prunes[content] = (entry.prune_time, entry.looked_at, ripe)
                chains.append((content, tuple(d.id for d in entry.dups), ripe))
                gone = self._jiffies(wake) - self._jiffies(entry.prune_time)
                since.append(min(gone, self._jiffies(interval)))
        # (a prune is decided in whole jiffies, and where in its jiffy a pass starts
        # decides in which jiffy each of its looks falls)
        phase = (*since, wake % JIFFY_NS) if since else ()
        advisor: tuple[int, ...] = ()
        if self.knobs.advisor_mode == "scan-time":
            advisor = (adv.scan_time, adv.change, wake - adv.start_scan, self.cpu_ns - adv.cpu_time)
        key = (
            (c.pages_shared, c.pages_sharing, c.pages_unshared, c.rmap_items),
            (c.stable_node_chains, c.stable_node_dups, c.zero_pages_sharing),
            tuple(sorted(self.mem.events.items())),
            (fr.live, fr.live_ksm, fr.changes, fr.capacity),
            (it.count, it.changes, len(it.hot), self._next_node_id, len(self.nodes)),
            tuple(
                (s.id, s.rmap_items, s.merging_pages, s.mm.pid, s.mm.rss_anon) for s in self.slots
            ),
            tuple(
                (s.mm.ksm_zero_ptes, s.mm.fault_zero_ptes, s.mm.zero_pages_sharing, s.mm.exiting)
                for s in self.slots
            ),
            self.knobs.pages_to_scan,
            advisor,
            tuple(chains),
        )
        # The frame columns (content, mapcount, ksm, node) are not hashed:
        # they cover all memory, mergeable or not, and a pass must cost what
        # ksmd's own state costs.  The states compared are pass ends of one
        # stretch between two events (``engine._Circles``), where nothing but
        # ksmd writes; and every write to those columns, ksmd's or an
        # event's, in Python or in the native core, raises ``fr.changes``
        # (``FrameTable.changes``), which never goes down.  So two states of
        # one stretch with the same key saw no write to a frame between them:
        # their frame columns are equal, element for element (and so are the
        # page tables: ksmd changes a PTE only where it merges, which writes
        # a mapcount); with the rest of the key and arrays equal, the passes
        # that follow are equal too.
        seq = np.uint8(self.seqnr & SEQNR_MASK)
        n = self._next_node_id
        cols = self.node_cols
        # (field by field: the records' padding is not state)
        arrays = [
            it.node,
            np.minimum(it.age, 9),
            it.skips,
            it.state,
            np.where(it.state == UNSTABLE, it.seq - seq, 0).astype(np.uint8),
            it.checksum,
            it.where,
            it.hnext,
            it.hprev,
            cols.size[:n],
            cols.head[:n],
            cols.frame[:n],
        ]
        if keep:
            if sum(a.nbytes for a in arrays) <= KEEP_BYTES:
                arrays = [a.copy() for a in arrays]
            else:
                arrays = [np.frombuffer(_digest(key, arrays), np.uint8)]
        marks = (
            self.seqnr,
            c.pages_scanned,
            c.pages_skipped,
            self.cpu_ns,
            self.now,
            adv.start_scan,
            adv.cpu_time,
            *self._marks(),
            *self.work_done,
        )
        return IdleState(
            key, arrays, marks, it.age.copy(), it.seq.copy(), prunes, phase, wake, interval
        )

    def jump(self, n: int, first: IdleState, last: IdleState) -> None:
        """Go ``n`` times more round the circle from ``first`` to ``last``.

        ``first`` and ``last`` are :meth:`idle_state` s of two pass ends of
        which :meth:`IdleState.circles` allows at least ``n`` (``last`` is the
        state now): what ksmd does from here on repeats what it did between
        them, so the values that advanced between them advance ``n`` times as
        much (a chain pruned in the circle is pruned where it was in each),
        and the rest stays as it is.  Ages stop at 255 and an item's pass is its
        low 8 bits, as they do pass by pass.  The tracepoints of the circles
        skipped are those of the last, repeated (``Tracer.repeat``; the tracer
        kept them since ``first``).
        """
        it, c, adv = self.items, self.c, self.advisor
        if self.tracer is not None:
            passes = last.marks[0] - first.marks[0]
            self.tracer.repeat(n, last.wake - first.wake, passes)
        seqnr, scanned, skipped, cpu, now, start_scan, cpu_time, *rest = (
            n * (b - a) for a, b in zip(first.marks, last.marks, strict=True)
        )
        kinds = _Marks(*rest[: len(_Marks._fields)])  # (items alike: in the key)
        for name in ("hits", "checksums", "searches", "pairs", "merges", "zero_merges"):
            setattr(c, name, getattr(c, name) + getattr(kinds, name))
        c.dups += kinds.dups
        c.passes += kinds.passes
        done = rest[len(_Marks._fields) :]
        self.work_done = Work(*(a + b for a, b in zip(self.work_done, done, strict=True)))
        self.seqnr += seqnr
        c.pages_scanned += scanned
        c.pages_skipped += skipped
        self.cpu_ns += cpu
        self.now += now
        adv.start_scan += start_scan
        adv.cpu_time += cpu_time
        aged = last.age.astype(np.int64) - first.age
        older = np.flatnonzero(aged > 0)
        if len(older):
            age = last.age[older] + min(n, AGE_MAX) * aged[older]
            it.age[older] = np.minimum(age, AGE_MAX)
        moved = (last.seq.astype(np.int64) - first.seq) % 256
        inserted = np.flatnonzero(moved)
        if len(inserted):
            it.seq[inserted] = (last.seq[inserted] + n % 256 * moved[inserted]) % 256
        circle = last.wake - first.wake
        for content, (prune_time, _looked_at, _ripe) in last.prunes.items():
            if prune_time != first.prunes[content][0]:
                entry = self.stable[content]
                assert isinstance(entry, Chain)
                entry.prune_time = prune_time + n * circle


def prunable_from(prune_time: int, interval: int) -> int:
    """When a chain last pruned at ``prune_time`` (ns) may be pruned again:
    once ``interval`` (stable_node_chains_prune_millisecs in ns, whole
    jiffies) has passed since, counted in jiffies (``chain_prune()``'s
    ``time_before(jiffies, prune_time + interval)``), ns."""
    return (prune_time + interval) // JIFFY_NS * JIFFY_NS


KEEP_BYTES = 64 << 20
"""A state kept to compare with a later one is copied up to this size (bytes);
a larger one keeps a 128-bit hash of its arrays instead."""


def _digest(key: tuple[object, ...], arrays: list[npt.NDArray[np.generic]]) -> bytes:
    h = hashlib.blake2b(repr(key).encode(), digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).data)  # (copies a field)
    return h.digest()


class IdleState(NamedTuple):
    """:meth:`Ksmd.idle_state`."""

    key: tuple[object, ...]
    """What must be equal, as plain values."""
    arrays: list[npt.NDArray[np.generic]]
    """What must be equal, as arrays (items, nodes; copies or live
    columns; or, kept and larger than :data:`KEEP_BYTES`, their hash)."""
    marks: tuple[int, ...]
    """Full scans, pages scanned and skipped, ksmd's CPU time (ns), its clock
    (ns), the advisor's pass start and CPU time mark (ns), the counters of
    the kinds of work (``Ksmd._marks``) and :attr:`Ksmd.work_done`."""
    age: npt.NDArray[np.uint8]
    """Every item's smart_scan age."""
    seq: npt.NDArray[np.uint8]
    """Every item's pass of insertion (low 8 bits)."""
    prunes: dict[int, tuple[int, int, bool]]
    """Each chain's last prune time (ns), times looked at, and whether it may
    prune at :attr:`wake`, by content."""
    phase: tuple[int, ...]
    """Where the chains are in their prune intervals: for each (by content),
    the jiffies since its last prune, counted up to the interval (from there
    on it may prune at once); then how far :attr:`wake` is into its jiffy
    (empty without chains).  Two states alike whose phases are equal prune
    alike in the passes that follow."""
    wake: int
    """When the next pass starts (ns)."""
    interval: int
    """The least time between two prunes of a chain (ns)."""

    def digest(self) -> bytes:
        """A 16-byte hash of :attr:`key` and :attr:`arrays`."""
        return _digest(self.key, self.arrays)

    def circles(self, later: IdleState, t: int) -> int:
        """How many circles like the one from this state to ``later`` (the
        state now) run alike from ``later`` on and end by ``t``: 0 if the two
        states differ (the advancing values aside).

        A chain looked at between the two is where its prunes can tell the
        circles apart (they are decided in whole jiffies, from its last
        prune).  If it was pruned in between, every circle prunes it alike
        when it is as far from its last prune in both states, or may prune
        at once in both, and the circle is whole jiffies long.  If it was
        not, the circles run alike until the jiffy from which it may be
        pruned: none of them may reach it.
        """
        if self.key != later.key:
            return 0
        circle = later.wake - self.wake
        until = t
        pruned = False
        for content, (prune_time, times, ripe) in self.prunes.items():
            later_time, later_times, _ripe = later.prunes[content]
            if times == later_times:
                continue  # (not looked at: its prune time decided nothing)
            if later_time == prune_time:
                until = min(until, prunable_from(prune_time, self.interval))
            elif ripe or self.wake - prune_time == later.wake - later_time:
                pruned = True
            else:
                return 0
        if pruned and self.interval and circle % JIFFY_NS:
            return 0
        if not all(np.array_equal(a, b) for a, b in zip(self.arrays, later.arrays, strict=True)):
            return 0
        return max((until - later.wake) // circle, 0)
