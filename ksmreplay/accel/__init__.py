"""The optional accelerator (``scan.c``, ``fault.c``, ``window.c``,
``visit.c``, ``contentmap.c``), loaded through ctypes.

Large traces are mostly ``write`` events.  The msgpack library builds Python
objects for every number, which caps the reader at a few hundred thousand
events a second: ``scan.c`` decodes the common write shapes straight into
numpy columns instead.  Applying the writes is a page-by-page walk of page
tables and frames: ``fault.c`` does it in one pass where numpy needs a dozen.
ksmd's scan walks every present page of a window, mostly to count it or skip
it: ``window.c`` does that pass (``ksm.Ksmd._window_front``); ``visit.c``
does the common visits and unlinks of what the front lists, in address order
(``ksm.Ksmd._visit_listed``), handing the rare ones back; and
``contentmap.c`` walks the probe sequences of the content hash tables
(``contentmap.ContentMap``).

It is built with the machine's C compiler on first use (``ksmreplay.cbuild``)
and is optional: without a compiler, or with ``KSMREPLAY_ACCEL=0`` in the
environment, the pure-Python reader and the numpy fault path do all the work,
with the same events, messages and reports (the test suite runs both).
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ksmreplay.cbuild import BuildError, build
from ksmreplay.events import WriteRun

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("scan.c", "fault.c", "window.c", "visit.c", "contentmap.c")
]
HEADERS = [Path(__file__).with_name(name) for name in ("item.h", "slot.h")]
CFLAGS = ("-O2", "-shared", "-fPIC", "-Wall")
ENV = "KSMREPLAY_ACCEL"
"""Set to ``0`` to do without the accelerator."""

LISTED_VISIT, LISTED_SKIPPED, LISTED_STALE = 0, 1, 2
"""The kinds of a merged window front's listed positions (:meth:`Accelerator.window`)."""

END, OTHER, FULL = 0, 1, 2
"""Why :meth:`Accelerator.scan` stopped: end of the buffer, another shape, columns full."""

_NO_WRITES = WriteRun(
    0,
    np.empty(0, np.uint64),
    np.empty(0, np.int64),
    np.empty(0, np.uint64),
    np.empty(0, np.uint64),
    np.empty(0, np.bool_),
    np.empty(0, np.int64),
    np.empty(0, np.uint64),
)
"""The empty run :meth:`Accelerator.scan` returns when no write starts the buffer."""

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_u64 = ctypes.c_uint64
_i32 = ctypes.c_int32
_u32 = ctypes.c_uint32


