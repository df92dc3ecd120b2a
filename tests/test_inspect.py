"""``inspect`` counts written pages by ranges: what it costs follows the events
and the fingerprints a trace lists, not the size of its ranges; and it counts
what a page-by-page model counts.
"""

from __future__ import annotations

import io
import itertools
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from randtrace import encode_trace, valid_traces

from ksmreplay import inspect as inspect_module
from ksmreplay.inspect import inspect_trace
from ksmreplay.trace import RangeSet, TraceReader
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Header,
    Madvise,
    Prctl,
    Snapshot,
    Write,
)
from ksmreplay.vm.content import PageStore, literal_write

H: dict[str, Any] = {"ksmreplay": 1}
PAGE = 4096


def inspect_bytes(data: bytes) -> dict[str, Any]:
    with TraceReader(io.BytesIO(data), "t") as reader:
        return inspect_trace(reader)


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


@pytest.mark.usefixtures("both_engines")
def test_one_fingerprint_over_a_large_range_is_one_segment() -> None:
    # A write of one fingerprint over 2**32 bytes (2**20 pages): a page-by-page
    # count held a dict entry per page (over 100 MB here, 11 GB at 2**40 bytes).
    data = pack(H, [0, "alloc", 1, 0, 2**32], [1, "write", 1, 0, 2**32, 7])
    tracemalloc.start()
    try:
        info = inspect_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # the native reader's columns: 8 MiB
    assert info["processes"] == [
        {"pid": 1, "peak_mapped_pages": 2**20, "peak_written_pages": 2**20}
    ]
    assert (info["distinct_fingerprints"], info["zero_pages_written"]) == (1, 0)


@pytest.mark.usefixtures("both_engines")
def test_ranges_of_any_size_are_counted_exactly() -> None:
    data = pack(
        H,
        [0, "alloc", 1, 0, 2**60],
        [1, "write", 1, 0, 2**60, 7],  # 2**48 pages
        [2, "write", 1, 2**40, 3 * PAGE, [1, 2, 3]],
        [2, "write", 1, 2**40 + 0x1001, 3, b"abc"],  # inside a page: keeps its other bytes
        [3, "madvise", 1, 2**41, 2**50, "dontneed"],  # drops 2**38 pages
        [4, "fork", 1, 2],
        [5, "write", 2, 5 * PAGE, 2**40, 0],  # 2**28 pages, already written
        [6, "free", 1, 2**59, 2**59],  # pid 1 keeps half
        [7, "write", 1, 0, PAGE, 9],
    )
    info = inspect_bytes(data)
    assert info["processes"] == [
        {"pid": 1, "peak_mapped_pages": 2**48, "peak_written_pages": 2**48},
        {"pid": 2, "peak_mapped_pages": 2**48, "peak_written_pages": 2**48 - 2**38},
    ]
    # 7, 1, 2, 3, page 1 of the run of 1, 2, 3 with "abc" written into it, 0 and 9
    assert info["distinct_fingerprints"] == 7
    assert info["zero_pages_written"] == 2**28


# --------------------------------------------------------------------------- against a model


def _getter(pages: dict[int, int]) -> Callable[[int], int]:
    return lambda page: pages.get(page, 0)


