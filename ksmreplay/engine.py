"""The replay engine: one simulated kernel (VM + ksmd) driven by trace events.

It offers the two-call interface of ``simulator.py``: :meth:`Engine.apply`
and :meth:`Engine.snapshot`.  Time follows the rules written there: ksmd's
wake-ups run between instants, never inside one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from ksmreplay.arrays import MEMORY_ENV, NoRoom, check, format_size
from ksmreplay.content import PageStore, literal_write
from ksmreplay.errors import ResourceError, UsageError
from ksmreplay.events import (
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
from ksmreplay.knobs import DEFAULTS, KNOB_BY_NAME, KnobValue
from ksmreplay.ksm import END, IdleState, Ksmd
from ksmreplay.modes import MODES
from ksmreplay.report import Explain, Refusal, Snap
from ksmreplay.timing import next_wake_ns, sleep_ns
from ksmreplay.vm import MM, FrameTable

WRITTEN_PAGE_BYTES = 8 + FrameTable.ROW_BYTES
"""The least a written page costs: its PTE and its frame (bytes)."""

READ_PAGE_BYTES = 8
"""The least a page read without a write costs: its PTE (bytes)."""

EXPECT_FROM = 64 << 20
"""Events that make pages resident are checked against the memory budget up
front from this many bytes on."""

WRITE_SLICE = 1 << 20
"""Pages of a one-fingerprint write written at once."""

DEFAULT_PAGES_TO_SCAN = 100
"""pages_to_scan after leaving the scan-time advisor (``DEFAULT_PAGES_TO_SCAN``)."""


class Engine:
    """Replays one trace in one mode.  See ``simulator.Simulator``."""

    skip_idle = True
    """Skip ksmd's circles between two events (see :meth:`_advance`); off, every
    wake-up runs (the tests compare the two)."""

    def __init__(
        self, mode: str, page_size: int, settings: Mapping[str, KnobValue] | None = None
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"mode {mode!r} is not available (modes: {', '.join(MODES)})")
        self.mode = mode
        self._mode = MODES[mode]
        self.page_size = page_size
        self._knobs: dict[str, KnobValue] = dict(DEFAULTS)
        for name, value in (settings or {}).items():
            knob = KNOB_BY_NAME.get(name)
            problem = "unknown knob" if knob is None else knob.check(value)
            if problem:
                raise UsageError(f"--set {name}={value}: {problem}")
            self._knobs[name] = value
        self.ksmd = Ksmd(self._mode, self._knobs.__getitem__, self._advisor_sets_pages_to_scan)
        self.mem = self.ksmd.mem
        self.store = PageStore(page_size)
        self._refused: list[Refusal] = []
        self.now = 0
        self.next_wake: int | None = None
        """When ksmd next wakes from its timed sleep; None while it waits to be woken."""
        self._wake_if_idle(0)

    # -- the interface ---------------------------------------------------------

    @property
    def settings(self) -> dict[str, KnobValue]:
        return dict(self._knobs)

    @property
    def refused(self) -> list[Refusal]:
        return list(self._refused)

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
                j = n if wake is None else int(t.searchsorted(np.uint64(wake), "right"))
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
        mode, c, ps = self._mode, self.ksmd.c, self.page_size
        live = [self.mem.mms[pid] for pid in sorted(self.mem.mms)]
        zero = sum(mm.ksm_zero_ptes for mm in live)
        ksm = {
            "pages_shared": c.pages_shared,
            "pages_sharing": c.pages_sharing,
            "pages_unshared": c.pages_unshared,
            "pages_volatile": max(
                0, c.rmap_items - c.pages_shared - c.pages_sharing - c.pages_unshared
            ),
            "pages_scanned": c.pages_scanned,
            "pages_skipped": c.pages_skipped,
            "full_scans": self.ksmd.seqnr,
            "stable_node_chains": c.stable_node_chains,
            "stable_node_dups": c.stable_node_dups,
            "ksm_zero_pages": mode.ksm_zero_pages(zero),
            **mode.zero_pages_sharing(c.zero_pages_sharing),
            "general_profit": mode.general_profit(
                c.pages_sharing, mode.saved_zero_pages(zero, c.zero_pages_sharing), c.rmap_items, ps
            ),
        }
        processes = []
        for mm in live:
            slot = self.ksmd.slot_of.get(id(mm))
            rmap = slot.rmap_items if slot else 0
            merging = slot.merging_pages if slot else 0
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
                    ),
                    "ksm_merge_any": mm.merge_any,
                    "ksm_mergeable": mm.has_mergeable,
                    "rss_anon_pages": mm.rss_anon,
                }
            )
        return {
            "label": label,
            "t": t,
            "event": index,
            "ksm": ksm,
            "processes": processes,
            "memory": {
                "anon_frames": self.mem.frames.live,
                "ksm_frames": self.mem.frames.live_ksm,
                "zero_page_maps_by_ksm": zero,
                "zero_page_maps_by_fault": sum(mm.fault_zero_ptes for mm in live),
            },
            "events": dict(self.mem.events),
        }

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
        return self._knobs["run"] == 1 and bool(self.ksmd.slots)

    def _wake_if_idle(self, t: int) -> None:
        """Wake ksmd from its untimed wait: it runs right after the current instant."""
        if self.next_wake is None and self._runnable():
            self.next_wake = t

    def _advance(self, t: int) -> None:
        """Run every wake-up due strictly before ``t`` (``ksm_scan_thread()``).

        Wake-ups with nothing between them run as one call to ksmd (see
        ``Ksmd.batch``): as many as fit before ``t`` if each batch uses its
        whole budget; the call ends early where a pass ends, and the next
        wake-up follows from the batch that ended it.  Not with the scan-time
        advisor, which changes the budget at the end of a pass.

        Where ksmd has gone round in circles for a while, the whole circles
        that still fit before ``t`` are skipped (:class:`_Circles`).
        """
        circles = _Circles() if self.skip_idle else None
        while self.next_wake is not None and self.next_wake < t:
            wake = self.next_wake
            if not self._runnable():
                self.next_wake = None
                break
            budget = int(self._knobs["pages_to_scan"])
            sleep = int(self._knobs["sleep_millisecs"])
            period = next_wake_ns(0, budget, sleep)  # from one full batch to the next
            batches = -(-(t - wake) // period)
            if budget == 0 and circles is not None:
                # Wake-ups that visit nothing: skip to the last one before t.
                wake += (batches - 1) * period
                self.ksmd.batch(0, wake)
                self.next_wake = wake + period
                continue
            passes = self.ksmd.seqnr
            if batches > 1 and budget > 0 and self._knobs["advisor_mode"] == "none":
                visits = self.ksmd.batch(budget * batches, wake, budget, period)
                if visits == budget * batches:
                    last, visits = batches - 1, budget
                else:
                    last, visits = divmod(visits, budget)
                wake += last * period
            else:
                visits = self.ksmd.batch(budget, wake)
            self.next_wake = next_wake_ns(wake, visits, sleep) if self._runnable() else None
            if (
                circles is not None
                and self.ksmd.seqnr != passes
                and self.next_wake is not None
                and self.next_wake < t
            ):
                self.next_wake = circles.pass_ended(self.ksmd, self.next_wake, t)

    def _advisor_sets_pages_to_scan(self, pages: int) -> None:
        self._knobs["pages_to_scan"] = pages

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
        for name, value in ev.settings.items():
            error = self._write_knob(name, value)
            if error is not None:
                self._refused.append(
                    {"event": ev.index, "t": ev.t, "knob": name, "value": value, "error": error}
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
                self._wake_if_idle(self.now)
            return None
        if name == "pages_to_scan" and knobs["advisor_mode"] == "scan-time":
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
            ksmd.advisor_reset()
            knobs["pages_to_scan"] = (
                knobs["advisor_min_pages_to_scan"]
                if value == "scan-time"
                else DEFAULT_PAGES_TO_SCAN
            )
        knobs[name] = value
        return None

    def _settle_key(self) -> tuple[object, ...]:
        snap = self.snapshot("", 0, 0)
        ksm = snap["ksm"]
        return (
            tuple(
                ksm.get(k)
                for k in (
                    "pages_shared",
                    "pages_sharing",
                    "pages_unshared",
                    "pages_volatile",
                    "ksm_zero_pages",
                    "zero_pages_sharing",
                    "stable_node_chains",
                    "stable_node_dups",
                )
            ),
            tuple(
                tuple(p[k] for k in sorted(p) if k not in ("rss_anon_pages",))
                for p in snap["processes"]
            ),
        )

    def _on_settle(self, ev: Settle) -> None:
        """Whole full scans back to back, outside trace time, until two change nothing.

        Or until ksmd's list is empty: at once if it is, else after the full
        scan that dropped its last slot (a slot stays, mergeable or not, until
        a walk finds no mergeable VMA in its mm or the mm exited).  Then ksmd
        sleeps as after any batch, or waits to be woken if its list is empty.
        """
        if self._knobs["run"] != 1:
            return
        before = self._settle_key() if self.ksmd.slots else ()
        quiet = 0
        for _ in range(ev.max_full_scans):
            if not self.ksmd.slots:
                break
            # A batch without a budget limit ends exactly at the end of a pass.
            self.ksmd.batch(END, self.now)
            after = self._settle_key()
            quiet = quiet + 1 if after == before else 0
            before = after
            if quiet >= 2:
                break
        self.next_wake = (
            self.now + sleep_ns(int(self._knobs["sleep_millisecs"])) if self._runnable() else None
        )

    def _on_snapshot(self, ev: Snapshot) -> None:
        """Nothing happens: the driver takes the snapshot."""


IDLE_MIN_PASSES = 64
"""Circles are looked for only once half this many passes ran between two
events, or while this many (as long as the last one) still fit before the
next."""

IDLE_TRIES = 4096
"""Passes between two events after which circles are no longer looked for."""


class _Circles:
    """Finds where ksmd goes round in circles between two events, and skips them.

    With no event, ksmd's passes soon repeat: smart_scan's ages grow past
    the last one that decides anything (9) and its skips then cycle every 9
    passes; nothing merges any more; the unstable tree is rebuilt alike.  At
    each pass end (while many passes still fit before the next event), a
    hash of ksmd's state (``Ksmd.idle_state``) is kept; when one comes back
    ``p`` passes later, the state is taken in full, ``p`` passes run, and if
    the state is then the same, what one circle of ``p`` passes advanced
    (full scans, pages scanned and skipped, ages, the clocks) is advanced as
    many times as circles fit before the next event (``Ksmd.jump``); the
    rest runs pass by pass.  The same outcome as running every wake-up, as
    the tests check.
    """

    __slots__ = ("_first", "_last_wake", "_passes", "_seen", "_target")

    def __init__(self) -> None:
        self._passes = 0
        self._last_wake: int | None = None
        self._seen: dict[bytes, int] = {}
        self._first: tuple[IdleState, int] | None = None
        self._target = 0

    def pass_ended(self, ksmd: Ksmd, wake: int, t: int) -> int:
        """A pass ended and the next starts at ``wake`` (before ``t``, the next
        event): the time of the next wake-up, after any circles skipped."""
        self._passes += 1
        length = None if self._last_wake is None else wake - self._last_wake
        self._last_wake = wake
        if self._passes > IDLE_TRIES:
            return wake
        if self._first is None:
            # Look once many passes ran, or many more fit before t.
            many = self._passes >= IDLE_MIN_PASSES // 2
            if not many and (length is None or t - wake < IDLE_MIN_PASSES * length):
                return wake
            digest = ksmd.idle_state(wake).digest()
            before = self._seen.get(digest)
            self._seen[digest] = self._passes
            if before is not None:
                self._first = (ksmd.idle_state(wake, keep=True), wake)
                self._target = 2 * self._passes - before
            return wake
        if self._passes < self._target:
            return wake
        (first, first_wake), self._first = self._first, None
        self._seen.clear()
        last = ksmd.idle_state(wake, keep=True)
        if not last.same(first):
            return wake
        circle = wake - first_wake
        n = (t - wake) // circle
        if n < 1:
            return wake
        ksmd.jump(n, first, last)
        self._last_wake = wake + n * circle
        return self._last_wake


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
