"""Record the anonymous memory of real processes on this machine into a trace.

:func:`record` samples the processes every interval.  Each sample reads, per
process, ``/proc/PID/maps`` (and ``smaps`` VmFlags with ``as_is``), keeps the
private anonymous mappings (heap, stack, anonymous mmaps), reads
``/proc/PID/pagemap`` for the pages present in memory and ``/proc/PID/mem``
for their bytes, and names each page by :func:`ksmreplay.content.fingerprint`.
The events written are the difference from the previous sample:

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

A swapped-out page keeps the state it had.  Real pids become trace pids 1,
2, ... in order of appearance; addresses are the real virtual addresses.  The
trace starts KSM (``ksm run=1`` at t=0) and ends with a ``snapshot "end"``
taken before the last exits, so that a replay shows what KSM would make of the
recorded memory.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from ksmreplay import signals
from ksmreplay.content import fingerprint
from ksmreplay.errors import InputOutputError, UsageError
from ksmreplay.events import Header
from ksmreplay.trace import MAX_ARRAY_ITEMS, TraceWriter

Ranges = list[tuple[int, int]]
"""Sorted, disjoint, non-adjacent ``[start, end)`` address ranges."""

ZERO_PAGE = -1
"""Page state: maps the shared zero page."""

KPF_ZERO_PAGE = 24
_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_PFN_MASK = (1 << 55) - 1
_READ_CHUNK_PAGES = 256
_SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")

Progress = Callable[[int, int, int, int], None]
"""``progress(samples, t_ns, live processes, present pages)``, after each sample."""


class ProcessNotFoundError(UsageError):
    """A pid that names no process."""


class RecordPermissionError(InputOutputError):
    """The memory of a process cannot be read."""


class _Gone(Exception):
    """The process vanished while it was being read."""


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


# --------------------------------------------------------------------------- /proc


@dataclass
class _Mapping:
    start: int
    end: int
    mergeable: bool


def _proc_open(pid: int, name: str, flags: int = os.O_RDONLY) -> int:
    try:
        return os.open(f"/proc/{pid}/{name}", flags)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise _Gone from exc
    except PermissionError as exc:
        raise RecordPermissionError(
            f"pid {pid}: permission denied reading /proc/{pid}/{name} "
            "(recording needs ptrace rights over the process, or root)"
        ) from exc


def _read_text(pid: int, name: str) -> str:
    fd = _proc_open(pid, name)
    try:
        chunks = []
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            chunks.append(data)
    except (ProcessLookupError, FileNotFoundError) as exc:
        raise _Gone from exc
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            raise _Gone from exc
        raise
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` (identifies it against pid reuse), None if it is gone."""
    try:
        stat = _read_text(pid, "stat")
    except _Gone:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as stream:
                out.extend(int(word) for word in stream.read().split())
        except OSError:
            continue
    return out


def _is_private_anonymous(perms: str, inode: str, path: str) -> bool:
    if len(perms) < 4 or perms[3] != "p" or inode != "0" or perms[:3] == "---":
        return False
    return path in ("", "[heap]", "[stack]") or path.startswith(("[anon:", "[stack:"))


def _mappings(pid: int, with_flags: bool) -> list[_Mapping]:
    """The private anonymous mappings of ``pid`` (with the ``mg`` VmFlag when asked)."""
    text = _read_text(pid, "smaps" if with_flags else "maps")
    out: list[_Mapping] = []
    current: _Mapping | None = None
    for line in text.splitlines():
        if with_flags and line.startswith("VmFlags:"):
            if current is not None:
                current.mergeable = "mg" in line.split()[1:]
            continue
        parts = line.split(None, 5)
        if len(parts) < 5 or "-" not in parts[0] or parts[0].endswith(":"):
            continue
        try:
            start_text, end_text = parts[0].split("-")
            start, end = int(start_text, 16), int(end_text, 16)
        except ValueError:
            continue
        path = parts[5].strip() if len(parts) > 5 else ""
        current = None
        if _is_private_anonymous(parts[1], parts[4], path) and path not in _SPECIAL:
            current = _Mapping(start, end, False)
            out.append(current)
    return out


