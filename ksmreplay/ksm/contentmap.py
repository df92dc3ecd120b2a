"""A map from page contents (``uint64`` fingerprints) to rows, in numpy columns.

ksmd's trees are looked up by content (``ksm/ksmd.py``).  A window of the scan asks
about a thousand contents at once, and a Python dictionary answers one key at
a time, each a Python integer made from the numpy column first.
:class:`ContentMap` is an open-addressing hash table with linear probing whose
keys and values are numpy columns, so a whole column of contents is looked up
(:meth:`ContentMap.find`) or inserted (:meth:`ContentMap.insert_new`) with a
few numpy operations per probe round; single keys work as with a dictionary.

Emptying the table (the unstable tree at every pass) must not cost a pass over
its columns: each slot carries the generation that filled it, and
:meth:`ContentMap.clear` starts a new generation.  A deleted entry stays as a
tombstone (value :data:`DELETED`) until the next generation or growth, so
probe sequences are never cut.

With the native core, ``contentmap.c`` walks the probe sequences of a column
of keys; the entries are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import grow_rows
from ksmreplay.native import SLOT, SLOT_ABSENT, SLOT_DELETED, native

IntArray = npt.NDArray[np.int64]
Keys = npt.NDArray[np.uint64]

ABSENT = SLOT_ABSENT
"""What :meth:`ContentMap.find` gives for a key not in the map."""
DELETED = SLOT_DELETED
"""The value of a tombstone."""
VALUE_LIMIT = (1 << 31) - 1
"""The largest value (a slot holds it as ``int32``)."""

_MULT = 0x9E3779B97F4A7C15
"""Fibonacci hashing: the top bits of ``key * _MULT`` (mod 2**64) pick the slot."""
_MASK64 = (1 << 64) - 1


class ContentMap:
    """``uint64`` key -> non-negative value below 2**31 (a row, an id: the slot
    holds it in 32 bits); see the module docstring."""

    __slots__ = (
        "_bits", "_gen", "_keys", "_len", "_native", "_now", "_table", "_taken", "_vals",
        "on_grow",
    )  # fmt: skip

    def __init__(self, bits: int = 10) -> None:
        self._bits = bits
        self._native = native()  # (chosen once: the environment is slow to read)
        self._new_table()
        self._now = 1
        """The current generation: a slot is occupied when its ``_gen`` equals it."""
        self._len = 0
        """Live entries."""
        self._taken = 0
        """Occupied slots: live entries and tombstones."""
        self.on_grow: Callable[[], None] | None = None
        """Called before the table is replaced (whoever holds it lets it go,
        so that the old table is gone before the new one is made)."""

    def __len__(self) -> int:
        return self._len

    def _new_table(self) -> None:
        """An empty table of ``1 << _bits`` slots, and its columns (field views)."""
        self._table = np.zeros(1 << self._bits, SLOT)
        self._views()

    def _views(self) -> None:
        """The table's columns (field views)."""
        self._keys: Keys = self._table["key"]
        self._vals: npt.NDArray[np.int32] = self._table["val"]
        self._gen: npt.NDArray[np.uint32] = self._table["gen"]

    # -- hashing -------------------------------------------------------------

    def _slots(self, keys: Keys) -> IntArray:
        shift = np.uint64(64 - self._bits)
        slots: IntArray = ((keys * np.uint64(_MULT)) >> shift).astype(np.int64)
        return slots

    def _slot(self, key: int) -> int:
        return ((key * _MULT) & _MASK64) >> (64 - self._bits)

    # -- single keys -----------------------------------------------------------

    def _probe(self, key: int) -> tuple[int, bool]:
        """The slot of ``key``'s live entry and True, or the free slot ending its
        probe sequence and False."""
        mask = (1 << self._bits) - 1
        s = self._slot(key)
        gen, keys, vals, now = self._gen, self._keys, self._vals, self._now
        while gen[s] == now:
            if keys[s] == key and vals[s] >= 0:
                return s, True
            s = (s + 1) & mask
        return s, False

    def get(self, key: int) -> int | None:
        """The value of ``key``, or None."""
        s, found = self._probe(key)
        return int(self._vals[s]) if found else None

    def __contains__(self, key: int) -> bool:
        return self._probe(key)[1]

    def __setitem__(self, key: int, value: int) -> None:
        assert 0 <= value <= VALUE_LIMIT
        self.reserve(1)
        s, found = self._probe(key)
        if not found:
            self._gen[s], self._keys[s] = self._now, key
            self._len += 1
            self._taken += 1
        self._vals[s] = value

    def __delitem__(self, key: int) -> None:
        s, found = self._probe(key)
        if not found:
            raise KeyError(key)
        self._vals[s] = DELETED
        self._len -= 1

    def clear(self) -> None:
        self._now += 1
        if self._now == 1 << 32:
            self._gen[:] = 0
            self._now = 1
        self._len = self._taken = 0

    def items(self) -> Iterator[tuple[int, int]]:
        """The live entries, in slot order."""
        live = np.flatnonzero((self._gen == self._now) & (self._vals >= 0))
        return zip(self._keys[live].tolist(), self._vals[live].tolist(), strict=True)

    # -- columns ---------------------------------------------------------------

    def find(self, keys: Keys) -> IntArray:
        """The value of each of ``keys``, :data:`ABSENT` where there is none."""
        out = np.full(len(keys), ABSENT, np.int64)
        if self._len == 0 or len(keys) == 0:
            return out
        native = self._native
        if native is not None:
            return native.map_find(keys, self._bits, self._table, self._now)
        mask = (1 << self._bits) - 1
        slots = self._slots(keys)
        todo = np.arange(len(keys))
        while len(todo):
            s = slots[todo]
            occupied = self._gen[s] == self._now
            vals = self._vals[s]
            hit = occupied & (self._keys[s] == keys[todo]) & (vals >= 0)
            out[todo[hit]] = vals[hit]
            more = occupied & ~hit
            todo = todo[more]
            slots[todo] = (s[more] + 1) & mask
        return out

    def insert_new(self, keys: Keys, values: IntArray) -> None:
        """Add entries for ``keys``: distinct, none of them in the map."""
        n = len(keys)
        if n == 0:
            return
        self.reserve(n)
        self._len += n
        self._taken += n
        native = self._native
        if native is not None:
            native.map_insert(keys, values, self._bits, self._table, self._now)
            return
        mask = (1 << self._bits) - 1
        slots = self._slots(keys)
        todo = np.arange(n)
        while len(todo):
            s = slots[todo]
            free = self._gen[s] != self._now
            # One winner per free slot; everyone else probes on.
            won_slot, first = np.unique(s[free], return_index=True)
            winners = todo[free][first]
            self._gen[won_slot] = self._now
            self._keys[won_slot] = keys[winners]
            self._vals[won_slot] = values[winners]
            lost = np.ones(len(todo), np.bool_)
            lost[np.flatnonzero(free)[first]] = False
            todo = todo[lost]
            slots[todo] = (s[lost] + 1) & mask

    def table(self) -> tuple[npt.NDArray[np.void], int, int]:
        """The slots (:data:`SLOT`), bits and current generation, for the
        native core's own lookups and inserts (see :meth:`added`)."""
        return self._table, self._bits, self._now

    def added(self, n: int) -> None:
        """``n`` entries were inserted in :meth:`table` directly."""
        self._len += n
        self._taken += n

    def deleted(self, n: int) -> None:
        """``n`` entries were deleted in :meth:`table` directly (left as tombstones)."""
        self._len -= n

    def room(self) -> int:
        """The entries that may be added before :meth:`reserve` moves the table."""
        return (7 << self._bits) // 8 - self._taken

    def reserve(self, n: int) -> None:
        """Keep at most seven eighths of the slots occupied once ``n`` more are
        added (may move the table: take :meth:`table` after).

        When they would be, the live entries move to a table at most three
        quarters full (never smaller than this one), leaving tombstones
        behind.  Linear probing in 16-byte slots stays fast at seven eighths
        (a miss reads more slots, but in order, four to a cache line, and
        the slots a visit reads are few against those of the items and
        frames it reads), and a table that is a power of two long wastes less
        the fuller it may be: host-4m's unstable tree, at most 1.66 M
        entries, fits 2 M slots (32 MiB) where three quarters took 4 M.

        With the native core the table grows in place (its pages moved, not
        copied) and the entries move within it (``map_grow``): no copy of
        them is held beside the tables.
        """
        if n <= self.room():
            return
        bits = self._bits
        while 4 * (self._len + n) > 3 << bits:
            bits += 1
        if self._native is not None and self._now + 1 < 1 << 32:
            if self.on_grow is not None:
                self.on_grow()
            del self._keys, self._vals, self._gen
            old_bits, self._bits = self._bits, bits
            grow_rows(self, "_table", 1 << bits)
            self._len = self._taken = self._native.map_grow(self._table, old_bits, bits, self._now)
            self._now += 1
            self._views()
            return
        live = np.flatnonzero((self._gen == self._now) & (self._vals >= 0))
        keys, vals = self._keys[live], self._vals[live].astype(np.int64)
        del live
        # (the old table goes before the new one is made: never both)
        if self.on_grow is not None:
            self.on_grow()
        del self._table, self._keys, self._vals, self._gen
        self._bits = bits
        self._new_table()
        self._now = 1
        self._len = self._taken = 0
        self.insert_new(keys, vals)
