"""The native core, ``ksmreplay._native``: its records, its constants, its functions.

The core is C (``native/`` in the source tree: ``scan.c``, ``fault.c``,
``window.c``, ``visit.c``, ``contentmap.c``, one header ``ksmreplay.h`` and
the module ``module.c``), built at install by setuptools as an extension
module.  It is the fast half of the work; the scalar Python code is the
other, readable half, and gives the same events, messages and reports:

* the trace reader decodes the common ``write`` events straight into columns
  (``scan``), where the msgpack library builds a Python object per number;
* the fault path applies an instant's page writes in one pass (``write_run``)
  where numpy needs a dozen;
* ksmd's scan takes a window in one step (``step``; ``ksm.Ksmd._scan_window``):
  it makes the window's smart_scan decisions and counts the visits that
  change nothing (``window.c``), makes the items of pages that have none,
  does the common visits in address order, handing the rare ones back to the
  scalar ksmd (``visit.c``; ``ksm.Ksmd._visit_listed``, which goes on with
  ``visit``), and frees the window's stale items; the tables it works on are
  gathered once into a ``Tables`` object (:meth:`Native.tables`);
* the content hash tables look up and insert a column of keys at once
  (``map_find``, ``map_insert``; ``contentmap.ContentMap``);
* ``record`` reads another process's pages and names each one in one call
  per list of runs of pages (``read_pages``; ``record.Recorder``), and a
  buffer of pages is named in one call (``fingerprint_pages``;
  ``content.fingerprint_pages``), where Python makes a hash call per page.
  The hash is the xxhash module's own C function (found in its library,
  checked against its Python API on pages of every length that is tried:
  :func:`hash_address`).

Every record layout and constant the two halves share is defined once, in
``ksmreplay.h``, and read here from the module.  An install without a C
compiler has no module: then the same values come from :data:`_WITHOUT_CORE`
(the tests check they are the module's) and everything runs on the scalar
path, much slower; :func:`engine` says which runs.  ``KSMREPLAY_NATIVE=0``
in the environment does without the core too.
"""

from __future__ import annotations

import ctypes
import operator
import os
from functools import cache
from types import ModuleType, SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

_core: ModuleType | None
try:
    from ksmreplay import _native as _core
except ImportError:  # installed without a C compiler
    _core = None

ENV = "KSMREPLAY_NATIVE"
"""Set to ``0`` in the environment to do without the native core."""

_WITHOUT_CORE = SimpleNamespace(
    PTE_NONE=-1,
    PTE_ZERO=-2,
    PTE_KSM_ZERO=-3,
    CHUNK_SHIFT=9,
    PTE_BYTES=4,
    IROW_BYTES=4,
    STATE_NONE=0,
    STATE_UNSTABLE=1,
    STATE_STABLE=2,
    AGE_MAX=255,
    SEQNR_MASK=0xFF,
    ZERO_PAGE_FLAG=0x400,
    CHAIN_ENTRY=1 << 30,
    SLOT_ABSENT=-1,
    SLOT_DELETED=-2,
    SCAN_END=0,
    SCAN_OTHER=1,
    SCAN_FULL=2,
    LISTED_VISIT=0,
    LISTED_SKIPPED=1,
    LISTED_STALE=2,
    STEP_NONE=0,
    STEP_ALLOC=1,
    STEP_HANDED=2,
    STEP_DONE=3,
    WINDOW_CHUNKS=64,
    WALKED_END=0,
    WALKED_BUDGET=1,
    WALKED_BEFORE=2,
    WALKED_AFTER=3,
    ITEM_HOT={
        "names": ["node", "age", "skips", "state", "seq"],
        "formats": ["<i4", "u1", "u1", "i1", "u1"],
        "offsets": [0, 4, 5, 6, 7],
        "itemsize": 8,
    },
    ITEM_COLD={
        "names": ["checksum", "where"],
        "formats": ["<u8", "<u8"],
        "offsets": [0, 8],
        "itemsize": 16,
    },
    ITEM_PAGE_BITS=44,
    ITEM_SLOT_BITS=18,
    ITEM_SLOT_LIMIT=(1 << 18) - 1,
    ITEM_CHECKED_BIT=62,
    ITEM_ZERO_FLAGGED_BIT=63,
    SLOT={
        "names": ["key", "val", "gen"],
        "formats": ["<u8", "<i4", "<u4"],
        "offsets": [0, 8, 12],
        "itemsize": 16,
    },
    TRACED_ZERO=-1,
    TRACED={
        "names": ["event", "node"],
        "formats": ["<i8", "<i8"],
        "offsets": [0, 8],
        "itemsize": 16,
    },
)
"""``ksmreplay.h``'s values, for an install without the native core only
(the tests check that they are the module's)."""

_h: Any = _core if _core is not None else _WITHOUT_CORE

PTE_NONE: int = _h.PTE_NONE
"""A page-table entry: no page."""
PTE_ZERO: int = _h.PTE_ZERO
"""A page-table entry: the shared zero page, mapped by a read fault (a clean PTE)."""
PTE_KSM_ZERO: int = _h.PTE_KSM_ZERO
"""A page-table entry: the shared zero page, placed by ksmd."""
CHUNK_SHIFT: int = _h.CHUNK_SHIFT
"""log2 of the entries of a page-table chunk."""
PTE_DTYPE = np.dtype(f"<i{_h.PTE_BYTES}")
"""A page-table entry (``pte_t``): a frame row or one of the PTE_* values."""
IROW_DTYPE = np.dtype(f"<i{_h.IROW_BYTES}")
"""An item-map entry (``irow_t``): an item row, or -1 for none."""
Entries = npt.NDArray[np.signedinteger[Any]]
"""Page-table or item-map entries (of :data:`PTE_DTYPE` or :data:`IROW_DTYPE`):
a chunk, a view of one, a window's copy."""

