"""ksmd's clock against the live kernel: the timed scenarios of ``tests/scenarios/timed``.

Each ``NAME.jsonl`` runs ksmd in trace time (no ``settle``) and takes
snapshots at set times, so what they show depends on how fast ksmd goes:
its sleeps (``sleep_millisecs`` 0, 1, 4, 20, 100), how many batches a pass
takes (pass lengths just under, at and just over a multiple of
``pages_to_scan``), what the batches cost (smart_scan on and off, the
scan-time advisor).  The live kernel is noisy, so each answer,
``NAME.kernel-spread.json``, is a spread over many live replays (recorded by
``tests/record_kernel.py tests/scenarios/timed --spread 20``): the
simulator's ``full_scans`` and ``pages_scanned`` at every snapshot must fall
inside the 10th-90th percentile range of the live values.
"""

from __future__ import annotations

import itertools
import statistics
import sys

import pytest
from kernel_answer import (
    SPREAD_COUNTERS,
    load_spread,
    outside_spread,
    replay_file,
    run_of,
)
from reference import ReferenceSimulator
from testdata import TIMED_DIR

from ksmreplay.engine import Engine
from ksmreplay.timing import CPU_SHARE_PERCENT
from ksmreplay.trace import open_trace
from ksmreplay.trace.events import Snapshot

TIMED = TIMED_DIR
NAMES = sorted(p.name[: -len(".jsonl")] for p in TIMED.glob("*.jsonl"))
RUNS = 20
"""Live replays a recorded spread must hold, at least."""


def test_every_timed_scenario_has_its_spread() -> None:
    spreads = sorted(
        p.name[: -len(".kernel-spread.json")] for p in TIMED.glob("*.kernel-spread.json")
    )
    assert len(NAMES) >= 12
    assert spreads == NAMES


def test_the_script_writes_these_traces() -> None:
    sys.path.insert(0, str(TIMED))
    try:
        import make_timed
    finally:
        sys.path.remove(str(TIMED))
    assert sorted(make_timed.SCENARIOS) == NAMES
    for name in NAMES:
        assert (TIMED / f"{name}.jsonl").read_text() == make_timed.text(name), name


@pytest.mark.parametrize("name", NAMES)
def test_spread_is_of_this_trace(name: str) -> None:
    # GIVEN the recorded spread of a timed scenario
    spread = load_spread(TIMED / f"{name}.kernel-spread.json")
    with open_trace(str(TIMED / f"{name}.jsonl")) as reader:
        snapshots = [(e.label, e.t) for e in reader if getattr(e, "op", "") == "snapshot"]
    # THEN it holds every snapshot of the trace, many runs each, in order
    assert spread["trace"] == f"{name}.jsonl"
    assert spread["runs"] >= RUNS
    assert [(s["label"], s["t"]) for s in spread["snapshots"]] == snapshots
    for snap in spread["snapshots"]:
        for counter in SPREAD_COUNTERS:
            r = snap[counter]
            assert len(r["values"]) == spread["runs"]
            assert min(r["values"]) <= r["p10"] <= r["median"] <= r["p90"] <= max(r["values"])


TOO_SLOW: dict[str, str] = {}
"""Scenarios whose replay is known to fall outside the recorded spread, and why."""


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=TOO_SLOW[n], strict=True))
        if n in TOO_SLOW
        else n
        for n in NAMES
    ],
)
def test_replay_falls_inside_the_live_spread(name: str) -> None:
    spread = load_spread(TIMED / f"{name}.kernel-spread.json")
    simulated = run_of(replay_file(TIMED / f"{name}.jsonl", ["unshare"]), "unshare")
    outside = outside_spread(spread["snapshots"], simulated)
    assert not outside, f"{name}:\n  " + "\n  ".join(outside)


def test_the_cpu_share_is_the_one_recorded() -> None:
    # GIVEN ksmd's CPU time at every snapshot of the runs of the scenarios in
    # which it never sleeps (sleep_millisecs 0), recorded with the spreads
    shares = []
    for name in NAMES:
        if not name.startswith("sleep0_"):
            continue
        spread = load_spread(TIMED / f"{name}.kernel-spread.json")
        snaps = spread["snapshots"]
        for a, b in itertools.pairwise(snaps):
            cpu = zip(a["ksmd_cpu_ns"]["values"], b["ksmd_cpu_ns"]["values"], strict=True)
            shares += [(y - x) / (b["t"] - a["t"]) for x, y in cpu]
    # THEN the model's share of a CPU is their median (CPU time over trace time)
    assert len(shares) >= 100
    assert round(100 * statistics.median(shares)) == CPU_SHARE_PERCENT


@pytest.mark.parametrize("name", [n for n in NAMES if "n1000" not in n and "advisor" not in n])
def test_the_reference_model_keeps_the_same_clock(name: str) -> None:
    # GIVEN a timed scenario (not the largest: the reference is slow)
    with open_trace(str(TIMED / f"{name}.jsonl")) as reader:
        events = list(reader)
    engine, reference = Engine("unshare", 4096), ReferenceSimulator("unshare", 4096)
    # WHEN both replay it THEN every snapshot is the same: the same batches,
    # priced alike, wake ksmd at the same times
    for event in events:
        engine.apply(event)
        reference.apply(event)
        if isinstance(event, Snapshot):
            mine = engine.snapshot(event.label, event.t, event.index)
            assert mine == reference.snapshot(event.label, event.t, event.index), event.label
