"""Renderers: one report in, text out, to a stream they are handed.

Every format shows the same numbers and is deterministic: the same report gives
byte-identical output on every machine (no terminal widths, no locale, no
colours, ``\\n`` line endings).  ``render(report, fmt, out)`` picks one of
``render_table``, ``render_json``, ``render_csv``, ``render_tsv``.

Each renderer takes either form of the report (``report.py``): the whole
:class:`~ksmreplay.report.Report`, or a
:class:`~ksmreplay.report.SpooledReport` whose snapshots are read back from
their spools.  Output is written as it is made, a snapshot at a time, so
memory does not grow with the number of snapshots: JSON and CSV/TSV read each
run's snapshots in turn, the table reads every run's n-th snapshot side by
side.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, TextIO, cast

import tabulate as tabulate_module
from tabulate import tabulate

from ksmreplay.errors import UsageError
from ksmreplay.explain import CATEGORIES, TWIN_NOT_MERGED
from ksmreplay.report import (
    EVENT_COUNTERS,
    KSM_COUNTERS,
    KSMD_KEYS,
    MEMORY_COUNTERS,
    MILESTONE_KEYS,
    PROCESS_COUNTERS,
    SUMMARY_KEYS,
    AnyReport,
    Snap,
    SnapshotSpool,
)

FORMATS: tuple[str, ...] = ("table", "json", "csv", "tsv")
"""Every ``--format`` value, the default first."""

CSV_HEADER: tuple[str, ...] = (
    "mode",
    "snapshot",
    "t",
    "event",
    "scope",
    "pid",
    "counter",
    "value",
)
"""The columns of the CSV and TSV formats."""

SCOPES: tuple[str, ...] = (
    "summary",
    "ksm",
    "process",
    "memory",
    "events",
    "explain",
    "explain_process",
    "explain_mapping",
    "ksmd",
    "milestones",
)
"""The ``scope`` values of CSV/TSV rows, in the order rows appear (the
``explain`` ones only with ``run --explain``; the last two are a run's,
after its ``final``)."""

_NULL = "-"
"""How the table shows a null counter (one the mode's kernel does not have)."""


def render(report: AnyReport, fmt: str, out: TextIO, view: TableView | None = None) -> None:
    """Write ``report`` to ``out`` in format ``fmt`` (one of :data:`FORMATS`).

    :param report: a report as built by ``replay()`` (REPORT_FORMAT.md), or
        by ``replay_spooled()``.
    :param fmt: ``table`` (for people), ``json`` (exactly REPORT_FORMAT.md),
        ``csv`` or ``tsv`` (one row per counter value).
    :param out: a text stream; everything ends with ``\\n``.
    :param view: the table's units and what it shows (:class:`TableView`);
        the other formats are always the whole report in exact integers.
    :raises ValueError: for an unknown format (the CLI offers only :data:`FORMATS`).
    :raises UsageError: ``view`` selects a snapshot label or a pid that the
        report does not hold (checked before anything is written).
    """
    if fmt == "table":
        render_table(report, out, view)
        return
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    renderer(report, out)


# --- json -------------------------------------------------------------------------------


_JSON_INDENT = 2
_JSON_STREAM_DEPTH = 3
"""How deep :func:`render_json` writes containers piece by piece: the report
(0), its ``runs`` (1), each run (2), each run's ``snapshots`` (3).  Deeper
values (a snapshot, ``trace``, ``settings``...) are encoded whole."""


_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _json_float(value: float) -> str:
    """A float as the json module writes it (``NaN`` and ``Infinity`` included)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


_JSON_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _encode_str,
    int: int.__repr__,
    float: _json_float,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _value: "null",
}
"""How each scalar type is written, by exact type (subclasses take the slow path)."""


def _indented(value: object, newline: str, parts: list[str]) -> None:
    """Append to ``parts`` what ``json.dumps(value, indent=2)`` writes, with
    ``newline`` (a newline and the indent of ``value``'s depth) for its breaks.

    The json module encodes an indented document in Python, one generator per
    container; this does the same work in one recursion, several times faster
    on reports (a snapshot is hundreds of small values).  Byte for byte the
    same output (tests compare the two on every bundled trace's report).
    """
    scalar = _JSON_SCALARS.get(type(value))
    if scalar is not None:
        parts.append(scalar(value))
    elif isinstance(value, dict):
        if not value:
            parts.append("{}")
        elif not all(type(key) is str for key in value):
            # (json.dumps turns a key that is not a string into one; leave that to it)
            parts.append(json.dumps(value, indent=_JSON_INDENT).replace("\n", newline))
        else:
            inner = newline + " " * _JSON_INDENT
            sep = "{" + inner
            for key, item in value.items():
                scalar = _JSON_SCALARS.get(type(item))
                if scalar is not None:
                    parts.append(sep + _encode_str(key) + ": " + scalar(item))
                else:
                    parts.append(sep + _encode_str(key) + ": ")
                    _indented(item, inner, parts)
                sep = "," + inner
            parts.append(newline + "}")
    elif isinstance(value, (list, tuple)):
        if not value:
            parts.append("[]")
        else:
            inner = newline + " " * _JSON_INDENT
            sep = "[" + inner
            for item in value:
                scalar = _JSON_SCALARS.get(type(item))
                if scalar is not None:
                    parts.append(sep + scalar(item))
                else:
                    parts.append(sep)
                    _indented(item, inner, parts)
                sep = "," + inner
            parts.append(newline + "]")
    elif isinstance(value, (str, int, float)):
        # (subclasses: an enum of str or int, a bool is an int too)
        for kind in (str, bool, int, float):
            if isinstance(value, kind):
                parts.append(_JSON_SCALARS[kind](value))
                break
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_value(value: object, depth: int) -> str:
    """``value`` as ``json.dumps(..., indent=2)`` writes it at nesting ``depth``."""
    parts: list[str] = []
    _indented(value, "\n" + " " * (_JSON_INDENT * depth), parts)
    return "".join(parts)


def _write_json(value: object, depth: int, out: TextIO) -> None:
    """Write what ``json.dumps(value, indent=2)`` would at ``depth``, a piece at a time."""
    if (
        depth > _JSON_STREAM_DEPTH
        or not isinstance(value, (dict, list, SnapshotSpool))
        or (isinstance(value, dict) and not all(isinstance(key, str) for key in value))
    ):
        # (json.dumps turns a key that is not a string into one; leave that to it)
        out.write(_json_value(value, depth))
        return
    if not len(value):
        out.write("{}" if isinstance(value, dict) else "[]")
        return
    inner = "\n" + " " * (_JSON_INDENT * (depth + 1))
    if isinstance(value, dict):
        out.write("{")
        for i, (key, item) in enumerate(value.items()):
            out.write(("," if i else "") + inner + json.dumps(key) + ": ")
            _write_json(item, depth + 1, out)
        out.write("\n" + " " * (_JSON_INDENT * depth) + "}")
    else:
        out.write("[")
        for i, item in enumerate(value):
            out.write(("," if i else "") + inner)
            _write_json(item, depth + 1, out)
        out.write("\n" + " " * (_JSON_INDENT * depth) + "]")


def render_json(report: AnyReport, out: TextIO) -> None:
    """The report as REPORT_FORMAT.md: indented JSON in report key order, then ``\\n``.

    Byte for byte ``json.dumps(report, indent=2) + "\\n"``, written one
    snapshot at a time.
    """
    _write_json(report, 0, out)
    out.write("\n")


# --- csv / tsv --------------------------------------------------------------------------


def _cell(value: object) -> str:
    """A CSV/TSV value: booleans as yes/no (as ksm_stat shows them), null as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _ordered_keys(known: Sequence[str], mappings: Iterable[Mapping[str, Any]]) -> list[str]:
    """The keys of ``mappings``: those of ``known`` in its order, then others as first seen."""
    seen: dict[str, None] = {}
    extra: dict[str, None] = {}
    for mapping in mappings:
        for key in mapping:
            (seen if key in known else extra)[key] = None
    return [key for key in known if key in seen] + [key for key in extra if key != "pid"]


_CSV_SPECIAL = re.compile(r'[",\r\n]')
"""Characters that make RFC 4180 enclose a CSV field in double quotes."""

_TSV_SPECIAL = re.compile(r"[\\\t\n\r]")
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def csv_field(text: str) -> str:
    """One CSV field, quoted as RFC 4180 says.

    A field holding a comma, a double quote, a carriage return or a line feed
    is enclosed in double quotes, each of its double quotes doubled; any other
    field is written as it is.
    """
    if _CSV_SPECIAL.search(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def tsv_field(text: str) -> str:
    """One TSV field: backslash, tab, line feed and carriage return written as
    ``\\\\``, ``\\t``, ``\\n``, ``\\r``; everything else as it is (no quoting).

    So a TSV row is one line with a tab between fields, and replacing each
    escape by its character gives the field back.
    """
    if _TSV_SPECIAL.search(text) is None:
        return text
    return _TSV_SPECIAL.sub(lambda match: _TSV_ESCAPES[match.group()], text)


def _text_cell(value: object, field: Callable[[str], str]) -> str:
    """:func:`_cell`, made a field of the format by ``field``."""
    if type(value) is int:
        return str(value)  # the common case: digits need no quoting nor escaping
    return field(_cell(value))


def _snap_lines(mode: str, snap: Snap, field: Callable[[str], str], sep: str) -> str:
    """The rows of one snapshot: summary, ksm, then each process (by pid), then
    memory, then events."""
    head = f"{field(mode)}{sep}{field(snap['label'])}{sep}{snap['t']}{sep}{snap['event']}{sep}"

    def section(start: str, values: Mapping[str, Any], known: Sequence[str]) -> Iterator[str]:
        for counter in _ordered_keys(known, [values]):
            yield f"{start}{field(counter)}{sep}{_text_cell(values[counter], field)}\n"

    lines = list(section(f"{head}summary{sep}{sep}", snap.get("summary", {}), SUMMARY_KEYS))
    lines.extend(section(f"{head}ksm{sep}{sep}", snap["ksm"], KSM_COUNTERS))
    for proc in sorted(snap["processes"], key=lambda p: int(p["pid"])):
        start = f"{head}process{sep}{field(str(proc['pid']))}{sep}"
        lines.extend(section(start, proc, PROCESS_COUNTERS))
    lines.extend(section(f"{head}memory{sep}{sep}", snap["memory"], MEMORY_COUNTERS))
    lines.extend(section(f"{head}events{sep}{sep}", snap["events"], EVENT_COUNTERS))
    lines.extend(_explain_lines(head, snap, field, sep))
    return "".join(lines)


def run_names(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the table and the rows call each run: its mode, or ``MODE@KERNEL``
    (``legacy@6.1``) when the runs are on more than one kernel version."""
    if len({run.get("kernel") for run in runs}) > 1:
        return [f"{run['mode']}@{run.get('kernel')}" for run in runs]
    return [str(run["mode"]) for run in runs]


def _run_lines(name: str, run: Mapping[str, Any], field: Callable[[str], str], sep: str) -> str:
    """The rows of a run's ``ksmd`` and ``milestones`` (no snapshot, t, event nor pid)."""
    lines = []
    for scope, known in (("ksmd", KSMD_KEYS), ("milestones", MILESTONE_KEYS)):
        values = run.get(scope, {})
        start = f"{field(name)}{sep}{sep}{sep}{sep}{scope}{sep}{sep}"
        for counter in _ordered_keys(known, [values]):
            lines.append(f"{start}{field(counter)}{sep}{_text_cell(values[counter], field)}\n")
    return "".join(lines)


def _explain_lines(head: str, snap: Snap, field: Callable[[str], str], sep: str) -> list[str]:
    """The rows of ``explain``, if the snapshot has it: the system's categories
    (scope ``explain``), each process's (``explain_process``, with its pid) and
    each mapping's (``explain_mapping``, with its pid; the counter is
    ``START-END:CATEGORY``, addresses in bytes)."""
    explain = snap.get("explain")
    if explain is None:
        return []
    lines = [
        f"{head}explain{sep}{sep}{field(name)}{sep}{pages}\n"
        for name, pages in explain["system"].items()
    ]
    for proc in explain["processes"]:
        start = f"{head}explain_process{sep}{proc['pid']}{sep}"
        lines.extend(
            f"{start}{field(name)}{sep}{pages}\n" for name, pages in proc["categories"].items()
        )
    for m in explain["mappings"]:
        start = f"{head}explain_mapping{sep}{m['pid']}{sep}{m['start']}-{m['end']}:"
        lines.extend(
            f"{start}{field(name)}{sep}{pages}\n" for name, pages in m["categories"].items()
        )
    return lines


def _write_rows(report: AnyReport, out: TextIO, field: Callable[[str], str], sep: str) -> None:
    """Every row of the CSV/TSV formats, header first, a snapshot at a time."""
    out.write(sep.join(field(name) for name in CSV_HEADER) + "\n")
    names = iter(run_names(report["runs"]))
    for run in report["runs"]:
        mode = next(names)
        for snap in run["snapshots"]:
            out.write(_snap_lines(mode, snap, field, sep))
        out.write(_snap_lines(mode, run["final"], field, sep))
        out.write(_run_lines(mode, run, field, sep))


def render_csv(report: AnyReport, out: TextIO) -> None:
    """One row per (mode, snapshot, t, event, scope, pid, counter, value), with a header row.

    Runs in report order; in each, the snapshots in order and then ``final``;
    in each snapshot (its label, ``t`` and ``event`` on each of its rows) the
    ``summary``, the ``ksm`` counters, each process's (``pid`` set only on
    these rows), ``memory`` and ``events``; then the run's ``ksmd`` and
    ``milestones`` (snapshot, t, event and pid empty).  Booleans are
    ``yes``/``no``, null is empty.  Fields are quoted as RFC 4180 says (:func:`csv_field`), so a
    label holding a comma, a quote or a line break stays one field; lines end
    with ``\\n``.
    """
    _write_rows(report, out, csv_field, ",")


def render_tsv(report: AnyReport, out: TextIO) -> None:
    """The rows of :func:`render_csv`, tab-separated, one row per line.

    No quoting: backslash, tab, line feed and carriage return in a field are
    written ``\\\\``, ``\\t``, ``\\n``, ``\\r`` (:func:`tsv_field`).
    """
    _write_rows(report, out, tsv_field, "\t")


# --- table ------------------------------------------------------------------------------


def _show(value: object) -> str:
    """A table cell: yes/no for booleans, ``-`` for null."""
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _difference(first: object, last: object) -> str:
    """``last - first`` with a sign, or blank when equal or not both integers."""
    if (
        not isinstance(first, int)
        or not isinstance(last, int)
        or isinstance(first, bool)
        or isinstance(last, bool)
        or first == last
    ):
        return ""
    return f"{last - first:+d}"


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], aligns: str = "l") -> str:
    """A plain table of strings, trailing blanks stripped, no final newline.

    Column ``i`` is aligned by ``aligns[i]`` (``l`` left, ``r`` right); columns
    past the end of ``aligns`` are right-aligned.  Columns are two spaces
    apart and as wide as their widest cell or header, a character counting
    one; blanks around a cell (not a header) are dropped.  No width depends
    on the terminal.

    That is tabulate's ``plain`` format.  Tables whose every cell and header
    is printable (no control character, no line break) and whose rows all
    have one length, as every report table has, are laid out here directly,
    many times faster; others (a line break in a cell, say) are handed to
    tabulate.
    """
    width = max([len(headers), *(len(row) for row in rows)])
    if (
        rows
        and len(headers) in (0, width)
        and all(len(row) == width for row in rows)
        and all(header.isprintable() for header in headers)
        and all(cell.isprintable() for row in rows for cell in row)
    ):
        return _plain_table(headers, rows, aligns, width)
    colalign = tuple(
        "left" if i < len(aligns) and aligns[i] == "l" else "right" for i in range(width)
    )
    # tabulate widens every column by MIN_PADDING when there are headers; the
    # plain format already separates columns by two spaces.
    saved = tabulate_module.MIN_PADDING
    tabulate_module.MIN_PADDING = 0
    try:
        text: str = tabulate(
            rows, headers=headers, tablefmt="plain", disable_numparse=True, colalign=colalign
        )
    finally:
        tabulate_module.MIN_PADDING = saved
    return "\n".join(line.rstrip() for line in text.splitlines())


def _plain_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], aligns: str, width: int
) -> str:
    """:func:`plain_table` of printable cells in rows of ``width`` cells (``rows`` not empty)."""
    cells = [[cell.strip() for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(width)]
    if headers:
        widths = [max(w, len(header)) for w, header in zip(widths, headers, strict=True)]
    pads: list[Callable[[str, int], str]] = [
        str.ljust if i < len(aligns) and aligns[i] == "l" else str.rjust for i in range(width)
    ]
    text = "\n".join(
        "  ".join(pad(cell, w) for pad, cell, w in zip(pads, row, widths, strict=True)).rstrip()
        for row in ([headers, *cells] if headers else cells)
    )
    # as plain_table treats tabulate's text (which drops a last row left empty)
    return "\n".join(text.splitlines())


_ABSENT: Mapping[str, Any] = {}


def _by_mode(
    title: str, modes: Sequence[str], known: Sequence[str], values: Sequence[Mapping[str, Any]]
) -> str:
    """Counters down, one column per mode, then ``difference`` when there are two or more."""
    headers = [title, *modes]
    if len(modes) > 1:
        headers.append("difference")
    rows = []
    for counter in _ordered_keys(known, values):
        row = [counter] + [_show(v.get(counter)) for v in values]
        if len(modes) > 1:
            row.append(_difference(values[0].get(counter), values[-1].get(counter)))
        rows.append(row)
    return plain_table(headers, rows)


UNITS: tuple[str, ...] = ("human", "pages", "bytes")
"""Every ``--units`` value of the table format, the default first."""


@dataclass(frozen=True)
class TableView:
    """What the table format shows, and in which units (``run``/``exec`` options).

    :ivar units: how sizes show in the summary, ksmd and explain blocks:
        ``human`` (B, KiB, MiB, GiB, TiB, powers of 1024, 2 decimals; one unit
        per row of the summary and ksmd blocks, named in the row's label),
        ``pages`` or ``bytes`` (exact integers).  The kernel's counters and
        the ground truth beside them (the ``ksm``, processes, ``memory`` and
        ``events`` sections) show as the kernel counts them, in the unit
        their names say, whatever the units.
    :ivar processes: whether the process tables show.
    :ivar pids: only these processes in the process tables and explain's
        mappings (None: every one).
    :ivar snapshots: only the snapshots of these labels, and the final state
        only if ``final`` is one of them (None: every one).
    """

    units: str = UNITS[0]
    processes: bool = True
    pids: frozenset[int] | None = None
    snapshots: frozenset[str] | None = None


def table_view(
    fmt: str,
    units: str = UNITS[0],
    processes: bool = True,
    pids: Iterable[int] = (),
    snapshots: Iterable[str] = (),
) -> TableView:
    """The :class:`TableView` of the command line's table options.

    :param fmt: the ``--format``: the selection options are the table's
        only (JSON, CSV and TSV are always the whole report, as
        REPORT_FORMAT.md has it); ``units`` is accepted with every format and
        changes only the table (the others keep exact integers).
    :raises UsageError: ``--no-processes``, ``--pid`` or ``--snapshot`` with a
        format other than ``table``; ``--pid`` with ``--no-processes``.
    :raises ValueError: an unknown ``units`` (the CLI offers only :data:`UNITS`).
    """
    if units not in UNITS:
        raise ValueError(f"unknown units {units!r} (choose from {', '.join(UNITS)})")
    pid_set = frozenset(pids)
    label_set = frozenset(snapshots)
    if fmt != "table" and (not processes or pid_set or label_set):
        raise UsageError(
            "--no-processes, --pid and --snapshot select what the table shows; "
            f"--format {fmt} is always the whole report"
        )
    if pid_set and not processes:
        raise UsageError("--pid shows those processes: not with --no-processes")
    return TableView(units, processes, pid_set or None, label_set or None)


_UNIT_SHIFTS: tuple[tuple[str, int], ...] = (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10))


def human_unit(largest: int) -> tuple[str, int]:
    """The unit (name, power of 2) for sizes up to ``largest`` bytes: the
    largest unit not above it (bytes below 1 KiB)."""
    for name, shift in _UNIT_SHIFTS:
        if largest >= 1 << shift:
            return name, shift
    return "B", 0


def _in_unit(size: int, shift: int) -> str:
    """``size`` bytes in the unit ``1 << shift``: 2 decimals, or whole bytes."""
    return str(size) if shift == 0 else f"{size / (1 << shift):.2f}"


def human_size(size: int) -> str:
    """``size`` bytes for people: ``512 B``, ``1.50 KiB``, ``2.50 GiB`` (powers of 1024)."""
    name, shift = human_unit(abs(size))
    return f"{_in_unit(size, shift)} {name}"


def _size_row(
    pages: Sequence[int | None], page_size: int, units: str
) -> tuple[str, list[str | None]]:
    """One row of sizes given in pages: the unit's name and each cell (None stays None)."""
    if units == "pages":
        return "pages", [None if p is None else str(p) for p in pages]
    sizes = [None if p is None else p * page_size for p in pages]
    if units == "bytes":
        return "bytes", [None if b is None else str(b) for b in sizes]
    name, shift = human_unit(max((abs(b) for b in sizes if b is not None), default=0))
    return name, [None if b is None else _in_unit(b, shift) for b in sizes]


def _size_cell(pages: int, page_size: int, units: str) -> str:
    """One size given in pages, as ``units`` shows it (human: with its unit)."""
    if units == "pages":
        return str(pages)
    if units == "bytes":
        return str(pages * page_size)
    return human_size(pages * page_size)


def _shown_difference(first: str | None, last: str | None) -> str:
    """``last - first`` of two cells as shown (so that equal cells never differ):
    2 decimals when they have decimals, else whole; blank when equal or absent."""
    if first is None or last is None:
        return ""
    if "." in first or "." in last:
        diff = f"{float(last) - float(first):+.2f}"
        return "" if diff in ("+0.00", "-0.00") else diff
    return _difference(int(first), int(last))


def _processes(
    modes: Sequence[str], snaps: Sequence[Snap | None], pids: frozenset[int] | None
) -> str:
    """One row per (pid, mode), by pid then mode order: ksm_stat fields and RssAnon in pages."""
    entries = sorted(
        (
            (int(proc["pid"]), i, proc)
            for i, snap in enumerate(snaps)
            if snap is not None
            for proc in snap["processes"]
            if pids is None or int(proc["pid"]) in pids
        ),
        key=lambda entry: entry[:2],
    )
    if not entries:
        if pids is not None:
            return "processes: none of --pid " + ", ".join(map(str, sorted(pids))) + " here"
        return "processes: none"
    counters = _ordered_keys(PROCESS_COUNTERS, [proc for _, _, proc in entries])
    rows = [
        [str(pid), modes[i]] + [_show(proc.get(counter)) for counter in counters]
        for pid, i, proc in entries
    ]
    return wrapped_table(["pid", "mode", *counters], rows, "rl", keep=2)


TABLE_WIDTH = 80
"""The widest line the table format writes where it can (a terminal's width)."""


def wrapped_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    aligns: str = "l",
    keep: int = 1,
    width: int = TABLE_WIDTH,
) -> str:
    """:func:`plain_table`, its columns cut into several tables, one under the
    other, where one would be wider than ``width``: each repeats the first
    ``keep`` columns (what names a row) and takes as many of the others as
    fit (at least one).  The same rows in the same order in each.
    """
    text = plain_table(headers, rows, aligns)
    if max(map(len, text.splitlines()), default=0) <= width:
        return text
    key = plain_table(headers[:keep], [row[:keep] for row in rows], aligns[:keep])
    used = max(map(len, key.splitlines()), default=0) + 2
    groups: list[list[int]] = [[]]
    room = width - used
    for i in range(keep, len(headers)):
        column = max(len(headers[i]), *(len(row[i].strip()) for row in rows)) + 2
        if groups[-1] and column > room:
            groups.append([])
            room = width - used
        groups[-1].append(i)
        room -= column
    parts = []
    for group in groups:
        cols = [*range(keep), *group]
        part_aligns = "".join(aligns[i] if i < len(aligns) else "r" for i in cols)
        parts.append(
            plain_table(
                [headers[i] for i in cols], [[row[i] for i in cols] for row in rows], part_aligns
            )
        )
    return "\n\n".join(parts)


