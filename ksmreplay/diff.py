"""Compare two reports (or two runs of one report) counter by counter.

::

    diffs = diff_reports(load_report("a.json"), load_report("b.json"), ignore={"pages_scanned"})
    render_differences(diffs, sys.stdout)

Runs are matched by mode (by mode and kernel version when a report holds
one mode on several versions, ``run --kernel``); when each report holds one
run and their modes (or simulated versions) differ, those two runs are
compared (so ``run --mode legacy`` against ``run --mode unshare`` works),
and a single report with exactly two runs can be compared with itself
(``diff_reports(report)``: first run against second).
Snapshots are matched by position (a label that differs is a difference),
processes by pid.  Whatever exists on one side only is a difference too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TextIO, cast

from ksmreplay.errors import InputOutputError, UsageError
from ksmreplay.ksm.kernels import KERNELS
from ksmreplay.ksm.knobs import KNOB_BY_NAME
from ksmreplay.render import plain_table
from ksmreplay.report import (
    EVENT_COUNTERS,
    KSM_COUNTERS,
    MEMORY_COUNTERS,
    PROCESS_COUNTERS,
    REPORT_VERSION,
    Report,
    Run,
    Snap,
)

SCOPES: tuple[str, ...] = (
    "run",
    "snapshot",
    "settings",
    "refused",
    "ksm",
    "process",
    "memory",
    "events",
)
"""What a :class:`Difference` can be about, in the order differences are listed.

