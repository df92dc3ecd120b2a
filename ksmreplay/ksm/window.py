"""A window of ksmd's scan: consecutive page-table runs of one mm handled in
one step, and what the native core's window step returns (:class:`Front`)."""

from __future__ import annotations

from typing import NamedTuple, overload

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import IntArray
from ksmreplay.native import WINDOW_CHUNKS, Entries

__all__ = ["WINDOW_CHUNKS", "Front"]


def _write_back(views: list[Entries], flat: Entries) -> None:
    """Copy a gathered window back into the chunk views it was gathered from."""
    if len(views) == 1:
        views[0][:] = flat
        return
    at = 0
    for v in views:
        v[:] = flat[at : at + len(v)]
        at += len(v)


class Front(NamedTuple):
    """What :meth:`Ksmd._window_front` found in a window (positions index the window).

    Listed are the positions that need more than counting: a page without
    an item, a skipped item in a tree, a stale item (an item where no page is
    any more), and every visit but that of a KSM page linked to its item.  A
    skipped item in an earlier pass's unstable tree is unlinked by the front
    itself (that changes its state and ``pages_unshared`` only), and not listed.
    """

    pos: IntArray
    """Listed positions, ascending."""
    cum: IntArray
    """Visits of the window up to and including each listed position."""
    kind: npt.NDArray[np.uint8]
    """What each listed position is: ``native.LISTED_VISIT``, ``LISTED_SKIPPED``
    or ``LISTED_STALE``."""
    stale: IntArray
    """Positions before :attr:`last` with an item but no page."""
    visits: int
    skipped: int
    last: int
    """The last position handled: the budget's last visit or the last present page."""
    stopped: bool
    """The budget ran out at :attr:`last`."""
    unshared: int
    """Skipped items the front took out of an earlier pass's unstable tree."""
    hits: int
    """Visits not listed: of KSM pages linked to their items."""


class _Pages:
    """The pages of a one-run window's positions: its first page plus the position
    (a window of several runs has an array instead)."""

    __slots__ = ("first",)

    def __init__(self, first: int) -> None:
        self.first = first

    @overload
    def __getitem__(self, pos: int) -> int: ...
    @overload
    def __getitem__(self, pos: IntArray) -> IntArray: ...
    def __getitem__(self, pos: IntArray | int) -> IntArray | int:
        return pos + self.first