def model_inspect(header: Header, events: list[Event]) -> tuple[Any, ...]:
    """Peaks, distinct fingerprints and zero pages, counted page by page."""
    shift = header.page_size.bit_length() - 1
    store = PageStore(header.page_size)
    written: dict[int, dict[int, int]] = {}
    mapped: dict[int, set[int]] = {}
    peaks: dict[int, list[int]] = {}
    fps: set[int] = set()
    zeros = 0

    def note(pid: int) -> None:
        peak = peaks.setdefault(pid, [0, 0])
        peak[0] = max(peak[0], len(mapped[pid]))
        peak[1] = max(peak[1], len(written[pid]))

    for ev in events:
        if isinstance(ev, Alloc):
            mapped.setdefault(ev.pid, set()).update(
                range(ev.addr >> shift, (ev.addr + ev.len) >> shift)
            )
            written.setdefault(ev.pid, {})
            note(ev.pid)
        elif isinstance(ev, Prctl) and ev.pid not in mapped:
            mapped[ev.pid], written[ev.pid] = set(), {}
            note(ev.pid)
        elif isinstance(ev, Write):
            pages = written[ev.pid]
            if isinstance(ev.content, bytes):
                first, new = literal_write(
                    ev.addr, ev.content, header.page_size, _getter(pages), store
                )
            elif isinstance(ev.content, int):
                first, new = ev.addr >> shift, [ev.content] * (ev.len >> shift)
            else:
                first, new = ev.addr >> shift, ev.content.tolist()
            pages.update(zip(range(first, first + len(new)), new, strict=True))
            fps.update(new)
            zeros += new.count(0)
            note(ev.pid)
        elif isinstance(ev, (Free, Madvise)):
            if isinstance(ev, Free) or ev.advice == "dontneed":
                gone = range(ev.addr >> shift, (ev.addr + ev.len) >> shift)
                for page in gone:
                    written[ev.pid].pop(page, None)
                if isinstance(ev, Free):
                    mapped[ev.pid] -= set(gone)
        elif isinstance(ev, Fork):
            mapped[ev.child_pid] = set(mapped[ev.pid])
            written[ev.child_pid] = dict(written[ev.pid])
            note(ev.child_pid)
        elif isinstance(ev, Exit):
            del mapped[ev.pid], written[ev.pid]
    return sorted((pid, *peak) for pid, peak in peaks.items()), len(fps), zeros


def _kept(pages: dict[int, int], merging: set[int], mergeable: bool) -> dict[int, int]:
    """``pages``, only those in ``merging`` with ``mergeable`` (a copy either way)."""
    return {p: fp for p, fp in pages.items() if not mergeable or p in merging}


def _kept_set(pages: set[int], merging: set[int], mergeable: bool) -> set[int]:
    """``pages``, only those in ``merging`` with ``mergeable`` (a copy either way)."""
    return pages & merging if mergeable else set(pages)


@pytest.mark.usefixtures("both_engines")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(valid_traces(), st.sampled_from([1, 2, 256]))
def test_inspect_counts_what_a_page_by_page_model_counts(
    monkeypatch: pytest.MonkeyPatch, trace: tuple[Header, list[Event]], load: int
) -> None:
    monkeypatch.setattr(inspect_module, "_LOAD", load)  # small blocks: many splits
    header, events = trace
    info = inspect_bytes(encode_trace(header, events, "msgpack"))
    peaks = [(p["pid"], p["peak_mapped_pages"], p["peak_written_pages"]) for p in info["processes"]]
    assert (peaks, info["distinct_fingerprints"], info["zero_pages_written"]) == model_inspect(
        header, events
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "array", "assign", "drop", "copy"]),
            st.integers(0, 60),
            st.integers(1, 12),
            st.integers(0, 3),
        ),
        max_size=60,
    ),
    st.sampled_from([1, 2, 3]),
)
def test_page_map_matches_a_dict(
    monkeypatch: pytest.MonkeyPatch, ops: list[tuple[str, int, int, int]], load: int
) -> None:
    monkeypatch.setattr(inspect_module, "_LOAD", load)
    pages = inspect_module.PageMap()
    model: dict[int, int] = {}
    copies: list[tuple[inspect_module.PageMap, dict[int, int]]] = []
    for op, start, count, value in ops:
        end = start + count
        if op == "put":
            pages.put(start, end, value)
            model.update(dict.fromkeys(range(start, end), value))
        elif op == "array":
            values = np.arange(value, value + count, dtype=np.uint64) % 3
            pages.put(start, end, values)
            model.update(zip(range(start, end), values.tolist(), strict=True))
        elif op == "assign":  # every (value + 1)th page of the range, in place where it can
            chosen = np.arange(start, end, value + 1, dtype=np.int64)
            values = (chosen * 7 + value).astype(np.uint64) % 3
            new = pages.assign(chosen, values)
            assert new.tolist() == [p not in model for p in chosen.tolist()]
            model.update(zip(chosen.tolist(), values.tolist(), strict=True))
        elif op == "drop":
            pages.drop(start, end)
            for page in range(start, end):
                model.pop(page, None)
        else:
            copies.append((pages.copy(), dict(model)))
        assert pages.pages == len(model)
        segments = pages.segments()
        assert all(s < e for s, e, _ in segments)
        assert all(e <= s for (_, e, _), (s, _, _) in itertools.pairwise(segments))
    for copy, frozen in [(pages, model), *copies]:
        assert {p: copy.get(p) for p in range(80) if copy.get(p) or p in frozen} == {
            p: frozen[p] for p in frozen
        }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "drop", "copy", "restricted"]),
            st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), max_size=6),
        ),
        max_size=40,
    )
)
def test_page_set_matches_a_set(ops: list[tuple[str, list[tuple[int, int]]]]) -> None:
    pages = inspect_module.PageSet()
    model: set[int] = set()
    copies: list[tuple[inspect_module.PageSet, set[int]]] = []
    for op, intervals in ops:
        if op == "add":  # any order, overlapping or not, empty ones too
            pages.add(
                np.array([s for s, _ in intervals], np.int64),
                np.array([s + n for s, n in intervals], np.int64),
            )
            model.update(p for s, n in intervals for p in range(s, s + n))
        elif op == "drop":
            for start, count in intervals:
                pages.drop(start, start + count)
                model.difference_update(range(start, start + count))
        elif op == "copy":
            copies.append((pages.copy(), set(model)))
        else:  # bytes of 4096-byte pages
            ranges = RangeSet()
            inside: set[int] = set()
            for start, count in sorted(intervals):
                if count and not any(p in inside for p in range(start - 1, start + count + 1)):
                    ranges.add(start * PAGE, (start + count) * PAGE)
                    inside.update(range(start, start + count))
            part = pages.restricted(ranges, 12)
            assert set(_set_pages(part)) == model & inside
        starts, ends = pages.intervals()
        assert (starts < ends).all() and (ends[:-1] < starts[1:]).all()  # disjoint, apart
        assert pages.pages == len(model)
    for copy, frozen in [(pages, model), *copies]:
        assert set(_set_pages(copy)) == frozen


