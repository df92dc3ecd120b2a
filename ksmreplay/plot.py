"""Figures of a report: how sharing grows over trace time, per run (``ksmreplay plot``).

One figure per group of metrics, one line per run (mode, or mode@kernel):

* memory saved: ``summary.saved_pages`` (solid) and ``summary.ideal_saved_pages``
  (dashed), with ksmd's CPU time so far on a second axis (dotted);
* zero pages KSM placed: ``ksm.ksm_zero_pages`` (``zero_pages_sharing`` in
  v6; legacy has no such counter and draws no line);
* pages not merged: ``ksm.pages_volatile`` (solid) and ``ksm.pages_unshared`` (dashed).

The points are the run's snapshots in order, then ``final`` if it is later
than the last of them: a report made with ``run --every DURATION`` gives a
point every DURATION.  Sizes are in one binary unit per figure (KiB, MiB,
GiB...), time in s, ms or µs by the trace's length.  The report has ksmd's CPU
time only for the whole run (``RUN.ksmd``); the second axis spreads it over
the snapshots in proportion to the pages ksmd visited by then
(``pages_scanned``), so its shape is an estimate (visits of different kinds
cost differently) while its end is the run's total, settles included.

Output is PNG, SVG, or one self-contained HTML page (the SVG figures inline,
a table of each run's ksmd cost and milestones; no script, nothing fetched).
matplotlib (the ``plot`` extra: ``pip install 'ksmreplay[plot]'``) is imported
only when a figure is drawn, with the Agg renderer and no pyplot (nothing
global changes); the same report gives byte-identical files.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, cast

from ksmreplay.errors import ExitStatus, KsmreplayError, UsageError
from ksmreplay.render import human_size, human_unit, run_names
from ksmreplay.report import Report, Snap

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS: tuple[str, ...] = ("png", "svg", "html")
"""The formats ``plot`` writes (a file's suffix names one: ``.png``, ``.svg``, ``.html``)."""

_SUFFIXES = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}

SVG_SALT = "ksmreplay"
"""matplotlib's ``svg.hashsalt``: the ids inside an SVG are the same on every run."""

_INSTALL = "pip install 'ksmreplay[plot]'"


class PlotUnavailable(KsmreplayError):
    """matplotlib, which ``plot`` draws with, is not installed."""

    exit_status = ExitStatus.USAGE


