"""Checking a decoded trace against every rule of the format, once, into typed records."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from itertools import accumulate, chain, pairwise
from typing import Any, NoReturn

import msgpack
import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import dense_ranks
from ksmreplay.errors import TraceError
from ksmreplay.ksm.knobs import KnobValue, check_settings
from ksmreplay.trace.decode import _FILL_PAGES
from ksmreplay.trace.events import (
    ADVICES,
    DEFAULT_PAGE_SIZE,
    Alloc,
    Content,
    Event,
    Exit,
    FingerprintArray,
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
    WriteRun,
)
from ksmreplay.trace.limits import (
    _INT_ONLY,
    _ITEMS,
    _MAX_B64_CHARS,
    _PHRASE,
    _SHORT_RUN,
    ADDR_LIMIT,
    FORMAT_VERSION,
    INT_LIMIT,
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_META_BYTES,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PID_LIMIT,
    _bin_over_limit,
    _int_text,
    _json_value_problem,
    _plural,
    _str_problem,
    kind,
)


class RangeSet:
    """A set of byte addresses kept as sorted, disjoint, non-adjacent ``[start, end)`` ranges.

    Costs one pair of ints per range however many pages a range spans.
    """

    __slots__ = ("ends", "starts")

    def __init__(self, starts: list[int] | None = None, ends: list[int] | None = None) -> None:
        self.starts: list[int] = starts if starts is not None else []
        self.ends: list[int] = ends if ends is not None else []

    def copy(self) -> RangeSet:
        """An independent copy (``fork``)."""
        return RangeSet(self.starts.copy(), self.ends.copy())

    def total(self) -> int:
        """Number of addresses in the set (bytes)."""
        return sum(self.ends) - sum(self.starts)

    def first_missing(self, start: int, end: int) -> int | None:
        """The lowest address of ``[start, end)`` not in the set, or None if all are."""
        i = bisect_right(self.starts, start) - 1
        if i < 0 or self.ends[i] <= start:
            return start
        if self.ends[i] < end:
            return self.ends[i]
        return None

    def first_overlap(self, start: int, end: int) -> int | None:
        """The lowest address of ``[start, end)`` in the set, or None if none is."""
        starts = self.starts
        i = bisect_right(starts, start) - 1
        if i >= 0 and self.ends[i] > start:
            return start
        if i + 1 < len(starts) and starts[i + 1] < end:
            return starts[i + 1]
        return None

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, which must not overlap the set."""
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, start)
        join_prev = i > 0 and ends[i - 1] == start
        join_next = i < len(starts) and starts[i] == end
        if join_prev and join_next:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif join_prev:
            ends[i - 1] = end
        elif join_next:
            starts[i] = start
        else:
            starts.insert(i, start)
            ends.insert(i, end)

    def remove(self, start: int, end: int) -> int:
        """Remove ``[start, end)`` (parts not in the set are ignored); return the bytes removed."""
        starts, ends = self.starts, self.ends
        lo = bisect_right(ends, start)
        hi = bisect_left(starts, end)
        if lo >= hi:
            return 0
        removed = sum(ends[lo:hi]) - sum(starts[lo:hi])
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[lo] < start:
            new_starts.append(starts[lo])
            new_ends.append(start)
            removed -= start - starts[lo]
        if ends[hi - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[hi - 1])
            removed -= ends[hi - 1] - end
        starts[lo:hi] = new_starts
        ends[lo:hi] = new_ends
        return removed


