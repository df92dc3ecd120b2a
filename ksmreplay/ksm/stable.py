"""The stable tree: one node per KSM page, a chain of dups for a content
shared beyond ``max_page_sharing``, the nodes' hlists as columns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ksmreplay.arrays import IntArray
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


@dataclass(eq=False, slots=True)
class Chain:
    """A stable node chain: several dups (KSM pages) of one content, head first."""

    content: int
    prune_time: int
    dups: list[StableNode] = field(default_factory=list)
    looked_at: int = 0
    """Times its dups were chosen (when its prune time was read)."""


class NodeColumns:
    """Stable nodes' KSM frames and hlists as columns, indexed by node id.

    A node's hlist is a doubly linked list of its items (``ItemTable.hnext``
    and ``hprev``) from ``head``, ``size`` long (``rmap_hlist_len``); its
    order is never observed.  Columns, so that the native core (``visit.c``)
    links and unlinks items itself.
    """

    __slots__ = ("frame", "head", "size")

    def __init__(self, capacity: int = 1024) -> None:
        self.size = np.zeros(capacity, np.int32)
        self.frame = np.zeros(capacity, np.int64)
        self.head = np.full(capacity, NULL, np.int64)

    def add(self, first: int, frames: IntArray) -> None:
        """Nodes ``first``, ``first + 1``, ... for the KSM pages ``frames``, with empty hlists."""
        end = first + len(frames)
        if end > len(self.size):
            more = max(len(self.size), end - len(self.size))
            self.size = np.concatenate([self.size, np.zeros(more, np.int32)])
            self.frame = np.concatenate([self.frame, np.zeros(more, np.int64)])
            self.head = np.concatenate([self.head, np.full(more, NULL, np.int64)])
        self.frame[first:end] = frames
        self.size[first:end] = 0
        self.head[first:end] = NULL


class StableTree:
    """The stable tree: content -> its plain node or chain.

    A dictionary, with the contents also in a :class:`ContentMap` so that a
    window's contents are looked up at once (:meth:`index`); the map's value
    is a plain node's id, or :data:`CHAIN_ENTRY`.
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
        self._index[content] = entry.id if isinstance(entry, StableNode) else CHAIN_ENTRY
        self._entries[content] = entry

    def __delitem__(self, content: int) -> None:
        del self._entries[content]
        del self._index[content]

    def items(self) -> Iterator[tuple[int, StableNode | Chain]]:
        return iter(list(self._entries.items()))

    def values(self) -> list[StableNode | Chain]:
        return list(self._entries.values())

    def index(self) -> ContentMap:
        """The content -> node id (or :data:`CHAIN_ENTRY`) map."""
        return self._index
