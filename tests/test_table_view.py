"""The table's units and selection (``--units``, ``--processes``, ``--pid``,
``--snapshot``), the final state said once, and the notes where the summary
and ``general_profit`` disagree.

GIVEN a hand-made report (``report_samples``) or a bundled trace, WHEN it is
rendered as a table with some view, THEN the lines are those the view asks for.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from report_samples import one_mode_report, two_mode_report

from ksmreplay.cli import cli
from ksmreplay.errors import UsageError
from ksmreplay.render import (
    FORMATS,
    TABLE_WIDTH,
    TableView,
    human_size,
    render,
    table_view,
)
from ksmreplay.report import Report, Snap, summarise

DEMO = str(Path(__file__).parent.parent / "traces" / "demo.msgpack")


def _table(report: Report, view: TableView | None = None) -> str:
    out = io.StringIO()
    render(report, "table", out, view)
    return out.getvalue()


def _row(text: str, start: str) -> list[str]:
    """The cells of the first line that starts with ``start`` (split on blanks)."""
    return next(line.split() for line in text.splitlines() if line.startswith(start))


def _final(text: str) -> str:
    """The final state's block and what follows it."""
    return text[text.index("\nfinal (") :]


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


# --- units ------------------------------------------------------------------------------


def test_human_size_takes_the_largest_unit_not_above_the_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.00 KiB"
    assert human_size(1536) == "1.50 KiB"
    assert human_size(5 << 29) == "2.50 GiB"
    assert human_size(-3 << 20) == "-3.00 MiB"
    assert human_size(3 << 40) == "3.00 TiB"


def test_summary_sizes_follow_the_units_with_one_unit_per_row() -> None:
    report = two_mode_report()
    legacy, unshare = (run["final"]["summary"] for run in report["runs"])
    ps = report["trace"]["page_size"]
    key = "resident_without_ksm"
    # GIVEN sizes of a few pages WHEN shown in pages, bytes and human units
    pages = _row(_final(_table(report, TableView(units="pages"))), "without KSM")
    in_bytes = _row(_final(_table(report, TableView(units="bytes"))), "without KSM")
    human = _row(_final(_table(report, TableView(units="human"))), "without KSM")
    # THEN pages and bytes are exact, human in KiB (below 1 MiB), differences of the cells
    assert pages[2] == "(pages)" and in_bytes[2] == "(bytes)"
    assert pages[3:] == [str(legacy[key]), str(unshare[key]), f"{unshare[key] - legacy[key]:+d}"]
    assert in_bytes[3:] == [
        str(legacy[key] * ps),
        str(unshare[key] * ps),
        f"{(unshare[key] - legacy[key]) * ps:+d}",
    ]
    assert human[2] == "(KiB)"
    assert human[3:] == [
        f"{legacy[key] * ps / 1024:.2f}",
        f"{unshare[key] * ps / 1024:.2f}",
        f"{(unshare[key] - legacy[key]) * ps / 1024:+.2f}",
    ]
    # percentages stay percentages
    assert _row(_final(_table(report, TableView(units="pages"))), "saved (%)")[2:4] == [
        f"{legacy['saved_percent']:.2f}",
        f"{unshare['saved_percent']:.2f}",
    ]


def test_human_units_are_the_default_and_a_row_takes_its_largest_cells_unit() -> None:
    report = two_mode_report()
    # 3 GiB without KSM in unshare, 900 MiB in legacy: the row is in GiB
    for run, pages in zip(report["runs"], (900 << 8, 3 << 18), strict=True):
        run["final"]["summary"] = summarise(pages, 5, 4, 4096)
    row = _row(_final(_table(report)), "without KSM")
    assert row[2:] == ["(GiB)", f"{900 / 1024:.2f}", "3.00", f"{3 - 900 / 1024:+.2f}"]


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "table"])
def test_units_leave_json_csv_and_tsv_exact(fmt: str) -> None:
    runner = CliRunner()
    plain = runner.invoke(cli, ["run", DEMO, "--format", fmt])
    for units in ("pages", "bytes", "human"):
        result = runner.invoke(cli, ["run", DEMO, "--format", fmt, "--units", units])
        assert result.exit_code == 0, result.output
        assert result.stdout == plain.stdout


