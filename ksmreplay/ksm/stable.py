"""The stable tree: one node per KSM page, a chain of dups for a content
shared beyond ``max_page_sharing``, the nodes' hlists as columns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray
from ksmreplay.errors import ResourceError
from ksmreplay.ksm.contentmap import ContentMap
from ksmreplay.native import (
    CHAIN_ENTRY,
)
from ksmreplay.vm import (
    NULL,
)


@dataclass(eq=False, slots=True)
class StableNode:
    """A stable-tree node for one KSM page (a plain node, or a dup of a chain).

    Its hlist of items and its length (``rmap_hlist_len``) are in columns
    (:class:`NodeColumns`, ``ItemTable.hnext``/``hprev``).  ``alive`` turns
    False the moment the KSM page's last mapping goes: the node is then stale
    until something notices.
    """

    id: int
    content: int
    frame: int
    chain: Chain | None = None
    alive: bool = True


class Chain:
    """A stable node chain: several dups (KSM pages) of one content, head first.

    Its dups, the times they were chosen and its last prune time are in
    columns (:class:`ChainColumns`, by :attr:`id`), so that the native core
    (``visit.c``) picks a dup and moves it to the head itself.
    """

    __slots__ = ("_cols", "_prune_time", "content", "id")

    def __init__(self, cols: ChainColumns, chain_id: int, content: int, prune_time: int) -> None:
        self._cols = cols
        self.id = chain_id
        self.content = content
        self._prune_time = 0
        self.prune_time = prune_time

    @property
    def prune_time(self) -> int:
        """When its dups were last pruned (ns; at first, when it was made)."""
        t = int(self._cols.prune[self.id])  # (the native core's prunes write the column)
        return self._prune_time if t == PRUNE_CLAMP else t

    @prune_time.setter
    def prune_time(self, t: int) -> None:
        self._prune_time = t
        # (the native core reads it only while every time is below PRUNE_CLAMP)
        self._cols.prune[self.id] = min(t, PRUNE_CLAMP)

    @property
    def looked_at(self) -> int:
        """Times its dups were chosen (when its prune time was read)."""
        return int(self._cols.looked[self.id])

    @looked_at.setter
    def looked_at(self, n: int) -> None:
        self._cols.looked[self.id] = n

    @property
    def count(self) -> int:
        """How many dups it has."""
        return int(self._cols.count[self.id])

    @property
    def head(self) -> int:
        """The id of its first dup, or ``NULL``."""
        return int(self._cols.head[self.id])

    @property
    def dups(self) -> list[StableNode]:
        """Its dups, head first (a new list)."""
        return self._cols.dups(self.id)

    def walk(self) -> Iterator[StableNode]:
        """Its dups, head first, one at a time (:meth:`ChainColumns.walk`): a walk
        that stops at the first dup with room costs only the dups it looked at."""
        return self._cols.walk(self.id)

    def push(self, node: StableNode) -> None:
        """Make ``node`` its first dup."""
        self._cols.push(self.id, node.id)

    def remove(self, node: StableNode) -> None:
        """Take ``node`` out of its dups."""
        self._cols.remove(self.id, node.id)

    def clear(self) -> None:
        """Take every dup out."""
        self._cols.clear(self.id)


MADE_ROOM = 64
"""Most stable nodes one call of the native core's visits makes (the room
it is given in the node and chain columns and the stable tree's table)."""

PRUNE_CLAMP = 1 << 62
"""A chain's prune time is kept in its column up to this (ns); the native core
does chain lookups only in batches whose times are below it (see
:meth:`Ksmd._visit_args`), where the column is exact."""


def _check_ids(end: int, what: str) -> None:
    """Ids up to ``end`` are about to be given to ``what``: every id must stay
    below :data:`CHAIN_ENTRY`, which the stable tree's values add to a chain's
    id (in a content map's 32-bit slot)."""
    if end > CHAIN_ENTRY:
        raise ResourceError(f"a replay would make more than {CHAIN_ENTRY:,} {what}")


