"""Processes (``MM``, VMAs) and the memory they share: faults, copy-on-write,
the zero page, and the frames ksmd merges, through :class:`Memory`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray, dense_ranks
from ksmreplay.native import CHUNK_SHIFT, PTE_KSM_ZERO, PTE_NONE, PTE_ZERO, Native, native
from ksmreplay.report import EVENT_COUNTERS
from ksmreplay.vm.frames import FrameTable
from ksmreplay.vm.pagetable import CHUNK, PageTable, gather, scatter


class _Directories:
    """:meth:`PageTable.directory` of every live process, as rows of
    :attr:`table` (in the order of :attr:`mms`), for the native core.

    A process gets a row when it is added and gives it up when it is removed
    (the last row moves into its place); a page table that makes a chunk
    marks its process to be read again (:meth:`refresh`).  A write run thus
    reads again only the page tables that changed, and passes the table as
    it is, its writes naming their processes' rows (:meth:`owners`).
    """

    __slots__ = ("_by_pid", "_dirty", "_row", "mms", "table")

    def __init__(self) -> None:
        self.mms: list[MM] = []
        self.table: IntArray = np.zeros((8, 4), np.int64)
        self._row: dict[int, int] = {}
        """Each live pid's row."""
        self._dirty: list[MM] = []
        self._by_pid: tuple[IntArray, npt.NDArray[np.int32]] | None = None
        """The live pids in increasing order and their rows (:meth:`owners`),
        made again after a process is added or removed."""

    def add(self, mm: MM) -> None:
        row = len(self.mms)
        if row == len(self.table):
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
        self.mms.append(mm)
        self._row[mm.pid] = row
        self._by_pid = None
        self.table[row] = mm.pt.directory()
        mm.pt.on_change = partial(self._dirty.append, mm)

    def remove(self, mm: MM) -> None:
        row = self._row.pop(mm.pid)
        mm.pt.on_change = None
        self._by_pid = None
        last = self.mms.pop()
        if last is not mm:
            self.mms[row] = last
            self._row[last.pid] = row
            self.table[row] = self.table[len(self.mms)]

    def refresh(self) -> None:
        """Read again the directories of the page tables that made chunks."""
        for mm in self._dirty:
            row = self._row.get(mm.pid)
            if row is not None and self.mms[row] is mm:
                self.table[row] = mm.pt.directory()
        self._dirty.clear()

    def owners(self, pids: IntArray) -> npt.NDArray[np.int32]:
        """The rows of the live processes ``pids`` (an array of pids, repeated
        as they come); KeyError if one is not live."""
        if self._by_pid is None:
            live = sorted(self._row.items())
            self._by_pid = (
                np.array([p for p, _r in live], np.int64),
                np.array([r for _p, r in live], np.int32),
            )
        known, rows = self._by_pid
        at = np.searchsorted(known, pids)
        if len(known) == 0 or (at == len(known)).any() or (known[at] != pids).any():
            raise KeyError("a write to a process that is not live")
        return rows[at]


def _last_of_each(slot: IntArray, counts: IntArray) -> npt.NDArray[np.bool_]:
    """Which entries of ``slot`` are the last of their value (``counts``: how often each occurs)."""
    last = np.ones(len(slot), np.bool_)
    repeated = np.flatnonzero(counts[slot] > 1)
    order = repeated[np.argsort(slot[repeated], kind="stable")]
    same_next = slot[order[1:]] == slot[order[:-1]]
    last[order[:-1][same_next]] = False
    return last


@dataclass(slots=True)
class Vma:
    """One anonymous private mapping, pages [start, end)."""

    start: int
    end: int
    mergeable: bool = False


