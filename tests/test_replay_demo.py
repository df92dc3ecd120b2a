"""The bundled demo trace: up to date, valid, small, and telling."""

from __future__ import annotations

import importlib.util
import io
import runpy
from pathlib import Path

import pytest

from ksmreplay.render import render_table
from ksmreplay.replay import replay
from ksmreplay.report import Report
from ksmreplay.trace import open_trace, read_trace
from ksmreplay.trace.events import Madvise, Settle, Snapshot, Write

TRACES = Path(__file__).resolve().parents[1] / "traces"
DEMO = TRACES / "demo.msgpack"
_HAVE_INVARIANTS = importlib.util.find_spec("ksmreplay.invariants") is not None


def test_bundled_demo_is_what_the_generator_writes() -> None:
    build = runpy.run_path(str(TRACES / "make_demo.py"))["build"]
    assert DEMO.read_bytes() == build(), "run: python traces/make_demo.py"


def test_demo_is_small_and_valid() -> None:
    assert DEMO.stat().st_size < 100_000
    header, events = read_trace(str(DEMO))
    assert header.page_size == 4096
    ops = [e.op for e in events]
    # the story the README tells: settle, snapshot, unmerge, writes, settle
    assert isinstance(events[ops.index("snapshot")], Snapshot)
    after = events[ops.index("snapshot") + 1 :]
    assert isinstance(after[0], Madvise) and after[0].advice == "unmergeable"
    assert [type(e) for e in after[1:]] == [Write, Write, Settle]


@pytest.mark.skipif(
    importlib.util.find_spec("ksmreplay.engine") is None, reason="the engine is not there yet"
)
def test_demo_shows_legacy_and_unshare_apart() -> None:
    # GIVEN the demo WHEN replayed in both modes
    with open_trace(str(DEMO)) as reader:
        report = replay(reader, ["legacy", "unshare"], check_invariants=_HAVE_INVARIANTS)
    legacy, unshare = (run["final"] for run in report["runs"])
    # THEN only the unshare mode counts zero pages KSM placed
    assert legacy["ksm"]["ksm_zero_pages"] is None
    assert unshare["ksm"]["ksm_zero_pages"] > 0
    # and unmerging pid 2 turned its zero pages into private pages only in unshare
    assert legacy["events"]["zero_pages_unshared"] == 0
    assert unshare["events"]["zero_pages_unshared"] > 0
    rss = {
        run["mode"]: {p["pid"]: p["rss_anon_pages"] for p in run["final"]["processes"]}
        for run in report["runs"]
    }
    assert rss["unshare"][2] > rss["legacy"][2]
    assert legacy["memory"]["zero_page_maps_by_ksm"] > unshare["memory"]["zero_page_maps_by_ksm"]
    # the writes after the snapshot broke one KSM page and one KSM zero page in both modes
    for final in (legacy, unshare):
        assert final["events"]["cow_breaks_ksm"] >= 1
        assert final["events"]["cow_breaks_zero"] >= 1
    assert "difference" in _table(report)


def _table(report: Report) -> str:
    out = io.StringIO()
    render_table(report, out)
    return out.getvalue()