STATE_NONE: int = _h.STATE_NONE
"""An item in no tree (volatile)."""
STATE_UNSTABLE: int = _h.STATE_UNSTABLE
"""An item in the unstable tree."""
STATE_STABLE: int = _h.STATE_STABLE
"""An item linked to a stable node."""
AGE_MAX: int = _h.AGE_MAX
"""smart_scan's age saturates here."""
SEQNR_MASK: int = _h.SEQNR_MASK
"""An item keeps these low bits of the pass that inserted it in the unstable tree."""
ZERO_PAGE_FLAG: int = _h.ZERO_PAGE_FLAG
"""The v6 design's item flag, beside UNSTABLE_FLAG (0x100) and STABLE_FLAG (0x200)."""
CHAIN_ENTRY: int = _h.CHAIN_ENTRY
"""The stable tree's index value for a chain is this plus the chain's id
(a plain node's is its id)."""
SLOT_ABSENT: int = _h.SLOT_ABSENT
"""A content table's answer for a key it does not hold."""
SLOT_DELETED: int = _h.SLOT_DELETED
"""A content table's tombstone."""
SCAN_END: int = _h.SCAN_END
SCAN_OTHER: int = _h.SCAN_OTHER
SCAN_FULL: int = _h.SCAN_FULL
"""Why :meth:`Native.scan` stopped: the end of the buffer, an object of another
shape, the columns full."""
LISTED_VISIT: int = _h.LISTED_VISIT
LISTED_SKIPPED: int = _h.LISTED_SKIPPED
LISTED_STALE: int = _h.LISTED_STALE
"""What a listed position of a window front is (:meth:`Native.window`)."""
STEP_NONE: int = _h.STEP_NONE
STEP_ALLOC: int = _h.STEP_ALLOC
STEP_HANDED: int = _h.STEP_HANDED
STEP_DONE: int = _h.STEP_DONE
"""How :meth:`Native.step` ended: no page present, the front only (too few free
items), a visit handed back, every event done."""
WINDOW_CHUNKS: int = _h.WINDOW_CHUNKS
"""Most page-table chunks one window of ksmd's scan gathers (see ``Ksmd._scan_window``)."""
WALKED_END: int = _h.WALKED_END
WALKED_BUDGET: int = _h.WALKED_BUDGET
WALKED_BEFORE: int = _h.WALKED_BEFORE
WALKED_AFTER: int = _h.WALKED_AFTER
"""How :meth:`Native.walk` ended: the mapping done, the budget used up, before
a window it leaves to Python, after a window's step that needs Python."""

ITEM_HOT = np.dtype(_h.ITEM_HOT)
"""The fields of an rmap item a scan's walk reads at every page: ``struct item_hot``."""
ITEM_COLD = np.dtype(_h.ITEM_COLD)
"""The other fields of an rmap item: ``struct item_cold``, its checksum and
one word (``where``) of its page, mm slot and flags."""
ITEM_PAGE_BITS: int = _h.ITEM_PAGE_BITS
"""An item's page number is below ``2**ITEM_PAGE_BITS`` (the low bits of ``where``)."""
ITEM_SLOT_BITS: int = _h.ITEM_SLOT_BITS
"""The bits of ``where`` above the page: the item's mm slot id plus one (0: free)."""
ITEM_SLOT_LIMIT: int = _h.ITEM_SLOT_LIMIT
"""mm slot ids stay below this."""
ITEM_CHECKED_BIT: int = _h.ITEM_CHECKED_BIT
"""The bit of ``where`` set when the item's checksum was recorded."""
ITEM_ZERO_FLAGGED_BIT: int = _h.ITEM_ZERO_FLAGGED_BIT
"""The bit of ``where`` that is the v6 design's ZERO_PAGE_FLAG."""
SLOT = np.dtype(_h.SLOT)
"""One slot of a content hash table: ``struct slot``."""
TRACED = np.dtype(_h.TRACED)
"""A merge :meth:`Native.visit` made, for the tracepoints: ``struct traced``."""
TRACED_ZERO: int = _h.TRACED_ZERO
"""A traced merge's node when the page was merged with the zero page."""


class Visited(NamedTuple):
    """What :meth:`Native.visit` did."""

    stop: int
    """The event handed back, or the number of events when all were done."""
    shared: int
    """Change of ``pages_shared``."""
    sharing: int
    """Change of ``pages_sharing``."""
    unshared: int
    """Change of ``pages_unshared``."""
    merging: int
    """Change of the mm's ``merging_pages``."""
    merges: int
    """PTEs pointed at a KSM page."""
    zero: int
    """Pages merged with the zero page."""
    inserted: int
    """Entries added to the unstable tree."""
    ptes_changed: bool
    """Some PTE changed."""
    dead: npt.NDArray[np.int64]
    """Frames whose last mapping went."""
    hits: int
    """Visits of a KSM page linked to its item."""
    checksums: int
    """Visits that stopped at a changed checksum."""
    searches: int
    """Visits that searched the unstable tree (and inserted)."""
    traced: npt.NDArray[np.int64]
    """With ``traced``: the merges made, one (event, stable node or
    :data:`TRACED_ZERO`) row each, in order; else empty."""
    dups: int
    """Chain dups looked at."""
    pairs: int
    """Pages merged with an unstable-tree partner into a new KSM page."""
    made: npt.NDArray[np.int64]
    """The stable nodes made, from ``args.next_node`` on: one row each of
    the chain it is a dup of (-1: a plain node) and whether that chain was
    made then (``MADE_*`` of ``ksmreplay.h``)."""
    chains: int
    """Change of ``stable_node_chains``."""
    dups_made: int
    """Change of ``stable_node_dups``."""
    stable_added: int
    """Entries added to the stable tree's table."""
    unstable_deleted: int
    """Entries deleted from the unstable tree's table."""
    unflagged: int
    """The v6 design: flagged items visited with a normal page (flag cleared)."""