def _cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ``...`` at the end saying so (the
    JSON report keeps it whole)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _printable(text: str) -> str:
    """``text`` as it is when every character of it is printable, else as a JSON string.

    The table never writes a control character or a line break of a label
    or a path: those would move the cursor, recolour the terminal or split a
    row.  JSON's escapes (``\\n``, ``\\u001b``...) show them instead, quoted.
    """
    return text if text.isprintable() else json.dumps(text)


def _heading(snap: Snap, final: bool) -> str:
    return f"{_title(snap, final)} {_where(snap)}"


def _title(snap: Snap, final: bool) -> str:
    return "final" if final else f"snapshot {json.dumps(snap['label'])}"


def _where(snap: Snap) -> str:
    return f"(event {snap['event']}, t={snap['t']} ns)"


_SUMMARY_ROWS: tuple[tuple[str, str, bool], ...] = (
    ("without KSM", "resident_without_ksm", True),
    ("with KSM", "resident_with_ksm", True),
    ("saved", "saved_pages", True),
    ("saved (%)", "saved_percent", False),
    ("ideal saved", "ideal_saved_pages", True),
    ("of ideal (%)", "percent_of_ideal", False),
)
"""The summary block's rows: a label, the ``summary`` key, and whether it is a
size in pages (shown in the table's units, named after the label)."""


