"""The replay engine: one simulated kernel (VM + ksmd) driven by trace events.

It offers the two-call interface of ``simulator.py``: :meth:`Engine.apply`
and :meth:`Engine.snapshot`.  Time follows the rules written there: ksmd's
wake-ups run between instants, never inside one.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from ksmreplay import traps
from ksmreplay.arrays import MEMORY_ENV, NoRoom, check, format_size
from ksmreplay.errors import ResourceError, UsageError
from ksmreplay.ksm import END, IdleState, Ksmd
from ksmreplay.ksm.kernels import ABSENT, DEFAULT_KERNEL, kernel
from ksmreplay.ksm.knobs import (
    ADVISOR_OWNS,
    DEFAULTS,
    KNOB_BY_NAME,
    Knobs,
    KnobValue,
    start_order,
)
from ksmreplay.ksm.modes import MODES
from ksmreplay.report import Explain, Ignored, KsmdWork, Pinned, Refusal, Snap, summarise
from ksmreplay.timing import (
    JIFFY_NS,
    Work,
    batch_cost_ns,
    batch_wall_ns,
    next_wake_ns,
    timer_granularity_ns,
    worst_batch_ns,
)
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Prctl,
    Read,
    Settle,
    Snapshot,
    Write,
    WriteRun,
)
from ksmreplay.traps import Trap
from ksmreplay.vm import MM, FrameTable, Memory
from ksmreplay.vm.content import PageStore, literal_write

if TYPE_CHECKING:
    from ksmreplay.tracepoints import Sink

WRITTEN_PAGE_BYTES = 8 + FrameTable.ROW_BYTES
"""The least a written page costs: its PTE and its frame (bytes)."""

READ_PAGE_BYTES = 8
"""The least a page read without a write costs: its PTE (bytes)."""

EXPECT_FROM = 64 << 20
"""Events that make pages resident are checked against the memory budget up
front from this many bytes on."""

WRITE_SLICE = 1 << 20
"""Pages of a one-fingerprint write written at once."""

SETTLE_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "ksm_zero_pages",
    "zero_pages_sharing",
    "stable_node_chains",
    "stable_node_dups",
)
"""The global counters a ``settle`` watches (TRACE_FORMAT.md; ``zero_pages_sharing`` is
v6's name for ``ksm_zero_pages``)."""

_SettleKey = tuple[tuple[object, ...], tuple[tuple[object, ...], ...]]
"""What a ``settle`` compares between full scans: the global counters of
:data:`SETTLE_COUNTERS`, and every live process's ksm_stat."""

DEFAULT_PAGES_TO_SCAN = DEFAULTS["pages_to_scan"]
"""pages_to_scan after leaving the scan-time advisor (``DEFAULT_PAGES_TO_SCAN``,
the knob's default)."""


class Engine:
    """Replays one trace in one mode.  See ``simulator.Simulator``."""

    skip_idle = True
    """Skip ksmd's circles between two events (see :meth:`_advance`); off, every
    wake-up runs (the tests compare the two)."""

    def __init__(
        self,
        mode: str,
        page_size: int,
        settings: Mapping[str, KnobValue] | None = None,
        kernel_version: str = DEFAULT_KERNEL,
        *,
        pins: Mapping[str, KnobValue] | None = None,
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"mode {mode!r} is not available (modes: {', '.join(MODES)})")
        self.kernel = kernel(kernel_version)
        self.kernel.check_mode(mode)
        self.mode = mode
        self._mode = MODES[mode]
        self.page_size = page_size
        self._knobs = Knobs()
        missing = self.kernel.missing_knobs
        for name in missing:
            # ksmd behaves as without the feature; the report shows null.
            self._knobs[name] = ABSENT.get(name, self._knobs[name])
        self.mem = Memory()
        """The simulated memory: processes, page tables, frames."""
        self.ksmd = Ksmd(
            self.mem,
            self._mode,
            self._knobs,
            self._advisor_sets_pages_to_scan,
            kernel=self.kernel,
        )
        self.store = PageStore(page_size)
        self._refused: list[Refusal] = []
        self._traps: list[Trap] = []
        self.now = 0
        self.next_wake: int | None = None
        """When ksmd next wakes from its timed sleep; None while it waits to be woken."""
        self._pins: dict[str, KnobValue] = {}
        self._ignored: dict[str, list[Ignored]] = {}
        self._ran = False
        """Whether ``run`` was 1 at some point of the replay."""
        self.settle_batches = 0
        """ksmd's batches inside ``settle`` events so far (each full scan is one)."""
        self.settle_cpu_ns = 0
        """Modelled ksmd CPU time spent inside ``settle`` events so far (ns)."""
        settings, pins = settings or {}, pins or {}
        try:
            start = start_order(settings, pins)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for name, value in start:
            # Written as the trace's ksm events are, with the same side effects.
            knob = KNOB_BY_NAME.get(name)
            problem = "unknown knob" if knob is None else knob.check(value)
            if not problem and name in missing:
                problem = f"Linux {self.kernel.version} has no such knob"
            option = "--pin" if name in pins else "--set"
            if problem:
                raise UsageError(f"{option} {name}={value}: {problem}")
            error = self._write_knob(name, value)
            if error is not None:  # not at the start (no KSM page, advisor checked)
                raise UsageError(f"{option} {name}={value}: Linux refuses it ({error})")
        self._pins = dict(pins)
        self._ignored = {name: [] for name in pins}
        self._set: dict[str, KnobValue] = dict(settings)
        """``--set`` knobs the trace has not changed yet."""
        self._wake_if_idle(0)

    # -- the interface ---------------------------------------------------------

    @property
    def settings(self) -> dict[str, KnobValue | None]:
        missing = self.kernel.missing_knobs
        return {k: None if k in missing else v for k, v in self._knobs.items()}

    @property
    def refused(self) -> list[Refusal]:
        return list(self._refused)

    @property
    def pinned(self) -> list[Pinned]:
        return [
            {"knob": name, "value": value, "ignored": list(self._ignored[name])}
            for name, value in self._pins.items()
        ]

    def traps(self, final: bool = False) -> list[Trap]:
        found, self._traps = self._traps, []
        if final and not self._ran:
            found.append(
                Trap(
                    traps.NEVER_RAN,
                    "run is never 1 in this replay: ksmd never runs, so nothing merges "
                    "(a ksm event with run=1, or --set run=1, starts it)",
                )
            )
        return found

    @property
    def ksmd_work(self) -> KsmdWork:
        """ksmd's modelled work so far (REPORT_FORMAT.md ``RUN.ksmd`` without ``cpu_percent``).

        ``cpu_ns`` is the CPU time ``Ksmd.cpu_ns`` charged (``timing.py``) outside
        ``settle`` events, ``settle_cpu_ns`` the rest; ``visits`` counts every
        visit, in settles too (the ``pages_scanned`` ksmd added).
        """
        return {
            "visits": self.ksmd.c.pages_scanned,
            "wakeups": self.ksmd.work_done.batches - self.settle_batches,
            "cpu_ns": self.ksmd.cpu_ns - self.settle_cpu_ns,
            "settle_cpu_ns": self.settle_cpu_ns,
        }

    def apply(self, event: Event) -> None:
        try:
            self._advance(event.t)
            self.now = event.t
            self.ksmd.now = event.t
            handler = getattr(self, "_on_" + event.op)
            handler(event)
        except NoRoom as e:
            where = f"event {event.index} (t={event.t})"
            raise _at(e, where, _size(event, self.page_size)) from None

    def apply_writes(self, run: WriteRun) -> None:
        """Apply a run of writes: the same as :meth:`apply` on each of ``run.events()``.

        The run is cut where ksmd wakes between two of its events; the writes
        between two wake-ups happen with nothing else running, so they are
        applied together (:meth:`Memory.write_run`).
        """
        t = run.t
        n = len(run)
        i = j = 0
        try:
            while i < n:
                j = i + 1
                self._advance(int(t[i]))
                wake = self.next_wake
                if wake is None or wake >= int(t[n - 1]):
                    j = n  # (a wake-up after the last write may lie beyond 2**64 - 1)
                else:
                    j = int(t.searchsorted(np.uint64(wake), "right"))
                j = max(j, i + 1)
                self.now = self.ksmd.now = int(t[j - 1])
                self._write_run(run, i, j)
                i = j
        except NoRoom as e:
            first, last = run.index + i, run.index + j - 1
            where = f"event {first} (t={int(t[i])})"
            if last > first:
                where = f"events {first} to {last} (t={int(t[i])} to {int(t[j - 1])})"
            pages = int(run.fp_end[j - 1] - (run.fp_end[i - 1] if i else 0))
            raise _at(e, where, f"writes of {pages} pages") from None

    def _write_run(self, run: WriteRun, lo: int, hi: int) -> None:
        """Events ``lo:hi`` of ``run``, with no wake-up of ksmd among them."""
        starts = run.fp_start(lo, hi)
        counts = run.fp_end[lo:hi] - starts
        shift = np.uint64(self.page_size.bit_length() - 1)
        first_page = (run.addr[lo:hi] >> shift).astype(np.int64)
        fps = run.fps[int(starts[0]) : int(run.fp_end[hi - 1])]
        self.mem.write_run(run.pid[lo:hi], first_page, counts, fps)

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        return self._snapshot(label, t, index, with_summary=True)

    def _snapshot(self, label: str, t: int, index: int, with_summary: bool) -> Snap:
        """The snapshot; its ``summary`` (a pass over every mergeable page)
        only ``with_summary``."""
        mode, c, ps, kern = self._mode, self.ksmd.c, self.page_size, self.kernel
        live = [self.mem.mms[pid] for pid in sorted(self.mem.mms)]
        zero = sum(mm.ksm_zero_ptes for mm in live)
        ksm = {
            "pages_shared": c.pages_shared,
            "pages_sharing": c.pages_sharing,
            "pages_unshared": c.pages_unshared,
            "pages_volatile": max(
                0, c.rmap_items - c.pages_shared - c.pages_sharing - c.pages_unshared
            ),
            "pages_scanned": c.pages_scanned if kern.pages_scanned else None,
            "pages_skipped": c.pages_skipped if kern.smart_scan else None,
            "full_scans": self.ksmd.seqnr,
            "stable_node_chains": c.stable_node_chains,
            "stable_node_dups": c.stable_node_dups,
            "ksm_zero_pages": mode.ksm_zero_pages(zero),
            **mode.zero_pages_sharing(c.zero_pages_sharing),
            "general_profit": mode.general_profit(
                c.pages_sharing, mode.saved_zero_pages(zero, c.zero_pages_sharing), c.rmap_items, ps
            )
            if kern.profits
            else None,
        }
        processes = []
        for mm in live:
            slot = self.ksmd.slot_of.get(id(mm))
            rmap = (slot.rmap_items if slot else 0) + mm.inherited_rmap_items
            merging = (slot.merging_pages if slot else 0) + mm.inherited_merging_pages
            processes.append(
                {
                    "pid": mm.pid,
                    "ksm_rmap_items": rmap,
                    "ksm_zero_pages": mode.ksm_zero_pages(mm.ksm_zero_ptes),
                    **mode.process_zero_pages_sharing(mm.zero_pages_sharing),
                    "ksm_merging_pages": merging,
                    "ksm_process_profit": mode.process_profit(
                        merging,
                        mode.saved_zero_pages(mm.ksm_zero_ptes, mm.zero_pages_sharing),
                        rmap,
                        ps,
                    )
                    if kern.profits
                    else None,
                    "ksm_merge_any": mm.merge_any if kern.merge_flags else None,
                    "ksm_mergeable": mm.has_mergeable if kern.merge_flags else None,
                    "rss_anon_pages": mm.rss_anon,
                }
            )
        snap: Snap = {"label": label, "t": t, "event": index}  # type: ignore[typeddict-item]
        if with_summary:
            without = sum(mm.rss_anon for mm in live) + zero
            resident, distinct, zero_filled = self.mem.mergeable_contents()
            ideal = without - resident + distinct
            if zero_filled and not self._knobs.use_zero_pages:
                ideal += 1
            snap["summary"] = summarise(without, self.mem.frames.live, ideal, ps)
        snap["ksm"] = ksm
        snap["processes"] = processes
        snap["memory"] = {
            "anon_frames": self.mem.frames.live,
            "ksm_frames": self.mem.frames.live_ksm,
            "zero_page_maps_by_ksm": zero,
            "zero_page_maps_by_fault": sum(mm.fault_zero_ptes for mm in live),
        }
        snap["events"] = dict(self.mem.events)
        return snap

    def trace(self, sink: Sink) -> None:
        """Hand ksmd's tracepoint events to ``sink`` from now on (``run --tracepoints``;
        see ``tracepoints.py``)."""
        from ksmreplay.tracepoints import Tracer  # (only with --tracepoints)

        self.ksmd.tracer = Tracer(sink, self.mode, self.kernel.version, self.page_size)

    def explain(self) -> Explain:
        """Every page counted as resident without KSM, by why it is (not)
        merged (``explain.py``); computed now, from the state as it is."""
        from ksmreplay.explain import explain  # (only with --explain)

        return explain(self.ksmd, self.page_size)

    def check_invariants(self) -> None:
        from ksmreplay.invariants import validate_engine

        validate_engine(self)

    # -- time ------------------------------------------------------------------

    def _runnable(self) -> bool:
        """``ksmd_should_run()``: run has the MERGE bit and some mm is registered."""
        return self._knobs.run == 1 and bool(self.ksmd.slots)

    def _wake_if_idle(self, t: int) -> None:
        """Wake ksmd from its untimed wait: it runs right after the current instant."""
        if self.next_wake is None and self._runnable():
            self.next_wake = t

    def _advance(self, t: int) -> None:
        """Run every wake-up due strictly before ``t`` (``ksm_scan_thread()``).

        A batch lasts its modelled CPU time (``Ksmd.batch_ns``); then ksmd
        sleeps (``timing.next_wake_ns``), or with ``sleep_millisecs`` = 0
        starts the next batch at once.  Wake-ups with nothing between them run
        as one call to ksmd (see ``Ksmd.batch``) where that cannot change when
        any of them starts: while ksmd sleeps and its period from one wake-up
        to the next is steady, and no batch can cost so much that it ends
        after the tick it started before (:meth:`_steady_period`).  The call
        ends early where a pass ends; the next wake-up follows from the batch
        that ended it.  Not with the scan-time advisor, which changes the
        budget at the end of a pass.  Where no wake-ups can run as one call
        whatever ksmd's state, the native core runs them one after the other,
        each priced and followed by the next as here (``Ksmd.batches``).

        Where ksmd has gone round in circles for a while, the whole circles
        that still fit before ``t`` are skipped (:class:`_Circles`).
        """
        circles = _Circles() if self.skip_idle else None
        ksmd = self.ksmd
        while self.next_wake is not None and self.next_wake < t:
            wake = self.next_wake
            if not self._runnable():
                self.next_wake = None
                break
            budget = self._knobs.pages_to_scan
            sleep = self._knobs.sleep_millisecs
            if budget == 0 and circles is not None:
                # Wake-ups that visit nothing, each as long as the last: skip to
                # the last one before t (the period is steady after the first).
                cost = batch_cost_ns(Work(batches=1))
                first = next_wake_ns(wake, cost, sleep)
                if first < t:
                    period = next_wake_ns(first, cost, sleep) - first
                    skipped = (t - first - 1) // period
                    ksmd.idle_batches(1 + skipped)
                    wake = first + skipped * period
                ksmd.batch(0, wake)
                self.next_wake = next_wake_ns(wake, ksmd.batch_ns, sleep)
                continue
            passes = ksmd.seqnr
            period = self._steady_period(wake, t, budget, sleep)
            if period:
                batches = -(-(t - wake) // period)
                visits = ksmd.batch(budget * batches, wake, budget, period)
                last = batches - 1 if visits == budget * batches else visits // budget
                # (each batch ends before the tick after its start: the sleeps are alike)
                self.next_wake = wake + (last + 1) * period
            else:
                # (in C where no wake-ups could run as one call, whatever the state)
                later = None
                if self._never_one_call(budget, sleep):
                    later = ksmd.batches(budget, wake, t)
                if later is None:
                    ksmd.batch(budget, wake)
                    later = next_wake_ns(wake, ksmd.batch_ns, sleep)
                self.next_wake = later
            if not self._runnable():
                self.next_wake = None
            if (
                circles is not None
                and ksmd.seqnr != passes
                and self.next_wake is not None
                and self.next_wake < t
            ):
                self.next_wake = circles.pass_ended(ksmd, self.next_wake, t, sleep)
        if circles is not None and circles.watching() and ksmd.tracer is not None:
            ksmd.tracer.drop()  # (a circle not finished before t)

    def _never_one_call(self, budget: int, sleep: int) -> bool:
        """Whether no two wake-ups of ``budget`` visits may run as one call
        (:meth:`_steady_period`), whatever ksmd's state: ksmd does not
        sleep, the advisor changes the budget, or no batch is surely short
        enough."""
        return sleep == 0 or self._knobs.advisor_mode != "none" or _never_steady(budget)

    def _steady_period(self, wake: int, t: int, budget: int, sleep: int) -> int:
        """The time from one wake-up to the next, ns, if every wake-up from
        ``wake`` on until ``t`` is as far from the last (several fit, ksmd
        sleeps, the timer's period is steady, the advisor is off, and no batch
        can reach the next tick); else 0."""
        if budget == 0 or self._never_one_call(budget, sleep):
            return 0
        first = next_wake_ns(wake, 0, sleep)
        period = first - wake
        if first >= t or next_wake_ns(first, 0, sleep) - first != period:
            return 0
        c = self.ksmd.c
        batches = -(-(t - wake) // period)
        dups = c.stable_node_dups + budget * batches
        most = worst_batch_ns(budget, c.rmap_items, c.pages_shared + budget * batches, dups)
        return period if batch_wall_ns(most) < JIFFY_NS - wake % JIFFY_NS else 0

    def _advisor_sets_pages_to_scan(self, pages: int) -> None:
        if ADVISOR_OWNS not in self._pins:
            self._knobs.pages_to_scan = pages

    # -- events ----------------------------------------------------------------

    def _pages(self, addr: int, length: int) -> tuple[int, int]:
        ps = self.page_size
        return addr // ps, -(-(addr + length) // ps)

    def _mm(self, pid: int) -> MM:
        mm = self.mem.mms.get(pid)
        if mm is None:
            mm = MM(pid)
            self.mem.add(mm)
        return mm

    def _register(self, mm: MM) -> None:
        """``__ksm_enter()`` unless already registered; wake ksmd if the list was empty."""
        if not self.ksmd.registered(mm) and self.ksmd.enter(mm):
            self._wake_if_idle(self.now)

    def _on_alloc(self, ev: Alloc) -> None:
        mm = self._mm(ev.pid)
        start, end = self._pages(ev.addr, ev.len)
        # ksm_vma_flags(): a new VMA of a merge_any process is born mergeable.
        self.mem.map(mm, start, end, mergeable=mm.merge_any)
        if mm.merge_any:
            self._register(mm)

    def _on_free(self, ev: Free) -> None:
        start, end = self._pages(ev.addr, ev.len)
        self.mem.unmap(self.mem.mms[ev.pid], start, end)

    def _on_write(self, ev: Write) -> None:
        mm = self.mem.mms[ev.pid]
        content = ev.content
        start, end = self._pages(ev.addr, ev.len)
        self._expect(end - start, WRITTEN_PAGE_BYTES)
        if isinstance(content, bytes):
            first, fps = literal_write(
                ev.addr,
                content,
                self.page_size,
                lambda page: self.mem.fingerprint_at(mm, page),
                self.store,
            )
            self.mem.write(mm, first, np.array(fps, np.uint64))
            return
        if isinstance(content, int):
            # (in slices: a write of one fingerprint may cover terabytes)
            for lo in range(start, end, WRITE_SLICE):
                hi = min(lo + WRITE_SLICE, end)
                self.mem.write(mm, lo, np.full(hi - lo, content, np.uint64))
        else:
            self.mem.write(mm, start, np.asarray(content, np.uint64))

    def _on_read(self, ev: Read) -> None:
        start, end = self._pages(ev.addr, ev.len)
        self._expect(end - start, READ_PAGE_BYTES)
        self.mem.read(self.mem.mms[ev.pid], start, end)

    @staticmethod
    def _expect(pages: int, per_page: int) -> None:
        """An event is about to make ``pages`` pages resident, ``per_page`` bytes
        each: fail now if that cannot fit (large ones; the tables check the rest
        as they grow)."""
        if pages * per_page >= EXPECT_FROM:
            check(pages * per_page, "its pages")

    def _on_madvise(self, ev: Madvise) -> None:
        mm = self.mem.mms[ev.pid]
        start, end = self._pages(ev.addr, ev.len)
        if ev.advice == "dontneed":
            self.mem.zap(mm, start, end)
        elif ev.advice == "mergeable":
            # ksm_madvise(): VMAs already mergeable are left alone; the first
            # that is not registers the mm.
            if any(not v.mergeable for v in mm.vmas_in(start, end)):
                self._register(mm)
            self.mem.set_mergeable(mm, start, end, True)
        else:
            for vma in mm.vmas_in(start, end):
                if vma.mergeable:
                    self.ksmd.unmerge(mm, vma.start, vma.end)
            self.mem.set_mergeable(mm, start, end, False)

    def _on_prctl(self, ev: Prctl) -> None:
        mm = self._mm(ev.pid)
        if not self.kernel.merge_any:
            # No PR_SET_MEMORY_MERGE before 6.4: EINVAL, the process is unchanged.
            refusal: Refusal = {
                "event": ev.index,
                "t": ev.t,
                "knob": "merge_any",
                "value": ev.value,
                "error": "EINVAL",
            }
            self._refused.append(refusal)
            return
        if ev.value:
            # ksm_enable_merge_any()
            if mm.merge_any:
                return
            self._register(mm)
            mm.merge_any = True
            for vma in mm.vmas:
                vma.mergeable = True
            mm.merge_adjacent()
        else:
            # ksm_disable_merge_any(): unmerge every mergeable VMA, madvised ones too.
            if not mm.merge_any:
                return
            for vma in mm.vmas:
                if vma.mergeable:
                    self.ksmd.unmerge(mm, vma.start, vma.end)
                    vma.mergeable = False
            mm.merge_adjacent()
            mm.merge_any = False

    def _on_fork(self, ev: Fork) -> None:
        parent = self.mem.mms[ev.pid]
        child = self.mem.fork(parent, ev.child_pid)
        self.mem.add(child)
        if not self.kernel.fork_resets_counters:
            # The child's mm is a copy of the parent's, per-mm KSM counters
            # included; nothing ever takes the copied values out again.
            slot = self.ksmd.slot_of.get(id(parent))
            child.inherited_rmap_items = parent.inherited_rmap_items + (
                slot.rmap_items if slot else 0
            )
            child.inherited_merging_pages = parent.inherited_merging_pages + (
                slot.merging_pages if slot else 0
            )
        # ksm_fork(): a registered parent's child is registered with fresh
        # per-mm counters (Linux 6.18: merging_pages and rmap_items start at 0).
        if self.ksmd.registered(parent):
            self._register(child)

    def _on_exit(self, ev: Exit) -> None:
        mm = self.mem.remove(ev.pid)
        self.ksmd.exit(mm)  # __ksm_exit() comes before the page tables go
        mm.exiting = True
        for vma in mm.vmas:
            self.mem.zap(mm, vma.start, vma.end)
        mm.vmas = []

    def _on_ksm(self, ev: Ksm) -> None:
        knobs = self._knobs
        advisor = knobs.advisor_mode
        for name, value in ev.settings.items():
            if name in self._pins:
                self._ignored[name].append({"event": ev.index, "t": ev.t, "value": value})
                continue
            error: Literal["EBUSY", "EINVAL", "ENOENT"] | None = (
                "ENOENT" if name in self.kernel.missing_knobs else self._write_knob(name, value)
            )
            if error is not None:
                self._refused.append(
                    {"event": ev.index, "t": ev.t, "knob": name, "value": value, "error": error}
                )
        where = f"event {ev.index} (t={ev.t})"
        for name, value in list(self._set.items()):
            if knobs[name] == value:
                continue
            del self._set[name]
            if name in ev.settings:
                how = f"sets {name}={_show(knobs[name])}"
            else:  # a side effect: switching the advisor rewrites pages_to_scan
                how = (
                    f"sets advisor_mode={knobs.advisor_mode}, "
                    f"which sets {name}={_show(knobs[name])}"
                )
            self._traps.append(
                Trap(
                    traps.SET_OVERWRITTEN,
                    f"{where}: the trace {how} over --set {name}={_show(value)} "
                    f"(--pin {name}={_show(value)} keeps it for the whole replay)",
                )
            )
        if ADVISOR_OWNS in self._pins and advisor != "scan-time" == knobs.advisor_mode:
            self._traps.append(
                Trap(
                    traps.PIN_ADVISOR,
                    f"{where}: the trace turns the scan-time advisor on; --pin "
                    f"{ADVISOR_OWNS}={_show(self._pins[ADVISOR_OWNS])} keeps it from "
                    f"changing {ADVISOR_OWNS}",
                )
            )

    def _write_knob(self, name: str, value: KnobValue) -> Literal["EBUSY", "EINVAL"] | None:
        """One sysfs write (``*_store()`` in mm/ksm.c); the errno if Linux refuses it."""
        knobs, ksmd = self._knobs, self.ksmd
        current = knobs[name]
        if name == "run":
            if value != current:
                knobs["run"] = value
                if value == 2:
                    ksmd.unmerge_all()
            if value == 1:
                self._ran = True
                self._wake_if_idle(self.now)
            return None
        if name == "pages_to_scan" and knobs.advisor_mode == "scan-time":
            return "EINVAL"
        if (
            name in ("max_page_sharing", "merge_across_nodes")
            and value != current
            and (ksmd.c.pages_shared or ksmd.remove_all_stable_nodes())
        ):
            return "EBUSY"
        if name == "sleep_millisecs" and value != current and self.next_wake is not None:
            self.next_wake = self.now
        if name == "advisor_mode" and value != current:
            # advisor_mode_store(): a change of advisor resets it
            # (set_advisor_defaults()): scan-time starts from a clean state at
            # advisor_min_pages_to_scan, none goes back to the default budget.
            ksmd.advisor_reset()
            if ADVISOR_OWNS not in self._pins:
                knobs[ADVISOR_OWNS] = (
                    knobs.advisor_min_pages_to_scan
                    if value == "scan-time"
                    else DEFAULT_PAGES_TO_SCAN
                )
        knobs[name] = value
        return None

    def _settle_key(self) -> _SettleKey:
        snap = self._snapshot("", 0, 0, with_summary=False)
        ksm = snap["ksm"]
        return (
            tuple(ksm.get(k) for k in SETTLE_COUNTERS),
            tuple(
                tuple(p[k] for k in sorted(p) if k not in ("rss_anon_pages",))
                for p in snap["processes"]
            ),
        )

    @staticmethod
    def _still_merging(before: _SettleKey, after: _SettleKey) -> list[str]:
        """What a full scan changed of what merging shows (:data:`SETTLE_COUNTERS`
        but ``pages_unshared`` and ``pages_volatile``, and the processes' ksm_stat).

        Those two can swap pages every full scan for ever: smart_scan skips an
        unmerged page on some passes, and a skipped page counts as volatile.
        """
        changed = [
            name
            for name, a, b in zip(SETTLE_COUNTERS, before[0], after[0], strict=True)
            if a != b and name not in ("pages_unshared", "pages_volatile")
        ]
        if before[1] != after[1]:
            changed.append("processes' ksm_stat")
        return changed

    def _on_settle(self, ev: Settle) -> None:
        """Whole full scans back to back, outside trace time, until two change nothing.

        Or until ksmd's list is empty: at once if it is, else after the full
        scan that dropped its last slot (a slot stays, mergeable or not, until
        a walk finds no mergeable VMA in its mm or the mm exited).  Then ksmd
        sleeps as after any batch, or waits to be woken if its list is empty.
        """
        where = f"event {ev.index} (t={ev.t})"
        if self._knobs.run != 1:
            self._traps.append(
                Trap(
                    traps.SETTLE_STOPPED,
                    f"{where}: settle does nothing: run is {self._knobs.run}, not 1, "
                    "so ksmd does not scan",
                )
            )
            return
        if not self.ksmd.slots:
            self._sleep_after_settle()
            return
        before = self._settle_key()
        cpu, batches = self.ksmd.cpu_ns, self.ksmd.work_done.batches
        quiet = 0
        changed: list[str] = []
        for _ in range(ev.max_full_scans):
            if not self.ksmd.slots:
                break
            # A batch without a budget limit ends exactly at the end of a pass.
            self.ksmd.batch(END, self.now)
            after = self._settle_key()
            quiet = quiet + 1 if after == before else 0
            changed = self._still_merging(before, after)
            before = after
            if quiet >= 2:
                break
        else:
            if self.ksmd.slots and changed:
                # Stopped by the limit, with merging still going on.
                self._traps.append(
                    Trap(
                        traps.SETTLE_LIMIT,
                        f"{where}: settle stopped at max_full_scans={ev.max_full_scans} "
                        f"while ksmd was still merging (its last full scan changed "
                        f"{', '.join(changed)}): what follows is not the settled state "
                        "(raise max_full_scans)",
                    )
                )
        self.settle_cpu_ns += self.ksmd.cpu_ns - cpu
        self.settle_batches += self.ksmd.work_done.batches - batches
        self._sleep_after_settle()

    def _sleep_after_settle(self) -> None:
        # As after any batch that ends now.
        sleep = self._knobs.sleep_millisecs
        self.next_wake = next_wake_ns(self.now, 0, sleep) if self._runnable() else None

    def _on_snapshot(self, ev: Snapshot) -> None:
        """Nothing happens: the driver takes the snapshot."""


@cache
def _never_steady(budget: int) -> bool:
    """Whether :meth:`Engine._steady_period`'s bound fails for batches of
    ``budget`` visits in every state: the bound only grows with the items,
    KSM pages and dups it is given, which are at least 0, ``budget`` and
    ``budget`` there, and a batch that costs more than a jiffy reaches the
    next tick wherever it starts."""
    return batch_wall_ns(worst_batch_ns(budget, 0, budget, budget)) >= JIFFY_NS


IDLE_MIN_PASSES = 64
"""Circles are looked for only once half this many passes ran between two
events, or while this many (as long as the last one) still fit before the
next."""

IDLE_TRIES = 4096
"""Passes after which circles are no longer looked for, counted from the
event before them or from the last circles skipped."""

SKIP_LEAST = 2
"""Circles are skipped only this many or more at a time (fewer run as they
come, and the search for a longer circle goes on)."""


class _Circles:
    """Finds where ksmd goes round in circles between two events, and skips them.

    With no event, ksmd's passes soon repeat: smart_scan's ages grow past
    the last one that decides anything (9) and its skips then cycle every 9
    passes; nothing merges any more; the unstable tree is rebuilt alike.  At
    each pass end (while many passes still fit before the next event), a
    hash of ksmd's state (``Ksmd.idle_state``) is kept, alone and with the
    chains' prune phases (``IdleState.phase``); when one comes back ``p``
    passes later, the state is taken in full, ``p`` passes run, and if the
    state is then the same, what one circle of ``p`` passes advanced (full
    scans, pages scanned and skipped, ages, the clocks) is advanced as many
    times as circles fit before the next event (``Ksmd.jump``), or before a
    chain looked at may be pruned (``IdleState.circles``); the rest runs pass
    by pass.  A circle with the same prune phases is preferred: it prunes as
    the ones before it did, so the circles skipped do not stop at a prune.
    The same outcome as running every wake-up, as the tests check.
    """

    __slots__ = (
        "_first",
        "_last_wake",
        "_passes",
        "_phased",
        "_seen",
        "_seen_phased",
        "_target",
        "_tries",
    )

    def __init__(self) -> None:
        self._passes = 0  # (the passes skipped count too)
        self._tries = 0
        self._last_wake: int | None = None
        self._seen: dict[bytes, int] = {}  # a state's hash: the last pass it was seen at
        self._seen_phased: dict[tuple[bytes, tuple[int, ...]], int] = {}  # (with its phase)
        self._first: tuple[IdleState, int] | None = None  # (a state, its pass)
        self._phased = False
        self._target = 0

    def watching(self) -> bool:
        """Whether a circle is being run through to see if it repeats."""
        return self._first is not None

    def pass_ended(self, ksmd: Ksmd, wake: int, t: int, sleep: int) -> int:
        """A pass ended and the next starts at ``wake`` (before ``t``, the next
        event), ksmd sleeping ``sleep`` ms between batches: the time of the
        next wake-up, after any circles skipped."""
        self._passes += 1
        self._tries += 1
        length = None if self._last_wake is None else wake - self._last_wake
        self._last_wake = wake
        if self._tries > IDLE_TRIES:
            self._stop_watching(ksmd)
            return wake
        if self._first is not None and self._passes == self._target:
            skipped = self._compare(ksmd, wake, t, sleep)
            if skipped is not None:
                return skipped
        if self._first is None:
            # Look once many passes ran, or many more fit before t.
            many = self._passes >= IDLE_MIN_PASSES // 2
            if not many and (length is None or t - wake < IDLE_MIN_PASSES * length):
                return wake
        state = ksmd.idle_state(wake)
        digest = state.digest()
        phased = (digest, state.phase)
        before, again = self._seen_phased.get(phased), True
        if before is None:
            before, again = self._seen.get(digest), False
        if len(self._seen_phased) > IDLE_TRIES:
            self._seen_phased.clear()  # (a bound on what is kept over many circles skipped)
        self._seen[digest] = self._seen_phased[phased] = self._passes
        # (a circle of the same phases takes the place of one watched without)
        if before is not None and (self._first is None or (again and not self._phased)):
            self._stop_watching(ksmd)
            self._first = (ksmd.idle_state(wake, keep=True), self._passes)
            self._target = 2 * self._passes - before
            self._phased = again
            if ksmd.tracer is not None:
                ksmd.tracer.capture()  # (a skipped circle emits what this one does)
        return wake

    def _compare(self, ksmd: Ksmd, wake: int, t: int, sleep: int) -> int | None:
        """The watched circle ended at ``wake``: skip the circles like it that
        fit before ``t``, if there are enough, and return the next wake-up;
        None if none are skipped."""
        assert self._first is not None
        (first, first_pass), self._first = self._first, None
        last = ksmd.idle_state(wake, keep=True)
        circle = wake - first.wake
        n = first.circles(last, t)
        if n < SKIP_LEAST or (sleep and circle % timer_granularity_ns(sleep)):
            # (a sleep ends on the timer's ticks: only whole buckets repeat alike)
            if ksmd.tracer is not None:
                ksmd.tracer.drop()
            return None
        ksmd.jump(n, first, last)
        # The passes skipped count, and the states seen with their phases
        # stay, so that a circle of the same phases is still found across
        # them (they stop before a prune).  The states seen without are
        # forgotten: the circle that comes next holds that prune.
        self._passes += n * (self._passes - first_pass)
        self._seen.clear()
        self._tries = 0
        self._last_wake = wake + n * circle
        return self._last_wake

    def _stop_watching(self, ksmd: Ksmd) -> None:
        if self._first is not None:
            self._first = None
            if ksmd.tracer is not None:
                ksmd.tracer.drop()


def _show(value: KnobValue) -> str:
    """A knob value as a message shows it."""
    return str(value)


def _size(event: Event, page_size: int) -> str:
    """What ``event`` declares, for a message: ``write of 1.0 TiB (268435456 pages)``."""
    length = getattr(event, "len", None)
    if isinstance(length, int):
        return f"{event.op} of {format_size(length)} ({-(-length // page_size)} pages)"
    return event.op


def _at(error: NoRoom, where: str, what: str) -> ResourceError:
    """``error`` as one line naming the event(s) ``where`` and what they declare."""
    return ResourceError(
        f"{where}: {what}: the replay needs {format_size(error.need)} more memory "
        f"(for {error.what}), and only {format_size(error.room)} may be taken "
        f"(set {MEMORY_ENV}=SIZE to change the limit)"
    )
