"""Comparing reports: matching of runs, snapshots and processes; ignore; tolerance; loading."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_samples import one_mode_report, two_mode_report

from ksmreplay.cli import cli
from ksmreplay.diff import (
    MISSING,
    PRESENT,
    Difference,
    ReportError,
    diff_reports,
    load_report,
    render_differences,
)
from ksmreplay.errors import ExitStatus, InputOutputError, UsageError
from ksmreplay.report import Report


def _single(report: Report, index: int) -> Report:
    report["runs"] = [report["runs"][index]]
    return report


def test_a_report_equals_itself() -> None:
    assert diff_reports(two_mode_report(), two_mode_report()) == []


def test_one_changed_counter_is_one_difference() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"][1]["snapshots"][0]["ksm"]["pages_sharing"] = 5
    assert diff_reports(a, b) == [
        Difference("unshare", "merged", "ksm", None, "pages_sharing", 3, 5)
    ]


def test_every_section_is_compared() -> None:
    a, b = two_mode_report(), two_mode_report()
    run = b["runs"][0]
    run["settings"]["pages_to_scan"] = 1000
    run["refused"] = []
    run["final"]["processes"][1]["ksm_merge_any"] = True  # pid 1
    run["final"]["memory"]["anon_frames"] = 10
    run["final"]["events"]["merges"] = 6
    run["final"]["t"] = 1600000000
    assert diff_reports(a, b) == [
        Difference("legacy", "", "settings", None, "pages_to_scan", 100, 1000),
        Difference("legacy", "", "refused", None, "event 5 max_page_sharing", "EBUSY", MISSING),
        Difference("legacy", "final", "snapshot", None, "t", 1500000000, 1600000000),
        Difference("legacy", "final", "process", 1, "ksm_merge_any", False, True),
        Difference("legacy", "final", "memory", None, "anon_frames", 5, 10),
        Difference("legacy", "final", "events", None, "merges", 4, 6),
    ]


def test_null_and_zero_differ_and_booleans_are_not_numbers() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"][0]["final"]["ksm"]["ksm_zero_pages"] = 0
    b["runs"][0]["final"]["processes"][0]["ksm_mergeable"] = 1  # pid 2; an int, not a bool
    diffs = diff_reports(a, b, tolerance=5)
    assert diffs == [
        Difference("legacy", "final", "ksm", None, "ksm_zero_pages", None, 0),
        Difference("legacy", "final", "process", 2, "ksm_mergeable", True, 1),
    ]


def test_runs_are_matched_by_mode_not_position() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"].reverse()
    assert diff_reports(a, b) == []


def test_a_run_on_one_side_only_is_a_difference() -> None:
    a = two_mode_report()
    b = _single(two_mode_report(), 1)  # unshare only
    assert diff_reports(a, b) == [Difference("legacy", "", "run", None, "", PRESENT, MISSING)]
    assert diff_reports(b, a) == [Difference("legacy", "", "run", None, "", MISSING, PRESENT)]


def test_single_runs_of_different_modes_are_compared_with_each_other() -> None:
    legacy = _single(two_mode_report(), 0)
    unshare = _single(two_mode_report(), 1)
    diffs = diff_reports(legacy, unshare)
    assert {d.mode for d in diffs} == {"legacy/unshare"}
    assert (
        Difference("legacy/unshare", "final", "ksm", None, "general_profit", 11904, 20096) in diffs
    )
    assert (
        Difference("legacy/unshare", "final", "events", None, "zero_pages_unshared", 0, 2) in diffs
    )


def test_two_runs_of_one_report() -> None:
    report = two_mode_report()
    assert diff_reports(report) == diff_reports(
        _single(two_mode_report(), 0), _single(two_mode_report(), 1)
    )
    with pytest.raises(UsageError, match="only if it has two runs"):
        diff_reports(one_mode_report())


def test_missing_snapshots_and_processes() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"][0]["snapshots"] = []
    del b["runs"][0]["final"]["processes"][0]  # pid 2
    assert diff_reports(a, b) == [
        Difference("legacy", "merged", "snapshot", None, "", PRESENT, MISSING),
        Difference("legacy", "final", "process", 2, "", PRESENT, MISSING),
    ]


def test_snapshots_are_matched_by_position_and_a_changed_label_is_reported() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"][1]["snapshots"][0]["label"] = "joined"
    assert diff_reports(a, b) == [
        Difference("unshare", "merged", "snapshot", None, "label", "merged", "joined")
    ]


def test_repeated_labels_are_numbered() -> None:
    a, b = one_mode_report(), one_mode_report()
    for report in (a, b):
        snap = report["runs"][0]["final"]
        report["runs"][0]["snapshots"] = [
            {**snap, "label": "tick"},
            {**snap, "label": "tick", "ksm": {**snap["ksm"]}},
        ]
    b["runs"][0]["snapshots"][1]["ksm"]["full_scans"] = 7
    assert diff_reports(a, b) == [Difference("unshare", "tick#2", "ksm", None, "full_scans", 6, 7)]


def test_ignore_by_counter_scope_or_both() -> None:
    a, b = two_mode_report(), two_mode_report()
    for run in b["runs"]:
        run["final"]["ksm"]["pages_scanned"] += 100
        run["final"]["events"]["merges"] += 1
        for proc in run["final"]["processes"]:
            proc["rss_anon_pages"] += 1
    assert len(diff_reports(a, b)) == 2 * (1 + 1 + 2)
    assert len(diff_reports(a, b, ignore=["pages_scanned"])) == 2 * (1 + 2)
    assert len(diff_reports(a, b, ignore=["events", "process"])) == 2 * 1
    assert diff_reports(a, b, ignore=["ksm.pages_scanned", "events.merges", "rss_anon_pages"]) == []


def test_ignore_of_an_unknown_name_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--ignore pages_scaned: no such counter"):
        diff_reports(two_mode_report(), two_mode_report(), ignore=["pages_scaned"])


def test_tolerance_applies_to_integers_only() -> None:
    a, b = two_mode_report(), two_mode_report()
    b["runs"][0]["final"]["ksm"]["pages_scanned"] = 123  # a: 120
    b["runs"][0]["final"]["ksm"]["general_profit"] = 11900  # a: 11904
    assert len(diff_reports(a, b, tolerance=2)) == 2
    assert diff_reports(a, b, tolerance=3) == [
        Difference("legacy", "final", "ksm", None, "general_profit", 11904, 11900)
    ]
    assert diff_reports(a, b, tolerance=4) == []
    with pytest.raises(UsageError, match="--tolerance must be >= 0"):
        diff_reports(a, b, tolerance=-1)


def test_render_differences() -> None:
    out = io.StringIO()
    render_differences(
        [
            Difference("legacy", "merged", "ksm", None, "ksm_zero_pages", None, 0),
            Difference("unshare", "final", "process", 12, "ksm_merge_any", False, True),
            Difference("unshare", "", "run", None, "", PRESENT, MISSING),
        ],
        out,
    )
    assert out.getvalue() == (
        "mode     snapshot  scope    pid  counter               a        b\n"
        "legacy   merged    ksm           ksm_zero_pages     null        0\n"
        "unshare  final     process   12  ksm_merge_any        no      yes\n"
        "unshare            run                           present  missing\n"
    )


def test_render_no_differences() -> None:
    out = io.StringIO()
    render_differences([], out)
    assert out.getvalue() == "no differences\n"


# --- loading ----------------------------------------------------------------------------


def test_load_report_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(two_mode_report()))
    assert load_report(str(path)) == two_mode_report()


def test_load_report_missing_file_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(InputOutputError, match=r"nope\.json: No such file or directory$") as caught:
        load_report(str(tmp_path / "nope.json"))
    assert caught.value.exit_status == ExitStatus.IO_ERROR


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "{not json",
            "invalid JSON at line 1 column 2: Expecting property name enclosed in double quotes",
        ),
        ("[1, 2]", "the document is not an object"),
        ('{"report": 2, "trace": {}, "runs": []}', "report version 2, expected 1"),
        ('{"report": 1, "trace": {}, "runs": []}', "runs is not a non-empty list"),
        ('{"report": 1, "trace": {}, "runs": [{"mode": "legacy"}]}', "runs[0] has no 'settings'"),
    ],
)
def test_load_report_rejects_what_is_not_a_report(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ReportError) as caught:
        load_report(str(path))
    assert str(caught.value) == f"{path}: not a ksmreplay report ({problem})"
    assert caught.value.exit_status == ExitStatus.USAGE


def test_load_report_checks_snapshots_and_processes(tmp_path: Path) -> None:
    report = two_mode_report()
    del report["runs"][1]["snapshots"][0]["memory"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    with pytest.raises(ReportError, match=r"runs\[1\]\.snapshots\[0\] has no 'memory'"):
        load_report(str(path))
    report = two_mode_report()
    report["runs"][0]["final"]["processes"][1]["pid"] = 2
    path.write_text(json.dumps(report))
    with pytest.raises(ReportError, match="lists pid 2 twice"):
        load_report(str(path))


def test_load_report_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(one_mode_report())))
    assert load_report("-") == one_mode_report()


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _text(report: object) -> str:
    return json.dumps(report)


def _without_error() -> str:
    report = two_mode_report()
    del report["runs"][0]["refused"][0]["error"]  # type: ignore[misc]
    return _text(report)


def _with_label(label: str) -> str:
    report = two_mode_report()
    report["runs"][1]["snapshots"][0]["label"] = label
    return _text(report)


def _with_counter(value: str) -> str:
    text = _text(two_mode_report())
    return text.replace('"pages_sharing": 3', f'"pages_sharing": {value}', 1)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_without_error(), "runs[0].refused[0] has no 'error'"),
        (_deep(10_000), "nested too deeply"),
        (
            _with_counter(_deep(500)),
            "runs[0].snapshots[0].ksm.pages_sharing is not a number, string, boolean or null",
        ),
        (_with_counter("9" * 5000), "an integer of 5000 digits; at most 100"),
        (_with_counter("-" + "9" * 101), "an integer of 101 digits; at most 100"),
        (_with_label("\ud800"), "runs[1].snapshots[0].label is not valid Unicode"),
    ],
    ids=["refusal-without-error", "deep", "deep-counter", "long-int", "long-negative", "surrogate"],
)
def test_diff_of_a_malformed_report_is_one_line_and_status_2(
    tmp_path: Path, content: str, problem: str
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(two_mode_report()))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for args in ([bad, good], [good, bad], [bad]):
        result = CliRunner().invoke(cli, ["diff", *map(str, args)])
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == f"ksmreplay: {bad}: not a ksmreplay report ({problem})\n"


def test_a_long_but_allowed_integer_is_compared(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(_with_counter("9" * 100))
    b = tmp_path / "b.json"
    b.write_text(_with_counter("9" * 99))
    result = CliRunner().invoke(cli, ["diff", str(a), str(b)])
    assert result.exit_code == 1
    assert "9" * 100 in result.stdout