def test_ksmd_block_max_saved_follows_the_units_and_null_shows_as_dash() -> None:
    report = one_mode_report()
    run = report["runs"][0]
    run["milestones"]["max_saved_pages"] = 3
    run["ksmd"].update(visits=None, wakeups=None, cpu_ns=None, cpu_percent=None)  # type: ignore[typeddict-item]
    text = _table(report, TableView(units="bytes"))
    assert _row(text, "max saved") == ["max", "saved", "(bytes)", str(3 * 4096)]
    assert _row(text, "visits") == ["visits", "-"]
    assert _row(text, "wake-ups") == ["wake-ups", "-"]
    assert _row(text, "cpu (%)") == ["cpu", "(%)", "-"]
    assert _row(text, "cpu  ") == ["cpu", "-"]


# --- selection --------------------------------------------------------------------------


def test_no_processes_drops_the_process_tables_only() -> None:
    report = two_mode_report()
    full = _table(report)
    text = _table(report, TableView(processes=False))
    assert _lines(full, "pid  mode")
    assert not _lines(text, "pid  mode")
    assert "memory " in text and "ksm " in text and "summary " in text


def test_pid_shows_only_that_process() -> None:
    text = _table(two_mode_report(), TableView(pids=frozenset({2})))
    pids = [line.split()[0] for line in text.splitlines() if line[:5].strip().isdigit()]
    assert pids and set(pids) == {"2"}
    # a pid absent from one snapshot: said so there
    report = two_mode_report()
    for run in report["runs"]:
        run["snapshots"][0]["processes"] = run["snapshots"][0]["processes"][1:]  # pid 1 only
    text = _table(report, TableView(pids=frozenset({2})))
    assert "processes: none of --pid 2 here" in text


def test_snapshot_selects_blocks_and_final_names_the_final_state() -> None:
    report = two_mode_report()
    only_merged = _table(report, TableView(snapshots=frozenset({"merged"})))
    assert _lines(only_merged, 'snapshot "merged"')
    assert not _lines(only_merged, "final")
    only_final = _table(report, TableView(snapshots=frozenset({"final"})))
    assert not _lines(only_final, "snapshot ")
    assert _lines(only_final, "final (event 12")
    # the run's ksmd block and settings stay
    assert _lines(only_merged, "ksmd ") and _lines(only_merged, "settings ")


@pytest.mark.parametrize(
    ("view", "message"),
    [
        (TableView(snapshots=frozenset({"nope"})), '--snapshot "nope": no snapshot has that label'),
        (TableView(pids=frozenset({77})), "--pid 77: no such process in any snapshot"),
    ],
)
def test_a_selection_of_nothing_is_refused_before_anything_is_written(
    view: TableView, message: str
) -> None:
    out = io.StringIO()
    with pytest.raises(UsageError, match=message):
        render(two_mode_report(), "table", out, view)
    assert out.getvalue() == ""


