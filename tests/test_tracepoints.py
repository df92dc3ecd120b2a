"""KSM tracepoints (``run --tracepoints``, ``exec --tracepoints``; ``ksmreplay/tracepoints.py``).

GIVEN a trace replayed with tracepoints, THEN the engine (scalar ksmd and
native core alike) emits the events the reference model emits, in the same
order with the same fields and times; every scenario of the differential
suite gives, per full scan, the events the live kernel gave
(``tests/scenarios/NAME.kernel-tracepoints.json``, recorded by
``tests/record_kernel.py tests/scenarios --tracepoints``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kernel_answer import (
    load_tracepoints,
    recorded_names,
    tracepoint_differences,
    tracepoint_scans,
)
from randtrace import large_random_trace, long_gaps, random_trace
from reference import ReferenceSimulator
from support import counted
from testdata import SCENARIOS_DIR

from ksmreplay.cli import cli
from ksmreplay.engine import Engine
from ksmreplay.live import tracefs
from ksmreplay.replay import replay
from ksmreplay.trace import open_trace
from ksmreplay.trace.events import Event


def _events(sim: Engine | ReferenceSimulator, events: list[Event]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sim.trace(out.append)
    for event in events:
        sim.apply(event)
    return out


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize("mode", ["unshare", "legacy"])
@pytest.mark.parametrize("seed", range(12))
def test_engine_events_match_reference(seed: int, mode: str) -> None:
    """GIVEN a random trace WHEN the engine and the reference replay it with
    tracepoints THEN both emit the same events (every field, the time too)."""
    events = list(random_trace(seed, n_events=90))
    mine = _events(Engine(mode, 4096), events)
    theirs = _events(ReferenceSimulator(mode, 4096), events)
    assert mine == theirs, f"seed {seed}, {mode}"


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize("seed", [0])
def test_engine_events_match_reference_on_large_traces(seed: int) -> None:
    """Multi-chunk windows, many contents: the native core's merges and its hand-backs."""
    events = list(large_random_trace(seed))
    mine = _events(Engine("unshare", 4096), events)
    theirs = _events(ReferenceSimulator("unshare", 4096), events)
    assert len(mine) > 100
    assert mine == theirs, f"seed {seed}"


@pytest.mark.parametrize("seed", range(6))
def test_engine_events_match_reference_on_6_1(seed: int) -> None:
    """6.1's visit order (the stable tree before the checksum)."""
    events = list(random_trace(seed, n_events=90))
    mine = _events(Engine("legacy", 4096, kernel_version="6.1"), events)
    theirs = _events(ReferenceSimulator("legacy", 4096, kernel="6.1"), events)
    assert mine == theirs, f"seed {seed}"


SCENARIOS = SCENARIOS_DIR
RECORDED = sorted(
    p.name[: -len(".kernel-tracepoints.json")] for p in SCENARIOS.glob("*.kernel-tracepoints.json")
)


def test_every_scenario_has_its_tracepoints_recorded() -> None:
    assert recorded_names(SCENARIOS) == RECORDED


@pytest.mark.parametrize("name", RECORDED)
def test_scenario_tracepoints_match_the_kernels(name: str) -> None:
    """GIVEN a scenario of the differential suite WHEN the simulator replays it
    (unshare, Linux 6.18) with tracepoints THEN every full scan has as many
    events of each kind as the live kernel's had, and the same events where the
    kernel's could be named (``kernel_answer.tracepoint_differences``)."""
    recorded = load_tracepoints(SCENARIOS / f"{name}.kernel-tracepoints.json")
    events: list[dict[str, Any]] = []
    with open_trace(str(SCENARIOS / f"{name}.jsonl")) as reader:
        replay(reader, ["unshare"], tracepoints=events.append)
    differences = tracepoint_differences(recorded, tracepoint_scans(events))
    assert not differences, f"{name}:\n  " + "\n  ".join(differences)


