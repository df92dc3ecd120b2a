"""The reference model against the written model's own numbers.

Every expected value here comes from KSM_MODEL.md (section 15, worked
examples; section 17, facts observed on the live kernel; the rules of sections
4, 7, 11 and 12) or the reference's modelling choices (``reference.py``),
never from running the model.  Each trace is built from the event records
directly and ``check_invariants()`` runs after every event.

Timing used throughout: ``run=1`` is written at 1 ms, so ksmd wakes at 1 ms and
then every 20 ms (plus 400 ns per visit).  With a small workload each wake-up
is one whole pass, so :func:`after` (pass k done, pass k+1 not started) is
1 ms + (k - 1) * 20 ms + 10 ms.
"""

from __future__ import annotations

from typing import Any

import pytest
from reference import ReferenceSimulator

from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.report import Snap
from ksmreplay.timing import sleep_ns
from ksmreplay.trace import events as ev

PAGE = 4096
MS = 1_000_000
RUN_AT = 1 * MS

X = 0x1111_1111_1111_1111
Y = 0x2222_2222_2222_2222
Z = 0x3333_3333_3333_3333


def after(k: int) -> int:
    """A time after ksmd's k-th wake-up (pass k for a small workload) and before the next.

    ksmd wakes every ``timing.sleep_ns(20)`` (20 ms and one jiffy, as measured).
    """
    period = sleep_ns(20)
    return RUN_AT + (k - 1) * period + period // 2


def base(pid: int) -> int:
    """First page number of a process's test mapping."""
    return 0x1000 * pid


