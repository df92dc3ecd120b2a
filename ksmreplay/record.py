"""Record the anonymous memory of real processes on this machine into a trace.

A :class:`Recorder` samples the processes every interval.  Each sample reads,
per process, ``/proc/PID/maps`` (``smaps`` with ``as_is``), keeps the private
anonymous mappings (heap, stack, anonymous mmaps), reads
``/proc/PID/pagemap`` for them and ``/proc/PID/mem`` for the bytes of the
pages it must look at, and names each page by the trace format's rule
(:func:`ksmreplay.vm.content.fingerprint_pages`).  The events written are the
difference from the previous sample:

* ``alloc``/``free`` for address ranges that became mapped or unmapped;
* ``madvise mergeable`` on every mapped range (or, with ``as_is``, on the
  ranges the kernel marks mergeable, and ``unmergeable`` when that mark goes);
* ``madvise dontneed`` for pages that left a range still mapped;
* ``read`` for pages that map the shared zero page (seen only as root, through
  ``/proc/kpageflags``; otherwise such a page is a written page of zeros);
* ``write`` with one fingerprint per page for pages that appeared or whose
  contents changed, consecutive pages in one event;
* ``fork`` for a child found in ``/proc/PID/task/*/children`` (its first sample
  is compared with its parent's), ``exit`` for a process that is gone.

Incremental samples: after reading a process's page table, the recorder
clears its soft-dirty bits (``/proc/PID/clear_refs``); the next sample reads
the bytes of only the pages whose soft-dirty bit is set again (written
since), that were not present before, whose frame changed, or that could not
be read last time.  Every other page costs its pagemap entry and nothing
more.  A process's first sample reads every present page, and so does every
sample where the kernel keeps no soft-dirty bits (:func:`ksmreplay.procfs.
soft_dirty_works`).  The bits are cleared just after the page table is read,
so that without ``freeze`` a page written in that instant, between its entry
being read and the bits being cleared, is seen at its next write only.

Contents are read into one buffer of :data:`READ_PAGES` pages, as many runs
of pages at a time as fit (one ``process_vm_readv``, or one ``preadv`` of
``/proc/PID/mem`` per run where that is refused: :class:`ksmreplay.procfs.
MemoryReader`), and the pages of the buffer are fingerprinted at once.  With
the native core, one call reads and names the pages of all the runs of a
mapping, through a buffer of :data:`NATIVE_READ_PAGES` pages, and calls the
hash function of the xxhash library on each page that needs it
(:meth:`ksmreplay.native.Native.read_pages`).

``freeze`` stops the recorded processes while a sample is read, so that the
sample shows one moment: with the cgroup v2 freezer when the processes are
alone in their cgroup (a virtual machine's or a container's), else with
SIGSTOP and SIGCONT of each process.  Whatever ends a sample, the processes
are let go on the way out.

A swapped-out page keeps the state it had.  Real pids become trace pids 1,
2, ... in order of appearance; addresses are the real virtual addresses.  The
trace starts KSM (``ksm run=1`` at t=0) and ends with a ``snapshot "end"``
taken before the last exits, then a ``settle`` and a ``snapshot "settled"``,
so that a replay shows what ksmd made of the memory in the recorded time and
what it would make of it given time.
"""

from __future__ import annotations

import collections
import contextlib
import math
import mmap
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import numpy.typing as npt

from ksmreplay import procfs, signals
from ksmreplay.arrays import consecutive_runs
from ksmreplay.errors import InputOutputError, UsageError
from ksmreplay.native import Native, hash_address, native
from ksmreplay.procfs import (
    PM_MMAP_EXCLUSIVE,
    PM_PFN_MASK,
    PM_PRESENT,
    PM_SOFT_DIRTY,
    PM_SWAPPED,
    ProcessGone,
)
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import Header
from ksmreplay.vm.content import fingerprint_pages

Ranges = list[tuple[int, int]]
"""Sorted, disjoint, non-adjacent ``[start, end)`` address ranges."""

ABSENT, WRITTEN, ZERO = 0, 1, 2
"""Page states: not present; holding the fingerprint recorded for it; mapping the
shared zero page."""

READ_PAGES = 256
"""Pages read into the buffer before they are fingerprinted (1 MiB of 4 KiB pages:
the buffer stays in the CPU's cache from the read to the hash)."""
NATIVE_READ_PAGES = 64
"""The same with the native core, which pays nothing per batch (256 KiB of 4 KiB
pages: it stays in a core's own cache; a 1 GiB read takes about 15 % less CPU time
than with 1 MiB, on the machine this was measured on)."""
WRITE_PAGES = 8192
"""Most pages one ``write`` event covers."""
SKIPPED_KINDS = ("shared", "file", "device", "hugetlb")
"""Mapping kinds (:data:`ksmreplay.procfs.KINDS`) that are not recorded but summarised."""
STOP_TIMEOUT_S = 2.0
"""How long ``freeze`` waits for the processes to stop before reading anyway."""