def _set_pages(pages: inspect_module.PageSet) -> list[int]:
    starts, ends = pages.intervals()
    return [p for s, e in zip(starts.tolist(), ends.tolist(), strict=True) for p in range(s, e)]


# --------------------------------------------------------------------------- contents


def model_contents(header: Header, events: list[Event], mergeable: bool = False) -> dict[str, Any]:
    """What ``contents`` measures, page by page: at the last snapshot at which some
    process holds written pages (else the end), the processes holding pages, the pages,
    zeros, distinct non-zero contents, duplicates, pages whose content another process
    holds; pages written over written pages after the first write's instant; the pages
    held that were written after it; zeros among the pages written after it.

    With ``mergeable``, what ``mergeable_contents`` measures: the same of the pages in
    mergeable mappings at that moment, the writes counted for their pages that were in
    mergeable mappings when written.  A page is mergeable from a madvise mergeable of
    it while mapped, or while mapped by a process in merge_any, until it is unmapped,
    madvised unmergeable or merge_any is turned off."""
    shift = header.page_size.bit_length() - 1
    store = PageStore(header.page_size)
    written: dict[int, dict[int, int]] = {}
    touched: dict[int, set[int]] = {}
    mapped: dict[int, set[int]] = {}
    merging: dict[int, set[int]] = {}
    merge_any: dict[int, bool] = {}
    first_t: int | None = None
    rewritten = later = later_zero = 0
    moment: tuple[dict[int, dict[int, int]], dict[int, set[int]], int, int, int] | None = None
    for ev in events:
        if isinstance(ev, (Alloc, Prctl)):
            written.setdefault(ev.pid, {})
            mapped.setdefault(ev.pid, set())
            merging.setdefault(ev.pid, set())
            merge_any.setdefault(ev.pid, False)
            if isinstance(ev, Alloc):
                numbers = set(range(ev.addr >> shift, (ev.addr + ev.len) >> shift))
                mapped[ev.pid] |= numbers
                if merge_any[ev.pid]:
                    merging[ev.pid] |= numbers
            elif bool(ev.value) != merge_any[ev.pid]:
                merge_any[ev.pid] = bool(ev.value)
                merging[ev.pid] = set(mapped[ev.pid]) if ev.value else set()
        elif isinstance(ev, Write):
            pages = written[ev.pid]
            if isinstance(ev.content, bytes):
                first, new = literal_write(
                    ev.addr, ev.content, header.page_size, _getter(pages), store
                )
            elif isinstance(ev.content, int):
                first, new = ev.addr >> shift, [ev.content] * (ev.len >> shift)
            else:
                first, new = ev.addr >> shift, ev.content.tolist()
            numbers = range(first, first + len(new))
            counted = [
                (page, fp)
                for page, fp in zip(numbers, new, strict=True)
                if not mergeable or page in merging[ev.pid]
            ]
            if first_t is None:
                first_t = ev.t
            elif ev.t > first_t:
                touched.setdefault(ev.pid, set()).update(numbers)
                rewritten += sum(1 for page, _ in counted if page in pages)
                later += len(counted)
                later_zero += sum(1 for _, fp in counted if fp == 0)
            pages.update(zip(numbers, new, strict=True))
        elif isinstance(ev, (Free, Madvise)):
            numbers = set(range(ev.addr >> shift, (ev.addr + ev.len) >> shift))
            if isinstance(ev, Free) or ev.advice == "dontneed":
                for page in numbers:
                    written[ev.pid].pop(page, None)
                    touched.get(ev.pid, set()).discard(page)
            if isinstance(ev, Free):
                mapped[ev.pid] -= numbers
                merging[ev.pid] -= numbers
            elif ev.advice == "mergeable":
                merging[ev.pid] |= numbers & mapped[ev.pid]
            elif ev.advice == "unmergeable":
                merging[ev.pid] -= numbers
        elif isinstance(ev, Fork):
            written[ev.child_pid] = dict(written[ev.pid])
            touched[ev.child_pid] = set(touched.get(ev.pid, ()))
            mapped[ev.child_pid] = set(mapped[ev.pid])
            merging[ev.child_pid] = set(merging[ev.pid])
            merge_any[ev.child_pid] = merge_any[ev.pid]
        elif isinstance(ev, Exit):
            del written[ev.pid], mapped[ev.pid], merging[ev.pid], merge_any[ev.pid]
            touched.pop(ev.pid, None)
        elif isinstance(ev, Snapshot) and any(written.values()):
            moment = (
                {p: _kept(w, merging[p], mergeable) for p, w in written.items()},
                {p: _kept_set(s, merging[p], mergeable) for p, s in touched.items()},
                rewritten,
                later,
                later_zero,
            )
    if moment is None:
        moment = (
            {p: _kept(w, merging[p], mergeable) for p, w in written.items()},
            {p: _kept_set(s, merging[p], mergeable) for p, s in touched.items()},
            rewritten,
            later,
            later_zero,
        )
    held, held_touched, rewritten, later, later_zero = moment
    live = {pid: pages for pid, pages in held.items() if pages}
    values = [fp for pages in live.values() for fp in pages.values()]
    nonzero = [fp for fp in values if fp]
    holders: dict[int, set[int]] = {}
    for pid, pages in live.items():
        for fp in pages.values():
            holders.setdefault(fp, set()).add(pid)
    return {
        "processes": len(live),
        "pages": len(values),
        "zero_pages": values.count(0),
        "distinct_contents": len(set(nonzero)),
        "duplicate_pages": len(nonzero) - len(set(nonzero)),
        "shared_pages": sum(1 for fp in nonzero if len(holders[fp]) > 1),
        "rewritten_pages": rewritten if live else 0,
        "touched_pages": sum(len(held_touched.get(pid, set())) for pid in live),
        "later_zero": (later_zero, later) if live else (0, 0),
    }