class NodeColumns:
    """Stable nodes' KSM frames and hlists as columns, indexed by node id.

    A node's hlist is a doubly linked list of its items (``ItemTable.hnext``
    and ``hprev``) from ``head``, ``size`` long (``rmap_hlist_len``); its
    order is never observed.  A dup's next dup in its chain is ``dup_next``
    (see :class:`ChainColumns`).  Columns, so that the native core
    (``visit.c``) links and unlinks items itself.
    """

    __slots__ = ("dup_next", "frame", "head", "size")

    def __init__(self, capacity: int = 1024) -> None:
        self.size = np.zeros(capacity, np.int32)
        self.frame = np.zeros(capacity, np.int64)
        self.head = np.full(capacity, NULL, np.int64)
        self.dup_next = np.full(capacity, NULL, np.int64)

    def add(self, first: int, frames: IntArray) -> None:
        """Nodes ``first``, ``first + 1``, ... for the KSM pages ``frames``, with empty hlists."""
        end = first + len(frames)
        _check_ids(end, "stable nodes")
        if end > len(self.size):
            more = max(len(self.size), end - len(self.size))
            self.size = np.concatenate([self.size, np.zeros(more, np.int32)])
            self.frame = np.concatenate([self.frame, np.zeros(more, np.int64)])
            self.head = np.concatenate([self.head, np.full(more, NULL, np.int64)])
            self.dup_next = np.concatenate([self.dup_next, np.full(more, NULL, np.int64)])
        self.frame[first:end] = frames
        self.size[first:end] = 0
        self.head[first:end] = NULL
        self.dup_next[first:end] = NULL

    def reserve(self, end: int) -> None:
        """Room for the nodes up to id ``end`` (the native core makes nodes in place)."""
        _check_ids(end, "stable nodes")
        if end > len(self.size):
            self.add(end - 1, np.zeros(1, np.int64))


