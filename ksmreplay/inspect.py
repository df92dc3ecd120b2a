"""What a trace holds, without replaying it through ksmd (``ksmreplay inspect``).

:func:`inspect_trace` reads a trace once and summarises it: the header, the
duration, how many events of each op, each process's peak mapped and peak
written pages, how many distinct fingerprints were written, how many pages were
written as zeros, every change of the KSM settings, and what KSM could save
at the trace's end (``explain``: written pages, distinct contents, the ideal
saving and how much of it mappings that are not mergeable keep away).

``contents`` measures what KSM could make of the memory, at one moment (the
last ``snapshot`` at which some process holds written pages, else the end):
how many processes and pages, the share of pages that are zeros, the pages
whose content another page holds too (another process's or the same
process's), the rate at which written pages were written again, the share of
zeros among the pages written after the first writes, and the KSM settings in
force.  ``mergeable_contents`` measures the same on the pages in mergeable
mappings only, its rewrites counted over the writes into mergeable mappings:
what KSM may merge of a recording made with ``--as-is`` (a virtual machine's
RAM, without the hypervisor's own memory).  ``ksmreplay synth --fit`` sets a
workload's parameters from these measurements.

"Written pages" are the pages of a process that hold content a ``write`` put
there: ``fork`` gives the child a copy of the parent's, while ``free``,
``madvise dontneed`` and ``exit`` drop them.  They are counted by ranges, not
page by page: the state kept is one segment per run of pages a write gave one
fingerprint (a whole range, however large, is one segment) or its list of
fingerprints, and one range per mapping; so time and memory follow the
events and the fingerprints a trace lists, never the size of its ranges.

Large traces are mostly runs of writes (:class:`~ksmreplay.trace.events.WriteRun`),
taken a run at a time in numpy rather than a write at a time: the pages a run
writes over pages held in an array are written into the array in place, and
the pages written after the first write's instant join an interval set in
bulk (:class:`PageSet`).
"""

from __future__ import annotations

import itertools
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ksmreplay.ksm.knobs import DEFAULTS
from ksmreplay.trace import RangeSet, TraceReader
from ksmreplay.trace.events import (
    OPS,
    Alloc,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Prctl,
    Snapshot,
    Write,
    WriteRun,
)
from ksmreplay.vm.content import PageStore, literal_write

Fingerprints = int | npt.NDArray[np.uint64]
"""What a segment of a :class:`PageMap` holds: one fingerprint for each of its
pages (an int), or one per page (a uint64 array, changed in place only by the
map that owns it: :meth:`PageMap.assign`)."""

Pages = npt.NDArray[np.int64]
"""Page numbers."""

_LOAD = 256
"""Segments per block of a :class:`PageMap` (a block splits at twice this)."""


def _cut(value: Fingerprints, lo: int, hi: int) -> Fingerprints:
    """The fingerprints of pages ``lo:hi`` of a segment holding ``value``."""
    if isinstance(value, int):
        return value
    if hi - lo == 1:
        return int(value[lo])
    part = value[lo:hi]
    # A small part of a large array is copied, so that the array can go.
    return part.copy() if 4 * (hi - lo) < len(value) else part


