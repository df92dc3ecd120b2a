"""Replay a trace on the running kernel and report what its KSM shows.

See :func:`execute`.  Method, in short:

* one worker process (``worker.c``) per trace pid; trace address ``a`` is
  mapped at ``a + offset`` where ``offset`` puts the trace above
  :data:`WINDOW_LO` (the worker's own memory lies outside the window and is
  kept unmergeable);
* events run at their ``t`` in real time.  While an instant (the events that
  share a ``t``) runs, ksmd is held (``run`` = 0); afterwards ``run`` goes back
  to the trace's value and trace time passes in real time;
* ``settle`` drives ksmd one full scan at a time: ``pages_to_scan`` is made
  huge (a batch ends at the end of a pass, so one batch is exactly one full
  scan) and ``sleep_millisecs`` long.  Each scan starts with a wake-up: writing
  ``run`` wakes ksmd from its wait for work, changing ``sleep_millisecs`` from
  its timed sleep.  Whether and when ksmd has been through its loop is read
  from its own ``/proc`` entry (it sleeps again: one more voluntary context
  switch, state ``S`` off the CPU), never guessed from elapsed time; a wake-up
  after which ksmd sleeps again without scanning a page or ending a pass means
  its list of processes is empty, and the settle ends.  Counters are read
  between full scans.  Afterwards both knobs get the trace's values back and
  ksmd stays held for ``sleep_millisecs`` of trace time, as in the simulator;
* snapshots read ``/sys/kernel/mm/ksm``, ``/proc/<pid>/ksm_stat`` and the page
  tables (``/proc/<pid>/pagemap`` + ``/proc/kpageflags``) of the trace's own
  mappings only.  With ``ksmd_clock=True`` each snapshot also carries a
  ``live`` section: ksmd's own CPU time since the replay started (the first
  field of ``/proc/<ksmd>/schedstat``, ns, read while ksmd is held, so no
  batch is half counted) and the real time since then (ns).  It is what the
  CPU model (``bench/cpu_model.py``) and the timed scenarios' spreads are
  measured with; without it reports are as before;
* with ``tracepoints``, the kernel's own KSM trace events are read through a
  tracefs instance of the replay's own (``tracefs.py``) at the start of every
  instant (ksmd held: what it did since, and what the last instant's events
  made it do), around a fork, after every full scan of a settle and at the
  end, and handed on in the simulator's form (``tracefs.Mapper``).  An event
  gets the trace time of the instant it came in, or, between instants, the
  time since the last instant ended (from the event's own time stamp).

Every snapshot has its ``summary`` (REPORT_FORMAT.md), measured as the
simulator counts it: resident pages with and without KSM from the page
tables; the ideal from the contents of the pages themselves, read through
``/proc/<pid>/mem`` (present pages only, so nothing is faulted in, while
ksmd is held) and the ``mg`` flag of the mappings in ``/proc/<pid>/smaps``.
The run has ``milestones`` (from the snapshots) and ``ksmd``: ``visits`` are
the ``pages_scanned`` the replay added (null on kernels without that
counter), ``cpu_ns`` and ``settle_cpu_ns`` ksmd's own CPU time
(``/proc/<ksmd>/schedstat``) outside and inside ``settle`` events (null when
ksmd cannot be seen), and ``wakeups`` is null: nothing the kernel shows
counts ksmd's batches (its voluntary context switches also count waits
inside a batch and its waits for ``run``).

Ground truth the kernel does not count (the ``memory`` and ``events``
sections) is derived from the page tables:

* a zero-page PTE is "by fault" when the trace read that page while it was
  not populated and has not written, dropped or unmapped it since (page tables
  cannot show the dirty bit that marks KSM's zero PTEs); every other zero-page
  PTE was placed by KSM;
* ``events`` compare page tables before and after what changed them: between
  instants and across a ``settle`` only ksmd runs, so a PTE that went from a
  private frame to a KSM frame is a merge (a frame that became a KSM page in
  place counts once, however many PTEs map it: the kernel turned one page of a
  pair into the KSM page), and one that went to the zero page a zero-page
  merge; a write counts the KSM pages and KSM zero PTEs it hit; unmerging
  (MADV_UNMERGEABLE, prctl off, run=2) counts the KSM pages and KSM zero PTEs
  that became private.  With ``observe_events=False`` none of this is read,
  the counts stay 0 and the run says ``"events_observed": false``; so it is
  on a kernel whose page flags mark every anonymous page KSM (see
  :func:`probe_pages`), where ``memory.ksm_frames`` is None too.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ksmreplay import signals
from ksmreplay.arrays import consecutive_runs
from ksmreplay.errors import Stopped
from ksmreplay.ksm.knobs import DEFAULTS, KNOBS, KnobValue, start_order
from ksmreplay.live import kernel, tracefs
from ksmreplay.live.kernel import KsmFiles, KsmGuard, LiveKernelError, RefusedWrite
from ksmreplay.live.machine import LOCAL, LocalMachine, Machine
from ksmreplay.live.tracefs import KsmEvents, Mapper
from ksmreplay.live.worker import (
    ADVICE,
    MADV_UNMERGEABLE,
    OP_FILL,
    OP_INIT,
    OP_MADVISE,
    OP_MMAP,
    OP_MUNMAP,
    OP_PRCTL,
    OP_READ,
    Worker,
    WorkerError,
    worker_binary,
)
from ksmreplay.procfs import (
    ANON,
    KPF_KSM,
    KPF_ZERO_PAGE,
    KSM,
    NONE,
    PM_PFN_MASK,
    PM_PRESENT,
    ZERO,
    classify,
    parse_maps,
    read_kpageflags,
    read_pagemap,
)
from ksmreplay.report import (
    EVENT_COUNTERS,
    KSM_COUNTERS,
    REPORT_VERSION,
    MilestoneTracker,
    Refusal,
    Report,
    Run,
    Snap,
    summarise,
)
from ksmreplay.timing import jiffies_ns
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Header,
    Ksm,
    Madvise,
    Prctl,
    Read,
    Settle,
    Snapshot,
    Write,
)
from ksmreplay.tracepoints import Sink
from ksmreplay.vm.content import fingerprint_pages

WINDOW_LO = 0x1000_0000_0000
"""Lowest live address of trace memory (16 TiB)."""
WINDOW_HI = 0x7000_0000_0000
"""Trace memory stays below this (the worker's stack and vDSO live above)."""
USER_TOP = {"x86_64": 0x7FFF_FFFF_F000, "aarch64": 0xFFFF_FFFF_F000}
GIB = 1 << 30

SETTLE_PAGES_TO_SCAN = 1 << 30
"""pages_to_scan during a settle: more than any pass, so one batch = one full scan."""
SETTLE_SLEEP_MS = 600_000
"""sleep_millisecs during a settle: ksmd sleeps until kicked."""
SETTLE_TIMEOUT_S = 600.0
"""Longest wait for ksmd to finish a batch during a settle, seconds."""
POLL_S = 0.0005
"""Interval between two looks at ksmd while waiting for it, seconds."""

FZERO = 4
KZERO = 5
"""Refined page kinds: zero-page PTE placed by a read fault / by KSM."""

MEM_READ_PAGES = 256
"""Pages read from ``/proc/<pid>/mem`` at a time (for the summary's ideal)."""

ProgressCallback = Callable[[int, int], None]
PageKey = tuple[int, int]
"""(process serial, trace page number)."""


@dataclass
class Proc:
    """One live trace process."""

    pid: int
    serial: int
    worker: Worker
    pages: set[int] = field(default_factory=set)
    populated: set[int] = field(default_factory=set)
    fault_zero: set[int] = field(default_factory=set)


def _runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, count) runs."""
    ordered = np.array(sorted(pages), np.int64)
    lo, hi = consecutive_runs(ordered)
    return list(zip(ordered[lo].tolist(), (hi - lo).tolist(), strict=True))


def address_offset(events: list[Event]) -> int:
    """The offset that puts every trace mapping inside the live window."""
    lo = min((e.addr for e in events if isinstance(e, Alloc)), default=0)
    hi = max((e.addr + e.len for e in events if isinstance(e, Alloc)), default=0)
    if WINDOW_LO + hi <= WINDOW_HI:
        return WINDOW_LO
    offset = WINDOW_LO - (lo // GIB) * GIB
    if offset + hi > WINDOW_HI:
        raise LiveKernelError(
            f"the trace's mappings span {hi - lo:#x} bytes, more than the live address window "
            f"({WINDOW_HI - WINDOW_LO:#x} bytes)"
        )
    return offset


class LiveReplay:
    """The state of one replay on the kernel (use :func:`execute`)."""

    def __init__(
        self,
        page_size: int,
        guard: KsmGuard,
        machine: Machine,
        offset: int,
        observe_events: bool,
        ksmd_clock: bool = False,
    ) -> None:
        self.ps = page_size
        self.guard = guard
        self.ksm_files: KsmFiles = guard.ksm
        self.machine = machine
        self.offset = offset
        self.observe = observe_events
        self.procs: dict[int, Proc] = {}
        self.serial = 0
        self.trace_run: int = 0
        self.kernel_run: int = 0
        self.refused: list[Refusal] = []
        self.events = dict.fromkeys(EVENT_COUNTERS, 0)
        self.baseline: dict[PageKey, tuple[int, int]] = {}
        self.settled = False
        self.ksmd_pid = _find_ksmd(machine)
        self.top = USER_TOP.get(machine.arch(), USER_TOP["x86_64"])
        self.zpfn, self.ksm_flag = probe_pages(machine, page_size, self.top)
        if not self.ksm_flag:
            self.observe = False
        counters = self.ksm_files.read_counters()
        self.scanned0 = counters.get("pages_scanned")
        self.skipped0 = counters.get("pages_skipped")
        self.full_scans0 = counters.get("full_scans", 0)
        self.clock = ksmd_clock
        self.started_ns = time.monotonic_ns()
        self.cpu0 = self.ksmd_cpu_ns() if ksmd_clock else 0
        self.cpu_start = self.ksmd_cpu_or_none()
        self.settle_cpu: int | None = 0 if self.cpu_start is not None else None
        self.tracing: tuple[KsmEvents, Mapper] | None = None
        """The kernel's KSM events and their mapping (``exec --tracepoints``), or None."""
        self.now_t = 0
        """The trace time of the instant running (ns)."""
        self.prev_t = 0
        self.released_ns = 0
        """When ksmd was last let go between instants (``time.monotonic_ns``)."""

    # ----------------------------------------------------------- tracepoints

    def drain(self, between: bool = False) -> None:
        """Hand on the kernel's KSM events since the last read: at the time of
        the instant running, or (``between``: read as an instant starts) after
        the last instant by as long as the event came after ksmd was let go."""
        if self.tracing is None:
            return
        events, mapper = self.tracing
        raw = events.read()
        if not raw:
            return
        if between and self.now_t > self.prev_t:
            last = self.now_t - 1

            def when(ts: int) -> int:
                return min(self.prev_t + max(ts - self.released_ns, 0), last)

        else:

            def when(ts: int) -> int:
                return self.now_t

        mapper.events(raw, when)

    # ------------------------------------------------------------------ ksmd

    def ksmd_cpu_ns(self) -> int:
        """ksmd's CPU time so far (``/proc/<ksmd>/schedstat``, first field), ns."""
        return int(self.ksmd_file("schedstat").split()[0])

    def ksmd_cpu_or_none(self) -> int | None:
        """:meth:`ksmd_cpu_ns`, or None when ksmd cannot be seen or its schedstat read."""
        if self.ksmd_pid is None:
            return None
        try:
            return self.ksmd_cpu_ns()
        except (LiveKernelError, ValueError, IndexError):
            return None

    def ksmd_cost(self, duration_ns: int, visits: int | None) -> dict[str, Any]:
        """``RUN.ksmd`` as the kernel lets it be known (the module says what is null)."""
        end = self.ksmd_cpu_or_none()
        cpu: int | None = None
        if end is not None and self.cpu_start is not None and self.settle_cpu is not None:
            cpu = end - self.cpu_start - self.settle_cpu
        percent = None
        if cpu is not None:
            percent = round(100 * cpu / duration_ns, 2) if duration_ns else 0.0
        return {
            "visits": visits,
            "wakeups": None,
            "cpu_ns": cpu,
            "cpu_percent": percent,
            "settle_cpu_ns": self.settle_cpu if cpu is not None else None,
        }

    def hold(self) -> None:
        """Stop ksmd between batches (the write waits for a running batch)."""
        if self.kernel_run == 1:
            self.guard.write("run", 0)
            self.kernel_run = 0

    def release(self) -> None:
        """Give ksmd the trace's ``run`` back."""
        if self.trace_run == 1 and self.kernel_run != 1:
            self.guard.write("run", 1)
            self.kernel_run = 1

    # ------------------------------------------------------------ processes

    def proc(self, pid: int) -> Proc:
        p = self.procs.get(pid)
        if p is None:
            raise LiveKernelError(f"trace pid {pid} does not exist")
        return p

    def new_proc(self, pid: int, worker: Worker) -> Proc:
        self.serial += 1
        p = Proc(pid, self.serial, worker)
        self.procs[pid] = p
        if self.tracing is not None:
            self.tracing[1].worker(worker.pid, pid)
        return p

    def spawn(self, pid: int) -> Proc:
        worker = Worker.spawn(self.machine)
        p = self.new_proc(pid, worker)
        worker.call(OP_INIT, self.ps, WINDOW_LO, WINDOW_HI, self.top)
        return p

    def live(self, addr: int) -> int:
        return addr + self.offset

    def page_range(self, addr: int, length: int) -> range:
        return range(addr // self.ps, -(-(addr + length) // self.ps))

    # ---------------------------------------------------------- observation

    def observe_pages(self, p: Proc, pages: Iterable[int]) -> dict[PageKey, tuple[int, int]]:
        """Kind and frame of each page of ``p`` (zero PTEs refined to FZERO/KZERO)."""
        out: dict[PageKey, tuple[int, int]] = {}
        for first, count in _runs(pages):
            entries = read_pagemap(
                p.worker.pid, self.live(first * self.ps), count, self.ps, self.machine
            ).tolist()
            view = classify(entries, self.zpfn, self.machine)
            if view.thp:
                raise LiveKernelError(
                    "a replayed page is part of a huge page; live replay needs small pages"
                )
            for i, (kind, pfn) in enumerate(zip(view.kinds, view.pfns, strict=True)):
                page = first + i
                if kind == ZERO:
                    kind = FZERO if page in p.fault_zero else KZERO
                out[(p.serial, page)] = (kind, pfn)
        return out

    def observe_all(self) -> dict[PageKey, tuple[int, int]]:
        out: dict[PageKey, tuple[int, int]] = {}
        for p in self.procs.values():
            out.update(self.observe_pages(p, p.pages))
        if self.tracing is not None:
            pids = {p.serial: p.pid for p in self.procs.values()}
            kinds = {ANON: tracefs.ANON, KSM: tracefs.KSM, KZERO: tracefs.KSM_ZERO}
            self.tracing[1].look(
                {
                    (pids[serial], page): (kinds.get(kind, tracefs.OTHER), pfn)
                    for (serial, page), (kind, pfn) in out.items()
                }
            )
        return out

    def mark_baseline(self) -> None:
        if self.observe:
            self.baseline = self.observe_all()

    def account_ksmd(self) -> None:
        """Count what ksmd did to page tables since the baseline."""
        if not self.observe:
            return
        now = self.observe_all()
        in_place: set[int] = set()
        for key, (kind, pfn) in now.items():
            old = self.baseline.get(key)
            if old is None or old[0] != ANON:
                continue
            if kind == KSM:
                if pfn == old[1]:
                    in_place.add(pfn)
                else:
                    self.events["merges"] += 1
            elif kind == KZERO:
                self.events["zero_pages_merged"] += 1
        self.events["merges"] += len(in_place)
        self.baseline = now

    def account_unmerge(
        self, before: Mapping[PageKey, tuple[int, int]], after: Mapping[PageKey, tuple[int, int]]
    ) -> None:
        for key, (kind, _) in before.items():
            new = after.get(key, (NONE, 0))[0]
            if kind == KSM and new != KSM:
                self.events["unshared_by_unmerge"] += 1
            elif kind == KZERO and new == ANON:
                self.events["zero_pages_unshared"] += 1

    # --------------------------------------------------------------- events

    def apply(self, ev: Event) -> Snap | None:
        if isinstance(ev, Alloc):
            p = self.procs.get(ev.pid) or self.spawn(ev.pid)
            p.worker.call(OP_MMAP, self.live(ev.addr), ev.len)
            p.pages.update(self.page_range(ev.addr, ev.len))
        elif isinstance(ev, Free):
            p = self.proc(ev.pid)
            p.worker.call(OP_MUNMAP, self.live(ev.addr), ev.len)
            gone = set(self.page_range(ev.addr, ev.len))
            p.pages -= gone
            p.populated -= gone
            p.fault_zero -= gone
        elif isinstance(ev, Write):
            self.write(ev)
        elif isinstance(ev, Read):
            p = self.proc(ev.pid)
            pages = self.page_range(ev.addr, ev.len)
            p.worker.call(OP_READ, self.live(pages.start * self.ps), len(pages) * self.ps)
            for page in pages:
                if page not in p.populated:
                    p.populated.add(page)
                    p.fault_zero.add(page)
        elif isinstance(ev, Madvise):
            self.madvise(ev)
        elif isinstance(ev, Prctl):
            self.prctl(ev)
        elif isinstance(ev, Fork):
            parent = self.proc(ev.pid)
            if ev.child_pid in self.procs:
                raise LiveKernelError(f"trace pid {ev.child_pid} already exists")
            if self.tracing is not None:
                self.drain()  # (the child's ksm_enter is the parent's: read it alone)
                self.tracing[1].fork((ev.pid, ev.child_pid))
            child = self.new_proc(ev.child_pid, parent.worker.fork())
            if self.tracing is not None:
                self.drain()
                self.tracing[1].fork(None)
            child.pages = set(parent.pages)
            child.populated = set(parent.populated)
            child.fault_zero = set(parent.fault_zero)
        elif isinstance(ev, Exit):
            p = self.proc(ev.pid)
            p.worker.exit()
            del self.procs[ev.pid]
        elif isinstance(ev, Ksm):
            self.ksm(ev)
        elif isinstance(ev, Settle):
            self.settle(ev.max_full_scans)
        elif isinstance(ev, Snapshot):
            return self.snapshot(ev.label, ev.t, ev.index)
        return None

    def write(self, ev: Write) -> None:
        p = self.proc(ev.pid)
        pages = self.page_range(ev.addr, ev.len)
        if self.observe:
            for kind, _ in self.observe_pages(p, pages).values():
                if kind == KSM:
                    self.events["cow_breaks_ksm"] += 1
                elif kind == KZERO:
                    self.events["cow_breaks_zero"] += 1
        content = ev.content
        if isinstance(content, bytes):
            p.worker.write_bytes(self.live(ev.addr), content)
        elif isinstance(content, np.ndarray):
            p.worker.fill_list(self.live(ev.addr), ev.len, content.astype("<u8").tobytes())
        else:
            p.worker.call(OP_FILL, self.live(ev.addr), ev.len, int(content))
        p.populated.update(pages)
        p.fault_zero.difference_update(pages)

    def prctl(self, ev: Prctl) -> None:
        p = self.procs.get(ev.pid) or self.spawn(ev.pid)
        before = self.observe_pages(p, p.pages) if self.observe and not ev.value else {}
        try:
            p.worker.call(OP_PRCTL, WINDOW_LO, WINDOW_HI, int(ev.value))
        except WorkerError as e:
            # Kernels before 6.4 have no PR_SET_MEMORY_MERGE: the call fails with
            # EINVAL and the process stays as it was, as on that kernel.
            if e.errno != errno.EINVAL:
                raise
            refusal = {"event": ev.index, "t": ev.t, "knob": "merge_any", "value": ev.value}
            self.refused.append({**refusal, "error": "EINVAL"})  # type: ignore[typeddict-item]
            return
        if before:
            self.account_unmerge(before, self.observe_pages(p, p.pages))

    def madvise(self, ev: Madvise) -> None:
        p = self.proc(ev.pid)
        advice = ADVICE[ev.advice]
        pages = self.page_range(ev.addr, ev.len)
        before = self.observe_pages(p, pages) if self.observe and advice == MADV_UNMERGEABLE else {}
        p.worker.call(OP_MADVISE, self.live(ev.addr), ev.len, advice)
        if before:
            self.account_unmerge(before, self.observe_pages(p, pages))
        if ev.advice == "dontneed":
            p.populated.difference_update(pages)
            p.fault_zero.difference_update(pages)

    def ksm(self, ev: Ksm) -> None:
        for name, value in ev.settings.items():
            if name == "run":
                self.set_run(int(value))
                continue
            try:
                self.guard.write(name, value)
            except RefusedWrite as e:
                # EBUSY or EINVAL; ENOENT when this kernel has no such knob.
                error = errno.errorcode.get(e.errno, "EINVAL")
                self.refused.append(
                    {"event": ev.index, "t": ev.t, "knob": name, "value": value, "error": error}  # type: ignore[typeddict-item]
                )

    def set_run(self, value: int) -> None:
        if value == 2:
            if self.kernel_run != 2:
                before = self.observe_all() if self.observe else {}
                self.guard.write("run", 2)
                self.kernel_run = 2
                if self.tracing is not None:
                    self.drain()  # (the removals name the items as they were)
                    self.tracing[1].flush()
                    self.tracing[1].forget_items()
                self.full_scans0 = 0
                if self.observe:
                    after = self.observe_all()
                    self.account_unmerge(before, after)
                    self.baseline = after
        elif value == 0 and self.kernel_run == 2:
            self.guard.write("run", 0)
            self.kernel_run = 0
        self.trace_run = value

    # --------------------------------------------------------------- settle

    def settle_key(self) -> tuple[Any, ...]:
        c = self.ksm_files.read_counters()
        key: list[Any] = [
            c.get(n, 0)
            for n in (
                "pages_shared",
                "pages_sharing",
                "pages_unshared",
                "pages_volatile",
                "ksm_zero_pages",
                "stable_node_chains",
                "stable_node_dups",
            )
        ]
        for pid in sorted(self.procs):
            stat = read_ksm_stat(self.procs[pid].worker.pid, self.machine)
            key.append(tuple(sorted(stat.items())))
        return tuple(key)

    def ksmd_file(self, name: str) -> str:
        """``/proc/<ksmd>/NAME``; a :class:`LiveKernelError` if ksmd cannot be seen."""
        if self.ksmd_pid is None:
            raise LiveKernelError(NO_KSMD)
        try:
            return self.machine.read(f"/proc/{self.ksmd_pid}/{name}").decode("ascii")
        except OSError as e:
            raise LiveKernelError(f"cannot read ksmd's /proc/{self.ksmd_pid}/{name}: {e}") from None

    def ksmd_switches(self) -> int:
        """ksmd's voluntary context switches: one more every time it goes to sleep."""
        for line in self.ksmd_file("status").splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
        raise LiveKernelError("ksmd's /proc status has no voluntary_ctxt_switches")

    def ksmd_waiting(self) -> bool:
        """ksmd sleeps interruptibly and is off the CPU: it is in one of its two waits.

        Inside a batch ksmd only sleeps uninterruptibly (locks, draining), so
        state ``S`` with a wait channel (``0`` while the task is on a run
        queue) is its timed sleep or its wait for work.
        """
        state = self.ksmd_file("stat").rsplit(")", 1)[1].split()[0]
        return state == "S" and self.ksmd_file("wchan").strip() not in ("", "0")

    def ksmd_at_rest(self, after: int | None = None) -> int:
        """Wait until ksmd waits; return its voluntary switches by then.

        With ``after``, also until it has gone to sleep since it had ``after``
        switches: it has been woken and been through its loop.  Seen on two
        looks in a row, the second after :data:`POLL_S`.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        seen: int | None = None
        while True:
            before = self.ksmd_switches()
            resting = self.ksmd_waiting() and self.ksmd_switches() == before
            if resting and (after is None or before > after):
                if seen == before:
                    return before
                seen = before
            else:
                seen = None
            if time.monotonic() > deadline:
                raise LiveKernelError("ksmd did not finish its batch during settle")
            time.sleep(POLL_S)

    def kick(self, switches: int, flip: list[int]) -> None:
        """Wake ksmd, resting with ``switches`` voluntary switches, from whichever wait it is in.

        Writing ``run`` (1) wakes its wait for work, and the woken task is
        runnable before the write returns.  Only when ksmd is still resting
        with as many switches, it is in its timed sleep, and changing
        ``sleep_millisecs`` (between the two values of ``flip``) ends that.
        Never both wake-ups for one rest: the second could start a second pass.
        """
        self.guard.write("run", 1)
        self.kernel_run = 1
        if self.ksmd_waiting() and self.ksmd_switches() == switches:
            flip[0] = SETTLE_SLEEP_MS + 1 if flip[0] == SETTLE_SLEEP_MS else SETTLE_SLEEP_MS
            self.guard.write("sleep_millisecs", flip[0])

    def scan_progress(self) -> tuple[int | None, int | None]:
        """``pages_scanned`` and ``pages_skipped`` (None on kernels before 6.7, which have neither).

        Without them, a batch that ends no pass can only be a wake-up with an
        empty list: a settle's batch is a whole pass, and those kernels have no
        scan-time advisor to cut it short.
        """
        c = self.ksm_files.read_counters()
        return c.get("pages_scanned"), c.get("pages_skipped")

    def one_full_scan(self, flip: list[int]) -> bool:
        """Let ksmd run to the end of the pass it is on; False if its list was empty.

        A batch that ends inside the pass (the scan-time advisor's
        ``pages_to_scan``) is followed by the next at once.  With an empty list
        ksmd wakes, finds nothing to do and waits again: no page scanned or
        skipped, no pass ended.
        """
        start = self.ksm_files.read_int("full_scans")
        progress = self.scan_progress()
        switches = self.ksmd_at_rest()
        while True:
            self.kick(switches, flip)
            switches = self.ksmd_at_rest(after=switches)
            if self.ksm_files.read_int("full_scans") != start:
                return True
            seen = self.scan_progress()
            if seen == progress:
                return False
            progress = seen

    def settle(self, max_full_scans: int) -> None:
        """Full scans until two change nothing, ``max_full_scans`` of them, or ksmd's list is empty.

        A process stays on ksmd's list until a walk finds no mergeable mapping
        in it (or it exited), so the scan that drops it still runs here, even
        when no live process has a mergeable mapping left.
        """
        if self.trace_run != 1:
            return
        self.hold()
        cpu_before = self.ksmd_cpu_or_none()
        self.mark_baseline()
        pages_to_scan = self.ksm_files.read_knob("pages_to_scan")
        sleep_ms = self.ksm_files.read_knob("sleep_millisecs")
        advisor = (
            self.ksm_files.has("advisor_mode")
            and self.ksm_files.read_knob("advisor_mode") == "scan-time"
        )
        if not advisor:
            self.guard.write("pages_to_scan", SETTLE_PAGES_TO_SCAN)
        flip = [SETTLE_SLEEP_MS]
        self.guard.write("sleep_millisecs", SETTLE_SLEEP_MS)
        key = self.settle_key()
        unchanged = 0
        for _ in range(max_full_scans):
            if not self.one_full_scan(flip):
                break
            if self.tracing is not None:
                self.drain()
                self.observe_all()  # (names the pages merged in this pass)
            new = self.settle_key()
            unchanged = unchanged + 1 if new == key else 0
            key = new
            if unchanged >= 2:
                break
        self.hold()
        cpu_after = self.ksmd_cpu_or_none()
        if cpu_before is None or cpu_after is None or self.settle_cpu is None:
            self.settle_cpu = None
        else:
            self.settle_cpu += cpu_after - cpu_before
        self.drain()
        if not advisor:
            self.guard.write("pages_to_scan", pages_to_scan)
        self.guard.write("sleep_millisecs", sleep_ms)
        self.account_ksmd()
        self.settled = True

    # ------------------------------------------------------------- snapshot

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        c = self.ksm_files.read_counters()
        ksm: dict[str, Any] = {name: c.get(name) for name in KSM_COUNTERS}
        ksm["pages_scanned"] = _since(c.get("pages_scanned"), self.scanned0)
        ksm["pages_skipped"] = _since(c.get("pages_skipped"), self.skipped0)
        ksm["full_scans"] = c.get("full_scans", 0) - self.full_scans0
        view = self.observe_all()
        processes: list[dict[str, Any]] = []
        frames: set[int] = set()
        ksm_frames: set[int] = set()
        by_ksm = by_fault = 0
        for pid in sorted(self.procs):
            p = self.procs[pid]
            stat = read_ksm_stat(p.worker.pid, self.machine)
            rss = 0
            for page in p.pages:
                kind, pfn = view[(p.serial, page)]
                if kind in (ANON, KSM):
                    rss += 1
                    frames.add(pfn)
                    if kind == KSM:
                        ksm_frames.add(pfn)
                elif kind == KZERO:
                    by_ksm += 1
                elif kind == FZERO:
                    by_fault += 1
            processes.append(
                {
                    "pid": pid,
                    "ksm_rmap_items": stat.get("ksm_rmap_items"),
                    "ksm_zero_pages": stat.get("ksm_zero_pages"),
                    "ksm_merging_pages": stat.get("ksm_merging_pages"),
                    "ksm_process_profit": stat.get("ksm_process_profit"),
                    "ksm_merge_any": stat.get("ksm_merge_any"),
                    "ksm_mergeable": stat.get("ksm_mergeable"),
                    "rss_anon_pages": rss,
                }
            )
        without = sum(proc["rss_anon_pages"] for proc in processes) + by_ksm
        summary = summarise(without, len(frames), self.ideal_frames(view, without), self.ps)
        snap: dict[str, Any] = {
            "label": label,
            "t": t,
            "event": index,
            "summary": summary,
            "ksm": ksm,
            "processes": processes,
            "memory": {
                "anon_frames": len(frames),
                # None where the kernel's page flags cannot tell KSM pages (probe_pages).
                "ksm_frames": len(ksm_frames) if self.ksm_flag else None,
                "zero_page_maps_by_ksm": by_ksm,
                "zero_page_maps_by_fault": by_fault,
            },
            "events": dict(self.events),
        }
        if self.clock:
            snap["live"] = {
                "ksmd_cpu_ns": self.ksmd_cpu_ns() - self.cpu0,
                "elapsed_ns": time.monotonic_ns() - self.started_ns,
            }
        return cast(Snap, snap)

    def mergeable(self, p: Proc) -> list[tuple[int, int]]:
        """The live address ranges of ``p``'s mergeable mappings (``mg`` in
        ``/proc/<pid>/smaps``), sorted."""
        try:
            text = self.machine.read(f"/proc/{p.worker.pid}/smaps").decode("ascii", "replace")
        except OSError as e:
            raise LiveKernelError(f"cannot read /proc/{p.worker.pid}/smaps: {e}") from None
        return sorted((m.start, m.end) for m in parse_maps(text) if m.mergeable)

    def ideal_frames(self, view: Mapping[PageKey, tuple[int, int]], without: int) -> int:
        """``summary.ideal_frames``, counted as the simulator counts it.

        Of the ``without`` pages, those resident in mergeable mappings (each
        PTE mapping a page frame, each zero page KSM placed) are replaced by
        one frame per distinct non-zero content among them, and one more for
        zero-filled pages unless ``use_zero_pages`` is 1.  Each frame's content
        is read once, through ``/proc/<pid>/mem`` at a page that maps it (a
        present page: nothing is faulted in).
        """
        resident = 0
        contents: set[int] = set()
        zero_filled = False
        seen: set[int] = set()
        for pid in sorted(self.procs):
            p = self.procs[pid]
            ranges = self.mergeable(p)
            starts = [start for start, _ in ranges]
            read = []
            for page in sorted(p.pages):
                addr = self.live(page * self.ps)
                at = bisect.bisect_right(starts, addr) - 1
                if at < 0 or addr >= ranges[at][1]:
                    continue  # not in a mergeable mapping: its own frame
                kind, pfn = view[(p.serial, page)]
                if kind == KZERO:
                    resident += 1
                    zero_filled = True
                elif kind in (ANON, KSM):
                    resident += 1
                    if pfn not in seen:
                        seen.add(pfn)
                        read.append(page)
            for first, count in _runs(read):
                for start in range(first, first + count, MEM_READ_PAGES):
                    fps = self.read_fingerprints(
                        p, start, min(MEM_READ_PAGES, first + count - start)
                    )
                    zero_filled = zero_filled or bool((fps == 0).any())
                    contents.update(fps[fps != 0].tolist())
        use_zero_pages = int(self.ksm_files.read_knob("use_zero_pages"))
        return without - resident + len(contents) + int(zero_filled and not use_zero_pages)

    def read_fingerprints(self, p: Proc, first: int, count: int) -> Any:
        """The fingerprints (TRACE_FORMAT.md) of ``count`` present pages of ``p`` from ``first``."""
        path = f"/proc/{p.worker.pid}/mem"
        try:
            data = self.machine.pread(path, self.live(first * self.ps), count * self.ps)
        except OSError as e:
            raise LiveKernelError(f"cannot read {path}: {e}") from None
        if len(data) != count * self.ps:
            raise LiveKernelError(f"short read of {path}")
        return fingerprint_pages(memoryview(data), self.ps)

    def settings(self) -> dict[str, KnobValue | None]:
        """Every knob of the table at the end; None for those this kernel does not have."""
        out: dict[str, KnobValue | None] = {}
        have = set(self.ksm_files.available_knobs())
        for knob in KNOBS:
            if knob.name == "run":
                out["run"] = self.trace_run
            elif knob.name in have:
                out[knob.name] = self.ksm_files.read_knob(knob.name)
            else:
                out[knob.name] = None
        return out

    def shutdown(self) -> None:
        for p in list(self.procs.values()):
            p.worker.kill()
        self.procs.clear()


def read_ksm_stat(pid: int, machine: Machine = LOCAL) -> dict[str, Any]:
    """``/proc/<pid>/ksm_stat`` as a dict (yes/no fields as booleans).

    Kernels before 6.6 show fewer fields there (6.1: only ``ksm_rmap_items``,
    with ``ksm_merging_pages`` in a file of its own); a field the kernel does
    not show is missing from the dict.
    """
    out: dict[str, Any] = {}
    try:
        text = machine.read(f"/proc/{pid}/ksm_stat").decode("ascii")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        name = name.rstrip(":")
        value = value.strip()
        out[name] = value == "yes" if value in ("yes", "no") else int(value)
    if "ksm_merging_pages" not in out:
        with contextlib.suppress(FileNotFoundError):
            out["ksm_merging_pages"] = int(machine.read(f"/proc/{pid}/ksm_merging_pages"))
    return out


def _since(value: int | None, start: int | None) -> int | None:
    """A counter's growth since the replay started; None when the kernel has no such counter."""
    if value is None:
        return None
    return value - (start or 0)


