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

    def ksm_zero_pages(self, marked_ptes: int) -> int | None:
        """``ksm_zero_pages`` as this kernel shows it, given the marked PTEs."""
        return marked_ptes if self.counts_zero_pages else None

    def general_profit(
        self, pages_sharing: int, zero_pages: int, rmap_items: int, page_size: int
    ) -> int:
        """``general_profit_show()``: bytes saved minus the rmap_items' cost."""
        saved = pages_sharing + (zero_pages if self.profit_counts_zero_pages else 0)
        return saved * page_size - rmap_items * RMAP_ITEM_SIZE

    def process_profit(
        self, merging_pages: int, zero_pages: int, rmap_items: int, page_size: int
    ) -> int:
        """``ksm_process_profit()``: like general_profit, for one mm."""
        saved = merging_pages + (zero_pages if self.profit_counts_zero_pages else 0)
        return saved * page_size - rmap_items * RMAP_ITEM_SIZE


UNSHARE = Mode(
    "unshare", marks_zero_pages=True, counts_zero_pages=True, profit_counts_zero_pages=True
)
"""Linux 6.18: the zero-page tracking series merged in 6.6."""

LEGACY = Mode(
    "legacy", marks_zero_pages=False, counts_zero_pages=False, profit_counts_zero_pages=False
)
"""Linux 6.18 without the four 6.6 zero-page commits (behaves as 6.5 and earlier)."""

MODES: dict[str, Mode] = {m.name: m for m in (LEGACY, UNSHARE)}
