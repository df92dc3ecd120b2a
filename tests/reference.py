"""A slow, obviously correct reference model of the whole ksmreplay simulator.

This is the model the fast engine is tested against: the same written
behaviour (``KSM_MODEL.md``, with the modelling choices below), implemented a second
time, independently, with plain dicts, lists and small classes.  Every step is
named after the kernel function it models (``mm/ksm.c`` unless stated), so a
counter can be checked by reading this file next to the kernel source.
Readability wins over speed everywhere.

Modelling choices (where the written model leaves room):

* **VMAs** are real address ranges (page numbers) with two properties that
  matter to KSM: ``VM_MERGEABLE`` and whether the VMA has an ``anon_vma``
  (it gets one at its first write fault, keeps it when split, and a fork child
  copies it).  Partial madvise/munmap split VMAs; adjacent VMAs are never
  merged back (VMA merging changes nothing KSM can observe).
* **Page tables** are sparse: ``Mm.ptes`` maps a page number to the PTE's
  target, either a :class:`Frame` (a private anonymous page or a KSM page) or
  one of the two zero-page markers :data:`ZERO_BY_FAULT` /
  :data:`ZERO_BY_KSM`.  ``Mm.pte_pages`` keeps the populated page numbers
  sorted so that ksmd's page walk and range zaps never visit holes.
* **Trees** are dictionaries (KSM_MODEL.md, "Dictionaries instead of
  red-black trees"): the stable tree is ``content -> StableNode |
  StableChain``, the unstable tree ``content -> RmapItem``.  Contents are
  fingerprints; the checksum of a page is its fingerprint and "no previous
  checksum" is ``None``.
* **Time**: a ksmd batch runs atomically at its wake-up time; chain pruning
  compares whole jiffies (``now_ns // JIFFY_NS``) like the kernel's
  ``time_before(jiffies, ...)``.
* **legacy** mode is 6.18 without the four 6.6 zero-page commits: no
  ``ksm_zero_pages`` counters, profits without zero pages, unmerging leaves
  KSM-placed zero PTEs alone.  The ground-truth PTE marker
  :data:`ZERO_BY_KSM` is kept in both modes (``memory.zero_page_maps_by_ksm``
  and ``events.cow_breaks_zero`` count in every mode); a fork child's copy of
  such a PTE is still one.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ksmreplay.errors import InvariantError
from ksmreplay.ksm.kernels import KERNELS, Kernel
from ksmreplay.ksm.knobs import DEFAULTS, KNOB_BY_NAME, KNOBS, KnobValue
from ksmreplay.report import KSM_COUNTERS, PROCESS_COUNTERS, KsmdWork, Refusal, Snap
from ksmreplay.timing import (
    JIFFY_NS,
    Work,
    batch_cost_ns,
    cached_pages,
    jiffies_ns,
    next_wake_ns,
)
from ksmreplay.trace import events as ev
from ksmreplay.vm.content import ZERO, PageStore, literal_write

MODES = ("legacy", "unshare")

RMAP_ITEM_SIZE = 64
"""``sizeof(struct ksm_rmap_item)`` on 64-bit, bytes."""

KSM_ADVISOR_MIN_CPU = 10
EWMA_WEIGHT = 30
UINT = 2**32
ULONG = 2**64

ZERO_BY_FAULT = "fault zero PTE"
"""PTE of the shared zero page installed by a read fault (clean)."""

ZERO_BY_KSM = "KSM zero PTE"
"""PTE KSM pointed at the shared zero page (dirty marker, ``is_ksm_zero_pte()``)."""

# rmap item states (the STABLE_FLAG / UNSTABLE_FLAG bits of rmap_item->address)
NONE = "volatile"
UNSTABLE = "unstable"
STABLE = "stable"


# --------------------------------------------------------------------------
# VM objects
# --------------------------------------------------------------------------


class Frame:
    """One physical anonymous page (an order-0 folio).

    ``mapcount`` is the number of PTEs mapping it; at 0 the page is freed.
    ``ksm`` is ``folio_test_ksm()``; ``node`` is ``folio_stable_node()``;
    ``origin`` the (pid, page) it was when it became a KSM page (how the
    tracepoints name its pfn).
    """

    __slots__ = ("content", "fid", "ksm", "mapcount", "node", "origin")

    def __init__(self, fid: int, content: int) -> None:
        self.fid = fid
        self.content = content
        self.mapcount = 0
        self.ksm = False
        self.node: StableNode | None = None
        self.origin: tuple[int, int] | None = None

    def __repr__(self) -> str:
        kind = "ksm" if self.ksm else "anon"
        return f"Frame({self.fid}, {kind}, content={self.content:#x}, mapcount={self.mapcount})"


Pte = Frame | str


class Vma:
    """One mapping: pages ``[start, end)`` (page numbers)."""

    __slots__ = ("anon_vma", "end", "mergeable", "start")

    def __init__(self, start: int, end: int, mergeable: bool, anon_vma: bool) -> None:
        self.start = start
        self.end = end
        self.mergeable = mergeable  # VM_MERGEABLE
        self.anon_vma = anon_vma  # vma->anon_vma != NULL

    def __repr__(self) -> str:
        return f"Vma({self.start:#x}-{self.end:#x}, mergeable={self.mergeable})"


class Mm:
    """One process's ``mm_struct`` plus its ksm_mm_slot (``items`` = the slot's rmap_list)."""

    __slots__ = (
        "exiting",
        "items",
        "ksm_merging_pages",
        "ksm_rmap_items",
        "ksm_zero_pages",
        "merge_any",
        "pid",
        "pte_pages",
        "ptes",
        "registered",
        "vmas",
    )

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.vmas: list[Vma] = []  # sorted by start
        self.ptes: dict[int, Pte] = {}  # page number -> PTE target
        self.pte_pages: list[int] = []  # sorted keys of ptes
        self.items: list[RmapItem] = []  # the slot's rmap_list, sorted by address
        self.merge_any = False  # MMF_VM_MERGE_ANY
        self.registered = False  # MMF_VM_MERGEABLE (has a slot on ksmd's list)
        self.exiting = False  # ksm_test_exit(): no users left
        self.ksm_rmap_items = 0
        self.ksm_merging_pages = 0
        self.ksm_zero_pages = 0

    def __repr__(self) -> str:
        return f"Mm(pid={self.pid}{', exiting' if self.exiting else ''})"


# --------------------------------------------------------------------------
# KSM objects
# --------------------------------------------------------------------------


class RmapItem:
    """``struct ksm_rmap_item``: ksmd's record of one (mm, virtual page)."""

    __slots__ = (
        "address",
        "age",
        "mm",
        "node",
        "oldchecksum",
        "remaining_skips",
        "state",
        "unstable_key",
        "unstable_seqnr",
    )

    def __init__(self, mm: Mm, address: int) -> None:
        self.mm = mm
        self.address = address  # page number
        self.state = NONE
        self.oldchecksum: int | None = None  # None: never checksummed (kernel: 0)
        self.age = 0
        self.remaining_skips = 0
        self.node: StableNode | None = None  # rmap_item->head, when STABLE
        self.unstable_seqnr = 0  # low bits of address, when UNSTABLE
        self.unstable_key = 0  # content it was inserted under, when UNSTABLE

    def __repr__(self) -> str:
        return f"RmapItem(pid={self.mm.pid}, page={self.address:#x}, {self.state})"


