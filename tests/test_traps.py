"""Warnings on stderr for traps in a replay, ``run --pin``, and the side effects of
``--set advisor_mode``.

Every warning is checked on stderr, and the report on stdout is checked to be
the bytes the library renders with no warning callback at all: warnings never
reach the data.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner, Result

from ksmreplay import arrays
from ksmreplay.cli import WARNINGS_PER_KIND, cli
from ksmreplay.engine import Engine
from ksmreplay.render import render
from ksmreplay.replay import expand_modes, replay
from ksmreplay.report import schema_text
from ksmreplay.trace import open_trace

PAGE = 4096
BASE = 0x10000
WARNING = "ksmreplay: warning: "


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


def write(tmp_path: Path, events: Sequence[list[Any]], name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    lines = [json.dumps({"ksmreplay": 1})] + [json.dumps(e) for e in events]
    path.write_text("\n".join(lines) + "\n")
    return path


def twins(pids: Sequence[int] = (1, 2), pages: int = 16, t: int = 0) -> list[list[Any]]:
    """Processes with the same ``pages`` distinct contents each, mergeable."""
    events: list[list[Any]] = []
    for pid in pids:
        events += [
            [t, "alloc", pid, BASE, pages * PAGE],
            [t, "madvise", pid, BASE, pages * PAGE, "mergeable"],
            [t, "write", pid, BASE, pages * PAGE, list(range(100, 100 + pages))],
        ]
    return events


def library_output(
    path: Path,
    fmt: str,
    mode: str = "both",
    settings: dict[str, Any] | None = None,
    pins: dict[str, Any] | None = None,
) -> str:
    """The report as the library renders it, with no warning callback."""
    with open_trace(str(path)) as reader:
        report = replay(reader, expand_modes(mode), settings, pins=pins)
    out = io.StringIO()
    render(report, fmt, out)
    return out.getvalue()


def warnings_of(result: Result) -> list[str]:
    lines = result.stderr.splitlines()
    assert all(line.startswith(WARNING) for line in lines), result.stderr
    return [line.removeprefix(WARNING) for line in lines]


def check_report_untouched(result: Result, path: Path, *options: str, **replayed: Any) -> None:
    """stdout is the library's report for the same options, in every format."""
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stdout
    for fmt in ("table", "json", "csv"):
        again = invoke("run", str(path), "--format", fmt, *options)
        assert again.stderr == result.stderr
        assert again.stdout == library_output(path, fmt, **replayed)


# --------------------------------------------------------------------------- no trap


def test_a_trace_without_traps_gives_no_warning(tmp_path: Path) -> None:
    path = write(tmp_path, [[0, "ksm", {"run": 1}], *twins(), [0, "settle"], [1, "snapshot", "s"]])
    result = invoke("run", str(path), "--mode", "all", "--set", "use_zero_pages=1")
    assert (result.exit_code, result.stderr) == (0, "")


def test_the_demo_trace_gives_no_warning() -> None:
    """Its settles end at max_full_scans with only pages_unshared and
    pages_volatile swapping (smart_scan's skips): that is settled enough."""
    demo = Path(__file__).parent.parent / "traces" / "demo.msgpack"
    result = invoke("run", str(demo), "--mode", "all")
    assert (result.exit_code, result.stderr) == (0, "")


# --------------------------------------------------------------------------- --set overwritten


def test_a_set_knob_the_trace_overwrites_is_named_with_its_event(tmp_path: Path) -> None:
    events = [[0, "ksm", {"run": 1}], *twins(), [5, "ksm", {"pages_to_scan": 7}]]
    path = write(tmp_path, [*events, [10**9, "snapshot", "s"]])
    result = invoke("run", str(path), "--set", "pages_to_scan=1000")
    assert warnings_of(result) == [
        "event 8 (t=5): the trace sets pages_to_scan=7 over --set pages_to_scan=1000 "
        "(--pin pages_to_scan=1000 keeps it for the whole replay)"
    ]
    check_report_untouched(
        result, path, "--set", "pages_to_scan=1000", settings={"pages_to_scan": 1000}
    )