def _summary_block(
    modes: Sequence[str],
    summaries: Sequence[Mapping[str, Any] | None],
    page_size: int,
    units: str,
) -> str | None:
    """Resident memory with and without KSM, saved and ideal, in the table's
    units and percent, one column per mode (plus ``difference``, last minus first)."""
    if all(s is None for s in summaries):
        return None
    headers = ["summary", *modes]
    if len(modes) > 1:
        headers.append("difference")
    rows = []
    for label, key, size in _SUMMARY_ROWS:
        values = [None if s is None else s.get(key) for s in summaries]
        if size:
            unit, cells = _size_row(values, page_size, units)
            label = f"{label} ({unit})"
        else:
            cells = [None if v is None else f"{v:.2f}" for v in values]
        row = [label] + [_NULL if cell is None else cell for cell in cells]
        if len(modes) > 1:
            row.append(_shown_difference(cells[0], cells[-1]))
        rows.append(row)
    return plain_table(headers, rows)


_DIRECTION = {1: "up", -1: "down"}


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _saved_and_profit(snap: Snap | None) -> tuple[int, int] | None:
    """A snapshot's ``summary.saved_pages`` and ``ksm.general_profit``, if it has both."""
    if snap is None:
        return None
    saved = snap.get("summary", {}).get("saved_pages")
    profit = snap["ksm"].get("general_profit")
    if not isinstance(saved, int) or not isinstance(profit, int):
        return None
    return saved, profit