@pytest.mark.usefixtures("both_engines")
def test_skipped_circles_emit_what_running_them_emits() -> None:
    """GIVEN traces whose gaps hold hundreds of idle passes WHEN the engine
    skips ksmd's circles (``engine._Circles``) THEN its events are those of an
    engine that runs every wake-up: the skipped passes' events, times and
    ``seq`` included."""
    jumps = 0
    for seed in (1, 6, 7):  # sleep_millisecs 0, 10; the scan-time advisor
        events = long_gaps(seed)
        skipping, every = Engine("unshare", 4096), Engine("unshare", 4096)
        every.skip_idle = False
        calls = counted(skipping, "jump")
        assert _events(skipping, events) == _events(every, events), f"seed {seed}"
        jumps += calls[0]
    assert jumps


# -- exec: the kernel's events, read and named (live/tracefs.py) -----------------------

KERNEL_LINES = """\
 ksmreplay-worke-1001   [000] ..... 47289.128733: ksm_enter: mm 00000000000000a1
 ksmreplay-worke-1002   [000] ..... 47289.128740: ksm_enter: mm 00000000000000a2
            ksmd-39      [001] ..... 47289.135177: ksm_start_scan: seq 7 rmap size 3
            ksmd-39      [001] ..... 47289.139398: ksm_merge_with_ksm_page: pfn 500 \
rmap_item 00000000000000b1 mm 00000000000000a2 error 0
            ksmd-39      [001] ..... 47289.139399: ksm_merge_with_ksm_page: ksm pfn 500 \
rmap_item 00000000000000b2 mm 00000000000000a1 error 0
            ksmd-39      [001] ..... 47289.139412: ksm_merge_one_page: ksm pfn 9 \
rmap_item 00000000000000b3 mm 00000000000000a1 error -14
            ksmd-39      [001] ..... 47289.139500: ksm_stop_scan: seq 7 rmap size 3
          python-29598   [001] ..... 47289.173300: ksm_remove_rmap_item: pfn 500 \
rmap_item 00000000000000b2 mm 00000000000000a1
          python-29598   [001] ..... 47289.173366: ksm_remove_ksm_page: pfn 500
            ksmd-39      [001] ..... 47289.173400: ksm_advisor: ksm scan time 3 \
pages_to_scan 500 cpu percent 12
"""


def test_kernel_lines_are_parsed() -> None:
    """GIVEN trace_pipe lines as Linux prints the KSM events (TP_printk of
    include/trace/events/ksm.h) THEN each becomes its event, fields by name."""
    raw = [tracefs.parse_line(line) for line in KERNEL_LINES.replace("\\\n", "").splitlines()]
    assert [r.name if r else None for r in raw] == [
        "ksm_enter",
        "ksm_enter",
        "ksm_start_scan",
        "ksm_merge_with_ksm_page",
        "ksm_merge_with_ksm_page",
        "ksm_merge_one_page",
        "ksm_stop_scan",
        "ksm_remove_rmap_item",
        "ksm_remove_ksm_page",
        "ksm_advisor",
    ]
    assert raw[0] == tracefs.RawEvent(1001, 47289128733000, "ksm_enter", {"mm": "00000000000000a1"})
    assert raw[2] is not None and raw[2].fields == {"seq": 7, "rmap_entries": 3}
    assert raw[3] is not None and raw[3].fields == {
        "ksm_page": False,
        "pfn": 500,
        "rmap_item": "00000000000000b1",
        "mm": "00000000000000a2",
        "err": 0,
    }
    assert raw[4] is not None and raw[4].fields["ksm_page"] is True
    assert raw[5] is not None and raw[5].fields["err"] == -14
    assert raw[9] is not None and raw[9].fields == {
        "scan_time": 3,
        "pages_to_scan": 500,
        "cpu_percent": 12,
    }
    assert tracefs.parse_line("# tracer: nop") is None
    assert tracefs.parse_line("CPU:1 [LOST 3 EVENTS]") is None


