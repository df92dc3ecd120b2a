"""The answer sections of the report: ``summary``, ``ksmd``, ``milestones`` and ``--every``.

REPORT_FORMAT.md, section "Additions", defines them; these tests check the
definitions on every trace the repository holds, on small traces whose
answers are worked out by hand below, and ``--every`` against the same
trace with the snapshot events written into it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner
from reference import ReferenceSimulator
from support import check_summary, milestones, percent, quick, replay_path
from testdata import data_traces

from ksmreplay.cli import cli
from ksmreplay.engine import Engine
from ksmreplay.replay import MODES
from ksmreplay.trace import open_trace
from ksmreplay.trace.events import WriteRun
from ksmreplay.vm import memory as memory_module

ROOT = Path(__file__).resolve().parents[1]
TRACES = sorted(
    [
        *quick((ROOT / "traces").rglob("*.msgpack")),
        *(ROOT / "traces").rglob("*.jsonl"),
        *data_traces(),
    ]
)
PAGE = 4096
SECOND = 1_000_000_000


@pytest.mark.parametrize("path", TRACES, ids=[str(p.relative_to(ROOT)) for p in TRACES])
def test_summary_identities_hold_in_every_snapshot(path: Path) -> None:
    # GIVEN any trace of the repository WHEN replayed in every mode
    report = replay_path(path)
    page_size = report["trace"]["page_size"]
    for run in report["runs"]:
        snaps: list[dict[str, Any]] = [*run["snapshots"]]  # type: ignore[list-item]
        # THEN every snapshot's summary follows from its counters
        for snap in [*snaps, run["final"]]:
            check_summary(snap, page_size)  # type: ignore[arg-type]
        # AND the run's ksmd and milestones follow from its snapshots
        ksmd = run["ksmd"]
        assert ksmd["visits"] == run["final"]["ksm"]["pages_scanned"]
        duration = report["trace"]["duration_ns"]
        assert ksmd["cpu_percent"] == percent(ksmd["cpu_ns"], duration, 0.0)
        assert run["milestones"] == milestones(snaps)


def _trace(tmp_path: Path, events: list[list[Any]], name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    lines = [json.dumps({"ksmreplay": 1, "page_size": PAGE})] + [json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n")
    return path


A, B, C, D = 0xA, 0xB, 0xC, 0xD
BASE = 0x100000


def _three_processes(use_zero_pages: int) -> list[list[Any]]:
    """Three processes of four pages; 1 and 2 mergeable, 3 not:

    ====  =============  ==========
    pid   contents       mergeable
    ====  =============  ==========
    1     A  B  0  0     yes
    2     A  A  C  0     yes
    3     A  B  D  0     no
    ====  =============  ==========

    ``before`` is taken with ksmd stopped, ``after`` once ksmd settled,
    ``switched`` just after use_zero_pages was flipped.
    """
    knobs = {"pages_to_scan": 1000, "use_zero_pages": use_zero_pages}
    events: list[list[Any]] = [[0, "ksm", knobs]]
    for pid, contents in ((1, [A, B, 0, 0]), (2, [A, A, C, 0]), (3, [A, B, D, 0])):
        events.append([0, "alloc", pid, BASE, 4 * PAGE])
        events.append([0, "write", pid, BASE, 4 * PAGE, contents])
        if pid != 3:
            events.append([0, "madvise", pid, BASE, 4 * PAGE, "mergeable"])
    events.append([0, "snapshot", "before"])
    events.append([1000, "ksm", {"run": 1}])
    events.append([1000, "settle"])
    events.append([1000, "snapshot", "after"])
    # (ksmd's next wake-up is 24 ms later: nothing runs before this)
    events.append([2000, "ksm", {"use_zero_pages": 1 - use_zero_pages}])
    events.append([2000, "snapshot", "switched"])
    return events


# Worked out by hand from the table above (pages of 4096 bytes):
#
# before, either setting: 12 private pages, 12 frames: nothing saved.  The
#   ideal keeps pid 3's four pages (not mergeable), one frame for each of
#   A, B, C among pids 1 and 2, and, with use_zero_pages=0, one for their
#   zero-filled pages: 4 + 3 + 1 = 8 frames (7 with use_zero_pages=1).
# after, use_zero_pages=0: A (3 pages) and the zeros (3 pages) become one KSM
#   page each; B and C stay: 4 frames, plus pid 3's 4 = 8; still 12 pages
#   mapped: 4 saved, as many as the ideal.
# after, use_zero_pages=1: the zeros map the zero page (3 maps, no frame,
#   still counted as resident without KSM): 1 + 2 + 4 = 7 frames, 5 saved.
# switched, use_zero_pages flipped with nothing else changed: from 0 to 1, the
#   ideal no longer needs a frame for the zeros (7 frames, 5 to save, 4 of
#   them saved: 80 %); from 1 to 0 it needs one for the zero pages KSM
#   placed: 8 frames, 4 to save, 5 saved: 125 %.
HAND = {
    (0, "before"): (12, 12, 0, 0.0, 8, 4, 0.0),
    (0, "after"): (12, 8, 4, 33.33, 8, 4, 100.0),
    (0, "switched"): (12, 8, 4, 33.33, 7, 5, 80.0),
    (1, "before"): (12, 12, 0, 0.0, 7, 5, 0.0),
    (1, "after"): (12, 7, 5, 41.67, 7, 5, 100.0),
    (1, "switched"): (12, 7, 5, 41.67, 8, 4, 125.0),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_zero_pages", [0, 1])
def test_summary_of_three_processes_worked_out_by_hand(
    tmp_path: Path, use_zero_pages: int, mode: str
) -> None:
    report = replay_path(_trace(tmp_path, _three_processes(use_zero_pages)), (mode,))
    (run,) = report["runs"]
    assert [s["label"] for s in run["snapshots"]] == ["before", "after", "switched"]
    for snap in run["snapshots"]:
        without, with_ksm, saved, percent, ideal, ideal_saved, of_ideal = HAND[
            use_zero_pages, snap["label"]
        ]
        assert snap["summary"] == {
            "resident_without_ksm": without,
            "resident_with_ksm": with_ksm,
            "saved_pages": saved,
            "saved_bytes": saved * PAGE,
            "saved_percent": percent,
            "ideal_frames": ideal,
            "ideal_saved_pages": ideal_saved,
            "percent_of_ideal": of_ideal,
        }, snap["label"]


def test_fault_zero_pages_are_not_resident_and_unmergeable_pages_count_once_each(
    tmp_path: Path,
) -> None:
    # GIVEN pid 1 reading 3 pages (zero page by fault) and writing 2 of one
    # content; pid 2, not mergeable, writing 2 pages of that content too
    events: list[list[Any]] = [
        [0, "alloc", 1, BASE, 8 * PAGE],
        [0, "madvise", 1, BASE, 8 * PAGE, "mergeable"],
        [0, "read", 1, BASE, 3 * PAGE],
        [0, "write", 1, BASE + 4 * PAGE, 2 * PAGE, A],
        [0, "alloc", 2, BASE, 2 * PAGE],
        [0, "write", 2, BASE, 2 * PAGE, A],
        [0, "snapshot", "s"],
    ]
    report = replay_path(_trace(tmp_path, events), ("unshare",))
    summary = report["runs"][0]["snapshots"][0]["summary"]
    # THEN 4 pages are resident; the ideal is pid 2's 2 pages and one frame for A
    assert summary["resident_without_ksm"] == 4
    assert summary["ideal_frames"] == 3
    assert summary["ideal_saved_pages"] == 1
    assert summary["percent_of_ideal"] == 0.0


def _staged() -> list[list[Any]]:
    """Two processes of ten pages whose savings come in three steps:
    0 pages at t=0, 5 at 1 s, 9 at 2 s, 10 at 3 s (each step settled)."""
    pages = 10 * PAGE
    # (smart_scan off: a settle must not stop while old pages are being skipped)
    events: list[list[Any]] = [[0, "ksm", {"run": 1, "pages_to_scan": 1000, "smart_scan": 0}]]
    for pid in (1, 2):
        events.append([0, "alloc", pid, BASE, pages])
        events.append([0, "madvise", pid, BASE, pages, "mergeable"])
    events.append([0, "snapshot", "empty"])
    own = [0x100 + i for i in range(10)]
    events.append([SECOND, "write", 1, BASE, pages, list(range(1, 11))])
    events.append([SECOND, "write", 2, BASE, pages, list(range(1, 6)) + own[5:]])
    events.append([SECOND, "settle"])
    events.append([SECOND, "snapshot", "half"])
    events.append([2 * SECOND, "write", 2, BASE + 5 * PAGE, 4 * PAGE, [6, 7, 8, 9]])
    events.append([2 * SECOND, "settle"])
    events.append([2 * SECOND, "snapshot", "nine"])
    events.append([3 * SECOND, "write", 2, BASE + 9 * PAGE, PAGE, [10]])
    events.append([3 * SECOND, "settle"])
    events.append([3 * SECOND, "snapshot", "all"])
    return events


@pytest.mark.parametrize("mode", MODES)
def test_milestones_of_a_staged_trace(tmp_path: Path, mode: str) -> None:
    report = replay_path(_trace(tmp_path, _staged()), (mode,))
    (run,) = report["runs"]
    saved = [(s["label"], s["summary"]["saved_pages"]) for s in run["snapshots"]]
    assert saved == [("empty", 0), ("half", 5), ("nine", 9), ("all", 10)]
    # 5 >= 50 % of 10 first at 1 s; 9 >= 90 % of 10 first at 2 s
    assert run["milestones"] == {
        "max_saved_pages": 10,
        "t_saved_50": SECOND,
        "t_saved_90": 2 * SECOND,
    }


def test_milestones_are_null_when_nothing_is_saved(tmp_path: Path) -> None:
    events = _staged()[:5]  # up to the snapshot "empty"
    (run,) = replay_path(_trace(tmp_path, events), ("unshare",))["runs"]
    assert run["milestones"] == {"max_saved_pages": 0, "t_saved_50": None, "t_saved_90": None}


def test_ksmd_work_in_settles_is_kept_apart(tmp_path: Path) -> None:
    # GIVEN ksmd started, settled and stopped before its first wake-up in trace time
    events = _three_processes(0)
    events.append([2000, "ksm", {"run": 0}])
    events.append([SECOND, "snapshot", "later"])
    (run,) = replay_path(_trace(tmp_path, events), ("unshare",))["runs"]
    # THEN all its work was in the settle: no wake-up in trace time
    ksmd = run["ksmd"]
    assert ksmd["visits"] > 0
    assert ksmd["settle_cpu_ns"] > 0
    assert (ksmd["wakeups"], ksmd["cpu_ns"], ksmd["cpu_percent"]) == (0, 0, 0.0)


def test_ksmd_work_in_trace_time(tmp_path: Path) -> None:
    # GIVEN the same processes and no settle, ksmd waking every 20 ms for 1 s
    events = [e for e in _three_processes(0) if e[1] != "settle"]
    events.append([SECOND, "snapshot", "later"])
    (run,) = replay_path(_trace(tmp_path, events), ("unshare",))["runs"]
    ksmd = run["ksmd"]
    assert ksmd["settle_cpu_ns"] == 0
    # a wake-up every sleep of 20 ms (24 ms in jiffies with the tick's delay)
    # from 1 us to 1 s, no more and not many fewer
    assert 35 <= ksmd["wakeups"] <= 42
    assert ksmd["cpu_ns"] > 0
    assert ksmd["cpu_percent"] == round(100 * ksmd["cpu_ns"] / SECOND, 2)


def _ksmd_work(path: Path, sim: Any) -> Any:
    """Every event of the trace at ``path`` through ``sim``, one at a time; its ksmd_work."""
    with open_trace(str(path)) as reader:
        for item in reader.runs():
            for event in item.events() if isinstance(item, WriteRun) else [item]:
                sim.apply(event)
    return sim.ksmd_work


@pytest.mark.parametrize("name", ["gc-heap.msgpack", "no-settle.jsonl", "staged.jsonl"])
@pytest.mark.parametrize("mode", ["legacy", "unshare"])
def test_ksmd_work_matches_the_reference_model(tmp_path: Path, name: str, mode: str) -> None:
    # GIVEN traces where ksmd works in trace time (and in settles)
    if name == "gc-heap.msgpack":
        path = ROOT / "traces" / name
    else:
        events = _staged() if name == "staged.jsonl" else _three_processes(1)
        if name == "no-settle.jsonl":
            events = [e for e in events if e[1] != "settle"] + [[SECOND, "snapshot", "s"]]
        path = _trace(tmp_path, events, name)
    # WHEN replayed by the engine and by the reference model
    work = _ksmd_work(path, Engine(mode, PAGE))
    # THEN both count the same visits, wake-ups and CPU time
    assert work == _ksmd_work(path, ReferenceSimulator(mode, PAGE))
    assert work["wakeups"] > 0


# --- --every ------------------------------------------------------------------------------


def _events_of(path: Path) -> list[Any]:
    """The trace's header and events as lists (msgpack or JSON lines)."""
    if path.suffix == ".msgpack":
        return list(msgpack.Unpacker(path.open("rb"), raw=False, strict_map_key=False))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _with_every(items: list[Any], every: int) -> tuple[list[Any], set[int]]:
    """The trace with ``[T, "snapshot", "every@T"]`` after the last event at or
    before T, for T = 0, every, 2 every, ... up to the last event's t; and the
    indexes of the events inserted (in the new trace)."""
    header, events = items[0], items[1:]
    end = events[-1][0] if events else 0
    out: list[Any] = [header]
    inserted: set[int] = set()
    at = 0
    for event in events:
        while at < event[0]:
            inserted.add(len(out))
            out.append([at, "snapshot", f"every@{at}"])
            at += every
        out.append(event)
    while at <= end:
        inserted.add(len(out))
        out.append([at, "snapshot", f"every@{at}"])
        at += every
    return out, inserted


