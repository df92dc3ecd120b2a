"""Renderers: whole outputs against reviewed golden files, plus the rules they follow.

The golden files in ``tests/golden/`` were reviewed by hand.  After a deliberate
change of a format, regenerate them with ``KSMREPLAY_UPDATE_GOLDEN=1 pytest
tests/test_render.py`` and review the diff.
"""

from __future__ import annotations

import copy
import csv
import enum
import io
import json
import math
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import tabulate
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from report_samples import one_mode_report, two_mode_report
from support import check_golden, quick

from ksmreplay.cli import cli
from ksmreplay.render import (
    CSV_HEADER,
    FORMATS,
    SCOPES,
    csv_field,
    plain_table,
    render,
    render_json,
    tsv_field,
)
from ksmreplay.replay import expand_modes, replay, replay_spooled
from ksmreplay.report import (
    AnyReport,
    Report,
    SnapshotSpool,
    SpooledReport,
    close_spools,
    schema_text,
)
from ksmreplay.trace import open_trace

GOLDEN = Path(__file__).parent / "golden"
# the specification lives beside the repository, in shared/spec/
SPEC_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "spec" / "report.schema.json"


def _text(report: AnyReport, fmt: str) -> str:
    out = io.StringIO(newline="")
    render(report, fmt, out)
    return out.getvalue()


CASES = [
    ("two_modes", two_mode_report, "table"),
    ("two_modes", two_mode_report, "csv"),
    ("one_mode", one_mode_report, "table"),
    ("one_mode", one_mode_report, "tsv"),
    ("one_mode", one_mode_report, "json"),
]


@pytest.mark.parametrize(("name", "make", "fmt"), CASES, ids=[f"{n}.{f}" for n, _, f in CASES])
def test_golden_output(name: str, make: Any, fmt: str) -> None:
    # GIVEN a hand-made report WHEN it is rendered THEN the whole output is the reviewed one
    path = GOLDEN / f"{name}.{fmt}"
    check_golden(path, _text(make(), fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_byte_identical_on_repeat_and_ends_with_newline(fmt: str) -> None:
    first = _text(two_mode_report(), fmt)
    second = _text(two_mode_report(), fmt)
    assert first == second
    assert first.endswith("\n")
    assert "\r" not in first


@pytest.mark.parametrize("fmt", FORMATS)
def test_rendering_does_not_change_the_report(fmt: str) -> None:
    report = two_mode_report()
    before = copy.deepcopy(report)
    _text(report, fmt)
    assert report == before


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render(two_mode_report(), "xml", io.StringIO())


# --- either form of the report: whole, or with its snapshots spooled ----------------------


def _spooled(report: Report) -> SpooledReport:
    """The same report with each run's snapshots in a spool."""
    runs = []
    for run in report["runs"]:
        spool = SnapshotSpool()
        for snap in run["snapshots"]:
            spool.append(snap)
        runs.append({**run, "snapshots": spool})
    return cast(SpooledReport, {**report, "runs": runs})


def _many_snapshots_report() -> Report:
    """Two modes, snapshots of different labels and process sets, an extra run key."""
    report = two_mode_report()
    for n, run in enumerate(report["runs"]):
        final = run["final"]
        run["snapshots"] = []
        for i in range(7):
            snap = copy.deepcopy(final)
            snap["label"] = f"s{i}" if i != 3 else ""
            snap["processes"] = snap["processes"][: i % 3]
            snap["ksm"]["pages_scanned"] = 100 * i + n
            run["snapshots"].append(snap)
        run["events_observed"] = {"merges": n}  # type: ignore[typeddict-unknown-key]
    return report


def _odd_report() -> Report:
    """Shapes the JSON encoder must get right: empty and nested meta, unicode, floats."""
    report = one_mode_report()
    report["trace"]["meta"] = {"a": {}, "b": [], "c": {"d": [1, {"e": None}]}, "é": 0.5}
    report["trace"]["path"] = "dir/\u00e9\n.msgpack"
    report["runs"][0]["snapshots"] = [copy.deepcopy(report["runs"][0]["final"])]
    report["runs"][0]["snapshots"][0]["label"] = '\u2028\x1b"é'
    report["runs"][0]["snapshots"][0]["processes"] = []
    return report


REPORTS = [two_mode_report, one_mode_report, _many_snapshots_report, _odd_report]


@pytest.mark.parametrize("make", REPORTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_spooled_report_renders_byte_identical_to_the_whole_one(make: Any, fmt: str) -> None:
    report = make()
    spooled = _spooled(report)
    try:
        assert _text(spooled, fmt) == _text(report, fmt)
        assert _text(spooled, fmt) == _text(report, fmt)  # the spools can be read again
    finally:
        close_spools(spooled)


@pytest.mark.parametrize("make", REPORTS)
def test_json_is_byte_for_byte_json_dumps_of_the_report(make: Any) -> None:
    report = make()
    assert _text(report, "json") == json.dumps(report, indent=2) + "\n"
    no_runs = make()
    no_runs["runs"] = []
    assert _text(no_runs, "json") == json.dumps(no_runs, indent=2) + "\n"
    odd_keys = make()
    odd_keys["trace"]["meta"] = {1: [True], None: {}, 2.5: "x"}
    assert _text(odd_keys, "json") == json.dumps(odd_keys, indent=2) + "\n"


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e300, 2**53 + 1.0])
    | st.text(max_size=12)
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        | st.dictionaries(st.integers(-3, 3) | st.booleans() | st.none(), inner, max_size=3)
    ),
    max_leaves=30,
)