class Trace:
    """Builds a list of events with consecutive indices (the header is event 0)."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def _add(self, event: ev.Event) -> None:
        assert not self.events or self.events[-1].t <= event.t, "trace time must not go back"
        self.events.append(event)

    @property
    def _next(self) -> int:
        return len(self.events) + 1

    def alloc(self, t: int, pid: int, page: int, n: int = 1) -> Trace:
        self._add(ev.Alloc(index=self._next, t=t, pid=pid, addr=page * PAGE, len=n * PAGE))
        return self

    def free(self, t: int, pid: int, page: int, n: int = 1) -> Trace:
        self._add(ev.Free(index=self._next, t=t, pid=pid, addr=page * PAGE, len=n * PAGE))
        return self

    def write(self, t: int, pid: int, page: int, n: int, content: int) -> Trace:
        self._add(
            ev.Write(
                index=self._next, t=t, pid=pid, addr=page * PAGE, len=n * PAGE, content=content
            )
        )
        return self

    def madvise(self, t: int, pid: int, page: int, n: int, advice: ev.Advice) -> Trace:
        self._add(
            ev.Madvise(
                index=self._next, t=t, pid=pid, addr=page * PAGE, len=n * PAGE, advice=advice
            )
        )
        return self

    def prctl(self, t: int, pid: int, value: bool) -> Trace:
        self._add(ev.Prctl(index=self._next, t=t, pid=pid, option="merge_any", value=value))
        return self

    def fork(self, t: int, pid: int, child: int) -> Trace:
        self._add(ev.Fork(index=self._next, t=t, pid=pid, child_pid=child))
        return self

    def exit(self, t: int, pid: int) -> Trace:
        self._add(ev.Exit(index=self._next, t=t, pid=pid))
        return self

    def ksm(self, t: int, **settings: KnobValue) -> Trace:
        self._add(ev.Ksm(index=self._next, t=t, settings=settings))
        return self

    def settle(self, t: int, max_full_scans: int = 10) -> Trace:
        self._add(ev.Settle(index=self._next, t=t, max_full_scans=max_full_scans))
        return self

    def snap(self, t: int, label: str) -> Trace:
        self._add(ev.Snapshot(index=self._next, t=t, label=label))
        return self

    def mergeable_pages(self, t: int, pid: int, n: int, content: int, page: int = -1) -> Trace:
        """alloc + write + MADV_MERGEABLE of ``n`` pages of ``content``."""
        page = base(pid) if page < 0 else page
        return (
            self.alloc(t, pid, page, n)
            .write(t, pid, page, n, content)
            .madvise(t, pid, page, n, "mergeable")
        )


class Result:
    """Snapshots by label, and the simulator after the last event."""

    def __init__(self, snaps: dict[str, Snap], sim: ReferenceSimulator) -> None:
        self.snaps = snaps
        self.sim = sim

    def ksm(self, label: str) -> dict[str, Any]:
        return self.snaps[label]["ksm"]

    def proc(self, label: str, pid: int) -> dict[str, Any]:
        (entry,) = [p for p in self.snaps[label]["processes"] if p["pid"] == pid]
        return entry

    def pids(self, label: str) -> list[int]:
        return [p["pid"] for p in self.snaps[label]["processes"]]

    def memory(self, label: str) -> dict[str, int]:
        return self.snaps[label]["memory"]

    def events(self, label: str) -> dict[str, int]:
        return self.snaps[label]["events"]

    def rmap_items(self, label: str) -> int:
        """Global rmap_items (live processes only: exited mms hold none by then)."""
        return sum(p["ksm_rmap_items"] for p in self.snaps[label]["processes"])


def replay(
    trace: Trace, mode: str = "unshare", settings: dict[str, KnobValue] | None = None
) -> Result:
    """Feed the events, checking invariants after each, and collect the snapshots."""
    sim = ReferenceSimulator(mode, PAGE, settings)
    snaps: dict[str, Snap] = {}
    for event in trace.events:
        sim.apply(event)
        sim.check_invariants()
        if isinstance(event, ev.Snapshot):
            assert event.label not in snaps
            snaps[event.label] = sim.snapshot(event.label, event.t, event.index)
    last = trace.events[-1]
    snaps["final"] = sim.snapshot("final", last.t, last.index)
    return Result(snaps, sim)


def example_a() -> Trace:
    """Section 15 A: two processes, one page each, same content X, run=1."""
    return Trace().mergeable_pages(0, 1, 1, X).mergeable_pages(0, 2, 1, X).ksm(RUN_AT, run=1)


# ---------------------------------------------------------------------------
# Section 15: worked examples
# ---------------------------------------------------------------------------


def test_example_a_pair_merge_takes_two_passes() -> None:
    trace = example_a().snap(after(1), "pass1").snap(after(2), "pass2").snap(after(3), "pass3")
    r = replay(trace)
    # Pass 1: two items created and checksummed.
    assert r.rmap_items("pass1") == 2
    assert r.ksm("pass1")["pages_volatile"] == 2
    assert r.ksm("pass1")["pages_scanned"] == 2
    assert r.ksm("pass1")["pages_shared"] == 0
    # Section 17.11: negative while pages are only volatile.
    assert r.ksm("pass1")["general_profit"] == -128
    # Pass 2: pair merge.
    k = r.ksm("pass2")
    assert (k["pages_shared"], k["pages_sharing"], k["pages_unshared"]) == (1, 1, 0)
    assert k["general_profit"] == 4096 - 128
    for pid in (1, 2):
        assert r.proc("pass2", pid)["ksm_merging_pages"] == 1
        assert r.proc("pass2", pid)["ksm_process_profit"] == 4096 - 64
    assert r.memory("pass2")["ksm_frames"] == 1
    assert r.memory("pass2")["anon_frames"] == 1
    assert r.events("pass2")["merges"] == 2
    # Pass 3 on: visits do nothing.
    assert r.ksm("pass3")["pages_scanned"] == 6
    assert {
        key: v for key, v in r.ksm("pass3").items() if key not in ("pages_scanned", "full_scans")
    } == {key: v for key, v in k.items() if key not in ("pages_scanned", "full_scans")}


def test_example_b_cow_write_then_revisits() -> None:
    trace = (
        example_a()
        .write(after(2), 1, base(1), 1, Y)
        .snap(after(2), "written")
        .snap(after(3), "visited")
        .snap(after(4), "stable")
        .snap(after(5), "skipped")
        .write(after(5), 2, base(2), 1, Z)
        .snap(after(5), "second write")
        .snap(after(6), "dead node seen")
    )
    r = replay(trace)
    # At once: nothing in KSM; the page tables changed.
    k = r.ksm("written")
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 1)
    assert r.proc("written", 1)["ksm_merging_pages"] == 1
    assert r.events("written")["cow_breaks_ksm"] == 1
    assert r.memory("written")["anon_frames"] == 2
    assert r.memory("written")["ksm_frames"] == 1
    # Next visit: sharing 0, shared stays 1, process 1 volatile.
    k = r.ksm("visited")
    assert (k["pages_shared"], k["pages_sharing"], k["pages_volatile"]) == (1, 0, 1)
    assert r.proc("visited", 1)["ksm_merging_pages"] == 0
    assert r.proc("visited", 2)["ksm_merging_pages"] == 1
    # One pass later, Y unchanged: unshared 1 (4th visit of the item, V V V V).
    assert r.ksm("stable")["pages_unshared"] == 1
    # 5th encounter is a smart_scan skip: unlinked, counted as volatile.
    k = r.ksm("skipped")
    assert (k["pages_unshared"], k["pages_volatile"], k["pages_skipped"]) == (0, 1, 1)
    # Process 2 writes: the KSM page dies at once, the node is seen at its visit.
    assert r.memory("second write")["ksm_frames"] == 0
    assert r.ksm("second write")["pages_shared"] == 1
    k = r.ksm("dead node seen")
    assert (k["pages_shared"], k["pages_sharing"]) == (0, 0)
    assert r.proc("dead node seen", 2)["ksm_merging_pages"] == 0
    # Pass 6 visits process 1's item again (V after S) and re-inserts it.
    assert k["pages_unshared"] == 1
    assert k["pages_volatile"] == 1


def example_c(mode: str) -> Result:
    pid = 1
    p = base(pid)
    trace = (
        Trace()
        .ksm(0, use_zero_pages=1, pages_to_scan=1000)
        .mergeable_pages(0, pid, 100, 0)
        .ksm(RUN_AT, run=1)
        .snap(after(1), "pass1")
        .snap(after(2), "pass2")
        .snap(after(3), "pass3")
        .madvise(after(3), pid, p, 50, "unmergeable")
        .snap(after(3), "unmerged")
        .write(after(3), pid, p + 50, 50, 7)
        .snap(after(3), "written")
        .write(after(3), pid, p, 50, 7)
        .snap(after(3), "all written")
    )
    return replay(trace, mode)


def test_example_c_zero_pages_unshare() -> None:
    r = example_c("unshare")
    assert r.rmap_items("pass1") == 100
    k = r.ksm("pass2")
    assert k["ksm_zero_pages"] == 100
    assert r.proc("pass2", 1)["ksm_zero_pages"] == 100
    assert r.proc("pass2", 1)["rss_anon_pages"] == 0
    assert r.rmap_items("pass2") == 100
    assert k["pages_volatile"] == 100
    assert k["general_profit"] == 100 * 4096 - 6400
    assert r.memory("pass2")["zero_page_maps_by_ksm"] == 100
    assert r.events("pass2")["zero_pages_merged"] == 100
    # Pass 3: the items are freed.
    assert r.rmap_items("pass3") == 0
    assert r.ksm("pass3")["general_profit"] == 409600
    # MADV_UNMERGEABLE on the first 50: at once.
    assert r.ksm("unmerged")["ksm_zero_pages"] == 50
    assert r.proc("unmerged", 1)["ksm_zero_pages"] == 50
    assert r.proc("unmerged", 1)["rss_anon_pages"] == 50
    assert r.events("unmerged")["zero_pages_unshared"] == 50
    # Writing the other 50: at once.
    assert r.ksm("written")["ksm_zero_pages"] == 0
    assert r.proc("written", 1)["rss_anon_pages"] == 100
    assert r.events("written")["cow_breaks_zero"] == 50


def test_example_c_zero_pages_legacy() -> None:
    r = example_c("legacy")
    # Same merge timing and items, no counters.
    assert r.rmap_items("pass1") == 100
    assert r.ksm("pass2")["ksm_zero_pages"] is None
    assert r.proc("pass2", 1)["ksm_zero_pages"] is None
    assert r.proc("pass2", 1)["rss_anon_pages"] == 0
    assert r.rmap_items("pass2") == 100
    assert r.ksm("pass2")["general_profit"] == 0 * 4096 - 6400
    assert r.proc("pass2", 1)["ksm_process_profit"] == -6400
    assert r.memory("pass2")["zero_page_maps_by_ksm"] == 100
    assert r.rmap_items("pass3") == 0
    assert r.ksm("pass3")["general_profit"] == 0
    # MADV_UNMERGEABLE changes nothing; RssAnon stays 100 pages lower until written.
    assert r.proc("unmerged", 1)["rss_anon_pages"] == 0
    assert r.memory("unmerged")["zero_page_maps_by_ksm"] == 100
    assert r.events("unmerged")["zero_pages_unshared"] == 0
    assert r.proc("written", 1)["rss_anon_pages"] == 50
    assert r.proc("all written", 1)["rss_anon_pages"] == 100
    assert r.events("all written")["cow_breaks_zero"] == 100


def identical_pages(n: int, max_page_sharing: int) -> Trace:
    return (
        Trace()
        .ksm(0, max_page_sharing=max_page_sharing, pages_to_scan=1000)
        .mergeable_pages(0, 1, n, X)
        .ksm(RUN_AT, run=1)
        .snap(after(2), "pass2")
        .snap(after(4), "pass4")
        .snap(after(5), "pass5")
    )


def test_example_d_300_pages_make_a_chain() -> None:
    r = replay(identical_pages(300, 256))
    k = r.ksm("pass2")
    assert (k["pages_shared"], k["pages_sharing"]) == (2, 298)
    assert (k["stable_node_chains"], k["stable_node_dups"]) == (1, 2)


def test_example_d_257_pages_leave_one_unstable() -> None:
    r = replay(identical_pages(257, 256))
    k = r.ksm("pass2")
    assert (k["pages_shared"], k["pages_sharing"], k["pages_unshared"]) == (1, 255, 1)
    assert (k["stable_node_chains"], k["stable_node_dups"]) == (0, 0)
    # It waits in the unstable tree on every pass where it is visited...
    assert r.ksm("pass4")["pages_unshared"] == 1
    # ...and is volatile on passes where smart_scan skips it (5th encounter).
    k = r.ksm("pass5")
    assert (k["pages_unshared"], k["pages_volatile"]) == (0, 1)


def test_example_e_fork_child_linked_at_its_visit() -> None:
    trace = example_a().fork(after(2), 1, 3).snap(after(2), "forked").snap(after(3), "visited")
    r = replay(trace)
    assert r.pids("forked") == [1, 2, 3]
    child = r.proc("forked", 3)
    assert (child["ksm_rmap_items"], child["ksm_merging_pages"]) == (0, 0)
    assert child["ksm_mergeable"] is True
    assert child["rss_anon_pages"] == 1
    k = r.ksm("visited")
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 2)
    assert r.proc("visited", 3)["ksm_merging_pages"] == 1
    assert r.rmap_items("visited") == 3
    # Linking a forked mapping is not a merge (no page changed its frame).
    assert r.events("visited")["merges"] == 2
    assert r.memory("visited")["ksm_frames"] == 1


def test_example_f_exit_of_a_sharer() -> None:
    trace = example_a().exit(after(2), 2).snap(after(2), "exited").snap(after(3), "cleaned")
    r = replay(trace)
    # At once: nothing (no zero pages); the process is gone.
    assert r.pids("exited") == [1]
    k = r.ksm("exited")
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 1)
    assert k["general_profit"] == 4096 - 128
    # Next batch: its item is unlinked.
    k = r.ksm("cleaned")
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 0)
    assert k["general_profit"] == 0 * 4096 - 64  # rmap_items 1
    assert r.proc("cleaned", 1)["ksm_merging_pages"] == 1
    assert r.memory("cleaned")["ksm_frames"] == 1


# ---------------------------------------------------------------------------
# Section 17: facts observed on the live kernel
# ---------------------------------------------------------------------------


def two_by_two() -> Trace:
    """Two processes with two pages of X each: one KSM page, 4 items (pass 2)."""
    return (
        Trace()
        .mergeable_pages(0, 1, 2, X)
        .mergeable_pages(0, 2, 2, X)
        .ksm(RUN_AT, run=1)
        .snap(after(2), "merged")
    )


@pytest.mark.parametrize(
    ("action", "rss_now", "frames_now", "items_later"),
    [
        ("unmergeable", 2, 2, 1),
        ("free", 1, 1, 1),
        ("dontneed", 1, 1, 1),
        ("write", 2, 2, 2),
    ],
)
def test_fact_1_lazy_counters(action: str, rss_now: int, frames_now: int, items_later: int) -> None:
    trace = two_by_two()
    t, p = after(2), base(1)
    if action == "unmergeable":
        trace.madvise(t, 1, p, 1, "unmergeable")
    elif action == "free":
        trace.free(t, 1, p, 1)
    elif action == "dontneed":
        trace.madvise(t, 1, p, 1, "dontneed")
    else:
        trace.write(t, 1, p, 1, Y)
    trace.snap(t, "now").snap(after(3), "later")
    r = replay(trace)
    assert (r.ksm("merged")["pages_shared"], r.ksm("merged")["pages_sharing"]) == (1, 3)
    # At once: KSM counters keep their values, page tables change.
    assert r.ksm("now")["pages_sharing"] == 3
    assert r.proc("now", 1)["ksm_rmap_items"] == 2
    assert r.proc("now", 1)["ksm_merging_pages"] == 2
    assert r.proc("now", 1)["rss_anon_pages"] == rss_now
    assert r.memory("now")["anon_frames"] == frames_now
    # When ksmd passes again.
    assert r.ksm("later")["pages_sharing"] == 2
    assert r.proc("later", 1)["ksm_merging_pages"] == 1
    assert r.proc("later", 1)["ksm_rmap_items"] == items_later


def zero_merged(n: int, merged_x: int = 0) -> Trace:
    """``n`` zero-filled pages of process 1 mapped to the zero page by KSM (pass 2).

    With ``merged_x``, process 1 also has that many pages of X, merged in pass 2.
    """
    trace = Trace().ksm(0, use_zero_pages=1).mergeable_pages(0, 1, n, 0)
    if merged_x:
        trace.mergeable_pages(0, 1, merged_x, X, page=base(1) + 0x100)
    return trace.ksm(RUN_AT, run=1).snap(after(1), "pass1").snap(after(2), "merged")


@pytest.mark.parametrize(
    ("action", "rss_now"),
    [("write", 1), ("unmergeable", 1), ("dontneed", 0), ("free", 0)],
)
def test_fact_2_ksm_zero_pages_change_at_the_event(action: str, rss_now: int) -> None:
    trace = zero_merged(4)
    t, p = after(2), base(1)
    if action == "write":
        trace.write(t, 1, p, 1, X)
    elif action == "unmergeable":
        trace.madvise(t, 1, p, 1, "unmergeable")
    elif action == "dontneed":
        trace.madvise(t, 1, p, 1, "dontneed")
    else:
        trace.free(t, 1, p, 1)
    trace.snap(t, "now")
    r = replay(trace)
    assert r.ksm("merged")["ksm_zero_pages"] == 4
    assert r.proc("merged", 1)["rss_anon_pages"] == 0
    assert r.ksm("now")["ksm_zero_pages"] == 3
    assert r.proc("now", 1)["ksm_zero_pages"] == 3
    assert r.proc("now", 1)["rss_anon_pages"] == rss_now


def test_fact_2_exit_drops_ksm_zero_pages_at_once() -> None:
    trace = zero_merged(4).exit(after(2), 1).snap(after(2), "now")
    r = replay(trace)
    assert r.ksm("now")["ksm_zero_pages"] == 0
    assert r.memory("now")["zero_page_maps_by_ksm"] == 0


def test_fact_3_zero_merged_pages_lose_items_and_visits() -> None:
    trace = zero_merged(3).snap(after(3), "pass3").snap(after(4), "pass4")
    r = replay(trace)
    assert r.ksm("pass1")["pages_scanned"] == 3
    assert r.ksm("merged")["pages_scanned"] == 6
    assert r.rmap_items("merged") == 3
    assert r.rmap_items("pass3") == 0
    assert r.ksm("pass3")["pages_scanned"] == 6
    assert r.ksm("pass4")["pages_scanned"] == 6


def test_fact_4_existing_zero_ksm_page_stays_new_zeros_go_to_zero_page() -> None:
    p = base(1)
    trace = (
        Trace()
        .mergeable_pages(0, 1, 2, 0)
        .ksm(RUN_AT, run=1)
        .snap(after(2), "ksm page")
        .ksm(after(2), use_zero_pages=1)
        .mergeable_pages(after(2), 1, 2, 0, page=p + 0x100)
        .snap(after(4), "zero pages")
    )
    r = replay(trace)
    k = r.ksm("ksm page")
    assert (k["pages_shared"], k["pages_sharing"], k["ksm_zero_pages"]) == (1, 1, 0)
    k = r.ksm("zero pages")
    assert (k["pages_shared"], k["pages_sharing"], k["ksm_zero_pages"]) == (1, 1, 2)
    assert r.memory("zero pages")["ksm_frames"] == 1


def test_fact_5_writing_zeros_on_a_ksm_zero_page() -> None:
    trace = (
        zero_merged(1)
        .write(after(2), 1, base(1), 1, 0)
        .snap(after(2), "written")
        .snap(after(3), "remerged")
    )
    r = replay(trace)
    assert r.ksm("written")["ksm_zero_pages"] == 0
    assert r.proc("written", 1)["rss_anon_pages"] == 1
    assert r.events("written")["cow_breaks_zero"] == 1
    assert r.ksm("remerged")["ksm_zero_pages"] == 1
    assert r.proc("remerged", 1)["rss_anon_pages"] == 0
    assert r.events("remerged")["zero_pages_merged"] == 2


def test_fact_6_page_never_merges_with_its_own_fork_copy() -> None:
    trace = Trace().mergeable_pages(0, 1, 1, X).fork(0, 1, 2).ksm(RUN_AT, run=1)
    for k in range(1, 10):
        trace.snap(after(k), f"pass{k}")
    r = replay(trace)
    for k in range(1, 10):
        assert r.ksm(f"pass{k}")["pages_shared"] == 0
        assert r.ksm(f"pass{k}")["pages_sharing"] == 0
        assert r.memory(f"pass{k}")["anon_frames"] == 1


def test_fact_6_fork_shared_pages_merge_with_identical_pages() -> None:
    trace = (
        Trace()
        .mergeable_pages(0, 1, 1, X)
        .mergeable_pages(0, 3, 1, X)
        .fork(0, 1, 2)
        .ksm(RUN_AT, run=1)
        .snap(after(3), "merged")
    )
    r = replay(trace)
    k = r.ksm("merged")
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 2)
    for pid in (1, 2, 3):
        assert r.proc("merged", pid)["ksm_merging_pages"] == 1
    assert r.memory("merged")["anon_frames"] == 1


def test_fact_6_fork_child_counters_and_zero_pages() -> None:
    trace = zero_merged(2, merged_x=2).fork(after(2), 1, 2).snap(after(2), "forked")
    r = replay(trace)
    parent = r.proc("merged", 1)
    assert (parent["ksm_zero_pages"], parent["ksm_merging_pages"]) == (2, 2)
    child = r.proc("forked", 2)
    assert (child["ksm_rmap_items"], child["ksm_merging_pages"], child["ksm_zero_pages"]) == (
        0,
        0,
        2,
    )
    assert r.ksm("forked")["ksm_zero_pages"] == 4
    assert child["rss_anon_pages"] == 2
    assert r.memory("forked")["zero_page_maps_by_ksm"] == 4


@pytest.mark.parametrize(
    ("max_sharing", "n", "dups", "shared", "sharing", "unshared"),
    [(2, 10, 5, 5, 5, 0), (3, 10, 3, 3, 6, 1), (256, 600, 3, 3, 597, 0)],
)
def test_fact_7_max_page_sharing(
    max_sharing: int, n: int, dups: int, shared: int, sharing: int, unshared: int
) -> None:
    r = replay(identical_pages(n, max_sharing))
    k = r.ksm("pass2")
    assert k["stable_node_chains"] == 1
    assert k["stable_node_dups"] == dups
    assert (k["pages_shared"], k["pages_sharing"], k["pages_unshared"]) == (
        shared,
        sharing,
        unshared,
    )


def test_fact_7_max_page_sharing_refused_while_shared() -> None:
    trace = example_a().ksm(after(2), max_page_sharing=10).ksm(after(2), max_page_sharing=256)
    r = replay(trace)
    (refusal,) = r.sim.refused
    assert refusal["knob"] == "max_page_sharing"
    assert refusal["value"] == 10
    assert refusal["error"] == "EBUSY"
    assert refusal["event"] == trace.events[-2].index
    assert r.sim.settings["max_page_sharing"] == 256


def test_fact_8_settle_can_end_while_unique_pages_wait() -> None:
    trace = (
        Trace()
        .mergeable_pages(0, 1, 1, X)
        .mergeable_pages(0, 1, 1, Y, page=base(1) + 1)
        .mergeable_pages(0, 1, 1, Z, page=base(1) + 2)
        .ksm(RUN_AT, run=1)
        .settle(RUN_AT)
        .snap(RUN_AT, "settled")
        .snap(RUN_AT + 30 * MS, "pass5")
    )
    r = replay(trace)
    k = r.ksm("settled")
    # Passes 1-2 change the key, passes 3-4 are quiet: settle stops after 4.
    assert k["full_scans"] == 4
    assert (k["pages_unshared"], k["pages_volatile"]) == (3, 0)
    # The 5th encounter of each page is a skip: unshared -> volatile.
    k = r.ksm("pass5")
    assert k["full_scans"] == 5
    assert (k["pages_unshared"], k["pages_volatile"], k["pages_skipped"]) == (0, 3, 3)


@pytest.mark.parametrize("action", ["unmergeable", "free"])
def test_fact_9_ksm_mergeable_turns_no_at_once(action: str) -> None:
    trace = Trace().mergeable_pages(0, 1, 1, X).ksm(RUN_AT, run=1).snap(after(1), "pass1")
    if action == "unmergeable":
        trace.madvise(after(1), 1, base(1), 1, "unmergeable")
    else:
        trace.free(after(1), 1, base(1), 1)
    trace.snap(after(1), "now").snap(after(2), "pass2").snap(after(4), "pass4")
    r = replay(trace)
    assert r.proc("pass1", 1)["ksm_mergeable"] is True
    assert r.proc("now", 1)["ksm_mergeable"] is False
    assert r.proc("now", 1)["ksm_rmap_items"] == 1
    assert r.proc("pass2", 1)["ksm_rmap_items"] == 0
    # Dropped from the list: no more full scans.
    assert r.ksm("pass2")["full_scans"] == 2
    assert r.ksm("pass4")["full_scans"] == 2


def test_fact_9_merge_any_without_mappings_is_dropped_then_comes_back() -> None:
    later = after(3)
    trace = (
        Trace()
        .prctl(0, 1, True)
        .ksm(RUN_AT, run=1)
        .snap(after(1), "pass1")
        .snap(after(3), "idle")
        .alloc(later, 1, base(1), 2)
        .write(later, 1, base(1), 2, X)
        .snap(later, "mapped")
        .snap(later + 30 * MS, "merged")
    )
    r = replay(trace)
    p = r.proc("pass1", 1)
    assert (p["ksm_merge_any"], p["ksm_mergeable"]) == (True, False)
    assert r.ksm("pass1")["full_scans"] == 1
    assert r.ksm("idle")["full_scans"] == 1
    p = r.proc("mapped", 1)
    assert (p["ksm_merge_any"], p["ksm_mergeable"]) == (True, True)
    # The new mapping is mergeable and the mm registered again: two passes merge.
    k = r.ksm("merged")
    assert k["full_scans"] == 3
    assert (k["pages_shared"], k["pages_sharing"]) == (1, 1)


def merged_then_settled() -> Trace:
    """Section 15 A settled at RUN_AT: pass 1 inserts, pass 2 merges, passes 3-4 are quiet."""
    return example_a().settle(RUN_AT).snap(RUN_AT, "merged")


@pytest.mark.parametrize("action", ["unmergeable", "exit"])
def test_settle_runs_the_pass_that_drops_unmergeable_or_exited_processes(action: str) -> None:
    """No live mergeable mapping is left, but both mms are still on ksmd's list."""
    trace = merged_then_settled()
    for pid in (1, 2):
        if action == "unmergeable":
            trace.madvise(RUN_AT, pid, base(pid), 1, "unmergeable")
        else:
            trace.exit(RUN_AT, pid)
    trace.snap(RUN_AT, "before").settle(RUN_AT).snap(RUN_AT, "settled")
    trace.snap(RUN_AT + 100 * MS, "later")
    r = replay(trace)
    assert r.ksm("merged")["full_scans"] == 4
    k = r.ksm("before")
    assert (k["pages_shared"], k["pages_sharing"], k["full_scans"]) == (1, 1, 4)
    k = r.ksm("settled")
    assert (k["pages_shared"], k["pages_sharing"], k["general_profit"]) == (0, 0, 0)
    assert k["full_scans"] == 5  # the one pass that frees the items and drops both mms
    for pid in r.pids("settled"):
        p = r.proc("settled", pid)
        assert (p["ksm_rmap_items"], p["ksm_merging_pages"], p["ksm_process_profit"]) == (0, 0, 0)
    assert r.ksm("later")["full_scans"] == 5  # ksmd waits for work: its list is empty