def test_writing_the_set_value_again_is_no_trap(tmp_path: Path) -> None:
    path = write(tmp_path, [[0, "ksm", {"run": 1, "pages_to_scan": 1000}], *twins()])
    result = invoke("run", str(path), "--set", "pages_to_scan=1000")
    assert (result.exit_code, result.stderr) == (0, "")


def test_the_advisor_switch_overwriting_a_set_pages_to_scan_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path, [[0, "ksm", {"run": 1}], *twins(), [3, "ksm", {"advisor_mode": "scan-time"}]]
    )
    result = invoke("run", str(path), "--set", "pages_to_scan=1000")
    assert warnings_of(result) == [
        "event 8 (t=3): the trace sets advisor_mode=scan-time, which sets pages_to_scan=500 "
        "over --set pages_to_scan=1000 (--pin pages_to_scan=1000 keeps it for the whole replay)"
    ]


# --------------------------------------------------------------------------- settle


def test_a_settle_cut_short_while_merging_is_named(tmp_path: Path) -> None:
    # One full scan only puts the pages in the unstable tree: nothing merged yet.
    events = [[0, "ksm", {"run": 1}], *twins(), [1, "settle", 1], [1, "snapshot", "s"]]
    path = write(tmp_path, events)
    result = invoke("run", str(path))
    [line] = warnings_of(result)
    assert line.startswith(
        "event 8 (t=1): settle stopped at max_full_scans=1 while ksmd was still merging"
    )
    assert line.endswith("what follows is not the settled state (raise max_full_scans)")
    check_report_untouched(result, path)
    # the same settle given enough full scans converges, without a warning
    enough = write(tmp_path, [*events[:-2], [1, "settle", 10]], "enough.jsonl")
    assert invoke("run", str(enough)).stderr == ""


def test_a_settle_with_ksmd_stopped_and_a_replay_that_never_runs_it(tmp_path: Path) -> None:
    path = write(tmp_path, [*twins(), [1, "settle"], [2, "ksm", {"run": 2}], [3, "settle"]])
    result = invoke("run", str(path), "--mode", "all")
    assert warnings_of(result) == [
        "event 7 (t=1): settle does nothing: run is 0, not 1, so ksmd does not scan",
        "event 9 (t=3): settle does nothing: run is 2, not 1, so ksmd does not scan",
        "run is never 1 in this replay: ksmd never runs, so nothing merges "
        "(a ksm event with run=1, or --set run=1, starts it)",
    ]
    check_report_untouched(result, path, "--mode", "all", mode="all")
    # ksmd started from the command line: it ran, until the trace stopped it
    started = invoke("run", str(path), "--set", "run=1")
    assert warnings_of(started) == [
        "event 8 (t=2): the trace sets run=2 over --set run=1 "
        "(--pin run=1 keeps it for the whole replay)",
        "event 9 (t=3): settle does nothing: run is 2, not 1, so ksmd does not scan",
    ]


def test_warnings_of_one_kind_are_cut_after_a_few(tmp_path: Path) -> None:
    settles = [[t, "settle"] for t in range(1, 13)]
    path = write(tmp_path, [*twins(), *settles, [20, "ksm", {"run": 1}]])
    lines = warnings_of(invoke("run", str(path)))
    assert len(lines) == WARNINGS_PER_KIND + 1
    assert lines[-1] == f"{12 - WARNINGS_PER_KIND} more settle-stopped warnings not shown"


def test_a_warning_only_some_modes_have_names_them(tmp_path: Path) -> None:
    from ksmreplay.traps import Trap, merge

    a, b = Trap("k", "a"), Trap("k", "b")
    assert merge([("legacy", [a, b]), ("v6", [b]), ("unshare", [a, b])]) == [
        Trap("k", "[legacy, unshare] a"),
        b,
    ]
    assert merge([("legacy", [a]), ("unshare", [a])]) == [a]