NO_KSMD = "settle needs to watch ksmd, but no ksmd is visible in /proc (another PID namespace?)"


def _find_ksmd(machine: Machine = LOCAL) -> int | None:
    for entry in machine.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if machine.read(f"/proc/{entry}/comm").decode("ascii", "replace").strip() == "ksmd":
                return int(entry)
        except OSError:
            continue
    return None


def probe_pages(machine: Machine, page_size: int, top: int) -> tuple[int, bool]:
    """The machine's zero-page frame number, and whether its page flags tell KSM pages apart.

    A short-lived worker maps two pages in the trace window (never made
    mergeable), read-faults the first and writes the second: the first's page
    table entry names the zero page's frame; the second is an ordinary
    anonymous page, which ``/proc/kpageflags`` must not flag KPF_KSM.  Some
    kernels (6.12's ``stable_page_flags()`` tests the anonymous-mapping bits
    loosely) flag every anonymous page so; on them no page can be told to be
    a KSM page.
    """
    worker = Worker.spawn(machine)
    try:
        worker.call(OP_INIT, page_size, WINDOW_LO, WINDOW_HI, top)
        worker.call(OP_MMAP, WINDOW_LO, 2 * page_size)
        worker.call(OP_READ, WINDOW_LO, page_size)
        worker.call(OP_FILL, WINDOW_LO + page_size, page_size, 0x6B736D7265706C61)
        zero_entry, anon_entry = read_pagemap(worker.pid, WINDOW_LO, 2, page_size, machine).tolist()
        pfn = zero_entry & PM_PFN_MASK
        anon = anon_entry & PM_PFN_MASK
        if not zero_entry & PM_PRESENT or not pfn or not anon_entry & PM_PRESENT or not anon:
            raise LiveKernelError("cannot find the probe pages' frame numbers in pagemap")
        flags = read_kpageflags([pfn, anon], machine)  # while the pages are still mapped
    finally:
        worker.kill()
    if not flags[pfn] & KPF_ZERO_PAGE:
        raise LiveKernelError("a read-faulted page is not flagged as the zero page")
    return pfn, not flags[anon] & KPF_KSM


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def execute(
    reader_or_events: Any,
    page_size: int | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    *,
    settings: Mapping[str, KnobValue] | None = None,
    path: str | None = None,
    meta: Mapping[str, Any] | None = None,
    observe_events: bool = True,
    machine: Machine | None = None,
    ksmd_clock: bool = False,
    tracepoints: Sink | None = None,
) -> Report:
    """Replay a trace on the running kernel; return the report (one run, like ``run``).

    This is ``ksmreplay exec TRACE``: it needs root, ``/sys/kernel/mm/ksm``
    and gcc (to build the worker once), and takes
    ``/run/lock/ksmreplay-live.lock`` for its whole duration.  With
    ``machine`` (a guest booted by :mod:`ksmreplay.live.qemu`), the replay
    drives that machine's kernel instead, and this machine's KSM and lock are
    never touched.  Knobs start at
    Linux's defaults (overridden by ``settings``) and the trace's ``ksm``
    events apply at their times; a write the kernel refuses is listed in
    ``refused``.  Whatever happens (success, error, or a stop signal: Ctrl-C,
    SIGTERM, SIGHUP, SIGPIPE) every knob is written back, KSM is left with
    ``run`` 0 and nothing merged.

    :param reader_or_events: an open trace (``ksmreplay.trace.TraceReader``:
        ``header``, ``name``, iteration) or any iterable of events (a leading
        :class:`~ksmreplay.trace.events.Header` is allowed).  The events are read
        into memory first (the address window is checked before anything runs).
    :param page_size: the trace's page size (default: the reader's header, else 4096).
    :param force: replay even when other processes use KSM (they will be
        unmerged at the end: run=2 is global).
    :param progress: called as ``progress(events_done, 0)`` after each instant.
    :param settings: knob values before the first event (``--set``).
    :param path: the trace path for the report (default: the reader's name).
    :param meta: the header's meta (default: the reader's header).
    :param observe_events: derive the ``events`` section from page tables
        (costs a page-table read per instant); when False they are 0 and the
        run says ``"events_observed": false``.
    :param machine: where to replay (default: this machine).
    :param ksmd_clock: add to every snapshot a ``live`` section, ``{"ksmd_cpu_ns",
        "elapsed_ns"}``: ksmd's CPU time and the real time since the replay
        started (ns); needs ksmd visible in ``/proc``.
    :param tracepoints: where the kernel's own KSM trace events go, as the
        simulator's ``run --tracepoints`` gives them (``tracefs.py`` says how
        they are read and named); this machine's kernel only.
    :returns: the report of REPORT_FORMAT.md; its run has mode ``unshare``
        when the kernel has ``/sys/kernel/mm/ksm/ksm_zero_pages`` (the
        zero-page series, 6.6), ``legacy`` otherwise, and ``"kernel"``
        (``uname -r``).  Counters and knobs the kernel does not have are
        None; a ``prctl`` the kernel does not know (before 6.4) and a knob
        it does not have are listed in ``refused`` (EINVAL, ENOENT).
    :raises LiveKernelError: (exit status 5) not root, no KSM, page size not
        this machine's, KSM busy, lock held, no compiler, trace outside the
        live address window, a ``settle`` where ksmd is not visible in
        ``/proc``, the kernel could not be restored; with ``tracepoints``, no
        tracefs or KSM events, or events lost (more than the ring buffer held
        between two reads).
    :raises Stopped: a stop signal arrived (after the kernel was put back;
        its ``detail`` says what could not be, if anything).
    """
    header: Header | None = getattr(reader_or_events, "header", None)
    events: list[Event] = []
    for item in reader_or_events:
        if isinstance(item, Header):
            header = item
        else:
            events.append(item)
    if page_size is None:
        page_size = header.page_size if header is not None else 4096
    if path is None:
        path = str(getattr(reader_or_events, "name", ""))
    if meta is None:
        meta = header.meta if header is not None else {}

    local = machine is None
    if tracepoints is not None and not local:
        raise LiveKernelError("--tracepoints reads this machine's kernel; not with a guest")
    if machine is None:
        kernel.check_usable(page_size)
        machine = LocalMachine(worker_binary())
    else:
        kernel.check_usable(page_size, machine)
    needs_ksmd = ksmd_clock or any(isinstance(ev, Settle) for ev in events)
    if needs_ksmd and _find_ksmd(machine) is None:
        raise LiveKernelError(NO_KSMD)
    offset = address_offset(events)
    ksm = KsmFiles(machine)
    # The zero-page series (Linux 6.6) is known by its file, not by a version number.
    mode = "unshare" if ksm.has("ksm_zero_pages") else "legacy"
    release = machine.release()

    with (
        kernel.exclusive_lock() if local else contextlib.nullcontext(),
        signals.raising(),
        KsmEvents() if tracepoints is not None else contextlib.nullcontext() as trace_events,
    ):
        guard = KsmGuard(force, ksm)
        guard.start()
        tracing = None
        if trace_events is not None and tracepoints is not None:
            tracing = trace_events, tracepoints, mode, release
        try:
            run = _execute(
                events,
                page_size,
                guard,
                machine,
                offset,
                observe_events,
                settings,
                force,
                progress,
                ksmd_clock,
                tracing,
            )
        except BaseException as exc:
            problems = _cleanup(guard)
            # A guest's KSM goes with the guest: only this machine's must be left at rest.
            if problems and local and isinstance(exc, Stopped):
                exc.detail = (
                    f"stopped by {exc.signum.name}; KSM could not be left at rest: "
                    + "; ".join(problems)
                )
            raise
        problems = _cleanup(guard)
        if problems:
            raise LiveKernelError("; ".join(problems))
    run["mode"] = mode
    run["kernel"] = release
    return {
        "report": REPORT_VERSION,
        "trace": {
            "path": path,
            "events": len(events),
            "duration_ns": events[-1].t if events else 0,
            "page_size": page_size,
            "meta": dict(meta),
        },
        "runs": [cast(Run, run)],
    }