def _disagreement(before: Snap | None, after: Snap | None) -> str | None:
    """``saved up, general_profit down`` (or the other way) when the two move
    in opposite directions from ``before`` to ``after``; else None."""
    a, b = _saved_and_profit(before), _saved_and_profit(after)
    if a is None or b is None:
        return None
    saved, profit = _sign(b[0] - a[0]), _sign(b[1] - a[1])
    if saved * profit >= 0:
        return None
    return f"saved {_DIRECTION[saved]}, general_profit {_DIRECTION[profit]}"


_LAG = "KSM counters lag"
"""Why ``general_profit`` can move against the pages really saved in one run:
the kernel's counters change only when ksmd revisits a page (README,
"Report formats", which lists the other causes)."""

_LEGACY = "legacy omits zero pages"
"""Why it can between ``legacy`` and another mode: legacy's general_profit
leaves out the zero pages KSM placed (and its unmerging leaves them mapped)."""


def _note(where: str, moved: str, why: str) -> str:
    """One note line, wrapped (indented) only where it would pass :data:`TABLE_WIDTH`."""
    return textwrap.fill(
        f"note: {where}: {moved}; {why}",
        TABLE_WIDTH,
        subsequent_indent="      ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _notes(
    modes: Sequence[str],
    snaps: Sequence[Snap | None],
    previous: Sequence[Snap | None],
    legacy: Sequence[bool],
) -> list[str]:
    """Notes where the summary's saved pages and ``general_profit`` move in
    opposite directions: from one mode to the next in this block, and in a
    mode since its previous snapshot (``previous``, None for the first).
    ``legacy`` says which runs are of the legacy mode."""
    notes = []
    for i in range(len(modes) - 1):
        moved = _disagreement(snaps[i], snaps[i + 1])
        if moved is not None:
            why = _LEGACY if legacy[i] != legacy[i + 1] else _LAG
            notes.append(_note(f"{modes[i]}->{modes[i + 1]}", moved, why))
    moves = [_disagreement(p, s) for p, s in zip(previous, snaps, strict=True)]
    for moved in dict.fromkeys(m for m in moves if m is not None):
        which = [mode for mode, m in zip(modes, moves, strict=True) if m == moved]
        where = "" if len(which) == len(modes) else ", in " + ", ".join(which)
        notes.append(_note(f"since the last snapshot{where}", moved, _LAG))
    return notes


