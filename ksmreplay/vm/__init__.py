"""The simulated virtual-memory system: processes, VMAs, page tables, frames.

Per-page state lives in numpy columns, never in one Python object per page:

* :class:`FrameTable` holds every anonymous page frame as columns;
* :class:`PageTable` maps a process's virtual pages in chunks of
  :data:`CHUNK` entries (one chunk is one page-table page, 2 MiB of address
  space with 4 KiB pages), created only where something was touched, so a
  mapping of 2**46 bytes costs nothing until its pages are used.

Every table that grows with the pages or processes simulated is charged to
the memory budget (``arrays.charge``) before it grows: a replay that would
take more memory than it may fails with a
:class:`~ksmreplay.errors.ResourceError` instead.

A page-table entry (``int64``) is a frame index (>= 0) or one of the
negative markers :data:`PTE_NONE`, :data:`PTE_ZERO` (the shared zero page,
mapped by a read fault: a clean PTE) and :data:`PTE_KSM_ZERO` (the shared zero
page, placed by ksmd).  Whether the kernel can tell the last two apart is a
property of the mode (``ksm/modes.py``); the simulator always can.

Nothing here knows about ksmd's trees: frames carry a ``node`` column that
``ksm/ksmd.py`` fills.  The VM tells ksmd of the one event it must see at once, a
KSM frame's last mapping going (``Memory.on_ksm_pages_freed``); the KSM zero
PTEs it drops are counted down in each process's ``MM.ksm_zero_ptes``.

Modules: :mod:`~ksmreplay.vm.frames` (frames), :mod:`~ksmreplay.vm.pagetable`
(page tables), :mod:`~ksmreplay.vm.memory` (processes and the fault paths),
:mod:`~ksmreplay.vm.content` (page contents as fingerprints).
"""

from ksmreplay.vm.frames import (
    NULL,
    FrameTable,
    FreeStack,
)
from ksmreplay.vm.memory import (
    EVENT_COUNTERS_ZERO,
    MM,
    Memory,
    Vma,
)
from ksmreplay.vm.pagetable import (
    BLOCK,
    BLOCK_SHIFT,
    CHUNK,
    FEW,
    PageTable,
    Places,
    gather,
    scatter,
)

__all__ = [
    "BLOCK",
    "BLOCK_SHIFT",
    "CHUNK",
    "EVENT_COUNTERS_ZERO",
    "FEW",
    "MM",
    "NULL",
    "FrameTable",
    "FreeStack",
    "Memory",
    "PageTable",
    "Places",
    "Vma",
    "gather",
    "scatter",
]