class Accelerator:
    """The compiled functions: ``ksr_scan``, ``ksr_skip``, ``ksr_write_run``,
    ``ksr_window``, ``ksr_visit``, ``ksr_map_find``, ``ksr_map_insert``, and
    the layouts of the records they share with numpy."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.ksr_scan.restype = _i64
        lib.ksr_scan.argtypes = [
            ctypes.c_char_p, _i64, _p, ctypes.c_int, _u64, _u64, _i64, _i64,
            _p, _p, _p, _p, _p, _p, _p, _i64, _p,
        ]  # fmt: skip
        lib.ksr_skip.restype = _i64
        lib.ksr_skip.argtypes = [ctypes.c_char_p, _i64, _i64]
        lib.ksr_write_run.restype = _i64
        lib.ksr_write_run.argtypes = [_i64, *[_p] * 12, _i64, *[_p] * 4]
        self._scan = lib.ksr_scan
        self._skip = lib.ksr_skip
        self._write_run = lib.ksr_write_run
        lib.ksr_window.restype = _i64
        lib.ksr_window.argtypes = [_i64, *[_p] * 5, _i32, _i32, _i64, *[_p] * 5]
        self._window = lib.ksr_window
        lib.ksr_item_layout.restype = None
        lib.ksr_item_layout.argtypes = [_p]
        self._item_layout = lib.ksr_item_layout
        lib.ksr_visit.restype = _i64
        lib.ksr_visit.argtypes = [
            _i64, _i64, *[_p] * 15, _p, _i32, _u32, _p, _i32, _u32,
            _i32, _i32, _i64, _p, _p,
        ]  # fmt: skip
        self._visit = lib.ksr_visit
        lib.ksr_map_find.restype = None
        lib.ksr_map_find.argtypes = [_i64, _p, _i32, _p, _u32, _p]
        lib.ksr_map_insert.restype = None
        lib.ksr_map_insert.argtypes = [_i64, _p, _p, _i32, _p, _u32]
        lib.ksr_slot_layout.restype = None
        lib.ksr_slot_layout.argtypes = [_p]
        self._map_find = lib.ksr_map_find
        self._map_insert = lib.ksr_map_insert
        self._slot_layout = lib.ksr_slot_layout
        self._front_out = _scratch(0)

    def scan(
        self,
        buf: bytes,
        pos: int,
        shift: int,
        max_items: int,
        max_fill_pages: int,
        max_event_bytes: int,
        max_events: int,
        max_fps: int,
    ) -> tuple[WriteRun, int, int]:
        """Write events from ``buf[pos]`` on: ``(run, new pos, status)``.

        A write's fingerprint array may have up to ``max_items`` items, and a
        fingerprint for the whole range is expanded to at most
        ``max_fill_pages`` pages; a write beyond either, or over
        ``max_event_bytes``, is another shape.  The run's events are not
        checked beyond their shape, and its ``index`` is 0: the reader's
        validator checks them and numbers them.
        """
        t = np.empty(max_events, np.uint64)
        pid = np.empty(max_events, np.int64)
        addr = np.empty(max_events, np.uint64)
        length = np.empty(max_events, np.uint64)
        fill = np.empty(max_events, np.uint8)
        fp_end = np.empty(max_events, np.int64)
        fps = np.empty(max_fps, np.uint64)
        where = _i64(pos)
        status = ctypes.c_int32(0)
        n = self._scan(
            buf, len(buf), ctypes.byref(where), shift, max_items, max_fill_pages, max_event_bytes,
            max_events, *_addresses(t, pid, addr, length, fill, fp_end, fps), max_fps,
            ctypes.byref(status),
        )  # fmt: skip
        if not n:
            return _NO_WRITES, where.value, status.value
        used = int(fp_end[n - 1])
        cols = WriteRun(
            0,
            t[:n].copy(),
            pid[:n].copy(),
            addr[:n].copy(),
            length[:n].copy(),
            fill[:n].astype(np.bool_),
            fp_end[:n].copy(),
            fps[:used].copy(),
        )
        return cols, where.value, status.value

    def skip(self, buf: bytes, pos: int) -> int:
        """End offset of the object at ``buf[pos]``; -1 if incomplete, -2 if not msgpack."""
        return int(self._skip(buf, len(buf), pos))

    def write_run(
        self,
        mm: npt.NDArray[np.int32],
        first: npt.NDArray[np.int64],
        count: npt.NDArray[np.int64],
        fps: npt.NDArray[np.uint64],
        dirs: npt.NDArray[np.int64],
        make_chunks: Callable[[int, int], npt.NDArray[np.int64]],
        frames: tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32], npt.NDArray[np.bool_]],
        fresh: npt.NDArray[np.int64],
    ) -> tuple[int, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """One instant's writes in order (``fault.c``): event ``e`` writes
        ``count[e]`` pages of process ``mm[e]`` from page ``first[e]`` on,
        with the fingerprints ``fps`` one after the other.

        ``dirs[p]`` is process ``p``'s ``PageTable.directory()``; where a
        chunk is missing, ``make_chunks(e, j)`` makes at least those of event
        ``e``'s pages from its ``j``-th on and returns the directories again.
        ``frames`` (content, mapcount, ksm) are updated, new frames taken from
        ``fresh`` in order.  Returns ``(fresh rows used, dead frames,
        per-process [rss_anon, ksm_zero_ptes, fault_zero_ptes] changes,
        [cow_breaks_ksm, cow_breaks_zero])``.
        """
        n = len(fps)
        content, mapcount, ksm = frames
        assert len(fresh) >= n and mm.dtype == np.int32
        ptes = np.empty(n, np.int64)
        owner = np.empty(n, np.int32)
        found = np.zeros(3, np.int64)
        dead = np.empty(n, np.int64)
        n_dead = _i64(0)
        stats = np.zeros((len(dirs), 3), np.int64)
        events = np.zeros(2, np.int64)
        head = _addresses(mm, first, count, fps)
        tail = [
            *_addresses(ptes, owner, found), *_columns("u8 i4 b1", content, mapcount, ksm),
            _address(fresh), len(fresh), _address(dead), ctypes.byref(n_dead),
            *_addresses(stats, events),
        ]  # fmt: skip
        missing = None
        while True:
            used = self._write_run(len(mm), *head, _address(dirs), *tail)
            if used != -2:
                break
            assert missing != (found[1], found[2]), "make_chunks did not make the chunk"
            missing = (found[1], found[2])
            dirs = make_chunks(int(found[1]), int(found[2]))
        assert used >= 0
        return int(used), dead[: n_dead.value], stats, events

    def window(
        self,
        ptes: npt.NDArray[np.int64],
        imap: npt.NDArray[np.int64],
        fr_ksm: npt.NDArray[np.bool_],
        fr_node: npt.NDArray[np.int32],
        items: npt.NDArray[np.void],
        smart: bool,
        seqnr: int,
        budget: int,
    ) -> Window | None:
        """The front of a scan window (``window.c``): the fields of ``ksm.Front``, or
        None if no page is present.  ``items`` is ``ItemTable.hot``; their age,
        skips and state are updated.  The stale positions are listed among the
        others in address order, each listed position with its kind:
        :data:`LISTED_VISIT`, :data:`LISTED_SKIPPED` or :data:`LISTED_STALE`."""
        n = len(ptes)
        if len(self._front_out[0]) < n:
            self._front_out = _scratch(n)
        pos, cum, kinds, stale, summary = self._front_out
        self._window(
            n, *_addresses(ptes, imap),
            *_columns("b1 i4 V8", fr_ksm, fr_node, items),
            int(smart), seqnr, budget,
            *_columns("i8 i8 u1 i8 i8", pos, cum, kinds, stale, summary),
        )  # fmt: skip
        listed, visits, skipped, n_stale, last, stopped, unshared = summary.tolist()
        if last < 0:
            return None
        return (
            pos[:listed].copy(),
            cum[:listed].copy(),
            kinds[:listed].copy(),
            stale[:n_stale].copy(),
            visits,
            skipped,
            last,
            bool(stopped),
            unshared,
        )

    def item_layout(self) -> list[int]:
        """``struct item_hot``, then ``struct item_cold`` (``item.h``): each one's
        fields' offsets in order, then its size."""
        out = np.zeros(12, np.int64)
        self._item_layout(*_addresses(out))
        layout: list[int] = out.tolist()
        return layout

    def slot_layout(self) -> list[int]:
        """``struct slot`` (``slot.h``): its fields' offsets in order, then its size."""
        out = np.zeros(4, np.int64)
        self._slot_layout(*_addresses(out))
        layout: list[int] = out.tolist()
        return layout

    def visit(
        self,
        start: int,
        pos: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
        kind: npt.NDArray[np.uint8],
        ptes: npt.NDArray[np.int64],
        frames: tuple[npt.NDArray[np.generic], ...],
        items: tuple[npt.NDArray[np.generic], ...],
        nodes: tuple[npt.NDArray[np.generic], ...],
        stable: MapTable,
        unstable: MapTable,
        seqnr: int,
        use_zero_pages: bool,
        max_page_sharing: int,
    ) -> Visited:
        """Events ``start`` on of a window (``visit.c``) until one it hands back.

        Event ``i`` is a visit (``kind`` 0) or an unlink (1) of item
        ``rows[i]``, a visit of the page at window position ``pos[i]``.
        ``frames`` are the frame columns content, mapcount, ksm, node;
        ``items`` the item records and hlist links (``ItemTable.hot``,
        ``cold``, ``hnext``, ``hprev``); ``nodes`` the node columns size,
        frame, head; the maps are ``ContentMap.table()`` s.  The columns are
        updated in place.
        """
        n = len(pos)
        dead = np.empty(n, np.int64)
        sums = np.zeros(9, np.int64)  # visit.c's SUM_*
        st_slots, st_bits, st_now = stable
        un_slots, un_bits, un_now = unstable
        stop = self._visit(
            n, start, *_addresses(pos, rows, kind, ptes),
            *_columns("u8 i4 b1 i4 V8 V24 i8 i8 i4 i8 i8", *frames, *items, *nodes),
            *_columns("V24", st_slots), st_bits, st_now,
            *_columns("V24", un_slots), un_bits, un_now,
            seqnr, int(use_zero_pages), max_page_sharing,
            *_addresses(dead, sums),
        )  # fmt: skip
        shared, sharing, unshared, merging, merges, zero, inserted, n_dead, ptes = sums.tolist()
        return Visited(
            int(stop),
            shared,
            sharing,
            unshared,
            merging,
            merges,
            zero,
            inserted,
            bool(ptes),
            dead[:n_dead],
        )

    def map_find(
        self,
        keys: npt.NDArray[np.uint64],
        bits: int,
        table: npt.NDArray[np.void],
        now: int,
    ) -> npt.NDArray[np.int64]:
        """``ContentMap.find`` (``contentmap.c``): the value of each key, -1 if absent.
        ``table`` is the map's slots."""
        keys = np.ascontiguousarray(keys, np.uint64)
        out = np.empty(len(keys), np.int64)
        self._map_find(len(keys), _address(keys), bits, *_columns("V24", table), now, _address(out))
        return out

    def map_insert(
        self,
        keys: npt.NDArray[np.uint64],
        values: npt.NDArray[np.int64],
        bits: int,
        table: npt.NDArray[np.void],
        now: int,
    ) -> None:
        """``ContentMap.insert_new`` (``contentmap.c``): keys distinct and absent, room made."""
        keys = np.ascontiguousarray(keys, np.uint64)
        values = np.ascontiguousarray(values, np.int64)
        self._map_insert(len(keys), *_addresses(keys, values), bits, *_columns("V24", table), now)