def _check_header(obj: object, name: str) -> Header:
    def fail(message: str) -> NoReturn:
        raise TraceError(name, 0, None, message)

    if not isinstance(obj, dict):
        fail(f"header must be a map, not {kind(obj)}")
    if "ksmreplay" not in obj:
        fail("header has no 'ksmreplay' key (not a ksmreplay trace)")
    version = obj["ksmreplay"]
    if type(version) is not int:
        fail(f"header ksmreplay must be an int, not {kind(version)}")
    if version != FORMAT_VERSION:
        fail(f"unsupported trace format version {_int_text(version)} (this reader knows version 1)")
    page_size = obj.get("page_size", DEFAULT_PAGE_SIZE)
    if type(page_size) is not int:
        fail(f"header page_size must be an int, not {kind(page_size)}")
    if not (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE) or page_size & (page_size - 1):
        fail(
            f"header page_size {_int_text(page_size)} is not a power of two between 4096 and 65536"
        )
    description = obj.get("description")
    if description is not None and not isinstance(description, str):
        fail(f"header description must be a str, not {kind(description)}")
    if description is not None:
        problem = _str_problem(description, "header description")
        if problem:
            fail(problem)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        fail(f"header meta must be a map, not {kind(meta)}")
    problem = _json_value_problem(meta, "header meta")
    if problem:
        fail(problem)
    if meta:
        size = len(msgpack.packb(meta))
        if size > MAX_META_BYTES:
            fail(f"header meta takes {size} bytes as msgpack, over the limit of {MAX_META_BYTES}")
    return Header(version=version, page_size=page_size, description=description, meta=meta)


def _fingerprint_views(contents: list[list[Any]]) -> list[FingerprintArray | None]:
    """One uint64 array per fingerprint list, as views of one array built in one go.

    All None when any item is not an int in 0..2**64-1 (the general path then
    finds and names the bad one).
    """
    if not contents:
        return []
    flat = list(chain.from_iterable(contents))
    if set(map(type, flat)) == _INT_ONLY:
        try:
            whole = np.array(flat, dtype=np.uint64)
        except OverflowError:
            pass
        else:
            offsets = list(accumulate(map(len, contents), initial=0))
            return [whole[lo:hi] for lo, hi in pairwise(offsets)]
    return [None] * len(contents)


def _ranks(values: npt.NDArray[np.int64]) -> tuple[list[int], npt.NDArray[np.int64]]:
    """:func:`~ksmreplay.arrays.dense_ranks` of positive ``values``, in time
    that follows their number, not their size (a table only when it is short)."""
    if len(values) and int(values.max()) < 4 * len(values) + 64:
        return dense_ranks(values)
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct.tolist(), inverse.astype(np.int64).reshape(-1)


def _column_object(cols: WriteRun, i: int) -> list[object]:
    """Event ``i`` of ``cols`` as the msgpack library would have decoded it."""
    lo = int(cols.fp_end[i - 1]) if i else 0
    hi = int(cols.fp_end[i])
    content: object = int(cols.fps[lo]) if cols.fill[i] else cols.fps[lo:hi].tolist()
    return [
        int(cols.t[i]),
        "write",
        int(cols.pid[i]),
        int(cols.addr[i]),
        int(cols.len[i]),
        content,
    ]


class Footprint:
    """An upper bound on the pages a trace keeps resident, kept while it is validated.

    Per process, the pages its writes and reads touched, never more than it
    has mapped (a ``fork`` child starts with its parent's; ``free`` lowers
    the bound to what stays mapped; ``exit`` drops it).  Counted per event
    from lengths, never page by page, so the cost follows the events, not
    their sizes.  :func:`ksmreplay.arrays.estimate_replay` turns the peak into
    bytes before a replay starts.

    :ivar peak_pages: the most pages resident at once, at most (pages).
    :ivar peak_processes: the most processes alive at once.
    """

    __slots__ = ("_mapped", "_total", "_touched", "peak_pages", "peak_processes")

    def __init__(self) -> None:
        self._mapped: dict[int, int] = {}
        self._touched: dict[int, int] = {}
        self._total = 0
        self.peak_pages = 0
        self.peak_processes = 0

    def _set(self, pid: int, pages: int) -> None:
        self._total += pages - self._touched.get(pid, 0)
        self._touched[pid] = pages
        self.peak_pages = max(self.peak_pages, self._total)

    def mapped(self, pid: int, pages: int) -> None:
        """``pid`` has ``pages`` pages more (or, negative, fewer) mapped."""
        mapped = self._mapped[pid] = self._mapped.get(pid, 0) + pages
        self.peak_processes = max(self.peak_processes, len(self._mapped))
        if self._touched.get(pid, 0) > mapped:
            self._set(pid, mapped)

    def touched(self, pid: int, pages: int) -> None:
        """``pid`` wrote or read ``pages`` pages."""
        self._set(pid, min(self._touched.get(pid, 0) + pages, self._mapped.get(pid, 0)))

    def touched_columns(self, pid: npt.NDArray[np.int64], pages: npt.NDArray[np.float64]) -> None:
        """:meth:`touched` for a run of writes, one pid and page count per write."""
        if not len(pid):
            return
        if pid[0] == pid.min() == pid.max():
            self.touched(int(pid[0]), int(pages.sum()))
            return
        pids, ranks = dense_ranks(pid)
        for one, n in zip(pids, np.bincount(ranks, weights=pages).tolist(), strict=True):
            self.touched(one, int(n))

    def fork(self, parent: int, child: int) -> None:
        self._mapped[child] = self._mapped.get(parent, 0)
        self.peak_processes = max(self.peak_processes, len(self._mapped))
        self._set(child, self._touched.get(parent, 0))

    def exit(self, pid: int) -> None:
        self._set(pid, 0)
        del self._touched[pid]
        self._mapped.pop(pid, None)