class PageMap:
    """Page number -> fingerprint of the written pages of one process.

    Sorted, disjoint segments ``[start, end)`` of page numbers, each holding
    :data:`Fingerprints`; kept in blocks of at most ``2 * _LOAD`` segments, so
    that adding or dropping one moves few others.  A write or a drop costs
    the segments it touches (and a search), never the pages its range spans.

    An array a segment holds may be shared with other maps (a :meth:`copy`)
    or with the write it came from: only :meth:`assign` changes one, in
    place, and only an array it made itself since the map was last copied
    (it copies a shared one first).

    :ivar pages: the number of pages in the map.
    """

    __slots__ = ("_ends", "_firsts", "_owned", "_starts", "_values", "pages")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        """The first start of each block."""
        self._starts: list[list[int]] = []
        self._ends: list[list[int]] = []
        self._values: list[list[Fingerprints]] = []
        self.pages = 0
        self._owned: weakref.WeakValueDictionary[int, npt.NDArray[np.uint64]] | None = None
        """The arrays only this map holds, by id: :meth:`assign` writes them in place."""

    def copy(self) -> PageMap:
        """An independent copy (``fork``); the arrays are shared, so neither map owns them."""
        self._owned = None
        other = PageMap()
        other._firsts = self._firsts.copy()
        other._starts = [block.copy() for block in self._starts]
        other._ends = [block.copy() for block in self._ends]
        other._values = [block.copy() for block in self._values]
        other.pages = self.pages
        return other

    def segments(self) -> list[tuple[int, int, Fingerprints]]:
        """Every segment ``(start, end, fingerprints)``, in order (for tests)."""
        return [
            seg
            for starts, ends, values in zip(self._starts, self._ends, self._values, strict=True)
            for seg in zip(starts, ends, values, strict=True)
        ]

    def get(self, page: int) -> int:
        """The fingerprint of ``page``; 0 (zeros) if it is not in the map."""
        b = bisect_right(self._firsts, page) - 1
        if b < 0:
            return 0
        starts = self._starts[b]
        i = bisect_right(starts, page) - 1
        if self._ends[b][i] <= page:
            return 0
        value = self._values[b][i]
        return value if isinstance(value, int) else int(value[page - starts[i]])

    def count(self, start: int, end: int) -> int:
        """How many of pages ``start .. end-1`` are in the map."""
        total = 0
        b = max(bisect_right(self._firsts, start) - 1, 0)
        while b < len(self._starts):
            starts, ends = self._starts[b], self._ends[b]
            i = bisect_right(ends, start)  # the first segment that ends after start
            while i < len(starts) and starts[i] < end:
                total += min(ends[i], end) - max(starts[i], start)
                i += 1
            if i < len(starts):
                break
            b += 1
        return total

    def restricted(self, ranges: RangeSet, shift: int) -> PageMap:
        """The pages of the map inside ``ranges`` (bytes; pages of ``1 << shift`` bytes).

        The result shares the arrays of the segments it keeps whole, so that
        neither map owns them any more (as after a :meth:`copy`)."""
        self._owned = None
        starts = np.fromiter(itertools.chain.from_iterable(self._starts), np.int64)
        ends = np.fromiter(itertools.chain.from_iterable(self._ends), np.int64)
        values = list(itertools.chain.from_iterable(self._values))
        which, first, last = _clip(starts, ends, *_page_ranges(ranges, shift))
        whole = (first == starts[which]) & (last == ends[which])
        kept: list[Fingerprints] = []
        for seg, lo, hi, keep in zip(
            which.tolist(), first.tolist(), last.tolist(), whole.tolist(), strict=True
        ):
            value = values[seg]
            if keep or isinstance(value, int):
                kept.append(value)
            else:
                start = int(starts[seg])
                kept.append(_cut(value, lo - start, hi - start))
        return PageMap._of(first.tolist(), last.tolist(), kept)

    @staticmethod
    def _of(starts: list[int], ends: list[int], values: list[Fingerprints]) -> PageMap:
        """The map of the segments ``[starts[i], ends[i])`` holding ``values[i]``
        (ascending, disjoint)."""
        out = PageMap()
        for i in range(0, len(starts), _LOAD):
            out._firsts.append(starts[i])
            out._starts.append(starts[i : i + _LOAD])
            out._ends.append(ends[i : i + _LOAD])
            out._values.append(values[i : i + _LOAD])
        out.pages = sum(ends) - sum(starts)
        return out

    def assign(self, pages: Pages, values: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Pages ``pages`` (ascending, distinct) now hold ``values``, one each;
        returns which of them were not in the map.

        A page in a segment holding an array is written into the array in
        place (into a copy the map then owns, if the array is shared); a page
        in a segment holding its value already is left; the others are put
        as runs of consecutive pages, those in gaps all at once when they are
        many (at least an eighth of the map's segments).  Costs the pages
        given and the segments they fall in, or, put all at once, the map's
        segments, which the new ones pay for.
        """
        new = np.ones(len(pages), np.bool_)
        rest = np.ones(len(pages), np.bool_)  # pages still to put
        if self._starts and len(pages):
            blocks = np.searchsorted(np.array(self._firsts, np.int64), pages, "right") - 1
            cuts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(pages)], strict=True):
                b = int(blocks[lo])
                if b >= 0:
                    self._assign_in_block(b, pages, values, lo, hi, new, rest)
        for gaps, part in ((True, rest & new), (False, rest & ~new)):  # in gaps, in segments
            if not part.any():
                continue
            left = np.flatnonzero(part)
            runs = np.flatnonzero(np.diff(pages[left]) != 1) + 1
            starts = [0, *runs.tolist()]
            ends = [*runs.tolist(), len(left)]
            firsts = pages[left].tolist()
            if gaps and 8 * len(starts) >= self.segment_count():
                singles = values[left[starts]].tolist()  # the value of a run of one page
                self._add_segments(
                    [firsts[i] for i in starts],
                    [firsts[j - 1] + 1 for j in ends],
                    [
                        singles[k] if j - i == 1 else _fingerprints(values[left[i:j]])
                        for k, (i, j) in enumerate(zip(starts, ends, strict=True))
                    ],
                )
                continue
            for i, j in zip(starts, ends, strict=True):
                self.put(firsts[i], firsts[j - 1] + 1, values[left[i:j]])
        return new

    def segment_count(self) -> int:
        """The number of segments in the map."""
        return sum(len(block) for block in self._starts)

    def _add_segments(self, starts: list[int], ends: list[int], values: list[Fingerprints]) -> None:
        """Add the segments ``[starts[i], ends[i])`` holding ``values[i]``
        (ascending, each in a gap of the map), all at once: the map is laid out
        again, which costs its segments (so :meth:`assign` does it only for
        many)."""
        old_starts = list(itertools.chain.from_iterable(self._starts))
        at = np.searchsorted(np.array(old_starts, np.int64), np.array(starts, np.int64))
        order = np.insert(np.arange(len(old_starts)), at, np.arange(len(starts)) + len(old_starts))
        laid = order.tolist()
        every_start = old_starts + starts
        every_end = list(itertools.chain.from_iterable(self._ends)) + ends
        every_value = list(itertools.chain.from_iterable(self._values)) + values
        out = PageMap._of(
            [every_start[i] for i in laid],
            [every_end[i] for i in laid],
            [every_value[i] for i in laid],
        )
        self._firsts, self._starts, self._ends, self._values = (
            out._firsts,
            out._starts,
            out._ends,
            out._values,
        )
        self.pages = out.pages

    def _assign_in_block(
        self,
        b: int,
        pages: Pages,
        values: npt.NDArray[np.uint64],
        lo: int,
        hi: int,
        new: npt.NDArray[np.bool_],
        rest: npt.NDArray[np.bool_],
    ) -> None:
        """:meth:`assign` of ``pages[lo:hi]``, which fall in block ``b`` or the gap
        after it: write those in arrays, clear ``new`` of those in the map and
        ``rest`` of those written or holding their value already."""
        block = self._values[b]
        starts = np.array(self._starts[b], np.int64)
        ends = np.array(self._ends[b], np.int64)
        part = pages[lo:hi]
        i = np.minimum(np.searchsorted(ends, part, "right"), len(ends) - 1)
        inside = np.flatnonzero(starts[i] <= part)  # ends[i] > page unless at the end
        inside = inside[ends[i[inside]] > part[inside]]
        if not len(inside):
            return
        new[lo + inside] = False
        segs = i[inside]
        cuts = np.flatnonzero(segs[1:] != segs[:-1]) + 1
        for p, q in zip([0, *cuts.tolist()], [*cuts.tolist(), len(inside)], strict=True):
            s = int(segs[p])
            held = block[s]
            where = lo + inside[p:q]
            if isinstance(held, int):
                rest[where[values[where] == np.uint64(held)]] = False
                continue
            owned = self._owned
            if owned is None or owned.get(id(held)) is not held:
                held = held.copy()
                block[s] = held
                if owned is None:
                    owned = self._owned = weakref.WeakValueDictionary()
                owned[id(held)] = held
            held[pages[where] - int(starts[s])] = values[where]
            rest[where] = False

    def drop(self, start: int, end: int) -> None:
        """Remove pages ``start .. end-1`` (those not in the map are ignored)."""
        b = max(bisect_right(self._firsts, start) - 1, 0)
        while b < len(self._starts):
            starts, ends, values = self._starts[b], self._ends[b], self._values[b]
            i = bisect_right(ends, start)  # the first segment that ends after start
            if i == len(starts):
                b += 1
                continue
            if starts[i] >= end:
                return
            j = bisect_left(starts, end, i)  # segments i .. j-1 meet the range
            whole = j == len(starts)
            kept_starts: list[int] = []
            kept_ends: list[int] = []
            kept_values: list[Fingerprints] = []
            if starts[i] < start:
                kept_starts.append(starts[i])
                kept_ends.append(start)
                kept_values.append(_cut(values[i], 0, start - starts[i]))
            if ends[j - 1] > end:
                kept_starts.append(end)
                kept_ends.append(ends[j - 1])
                last = starts[j - 1]
                kept_values.append(_cut(values[j - 1], end - last, ends[j - 1] - last))
            self.pages -= sum(ends[i:j]) - sum(starts[i:j])
            self.pages += sum(kept_ends) - sum(kept_starts)
            starts[i:j] = kept_starts
            ends[i:j] = kept_ends
            values[i:j] = kept_values
            if not starts:
                del self._firsts[b], self._starts[b], self._ends[b], self._values[b]
                continue
            self._firsts[b] = starts[0]
            if not whole:
                return
            b += 1

    def put(self, start: int, end: int, value: Fingerprints) -> None:
        """Pages ``start .. end-1`` now hold ``value`` (an int for all of them,
        or an array of one fingerprint per page)."""
        if not isinstance(value, int):
            value = _fingerprints(value)  # not a view that keeps a larger array
        if self._starts:
            b = bisect_right(self._firsts, start) - 1
            if b < 0:
                b = 0
            starts, ends = self._starts[b], self._ends[b]
            i = bisect_right(ends, start)  # the first segment that ends after start
            if i < len(starts):
                if starts[i] >= end:  # in a gap: nothing to drop
                    self._insert(b, i, start, end, value)
                    return
                if starts[i] == start and ends[i] == end:  # the same pages again
                    self._values[b][i] = value
                    return
            elif b + 1 == len(self._starts) or self._firsts[b + 1] >= end:
                self._insert(b, i, start, end, value)  # in the gap after the block
                return
            self.drop(start, end)
        if not self._starts:
            self._firsts.append(start)
            self._starts.append([start])
            self._ends.append([end])
            self._values.append([value])
            self.pages += end - start
            return
        b = max(bisect_right(self._firsts, start) - 1, 0)
        self._insert(b, bisect_left(self._starts[b], start), start, end, value)

    def _insert(self, b: int, i: int, start: int, end: int, value: Fingerprints) -> None:
        """Put the segment into block ``b`` at ``i``, where its pages are free."""
        starts, ends, values = self._starts[b], self._ends[b], self._values[b]
        self.pages += end - start
        joins_left = i > 0 and ends[i - 1] == start and _same(values[i - 1], value)
        joins_right = i < len(starts) and starts[i] == end and _same(values[i], value)
        if joins_left and joins_right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i], values[i]
        elif joins_left:
            ends[i - 1] = end
        elif joins_right:
            starts[i] = start
        else:
            starts.insert(i, start)
            ends.insert(i, end)
            values.insert(i, value)
        self._firsts[b] = starts[0]
        if len(starts) > 2 * _LOAD:
            self._firsts.insert(b + 1, starts[_LOAD])
            self._starts.insert(b + 1, starts[_LOAD:])
            self._ends.insert(b + 1, ends[_LOAD:])
            self._values.insert(b + 1, values[_LOAD:])
            del starts[_LOAD:], ends[_LOAD:], values[_LOAD:]


def _fingerprints(values: npt.NDArray[np.uint64]) -> Fingerprints:
    """``values`` as a segment holds them: an int if they are all one, else an
    array of their own (not a view)."""
    if len(values) == 1 or not (values != values[0]).any():
        return int(values[0])
    return values.copy() if values.base is not None else values


def _same(a: Fingerprints, b: Fingerprints) -> bool:
    """Whether two segments hold one and the same fingerprint for every page."""
    return isinstance(a, int) and isinstance(b, int) and a == b


_EMPTY: Pages = np.empty(0, np.int64)


class PageSet:
    """A set of page numbers: sorted, disjoint, non-adjacent ``[start, end)``
    intervals in two int64 arrays (never changed in place, so a copy shares
    them), and the intervals added since, merged in once they are as many as
    the set's (or when the set is read): adding costs a sort of what is added,
    in bulk; a drop costs a search, or a copy of the arrays when it removes
    some pages.
    """

    __slots__ = ("_added", "_added_count", "_ends", "_starts")

    def __init__(self, starts: Pages = _EMPTY, ends: Pages = _EMPTY) -> None:
        self._starts = starts
        self._ends = ends
        self._added: list[tuple[Pages, Pages]] = []
        self._added_count = 0

    def add(self, starts: Pages, ends: Pages) -> None:
        """Add the pages of the intervals ``[starts[i], ends[i])`` (any order, may overlap)."""
        self._added.append((starts, ends))
        self._added_count += len(starts)
        if self._added_count > max(len(self._starts), 1024):
            self._merge()

    def _merge(self) -> None:
        if not self._added:
            return
        starts = np.concatenate([s for s, _ in self._added])
        ends = np.concatenate([e for _, e in self._added])
        self._added = []
        self._added_count = 0
        starts, ends = _coalesce(starts, ends, np.argsort(starts))
        # the set's intervals and the added ones, two ascending runs: a stable sort merges them
        starts = np.concatenate((self._starts, starts))
        ends = np.concatenate((self._ends, ends))
        self._starts, self._ends = _coalesce(starts, ends, np.argsort(starts, kind="stable"))

    @property
    def pages(self) -> int:
        """The number of pages in the set."""
        self._merge()
        return int((self._ends - self._starts).sum())

    def intervals(self) -> tuple[Pages, Pages]:
        """The starts and ends of the set's intervals, ascending."""
        self._merge()
        return self._starts, self._ends

    def copy(self) -> PageSet:
        """An independent copy (``fork``)."""
        self._merge()
        return PageSet(self._starts, self._ends)

    def drop(self, start: int, end: int) -> None:
        """Remove pages ``start .. end-1`` (those not in the set are ignored)."""
        if start >= end:
            return
        self._merge()
        starts, ends = self._starts, self._ends
        i = int(np.searchsorted(ends, start, "right"))  # the first interval that ends after start
        j = int(np.searchsorted(starts, end, "left"))  # intervals i .. j-1 meet the range
        if i >= j:
            return
        kept_starts = [int(starts[i])] if starts[i] < start else []
        kept_ends = [start] if kept_starts else []
        if ends[j - 1] > end:
            kept_starts.append(end)
            kept_ends.append(int(ends[j - 1]))
        self._starts = np.concatenate((starts[:i], np.array(kept_starts, np.int64), starts[j:]))
        self._ends = np.concatenate((ends[:i], np.array(kept_ends, np.int64), ends[j:]))

    def restricted(self, ranges: RangeSet, shift: int) -> PageSet:
        """The pages of the set inside ``ranges`` (bytes; pages of ``1 << shift`` bytes)."""
        starts, ends = self.intervals()
        _, first, last = _clip(starts, ends, *_page_ranges(ranges, shift))
        return PageSet(first, last)


def _clip(
    starts: Pages, ends: Pages, first: Pages, last: Pages
) -> tuple[npt.NDArray[np.intp], Pages, Pages]:
    """The parts of the intervals ``[starts[i], ends[i])`` inside the ranges
    ``[first[j], last[j])`` (both ascending and disjoint), in order: the interval
    each part is of, and its start and end."""
    lo = np.searchsorted(last, starts, "right")  # the ranges each interval meets
    hi = np.searchsorted(first, ends, "left")
    count = np.maximum(hi - lo, 0)
    which = np.repeat(np.arange(len(starts)), count)
    other = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    other += np.repeat(lo, count)
    part_starts = np.maximum(starts[which], first[other])
    part_ends = np.minimum(ends[which], last[other])
    keep = part_starts < part_ends
    return which[keep], part_starts[keep], part_ends[keep]


def _coalesce(starts: Pages, ends: Pages, order: npt.NDArray[np.intp]) -> tuple[Pages, Pages]:
    """The intervals ``[starts[i], ends[i])`` taken in ``order`` (ascending starts), as
    sorted, disjoint, non-adjacent intervals (the empty ones left out)."""
    keep = order[starts[order] < ends[order]]
    if not len(keep):
        return _EMPTY, _EMPTY
    starts, ends = starts[keep], ends[keep]
    reach = np.maximum.accumulate(ends)
    # an interval starts a new one unless it meets or touches those before it
    begins = np.flatnonzero(np.concatenate(([True], starts[1:] > reach[:-1])))
    return starts[begins], reach[np.append(begins[1:] - 1, len(reach) - 1)]


def _page_ranges(ranges: RangeSet, shift: int) -> tuple[Pages, Pages]:
    """The pages ``ranges`` (bytes) span: the first and the end of each range."""
    first = (np.array(ranges.starts, np.uint64) >> np.uint64(shift)).astype(np.int64)
    last = (np.array(ranges.ends, np.uint64) >> np.uint64(shift)).astype(np.int64)
    return first, last


@dataclass
class _Process:
    """One live process: its mappings and the fingerprints of its written pages."""

    ranges: RangeSet = field(default_factory=RangeSet)
    mapped: int = 0
    """Mapped bytes."""
    written: PageMap = field(default_factory=PageMap)
    """Pages holding written content."""
    later: PageSet = field(default_factory=PageSet)
    """Of those, the pages written after the first write's instant."""
    mergeable: RangeSet = field(default_factory=RangeSet)
    """The mapped bytes that are mergeable (madvised, or all with ``merge_any``)."""
    merge_any: bool = False


@dataclass
class _Peaks:
    mapped_pages: int = 0
    written_pages: int = 0


@dataclass
class _Activity:
    """Counts of the writes up to a moment.

    :ivar first_write_t: ``t`` of the first write, or the ``since_ns`` of
        :func:`inspect_trace` when later (None before the first write): the
        instant the activity is measured from.
    :ivar rewritten: pages written while they held written content, after the
        first write's instant (at that instant a trace builds its memory: a
        recording's forked children differ from their parent there).
    :ivar later: pages written after the first write's instant.
    :ivar later_zero: of those, pages written as zeros.
    """

    first_write_t: int | None = None
    rewritten: int = 0
    later: int = 0
    later_zero: int = 0


@dataclass
class _Moment:
    """The written pages of every live process at one instant, and what led to it."""

    t: int
    label: str | None
    written: dict[int, PageMap]
    later: dict[int, PageSet]
    settings: dict[str, Any]
    activity: _Activity
    mergeable: dict[int, RangeSet] = field(default_factory=dict)
    """Each process's mergeable mappings (bytes), copied."""
    merged: _Activity = field(default_factory=_Activity)
    """The activity of the writes into mergeable mappings."""
    shared: bool = True
    """``written`` and ``later`` hold the live page maps (copied before the next change)."""

    def keep(self) -> None:
        """Copy the page maps, which are about to change."""
        if self.shared:
            self.written = {pid: pages.copy() for pid, pages in self.written.items()}
            self.later = {pid: pages.copy() for pid, pages in self.later.items()}
            self.shared = False


def _process_contents(pages: PageMap) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """The distinct fingerprints of one process's written pages and how many pages hold each."""
    values = list(itertools.chain.from_iterable(pages._values))
    single = np.fromiter((isinstance(v, int) for v in values), np.bool_, len(values))
    ints = [v for v in values if isinstance(v, int)]
    arrays = [v for v in values if not isinstance(v, int)]
    starts = np.fromiter(itertools.chain.from_iterable(pages._starts), np.int64, len(values))
    ends = np.fromiter(itertools.chain.from_iterable(pages._ends), np.int64, len(values))
    int_counts = (ends - starts)[single]
    each = np.sort(np.concatenate([np.empty(0, np.uint64), *arrays]))  # one page each
    held, counts = _runs(each)
    if not ints:
        return held, counts
    whole = np.array(ints, np.uint64)  # the fingerprint of each segment of one
    union = _unique(np.concatenate((held, whole)))
    total = np.zeros(len(union), np.int64)
    total[np.searchsorted(union, held)] = counts
    # the counts of each fingerprint summed (np.add.at is slow; floats would round)
    order = np.argsort(whole)
    where = np.searchsorted(union, whole[order])
    begins = np.flatnonzero(np.concatenate(([True], where[1:] != where[:-1])))
    total[where[begins]] += np.add.reduceat(int_counts[order], begins)
    return union, total


def _runs(ordered: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """The distinct values of ``ordered`` (ascending) and how many times each is there."""
    begins = np.flatnonzero(_firsts(ordered))
    return ordered[begins], np.diff(np.append(begins, len(ordered)))


def measure_contents(
    moment: _Moment | None, page_size: int, mergeable: bool = False
) -> dict[str, Any]:
    """The ``contents`` section of :func:`inspect_trace` for ``moment``; with
    ``mergeable``, its ``mergeable_contents``: the pages in mergeable mappings and the
    writes into them."""
    if moment is not None and mergeable:
        shift = page_size.bit_length() - 1
        empty = RangeSet()
        moment = _Moment(
            moment.t,
            moment.label,
            {
                p: m.restricted(moment.mergeable.get(p, empty), shift)
                for p, m in moment.written.items()
            },
            {
                p: m.restricted(moment.mergeable.get(p, empty), shift)
                for p, m in moment.later.items()
            },
            moment.settings,
            moment.merged,
        )
    live = {} if moment is None else {p: m for p, m in moment.written.items() if m.pages}
    per = [_process_contents(live[pid]) for pid in sorted(live)]
    pages = sum(m.pages for m in live.values())
    zero = sum(int(c[f == 0].sum()) for f, c in per)
    if per:
        everything = np.concatenate([f for f, _ in per])
        everything.sort()
        held, holders = _runs(everything)
        nonzero = held != 0
        distinct = int(np.count_nonzero(nonzero))
        in_several = held[nonzero & (holders > 1)]
        shared = sum(int(c[_member(f, in_several)].sum()) for f, c in per)
    else:
        distinct = shared = 0
    activity = _Activity() if moment is None or not live else moment.activity
    seconds = 0.0
    if moment is not None and activity.first_write_t is not None:
        seconds = (moment.t - activity.first_write_t) / 1e9
    rewritten = activity.rewritten
    touched = 0 if moment is None else sum(moment.later[pid].pages for pid in live)
    processes = len(live)
    rate = rewritten / processes / seconds if processes and seconds > 0 else 0.0
    return {
        "t": None if moment is None else moment.t,
        "snapshot": None if moment is None else moment.label,
        "processes": processes,
        "pages": pages,
        "bytes_per_process": pages * page_size // processes if processes else 0,
        "zero_pages": zero,
        "zero_percent": _percent(zero, pages),
        "distinct_contents": distinct,
        "duplicate_pages": pages - zero - distinct,
        "shared_pages": shared,
        "shared_percent": _percent(shared, pages),
        "activity_s": round(seconds, 6),
        "rewritten_pages": rewritten,
        "touched_pages": touched,
        "touched_percent": _percent(touched, pages),
        "dirty_pages_per_s": round(rate, 3),
        "dirty_zero_percent": _percent(activity.later_zero, activity.later),
        "ksm_settings": dict(DEFAULTS) | ({} if moment is None else moment.settings),
    }


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def inspect_trace(reader: TraceReader, since_ns: int = 0) -> dict[str, Any]:
    """Read every event of ``reader`` and summarise the trace.

    ``contents`` measures the rewrites from the first write's instant, or from
    ``since_ns`` when that is later (a recording of guests booting: the rewrites
    of their idle time after the boot), as if the memory had been built then.

    :returns: a dict, keys in this order: ``path``, ``form`` (``msgpack`` or
        ``jsonl``), ``header`` (``version``, ``page_size`` in bytes,
        ``description``, ``meta``), ``events`` (number of events, header not
        counted), ``duration_ns``, ``ops`` (count per op, every op in
        :data:`~ksmreplay.trace.events.OPS` order), ``processes`` (one entry per pid,
        by pid: ``pid``, ``peak_mapped_pages``, ``peak_written_pages``; a pid
        reused after ``exit`` reports its peaks over all its lives),
        ``distinct_fingerprints`` (distinct page contents ever written, zeros
        included), ``zero_pages_written`` (pages a write left all zero),
        ``ksm_settings`` (``t``, ``event`` index and ``settings`` of each
        ``ksm`` event) and ``contents`` (:func:`measure_contents`: at ``t``,
        the snapshot labelled ``snapshot`` or the end when that is None:
        ``processes`` holding written pages, their ``pages``,
        ``bytes_per_process``, ``zero_pages`` and ``zero_percent``,
        ``distinct_contents`` (non-zero), ``duplicate_pages`` (non-zero pages
        whose content another page holds too, less one per content),
        ``shared_pages`` and ``shared_percent`` (non-zero pages whose content
        some other process holds too), ``activity_s`` (seconds from the
        write), ``rewritten_pages`` (pages written while they held written
        content, after the first write's instant), ``touched_pages`` and
        ``touched_percent`` (of the pages held, those written after the
        first write's instant, each counted once), ``dirty_pages_per_s``
        (those per process and second),
        ``dirty_zero_percent`` (the share of zeros among the pages written
        after the first write's instant) and ``ksm_settings`` (every knob as
        in force then)), ``mergeable_contents`` (the same, of the pages in
        mergeable mappings at that moment, their rewrites and later writes
        counted over the writes into mergeable mappings),
        and ``explain``: at the trace's end, the pages
        written by the live processes (``written_pages``), those in
        mergeable mappings (``mergeable_pages``), their distinct contents
        (``distinct_contents``, ``distinct_mergeable_contents``), what the
        ideal deduplication saves (``ideal_saved_pages``: one page per
        distinct content in mergeable mappings, none for zeros with
        ``use_zero_pages=1``), what it would save were every mapping
        mergeable (``ideal_saved_pages_all_mergeable``), the difference
        (``saved_lost_to_unmergeable_pages``), and per live process by pid
        ``pid``, ``written_pages``, ``mergeable_pages`` and
        ``distinct_contents``.
    :raises TraceError: the trace is invalid.
    """
    header = reader.header
    page_size = header.page_size
    shift = page_size.bit_length() - 1
    store = PageStore(page_size)
    ops = dict.fromkeys(OPS, 0)
    procs: dict[int, _Process] = {}
    peaks: dict[int, _Peaks] = {}
    fingerprints = _Distinct()
    zero_pages = 0
    settings_changes: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    activity = _Activity()
    merged = _Activity()  # of the writes into mergeable mappings
    moment: _Moment | None = None
    use_zero = False

    def note(pid: int, proc: _Process) -> None:
        peak = peaks.get(pid)
        if peak is None:
            peak = peaks[pid] = _Peaks()
        if proc.mapped >> shift > peak.mapped_pages:
            peak.mapped_pages = proc.mapped >> shift
        if proc.written.pages > peak.written_pages:
            peak.written_pages = proc.written.pages

    for event in reader.runs():
        if isinstance(event, WriteRun):
            # Runs of fingerprint writes (most of a large trace) from their columns.
            if moment is not None:
                moment.keep()
            ops["write"] += len(event)
            column = event.fps
            zero_pages += len(column) - int(np.count_nonzero(column))
            if activity.first_write_t is None:
                activity.first_write_t = max(int(event.t[0]), since_ns)
            later = event.t > np.uint64(activity.first_write_t)
            if later.any():
                run_pages = (event.len >> np.uint64(shift)).astype(np.int64)
                starts = event.fp_start()
                is_zero = column == 0
                total = np.concatenate(([0], np.cumsum(is_zero)))
                run_zeros = np.where(
                    event.fill, run_pages * is_zero[starts], total[event.fp_end] - total[starts]
                )
                activity.later += int(run_pages[later].sum())
                activity.later_zero += int(run_zeros[later].sum())
            fingerprints.add(column)
            for pid, pages, values, when in _pages_by_pid(event, later, shift):
                proc = procs[pid]
                _write_pages(proc, pages, values, when, activity, merged, shift)
                note(pid, proc)
            continue
        ops[event.op] += 1
        if moment is not None and isinstance(event, (Write, Free, Madvise)):
            moment.keep()
        if isinstance(event, Write):
            proc = procs[event.pid]
            content = event.content
            first = event.addr >> shift
            before = proc.written.pages
            is_later = activity.first_write_t is not None and event.t > activity.first_write_t
            if isinstance(content, bytes):
                first, fps = literal_write(event.addr, content, page_size, proc.written.get, store)
                array = np.array(fps, np.uint64)
                if is_later and proc.mergeable.starts:
                    _count_merged(merged, proc, first, len(fps), array, shift)
                proc.written.put(first, first + len(fps), array)
                fingerprints.add(array)
                count, zeros = len(fps), fps.count(0)
            elif isinstance(content, np.ndarray):
                if is_later and proc.mergeable.starts:
                    _count_merged(merged, proc, first, len(content), content, shift)
                proc.written.put(first, first + len(content), content)
                fingerprints.add(content)
                count = len(content)
                zeros = count - int(np.count_nonzero(content))
            else:
                count = event.len >> shift
                if is_later and proc.mergeable.starts:
                    _count_merged(merged, proc, first, count, content, shift)
                proc.written.put(first, first + count, content)
                fingerprints.add(np.array([content], np.uint64))
                zeros = count if content == 0 else 0
            zero_pages += zeros
            if activity.first_write_t is None:
                activity.first_write_t = max(event.t, since_ns)
            elif event.t > activity.first_write_t:
                activity.rewritten += count - (proc.written.pages - before)
                proc.later.add(np.array([first], np.int64), np.array([first + count], np.int64))
                activity.later += count
                activity.later_zero += zeros
            note(event.pid, proc)
        elif isinstance(event, Alloc):
            proc = procs.setdefault(event.pid, _Process())
            proc.ranges.add(event.addr, event.addr + event.len)
            proc.mapped += event.len
            if proc.merge_any:
                _set_mergeable(proc, event.addr, event.addr + event.len, True)
            note(event.pid, proc)
        elif isinstance(event, Free):
            proc = procs[event.pid]
            proc.mapped -= proc.ranges.remove(event.addr, event.addr + event.len)
            proc.mergeable.remove(event.addr, event.addr + event.len)
            proc.written.drop(event.addr >> shift, (event.addr + event.len) >> shift)
            proc.later.drop(event.addr >> shift, (event.addr + event.len) >> shift)
        elif isinstance(event, Madvise):
            proc = procs[event.pid]
            if event.advice == "dontneed":
                end = (event.addr + event.len) >> shift
                proc.written.drop(event.addr >> shift, end)
                proc.later.drop(event.addr >> shift, end)
            else:
                mergeable = event.advice == "mergeable"
                _set_mergeable(proc, event.addr, event.addr + event.len, mergeable)
        elif isinstance(event, Prctl):
            if event.pid not in procs:
                procs[event.pid] = _Process()
                note(event.pid, procs[event.pid])
            proc = procs[event.pid]
            # merge_any on makes every mapping mergeable; off, none is (unmerged)
            if bool(event.value) != proc.merge_any:
                proc.merge_any = bool(event.value)
                proc.mergeable = proc.ranges.copy() if proc.merge_any else RangeSet()
        elif isinstance(event, Fork):
            parent = procs[event.pid]
            child = procs[event.child_pid] = _Process(
                parent.ranges.copy(),
                parent.mapped,
                parent.written.copy(),
                parent.later.copy(),
                parent.mergeable.copy(),
                parent.merge_any,
            )
            note(event.child_pid, child)
        elif isinstance(event, Exit):
            del procs[event.pid]
        elif isinstance(event, Ksm):
            settings_changes.append(
                {"t": event.t, "event": event.index, "settings": dict(event.settings)}
            )
            settings.update(event.settings)
            use_zero = bool(event.settings.get("use_zero_pages", use_zero))
        elif isinstance(event, Snapshot) and any(p.written.pages for p in procs.values()):
            moment = _moment(event.t, event.label, procs, settings, activity, merged)
    if moment is None and any(proc.written.pages for proc in procs.values()):
        moment = _moment(reader.duration_ns, None, procs, settings, activity, merged)

    return {
        "path": reader.name,
        "form": reader.form,
        "header": {
            "version": header.version,
            "page_size": page_size,
            "description": header.description,
            "meta": dict(header.meta),
        },
        "events": reader.events,
        "duration_ns": reader.duration_ns,
        "ops": ops,
        "processes": [
            {
                "pid": pid,
                "peak_mapped_pages": peaks[pid].mapped_pages,
                "peak_written_pages": peaks[pid].written_pages,
            }
            for pid in sorted(peaks)
        ],
        "distinct_fingerprints": len(fingerprints),
        "zero_pages_written": zero_pages,
        "ksm_settings": settings_changes,
        "contents": measure_contents(moment, page_size),
        "mergeable_contents": measure_contents(moment, page_size, mergeable=True),
        "explain": _explain(procs, shift, use_zero),
    }


def _moment(
    t: int,
    label: str | None,
    procs: dict[int, _Process],
    settings: dict[str, Any],
    activity: _Activity,
    merged: _Activity,
) -> _Moment:
    """The processes' written pages at ``t`` (shared until :meth:`_Moment.keep`)."""
    return _Moment(
        t,
        label,
        {pid: proc.written for pid, proc in procs.items()},
        {pid: proc.later for pid, proc in procs.items()},
        dict(settings),
        _Activity(**vars(activity)),
        {pid: proc.mergeable.copy() for pid, proc in procs.items()},
        _Activity(**(vars(merged) | {"first_write_t": activity.first_write_t})),
    )


def _member(values: npt.NDArray[np.uint64], of: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Whether each of ``values`` is in ``of`` (ascending, distinct)."""
    if not len(of):
        return np.zeros(len(values), np.bool_)
    found: npt.NDArray[np.bool_] = (
        of[np.minimum(np.searchsorted(of, values), len(of) - 1)] == values
    )
    return found


class _Distinct:
    """The distinct values of the arrays added (fingerprints written): a sorted
    array and the arrays added since, merged in once they are as long."""

    __slots__ = ("_added", "_added_count", "_seen")

    def __init__(self) -> None:
        self._seen: npt.NDArray[np.uint64] = np.empty(0, np.uint64)
        self._added: list[npt.NDArray[np.uint64]] = []
        self._added_count = 0

    def add(self, values: npt.NDArray[np.uint64]) -> None:
        self._added.append(values)
        self._added_count += len(values)
        if self._added_count > max(len(self._seen), 1 << 20):
            self._merge()

    def _merge(self) -> None:
        if self._added:
            # two ascending runs: a stable sort merges them
            both = np.concatenate((self._seen, _unique(np.concatenate(self._added))))
            both.sort(kind="stable")
            self._seen = _distinct_sorted(both)
            self._added = []
            self._added_count = 0

    def __len__(self) -> int:
        self._merge()
        return len(self._seen)


def _unique(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The distinct ``values``, ascending (by sorting: ``np.unique`` hashes, which is
    many times slower on fingerprints)."""
    return _distinct_sorted(np.sort(values))


def _distinct_sorted(ordered: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The distinct values of ``ordered`` (ascending)."""
    return ordered[_firsts(ordered)]


def _firsts(ordered: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Where each run of equal values of ``ordered`` (ascending) begins."""
    first = np.empty(len(ordered), np.bool_)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return first


def _pages_by_pid(
    run: WriteRun, later: npt.NDArray[np.bool_], shift: int
) -> Iterator[tuple[int, Pages, npt.NDArray[np.uint64], npt.NDArray[np.bool_]]]:
    """The pages the writes of ``run`` write, pid by pid: ``(pid, pages, fingerprints,
    later)``, the pages in the order of the writes (a page once per write of it), the
    fingerprint each is given and whether its write is after the first write's instant
    (``later``, per write of the run)."""
    order = np.argsort(run.pid, kind="stable")
    pids = run.pid[order]
    counts = (run.len[order] >> np.uint64(shift)).astype(np.int64)
    first = (run.addr[order] >> np.uint64(shift)).astype(np.int64)
    fp_start = run.fp_start()[order]
    when = later[order]
    if (counts == 1).all():
        pages, values = first, run.fps[fp_start]
        bounds = np.arange(len(order) + 1)
    else:
        bounds = np.concatenate(([0], np.cumsum(counts)))  # pages before each write
        step = np.arange(int(bounds[-1]), dtype=np.int64) - np.repeat(bounds[:-1], counts)
        pages = np.repeat(first, counts) + step
        values = run.fps[np.repeat(fp_start, counts) + step]
        when = np.repeat(when, counts)
    cuts = (np.flatnonzero(pids[1:] != pids[:-1]) + 1).tolist()
    for i, j in zip([0, *cuts], [*cuts, len(order)], strict=True):
        lo, hi = int(bounds[i]), int(bounds[j])
        yield int(pids[i]), pages[lo:hi], values[lo:hi], when[lo:hi]


def _write_pages(
    proc: _Process,
    pages: Pages,
    values: npt.NDArray[np.uint64],
    later: npt.NDArray[np.bool_],
    activity: _Activity,
    merged: _Activity,
    shift: int,
) -> None:
    """Writes of a run into ``proc``, page by page in order: ``pages`` get
    ``values``; ``later`` tells the writes after the first write's instant, to count
    into ``activity.rewritten`` (a page written while it held written content) and
    into ``merged`` (the pages in mergeable mappings, as :func:`_count_merged`)."""
    order = np.argsort(pages)
    ordered = pages[order]
    begins = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    distinct = ordered[begins]
    if len(distinct) == len(pages):
        first_write = last_write = order
    else:  # of each distinct page
        first_write = np.minimum.reduceat(order, begins)
        last_write = np.maximum.reduceat(order, begins)
    new = proc.written.assign(distinct, values[last_write])
    if not later.any():
        return
    # A page is written over written content unless the map did not hold it and
    # this is its first write (the writes before the first instant come first).
    fresh = new & later[first_write]
    activity.rewritten += int(np.count_nonzero(later)) - int(np.count_nonzero(fresh))
    touched = distinct[later[last_write]]
    proc.later.add(touched, touched + 1)
    if not proc.mergeable.starts:
        return
    first, last = _page_ranges(proc.mergeable, shift)
    mergeable = _within(pages, first, last) & later
    merged.later += int(np.count_nonzero(mergeable))
    merged.later_zero += int(np.count_nonzero(mergeable & (values == 0)))
    merged.rewritten += int(np.count_nonzero(mergeable)) - int(
        np.count_nonzero(fresh & mergeable[first_write])
    )


def _within(pages: Pages, first: Pages, last: Pages) -> npt.NDArray[np.bool_]:
    """Whether each of ``pages`` is in one of the ranges ``[first[i], last[i])`` (ascending)."""
    if not len(first):
        return np.zeros(len(pages), np.bool_)
    i = np.minimum(np.searchsorted(last, pages, "right"), len(last) - 1)
    return (first[i] <= pages) & (pages < last[i])


def _count_merged(
    merged: _Activity,
    proc: _Process,
    first: int,
    count: int,
    value: Fingerprints,
    shift: int,
) -> None:
    """Count a write after the first write's instant, of ``count`` pages from page
    ``first`` holding ``value``, into ``merged`` for its pages in mergeable mappings
    (before the write is put: pages it writes over written pages are rewrites)."""
    starts, ends = proc.mergeable.starts, proc.mergeable.ends
    last = first + count
    lo = bisect_right(ends, first << shift)
    hi = bisect_left(starts, last << shift)
    for a, b in zip(starts[lo:hi], ends[lo:hi], strict=True):
        p, q = max(first, a >> shift), min(last, b >> shift)
        if p >= q:
            continue
        merged.rewritten += proc.written.count(p, q)
        merged.later += q - p
        if isinstance(value, int):
            merged.later_zero += q - p if value == 0 else 0
        else:
            merged.later_zero += q - p - int(np.count_nonzero(value[p - first : q - first]))


def _set_mergeable(proc: _Process, start: int, end: int, mergeable: bool) -> None:
    """MADV_MERGEABLE / MADV_UNMERGEABLE of bytes [start, end) (the mapped part of it)."""
    proc.mergeable.remove(start, end)
    if mergeable:
        ranges = proc.ranges
        lo = bisect_right(ranges.ends, start)
        hi = bisect_left(ranges.starts, end)
        for a, b in zip(ranges.starts[lo:hi], ranges.ends[lo:hi], strict=True):
            proc.mergeable.add(max(a, start), min(b, end))


class _Contents:
    """A multiset of page contents: runs of one fingerprint and arrays of them."""

    __slots__ = ("arrays", "pages", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self.arrays: list[npt.NDArray[np.uint64]] = []
        self.pages = 0

    @staticmethod
    def of(pages: PageMap) -> _Contents:
        """The contents of the pages of ``pages``."""
        out = _Contents()
        for values in pages._values:
            for value in values:
                if isinstance(value, int):
                    out.values.append(value)
                else:
                    out.arrays.append(value)
        out.pages = pages.pages
        return out

    def distinct(self) -> npt.NDArray[np.uint64]:
        """The distinct contents, ascending."""
        return _unique(np.concatenate([np.array(self.values, np.uint64), *self.arrays]))


def _explain(procs: dict[int, _Process], shift: int, use_zero: bool) -> dict[str, Any]:
    """What KSM could save at the trace's end, from the pages written (no replay).

    A written page is in a mergeable mapping or not; the ideal keeps one page
    per distinct content (none for zero pages with ``use_zero_pages=1`` as the
    trace last set it), so it saves ``pages - frames``; of what every
    mapping being mergeable would save, ``saved_lost_to_unmergeable_pages``
    is what the mappings not made mergeable keep from it.
    """
    everything, mergeable = _Contents(), _Contents()
    processes = []
    for pid in sorted(procs):
        proc = procs[pid]
        mine = _Contents.of(proc.written)
        mine_mergeable = _Contents.of(proc.written.restricted(proc.mergeable, shift))
        for whole, part in ((everything, mine), (mergeable, mine_mergeable)):
            whole.values += part.values
            whole.arrays += part.arrays
            whole.pages += part.pages
        processes.append(
            {
                "pid": pid,
                "written_pages": mine.pages,
                "mergeable_pages": mine_mergeable.pages,
                "distinct_contents": len(mine.distinct()),
            }
        )
    saved = [
        contents.pages - _frames(contents.distinct(), use_zero)
        for contents in (everything, mergeable)
    ]
    return {
        "written_pages": everything.pages,
        "mergeable_pages": mergeable.pages,
        "distinct_contents": len(everything.distinct()),
        "distinct_mergeable_contents": len(mergeable.distinct()),
        "ideal_saved_pages": saved[1],
        "ideal_saved_pages_all_mergeable": saved[0],
        "saved_lost_to_unmergeable_pages": saved[0] - saved[1],
        "processes": processes,
    }


def _frames(distinct: npt.NDArray[np.uint64], use_zero: bool) -> int:
    """Pages the distinct contents ``distinct`` take, one each (zero: none with use_zero_pages)."""
    return len(distinct) - int(use_zero and len(distinct) > 0 and distinct[0] == 0)