def _scratch(n: int) -> tuple[npt.NDArray[np.generic], ...]:
    """Room for :meth:`Accelerator.window`'s outputs for ``n`` positions.

    Kept from one window to the next: a window's outputs are the size of its
    page-table entries (a quarter of a MiB each), which fresh arrays would
    take from the kernel and zero on every call; what was found is copied out.
    """
    return (
        np.empty(n, np.int64),
        np.empty(n, np.int64),
        np.empty(n, np.uint8),
        np.empty(n, np.int64),
        np.zeros(7, np.int64),
    )


_export = (ctypes.c_char * 0).from_buffer
"""A ctypes view of a writable C-contiguous buffer (TypeError for any other):
its ``addressof`` is the buffer's address, four times faster than numpy's
``.ctypes.data``, which a window asks for a dozen times."""


def _address(a: npt.NDArray[np.generic]) -> int:
    try:
        return ctypes.addressof(_export(a))  # type: ignore[arg-type]  # ndarray is a buffer
    except TypeError:  # read-only (arrays of the trace's bytes) or not contiguous
        assert a.flags.c_contiguous
        return int(a.ctypes.data)


def _addresses(*arrays: npt.NDArray[np.generic]) -> list[int]:
    """The data addresses of C-contiguous arrays, for the compiled functions."""
    return [_address(a) for a in arrays]