_VISIT_SUMS = (
    "SHARED", "SHARING", "UNSHARED", "MERGING", "MERGES", "ZERO", "INSERTED", "PTES",
    "DEAD", "HITS", "CHECKSUMS", "SEARCHES", "TRACED", "DUPS", "PAIRS", "MADE",
    "CHAINS", "DUPS_MADE", "STABLE_ADDED", "UNSTABLE_DELETED", "UNFLAGGED",
)  # fmt: skip
"""The sums of ``ksr_visit`` that :meth:`Native._visited` reads, in its order."""


_WALK_IN = (
    "START", "END", "BUDGET", "VISITS", "PER_CHUNK", "ITEM_PAGE", "FREE", "FRESH", "ROWS",
    "ROOM", "SMART", "DEAD_ROOM",
)  # fmt: skip
"""The ``WALK_*`` inputs of ``ksr_walk`` in :meth:`Native.walk`'s order."""

_WALKED = (
    "START", "VISITS", "PER_CHUNK", "ITEM_PAGE", "FREE", "FRESH", "WINDOW_VISITS", "STEPPED",
    "STOP", "SKIPPED", "UNSHARED", "SCANNED", "HITS", "MADE", "FREED",
)  # fmt: skip
"""The ``WALK_*`` outputs in :class:`Walked`'s order (after ``found``, before ``done``)."""


class Stepped(NamedTuple):
    """What :meth:`Native.step` did (see ``ksm.Front`` for the front's counts)."""

    status: int
    """How it ended: :data:`STEP_NONE`, :data:`STEP_ALLOC`, :data:`STEP_HANDED`
    or :data:`STEP_DONE`."""
    free: int
    """Freed rows left on the items' free stack."""
    fresh: int
    """The first item row never used, after the step."""
    visits: int
    skipped: int
    last: int
    stopped: bool
    unshared: int
    hits: int
    stale: int
    """Stale positions (their items freed unless ``freed`` is 0)."""
    items: int
    """Items made."""
    freed: int
    """Stale items freed."""
    done: Visited | None
    """What the visits did (with :data:`STEP_HANDED` and :data:`STEP_DONE`)."""


class Walked(NamedTuple):
    """What :meth:`Native.walk` did: where it stopped, and what the windows it
    did wholly did, summed (the window it left to Python is not in it)."""

    found: int
    """How it ended: :data:`WALKED_END`, :data:`WALKED_BUDGET`,
    :data:`WALKED_BEFORE` or :data:`WALKED_AFTER`."""
    start: int
    """The first page of the window left to Python (or of the rest of the mapping)."""
    visits: int
    """The batch call's visits so far (before the window left to Python)."""
    per_chunk: int
    """Visits per page-table chunk of the last window done."""
    item_page: int
    """The item cursor after the windows done."""
    free: int
    fresh: int
    """The items' free stack after the windows done (see :meth:`step`)."""
    window_visits: int
    """The visits before the last window stepped (the one left, if any)."""
    stepped: int
    """Windows whose step did something (not :data:`STEP_NONE`)."""
    stop: int
    """With :data:`WALKED_BUDGET`, the page of the last visit."""
    skipped: int
    unshared: int
    scanned: int
    hits: int
    """The fronts' counts (``ksm.Front``: skipped, unshared, visits, hits)."""
    made: int
    """Items made."""
    freed: int
    """Stale items freed."""
    done: Visited
    """What the visits did (``stop`` 0)."""


class Clock(NamedTuple):
    """How :meth:`Native.walk` prices batches and says when the next one
    starts (``timing.batch_cost_ns``, ``timing.next_wake_ns``)."""

    prices: tuple[int, ...]
    """ns per unit of each kind of ``timing.Work``, in its order."""
    t: int
    """Wake-ups before it run (ns)."""
    wake: int
    """The first batch's start (ns)."""
    searched: int
    """The pass's unstable-tree searches before the call."""
    shared_bits: int
    """The bit length of ``pages_shared`` at the pass start."""
    prune_clamp: int
    """Chains and new KSM pages are left to Python from this time on (ns)."""
    timeout: int
    """ksmd's sleep in jiffies, as the timer wheel takes it (0: none)."""
    shift: int
    """The timer wheel level's bucket shift for it."""
    share: int
    """The share of a CPU ksmd gets, percent."""
    jiffy: int
    """ns."""
    since: tuple[int, ...] = ()
    """The first batch's counts so far (``timing.Work``'s fields) when it is one
    in progress that an earlier :meth:`Native.walk` stopped in at the end of
    its mapping (:attr:`Clocked.since`, and the walk starts at its visits);
    empty for a new batch."""


class Clocked(NamedTuple):
    """What the batches of :meth:`Native.walk` with a clock did."""

    batches: int
    """Batches run whole."""
    cpu: int
    """Their CPU time (ns)."""
    cost: int
    """The last one's."""
    last: int
    """The last one's start."""
    wake: int
    """The next one's start; or, if the walk stopped inside one, that one's."""
    work: tuple[int, ...]
    """The whole batches' ``timing.Work``, summed."""
    since: tuple[int, ...]
    """The batch in progress's counts so far (``timing.Work``'s fields)."""


Front = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint8],
    npt.NDArray[np.int64],
    int,
    int,
    int,
    bool,
    int,
    int,
]
"""Listed positions, their visit counts, their kinds; stale positions;
visits, skipped, last position, stopped by the budget, unlinked from an
unstable tree, visits not listed (``ksm.Front``)."""

