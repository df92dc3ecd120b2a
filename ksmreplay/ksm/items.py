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
    ITEM_CHECKED_BIT,
    ITEM_COLD,
    ITEM_HOT,
    ITEM_PAGE_BITS,
    ITEM_SLOT_BITS,
    ITEM_ZERO_FLAGGED_BIT,
    STATE_NONE,
    STATE_STABLE,
    STATE_UNSTABLE,
)
from ksmreplay.vm import (
    MM,
    NULL,
    FreeStack,
    PageTable,
)

NONE, UNSTABLE, STABLE = STATE_NONE, STATE_UNSTABLE, STATE_STABLE
"""Item states: volatile (no tree), in the unstable tree, linked to a stable node."""

ITEM_PAGE_LIMIT = 1 << ITEM_PAGE_BITS
"""An item's page number stays below this (the cold record holds it in
:data:`~ksmreplay.native.ITEM_PAGE_BITS` bits): the item maps make no chunk
beyond it (:class:`~ksmreplay.vm.PageTable`'s ``limit``)."""

_PAGE_MASK = np.uint64(ITEM_PAGE_LIMIT - 1)
_SLOT_SHIFT = np.uint64(ITEM_PAGE_BITS)
_SLOT_MASK = np.uint64(((1 << ITEM_SLOT_BITS) - 1) << ITEM_PAGE_BITS)
_CHECKED = np.uint64(1 << ITEM_CHECKED_BIT)
_FLAGGED = np.uint64(1 << ITEM_ZERO_FLAGGED_BIT)
_ALL = slice(None)


class ItemTable:
    """Every ``struct ksm_rmap_item``, as columns indexed by item number.

    The columns but the hlist links are fields of two records per item, in
    two tables indexed alike: :attr:`hot` (:data:`ITEM_HOT`) holds the few
    fields smart_scan reads and updates at every page a pass walks (most of
    them never visited) and the node a KSM page's visit checks, so that a
    walk reads 8 bytes per page; :attr:`cold` (:data:`ITEM_COLD`) the rest,
    read by visits.  Each column attribute is a view of its field.

    The cold record's second field, :attr:`where`, is one word of the
    item's page, its mm slot and two flags (``ksmreplay.h``): read them with
    :meth:`pages`, :meth:`slots`, :meth:`checked`, :meth:`flagged` (one
    item: :meth:`page_of`, :meth:`slot_of`, :meth:`is_checked`,
    :meth:`is_flagged`), so that the record is 16 bytes.

    :ivar checksum: content seen at the last non-KSM visit (``uint64``).
    :ivar where: page, mm slot id plus one (0: a free item), a checksum was
        recorded (an unchecked item is always "changed" on its first visit),
        :data:`ZERO_PAGE_FLAG` of the v6 design (``uint64``).
    :ivar age: smart_scan age, saturating at 255 (``uint8``).
    :ivar skips: smart_scan remaining_skips (``uint8``).
    :ivar state: :data:`NONE`, :data:`UNSTABLE` or :data:`STABLE` (``int8``).
    :ivar seq: low 8 bits of the pass that inserted an unstable item (``uint8``).
    :ivar node: stable node id of a STABLE item, else :data:`NULL` (``int32``).
    :ivar hnext: next item of a STABLE item's node's hlist, or :data:`NULL` (``int32``:
        item numbers are below :data:`~ksmreplay.arrays.ROW_LIMIT`).
    :ivar hprev: previous item of that hlist, or :data:`NULL` (``int32``).
    """

    FILL = (("state", NONE), ("node", NULL))
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

    checksum: npt.NDArray[np.uint64]
    where: npt.NDArray[np.uint64]
    age: npt.NDArray[np.uint8]
    skips: npt.NDArray[np.uint8]
    state: npt.NDArray[np.int8]
    seq: npt.NDArray[np.uint8]
    node: npt.NDArray[np.int32]

    def pages(self, rows: IntArray) -> IntArray:
        """The pages of items ``rows``."""
        pages: IntArray = (self.where[rows] & _PAGE_MASK).astype(np.int64)
        return pages

    def page_of(self, row: int) -> int:
        """The page of item ``row``."""
        return int(self.where[row]) & int(_PAGE_MASK)

    def slots(self, rows: IntArray | slice = _ALL) -> IntArray:
        """The mm slot ids of items ``rows`` (all by default), :data:`NULL` for a free one."""
        slots: IntArray = ((self.where[rows] & _SLOT_MASK) >> _SLOT_SHIFT).astype(np.int64) - 1
        return slots

    def slot_of(self, row: int) -> int:
        """The mm slot id of item ``row``, :data:`NULL` when it is free."""
        return ((int(self.where[row]) & int(_SLOT_MASK)) >> int(_SLOT_SHIFT)) - 1

    def checked(self, rows: IntArray) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` have a checksum recorded."""
        checked: npt.NDArray[np.bool_] = (self.where[rows] & _CHECKED) != 0
        return checked

    def is_checked(self, row: int) -> bool:
        """Whether item ``row`` has a checksum recorded."""
        return bool(int(self.where[row]) & int(_CHECKED))

    def record_checksum(self, row: int, content: int) -> None:
        """Item ``row``'s checksum is now ``content`` (and recorded)."""
        self.checksum[row] = content
        self.where[row] |= _CHECKED

    def flagged(self, rows: IntArray) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` carry ZERO_PAGE_FLAG."""
        flagged: npt.NDArray[np.bool_] = (self.where[rows] & _FLAGGED) != 0
        return flagged

    def is_flagged(self, row: int) -> bool:
        """Whether item ``row`` carries ZERO_PAGE_FLAG (one item, no array)."""
        return bool(int(self.where[row]) & int(_FLAGGED))

    def flag(self, rows: IntArray) -> None:
        """Set ZERO_PAGE_FLAG on items ``rows``."""
        self.where[rows] |= _FLAGGED

    def unflag(self, rows: IntArray) -> None:
        """Clear ZERO_PAGE_FLAG of items ``rows`` (their other bits stay)."""
        self.where[rows] &= ~_FLAGGED

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
        self.where[rows] = pages.astype(np.uint64) | np.uint64((slot + 1) << int(_SLOT_SHIFT))
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
        """``free_rmap_item()`` (the native core frees alike: the word cleared)."""
        self.where[rows] = 0
        self.count -= len(rows)
        self.changes += len(rows)
        self._free.push(rows)


@dataclass(eq=False, slots=True)
class Slot:
    """``struct ksm_mm_slot``: one registered mm, its items and per-mm KSM counters."""

    id: int
    mm: MM
    items: PageTable = field(
        default_factory=lambda: PageTable(IROW_DTYPE, ITEM_PAGE_LIMIT, "an rmap_item's page")
    )
    """The item map: the item of each page (or -1), laid out as a page table."""
    rmap_items: int = 0
    merging_pages: int = 0
