"""Small hand-made reports for the renderer and diff tests.

Numbers are made up but consistent in shape with REPORT_FORMAT.md: two modes
that differ only where zero pages placed by KSM are counted.
"""

from __future__ import annotations

import copy
from typing import Any

from ksmreplay.report import Report, summarise


def _snap(
    label: str, t: int, event: int, zero: int | None, profit: int, rss2: int, unmerged: int
) -> dict[str, Any]:
    return {
        "label": label,
        "t": t,
        "event": event,
        # rss of pids 2 and 1 plus the zero-page maps by KSM; the frames of memory
        "summary": summarise(rss2 + 4 + 2, 5, 4, 4096),
        "ksm": {
            "pages_shared": 1,
            "pages_sharing": 3,
            "pages_unshared": 0,
            "pages_volatile": 2,
            "pages_scanned": 120,
            "pages_skipped": 4,
            "full_scans": 6,
            "stable_node_chains": 0,
            "stable_node_dups": 0,
            "ksm_zero_pages": zero,
            "general_profit": profit,
        },
        "processes": [
            {
                "pid": 2,
                "ksm_rmap_items": 3,
                "ksm_zero_pages": None if zero is None else 0,
                "ksm_merging_pages": 2,
                "ksm_process_profit": 8000,
                "ksm_merge_any": True,
                "ksm_mergeable": True,
                "rss_anon_pages": rss2,
            },
            {
                "pid": 1,
                "ksm_rmap_items": 3,
                "ksm_zero_pages": zero,
                "ksm_merging_pages": 2,
                "ksm_process_profit": 8000 if zero is None else 8000 + 4096 * zero,
                "ksm_merge_any": False,
                "ksm_mergeable": True,
                "rss_anon_pages": 4,
            },
        ],
        "memory": {
            "anon_frames": 5,
            "ksm_frames": 1,
            "zero_page_maps_by_ksm": 2,
            "zero_page_maps_by_fault": 0,
        },
        "events": {
            "merges": 4,
            "cow_breaks_ksm": 0,
            "cow_breaks_zero": 0,
            "unshared_by_unmerge": 0,
            "zero_pages_unshared": unmerged,
            "zero_pages_merged": 2,
        },
    }


SETTINGS: dict[str, Any] = {
    "run": 1,
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "use_zero_pages": 1,
    "max_page_sharing": 256,
    "smart_scan": 1,
    "merge_across_nodes": 1,
    "stable_node_chains_prune_millisecs": 2000,
    "advisor_mode": "none",
    "advisor_max_cpu": 70,
    "advisor_min_pages_to_scan": 500,
    "advisor_max_pages_to_scan": 30000,
    "advisor_target_scan_time": 200,
}


KSMD: dict[str, Any] = {
    "visits": 120,
    "wakeups": 6,
    "cpu_ns": 30_000_000,
    "cpu_percent": 2.0,  # of the trace's 1.5 s
    "settle_cpu_ns": 18_000,
}


def two_mode_report() -> Report:
    """legacy and unshare over one trace with one snapshot, one refused write."""
    refused = [{"event": 5, "t": 2000, "knob": "max_page_sharing", "value": 2, "error": "EBUSY"}]
    report: dict[str, Any] = {
        "report": 1,
        "trace": {
            "path": "demo.msgpack",
            "events": 12,
            "duration_ns": 1500000000,
            "page_size": 4096,
            "meta": {"purpose": "test"},
        },
        "runs": [
            {
                "mode": "legacy",
                "settings": dict(SETTINGS),
                "refused": copy.deepcopy(refused),
                "ksmd": copy.deepcopy(KSMD),
                "milestones": {"max_saved_pages": 3, "t_saved_50": 1000, "t_saved_90": 1000},
                "snapshots": [_snap("merged", 1000, 7, None, 11904, 2, 0)],
                "final": _snap("final", 1500000000, 12, None, 11904, 2, 0),
            },
            {
                "mode": "unshare",
                "settings": dict(SETTINGS),
                "refused": copy.deepcopy(refused),
                "ksmd": copy.deepcopy(KSMD),
                "milestones": {"max_saved_pages": 3, "t_saved_50": 1000, "t_saved_90": 1000},
                "snapshots": [_snap("merged", 1000, 7, 2, 20096, 2, 0)],
                "final": _snap("final", 1500000000, 12, 2, 20096, 4, 2),
            },
        ],
    }
    return report  # type: ignore[return-value]


def one_mode_report() -> Report:
    """The unshare run of :func:`two_mode_report` alone, without snapshots or refusals."""
    report = two_mode_report()
    run = report["runs"][1]
    run["snapshots"] = []
    run["refused"] = []
    run["milestones"] = {"max_saved_pages": 0, "t_saved_50": None, "t_saved_90": None}
    report["runs"] = [run]
    report["trace"]["meta"] = {}
    return report
