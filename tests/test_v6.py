"""The ``v6`` mode: zero pages tracked through flagged rmap_items (KSM_MODEL.md section 14).

One test per observable difference listed there.  Every expected value is
worked out by hand from section 14 (4 KiB pages, 64-byte items): a process
maps 4 zero-filled pages, ksmd records their checksums on its first pass and
maps them to the zero page on its second, keeping one flagged item each.
Invariants (including zero_pages_sharing == flagged items) are checked after
every event.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import UPDATE, check_golden, run_report
from testdata import V6_CASES_DIR

from ksmreplay.engine import Engine
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Ksm,
    Madvise,
    Read,
    Snapshot,
    Write,
)

PS = 4096
ITEM = 64
ADDR = 0x10000
PAGES = 4
LEN = PAGES * PS


pytestmark = pytest.mark.usefixtures("both_engines")


class Run:
    """One engine driven event by event; ``one_pass()`` lets ksmd make exactly one full scan."""

    def __init__(self, mode: str = "v6") -> None:
        self.engine = Engine(mode, PS)
        self.index = 0
        self.t = 0

    def do(self, make: Any, *args: Any) -> None:
        self.index += 1
        event: Event = make(self.index, self.t, *args)
        self.engine.apply(event)
        self.engine.check_invariants()

    def one_pass(self) -> None:
        """Jump just past ksmd's next wake-up: one batch, which covers a whole pass here."""
        wake = self.engine.next_wake
        assert wake is not None
        self.t = wake + 1
        self.do(Snapshot, "tick")

    def snap(self) -> dict[str, Any]:
        snap: dict[str, Any] = dict(self.engine.snapshot("s", self.t, self.index))
        return snap

    def ksm(self) -> dict[str, Any]:
        ksm: dict[str, Any] = self.snap()["ksm"]
        return ksm

    def proc(self, pid: int = 1) -> dict[str, Any]:
        return next(p for p in self.snap()["processes"] if p["pid"] == pid)


def merged(mode: str = "v6") -> Run:
    """GIVEN 4 zero-filled mergeable pages of pid 1, merged with the zero page by ksmd."""
    run = Run(mode)
    run.do(Ksm, {"pages_to_scan": 1000, "sleep_millisecs": 20, "use_zero_pages": 1})
    run.do(Alloc, 1, ADDR, LEN)
    run.do(Write, 1, ADDR, LEN, 0)
    run.do(Madvise, 1, ADDR, LEN, "mergeable")
    run.do(Ksm, {"run": 1})
    run.one_pass()  # checksums recorded
    run.one_pass()  # zero-page merges
    return run


def test_merge_keeps_flagged_items_and_counts_them() -> None:
    run = merged()
    ksm, proc = run.ksm(), run.proc()
    assert ksm["zero_pages_sharing"] == PAGES
    assert ksm["ksm_zero_pages"] is None
    assert proc["ksm_zero_pages_sharing"] == PAGES
    assert proc["ksm_zero_pages"] is None
    assert proc["rss_anon_pages"] == 0


def test_extra_items_stay_and_cost_general_profit() -> None:
    # WHEN ksmd makes further passes over the untouched zero pages
    v6, unshare = merged("v6"), merged("unshare")
    for run in (v6, unshare):
        run.one_pass()
        run.one_pass()
    # THEN v6 keeps one volatile item per zero page, merged has freed them
    assert v6.ksm()["pages_volatile"] == PAGES
    assert v6.proc()["ksm_rmap_items"] == PAGES
    assert unshare.proc()["ksm_rmap_items"] == 0
    # and v6's profits pay 64 bytes per kept item
    saved = PAGES * PS
    assert v6.ksm()["general_profit"] == saved - PAGES * ITEM
    assert v6.proc()["ksm_process_profit"] == saved - PAGES * ITEM
    assert unshare.ksm()["general_profit"] == saved


