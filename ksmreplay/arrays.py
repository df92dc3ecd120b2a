"""Small numpy helpers shared by the reader and the engine, and the memory budget."""

from __future__ import annotations

import os
import resource
from typing import Any

import numpy as np
import numpy.typing as npt

from ksmreplay.errors import ResourceError, UsageError

IntArray = npt.NDArray[np.int64]
"""The index and page-number arrays of every table (``int64``)."""

DENSE_TABLE_LIMIT = 1 << 22
"""Largest value :func:`dense_ranks` ranks with a lookup table instead of a sort."""


def dense_ranks(values: npt.NDArray[np.int64]) -> tuple[list[int], npt.NDArray[np.int64]]:
    """The distinct ``values`` in increasing order, and each value's rank among them.

    Non-negative ints below :data:`DENSE_TABLE_LIMIT` and not much larger
    than their count (pids, as a rule) are ranked with a table, in linear
    time; others with a sort.  The table never costs more than a few times
    ``values`` itself.
    """
    if len(values):
        top = int(values.max())
        if top < DENSE_TABLE_LIMIT and top <= 4 * len(values) + 4096 and values.min() >= 0:
            seen = np.zeros(top + 1, np.bool_)
            seen[values] = True
            distinct = np.flatnonzero(seen)
            rank = np.cumsum(seen) - 1
            return distinct.tolist(), rank[values]
    found, inverse = np.unique(values, return_inverse=True)
    return found.tolist(), inverse.astype(np.int64).reshape(-1)


def consecutive_runs(values: npt.NDArray[np.integer[Any]]) -> tuple[IntArray, IntArray]:
    """The runs of consecutive values of sorted ``values``, as index bounds.

    ``values[lo[i]:hi[i]]`` is ``values[lo[i]]``, ``values[lo[i]] + 1``, ...
    (a repeated value starts a new run).

    :returns: ``lo`` and ``hi``, ascending (``int64``); empty for no values.
    """
    if not len(values):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = np.concatenate(([0], np.flatnonzero(np.diff(values) != 1) + 1)).astype(np.int64)
    hi = np.append(lo[1:], len(values)).astype(np.int64)
    return lo, hi


ROW_LIMIT = (1 << 31) - 1
"""Most rows a table of the simulator holds: its row numbers are kept as
``int32`` (the free stacks, the content maps' values)."""

GROWTH = 8
"""A table that grows takes a ``1 / GROWTH`` more rows at least (and what it
needs): a table holds at most an eighth more rows than it ever needed."""


def grow_rows(owner: object, name: str, length: int) -> None:
    """Make the array ``owner.name`` ``length`` rows long (more than it has).

    In place where nothing else refers to the array: the allocation is made
    longer (for a large one, its pages are moved, never copied), so that old
    and new rows are never held side by side.  Where something still refers
    to it (a view the caller forgot, a column taken before the growth), a
    longer copy replaces it: the holder keeps the old rows, as it did before
    this helper.  The new rows are zero; the caller fills them.
    """
    shape = (length, *getattr(owner, name).shape[1:])
    try:
        # (the only references are then the attribute and the call's own)
        getattr(owner, name).resize(shape, refcheck=True)
    except ValueError:
        old = getattr(owner, name)
        new = np.zeros((length, *old.shape[1:]), old.dtype)
        new[: len(old)] = old
        setattr(owner, name, new)


def more_rows(have: int, need: int) -> int:
    """How many rows a table of ``have`` rows takes when it needs ``need`` more
    (:data:`GROWTH`); :class:`~ksmreplay.errors.ResourceError` beyond :data:`ROW_LIMIT`."""
    more = max(need, have // GROWTH, 1024)
    if have + need > ROW_LIMIT:
        raise ResourceError(f"a table of the simulator would hold more than {ROW_LIMIT:,} rows")
    return min(more, ROW_LIMIT - have)


MEMORY_ENV = "KSMREPLAY_MEMORY"
"""The environment variable that sets the most memory a replay may take:
bytes, or with a ``K``, ``M``, ``G`` or ``T`` suffix (powers of 1024); ``0``
for no limit.  Unset, a replay may take what the machine has available."""

RESERVE = 256 << 20
"""Memory left to the rest of the machine (bytes): a replay may take what is
available less this."""

CHECK_EVERY = 64 << 20
"""Small allocations are checked together, once this many bytes of them were made."""

_SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """``text`` (``123``, ``64M``, ``1.5G``) in bytes; ValueError if it is not a size."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _SUFFIXES else ""
    number = float(text[: len(text) - len(unit)])
    if not number >= 0 or number == float("inf"):
        raise ValueError(text)
    return int(number * (1 << _SUFFIXES[unit]))


def format_size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.1 KiB``... ``2.0 TiB``."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} PiB"


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _self_memory() -> tuple[int, int]:
    """This process's virtual size and resident set (bytes), 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            size, resident = f.read().split()[:2]
    except (OSError, ValueError):
        return 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size) * page, int(resident) * page


