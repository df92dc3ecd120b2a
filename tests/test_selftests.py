"""The kernel's KSM selftests, ported as traces (``tests/selftests/``), with their assertions.

Ported from Linux ``tools/testing/selftests/mm/``:

* ``ksm_functional_tests.c``: test_unmerge, test_unmerge_zero_pages,
  test_unmerge_discarded, test_prctl, test_prctl_fork, test_prctl_unmerge,
  test_fork_ksm_merging_page_count.  They work on 2 MiB regions, so each has a
  4 KiB and a 64 KiB trace.
* ``ksm_tests.c``: -M (madvise, and -t 1 prctl), -U, -Z with -z 0 and -z 1.

Not expressible in the trace format:

* test_unmerge_uffd_wp: needs userfaultfd write-protection of the range
  before MADV_UNMERGEABLE; without it the trace is test_unmerge again.
* test_prot_none: needs mprotect(PROT_NONE) and stores through
  /proc/self/mem that bypass the protection; the format has neither.
* test_prctl_fork_exec: needs execve (a fresh mm that keeps merge_any); the
  format has no exec.  Its fork half is test_prctl_fork.
* ksm_tests -N (NUMA nodes; the format has no node placement),
  -P/-H/-D/-C (they time merging, THP merging, unmerging and COW breaks in
  wall-clock time and assert nothing about counters; -H also needs huge pages).

Each trace is replayed in both modes with invariants checked after every
event; the selftest's assertions are checked on both runs (legacy where the
zero-page series changes the answer: no ``ksm_zero_pages``, and unmerging
leaves KSM's zero pages mapped), and on the live kernel's recorded answer.
The simulator's unshare run must give every counter of that recording.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from kernel_answer import (
    comparable,
    format_differences,
    kernel_differences,
    load_recording,
    recorded_names,
    replay_file,
    run_of,
    why_not_live,
)
from testdata import SELFTESTS_DIR

from ksmreplay.trace import open_trace

HERE = SELFTESTS_DIR
MODES = ("legacy", "unshare")
MIB = 1 << 20
KSM_TESTS_PAGES = 10

Run = dict[str, Any]
Snap = dict[str, Any]


@cache
def simulated(name: str) -> dict[str, Any]:
    return replay_file(HERE / f"{name}.jsonl", MODES)


def page_size_of(name: str) -> int:
    with open_trace(str(HERE / f"{name}.jsonl")) as reader:
        return reader.header.page_size


def snap(run: Run, label: str) -> Snap:
    (found,) = (s for s in run["snapshots"] if s["label"] == label)
    return dict(found)


def proc(s: Snap, pid: int) -> dict[str, Any]:
    (found,) = (p for p in s["processes"] if p["pid"] == pid)
    return dict(found)


def maps_duplicates(s: Snap, pid: int = 1) -> bool:
    """The selftests' range_maps_duplicates() for a trace whose only process is ``pid``.

    The selftest reads the page frame number of every present page of its
    range and fails if two pages map the same frame (the shared zero page
    included).  From the report: a KSM frame, two zero-page PTEs, or fewer
    anonymous frames than mapped anonymous pages all mean a repeated frame.
    """
    assert [p["pid"] for p in s["processes"]] == [pid]
    memory = s["memory"]
    zero_ptes = memory["zero_page_maps_by_ksm"] + memory["zero_page_maps_by_fault"]
    return bool(
        memory["ksm_frames"] > 0
        or zero_ptes > 1
        or memory["anon_frames"] < proc(s, pid)["rss_anon_pages"]
    )


def ksm_pages_count_ok(run: Run, s: Snap, duplicates: int) -> bool:
    """ksm_tests' assert_ksm_pages_count(): pages_shared and pages_sharing for
    ``duplicates`` identical pages under the run's max_page_sharing.

    Each KSM page holds at most max_page_sharing mappings; a last group of a
    single page cannot merge, so a remainder of 0 or 1 leaves only full
    groups, any other remainder adds one partly filled KSM page.
    """
    limit = run["settings"]["max_page_sharing"]
    shared, sharing = s["ksm"]["pages_shared"], s["ksm"]["pages_sharing"]
    if duplicates % limit in (0, 1):
        return bool(shared == duplicates // limit and sharing == shared * (limit - 1))
    return bool(shared == duplicates // limit + 1 and sharing == duplicates - shared)


def merged_by_two_scans(run: Run, pid: int, pages: int) -> None:
    """The map-and-merge helper's own check: pages merged after two full scans."""
    s = snap(run, "merged")
    assert s["ksm"]["full_scans"] == 2
    assert proc(s, pid)["ksm_merging_pages"] > 0
    assert proc(s, pid)["ksm_merging_pages"] == pages


