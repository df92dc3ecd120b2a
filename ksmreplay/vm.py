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
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ksmreplay.accel import Accelerator, accelerator
from ksmreplay.arrays import DENSE_TABLE_LIMIT, dense_ranks

NULL = -1
"""The one "no such row" sentinel of every index column."""

PTE_NONE = -1
PTE_ZERO = -2
PTE_KSM_ZERO = -3

CHUNK_SHIFT = 9
CHUNK = 1 << CHUNK_SHIFT
"""Entries per page-table chunk (512, like one x86-64 PTE page)."""

IntArray = npt.NDArray[np.int64]
Places = list[tuple[IntArray, "IntArray | None", IntArray]]


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

    def peek(self, n: int) -> IntArray:
        """The rows the next :meth:`pop` of ``n`` would return, without taking them."""
        rows: IntArray = self._rows[self._n - n : self._n][::-1].copy()
        return rows

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
        rows = self.candidates(len(contents))
        self.content[rows] = contents
        self.mapcount[rows] = 1
        self.taken(len(rows))
        return rows

    def candidates(self, n: int) -> IntArray:
        """The rows the next :meth:`alloc` of ``n`` frames would use (growing the table)."""
        if n > len(self._free):
            self._grow(n - len(self._free))
        return self._free.peek(n)

    def taken(self, n: int) -> None:
        """The first ``n`` :meth:`candidates` were filled in as frames mapped once."""
        self._free.pop(n)
        self.live += n

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


BLOCK_SHIFT = 9
BLOCK = 1 << BLOCK_SHIFT
"""Chunks per block of a page table (2 MiB of entries: allocated untouched, so
that only the chunks in use cost memory)."""


FEW = 16
"""Up to this many chunk keys are looked up one by one (cheaper than numpy for few)."""


class _RowLookup:
    """Chunk keys to chunk rows, for many keys at once.

    A dense table when the keys are close together (one process's mappings
    usually are), else a binary search.  Chunks are never removed, so a lookup
    stays right until a chunk is added (the page table then builds a new one).
    """

    __slots__ = ("_base", "_dense", "keys", "row_list", "rows", "run_end", "size")

    keys: IntArray
    """The chunk keys, ascending."""
    rows: IntArray
    """The row of each."""
    run_end: list[int]
    """For the chunk at each index, the index just past its run: chunks of
    consecutive keys in consecutive rows of one block."""

    def __init__(self, keys: list[int], rows: list[int]) -> None:
        self.size = len(keys)
        self.keys = np.array(keys, np.int64)
        self.rows = np.array(rows, np.int64)
        self.row_list = rows
        breaks = np.flatnonzero(
            (np.diff(self.keys) != 1)
            | (np.diff(self.rows) != 1)
            | ((self.rows[1:] & (BLOCK - 1)) == 0)
        )
        ends = np.append(breaks + 1, self.size)
        self.run_end = np.repeat(ends, np.diff(ends, prepend=0)).tolist()
        self._base = keys[0] if keys else 0
        span = keys[-1] - keys[0] + 1 if keys else 0
        self._dense: IntArray | None = None
        if span <= 8 * len(keys) + 4096:
            self._dense = np.full(span, -1, np.int64)
            self._dense[self.keys - self._base] = self.rows

    def find(self, keys: IntArray) -> IntArray:
        """The rows of chunks ``keys``, -1 where there is no such chunk."""
        if self._dense is not None:
            rel = keys - self._base
            inside = (rel >= 0) & (rel < len(self._dense))
            if inside.all():
                return self._dense[rel]
            found = np.full(len(keys), -1, np.int64)
            found[inside] = self._dense[rel[inside]]
            return found
        at = np.searchsorted(self.keys, keys)
        hit = at < len(self.keys)
        hit[hit] = self.keys[at[hit]] == keys[hit]
        return np.where(hit, self.rows[np.minimum(at, len(self.keys) - 1)], -1)