def test_settle_after_merge_any_on_an_empty_process() -> None:
    trace = (
        Trace()
        .ksm(RUN_AT, run=1)
        .prctl(RUN_AT, 1, True)
        .settle(RUN_AT)
        .snap(RUN_AT, "settled")
        .snap(RUN_AT + 100 * MS, "later")
    )
    r = replay(trace)
    assert r.ksm("settled")["full_scans"] == 1
    assert r.ksm("later")["full_scans"] == 1
    p = r.proc("later", 1)
    assert (p["ksm_merge_any"], p["ksm_mergeable"]) == (True, False)


def test_settle_with_an_empty_list_stops_at_once_and_leaves_ksmd_waiting() -> None:
    """Process 1 exits without rmap_items while ksmd sleeps: the list empties at once."""
    sleep = 200 * MS
    late = RUN_AT + 100 * MS
    trace = (
        Trace()
        .alloc(0, 1, base(1), 1)
        .madvise(0, 1, base(1), 1, "mergeable")  # mergeable, no page: no item
        .ksm(RUN_AT, run=1, sleep_millisecs=200)
        .snap(RUN_AT + 50 * MS, "one pass")
        .exit(RUN_AT + 50 * MS, 1)
        .settle(RUN_AT + 50 * MS)
        .snap(RUN_AT + 50 * MS, "settled")
        .mergeable_pages(late, 2, 1, X)
        .snap(late + 10 * MS, "registered")
    )
    r = replay(trace)
    assert r.ksm("one pass")["full_scans"] == 1
    assert r.ksm("settled")["full_scans"] == 1
    # Registering wakes the waiting ksmd at once, well before its old timer.
    assert late + 10 * MS < RUN_AT + sleep
    assert r.ksm("registered")["full_scans"] == 2
    assert r.rmap_items("registered") == 1