@pytest.mark.usefixtures("both_engines")
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(valid_traces(), st.sampled_from([1, 2, 256]))
def test_contents_are_what_a_page_by_page_model_measures(
    monkeypatch: pytest.MonkeyPatch, trace: tuple[Header, list[Event]], load: int
) -> None:
    monkeypatch.setattr(inspect_module, "_LOAD", load)
    header, events = trace
    inspected = inspect_bytes(encode_trace(header, events, "msgpack"))
    for key, mergeable in (("contents", False), ("mergeable_contents", True)):
        got = inspected[key]
        want = model_contents(header, events, mergeable)
        zero_share = want.pop("later_zero")
        assert {key: got[key] for key in want} == want, key
        expected = round(100 * zero_share[0] / zero_share[1], 3) if zero_share[1] else 0.0
        if want["processes"]:
            assert got["dirty_zero_percent"] == expected, key


def test_contents_of_huge_ranges_are_counted_by_ranges() -> None:
    data = pack(
        H,
        [0, "alloc", 1, 0, 2**50],
        [0, "write", 1, 0, 2**50, 7],  # 2**38 pages of one content
        [1, "write", 1, 0, 3 * PAGE, [0, 8, 8]],
        [2, "fork", 1, 2],
        [3, "write", 2, 2**49, 2**49, 0],  # the child's upper half: zeros
        [4, "snapshot", "here"],
        [5, "exit", 2],
    )
    c = inspect_bytes(data)["contents"]
    pages = 2**38
    assert (c["snapshot"], c["processes"], c["pages"]) == ("here", 2, 2 * pages)
    assert c["zero_pages"] == 1 + 1 + pages // 2
    assert c["distinct_contents"] == 2  # 7 and 8
    assert c["duplicate_pages"] == 2 * pages - c["zero_pages"] - 2
    # 7 and 8 are in both processes: every non-zero page is shared
    assert c["shared_pages"] == 2 * pages - c["zero_pages"]
    assert c["rewritten_pages"] == 3 + pages // 2  # t=1 over t=0's pages; t=3 over the fork's