class _Validator:
    """Checks events one at a time and turns them into typed records."""

    def __init__(self, name: str, page_size: int, jsonl: bool) -> None:
        self.name = name
        self.page_size = page_size
        self.mask = page_size - 1
        self.shift = page_size.bit_length() - 1
        self.jsonl = jsonl
        self.last_t = 0
        self.procs: dict[int, RangeSet] = {}
        self.exited: set[int] = set()
        self.created = 0
        self.footprint = Footprint()
        self.handlers: dict[str, Callable[[int, int, list[Any]], Event]] = {
            "alloc": self._alloc,
            "free": self._free,
            "write": self._write,
            "read": self._read,
            "madvise": self._madvise,
            "prctl": self._prctl,
            "fork": self._fork,
            "exit": self._exit,
            "ksm": self._ksm,
            "settle": self._settle,
            "snapshot": self._snapshot,
        }

    # -- helpers ---------------------------------------------------------------

    def fail(self, index: int, t: int | None, message: str) -> NoReturn:
        raise TraceError(self.name, index, t, message)

    def batch(self, first: int, objs: list[object]) -> list[Event | WriteRun]:
        """Check the events ``objs`` (event indexes from ``first``) and return their records.

        Writes of the common shape (what the native core decodes: integer
        fields, a fingerprint or a list of them), the bulk of large traces,
        gather into runs of columns, checked by :meth:`check_run` as the
        native core's are; the fingerprint lists of the whole batch become one
        uint64 array in one go.  Anything else takes the general path, which
        also says what is wrong.
        """
        plain = [self._plain_write(o) for o in objs]
        lists = [p[5] for p in plain if p is not None and type(p[5]) is list]
        views = iter(_fingerprint_views(lists))
        out: list[Event | WriteRun] = []
        run: list[list[Any]] = []
        run_contents: list[int | FingerprintArray] = []
        start = first
        budget = _FILL_PAGES  # pages that fill writes of this batch may expand to
        for i, (obj, write) in enumerate(zip(objs, plain, strict=True)):
            if write is not None:
                content = write[5]
                if type(content) is not int:
                    content = next(views)
                elif write[4] >> self.shift <= budget:
                    budget -= write[4] >> self.shift
                else:
                    content = None
                if content is not None:
                    if not run:
                        start = first + i
                    run.append(write)
                    run_contents.append(content)
                    continue
            if run:
                out.extend(self._run(start, run, run_contents))
                run, run_contents = [], []
            out.append(self.general(first + i, obj))
        if run:
            out.extend(self._run(start, run, run_contents))
        return out

    def _run(
        self, index: int, writes: list[list[Any]], contents: list[int | FingerprintArray]
    ) -> list[Event | WriteRun]:
        """The checked records of consecutive writes of the common shape.

        A short run takes the general path, one record per write: columns
        for a few events would cost more than the events.
        """
        if len(writes) <= _SHORT_RUN:
            return [self.general(index + i, obj) for i, obj in enumerate(writes)]
        return self.check_run(index, self._unchecked(index, writes, contents))

    def _unchecked(
        self, index: int, writes: list[list[Any]], contents: list[int | FingerprintArray]
    ) -> WriteRun:
        """The write events ``writes`` (shapes checked, values not) as one run."""
        fields = [(w[0], w[2], w[3], w[4]) for w in writes]
        return WriteRun.build(index, fields, contents, self.shift)

    def _plain_write(self, obj: object) -> list[Any] | None:
        """``obj`` if it has the shape of a common write event (its values unchecked).

        A fingerprint for the whole range also needs an aligned range of at
        most :data:`_FILL_PAGES` pages (it is expanded to every page); a list
        of fingerprints at most :data:`MAX_ARRAY_ITEMS` items.
        """
        if type(obj) is not list or len(obj) != 6 or obj[1] != "write":
            return None
        t, _, pid, addr, length, content = obj
        if not (
            type(t) is int
            and type(pid) is int
            and type(addr) is int
            and type(length) is int
            and 0 <= t < INT_LIMIT
            and 0 < pid < PID_LIMIT
            and 0 <= addr < ADDR_LIMIT
            and 0 <= length < ADDR_LIMIT
        ):
            return None
        if type(content) is list:
            return obj if 0 < len(content) <= MAX_ARRAY_ITEMS else None
        fill = (
            type(content) is int
            and 0 <= content < INT_LIMIT
            and length > 0
            and not (addr | length) & self.mask
            and length >> self.shift <= _FILL_PAGES
        )
        return obj if fill else None

    def check_run(self, first: int, cols: WriteRun) -> list[Event | WriteRun]:
        """Check a run of write events of the common shape (event indexes from ``first``).

        Every rule of a write, on whole columns (one event at a time for a
        short run, where numpy's cost per call would outweigh the work); the
        valid events come out as :class:`WriteRun` s, and the first invalid
        one goes through the general path as a Python object, which says
        exactly what is wrong.
        """
        out: list[Event | WriteRun] = []
        n = len(cols.t)
        lo = 0
        if n <= _SHORT_RUN and self._valid_prefix_short(cols, 0) == n:
            # All valid (the rule for short runs): the columns as they are.
            self.last_t = int(cols.t[-1])
            self._touched(cols.pid, cols.len)
            fields = (cols.t, cols.pid, cols.addr, cols.len, cols.fill, cols.fp_end, cols.fps)
            return [WriteRun(first, *fields)]
        while lo < n:
            if n - lo <= _SHORT_RUN:
                bad = lo + self._valid_prefix_short(cols, lo)
            else:
                bad = lo + self._valid_prefix(cols, lo)
            if bad > lo:
                base = int(cols.fp_end[lo - 1]) if lo else 0
                out.append(
                    WriteRun(
                        first + lo,
                        cols.t[lo:bad],
                        cols.pid[lo:bad],
                        cols.addr[lo:bad],
                        cols.len[lo:bad],
                        cols.fill[lo:bad],
                        cols.fp_end[lo:bad] - base,
                        cols.fps[base : cols.fp_end[bad - 1]],
                    )
                )
                self.last_t = int(cols.t[bad - 1])
                self._touched(cols.pid[lo:bad], cols.len[lo:bad])
            if bad < n:
                out.append(self.general(first + bad, _column_object(cols, bad)))
                bad += 1
            lo = bad
        return out

    def _touched(self, pid: npt.NDArray[np.int64], length: npt.NDArray[np.uint64]) -> None:
        """The valid writes of a run in the footprint (whole pages: they are aligned)."""
        self.footprint.touched_columns(pid, (length >> np.uint64(self.shift)).astype(np.float64))

    def _valid_prefix_short(self, cols: WriteRun, lo: int) -> int:
        """:meth:`_valid_prefix`, one event at a time."""
        mask, shift, procs = self.mask, self.shift, self.procs
        last = self.last_t
        before = int(cols.fp_end[lo - 1]) if lo else 0
        rows = zip(
            cols.t[lo:].tolist(),
            cols.pid[lo:].tolist(),
            cols.addr[lo:].tolist(),
            cols.len[lo:].tolist(),
            cols.fp_end[lo:].tolist(),
            strict=True,
        )
        for i, (t, pid, addr, length, fp_end) in enumerate(rows):
            ranges = procs.get(pid)
            if (
                t < last
                or length <= 0
                or (addr | length) & mask
                or addr + length >= ADDR_LIMIT
                or length >> shift != fp_end - before
                or ranges is None
                or ranges.first_missing(addr, addr + length) is not None
            ):
                return i
            last, before = t, fp_end
        return len(cols.t) - lo

    def _valid_prefix(self, cols: WriteRun, lo: int) -> int:
        """How many events of ``cols`` from ``lo`` on pass every check of a write."""
        t, pid, addr, length = cols.t[lo:], cols.pid[lo:], cols.addr[lo:], cols.len[lo:]
        prev = np.empty_like(t)
        prev[0] = self.last_t
        prev[1:] = t[:-1]
        pages = np.diff(cols.fp_end[lo:], prepend=cols.fp_end[lo - 1] if lo else 0)
        ok = (
            (t >= prev)
            & (length > 0)
            & (((addr | length) & np.uint64(self.mask)) == 0)
            & (addr <= ~length)  # addr + len < 2**64
            & ((length >> np.uint64(self.shift)).astype(np.int64) == pages)
        )
        ok &= self._mapped(pid, addr, addr + length)  # the sum wraps only where ok is False
        return len(ok) if ok.all() else int(np.argmin(ok))

    def _mapped(
        self, pid: npt.NDArray[np.int64], addr: npt.NDArray[np.uint64], end: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        """Whether each range ``[addr, end)`` lies inside one mapping of its live ``pid``.

        Costs follow the events and the processes they name, never the pid
        values: ranks come from a table only when it is no longer than the run.
        """
        pids, rank = _ranks(pid)
        ranges = [self.procs.get(p) for p in pids]
        # A process with one mapping (the common case) needs no search: its
        # bounds per rank; none for a process with none (nothing fits in [0, 0)).
        lows = np.zeros(len(pids), np.uint64)
        highs = np.zeros(len(pids), np.uint64)
        several = []
        for i, r in enumerate(ranges):
            if r is None or not r.starts:
                continue
            if len(r.starts) == 1:
                lows[i] = r.starts[0]
                highs[i] = r.ends[0]
            else:
                several.append(i)
        ok = (lows[rank] <= addr) & (highs[rank] >= end)
        if not several:
            return ok
        # Processes with several mappings: their events grouped by process.
        in_several = np.zeros(len(pids), np.bool_)
        in_several[several] = True
        events = np.flatnonzero(in_several[rank])
        events = events[np.argsort(rank[events], kind="stable")]
        cuts = np.flatnonzero(np.diff(rank[events])) + 1
        for group in np.split(events, cuts):
            r = ranges[int(rank[group[0]])]
            assert r is not None
            if 4 * len(group) < len(r.starts):
                # Few events for many mappings: search the list, not a copy of it.
                missing = r.first_missing
                ok[group] = [
                    missing(a, e) is None
                    for a, e in zip(addr[group].tolist(), end[group].tolist(), strict=True)
                ]
            else:
                slot = np.searchsorted(np.array(r.starts, np.uint64), addr[group], "right") - 1
                found = np.array(r.ends, np.uint64)[np.maximum(slot, 0)] >= end[group]
                ok[group] = (slot >= 0) & found
        return ok

    def general(self, index: int, obj: object) -> Event:
        if type(obj) is not list:
            self.fail(index, None, f"event must be an array, not {kind(obj)}")
        if len(obj) < 2:
            self.fail(
                index, None, f"event must be an array [t, op, ...], not {_plural(len(obj), 'item')}"
            )
        t = obj[0]
        if type(t) is not int:
            self.fail(index, None, f"t must be an int, not {kind(t)}")
        if t < 0:
            self.fail(index, None, f"t must be >= 0, not {_int_text(t)}")
        if t >= INT_LIMIT:
            self.fail(index, None, f"t must be below 2**64, not {_int_text(t)}")
        if t < self.last_t:
            self.fail(index, t, f"t goes back in time (previous event at t={self.last_t})")
        op = obj[1]
        if type(op) is not str:
            self.fail(index, t, f"op must be a str, not {kind(op)}")
        handler = self.handlers.get(op)
        if handler is None:
            self.fail(index, t, f"unknown op {op!r}")
        event = handler(index, t, obj)
        self.last_t = t
        return event

    def arity(self, index: int, t: int, op: str, obj: list[Any]) -> NoReturn:
        names = _ITEMS[op]
        expected = "at most 1 item" if op == "settle" else _plural(len(names), "item")
        self.fail(
            index,
            t,
            f"{op} takes {expected} after t and op ({', '.join(names)}), got {len(obj) - 2}",
        )

    def int_field(self, index: int, t: int, op: str, field: str, value: object) -> int:
        if type(value) is not int:
            self.fail(index, t, f"{op} {field} must be an int, not {kind(value)}")
        return value

    def pid_field(self, index: int, t: int, op: str, field: str, value: object) -> int:
        pid = self.int_field(index, t, op, field, value)
        if pid <= 0:
            self.fail(index, t, f"{op} {field} must be positive, not {_int_text(pid)}")
        if pid >= PID_LIMIT:
            self.fail(index, t, f"{op} {field} must be below 2**63, not {_int_text(pid)}")
        return pid

    def range_fields(self, index: int, t: int, op: str, obj: list[Any]) -> tuple[int, int, int]:
        """pid, addr, len of a range event (checked for type and bounds)."""
        pid, addr, length = obj[2], obj[3], obj[4]
        if (
            type(pid) is int
            and type(addr) is int
            and type(length) is int
            and 0 < pid < PID_LIMIT
            and addr >= 0
            and length > 0
            and addr + length < ADDR_LIMIT
        ):
            return pid, addr, length
        self.pid_field(index, t, op, "pid", pid)
        self.int_field(index, t, op, "addr", addr)
        self.int_field(index, t, op, "len", length)
        if addr < 0:
            self.fail(index, t, f"{op} addr must be >= 0, not {_int_text(addr)}")
        if length <= 0:
            self.fail(index, t, f"{op} len must be > 0, not {_int_text(length)}")
        end = addr + length
        shown = f"{end:#x}" if end < 2**128 else f"an address of {end.bit_length()} bits"
        self.fail(index, t, f"{op} range ends at {shown}; addr + len must be below 2**64")

    def aligned(self, index: int, t: int, op: str, addr: int, length: int, why: str = "") -> None:
        if (addr | length) & self.mask:
            if addr & self.mask:
                self.fail(
                    index,
                    t,
                    f"{op} addr {addr:#x} is not page-aligned (page_size {self.page_size}{why})",
                )
            self.fail(
                index,
                t,
                f"{op} len {length} is not a multiple of page_size {self.page_size}{why}",
            )

    def process(self, index: int, t: int, op: str, pid: int) -> RangeSet:
        ranges = self.procs.get(pid)
        if ranges is None:
            state = "has exited" if pid in self.exited else "does not exist"
            self.fail(index, t, f"{_PHRASE[op]} {pid}, which {state}")
        return ranges

    def mapped(self, index: int, t: int, op: str, pid: int, addr: int, length: int) -> None:
        ranges = self.process(index, t, op, pid)
        missing = ranges.first_missing(addr, addr + length)
        if missing is not None:
            self.fail(index, t, f"{_PHRASE[op]} {pid} at {missing:#x} outside any mapping")

    def create(self, pid: int) -> RangeSet:
        ranges = self.procs.get(pid)
        if ranges is None:
            ranges = self.procs[pid] = RangeSet()
            self.exited.discard(pid)
            self.created += 1
            self.footprint.mapped(pid, 0)
        return ranges

    # -- ops ---------------------------------------------------------------------

    def _alloc(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "alloc", obj)
        pid, addr, length = self.range_fields(index, t, "alloc", obj)
        self.aligned(index, t, "alloc", addr, length)
        ranges = self.procs.get(pid)
        if ranges is not None:
            overlap = ranges.first_overlap(addr, addr + length)
            if overlap is not None:
                self.fail(
                    index, t, f"alloc in pid {pid} at {overlap:#x} overlaps an existing mapping"
                )
        self.create(pid).add(addr, addr + length)
        self.footprint.mapped(pid, length >> self.shift)
        return Alloc(index, t, pid, addr, length)

    def _free(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "free", obj)
        pid, addr, length = self.range_fields(index, t, "free", obj)
        self.aligned(index, t, "free", addr, length)
        removed = self.process(index, t, "free", pid).remove(addr, addr + length)
        self.footprint.mapped(pid, -(removed >> self.shift))
        return Free(index, t, pid, addr, length)

    def _write(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 6:
            self.arity(index, t, "write", obj)
        pid, addr, length = self.range_fields(index, t, "write", obj)
        content: Any = obj[5]
        ctype = type(content)
        if ctype is int:
            self.aligned(index, t, "write", addr, length, "; needed for fingerprint content")
            if content < 0 or content >= INT_LIMIT:
                self.fail(
                    index,
                    t,
                    f"write content {_int_text(content)} is not a fingerprint (0..2**64-1)",
                )
        elif ctype is list:
            self.aligned(index, t, "write", addr, length, "; needed for fingerprint content")
            content = self.fingerprints(index, t, content, length >> self.shift)
        elif ctype is bytes:
            if len(content) > MAX_BIN_BYTES:
                self.fail(index, t, _bin_over_limit(len(content)))
            if len(content) != length:
                self.fail(index, t, f"write content has {len(content)} bytes for len {length}")
        elif ctype is dict and self.jsonl:
            content = self.b64(index, t, content, length)
        else:
            self.fail(
                index,
                t,
                f"write content must be an int, an array of ints or a bin, not {kind(content)}",
            )
        self.mapped(index, t, "write", pid, addr, length)
        self.footprint.touched(pid, ((addr & self.mask) + length + self.mask) >> self.shift)
        return Write(index, t, pid, addr, length, content)

    def fingerprints(self, index: int, t: int, items: list[Any], pages: int) -> Content:
        if len(items) > MAX_ARRAY_ITEMS:
            self.fail(
                index,
                t,
                f"write content is an array of {len(items)} fingerprints, "
                f"over the limit of {MAX_ARRAY_ITEMS}",
            )
        if len(items) != pages:
            self.fail(
                index,
                t,
                f"write content has {_plural(len(items), 'fingerprint')} for "
                f"{_plural(pages, 'page')}",
            )
        if set(map(type, items)) == _INT_ONLY and min(items) >= 0 and max(items) < INT_LIMIT:
            return np.array(items, dtype=np.uint64)
        for i, item in enumerate(items):
            if type(item) is not int:
                self.fail(index, t, f"write content[{i}] must be an int, not {kind(item)}")
            if item < 0 or item >= INT_LIMIT:
                self.fail(
                    index,
                    t,
                    f"write content[{i}] {_int_text(item)} is not a fingerprint (0..2**64-1)",
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def b64(self, index: int, t: int, content: dict[str, Any], length: int) -> bytes:
        if list(content) != ["b64"]:
            self.fail(index, t, "write content must be an int, an array of ints or a bin, not map")
        text = content["b64"]
        if not isinstance(text, str):
            self.fail(index, t, f"write content b64 must be a str, not {kind(text)}")
        if len(text) > _MAX_B64_CHARS:
            self.fail(
                index,
                t,
                f"write content b64 has {len(text)} characters, more than a bin of "
                f"the limit of {MAX_BIN_BYTES} bytes takes",
            )
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            self.fail(index, t, "write content b64 is not valid base64")
        if len(data) > MAX_BIN_BYTES:
            self.fail(index, t, _bin_over_limit(len(data)))
        if len(data) != length:
            self.fail(index, t, f"write content has {len(data)} bytes for len {length}")
        return data

    def _read(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "read", obj)
        pid, addr, length = self.range_fields(index, t, "read", obj)
        self.mapped(index, t, "read", pid, addr, length)
        self.footprint.touched(pid, ((addr & self.mask) + length + self.mask) >> self.shift)
        return Read(index, t, pid, addr, length)

    def _madvise(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 6:
            self.arity(index, t, "madvise", obj)
        pid, addr, length = self.range_fields(index, t, "madvise", obj)
        advice = obj[5]
        if not isinstance(advice, str) or advice not in ADVICES:
            choices = ", ".join(repr(a) for a in ADVICES)
            self.fail(index, t, f"madvise advice must be one of {choices}, not {advice!r}")
        self.aligned(index, t, "madvise", addr, length)
        self.mapped(index, t, "madvise", pid, addr, length)
        return Madvise(index, t, pid, addr, length, advice)  # type: ignore[arg-type]

    def _prctl(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 5:
            self.arity(index, t, "prctl", obj)
        pid = self.pid_field(index, t, "prctl", "pid", obj[2])
        option, value = obj[3], obj[4]
        if option != "merge_any" or type(option) is not str:
            self.fail(index, t, f"prctl option must be 'merge_any', not {option!r}")
        if type(value) is not bool:
            self.fail(index, t, f"prctl merge_any value must be a bool, not {kind(value)}")
        self.create(pid)
        return Prctl(index, t, pid, option, value)

    def _fork(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 4:
            self.arity(index, t, "fork", obj)
        pid = self.pid_field(index, t, "fork", "pid", obj[2])
        child = self.pid_field(index, t, "fork", "child_pid", obj[3])
        ranges = self.process(index, t, "fork", pid)
        if child in self.procs:
            self.fail(index, t, f"fork of pid {pid}: child pid {child} already exists")
        self.procs[child] = ranges.copy()
        self.exited.discard(child)
        self.created += 1
        self.footprint.fork(pid, child)
        return Fork(index, t, pid, child)

    def _exit(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "exit", obj)
        pid = self.pid_field(index, t, "exit", "pid", obj[2])
        self.process(index, t, "exit", pid)
        del self.procs[pid]
        self.exited.add(pid)
        self.footprint.exit(pid)
        return Exit(index, t, pid)

    def _ksm(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "ksm", obj)
        settings = obj[2]
        if not isinstance(settings, dict):
            self.fail(index, t, f"ksm settings must be a map, not {kind(settings)}")
        problem = check_settings(settings)
        if problem is not None:
            self.fail(index, t, problem)
        typed: dict[str, KnobValue] = settings
        return Ksm(index, t, typed)

    def _settle(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) == 2:
            return Settle(index, t)
        if len(obj) != 3:
            self.arity(index, t, "settle", obj)
        scans = obj[2]
        if type(scans) is not int:
            self.fail(index, t, f"settle max_full_scans must be an int, not {kind(scans)}")
        if scans < 1:
            self.fail(index, t, f"settle max_full_scans must be >= 1, not {_int_text(scans)}")
        if scans >= INT_LIMIT:
            self.fail(
                index, t, f"settle max_full_scans must be below 2**64, not {_int_text(scans)}"
            )
        return Settle(index, t, scans)

    def _snapshot(self, index: int, t: int, obj: list[Any]) -> Event:
        if len(obj) != 3:
            self.arity(index, t, "snapshot", obj)
        label = obj[2]
        if not isinstance(label, str):
            self.fail(index, t, f"snapshot label must be a str, not {kind(label)}")
        problem = _str_problem(label, "snapshot label")
        if problem:
            self.fail(index, t, problem)
        return Snapshot(index, t, label)
