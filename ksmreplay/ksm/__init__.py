"""KSM: ksmd and the KSM core around it, as Linux's ``mm/ksm.c`` has them.

Modules:

* :mod:`~ksmreplay.ksm.ksmd`: ksmd (:class:`Ksmd`): the mm list and cursor,
  the walk of an mm, ``cmp_and_merge_page()``, unmerging, smart_scan's
  decision and the scan-time advisor's step, idle states;
* :mod:`~ksmreplay.ksm.items`: the rmap_items as columns and the mm slots;
* :mod:`~ksmreplay.ksm.stable`: the stable tree, its nodes and chains;
* :mod:`~ksmreplay.ksm.contentmap`: the hash table of the unstable tree (and
  of the stable tree's index);
* :mod:`~ksmreplay.ksm.window`: a window of the scan, as the native core
  hands it back;
* :mod:`~ksmreplay.ksm.counters`: ksmd's global counters;
* :mod:`~ksmreplay.ksm.advisor`: the scan-time advisor's state;
* :mod:`~ksmreplay.ksm.v6`: the v6 design's flagged items;
* :mod:`~ksmreplay.ksm.modes`: the simulated KSM designs;
* :mod:`~ksmreplay.ksm.kernels`: the kernel versions and what each lacks;
* :mod:`~ksmreplay.ksm.knobs`: the sysfs knobs, each declared once.
"""

from ksmreplay.ksm.advisor import Advisor
from ksmreplay.ksm.counters import Counters
from ksmreplay.ksm.items import NONE, STABLE, UNSTABLE, ItemTable, Slot
from ksmreplay.ksm.ksmd import END, KEEP_BYTES, IdleState, Ksmd
from ksmreplay.ksm.stable import Chain, NodeColumns, StableNode, StableTree
from ksmreplay.ksm.v6 import WalkResult
from ksmreplay.ksm.window import WINDOW_CHUNKS, Front

__all__ = [
    "END",
    "KEEP_BYTES",
    "NONE",
    "STABLE",
    "UNSTABLE",
    "WINDOW_CHUNKS",
    "Advisor",
    "Chain",
    "Counters",
    "Front",
    "IdleState",
    "ItemTable",
    "Ksmd",
    "NodeColumns",
    "Slot",
    "StableNode",
    "StableTree",
    "WalkResult",
]