class _Kind(enum.IntEnum):
    ONE = 1


class _Name(str, enum.Enum):
    A = "a\u00e9"


@given(value=_JSON_VALUES)
@settings(max_examples=300, deadline=None)
def test_json_writes_any_value_as_json_dumps_does(value: Any) -> None:
    # (the report's own encoder is faster than the json module's: it must
    # write the same bytes for every value the json module accepts)
    report = {"runs": [{"snapshots": [value, {"k": value}], "x": [value]}], "v": value}
    out = io.StringIO()
    render_json(cast(AnyReport, report), out)
    assert out.getvalue() == json.dumps(report, indent=2) + "\n"


def test_json_writes_subclasses_of_scalars_as_json_dumps_does() -> None:
    report = {"runs": [{"snapshots": [{"a": _Kind.ONE, "b": [_Name.A, 2.5]}]}]}
    out = io.StringIO()
    render_json(cast(AnyReport, report), out)
    assert out.getvalue() == json.dumps(report, indent=2) + "\n"
    with pytest.raises(TypeError):
        render_json(cast(AnyReport, {"runs": [{"snapshots": [{"a": object()}]}]}), io.StringIO())


BUNDLED = Path(__file__).parent.parent / "traces"


@pytest.mark.parametrize("name", ["demo", "unmerge-cycle", "containers"])
def test_replay_spooled_renders_what_replay_renders_for_bundled_traces(name: str) -> None:
    # GIVEN a bundled trace replayed both ways in every mode
    path = str(BUNDLED / f"{name}.msgpack")
    modes = expand_modes("all")
    with open_trace(path) as reader:
        whole = replay(reader, modes)
    with open_trace(path) as reader:
        spooled = replay_spooled(reader, modes)
    # THEN every format gives the same bytes, and JSON is json.dumps of the whole report
    try:
        for fmt in FORMATS:
            assert _text(spooled, fmt) == _text(whole, fmt), fmt
        assert _text(spooled, "json") == json.dumps(whole, indent=2) + "\n"
    finally:
        close_spools(spooled)


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_prints_the_whole_reports_bytes(fmt: str) -> None:
    path = str(BUNDLED / "demo.msgpack")
    with open_trace(path) as reader:
        whole = replay(reader, expand_modes("all"))
    result = CliRunner().invoke(cli, ["run", path, "--mode", "all", "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.decode() == _text(whole, fmt)


# --- json -------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    """The schema the package ships (what ``ksmreplay schema`` prints)."""
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


def test_schema_command_prints_the_shipped_schema() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == _schema()
    assert _schema()["$schema"].startswith("http")


def test_shipped_schema_covers_the_contract() -> None:
    """Every property the contract's schema names is in the shipped one (it may add more)."""
    if not SPEC_SCHEMA.exists():
        pytest.skip(f"{SPEC_SCHEMA} not found")
    spec = json.loads(SPEC_SCHEMA.read_text())

    def props(node: Any, path: str = "") -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}/{key}"
                if key == "properties" and isinstance(value, dict):
                    found |= {f"{path}/{name}" for name in value}
                found |= props(value, sub)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found |= props(value, f"{path}/{i}")
        return found

    assert props(spec) <= props(_schema())


def _spec_schema() -> dict[str, Any]:
    """The contract's schema, where the repository sits beside it."""
    if not SPEC_SCHEMA.exists():
        pytest.skip(f"{SPEC_SCHEMA} not found")
    loaded: dict[str, Any] = json.loads(SPEC_SCHEMA.read_text())
    return loaded


@pytest.mark.parametrize("schema", [_schema, _spec_schema], ids=["shipped", "spec"])
@pytest.mark.parametrize("make", [two_mode_report, one_mode_report])
def test_json_validates_against_the_schema_and_round_trips(make: Any, schema: Any) -> None:
    report = make()
    text = _text(report, "json")
    parsed = json.loads(text)
    jsonschema.validate(parsed, schema())
    assert parsed == report
    # key order is the report's (no sorting): "report" first, "runs" last
    assert list(parsed) == ["report", "trace", "runs"]
    assert text.startswith('{\n  "report": 1,\n  "trace": {\n    "path": ')


def test_schema_takes_exec_ksmd_with_what_the_kernel_does_not_tell() -> None:
    # exec: no count of ksmd's batches, no pages_scanned before 6.7, no CPU without ksmd
    report = one_mode_report()
    report["runs"][0]["ksmd"] = dict.fromkeys(report["runs"][0]["ksmd"])  # type: ignore[typeddict-item]
    jsonschema.validate(json.loads(_text(report, "json")), _schema())
    report["runs"][0]["ksmd"]["cpu_ns"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(_text(report, "json")), _schema())


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (("final",), "pages_shared"),  # in final.ksm
        ((), "ksmd"),
        ((), "milestones"),
        (("final",), "summary"),
        (("final", "summary"), "percent_of_ideal"),
    ],
)
def test_json_schema_rejects_a_broken_report(where: tuple[str, ...], key: str) -> None:
    # the schema test above can fail: a missing key is caught
    report = two_mode_report()
    part: Any = report["runs"][0]
    for step in where:
        part = part[step]
    if key == "pages_shared":
        part = part["ksm"]
    del part[key]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(_text(report, "json")), _schema())