# --------------------------------------------------------------------------- memory


def test_a_trace_larger_than_the_memory_left_is_warned_of_before_replaying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 x 4096 pages written; estimated per page and per process, per mode
    path = write(tmp_path, [[0, "ksm", {"run": 1}], *twins(pages=4096)])
    need = 2 * (2 * 4096 * arrays.PAGE_ESTIMATE + 2 * arrays.PROCESS_ESTIMATE)
    monkeypatch.setattr(arrays, "room", lambda: need - 1)
    result = invoke("run", str(path))
    assert warnings_of(result) == [
        f"{path}: the replay may need about {arrays.format_size(need)} (up to 8192 pages "
        f"resident, in 2 modes), and only {arrays.format_size(need - 1)} may be taken: it is "
        "likely to stop with exit status 6 (fewer --mode, or set KSMREPLAY_MEMORY=SIZE to "
        "change the limit)"
    ]
    check_report_untouched(result, path)
    # one mode needs half: no warning
    assert invoke("run", str(path), "--mode", "unshare").stderr == ""


def test_the_footprint_counts_pages_touched_at_most_what_is_mapped(tmp_path: Path) -> None:
    p = 16
    events: list[list[Any]] = [
        [0, "alloc", 1, BASE, 4 * p * PAGE],
        [0, "write", 1, BASE, p * PAGE, 5],  # p
        [0, "write", 1, BASE, p * PAGE, 6],  # 2p (a rewrite counts: an upper bound)
        [0, "read", 1, BASE + 2 * p * PAGE, p * PAGE],  # 3p
        [0, "write", 1, BASE + PAGE + 8, 4, {"b64": "AAAAAA=="}],  # 1 more (bytes, unaligned)
        [0, "fork", 1, 2],  # 2 x (3p + 1)
        [0, "free", 2, BASE, 4 * p * PAGE - PAGE],  # the child keeps 1 page mapped
        [0, "exit", 1],
    ]
    # a run of one-page writes in two processes (read as columns)
    events += [[1, "alloc", 3, BASE, 1000 * PAGE], [1, "alloc", 4, BASE, 10 * PAGE]]
    events += [
        [2, "write", 3 + i % 2, BASE + (i // 2 if i % 2 == 0 else i // 2 % 10) * PAGE, PAGE, i]
        for i in range(2000)
    ]
    path = write(tmp_path, events)
    with open_trace(str(path), validate_first=True) as reader:
        footprint = reader.footprint
    assert footprint is not None
    # after the fork: 2 x (3p + 1); at the end: pid 2 holds 1, pid 3 1000, pid 4 10
    assert footprint.peak_pages == max(2 * (3 * p + 1), 1 + 1000 + 10)
    assert footprint.peak_processes == 3
    with open_trace(str(path)) as reader:
        assert reader.footprint is None


# --------------------------------------------------------------------------- --pin

PIN_TRACE = [
    [0, "ksm", {"run": 1, "pages_to_scan": 10}],
    *twins(pages=64),
    [5_000_000, "snapshot", "early"],
    [40_000_000, "ksm", {"pages_to_scan": 3, "use_zero_pages": 1}],
    [90_000_000, "snapshot", "mid"],
    [100_000_000, "ksm", {"pages_to_scan": 2000}],
    [150_000_000, "snapshot", "late"],
]


def _json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_a_pinned_knob_keeps_its_value_as_if_the_trace_said_so(tmp_path: Path) -> None:
    pinned = write(tmp_path, PIN_TRACE, "pinned.jsonl")
    # the same trace edited by hand: pages_to_scan 50 wherever it wrote it
    edited_events = json.loads(json.dumps(PIN_TRACE))
    for event in edited_events:
        if event[1] == "ksm" and "pages_to_scan" in event[2]:
            event[2]["pages_to_scan"] = 50
    edited = write(tmp_path, edited_events, "edited.jsonl")

    got = _json(invoke("run", str(pinned), "--pin", "pages_to_scan=50", "--format", "json"))
    want = _json(invoke("run", str(edited), "--format", "json"))
    for run, expected in zip(got["runs"], want["runs"], strict=True):
        assert run["snapshots"] == expected["snapshots"]
        assert run["final"] == expected["final"]
        assert run["settings"] == expected["settings"]
        assert run["pinned"] == [
            {
                "knob": "pages_to_scan",
                "value": 50,
                "ignored": [
                    {"event": 1, "t": 0, "value": 10},
                    {"event": 9, "t": 40_000_000, "value": 3},
                    {"event": 11, "t": 100_000_000, "value": 2000},
                ],
            }
        ]
    assert "pinned" not in want["runs"][0]
    jsonschema.validate(got, json.loads(schema_text()))
    # the pin mattered: the trace as it is gives other counters
    plain = _json(invoke("run", str(pinned), "--format", "json"))
    assert plain["runs"][0]["snapshots"] != got["runs"][0]["snapshots"]


def test_the_table_lists_pinned_knobs(tmp_path: Path) -> None:
    path = write(tmp_path, PIN_TRACE)
    result = invoke("run", str(path), "--pin", "pages_to_scan=50", "--pin", "run=1")
    assert result.exit_code == 0
    assert result.stdout.endswith(
        "\n\npinned knobs (--pin)\n"
        "knob           value  trace writes ignored\n"
        "pages_to_scan  50     3 (events 1, 9, 11)\n"
        "run            1      1 (event 1)\n"
    )
    assert result.stdout == library_output(path, "table", pins={"pages_to_scan": 50, "run": 1})


def test_a_pinned_run_ignores_the_traces_stop_and_unmerge(tmp_path: Path) -> None:
    path = write(tmp_path, [*twins(), [0, "ksm", {"run": 1}], [10**9, "ksm", {"run": 2}]])
    final = _json(invoke("run", str(path), "--pin", "run=1", "--format", "json"))["runs"][0]
    assert final["final"]["ksm"]["pages_sharing"] == 16
    assert final["settings"]["run"] == 1
    unpinned = _json(invoke("run", str(path), "--format", "json"))["runs"][0]
    assert unpinned["final"]["ksm"]["pages_sharing"] == 0


def test_a_pinned_pages_to_scan_is_kept_from_the_advisor(tmp_path: Path) -> None:
    events = [[0, "ksm", {"run": 1}], *twins(pages=64), [1, "ksm", {"advisor_mode": "scan-time"}]]
    path = write(tmp_path, [*events, [10**10, "snapshot", "s"]])
    result = invoke("run", str(path), "--pin", "pages_to_scan=7", "--format", "json")
    assert _json(result)["runs"][0]["settings"]["pages_to_scan"] == 7
    assert warnings_of(result) == [
        "event 8 (t=1): the trace turns the scan-time advisor on; --pin pages_to_scan=7 "
        "keeps it from changing pages_to_scan"
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--set", "pages_to_scan=5", "--pin", "pages_to_scan=6"],
            "Error: --set pages_to_scan=5 and --pin pages_to_scan=6: give pages_to_scan once "
            "(--pin keeps it for the whole replay, --set only at the start)\n",
        ),
        (
            ["--pin", "advisor_mode=scan-time", "--set", "pages_to_scan=6"],
            "Error: --set pages_to_scan=6 with advisor_mode=scan-time: the scan-time advisor "
            "sets pages_to_scan itself, starting from advisor_min_pages_to_scan (set that "
            "instead)\n",
        ),
        (["--pin", "pages_to_scan=x"], "pages_to_scan must be an integer, not 'x'"),
        (["--pin", "frob=1"], "unknown knob 'frob'"),
        (["--pin", "run"], "expected KNOB=VALUE, not 'run'"),
    ],
)
def test_pin_usage_errors(tmp_path: Path, options: list[str], message: str) -> None:
    path = write(tmp_path, [[0, "ksm", {"run": 1}]])
    result = invoke("run", str(path), *options)
    assert (result.exit_code, result.stdout) == (2, "")
    assert message in result.stderr
    assert "--pin" in result.stderr or "--set" in result.stderr