MapTable = tuple[npt.NDArray[np.void], int, int]
"""A ``ContentMap``'s slots, bits and current generation."""

WriteColumns = tuple[
    npt.NDArray[np.uint64],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.uint64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    npt.NDArray[np.uint64],
]
"""Decoded writes: t, pid, addr, len, whether the content fills the range,
the end of each one's fingerprints, the fingerprints (``events.WriteRun``)."""


HASH_SYMBOLS = ("XXH3_64bits_dispatch", "XXH3_64bits")
"""The C functions of the xxhash module's library that compute ``xxh3_64``, best first
(the first picks the CPU's widest vector instructions at run time)."""


@cache
def hash_address(page_size: int) -> int:
    """The address of a C function ``uint64_t f(const void *, size_t)`` that gives
    ``xxhash.xxh3_64_intdigest`` of ``page_size`` bytes, or 0 when none is found.

    The function is looked up in the library of the xxhash module (one of
    :data:`HASH_SYMBOLS`) and used only if it gives the Python API's values
    for a few pages of ``page_size`` bytes (the native core's fingerprints
    of them are compared with :func:`ksmreplay.vm.content.fingerprint`'s rule).
    """
    core = _built()
    if core is None:
        return 0
    try:
        import xxhash
        from xxhash import _xxhash  # type: ignore[attr-defined]

        library = ctypes.CDLL(_xxhash.__file__)
    except (ImportError, OSError, AttributeError, TypeError):
        return 0
    pages = _probe_pages(page_size)
    want = np.array([xxhash.xxh3_64_intdigest(p) or 1 for p in pages], np.uint64)
    data = b"".join(pages)
    for name in HASH_SYMBOLS:
        try:
            address = ctypes.cast(getattr(library, name), ctypes.c_void_p).value or 0
        except AttributeError:
            continue
        if address:
            got = np.zeros(len(pages), np.uint64)
            core._core.fingerprint_pages(data, page_size, address, got)
            if bool((got == want).all()):
                return address
    return 0


