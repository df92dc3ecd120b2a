"""ksmd's global counters: the figures of ``/sys/kernel/mm/ksm`` and the kinds
of visit ksmd's CPU model counts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """ksmd's global counters (``ksm_pages_shared`` etc.)."""

    pages_shared: int = 0
    pages_sharing: int = 0
    pages_unshared: int = 0
    rmap_items: int = 0
    stable_node_chains: int = 0
    stable_node_dups: int = 0
    zero_pages_sharing: int = 0
    pages_scanned: int = 0
    pages_skipped: int = 0
    # The kinds of visit (ksmd's CPU model, timing.Work): each visit counted in
    # pages_scanned is one of hits, checksums, searches, merges, zero_merges.
    hits: int = 0
    """Visits of a KSM page (linked to its item, or reached through fork)."""
    checksums: int = 0
    """Visits that stopped at a changed checksum."""
    searches: int = 0
    """Visits that searched the unstable tree (inserted, aborted or paired)."""
    pairs: int = 0
    """Of the searches, those that made a new KSM page with a partner."""
    merges: int = 0
    """Visits merged into an existing KSM page."""
    zero_merges: int = 0
    """Visits that mapped the zero page (use_zero_pages)."""
    dups: int = 0
    """Dups of stable node chains looked at."""
    passes: int = 0
    """Passes ended (``full_scans``, but not reset by run=2)."""
