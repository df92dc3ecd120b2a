"""Page frames as numpy columns, and the free-row stack they share with ksmd's tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray, charge, grow_rows, more_rows
from ksmreplay.native import native

NULL = -1
"""The one "no such row" sentinel of every index column."""


class FreeStack:
    """Free row numbers of a table: the rows freed, last freed first, then
    the rows never used, in ascending order.

    The freed rows are a numpy stack (``int32``: tables hold at most
    :data:`~ksmreplay.arrays.ROW_LIMIT` rows, checked where they grow) that
    grows with the frees; the rows never used are only their bounds
    ``[fresh, end)``, so that a table's unused capacity costs nothing here.
    """

    __slots__ = ("_end", "_fresh", "_n", "_rows")

    def __init__(self, capacity: int) -> None:
        self._rows: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self._n = 0
        """Rows freed and not handed out again (the first ``_n`` of ``_rows``)."""
        self._fresh = 0
        """The first row never handed out."""
        self._end = capacity

    def __len__(self) -> int:
        return self._n + self._end - self._fresh

    def grow(self, old: int, new: int) -> None:
        """The table grew from ``old`` rows to ``new``."""
        assert old == self._end
        self._end = new

    def _room(self, more: int) -> None:
        if self._n + more > len(self._rows):
            grow_rows(self, "_rows", len(self._rows) + more_rows(len(self._rows), more))

    def room(self, n: int) -> npt.NDArray[np.int32]:
        """The freed rows' array, with room for ``n`` more above the top (for
        the native core, which pops and pushes in place: see :meth:`state`
        and :meth:`settle`)."""
        self._room(n)
        return self._rows

    def state(self) -> tuple[int, int, int]:
        """The rows freed on the stack, the first row never used and the
        end of the table: what the native core pops from and pushes to."""
        return self._n, self._fresh, self._end

    def settle(self, n: int, fresh: int) -> None:
        """The native core left ``n`` freed rows on the stack (in
        :meth:`room`'s array) and handed out the unused rows below ``fresh``."""
        assert 0 <= n <= len(self._rows) and self._fresh <= fresh <= self._end
        self._n = n
        self._fresh = fresh

    def push(self, rows: npt.NDArray[np.integer[Any]]) -> None:
        """Free ``rows`` (the last of them is handed out first)."""
        self._room(len(rows))
        self._rows[self._n : self._n + len(rows)] = rows
        self._n += len(rows)

    def push_one(self, row: int) -> None:
        self._room(1)
        self._rows[self._n] = row
        self._n += 1

    def peek(self, n: int) -> IntArray:
        """The rows the next :meth:`pop` of ``n`` would return, without taking them."""
        freed = min(n, self._n)
        rows = np.empty(n, np.int64)
        rows[:freed] = self._rows[self._n - freed : self._n][::-1]
        rows[freed:] = np.arange(self._fresh, self._fresh + n - freed)
        return rows

    def pop(self, n: int) -> IntArray:
        """The next ``n`` free rows (the caller checked there are enough)."""
        rows = self.peek(n)
        freed = min(n, self._n)
        self._n -= freed
        self._fresh += n - freed
        return rows


class FreeList:
    """Free rows of the frame table, handed out as :class:`FreeStack` hands
    them: the rows freed, last freed first, then the rows never used, in
    ascending order.

    The freed rows are a list linked through a column that a free row does
    not use (``links``: the frames' contents; a freed row's entry holds the
    row freed before it), so that they cost no memory of their own: the
    frames freed by merging are most of a host's frames.  Rows are taken in
    two steps, as the fault path takes them: :meth:`peek` lists the next
    ones, the caller fills in (and so overwrites the links of) those it uses,
    then :meth:`pop` takes them, with nothing pushed in between.
    """

    __slots__ = ("_end", "_fresh", "_head", "_n", "_native", "_next", "_peeked")

    def __init__(self, capacity: int) -> None:
        self._head = NULL
        """The last row freed (the list's first)."""
        self._n = 0
        """Rows freed and not handed out again (the list's length)."""
        self._fresh = 0
        """The first row never handed out."""
        self._end = capacity
        self._peeked: IntArray = np.zeros(0, np.int64)
        """The freed rows the last :meth:`peek` listed."""
        self._next = NULL
        """The row after them in the list."""
        self._native = native()

    def __len__(self) -> int:
        return self._n + self._end - self._fresh

    def grow(self, old: int, new: int) -> None:
        """The table grew from ``old`` rows to ``new``."""
        assert old == self._end
        self._end = new

    def push(self, links: npt.NDArray[np.uint64], rows: npt.NDArray[np.integer[Any]]) -> None:
        """Free ``rows`` (the last of them is handed out first)."""
        if len(rows):
            links[rows[0]] = max(self._head, 0)
            links[rows[1:]] = rows[:-1]
            self._head = int(rows[-1])
            self._n += len(rows)
            self._peeked = self._peeked[:0]

    def push_one(self, links: npt.NDArray[np.uint64], row: int) -> None:
        links[row] = max(self._head, 0)
        self._head = row
        self._n += 1
        self._peeked = self._peeked[:0]

    def peek(self, links: npt.NDArray[np.uint64], n: int) -> IntArray:
        """The rows the next :meth:`pop` of ``n`` would return, without taking them."""
        freed = min(n, self._n)
        rows = np.empty(n, np.int64)
        if self._native is not None:
            self._next = self._native.free_walk(links, self._head, rows[:freed])
        else:
            row = self._head
            for i in range(freed):
                rows[i] = row
                row = int(links[row])
            self._next = row
        rows[freed:] = np.arange(self._fresh, self._fresh + n - freed)
        self._peeked = rows[:freed]
        return rows

    def pop(self, n: int) -> None:
        """Take the first ``n`` rows the last :meth:`peek` listed (it listed at least ``n``)."""
        freed = min(n, self._n)
        assert freed <= len(self._peeked) and (freed == 0 or self._peeked[0] == self._head)
        if freed:
            self._head = int(self._peeked[freed]) if freed < len(self._peeked) else self._next
            self._n -= freed
            if self._n == 0:
                self._head = NULL
        self._fresh += n - freed
        self._peeked = self._peeked[:0]


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
        self._free = FreeList(capacity)
        self.on_grow: Callable[[], None] | None = None
        """Called before the columns grow (whoever holds them lets them go, so
        that they grow in place and the old rows are not kept alive)."""
        self.live = 0
        self.live_ksm = 0
        self.changes = 0
        """A counter that every write to the four columns raises (by at least one
        when it may change a row): frames allocated and freed, contents written
        in place, mappings added and dropped, KSM pages made and their nodes
        set.  It never goes down, so two moments with the same count have the
        same columns; ``Ksmd.idle_state`` relies on it instead of hashing the
        columns (ksmd's idle passes change none)."""

    ROW_BYTES = 8 + 4 + 1 + 4
    """Bytes per frame row: the four columns (a freed row's content links it
    in the list of freed rows: :class:`FreeList`)."""

    def _grow(self, need: int) -> None:
        """Room for ``need`` more rows (the columns may move: take them after)."""
        if self.on_grow is not None:
            self.on_grow()
        old = len(self.content)
        new = old + more_rows(old, need)
        charge((new - old) * self.ROW_BYTES, "the frame table")
        for name in ("content", "mapcount", "ksm", "node"):
            grow_rows(self, name, new)
        self.node[old:] = NULL
        self._free.grow(old, new)

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
        return self._free.peek(self.content, n)

    def taken(self, n: int) -> None:
        """The first ``n`` :meth:`candidates` were filled in as frames mapped once."""
        self._free.pop(n)
        self.live += n
        self.changes += n

    def release(self, rows: IntArray) -> None:
        """Free rows whose mapcount reached 0."""
        if len(rows) == 0:
            return
        self.live_ksm -= int(np.count_nonzero(self.ksm[rows]))
        self.ksm[rows] = False
        self.node[rows] = NULL
        self.live -= len(rows)
        self.changes += len(rows)
        self._free.push(self.content, rows)

    def release_one(self, row: int) -> None:
        """:meth:`release` of a single row."""
        if self.ksm[row]:
            self.live_ksm -= 1
            self.ksm[row] = False
        self.node[row] = NULL
        self.live -= 1
        self.changes += 1
        self._free.push_one(self.content, row)

    @property
    def capacity(self) -> int:
        return len(self.content)
