"""The v6 design (``modes.V6``): KSM's zero pages tracked by a flag on the item
instead of a mark in the page-table entry."""

from __future__ import annotations

from enum import Enum

from ksmreplay.arrays import IntArray
from ksmreplay.ksm.counters import Counters
from ksmreplay.ksm.items import ItemTable, Slot
from ksmreplay.native import (
    PTE_KSM_ZERO,
    PTE_ZERO,
)
from ksmreplay.vm import (
    MM,
    Memory,
)


class WalkResult(Enum):
    """What the v6 page walk finds at an address."""

    NORMAL_PAGE = 1
    """An ordinary or KSM anonymous page: the item is visited."""
    ZERO_PAGE = 2
    """The shared zero page: a flagged item there is kept, not visited."""
    NOTHING = 3
    """No page, or the VMA is gone or not mergeable: items there are freed."""


class FlaggedItems:
    """The v6 design's steps on flagged items, as methods of
    :class:`~ksmreplay.ksm.ksmd.Ksmd` (which derives from this class)."""

    items: ItemTable
    c: Counters
    mem: Memory

    def _walk(self, mm: MM, page: int) -> WalkResult:
        """What the v6 scan's page walk finds at ``page``."""
        if mm.exiting or not mm.mergeable(page):
            return WalkResult.NOTHING
        pte = mm.pt.get(page)
        if pte >= 0:
            return WalkResult.NORMAL_PAGE
        return WalkResult.ZERO_PAGE if pte in (PTE_ZERO, PTE_KSM_ZERO) else WalkResult.NOTHING

    def _flag_zero(self, slot: Slot, rows: IntArray) -> None:
        """A zero-page merge: keep the items, flagged and counted (global and per mm)."""
        self.items.flag(rows)
        self.c.zero_pages_sharing += len(rows)
        slot.mm.zero_pages_sharing += len(rows)

    def _clear_zero(self, slot: Slot, rows: IntArray) -> None:
        """Clear ZERO_PAGE_FLAG of flagged items and count them down."""
        self.items.unflag(rows)  # (the v6 flag-clearing helper: only ZERO_PAGE_FLAG goes)
        self.c.zero_pages_sharing -= len(rows)
        slot.mm.zero_pages_sharing -= len(rows)

    def _free_flagged(self, slot: Slot, rows: IntArray) -> None:
        """Freeing flagged items: ``break_ksm(vma, addr, unshare_zero_page=true)`` first.

        The VMA is looked up without checking VM_MERGEABLE, and any zero page
        there (KSM- or fault-placed) is unshared.
        """
        mm = slot.mm
        if not mm.exiting:
            for page in self.items.pages(rows).tolist():
                if mm.mapped(page):
                    self.mem.unshare_zero_page(mm, page)
        self._clear_zero(slot, rows)