# --- csv / tsv --------------------------------------------------------------------------


def _csv_rows(report: Report, fmt: str) -> list[list[str]]:
    delimiter = "," if fmt == "csv" else "\t"
    return list(csv.reader(io.StringIO(_text(report, fmt), newline=""), delimiter=delimiter))


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_has_one_row_per_counter_value(fmt: str) -> None:
    report = two_mode_report()
    rows = _csv_rows(report, fmt)
    assert tuple(rows[0]) == CSV_HEADER
    expected = 0
    for run in report["runs"]:
        for snap in [*run["snapshots"], run["final"]]:
            expected += len(snap["summary"]) + len(snap["ksm"])
            expected += len(snap["memory"]) + len(snap["events"])
            expected += sum(len(p) - 1 for p in snap["processes"])  # pid is not a counter
        expected += len(run["ksmd"]) + len(run["milestones"])
    assert len(rows) - 1 == expected
    explain_scopes = {"explain", "explain_process", "explain_mapping"}  # only with --explain
    assert {row[4] for row in rows[1:]} == set(SCOPES) - explain_scopes
    assert all((row[5] != "") == (row[4] == "process") for row in rows[1:])
    # a run's own rows name no snapshot; every snapshot row carries its t and event
    per_run = {"ksmd", "milestones"}
    assert all((row[1:4] == ["", "", ""]) == (row[4] in per_run) for row in rows[1:])
    assert {tuple(row[1:4]) for row in rows[1:] if row[4] not in per_run} == {
        ("merged", "1000", "7"),
        ("final", "1500000000", "12"),
    }