``run``, ``snapshot`` and ``process`` differences with counter ``""`` mean the
whole run, snapshot or process exists on one side only; ``snapshot`` also
covers a snapshot's ``label``, ``t`` and ``event``.
"""

PRESENT = "present"
MISSING = "missing"
"""The values of a difference about something that exists on one side only."""


MAX_NUMBER_DIGITS = 100
"""The longest integer a report may hold, in decimal digits (counters need 20)."""


class ReportError(UsageError):
    """A file that is JSON but not a ksmreplay report of a version we read."""


class Difference(NamedTuple):
    """One value that differs between the two sides (``a`` and ``b``).

    :ivar mode: the run's mode, or ``"legacy/unshare"`` when two runs of
        different modes are compared.
    :ivar snapshot: the snapshot's label (``final`` for the final state; a
        label used more than once in a run gets ``#n``, its n-th use); empty
        for run-level differences.
    :ivar scope: one of :data:`SCOPES`.
    :ivar pid: the process, for ``process`` differences; else None.
    :ivar counter: the counter, knob or snapshot field; empty when a whole
        run, snapshot or process is missing on one side.
    :ivar a: the value on side a (:data:`MISSING` if absent there).
    :ivar b: the value on side b (:data:`MISSING` if absent there).
    """

    mode: str
    snapshot: str
    scope: str
    pid: int | None
    counter: str
    a: object
    b: object


# --- loading ----------------------------------------------------------------------------


def load_report(path: str) -> Report:
    """Read a JSON report (``run --format json``) from ``path`` (``-`` = stdin).

    Checks the shape enough for :func:`diff_reports` to rely on it (the keys
    REPORT_FORMAT.md requires, with the right kinds of values: the values
    compared are numbers, strings, booleans or null, every string compared
    is valid Unicode, no integer is longer than :data:`MAX_NUMBER_DIGITS`).

    :raises InputOutputError: the file cannot be read.
    :raises ReportError: the file is not JSON, or not a version-1 report
        (a :class:`~ksmreplay.errors.UsageError`, exit status 2).
    """
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            if sys.stdin is None:
                raise InputOutputError(f"{name}: standard input is closed")
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise InputOutputError(f"{name}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{name}: not a ksmreplay report (not UTF-8 text)") from None
    try:
        data = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{name}: not a ksmreplay report (invalid JSON at line {e.lineno} "
            f"column {e.colno}: {e.msg})"
        ) from None
    except _TooLong as e:
        raise ReportError(
            f"{name}: not a ksmreplay report (an integer of {e.digits} digits; "
            f"at most {MAX_NUMBER_DIGITS})"
        ) from None
    except RecursionError:
        raise ReportError(f"{name}: not a ksmreplay report (nested too deeply)") from None
    problem = _check_report(data)
    if problem is not None:
        raise ReportError(f"{name}: not a ksmreplay report ({problem})")
    return cast(Report, data)


class _TooLong(Exception):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        raise _TooLong(digits)
    return int(text)


def _is_text(value: object) -> bool:
    """A string that can be written out (JSON's ``\\ud800`` escapes make lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_values(where: str, values: object) -> str | None:
    """Why the object ``values`` is not a map of names to plain values, or None."""
    if not isinstance(values, dict):
        return f"{where} is not an object"
    for key, value in values.items():
        if not _is_text(key):
            return f"{where} has a name that is not valid Unicode"
        if isinstance(value, str):
            if not _is_text(value):
                return f"{where}.{key} is not valid Unicode"
        elif not (value is None or isinstance(value, int | float)):
            return f"{where}.{key} is not a number, string, boolean or null"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(where: str, data: object, keys: Sequence[str]) -> str | None:
    if not isinstance(data, dict):
        return f"{where} is not an object"
    for key in keys:
        if key not in data:
            return f"{where} has no {key!r}"
    return None


def _check_snap(where: str, snap: object) -> str | None:
    problem = _check_keys(
        where, snap, ("label", "t", "event", "ksm", "processes", "memory", "events")
    )
    if problem is not None:
        return problem
    assert isinstance(snap, dict)
    if not isinstance(snap["label"], str):
        return f"{where}.label is not a string"
    if not _is_text(snap["label"]):
        return f"{where}.label is not valid Unicode"
    for key in ("t", "event"):
        if not _is_int(snap[key]):
            return f"{where}.{key} is not an integer"
    for key in ("ksm", "memory", "events"):
        problem = _check_values(f"{where}.{key}", snap[key])
        if problem is not None:
            return problem
    if not isinstance(snap["processes"], list):
        return f"{where}.processes is not a list"
    pids = set()
    for i, proc in enumerate(snap["processes"]):
        problem = _check_keys(f"{where}.processes[{i}]", proc, ("pid",))
        if problem is None:
            problem = _check_values(f"{where}.processes[{i}]", proc)
        if problem is not None:
            return problem
        if not _is_int(proc["pid"]):
            return f"{where}.processes[{i}].pid is not an integer"
        if proc["pid"] in pids:
            return f"{where}.processes lists pid {proc['pid']} twice"
        pids.add(proc["pid"])
    return None


def _check_report(data: object) -> str | None:
    """Why ``data`` is not a version-1 report, or None."""
    problem = _check_keys("the document", data, ("report", "trace", "runs"))
    if problem is not None:
        return problem
    assert isinstance(data, dict)
    if data["report"] != REPORT_VERSION:
        return f"report version {data['report']!r}, expected {REPORT_VERSION}"
    if not isinstance(data["trace"], dict):
        return "trace is not an object"
    runs = data["runs"]
    if not isinstance(runs, list) or not runs:
        return "runs is not a non-empty list"
    modes = set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        problem = _check_keys(where, run, ("mode", "settings", "refused", "snapshots", "final"))
        if problem is not None:
            return problem
        if not _is_text(run["mode"]):
            return f"{where}.mode is not a string of valid Unicode"
        kernel = run.get("kernel")
        if kernel is not None and not _is_text(kernel):
            return f"{where}.kernel is not a string of valid Unicode"
        if (run["mode"], kernel) in modes:
            on = "" if kernel is None else f" on kernel {kernel!r}"
            return f"mode {run['mode']!r} appears twice{on}"
        modes.add((run["mode"], kernel))
        problem = _check_values(f"{where}.settings", run["settings"])
        if problem is not None:
            return problem
        if not isinstance(run["refused"], list):
            return f"{where}.refused is not a list of refusals"
        for j, refusal in enumerate(run["refused"]):
            problem = _check_keys(f"{where}.refused[{j}]", refusal, ("event", "knob", "error"))
            if problem is None:
                problem = _check_values(f"{where}.refused[{j}]", refusal)
            if problem is not None:
                return problem
        if not isinstance(run["snapshots"], list):
            return f"{where}.snapshots is not a list"
        for j, snap in enumerate(run["snapshots"]):
            problem = _check_snap(f"{where}.snapshots[{j}]", snap)
            if problem is not None:
                return problem
        problem = _check_snap(f"{where}.final", run["final"])
        if problem is not None:
            return problem
    return None


# --- comparing --------------------------------------------------------------------------


def _names(report: Report) -> set[str]:
    """Every scope, counter and knob name ``report`` uses (what ``ignore`` may name)."""
    names: set[str] = set()
    for run in report["runs"]:
        names.update(run["settings"])
        for snap in [*run["snapshots"], run["final"]]:
            for section in ("ksm", "memory", "events"):
                names.update(cast(Mapping[str, Any], snap[section]))
            for proc in snap["processes"]:
                names.update(proc)
    return names


def _check_ignore(ignore: Collection[str], reports: Sequence[Report]) -> None:
    known = {
        *SCOPES,
        *KSM_COUNTERS,
        *PROCESS_COUNTERS,
        *MEMORY_COUNTERS,
        *EVENT_COUNTERS,
        *KNOB_BY_NAME,
        "label",
        "t",
        "event",
    }
    for report in reports:
        known |= _names(report)
    known.discard("pid")
    for name in sorted(ignore):
        scope, dot, counter = name.partition(".")
        if name in known or (dot and scope in SCOPES and counter in known):
            continue
        raise UsageError(f"--ignore {name}: no such counter, knob or scope")


class _Comparer:
    """The state of one comparison: what to ignore, the tolerance, the output list."""

    def __init__(self, ignore: Collection[str], tolerance: int) -> None:
        self.ignore = frozenset(ignore)
        self.tolerance = tolerance
        self.diffs: list[Difference] = []

    def ignored(self, scope: str, counter: str) -> bool:
        return (
            scope in self.ignore
            or (counter != "" and counter in self.ignore)
            or f"{scope}.{counter}" in self.ignore
        )

    def equal(self, a: object, b: object) -> bool:
        if _is_int(a) and _is_int(b):
            return abs(cast(int, a) - cast(int, b)) <= self.tolerance
        return type(a) is type(b) and a == b

    def add(
        self,
        mode: str,
        snapshot: str,
        scope: str,
        pid: int | None,
        counter: str,
        a: object,
        b: object,
    ) -> None:
        if not self.ignored(scope, counter):
            self.diffs.append(Difference(mode, snapshot, scope, pid, counter, a, b))

    def values(
        self,
        mode: str,
        snapshot: str,
        scope: str,
        pid: int | None,
        known: Sequence[str],
        a: Mapping[str, Any],
        b: Mapping[str, Any],
    ) -> None:
        """Compare two counter maps key by key (known keys in order, then the others sorted)."""
        keys = [k for k in known if k in a or k in b]
        keys += sorted((set(a) | set(b)) - set(known) - {"pid"})
        for key in keys:
            va = a.get(key, MISSING)
            vb = b.get(key, MISSING)
            if not self.equal(va, vb):
                self.add(mode, snapshot, scope, pid, key, va, vb)

    def snap(self, mode: str, name: str, a: Snap, b: Snap) -> None:
        for field in ("label", "t", "event"):
            if a[field] != b[field]:
                self.add(mode, name, "snapshot", None, field, a[field], b[field])
        self.values(mode, name, "ksm", None, KSM_COUNTERS, a["ksm"], b["ksm"])
        procs_a = {p["pid"]: p for p in a["processes"]}
        procs_b = {p["pid"]: p for p in b["processes"]}
        for pid in sorted(procs_a.keys() | procs_b.keys()):
            if pid not in procs_b:
                self.add(mode, name, "process", pid, "", PRESENT, MISSING)
            elif pid not in procs_a:
                self.add(mode, name, "process", pid, "", MISSING, PRESENT)
            else:
                self.values(
                    mode, name, "process", pid, PROCESS_COUNTERS, procs_a[pid], procs_b[pid]
                )
        self.values(mode, name, "memory", None, MEMORY_COUNTERS, a["memory"], b["memory"])
        self.values(mode, name, "events", None, EVENT_COUNTERS, a["events"], b["events"])

    def run(self, mode: str, a: Run, b: Run) -> None:
        self.values(mode, "", "settings", None, tuple(KNOB_BY_NAME), a["settings"], b["settings"])
        refused_a = {_refusal_key(r): r["error"] for r in a["refused"]}
        refused_b = {_refusal_key(r): r["error"] for r in b["refused"]}
        self.values(mode, "", "refused", None, (), refused_a, refused_b)
        snaps_a = [*a["snapshots"], a["final"]]
        snaps_b = [*b["snapshots"], b["final"]]
        names_a = _snapshot_names(snaps_a)
        names_b = _snapshot_names(snaps_b)
        # The final states always face each other; the snapshots before them by position.
        shared = min(len(snaps_a), len(snaps_b)) - 1
        for i in range(shared):
            self.snap(mode, names_a[i], snaps_a[i], snaps_b[i])
        for i in range(shared, len(snaps_a) - 1):
            self.add(mode, names_a[i], "snapshot", None, "", PRESENT, MISSING)
        for i in range(shared, len(snaps_b) - 1):
            self.add(mode, names_b[i], "snapshot", None, "", MISSING, PRESENT)
        self.snap(mode, names_a[-1], snaps_a[-1], snaps_b[-1])


def _refusal_key(refusal: Mapping[str, Any]) -> str:
    return f"event {refusal['event']} {refusal['knob']}"


def _snapshot_names(snaps: Sequence[Snap]) -> list[str]:
    """Each snapshot's label, with ``#n`` (n-th use) for a label used more than once."""
    counts: dict[str, int] = {}
    for snap in snaps:
        counts[snap["label"]] = counts.get(snap["label"], 0) + 1
    seen: dict[str, int] = {}
    names = []
    for snap in snaps:
        label = snap["label"]
        seen[label] = seen.get(label, 0) + 1
        names.append(label if counts[label] == 1 else f"{label}#{seen[label]}")
    return names


def _run_keys(runs: Sequence[Run], by_kernel: bool) -> list[str]:
    """Each run's name: its mode, or ``MODE@KERNEL`` when runs are told apart by kernel."""
    if by_kernel:
        return [f"{run['mode']}@{run.get('kernel')}" for run in runs]
    return [run["mode"] for run in runs]


def _simulated_versions(runs: Sequence[Run]) -> set[str | None]:
    """The simulated kernel versions (``run --kernel``) of ``runs``; None for any other."""
    return {str(run["kernel"]) if run.get("kernel") in KERNELS else None for run in runs}


def _pair_runs(a: Report, b: Report) -> Iterator[tuple[str, Run | None, Run | None]]:
    """The runs to compare: (name, run of a, run of b), a missing side as None.

    Runs are matched by mode; by mode and kernel version when a report holds
    one mode on several versions (``run --kernel 6.1 --kernel 6.18``).
    """
    runs_a, runs_b = a["runs"], b["runs"]
    by_kernel = any(len({run["mode"] for run in runs}) < len(runs) for runs in (runs_a, runs_b))
    names_a, names_b = _run_keys(runs_a, by_kernel), _run_keys(runs_b, by_kernel)
    if len(runs_a) == 1 and len(runs_b) == 1:
        one_a, one_b = runs_a[0], runs_b[0]
        versions = _simulated_versions(runs_a) | _simulated_versions(runs_b)
        if one_a["mode"] != one_b["mode"] or (None not in versions and len(versions) > 1):
            if None not in versions and len(versions) > 1:
                names_a, names_b = _run_keys(runs_a, True), _run_keys(runs_b, True)
            yield f"{names_a[0]}/{names_b[0]}", one_a, one_b
            return
    by_name_b = dict(zip(names_b, runs_b, strict=True))
    for name, run in zip(names_a, runs_a, strict=True):
        yield name, run, by_name_b.get(name)
    for name, run in zip(names_b, runs_b, strict=True):
        if name not in names_a:
            yield name, None, run


def diff_reports(
    a: Report, b: Report | None = None, ignore: Collection[str] = (), tolerance: int = 0
) -> list[Difference]:
    """Every difference between report ``a`` and report ``b``, in report order.

    Runs are matched by mode (a run on one side only is one ``run``
    difference); if each report has a single run and the modes differ, those
    two runs are compared under the mode name ``"a_mode/b_mode"``.  With ``b``
    None, ``a`` must hold exactly two runs, and the first is compared with the
    second that way.  In each pair of runs: the settings, the refused writes,
    then the snapshots by position (label, ``t``, ``event`` and every counter of
    ``ksm``, ``processes`` matched by pid, ``memory`` and ``events``; a snapshot
    or process on one side only is one difference), the final states last.
    The trace section is not compared.

    :param ignore: names to leave out: a counter or knob (``pages_scanned``),
        a scope (``events``, see :data:`SCOPES`), or ``scope.counter``
        (``process.ksm_zero_pages``).
    :param tolerance: integers that differ by at most this much are equal
        (booleans and null are compared exactly).
    :returns: the differences; empty when the reports agree.  The CLI exits
        with status 1 when it is not empty.
    :raises UsageError: for a negative tolerance, an ``ignore`` name that no
        report uses or defines, or ``b`` None with ``a`` not holding two runs.
    """
    if tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0, not {tolerance}")
    if b is None:
        if len(a["runs"]) != 2:
            raise UsageError(
                f"one report can be compared with itself only if it has two runs "
                f"(it has {len(a['runs'])})"
            )
        first, second = a["runs"]
        a = cast(Report, {**a, "runs": [first]})
        b = cast(Report, {**a, "runs": [second]})
        if first["mode"] == second["mode"] and first.get("kernel") == second.get("kernel"):
            raise UsageError("the two runs of the report have the same mode")
    _check_ignore(ignore, (a, b))
    comparer = _Comparer(ignore, tolerance)
    for mode, run_a, run_b in _pair_runs(a, b):
        if run_b is None:
            comparer.add(mode, "", "run", None, "", PRESENT, MISSING)
        elif run_a is None:
            comparer.add(mode, "", "run", None, "", MISSING, PRESENT)
        else:
            comparer.run(mode, run_a, run_b)
    return comparer.diffs


# --- showing ----------------------------------------------------------------------------


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_differences(diffs: Sequence[Difference], out: TextIO) -> None:
    """Write ``diffs`` to ``out`` as a plain table, or ``no differences`` when empty.

    Columns: mode, snapshot, scope, pid, counter, a, b (null as ``null``,
    booleans as ``yes``/``no``, absent things as ``missing``/``present``).
    """
    if not diffs:
        out.write("no differences\n")
        return
    rows = [
        [
            d.mode,
            d.snapshot,
            d.scope,
            "" if d.pid is None else str(d.pid),
            d.counter,
            _show(d.a),
            _show(d.b),
        ]
        for d in diffs
    ]
    out.write(plain_table(Difference._fields, rows, "lllrlrr"))
    out.write("\n")