def test_table_view_refuses_selection_outside_the_table() -> None:
    assert table_view("json", "bytes") == TableView(units="bytes")
    for kwargs in ({"processes": False}, {"pids": [1]}, {"snapshots": ["a"]}):
        with pytest.raises(UsageError, match="select what the table shows"):
            table_view("csv", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not with --no-processes"):
        table_view("table", processes=False, pids=[1])


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "json", "--pid", "1"],
        ["--format", "tsv", "--no-processes"],
        ["--snapshot", "nope"],
        ["--pid", "3", "--no-processes"],
        ["--pid", "99"],
    ],
    ids=str,
)
def test_run_refuses_a_bad_selection_with_status_2_and_no_output(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["run", DEMO, *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("ksmreplay: ")


def test_run_pid_and_snapshot_through_the_command_line() -> None:
    result = CliRunner().invoke(cli, ["run", DEMO, "--pid", "3", "--snapshot", "merged"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert [line.split()[0] for line in text.splitlines() if line[:5].strip().isdigit()] == [
        "3"
    ] * 4  # legacy and unshare, in two tables cut to fit 80 columns
    assert len(_lines(text, "snapshot ")) == 1 and not _lines(text, "final")


# --- the final state said once ----------------------------------------------------------


def _ending_with_a_snapshot() -> Report:
    """Two modes whose last snapshot is the final state under another label."""
    report = two_mode_report()
    for run in report["runs"]:
        last = copy.deepcopy(run["final"])
        last["label"] = "end"
        run["snapshots"].append(last)
    return report


def test_final_is_one_line_when_the_last_snapshot_holds_the_same() -> None:
    text = _table(_ending_with_a_snapshot())
    assert 'final (event 12, t=1500000000 ns): as snapshot "end" above' in text.splitlines()
    assert len(_lines(text, "summary ")) == 2  # "merged" and "end", not final


def test_final_is_shown_whole_when_it_differs_or_its_twin_is_not_shown() -> None:
    report = _ending_with_a_snapshot()
    report["runs"][1]["final"]["ksm"]["pages_volatile"] += 1  # one run differs
    assert _lines(_table(report), "final (event 12, t=1500000000 ns)") == [
        "final (event 12, t=1500000000 ns)"
    ]
    same = _ending_with_a_snapshot()
    text = _table(same, TableView(snapshots=frozenset({"merged", "final"})))
    assert _lines(text, "final ") == ["final (event 12, t=1500000000 ns)"]


def test_demo_with_every_says_final_once() -> None:
    # the demo ends at 4 ms: every@4000000 is the final state
    result = CliRunner().invoke(cli, ["run", DEMO, "--every", "1ms"])
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout, "final ") == [
        'final (event 18, t=4000000 ns): as snapshot "every@4000000" above'
    ]
    result = CliRunner().invoke(cli, ["run", DEMO, "--every", "3ms"])
    assert _lines(result.stdout, "final ") == ["final (event 18, t=4000000 ns)"]


# --- notes ------------------------------------------------------------------------------


def _set(snap: Snap, saved: int, profit: int) -> None:
    """Give ``snap`` ``saved`` pages saved (of 100 resident without KSM) and ``general_profit``."""
    snap["summary"] = summarise(100, 100 - saved, 10, 4096)
    snap["ksm"]["general_profit"] = profit


def _notes(text: str) -> list[str]:
    return _lines(text, "note: ")


def test_a_note_when_modes_disagree_in_direction() -> None:
    report = two_mode_report()
    for run in report["runs"]:
        run["snapshots"] = []  # (no previous snapshot to disagree with)
    legacy, unshare = (run["final"] for run in report["runs"])
    _set(legacy, 30, 50_000)
    _set(unshare, 20, 90_000)  # saves less, yet more general_profit
    notes = _notes(_table(report))
    assert notes == [
        "note: legacy->unshare: saved down, general_profit up; legacy omits zero pages"
    ]
    _set(unshare, 40, 90_000)  # both up: no note
    assert _notes(_table(report)) == []
    _set(unshare, 30, 10_000)  # saved equal: no direction to disagree with
    assert _notes(_table(report)) == []


def test_a_note_when_consecutive_snapshots_disagree() -> None:
    report = one_mode_report()
    run = report["runs"][0]
    first = copy.deepcopy(run["final"])
    first["label"] = "s1"
    run["snapshots"] = [first]
    _set(first, 10, 80_000)
    _set(run["final"], 25, 60_000)  # more saved, less general_profit
    assert _notes(_table(report)) == [
        "note: since the last snapshot: saved up, general_profit down; KSM counters lag"
    ]
    # in two modes, only one of which disagrees: named
    report = two_mode_report()
    for run, profits in zip(report["runs"], ((1000, 2000), (3000, 2500)), strict=True):
        _set(run["snapshots"][0], 10, profits[0])
        _set(run["final"], 20, profits[1])
    text = _table(report)
    assert _notes(text) == [
        "note: since the last snapshot, in unshare: saved up, general_profit down; KSM",
    ]
    assert "      counters lag" in text.splitlines()  # wrapped to fit 80 columns


def test_notes_and_every_line_fit_80_columns_with_long_mode_names() -> None:
    report = two_mode_report()
    for run, kernel in zip(report["runs"], ("6.1", "6.18"), strict=True):
        run["kernel"] = kernel
    legacy, unshare = (run["final"] for run in report["runs"])
    _set(legacy, 30, 50_000)
    _set(unshare, 20, 90_000)
    text = _table(report)
    assert _notes(text) == [
        "note: legacy@6.1->unshare@6.18: saved down, general_profit up; legacy omits zero"
    ]
    assert "      pages" in text.splitlines()
    assert all(len(line) <= TABLE_WIDTH for line in text.splitlines())


def _note_free(report: dict[str, Any]) -> bool:
    return not _notes(_table(report))  # type: ignore[arg-type]


def test_the_demo_shows_legacy_saving_more_with_less_general_profit() -> None:
    # legacy's unmerging leaves KSM's zero pages mapped (saved), which its
    # general_profit never counted: the note says so at the end
    # (and that those pages are saved beyond what merging could save: they sit
    # in mappings that are no longer mergeable)
    result = CliRunner().invoke(cli, ["run", DEMO])
    assert result.exit_code == 0, result.output
    assert _notes(result.stdout) == [
        "note: legacy: saves 32.00 KiB beyond the ideal; zero pages KSM left mapped where",
        "note: legacy->unshare: saved down, general_profit up; legacy omits zero pages",
    ]
    assert _note_free(two_mode_report())  # type: ignore[arg-type]


def test_a_note_when_a_run_saves_more_than_the_ideal() -> None:
    report = two_mode_report()
    for run in report["runs"]:
        run["snapshots"] = []
    legacy, unshare = (run["final"] for run in report["runs"])
    profit = unshare["ksm"]["general_profit"]
    legacy["summary"] = summarise(100, 60, 70, 4096)  # 40 saved, 30 possible
    unshare["summary"] = summarise(100, 70, 70, 4096)  # all 30 saved: no note
    legacy["ksm"]["general_profit"] = profit
    assert _notes(_table(report)) == [
        "note: legacy: saves 40.00 KiB beyond the ideal; zero pages KSM left mapped where"
    ]
    assert "      merging was switched off" in _table(report).splitlines()
    view = TableView(units="pages")
    assert _notes(_table(report, view))[0].startswith("note: legacy: saves 10 pages beyond")


# --- milestones -------------------------------------------------------------------------


def test_without_snapshots_the_milestones_are_not_shown_as_nothing_saved() -> None:
    # GIVEN a report whose runs have no snapshots, only the final state (which
    # saved pages): the milestones, taken from snapshots, are 0 and null
    report = two_mode_report()
    for run in report["runs"]:
        run["snapshots"] = []
        run["milestones"] = {"max_saved_pages": 0, "t_saved_50": None, "t_saved_90": None}
    text = _table(report)
    # THEN the table shows no figure for them, and says how to get them
    assert _row(text, "max saved") == ["max", "saved", "-", "-"]
    assert "add --every DURATION" in text
    # and with snapshots it shows the figures, without the note
    with_snapshots = _table(two_mode_report())
    assert "add --every" not in with_snapshots
    assert _row(with_snapshots, "max saved")[-1] != "-"