_BEYOND_IDEAL = "zero pages KSM left mapped where merging was switched off"
"""Why a run can save more than the ideal: the ideal counts pages outside
mergeable mappings one frame each, and only the zero pages that KSM placed
there and that unmerging left mapped (legacy's behaviour, which the zero-page
series fixed) can still be shared."""


def _beyond_ideal(
    modes: Sequence[str], snaps: Sequence[Snap | None], page_size: int, units: str
) -> list[str]:
    """Notes for the runs whose ``summary`` saves more than its ideal."""
    notes = []
    for mode, snap in zip(modes, snaps, strict=True):
        summary: Mapping[str, Any] = {} if snap is None else snap.get("summary") or {}
        saved, ideal = summary.get("saved_pages"), summary.get("ideal_saved_pages")
        if isinstance(saved, int) and isinstance(ideal, int) and saved > ideal:
            more = _size_cell(saved - ideal, page_size, units)
            unit = " pages" if units == "pages" else " bytes" if units == "bytes" else ""
            notes.append(_note(mode, f"saves {more}{unit} beyond the ideal", _BEYOND_IDEAL))
    return notes


def _snap_block(
    modes: Sequence[str],
    snaps: Sequence[Snap | None],
    final: bool,
    page_size: int,
    view: TableView,
    previous: Sequence[Snap | None],
    legacy: Sequence[bool],
) -> str:
    present = [s for s in snaps if s is not None]
    summary = _summary_block(
        modes, [None if s is None else s.get("summary") for s in snaps], page_size, view.units
    )
    ksm = _by_mode("ksm", modes, KSM_COUNTERS, [_ABSENT if s is None else s["ksm"] for s in snaps])
    notes = _notes(modes, snaps, previous, legacy)
    beyond = _beyond_ideal(modes, snaps, page_size, view.units)
    parts = [
        _heading(present[0], final),
        *(["\n".join([summary, *beyond])] if summary is not None else []),
        "\n".join([ksm, *notes]),
        *([_processes(modes, snaps, view.pids)] if view.processes else []),
        _by_mode(
            "memory", modes, MEMORY_COUNTERS, [_ABSENT if s is None else s["memory"] for s in snaps]
        ),
        _by_mode(
            "events", modes, EVENT_COUNTERS, [_ABSENT if s is None else s["events"] for s in snaps]
        ),
    ]
    return "\n\n".join(parts)


