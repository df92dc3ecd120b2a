"""The report: one dict built once, in the shape of REPORT_FORMAT.md.

Renderers (``render.py``) only format it; simulators fill the snapshot parts.
Key order here is the order every format prints.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

REPORT_VERSION = 1

ModeName = Literal["legacy", "v6", "unshare"]

KSM_COUNTERS: tuple[str, ...] = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_scanned",
    "pages_skipped",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
    "general_profit",
)
"""``/sys/kernel/mm/ksm/*`` counters, in report order (``ksm`` section)."""

PROCESS_COUNTERS: tuple[str, ...] = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_merge_any",
    "ksm_mergeable",
    "rss_anon_pages",
)
"""``/proc/<pid>/ksm_stat`` fields plus RssAnon in pages (``processes`` entries)."""

MEMORY_COUNTERS: tuple[str, ...] = (
    "anon_frames",
    "ksm_frames",
    "zero_page_maps_by_ksm",
    "zero_page_maps_by_fault",
)
"""Ground truth the kernel's counters may hide (``memory`` section)."""

EVENT_COUNTERS: tuple[str, ...] = (
    "merges",
    "cow_breaks_ksm",
    "cow_breaks_zero",
    "unshared_by_unmerge",
    "zero_pages_unshared",
    "zero_pages_merged",
)
"""Cumulative counts since the trace started (``events`` section).

* ``merges``: pages ksmd mapped to a KSM page (2 for a pair merge, 1 for a
  merge into an existing KSM page; linking a forked mapping is not a merge);
* ``cow_breaks_ksm``: write faults that copied a KSM page;
* ``cow_breaks_zero``: write faults that copied a zero page KSM had placed;
* ``unshared_by_unmerge``: KSM-page mappings that unmerging replaced by private copies;
* ``zero_pages_unshared``: KSM-placed zero pages that unmerging replaced by private pages;
* ``zero_pages_merged``: pages ksmd replaced by the zero page.
"""


class KsmCounters(TypedDict):
    pages_shared: int
    pages_sharing: int
    pages_unshared: int
    pages_volatile: int
    pages_scanned: int
    pages_skipped: int
    full_scans: int
    stable_node_chains: int
    stable_node_dups: int
    ksm_zero_pages: int | None
    general_profit: int | None


class ProcessCounters(TypedDict):
    pid: int
    ksm_rmap_items: int
    ksm_zero_pages: int | None
    ksm_merging_pages: int
    ksm_process_profit: int | None
    ksm_merge_any: bool
    ksm_mergeable: bool
    rss_anon_pages: int


class MemoryCounters(TypedDict):
    anon_frames: int
    ksm_frames: int | None  # None: exec on a kernel whose page flags cannot tell KSM pages
    zero_page_maps_by_ksm: int
    zero_page_maps_by_fault: int


class EventCounters(TypedDict):
    merges: int
    cow_breaks_ksm: int
    cow_breaks_zero: int
    unshared_by_unmerge: int
    zero_pages_unshared: int
    zero_pages_merged: int


class Snap(TypedDict):
    label: str
    t: int
    event: int
    ksm: dict[str, Any]
    processes: list[dict[str, Any]]
    memory: dict[str, int]
    events: dict[str, int]


class Refusal(TypedDict):
    event: int
    t: int
    knob: str
    value: Any
    error: Literal["EBUSY", "EINVAL"]


class Run(TypedDict):
    mode: str
    settings: dict[str, Any]
    refused: list[Refusal]
    snapshots: list[Snap]
    final: Snap


class TraceInfo(TypedDict):
    path: str
    events: int
    duration_ns: int
    page_size: int
    meta: dict[str, Any]


class Report(TypedDict):
    report: int
    trace: TraceInfo
    runs: list[Run]
