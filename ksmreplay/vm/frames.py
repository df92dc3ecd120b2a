"""Page frames as numpy columns, and the free-row stack they share with ksmd's tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray, charge, grow_rows, more_rows

NULL = -1
"""The one "no such row" sentinel of every index column."""


class FreeStack:
    """Free row numbers of a table, as a numpy stack (last pushed, first popped).

    Fresh capacity ``[old, new)`` is pushed highest first, so rows are handed
    out in ascending order; :meth:`pop` returns the most recently freed rows,
    the last one freed first.  The stack is as long as its table (a table
    cannot have more free rows than rows: :meth:`grow` follows the table's
    growth), and holds ``int32`` rows (:data:`~ksmreplay.arrays.ROW_LIMIT`,
    checked where a table grows).
    """

    __slots__ = ("_n", "_rows")

    def __init__(self, capacity: int) -> None:
        self._rows: npt.NDArray[np.int32] = np.arange(capacity - 1, -1, -1, dtype=np.int32)
        self._n = capacity

    def __len__(self) -> int:
        return self._n

    def grow(self, old: int, new: int) -> None:
        """The table grew from ``old`` rows to ``new``: push the new rows, highest first."""
        grow_rows(self, "_rows", new)
        self.push(np.arange(new - 1, old - 1, -1, dtype=np.int32))

    def push(self, rows: npt.NDArray[np.integer[Any]]) -> None:
        self._rows[self._n : self._n + len(rows)] = rows
        self._n += len(rows)

    def push_one(self, row: int) -> None:
        self._rows[self._n] = row
        self._n += 1

    def peek(self, n: int) -> IntArray:
        """The rows the next :meth:`pop` of ``n`` would return, without taking them."""
        rows: IntArray = self._rows[self._n - n : self._n][::-1].astype(np.int64)
        return rows

    def pop(self, n: int) -> IntArray:
        """The top ``n`` rows, topmost first (the caller checked there are enough)."""
        rows = self.peek(n)
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
        self.changes = 0
        """A counter that every write to the four columns raises (by at least one
        when it may change a row): frames allocated and freed, contents written
        in place, mappings added and dropped, KSM pages made and their nodes
        set.  It never goes down, so two moments with the same count have the
        same columns; ``Ksmd.idle_state`` relies on it instead of hashing the
        columns (ksmd's idle passes change none)."""

    ROW_BYTES = 8 + 4 + 1 + 4 + 4
    """Bytes per frame row: the four columns and the free stack."""

    def _grow(self, need: int) -> None:
        """Room for ``need`` more rows (the columns may move: take them after)."""
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
        return self._free.peek(n)

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
        self._free.push(rows)

    def release_one(self, row: int) -> None:
        """:meth:`release` of a single row."""
        if self.ksm[row]:
            self.live_ksm -= 1
            self.ksm[row] = False
        self.node[row] = NULL
        self.live -= 1
        self.changes += 1
        self._free.push_one(row)

    @property
    def capacity(self) -> int:
        return len(self.content)