def _run_block(
    modes: Sequence[str], runs: Sequence[Mapping[str, Any]], page_size: int, units: str
) -> str:
    """ksmd's cost and the milestones of each run, one column per mode (``-``
    where a run does not know a value: ``exec`` on a kernel that does not tell it)."""

    def seconds(ns: int | None) -> str:
        return _NULL if ns is None else _seconds(ns)

    def count(value: int | None) -> str:
        return _NULL if value is None else str(value)

    def percent(value: float | None) -> str:
        return _NULL if value is None else f"{value:.2f}"

    unit, saved = _size_row([r["milestones"]["max_saved_pages"] for r in runs], page_size, units)
    rows: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("visits", lambda r: count(r["ksmd"]["visits"])),
        ("wake-ups", lambda r: count(r["ksmd"]["wakeups"])),
        ("cpu", lambda r: seconds(r["ksmd"]["cpu_ns"])),
        ("cpu (%)", lambda r: percent(r["ksmd"]["cpu_percent"])),
        ("cpu in settles", lambda r: seconds(r["ksmd"]["settle_cpu_ns"])),
    ]
    table: list[list[str]] = [[label] + [cell(run) for run in runs] for label, cell in rows]
    if not any(len(run["snapshots"]) or run["milestones"]["max_saved_pages"] for run in runs):
        # (the milestones come from snapshots: with none, 0 would read as "nothing saved")
        table += [[label] + [_NULL] * len(runs) for label in MILESTONE_LABELS]
        return plain_table(["ksmd", *modes], table) + "\n" + NO_MILESTONES
    table.append([f"max saved ({unit})", *(_NULL if c is None else c for c in saved)])
    table += [
        [label] + [seconds(run["milestones"][key]) for run in runs]
        for label, key in (("50 % saved at", "t_saved_50"), ("90 % saved at", "t_saved_90"))
    ]
    return plain_table(["ksmd", *modes], table)