# --------------------------------------------------------------------------- advisor_mode


def _pages_scanned_by_the_first_wake_up(tmp_path: Path, *options: str, events: Any = ()) -> int:
    trace = [[0, "ksm", {"run": 1}], *twins(pages=2048), *events, [1, "snapshot", "first"]]
    report = _json(invoke("run", str(write(tmp_path, trace)), "--format", "json", *options))
    scanned: int = report["runs"][0]["snapshots"][0]["ksm"]["pages_scanned"]
    return scanned


def test_set_advisor_mode_has_the_side_effects_of_the_sysfs_write(tmp_path: Path) -> None:
    """Writing advisor_mode on Linux 6.18 (advisor_mode_store() in mm/ksm.c),
    when the mode changes, calls set_advisor_defaults(): switching to
    scan-time clears the advisor's state and sets pages_to_scan to
    advisor_min_pages_to_scan (500 by default), switching back to none sets
    it to DEFAULT_PAGES_TO_SCAN (100).  ``--set`` writes knobs the same way,
    so ksmd's first batch visits 500 pages, not the 100 of the default."""
    assert _pages_scanned_by_the_first_wake_up(tmp_path) == 100
    assert _pages_scanned_by_the_first_wake_up(tmp_path, "--set", "advisor_mode=scan-time") == 500
    # the advisor starts from advisor_min_pages_to_scan given beside it, in either order
    for options in (
        ["--set", "advisor_mode=scan-time", "--set", "advisor_min_pages_to_scan=800"],
        ["--set", "advisor_min_pages_to_scan=800", "--pin", "advisor_mode=scan-time"],
    ):
        assert _pages_scanned_by_the_first_wake_up(tmp_path, *options) == 800
    # a trace switching back to none gets DEFAULT_PAGES_TO_SCAN again
    back = [[0, "ksm", {"advisor_mode": "none"}]]
    options = ("--set", "advisor_mode=scan-time")
    assert _pages_scanned_by_the_first_wake_up(tmp_path, *options, events=back) == 100