def _probe_pages(page_size: int) -> list[bytes]:
    """A few pages of ``page_size`` bytes that are not one value repeated (the rule
    names those without a hash), different in their first, middle and last bytes."""
    ramp = bytes(range(256)) * (page_size // 256 + 1)
    pages = []
    for k in range(4):
        page = bytearray(ramp[k : k + page_size])
        page[(k * page_size) // 4] ^= 0x5A
        pages.append(bytes(page))
    return pages


class VisitArgs:
    """One ``struct visit_args`` (:attr:`Native.visit_args`) kept from call to
    call: its fields are written in place (:meth:`set`) and the core reads it
    as :attr:`bytes`."""

    __slots__ = ("_at", "bytes")

    def __init__(self, dtype: np.dtype[np.void]) -> None:
        record = np.zeros(1, dtype)
        self.bytes: npt.NDArray[np.uint8] = record.view(np.uint8)
        """The record, as the core takes it."""
        views: dict[int, npt.NDArray[Any]] = {
            8: record.view(np.int64),
            4: record.view(np.int32),
            1: record.view(np.uint8),
        }
        self._at: dict[str, tuple[npt.NDArray[Any], int]] = {}
        for name, field in (dtype.fields or {}).items():
            ftype, offset = field[0], int(field[1])
            size = ftype.itemsize
            self._at[name] = (views[size], offset // size)

    def set(self, name: str, value: int) -> None:
        """Field ``name`` is now ``value``."""
        view, at = self._at[name]
        view[at] = value


class Native:
    """The native core's functions, over numpy arrays (``ksmreplay._native``)."""

    def __init__(self, core: ModuleType) -> None:
        self._core = core
        self._front_out = _scratch(0, core.FRONT_SUMS)
        self.visit_args = np.dtype(core.VISIT_ARGS)
        """:meth:`visit`'s ``args``: ``struct visit_args``."""
        self._made = np.empty((0, core.MADE_FIELDS), np.int64)
        self._rows = np.empty(0, np.int64)
        self._dead = np.empty(0, np.int64)
        self._step_sums = np.zeros(core.STEP_SUMS, np.int64)
        self._walk_state = np.zeros(core.WALK_FIELDS, np.int64)
        self._walk_sums = np.zeros(core.VISIT_SUMS, np.int64)
        """:meth:`walk`'s state and the visit sums of the window it left to Python."""
        self._clock = np.zeros(core.CLOCK_FIELDS, np.int64)
        """:meth:`walk`'s clock, in and out (``CLOCK_*``)."""
        self._walk_out: tuple[npt.NDArray[Any], ...] | None = None
        """:meth:`walk`'s gathered window, its runs, and the frames freed and the
        visit sums of the windows it did."""
        self._summary: list[int] = []
        self._visit_sums = operator.itemgetter(
            *(getattr(core, f"VISIT_{name}") for name in _VISIT_SUMS)
        )
        """The ``VISIT_*`` sums of ``ksr_visit`` in :data:`_VISIT_SUMS` order."""
        self._walk_in = np.array([getattr(core, f"WALK_{name}") for name in _WALK_IN], np.intp)
        self._walked = operator.itemgetter(*(getattr(core, f"WALK_{name}") for name in _WALKED))
        """Where :meth:`walk` writes its inputs in the state (:data:`_WALK_IN`
        order) and reads :class:`Walked`'s fields."""
        self._clock_at = np.array(
            [
                *range(core.CLOCK_PRICES, core.CLOCK_PRICES + core.WORK_FIELDS),
                *(getattr(core, f"CLOCK_{name.upper()}") for name in Clock._fields[1:-1]),
                *range(core.CLOCK_SINCE, core.CLOCK_SINCE + core.WORK_FIELDS),
            ],
            np.intp,
        )
        """Where :meth:`_clock_in` writes a :class:`Clock`'s fields, in order."""

    def fingerprint_pages(self, data: Any, page_size: int, out: npt.NDArray[np.uint64]) -> bool:
        """``out[i]`` = the fingerprint of page ``i`` of ``data`` (a buffer of whole
        pages of ``page_size`` bytes), by the trace format's rule; False (and ``out``
        untouched) when no C hash function was found (:func:`hash_address`)."""
        address = hash_address(page_size)
        if not address:
            return False
        self._core.fingerprint_pages(data, page_size, address, out)
        return True

    def read_pages(
        self,
        pid: int,
        mem: int,
        runs: npt.NDArray[np.uint64],
        page_size: int,
        buffer: bytearray,
        out: npt.NDArray[np.uint64],
    ) -> tuple[int, int]:
        """Read the pages of ``runs`` (rows of first address and pages, bytes and
        pages) of process ``pid`` into ``buffer``, batch after batch, and write the
        fingerprint of each page into ``out``, in order.  With ``mem`` >= 0 the pages
        are read through that file (``/proc/PID/mem``), else by ``process_vm_readv``.
        Needs :func:`hash_address` (the caller checks it).

        :returns: the pages done, and 0 if that is all of them, else the errno of
            the read that stopped (``ESRCH``: the process is gone; ``EPERM`` and
            the like: refused; others: the page after those done cannot be read).
        """
        done, error = self._core.read_pages(
            pid, mem, runs, page_size, buffer, hash_address(page_size), out
        )
        return int(done), int(error)

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
    ) -> tuple[WriteColumns | None, int, int]:
        """Write events from ``buf[pos]`` on: ``(columns or None, new pos, status)``.

        A write's fingerprint array may have up to ``max_items`` items, and a
        fingerprint for the whole range is expanded to at most
        ``max_fill_pages`` pages; a write beyond either, or over
        ``max_event_bytes``, is another shape.  The events are not checked
        beyond their shape: the reader's validator checks and numbers them.
        ``status`` is :data:`SCAN_END`, :data:`SCAN_OTHER` or :data:`SCAN_FULL`.
        """
        t = np.empty(max_events, np.uint64)
        pid = np.empty(max_events, np.int64)
        addr = np.empty(max_events, np.uint64)
        length = np.empty(max_events, np.uint64)
        fill = np.empty(max_events, np.uint8)
        fp_end = np.empty(max_events, np.int64)
        fps = np.empty(max_fps, np.uint64)
        n, where, status = self._core.scan(
            buf, pos, shift, max_items, max_fill_pages, max_event_bytes,
            t, pid, addr, length, fill, fp_end, fps,
        )  # fmt: skip
        if not n:
            return None, where, status
        used = int(fp_end[n - 1])
        columns = (
            t[:n].copy(),
            pid[:n].copy(),
            addr[:n].copy(),
            length[:n].copy(),
            fill[:n].astype(np.bool_),
            fp_end[:n].copy(),
            fps[:used].copy(),
        )
        return columns, where, status

    def skip(self, buf: bytes, pos: int) -> int:
        """End offset of the object at ``buf[pos]``; -1 if incomplete, -2 if not msgpack."""
        end: int = self._core.skip(buf, pos)
        return end

    def write_run(
        self,
        mm: npt.NDArray[np.int32],
        first: npt.NDArray[np.int64],
        count: npt.NDArray[np.int64],
        fps: npt.NDArray[np.uint64],
        dirs: npt.NDArray[np.int64],
        make_chunks: Any,
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
        core = self._core
        n = len(fps)
        content, mapcount, ksm = frames
        assert len(fresh) >= n
        ptes = np.empty(n, np.int64)
        owner = np.empty(n, np.int32)
        found = np.zeros(3, np.int64)
        dead = np.empty(n, np.int64)
        n_dead = np.zeros(1, np.int64)
        stats = np.zeros((len(dirs), core.WRITE_STATS), np.int64)
        events = np.zeros(core.WRITE_EVENTS, np.int64)
        missing = None
        while True:
            used: int = core.write_run(
                mm, first, count, fps, dirs, ptes, owner, found, content, mapcount,
                ksm, fresh, dead, n_dead, stats, events,
            )  # fmt: skip
            if used != core.WRITE_MISSING:
                break
            assert missing != (found[1], found[2]), "make_chunks did not make the chunk"
            missing = (found[1], found[2])
            dirs = make_chunks(int(found[1]), int(found[2]))
        assert used >= 0
        return used, dead[: int(n_dead[0])], stats, events

    def free_walk(
        self, links: npt.NDArray[np.uint64], head: int, out: npt.NDArray[np.int64]
    ) -> int:
        """``out[i]`` = the ``i``-th row of the list linked through ``links`` from
        ``head`` on (``fault.c``: a row's entry holds the next row); returns the
        row after them, meaningless when the list has no more."""
        after: int = self._core.free_walk(links, head, out)
        return after

    def window(
        self,
        ptes: Entries,
        imap: Entries,
        fr_ksm: npt.NDArray[np.bool_],
        fr_node: npt.NDArray[np.int32],
        items: npt.NDArray[np.void],
        cold: npt.NDArray[np.void],
        smart: bool,
        keep_flagged: bool,
        seqnr: int,
        budget: int,
    ) -> Front | None:
        """The front of a scan window (``window.c``): the fields of ``ksm.Front``, or
        None if no page is present.  ``items`` is ``ItemTable.hot``; their age,
        skips and state are updated; ``cold`` is ``ItemTable.cold`` (read for
        ``keep_flagged``, the v6 design: a flagged item at a zero page is kept,
        not stale).  The stale positions are listed among the
        others in address order, each listed position with its kind:
        :data:`LISTED_VISIT`, :data:`LISTED_SKIPPED` or :data:`LISTED_STALE`."""
        n = len(ptes)
        if len(self._front_out[0]) < n:
            self._front_out = _scratch(n, self._core.FRONT_SUMS)
        pos, cum, kinds, stale, summary = self._front_out
        self._core.window(
            ptes, imap, fr_ksm, fr_node, items, cold, int(smart), int(keep_flagged), seqnr,
            budget,
            pos, cum, kinds, stale, summary,
        )  # fmt: skip
        listed, visits, skipped, n_stale, last, stopped, unshared, hits = summary.tolist()
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
            hits,
        )

    def tables(
        self,
        frames: tuple[npt.NDArray[np.generic], ...],
        items: tuple[npt.NDArray[np.generic], ...],
        free_rows: npt.NDArray[np.int32],
        blanks: tuple[npt.NDArray[np.void], npt.NDArray[np.void]],
        nodes: tuple[npt.NDArray[np.generic], ...],
        chains: tuple[npt.NDArray[np.generic], ...],
        stable: MapTable,
        unstable: MapTable,
    ) -> Any:
        """The tables ksmd's scan works on, for :meth:`step` and :meth:`visit`
        (``struct tables``): ``frames`` are the frame columns content,
        mapcount, ksm, node; ``items`` the item records and hlist links
        (``ItemTable.hot``, ``cold``, ``hnext``, ``hprev``), ``free_rows``
        the array of their free stack's freed rows (``int32``) and ``blanks``
        a fresh item's two records;
        ``nodes`` the node columns size, frame, head, dup_next; ``chains`` the
        chain columns head, count, looked, prune (``ksm.ChainColumns``); the
        maps are ``ContentMap.table()`` s.  The object holds the arrays: make
        a new one when one of them is replaced (grows) or a map's bits or
        generation change."""
        st_slots, st_bits, st_now = stable
        un_slots, un_bits, un_now = unstable
        return self._core.Tables(
            *frames, *items, free_rows, *blanks, *nodes, *chains,
            st_slots, st_bits, st_now, un_slots, un_bits, un_now,
        )  # fmt: skip

    def _front_room(self, n: int) -> None:
        """Scratch for a front, its items and the frames freed, for ``n`` positions."""
        if len(self._front_out[0]) < n:
            self._front_out = _scratch(n, self._core.FRONT_SUMS)
        if len(self._rows) < n:
            self._rows = np.empty(n, np.int64)
        if len(self._dead) < n:
            self._dead = np.empty(n, np.int64)

    def step(
        self,
        tables: Any,
        ptes: Entries,
        imap: Entries,
        segs: npt.NDArray[np.int64],
        budget: int,
        smart: bool,
        free: tuple[int, int, int],
        args: npt.NDArray[np.uint8],
        room: int,
        traced: bool = False,
    ) -> Stepped:
        """One step of ksmd's scan over a window (``ksr_step``).

        ``ptes`` and ``imap`` are the window's PTEs and item rows by position
        (``imap`` is updated: items made, stale items cleared), ``segs`` its
        runs of pages as for :meth:`visit`, ``free`` the items' free stack
        (``ItemTable.free_rows``: the freed rows on it, which has room for
        ``len(ptes)`` more, the first row never used and the table's end).  After
        ``STEP_ALLOC`` or ``STEP_HANDED`` the front is :meth:`front` and the
        listed items :meth:`listed_rows` (until the next step).
        """
        core = self._core
        n = len(ptes)
        self._front_room(n)
        pos, cum, kinds, stale, _summary = self._front_out
        merges = np.empty(n, TRACED) if traced else _NOT_TRACED
        sums = np.zeros(core.VISIT_SUMS, np.int64)
        made = self._made_room(room)
        summary = self._step_sums
        n_free, fresh, end = free
        status, left, fresh = core.step(
            tables, ptes, imap, segs, budget, int(smart), n_free, fresh, end,
            pos, cum, kinds, stale, self._rows, summary, args,
            self._dead, merges, made, sums,
        )  # fmt: skip
        return self._stepped(status, left, fresh, sums, merges, traced)

    def _stepped(
        self,
        status: int,
        free: int,
        fresh: int,
        sums: npt.NDArray[np.int64],
        merges: npt.NDArray[np.void],
        traced: bool,
    ) -> Stepped:
        """The step whose summary is in ``_step_sums`` and visits' sums in ``sums``."""
        core = self._core
        found = self._summary = self._step_sums.tolist()
        return Stepped(
            status,
            free,
            fresh,
            found[core.FRONT_VISITS],
            found[core.FRONT_SKIPPED],
            found[core.FRONT_LAST],
            bool(found[core.FRONT_STOPPED]),
            found[core.FRONT_UNSHARED],
            found[core.FRONT_HITS],
            found[core.FRONT_STALE],
            found[core.STEP_ITEMS],
            found[core.STEP_FREED],
            self._visited(found[core.STEP_STOP], sums, merges, traced)
            if status in (core.STEP_HANDED, core.STEP_DONE)
            else None,
        )

    def walk(
        self,
        tables: Any,
        pt: tuple[int, int, int, int],
        im: tuple[int, int, int, int],
        start: int,
        end: int,
        budget: int,
        visits: int,
        per_chunk: int,
        item_page: int,
        smart: bool,
        free: tuple[int, int, int],
        room: int,
        args: npt.NDArray[np.uint8],
        made_room: int,
        clock: Clock | None = None,
    ) -> Walked:
        """A batch call's windows over pages [``start``, ``end``) of one mm
        (``ksr_walk``): each as :meth:`step` does it, until the mapping or the
        budget ends or a window needs Python (:class:`Walked`).

        ``pt`` and ``im`` are ``PageTable.directory()`` of the mm's page table
        and of its item map; ``visits`` of ``budget`` were made before,
        ``per_chunk`` per chunk in the last window; ``item_page`` is the item
        cursor; ``free`` the items' free stack as for :meth:`step` (with room
        for a whole window); ``room`` the unstable-tree entries that fit
        before its table must grow; ``args`` as for :meth:`step` (its
        ``visits`` is set here, window by window).  After
        :data:`WALKED_AFTER`, :meth:`walked_step` is the step of the window
        left (its front :meth:`front`, its items :meth:`listed_rows`).

        With ``clock``, batches of ``budget`` visits one after the other
        (``ksr_batches``), the first from ``visits`` (a batch in progress,
        ``clock.since`` its counts so far, or a new one), each priced and followed
        by the next as ``clock`` says, until the next starts at ``clock.t`` or
        later (:data:`WALKED_BUDGET`) or one stops before its budget (the
        other endings: that batch is in progress); :meth:`clocked` says what
        the batches did.
        """
        core = self._core
        n = core.WINDOW_CHUNKS << core.CHUNK_SHIFT
        self._front_room(n)
        if self._walk_out is None:
            self._walk_out = (
                np.empty(n, PTE_DTYPE),
                np.empty(n, IROW_DTYPE),
                np.empty(3 * core.WINDOW_CHUNKS, np.int64),
                np.empty(WALK_DEAD_ROOM, np.int64),
                np.zeros(core.VISIT_SUMS, np.int64),
            )
        st = self._walk_state
        st[self._walk_in] = (
            start, end, budget, visits, per_chunk, item_page, *free, room, smart, WALK_DEAD_ROOM,
        )  # fmt: skip
        pos, cum, kinds, stale, _summary = self._front_out
        w_ptes, w_imap, w_segs, w_dead, w_sums = self._walk_out
        found, n_dead = core.walk(
            tables, pt, im, st, pos, cum, kinds, stale, self._rows, self._step_sums, args,
            self._dead, _NOT_TRACED, self._made_room(made_room), self._walk_sums,
            w_ptes, w_imap, w_segs, w_dead, w_sums,
            None if clock is None else self._clock_in(clock),
        )  # fmt: skip
        done = self._visited(0, w_sums, _NOT_TRACED, False, w_dead[:n_dead].copy())
        return Walked._make((found, *self._walked(st.tolist()), done))

    def clock(self, work: tuple[int, ...], clock: Clock, start: int) -> tuple[int, int]:
        """What a batch of ``work`` (``timing.Work``'s fields) that started at
        ``start`` costs and when the next one starts, by ``clock``, as
        :meth:`walk` prices its batches (``ksr_batch_cost``, ``ksr_next_wake``)."""
        cost, wake = self._core.clock(np.array(work, np.int64), self._clock_in(clock), start)
        return cost, wake

    def _clock_in(self, clock: Clock) -> npt.NDArray[np.int64]:
        """``clock`` as ``ksr_batches`` takes it (``CLOCK_*``)."""
        out = self._clock
        prices, *fields, since = clock
        out[self._clock_at] = (*prices, *fields, *(since or (0,) * len(prices)))
        return out

    def clocked(self) -> Clocked:
        """What the batches of the last :meth:`walk` with a clock did."""
        core = self._core
        out = self._clock.tolist()
        work, since = core.CLOCK_WORK, core.CLOCK_SINCE
        return Clocked(
            out[core.CLOCK_BATCHES],
            out[core.CLOCK_CPU],
            out[core.CLOCK_COST],
            out[core.CLOCK_LAST],
            out[core.CLOCK_WAKE],
            tuple(out[work : work + core.WORK_FIELDS]),
            tuple(out[since : since + core.WORK_FIELDS]),
        )

    def walked_step(self) -> Stepped:
        """The step of the window :meth:`walk` left to Python after it (:data:`WALKED_AFTER`)."""
        core = self._core
        st = self._walk_state
        return self._stepped(
            int(st[core.WALK_STATUS]),
            int(st[core.WALK_STEP_FREE]),
            int(st[core.WALK_STEP_FRESH]),
            self._walk_sums,
            _NOT_TRACED,
            False,
        )

    def front(self) -> Front:
        """The front of the last :meth:`step`."""
        core, summary = self._core, self._summary
        pos, cum, kinds, stale, _sums = self._front_out
        listed = summary[core.FRONT_LISTED]
        return (
            pos[:listed].copy(),
            cum[:listed].copy(),
            kinds[:listed].copy(),
            stale[: summary[core.FRONT_STALE]].copy(),
            summary[core.FRONT_VISITS],
            summary[core.FRONT_SKIPPED],
            summary[core.FRONT_LAST],
            bool(summary[core.FRONT_STOPPED]),
            summary[core.FRONT_UNSHARED],
            summary[core.FRONT_HITS],
        )

    def listed_rows(self) -> npt.NDArray[np.int64]:
        """The items of the last :meth:`step`'s listed positions (fresh ones
        made, unless it ended with ``STEP_ALLOC``: -1 there)."""
        rows: npt.NDArray[np.int64] = self._rows[: self._summary[self._core.FRONT_LISTED]].copy()
        return rows

    def visit(
        self,
        tables: Any,
        start: int,
        pos: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
        kind: npt.NDArray[np.uint8],
        when: npt.NDArray[np.int64],
        ptes: Entries,
        segs: npt.NDArray[np.int64],
        args: npt.NDArray[np.uint8],
        room: int,
        traced: bool = False,
    ) -> Visited:
        """Events ``start`` on of a window (``visit.c``) until one it hands back.

        Event ``i`` is of item ``rows[i]`` at window position ``pos[i]``: a
        visit (``kind`` :data:`LISTED_VISIT`), the ``when[i]``-th of the
        window, or an unlink of a skipped or a stale item.  ``tables`` are
        :meth:`tables`; ``segs`` the window's runs of
        pages (first page, end page, first position; rows); ``args`` is one
        :attr:`visit_args` record as bytes (knobs, kernel rules, ksmd's
        clock, the ids of the nodes and chains it may make, and ``room``,
        how many).  The tables are updated in place.  With ``traced``, the merges made are
        listed too (``Visited.traced``, for ksmd's tracepoints).
        """
        core = self._core
        n = len(pos)
        if len(self._dead) < n:
            self._dead = np.empty(n, np.int64)
        merges = np.empty(n, TRACED) if traced else _NOT_TRACED
        sums = np.zeros(core.VISIT_SUMS, np.int64)
        made = self._made_room(room)
        stop: int = core.visit(
            tables, start, pos, rows, kind, when, ptes, segs, args,
            self._dead, merges, made, sums,
        )  # fmt: skip
        return self._visited(stop, sums, merges, traced)

    def _made_room(self, room: int) -> npt.NDArray[np.int64]:
        if len(self._made) < room:
            self._made = np.empty((room, self._core.MADE_FIELDS), np.int64)
        return self._made

    def _visited(
        self,
        stop: int,
        sums: npt.NDArray[np.int64],
        merges: npt.NDArray[Any],
        traced: bool,
        dead: npt.NDArray[np.int64] | None = None,
    ) -> Visited:
        """:class:`Visited` from the outputs of ``ksr_visit``."""
        s = sums.tolist()
        (
            shared, sharing, unshared, merging, merges_made, zero, inserted, ptes,
            n_dead, hits, checksums, searches, n_traced, dups, pairs, n_made,
            chains, dups_made, stable_added, unstable_deleted, unflagged,
        ) = self._visit_sums(s)  # fmt: skip
        return Visited(
            stop,
            shared,
            sharing,
            unshared,
            merging,
            merges_made,
            zero,
            inserted,
            bool(ptes),
            dead if dead is not None else self._dead[:n_dead].copy() if n_dead else _NONE_DEAD,
            hits,
            checksums,
            searches,
            merges[:n_traced].view(np.int64).reshape(-1, 2) if traced else _NONE_TRACED,
            dups,
            pairs,
            self._made[:n_made].copy() if n_made else _NONE_MADE,
            chains,
            dups_made,
            stable_added,
            unstable_deleted,
            unflagged,
        )

    def map_find(
        self,
        keys: npt.NDArray[np.uint64],
        bits: int,
        table: npt.NDArray[np.void],
        now: int,
    ) -> npt.NDArray[np.int64]:
        """``ContentMap.find`` (``contentmap.c``): the value of each key,
        :data:`SLOT_ABSENT` if absent.  ``table`` is the map's slots."""
        keys = np.ascontiguousarray(keys, np.uint64)
        out = np.empty(len(keys), np.int64)
        self._core.map_find(keys, bits, table, now, out)
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
        self._core.map_insert(keys, values, bits, table, now)

    def map_grow(self, table: npt.NDArray[np.void], old_bits: int, bits: int, now: int) -> int:
        """A ``ContentMap``'s table grown in place (``contentmap.c``): its first
        ``1 << old_bits`` slots hold the entries of generation ``now``, the rest
        are new (zero); the live entries move to their places in the ``1 << bits``
        slots under generation ``now + 1`` (below 2**32), tombstones go.
        Returns the live entries."""
        live: int = self._core.map_grow(table, old_bits, bits, now)
        return live


WALK_DEAD_ROOM = 1 << 16
"""Frames freed that :meth:`Native.walk` may list before it leaves a window to Python."""

_NOT_TRACED = np.empty(0, TRACED)
"""The ``traced`` argument of ``visit.c`` when not tracing (none: nothing recorded)."""
_NONE_TRACED = np.empty((0, 2), np.int64)
_NONE_MADE = np.empty((0, 2), np.int64)
_NONE_DEAD = np.empty(0, np.int64)
"""``Visited.traced`` when not tracing."""


def _scratch(n: int, sums: int) -> tuple[npt.NDArray[Any], ...]:
    """Room for :meth:`Native.window`'s outputs for ``n`` positions (and its ``sums``).

    Kept from one window to the next: a window's outputs are the size of its
    page-table entries (a quarter of a MiB each), which fresh arrays would
    take from the kernel and zero on every call; what was found is copied out.
    """
    return (
        np.empty(n, np.int64),
        np.empty(n, np.int64),
        np.empty(n, np.uint8),
        np.empty(n, np.int64),
        np.zeros(sums, np.int64),
    )


@cache
def _built() -> Native | None:
    return Native(_core) if _core is not None else None


def disabled() -> bool:
    """Whether ``KSMREPLAY_NATIVE=0`` asks to do without the native core."""
    return os.environ.get(ENV, "1") == "0"


def native() -> Native | None:
    """The native core, or None: not built at install, or :func:`disabled`.

    Read when a reader, a memory, a ksmd or a content map is made, which then
    keeps it (the environment is slow to read, and asked often).
    """
    return None if disabled() else _built()


def engine() -> str:
    """Which engine runs, in words (``ksmreplay --version``)."""
    if _core is None:
        return "scalar (the native core was not built at install: no C compiler?)"
    if disabled():
        return f"scalar ({ENV}=0)"
    return "native core"