def test_counter_stale_after_write_until_revisited() -> None:
    run = merged()
    # WHEN page 0 is written
    run.do(Write, 1, ADDR, PS, 7)
    # THEN the counter has not moved (merged design: it falls at once)
    assert run.ksm()["zero_pages_sharing"] == PAGES
    assert run.snap()["events"]["cow_breaks_zero"] == 1
    # until ksmd visits the new page with its flagged item
    run.one_pass()
    assert run.ksm()["zero_pages_sharing"] == PAGES - 1
    assert run.proc()["ksm_zero_pages_sharing"] == PAGES - 1
    assert run.proc()["ksm_rmap_items"] == PAGES  # the item lives on, unflagged
    assert run.ksm()["general_profit"] == (PAGES - 1) * PS - PAGES * ITEM


def test_counter_stale_after_dontneed_until_item_freed() -> None:
    run = merged()
    run.do(Madvise, 1, ADDR, PS, "dontneed")
    assert run.ksm()["zero_pages_sharing"] == PAGES
    run.one_pass()
    assert run.ksm()["zero_pages_sharing"] == PAGES - 1
    assert run.proc()["ksm_rmap_items"] == PAGES - 1


def test_counter_stale_after_munmap_until_items_freed() -> None:
    run = merged()
    run.do(Free, 1, ADDR, 2 * PS)
    assert run.ksm()["zero_pages_sharing"] == PAGES
    assert run.proc()["ksm_zero_pages_sharing"] == PAGES
    run.one_pass()
    assert run.ksm()["zero_pages_sharing"] == PAGES - 2
    assert run.proc()["ksm_rmap_items"] == PAGES - 2


def test_counter_stale_after_exit_until_items_freed() -> None:
    run = merged()
    run.do(Exit, 1)
    assert run.ksm()["zero_pages_sharing"] == PAGES
    assert run.ksm()["general_profit"] == PAGES * PS - PAGES * ITEM
    run.one_pass()
    assert run.ksm()["zero_pages_sharing"] == 0
    assert run.ksm()["general_profit"] == 0


def test_unmergeable_unshares_only_at_next_pass() -> None:
    run = merged()
    # WHEN the range is made unmergeable
    run.do(Madvise, 1, ADDR, LEN, "unmergeable")
    # THEN the zero pages stay mapped and counted
    assert run.proc()["rss_anon_pages"] == 0
    assert run.snap()["memory"]["zero_page_maps_by_ksm"] == PAGES
    assert run.ksm()["zero_pages_sharing"] == PAGES
    # until ksmd frees the items of the now unmergeable range
    run.one_pass()
    assert run.proc()["rss_anon_pages"] == PAGES
    assert run.snap()["events"]["zero_pages_unshared"] == PAGES
    assert run.ksm()["zero_pages_sharing"] == 0
    assert run.ksm()["pages_volatile"] == 0


def test_run_2_unshares_at_once() -> None:
    run = merged()
    run.do(Ksm, {"run": 2})
    assert run.proc()["rss_anon_pages"] == PAGES
    assert run.snap()["events"]["zero_pages_unshared"] == PAGES
    assert run.ksm()["zero_pages_sharing"] == 0
    assert run.proc()["ksm_rmap_items"] == 0


def test_fork_child_inherits_stale_counter_without_items() -> None:
    run = merged()
    run.do(Fork, 1, 2)
    # THEN the child shows the parent's count, the global count is unchanged
    assert run.proc(2)["ksm_zero_pages_sharing"] == PAGES
    assert run.proc(2)["ksm_rmap_items"] == 0
    assert run.ksm()["zero_pages_sharing"] == PAGES
    # WHEN the child writes one of its zero pages and ksmd passes
    run.do(Write, 2, ADDR, PS, 7)
    run.one_pass()
    # THEN the child's counter never falls (it has no item to revisit)
    assert run.proc(2)["ksm_zero_pages_sharing"] == PAGES
    assert run.ksm()["zero_pages_sharing"] == PAGES
    assert run.snap()["memory"]["zero_page_maps_by_ksm"] == 2 * PAGES - 1