def run2_setup() -> Trace:
    """Process 1: two pages of X merged and two zero pages mapped to the zero page."""
    return zero_merged(2, merged_x=2).ksm(after(2), run=2).snap(after(2), "stopped")


def test_fact_10_run_2_zeroes_everything_at_once() -> None:
    trace = run2_setup().ksm(after(2) + 100 * MS, run=1).snap(after(2) + 130 * MS, "again")
    r = replay(trace)
    k = r.ksm("merged")
    assert (k["pages_shared"], k["pages_sharing"], k["ksm_zero_pages"]) == (1, 1, 2)
    assert r.proc("merged", 1)["rss_anon_pages"] == 2
    k = r.ksm("stopped")
    for name in (
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
        "pages_volatile",
        "full_scans",
        "stable_node_chains",
        "stable_node_dups",
        "ksm_zero_pages",
        "general_profit",
    ):
        assert k[name] == 0, name
    assert k["pages_scanned"] == r.ksm("merged")["pages_scanned"]
    p = r.proc("stopped", 1)
    assert (p["ksm_rmap_items"], p["ksm_merging_pages"], p["ksm_zero_pages"]) == (0, 0, 0)
    assert p["rss_anon_pages"] == 4
    assert p["ksm_mergeable"] is True
    assert r.memory("stopped")["ksm_frames"] == 0
    assert r.events("stopped")["unshared_by_unmerge"] == 2
    assert r.events("stopped")["zero_pages_unshared"] == 2
    # run=1 merges again from scratch (two passes).
    k = r.ksm("again")
    assert k["full_scans"] == 2
    assert (k["pages_shared"], k["pages_sharing"], k["ksm_zero_pages"]) == (1, 1, 2)


