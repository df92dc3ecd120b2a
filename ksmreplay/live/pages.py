"""What a process's page table maps, from ``/proc/<pid>/pagemap`` and ``/proc/kpageflags``.

Each page of a range is classified as not present, an ordinary anonymous
frame, a KSM frame, or the shared zero page.  Page tables cannot tell a zero
PTE that KSM placed (dirty) from one a read fault placed (clean): the driver
decides that from the trace's own history (see ``driver.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ksmreplay import procfs
from ksmreplay.live.machine import LOCAL, Machine
from ksmreplay.procfs import KPF_KSM, KPF_THP, PM_PFN_MASK, PM_PRESENT, PM_SWAPPED

NONE = 0
ANON = 1
KSM = 2
ZERO = 3


def read_pagemap(
    pid: int, addr: int, npages: int, page_size: int, machine: Machine = LOCAL
) -> list[int]:
    """Raw pagemap entries of ``npages`` pages from ``addr`` in process ``pid``."""
    data = machine.pread(f"/proc/{pid}/pagemap", (addr // page_size) * 8, npages * 8)
    if len(data) != npages * 8:
        raise OSError(f"short pagemap read for pid {pid}")
    return list(struct.unpack(f"<{npages}Q", data))


def read_kpageflags(pfns: Iterable[int], machine: Machine = LOCAL) -> dict[int, int]:
    """Page flags of each frame number of ``machine`` (``procfs.read_kpageflags``)."""
    return procfs.read_kpageflags(
        pfns, lambda offset, length: machine.pread("/proc/kpageflags", offset, length)
    )


class PageView:
    """Classified pages of one range: ``kinds[i]`` and ``pfns[i]`` for page ``i``."""

    __slots__ = ("kinds", "pfns", "thp")

    def __init__(self, kinds: list[int], pfns: list[int], thp: bool) -> None:
        self.kinds = kinds
        self.pfns = pfns
        self.thp = thp


def classify(entries: list[int], zpfn: int, machine: Machine = LOCAL) -> PageView:
    """Classify raw pagemap entries (one kpageflags lookup for all frames)."""
    pfns = [e & PM_PFN_MASK if e & PM_PRESENT else 0 for e in entries]
    flags = read_kpageflags((p for p in pfns if p and p != zpfn), machine)
    kinds: list[int] = []
    thp = False
    for e, pfn in zip(entries, pfns, strict=True):
        if not e & PM_PRESENT:
            if e & PM_SWAPPED:
                raise OSError("a replayed page was swapped out; live replay needs no swap pressure")
            kinds.append(NONE)
        elif pfn == zpfn:
            kinds.append(ZERO)
        else:
            f = flags.get(pfn, 0)
            thp = thp or bool(f & KPF_THP)
            kinds.append(KSM if f & KPF_KSM else ANON)
    return PageView(kinds, pfns, thp)
