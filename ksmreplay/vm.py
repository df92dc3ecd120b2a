"""The simulated virtual-memory system: processes, VMAs, page tables, frames.

Per-page state lives in numpy columns, never in one Python object per page:

* :class:`FrameTable` holds every anonymous page frame as columns;
* :class:`PageTable` maps a process's virtual pages in chunks of
  :data:`CHUNK` entries (one chunk is one page-table page, 2 MiB of address
  space with 4 KiB pages), created only where something was touched, so a
  mapping of 2**46 bytes costs nothing until its pages are used.

A page-table entry (``int64``) is a frame index (>= 0) or one of the
negative markers :data:`PTE_NONE`, :data:`PTE_ZERO` (the shared zero page,
mapped by a read fault: a clean PTE) and :data:`PTE_KSM_ZERO` (the shared zero
page, placed by ksmd).  Whether the kernel can tell the last two apart is a
property of the mode (``modes.py``); the simulator always can.

Nothing here knows about ksmd's trees: frames carry a ``node`` column that
``ksm.py`` fills, and the VM reports the events ksmd must see (a KSM frame
dying, a KSM zero PTE disappearing) through the :class:`Accounting` hooks.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

NULL = -1
"""The one "no such row" sentinel of every index column."""

PTE_NONE = -1
PTE_ZERO = -2
PTE_KSM_ZERO = -3

CHUNK_SHIFT = 9
CHUNK = 1 << CHUNK_SHIFT
"""Entries per page-table chunk (512, like one x86-64 PTE page)."""

IntArray = npt.NDArray[np.int64]


class FreeStack:
    """Free row numbers of a table, as a numpy stack (last pushed, first popped).

    Fresh capacity ``[old, new)`` is pushed highest first, so rows are handed
    out in ascending order; :meth:`pop` returns the most recently freed rows,
    the last one freed first.
    """

    __slots__ = ("_n", "_rows")

    def __init__(self, capacity: int) -> None:
        self._rows: IntArray = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self._n = capacity

    def __len__(self) -> int:
        return self._n

    def _reserve(self, n: int) -> None:
        if self._n + n > len(self._rows):
            grown = np.empty(max(2 * len(self._rows), self._n + n), np.int64)
            grown[: self._n] = self._rows[: self._n]
            self._rows = grown

    def add_range(self, old: int, new: int) -> None:
        """Push the new rows ``[old, new)``, highest first."""
        self.push(np.arange(new - 1, old - 1, -1, dtype=np.int64))

    def push(self, rows: IntArray) -> None:
        self._reserve(len(rows))
        self._rows[self._n : self._n + len(rows)] = rows
        self._n += len(rows)

    def push_one(self, row: int) -> None:
        self._reserve(1)
        self._rows[self._n] = row
        self._n += 1

    def pop(self, n: int) -> IntArray:
        """The top ``n`` rows, topmost first (the caller checked there are enough)."""
        rows: IntArray = self._rows[self._n - n : self._n][::-1].copy()
        self._n -= n
        return rows


class FrameTable:
    """Every anonymous page frame, as columns indexed by frame number.

    :ivar content: page content fingerprint (``uint64``).
    :vartype content: numpy.ndarray
    :ivar mapcount: page-table entries mapping the frame; 0 for a free row (``int32``).
    :vartype mapcount: numpy.ndarray
    :ivar ksm: the frame is a KSM page (``bool``).
    :vartype ksm: numpy.ndarray
    :ivar node: stable-tree node of a KSM page, or :data:`NULL` (``int32``).
    :vartype node: numpy.ndarray
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.content = np.zeros(capacity, np.uint64)
        self.mapcount = np.zeros(capacity, np.int32)
        self.ksm = np.zeros(capacity, np.bool_)
        self.node = np.full(capacity, NULL, np.int32)
        self._free = FreeStack(capacity)
        self.live = 0
        self.live_ksm = 0

    def _grow(self, need: int) -> None:
        old = len(self.content)
        new = max(old * 2, old + need)
        self.content = np.concatenate([self.content, np.zeros(new - old, np.uint64)])
        self.mapcount = np.concatenate([self.mapcount, np.zeros(new - old, np.int32)])
        self.ksm = np.concatenate([self.ksm, np.zeros(new - old, np.bool_)])
        self.node = np.concatenate([self.node, np.full(new - old, NULL, np.int32)])
        self._free.add_range(old, new)

    def alloc(self, contents: npt.NDArray[np.uint64]) -> IntArray:
        """New private frames (mapcount 1) holding ``contents``; returns their indices."""
        n = len(contents)
        if n > len(self._free):
            self._grow(n - len(self._free))
        rows = self._free.pop(n)
        self.content[rows] = contents
        self.mapcount[rows] = 1
        self.live += n
        return rows

    def release(self, rows: IntArray) -> None:
        """Free rows whose mapcount reached 0."""
        if len(rows) == 0:
            return
        self.live_ksm -= int(np.count_nonzero(self.ksm[rows]))
        self.ksm[rows] = False
        self.node[rows] = NULL
        self.live -= len(rows)
        self._free.push(rows)

    def release_one(self, row: int) -> None:
        """:meth:`release` of a single row."""
        if self.ksm[row]:
            self.live_ksm -= 1
            self.ksm[row] = False
        self.node[row] = NULL
        self.live -= 1
        self._free.push_one(row)

    @property
    def capacity(self) -> int:
        return len(self.content)