def test_csv_values_booleans_nulls_and_line_endings() -> None:
    text = _text(two_mode_report(), "csv")
    assert text.count("\n") == len(text.splitlines())
    assert "legacy,merged,1000,7,ksm,,ksm_zero_pages,\n" in text
    assert "unshare,merged,1000,7,ksm,,ksm_zero_pages,2\n" in text
    assert "legacy,final,1500000000,12,process,2,ksm_merge_any,yes\n" in text
    assert "legacy,final,1500000000,12,process,1,ksm_merge_any,no\n" in text
    assert "legacy,merged,1000,7,summary,,saved_percent,37.5\n" in text
    assert "unshare,,,,milestones,,t_saved_50,1000\n" in text
    # processes come out by pid although the report lists pid 2 first
    pids = [row[5] for row in _csv_rows(two_mode_report(), "csv") if row[4] == "process"]
    assert pids[:14] == ["1"] * 7 + ["2"] * 7


def test_csv_quotes_a_label_with_a_comma() -> None:
    report = one_mode_report()
    report["runs"][0]["final"]["label"] = "a,b"
    rows = _csv_rows(report, "csv")
    assert rows[1][:5] == ["unshare", "a,b", "1500000000", "12", "summary"]


# --- text in fields: labels holding separators, quotes, line breaks, control characters --

NASTY_LABELS = [
    "new\nline",
    "tab\there",
    "back\\slash",
    "com,ma",
    'qu"ote',
    '"',
    "esc\x1b[31mred",
    "cr\rret",
    "crlf\r\n",
    "nul\x00bel\x07",
    "ls\u2028nel\x85",
    "\\n, not a line break",
    "ends in \\",
    "",
]


def _labelled(labels: list[str]) -> Report:
    """The two-mode report with one snapshot per label in each run."""
    report = two_mode_report()
    for run in report["runs"]:
        template = run["snapshots"][0]
        run["snapshots"] = []
        for i, label in enumerate(labels):
            snap = copy.deepcopy(template)
            snap["label"] = label
            snap["t"] = i
            run["snapshots"].append(snap)
    return report


def _placeholders() -> list[str]:
    return [f"label{i}" for i in range(len(NASTY_LABELS))]


def _relabel(rows: list[list[str]]) -> list[list[str]]:
    """Rows of the placeholder report with each placeholder replaced by its nasty label."""
    swap = dict(zip(_placeholders(), NASTY_LABELS, strict=True))
    return [[row[0], swap.get(row[1], row[1]), *row[2:]] for row in rows]


def test_csv_quotes_as_rfc_4180_and_parses_back_to_the_same_cells() -> None:
    # GIVEN labels with commas, quotes, CR, LF and control characters
    text = _text(_labelled(NASTY_LABELS), "csv")
    safe = _text(_labelled(_placeholders()), "csv")
    # WHEN the CSV is parsed back THEN every row has its six cells, labels intact
    rows = list(csv.reader(io.StringIO(text, newline="")))
    safe_rows = list(csv.reader(io.StringIO(safe, newline="")))
    assert rows == _relabel(safe_rows)
    # a field with a comma, a quote, CR or LF is quoted, quotes doubled; others are not
    # (each label's snapshot is at t = its place in NASTY_LABELS, event 7)
    assert '\nlegacy,"cr\rret",7,7,ksm,,pages_shared,1\n' in text
    assert '\nlegacy,"qu""ote",4,7,ksm,,pages_shared,1\n' in text
    assert '\nlegacy,"new\nline",0,7,ksm,,pages_shared,1\n' in text
    assert "\nlegacy,esc\x1b[31mred,6,7,ksm,,pages_shared,1\n" in text
    assert "\nlegacy,back\\slash,2,7,ksm,,pages_shared,1\n" in text


def _tsv_unescape(field: str) -> str:
    """A TSV field back to its text: \\\\, \\t, \\n, \\r; any other backslash is an error."""
    out = []
    chars = iter(field)
    for ch in chars:
        if ch == "\\":
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[next(chars)])
        else:
            out.append(ch)
    return "".join(out)