def test_a_guest_is_measured_on_its_mergeable_ram_and_after_its_boot() -> None:
    """GIVEN two hypervisor processes, each with a mergeable mapping (the guest's RAM)
    and another (the hypervisor's own memory), both built at t=0, rewritten during a
    boot at 1 s and a page of the RAM again at 5 s, WHEN inspected from 3 s on, THEN
    mergeable_contents holds the RAM's pages only, and only the write at 5 s is a rewrite;
    from the first write on, the boot's rewrites count too (the RAM's only in
    mergeable_contents)."""
    ram, own, second = 0x100000, 0x900000, 1_000_000_000
    events: list[list[Any]] = []
    for pid in (1, 2):
        events += [
            [0, "alloc", pid, ram, 4 * PAGE],
            [0, "madvise", pid, ram, 4 * PAGE, "mergeable"],
            [0, "alloc", pid, own, 2 * PAGE],
            [0, "write", pid, ram, 4 * PAGE, [0, 0, 0, 0]],
            [0, "write", pid, own, 2 * PAGE, [pid, pid]],
        ]
    for pid in (1, 2):
        events += [
            [second, "write", pid, ram, 4 * PAGE, [7, 7, 8, 0]],  # the kernel, in both
            [second, "write", pid, own, 2 * PAGE, [10 + pid, 20 + pid]],
        ]
    events += [[5 * second, "write", 1, ram + 3 * PAGE, PAGE, 9], [7 * second, "snapshot", "end"]]
    data = pack(H, *events)
    with TraceReader(io.BytesIO(data), "t") as reader:
        late = inspect_trace(reader, since_ns=3 * second)
    whole = inspect_bytes(data)
    c, m = late["contents"], late["mergeable_contents"]
    assert (c["pages"], m["pages"]) == (12, 8)
    assert (m["zero_pages"], m["distinct_contents"], m["shared_pages"]) == (1, 3, 6)
    assert (c["rewritten_pages"], m["rewritten_pages"]) == (1, 1)
    assert (m["touched_pages"], m["activity_s"]) == (1, 4.0)
    assert m["dirty_pages_per_s"] == round(1 / 2 / 4.0, 3)
    w, wm = whole["contents"], whole["mergeable_contents"]
    assert (w["rewritten_pages"], wm["rewritten_pages"]) == (13, 9)
    assert (w["touched_pages"], wm["touched_pages"]) == (12, 8)
    assert wm["dirty_zero_percent"] == round(100 * 2 / 9, 3)  # page 3 at 1 s, in each