def test_dontneed_then_read_fault_keeps_flagged_item() -> None:
    run = merged()
    # WHEN page 0 is dropped and read again before ksmd visits it
    run.do(Madvise, 1, ADDR, PS, "dontneed")
    run.do(Read, 1, ADDR, PS)
    run.one_pass()
    # THEN the item is kept on the fault zero page, still counted
    assert run.ksm()["zero_pages_sharing"] == PAGES
    assert run.proc()["ksm_rmap_items"] == PAGES
    assert run.snap()["memory"]["zero_page_maps_by_fault"] == 1
    # and when it is freed, that fault zero page is unshared too
    run.do(Madvise, 1, ADDR, LEN, "unmergeable")
    run.one_pass()
    assert run.proc()["rss_anon_pages"] == PAGES
    assert run.snap()["memory"]["zero_page_maps_by_fault"] == 0
    assert run.snap()["events"]["zero_pages_unshared"] == PAGES - 1


def test_new_mapping_at_same_address_gets_zero_pages_unshared() -> None:
    run = merged()
    # WHEN the range is unmapped, mapped again (not mergeable) and read
    run.do(Free, 1, ADDR, LEN)
    run.do(Alloc, 1, ADDR, LEN)
    run.do(Read, 1, ADDR, LEN)
    assert run.proc()["rss_anon_pages"] == 0
    run.one_pass()
    # THEN freeing the old flagged items unshared the new mapping's zero pages
    assert run.proc()["rss_anon_pages"] == PAGES
    assert run.snap()["memory"]["zero_page_maps_by_fault"] == 0
    assert run.ksm()["zero_pages_sharing"] == 0


def test_other_modes_have_no_v6_counters() -> None:
    for mode in ("legacy", "unshare"):
        run = merged(mode)
        assert "zero_pages_sharing" not in run.ksm()
        assert "ksm_zero_pages_sharing" not in run.proc()


# -- golden cases: tests/cases/v6/NAME.jsonl, the three designs side by side ---------
#
# They live in a subdirectory so that tests/test_cases.py (which wants a live
# kernel recording for every case, and runs legacy and unshare only) does not
# collect them.  NAME.expected.json is ``ksmreplay run NAME.jsonl --mode all
# --format json`` with ``trace.path`` reduced to the file name;
# ``KSMREPLAY_UPDATE_GOLDEN=1`` rewrites them (review the diff before committing).

V6_CASES = sorted(p.name[: -len(".jsonl")] for p in V6_CASES_DIR.glob("*.jsonl"))


def run_v6_case(name: str) -> str:
    return run_report(V6_CASES_DIR / f"{name}.jsonl", "all")


def test_v6_cases_present() -> None:
    assert len(V6_CASES) >= 10
    if not UPDATE:
        names = sorted(
            p.name[: -len(".expected.json")] for p in V6_CASES_DIR.glob("*.expected.json")
        )
        assert names == V6_CASES


@pytest.mark.parametrize("name", V6_CASES)
def test_v6_case_matches_golden(name: str) -> None:
    check_golden(V6_CASES_DIR / f"{name}.expected.json", run_v6_case(name))


@pytest.mark.parametrize("name", V6_CASES)
def test_v6_case_shows_a_difference(name: str) -> None:
    """In every case some snapshot's v6 numbers differ from the merged design's."""
    report = json.loads((V6_CASES_DIR / f"{name}.expected.json").read_text())
    runs = {run["mode"]: run for run in report["runs"]}
    assert list(runs) == ["legacy", "v6", "unshare"]

    def view(snap: dict[str, Any]) -> list[Any]:
        ksm = snap["ksm"]
        procs = [(p["ksm_rmap_items"], p["rss_anon_pages"]) for p in snap["processes"]]
        return [ksm["general_profit"], ksm["pages_volatile"], procs, snap["memory"]]

    v6 = [view(s) for s in runs["v6"]["snapshots"]]
    unshare = [view(s) for s in runs["unshare"]["snapshots"]]
    assert v6 != unshare
    for snap in runs["v6"]["snapshots"]:
        assert snap["ksm"]["ksm_zero_pages"] is None
        assert isinstance(snap["ksm"]["zero_pages_sharing"], int)