@dataclass(eq=False, slots=True)
class MM:
    """One simulated process's address space (``struct mm_struct``).

    :ivar vmas: mappings, sorted by address, never overlapping.
    :ivar merge_any: MMF_VM_MERGE_ANY (prctl PR_SET_MEMORY_MERGE).
    :ivar rss_anon: PTEs mapping an anonymous frame (RssAnon in pages).
    :ivar ksm_zero_ptes: PTEs KSM pointed at the zero page (ground truth).
    :ivar fault_zero_ptes: PTEs mapping the zero page after a read fault.
    :ivar exiting: the process has exited; ksmd has not dropped it yet.
    :ivar zero_pages_sharing: the v6 design's per-mm counter of flagged items
        (``ksm_zero_pages_sharing``); copied with the mm at fork.
    :ivar inherited_rmap_items: ``ksm_rmap_items`` copied from the parent at
        fork on kernels before the 6.18 fork fix (``kernels.Kernel``); the
        counter shown is ksmd's own count plus this.
    :ivar inherited_merging_pages: the same for ``ksm_merging_pages``.
    """

    pid: int
    vmas: list[Vma] = field(default_factory=list)
    pt: PageTable = field(default_factory=PageTable)
    merge_any: bool = False
    rss_anon: int = 0
    ksm_zero_ptes: int = 0
    fault_zero_ptes: int = 0
    zero_pages_sharing: int = 0
    inherited_rmap_items: int = 0
    inherited_merging_pages: int = 0
    exiting: bool = False

    def vma_index(self, page: int) -> int:
        """Index of the first VMA whose end is above ``page``."""
        lo, hi = 0, len(self.vmas)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.vmas[mid].end <= page:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def split(self, page: int) -> None:
        """Make ``page`` a VMA boundary if it falls inside a VMA (``split_vma()``)."""
        i = self.vma_index(page)
        if i < len(self.vmas):
            v = self.vmas[i]
            if v.start < page < v.end:
                self.vmas[i : i + 1] = [
                    Vma(v.start, page, v.mergeable),
                    Vma(page, v.end, v.mergeable),
                ]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The VMAs inside [start, end) are ``vmas[i:j]``, after splitting at both ends."""
        self.split(start)
        self.split(end)
        return self.vma_index(start), self.vma_index(end)

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """VMAs inside [start, end), after splitting at both ends."""
        i, j = self.span(start, end)
        return self.vmas[i:j]

    def merge_adjacent(self) -> None:
        """Merge neighbouring VMAs with the same flags (``vma_merge()``)."""
        self.merge_around(0, len(self.vmas))

    def merge_around(self, lo: int, hi: int) -> None:
        """:meth:`merge_adjacent` of ``vmas[lo:hi]`` and their neighbours (the
        only VMAs that changed)."""
        vmas = self.vmas
        a, b = max(lo - 1, 0), min(hi + 1, len(vmas))
        merged: list[Vma] = []
        for v in vmas[a:b]:
            if merged and merged[-1].end == v.start and merged[-1].mergeable == v.mergeable:
                merged[-1].end = v.end
            else:
                merged.append(v)
        if len(merged) < b - a:
            vmas[a:b] = merged

    def mergeable(self, page: int) -> bool:
        i = self.vma_index(page)
        return i < len(self.vmas) and self.vmas[i].start <= page and self.vmas[i].mergeable

    def mapped(self, page: int) -> bool:
        """Some VMA covers ``page``, mergeable or not (``vma_lookup()``)."""
        i = self.vma_index(page)
        return i < len(self.vmas) and self.vmas[i].start <= page

    @property
    def has_mergeable(self) -> bool:
        return any(v.mergeable for v in self.vmas)


EVENT_COUNTERS_ZERO = dict.fromkeys(EVENT_COUNTERS, 0)
"""Every counter of the ``events`` section (``report.EVENT_COUNTERS``) at 0."""


def _no_ksm_pages(nodes: IntArray) -> None:
    """The hook of a memory without ksmd (no frame is a KSM page)."""


class Memory:
    """Frames and the live processes' address spaces, with the fault paths.

    ``on_ksm_pages_freed(nodes)`` is called with the stable-node ids of KSM
    frames the moment their last mapping goes: those nodes are stale from then
    on, as ``ksm_get_folio()`` would find their page gone.  ksmd sets it when
    it is made over this memory.
    """

    def __init__(self, on_ksm_pages_freed: Callable[[IntArray], None] = _no_ksm_pages) -> None:
        self.frames = FrameTable()
        self.mms: dict[int, MM] = {}
        """The live processes by pid (change it with :meth:`add` and :meth:`remove`)."""
        self.native = native()
        """The native core of the writes, if there was one when the memory was made."""
        self.events: dict[str, int] = dict(EVENT_COUNTERS_ZERO)
        self.on_ksm_pages_freed = on_ksm_pages_freed
        self._directories = _Directories()
        self._contents: tuple[object, tuple[int, int, bool]] | None = None
        """:meth:`mergeable_contents`'s last key and answer."""

    # -- processes ----------------------------------------------------------

    def add(self, mm: MM) -> None:
        """A new live process (its pid not live)."""
        assert mm.pid not in self.mms
        self.mms[mm.pid] = mm
        self._directories.add(mm)

    def remove(self, pid: int) -> MM:
        """The live process ``pid`` goes (exit); returns it."""
        mm = self.mms.pop(pid)
        self._directories.remove(mm)
        return mm

    # -- frames -------------------------------------------------------------

    def put_frames(self, rows: IntArray) -> None:
        """Drop one mapping per entry of ``rows``; free the frames left unmapped.

        A KSM page can be mapped at several addresses of one process, so a
        frame may appear more than once.
        """
        if len(rows) == 0:
            return
        mc = self.frames.mapcount
        np.subtract.at(mc, rows, 1)
        self.frames.changes += len(rows)
        self.free_frames(np.unique(rows[mc[rows] == 0]))

    def free_frames(self, dead: IntArray) -> None:
        """Free the frames ``dead`` (distinct, mapcount 0), telling ksmd of its KSM pages."""
        if len(dead):
            ksm_dead = dead[self.frames.ksm[dead]]
            if len(ksm_dead):
                self.on_ksm_pages_freed(self.frames.node[ksm_dead].astype(np.int64))
            self.frames.release(dead)

    def put_frame(self, row: int) -> None:
        """:meth:`put_frames` of a single mapping."""
        fr = self.frames
        fr.mapcount[row] -= 1
        fr.changes += 1
        if fr.mapcount[row] == 0:
            if fr.ksm[row]:
                self.on_ksm_pages_freed(np.array([fr.node[row]], np.int64))
            fr.release_one(row)

    # -- mappings -----------------------------------------------------------

    def map(self, mm: MM, start: int, end: int, mergeable: bool) -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) of pages [start, end) (the range is free)."""
        i = mm.vma_index(start)
        mm.vmas.insert(i, Vma(start, end, mergeable))
        mm.merge_around(i, i + 1)

    def unmap(self, mm: MM, start: int, end: int) -> None:
        """munmap of pages [start, end): zap, then remove the VMAs."""
        self.zap(mm, start, end)
        i, j = mm.span(start, end)
        del mm.vmas[i:j]
        mm.merge_around(i, i)

    def set_mergeable(self, mm: MM, start: int, end: int, value: bool) -> None:
        i, j = mm.span(start, end)
        for v in mm.vmas[i:j]:
            v.mergeable = value
        mm.merge_around(i, j)

    # -- faults -------------------------------------------------------------

    def write(self, mm: MM, start: int, contents: npt.NDArray[np.uint64]) -> None:
        """Store ``contents`` (one fingerprint per page) from page ``start`` on
        (:meth:`write_many` of one write)."""
        pages = np.arange(start, start + len(contents), dtype=np.int64)
        done = self.write_many([(mm, pages, contents)])
        assert done, "the pages of one write cannot share a frame copy-on-write"

    def write_run(
        self, pids: IntArray, first: IntArray, counts: IntArray, fps: npt.NDArray[np.uint64]
    ) -> None:
        """Many :meth:`write` s at one instant, one page at a time in the order given.

        Write ``e`` stores ``counts[e]`` pages of process ``pids[e]`` from page
        ``first[e]`` on; ``fps`` are their fingerprints, one write after the
        other.  With the native core, ``fault.c`` does exactly that; without,
        the pages go to :meth:`write_many` by process, and in the one case
        where their order matters (see there) to :meth:`write` one write at a
        time.
        """
        native = self.native
        if native is not None:
            self._write_run_native(native, pids, first, counts, fps)
            return
        distinct, rank = dense_ranks(pids)
        starts = np.cumsum(counts) - counts
        event = np.repeat(np.arange(len(counts)), counts)
        pages = first[event] + (np.arange(len(fps)) - starts[event])
        mms = [self.mms[p] for p in distinct]
        owner = rank[event]
        order = np.argsort(owner.astype(np.int16) if len(mms) < 2**15 else owner, kind="stable")
        bounds = np.cumsum(np.bincount(owner, minlength=len(mms))).tolist()
        groups = [order[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
        if self.write_many([(mm, pages[g], fps[g]) for mm, g in zip(mms, groups, strict=True)]):
            return
        writes = zip(pids.tolist(), first.tolist(), starts.tolist(), counts.tolist(), strict=True)
        for pid, page, at, n in writes:
            self.write(self.mms[pid], page, fps[at : at + n])

    def _write_run_native(
        self,
        native: Native,
        pids: IntArray,
        first: IntArray,
        counts: IntArray,
        fps: npt.NDArray[np.uint64],
    ) -> None:
        """:meth:`write_run` with ``fault.c``, over the directories of every
        live process (write ``e`` of the one of row ``owner[e]``)."""
        dirs = self._directories
        dirs.refresh()
        owner = dirs.owners(pids)
        mms = dirs.mms

        def make_chunks(e: int, j: int) -> IntArray:
            # The chunks of every write from write e's j-th page on, at once.
            lo = first[e:].copy()
            lo[0] += j
            hi = first[e:] + counts[e:] - 1
            keys_lo, n_keys = lo >> CHUNK_SHIFT, (hi >> CHUNK_SHIFT) - (lo >> CHUNK_SHIFT) + 1
            keys = np.repeat(keys_lo - (np.cumsum(n_keys) - n_keys), n_keys) + np.arange(
                int(n_keys.sum())
            )
            whose = np.repeat(owner[e:], n_keys)
            for o in np.unique(whose).tolist():
                mms[o].pt.locate(np.unique(keys[whose == o]))
            dirs.refresh()
            return dirs.table[: len(mms)]

        fr = self.frames
        fresh = fr.candidates(len(fps))
        used, dead, stats, events = native.write_run(
            owner,
            first,
            counts,
            np.ascontiguousarray(fps),
            dirs.table[: len(mms)],
            make_chunks,
            (fr.content, fr.mapcount, fr.ksm),
            fresh,
        )
        fr.taken(used)
        fr.changes += len(fps)  # (contents written in place, copies' mappings dropped)
        self.free_frames(dead)
        changed = np.flatnonzero(stats.any(axis=1))
        for i, (rss, ksm_zero, fault_zero) in zip(
            changed.tolist(), stats[changed].tolist(), strict=True
        ):
            mm = mms[i]
            mm.rss_anon += rss
            if ksm_zero or fault_zero:
                mm.ksm_zero_ptes += ksm_zero
                mm.fault_zero_ptes += fault_zero
        self.events["cow_breaks_ksm"] += int(events[0])
        self.events["cow_breaks_zero"] += int(events[1])

    def write_many(self, writes: list[tuple[MM, IntArray, npt.NDArray[np.uint64]]]) -> bool:
        """Many writes at one instant: ``(mm, pages, fingerprints)`` per process.

        An unpopulated page or a zero-page PTE gets a new frame; a private
        frame mapped once is changed in place; a KSM page or a frame shared
        copy-on-write after fork is copied (``do_wp_page()``: KSM pages are
        never reused, even with one mapping left).

        The pages of one process are in the order they were written and may
        repeat (the last write of a page wins); each process appears once.
        The outcome is that of writing them one at a time, except when two
        writes reach one frame shared copy-on-write after fork: the first
        copies and the second then writes the frame in place, so their order
        matters; then nothing is changed and False is returned (write them
        one at a time).
        """
        fr = self.frames
        parts = []
        for mm, pages, fps in writes:
            pt = mm.pt
            rows = pt.locate(pages >> CHUNK_SHIFT)
            offsets = pages & (CHUNK - 1)
            touched = np.zeros(pt.rows, np.bool_)
            touched[rows] = True
            slot = (np.cumsum(touched) - 1)[rows] * CHUNK + offsets
            counts = np.bincount(slot)
            if counts.max() > 1:
                last = _last_of_each(slot, counts)
                rows, offsets, fps = rows[last], offsets[last], fps[last]
            places = pt.places(rows, offsets)
            parts.append((mm, places, gather(places, len(rows)), fps))
        pte = np.concatenate([p[2] for p in parts])
        new = np.concatenate([p[3] for p in parts])
        present = pte >= 0
        old = pte[present]
        private = ~fr.ksm[old]
        mapcount = fr.mapcount[old]
        shared = old[private & (mapcount > 1)]
        if len(shared) > 1 and len(np.unique(shared)) < len(shared):
            return False
        for mm, _places, mine, _fps in parts:
            absent = mine[mine < 0]
            n_ksm_zero = int(np.count_nonzero(absent == PTE_KSM_ZERO))
            mm.ksm_zero_ptes -= n_ksm_zero
            self.events["cow_breaks_zero"] += n_ksm_zero
            mm.fault_zero_ptes -= int(np.count_nonzero(absent == PTE_ZERO))
            mm.rss_anon += len(absent)
        keep = present.copy()
        keep[present] = private & (mapcount == 1)
        fr.content[pte[keep]] = new[keep]
        fr.changes += int(np.count_nonzero(keep))
        copied = present & ~keep
        if copied.any():
            self.events["cow_breaks_ksm"] += int(np.count_nonzero(fr.ksm[pte[copied]]))
            self.put_frames(pte[copied])
        fresh = ~keep
        pte[fresh] = fr.alloc(new[fresh])
        at = 0
        for _mm, places, mine, _fps in parts:
            scatter(places, pte[at : at + len(mine)])
            at += len(mine)
        return True

    def read(self, mm: MM, start: int, end: int) -> None:
        """Load from pages [start, end): unpopulated pages map the zero page (clean PTE)."""
        for _lo, _hi, view in mm.pt.segments_all(start, end):
            none = view == PTE_NONE
            n = int(np.count_nonzero(none))
            if n:
                view[none] = PTE_ZERO
                mm.fault_zero_ptes += n

    def zap(self, mm: MM, start: int, end: int) -> None:
        """Unmap the pages of [start, end) (``zap_present_ptes()``): MADV_DONTNEED, munmap, exit."""
        for _lo, _hi, view in mm.pt.segments(start, end):
            present = view[view >= 0]
            if len(present):
                mm.rss_anon -= len(present)
                self.put_frames(present)
            mm.ksm_zero_ptes -= int(np.count_nonzero(view == PTE_KSM_ZERO))
            mm.fault_zero_ptes -= int(np.count_nonzero(view == PTE_ZERO))
            view[:] = PTE_NONE

    def unshare(self, mm: MM, start: int, end: int, zero_pages: bool) -> None:
        """``break_ksm()`` on every page of [start, end) (unmerging).

        KSM pages are replaced by private copies; with ``zero_pages`` the zero
        pages KSM placed are replaced by private zeroed pages too.
        """
        fr = self.frames
        for _lo, _hi, view in mm.pt.segments(start, end):
            ksm_at = np.flatnonzero((view >= 0) & fr.ksm[np.maximum(view, 0)])
            if len(ksm_at):
                old = view[ksm_at].copy()
                contents = fr.content[old]
                self.put_frames(old)
                view[ksm_at] = fr.alloc(contents)
                self.events["unshared_by_unmerge"] += len(ksm_at)
            if zero_pages:
                zero_at = np.flatnonzero(view == PTE_KSM_ZERO)
                if len(zero_at):
                    view[zero_at] = fr.alloc(np.zeros(len(zero_at), np.uint64))
                    mm.rss_anon += len(zero_at)
                    mm.ksm_zero_ptes -= len(zero_at)
                    self.events["zero_pages_unshared"] += len(zero_at)

    def unshare_zero_page(self, mm: MM, page: int) -> None:
        """``break_ksm()`` with ``unshare_zero_page`` (the v6 design) at one page.

        Any zero page there, KSM- or fault-placed, becomes a private zeroed
        page; only KSM-placed ones count in ``zero_pages_unshared``.
        """
        pte = mm.pt.get(page)
        if pte not in (PTE_ZERO, PTE_KSM_ZERO):
            return
        if pte == PTE_KSM_ZERO:
            mm.ksm_zero_ptes -= 1
            self.events["zero_pages_unshared"] += 1
        else:
            mm.fault_zero_ptes -= 1
        mm.rss_anon += 1
        frame = int(self.frames.alloc(np.zeros(1, np.uint64))[0])
        mm.pt.chunk(page >> CHUNK_SHIFT)[page & (CHUNK - 1)] = frame

    def fork(self, parent: MM, child_pid: int) -> MM:
        """``dup_mmap()``: copy VMAs and page tables; frames become shared copy-on-write."""
        child = MM(
            child_pid,
            vmas=[Vma(v.start, v.end, v.mergeable) for v in parent.vmas],
            merge_any=parent.merge_any,
            rss_anon=parent.rss_anon,
            ksm_zero_ptes=parent.ksm_zero_ptes,
            fault_zero_ptes=parent.fault_zero_ptes,
            zero_pages_sharing=parent.zero_pages_sharing,
        )
        segments = [seg for v in parent.vmas for seg in parent.pt.segments(v.start, v.end)]
        # The child's chunks made at once: in few blocks, as the parent's may be.
        child.pt.locate(np.array(sorted({lo >> CHUNK_SHIFT for lo, _hi, _v in segments}), np.int64))
        for lo, hi, view in segments:
            present = view[view >= 0]
            if len(present):
                np.add.at(self.frames.mapcount, present, 1)
                self.frames.changes += len(present)
            base = lo & ~(CHUNK - 1)
            child.pt.chunk(lo >> CHUNK_SHIFT)[lo - base : hi - base] = view
        return child

    def mergeable_contents(self) -> tuple[int, int, bool]:
        """:meth:`count_mergeable_contents`, counted again only when memory
        changed since the last count.

        Every snapshot asks, and most snapshots of a long trace follow others
        with nothing but ksmd's work between them.  The answer depends on the
        frames' contents and mappings (every write to them raises
        ``frames.changes``), on the mappings' bounds and flags, and on the PTEs
        KSM pointed at the zero page: those are made only with a frame's
        mapping dropped (a frame change) and go only by lowering their
        process's ``ksm_zero_ptes``.  The key holds all of it.
        """
        key = (
            self.frames.changes,
            tuple(
                (mm.pid, mm.ksm_zero_ptes, tuple((v.start, v.end, v.mergeable) for v in mm.vmas))
                for mm in self.mms.values()
            ),
        )
        if self._contents is None or self._contents[0] != key:
            self._contents = (key, self.count_mergeable_contents())
        return self._contents[1]

    def count_mergeable_contents(self) -> tuple[int, int, bool]:
        """What the ideal deduplication needs to know of the live processes'
        pages in mergeable mappings (REPORT_FORMAT.md ``summary``).

        A page counts when it is resident as ``RssAnon`` or ``ksm_zero_pages``
        count it: a PTE mapping an anonymous frame, or the zero page placed by
        KSM (zero-filled); zero pages mapped by a read fault do not.

        :returns: those pages (a frame mapped by several PTEs counts once per
            PTE), the number of distinct non-zero contents among them, and
            whether one of them is zero-filled.
        """
        fr = self.frames
        seen = np.zeros(fr.capacity, np.bool_)
        pages = ksm_zero = 0
        for mm in self.mms.values():
            for vma in mm.vmas:
                if not vma.mergeable:
                    continue
                for _lo, _hi, view in mm.pt.runs(vma.start, vma.end, mm.pt.rows):
                    present = view[view >= 0]
                    pages += len(present)
                    seen[present] = True
                    ksm_zero += int(np.count_nonzero(view == PTE_KSM_ZERO))
        distinct, zero_filled = count_distinct(fr.content, seen)
        return pages + ksm_zero, distinct, ksm_zero > 0 or zero_filled

    def fingerprint_at(self, mm: MM, page: int) -> int:
        """Content of ``page`` as a load would see it (0 when unpopulated or a zero page)."""
        pte = mm.pt.get(page)
        return int(self.frames.content[pte]) if pte >= 0 else 0


COUNT_PART_BYTES = 4 << 20
""":func:`count_distinct` copies at most about this many bytes of contents at once."""

COUNT_ROWS = 1 << 18
"""Rows of the frame table :func:`count_distinct` reads at a time (its temporaries)."""


def count_distinct(
    content: npt.NDArray[np.uint64], seen: npt.NDArray[np.bool_]
) -> tuple[int, bool]:
    """The distinct non-zero values of ``content[seen]``, and whether a zero is among them.

    The values are copied and sorted, then counted (numpy's unique() hashes,
    many times slower here, and holds more copies).  Not all at once: they
    are split by their low bits into parts of about :data:`COUNT_PART_BYTES`
    (equal values fall in the same part, so the parts' counts add up), each
    part gathered :data:`COUNT_ROWS` rows at a time, so that a count holds
    one part beside the frame table, not a copy of every mapped frame's
    content (a snapshot of a host's 4 M pages copied 28 MiB at once).
    """
    n = int(np.count_nonzero(seen))
    parts = 1
    while n * 8 > parts * COUNT_PART_BYTES and parts < 64:
        parts *= 2
    mask = np.uint64(parts - 1)
    distinct, zero_filled = 0, False
    for part in range(parts):
        if parts == 1:
            values = content[seen]
        else:
            chunks = []
            for lo in range(0, len(content), COUNT_ROWS):
                c = content[lo : lo + COUNT_ROWS]
                pick = seen[lo : lo + COUNT_ROWS] & ((c & mask) == np.uint64(part))
                chunks.append(c[pick])
            values = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
            del chunks
        values.sort()
        nonzero = values[np.searchsorted(values, np.uint64(0), "right") :]
        distinct += int(np.count_nonzero(nonzero[1:] != nonzero[:-1])) + (len(nonzero) > 0)
        zero_filled = zero_filled or len(nonzero) < len(values)
    return distinct, zero_filled