MILESTONE_LABELS = ("max saved", "50 % saved at", "90 % saved at")
NO_MILESTONES = "note: no snapshots, so no milestones: add --every DURATION (e.g. --every 1s)"
"""Said under ksmd's block when the runs have no snapshots (``milestones`` are
taken from snapshots only, REPORT_FORMAT.md)."""


EXPLAIN_TOP = 10
"""Mappings the table lists per mode under ``explain`` (those with the most
pages that have a twin but are not merged)."""


def _explain_block(
    modes: Sequence[str], snaps: Sequence[Snap | None], page_size: int, view: TableView
) -> str:
    """``explain`` for people: each category's pages, size (in the table's
    units, unless pages) and share of the pages counted (one row per category
    and mode), then per mode the :data:`EXPLAIN_TOP` mappings (of the
    selected pids) with the most pages that have a twin but are not merged,
    and the largest of those categories there."""
    explained = [
        (mode, snap["explain"])
        for mode, snap in zip(modes, snaps, strict=True)
        if snap is not None and "explain" in snap
    ]
    units = view.units
    size_head = [] if units == "pages" else ["bytes" if units == "bytes" else "size"]

    def size(pages: int) -> list[str]:
        return [] if units == "pages" else [_size_cell(pages, page_size, units)]

    rows = []
    for name in CATEGORIES:
        for mode, explain in explained:
            system = explain["system"]
            total = sum(system.values())
            pages = system.get(name, 0)
            share = 100 * pages / total if total else 0.0
            rows.append([name, mode, str(pages), *size(pages), f"{share:.2f}"])
    parts = [plain_table(["explain", "mode", "pages", *size_head, "%"], rows, "ll")]
    top = []
    for mode, explain in explained:
        ranked = sorted(
            (
                (
                    -sum(m["categories"].get(name, 0) for name in TWIN_NOT_MERGED),
                    m["pid"],
                    m["start"],
                    m,
                )
                for m in explain["mappings"]
                if view.pids is None or m["pid"] in view.pids
            ),
            key=lambda entry: entry[:3],
        )
        for negative, pid, start, m in ranked[:EXPLAIN_TOP]:
            if not negative:
                break
            reason = max(TWIN_NOT_MERGED, key=lambda name: m["categories"].get(name, 0))
            top.append(
                [
                    mode,
                    str(pid),
                    f"{start:#x}",
                    f"{m['end']:#x}",
                    str(-negative),
                    *size(-negative),
                    reason,
                ]
            )
    if top:
        headers = ["mode", "pid", "start", "end", "twin, not merged", *size_head, "mostly"]
        aligns = "lrllr" + "r" * len(size_head) + "l"
        title = f"mappings with the most pages that have a twin, not merged (top {EXPLAIN_TOP})"
        parts.append(title + "\n" + wrapped_table(headers, top, aligns, keep=4))
    return "\n\n".join(parts)


def _write_explain(
    out: TextIO,
    modes: Sequence[str],
    snaps: Sequence[Snap | None],
    page_size: int,
    view: TableView,
) -> None:
    """The :func:`_explain_block` after a snapshot's block, if one of its snapshots has it."""
    if any(snap is not None and "explain" in snap for snap in snaps):
        out.write("\n\n" + _explain_block(modes, snaps, page_size, view))