def _write(path: Path, items: list[Any]) -> None:
    path.write_bytes(b"".join(msgpack.packb(item) for item in items))


def _without_events(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what the inserted events change: event indexes and counts."""
    report = copy.deepcopy(report)
    report["trace"].pop("events")
    report["trace"].pop("path")
    for run in report["runs"]:
        for snap in [*run["snapshots"], run["final"]]:
            snap.pop("event")
        for refusal in run["refused"]:
            refusal.pop("event")
    return report


def _run_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["run", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


EVERY_CASES = [
    ("traces/vm-guests.msgpack", "250ms"),
    ("traces/containers.msgpack", "0.3s"),
    ("traces/unmerge-cycle.msgpack", "100ms"),
    ("traces/gc-heap.msgpack", "1s"),
    ("traces/demo.msgpack", "1ms"),
    ("traces/recorded-zeroing.msgpack", "700ms"),
]


@pytest.mark.parametrize(("name", "every"), EVERY_CASES)
def test_every_equals_inserted_snapshot_events(tmp_path: Path, name: str, every: str) -> None:
    # GIVEN a trace, and a copy with the every@T snapshot events written in
    path = ROOT / name
    every_ns = {"ms": 1_000_000, "s": SECOND}
    unit = "ms" if every.endswith("ms") else "s"
    step = round(float(every[: -len(unit)]) * every_ns[unit])
    items, inserted = _with_every(_events_of(path), step)
    copy_path = tmp_path / "inserted.msgpack"
    _write(copy_path, items)
    # WHEN one is replayed with --every and the other as it is
    ours = _run_json(str(path), "--mode", "all", "--every", every)
    theirs = _run_json(str(copy_path), "--mode", "all")
    # THEN the reports are the same but for event indexes
    assert _without_events(ours) == _without_events(theirs)
    labels = [s["label"] for s in ours["runs"][0]["snapshots"]]
    assert sum(label.startswith("every@") for label in labels) == len(inserted)
    # AND an every@T snapshot carries the index of the last event before it
    for ours_snap, theirs_snap in zip(
        ours["runs"][0]["snapshots"], theirs["runs"][0]["snapshots"], strict=True
    ):
        if ours_snap["label"].startswith("every@"):
            # (the events before it in the copy, less the snapshots inserted)
            at = theirs_snap["event"]
            assert ours_snap["event"] == at - 1 - sum(i < at for i in inserted)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "table"])
def test_every_snapshots_appear_in_every_format(fmt: str) -> None:
    path = str(ROOT / "traces/gc-heap.msgpack")
    result = CliRunner().invoke(cli, ["run", path, "--every", "500ms", "--format", fmt])
    assert result.exit_code == 0, result.output
    for t in range(0, 2 * SECOND + 1, SECOND // 2):
        if fmt == "table":
            assert f'snapshot "every@{t}" (event ' in result.stdout
        else:
            sep = "," if fmt == "csv" else "\t"
            assert f"\nlegacy{sep}every@{t}{sep}{t}{sep}" in result.stdout


@pytest.mark.parametrize("bad", ["0s", "-1s", "soon", "1e30s"])
def test_a_bad_every_is_a_usage_error(bad: str) -> None:
    result = CliRunner().invoke(cli, ["run", str(ROOT / "traces/demo.msgpack"), "--every", bad])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"ksmreplay: bad --every '{bad}'")


def test_every_refuses_more_snapshots_than_the_limit(tmp_path: Path) -> None:
    """A DURATION far below the trace's length is a usage error before any replay,
    from a file (its length is known ahead) and from a pipe (found as it goes)."""
    trace = tmp_path / "long.jsonl"
    trace.write_text(
        '{"ksmreplay": 1, "page_size": 4096}\n'
        '[0, "alloc", 1, 4096, 4096]\n'
        '[3600000000000, "snapshot", "end"]\n'
    )
    result = CliRunner().invoke(cli, ["run", str(trace), "--every", "1ms"])
    assert result.exit_code == 2, result.output
    assert "3,600,001 snapshots per run" in result.output  # 3600 s / 1 ms, T = 0 included
    assert "at most 100,000" in result.output
    piped = subprocess.run(
        [sys.executable, "-m", "ksmreplay", "run", "-", "--every", "1ms"],
        input=trace.read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 2, piped.stderr
    assert b"choose a longer DURATION" in piped.stderr
    fine = CliRunner().invoke(cli, ["run", str(trace), "--every", "60s", "--format", "json"])
    assert fine.exit_code == 0, fine.output
    assert fine.output.count('"every@') == 2 * 61  # both modes, T = 0 .. 3600 s


@pytest.mark.parametrize("part_bytes", [1 << 30, 64, 8 * 1000])
def test_the_distinct_contents_are_counted_part_by_part_as_at_once(
    part_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN frame contents with repeats, zeros, small and large values, some not mapped
    rng = np.random.default_rng(5)
    content = rng.choice(np.array([0, 1, 2, 3, 7, 2**63 + 5, 2**64 - 1, 12345], np.uint64), 5000)
    content[4000:] = rng.integers(0, 2**64 - 1, 1000, np.uint64, endpoint=True)
    seen = rng.random(5000) < 0.7
    # WHEN they are counted in parts of any size (one part, many, the most)
    monkeypatch.setattr(memory_module, "COUNT_PART_BYTES", part_bytes)
    monkeypatch.setattr(memory_module, "COUNT_ROWS", 300)
    distinct, zero = memory_module.count_distinct(content, seen)
    # THEN the answer is the one of a set
    mapped = set(content[seen].tolist())
    assert (distinct, zero) == (len(mapped - {0}), 0 in mapped)