class PageTable:
    """Sparse page table of one process: chunks of :data:`CHUNK` PTEs, created on demand."""

    __slots__ = ("_chunks", "_keys")

    def __init__(self) -> None:
        self._chunks: dict[int, IntArray] = {}
        self._keys: list[int] = []

    def chunk(self, key: int) -> IntArray:
        """The chunk ``key`` (page number >> CHUNK_SHIFT), created empty if needed."""
        arr = self._chunks.get(key)
        if arr is None:
            arr = np.full(CHUNK, PTE_NONE, np.int64)
            self._chunks[key] = arr
            bisect.insort(self._keys, key)
        return arr

    def get(self, page: int) -> int:
        arr = self._chunks.get(page >> CHUNK_SHIFT)
        return PTE_NONE if arr is None else int(arr[page & (CHUNK - 1)])

    def segments(self, start: int, end: int) -> Iterator[tuple[int, int, IntArray]]:
        """Existing chunks overlapping pages [start, end): ``(first_page, stop_page, view)``."""
        keys = self._keys
        i = bisect.bisect_left(keys, start >> CHUNK_SHIFT)
        while i < len(keys):
            key = keys[i]
            base = key << CHUNK_SHIFT
            if base >= end:
                break
            lo = max(start, base)
            hi = min(end, base + CHUNK)
            yield lo, hi, self._chunks[key][lo - base : hi - base]
            i += 1

    def segments_all(self, start: int, end: int) -> Iterator[tuple[int, int, IntArray]]:
        """Like :meth:`segments` but creating the chunks (for writes and read faults)."""
        page = start
        while page < end:
            key = page >> CHUNK_SHIFT
            base = key << CHUNK_SHIFT
            hi = min(end, base + CHUNK)
            yield page, hi, self.chunk(key)[page - base : hi - base]
            page = hi


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
    """

    pid: int
    vmas: list[Vma] = field(default_factory=list)
    pt: PageTable = field(default_factory=PageTable)
    merge_any: bool = False
    rss_anon: int = 0
    ksm_zero_ptes: int = 0
    fault_zero_ptes: int = 0
    zero_pages_sharing: int = 0
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

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """VMAs inside [start, end), after splitting at both ends."""
        self.split(start)
        self.split(end)
        i = self.vma_index(start)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            out.append(self.vmas[i])
            i += 1
        return out

    def merge_adjacent(self) -> None:
        """Merge neighbouring VMAs with the same flags (``vma_merge()``)."""
        merged: list[Vma] = []
        for v in self.vmas:
            if merged and merged[-1].end == v.start and merged[-1].mergeable == v.mergeable:
                merged[-1].end = v.end
            else:
                merged.append(v)
        self.vmas = merged

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


EVENT_COUNTERS_ZERO = {
    "merges": 0,
    "cow_breaks_ksm": 0,
    "cow_breaks_zero": 0,
    "unshared_by_unmerge": 0,
    "zero_pages_unshared": 0,
    "zero_pages_merged": 0,
}


class Memory:
    """Frames and the live processes' address spaces, with the fault paths.

    ``on_ksm_pages_freed(nodes)`` is called with the stable-node ids of KSM
    frames the moment their last mapping goes: those nodes are stale from then
    on, as ``ksm_get_folio()`` would find their page gone.
    """

    def __init__(self, on_ksm_pages_freed: Callable[[IntArray], None]) -> None:
        self.frames = FrameTable()
        self.mms: dict[int, MM] = {}
        self.events: dict[str, int] = dict(EVENT_COUNTERS_ZERO)
        self.on_ksm_pages_freed = on_ksm_pages_freed

    # -- frames -------------------------------------------------------------

    def _put(self, rows: IntArray) -> None:
        """Drop one mapping per entry of ``rows``; free the frames left unmapped.

        A KSM page can be mapped at several addresses of one process, so a
        frame may appear more than once.
        """
        if len(rows) == 0:
            return
        mc = self.frames.mapcount
        np.subtract.at(mc, rows, 1)
        dead = np.unique(rows[mc[rows] == 0])
        if len(dead):
            ksm_dead = dead[self.frames.ksm[dead]]
            if len(ksm_dead):
                self.on_ksm_pages_freed(self.frames.node[ksm_dead].astype(np.int64))
            self.frames.release(dead)

    def _put_one(self, row: int) -> None:
        """:meth:`_put` of a single mapping."""
        fr = self.frames
        fr.mapcount[row] -= 1
        if fr.mapcount[row] == 0:
            if fr.ksm[row]:
                self.on_ksm_pages_freed(np.array([fr.node[row]], np.int64))
            fr.release_one(row)

    # -- mappings -----------------------------------------------------------

    def map(self, mm: MM, start: int, end: int, mergeable: bool) -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS) of pages [start, end) (the range is free)."""
        i = mm.vma_index(start)
        mm.vmas.insert(i, Vma(start, end, mergeable))
        mm.merge_adjacent()

    def unmap(self, mm: MM, start: int, end: int) -> None:
        """munmap of pages [start, end): zap, then remove the VMAs."""
        self.zap(mm, start, end)
        inside = set(map(id, mm.vmas_in(start, end)))
        mm.vmas = [v for v in mm.vmas if id(v) not in inside]
        mm.merge_adjacent()

    def set_mergeable(self, mm: MM, start: int, end: int, value: bool) -> None:
        for v in mm.vmas_in(start, end):
            v.mergeable = value
        mm.merge_adjacent()

    # -- faults -------------------------------------------------------------

    def write(self, mm: MM, start: int, contents: npt.NDArray[np.uint64]) -> None:
        """Store ``contents`` (one fingerprint per page) from page ``start`` on.

        An unpopulated page or a zero-page PTE gets a new frame; a private
        frame mapped once is changed in place; a KSM page or a frame shared
        copy-on-write after fork is copied (``do_wp_page()``: KSM pages are
        never reused, even with one mapping left).
        """
        fr = self.frames
        end = start + len(contents)
        for lo, hi, view in mm.pt.segments_all(start, end):
            new = contents[lo - start : hi - start]
            pte = view.copy()
            present = np.flatnonzero(pte >= 0)
            old = pte[present]
            keep = (~fr.ksm[old]) & (fr.mapcount[old] == 1)
            fr.content[old[keep]] = new[present[keep]]
            copied = present[~keep]
            if len(copied):
                self.events["cow_breaks_ksm"] += int(np.count_nonzero(fr.ksm[pte[copied]]))
                self._put(pte[copied])
            absent = np.flatnonzero(pte < 0)
            if len(absent):
                n_ksm_zero = int(np.count_nonzero(pte[absent] == PTE_KSM_ZERO))
                mm.ksm_zero_ptes -= n_ksm_zero
                self.events["cow_breaks_zero"] += n_ksm_zero
                mm.fault_zero_ptes -= int(np.count_nonzero(pte[absent] == PTE_ZERO))
                mm.rss_anon += len(absent)
            fresh = np.concatenate([copied, absent]) if len(copied) else absent
            if len(fresh):
                view[fresh] = fr.alloc(new[fresh])

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
                self._put(present)
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
                self._put(old)
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
        for v in parent.vmas:
            for lo, hi, view in parent.pt.segments(v.start, v.end):
                present = view[view >= 0]
                if len(present):
                    np.add.at(self.frames.mapcount, present, 1)
                base = lo & ~(CHUNK - 1)
                child.pt.chunk(lo >> CHUNK_SHIFT)[lo - base : hi - base] = view
        return child

    def fingerprint_at(self, mm: MM, page: int) -> int:
        """Content of ``page`` as a load would see it (0 when unpopulated or a zero page)."""
        pte = mm.pt.get(page)
        return int(self.frames.content[pte]) if pte >= 0 else 0