def _seconds(ns: int) -> str:
    """Nanoseconds as exact decimal seconds (no floating point)."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d} s"


def _check_view(report: AnyReport, view: TableView) -> None:
    """Refuse a selection of what the report does not hold, before anything is written."""
    runs = report["runs"]
    if view.snapshots is not None:
        labels = {"final"}
        if runs:
            labels.update(snap["label"] for snap in runs[0]["snapshots"])
        missing = sorted(view.snapshots - labels)
        if missing:
            raise UsageError(f"--snapshot {json.dumps(missing[0])}: no snapshot has that label")
    if view.pids is not None:
        seen: set[int] = set()
        for run in runs:
            for snap in [*run["snapshots"], run["final"]]:
                seen.update(int(proc["pid"]) for proc in snap["processes"])
        missing_pids = sorted(view.pids - seen)
        if missing_pids:
            raise UsageError(f"--pid {missing_pids[0]}: no such process in any snapshot")


def _same_state(snap: Snap | None, final: Snap) -> bool:
    """Whether ``final`` holds exactly what ``snap`` does, but for its label."""
    if snap is None:
        return False
    a, b = cast(Mapping[str, Any], snap), cast(Mapping[str, Any], final)
    return all(a.get(key) == b.get(key) for key in (set(a) | set(b)) - {"label"})


def render_table(report: AnyReport, out: TextIO, view: TableView | None = None) -> None:
    """The report for people: plain aligned tables, blocks separated by blank lines.

    A header (trace path, events, duration, page size, meta, modes); one block
    per snapshot and one for the final state, each with the summary (sizes
    in ``view.units``, percentages), the ``ksm`` counters (one column per
    mode, plus ``difference`` = last mode minus first when there are several
    modes, blank when equal or not a number), a note wherever the summary's
    saved pages and ``general_profit`` move in opposite directions (from one
    mode to the next, or since the previous snapshot), the processes (one
    row per pid and mode), ``memory`` and ``events``.  The final state is
    one line when the trace ended with a snapshot that holds exactly the
    same (in every run).  Then ksmd's cost and the milestones, the settings
    in force at the end, the refused ``ksm`` writes and the pinned knobs, if
    any.  ``view`` selects the processes and snapshots shown
    (:class:`TableView`).  Null counters show as ``-``, booleans as
    ``yes``/``no``.  Labels show as JSON strings; the trace path as it is,
    or as a JSON string when it holds a character that is not printable (a
    control character, a line break), so that nothing in a report moves the
    terminal's cursor or splits a row.

    :raises UsageError: ``view`` selects a label or pid the report does not
        hold (nothing is written then).
    """
    if view is None:
        view = TableView()
    _check_view(report, view)
    trace = report["trace"]
    runs = report["runs"]
    modes = run_names(runs)
    head = [
        ["trace", _printable(trace["path"])],
        ["events", str(trace["events"])],
        ["duration", f"{trace['duration_ns']} ns ({_seconds(trace['duration_ns'])})"],
        ["page size", f"{trace['page_size']} bytes"],
    ]
    if trace["meta"]:
        head.append(["meta", _cut(_show(trace["meta"]), TABLE_WIDTH - len("meta       "))])
    head.append(["modes", ", ".join(modes)])
    out.write(plain_table([], head, "ll"))

    def shown(label: str) -> bool:
        return view.snapshots is None or label in view.snapshots

    # the n-th snapshot of every run side by side, read from each run in step
    page_size = trace["page_size"]
    legacy = [run["mode"] == "legacy" for run in runs]
    previous: Sequence[Snap | None] = [None] * len(runs)
    last_shown = False
    for snaps in zip_longest(*(run["snapshots"] for run in runs)):
        label = next(s for s in snaps if s is not None)["label"]
        last_shown = shown(label)
        if last_shown:
            out.write("\n\n" + _snap_block(modes, snaps, False, page_size, view, previous, legacy))
            _write_explain(out, modes, snaps, page_size, view)
        previous = snaps
    finals = [run["final"] for run in runs]
    if shown("final"):
        if last_shown and all(
            _same_state(snap, final) for snap, final in zip(previous, finals, strict=True)
        ):
            last = next(s for s in previous if s is not None)
            line = f"{_heading(finals[0], True)}: as {_title(last, False)} above"
            if len(line) > TABLE_WIDTH:
                line = f"{_heading(finals[0], True)}: as the last snapshot above"
            out.write("\n\n" + line)
        else:
            out.write("\n\n" + _snap_block(modes, finals, True, page_size, view, previous, legacy))
            _write_explain(out, modes, finals, page_size, view)
    if all("ksmd" in run and "milestones" in run for run in runs):
        out.write("\n\n" + _run_block(modes, runs, page_size, view.units))

    out.write("\n\n" + _by_mode("settings", modes, (), [run["settings"] for run in runs]))
    refused = [
        [mode, str(r["event"]), str(r["t"]), r["knob"], _show(r["value"]), r["error"]]
        for run, mode in zip(runs, modes, strict=True)
        for r in run["refused"]
    ]
    if refused:
        out.write(
            "\n\nrefused writes\n"
            + plain_table(["mode", "event", "t", "knob", "value", "error"], refused, "lrrlll")
        )
    pinned = _pinned_block(runs)
    if pinned:
        out.write("\n\n" + pinned)
    out.write("\n")


PINNED_EVENTS_SHOWN = 5
"""Ignored writes of a pinned knob the table names by event (the JSON lists all)."""


def _pinned_block(runs: Sequence[Mapping[str, Any]]) -> str:
    """The knobs held by ``run --pin`` and the trace's writes of them that were
    ignored; one row per knob (per mode and knob if the modes differ), "" if none."""
    per_run = [run.get("pinned") or [] for run in runs]
    if not any(per_run):
        return ""
    same = all(pins == per_run[0] for pins in per_run)
    rows = []
    for name, pins in zip(run_names(runs), per_run, strict=True):
        for pin in pins:
            ignored = pin["ignored"]
            shown = ", ".join(str(w["event"]) for w in ignored[:PINNED_EVENTS_SHOWN])
            more = ", ..." if len(ignored) > PINNED_EVENTS_SHOWN else ""
            events = "events" if len(ignored) > 1 else "event"
            text = f"{len(ignored)} ({events} {shown}{more})" if ignored else "0"
            rows.append([name, pin["knob"], _show(pin["value"]), text])
        if same:
            break
    if same:
        rows = [row[1:] for row in rows]
    head = ["knob", "value", "trace writes ignored"]
    return "pinned knobs (--pin)\n" + plain_table(
        head if same else ["mode", *head], rows, "lll" if same else "llll"
    )


_RENDERERS = {
    "table": render_table,
    "json": render_json,
    "csv": render_csv,
    "tsv": render_tsv,
}