class StableNode:
    """``struct ksm_stable_node`` for one KSM page: a plain node or a dup of a chain."""

    __slots__ = ("chain", "content", "items", "kframe")

    def __init__(self, kframe: Frame) -> None:
        self.kframe = kframe  # the KSM page (stable_node->kpfn)
        self.content = kframe.content
        self.items: list[RmapItem] = []  # stable_node->hlist, newest first
        self.chain: StableChain | None = None  # set while this node is a dup

    @property
    def rmap_hlist_len(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        kind = "dup" if self.chain is not None else "node"
        return f"StableNode({kind}, content={self.content:#x}, len={len(self.items)})"


class StableChain:
    """A stable_node chain: several dups (KSM pages) of one content."""

    __slots__ = ("content", "dups", "prune_jiffies")

    def __init__(self, content: int, prune_jiffies: int) -> None:
        self.content = content
        self.dups: list[StableNode] = []  # stable_node->hlist of dups, head first
        self.prune_jiffies = prune_jiffies  # chain_prune_time

    def __repr__(self) -> str:
        return f"StableChain(content={self.content:#x}, dups={len(self.dups)})"


# --------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------


class ReferenceSimulator:
    """The reference engine for one trace in one mode (``legacy`` or ``unshare``)."""

    def __init__(
        self,
        mode: str,
        page_size: int,
        settings: Mapping[str, KnobValue] | None = None,
        kernel: str = "6.18",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"reference model has no mode {mode!r}")
        self.mode = mode
        self.page_size = page_size
        # What the version has (the table of ksmreplay.ksm.kernels; the rules are here).
        self.kernel: Kernel = KERNELS[kernel]
        if mode not in self.kernel.modes:
            raise ValueError(f"Linux {kernel} has no mode {mode!r}")
        self._missing = self.kernel.missing_knobs
        # Since Linux kernel commits 79271476b336, e2942062e01d, 6080d19f0704 and
        # 1a8e84305783 (in v6.6) KSM marks the zero pages it places (dirty PTE),
        # counts them in ksm_zero_pages and unshares them when unmerging.
        self.tracks_zero_pages = mode == "unshare"

        # Overrides are the boot-time values of the knobs (no store side effects).
        self._settings: dict[str, KnobValue] = dict(DEFAULTS)
        for name, value in (settings or {}).items():
            if name not in KNOB_BY_NAME or name in self._missing:
                raise ValueError(f"unknown ksm setting {name!r}")
            self._settings[name] = value
        if "smart_scan" in self._missing:
            self._settings["smart_scan"] = 0  # no smart_scan: every page visited
        self._refused: list[Refusal] = []
        self._store = PageStore(page_size)

        # VM
        self._procs: dict[int, Mm] = {}  # live processes by pid
        self._frames: dict[int, Frame] = {}  # live frames by id
        self._next_fid = 0

        # ksmd's mm list and cursor (ksm_mm_head, struct ksm_scan)
        self._mm_list: list[Mm] = []
        self._scan_mm: Mm | None = None  # None = the list head
        self._scan_address = 0  # ksm_scan.address, page number
        self._scan_pos = 0  # ksm_scan.rmap_list, as an index into _scan_mm.items
        self._seqnr = 0  # ksm_scan.seqnr = full_scans

        # trees
        self._stable: dict[int, StableNode | StableChain] = {}
        self._unstable: dict[int, RmapItem] = {}

        # sysfs counters
        self._pages_shared = 0
        self._pages_sharing = 0
        self._pages_unshared = 0
        self._rmap_items = 0  # ksm_rmap_items
        self._pages_scanned = 0
        self._pages_skipped = 0
        self._chains = 0  # ksm_stable_node_chains
        self._dups = 0  # ksm_stable_node_dups
        self._ksm_zero_pages = 0

        # ground-truth event counters
        self._events = {
            "merges": 0,
            "cow_breaks_ksm": 0,
            "cow_breaks_zero": 0,
            "unshared_by_unmerge": 0,
            "zero_pages_unshared": 0,
            "zero_pages_merged": 0,
        }

        # time
        self._now = 0  # ns; the time ksmd is running at
        self._next_wake: int | None = None  # None: ksmd idle (waiting on ksm_thread_wait)
        self._ksmd_cpu_ns = 0  # task_sched_runtime(ksmd), whole batches so far
        self._batch_visits = 0  # visits of the batch running now
        self._wakeups = 0  # batches run by wake_up (not in settles)
        self._settle_cpu_ns = 0  # of _ksmd_cpu_ns, spent in settles
        self._work: dict[str, int] | None = None  # the running batch's Work, kind by kind
        self._batch_ns = 0  # the last batch's cost
        self._pass_searches = 0  # unstable tree searches of the pass so far
        self._pass_shared = 0  # pages_shared when the pass started
        self._pass_pages = 0  # pages of the mergeable VMAs when the pass started

        # advisor_ctx
        self._adv_start_scan = 0
        self._adv_scan_time = 0
        self._adv_change = 0
        self._adv_cpu_time = 0

        # the KSM tracepoints (include/trace/events/ksm.h), when asked for
        self._sink: Callable[[dict[str, Any]], None] | None = None
        self._trace_t = 0  # the time of the event or wake-up running

    # ------------------------------------------------------------------
    # Simulator protocol
    # ------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, KnobValue | None]:
        return {k.name: None if k.name in self._missing else self._settings[k.name] for k in KNOBS}

    @property
    def refused(self) -> list[Refusal]:
        return list(self._refused)

    def trace(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """Hand every KSM tracepoint event to ``sink`` from now on."""
        self._sink = sink

    def _emit(self, name: str, **fields: Any) -> None:
        """``trace_<name>()``: the event, with pages named as ``ksmreplay.tracepoints`` says."""
        if self._sink is not None:
            head = {"t": self._trace_t, "mode": self.mode, "kernel": self.kernel.version}
            self._sink({**head, "event": name, **fields})

    def _name(self, frame: Frame | None) -> dict[str, int] | None:
        """A KSM page's name: the page it was made of."""
        if frame is None or frame.origin is None:
            return None
        pid, page = frame.origin
        return {"pid": pid, "addr": page * self.page_size}

    def apply(self, event: ev.Event) -> None:
        """Run ksmd's wake-ups due strictly before ``event.t``, then apply ``event``."""
        while self._next_wake is not None and self._next_wake < event.t:
            self.wake_up(self._next_wake)
        self._trace_t = event.t
        if isinstance(event, ev.Alloc):
            self._do_alloc(event)
        elif isinstance(event, ev.Free):
            self._do_free(event)
        elif isinstance(event, ev.Write):
            self._do_write(event)
        elif isinstance(event, ev.Read):
            self._do_read(event)
        elif isinstance(event, ev.Madvise):
            self._do_madvise(event)
        elif isinstance(event, ev.Prctl):
            self._do_prctl(event)
        elif isinstance(event, ev.Fork):
            self._do_fork(event)
        elif isinstance(event, ev.Exit):
            self._do_exit(event)
        elif isinstance(event, ev.Ksm):
            self._do_ksm(event)
        elif isinstance(event, ev.Settle):
            self._do_settle(event)
        elif isinstance(event, ev.Snapshot):
            pass  # the driver calls snapshot()
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown event {event!r}")
        # An idle ksmd that can run now is woken: it runs right after this instant.
        if self._next_wake is None and self._ksmd_should_run():
            self._next_wake = event.t

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        zero: int | None = self._ksm_zero_pages if self.tracks_zero_pages else None
        ksm: dict[str, Any] = {
            "pages_shared": self._pages_shared,
            "pages_sharing": self._pages_sharing,
            "pages_unshared": self._pages_unshared,
            "pages_volatile": self._pages_volatile(),
            "pages_scanned": self._pages_scanned if self.kernel.pages_scanned else None,
            "pages_skipped": self._pages_skipped if self.kernel.smart_scan else None,
            "full_scans": self._seqnr,
            "stable_node_chains": self._chains,
            "stable_node_dups": self._dups,
            "ksm_zero_pages": zero,
            "general_profit": self._general_profit() if self.kernel.profits else None,
        }
        assert tuple(ksm) == KSM_COUNTERS
        processes: list[dict[str, Any]] = []
        for pid in sorted(self._procs):
            mm = self._procs[pid]
            entry: dict[str, Any] = {"pid": pid}
            entry.update(self._ksm_stat(mm))
            entry["rss_anon_pages"] = sum(isinstance(p, Frame) for p in mm.ptes.values())
            assert tuple(entry)[1:] == PROCESS_COUNTERS
            processes.append(entry)
        memory = {
            "anon_frames": len(self._frames),
            "ksm_frames": sum(f.ksm for f in self._frames.values()),
            "zero_page_maps_by_ksm": sum(
                pte == ZERO_BY_KSM for mm in self._procs.values() for pte in mm.ptes.values()
            ),
            "zero_page_maps_by_fault": sum(
                pte == ZERO_BY_FAULT for mm in self._procs.values() for pte in mm.ptes.values()
            ),
        }
        return {
            "label": label,
            "t": t,
            "event": index,
            "summary": self._summary(),
            "ksm": ksm,
            "processes": processes,
            "memory": memory,
            "events": dict(self._events),
        }

    def _summary(self) -> dict[str, Any]:
        """REPORT_FORMAT.md ``summary``, page by page from the page tables."""
        without = 0
        outside = 0
        contents: set[int] = set()
        for mm in self._procs.values():
            for page, pte in mm.ptes.items():
                if isinstance(pte, Frame):
                    content = pte.content
                elif pte == ZERO_BY_KSM:
                    content = ZERO
                else:
                    continue  # a zero page mapped by a read fault is not resident
                without += 1
                vma = self._find_vma(mm, page)
                if vma is not None and vma.mergeable:
                    contents.add(content)
                else:
                    outside += 1
        ideal = outside + len(contents - {ZERO})
        if ZERO in contents and not self._knob("use_zero_pages"):
            ideal += 1
        with_ksm = len(self._frames)
        saved = without - with_ksm
        ideal_saved = without - ideal
        return {
            "resident_without_ksm": without,
            "resident_with_ksm": with_ksm,
            "saved_pages": saved,
            "saved_bytes": saved * self.page_size,
            "saved_percent": round(saved * 100 / without, 2) if without else 0.0,
            "ideal_frames": ideal,
            "ideal_saved_pages": ideal_saved,
            "percent_of_ideal": round(saved * 100 / ideal_saved, 2) if ideal_saved else 100.0,
        }

    @property
    def ksmd_work(self) -> KsmdWork:
        """ksmd's visits, wake-ups in trace time and CPU time in and out of settles."""
        return {
            "visits": self._pages_scanned,
            "wakeups": self._wakeups,
            "cpu_ns": self._ksmd_cpu_ns - self._settle_cpu_ns,
            "settle_cpu_ns": self._settle_cpu_ns,
        }

    # ------------------------------------------------------------------
    # Derived counters (sysfs *_show(), proc_pid_ksm_stat())
    # ------------------------------------------------------------------

    def _pages_volatile(self) -> int:
        """``pages_volatile_show()``: rmap_items - shared - sharing - unshared, at least 0."""
        volatile = self._rmap_items - self._pages_shared - self._pages_sharing
        return max(0, volatile - self._pages_unshared)

    def _general_profit(self) -> int:
        """``general_profit_show()``; legacy (6.4/6.5) leaves the zero pages out."""
        saved = self._pages_sharing
        if self.tracks_zero_pages:
            saved += self._ksm_zero_pages
        return saved * self.page_size - self._rmap_items * RMAP_ITEM_SIZE

    def _ksm_stat(self, mm: Mm) -> dict[str, Any]:
        """``proc_pid_ksm_stat()`` with ``ksm_process_profit()``."""
        saved = mm.ksm_merging_pages
        if self.tracks_zero_pages:
            saved += mm.ksm_zero_pages
        return {
            "ksm_rmap_items": mm.ksm_rmap_items,
            "ksm_zero_pages": mm.ksm_zero_pages if self.tracks_zero_pages else None,
            "ksm_merging_pages": mm.ksm_merging_pages,
            "ksm_process_profit": saved * self.page_size - mm.ksm_rmap_items * RMAP_ITEM_SIZE
            if self.kernel.profits
            else None,
            "ksm_merge_any": mm.merge_any if self.kernel.merge_flags else None,
            # ksm_process_mergeable()
            "ksm_mergeable": any(v.mergeable for v in mm.vmas) if self.kernel.merge_flags else None,
        }

    def _knob(self, name: str) -> int:
        value = self._settings[name]
        assert isinstance(value, int)
        return value

    # ------------------------------------------------------------------
    # Frames and page tables (mm/memory.c)
    # ------------------------------------------------------------------

    def _new_frame(self, content: int) -> Frame:
        frame = Frame(self._next_fid, content)
        self._next_fid += 1
        self._frames[frame.fid] = frame
        return frame

    def _put_frame(self, frame: Frame) -> None:
        """One PTE stopped mapping ``frame``; the page is freed with its last mapping."""
        frame.mapcount -= 1
        if frame.mapcount == 0:
            # A KSM page dies here; its stable node is stale until noticed.
            del self._frames[frame.fid]

    def _set_pte(self, mm: Mm, page: int, pte: Pte) -> None:
        """Install ``pte`` at ``page``, dropping whatever was mapped there."""
        old = mm.ptes.get(page)
        if old is None:
            bisect.insort(mm.pte_pages, page)
        mm.ptes[page] = pte
        if isinstance(pte, Frame):
            pte.mapcount += 1
        if isinstance(old, Frame):
            self._put_frame(old)

    def _clear_pte(self, mm: Mm, page: int) -> Pte:
        old = mm.ptes.pop(page)
        del mm.pte_pages[bisect.bisect_left(mm.pte_pages, page)]
        if isinstance(old, Frame):
            self._put_frame(old)
        return old

    def _pages_in(self, mm: Mm, start: int, end: int) -> list[int]:
        """Populated page numbers in ``[start, end)``, ascending (a copy)."""
        lo = bisect.bisect_left(mm.pte_pages, start)
        hi = bisect.bisect_left(mm.pte_pages, end)
        return mm.pte_pages[lo:hi]

    def _ksm_might_unmap_zero_page(self, mm: Mm, pte: Pte) -> None:
        """``ksm_might_unmap_zero_page()``: a KSM zero PTE goes away (6.6+ only)."""
        if pte == ZERO_BY_KSM and self.tracks_zero_pages:
            mm.ksm_zero_pages -= 1
            self._ksm_zero_pages -= 1

    def _zap_range(self, mm: Mm, start: int, end: int) -> None:
        """``zap_present_ptes()`` over ``[start, end)`` (MADV_DONTNEED, munmap, exit)."""
        for page in self._pages_in(mm, start, end):
            old = self._clear_pte(mm, page)
            self._ksm_might_unmap_zero_page(mm, old)

    def _write_fault(self, mm: Mm, page: int, content: int) -> None:
        """A store of ``content`` into ``page`` (``do_anonymous_page()`` / ``do_wp_page()``)."""
        vma = self._find_vma(mm, page)
        assert vma is not None, f"write outside any mapping at page {page:#x}"
        vma.anon_vma = True  # anon_vma_prepare() / vmf_anon_prepare()
        pte = mm.ptes.get(page)
        if pte is None:
            # do_anonymous_page(), write fault: a fresh private page.
            self._set_pte(mm, page, self._new_frame(content))
        elif isinstance(pte, str):
            # do_wp_page() on the zero page -> wp_page_copy(): a private copy.
            if pte == ZERO_BY_KSM:
                self._events["cow_breaks_zero"] += 1
                self._ksm_might_unmap_zero_page(mm, pte)
            self._set_pte(mm, page, self._new_frame(content))
        elif pte.ksm or pte.mapcount > 1:
            # do_wp_page(): wp_can_reuse_anon_folio() refuses KSM folios and
            # folios mapped more than once -> wp_page_copy().
            if pte.ksm:
                self._events["cow_breaks_ksm"] += 1
            self._set_pte(mm, page, self._new_frame(content))
        else:
            # Exclusive private page: reused, written in place.
            pte.content = content

    # ------------------------------------------------------------------
    # VMAs
    # ------------------------------------------------------------------

    @staticmethod
    def _find_vma(mm: Mm, page: int) -> Vma | None:
        for vma in mm.vmas:
            if vma.start <= page < vma.end:
                return vma
        return None

    @staticmethod
    def _split_at(mm: Mm, page: int) -> None:
        """Split the VMA containing ``page`` (strictly inside it) at ``page``."""
        for i, vma in enumerate(mm.vmas):
            if vma.start < page < vma.end:
                tail = Vma(page, vma.end, vma.mergeable, vma.anon_vma)
                vma.end = page
                mm.vmas.insert(i + 1, tail)
                return

    def _vmas_in_range(self, mm: Mm, start: int, end: int) -> list[Vma]:
        """The VMAs covering ``[start, end)``, split so each lies inside it."""
        self._split_at(mm, start)
        self._split_at(mm, end)
        return [v for v in mm.vmas if start <= v.start and v.end <= end]

    def _page_range(self, addr: int, length: int) -> tuple[int, int]:
        return addr // self.page_size, (addr + length) // self.page_size

    def _process(self, pid: int, create: bool = False) -> Mm:
        mm = self._procs.get(pid)
        if mm is None:
            if not create:
                raise ValueError(f"pid {pid} does not exist")
            mm = self._procs[pid] = Mm(pid)
        return mm

    # ------------------------------------------------------------------
    # Trace events
    # ------------------------------------------------------------------

    def _do_alloc(self, e: ev.Alloc) -> None:
        """mmap(MAP_PRIVATE|MAP_ANONYMOUS): a new VMA, flags from ``ksm_vma_flags()``."""
        mm = self._process(e.pid, create=True)
        start, end = self._page_range(e.addr, e.len)
        assert all(v.end <= start or end <= v.start for v in mm.vmas), "overlapping alloc"
        vma = Vma(start, end, mergeable=mm.merge_any, anon_vma=False)
        mm.vmas.append(vma)
        mm.vmas.sort(key=lambda v: v.start)
        # ksm_vma_flags() (6.18.y, "mm/ksm: fix exec/fork inheritance support for
        # prctl"): a merge_any mm that ksmd dropped is registered again.
        if mm.merge_any and not mm.registered:
            self._ksm_enter(mm)

    def _do_free(self, e: ev.Free) -> None:
        """munmap(): zap the range and remove the VMAs (or parts) in it."""
        mm = self._process(e.pid)
        start, end = self._page_range(e.addr, e.len)
        for vma in self._vmas_in_range(mm, start, end):
            self._zap_range(mm, vma.start, vma.end)
            mm.vmas.remove(vma)

    def _do_write(self, e: ev.Write) -> None:
        mm = self._process(e.pid)
        content = e.content
        if isinstance(content, (bytes, bytearray)):

            def current(page_no: int) -> int:
                pte = mm.ptes.get(page_no)
                return pte.content if isinstance(pte, Frame) else ZERO

            first, fps = literal_write(e.addr, bytes(content), self.page_size, current, self._store)
            for i, fp in enumerate(fps):
                self._write_fault(mm, first + i, fp)
            return
        start, end = self._page_range(e.addr, e.len)
        if isinstance(content, int):
            for page in range(start, end):
                self._write_fault(mm, page, content)
        else:
            fps_list = [int(x) for x in content]
            assert len(fps_list) == end - start
            for page, fp in zip(range(start, end), fps_list, strict=True):
                self._write_fault(mm, page, fp)

    def _do_read(self, e: ev.Read) -> None:
        """Loads: an unpopulated page is read-faulted to the zero page (no anon_vma)."""
        mm = self._process(e.pid)
        first = e.addr // self.page_size
        last = (e.addr + e.len - 1) // self.page_size
        for page in range(first, last + 1):
            assert self._find_vma(mm, page) is not None, "read outside any mapping"
            if page not in mm.ptes:
                self._set_pte(mm, page, ZERO_BY_FAULT)

    def _do_madvise(self, e: ev.Madvise) -> None:
        mm = self._process(e.pid)
        start, end = self._page_range(e.addr, e.len)
        if e.advice == "dontneed":
            # madvise_dontneed_single_vma(): zap, VMAs unchanged.
            self._zap_range(mm, start, end)
            return
        for vma in self._vmas_in_range(mm, start, end):
            if e.advice == "mergeable":
                self._ksm_madvise_mergeable(mm, vma)
            else:
                self._ksm_madvise_unmergeable(mm, vma)

    def _ksm_madvise_mergeable(self, mm: Mm, vma: Vma) -> None:
        """``ksm_madvise(MADV_MERGEABLE)`` on one VMA."""
        if vma.mergeable:
            return
        if not mm.registered:
            self._ksm_enter(mm)
        vma.mergeable = True

    def _ksm_madvise_unmergeable(self, mm: Mm, vma: Vma) -> None:
        """``ksm_madvise(MADV_UNMERGEABLE)`` / ``__ksm_del_vma()`` on one VMA."""
        if not vma.mergeable:
            return
        if vma.anon_vma:
            self._unmerge_ksm_pages(mm, vma.start, vma.end)
        vma.mergeable = False

    def _do_prctl(self, e: ev.Prctl) -> None:
        mm = self._process(e.pid, create=True)
        if not self.kernel.merge_any:
            # No PR_SET_MEMORY_MERGE (before 6.4): prctl() fails with EINVAL.
            self._refused.append(
                {
                    "event": e.index,
                    "t": e.t,
                    "knob": "merge_any",
                    "value": e.value,
                    "error": "EINVAL",
                }
            )
            return
        if e.value:
            self._ksm_enable_merge_any(mm)
        else:
            self._ksm_disable_merge_any(mm)

    def _ksm_enable_merge_any(self, mm: Mm) -> None:
        """``ksm_enable_merge_any()``: register, set the flag, ``ksm_add_vmas()``."""
        if mm.merge_any:
            return
        if not mm.registered:
            self._ksm_enter(mm)
        mm.merge_any = True
        for vma in mm.vmas:  # __ksm_add_vma(): every VMA of the trace is compatible
            vma.mergeable = True

    def _ksm_disable_merge_any(self, mm: Mm) -> None:
        """``ksm_disable_merge_any()``: ``ksm_del_vmas()`` then clear the flag."""
        if not mm.merge_any:
            return
        for vma in mm.vmas:
            self._ksm_madvise_unmergeable(mm, vma)  # __ksm_del_vma()
        mm.merge_any = False

    def _do_fork(self, e: ev.Fork) -> None:
        """``dup_mm()`` → ``dup_mmap()`` with ``ksm_fork()`` (6.18 accounting)."""
        parent = self._process(e.pid)
        assert e.child_pid not in self._procs, "fork to an existing pid"
        child = self._procs[e.child_pid] = Mm(e.child_pid)
        # dup_mm() copies the mm_struct: counters and MMF_INIT_MASK flags come along.
        child.merge_any = parent.merge_any
        child.ksm_rmap_items = parent.ksm_rmap_items
        child.ksm_merging_pages = parent.ksm_merging_pages
        child.ksm_zero_pages = parent.ksm_zero_pages
        # ksm_fork(): since Linux kernel commit 4d6fc29f3634 (in v6.18) the child's
        # merging_pages and rmap_items start at 0 and its inherited zero pages
        # are added to the global count.
        if parent.registered:
            if self.kernel.fork_resets_counters:
                child.ksm_merging_pages = 0
                child.ksm_rmap_items = 0
            if self.tracks_zero_pages:
                self._ksm_zero_pages += child.ksm_zero_pages
            self._ksm_enter(child)
        # VMAs keep their flags and anon_vma (anon_vma_fork()).
        child.vmas = [Vma(v.start, v.end, v.mergeable, v.anon_vma) for v in parent.vmas]
        # copy_present_ptes(): every page shared copy-on-write; KSM zero PTEs keep
        # their dirty marker.
        for page in parent.pte_pages:
            self._set_pte(child, page, parent.ptes[page])

    def _do_exit(self, e: ev.Exit) -> None:
        """``__mmput()``: ``ksm_exit()`` then ``exit_mmap()`` (zap everything)."""
        mm = self._process(e.pid)
        del self._procs[e.pid]
        if mm.registered:
            self._ksm_exit(mm)
        mm.exiting = True
        self._zap_range(mm, 0, mm.pte_pages[-1] + 1 if mm.pte_pages else 0)
        mm.vmas = []

    # ------------------------------------------------------------------
    # Registration (__ksm_enter, __ksm_exit)
    # ------------------------------------------------------------------

    def _ksm_enter(self, mm: Mm) -> None:
        """``__ksm_enter()``: a slot just behind the cursor (at the end while run=2)."""
        assert not mm.registered
        if self._knob("run") == 2 or self._scan_mm is None:
            self._mm_list.append(mm)
        else:
            self._mm_list.insert(self._mm_list.index(self._scan_mm), mm)
        mm.registered = True
        self._emit("ksm_enter", mm=mm.pid)
        # Waking ksmd when the list was empty: see apply().

    def _ksm_exit(self, mm: Mm) -> None:
        """``__ksm_exit()``: free an empty slot now, else let ksmd clean it next."""
        self._emit("ksm_exit", mm=mm.pid)
        if mm is self._scan_mm:
            return  # ksmd is in this mm: it notices the exit on its next call
        self._mm_list.remove(mm)
        if not mm.items:
            mm.registered = False
            mm.merge_any = False
        else:
            at = 0 if self._scan_mm is None else self._mm_list.index(self._scan_mm) + 1
            self._mm_list.insert(at, mm)

    # ------------------------------------------------------------------
    # Unmerging (break_ksm, unmerge_ksm_pages)
    # ------------------------------------------------------------------

    def _break_ksm(self, mm: Mm, page: int) -> None:
        """``break_ksm()``: an unshare fault while the PTE maps a KSM page or KSM zero PTE."""
        pte = mm.ptes.get(page)
        if isinstance(pte, Frame) and pte.ksm:
            # do_wp_page(FAULT_FLAG_UNSHARE) -> wp_page_copy(): a private copy.
            self._set_pte(mm, page, self._new_frame(pte.content))
            self._events["unshared_by_unmerge"] += 1
        elif pte == ZERO_BY_KSM and self.tracks_zero_pages:
            # is_ksm_zero_pte() exists since 6.6: a fresh private zeroed page.
            self._ksm_might_unmap_zero_page(mm, pte)
            self._set_pte(mm, page, self._new_frame(ZERO))
            self._events["zero_pages_unshared"] += 1

    def _unmerge_ksm_pages(self, mm: Mm, start: int, end: int) -> None:
        """``unmerge_ksm_pages()`` over ``[start, end)``."""
        for page in self._pages_in(mm, start, end):
            self._break_ksm(mm, page)

    # ------------------------------------------------------------------
    # Knob writes (*_store())
    # ------------------------------------------------------------------

    def _do_ksm(self, e: ev.Ksm) -> None:
        for name, value in e.settings.items():
            self._store_knob(e, name, value)

    def _refuse(
        self, e: ev.Ksm, name: str, value: KnobValue, error: Literal["EBUSY", "EINVAL", "ENOENT"]
    ) -> None:
        self._refused.append(
            {"event": e.index, "t": e.t, "knob": name, "value": value, "error": error}
        )

    def _store_knob(self, e: ev.Ksm, name: str, value: KnobValue) -> None:
        if name in self._missing:
            self._refuse(e, name, value, "ENOENT")  # no such file on this version
        elif name == "run":
            assert isinstance(value, int)
            self._run_store(value)
        elif name == "pages_to_scan":
            # pages_to_scan_store(): refused while the advisor drives it.
            if self._settings["advisor_mode"] != "none":
                self._refuse(e, name, value, "EINVAL")
            else:
                self._settings[name] = value
        elif name == "sleep_millisecs":
            # sleep_millisecs_store() wakes a sleeping ksmd if the value changed.
            if value != self._settings[name] and self._next_wake is not None:
                self._next_wake = e.t
            self._settings[name] = value
        elif name in ("max_page_sharing", "merge_across_nodes"):
            # max_page_sharing_store() / merge_across_nodes_store().
            if value == self._settings[name]:
                return
            if self._pages_shared or self._remove_all_stable_nodes():
                self._refuse(e, name, value, "EBUSY")
            else:
                self._settings[name] = value
        elif name == "advisor_mode":
            # advisor_mode_store(): set_advisor_defaults() on a change.
            if value != self._settings[name]:
                self._settings[name] = value
                self._set_advisor_defaults()
        else:
            self._settings[name] = value

    def _run_store(self, value: int) -> None:
        """``run_store()``."""
        if value == self._knob("run"):
            return
        self._settings["run"] = value
        if value == 2:
            self._unmerge_and_remove_all_rmap_items()

    def _set_advisor_defaults(self) -> None:
        """``set_advisor_defaults()``."""
        if self._settings["advisor_mode"] == "none":
            self._settings["pages_to_scan"] = 100  # DEFAULT_PAGES_TO_SCAN
        else:
            self._adv_start_scan = 0
            self._adv_scan_time = 0
            self._adv_change = 0
            self._adv_cpu_time = 0
            self._settings["pages_to_scan"] = self._knob("advisor_min_pages_to_scan") % UINT

    # ------------------------------------------------------------------
    # run=2 (unmerge_and_remove_all_rmap_items, remove_all_stable_nodes)
    # ------------------------------------------------------------------

    def _unmerge_and_remove_all_rmap_items(self) -> None:
        """``unmerge_and_remove_all_rmap_items()``: synchronous, in list order."""
        self._scan_mm = self._mm_list[0] if self._mm_list else None
        while self._scan_mm is not None:
            mm = self._scan_mm
            if not mm.exiting:
                for vma in list(mm.vmas):
                    if vma.mergeable and vma.anon_vma:
                        self._unmerge_ksm_pages(mm, vma.start, vma.end)
            self._remove_trailing_rmap_items(mm, 0)
            following = self._slot_after(mm)
            if mm.exiting:
                self._mm_list.remove(mm)
                mm.registered = False
                mm.merge_any = False
            self._scan_mm = following
        self._remove_all_stable_nodes()
        self._seqnr = 0
        self._scan_address = 0
        self._scan_pos = 0

    def _remove_all_stable_nodes(self) -> bool:
        """``remove_all_stable_nodes()``: drop every node whose KSM page is gone.

        Returns True (-EBUSY) if some node's KSM page is still mapped.  The
        kernel walks the rb-tree from its root and stops a tree at the first
        busy node; as KSM_MODEL.md section 10 states it, every removable node
        is removed here.
        """
        busy = False
        for entry in list(self._stable.values()):
            if isinstance(entry, StableNode):
                busy |= not self._remove_stable_node(entry)
            else:
                for dup in list(entry.dups):
                    busy |= not self._remove_stable_node(dup)
                if not entry.dups:
                    self._free_stable_node_chain(entry)
        return busy

    def _remove_stable_node(self, node: StableNode) -> bool:
        """``remove_stable_node()``: True if removed, False if its page is still mapped."""
        return self._ksm_get_folio(node) is None

    # ------------------------------------------------------------------
    # ksmd: wake-ups, batches, settle (ksm_scan_thread, ksm_do_scan)
    # ------------------------------------------------------------------

    def _ksmd_should_run(self) -> bool:
        """``ksmd_should_run()``: run has the MERGE bit and the mm list is non-empty."""
        return self._knob("run") == 1 and bool(self._mm_list)

    def wake_up(self, w: int) -> None:
        """One iteration of ``ksm_scan_thread()`` at time ``w``."""
        self._now = self._trace_t = w
        if not self._ksmd_should_run():
            self._next_wake = None
            return
        self._ksm_do_scan(self._knob("pages_to_scan"))
        self._wakeups += 1
        # KSM_MODEL.md section 4.2: sleep only if still runnable, else wait idle
        # (the batch may have dropped the last slot).  The batch lasts its cost.
        if self._ksmd_should_run():
            sleep = self._knob("sleep_millisecs")
            self._next_wake = next_wake_ns(w, self._batch_ns, sleep)
        else:
            self._next_wake = None

    def _ksm_do_scan(self, scan_npages: int | None) -> int:
        """``ksm_do_scan()``: up to ``scan_npages`` visits (None: until the pass ends)."""
        self._batch_visits = 0
        self._work = {"batches": 1}
        while scan_npages is None or self._batch_visits < scan_npages:
            found = self._scan_get_next_rmap_item()
            if found is None:
                break
            item, frame = found
            self._cmp_and_merge_page(frame, item)
            self._pages_scanned += 1
            self._batch_visits += 1
        visits = self._batch_visits
        self._batch_ns = batch_cost_ns(Work(**self._work), self._cached_pages())
        self._ksmd_cpu_ns += self._batch_ns
        self._batch_visits = 0
        self._work = None
        return visits

    def _cached_pages(self) -> int | None:
        """The working set the running batch may find in the cache (timing.cached_pages)."""
        return cached_pages(self._pass_pages, self._knob("sleep_millisecs"))

    def _count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` of a kind of ksmd's work (``timing.Work``) in the running batch."""
        if self._work is not None:
            self._work[kind] = self._work.get(kind, 0) + n

    def _do_settle(self, e: ev.Settle) -> None:
        """``settle``: whole passes back to back at ``e.t`` (TRACE_FORMAT.md).

        Until two passes in a row change nothing, ``max_full_scans`` passes, or
        ksmd's mm list is empty: at once if it is empty already, else after the
        pass that dropped its last slot.  A slot without a mergeable VMA (or of
        an exited mm) keeps the list non-empty until a pass walks it.
        """
        if self._knob("run") != 1:
            return
        self._now = self._trace_t = e.t
        repetitions = 0
        quiet = 0
        while self._mm_list and repetitions < e.max_full_scans and quiet < 2:
            before = self._settle_key()
            cpu = self._ksmd_cpu_ns
            self._ksm_do_scan(None)
            self._settle_cpu_ns += self._ksmd_cpu_ns - cpu
            repetitions += 1
            quiet = quiet + 1 if self._settle_key() == before else 0
        if self._ksmd_should_run():
            # as after a batch that ends now
            self._next_wake = next_wake_ns(e.t, 0, self._knob("sleep_millisecs"))
        else:
            self._next_wake = None

    def _settle_key(self) -> tuple[Any, ...]:
        procs = tuple(
            (pid, tuple(self._ksm_stat(self._procs[pid]).values())) for pid in sorted(self._procs)
        )
        return (
            self._pages_shared,
            self._pages_sharing,
            self._pages_unshared,
            self._pages_volatile(),
            self._ksm_zero_pages if self.tracks_zero_pages else None,
            self._chains,
            self._dups,
            procs,
        )

    # ------------------------------------------------------------------
    # One pass (scan_get_next_rmap_item and helpers)
    # ------------------------------------------------------------------

    def _slot_after(self, mm: Mm) -> Mm | None:
        i = self._mm_list.index(mm)
        return self._mm_list[i + 1] if i + 1 < len(self._mm_list) else None

    def _scan_get_next_rmap_item(self) -> tuple[RmapItem, Frame] | None:
        """``scan_get_next_rmap_item()``: the next item to visit, or None at the end of a pass."""
        if not self._mm_list:
            return None
        if self._scan_mm is None:
            # Start of a pass.
            self._pass_searches = 0
            self._pass_shared = self._pages_shared
            # the pass's working set (timing.pass_percents)
            self._pass_pages = sum(
                v.end - v.start
                for m in self._mm_list
                if not m.exiting
                for v in m.vmas
                if v.mergeable
            )
            self._advisor_start_scan()
            self._emit("ksm_start_scan", seq=self._seqnr, rmap_entries=self._rmap_items)
            # lru_add_drain_all(): nothing to model.
            self._unstable = {}  # root_unstable_tree = RB_ROOT
            self._scan_mm = self._mm_list[0]
            self._scan_address = 0  # next_mm:
            self._scan_pos = 0
        while True:
            mm = self._scan_mm
            assert mm is not None
            if not mm.exiting:
                found = self._scan_mm_vmas(mm)
                if found is not None:
                    return found
            else:
                # no_vmas: an exiting mm is treated as having no VMAs.
                self._scan_address = 0
                self._scan_pos = 0
            # Nuke every item above the cursor: no VM_MERGEABLE VMA has them.
            self._remove_trailing_rmap_items(mm, self._scan_pos)
            following = self._slot_after(mm)
            if self._scan_address == 0:
                # No VM_MERGEABLE VMA at all (or exiting): drop the slot. The
                # 6.18.y fix keeps MMF_VM_MERGE_ANY.
                self._mm_list.remove(mm)
                mm.registered = False
            self._scan_mm = following
            if following is None:
                break
            self._scan_address = 0  # next_mm:
            self._scan_pos = 0
        # The cursor is back at the head: the pass is complete (and charged,
        # with the drain at the next start, to the batch that ends it).
        self._count("passes")
        self._advisor_stop_scan()
        self._emit("ksm_stop_scan", seq=self._seqnr, rmap_entries=self._rmap_items)
        self._seqnr += 1
        return None

    def _scan_mm_vmas(self, mm: Mm) -> tuple[RmapItem, Frame] | None:
        """The VMA walk of ``scan_get_next_rmap_item()`` from the cursor address."""
        for vma in list(mm.vmas):
            if vma.end <= self._scan_address:
                continue  # vma_iter_init(mm, ksm_scan.address)
            if not vma.mergeable:
                continue
            if self._scan_address < vma.start:
                self._scan_address = vma.start
            if not vma.anon_vma:
                self._scan_address = vma.end
            while self._scan_address < vma.end:
                page = self._next_anon_page(mm, self._scan_address, vma.end)
                if page is None:
                    self._scan_address = vma.end
                    break
                self._scan_address = page
                frame = mm.ptes[page]
                assert isinstance(frame, Frame)
                item = self._get_next_rmap_item(mm, page)
                self._scan_pos += 1  # ksm_scan.rmap_list = &rmap_item->rmap_list
                self._scan_address = page + 1
                if self._should_skip_rmap_item(frame, item):
                    continue  # next_page
                return item, frame
        return None

    @staticmethod
    def _next_anon_page(mm: Mm, start: int, end: int) -> int | None:
        """The first page in ``[start, end)`` whose PTE maps a present anonymous page.

        The zero page (fault or KSM zero PTE) is not a normal page and is skipped.
        """
        i = bisect.bisect_left(mm.pte_pages, start)
        while i < len(mm.pte_pages) and mm.pte_pages[i] < end:
            page = mm.pte_pages[i]
            if isinstance(mm.ptes[page], Frame):
                return page
            i += 1
        return None

    def _get_next_rmap_item(self, mm: Mm, address: int) -> RmapItem:
        """``get_next_rmap_item()``: free stale items below ``address``, reuse or create.

        Leaves ``_scan_pos`` at the returned item's position.
        """
        pos = self._scan_pos
        while pos < len(mm.items):
            item = mm.items[pos]
            if item.address == address:
                return item
            if item.address > address:
                break
            del mm.items[pos]
            self._remove_rmap_item_from_tree(item)
            self._free_rmap_item(item)
        item = RmapItem(mm, address)  # alloc_rmap_item(): zeroed
        self._count("allocs")
        mm.ksm_rmap_items += 1
        self._rmap_items += 1
        mm.items.insert(pos, item)
        return item

    def _remove_trailing_rmap_items(self, mm: Mm, pos: int) -> None:
        """``remove_trailing_rmap_items()``: free every item from position ``pos`` on."""
        while len(mm.items) > pos:
            item = mm.items.pop(pos)
            self._remove_rmap_item_from_tree(item)
            self._free_rmap_item(item)

    def _free_rmap_item(self, item: RmapItem) -> None:
        """``free_rmap_item()``."""
        assert item.state == NONE
        self._count("frees")
        self._rmap_items -= 1
        item.mm.ksm_rmap_items -= 1

    def _should_skip_rmap_item(self, frame: Frame, item: RmapItem) -> bool:
        """``should_skip_rmap_item()`` with ``skip_age()`` (smart_scan, section 11.1)."""
        if not self._knob("smart_scan"):
            return False
        if frame.ksm:
            return False  # KSM pages are never skipped nor aged
        age = item.age
        if age != 255:
            item.age += 1
        if age < 3:
            return False
        if item.remaining_skips == 0:
            if age <= 3:
                item.remaining_skips = 1
            elif age <= 5:
                item.remaining_skips = 2
            elif age <= 8:
                item.remaining_skips = 4
            else:
                item.remaining_skips = 8
            return False
        self._pages_skipped += 1
        self._count("skips")
        item.remaining_skips -= 1
        self._remove_rmap_item_from_tree(item)
        return True

    # ------------------------------------------------------------------
    # One visit (cmp_and_merge_page)
    # ------------------------------------------------------------------

    def _cmp_and_merge_page(self, frame: Frame, item: RmapItem) -> None:
        """``cmp_and_merge_page()`` (6.11+ order: checksum, zero page, stable, unstable)."""
        bypass = False  # max_page_sharing_bypass: only silences a warning
        if frame.ksm:
            node = frame.node
            assert node is not None
            self._count("hits")
            if item.state == STABLE and item.node is node:
                return  # already linked to this KSM page
            if not self._is_page_sharing_candidate(node):
                bypass = True
            kframe: Frame | None = frame  # stable_tree_search(): "ksm page forked"
        elif not self.kernel.checksum_first:
            # Before 6.11: the stable tree first (the item still where it was
            # linked), then the checksum, the zero page and the unstable tree.
            kframe = self._stable_tree_search(frame.content)
            self._remove_rmap_item_from_tree(item)
            if kframe is None:
                checksum = frame.content  # calc_checksum()
                if item.oldchecksum != checksum:
                    item.oldchecksum = checksum
                    return
                if self._try_to_merge_with_zero_page(item, frame):
                    return
        else:
            self._remove_rmap_item_from_tree(item)
            checksum = frame.content  # calc_checksum()
            if item.oldchecksum != checksum:
                item.oldchecksum = checksum
                self._count("checksums")
                return
            if self._try_to_merge_with_zero_page(item, frame):
                self._count("zero_merges")
                return
            kframe = self._stable_tree_search(frame.content)
            self._count("stable_levels", self._pass_shared.bit_length())
            if kframe is not None:
                self._count("merges")
            else:
                self._count("searches")
                self._pass_searches += 1
                self._count("unstable_levels", self._pass_searches.bit_length())

        self._remove_rmap_item_from_tree(item)
        if kframe is not None:
            self._try_to_merge_with_ksm_page(item, frame, kframe)
            assert kframe.node is not None
            self._stable_tree_append(item, kframe.node, bypass)
            return

        found = self._unstable_tree_search_insert(item, frame)
        if found is not None:
            tree_item, tree_frame = found
            self._count("pairs")
            kpage = self._try_to_merge_two_pages(item, frame, tree_item, tree_frame)
            node = self._stable_tree_insert(kpage)
            self._stable_tree_append(tree_item, node, False)
            self._stable_tree_append(item, node, False)

    def _try_to_merge_with_zero_page(self, item: RmapItem, frame: Frame) -> bool:
        """``try_to_merge_with_zero_page()``: True if cmp_and_merge_page() stops here."""
        if not (self._knob("use_zero_pages") and item.oldchecksum == ZERO):
            return False
        mm = item.mm
        # find_mergeable_vma() succeeds: ksmd just found the page in such a VMA.
        # try_to_merge_one_page() -> replace_page() with the zero page:
        # ksm_map_zero_page() installs a dirty (marked) zero PTE.
        assert mm.ptes[item.address] is frame
        self._set_pte(mm, item.address, ZERO_BY_KSM)
        if self.tracks_zero_pages:
            mm.ksm_zero_pages += 1
            self._ksm_zero_pages += 1
        self._events["zero_pages_merged"] += 1
        self._emit(
            "ksm_merge_one_page",
            pfn="zero",
            rmap_item=item.address * self.page_size,
            mm=mm.pid,
            err=0,
        )
        return True

    def _try_to_merge_with_ksm_page(
        self, item: RmapItem, frame: Frame, kframe: Frame | None
    ) -> None:
        """``try_to_merge_with_ksm_page()`` → ``try_to_merge_one_page()``; never fails here."""
        mm = item.mm
        assert mm.ptes[item.address] is frame
        if kframe is frame:
            pass  # "ksm page forked": nothing to do
        elif kframe is None:
            # No target: the page itself becomes a KSM page (stable node set later).
            frame.ksm = True
            frame.origin = (mm.pid, item.address)
            self._events["merges"] += 1
        else:
            # pages_identical() then replace_page(): map the KSM page instead.
            assert kframe.content == frame.content
            self._set_pte(mm, item.address, kframe)
            self._events["merges"] += 1
        self._remove_rmap_item_from_tree(item)
        self._emit(
            "ksm_merge_with_ksm_page",
            ksm_page=self._name(kframe),
            pfn=self._name(kframe or frame),
            rmap_item=item.address * self.page_size,
            mm=mm.pid,
            err=0,
        )

    def _try_to_merge_two_pages(
        self, item: RmapItem, frame: Frame, tree_item: RmapItem, tree_frame: Frame
    ) -> Frame:
        """``try_to_merge_two_pages()``: the current page becomes the KSM page."""
        self._try_to_merge_with_ksm_page(item, frame, None)
        self._try_to_merge_with_ksm_page(tree_item, tree_frame, frame)
        return frame

    # ------------------------------------------------------------------
    # Unstable tree (unstable_tree_search_insert)
    # ------------------------------------------------------------------

    def _unstable_tree_search_insert(
        self, item: RmapItem, frame: Frame
    ) -> tuple[RmapItem, Frame] | None:
        """``unstable_tree_search_insert()`` on the dict.

        Returns the partner item and its page, or None after an abort or an insertion.
        """
        content = frame.content
        tree_item = self._unstable.get(content)
        if tree_item is None:
            item.state = UNSTABLE
            item.unstable_seqnr = self._seqnr
            item.unstable_key = content
            self._unstable[content] = item
            self._pages_unshared += 1
            return None
        tree_frame = self._get_mergeable_page(tree_item)
        if tree_frame is None or tree_frame.content != content:
            return None  # the tree is out of date: neither merge nor insert
        if tree_frame is frame:
            return None  # don't substitute a KSM page for a forked page
        return tree_item, tree_frame

    def _get_mergeable_page(self, item: RmapItem) -> Frame | None:
        """``get_mergeable_page()``: the item's ordinary anonymous page, if still there."""
        mm = item.mm
        if mm.exiting:
            return None
        vma = self._find_vma(mm, item.address)
        if vma is None or not vma.mergeable or not vma.anon_vma:
            return None  # find_mergeable_vma() failed
        pte = mm.ptes.get(item.address)
        if not isinstance(pte, Frame) or pte.ksm:
            return None
        return pte

    # ------------------------------------------------------------------
    # Stable tree (stable_tree_search, stable_tree_insert, chains)
    # ------------------------------------------------------------------

    def _is_page_sharing_candidate(self, node: StableNode, offset: int = 0) -> bool:
        """``__is_page_sharing_candidate()``: 0 < len and len + offset < max_page_sharing."""
        length = node.rmap_hlist_len
        return length > 0 and length + offset < self._knob("max_page_sharing")

    def _ksm_get_folio(self, node: StableNode) -> Frame | None:
        """``ksm_get_folio()``: the node's KSM page, or None after removing a stale node."""
        if node.kframe.mapcount == 0:
            self._remove_node_from_stable_tree(node)
            return None
        return node.kframe

    def _stable_tree_search(self, content: int) -> Frame | None:
        """``stable_tree_search()`` for an ordinary page: a KSM page to merge into, or None."""
        entry = self._stable.get(content)
        if entry is None:
            return None
        if isinstance(entry, StableNode):
            if self._ksm_get_folio(entry) is None:
                return None  # stale: removed, the walk restarts and finds nothing
            return entry.kframe if self._is_page_sharing_candidate(entry) else None
        dup = self._stable_node_dup(entry, prune=True)  # chain_prune()
        if dup is None or not self._is_page_sharing_candidate(dup):
            return None  # all dups full: wait in the unstable tree for a new dup
        return dup.kframe

    def _stable_node_dup(self, chain: StableChain, prune: bool) -> StableNode | None:
        """``stable_node_dup()``: choose a dup, drop stale ones, collapse or reorder the chain."""
        limit = jiffies_ns(self._knob("stable_node_chains_prune_millisecs")) // JIFFY_NS
        now = self._now // JIFFY_NS
        if not prune or now < chain.prune_jiffies + limit:  # time_before()
            prune = False
        else:
            chain.prune_jiffies = now
        found: StableNode | None = None
        found_len = 0
        for dup in list(chain.dups):
            self._count("dups")
            if self._ksm_get_folio(dup) is None:
                continue  # stale dup removed from the chain
            if not self.kernel.chain_collapse_any:
                # Before 6.11: only a dup with room is chosen, the fullest.
                if self._is_page_sharing_candidate(dup) and (
                    found is None or dup.rmap_hlist_len > found_len
                ):
                    found = dup
                    found_len = dup.rmap_hlist_len
                    if not prune:
                        break
                continue
            if found is None or (
                self._is_page_sharing_candidate(dup)
                and (not self._is_page_sharing_candidate(found) or dup.rmap_hlist_len > found_len)
            ):
                found = dup
                found_len = dup.rmap_hlist_len
                if not prune and self._is_page_sharing_candidate(found):
                    break
        if found is None:
            if not chain.dups:
                self._free_stable_node_chain(chain)  # its hlist is empty
            return None
        if chain.dups == [found] and (prune or self.kernel.chain_collapse_any):
            # Before 6.11 only a pruning lookup collapsed the chain.
            # Only one dup left: it replaces the chain as a plain node.
            chain.dups.clear()
            found.chain = None
            self._stable[chain.content] = found
            self._chains -= 1
            self._dups -= 1
        elif chain.dups[0] is not found and self._is_page_sharing_candidate(found, 1):
            chain.dups.remove(found)
            chain.dups.insert(0, found)
        return found

    def _free_stable_node_chain(self, chain: StableChain) -> None:
        """``free_stable_node_chain()``."""
        assert not chain.dups
        assert self._stable[chain.content] is chain
        del self._stable[chain.content]
        self._chains -= 1

    def _stable_tree_insert(self, kframe: Frame) -> StableNode:
        """``stable_tree_insert()``: a plain node, or a new dup of a (new) chain."""
        content = kframe.content
        entry = self._stable.get(content)
        # Resolve the existing entry like chain() does (no pruning): stale
        # nodes/dups go, a chain may collapse or vanish.
        if isinstance(entry, StableNode):
            if self._ksm_get_folio(entry) is None:
                entry = None
        elif isinstance(entry, StableChain):
            self._stable_node_dup(entry, prune=False)
            entry = self._stable.get(content)
        node = StableNode(kframe)
        if entry is None:
            self._stable[content] = node
        else:
            if isinstance(entry, StableNode):
                entry = self._alloc_stable_node_chain(entry)
            self._stable_node_chain_add_dup(node, entry)
        kframe.node = node  # folio_set_stable_node()
        return node

    def _alloc_stable_node_chain(self, dup: StableNode) -> StableChain:
        """``alloc_stable_node_chain()``: a chain takes the plain node's place."""
        chain = StableChain(dup.content, self._now // JIFFY_NS)
        self._stable[dup.content] = chain
        self._chains += 1
        self._stable_node_chain_add_dup(dup, chain)
        return chain

    def _stable_node_chain_add_dup(self, dup: StableNode, chain: StableChain) -> None:
        """``stable_node_chain_add_dup()``: at the head of the chain."""
        dup.chain = chain
        chain.dups.insert(0, dup)
        self._dups += 1

    def _stable_tree_append(self, item: RmapItem, node: StableNode, bypass: bool) -> None:
        """``stable_tree_append()``: link the item at the head of the node's list."""
        del bypass  # only decides whether exceeding max_page_sharing warns
        item.node = node
        item.state = STABLE
        if node.items:
            self._pages_sharing += 1
        else:
            self._pages_shared += 1
        node.items.insert(0, item)
        item.mm.ksm_merging_pages += 1

    def _remove_node_from_stable_tree(self, node: StableNode) -> None:
        """``remove_node_from_stable_tree()``: unlink every item, then free the node.

        Traces every item but the last of the list (the oldest), then the KSM page.
        """
        kpage = self._name(node.kframe)
        for item in node.items[:-1]:
            self._emit(
                "ksm_remove_rmap_item",
                pfn=kpage,
                rmap_item=item.address * self.page_size,
                mm=item.mm.pid,
            )
        self._emit("ksm_remove_ksm_page", pfn=kpage)
        for i, item in enumerate(node.items):
            if i < len(node.items) - 1:
                self._pages_sharing -= 1
            else:
                self._pages_shared -= 1
            item.mm.ksm_merging_pages -= 1
            item.state = NONE
            item.node = None
        node.items = []
        if node.chain is not None:
            # stable_node_dup_del(): leaves the chain, which is not collapsed here.
            node.chain.dups.remove(node)
            node.chain = None
            self._dups -= 1
        else:
            assert self._stable[node.content] is node
            del self._stable[node.content]
        if node.kframe.node is node:
            node.kframe.node = None

    def _remove_rmap_item_from_tree(self, item: RmapItem) -> None:
        """``remove_rmap_item_from_tree()``: leave the stable node or the unstable tree."""
        if item.state == STABLE:
            node = item.node
            assert node is not None
            if self._ksm_get_folio(node) is None:
                return  # the whole stale node went, this item with it
            node.items.remove(item)
            if node.items:
                self._pages_sharing -= 1
            else:
                self._pages_shared -= 1
            item.mm.ksm_merging_pages -= 1
            item.node = None
            item.state = NONE
        elif item.state == UNSTABLE:
            # The tree itself only holds items of the current pass (the kernel's
            # rb_erase when seqnr matches); removing by identity is the same.
            if self._unstable.get(item.unstable_key) is item:
                del self._unstable[item.unstable_key]
            self._pages_unshared -= 1
            item.state = NONE

    # ------------------------------------------------------------------
    # Scan-time advisor (section 11.2)
    # ------------------------------------------------------------------

    def _advisor_start_scan(self) -> None:
        if self._settings["advisor_mode"] == "scan-time":
            self._adv_start_scan = self._now

    def _advisor_stop_scan(self) -> None:
        if self._settings["advisor_mode"] == "scan-time":
            self._scan_time_advisor()

    def _scan_time_advisor(self) -> None:
        """``scan_time_advisor()``: integer arithmetic (unsigned long / unsigned int)."""
        scan_time = (self._now - self._adv_start_scan) // 1_000_000 // 1000
        scan_time = scan_time or 1
        # ksmd's CPU time now: whole batches so far plus this batch so far.
        work = Work(**(self._work or {}))
        cpu_time = self._ksmd_cpu_ns + batch_cost_ns(work, self._cached_pages())
        cpu_time_diff_ms = ((cpu_time - self._adv_cpu_time) % ULONG) // 1000 // 1000
        cpu_percent = ((cpu_time_diff_ms * 100) % ULONG // (scan_time * 1000)) % UINT
        cpu_percent = cpu_percent or 1
        last_scan_time = self._adv_scan_time or scan_time  # prev_scan_time()

        factor = (self._knob("advisor_target_scan_time") * 100) % ULONG // scan_time
        factor = factor or 1

        change = scan_time * 100 // last_scan_time
        change = change or 1
        change = ((100 - EWMA_WEIGHT) * self._adv_change + EWMA_WEIGHT * change) // 100  # ewma()

        pages_to_scan = self._knob("pages_to_scan")
        pages = ((pages_to_scan * 100) % UINT) // factor  # unsigned int product
        pages = (pages * change) % ULONG // 100

        per_page_cost = pages_to_scan // cpu_percent
        per_page_cost = per_page_cost or 1

        pages = min(pages, (per_page_cost * self._knob("advisor_max_cpu")) % ULONG)
        pages = max(pages, per_page_cost * KSM_ADVISOR_MIN_CPU)
        pages = min(pages, self._knob("advisor_max_pages_to_scan"))

        self._adv_change = change
        self._adv_scan_time = scan_time
        self._adv_cpu_time = cpu_time
        self._settings["pages_to_scan"] = pages % UINT
        self._emit("ksm_advisor", scan_time=scan_time, pages_to_scan=pages, cpu_percent=cpu_percent)

    # ------------------------------------------------------------------
    # Invariants
    # ------------------------------------------------------------------

    def _all_mms(self) -> list[Mm]:
        mms = list(self._procs.values())
        for mm in self._mm_list:
            if not any(mm is other for other in mms):
                mms.append(mm)
        return mms

    def check_invariants(self) -> None:
        """Raise :class:`InvariantError` if the state is inconsistent."""

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise InvariantError(what)

        mms = self._all_mms()

        # Page tables and frames.
        maps: dict[int, int] = {}
        for mm in mms:
            check(mm.pte_pages == sorted(mm.ptes), f"{mm}: pte index out of date")
            for page, pte in mm.ptes.items():
                check(self._find_vma(mm, page) is not None, f"{mm}: PTE at {page:#x} outside VMAs")
                if isinstance(pte, Frame):
                    check(self._frames.get(pte.fid) is pte, f"{mm}: PTE maps dead {pte}")
                    maps[pte.fid] = maps.get(pte.fid, 0) + 1
                else:
                    check(pte in (ZERO_BY_FAULT, ZERO_BY_KSM), f"{mm}: bad PTE {pte!r}")
            for a, b in zip(mm.vmas, mm.vmas[1:], strict=False):
                check(a.end <= b.start, f"{mm}: VMAs overlap or unsorted")
        for fid, frame in self._frames.items():
            check(maps.get(fid, 0) == frame.mapcount, f"{frame}: {maps.get(fid, 0)} PTEs map it")
            check(frame.mapcount > 0, f"{frame}: live with no mapping")
            if frame.ksm and frame.node is not None:
                check(frame.node.kframe is frame, f"{frame}: node points elsewhere")

        # Stable tree structure and the counters it implies.
        nodes: list[StableNode] = []
        chains = dups = 0
        for content, entry in self._stable.items():
            check(entry.content == content, f"{entry} filed under {content:#x}")
            if isinstance(entry, StableNode):
                check(entry.chain is None, f"{entry}: plain node thinks it is a dup")
                nodes.append(entry)
            else:
                chains += 1
                dups += len(entry.dups)
                for dup in entry.dups:
                    check(dup.chain is entry, f"{dup}: not linked to its chain")
                    check(dup.content == content, f"{dup}: wrong content for its chain")
                    nodes.append(dup)
        check(chains == self._chains, f"stable_node_chains {self._chains} != {chains}")
        check(dups == self._dups, f"stable_node_dups {self._dups} != {dups}")
        shared = sum(1 for n in nodes if n.items)
        sharing = sum(len(n.items) - 1 for n in nodes if n.items)
        check(shared == self._pages_shared, f"pages_shared {self._pages_shared} != {shared}")
        check(sharing == self._pages_sharing, f"pages_sharing {self._pages_sharing} != {sharing}")
        node_ids = {id(n) for n in nodes}
        for node in nodes:
            for item in node.items:
                check(item.state == STABLE and item.node is node, f"{item} in {node} not linked")
        for frame in self._frames.values():
            if frame.ksm:
                check(
                    frame.node is not None and id(frame.node) in node_ids,
                    f"{frame}: live KSM page without a stable node",
                )

        # Items.
        total_items = unstable = 0
        merging_sum = zero_sum = 0
        for mm in mms:
            addresses = [i.address for i in mm.items]
            check(addresses == sorted(set(addresses)), f"{mm}: rmap_list not sorted")
            check(mm.ksm_rmap_items == len(mm.items), f"{mm}: ksm_rmap_items wrong")
            total_items += mm.ksm_rmap_items
            merging = 0
            for item in mm.items:
                check(item.mm is mm, f"{item} in the wrong mm")
                if item.state == STABLE:
                    merging += 1
                    check(
                        item.node is not None and id(item.node) in node_ids,
                        f"{item}: linked to a node outside the tree",
                    )
                    assert item.node is not None
                    check(any(i is item for i in item.node.items), f"{item}: not in its node")
                elif item.state == UNSTABLE:
                    unstable += 1
            check(merging == mm.ksm_merging_pages, f"{mm}: ksm_merging_pages wrong")
            merging_sum += mm.ksm_merging_pages
            if self.tracks_zero_pages:
                zeros = sum(pte == ZERO_BY_KSM for pte in mm.ptes.values())
                check(
                    zeros == mm.ksm_zero_pages,
                    f"{mm}: ksm_zero_pages {mm.ksm_zero_pages} != {zeros}",
                )
                zero_sum += mm.ksm_zero_pages
            if not mm.exiting and any(v.mergeable for v in mm.vmas):
                check(mm.registered, f"{mm}: VM_MERGEABLE VMA but no slot")
            check(mm.registered == any(mm is m for m in self._mm_list), f"{mm}: slot flag wrong")
            if not mm.registered:
                check(not mm.items, f"{mm}: items without a slot")
        check(total_items == self._rmap_items, f"rmap_items {self._rmap_items} != {total_items}")
        check(
            merging_sum == self._pages_shared + self._pages_sharing,
            "sum of ksm_merging_pages != pages_shared + pages_sharing",
        )
        check(
            unstable == self._pages_unshared, f"pages_unshared {self._pages_unshared} != {unstable}"
        )
        if self.tracks_zero_pages:
            check(zero_sum == self._ksm_zero_pages, "sum of per-mm ksm_zero_pages != global")
        for key, item in self._unstable.items():
            check(
                item.state == UNSTABLE and item.unstable_key == key,
                f"{item}: stale in unstable tree",
            )

        # Cursor.
        check(
            self._scan_mm is None or any(self._scan_mm is m for m in self._mm_list),
            "cursor on a slot that is not on the list",
        )
        if self._scan_mm is not None:
            check(0 <= self._scan_pos <= len(self._scan_mm.items), "cursor position out of range")
        check(len(self._mm_list) == len({id(m) for m in self._mm_list}), "slot listed twice")