def test_run_2_legacy_leaves_zero_pages_mapped() -> None:
    r = replay(run2_setup(), "legacy")
    p = r.proc("stopped", 1)
    assert p["rss_anon_pages"] == 2
    assert p["ksm_rmap_items"] == 0
    assert r.memory("stopped")["zero_page_maps_by_ksm"] == 2
    assert r.events("stopped")["zero_pages_unshared"] == 0
    assert r.ksm("stopped")["pages_shared"] == 0


# ---------------------------------------------------------------------------
# Rules of sections 4, 11 and 12
# ---------------------------------------------------------------------------


def test_pass_of_n_visits_takes_n_div_p_plus_one_batches() -> None:
    trace = (
        Trace()
        .ksm(0, pages_to_scan=5)
        .mergeable_pages(0, 1, 10, X)
        .write(0, 1, base(1), 10, 0)  # unique contents below
    )
    for i in range(10):
        trace.write(0, 1, base(1) + i, 1, 0x100 + i)
    trace.ksm(RUN_AT, run=1).snap(after(2), "two batches").snap(after(3), "three batches")
    r = replay(trace)
    k = r.ksm("two batches")
    assert (k["pages_scanned"], k["full_scans"]) == (10, 0)
    k = r.ksm("three batches")
    assert (k["pages_scanned"], k["full_scans"]) == (10, 1)


