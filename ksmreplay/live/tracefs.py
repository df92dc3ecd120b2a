"""The live kernel's own KSM trace events, read through tracefs (``exec --tracepoints``).

:class:`KsmEvents` is a tracing *instance* of tracefs of its own
(``instances/ksmreplay-PID``): a ring buffer with its own clock, size and
event switches, so that nothing of the top-level tracing state (its
``tracing_on``, buffer size, enabled events, clock) is read or changed.  It
enables ``events/ksm/*`` there, reads them from the instance's
``trace_pipe`` without blocking, and removes the instance at the end (an
instance left by a replay that was killed is removed by the next one).
Where tracefs is not mounted, it is mounted on ``/sys/kernel/tracing`` for
the replay and unmounted afterwards.

:class:`Mapper` turns the kernel's events into the simulator's form
(``ksmreplay/tracepoints.py``): the ``mm`` pointer becomes a trace pid (a
process's ``mm`` is learnt from its ``ksm_enter``, which the process itself
emits, or its parent for a fork child), a page frame the page it was when
ksmd merged it (from the page tables the driver reads between instants),
and an ``rmap_item`` the address of its page where an event gives it away
(the first page of a pair, whose own frame becomes the KSM page).  What
cannot be mapped keeps the kernel's value: a pointer as the kernel prints
it (hashed), a frame as its number.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ksmreplay.live.kernel import LiveKernelError
from ksmreplay.tracepoints import Sink

TRACEFS = "/sys/kernel/tracing"
"""Where tracefs is mounted (mounted here for the replay when it is not)."""
OLD_TRACEFS = "/sys/kernel/debug/tracing"
"""Where older set-ups find it (through debugfs)."""
INSTANCE_PREFIX = "ksmreplay-"
BUFFER_KB = 16384
"""Ring buffer per CPU of the instance, KiB: room for about 200,000 events
between two reads (one read per instant and per full scan of a settle)."""
CLOCK = "mono"
"""The instance's clock: CLOCK_MONOTONIC, the driver's ``time.monotonic``."""


class RawEvent(NamedTuple):
    """One line of ``trace_pipe``."""

    pid: int
    """The task that emitted it (ksmd, a worker, ...)."""
    ts_ns: int
    """When, on :data:`CLOCK` (µs resolution), ns."""
    name: str
    fields: dict[str, Any]
    """The event's fields as printed: numbers as ints, pointers as the kernel prints them."""


_LINE = re.compile(r"^\s*(?P<comm>.*)-(?P<pid>\d+)\s+(?:\(.*?\)\s+)?\[\d+\]\s+(?:\S+\s+)?"
                   r"(?P<s>\d+)\.(?P<us>\d+):\s+(?P<name>\w+):\s+(?P<msg>.*)$")  # fmt: skip
_PTR = r"(\S+)"
_FORMATS: Mapping[str, tuple[re.Pattern[str], tuple[str, ...]]] = {
    name: (re.compile(pattern), fields)
    for name, pattern, fields in (
        ("ksm_start_scan", r"seq (-?\d+) rmap size (-?\d+)", ("seq", "rmap_entries")),
        ("ksm_stop_scan", r"seq (-?\d+) rmap size (-?\d+)", ("seq", "rmap_entries")),
        ("ksm_enter", rf"mm {_PTR}", ("mm",)),
        ("ksm_exit", rf"mm {_PTR}", ("mm",)),
        (
            "ksm_merge_one_page",
            rf"ksm pfn (\d+) rmap_item {_PTR} mm {_PTR} error (-?\d+)",
            ("pfn", "rmap_item", "mm", "err"),
        ),
        (
            "ksm_merge_with_ksm_page",
            rf"(ksm )?pfn (\d+) rmap_item {_PTR} mm {_PTR} error (-?\d+)",
            ("ksm_page", "pfn", "rmap_item", "mm", "err"),
        ),
        ("ksm_remove_ksm_page", r"pfn (\d+)", ("pfn",)),
        (
            "ksm_remove_rmap_item",
            rf"pfn (\d+) rmap_item {_PTR} mm {_PTR}",
            ("pfn", "rmap_item", "mm"),
        ),
        (
            "ksm_advisor",
            r"ksm scan time (-?\d+) pages_to_scan (\d+) cpu percent (\d+)",
            ("scan_time", "pages_to_scan", "cpu_percent"),
        ),
    )
}
_NUMBERS = {"seq", "rmap_entries", "pfn", "err", "scan_time", "pages_to_scan", "cpu_percent"}