def test_kernel_events_are_named_as_the_simulator_names_them() -> None:
    """GIVEN the kernel's events of a pair merge and a zero-page merge, the
    workers of trace pids 1 and 2, and the page tables before and after
    WHEN they are mapped THEN mm pointers are pids, frames the page that
    became the KSM page, and items their pages (the partner's and the zero
    page's found in the page tables); what cannot be named stays as the kernel
    gave it."""
    out: list[dict[str, Any]] = []
    mapper = tracefs.Mapper(out.append, "unshare", "6.18.0", 4096, zero_pfn=9)
    mapper.worker(1001, 1)
    mapper.worker(1002, 2)
    a, k = tracefs.ANON, tracefs.KSM
    # page 16 of pid 2 holds frame 500, page 16 of pid 1 frame 400, pages 17, 18 of pid 1 zeros
    mapper.look({(1, 16): (a, 400), (1, 17): (a, 401), (1, 18): (a, 402), (2, 16): (a, 500)})
    lines = KERNEL_LINES.replace("\\\n", "").splitlines()
    raw = [tracefs.parse_line(line) for line in lines]
    mapper.events([r for r in raw if r is not None], lambda ts: 5)
    assert out == []  # (they wait for the next look)
    zero = tracefs.KSM_ZERO
    mapper.look({(1, 16): (k, 500), (1, 17): (zero, 9), (1, 18): (a, 402), (2, 16): (k, 500)})
    head = {"t": 5, "mode": "unshare", "kernel": "6.18.0"}
    kpage = {"pid": 2, "addr": 65536}
    assert out == [
        {**head, "event": "ksm_enter", "mm": 1},
        {**head, "event": "ksm_enter", "mm": 2},
        {**head, "event": "ksm_start_scan", "seq": 7, "rmap_entries": 3},
        {
            **head,
            "event": "ksm_merge_with_ksm_page",
            "ksm_page": None,
            "pfn": kpage,
            "rmap_item": 65536,
            "mm": 2,
            "err": 0,
        },
        {
            **head,
            "event": "ksm_merge_with_ksm_page",
            "ksm_page": kpage,
            "pfn": kpage,
            "rmap_item": 65536,
            "mm": 1,
            "err": 0,
        },
        {
            **head,
            "event": "ksm_merge_one_page",
            "pfn": "zero",
            "rmap_item": 69632,
            "mm": 1,
            "err": -14,
        },
        {**head, "event": "ksm_stop_scan", "seq": 7, "rmap_entries": 3},
        {**head, "event": "ksm_remove_rmap_item", "pfn": kpage, "rmap_item": 65536, "mm": 1},
        {**head, "event": "ksm_remove_ksm_page", "pfn": kpage},
        {**head, "event": "ksm_advisor", "scan_time": 3, "pages_to_scan": 500, "cpu_percent": 12},
    ]
    # A frame never seen, an mm never entered: the kernel's values.
    unknown = tracefs.parse_line(
        "ksmd-39 [001] ..... 1.000001: ksm_remove_rmap_item: pfn 77 rmap_item 0000000c mm 0000000d"
    )
    assert unknown is not None
    mapper.events([unknown], lambda ts: 6)
    mapper.flush()
    assert out[-1] == {
        **head,
        "t": 6,
        "event": "ksm_remove_rmap_item",
        "pfn": 77,
        "rmap_item": "0000000c",
        "mm": "0000000d",
    }