_FRAME = np.uint64(PM_PFN_MASK | PM_MMAP_EXCLUSIVE)

Progress = Callable[[int, int, int, int], None]
"""``progress(samples, t_ns, live processes, present pages)``, after each sample."""
Warn = Callable[[str], None]
"""Takes a warning for the user (one line, no prefix)."""


class ProcessNotFoundError(UsageError):
    """A pid that names no process."""


class RecordPermissionError(InputOutputError):
    """The memory of a process cannot be read."""


def _denied(pid: int, exc: PermissionError) -> RecordPermissionError:
    name = exc.filename or f"/proc/{pid}/mem"
    return RecordPermissionError(
        f"pid {pid}: permission denied reading {name} "
        "(recording needs ptrace rights over the process, or root)"
    )


# --------------------------------------------------------------------------- range sets


def normalise(ranges: Sequence[tuple[int, int]]) -> Ranges:
    """Sort ``ranges``, drop empty ones and join overlapping or adjacent ones."""
    out: Ranges = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def subtract(a: Ranges, b: Ranges) -> Ranges:
    """The parts of ``a`` outside ``b``."""
    out: Ranges = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The parts of ``a`` inside ``b``."""
    return subtract(a, subtract(a, b))


def _mask_runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each run of True in ``mask``."""
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


# --------------------------------------------------------------------------- per-page state


@dataclass
class _Area:
    """The recorded state of the pages of one mapped range ``[start, end)``.

    :ivar fps: the fingerprint of each page (meaningful where ``state`` is WRITTEN).
    :ivar state: ABSENT, WRITTEN or ZERO per page.
    :ivar frame: each page's frame number and exclusive bit at its last sample.
    :ivar pending: a change that has not been read yet (the page was swapped out
        after a write, or could not be read).
    """

    start: int
    end: int
    fps: npt.NDArray[np.uint64]
    state: npt.NDArray[np.uint8]
    frame: npt.NDArray[np.uint64]
    pending: npt.NDArray[np.bool_]

    @classmethod
    def empty(cls, start: int, end: int, page: int) -> _Area:
        n = (end - start) // page
        return cls(
            start,
            end,
            np.zeros(n, np.uint64),
            np.zeros(n, np.uint8),
            np.zeros(n, np.uint64),
            np.zeros(n, bool),
        )

    def copy(self) -> _Area:
        return _Area(
            self.start,
            self.end,
            self.fps.copy(),
            self.state.copy(),
            self.frame.copy(),
            self.pending.copy(),
        )


def _reshape(areas: list[_Area], ranges: Ranges, page: int) -> list[_Area]:
    """Areas for ``ranges``, keeping the state of the pages the old ``areas`` held."""
    out: list[_Area] = []
    old = {(a.start, a.end): a for a in areas}
    for start, end in ranges:
        same = old.get((start, end))
        if same is not None:
            out.append(same)
            continue
        area = _Area.empty(start, end, page)
        for a in areas:
            lo, hi = max(start, a.start), min(end, a.end)
            if lo >= hi:
                continue
            dst = slice((lo - start) // page, (hi - start) // page)
            src = slice((lo - a.start) // page, (hi - a.start) // page)
            area.fps[dst] = a.fps[src]
            area.state[dst] = a.state[src]
            area.frame[dst] = a.frame[src]
            area.pending[dst] = a.pending[src]
        out.append(area)
    return out


# --------------------------------------------------------------------------- the summary


@dataclass
class RecordSummary:
    """What a recording saw and did.

    :ivar samples: samples taken.
    :ivar processes: processes recorded (each fork adds one).
    :ivar events: trace events written.
    :ivar bytes_written: bytes of trace written (header included).
    :ivar duration_ns: ``t`` of the last sample.
    :ivar interval_ns: the interval asked for.
    :ivar longest_interval_ns: the longest time between two sample starts.
    :ivar max_present_pages: most pages holding recorded contents at once.
    :ivar pages_read: pages whose bytes were read, over all samples.
    :ivar unreadable_pages: times a page's bytes could not be read (it kept its state).
    :ivar skipped_bytes: for each of :data:`SKIPPED_KINDS`, the most bytes of
        such mappings the processes had at one sample.
    :ivar soft_dirty: whether samples after the first read changed pages only.
    :ivar freeze: how processes were stopped during samples ("cgroup",
        "signals"), or None.
    :ivar command_status: the exit status of the recorded command when it
        ended by itself (128 + N when a signal N ended it); None otherwise.
    """

    samples: int = 0
    processes: int = 0
    events: int = 0
    bytes_written: int = 0
    duration_ns: int = 0
    interval_ns: int = 0
    longest_interval_ns: int = 0
    max_present_pages: int = 0
    pages_read: int = 0
    unreadable_pages: int = 0
    skipped_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIPPED_KINDS, 0))
    soft_dirty: bool = False
    freeze: str | None = None
    command_status: int | None = None

    @property
    def achieved_interval_ns(self) -> int | None:
        """The mean time between two sample starts (None with fewer than two samples)."""
        if self.samples < 2:
            return None
        return self.duration_ns // (self.samples - 1)


