"""``ksmreplay plot``: figures of a report's snapshots, as PNG, SVG or one HTML page.

GIVEN the demo trace replayed with ``run --every`` (a point every 1 ms),
WHEN it is plotted, THEN the files are what their format says, the same on
every run, self-contained (HTML), and written as every output is.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ksmreplay.cli import cli
from ksmreplay.plot import series
from ksmreplay.report import Report

pytest.importorskip("matplotlib")  # (installed by `make test`: the plot extra)

DEMO = str(Path(__file__).parent.parent / "traces" / "demo.msgpack")


@pytest.fixture(scope="module")
def report_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plot") / "demo.json"
    result = CliRunner().invoke(cli, ["run", DEMO, "--every", "1ms", "--format", "json"])
    assert result.exit_code == 0, result.output
    path.write_text(result.stdout)
    return path


def _plot(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["plot", *args], input=stdin)


def test_series_are_the_snapshots_summaries_and_counters(report_json: Path) -> None:
    report: Report = json.loads(report_json.read_text())
    runs = series(report)
    assert [s.name for s in runs] == ["legacy", "unshare"]
    for s, run in zip(runs, report["runs"], strict=True):
        snaps = run["snapshots"]  # the final state is every@4000000's: not again
        assert s.t == [snap["t"] for snap in snaps]
        assert s.saved == [snap["summary"]["saved_pages"] for snap in snaps]
        assert s.ideal == [snap["summary"]["ideal_saved_pages"] for snap in snaps]
        assert s.volatile == [snap["ksm"]["pages_volatile"] for snap in snaps]
        assert s.zero == [snap["ksm"]["ksm_zero_pages"] for snap in snaps]
        # ksmd's CPU so far: never falling, from 0 to the run's whole cost
        assert s.cpu_ns is not None
        assert s.cpu_ns == sorted(s.cpu_ns)
        assert s.cpu_ns[0] == 0
        assert s.cpu_ns[-1] == run["ksmd"]["cpu_ns"] + run["ksmd"]["settle_cpu_ns"]
    assert runs[0].zero[-1] is None  # legacy has no ksm_zero_pages: no line drawn


@pytest.fixture(scope="module")
def plotted(report_json: Path) -> dict[str, bytes]:
    """The demo's figures in each format, made by the command line: {suffix: bytes}.

    The HTML page is written through a symbolic link to an older file.
    """
    out = {}
    target = report_json.with_name("target.html")
    target.write_bytes(b"old")
    report_json.with_name("figures.html").symlink_to(target)
    for suffix in (".png", ".svg", ".html"):
        path = report_json.with_name(f"figures{suffix}")
        result = _plot(str(report_json), "-o", str(path))
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        out[suffix] = path.read_bytes()
    return out


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml"), (".html", b"<!DOC")]
)
def test_plot_writes_the_format_of_the_suffix(
    plotted: dict[str, bytes], suffix: str, magic: bytes
) -> None:
    assert plotted[suffix].startswith(magic)


def test_the_same_report_gives_the_same_bytes(report_json: Path, plotted: dict[str, bytes]) -> None:
    # (from stdin to stdout, the format named: the same figure as from a file to a file)
    result = _plot("-", "-o", "-", "--format", "svg", stdin=report_json.read_text())
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == plotted[".svg"]


def test_svg_has_one_set_of_axes_per_group_and_a_cpu_axis(plotted: dict[str, bytes]) -> None:
    root = ET.fromstring(plotted[".svg"])
    axes = [g.get("id") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    # memory saved (and its twin for ksmd's CPU), zero pages, pages not merged
    assert len([a for a in axes if a and a.startswith("axes_")]) == 4
    assert b"<dc:date>" not in plotted[".svg"]  # no date: the same file tomorrow


def test_html_is_one_self_contained_page(plotted: dict[str, bytes]) -> None:
    text = plotted[".html"].decode("utf-8")
    assert text.count("<svg ") == 3
    assert "<h2>memory saved</h2>" in text
    for fetching in ("<script", "<img", "<link", "<iframe", "<object", "src=", "@import"):
        assert fetching not in text
    # every reference stays inside the page
    refs = [part.split('"', 1)[0] for part in text.split('href="')[1:]]
    refs += [part.split(")", 1)[0] for part in text.split("url(")[1:]]
    assert refs and all(ref.startswith("#") for ref in refs)
    assert "<th>legacy</th><th>unshare</th>" in text
    assert "<tr><th>pages visited</th><td>798</td><td>798</td></tr>" in text


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("-", "cannot tell the format of '-'"),
        ("figure.pdf", "cannot tell the format of 'figure.pdf'"),
    ],
)
def test_plot_needs_a_format_it_knows(
    report_json: Path, tmp_path: Path, output: str, message: str
) -> None:
    result = _plot(str(report_json), "-o", str(tmp_path / output) if output != "-" else "-")
    assert result.exit_code == 2
    assert message.split("'")[0] in result.stderr and "--format" in result.stderr
    assert result.stdout == ""


def test_plot_without_snapshots_says_to_use_every(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", DEMO, "--format", "json"])
    report = json.loads(result.stdout)
    for run in report["runs"]:
        run["snapshots"] = []
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "keep.png"
    out.write_bytes(b"old")
    result = _plot(str(path), "-o", str(out))
    assert result.exit_code == 2
    assert "no snapshots to plot over time" in result.stderr
    assert "--every" in result.stderr
    assert out.read_bytes() == b"old"


def test_plot_without_matplotlib_is_one_clear_line(
    report_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    out = tmp_path / "f.svg"
    result = _plot(str(report_json), "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        "ksmreplay: plot needs matplotlib, which is not installed: pip install 'ksmreplay[plot]'\n"
    )
    assert not out.exists()


def test_plot_writes_through_a_symlink_as_every_output(
    report_json: Path, plotted: dict[str, bytes]
) -> None:
    link, target = report_json.with_name("figures.html"), report_json.with_name("target.html")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == plotted[".html"]
    assert plotted[".html"].startswith(b"<!DOCTYPE html>")
