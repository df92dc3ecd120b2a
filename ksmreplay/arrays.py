"""Small numpy helpers shared by the reader and the engine."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DENSE_TABLE_LIMIT = 1 << 22
"""Largest value :func:`dense_ranks` ranks with a lookup table instead of a sort."""


def dense_ranks(values: npt.NDArray[np.int64]) -> tuple[list[int], npt.NDArray[np.int64]]:
    """The distinct ``values`` in increasing order, and each value's rank among them.

    Positive ints below :data:`DENSE_TABLE_LIMIT` (pids, as a rule) are ranked
    with a table, in linear time; others with a sort.
    """
    if len(values) and values.min() >= 0 and values.max() < DENSE_TABLE_LIMIT:
        seen = np.zeros(int(values.max()) + 1, np.bool_)
        seen[values] = True
        distinct = np.flatnonzero(seen)
        rank = np.cumsum(seen) - 1
        return distinct.tolist(), rank[values]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct.tolist(), inverse.astype(np.int64)