def _zero_pfns() -> set[int]:
    """PFNs of the shared zero page found by mapping it in this process (empty if unseen)."""
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = area[0]  # a read fault maps the zero page
        addr = _address_of(area)
        with open("/proc/self/pagemap", "rb") as stream:
            stream.seek(addr // page * 8)
            entry = int.from_bytes(stream.read(8), "little")
    except OSError:
        return set()
    finally:
        area.close()
    pfn = entry & _PFN_MASK
    return {pfn} if entry & _PRESENT and pfn else set()


def _address_of(area: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(area))


# --------------------------------------------------------------------------- the recorder


@dataclass
class _Process:
    real: int
    start_time: int
    trace_pid: int
    parent: int | None = None  # trace pid
    born: bool = False
    mapped: Ranges = field(default_factory=list)
    mergeable: Ranges = field(default_factory=list)
    pages: dict[int, int] = field(default_factory=dict)  # addr -> fingerprint or ZERO_PAGE


@dataclass
class RecordSummary:
    """What :func:`record` saw."""

    samples: int = 0
    processes: int = 0
    events: int = 0
    duration_ns: int = 0
    max_present_pages: int = 0


class _CountingWriter(TraceWriter):
    """A trace writer that counts the events it writes."""

    events = -1  # the header is not an event

    def _put(self, obj: object) -> None:
        super()._put(obj)
        self.events += 1


class _Recorder:
    def __init__(self, writer: TraceWriter, as_is: bool, page_size: int) -> None:
        self.writer = writer
        self.as_is = as_is
        self.page = page_size
        self.procs: dict[int, _Process] = {}  # real pid -> live process
        self.next_pid = 1
        self.summary = RecordSummary()
        self.zero_pfns = _zero_pfns()
        self.kpageflags: int | None = None
        with contextlib.suppress(OSError):
            self.kpageflags = os.open("/proc/kpageflags", os.O_RDONLY)

    def close(self) -> None:
        if self.kpageflags is not None:
            os.close(self.kpageflags)
            self.kpageflags = None

    def add(self, real: int, start_time: int, parent: _Process | None) -> _Process:
        proc = _Process(real, start_time, self.next_pid)
        self.next_pid += 1
        self.summary.processes += 1
        if parent is not None and parent.born:
            proc.parent = parent.trace_pid
            proc.mapped = list(parent.mapped)
            proc.mergeable = list(parent.mergeable)
            proc.pages = dict(parent.pages)
        self.procs[real] = proc
        return proc

    # ------------------------------------------------------------------ one sample

    def sample(self, t: int) -> list[_Process]:
        """Bring every process up to date at ``t``; return those that are gone (not yet written)."""
        gone: list[_Process] = []
        present = 0
        queue = list(self.procs.values())
        seen: set[int] = set(self.procs)
        while queue:
            proc = queue.pop(0)
            if _start_time(proc.real) != proc.start_time:
                gone.append(proc)
                continue
            try:
                present += self.update(t, proc)
            except _Gone:
                gone.append(proc)
                continue
            for child in _children(proc.real):
                if child in seen:
                    continue
                seen.add(child)
                start = _start_time(child)
                if start is None:
                    continue
                queue.append(self.add(child, start, proc))
        self.summary.samples += 1
        self.summary.max_present_pages = max(self.summary.max_present_pages, present)
        for proc in gone:
            del self.procs[proc.real]
        return gone

    def write_exits(self, t: int, gone: list[_Process]) -> None:
        for proc in gone:
            if proc.born:
                self.writer.exit(t, proc.trace_pid)

    def update(self, t: int, proc: _Process) -> int:
        maps = _mappings(proc.real, self.as_is)
        if not maps:
            raise _Gone  # every live process has a stack; an exiting one has no maps left
        mapped = normalise([(m.start, m.end) for m in maps])
        if self.as_is:
            want_mg = normalise([(m.start, m.end) for m in maps if m.mergeable])
        else:
            want_mg = mapped
        states = self.read_pages(proc.real, mapped)
        w = self.writer
        pid = proc.trace_pid
        if not proc.born:
            if not mapped:
                return 0
            if proc.parent is not None:
                parent = proc.parent
                w.fork(t, parent, pid)
            proc.born = True
        for start, end in subtract(proc.mapped, mapped):
            w.free(t, pid, start, end - start)
            for addr in range(start, end, self.page):
                proc.pages.pop(addr, None)
        proc.mergeable = intersect(proc.mergeable, mapped)
        for start, end in subtract(mapped, proc.mapped):
            w.alloc(t, pid, start, end - start)
        proc.mapped = mapped
        for start, end in subtract(want_mg, proc.mergeable):
            w.madvise(t, pid, start, end - start, "mergeable")
        for start, end in subtract(proc.mergeable, want_mg):
            w.madvise(t, pid, start, end - start, "unmergeable")
        proc.mergeable = want_mg
        self.apply_pages(t, proc, states)
        return sum(1 for s in proc.pages.values() if s != ZERO_PAGE)

    def apply_pages(self, t: int, proc: _Process, states: dict[int, int | None]) -> None:
        """Write the page changes; ``states`` gives each readable page's state (None = absent)."""
        drops: list[int] = []
        reads: list[int] = []
        writes: list[tuple[int, int]] = []
        for addr, new in states.items():
            old = proc.pages.get(addr)
            if old == new:
                continue
            if new is None:
                drops.append(addr)
                del proc.pages[addr]
                continue
            if new == ZERO_PAGE:
                if old is not None:
                    drops.append(addr)
                reads.append(addr)
            else:
                writes.append((addr, new))
            proc.pages[addr] = new
        pid = proc.trace_pid
        w = self.writer
        for start, n in _runs(sorted(drops), self.page):
            w.madvise(t, pid, start, n * self.page, "dontneed")
        for start, n in _runs(sorted(reads), self.page):
            w.read(t, pid, start, n * self.page)
        writes.sort()
        addrs = [a for a, _ in writes]
        i = 0
        for start, n in _runs(addrs, self.page):
            fps = [fp for _, fp in writes[i : i + n]]
            i += n
            for j in range(0, n, MAX_ARRAY_ITEMS):
                chunk = fps[j : j + MAX_ARRAY_ITEMS]
                content: int | list[int] = chunk[0] if len(set(chunk)) == 1 else chunk
                addr = start + j * self.page
                w.write(t, pid, addr, len(chunk) * self.page, content)

    def read_pages(self, real: int, mapped: Ranges) -> dict[int, int | None]:
        """The state of every page of ``mapped`` that could be told (swapped pages are left out)."""
        page = self.page
        states: dict[int, int | None] = {}
        pagemap = _proc_open(real, "pagemap")
        try:
            mem = _proc_open(real, "mem")
        except BaseException:
            os.close(pagemap)
            raise
        try:
            for start, end in mapped:
                n = (end - start) // page
                try:
                    raw = os.pread(pagemap, n * 8, start // page * 8)
                except OSError as exc:
                    if exc.errno in (errno.ESRCH, errno.ENOENT):
                        raise _Gone from exc
                    continue
                if not raw and n:
                    raise _Gone
                entries = np.frombuffer(raw, dtype="<u8")
                present = (entries & np.uint64(_PRESENT)) != 0
                swapped = (entries & np.uint64(_SWAPPED)) != 0
                for k in np.flatnonzero(~present & ~swapped).tolist():
                    states[start + k * page] = None
                self.read_present(real, mem, start, entries, present, states)
        finally:
            os.close(mem)
            os.close(pagemap)
        return states

    def read_present(
        self,
        real: int,
        mem: int,
        base: int,
        entries: np.ndarray,
        present: np.ndarray,
        states: dict[int, int | None],
    ) -> None:
        page = self.page
        index = np.flatnonzero(present).tolist()
        for first, n in _runs(index, 1):
            k = first
            while k < first + n:
                count = min(_READ_CHUNK_PAGES, first + n - k)
                addr = base + k * page
                try:
                    data = os.pread(mem, count * page, addr)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        raise _Gone from exc
                    data = b""
                if not data:
                    raise _Gone  # a process whose memory is torn down reads as nothing
                for j in range(len(data) // page):
                    fp = fingerprint(data[j * page : (j + 1) * page])
                    if fp == 0 and self.is_zero_page(int(entries[k + j]) & _PFN_MASK):
                        states[addr + j * page] = ZERO_PAGE
                    else:
                        states[addr + j * page] = fp
                k += count

    def is_zero_page(self, pfn: int) -> bool:
        if not pfn:
            return False
        if pfn in self.zero_pfns:
            return True
        if self.kpageflags is None:
            return False
        try:
            flags = int.from_bytes(os.pread(self.kpageflags, 8, pfn * 8), "little")
        except OSError:
            return False
        if flags >> KPF_ZERO_PAGE & 1:
            self.zero_pfns.add(pfn)
            return True
        return False


def _runs(sorted_items: list[int], step: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each run of items that follow one another by ``step``."""
    runs: list[tuple[int, int]] = []
    for item in sorted_items:
        if runs and runs[-1][0] + runs[-1][1] * step == item:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((item, 1))
    return runs


# --------------------------------------------------------------------------- entry point


def _kernel_thread(pid: int) -> bool:
    """Whether ``pid`` is a kernel thread (it has no user memory)."""
    try:
        stat = _read_text(pid, "stat")
    except _Gone:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return len(fields) > 6 and int(fields[6]) & _PF_KTHREAD != 0


_PF_KTHREAD = 0x00200000
"""The ``flags`` bit (field 9 of ``/proc/PID/stat``) of a kernel thread."""


def _check_pid(pid: int) -> int:
    start = _start_time(pid) if pid > 0 else None
    if start is None:
        raise ProcessNotFoundError(f"no process with pid {pid}")
    if _kernel_thread(pid):
        raise UsageError(f"pid {pid} is a kernel thread: it has no user memory to record")
    try:
        for name in ("pagemap", "mem"):
            fd = _proc_open(pid, name)
            os.close(fd)
        mem = _proc_open(pid, "mem")
        try:
            os.pread(mem, 1, 0)
        except PermissionError as exc:
            raise RecordPermissionError(
                f"pid {pid}: permission denied reading /proc/{pid}/mem "
                "(recording needs ptrace rights over the process, or root)"
            ) from exc
        except OSError:
            pass
        finally:
            os.close(mem)
    except _Gone as exc:
        raise ProcessNotFoundError(f"no process with pid {pid}") from exc
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
) -> RecordSummary:
    """Record ``pids`` (or a process started from ``command``) into a trace written to ``out``.

    Samples every ``interval_ns`` until ``duration_ns`` has passed, every
    recorded process has exited, or the started command has exited; Ctrl-C
    ends the recording early with a valid trace.  ``command_stdout`` is a
    file descriptor for the command's standard output (default: inherited).
    The command is ended (SIGTERM, then SIGKILL after 5 s) when recording
    ends in any way, also by an error or a stop signal (inside
    :func:`ksmreplay.signals.raising`, as in the CLI).
    """
    if bool(pids) == bool(command):
        raise UsageError("give either pids or a command to record")
    if interval_ns <= 0:
        raise UsageError("the interval must be positive")
    with _started(command, command_stdout) as child:
        return _record(pids, command, child, interval_ns, duration_ns, out, as_is, progress, form)


@contextlib.contextmanager
def _started(
    command: Sequence[str] | None, stdout: int | None
) -> Iterator[subprocess.Popen[bytes] | None]:
    """The process of ``command`` (None without one), ended when the block ends, however."""
    if not command:
        yield None
        return
    child: subprocess.Popen[bytes] | None = None
    try:
        with signals.held():  # a stop signal now waits until ``child`` is known
            try:
                child = subprocess.Popen(list(command), stdout=stdout)
            except OSError as exc:
                raise UsageError(f"cannot start {command[0]}: {exc.strerror or exc}") from exc
        yield child
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
) -> RecordSummary:
    page_size = mmap.PAGESIZE
    roots: list[tuple[int, int]] = []
    if child is not None:
        start = _start_time(child.pid)
        roots.append((child.pid, start if start is not None else -1))
    else:
        assert pids is not None
        for pid in dict.fromkeys(pids):
            roots.append((pid, _check_pid(pid)))
    meta: dict[str, object] = {
        "recorder": "ksmreplay record",
        "command": list(command) if command else None,
        "pids": [pid for pid, _ in roots],
        "interval_ns": interval_ns,
        "kernel": os.uname().release,
        "as_is": as_is,
    }
    what = " ".join(command) if command else "pids " + ", ".join(str(p) for p, _ in roots)
    header = Header(page_size=page_size, description=f"recorded from {what}", meta=meta)
    writer = _CountingWriter(out, header, form)
    recorder = _Recorder(writer, as_is, page_size)
    for pid, start in roots:
        recorder.add(pid, start, None)
    writer.ksm(0, {"run": 1})
    began = time.monotonic_ns()
    t = 0
    try:
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
                live = len(recorder.procs)
                progress(recorder.summary.samples, t, live, recorder.summary.max_present_pages)
            if final:
                writer.snapshot(t, "end")
                recorder.write_exits(t, gone)
                break
            recorder.write_exits(t, gone)
            wake = began + t + interval_ns
            try:
                time.sleep(max(0, wake - time.monotonic_ns()) / 1e9)
            except KeyboardInterrupt:
                writer.snapshot(t, "end")
                break
            t = max(t + 1, time.monotonic_ns() - began)
    finally:
        recorder.close()
    writer.flush()
    recorder.summary.duration_ns = t
    recorder.summary.events = writer.events
    return recorder.summary


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