class PageTable:
    """Sparse page table of one process: chunks of :data:`CHUNK` PTEs, created on demand.

    Chunks are rows of 2-D blocks of :data:`BLOCK` rows, numbered in the order
    they were created, so that many pages can be read and written at once
    (:meth:`places`, :func:`gather`, :func:`scatter`).  A block is allocated
    without being touched (the OS maps its memory as rows get used) and never
    moves: a chunk's view stays valid for the table's life.
    """

    __slots__ = ("_addresses", "_blocks", "_chunks", "_directory", "_keys", "_lookup", "_row")

    chunks_made = 0
    """Chunks made by every page table so far (a directory changes only then)."""

    def __init__(self) -> None:
        self._chunks: dict[int, IntArray] = {}
        self._row: dict[int, int] = {}
        self._keys: list[int] = []
        self._blocks: list[IntArray] = []
        self._addresses = np.zeros(0, np.uint64)
        self._directory: tuple[int, int, int, int] | None = None
        self._lookup: _RowLookup | None = None

    def chunk(self, key: int) -> IntArray:
        """The chunk ``key`` (page number >> CHUNK_SHIFT), created empty if needed."""
        arr = self._chunks.get(key)
        if arr is None:
            row = len(self._chunks)
            if row == len(self._blocks) << BLOCK_SHIFT:
                self._blocks.append(np.empty((BLOCK, CHUNK), np.int64))
            arr = self._blocks[-1][row & (BLOCK - 1)]
            arr[:] = PTE_NONE
            self._chunks[key] = arr
            self._row[key] = row
            bisect.insort(self._keys, key)
            self._directory = None
            PageTable.chunks_made += 1
        return arr

    def locate(self, keys: IntArray) -> IntArray:
        """The rows of chunks ``keys`` (page numbers >> CHUNK_SHIFT), created if needed."""
        if len(keys) <= FEW:
            row = self._row
            for key in keys.tolist():
                if key not in row:
                    self.chunk(key)
            return np.array([row[key] for key in keys.tolist()], np.int64)
        rows = self._find(keys)
        if (rows < 0).any():
            for key in np.unique(keys[rows < 0]).tolist():
                self.chunk(key)
            rows = self._find(keys)
        return rows

    @property
    def rows(self) -> int:
        """Chunks so far (rows are ``0 .. rows - 1``)."""
        return len(self._chunks)

    def directory(self) -> tuple[int, int, int, int]:
        """For the accelerator: the addresses of the sorted chunk keys and of
        their rows, how many there are, and the address of an array of the
        blocks' addresses (valid until a chunk is added)."""
        if self._directory is None:
            if len(self._addresses) != len(self._blocks):
                self._addresses = np.array([b.ctypes.data for b in self._blocks], np.uint64)
            lookup = self._current()
            self._directory = (
                lookup.keys.ctypes.data,
                lookup.rows.ctypes.data,
                lookup.size,
                self._addresses.ctypes.data,
            )
        return self._directory

    def _current(self) -> _RowLookup:
        if self._lookup is None or self._lookup.size != len(self._keys):
            self._lookup = _RowLookup(self._keys, [self._row[k] for k in self._keys])
        return self._lookup

    def _find(self, keys: IntArray) -> IntArray:
        return self._current().find(keys)

    def get(self, page: int) -> int:
        arr = self._chunks.get(page >> CHUNK_SHIFT)
        return PTE_NONE if arr is None else int(arr[page & (CHUNK - 1)])

    def places(self, rows: IntArray, offsets: IntArray) -> Places:
        """Where the entries at ``offsets`` of chunk rows ``rows`` are, for :func:`gather`
        and :func:`scatter`: per block touched, its flat view, which entries
        (positions in ``rows``; None: all) and their flat indexes there."""
        if len(self._blocks) == 1:
            return [(self._blocks[0].reshape(-1), None, rows * CHUNK + offsets)]
        block = rows >> BLOCK_SHIFT
        order = np.argsort(block.astype(np.int32), kind="stable")
        ends = np.cumsum(np.bincount(block, minlength=len(self._blocks))).tolist()
        found: Places = []
        lo = 0
        for b, hi in enumerate(ends):
            if hi > lo:
                which = order[lo:hi]
                flat = (rows[which] & (BLOCK - 1)) * CHUNK + offsets[which]
                found.append((self._blocks[b].reshape(-1), which, flat))
            lo = hi
        return found

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

    def runs(self, start: int, end: int, limit: int) -> list[tuple[int, int, IntArray]]:
        """Like :meth:`segments`, for at most ``limit`` chunks, but a run of chunks
        with consecutive keys in consecutive rows of one block is one segment."""
        lookup = self._current()
        keys = self._keys
        i = bisect.bisect_left(keys, start >> CHUNK_SHIFT)
        stop = min(bisect.bisect_left(keys, ((end - 1) >> CHUNK_SHIFT) + 1), i + limit)
        found = []
        while i < stop:
            j = min(lookup.run_end[i], stop)
            row = lookup.row_list[i]
            base = keys[i] << CHUNK_SHIFT
            lo = max(start, base)
            hi = min(end, (keys[j - 1] + 1) << CHUNK_SHIFT)
            at = (row & (BLOCK - 1)) * CHUNK + lo - base
            found.append((lo, hi, self._blocks[row >> BLOCK_SHIFT].reshape(-1)[at : at + hi - lo]))
            i = j
        return found

    def covers(self, first: int, last: int) -> bool:
        """Whether every chunk ``first`` to ``last`` (keys) exists."""
        keys = self._keys
        have = bisect.bisect_right(keys, last) - bisect.bisect_left(keys, first)
        return have == last - first + 1

    def segments_all(self, start: int, end: int) -> Iterator[tuple[int, int, IntArray]]:
        """Like :meth:`segments` but creating the chunks (for writes and read faults)."""
        page = start
        while page < end:
            key = page >> CHUNK_SHIFT
            base = key << CHUNK_SHIFT
            hi = min(end, base + CHUNK)
            yield page, hi, self.chunk(key)[page - base : hi - base]
            page = hi


