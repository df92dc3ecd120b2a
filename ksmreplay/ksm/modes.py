"""What each simulated kernel does differently: one object per mode.

The engine asks the mode; it never tests a mode's name.  Every behaviour
that differs between modes is one attribute or method here, with the kernel
commit that introduced it.
"""

from __future__ import annotations

from dataclasses import dataclass

RMAP_ITEM_SIZE = 64
"""``sizeof(struct ksm_rmap_item)`` on 64-bit kernels."""


@dataclass(frozen=True, slots=True)
class Mode:
    """One kernel design.

    :ivar name: the report's ``mode``.
    :ivar marks_zero_pages: KSM-placed zero PTEs are told apart from fault-placed
        ones.  Since Linux kernel commit 79271476b336 ("ksm: support unsharing
        KSM-placed zero pages") (in v6.6), KSM marks the PTE it points at the
        zero page (dirty bit), and unmerging (MADV_UNMERGEABLE, prctl
        merge_any off, run=2) replaces such PTEs by private zeroed pages;
        before it, they were clean zero PTEs that unmerging left alone.
    :ivar counts_zero_pages: ``ksm_zero_pages`` exists.  Since Linux kernel
        commits e2942062e01d ("ksm: count all zero pages placed by KSM") and
        6080d19f0704 ("ksm: add ksm zero pages for each process") (in v6.6),
        ``/sys/kernel/mm/ksm/ksm_zero_pages`` and ksm_stat's ``ksm_zero_pages``
        count the marked PTEs.
    :ivar profit_counts_zero_pages: since Linux kernel commit 1a8e84305783
        ("ksm: consider KSM-placed zeropages when calculating KSM profit")
        (in v6.6), ``general_profit`` and ``ksm_process_profit`` add the zero
        pages KSM placed.
    """

    name: str
    marks_zero_pages: bool
    counts_zero_pages: bool
    profit_counts_zero_pages: bool
    flags_zero_page_items: bool = False
    """The item of a page merged with the zero page is kept, flagged
    ZERO_PAGE_FLAG and counted in ``zero_pages_sharing`` (the v6 design): see
    :data:`V6`."""
    native_scan: bool = True
    """The native core knows this design's scan; else the scalar ksmd walks
    every page (``ksm.Ksmd._walk_window``): where a new design is prototyped."""

    def ksm_zero_pages(self, marked_ptes: int) -> int | None:
        """``ksm_zero_pages`` as this kernel shows it, given the marked PTEs."""
        return marked_ptes if self.counts_zero_pages else None

    def zero_pages_sharing(self, flagged: int) -> dict[str, int]:
        """The v6 design's global counter, as extra ``ksm`` keys (none in other modes)."""
        return {"zero_pages_sharing": flagged} if self.flags_zero_page_items else {}

    def process_zero_pages_sharing(self, flagged: int) -> dict[str, int]:
        """The v6 design's per-mm counter, as extra process keys (none in other modes)."""
        return {"ksm_zero_pages_sharing": flagged} if self.flags_zero_page_items else {}

    def saved_zero_pages(self, marked_ptes: int, flagged: int) -> int:
        """Zero pages a profit figure counts as saved."""
        if self.flags_zero_page_items:
            return flagged
        return marked_ptes if self.profit_counts_zero_pages else 0

    def general_profit(
        self, pages_sharing: int, zero_pages: int, rmap_items: int, page_size: int
    ) -> int:
        """``general_profit_show()``: bytes saved minus the rmap_items' cost.

        ``zero_pages`` is :meth:`saved_zero_pages`.
        """
        saved = pages_sharing + zero_pages
        return saved * page_size - rmap_items * RMAP_ITEM_SIZE

    def process_profit(
        self, merging_pages: int, zero_pages: int, rmap_items: int, page_size: int
    ) -> int:
        """``ksm_process_profit()``: like general_profit, for one mm."""
        saved = merging_pages + zero_pages
        return saved * page_size - rmap_items * RMAP_ITEM_SIZE


UNSHARE = Mode(
    "unshare", marks_zero_pages=True, counts_zero_pages=True, profit_counts_zero_pages=True
)
"""Linux 6.18: the zero-page tracking series merged in 6.6."""

LEGACY = Mode(
    "legacy", marks_zero_pages=False, counts_zero_pages=False, profit_counts_zero_pages=False
)
"""Linux 6.18 without the four 6.6 zero-page commits (behaves as 6.5 and earlier)."""

V6 = Mode(
    "v6",
    marks_zero_pages=False,
    counts_zero_pages=False,
    profit_counts_zero_pages=True,
    flags_zero_page_items=True,
)
"""The design first proposed for zero-page tracking: series "ksm: support
tracking KSM-placed zero-pages" v6 (posted 2023-02-10, dropped from the
mm-unstable tree 2023-03-28), patches 2/6 "ksm: support unsharing zero pages
placed by KSM", 3/6 "ksm: count all zero pages placed by KSM" and 4/6 "ksm:
count zero pages for each process", with the review's two small fixes (the
flag-clearing helper clears only ZERO_PAGE_FLAG; the page-walk results are an
enum, ``ksm.WalkResult``).  KSM_MODEL.md section 14.

* A zero-page merge keeps the item, flagged ZERO_PAGE_FLAG (0x400), and counts
  it: ``zero_pages_sharing`` and the mm's ``ksm_zero_pages_sharing`` +1.
* A pass keeps a flagged item alive at an address mapping the zero page, KSM-
  or fault-placed alike (the design could not tell them apart).
* The flag is cleared, and both counters fall, when the item is next visited
  with a normal page at its address, or when it is freed.  Freeing a flagged
  item first unshares a zero page at its address (``break_ksm()`` with
  ``unshare_zero_page``), looking the VMA up without checking VM_MERGEABLE.
* Zero PTEs are not marked: zap, write and MADV_UNMERGEABLE leave the counters
  alone; ksmd unshares and counts down when it frees the items; run=2 at once.
* Fork: the child's mm inherits the per-mm counter (the mm is copied) but no
  items; nothing is added globally.

Profits: the series defined none (general_profit came later); its
documentation patch 5/6 says ``pages_sharing + zero_pages_sharing`` are the
pages saved, so ``general_profit`` is ``(pages_sharing + zero_pages_sharing) *
page_size - rmap_items * 64`` and ``ksm_process_profit`` is ``(merging_pages
+ ksm_zero_pages_sharing) * page_size - rmap_items * 64``.
"""


MODES: dict[str, Mode] = {m.name: m for m in (LEGACY, V6, UNSHARE)}