def test_tsv_escapes_tab_line_breaks_and_backslash_one_row_per_line() -> None:
    text = _text(_labelled(NASTY_LABELS), "tsv")
    safe = _text(_labelled(_placeholders()), "tsv")
    # every row is one line of six tab-separated fields: no quoting, nothing split
    lines = text.split("\n")
    assert lines.pop() == ""
    assert len(lines) == safe.count("\n")
    assert "\r" not in text
    rows = [[_tsv_unescape(field) for field in line.split("\t")] for line in lines]
    assert all(len(row) == len(CSV_HEADER) for row in rows)
    assert rows == _relabel([line.split("\t") for line in safe.split("\n")[:-1]])
    # the escapes as written
    assert "\nlegacy\ttab\\there\t1\t7\tksm\t\tpages_shared\t1\n" in text
    assert "\nlegacy\tnew\\nline\t0\t7\tksm\t\tpages_shared\t1\n" in text
    assert "\nlegacy\tcrlf\\r\\n\t8\t7\tksm\t\tpages_shared\t1\n" in text
    assert "\nlegacy\tback\\\\slash\t2\t7\tksm\t\tpages_shared\t1\n" in text
    assert '\nlegacy\tqu"ote\t4\t7\tksm\t\tpages_shared\t1\n' in text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_csv_field_parses_back_and_differs_from_the_csv_module_only_for_cr(text: str) -> None:
    line = f"{csv_field(text)},x\n"
    assert list(csv.reader(io.StringIO(line, newline=""))) == [[text, "x"]]
    if "\r" not in text:
        # what the reports wrote before for every field without a carriage return
        written = io.StringIO(newline="")
        csv.writer(written, lineterminator="\n").writerow([text, "x"])
        assert line == written.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tsv_field_is_one_field_of_one_line_and_unescapes_back(text: str) -> None:
    field = tsv_field(text)
    assert not {"\t", "\n", "\r"} & set(field)
    assert _tsv_unescape(field) == text


def _unprintable(text: str) -> set[str]:
    return {ch for ch in text if ch != "\n" and not ch.isprintable()}


def test_table_shows_labels_with_control_characters_escaped() -> None:
    text = _text(_labelled(NASTY_LABELS), "table")
    safe = _text(_labelled(_placeholders()), "table")
    assert _unprintable(text) == set()
    assert text.count("\n") == safe.count("\n")
    assert '\nsnapshot "esc\\u001b[31mred" (event 7, t=6 ns)\n' in text
    assert '\nsnapshot "crlf\\r\\n" (event 7, t=8 ns)\n' in text


def test_table_shows_a_trace_path_with_control_characters_escaped() -> None:
    report = two_mode_report()
    report["trace"]["path"] = "dir/p\nq\x1b[1m\u2028.msgpack"
    text = _text(report, "table")
    assert _unprintable(text) == set()
    assert text.count("\n") == _text(two_mode_report(), "table").count("\n")
    assert text.startswith('trace      "dir/p\\nq\\u001b[1m\\u2028.msgpack"\nevents ')
    # a printable path is shown as it is
    report["trace"]["path"] = "dir/é ü.msgpack"
    assert _text(report, "table").startswith("trace      dir/é ü.msgpack\nevents ")


# --- table ------------------------------------------------------------------------------


def _table_line(text: str, start: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith(start))


def test_table_difference_column_is_last_minus_first_and_blank_when_equal() -> None:
    text = _text(two_mode_report(), "table")
    assert _table_line(text, "ksm ") == ["ksm", "legacy", "unshare", "difference"]
    assert _table_line(text, "general_profit") == ["general_profit", "11904", "20096", "+8192"]
    assert _table_line(text, "pages_shared") == ["pages_shared", "1", "1"]
    # null in one mode: shown as "-", no difference
    assert _table_line(text, "ksm_zero_pages") == ["ksm_zero_pages", "-", "2"]


def test_table_difference_is_negative_when_the_last_mode_is_lower() -> None:
    report = two_mode_report()
    report["runs"] = report["runs"][::-1]
    text = _text(report, "table")
    assert _table_line(text, "general_profit") == ["general_profit", "20096", "11904", "-8192"]


def test_table_with_one_mode_has_no_difference_column_nor_refusals() -> None:
    text = _text(one_mode_report(), "table")
    assert "difference" not in text
    assert "refused" not in text
    assert _table_line(text, "ksm ") == ["ksm", "unshare"]


