"""Why pages are not merged: every resident page in one category (``run --explain``).

The simulator knows every page's content and ksmd's item for it, so at a
snapshot it can say, page by page, what KSM did with the page or what stands
in the way.  :func:`explain` puts every page counted in the summary's
``resident_without_ksm`` (each PTE mapping an anonymous frame in a live
process, and each PTE that KSM pointed at the zero page) in exactly one of
:data:`CATEGORIES`, the first whose rule holds, in this order:

1. ``merged``: the PTE maps a KSM page.
2. ``ksm_zero_page``: the PTE maps the zero page, placed there by KSM.
3. ``not_mergeable``: the page is in a mapping that is not mergeable.
4. ``unique_content``: no other frame mapped in a mergeable mapping holds the
   page's content (a zero-filled page with ``use_zero_pages=1`` always has a
   twin: the zero page), and the frame is mapped once.
5. ``shared_after_fork``: the same, but the frame is mapped more than once:
   pages shared copy-on-write since a fork are one page already.

Every other page has a *twin* (another frame in a mergeable mapping with the
same content, or zero content with ``use_zero_pages=1``) and is not merged;
the rest of the order names what keeps it apart, root cause first:

6. ``not_yet_visited``: ksmd has no item for it (it never reached the page).
7. ``changed_since_visit``: the checksum ksmd recorded at its last visit is
   not the page's content now (or none was recorded: its last visit found a
   KSM page there).
8. ``max_page_sharing``: its only twins are KSM pages, each already shared
   by ``max_page_sharing`` items: no KSM page takes one more, and no
   private twin is left to make a new one with.
9. ``in_unstable_tree``: its item is in the unstable tree (what
   ``pages_unshared`` counts), waiting for a twin to find it.
10. ``skipped_by_smart_scan``: smart_scan is on and the item has skips left:
    ksmd's next walk passes it by.
11. ``awaiting_next_visit``: its content has not changed since ksmd's last
    visit; the next visit looks for a twin in the trees.

Everything is computed from the state at the snapshot (frames, page tables,
items, stable nodes, knobs), with numpy over all pages at once; nothing is
recorded during the replay, so a run without ``--explain`` pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ksmreplay.arrays import check
from ksmreplay.native import PTE_KSM_ZERO, STATE_UNSTABLE
from ksmreplay.report import Explain

if TYPE_CHECKING:
    from ksmreplay.ksm import Ksmd

CATEGORIES: tuple[str, ...] = (
    "merged",
    "ksm_zero_page",
    "not_mergeable",
    "unique_content",
    "shared_after_fork",
    "not_yet_visited",
    "changed_since_visit",
    "max_page_sharing",
    "in_unstable_tree",
    "skipped_by_smart_scan",
    "awaiting_next_visit",
)
"""Every category, in report order (which is also the order of precedence)."""

TWIN_NOT_MERGED: tuple[str, ...] = CATEGORIES[5:]
"""The categories of pages that have a twin but are not merged."""

(
    _MERGED,
    _KSM_ZERO,
    _NOT_MERGEABLE,
    _UNIQUE,
    _FORK,
    _NOT_VISITED,
    _CHANGED,
    _MAX_SHARING,
    _UNSTABLE,
    _SKIPPED,
    _AWAITING,
) = range(len(CATEGORIES))

IntArray = npt.NDArray[np.int64]

BYTES_PER_PAGE = 96
"""The most :func:`explain` holds at once per page-table entry it reads (bytes)."""

CHECK_FROM = 64 << 20
"""An explanation is checked against the memory budget from this many bytes on
(as the engine checks large events)."""


def explain(ksmd: Ksmd, page_size: int) -> Explain:
    """Every page counted in ``resident_without_ksm`` in one of :data:`CATEGORIES`.

    :param ksmd: the mode's ksmd, with its memory (``ksmd.mem``) and knobs.
    :param page_size: bytes per page (mapping addresses are in bytes).
    :returns: pages per category for the system, for each live process (by
        pid; each sums to its ``rss_anon_pages`` plus its PTEs KSM pointed at
        the zero page) and for each mapping (VMA) holding such a page (by pid,
        then address; ``start`` and ``end`` in bytes).
    """
    mem = ksmd.mem
    live = [mem.mms[pid] for pid in sorted(mem.mms)]
    ptes: list[IntArray] = []
    rows: list[IntArray] = []
    seg_map: list[int] = []
    maps: list[tuple[int, int, int, bool]] = []  # (process, start page, end page, mergeable)
    for p, mm in enumerate(live):
        slot = ksmd.slot_of.get(id(mm))
        for vma in mm.vmas:
            m = len(maps)
            maps.append((p, vma.start, vma.end, vma.mergeable))
            for lo, hi, view in mm.pt.segments(vma.start, vma.end):
                ptes.append(view)
                seg_map.append(m)
                found = None
                if slot is not None:
                    found = next(slot.items.segments(lo, hi), None)
                if found is not None and found[0] == lo and found[1] == hi:
                    rows.append(found[2])
                else:
                    rows.append(np.full(hi - lo, -1, np.int64))
    n_cat = len(CATEGORIES)
    if ptes:
        lengths = np.array([len(v) for v in ptes], np.int64)
        need = int(lengths.sum()) * BYTES_PER_PAGE
        if need >= CHECK_FROM:
            check(need, "--explain (its columns of every page)")
        pte = np.concatenate(ptes)
        row = np.concatenate(rows)
        mapping = np.repeat(np.array(seg_map, np.int64), lengths)
        counted = (pte >= 0) | (pte == PTE_KSM_ZERO)
        pte, row, mapping = pte[counted], row[counted], mapping[counted]
        mergeable = np.array([m[3] for m in maps], np.bool_)[mapping]
        cat = _classify(ksmd, pte, row, mergeable)
        per_map = np.bincount(mapping * n_cat + cat, minlength=len(maps) * n_cat)
        per_map = per_map.reshape(len(maps), n_cat)
    else:
        per_map = np.zeros((len(maps), n_cat), np.int64)
    owner = np.array([m[0] for m in maps], np.int64)
    per_proc = np.zeros((len(live), n_cat), np.int64)
    if len(maps):
        np.add.at(per_proc, owner, per_map)
    system = per_proc.sum(axis=0)
    return {
        "system": _named(system),
        "processes": [
            {"pid": mm.pid, "categories": _named(per_proc[p])} for p, mm in enumerate(live)
        ],
        "mappings": [
            {
                "pid": live[p].pid,
                "start": start * page_size,
                "end": end * page_size,
                "categories": _named(per_map[m]),
            }
            for m, (p, start, end, _mergeable) in enumerate(maps)
            if per_map[m].any()
        ],
    }


def _named(counts: IntArray) -> dict[str, int]:
    return dict(zip(CATEGORIES, counts.tolist(), strict=True))


def _classify(
    ksmd: Ksmd, pte: IntArray, row: IntArray, mergeable: npt.NDArray[np.bool_]
) -> IntArray:
    """The category number of each counted page: its PTE, its item row (-1:
    none) and whether its mapping is mergeable."""
    it, fr, cols = ksmd.items, ksmd.mem.frames, ksmd.node_cols
    use_zero = bool(ksmd.knobs.use_zero_pages)
    smart = bool(ksmd.knobs.smart_scan)
    maxps = ksmd.knobs.max_page_sharing

    cat = np.full(len(pte), _AWAITING, np.int64)
    present = pte >= 0
    frame = np.where(present, pte, 0)
    ksm = present & fr.ksm[frame]
    cat[~present] = _KSM_ZERO
    cat[ksm] = _MERGED
    cat[present & ~ksm & ~mergeable] = _NOT_MERGEABLE
    cand = np.flatnonzero(present & ~ksm & mergeable)
    if len(cand) == 0:
        return cat

    # The frames mapped in mergeable mappings, by content: how many private
    # ones, and how many KSM pages with room for one more item, or full.
    seen = np.zeros(fr.capacity, np.bool_)
    seen[frame[present & mergeable]] = True
    frames = np.flatnonzero(seen)
    is_ksm = fr.ksm[frames]
    node = fr.node[frames].astype(np.int64)
    size = np.where(is_ksm & (node >= 0), cols.size[np.maximum(node, 0)], 0)
    contents, inverse = np.unique(fr.content[frames], return_inverse=True)
    n = len(contents)
    private = np.bincount(inverse, weights=~is_ksm, minlength=n)
    shared = np.bincount(inverse, weights=is_ksm, minlength=n)
    room = np.bincount(inverse, weights=is_ksm & (size > 0) & (size < maxps), minlength=n)
    full = np.bincount(inverse, weights=is_ksm & (size >= maxps), minlength=n)

    f = frame[cand]
    content = fr.content[f]
    group = np.empty(fr.capacity, np.int64)
    group[frames] = inverse
    k = group[f]
    zero_twin = (content == 0) if use_zero else np.zeros(len(cand), np.bool_)
    twin = (private[k] + shared[k] >= 2) | zero_twin
    cat[cand] = np.where(fr.mapcount[f] > 1, _FORK, _UNIQUE)

    # Pages with a twin: what keeps them apart, from ksmd's item.
    at = np.flatnonzero(twin)
    cand, content, k, zero_twin = cand[at], content[at], k[at], zero_twin[at]
    r = row[cand]
    has = r >= 0
    r = np.maximum(r, 0)
    changed = has & (~it.checked(r) | (it.checksum[r] != content))
    held = (private[k] == 1) & (room[k] == 0) & (full[k] > 0) & ~zero_twin
    unstable = has & (it.state[r] == STATE_UNSTABLE)
    skipped = has & (it.skips[r] > 0) if smart else np.zeros(len(cand), np.bool_)
    cat[cand] = np.select(
        [~has, changed, held, unstable, skipped],
        [_NOT_VISITED, _CHANGED, _MAX_SHARING, _UNSTABLE, _SKIPPED],
        _AWAITING,
    )
    return cat