class _CountingWriter(TraceWriter):
    """A trace writer that counts the events and bytes it writes."""

    events = -1  # the header is not an event
    written = 0

    def _put(self, obj: object) -> None:
        data = self._encode(obj)
        self.stream.write(data)
        self.written += len(data)
        self.events += 1


# --------------------------------------------------------------------------- freezing


class _Freezer:
    """Stops the recorded processes while a sample is read (see :meth:`Recorder.sample`)."""

    name = ""

    def stop(self, roots: Iterable[int]) -> None:
        """Stop ``roots`` and their descendants."""
        raise NotImplementedError

    def resume(self) -> None:
        """Let go of every process :meth:`stop` stopped (also after a failed stop)."""
        raise NotImplementedError


class _SignalFreezer(_Freezer):
    """SIGSTOP each process (through a pidfd, so that a reused pid is never hit), SIGCONT
    it afterwards.  A process that was already stopped is left to whoever stopped it."""

    name = "signals"

    def __init__(self) -> None:
        self._stopped: dict[int, int] = {}  # pid -> pidfd

    def stop(self, roots: Iterable[int]) -> None:
        queue = list(roots)
        seen: set[int] = set()
        while queue:
            pid = queue.pop()
            if pid in seen:
                continue
            seen.add(pid)
            states = procfs.thread_states(pid)
            if not states:
                continue
            if not all(s in "tT" for s in states):
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue
                self._stopped[pid] = pidfd  # known before it is stopped: resume sees it
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
            queue.extend(procfs.children(pid))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        waiting = list(self._stopped)
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not all(s in "tTZX" for s in procfs.thread_states(p))]
            if waiting:
                time.sleep(0.0002)

    def resume(self) -> None:
        stopped, self._stopped = self._stopped, {}
        for pidfd in stopped.values():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)


