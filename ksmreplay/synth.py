"""Synthetic workloads: deterministic trace generators named after what a host runs.

Each workload is declared once, in :data:`WORKLOADS`, with its parameters
(:class:`Param`: name, default, range, help).  That one table drives the
validation of ``--param NAME=VALUE``, ``ksmreplay synth --list`` and the help
text.  Parameters are named after what a user knows about a host (how many
guests, how many MiB each, what share of their memory is zeros), never after
simulator internals::

    values = resolve_params(WORKLOAD_BY_NAME["vm-guests"], ["guests=8"])
    with open("vm.msgpack", "wb") as out:
        synthesize("vm-guests", out, values, seed=1)

Every generated trace

* has page size 4096 and records the workload, seed and every parameter value
  in the header's ``meta``;
* sets every KSM knob it relies on with a ``ksm`` event at ``t`` = 0
  (``run`` = 1 plus the knob parameters of the workload), so that a replay's
  ``--set`` cannot silently change what the trace means;
* writes page contents as fingerprint lists (one ``uint64`` per page): ``0``
  for a page of zeros, otherwise values drawn for the trace, each distinct
  from every other unless the workload means two pages to be identical;
* places ``settle`` and ``snapshot`` events where a user would look (with
  ``--param settle=0`` only the snapshots: ksmd then merges in trace time only).

The same workload, parameters and seed give byte-identical output (with the
same numpy version: the generators draw from ``numpy.random.default_rng``).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import IO, Any

import numpy as np

from ksmreplay.errors import UsageError
from ksmreplay.ksm.knobs import KNOB_BY_NAME
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import FingerprintArray, Header

ParamValue = int | float

PAGE_SIZE = 4096
"""Bytes per page of every synthetic trace."""
MIB_PAGES = 2**20 // PAGE_SIZE
"""Pages per MiB."""
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
TICK_NS = 100 * NS_PER_MS
"""Activity over time (dirtying, private writes, allocation) is written in batches,
one per process every this many ns of trace time."""
WRITE_CHUNK_PAGES = 8192
"""Largest number of pages one ``write`` event covers (bulk fills are split)."""

BASE = 0x7F0000000000
"""Address of each process's first mapping."""
REGION_STRIDE = 2**32
"""Distance between the mappings of one process (none is larger than this)."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a workload.

    :ivar name: the name ``--param NAME=VALUE`` uses.
    :ivar default: the value when not given; an ``int`` default makes an
        integer parameter, a ``float`` default a decimal one.
    :ivar minimum: smallest accepted value.
    :ivar maximum: largest accepted value.
    :ivar help: one line for ``--list``.
    """

    name: str
    default: ParamValue
    minimum: ParamValue
    maximum: ParamValue
    help: str

    @property
    def is_int(self) -> bool:
        """Whether the parameter takes integers only."""
        return isinstance(self.default, int)

    def parse(self, text: str) -> ParamValue:
        """Parse a command-line value; raise :class:`UsageError` if it is not accepted."""
        value: ParamValue
        try:
            value = int(text, 10) if self.is_int else float(text)
        except ValueError:
            what = "an integer" if self.is_int else "a number"
            raise UsageError(f"parameter {self.name} must be {what}, not {text!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"parameter {self.name} must be a finite number, not {text!r}")
        if not self.minimum <= value <= self.maximum:
            raise UsageError(
                f"parameter {self.name} must be between {_number(self.minimum)} and "
                f"{_number(self.maximum)}, not {text}"
            )
        return value

    def range_text(self) -> str:
        """``MIN..MAX`` as ``--list`` shows it."""
        return f"{_number(self.minimum)}..{_number(self.maximum)}"


def _number(value: ParamValue) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _knob_param(name: str, default: int) -> Param:
    """A parameter that sets the KSM knob ``name`` at t=0 (range and help from the knob table)."""
    knob = KNOB_BY_NAME[name]
    return Param(name, default, knob.minimum, knob.maximum, f"KSM knob at t=0: {knob.help}")


SETTLE = Param(
    "settle",
    1,
    0,
    1,
    "1: ksmd settles before the snapshots that end a phase; "
    "0: no settle, ksmd works in trace time only",
)
"""Every workload's last parameter: whether its trace has ``settle`` events."""


def _common_knobs(pages_to_scan: int, use_zero_pages: int | None) -> tuple[Param, ...]:
    """The knob parameters every workload has, and :data:`SETTLE`."""
    params = [_knob_param("pages_to_scan", pages_to_scan), _knob_param("sleep_millisecs", 20)]
    if use_zero_pages is not None:
        params.append(_knob_param("use_zero_pages", use_zero_pages))
    params.append(SETTLE)
    return tuple(params)


def _duration(default: float) -> Param:
    return Param(
        "duration_s", default, 0.0, 3600.0, "seconds of trace time the activity phase lasts"
    )


class Values(Mapping[str, ParamValue]):
    """The resolved parameter values of one workload, with typed accessors."""

    def __init__(self, values: Mapping[str, ParamValue]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> ParamValue:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Values({self._values!r})"

    def integer(self, name: str) -> int:
        value = self._values[name]
        assert isinstance(value, int)
        return value

    def share(self, name: str) -> float:
        """A ``*_percent`` parameter as a fraction of 1."""
        return float(self._values[name]) / 100.0

    def ns(self, name: str) -> int:
        """A ``*_s`` parameter in nanoseconds."""
        return round(float(self._values[name]) * NS_PER_S)

    def pages(self, name: str) -> int:
        """A ``*_mib`` parameter in pages."""
        return self.integer(name) * MIB_PAGES


# --------------------------------------------------------------------------- the builder


class _Synth:
    """A :class:`TraceWriter` with the generators' shared helpers.

    :ivar rng: the one source of randomness of a trace.
    """

    def __init__(self, writer: TraceWriter, seed: int, settles: bool = True) -> None:
        self.w = writer
        self.settles = settles
        """Whether :meth:`settle` writes a ``settle`` event (parameter ``settle``)."""
        self.rng = np.random.default_rng(seed)
        # Fresh fingerprints are counter * an odd multiplier, modulo 2**64: a
        # bijection, so they never repeat and never hit 0 (counter >= 1).
        self._multiplier = np.uint64(int(self.rng.integers(0, 2**63)) * 2 + 1)
        self._counter = 1
        self._t = 0

    def at(self, t: int) -> int:
        """Check that events stay in time order; return ``t``."""
        if t < self._t:
            raise AssertionError(f"synthetic event at t={t} before t={self._t}")
        self._t = t
        return t

    def fresh(self, n: int) -> FingerprintArray:
        """``n`` fingerprints never returned before (no zeros)."""
        counters = np.arange(self._counter, self._counter + n, dtype=np.uint64)
        self._counter += n
        fps: FingerprintArray = counters * self._multiplier
        return fps

    def mixed(
        self, n: int, zero: float, pool: FingerprintArray | None = None, pooled: float = 0.0
    ) -> FingerprintArray:
        """``n`` page contents: each zero with chance ``zero``, else from ``pool``
        with chance ``pooled``, else fresh."""
        fps = self.fresh(n)
        draw = self.rng.random(n)
        if pool is not None and len(pool) and pooled > 0:
            from_pool = (draw >= zero) & (draw < zero + pooled)
            fps[from_pool] = pool[self.rng.integers(0, len(pool), int(from_pool.sum()))]
        fps[draw < zero] = 0
        return fps

    def layout(self, parts: Iterable[FingerprintArray]) -> FingerprintArray:
        """The pages of ``parts`` concatenated, then shuffled over the address range."""
        fps: FingerprintArray = np.concatenate(list(parts)).astype(np.uint64)
        shuffled: FingerprintArray = fps[self.rng.permutation(len(fps))]
        return shuffled

    def sample(self, n: int, k: int) -> np.ndarray:
        """``k`` distinct page indices out of ``n`` (at most ``n``), sorted."""
        k = min(k, n)
        return np.sort(self.rng.choice(n, size=k, replace=False))

    def poisson(self, mean: float) -> int:
        return int(self.rng.poisson(mean)) if mean > 0 else 0

    def ksm(self, t: int, settings: Mapping[str, int]) -> None:
        self.w.ksm(self.at(t), settings)

    def alloc(self, t: int, pid: int, addr: int, pages: int) -> None:
        self.w.alloc(self.at(t), pid, addr, pages * PAGE_SIZE)

    def madvise(self, t: int, pid: int, addr: int, pages: int, advice: str) -> None:
        self.w.madvise(self.at(t), pid, addr, pages * PAGE_SIZE, advice)

    def fill(self, t: int, pid: int, addr: int, fps: FingerprintArray) -> None:
        """Write ``fps`` to consecutive pages from ``addr``, in chunks."""
        self.at(t)
        for start in range(0, len(fps), WRITE_CHUNK_PAGES):
            chunk = fps[start : start + WRITE_CHUNK_PAGES]
            self._write(t, pid, addr + start * PAGE_SIZE, chunk)

    def scatter(
        self, t: int, pid: int, addr: int, pages: np.ndarray, fps: FingerprintArray
    ) -> None:
        """Write ``fps[i]`` to page ``pages[i]`` of the mapping at ``addr`` (sorted pages);
        adjacent pages share one ``write`` event."""
        self.at(t)
        for lo, hi in _runs(pages):
            self._write(t, pid, addr + int(pages[lo]) * PAGE_SIZE, fps[lo:hi])

    def dontneed(self, t: int, pid: int, addr: int, pages: np.ndarray) -> None:
        """MADV_DONTNEED on each page of ``pages`` (sorted), one event per run."""
        self.at(t)
        for lo, hi in _runs(pages):
            start = addr + int(pages[lo]) * PAGE_SIZE
            self.w.madvise(t, pid, start, (hi - lo) * PAGE_SIZE, "dontneed")

    def _write(self, t: int, pid: int, addr: int, fps: FingerprintArray) -> None:
        length = len(fps) * PAGE_SIZE
        if len(fps) and bool((fps == fps[0]).all()):
            self.w.write(t, pid, addr, length, int(fps[0]))
        else:
            self.w.write(t, pid, addr, length, fps)

    def settle(self, t: int, label: str) -> None:
        """Let ksmd settle (unless :attr:`settles` is off), then take the snapshot ``label``."""
        if self.settles:
            self.w.settle(self.at(t))
        self.w.snapshot(self.at(t), label)

    def snapshot(self, t: int, label: str) -> None:
        self.w.snapshot(self.at(t), label)


def _runs(pages: np.ndarray) -> list[tuple[int, int]]:
    """``(lo, hi)`` index bounds of the runs of consecutive values in sorted ``pages``."""
    if not len(pages):
        return []
    breaks = (np.flatnonzero(np.diff(pages) != 1) + 1).tolist()
    return list(pairwise([0, *breaks, len(pages)]))


def _ticks(duration_ns: int) -> Iterator[tuple[int, float]]:
    """``(t, seconds since the previous tick)`` for every tick of the activity phase,
    the last one at ``duration_ns`` exactly."""
    t = 0
    while t < duration_ns:
        step = min(TICK_NS, duration_ns - t)
        t += step
        yield t, step / NS_PER_S


def _start_ksm(s: _Synth, v: Values, **extra: int) -> None:
    """The ``ksm`` event at t=0: run=1 and the workload's knob parameters."""
    settings = {"run": 1}
    for name in ("pages_to_scan", "sleep_millisecs", "use_zero_pages"):
        if name in v:
            settings[name] = v.integer(name)
    settings.update(extra)
    s.ksm(0, settings)


# --------------------------------------------------------------------------- vm-guests


def _vm_guests(s: _Synth, v: Values) -> None:
    guests, pages = v.integer("guests"), v.pages("guest_mib")
    zeros = round(pages * v.share("zero_percent"))
    shared = min(round(pages * v.share("shared_percent")), pages - zeros)
    image = s.fresh(shared)  # the pages every guest holds: the same OS and libraries
    _start_ksm(s, v)
    for pid in range(1, guests + 1):
        fps = s.layout([image, np.zeros(zeros, np.uint64), s.fresh(pages - zeros - shared)])
        s.alloc(0, pid, BASE, pages)
        s.fill(0, pid, BASE, fps)
        s.madvise(0, pid, BASE, pages, "mergeable")
    s.settle(0, "booted")
    duration = v.ns("duration_s")
    rate, to_zero = float(v["dirty_pages_per_s"]), v.share("dirty_zero_percent")
    working = round(pages * v.share("dirty_set_percent"))
    # The pages each guest rewrites: all of them, or a working set drawn once.
    sets = {pid: s.sample(pages, working) for pid in range(1, guests + 1) if working < pages}
    for t, dt in _ticks(duration):
        for pid in range(1, guests + 1):
            if pid in sets:
                dirty = sets[pid][s.sample(working, s.poisson(rate * dt))]
            else:
                dirty = s.sample(pages, s.poisson(rate * dt))
            s.scatter(t, pid, BASE, dirty, s.mixed(len(dirty), to_zero))
    if duration:
        s.snapshot(duration, "dirtied")
    s.settle(duration, "settled")


def _check_vm_guests(v: Values) -> str | None:
    if v.share("zero_percent") + v.share("shared_percent") > 1.0:
        return "zero_percent + shared_percent must not exceed 100"
    return None


# --------------------------------------------------------------------------- containers

_TEMPLATE_PID = 1


def _containers(s: _Synth, v: Values) -> None:
    template_pages, heap_pages = v.pages("template_mib"), v.pages("heap_mib")
    private_pages = v.pages("private_mib")
    heap_base, private_base = BASE + REGION_STRIDE, BASE + 2 * REGION_STRIDE
    heap = s.fresh(heap_pages)  # what every process of the runtime builds at start
    private_zero = v.share("private_zero_percent")
    _start_ksm(s, v)
    # The template turns merge_any on; every process forked from it inherits it.
    s.w.prctl(0, _TEMPLATE_PID, True)
    s.alloc(0, _TEMPLATE_PID, BASE, template_pages)
    s.fill(0, _TEMPLATE_PID, BASE, s.fresh(template_pages))

    live: list[int] = []
    next_pid = _TEMPLATE_PID + 1

    def start(t: int) -> None:
        nonlocal next_pid
        pid = next_pid
        next_pid += 1
        s.w.fork(s.at(t), _TEMPLATE_PID, pid)
        s.alloc(t, pid, heap_base, heap_pages)
        s.fill(t, pid, heap_base, heap)
        s.alloc(t, pid, private_base, private_pages)
        s.fill(t, pid, private_base, s.mixed(private_pages, private_zero))
        live.append(pid)

    for _ in range(v.integer("processes")):
        start(0)
    s.settle(0, "started")

    duration = v.ns("duration_s")
    changes = (
        sorted(
            [(int(t), 1) for t in s.rng.integers(1, duration + 1, v.integer("starts"))]
            + [(int(t), 0) for t in s.rng.integers(1, duration + 1, v.integer("stops"))]
        )
        if duration
        else []
    )
    heap_rate, private_rate = float(v["heap_writes_per_s"]), float(v["private_writes_per_s"])
    pending = iter(changes)
    change = next(pending, None)
    for tick, dt in _ticks(duration):
        while change is not None and change[0] <= tick:
            t, is_start = change
            if is_start:
                start(t)
            else:
                pid = live.pop(int(s.rng.integers(0, len(live))))
                s.w.exit(s.at(t), pid)
            change = next(pending, None)
        for pid in live:
            pages = s.sample(heap_pages, s.poisson(heap_rate * dt))
            s.scatter(tick, pid, heap_base, pages, s.fresh(len(pages)))
            pages = s.sample(private_pages, s.poisson(private_rate * dt))
            s.scatter(tick, pid, private_base, pages, s.mixed(len(pages), private_zero))
    if duration:
        s.snapshot(duration, "running")
    s.settle(duration, "settled")


def _check_containers(v: Values) -> str | None:
    if v.integer("stops") > v.integer("processes"):
        return "stops must not exceed processes (only processes running from the start stop)"
    if (v.integer("starts") or v.integer("stops")) and not v.ns("duration_s"):
        return "starts and stops need duration_s > 0"
    return None


# --------------------------------------------------------------------------- gc-heap


@dataclass(slots=True)
class _Heap:
    """One instance's heap: an old generation from page 0, a young one from ``young_base``.

    :ivar contents: the fingerprint of each page (0 for pages never written or zeroed).
    """

    pid: int
    young_base: int
    contents: FingerprintArray
    old_top: int = 0
    young_top: int = 0
    collections: int = 0
    compactions: int = 0


def _gc_heap(s: _Synth, v: Values) -> None:
    pages = v.pages("heap_mib")
    young_base = pages // 2
    survive, duplicate = v.share("survive_percent"), v.share("duplicate_percent")
    pool = s.fresh(max(1, pages // 32))  # objects every instance builds alike
    _start_ksm(s, v)
    heaps = []
    for pid in range(1, v.integer("instances") + 1):
        s.w.prctl(0, pid, True)  # merge_any: no madvise anywhere
        s.alloc(0, pid, BASE, pages)
        heaps.append(_Heap(pid, young_base, np.zeros(pages, np.uint64), young_top=young_base))

    def put(t: int, heap: _Heap, first: int, fps: FingerprintArray) -> None:
        heap.contents[first : first + len(fps)] = fps
        s.fill(t, heap.pid, BASE + first * PAGE_SIZE, fps)

    def collect(t: int, heap: _Heap) -> None:
        # Minor collection: survivors of the young generation are copied to the
        # old one, and the young generation is zeroed for the next allocations.
        young = heap.contents[heap.young_base : heap.young_top]
        kept = young[s.rng.random(len(young)) < survive]
        if heap.old_top + len(kept) > heap.young_base:
            # Major collection: the old generation is compacted towards page 0,
            # rewriting every page that moves, and the space left is zeroed.
            old = heap.contents[: heap.old_top]
            live = old[s.rng.random(len(old)) < survive]
            put(t, heap, 0, live)
            if heap.old_top > len(live):
                put(t, heap, len(live), np.zeros(heap.old_top - len(live), np.uint64))
            heap.old_top = len(live)
            heap.compactions += 1
        kept = kept[: heap.young_base - heap.old_top]
        if len(kept):
            put(t, heap, heap.old_top, kept)
            heap.old_top += len(kept)
        if len(young):
            put(t, heap, heap.young_base, np.zeros(len(young), np.uint64))
        heap.young_top = heap.young_base
        heap.collections += 1

    rate = v.integer("alloc_mib_per_s") * MIB_PAGES
    duration = v.ns("duration_s")
    for t, dt in _ticks(duration):
        for heap in heaps:
            wanted = s.poisson(rate * dt)
            while wanted > 0:
                room = pages - heap.young_top
                if room == 0:
                    collect(t, heap)
                    continue
                n = min(wanted, room)
                put(t, heap, heap.young_top, s.mixed(n, 0.0, pool, duplicate))
                heap.young_top += n
                wanted -= n
    if duration:
        s.snapshot(duration, "running")
    s.settle(duration, "settled")


# --------------------------------------------------------------------------- zero-heavy


def _zero_heavy(s: _Synth, v: Values) -> None:
    processes, pages = v.integer("processes"), v.pages("mib")
    zeros = round(pages * v.share("zero_percent"))
    shared = min(round(pages * v.share("shared_percent")), pages - zeros)
    common = s.fresh(shared)
    _start_ksm(s, v)
    for pid in range(1, processes + 1):
        fps = s.layout([np.zeros(zeros, np.uint64), common, s.fresh(pages - zeros - shared)])
        s.alloc(0, pid, BASE, pages)
        s.fill(0, pid, BASE, fps)
        s.madvise(0, pid, BASE, pages, "mergeable")
    s.settle(0, "merged")

    duration = v.ns("duration_s")
    unmerge_at = duration // 2
    unmerged = False
    drop_rate, rezero_rate = float(v["dontneed_pages_per_s"]), float(v["rezero_pages_per_s"])
    for t, dt in _ticks(duration):
        if not unmerged and t > unmerge_at:
            for pid in range(1, v.integer("unmerging_processes") + 1):
                s.madvise(unmerge_at, pid, BASE, pages, "unmergeable")
            s.snapshot(unmerge_at, "unmerged")
            unmerged = True
        for pid in range(1, processes + 1):
            # The process drops some pages (they read back as zeros) and writes
            # zeros over others (a freed buffer cleared for reuse).
            s.dontneed(t, pid, BASE, s.sample(pages, s.poisson(drop_rate * dt)))
            cleared = s.sample(pages, s.poisson(rezero_rate * dt))
            s.scatter(t, pid, BASE, cleared, np.zeros(len(cleared), np.uint64))
    if not unmerged:
        for pid in range(1, v.integer("unmerging_processes") + 1):
            s.madvise(duration, pid, BASE, pages, "unmergeable")
        s.snapshot(duration, "unmerged")
    s.settle(duration, "settled")


def _check_zero_heavy(v: Values) -> str | None:
    if v.integer("unmerging_processes") > v.integer("processes"):
        return "unmerging_processes must not exceed processes"
    return _check_vm_guests(v)


# --------------------------------------------------------------------------- unmerge-cycle


def _unmerge_cycle(s: _Synth, v: Values) -> None:
    processes, pages = v.integer("processes"), v.pages("mib")
    zeros = round(pages * v.share("zero_percent"))
    shared = min(round(pages * v.share("shared_percent")), pages - zeros)
    common = s.fresh(shared)
    _start_ksm(s, v, use_zero_pages=1)
    for pid in range(1, processes + 1):
        fps = s.layout([np.zeros(zeros, np.uint64), common, s.fresh(pages - zeros - shared)])
        s.alloc(0, pid, BASE, pages)
        s.fill(0, pid, BASE, fps)
    phase = round(v.integer("phase_ms") * NS_PER_MS)
    rewrite, to_zero = v.share("rewrite_percent"), v.share("zero_percent")
    t = 0
    for cycle in range(1, v.integer("cycles") + 1):
        for use_zero_pages in (1, 0):
            name = f"cycle{cycle}-zero-pages-{'on' if use_zero_pages else 'off'}"
            if t:
                t += phase
                for pid in range(1, processes + 1):
                    changed = s.sample(pages, round(pages * rewrite))
                    s.scatter(t, pid, BASE, changed, s.mixed(len(changed), to_zero))
            t += phase
            s.ksm(t, {"use_zero_pages": use_zero_pages})
            for pid in range(1, processes + 1):
                s.madvise(t, pid, BASE, pages, "mergeable")
            s.settle(t, f"{name}-merged")
            t += phase
            for pid in range(1, processes + 1):
                s.madvise(t, pid, BASE, pages, "unmergeable")
            s.snapshot(t, f"{name}-unmerged")
    # ksmd passes the unmerged ranges and drops their items: the lazy counters fall.
    s.snapshot(t + phase, "end")


# --------------------------------------------------------------------------- the table


def _no_check(values: Values) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Workload:
    """One synthetic workload.

    :ivar name: the ``WORKLOAD`` argument of ``ksmreplay synth``.
    :ivar summary: one line.
    :ivar story: what the trace does over time and where it takes snapshots.
    :ivar params: its parameters, in ``--list`` order.
    :ivar generate: writes the events after the header.
    :ivar check: says why a combination of values is not accepted, or None.
    """

    name: str
    summary: str
    story: str
    params: tuple[Param, ...]
    generate: Callable[[_Synth, Values], None]
    check: Callable[[Values], str | None] = _no_check

    @property
    def param_by_name(self) -> Mapping[str, Param]:
        return {p.name: p for p in self.params}


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "vm-guests",
        "virtual machines of the same OS, madvised mergeable as a hypervisor does",
        "Each guest maps its memory, fills it at t=0 (zero pages, pages every guest "
        "holds, pages of its own, spread over the range) and madvises it mergeable; "
        "ksmd settles: snapshot 'booted'.  Then every guest rewrites pages at its "
        "dirty rate (random pages of its working set, dirty_set_percent of its "
        "pages), some to zeros, while ksmd runs in trace time: snapshot "
        "'dirtied' at duration_s; a last settle: snapshot 'settled'.",
        (
            Param("guests", 4, 1, 1024, "number of guests"),
            Param("guest_mib", 16, 1, 65536, "memory of each guest, MiB"),
            Param("zero_percent", 20.0, 0.0, 100.0, "share of guest memory that is zeros"),
            Param("shared_percent", 40.0, 0.0, 100.0, "share of guest memory every guest holds"),
            Param("dirty_pages_per_s", 500.0, 0.0, 1e7, "pages each guest rewrites per second"),
            Param(
                "dirty_zero_percent", 10.0, 0.0, 100.0, "share of rewritten pages that get zeros"
            ),
            Param(
                "dirty_set_percent",
                100.0,
                0.0,
                100.0,
                "share of each guest's pages its rewrites fall on (a working set drawn at random)",
            ),
            _duration(2.0),
            *_common_knobs(1000, 1),
        ),
        _vm_guests,
        _check_vm_guests,
    ),
    Workload(
        "containers",
        "processes of one runtime forked from a template that uses prctl merge_any",
        "A template process turns merge_any on and maps its own pages; each process "
        "is forked from it (inheriting merge_any and the template's pages copy-on-"
        "write), builds the runtime's heap (the same in every process) and its "
        "private data.  Snapshot 'started' after the first processes settle; then "
        "processes start and stop at random times while they write now and then to "
        "their heap and more often to their private data: snapshot 'running' at "
        "duration_s, then 'settled'.",
        (
            Param("processes", 8, 1, 1024, "processes running from the start"),
            Param("starts", 4, 0, 1024, "processes started during duration_s"),
            Param("stops", 4, 0, 1024, "processes stopped during duration_s"),
            Param("template_mib", 1, 0, 4096, "memory of the template each process inherits, MiB"),
            Param(
                "heap_mib", 4, 1, 4096, "runtime heap each process builds (the same in all), MiB"
            ),
            Param("private_mib", 1, 1, 4096, "private data of each process, MiB"),
            Param(
                "private_zero_percent", 10.0, 0.0, 100.0, "share of private pages that are zeros"
            ),
            Param(
                "heap_writes_per_s", 5.0, 0.0, 1e7, "heap pages each process rewrites per second"
            ),
            Param(
                "private_writes_per_s",
                100.0,
                0.0,
                1e7,
                "private pages each process rewrites per second",
            ),
            _duration(2.0),
            *_common_knobs(1000, 1),
        ),
        _containers,
        _check_containers,
    ),
    Workload(
        "gc-heap",
        "a garbage-collected heap made mergeable with prctl merge_any",
        "Each instance turns merge_any on and maps its heap: an old generation in "
        "the lower half, a young one in the upper half.  It allocates at its rate "
        "(some objects alike in every instance, the rest unique); when the young "
        "generation is full, survivors are copied to the old one and the young one "
        "is zeroed; when the old one is full, it is compacted towards its start, "
        "rewriting the pages that move, and the rest is zeroed.  Snapshot 'running' "
        "at duration_s, then 'settled'.",
        (
            Param("instances", 2, 1, 1024, "processes running the same program"),
            Param("heap_mib", 16, 2, 65536, "heap of each instance, MiB"),
            Param("alloc_mib_per_s", 32, 0, 65536, "allocation rate of each instance, MiB/s"),
            Param(
                "survive_percent", 20.0, 0.0, 100.0, "share of objects that survive a collection"
            ),
            Param(
                "duplicate_percent",
                30.0,
                0.0,
                100.0,
                "share of allocated pages alike in every instance",
            ),
            _duration(2.0),
            *_common_knobs(1000, 1),
        ),
        _gc_heap,
    ),
    Workload(
        "zero-heavy",
        "mostly zero pages, dropped and cleared, and unmerged half-way",
        "Each process fills its memory at t=0, mostly with zeros, and madvises it "
        "mergeable; ksmd settles: snapshot 'merged'.  During duration_s every "
        "process drops pages with MADV_DONTNEED and writes zeros over others; "
        "half-way the first unmerging_processes say MADV_UNMERGEABLE on all their "
        "memory: snapshot 'unmerged'.  Then 'settled'.  With use_zero_pages=1 this "
        "is where the legacy and unshare modes differ most.",
        (
            Param("processes", 4, 1, 1024, "number of processes"),
            Param("mib", 8, 1, 65536, "memory of each process, MiB"),
            Param("zero_percent", 80.0, 0.0, 100.0, "share of memory that is zeros"),
            Param("shared_percent", 10.0, 0.0, 100.0, "share of memory every process holds"),
            Param("dontneed_pages_per_s", 200.0, 0.0, 1e7, "pages each process drops per second"),
            Param(
                "rezero_pages_per_s",
                200.0,
                0.0,
                1e7,
                "pages each process writes zeros over per second",
            ),
            Param("unmerging_processes", 2, 0, 1024, "processes that unmerge half-way"),
            _duration(2.0),
            *_common_knobs(1000, 1),
        ),
        _zero_heavy,
        _check_zero_heavy,
    ),
    Workload(
        "unmerge-cycle",
        "merge, MADV_UNMERGEABLE and merge again, with use_zero_pages on and off",
        "Each process fills its memory at t=0 (zeros, pages every process holds, "
        "pages of its own).  Each cycle runs twice, with use_zero_pages=1 and then "
        "0: madvise mergeable and settle (snapshot 'cycleN-zero-pages-on-merged' "
        "or '...-off-merged'), MADV_UNMERGEABLE (snapshot '...-unmerged'), then "
        "every process rewrites some pages before the next merge; phase_ms apart.  "
        "Snapshot 'end' phase_ms after the last unmerge, once ksmd has passed.",
        (
            Param("processes", 2, 1, 1024, "number of processes"),
            Param("mib", 4, 1, 65536, "memory of each process, MiB"),
            Param("zero_percent", 25.0, 0.0, 100.0, "share of memory that is zeros"),
            Param("shared_percent", 50.0, 0.0, 100.0, "share of memory every process holds"),
            Param("cycles", 2, 1, 100, "merge/unmerge cycles (each with zero pages on and off)"),
            Param("rewrite_percent", 10.0, 0.0, 100.0, "share of pages rewritten after an unmerge"),
            Param("phase_ms", 100, 0, 3_600_000, "trace time between two steps, ms"),
            *_common_knobs(1000, None),
        ),
        _unmerge_cycle,
        _check_vm_guests,
    ),
)
"""Every workload, in ``--list`` order."""

WORKLOAD_BY_NAME: Mapping[str, Workload] = {w.name: w for w in WORKLOADS}
WORKLOAD_NAMES: tuple[str, ...] = tuple(WORKLOAD_BY_NAME)


def get_workload(name: str) -> Workload:
    """The workload called ``name``; raise :class:`UsageError` for an unknown name."""
    workload = WORKLOAD_BY_NAME.get(name)
    if workload is None:
        raise UsageError(f"unknown workload {name!r} (workloads: {', '.join(WORKLOAD_NAMES)})")
    return workload


def resolve_params(workload: Workload, assignments: Iterable[str] = ()) -> Values:
    """Every parameter's value: the defaults, overridden by ``NAME=VALUE`` texts in order.

    :raises UsageError: for text without ``=``, an unknown name, a value out of
        range, or a combination the workload does not accept.
    """
    known = workload.param_by_name
    values: dict[str, ParamValue] = {p.name: p.default for p in workload.params}
    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep:
            raise UsageError(f"expected NAME=VALUE, not {text!r}")
        param = known.get(name.strip())
        if param is None:
            raise UsageError(
                f"unknown parameter {name!r} of {workload.name} (parameters: {', '.join(known)})"
            )
        values[param.name] = param.parse(value.strip())
    resolved = Values(values)
    problem = workload.check(resolved)
    if problem is not None:
        raise UsageError(f"{workload.name}: {problem}")
    return resolved


SEED_LIMIT = 2**64
"""Seeds are below this."""


def synthesize(
    name: str,
    stream: IO[bytes],
    values: Mapping[str, ParamValue] | None = None,
    seed: int = 0,
    form: str = "msgpack",
) -> None:
    """Write the trace of workload ``name`` to ``stream`` (which it does not close).

    :param values: parameter values (missing ones take their defaults); checked
        as :func:`resolve_params` checks them.
    :param seed: any int from 0 to 2**64-1 (the trace's ``meta`` records it,
        and the trace format's ints stop there); the same seed gives the same
        bytes.
    :param form: ``msgpack`` or ``jsonl``.
    :raises UsageError: for an unknown workload, a bad value or a seed out of range.
    """
    workload = get_workload(name)
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"seed must be between 0 and 2**64-1, not {seed}")
    given = dict(values or {})
    for key in given:
        if key not in workload.param_by_name:
            raise UsageError(f"unknown parameter {key!r} of {workload.name}")
    texts = [f"{key}={value!r}" for key, value in given.items()]
    resolved = resolve_params(workload, texts)
    header = Header(
        page_size=PAGE_SIZE,
        description=f"synthetic {workload.name}: {workload.summary}",
        meta={
            "generator": "ksmreplay synth",
            "workload": workload.name,
            "seed": seed,
            "params": dict(resolved),
        },
    )
    writer = TraceWriter(stream, header, form)
    workload.generate(_Synth(writer, seed, bool(resolved.integer("settle"))), resolved)
    writer.flush()


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class Fitted:
    """Parameter values measured from a trace.

    :ivar assignments: ``NAME=VALUE`` texts, to resolve before the user's own
        ``--param`` (which override them).
    :ivar notes: what the user should know about the fit, one line each.
    """

    assignments: tuple[str, ...]
    notes: tuple[str, ...]


def fit_contents(inspected: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The measurements ``--fit`` takes from :func:`ksmreplay.inspect.inspect_trace`'s
    result, and what they are of, in words ("" when every written page is mergeable).

    Those of the pages in mergeable mappings when some written pages are and others
    are not (a recording made with ``--as-is``: a virtual machine's RAM, without the
    hypervisor's own memory, which KSM never merges); else those of every written
    page (all of them mergeable, or none: then what KSM could make of them if they
    were).
    """
    mergeable, everything = inspected["mergeable_contents"], inspected["contents"]
    if mergeable["pages"] == everything["pages"]:
        return everything, ""
    if not mergeable["pages"]:
        return everything, "every written page; none is in a mergeable mapping"
    return mergeable, (
        f"the {mergeable['pages']} pages in mergeable mappings, of {everything['pages']} written"
    )


def fit_params(name: str, contents: Mapping[str, Any]) -> Fitted:
    """The parameters of workload ``name`` that make a trace like the one ``contents``
    (the ``contents`` of :func:`ksmreplay.inspect.inspect_trace`) describes.

    ``vm-guests``: one guest per process, of the processes' mean size; the
    share of zero pages, the pages every guest holds, the rewrite rate, the
    share of rewrites that are zeros, ``duration_s`` and the KSM knobs.  The
    working set (``dirty_set_percent``) is the share of pages that
    ``rate * duration`` rewrites per guest, drawn at random from it, must
    fall on to touch as many pages as the trace's rewrites touched
    (``touched_percent``): a process that rewrites a few pages again and
    again has a small one.  The generator's rewrites turn zero and shared
    pages into others, so the shares are set to what they must be at the
    start for the trace to end with the measured ones (the pages left
    untouched are those the trace left untouched).  Pages shared between
    guests are set so that the copies a merge would save (the measured
    duplicate pages) are the same; they cannot be measured on one process.
    ``zero-heavy`` and ``unmerge-cycle``: processes, size, zero and shared
    shares and the knobs; their rates and phases keep their values.

    :raises UsageError: the workload cannot be fitted, or the trace holds no
        written pages.
    """
    if name not in _FITTERS:
        fits = ", ".join(_FITTERS)
        raise UsageError(f"--fit is not supported for {name} (it is for {fits})")
    if not contents["processes"]:
        raise UsageError("the trace holds no written pages to measure")
    workload = get_workload(name)
    values, notes = _FITTERS[name](contents)
    assignments = []
    for param in workload.params:
        if param.name not in values:
            continue
        value = values[param.name]
        bounded = min(max(value, param.minimum), param.maximum)
        if bounded != value:
            notes.append(f"{param.name} {_number(value)} is out of range: {_number(bounded)}")
        assignments.append(f"{param.name}={_number(bounded)}")
    return Fitted(tuple(assignments), tuple(notes))


def _composition(c: Mapping[str, Any], untouched: float) -> tuple[float, float | None]:
    """``zero_percent`` and ``shared_percent`` (None when it cannot be measured) that a
    generator must start with so that, with ``untouched`` of the pages never rewritten,
    it ends as measured."""
    processes, pages = int(c["processes"]), int(c["pages"])
    per = pages / processes
    dirty_zero = float(c["dirty_zero_percent"]) / 100.0
    zero = (int(c["zero_pages"]) / pages - (1.0 - untouched) * dirty_zero) / untouched
    zero = min(max(zero, 0.0), 1.0)
    # An image page (held by every process) is still held intact by k of them,
    # k ~ Binomial(processes, untouched): it leaves k - 1 duplicates (none when k = 0).
    copies = processes * untouched - 1.0 + (1.0 - untouched) ** processes
    if processes < 2 or copies <= 0:
        return round(100.0 * zero, 3), None
    shared = int(c["duplicate_pages"]) / copies / per
    zero_percent = round(100.0 * zero, 3)
    shared_percent = round(100.0 * min(max(shared, 0.0), 1.0), 3)
    if zero_percent + shared_percent > 100.0 - 1e-9:
        shared_percent = round(100.0 - zero_percent - 0.001, 3)
    return zero_percent, max(shared_percent, 0.0)


def _size(c: Mapping[str, Any]) -> int:
    """MiB per process, at least 1."""
    return max(1, round(int(c["bytes_per_process"]) / 2**20))


def _knobs(c: Mapping[str, Any], names: Iterable[str]) -> dict[str, ParamValue]:
    return {name: int(c["ksm_settings"][name]) for name in names}


def _working_set(rewrites: float, c: Mapping[str, Any]) -> float:
    """The share ``x`` of each guest's pages that its rewrites fall on, such that
    ``rewrites`` (per page of the guest) drawn at random from them touch the measured
    share of the pages (``touched_percent``): ``touched = x * (1 - exp(-rewrites / x))``.

    1 (every page) when the rewrites are spread as widely as at random over all
    pages, or wider; else found by bisection, which the function's growth in
    ``x`` allows.
    """
    touched = float(c.get("touched_percent", 100.0)) / 100.0

    def reach(x: float) -> float:
        return x * -math.expm1(-rewrites / x)

    if rewrites <= 0 or touched >= reach(1.0):
        return 1.0
    lo, hi = max(touched, 1e-9), 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reach(mid) < touched else (lo, mid)
    return round(hi, 5)


def _fit_vm_guests(c: Mapping[str, Any]) -> tuple[dict[str, ParamValue], list[str]]:
    notes: list[str] = []
    processes = int(c["processes"])
    per = int(c["pages"]) / processes
    duration = min(float(c["activity_s"]), 3600.0)
    rate = float(c["dirty_pages_per_s"])
    working = _working_set(rate * duration / per if per else 0.0, c)
    untouched = 1.0 - working * (1.0 - math.exp(-rate * duration / per / working)) if per else 1.0
    if untouched < 0.05:
        notes.append(
            f"at {rate:g} pages/s for {duration:g} s a guest rewrites nearly every page; "
            "the zero and shared shares are fitted as if 5 % of the pages stayed"
        )
        untouched = 0.05
    zero, shared = _composition(c, untouched)
    values: dict[str, ParamValue] = {
        "guests": processes,
        "guest_mib": _size(c),
        "zero_percent": zero,
        "dirty_pages_per_s": round(rate, 3),
        "dirty_zero_percent": round(float(c["dirty_zero_percent"]), 3),
        "dirty_set_percent": round(100.0 * working, 3),
        "duration_s": round(duration, 3),
        **_knobs(c, ("pages_to_scan", "sleep_millisecs", "use_zero_pages")),
    }
    if shared is None:
        notes.append(
            "one process: pages shared between guests cannot be measured, "
            "shared_percent keeps its value (give it with --param)"
        )
    else:
        values["shared_percent"] = shared
    return values, notes


def _fit_static(
    knobs: tuple[str, ...],
) -> Callable[[Mapping[str, Any]], tuple[dict[str, ParamValue], list[str]]]:
    def fit(c: Mapping[str, Any]) -> tuple[dict[str, ParamValue], list[str]]:
        zero, shared = _composition(c, 1.0)
        values: dict[str, ParamValue] = {
            "processes": int(c["processes"]),
            "mib": _size(c),
            "zero_percent": zero,
            **_knobs(c, knobs),
        }
        notes = ["rates and phases keep their values (the shares are those measured)"]
        if shared is None:
            notes.append("one process: shared_percent keeps its value")
        else:
            values["shared_percent"] = shared
        return values, notes

    return fit


_FITTERS: Mapping[str, Callable[[Mapping[str, Any]], tuple[dict[str, ParamValue], list[str]]]] = {
    "vm-guests": _fit_vm_guests,
    "zero-heavy": _fit_static(("pages_to_scan", "sleep_millisecs", "use_zero_pages")),
    "unmerge-cycle": _fit_static(("pages_to_scan", "sleep_millisecs")),
}
FIT_WORKLOADS: tuple[str, ...] = tuple(_FITTERS)
"""The workloads ``--fit`` can set from a trace."""


def describe_workloads(names: Iterable[str] | None = None) -> str:
    """The text of ``ksmreplay synth --list``: each workload, its story and parameters."""
    blocks = []
    for workload in (get_workload(n) for n in names) if names else WORKLOADS:
        lines = [f"{workload.name}: {workload.summary}"]
        lines += textwrap.wrap(workload.story, 88, initial_indent="  ", subsequent_indent="  ")
        lines.append("  parameters (--param NAME=VALUE):")
        width = max(len(f"{p.name}={_number(p.default)}") for p in workload.params)
        for p in workload.params:
            assignment = f"{p.name}={_number(p.default)}"
            lines.append(f"    {assignment:<{width}}  {p.help} ({p.range_text()})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