def room() -> int | None:
    """How many more bytes a replay may take now (None: no limit).

    The least of: the machine's available memory (``MemAvailable``) less
    :data:`RESERVE`; the limit of :data:`MEMORY_ENV` less this process's
    resident memory; the address-space limit (``RLIMIT_AS``) less its virtual
    size.  :data:`MEMORY_ENV` set to 0 turns the first two off.
    """
    setting = os.environ.get(MEMORY_ENV, "").strip()
    limit = None
    if setting:
        try:
            limit = parse_size(setting)
        except ValueError:
            raise UsageError(
                f"{MEMORY_ENV}={setting}: not a size (bytes, or with a K, M, G or T suffix)"
            ) from None
    size, resident = _self_memory()
    rooms = []
    if limit is None:
        available = _meminfo("MemAvailable")
        if available is not None:
            rooms.append(available - RESERVE)
    elif limit > 0:
        rooms.append(limit - resident)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and size:
        rooms.append(soft - size)
    return max(min(rooms), 0) if rooms else None


class NoRoom(ResourceError):
    """``what`` needs ``need`` more bytes, and only ``room`` may be taken."""

    def __init__(self, what: str, need: int, room: int) -> None:
        self.what, self.need, self.room = what, need, room
        super().__init__(
            f"{what} needs {format_size(need)} more memory, and only {format_size(room)} "
            f"may be taken ({MEMORY_ENV}=SIZE sets the limit)"
        )


class Budget:
    """Checks the simulator's allocations against :func:`room` before they are made.

    Large allocations are checked one by one; small ones (a process's first
    page-table chunk, say) are counted and checked together once
    :data:`CHECK_EVERY` bytes of them were made, so that many of them cannot
    take the machine's memory either.
    """

    __slots__ = ("_small",)

    def __init__(self) -> None:
        self._small = 0

    def charge(self, nbytes: int, what: str) -> None:
        """About to allocate ``nbytes`` for ``what``: raise :class:`NoRoom` if that
        does not fit."""
        if nbytes < CHECK_EVERY // 16:
            self._small += nbytes
            if self._small < CHECK_EVERY:
                return
            self._small = 0
        self.check(nbytes, what)

    @staticmethod
    def check(nbytes: int, what: str) -> None:
        """:func:`check`."""
        check(nbytes, what)


BUDGET = Budget()
"""The budget of every simulator in this process (they share the machine)."""


def check(nbytes: int, what: str) -> None:
    """Raise :class:`NoRoom` unless ``nbytes`` more fit now."""
    free = room()
    if free is not None and nbytes > free:
        raise NoRoom(what, nbytes, free)


def charge(nbytes: int, what: str) -> None:
    """:meth:`Budget.charge` of :data:`BUDGET`."""
    BUDGET.charge(nbytes, what)


PAGE_ESTIMATE = 120
"""What a replay takes per page resident, mergeable and scanned (bytes; its
frame, PTE, rmap_item and tree entries, as measured: README, "What a replay
costs")."""

PROCESS_ESTIMATE = 15 << 10
"""What a replay takes per live process (bytes, as measured there)."""


def estimate_replay(pages: int, processes: int, modes: int) -> int:
    """The memory a replay is likely to need beyond what it holds at start (bytes).

    Every mode replayed keeps its own state: ``modes`` times ``pages`` pages
    at :data:`PAGE_ESTIMATE` and ``processes`` processes at
    :data:`PROCESS_ESTIMATE`.  Distinct contents and mappings cost more, pages
    never written less: an estimate, not a bound.

    :param pages: the most pages the trace keeps resident at once (pages).
    :param processes: the most processes alive at once.
    :param modes: how many modes are replayed side by side.
    """
    return modes * (pages * PAGE_ESTIMATE + processes * PROCESS_ESTIMATE)