def test_table_processes_one_row_per_pid_and_mode() -> None:
    text = _text(two_mode_report(), "table")
    rows = [line.split()[:2] for line in text.splitlines() if line[:5].strip().isdigit()]
    # two blocks (snapshot, final), each cut in two tables to fit 80 columns,
    # each pid 1 then 2, each legacy then unshare
    assert rows == [["1", "legacy"], ["1", "unshare"], ["2", "legacy"], ["2", "unshare"]] * 4


def test_table_without_processes_says_so() -> None:
    report = one_mode_report()
    report["runs"][0]["final"]["processes"] = []
    assert "\nprocesses: none\n" in _text(report, "table")


def test_table_lines_have_no_trailing_blanks() -> None:
    text = _text(two_mode_report(), "table")
    assert all(line == line.rstrip() for line in text.splitlines())


def _tabulate_plain(headers: list[str], rows: list[list[str]], aligns: str) -> str:
    """The layout :func:`plain_table` promises, as tabulate makes it."""
    width = max([len(headers), *(len(row) for row in rows)])
    colalign = ["left" if i < len(aligns) and aligns[i] == "l" else "right" for i in range(width)]
    saved = tabulate.MIN_PADDING
    tabulate.MIN_PADDING = 0
    try:
        text = tabulate.tabulate(
            rows, headers=headers, tablefmt="plain", disable_numparse=True, colalign=colalign
        )
    finally:
        tabulate.MIN_PADDING = saved
    return "\n".join(line.rstrip() for line in text.splitlines())


_CELLS = st.one_of(
    st.text(max_size=5),  # any character, printable or not
    st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=8),
    st.sampled_from(["", " ", " a ", "True", "-", "+3", "-12", "1.5", "1e5", "yes"]),
)


@st.composite
def _tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]], str]:
    width = draw(st.integers(1, 5))
    ragged = draw(st.booleans()) and draw(st.booleans())
    rows = draw(
        st.lists(
            st.lists(_CELLS, min_size=1 if ragged else width, max_size=width),
            min_size=1,
            max_size=6,
        )
    )
    headers = draw(st.one_of(st.just([]), st.lists(_CELLS, min_size=width, max_size=width)))
    aligns = draw(st.text(alphabet="lr", max_size=6))
    return headers, rows, aligns


@settings(max_examples=400, deadline=None)
@given(_tables())
def test_plain_table_lays_out_as_tabulate_plain(
    table: tuple[list[str], list[list[str]], str],
) -> None:
    headers, rows, aligns = table
    assert plain_table(headers, rows, aligns) == _tabulate_plain(headers, rows, aligns)


@pytest.mark.parametrize("options", [[], ["--mode", "all"], ["--explain"]], ids=str)
@pytest.mark.parametrize("trace", quick(sorted(BUNDLED.glob("*.msgpack"))), ids=lambda p: p.name)
def test_table_of_every_bundled_trace_fits_80_columns(trace: Path, options: list[str]) -> None:
    result = CliRunner().invoke(cli, ["run", str(trace), *options])
    assert result.exit_code == 0, result.output
    wide = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not wide, wide[:3]


def test_a_wide_table_is_cut_into_tables_that_repeat_the_key_columns() -> None:
    from ksmreplay.render import wrapped_table

    headers = ["pid", "mode", *(f"counter_{i:02d}" for i in range(8))]
    rows = [[str(pid), "unshare", *(str(pid * 1000 + i) for i in range(8))] for pid in (1, 22)]
    text = wrapped_table(headers, rows, "rl", keep=2, width=40)
    parts = text.split("\n\n")
    assert len(parts) > 1
    assert all(len(line) <= 40 for line in text.splitlines())
    for part in parts:
        lines = part.splitlines()
        assert lines[0].split()[:2] == ["pid", "mode"]
        assert [line.split()[:2] for line in lines[1:]] == [["1", "unshare"], ["22", "unshare"]]
    cells = [cell for part in parts for cell in part.splitlines()[0].split()[2:]]
    assert cells == headers[2:]  # every column once, in order
    narrow = [r[:4] for r in rows]
    assert wrapped_table(headers[:4], narrow, "rl", keep=2) == (
        plain_table(headers[:4], narrow, "rl")
    )