def test_pages_to_scan_refused_under_the_advisor() -> None:
    trace = (
        Trace()
        .ksm(0, advisor_mode="scan-time")
        .snap(0, "on")
        .ksm(0, pages_to_scan=42)
        .ksm(0, advisor_mode="none")
        .snap(0, "off")
    )
    r = replay(trace)
    (refusal,) = r.sim.refused
    assert (refusal["knob"], refusal["value"], refusal["error"]) == ("pages_to_scan", 42, "EINVAL")
    assert r.sim.settings["pages_to_scan"] == 100


def test_scan_time_advisor_first_evaluations() -> None:
    # Small workload: scan_time clamps to 1 s and cpu_percent to 1.
    # Pass 1: factor 20000, change ewma(0, 100) = 30, pages 500*100/20000*30/100 = 0,
    # per_page_cost 500 -> max(0, 5000) = 5000.
    # Pass 2: change ewma(30, 100) = 51, pages 25*51/100 = 12, per_page_cost 5000
    # -> max(12, 50000) -> min(50000, 30000) = 30000.
    trace = (
        Trace()
        .ksm(0, advisor_mode="scan-time")
        .mergeable_pages(0, 1, 2, X)
        .ksm(RUN_AT, run=1)
        .snap(after(1), "pass1")
    )
    sim = ReferenceSimulator("unshare", PAGE)
    for event in trace.events:
        sim.apply(event)
        sim.check_invariants()
    assert sim.settings["pages_to_scan"] == 5000
    sim.apply(ev.Snapshot(index=99, t=after(2), label="pass2"))
    assert sim.settings["pages_to_scan"] == 30000


