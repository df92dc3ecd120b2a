"""ksmd's per-page and per-mm records: the rmap_items as columns
(:class:`ItemTable`) and the mm slots (:class:`Slot`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray, charge, grow_rows, more_rows
from ksmreplay.native import (
    IROW_DTYPE,
    ITEM_COLD,
    ITEM_HOT,
    STATE_NONE,
    STATE_STABLE,
    STATE_UNSTABLE,
    ZERO_PAGE_FLAG,
)
from ksmreplay.vm import (
    MM,
    NULL,
    FreeStack,
    PageTable,
)

NONE, UNSTABLE, STABLE = STATE_NONE, STATE_UNSTABLE, STATE_STABLE
"""Item states: volatile (no tree), in the unstable tree, linked to a stable node."""


class ItemTable:
    """Every ``struct ksm_rmap_item``, as columns indexed by item number.

    The columns but the hlist links are fields of two records per item, in
    two tables indexed alike: :attr:`hot` (:data:`ITEM_HOT`) holds the few
    fields smart_scan reads and updates at every page a pass walks (most of
    them never visited) and the node a KSM page's visit checks, so that a
    walk reads 8 bytes per page; :attr:`cold` (:data:`ITEM_COLD`) the rest,
    read by visits.  Each column attribute is a view of its field.

    :ivar slot: owning mm slot id (``int32``).
    :ivar page: virtual page number (``int64``).
    :ivar checksum: content seen at the last non-KSM visit (``uint64``).
    :ivar checked: a checksum was recorded (``bool``); an unchecked item is
        always "changed" on its first visit.
    :ivar age: smart_scan age, saturating at 255 (``uint8``).
    :ivar skips: smart_scan remaining_skips (``uint8``).
    :ivar state: :data:`NONE`, :data:`UNSTABLE` or :data:`STABLE` (``int8``).
    :ivar seq: low 8 bits of the pass that inserted an unstable item (``uint8``).
    :ivar node: stable node id of a STABLE item, else :data:`NULL` (``int32``).
    :ivar flags: :data:`ZERO_PAGE_FLAG` of the v6 design (``uint16``).
    :ivar hnext: next item of a STABLE item's node's hlist, or :data:`NULL` (``int32``:
        item numbers are below :data:`~ksmreplay.arrays.ROW_LIMIT`).
    :ivar hprev: previous item of that hlist, or :data:`NULL` (``int32``).
    """

    FILL = (("slot", NULL), ("state", NONE), ("node", NULL))
    """Fields of a fresh item that are not zero."""

    def __init__(self, capacity: int = 1024) -> None:
        blank_hot, blank_cold = np.zeros(1, ITEM_HOT), np.zeros(1, ITEM_COLD)
        for name, value in self.FILL:
            blank = blank_hot if name in (ITEM_HOT.names or ()) else blank_cold
            blank[name] = value
        self.blanks = (blank_hot, blank_cold)
        """A fresh item's two records (the native core makes items too)."""
        # A fresh item's records as machine words, which numpy copies far
        # faster than records.
        self._blank_hot = blank_hot.view(np.uint64)
        self._blank_cold = blank_cold.view(np.uint64)
        self.hot = np.empty(0, ITEM_HOT)
        self.cold = np.empty(0, ITEM_COLD)
        self.hnext: npt.NDArray[np.int32] = np.empty(0, np.int32)
        self.hprev: npt.NDArray[np.int32] = np.empty(0, np.int32)
        self._free = FreeStack(0)
        self.on_grow: Callable[[], None] | None = None
        """Called before the tables grow (whoever holds them lets them go, so
        that they grow in place and the old rows are not kept alive)."""
        self._grow(capacity)
        self.count = 0
        self.changes = 0
        """Items allocated and freed so far."""

    ROW_BYTES = ITEM_HOT.itemsize + ITEM_COLD.itemsize + 4 + 4
    """Bytes per item: its two records and hlist links (a freed item takes 4
    more in the free stack)."""

    COLUMNS = ("hot", "cold", "hnext", "hprev")
    """The arrays indexed by item number."""

    def _grow(self, more: int) -> None:
        """Room for ``more`` items (the tables may move: take columns after)."""
        old = len(self.hot)
        new = old + more
        charge(more * self.ROW_BYTES, "the rmap_item table")
        if self.on_grow is not None:
            self.on_grow()
        # The tables grow in place unless something refers to them: drop our
        # own views first.
        views = (*(ITEM_HOT.names or ()), *(ITEM_COLD.names or ()), "_hot_words", "_cold_words")
        for name in views:
            self.__dict__.pop(name, None)
        for name in self.COLUMNS:
            grow_rows(self, name, new)
        self._hot_words = self.hot.view(np.uint64)
        self._cold_words = self.cold.view(np.uint64).reshape(-1, len(self._blank_cold))
        self._hot_words[old:] = self._blank_hot
        self._cold_words[old:] = self._blank_cold
        self.hnext[old:] = NULL
        self.hprev[old:] = NULL
        for records in (self.hot, self.cold):
            for name in records.dtype.names or ():
                setattr(self, name, records[name])
        self._free.grow(old, new)

    slot: npt.NDArray[np.int32]
    page: npt.NDArray[np.int64]
    checksum: npt.NDArray[np.uint64]
    checked: npt.NDArray[np.bool_]
    age: npt.NDArray[np.uint8]
    skips: npt.NDArray[np.uint8]
    state: npt.NDArray[np.int8]
    seq: npt.NDArray[np.uint8]
    node: npt.NDArray[np.int32]
    flags: npt.NDArray[np.uint16]

    def flagged(self, rows: IntArray) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` carry ZERO_PAGE_FLAG."""
        flagged: npt.NDArray[np.bool_] = (self.flags[rows] & ZERO_PAGE_FLAG) != 0
        return flagged

    def is_flagged(self, row: int) -> bool:
        """Whether item ``row`` carries ZERO_PAGE_FLAG (one item, no array)."""
        return bool(int(self.flags[row]) & ZERO_PAGE_FLAG)

    def alloc(self, slot: int, pages: IntArray) -> IntArray:
        """``alloc_rmap_item()`` for each page: fresh items (volatile, unchecked, age 0)."""
        n = len(pages)
        if n > len(self._free):
            self._grow(more_rows(len(self.hot), n - len(self._free)))
        rows = self._free.pop(n)
        self._hot_words[rows] = self._blank_hot
        self._cold_words[rows] = self._blank_cold
        self.hnext[rows] = NULL
        self.hprev[rows] = NULL
        self.slot[rows] = slot
        self.page[rows] = pages
        self.count += n
        self.changes += n
        return rows

    def free_rows(self, room: int) -> tuple[npt.NDArray[np.int32], int, int, int]:
        """The free stack's array of freed rows, with room for ``room`` more,
        the freed rows on it, the first row never used and the table's end
        (:meth:`FreeStack.state`), for the native core to pop and push (see
        :meth:`took`)."""
        return (self._free.room(room), *self._free.state())

    def took(self, made: int, freed: int, left: int, fresh: int) -> None:
        """The native core made ``made`` items and freed ``freed`` in place,
        as :meth:`alloc` and :meth:`release` do, leaving ``left`` freed rows
        on the stack and the rows from ``fresh`` on never used."""
        self._free.settle(left, fresh)
        self.count += made - freed
        self.changes += made + freed

    def release(self, rows: IntArray) -> None:
        """``free_rmap_item()``."""
        self.slot[rows] = NULL
        self.count -= len(rows)
        self.changes += len(rows)
        self._free.push(rows)


@dataclass(eq=False, slots=True)
class Slot:
    """``struct ksm_mm_slot``: one registered mm, its items and per-mm KSM counters."""

    id: int
    mm: MM
    items: PageTable = field(default_factory=lambda: PageTable(IROW_DTYPE))
    """The item map: the item of each page (or -1), laid out as a page table."""
    rmap_items: int = 0
    merging_pages: int = 0