_active: list[LiveReplay] = []


def _cleanup(guard: KsmGuard) -> list[str]:
    with signals.held():
        problems: list[str] = []
        while _active:
            replay = _active.pop()
            try:
                replay.shutdown()
            except (OSError, LiveKernelError) as e:
                problems.append(f"could not end the workers: {e}")
        try:
            problems.extend(guard.stop())
        except (OSError, LiveKernelError) as e:
            problems.append(f"could not leave KSM at rest: {e}")
        return problems


def _execute(
    events: list[Event],
    page_size: int,
    guard: KsmGuard,
    machine: Machine,
    offset: int,
    observe_events: bool,
    settings: Mapping[str, KnobValue] | None,
    force: bool,
    progress: ProgressCallback | None,
    ksmd_clock: bool = False,
    tracing: tuple[KsmEvents, Sink, str, str] | None = None,
) -> dict[str, Any]:
    guard.touched = True
    given = dict(settings or {})
    initial_run = int(given.pop("run", DEFAULTS["run"]))
    if not force:
        guard.unmerge_all()  # nothing to unmerge: resets full_scans and ksmd's cursor
    else:
        guard.write("run", 0)
    # The simulator's starting state: every knob at its default (the advisor
    # first, so that pages_to_scan can be written), then --set as run writes
    # it (knobs.start_order: the advisor last, so that switching it on sets
    # pages_to_scan itself, as the kernel refuses a write of it after).
    writes = [(name, DEFAULTS[name]) for name in kernel.RESTORE_ORDER if name in DEFAULTS]
    writes += start_order(given, {})
    for name, value in writes:
        if guard.ksm.has(name) and guard.ksm.read_knob(name) != value:
            try:
                guard.write(name, value)
            except RefusedWrite as e:
                raise LiveKernelError(f"the kernel refused the starting setting {e}") from None
    replay = LiveReplay(page_size, guard, machine, offset, observe_events, ksmd_clock)
    _active.append(replay)
    if tracing is not None:
        trace_events, sink, mode, release = tracing
        trace_events.read()  # (the unmerging before the replay)
        replay.tracing = trace_events, Mapper(sink, mode, release, page_size, replay.zpfn)
    replay.trace_run = initial_run
    if initial_run == 2:
        replay.kernel_run = 0

    snapshots: list[Snap] = []
    i = 0
    released_at = time.monotonic()
    prev_t: int | None = None
    pending_release: float | None = None
    last: Event | None = None
    while i < len(events):
        t = events[i].t
        j = i
        while j < len(events) and events[j].t == t:
            j += 1
        if prev_t is not None:
            target = released_at + (t - prev_t) / 1e9
            if pending_release is not None and pending_release < target:
                _sleep_until(pending_release)
                replay.release()
            pending_release = None
            _sleep_until(target)
        replay.hold()
        replay.now_t = t
        replay.drain(between=True)
        replay.account_ksmd()
        replay.settled = False
        for ev in events[i:j]:
            snap = replay.apply(ev)
            if snap is not None:
                snapshots.append(snap)
            last = ev
        replay.mark_baseline()
        released_at = time.monotonic()
        replay.prev_t = t
        replay.released_ns = time.monotonic_ns()
        if j < len(events):
            if replay.settled:
                sleep_ms = int(guard.ksm.read_knob("sleep_millisecs"))
                pending_release = released_at + jiffies_ns(sleep_ms) / 1e9
            else:
                replay.release()
        prev_t = t
        i = j
        if progress is not None:
            progress(i, 0)
    replay.hold()
    replay.now_t = last.t + 1 if last else 0
    replay.drain(between=True)
    if replay.tracing is not None:
        replay.observe_all()
        replay.tracing[1].flush()
        lost = replay.tracing[0].lost()
        if lost:
            raise LiveKernelError(
                f"{lost} KSM trace events were lost: the ring buffer filled up between two reads"
            )
    final = replay.snapshot("final", last.t if last else 0, last.index if last else 0)
    milestones = MilestoneTracker()
    for snap in snapshots:
        milestones.add(snap["t"], snap["summary"]["saved_pages"])
    duration = events[-1].t if events else 0
    return {
        "mode": "unshare",
        "settings": replay.settings(),
        "refused": replay.refused,
        "ksmd": replay.ksmd_cost(duration, final["ksm"]["pages_scanned"]),
        "milestones": milestones.milestones(),
        "snapshots": snapshots,
        "final": final,
        "events_observed": replay.observe,
    }
