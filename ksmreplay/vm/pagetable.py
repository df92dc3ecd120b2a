"""Page tables: a process's virtual pages in chunks of :data:`CHUNK` entries,
made only where something was touched."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray, charge
from ksmreplay.errors import ResourceError
from ksmreplay.native import CHUNK_SHIFT, PTE_DTYPE, PTE_NONE, Entries

CHUNK = 1 << CHUNK_SHIFT
"""Entries per page-table chunk (512, like one x86-64 PTE page)."""

Places = list[tuple[Entries, "IntArray | None", IntArray]]


BLOCK_SHIFT = 9
BLOCK = 1 << BLOCK_SHIFT
"""Chunks per full block of a page table (2 MiB of entries)."""

FEW = 16
"""Up to this many chunk keys are looked up one by one (cheaper than numpy for few)."""


class PageTable:
    """Sparse page table of one process: chunks of :data:`CHUNK` entries of
    ``dtype``, created on demand.  A process's PTEs (frame rows and PTE_*
    values: ``native.PTE_DTYPE``) are one; ksmd's item map of an mm (item
    rows, or -1: ``native.IROW_DTYPE``) is another, of the same layout.
    With a ``limit``, no chunk is made for pages at or above it: a
    :class:`~ksmreplay.errors.ResourceError` says that ``what`` (the entries'
    meaning, in words) cannot be held there.

    Chunks are rows of 2-D blocks, numbered in the order they were created,
    so that many pages can be read and written at once (:meth:`places`,
    :func:`gather`, :func:`scatter`).  A block never moves: a chunk's view
    stays valid for the table's life.  Blocks grow with the table, from one
    chunk to :data:`BLOCK` (or as many as one call makes at once), so that a
    process with few chunks costs few chunks.  The chunk keys are
    kept sorted, with their rows, in arrays grown in place (a new chunk
    shifts the keys above it), so that adding a chunk never rebuilds an
    index of the others.

    ``on_change`` is called when a chunk is made after :meth:`directory` was
    read (the directory is then stale).
    """

    __slots__ = (
        "_addr",
        "_at",
        "_at_list",
        "_bases",
        "_blocks",
        "_chunks",
        "_directory",
        "_dtype",
        "_in",
        "_in_list",
        "_karr",
        "_keys",
        "_limit",
        "_rarr",
        "_row",
        "_what",
        "on_change",
    )

    def __init__(
        self, dtype: np.dtype[Any] = PTE_DTYPE, limit: int | None = None, what: str = ""
    ) -> None:
        self._dtype = dtype
        self._limit = None if limit is None else limit >> CHUNK_SHIFT
        """The first chunk key not to make (None: any)."""
        self._what = what
        self._chunks: dict[int, Entries] = {}
        self._row: dict[int, int] = {}
        self._keys: list[int] = []
        self._blocks: list[Entries] = []
        self._bases: list[int] = []
        """Each block's address."""
        self._karr = np.zeros(0, np.int64)
        """The chunk keys, ascending (the first :attr:`rows` entries)."""
        self._rarr = np.zeros(0, np.int64)
        """The row of each of :attr:`_karr`."""
        self._addr = np.zeros(0, np.uint64)
        """The address of each row's chunk, by row."""
        self._in = np.zeros(0, np.int64)
        """The block of each row."""
        self._at = np.zeros(0, np.int64)
        """Each row's place in its block."""
        self._in_list: list[int] = []
        self._at_list: list[int] = []
        """:attr:`_in` and :attr:`_at` as lists (for one chunk at a time)."""
        self._directory: tuple[int, int, int, int] | None = None
        self.on_change: Callable[[], None] | None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        """The entries' type."""
        return self._dtype

    def chunk(self, key: int) -> Entries:
        """The chunk ``key`` (page number >> CHUNK_SHIFT), created empty if needed."""
        arr = self._chunks.get(key)
        if arr is None:
            arr = self._make(key)
        return arr

    def _make(self, key: int, more: int = 1) -> Entries:
        """A new chunk ``key``; ``more`` chunks (this one included) are being made."""
        if self._limit is not None and key >= self._limit:
            raise ResourceError(
                f"page {key << CHUNK_SHIFT:#x} and above: the simulator holds {self._what} "
                f"below {self._limit << CHUNK_SHIFT:#x} only"
            )
        row = len(self._chunks)
        if row == len(self._karr):
            grow = max(8, row)
            self._karr = np.concatenate([self._karr, np.zeros(grow, np.int64)])
            self._rarr = np.concatenate([self._rarr, np.zeros(grow, np.int64)])
            self._addr = np.concatenate([self._addr, np.zeros(grow, np.uint64)])
            self._in = np.concatenate([self._in, np.zeros(grow, np.int64)])
            self._at = np.concatenate([self._at, np.zeros(grow, np.int64)])
        if row and self._at[row - 1] + 1 < len(self._blocks[-1]):
            block, at = len(self._blocks) - 1, int(self._at[row - 1]) + 1
        else:
            size = min(max(row, more, 1), BLOCK)
            charge(size * CHUNK * self._dtype.itemsize, "a page table")
            self._blocks.append(np.empty((size, CHUNK), self._dtype))
            self._bases.append(self._blocks[-1].ctypes.data)
            block, at = len(self._blocks) - 1, 0
        self._in[row], self._at[row] = block, at
        self._in_list.append(block)
        self._at_list.append(at)
        arr: Entries = self._blocks[block][at]
        arr[:] = PTE_NONE
        self._chunks[key] = arr
        self._row[key] = row
        i = bisect.bisect_left(self._keys, key)
        self._keys.insert(i, key)
        karr, rarr = self._karr, self._rarr
        karr[i + 1 : row + 1] = karr[i:row]
        rarr[i + 1 : row + 1] = rarr[i:row]
        karr[i], rarr[i] = key, row
        self._addr[row] = self._bases[block] + at * CHUNK * self._dtype.itemsize
        if self._directory is not None:
            self._directory = None
            if self.on_change is not None:
                self.on_change()
        return arr

    def locate(self, keys: IntArray) -> IntArray:
        """The rows of chunks ``keys`` (page numbers >> CHUNK_SHIFT), created if needed."""
        if len(keys) <= FEW:
            row = self._row
            listed = keys.tolist()
            new = sorted({key for key in listed if key not in row})
            for i, key in enumerate(new):
                self._make(key, len(new) - i)
            return np.array([row[key] for key in listed], np.int64)
        rows = self._find(keys)
        missing = rows < 0
        if missing.any():
            new = np.unique(keys[missing]).tolist()
            for i, key in enumerate(new):
                self._make(key, len(new) - i)
            rows[missing] = self._find(keys[missing])
        return rows

    def _find(self, keys: IntArray) -> IntArray:
        """The rows of chunks ``keys``, -1 where there is no such chunk."""
        n = len(self._chunks)
        if n == 0:
            return np.full(len(keys), -1, np.int64)
        sorted_keys = self._karr[:n]
        at = np.minimum(np.searchsorted(sorted_keys, keys), n - 1)
        found: IntArray = np.where(sorted_keys[at] == keys, self._rarr[at], -1)
        return found

    @property
    def rows(self) -> int:
        """Chunks so far (rows are ``0 .. rows - 1``)."""
        return len(self._chunks)

    @property
    def block_rows(self) -> list[int]:
        """The rows each block of chunks can hold, in the order the blocks were made
        (a table grows by blocks, each of them one numpy array)."""
        return [len(block) for block in self._blocks]

    def directory(self) -> tuple[int, int, int, int]:
        """For the native core: the addresses of the sorted chunk keys and of
        their rows, how many there are, and the address of an array of each
        row's chunk address (valid until a chunk is added)."""
        if self._directory is None:
            self._directory = (
                self._karr.ctypes.data,
                self._rarr.ctypes.data,
                len(self._chunks),
                self._addr.ctypes.data,
            )
        return self._directory

    def get(self, page: int) -> int:
        arr = self._chunks.get(page >> CHUNK_SHIFT)
        return PTE_NONE if arr is None else int(arr[page & (CHUNK - 1)])

    def places(self, rows: IntArray, offsets: IntArray) -> Places:
        """Where the entries at ``offsets`` of chunk rows ``rows`` are, for :func:`gather`
        and :func:`scatter`: per block touched, its flat view, which entries
        (positions in ``rows``; None: all) and their flat indexes there."""
        if len(self._blocks) == 1:
            return [(self._blocks[0].reshape(-1), None, rows * CHUNK + offsets)]
        block, at = self._in[rows], self._at[rows]
        order = np.argsort(block.astype(np.int32), kind="stable")
        ends = np.cumsum(np.bincount(block, minlength=len(self._blocks))).tolist()
        found: Places = []
        lo = 0
        for b, hi in enumerate(ends):
            if hi > lo:
                which = order[lo:hi]
                if hi - lo == len(rows):
                    found.append((self._blocks[b].reshape(-1), None, at * CHUNK + offsets))
                    break
                flat = at[which] * CHUNK + offsets[which]
                found.append((self._blocks[b].reshape(-1), which, flat))
            lo = hi
        return found

    def segments(self, start: int, end: int) -> Iterator[tuple[int, int, Entries]]:
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

    def runs(self, start: int, end: int, limit: int) -> list[tuple[int, int, Entries]]:
        """Like :meth:`segments`, for at most ``limit`` chunks, but a run of chunks
        with consecutive keys in consecutive rows of one block is one segment."""
        keys = self._keys
        i = bisect.bisect_left(keys, start >> CHUNK_SHIFT)
        stop = min(bisect.bisect_left(keys, ((end - 1) >> CHUNK_SHIFT) + 1), i + limit)
        found = []
        rows, blocks = self._row, self._blocks
        while i < stop:
            # A run ends at a gap in keys or rows, or at the end of a block.
            key, row = keys[i], rows[keys[i]]
            block, at = self._in_list[row], self._at_list[row]
            j = min(stop, i + len(blocks[block]) - at)
            n = 1
            while i + n < j and keys[i + n] == key + n and rows[key + n] == row + n:
                n += 1
            base = key << CHUNK_SHIFT
            lo = max(start, base)
            hi = min(end, (key + n) << CHUNK_SHIFT)
            flat = at * CHUNK + lo - base
            found.append((lo, hi, blocks[block].reshape(-1)[flat : flat + hi - lo]))
            i += n
        return found

    def covers(self, first: int, last: int) -> bool:
        """Whether every chunk ``first`` to ``last`` (keys) exists."""
        keys = self._keys
        have = bisect.bisect_right(keys, last) - bisect.bisect_left(keys, first)
        return have == last - first + 1

    def segments_all(self, start: int, end: int) -> Iterator[tuple[int, int, Entries]]:
        """Like :meth:`segments` but creating the chunks (for writes and read faults)."""
        page = start
        while page < end:
            key = page >> CHUNK_SHIFT
            base = key << CHUNK_SHIFT
            hi = min(end, base + CHUNK)
            yield page, hi, self.chunk(key)[page - base : hi - base]
            page = hi


def gather(places: Places, n: int) -> Entries:
    """The ``n`` entries at ``places`` (:meth:`PageTable.places`)."""
    if len(places) == 1 and places[0][1] is None:
        flat, _, index = places[0]
        return flat[index]
    out = np.empty(n, places[0][0].dtype if places else PTE_DTYPE)
    for flat, which, index in places:
        out[which] = flat[index]
    return out


def scatter(places: Places, values: npt.NDArray[np.signedinteger[Any]]) -> None:
    """Set the entries at ``places`` (:meth:`PageTable.places`) to ``values``."""
    for flat, which, index in places:
        flat[index] = values if which is None else values[which]