def test_unstable_partner_changed_since_insertion_aborts() -> None:
    # KSM_MODEL.md (dictionaries, b and c): if the unstable entry's page no
    # longer holds X, the current page is neither merged nor inserted (stays
    # volatile).  One visit per batch
    # (pages_to_scan 1), so process 1 can write between the two visits of pass 2:
    # wake-ups every 24 ms (20 ms and one jiffy) at 1, 25, 49 (pass 1 closes),
    # 73 (visit 1), 97 (visit 2), 121 ms (pass 2 closes).
    trace = (
        Trace()
        .ksm(0, pages_to_scan=1)
        .mergeable_pages(0, 1, 1, X)
        .mergeable_pages(0, 2, 1, X)
        .ksm(RUN_AT, run=1)
        .snap(85 * MS, "inserted")
        .write(85 * MS, 1, base(1), 1, Y)
        .snap(131 * MS, "aborted")
    )
    r = replay(trace)
    k = r.ksm("inserted")
    assert (k["full_scans"], k["pages_unshared"], k["pages_volatile"]) == (1, 1, 1)
    k = r.ksm("aborted")
    assert k["full_scans"] == 2
    assert (k["pages_shared"], k["pages_unshared"], k["pages_volatile"]) == (0, 1, 1)
    assert r.events("aborted")["merges"] == 0