def output_format(path: str, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` if given, else its suffix's.

    :raises UsageError: no ``fmt`` and a suffix that names none of
        :data:`PLOT_FORMATS` (standard output, ``-``, needs ``fmt``).
    """
    if fmt is not None:
        if fmt not in PLOT_FORMATS:
            raise UsageError(f"unknown plot format {fmt!r} (choose from {', '.join(PLOT_FORMATS)})")
        return fmt
    found = _SUFFIXES.get(os.path.splitext(path)[1].lower()) if path != "-" else None
    if found is None:
        raise UsageError(
            f"cannot tell the format of {path!r} from its suffix "
            "(use .png, .svg or .html, or --format)"
        )
    return found


def require_matplotlib() -> None:
    """Check that matplotlib can be imported.

    :raises PlotUnavailable: it cannot (the message says how to install it).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            f"plot needs matplotlib, which is not installed: {_INSTALL}"
        ) from None


# --------------------------------------------------------------------------- the data


@dataclass
class Series:
    """One run's points, in pages (None where the run has no such counter)."""

    name: str
    t: list[int] = field(default_factory=list)
    """ns"""
    saved: list[int] = field(default_factory=list)
    ideal: list[int] = field(default_factory=list)
    zero: list[int | None] = field(default_factory=list)
    volatile: list[int] = field(default_factory=list)
    unshared: list[int] = field(default_factory=list)
    cpu_ns: list[int] | None = None
    """ksmd's CPU time by each point (estimated, see the module), or None."""


def _points(run: Mapping[str, Any]) -> list[Snap]:
    """The run's snapshots in order, then ``final`` if it is later than the last."""
    snaps: list[Snap] = list(run["snapshots"])
    final: Snap = run["final"]
    if not snaps or final["t"] > snaps[-1]["t"]:
        snaps.append(final)
    return snaps


def _zero_pages(snap: Snap) -> int | None:
    ksm = snap["ksm"]
    value = ksm.get("ksm_zero_pages")
    return ksm.get("zero_pages_sharing") if value is None else value


def series(report: Report, name: str = "REPORT") -> list[Series]:
    """Each run's points, as :func:`plot` draws them.

    :param name: what messages call the report.
    :raises UsageError: the report has no snapshot (only its final state),
        or a snapshot without ``summary``.
    """
    runs = report["runs"]
    if not any(run["snapshots"] for run in runs):
        raise UsageError(
            f"{name}: no snapshots to plot over time, only the final state "
            "(make the report with `ksmreplay run --every DURATION`)"
        )
    out = []
    for label, run in zip(run_names(runs), runs, strict=True):
        s = Series(label)
        for snap in _points(run):
            summary = snap.get("summary")
            if summary is None:
                raise UsageError(f"{name}: snapshot {snap['label']!r} of {label} has no summary")
            s.t.append(snap["t"])
            s.saved.append(summary["saved_pages"])
            s.ideal.append(summary["ideal_saved_pages"])
            s.zero.append(_zero_pages(snap))
            s.volatile.append(snap["ksm"]["pages_volatile"])
            s.unshared.append(snap["ksm"]["pages_unshared"])
        s.cpu_ns = _cpu_so_far(run, _points(run))
        out.append(s)
    return out


def _cpu_so_far(run: Mapping[str, Any], snaps: Sequence[Snap]) -> list[int] | None:
    """ksmd's CPU time (ns) by each snapshot: the run's total (batches and
    settles) spread over its visits as ``pages_scanned`` grows; None when the
    run does not say its cost or the kernel counts no pages scanned."""
    ksmd = run.get("ksmd") or {}
    visits, cpu, settle = ksmd.get("visits"), ksmd.get("cpu_ns"), ksmd.get("settle_cpu_ns")
    scanned = [snap["ksm"].get("pages_scanned") for snap in snaps]
    if not visits or cpu is None or any(n is None for n in scanned):
        return None
    total = cpu + (settle or 0)
    return [total * min(int(n), visits) // visits for n in scanned if n is not None]


# --------------------------------------------------------------------------- drawing


_DURATION_UNITS = ((10**9, "s"), (10**6, "ms"), (10**3, "µs"))
"""ns per unit and its name, largest first (a CPU time, a duration in the HTML table)."""

_TIME_UNITS = ((2 * 10**9, 10**9, "s"), (2 * 10**6, 10**6, "ms"), (0, 10**3, "µs"))


def _time_unit(duration_ns: int) -> tuple[int, str]:
    """ns per unit and its name: s for 2 s or more, ms for 2 ms or more, else µs."""
    return next((per, name) for least, per, name in _TIME_UNITS if duration_ns >= least)


_BEST_LEGEND_POINTS = 400
"""Points up to which a legend goes where it hides the fewest."""

_MARKERS = ("o", "s", "^", "D", "v", "x")
"""One marker per run, so that runs whose lines overlap stay told apart."""


@dataclass(frozen=True)
class _Group:
    """One figure: its title and the lines of each run (value, dash, legend suffix)."""

    title: str
    lines: tuple[tuple[Callable[[Series], Sequence[int | None]], str, str], ...]


GROUPS: tuple[_Group, ...] = (
    _Group(
        "memory saved",
        (
            (lambda s: s.saved, "-", "saved"),
            (lambda s: s.ideal, "--", "ideal"),
        ),
    ),
    _Group("zero pages KSM placed (ksm_zero_pages)", ((lambda s: s.zero, "-", ""),)),
    _Group(
        "pages not merged (pages_volatile, pages_unshared)",
        (
            (lambda s: s.volatile, "-", "pages_volatile"),
            (lambda s: s.unshared, "--", "pages_unshared"),
        ),
    ),
)
"""The figures, in order."""


def _draw(
    axes: Axes,
    group: _Group,
    runs: Sequence[Series],
    page_size: int,
    time: tuple[int, str],
    cpu_axis: bool,
) -> None:
    per, unit_name = time
    largest = max(
        (abs(v) for s in runs for value, _, _ in group.lines for v in value(s) if v is not None),
        default=0,
    )
    size_name, shift = human_unit(largest * page_size)
    drawn = 0
    for i, s in enumerate(runs):
        xs = [t / per for t in s.t]
        for value, dash, suffix in group.lines:
            ys = value(s)
            if any(y is None for y in ys):
                continue  # the run's kernel has no such counter
            label = f"{s.name} {suffix}".strip()
            axes.plot(
                xs,
                [int(y or 0) * page_size / (1 << shift) for y in ys],
                dash,
                color=f"C{i}",
                marker=_MARKERS[i % len(_MARKERS)],
                markersize=4,
                markevery=max(1, len(xs) // 40),
                label=label,
            )
            drawn += 1
    if not drawn:
        axes.text(
            0.5, 0.5, "no run has this counter", ha="center", va="center", transform=axes.transAxes
        )
    axes.set_title(group.title)
    axes.set_xlabel(f"trace time ({unit_name})")
    axes.set_ylabel(size_name)
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if cpu_axis and any(s.cpu_ns is not None for s in runs):
        twin = axes.twinx()
        most = max(max(s.cpu_ns) for s in runs if s.cpu_ns is not None)
        cpu_per, cpu_unit = next((p, n) for p, n in _DURATION_UNITS if most >= p or p == 10**3)
        for i, s in enumerate(runs):
            if s.cpu_ns is not None:
                twin.plot(
                    [t / per for t in s.t],
                    [ns / cpu_per for ns in s.cpu_ns],
                    ":",
                    color=f"C{i}",
                    label=f"{s.name} ksmd CPU",
                )
        twin.set_ylabel(f"ksmd CPU so far ({cpu_unit}, estimated)")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles += more_handles
        labels += more_labels
    if handles:
        # ("best" looks at every point: for long series, a fixed corner)
        many = sum(len(s.t) for s in runs) > _BEST_LEGEND_POINTS
        axes.legend(handles, labels, loc="upper left" if many else "best", fontsize="small")


def _figure(
    groups: Sequence[_Group], runs: Sequence[Series], page_size: int, duration_ns: int
) -> Figure:
    """A figure of ``groups`` stacked, one set of axes each."""
    from matplotlib.figure import Figure

    height = 3.4 * len(groups)
    fig = Figure(figsize=(8, height), dpi=100)
    # (fixed margins, in inches: a layout engine would cost more than the drawing)
    fig.subplots_adjust(
        left=0.9 / 8, right=1 - 0.9 / 8, top=1 - 0.35 / height, bottom=0.55 / height, hspace=0.45
    )
    axes = fig.subplots(len(groups), 1, squeeze=False)
    time = _time_unit(duration_ns)
    for i, group in enumerate(groups):
        _draw(axes[i][0], group, runs, page_size, time, cpu_axis=group is GROUPS[0])
    return fig


def _save(fig: Figure, fmt: str) -> bytes:
    """``fig`` as PNG or SVG bytes, the same on every run."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        if fmt == "svg":
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        else:
            fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# --------------------------------------------------------------------------- output


def plot(report: Report, fmt: str, out: IO[bytes], name: str = "REPORT") -> None:
    """Write the figures of ``report`` to ``out`` in ``fmt`` (one of :data:`PLOT_FORMATS`).

    :param report: a report as ``run --format json`` writes it, with
        snapshots (``run --every``); sizes are read in pages, times in ns.
    :param name: what messages call the report.
    :raises PlotUnavailable: matplotlib is not installed.
    :raises UsageError: the report has nothing to plot over time (:func:`series`).
    """
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}")
    require_matplotlib()
    runs = series(report, name)
    trace = report["trace"]
    page_size, duration = trace["page_size"], trace["duration_ns"]
    if fmt != "html":
        out.write(_save(_figure(GROUPS, runs, page_size, duration), fmt))
        return
    figures = [_inline_svg(_save(_figure([g], runs, page_size, duration), "svg")) for g in GROUPS]
    out.write(_html(report, figures).encode("utf-8"))


_PROLOGUE = re.compile(rb"\A(?:<\?xml[^>]*\?>\s*)?(?:<!DOCTYPE[^>]*>\s*)?")
_METADATA = re.compile(rb"\s*<metadata>.*?</metadata>", re.DOTALL)


def _inline_svg(svg: bytes) -> str:
    """An SVG document as an element to put inside HTML (no XML declaration,
    DOCTYPE nor metadata)."""
    return _METADATA.sub(b"", _PROLOGUE.sub(b"", svg), count=1).decode("utf-8")


def _seconds(ns: int | None) -> str:
    """ns for people: 3 decimals of s, ms or µs."""
    if ns is None:
        return "-"
    per, name = next((p, n) for p, n in _DURATION_UNITS if ns >= p or p == 10**3)
    return f"{ns / per:.3f} {name}"


def _html(report: Report, figures: Sequence[str]) -> str:
    """One page: what the report is, each run's ksmd cost and milestones, the figures."""
    trace = report["trace"]
    runs = report["runs"]
    names = run_names(runs)
    page_size = trace["page_size"]
    esc = html.escape

    def cells(values: Sequence[str]) -> str:
        return "".join(f"<td>{esc(v)}</td>" for v in values)

    def count(value: object) -> str:
        return "-" if value is None else str(value)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    # (a report of an older ksmreplay may lack them)
    ksmd = [cast(Mapping[str, Any], run).get("ksmd") or {} for run in runs]
    miles = [cast(Mapping[str, Any], run).get("milestones") or {} for run in runs]
    rows = [
        ("max saved", [human_size(m.get("max_saved_pages", 0) * page_size) for m in miles]),
        ("50 % saved at", [_seconds(m.get("t_saved_50")) for m in miles]),
        ("90 % saved at", [_seconds(m.get("t_saved_90")) for m in miles]),
        ("ksmd CPU", [_seconds(k.get("cpu_ns")) for k in ksmd]),
        ("ksmd CPU (%)", [percent(k.get("cpu_percent")) for k in ksmd]),
        ("ksmd CPU in settles", [_seconds(k.get("settle_cpu_ns")) for k in ksmd]),
        ("pages visited", [count(k.get("visits")) for k in ksmd]),
    ]
    table = (
        "<table>\n<tr><th></th>"
        + "".join(f"<th>{esc(n)}</th>" for n in names)
        + "</tr>\n"
        + "".join(f"<tr><th>{esc(label)}</th>{cells(v)}</tr>\n" for label, v in rows)
        + "</table>"
    )
    sections = "".join(
        f"<h2>{esc(group.title)}</h2>\n<figure>{svg}</figure>\n"
        for group, svg in zip(GROUPS, figures, strict=True)
    )
    title = f"ksmreplay: {trace['path']}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:62em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}th,td{padding:.1em .8em;text-align:right}"
        "figure{margin:0}svg{max-width:100%;height:auto}</style>\n"
        "</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n"
        f"<p>{trace['events']} events over {esc(_seconds(trace['duration_ns']))} of trace time; "
        f"sizes from each snapshot's summary, the kernel's counters as the mode shows them. "
        "The CPU line spreads ksmd's modelled CPU time over the pages it visited.</p>\n"
        f"{table}\n{sections}</body>\n</html>\n"
    )