# -- ksm_functional_tests.c ---------------------------------------------------------------


def check_unmerge(run: Run, pages: int) -> None:
    merged_by_two_scans(run, 1, pages)
    assert maps_duplicates(snap(run, "merged"))
    unmerged = snap(run, "unmerged")
    assert not maps_duplicates(unmerged)
    assert unmerged["memory"]["anon_frames"] == pages


def check_unmerge_zero_pages(run: Run, pages: int) -> None:
    merged = snap(run, "merged")
    half = snap(run, "first half unmerged")
    written = snap(run, "second half written")
    assert merged["memory"]["zero_page_maps_by_ksm"] == pages
    if run["mode"] == "unshare":
        # ksm_zero_pages: every page after merging, half after MADV_UNMERGEABLE of
        # half, none after a write fault on each page of the other half
        assert [proc(s, 1)["ksm_zero_pages"] for s in (merged, half, written)] == [
            pages,
            pages // 2,
            0,
        ]
        assert [s["ksm"]["ksm_zero_pages"] for s in (merged, half, written)] == [
            pages,
            pages // 2,
            0,
        ]
        assert not maps_duplicates(written)
    else:
        # before the zero-page series: no counter, and unmerging leaves the zero pages
        for s in (merged, half, written):
            assert s["ksm"]["ksm_zero_pages"] is None
            assert proc(s, 1)["ksm_zero_pages"] is None
        assert half["memory"]["zero_page_maps_by_ksm"] == pages
        assert proc(half, 1)["rss_anon_pages"] == 0
        assert written["memory"]["zero_page_maps_by_ksm"] == pages // 2
        assert maps_duplicates(written)


def check_unmerge_discarded(run: Run, pages: int) -> None:
    merged_by_two_scans(run, 1, pages)
    unmerged = snap(run, "unmerged")
    assert not maps_duplicates(unmerged)
    assert proc(unmerged, 1)["rss_anon_pages"] == pages // 2


def check_prctl(run: Run, pages: int) -> None:
    assert proc(snap(run, "set"), 1)["ksm_merge_any"] is True
    assert proc(snap(run, "set"), 1)["ksm_mergeable"] is True
    assert proc(snap(run, "cleared"), 1)["ksm_merge_any"] is False
    assert proc(snap(run, "cleared"), 1)["ksm_mergeable"] is False


def check_prctl_fork(run: Run, pages: int) -> None:
    assert proc(snap(run, "forked"), 2)["ksm_merge_any"] is True
    merged_by_two_scans(run, 2, pages)
    cleared = snap(run, "parent cleared")
    assert [p["pid"] for p in cleared["processes"]] == [1]
    assert proc(cleared, 1)["ksm_merge_any"] is False


def check_prctl_unmerge(run: Run, pages: int) -> None:
    merged_by_two_scans(run, 1, pages)
    assert proc(snap(run, "merged"), 1)["ksm_merge_any"] is True
    unmerged = snap(run, "unmerged")
    assert not maps_duplicates(unmerged)
    assert proc(unmerged, 1)["ksm_merge_any"] is False


def check_fork_merging_page_count(run: Run, pages: int) -> None:
    merged_by_two_scans(run, 1, pages)
    forked = snap(run, "forked")
    child = proc(forked, 2)
    assert child["ksm_merging_pages"] == 0  # not inherited (Linux 6.18)
    assert child["ksm_rmap_items"] == 0
    assert child["rss_anon_pages"] == pages
    assert proc(forked, 1)["ksm_merging_pages"] == pages
    stopped = snap(run, "stopped")
    assert stopped["ksm"]["pages_shared"] + stopped["ksm"]["pages_sharing"] == 0
    assert proc(stopped, 1)["ksm_merging_pages"] == 0


# -- ksm_tests.c ----------------------------------------------------------------------------


def check_ksm_tests_merge(run: Run, pages: int) -> None:
    assert ksm_pages_count_ok(run, snap(run, "merged"), KSM_TESTS_PAGES)