def test_a_fork_childs_enter_is_the_childs() -> None:
    """``ksm_fork()`` runs in the parent: its ksm_enter names the child's mm."""
    out: list[dict[str, Any]] = []
    mapper = tracefs.Mapper(out.append, "unshare", "6.18.0", 4096, zero_pfn=9)
    mapper.worker(1001, 1)
    enter = [tracefs.RawEvent(1001, 0, "ksm_enter", {"mm": "a1"})]
    mapper.events(enter, lambda ts: 0)
    mapper.fork((1, 3))
    mapper.events([tracefs.RawEvent(1001, 0, "ksm_enter", {"mm": "a3"})], lambda ts: 0)
    mapper.fork(None)
    mapper.events([tracefs.RawEvent(77, 0, "ksm_exit", {"mm": "a3"})], lambda ts: 0)
    mapper.events([tracefs.RawEvent(77, 0, "ksm_enter", {"mm": "f0"})], lambda ts: 0)  # not ours
    mapper.flush()
    assert [(e["event"], e["mm"]) for e in out] == [
        ("ksm_enter", 1),
        ("ksm_enter", 3),
        ("ksm_exit", 3),
    ]


# -- the command line ------------------------------------------------------------------

PAIR = SCENARIOS / "example_a_pair_merge.jsonl"


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_run_writes_the_events_a_line_each(tmp_path: Path) -> None:
    """GIVEN run --tracepoints FILE WHEN two modes replay THEN FILE has every
    event of both runs, one JSON object a line, named by mode and kernel, and
    the report is as without it."""
    out = tmp_path / "events.jsonl"
    plain = _cli("run", str(PAIR), "--format", "json")
    traced = _cli("run", str(PAIR), "--format", "json", "--tracepoints", str(out))
    assert (traced.exit_code, traced.output) == (0, plain.output)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(e["mode"], e["kernel"]) for e in lines} == {("legacy", "6.18"), ("unshare", "6.18")}
    unshare = [e for e in lines if e["mode"] == "unshare"]
    assert [e["event"] for e in unshare].count("ksm_stop_scan") == 4
    assert [e for e in unshare if e["event"] == "ksm_merge_with_ksm_page"] == [
        {
            "t": 0,
            "mode": "unshare",
            "kernel": "6.18",
            "event": "ksm_merge_with_ksm_page",
            "ksm_page": None,
            "pfn": {"pid": 2, "addr": 65536},
            "rmap_item": 65536,
            "mm": 2,
            "err": 0,
        },
        {
            "t": 0,
            "mode": "unshare",
            "kernel": "6.18",
            "event": "ksm_merge_with_ksm_page",
            "ksm_page": {"pid": 2, "addr": 65536},
            "pfn": {"pid": 2, "addr": 65536},
            "rmap_item": 65536,
            "mm": 1,
            "err": 0,
        },
    ]


def test_filter_by_event_and_pid(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = _cli(
        "run", str(PAIR), "--mode", "unshare", "-o", str(tmp_path / "report"),
        "--tracepoints", str(out),
        "--tracepoints-filter", "ksm_enter,ksm_merge_with_ksm_page",
        "--tracepoints-filter", "pid=1",
    )  # fmt: skip
    assert result.exit_code == 0
    kept = [(e["event"], e["mm"]) for e in map(json.loads, out.read_text().splitlines())]
    assert kept == [("ksm_enter", 1), ("ksm_merge_with_ksm_page", 1)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tracepoints-filter", "ksm_enter"], "--tracepoints-filter needs --tracepoints FILE"),
        (["--tracepoints", "x", "--tracepoints-filter", "ksm_merge"], "unknown event 'ksm_merge'"),
        (["--tracepoints", "x", "--tracepoints-filter", "pid=1,x"], "'x' is not a pid"),
        (["--tracepoints", "-"], "--tracepoints - needs the report elsewhere (-o FILE)"),
    ],
)
def test_bad_tracepoint_options_are_usage_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    args = [str(tmp_path / "x") if a == "x" else a for a in args]
    result = CliRunner().invoke(cli, ["run", str(PAIR), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x").exists()


def test_exec_reads_no_guests_tracepoints() -> None:
    result = CliRunner().invoke(
        cli, ["exec", str(PAIR), "--kernel-image", "bzImage", "--tracepoints", "x"]
    )
    assert result.exit_code == 2
    assert "--tracepoints reads this machine's kernel" in result.output