def parse_line(line: str) -> RawEvent | None:
    """One ``trace_pipe`` line as a :class:`RawEvent`; None for anything else
    (a line that is no KSM event, such as a note of lost events)."""
    m = _LINE.match(line)
    if m is None or m["name"] not in _FORMATS:
        return None
    pattern, names = _FORMATS[m["name"]]
    f = pattern.fullmatch(m["msg"].strip())
    if f is None:
        return None
    fields: dict[str, Any] = {}
    for name, value in zip(names, f.groups(), strict=True):
        if name == "ksm_page":
            fields[name] = value is not None
        elif name in _NUMBERS:
            fields[name] = int(value)
        else:
            fields[name] = value
    ts = int(m["s"]) * 1_000_000_000 + int(m["us"].ljust(6, "0")[:6]) * 1000
    return RawEvent(int(m["pid"]), ts, m["name"], fields)


def mount_tracefs(target: str) -> None:
    """Mount tracefs on ``target`` (``mount -t tracefs nodev TARGET``).

    :raises OSError: the kernel refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def unmount(target: str) -> None:
    """Unmount what is mounted on ``target``.

    :raises OSError: the kernel refused (busy, not mounted).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(target.encode(), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KsmEvents:
    """A tracefs instance with the KSM events on; use as a context manager.

    :raises LiveKernelError: no tracefs, no KSM events in this kernel, or no
        rights to trace.
    """

    def __init__(self) -> None:
        self.root = ""
        self.mounted = False
        self.path = ""
        self._fd = -1
        self._rest = b""

    def __enter__(self) -> KsmEvents:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        for root in (TRACEFS, OLD_TRACEFS):
            if os.path.isdir(os.path.join(root, "instances")):
                self.root = root
                break
        else:
            try:
                mount_tracefs(TRACEFS)
            except OSError as e:
                raise LiveKernelError(
                    f"--tracepoints needs tracefs, which cannot be mounted on {TRACEFS}: "
                    f"{e.strerror}"
                ) from None
            self.root, self.mounted = TRACEFS, True
        if not os.path.isdir(os.path.join(self.root, "events", "ksm")):
            raise LiveKernelError(
                f"this kernel has no KSM trace events ({self.root}/events/ksm is missing)"
            )
        instances = os.path.join(self.root, "instances")
        for name in os.listdir(instances):
            # A replay killed before it could remove its instance.
            owner = name[len(INSTANCE_PREFIX) :]
            if name.startswith(INSTANCE_PREFIX) and owner.isdigit() and not _alive(int(owner)):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(instances, name))
        self.path = os.path.join(instances, f"{INSTANCE_PREFIX}{os.getpid()}")
        try:
            os.mkdir(self.path)
        except OSError as e:
            self.path = ""
            raise LiveKernelError(f"cannot make a tracing instance: {e.strerror}") from None
        self._write("trace_clock", CLOCK)
        self._write("options/overwrite", "0")  # (when full, new events are dropped: counted)
        self._write("buffer_size_kb", str(BUFFER_KB))
        self._write("events/ksm/enable", "1")
        self._fd = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)

    def _write(self, name: str, value: str) -> None:
        try:
            with open(os.path.join(self.path, name), "w", encoding="ascii") as f:
                f.write(value)
        except OSError as e:
            raise LiveKernelError(f"cannot write {value} to {self.path}/{name}: {e}") from None

    def read(self) -> list[RawEvent]:
        """The events since the last read, in order."""
        chunks = [self._rest]
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise LiveKernelError(f"cannot read {self.path}/trace_pipe: {e}") from None
            if not data:
                break
            chunks.append(data)
        text = b"".join(chunks)
        lines = text.split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            event = parse_line(line.decode("utf-8", "replace"))
            if event is not None:
                out.append(event)
        return out

    def lost(self) -> int:
        """Events the buffer had no room for, over every CPU."""
        lost = 0
        per_cpu = os.path.join(self.path, "per_cpu")
        for cpu in os.listdir(per_cpu):
            with open(os.path.join(per_cpu, cpu, "stats"), encoding="ascii") as f:
                for line in f:
                    name, _, value = line.partition(":")
                    if name.strip() in ("overrun", "dropped events"):
                        lost += int(value.split()[0])
        return lost

    def close(self) -> None:
        """Remove the instance (and tracefs, if mounted here)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.path:
            with contextlib.suppress(OSError):
                self._write("events/ksm/enable", "0")
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
            self.path = ""
        if self.mounted:
            with contextlib.suppress(OSError):
                unmount(self.root)
            self.mounted = False


Page = tuple[int, int]
"""(trace pid, trace page number)."""

ANON, KSM, KSM_ZERO, OTHER = "anon", "ksm", "ksm_zero", "other"
"""What a page maps, for :meth:`Mapper.look`: a private frame, a KSM page,
the zero page placed by KSM, anything else (nothing, the zero page by fault)."""

View = Mapping[Page, tuple[str, int]]
"""Every page of the replay's processes: what it maps and the frame number."""