class _CgroupFreezer(_Freezer):
    """Freeze the cgroup v2 the recorded processes are alone in (``cgroup.freeze``)."""

    name = "cgroup"

    def __init__(self, path: str) -> None:
        self.path = path
        self._frozen = False

    def _write(self, value: bytes) -> None:
        fd = os.open(os.path.join(self.path, "cgroup.freeze"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)

    def _events(self) -> dict[str, str]:
        with open(os.path.join(self.path, "cgroup.events")) as stream:
            return dict(line.split(None, 1) for line in stream.read().split("\n") if " " in line)

    def stop(self, roots: Iterable[int]) -> None:
        with open(os.path.join(self.path, "cgroup.freeze")) as stream:
            if stream.read().strip() == "1":
                return  # frozen by someone else: theirs to thaw
        self._frozen = True
        self._write(b"1")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._events().get("frozen", "").strip() != "1" and time.monotonic() < deadline:
            time.sleep(0.0002)

    def resume(self) -> None:
        if self._frozen:
            self._frozen = False
            self._write(b"0")


def _cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted, or None."""
    try:
        with open("/proc/self/mountinfo") as stream:
            for line in stream:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _cgroup_of(pid: int) -> str | None:
    try:
        text = procfs.read_text(pid, "cgroup")
    except (ProcessGone, OSError):
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _members(path: str) -> set[int]:
    """Every process in the cgroup at ``path`` and below it."""
    pids: set[int] = set()
    for directory, _, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError), open(os.path.join(directory, "cgroup.procs")) as f:
                pids.update(int(word) for word in f.read().split())
    return pids


def _descendants(roots: Iterable[int]) -> set[int]:
    seen: set[int] = set()
    queue = list(roots)
    while queue:
        pid = queue.pop()
        if pid not in seen:
            seen.add(pid)
            queue.extend(procfs.children(pid))
    return seen


def choose_freezer(roots: Sequence[int]) -> _Freezer:
    """The cgroup v2 freezer when ``roots`` and their descendants are alone in one cgroup
    (other than the root), else SIGSTOP/SIGCONT."""
    mount = _cgroup2_root()
    groups = {_cgroup_of(pid) for pid in roots}
    if mount is not None and len(groups) == 1:
        group = groups.pop()
        if group not in (None, "/"):
            assert group is not None
            path = os.path.join(mount, group.lstrip("/"))
            if os.access(os.path.join(path, "cgroup.freeze"), os.W_OK) and _members(
                path
            ) <= _descendants(roots):
                return _CgroupFreezer(path)
    return _SignalFreezer()


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Process:
    real: int
    start_time: int
    trace_pid: int
    parent: int | None = None  # trace pid
    born: bool = False
    tracked: bool = False  # soft-dirty bits cleared at its last sample
    mapped: Ranges = field(default_factory=list)
    mergeable: Ranges = field(default_factory=list)
    areas: list[_Area] = field(default_factory=list)

    def present_pages(self) -> int:
        return sum(int(np.count_nonzero(a.state == WRITTEN)) for a in self.areas)


class _Changes:
    """The page events of one process's sample, written in order: drops, reads, writes."""

    def __init__(self) -> None:
        self.drops: list[tuple[int, int]] = []  # (addr, pages)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, npt.NDArray[np.uint64]]] = []  # (addr, fingerprints)


class Recorder:
    """Samples processes into a trace (see the module's docstring).

    :param writer: where the events go (the header is already written).
    :param page_size: bytes per page.
    :param as_is: keep the mergeability the processes set instead of making
        every mapping mergeable.
    :param soft_dirty: read only changed pages after a process's first sample,
        where the kernel keeps soft-dirty bits.
    :param freezer: stops the processes while a sample is read (None: never).
    :param warn: takes one-line warnings.
    :param use_vm_readv: read memory with ``process_vm_readv`` where allowed
        (False: always ``preadv`` of ``/proc/PID/mem``).
    :param use_native: read and fingerprint with the native core where it was
        built and found a C hash function (:func:`ksmreplay.native.hash_address`).
    """

    def __init__(
        self,
        writer: TraceWriter,
        page_size: int,
        as_is: bool = False,
        soft_dirty: bool = True,
        freezer: _Freezer | None = None,
        warn: Warn | None = None,
        use_vm_readv: bool = True,
        use_native: bool = True,
    ) -> None:
        self.writer = writer
        self.use_vm_readv = use_vm_readv
        self.page = page_size
        self.as_is = as_is
        self.freezer = freezer
        self.warn = warn or (lambda message: None)
        self.procs: dict[int, _Process] = {}  # real pid -> live process
        self.next_pid = 1
        self.summary = RecordSummary(freeze=freezer.name if freezer else None)
        self.soft_dirty = soft_dirty and procfs.soft_dirty_works()
        self.summary.soft_dirty = self.soft_dirty
        self.zero = procfs.ZeroFrames(page_size)
        core = native() if use_native else None
        self._core = core if core is not None and hash_address(page_size) else None
        room = READ_PAGES if self._core is None else NATIVE_READ_PAGES
        self._buffer = bytearray(room * page_size)
        self._view = memoryview(self._buffer)
        self._pages = [self._view[i * page_size : (i + 1) * page_size] for i in range(room)]

    @property
    def native_core(self) -> bool:
        """Whether the native core reads and hashes the pages (else one hash call a page)."""
        return self._core is not None

    def watch(self, real: int, start_time: int) -> None:
        """Record process ``real`` (which started at ``start_time``, as
        :func:`ksmreplay.procfs.start_time` says) from the next sample on."""
        self._add(real, start_time, None)

    def _add(self, real: int, start_time: int, parent: _Process | None) -> _Process:
        proc = _Process(real, start_time, self.next_pid)
        self.next_pid += 1
        self.summary.processes += 1
        if parent is not None and parent.born:
            proc.parent = parent.trace_pid
            proc.mapped = list(parent.mapped)
            proc.mergeable = list(parent.mergeable)
            proc.areas = [a.copy() for a in parent.areas]
        self.procs[real] = proc
        return proc

    # ------------------------------------------------------------------ one sample

    def sample(self, t: int) -> list[_Process]:
        """Bring every process up to date at ``t`` (ns); return those that are gone
        (their exits are not written yet: :meth:`write_exits`)."""
        skipped = dict.fromkeys(SKIPPED_KINDS, 0)
        gone: list[_Process] = []
        with self._frozen():
            queue = list(self.procs.values())
            seen: set[int] = set(self.procs)
            while queue:
                proc = queue.pop(0)
                if procfs.start_time(proc.real) != proc.start_time:
                    gone.append(proc)
                    continue
                try:
                    self._update(t, proc, skipped)
                except ProcessGone:
                    gone.append(proc)
                    continue
                except PermissionError as exc:
                    raise _denied(proc.real, exc) from exc
                for child in procfs.children(proc.real):
                    if child in seen:
                        continue
                    seen.add(child)
                    start = procfs.start_time(child)
                    if start is None:
                        continue
                    queue.append(self._add(child, start, proc))
        summary = self.summary
        summary.samples += 1
        for proc in gone:
            del self.procs[proc.real]
        present = sum(p.present_pages() for p in self.procs.values())
        summary.max_present_pages = max(summary.max_present_pages, present)
        for kind, size in skipped.items():
            summary.skipped_bytes[kind] = max(summary.skipped_bytes[kind], size)
        return gone

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        if self.freezer is None:
            yield
            return
        try:
            with signals.held():
                self.freezer.stop(list(self.procs))
            yield
        finally:
            with signals.held():
                self.freezer.resume()

    def write_exits(self, t: int, gone: list[_Process]) -> None:
        """Write the ``exit`` of each process of ``gone``."""
        for proc in gone:
            if proc.born:
                self.writer.exit(t, proc.trace_pid)

    def _update(self, t: int, proc: _Process, skipped: dict[str, int]) -> None:
        maps = procfs.read_maps(proc.real, self.as_is)
        if not maps:
            # Maps opened just before an exec read nothing (they belong to the memory the
            # exec let go): read them again, from the memory that replaced it.
            maps = procfs.read_maps(proc.real, self.as_is)
        if not maps:
            raise ProcessGone  # every live process has a stack; an exiting one has no maps left
        kept = []
        for m in maps:
            kind = m.kind
            if kind == "anonymous":
                kept.append(m)
            elif kind in skipped:
                skipped[kind] += m.end - m.start
        mapped = normalise([(m.start, m.end) for m in kept])
        if self.as_is:
            want_mg = normalise([(m.start, m.end) for m in kept if m.mergeable])
        else:
            want_mg = mapped
        entries = self._pagemap(proc.real, mapped)
        incremental = proc.tracked
        if self.soft_dirty:
            proc.tracked = self._clear(proc.real)
        w = self.writer
        pid = proc.trace_pid
        if not proc.born:
            if not mapped:
                return
            if proc.parent is not None:
                w.fork(t, proc.parent, pid)
            proc.born = True
        for start, end in subtract(proc.mapped, mapped):
            w.free(t, pid, start, end - start)
        proc.mergeable = intersect(proc.mergeable, mapped)
        for start, end in subtract(mapped, proc.mapped):
            w.alloc(t, pid, start, end - start)
        areas = _reshape(proc.areas, mapped, self.page)
        proc.mapped = mapped
        for start, end in subtract(want_mg, proc.mergeable):
            w.madvise(t, pid, start, end - start, "mergeable")
        for start, end in subtract(proc.mergeable, want_mg):
            w.madvise(t, pid, start, end - start, "unmergeable")
        proc.mergeable = want_mg
        changes = _Changes()
        with procfs.MemoryReader(proc.real, self._buffer, self.use_vm_readv) as reader:
            proc.areas = [
                self._sample_area(reader, area, e, incremental, changes)
                for area, e in zip(areas, entries, strict=True)
            ]
        self._write_changes(t, pid, changes)

    def _pagemap(self, real: int, mapped: Ranges) -> list[npt.NDArray[np.uint64]]:
        fd = procfs.open_proc(real, "pagemap")
        try:
            return [
                procfs.pagemap_entries(fd, start // self.page, (end - start) // self.page)
                for start, end in mapped
            ]
        finally:
            os.close(fd)

    def _clear(self, real: int) -> bool:
        """Clear the soft-dirty bits of ``real``; False (and full reads from now on) if
        that is not allowed."""
        try:
            procfs.clear_soft_dirty(real)
        except PermissionError as exc:
            self.soft_dirty = self.summary.soft_dirty = False
            self.warn(
                f"cannot clear the soft-dirty bits of pid {real} ({exc.strerror}): "
                "every sample reads every present page"
            )
            return False
        return True

    def _sample_area(
        self,
        reader: procfs.MemoryReader,
        area: _Area,
        entries: npt.NDArray[np.uint64],
        incremental: bool,
        changes: _Changes,
    ) -> _Area:
        """The new state of ``area`` from its pagemap ``entries``; its events into ``changes``."""
        present = (entries & np.uint64(PM_PRESENT)) != 0
        swapped = ~present & ((entries & np.uint64(PM_SWAPPED)) != 0)
        frame = entries & _FRAME
        pfn = entries & np.uint64(PM_PFN_MASK)
        if incremental:
            dirty = (entries & np.uint64(PM_SOFT_DIRTY)) != 0
            need = present & (dirty | (area.state == ABSENT) | (frame != area.frame) | area.pending)
            pending = area.pending | (swapped & dirty)
        else:
            need = present
            pending = area.pending.copy()
        known_zero = present & (pfn != 0) & self.zero.known(pfn)
        state = area.state.copy()
        fps = area.fps.copy()
        state[~present & ~swapped] = ABSENT
        state[known_zero] = ZERO
        pending[known_zero | (~present & ~swapped)] = False
        to_read = np.flatnonzero(need & ~known_zero)
        if len(to_read):
            index, values = self._read(reader, area.start, to_read)
            pending[to_read] = True  # until read: a page that could not be read stays pending
            pending[index] = False
            on_zero = np.zeros(len(index), dtype=bool)
            zeros = np.flatnonzero(values == 0)
            if len(zeros):
                on_zero[zeros] = self.zero.check(pfn[index[zeros]])
            state[index[on_zero]] = ZERO
            state[index[~on_zero]] = WRITTEN
            fps[index[~on_zero]] = values[~on_zero]
        old = area.state
        now_zero = state == ZERO
        drop = ((old != ABSENT) & (state == ABSENT)) | ((old == WRITTEN) & now_zero)
        page = self.page
        for lo, hi in _mask_runs(drop):
            changes.drops.append((area.start + lo * page, hi - lo))
        for lo, hi in _mask_runs(now_zero & (old != ZERO)):
            changes.reads.append((area.start + lo * page, hi - lo))
        write = (state == WRITTEN) & ((old != WRITTEN) | (fps != area.fps))
        for lo, hi in _mask_runs(write):
            changes.writes.append((area.start + lo * page, fps[lo:hi]))
        return _Area(area.start, area.end, fps, state, frame, pending)

    def _read(
        self, reader: procfs.MemoryReader, base: int, pages: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]:
        """Read and fingerprint ``pages`` (page indices from ``base``, sorted); the indices
        that could be read and their fingerprints."""
        if self._core is not None:
            return self._read_native(self._core, reader, base, pages)
        page = self.page
        got_index: list[npt.NDArray[np.intp]] = []
        got_fps: list[npt.NDArray[np.uint64]] = []
        mask = np.zeros(int(pages[-1]) + 1, dtype=bool)
        mask[pages] = True
        work = collections.deque(_mask_runs(mask))
        while work:
            batch: list[tuple[int, int]] = []  # (first page, pages)
            room = READ_PAGES
            while work and room and len(batch) < procfs.IOV_MAX:
                lo, hi = work.popleft()
                take = min(hi - lo, room)
                batch.append((lo, take))
                if lo + take < hi:
                    work.appendleft((lo + take, hi))
                room -= take
            done = reader.read([(base + lo * page, n * page) for lo, n in batch]) // page
            firsts = np.array([lo for lo, _ in batch], dtype=np.intp)
            counts = np.array([n for _, n in batch], dtype=np.intp)
            offsets = np.cumsum(counts) - counts
            index = np.repeat(firsts - offsets, counts) + np.arange(int(counts.sum()))
            if done:
                got_fps.append(fingerprint_pages(self._view[: done * page], page, self._pages))
                got_index.append(index[:done])
            if done < len(index):
                # The page after those read cannot be read: it keeps its state; the
                # pages after it are read again.
                self.summary.unreadable_pages += 1
                rest = index[done + 1 :]
                if len(rest):
                    again = np.zeros(int(rest[-1]) + 1, dtype=bool)
                    again[rest] = True
                    work.extendleft(reversed(_mask_runs(again)))
        self.summary.pages_read += sum(len(i) for i in got_index)
        if not got_index:
            return np.zeros(0, np.intp), np.zeros(0, np.uint64)
        return np.concatenate(got_index), np.concatenate(got_fps)

    def _read_native(
        self,
        core: Native,
        reader: procfs.MemoryReader,
        base: int,
        pages: npt.NDArray[np.intp],
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]:
        """:meth:`_read` by the native core: one call per list of runs, until a page
        cannot be read (it keeps its state; the pages after it are read on)."""
        page = self.page
        starts, ends = consecutive_runs(pages)
        lengths = ends - starts
        runs = np.empty((len(starts), 2), np.uint64)
        runs[:, 0] = base + pages[starts].astype(np.uint64) * np.uint64(page)
        runs[:, 1] = lengths
        fps = np.empty(len(pages), np.uint64)
        readable = np.ones(len(pages), bool)
        pos = 0
        while len(runs):
            done, stopped = reader.fingerprints(core, runs, page, fps[pos:])
            pos += done
            if not stopped:
                break
            self.summary.unreadable_pages += 1
            readable[pos] = False
            pos += 1
            runs = procfs.skip_pages(runs, done + 1, page)
        self.summary.pages_read += int(np.count_nonzero(readable))
        if readable.all():
            return pages, fps
        return pages[readable], fps[readable]

    def _write_changes(self, t: int, pid: int, changes: _Changes) -> None:
        w = self.writer
        page = self.page
        for addr, n in changes.drops:
            w.madvise(t, pid, addr, n * page, "dontneed")
        for addr, n in changes.reads:
            w.read(t, pid, addr, n * page)
        for addr, fps in changes.writes:
            if len(fps) == 1:
                w.write(t, pid, addr, page, int(fps[0]))
                continue
            for j in range(0, len(fps), WRITE_PAGES):
                chunk = fps[j : j + WRITE_PAGES]
                content: int | npt.NDArray[np.uint64] = (
                    int(chunk[0]) if bool((chunk == chunk[0]).all()) else chunk
                )
                w.write(t, pid, addr + j * page, len(chunk) * page, content)


# --------------------------------------------------------------------------- entry point


def _check_pid(pid: int) -> int:
    start = procfs.start_time(pid) if pid > 0 else None
    if start is None:
        raise ProcessNotFoundError(f"no process with pid {pid}")
    if procfs.is_kernel_thread(pid):
        raise UsageError(f"pid {pid} is a kernel thread: it has no user memory to record")
    try:
        for name in ("pagemap", "mem"):
            os.close(procfs.open_proc(pid, name))
        mem = procfs.open_proc(pid, "mem")
        try:
            os.pread(mem, 1, 0)
        except PermissionError as exc:
            raise _denied(pid, exc) from exc
        except OSError:
            pass
        finally:
            os.close(mem)
    except ProcessGone as exc:
        raise ProcessNotFoundError(f"no process with pid {pid}") from exc
    except PermissionError as exc:
        raise _denied(pid, exc) from exc
    return start


def record(
    pids: Sequence[int] | None,
    command: Sequence[str] | None,
    interval_ns: int,
    duration_ns: int | None,
    out: IO[bytes],
    as_is: bool = False,
    progress: Progress | None = None,
    form: str = "msgpack",
    command_stdout: int | None = None,
    freeze: bool = False,
    warn: Warn | None = None,
) -> RecordSummary:
    """Record ``pids`` (or a process started from ``command``) into a trace written to ``out``.

    Samples every ``interval_ns`` until ``duration_ns`` has passed, every
    recorded process has exited, or the started command has exited; Ctrl-C
    ends the recording early with a valid trace.  ``command_stdout`` is a
    file descriptor for the command's standard output (default: inherited).
    The command is ended (SIGTERM, then SIGKILL after 5 s) when recording
    ends in any way, also by an error or a stop signal (inside
    :func:`ksmreplay.signals.raising`, as in the CLI).  ``freeze`` stops the
    processes while each sample is read.  ``warn`` gets warnings: that the
    kernel keeps no soft-dirty bits (once, at the start), that a sample took
    longer than the interval (once, with the interval achieved).

    :returns: the summary; its ``command_status`` is the command's exit status
        when the command ended by itself.
    """
    if bool(pids) == bool(command):
        raise UsageError("give either pids or a command to record")
    if interval_ns <= 0:
        raise UsageError("the interval must be positive")
    say = warn or (lambda message: None)
    with _started(command, command_stdout) as (child, status):
        summary = _record(
            pids, command, child, interval_ns, duration_ns, out, as_is, progress, form, freeze, say
        )
        summary.command_status = status()
        return summary


@contextlib.contextmanager
def _started(
    command: Sequence[str] | None, stdout: int | None
) -> Iterator[tuple[subprocess.Popen[bytes] | None, Callable[[], int | None]]]:
    """The process of ``command`` (None without one), ended when the block ends, however;
    and a function that says its exit status if it has ended by itself (else None)."""
    if not command:
        yield None, lambda: None
        return
    child: subprocess.Popen[bytes] | None = None

    def status() -> int | None:
        code = child.poll() if child is not None else None
        if code is None:
            return None
        return code if code >= 0 else 128 - code

    try:
        with signals.held():  # a stop signal now waits until ``child`` is known
            try:
                child = subprocess.Popen(list(command), stdout=stdout)
            except OSError as exc:
                raise UsageError(f"cannot start {command[0]}: {exc.strerror or exc}") from exc
        yield child, status
    finally:
        if child is not None:
            with signals.held():
                _end(child)


def _end(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    if child.poll() is None:
        child.kill()
        child.wait()


def _record(
    pids: Sequence[int] | None,
    command: Sequence[str] | None,
    child: subprocess.Popen[bytes] | None,
    interval_ns: int,
    duration_ns: int | None,
    out: IO[bytes],
    as_is: bool,
    progress: Progress | None,
    form: str,
    freeze: bool,
    warn: Warn,
) -> RecordSummary:
    page_size = mmap.PAGESIZE
    roots: list[tuple[int, int]] = []
    if child is not None:
        start = procfs.start_time(child.pid)
        roots.append((child.pid, start if start is not None else -1))
    else:
        assert pids is not None
        for pid in dict.fromkeys(pids):
            roots.append((pid, _check_pid(pid)))
    freezer = choose_freezer([pid for pid, _ in roots]) if freeze else None
    soft_dirty = procfs.soft_dirty_works()
    if not soft_dirty:
        warn(
            "this kernel keeps no soft-dirty bits (/proc/PID/clear_refs): "
            "every sample reads every present page"
        )
    meta: dict[str, object] = {
        "recorder": "ksmreplay record",
        "command": list(command) if command else None,
        "pids": [pid for pid, _ in roots],
        "interval_ns": interval_ns,
        "kernel": os.uname().release,
        "as_is": as_is,
        "soft_dirty": soft_dirty,
        "freeze": freezer.name if freezer else None,
    }
    what = " ".join(command) if command else "pids " + ", ".join(str(p) for p, _ in roots)
    header = Header(page_size=page_size, description=f"recorded from {what}", meta=meta)
    writer = _CountingWriter(out, header, form)
    recorder = Recorder(writer, page_size, as_is, soft_dirty, freezer, warn)
    summary = recorder.summary
    summary.interval_ns = interval_ns
    for pid, start in roots:
        recorder.watch(pid, start)
    writer.ksm(0, {"run": 1})
    began = time.monotonic_ns()
    t = 0
    warned = False
    while True:
        try:
            gone = recorder.sample(t)
        except KeyboardInterrupt:
            gone = []
            final = True
        else:
            command_done = child is not None and child.poll() is not None
            final = (
                not recorder.procs
                or command_done
                or (duration_ns is not None and t + interval_ns > duration_ns)
            )
        if progress is not None:
            progress(summary.samples, t, len(recorder.procs), summary.max_present_pages)
        if final:
            _finish(writer, recorder, t, gone)
            break
        recorder.write_exits(t, gone)
        wake = began + t + interval_ns
        try:
            time.sleep(max(0, wake - time.monotonic_ns()) / 1e9)
        except KeyboardInterrupt:
            _finish(writer, recorder, t, [])
            break
        now = max(t + 1, time.monotonic_ns() - began)
        summary.longest_interval_ns = max(summary.longest_interval_ns, now - t)
        if not warned and now - t > interval_ns + interval_ns // 10 + 1_000_000:
            warned = True
            warn(
                f"--interval {_secs(interval_ns)} overrun: sample {summary.samples + 1} "
                f"started {_secs(now - t)} after sample {summary.samples} "
                "(the summary at the end gives the interval achieved)"
            )
        t = now
    if child is not None and not recorder.procs:
        # Its memory is gone: it is exiting, and its status is a moment away.
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(5)
    writer.flush()
    summary.duration_ns = t
    summary.events = writer.events
    summary.bytes_written = writer.written
    return summary


def _secs(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


def _finish(writer: TraceWriter, recorder: Recorder, t: int, gone: list[_Process]) -> None:
    """The end of the trace: what ksmd made of the memory in the recorded time, what it
    would make of it given time, then the exits of the processes gone at the last sample."""
    writer.snapshot(t, "end")
    writer.settle(t)
    writer.snapshot(t, "settled")
    recorder.write_exits(t, gone)


MAX_DURATION_NS = 2**62
"""Longest ``--interval`` or ``--duration``, in ns (about 146 years): the
trace's times stay below 2**64 and a sleep of that long stays valid."""


def parse_duration(text: str, option: str = "duration") -> int:
    """``500ms``, ``1s``, ``2m``, ``1.5s`` (or plain seconds) as nanoseconds.

    :param option: what the value is, for messages (``--interval``).
    :raises UsageError: not a positive, finite duration of 1 ns to
        :data:`MAX_DURATION_NS`.
    """
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}
    value = text.strip().lower()
    for suffix in ("ns", "us", "ms", "s", "m"):
        if value.endswith(suffix) and value[: -len(suffix)].strip():
            number, scale = value[: -len(suffix)].strip(), units[suffix]
            break
    else:
        number, scale = value, units["s"]
    bad = f"bad {option} {text!r}"
    try:
        amount = float(number)
    except ValueError:
        raise UsageError(f"{bad} (examples: 500ms, 1s, 2m)") from None
    if not math.isfinite(amount):
        raise UsageError(f"{bad}: not a finite duration")
    if not amount > 0:
        raise UsageError(f"{bad}: must be positive")
    if amount * scale > MAX_DURATION_NS:
        raise UsageError(f"{bad}: must be at most 2**62 ns (about 146 years)")
    ns = round(amount * scale)
    if ns < 1:
        raise UsageError(f"{bad}: must be at least 1 ns")
    return ns