class _Directories:
    """``PageTable.directory()`` of every process, as the accelerator takes
    them (:attr:`table`, in the order of :attr:`mms`), and where each pid is.

    Writes come tick after tick from the same processes, whose directories
    rarely change: the table is kept while the processes are the same and no
    page table made a chunk.
    """

    __slots__ = ("_at", "_made", "_pids", "_row", "mms", "table")

    def __init__(self) -> None:
        self.mms: list[MM] = []
        self._made = -1
        self.table: IntArray = np.zeros((0, 4), np.int64)
        self._row: npt.NDArray[np.int32] | None = None
        """Each pid's row (-1: none), when the pids are small enough for a table."""
        self._pids: IntArray | None = None
        """Else the pids in order, and the row of each (:attr:`_at`)."""
        self._at: npt.NDArray[np.int32] | None = None

    def of(self, mms: dict[int, MM]) -> _Directories:
        same = (
            self._made == PageTable.chunks_made
            and len(mms) == len(self.mms)
            and all(map(operator.is_, mms.values(), self.mms))
        )
        if not same:
            self.mms = list(mms.values())
            table = [mm.pt.directory() for mm in self.mms]
            self.table = np.array(table, np.int64).reshape(len(self.mms), 4)
            pids = np.fromiter(mms, np.int64, len(mms))
            rows = np.arange(len(mms), dtype=np.int32)
            if len(pids) and pids.min() >= 0 and pids.max() < DENSE_TABLE_LIMIT:
                self._row = np.full(int(pids.max()) + 1, -1, np.int32)
                self._row[pids] = rows
                self._pids = self._at = None
            else:
                self._row = None
                self._at = np.argsort(pids).astype(np.int32)
                self._pids = pids[self._at]
            self._made = PageTable.chunks_made
        return self

    def index(self, pids: IntArray) -> npt.NDArray[np.int32]:
        """The row of each of ``pids`` (processes that exist) in :attr:`table`."""
        if self._row is not None:
            found = self._row[pids]
            assert found.min() >= 0, "no such pid"
            return found
        assert self._pids is not None and self._at is not None
        at = np.searchsorted(self._pids, pids)
        assert (self._pids[np.minimum(at, len(self._pids) - 1)] == pids).all(), "no such pid"
        return self._at[at]


def gather(places: Places, n: int) -> IntArray:
    """The ``n`` entries at ``places`` (:meth:`PageTable.places`)."""
    if len(places) == 1 and places[0][1] is None:
        flat, _, index = places[0]
        return flat[index]
    out = np.empty(n, np.int64)
    for flat, which, index in places:
        out[which] = flat[index]
    return out


def scatter(places: Places, values: IntArray) -> None:
    """Set the entries at ``places`` (:meth:`PageTable.places`) to ``values``."""
    for flat, which, index in places:
        flat[index] = values if which is None else values[which]


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
        self.fast = accelerator()
        """The accelerator of the writes, if there was one when the memory was made."""
        self.events: dict[str, int] = dict(EVENT_COUNTERS_ZERO)
        self.on_ksm_pages_freed = on_ksm_pages_freed
        self._directories = _Directories()

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
        self._bury(np.unique(rows[mc[rows] == 0]))

    def _bury(self, dead: IntArray) -> None:
        """Free the frames ``dead`` (distinct, mapcount 0), telling ksmd of its KSM pages."""
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
        other.  With the accelerator, ``fault.c`` does exactly that; without,
        the pages go to :meth:`write_many` by process, and in the one case
        where their order matters (see there) to :meth:`write` one write at a
        time.
        """
        fast = self.fast
        if fast is not None:
            self._write_run_fast(fast, pids, first, counts, fps)
            return
        starts = np.cumsum(counts) - counts
        event = np.repeat(np.arange(len(counts)), counts)
        pages = first[event] + (np.arange(len(fps)) - starts[event])
        distinct, rank = dense_ranks(pids)
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

    def _write_run_fast(
        self,
        fast: Accelerator,
        pids: IntArray,
        first: IntArray,
        counts: IntArray,
        fps: npt.NDArray[np.uint64],
    ) -> None:
        dirs = self._directories.of(self.mms)

        def make_chunks(e: int, j: int) -> IntArray:
            # The chunks of write e's pages from its j-th on (the blocks may grow).
            page = int(first[e]) + j
            keys = np.arange(
                page >> CHUNK_SHIFT, ((page + int(counts[e]) - j - 1) >> CHUNK_SHIFT) + 1
            )
            self.mms[int(pids[e])].pt.locate(keys)
            return self._directories.of(self.mms).table

        fr = self.frames
        fresh = fr.candidates(len(fps))
        used, dead, stats, events = fast.write_run(
            dirs.index(pids),
            first,
            counts,
            np.ascontiguousarray(fps),
            dirs.table,
            make_chunks,
            (fr.content, fr.mapcount, fr.ksm),
            fresh,
        )
        fr.taken(used)
        self._bury(dead)
        changed = np.flatnonzero(stats.any(axis=1))
        for i, (rss, ksm_zero, fault_zero) in zip(
            changed.tolist(), stats[changed].tolist(), strict=True
        ):
            mm = dirs.mms[i]
            mm.rss_anon += rss
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
        copied = present & ~keep
        if copied.any():
            self.events["cow_breaks_ksm"] += int(np.count_nonzero(fr.ksm[pte[copied]]))
            self._put(pte[copied])
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