class _Pending(NamedTuple):
    """An event read, mapped but for what the next look at the page tables tells."""

    event: dict[str, Any]
    item: tuple[str, str] | None
    """The kernel's mm and rmap_item pointers of the event's item, if it has one."""
    target: tuple[int, int | str] | None
    """Where a merged item's page went: (pid, KSM page frame or ``"zero"``)."""


class Mapper:
    """The kernel's events of one replay, named as the simulator names them.

    The driver tells it what it knows: which worker stands for which trace
    pid (:meth:`worker`), each fork (:meth:`fork`), and at every look at the
    page tables what every page maps (:meth:`look`); it hands it the events
    read (:meth:`events`) with the trace time each belongs to.  Events wait
    for the next look (or :meth:`flush`): a page merged since the last look
    is the page of the event's process that went from a private frame to the
    event's KSM page (or to the zero page) in between, the lowest address
    first (ksmd walks an mm upwards), which names its ``rmap_item`` for good.
    """

    def __init__(self, sink: Sink, mode: str, kernel: str, page_size: int, zero_pfn: int):
        self.sink = sink
        self.mode = mode
        self.kernel = kernel
        self.page_size = page_size
        self.zero_pfn = zero_pfn
        self.pids: dict[int, int] = {}
        """Worker pid -> trace pid."""
        self.mms: dict[str, int] = {}
        """The kernel's (hashed) mm pointer -> trace pid."""
        self.own_mm: dict[int, str] = {}
        """Trace pid -> its mm pointer."""
        self.forking: tuple[int, int] | None = None
        """(parent, child) of the fork being made: the parent emits the child's ksm_enter."""
        self.view: View = {}
        """What every page mapped at the last look."""
        self.owner: dict[int, Page] = {}
        """Private frame -> its page at the last look."""
        self.kpages: dict[int, Page] = {}
        """KSM page frame -> the page that became it."""
        self.items: dict[tuple[str, str], int] = {}
        """The kernel's (hashed) mm and rmap_item pointers -> the item's page's trace
        address, as last learnt (the kernel reuses a freed item's memory: only
        for events that tell nothing else, the removals)."""
        self.named: set[Page] = set()
        """Pages whose rmap_item is known."""
        self.pending: list[_Pending] = []

    def worker(self, worker_pid: int, trace_pid: int) -> None:
        """Worker ``worker_pid`` stands for ``trace_pid``."""
        self.pids[worker_pid] = trace_pid

    def fork(self, parent_child: tuple[int, int] | None) -> None:
        """The events read from now on are those of a fork (parent, child), or
        of no fork (the driver reads the events before a fork and right after)."""
        self.forking = parent_child

    def events(self, raw: list[RawEvent], when: Callable[[int], int]) -> None:
        """Take ``raw``, ``when(ts_ns)`` giving each its trace time; they go to
        the sink at the next :meth:`look` or :meth:`flush`."""
        for ev in raw:
            pending = self._map(ev)
            if pending is not None:
                event = {"t": when(ev.ts_ns), "mode": self.mode, "kernel": self.kernel}
                event["event"] = ev.name
                event.update(pending.event)
                self.pending.append(pending._replace(event=event))

    def look(self, view: View) -> None:
        """A look at the page tables: name the pages of the events waiting, hand them on."""
        moved: dict[tuple[int, int | str], list[int]] = {}
        stayed: dict[tuple[int, int | str], list[int]] = {}
        for (pid, page), (kind, pfn) in view.items():
            old = self.view.get((pid, page))
            if old is None or kind not in (KSM, KSM_ZERO):
                continue
            key = (pid, pfn if kind == KSM else "zero")
            if old[0] == ANON and old[1] != pfn:
                moved.setdefault(key, []).append(page)  # (not the page that became it)
            elif old == (kind, pfn) and (pid, page) not in self.named:
                stayed.setdefault(key, []).append(page)  # (a fork child's, still unnamed)
        for pages in (*moved.values(), *stayed.values()):
            pages.sort(reverse=True)
        self._hand_on(moved, stayed)
        self.view = view
        self.owner = {pfn: page for page, (kind, pfn) in view.items() if kind == ANON}

    def flush(self) -> None:
        """Hand on the events waiting, with what is known."""
        self._hand_on({}, {})

    def _hand_on(
        self,
        moved: Mapping[tuple[int, int | str], list[int]],
        stayed: Mapping[tuple[int, int | str], list[int]],
    ) -> None:
        """The events waiting to the sink, each merged page the first (lowest)
        of those ``moved`` to its target since the last look, else of those that
        ``stayed`` there (a fork child's page merged with itself)."""
        for p in self.pending:
            if p.item is not None and not isinstance(p.event["rmap_item"], str):
                self.items[p.item] = p.event["rmap_item"]  # (the first page of a pair)
            elif p.item is not None:
                pages = (moved.get(p.target) or stayed.get(p.target)) if p.target else None
                if p.target is not None and pages:
                    page = pages.pop()
                    self.named.add((p.target[0], page))
                    self.items[p.item] = page * self.page_size
                p.event["rmap_item"] = self.items.get(p.item, p.item[1])
            self.sink(p.event)
        self.pending = []

    def forget_items(self) -> None:
        """Every item was freed (run=2): pointers learnt no longer hold."""
        self.items.clear()
        self.named.clear()

    def _page(self, pfn: int) -> dict[str, int] | str | int:
        if pfn == self.zero_pfn:
            return "zero"
        page = self.kpages.get(pfn) or self.owner.get(pfn)
        if page is None:
            return pfn
        return {"pid": page[0], "addr": page[1] * self.page_size}

    def _map(self, ev: RawEvent) -> _Pending | None:
        f = dict(ev.fields)
        name = ev.name
        if name == "ksm_enter":
            pid = self.pids.get(ev.pid)
            if pid is None:
                return None  # another process of the machine
            mm = f["mm"]
            if self.forking is not None and self.forking[0] == pid and self.own_mm.get(pid) != mm:
                pid = self.forking[1]  # ksm_fork(): the parent emits it
            self.mms[mm] = pid
            self.own_mm.setdefault(pid, mm)
            return _Pending({"mm": pid}, None, None)
        if name == "ksm_exit":
            if f["mm"] not in self.mms:
                return None
            return _Pending({"mm": self.mms[f["mm"]]}, None, None)
        item = (f["mm"], f["rmap_item"]) if "rmap_item" in f else None
        target: tuple[int, int | str] | None = None
        pid = self.mms.get(f.get("mm", ""))
        if "pfn" in f:
            pfn = f["pfn"]
            if name == "ksm_merge_with_ksm_page" and not f["ksm_page"]:
                # The first page of a pair becomes the KSM page in place.
                page = self.owner.get(pfn)
                if page is not None:
                    self.kpages[pfn] = page
                    f["rmap_item"] = page[1] * self.page_size
                    self.named.add(page)
            elif name == "ksm_merge_with_ksm_page" and pid is not None:
                target = (pid, pfn)
            elif name == "ksm_merge_one_page" and pid is not None:
                target = (pid, "zero")
            f["pfn"] = self._page(pfn)
            if name == "ksm_merge_with_ksm_page":
                f["ksm_page"] = f["pfn"] if f["ksm_page"] else None
            if name == "ksm_remove_ksm_page":
                self.kpages.pop(pfn, None)
        if "mm" in f:
            f["mm"] = self.mms.get(f["mm"], f["mm"])
        return _Pending({k: f[k] for k in _FORMATS[name][1]}, item, target)