_known: dict[int, tuple[weakref.ref[npt.NDArray[np.generic]], int]] = {}
"""Addresses of long-lived arrays by ``id``, while they live (see :func:`_columns`)."""


def _forget(key: int, _ref: object) -> None:
    _known.pop(key, None)


def _columns(types: str, *arrays: npt.NDArray[np.generic]) -> list[int]:
    """:func:`_addresses` of long-lived arrays (table columns), remembered.

    ``types`` are the arrays' types as C reads them (numpy's ``dtype.str``
    without the byte order: ``u8``, ``i4``, ``b1``, ``V24``...), checked when
    an array is first seen.  A window passes the same two dozen columns to C
    each time; asking numpy for an array's address costs microseconds, a
    dictionary lookup a tenth of one.  An entry goes when its array does.
    """
    out = []
    for a, t in zip(arrays, types.split(), strict=True):
        key = id(a)
        seen = _known.get(key)
        if seen is None or seen[0]() is not a:
            assert a.dtype.str[1:] == t, f"{a.dtype.str} for {t}"
            seen = (weakref.ref(a, partial(_forget, key)), _address(a))
            _known[key] = seen
        out.append(seen[1])
    return out


Window = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint8],
    npt.NDArray[np.int64],
    int,
    int,
    int,
    bool,
    int,
]
"""Listed positions, their visit counts, their kinds;
stale positions; visits, skipped, last position, stopped by the budget,
unlinked from an unstable tree (``ksm.Front``)."""


MapTable = tuple[npt.NDArray[np.void], int, int]
"""A ``ContentMap``'s slots, bits and current generation."""


class Visited(NamedTuple):
    """What :meth:`Accelerator.visit` did."""

    stop: int
    """The event handed back, or the number of events when all were done."""
    shared: int
    """Changes of ``pages_shared``, ``pages_sharing``, ``pages_unshared``, the
    mm's ``merging_pages``; merges; zero pages merged; unstable-tree inserts."""
    sharing: int
    unshared: int
    merging: int
    merges: int
    zero: int
    inserted: int
    ptes_changed: bool
    dead: npt.NDArray[np.int64]
    """Frames whose last mapping went."""


def accelerator() -> Accelerator | None:
    """The accelerator, or None when ``KSMREPLAY_ACCEL=0`` or it cannot be built."""
    if os.environ.get(ENV, "1") == "0":
        return None
    return _load()


def build_accelerator() -> Accelerator | None:
    """Build (or find in the cache) and load the accelerator; None when that fails."""
    try:
        return Accelerator(ctypes.CDLL(str(build(SOURCES, CFLAGS, "accel", HEADERS))))
    except (BuildError, OSError):
        return None


_load = cache(build_accelerator)