def test_set_advisor_mode_replays_as_the_same_write_in_the_trace(tmp_path: Path) -> None:
    """``--set advisor_mode=scan-time`` gives the report of a trace whose first
    event writes it: one place writes knobs, with one set of side effects."""
    body = [*twins(pages=512), [0, "ksm", {"run": 1}], [3 * 10**9, "snapshot", "s"]]
    in_trace = write(tmp_path, [[0, "ksm", {"advisor_mode": "scan-time"}], *body], "a.jsonl")
    from_set = write(tmp_path, [[0, "ksm", {"smart_scan": 1}], *body], "b.jsonl")
    a = _json(invoke("run", str(in_trace), "--format", "json"))
    b = _json(invoke("run", str(from_set), "--format", "json", "--set", "advisor_mode=scan-time"))
    for x, y in zip(a["runs"], b["runs"], strict=True):
        assert (x["snapshots"], x["final"], x["settings"]) == (
            y["snapshots"],
            y["final"],
            y["settings"],
        )


def test_the_engine_starts_with_the_advisors_budget() -> None:
    engine = Engine("unshare", PAGE, {"advisor_mode": "scan-time"})
    assert engine.settings["pages_to_scan"] == 500
    engine = Engine("unshare", PAGE, {"advisor_mode": "none", "pages_to_scan": 9})
    assert engine.settings["pages_to_scan"] == 9  # no change of mode: no side effect
