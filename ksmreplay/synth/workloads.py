"""The workloads, each declared once in :data:`WORKLOADS`, and the generator of
each."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO

import numpy as np

from ksmreplay.errors import UsageError
from ksmreplay.synth.builder import BASE, REGION_STRIDE, _start_ksm, _Synth, _ticks
from ksmreplay.synth.params import (
    MIB_PAGES,
    NS_PER_MS,
    PAGE_SIZE,
    Param,
    ParamValue,
    Values,
    _common_knobs,
    _duration,
    _number,
)
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import FingerprintArray, Header

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