def check_ksm_tests_unmerge(run: Run, pages: int) -> None:
    assert ksm_pages_count_ok(run, snap(run, "merged"), 2)
    assert ksm_pages_count_ok(run, snap(run, "after one scan"), 0)


def check_ksm_tests_zero_z0(run: Run, pages: int) -> None:
    merged = snap(run, "merged")
    assert ksm_pages_count_ok(run, merged, KSM_TESTS_PAGES)
    assert merged["memory"]["zero_page_maps_by_ksm"] == 0


def check_ksm_tests_zero_z1(run: Run, pages: int) -> None:
    merged = snap(run, "merged")
    assert ksm_pages_count_ok(run, merged, 0)
    assert merged["memory"]["zero_page_maps_by_ksm"] == KSM_TESTS_PAGES
    expected = KSM_TESTS_PAGES if run["mode"] == "unshare" else None
    assert merged["ksm"]["ksm_zero_pages"] == expected


CHECKS: dict[str, Callable[[Run, int], None]] = {
    "functional_unmerge": check_unmerge,
    "functional_unmerge_zero_pages": check_unmerge_zero_pages,
    "functional_unmerge_discarded": check_unmerge_discarded,
    "functional_prctl": check_prctl,
    "functional_prctl_fork": check_prctl_fork,
    "functional_prctl_unmerge": check_prctl_unmerge,
    "functional_fork_merging_page_count": check_fork_merging_page_count,
    "ksm_tests_merge": check_ksm_tests_merge,
    "ksm_tests_merge_prctl": check_ksm_tests_merge,
    "ksm_tests_unmerge": check_ksm_tests_unmerge,
    "ksm_tests_zero_pages_z0": check_ksm_tests_zero_z0,
    "ksm_tests_zero_pages_z1": check_ksm_tests_zero_z1,
}
"""Ported selftest -> its assertions, given a run and the page count of a 2 MiB region."""

TRACES = sorted(p.name[: -len(".jsonl")] for p in HERE.glob("*.jsonl"))
RECORDED = recorded_names(HERE)


def check_for(name: str) -> Callable[[Run, int], None]:
    return CHECKS[name.removesuffix("_64k")]


def test_every_trace_has_its_assertions() -> None:
    assert sorted({name.removesuffix("_64k") for name in TRACES}) == sorted(CHECKS)
    for name in TRACES:
        with open_trace(str(HERE / f"{name}.jsonl")) as reader:
            assert reader.header.description, name
            assert (reader.header.page_size == 65536) == name.endswith("_64k")


def test_every_4k_trace_is_recorded() -> None:
    assert [name for name in TRACES if page_size_of(name) == 4096] == RECORDED


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TRACES)
def test_selftest_assertions(name: str, mode: str) -> None:
    pages = 2 * MIB // page_size_of(name)
    check_for(name)(run_of(simulated(name), mode), pages)


@pytest.mark.parametrize("name", RECORDED)
def test_assertions_hold_on_the_kernel(name: str) -> None:
    """The ported assertions are the selftest's: the real kernel passes them too."""
    check_for(name)(load_recording(HERE / f"{name}.kernel.json"), 2 * MIB // 4096)


@pytest.mark.parametrize("name", RECORDED)
def test_unshare_matches_kernel(name: str) -> None:
    recorded = load_recording(HERE / f"{name}.kernel.json")
    differences = kernel_differences(recorded, run_of(simulated(name), "unshare"))
    assert not differences, format_differences(name, differences)


LIVE_REASON = why_not_live()


@pytest.mark.live
@pytest.mark.skipif(LIVE_REASON is not None, reason=LIVE_REASON or "")
@pytest.mark.parametrize("name", RECORDED)
def test_live_kernel_still_answers_the_same(name: str) -> None:
    from ksmreplay.live import execute

    with open_trace(str(HERE / f"{name}.jsonl")) as reader:
        report: dict[str, Any] = json.loads(json.dumps(execute(reader)))
    (live,) = report["runs"]
    recorded = load_recording(HERE / f"{name}.kernel.json")
    live.pop("kernel")
    recorded.pop("kernel")
    assert comparable(live, recorded) == comparable(recorded, recorded)
    differences = kernel_differences(live, run_of(simulated(name), "unshare"))
    assert not differences, format_differences(name, differences)