class ChainColumns:
    """Stable node chains as columns, indexed by chain id (:class:`Chain`).

    A chain's dups are a singly linked list of nodes from ``head`` through
    ``NodeColumns.dup_next``, ``count`` long, head first (the order
    ``stable_node_dup()`` walks them in); ``looked`` counts the lookups
    that chose a dup, ``prune`` is the last prune time (ns, up to
    :data:`PRUNE_CLAMP`).  Ids are not reused.
    """

    __slots__ = ("_next_id", "_node_cols", "_nodes", "count", "head", "looked", "prune")

    def __init__(
        self, nodes: dict[int, StableNode], node_cols: NodeColumns, capacity: int = 64
    ) -> None:
        self._nodes = nodes
        self._node_cols = node_cols
        self._next_id = 0
        self.head = np.full(capacity, NULL, np.int64)
        self.count = np.zeros(capacity, np.int32)
        self.looked = np.zeros(capacity, np.int64)
        self.prune = np.zeros(capacity, np.int64)

    def new(self, content: int, prune_time: int) -> Chain:
        """A chain of no dups for ``content``, made at ``prune_time`` (ns)."""
        cid = self._next_id
        self.reserve(1)
        self._next_id += 1
        self.head[cid] = NULL
        self.count[cid] = 0
        self.looked[cid] = 0
        return Chain(self, cid, content, prune_time)

    @property
    def next_id(self) -> int:
        """The id the next chain made gets."""
        return self._next_id

    def reserve(self, n: int) -> None:
        """Room for ``n`` more chains (the native core makes chains in place)."""
        _check_ids(self._next_id + n, "stable node chains")
        if self._next_id + n > len(self.head):
            more = max(len(self.head), self._next_id + n - len(self.head))
            self.head = np.concatenate([self.head, np.full(more, NULL, np.int64)])
            self.count = np.concatenate([self.count, np.zeros(more, np.int32)])
            self.looked = np.concatenate([self.looked, np.zeros(more, np.int64)])
            self.prune = np.concatenate([self.prune, np.zeros(more, np.int64)])

    def adopt(self, cid: int, content: int) -> Chain:
        """The :class:`Chain` of chain ``cid``, which the native core made (the next id)."""
        assert cid == self._next_id
        self._next_id += 1
        return Chain(self, cid, content, int(self.prune[cid]))

    def columns(self) -> tuple[IntArray, npt.NDArray[np.int32], IntArray, IntArray]:
        """``head``, ``count``, ``looked``, ``prune`` (for :meth:`Native.visit`)."""
        return self.head, self.count, self.looked, self.prune

    def dups(self, cid: int) -> list[StableNode]:
        """Chain ``cid``'s dups, head first."""
        out: list[StableNode] = []
        nid, nxt = int(self.head[cid]), self._node_cols.dup_next
        for _ in range(int(self.count[cid])):
            out.append(self._nodes[nid])
            nid = int(nxt[nid])
        return out

    def walk(self, cid: int) -> Iterator[StableNode]:
        """Chain ``cid``'s dups, head first, as a walk takes them: each dup's
        successor is read before the dup is handed out, so that the walker may
        take that dup out of the chain (a stale dup) and go on."""
        nid, nxt, nodes = int(self.head[cid]), self._node_cols.dup_next, self._nodes
        for _ in range(int(self.count[cid])):
            node = nodes[nid]
            nid = int(nxt[nid])
            yield node

    def push(self, cid: int, nid: int) -> None:
        """Make node ``nid`` chain ``cid``'s first dup."""
        self._node_cols.dup_next[nid] = self.head[cid]
        self.head[cid] = nid
        self.count[cid] += 1

    def remove(self, cid: int, nid: int) -> None:
        """Take node ``nid`` out of chain ``cid``'s dups."""
        nxt = self._node_cols.dup_next
        at = int(self.head[cid])
        if at == nid:
            self.head[cid] = nxt[nid]
        else:
            while int(nxt[at]) != nid:
                at = int(nxt[at])
            nxt[at] = nxt[nid]
        nxt[nid] = NULL
        self.count[cid] -= 1

    def clear(self, cid: int) -> None:
        """Take every dup out of chain ``cid``."""
        for node in self.dups(cid):
            self._node_cols.dup_next[node.id] = NULL
        self.head[cid] = NULL
        self.count[cid] = 0


class StableTree:
    """The stable tree: content -> its plain node or chain.

    A dictionary, with the contents also in a :class:`ContentMap` so that a
    window's contents are looked up at once (:meth:`index`); the map's value
    is a plain node's id, or :data:`CHAIN_ENTRY` plus a chain's id.
    """

    __slots__ = ("_entries", "_index")

    def __init__(self) -> None:
        self._entries: dict[int, StableNode | Chain] = {}
        self._index = ContentMap()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, content: int) -> StableNode | Chain | None:
        return self._entries.get(content)

    def __getitem__(self, content: int) -> StableNode | Chain:
        return self._entries[content]

    def __setitem__(self, content: int, entry: StableNode | Chain) -> None:
        self._index[content] = entry.id if isinstance(entry, StableNode) else CHAIN_ENTRY + entry.id
        self._entries[content] = entry

    def __delitem__(self, content: int) -> None:
        del self._entries[content]
        del self._index[content]

    def file(self, content: int, entry: StableNode | Chain) -> None:
        """File ``entry`` under ``content`` where the native core already set the index."""
        self._entries[content] = entry

    def items(self) -> Iterator[tuple[int, StableNode | Chain]]:
        return iter(list(self._entries.items()))

    def values(self) -> list[StableNode | Chain]:
        return list(self._entries.values())

    def index(self) -> ContentMap:
        """The content -> node id (or :data:`CHAIN_ENTRY` + chain id) map."""
        return self._index
