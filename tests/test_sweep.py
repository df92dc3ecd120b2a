"""``ksmreplay sweep`` and ``run --jobs``: grids, rows, the recommendation, the
cache, and the same bytes whichever way the runs ran (here, in worker
processes, on dask)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ksmreplay import sweep
from ksmreplay.cli import cli
from ksmreplay.errors import UsageError
from ksmreplay.sweep import Grid, Row, Task, parse_grid, parse_within, recommend

TRACES = Path(__file__).parent.parent / "traces"
DEMO = TRACES / "demo.msgpack"
VM = TRACES / "vm-guests.msgpack"

ISSUE_GRID = (
    "--grid",
    "use_zero_pages=0,1",
    "--grid",
    "pages_to_scan=100,1000,4000",
    "--grid",
    "sleep_millisecs=20,200",
)
"""The 12-point grid the README shows (use_zero_pages x pages_to_scan x sleep_millisecs)."""


def invoke(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, prog_name="ksmreplay")


def ksmreplay(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """ksmreplay as a process of its own (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ksmreplay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


# --------------------------------------------------------------------------- grids


def test_grid_values_are_checked_as_pins_are() -> None:
    assert parse_grid("pages_to_scan=100, 1000") == Grid("pages_to_scan", (100, 1000))
    assert parse_grid("advisor_mode=none,scan-time").values == ("none", "scan-time")
    for text, message in (
        ("pages_to_scan", "expected KNOB=V1,V2,..."),
        ("pages=1", "unknown knob 'pages'"),
        ("use_zero_pages=0,2", "use_zero_pages must be 0 or 1"),
        ("pages_to_scan=1,x", "pages_to_scan must be an integer, not 'x'"),
        ("pages_to_scan=1,,2", "an empty value"),
        ("pages_to_scan=1,2,1", "1 given twice"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_grid(text)


def test_grid_points_are_the_cartesian_product_first_grid_slowest() -> None:
    points = sweep.grid_points([parse_grid("use_zero_pages=0,1"), parse_grid("run=1,2")])
    assert points == [
        (("use_zero_pages", 0), ("run", 1)),
        (("use_zero_pages", 0), ("run", 2)),
        (("use_zero_pages", 1), ("run", 1)),
        (("use_zero_pages", 1), ("run", 2)),
    ]
    assert sweep.grid_points([]) == [()]
    with pytest.raises(UsageError, match="knob run given twice"):
        sweep.grid_points([parse_grid("run=1"), parse_grid("run=2")])


def test_within_takes_a_percentage() -> None:
    assert (parse_within("5%"), parse_within(" 2.5 "), parse_within("0%")) == (5.0, 2.5, 0.0)
    for text in ("x", "-1%", "101"):
        with pytest.raises(UsageError, match="--within"):
            parse_within(text)


# --------------------------------------------------------------------------- recommendation


def _row(index: int, saved: int, cpu_ns: int, name: str = "t.msgpack") -> Row:
    task = Task(index, name, "/t", "0", "6.18", "unshare", (("pages_to_scan", index),))
    summary = {"saved_pages": saved, "saved_percent": saved / 10, "percent_of_ideal": 100.0}
    return Row(task, "final", 0, 4096, summary, None, cpu_ns, cpu_ns / 1e7, {})


def test_pareto_front_keeps_the_rows_nothing_beats() -> None:
    # GIVEN runs of (saved pages, ksmd CPU ns); D is beaten by A, F by B; E equals B
    a, b, c, d, e, f = (
        _row(0, 1000, 50),
        _row(1, 980, 10),
        _row(2, 900, 5),
        _row(3, 1000, 60),
        _row(4, 980, 10),
        _row(5, 500, 20),
    )
    # THEN the front is every run no other saves as much for less or more for as little
    front = sweep.pareto_front([a, b, c, d, e, f])
    assert sorted(r.task.index for r in front) == [0, 1, 2, 4]


def test_recommendation_is_the_least_cpu_within_the_tolerance_of_the_best() -> None:
    def chosen(within: float) -> int:
        rows = [_row(0, 1000, 50), _row(1, 980, 10), _row(2, 900, 5), _row(3, 980, 10)]
        (rec,) = recommend(rows, within, several=False)
        assert rec.best.task.index == 0
        assert [r.task.index for r in rows if r.recommended] == [rec.row.task.index]
        assert {r.task.index for r in rows if r.pareto} == {0, 1, 2, 3}
        return rec.row.task.index

    assert chosen(5) == 1  # 980 >= 950; the tie with run 3 goes to the first
    assert chosen(10) == 2  # 900 >= 900, the cheapest
    assert chosen(0) == 0  # only the best
    rows = [_row(0, 1000, 50), _row(1, 980, 10)]
    (rec,) = recommend(rows, 5, several=False)
    assert rec.text == (
        "t.msgpack: pages_to_scan=1: saves 3.83 MiB (98.0 % of the best, 3.91 MiB) "
        "for 0.00 % ksmd CPU (the best: 0.00 %)"
    )


def test_recommendation_per_trace_and_when_nothing_is_saved() -> None:
    rows = [_row(0, 0, 30, "a"), _row(1, 0, 20, "a"), _row(2, 10, 90, "b"), _row(3, 0, 1, "b")]
    recs = recommend(rows, 5, several=False)
    assert [(r.row.task.index, r.best.task.index) for r in recs] == [(1, 1), (2, 2)]
    assert recs[0].text.startswith("a: pages_to_scan=1: no setting saves memory here")
    assert recs[1].text.startswith("b: pages_to_scan=2: saves the most, 0.04 MiB")


# --------------------------------------------------------------------------- the command


DEMO_GRID = ("--grid", "use_zero_pages=0,1", "--grid", "pages_to_scan=5,100")


def test_each_row_is_the_run_of_run_pin(tmp_path: Path) -> None:
    # GIVEN a sweep of two modes over a 2 x 2 grid, every report kept
    result = invoke(
        "sweep", str(DEMO), *DEMO_GRID, "--mode", "both", "--reports", str(tmp_path),
        "--format", "json", "--jobs", "1",
    )  # fmt: skip
    assert (result.exit_code, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    assert (doc["planned"], doc["finished"], doc["knobs"]) == (
        8,
        8,
        ["use_zero_pages", "pages_to_scan"],
    )
    expected_order = [
        (mode, {"use_zero_pages": z, "pages_to_scan": p})
        for mode in ("legacy", "unshare")
        for z in (0, 1)
        for p in (5, 100)
    ]
    assert [(r["mode"], r["settings"]) for r in doc["runs"]] == expected_order
    for row in doc["runs"]:
        pins = [a for k, v in row["settings"].items() for a in ("--pin", f"{k}={v}")]
        # THEN its report is byte for byte that of `run --pin` in its mode
        run = invoke("run", str(DEMO), "--mode", row["mode"], *pins, "--format", "json")
        assert run.exit_code == 0
        assert Path(row["report"]).read_text() == run.stdout
        # AND its figures are that report's
        report = json.loads(run.stdout)["runs"][0]
        summary = report["final"]["summary"]
        for key in ("saved_pages", "saved_bytes", "saved_percent", "percent_of_ideal"):
            assert row[key] == summary[key]
        assert (row["t_saved_90"], row["cpu_ns"], row["cpu_percent"]) == (
            report["milestones"]["t_saved_90"],
            report["ksmd"]["cpu_ns"],
            report["ksmd"]["cpu_percent"],
        )
    # AND one recommendation per mode, a run on the front, cheapest within 5 %
    for rec in doc["recommendations"]:
        rows = [r for r in doc["runs"] if r["mode"] == rec["mode"]]
        best = max(r["saved_pages"] for r in rows)
        near = [r for r in rows if r["saved_pages"] >= best * 0.95]
        assert rec["cpu_ns"] == min(r["cpu_ns"] for r in near)
        (marked,) = [r for r in rows if r["recommended"]]
        assert (marked["settings"], marked["pareto"]) == (rec["settings"], True)
    assert [r["mode"] for r in doc["recommendations"]] == ["legacy", "unshare"]


@pytest.mark.parametrize("fmt", ["table", "json", "tsv"])
def test_the_output_is_the_same_with_one_or_two_jobs(fmt: str) -> None:
    args = ("sweep", str(DEMO), *DEMO_GRID, "--mode", "all", "--format", fmt)
    one = invoke(*args, "--jobs", "1")
    two = invoke(*args, "--jobs", "2")
    assert (one.exit_code, two.exit_code, one.stderr) == (0, 0, "")
    assert one.stdout == two.stdout
    if fmt == "table":
        lines = one.stdout.splitlines()
        recommendations = [line for line in lines if line.startswith("recommended: ")]
        assert max(len(line) for line in lines if line not in recommendations) <= 80
        # a table per mode, each followed by its recommendation in one line
        titles = [lines[i - 6] for i, line in enumerate(lines) if line in recommendations]
        assert titles == [f"{DEMO} ({mode}@6.18)" for mode in ("legacy", "v6", "unshare")]
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = one.stdout.splitlines()
        assert lines[0].split(sep)[:5] == [
            "trace",
            "kernel",
            "mode",
            "use_zero_pages",
            "pages_to_scan",
        ]
        assert len(lines) == 1 + 12


def test_the_issue_grid_is_one_command_with_a_recommendation() -> None:
    # The README's command: 12 settings of one bundled trace, savings before the last settle.
    result = invoke("sweep", str(VM), "--at", "dirtied", *ISSUE_GRID, "--jobs", "2")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "runs      12" in lines
    table = lines[lines.index("runs      12") + 3 :]
    assert table[0].split() == [
        "settings", "saved", "MiB", "saved", "%", "of", "ideal", "%", "90", "%", "at",
        "cpu", "%", "cpu", "s", "front",
    ]  # fmt: skip
    assert [line.split(",")[0] for line in table[1:13]] == ["0"] * 6 + ["1"] * 6
    (pick,) = [line for line in table[1:13] if line.endswith("* pick")]
    # the recommendation follows the table, in one line, and names the settings picked
    rec = table[13]
    assert rec.startswith("recommended: use_zero_pages=") and rec.endswith(" %)")
    uzp, pts, sm = pick.split()[:3]
    assert f"use_zero_pages={uzp.strip(',')} pages_to_scan={pts.strip(',')} " in rec
    assert f" sleep_millisecs={sm}: saves " in rec
    assert max(len(line) for line in lines if line != rec) <= 80
    # AND the README shows it as it is
    readme = (TRACES.parent / "README.md").read_text()
    shown = "".join(f"    {line}\n" if line else "\n" for line in lines)
    assert shown.replace(str(VM), "traces/vm-guests.msgpack") in readme


def test_at_picks_the_snapshot_and_columns_add_counters() -> None:
    result = invoke(
        "sweep", str(DEMO), "--grid", "pages_to_scan=5,100", "--at", "merged",
        "--column", "pages_sharing", "--column", "visits", "--column", "ksm_zero_pages",
        "--mode", "legacy", "--format", "json", "--jobs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for row in json.loads(result.stdout)["runs"]:
        run = invoke(
            "run", str(DEMO), "--mode", "legacy", "--pin",
            f"pages_to_scan={row['settings']['pages_to_scan']}", "--format", "json",
        )  # fmt: skip
        report = json.loads(run.stdout)["runs"][0]
        (snap,) = [s for s in report["snapshots"] if s["label"] == "merged"]
        assert (row["at"], row["t"], row["saved_pages"]) == (
            "merged",
            snap["t"],
            snap["summary"]["saved_pages"],
        )
        assert row["columns"] == {
            "pages_sharing": snap["ksm"]["pages_sharing"],
            "visits": report["ksmd"]["visits"],
            "ksm_zero_pages": None,  # legacy has no such counter
        }


def test_mistakes_are_found_before_any_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_replay(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed")

    monkeypatch.setattr(sweep, "replay", no_replay)
    for args, message in (
        (("--at", "nowhere"), 'has no snapshot labelled "nowhere" (its snapshots: "merged";'),
        (("--column", "bogus"), "--column bogus: unknown (choose from resident_without_ksm,"),
        (("--kernel", "6.1", "--mode", "legacy", "--grid", "advisor_mode=none,scan-time"),
         "--grid advisor_mode=none: Linux 6.1 has no such knob"),
        (("--grid", "advisor_mode=scan-time", "--grid", "pages_to_scan=5"),
         "--grid pages_to_scan=5 with advisor_mode=scan-time"),
        (("--within", "200%"), "--within '200%': must be from 0 to 100 %"),
        (("--param", "guests=2"), "--param needs --synth WORKLOAD"),
    ):  # fmt: skip
        result = invoke("sweep", str(DEMO), "--jobs", "1", *args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("ksmreplay: ") and message in result.stderr, result.stderr
        assert result.stdout == ""
    for args, message in (
        ((), "sweep: give TRACE... or --synth WORKLOAD"),
        (("-",), "TRACE '-' cannot be replayed many times"),
        ((str(DEMO), str(DEMO)), "given twice"),
    ):
        result = invoke("sweep", *args)
        assert (result.exit_code, result.stdout) == (2, "")
        assert message in result.stderr


def test_synth_traces_are_those_synth_writes(tmp_path: Path) -> None:
    # GIVEN a sweep over two synth traces, and the same traces made by `synth`
    params = ("processes=2", "mib=1", "duration_s=1")
    made = []
    for n in (1, 2):
        path = tmp_path / f"u{n}.msgpack"
        p = [a for text in (*params, f"unmerging_processes={n}") for a in ("--param", text)]
        assert invoke("synth", "zero-heavy", *p, "--seed", "3", "-o", str(path)).exit_code == 0
        made.append(str(path))
    grid = ("--grid", "use_zero_pages=0,1", "--format", "csv", "--jobs", "1")
    swept = invoke(
        "sweep", "--synth", "zero-heavy", *(a for t in params for a in ("--param", t)),
        "--param", "unmerging_processes=1,2", "--seed", "3", *grid,
    )  # fmt: skip
    files = invoke("sweep", *made, *grid)
    assert (swept.exit_code, files.exit_code) == (0, 0), swept.stderr
    # THEN the rows are the same but for the traces' names
    names = [line.split(",", 1)[0] for line in swept.stdout.splitlines()[1:]]
    label = "zero-heavy[unmerging_processes={}]"  # the parameters that differ
    assert names == [label.format(1)] * 2 + [label.format(2)] * 2
    assert [line.split(",", 1)[1] for line in swept.stdout.splitlines()] == [
        line.split(",", 1)[1] for line in files.stdout.splitlines()
    ]


def test_no_grid_replays_the_trace_as_it_is() -> None:
    result = invoke("sweep", str(DEMO), "--mode", "unshare", "--format", "json", "--jobs", "1")
    run = invoke("run", str(DEMO), "--mode", "unshare", "--format", "json")
    doc = json.loads(result.stdout)
    (row,) = doc["runs"]
    assert row["settings"] == {}
    assert (
        row["saved_pages"] == json.loads(run.stdout)["runs"][0]["final"]["summary"]["saved_pages"]
    )
    assert doc["recommendations"][0]["text"].startswith(f"{DEMO}: the trace's own settings: ")


def test_a_failed_run_stops_the_sweep_with_its_own_message(tmp_path: Path) -> None:
    # GIVEN a sweep planned on a trace that is gone when it runs
    trace = tmp_path / "t.msgpack"
    shutil.copyfile(DEMO, trace)
    with sweep.trace_inputs([str(trace)]) as traces:
        plan = sweep.plan_sweep(traces, [parse_grid("pages_to_scan=5,100")], ("unshare",))
    trace.unlink()
    # THEN the error of the run, here or in a worker process, is told as it was there
    message = f"{trace}: cannot open {trace}: No such file or directory"
    for jobs in (1, 2):
        with pytest.raises(sweep.TaskError, match=message) as info:
            sweep.run_sweep(plan, jobs)
        assert info.value.exit_status == 4
    with pytest.raises(sweep.TaskError, match=message):
        sweep.replay_in_parallel(str(trace), str(trace), [("6.18", "legacy"), ("6.18", "v6")], 2)


def test_dask_without_the_extra_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    result = invoke("sweep", str(DEMO), "--grid", "run=1", "--dask", "local")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "ksmreplay: --dask needs dask.distributed: pip install 'ksmreplay[dask]'\n"
    )


# --------------------------------------------------------------------------- the cache


def _count_replays(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the replays the sweep makes here (``--jobs 1`` replays in this process)."""
    calls: list[str] = []
    real = sweep.replay

    def counting(reader: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(reader.name)
        return real(reader, *args, **kwargs)

    monkeypatch.setattr(sweep, "replay", counting)
    return calls


def test_a_repeated_sweep_replays_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replays = _count_replays(monkeypatch)
    cache = str(tmp_path / "cache")
    args = ("sweep", str(DEMO), *DEMO_GRID, "--jobs", "1", "--cache", cache, "--format", "json")
    first = invoke(*args[:-2], "--reports", str(tmp_path / "fresh"), "--format", "csv")
    assert first.exit_code == 0
    assert first.stderr == f"ksmreplay: cache {cache}: 0 of 4 runs found, 4 replayed\n"
    assert len(replays) == 4
    # WHEN the same sweep runs again THEN nothing is replayed and the output is the same
    again = invoke(*args[:-2], "--reports", str(tmp_path / "cached"), "--format", "csv")
    assert again.stderr == f"ksmreplay: cache {cache}: 4 of 4 runs found, 0 replayed\n"
    assert (len(replays), again.stdout) == (4, first.stdout.replace("/fresh/", "/cached/"))
    for report in (tmp_path / "fresh").iterdir():
        assert (tmp_path / "cached" / report.name).read_bytes() == report.read_bytes()
    first = invoke(*args)
    assert len(replays) == 4
    # WHEN the trace has another name THEN it is found by its content, and named anew
    other = tmp_path / "other.msgpack"
    shutil.copyfile(DEMO, other)
    renamed = invoke("sweep", str(other), *args[2:], "--reports", str(tmp_path / "r"))
    assert len(replays) == 4
    doc = json.loads(renamed.stdout)
    assert {r["trace"] for r in doc["runs"]} == {str(other)}
    for row in doc["runs"]:
        assert json.loads(Path(row["report"]).read_text())["trace"]["path"] == str(other)
    # WHEN an entry is damaged THEN that run alone is replayed again
    entry = sorted(Path(cache).iterdir())[0]
    entry.write_text("{")
    assert invoke(*args).stdout == first.stdout
    assert len(replays) == 5
    # WHEN ksmreplay's version changes THEN everything is replayed again
    monkeypatch.setattr(sweep, "__version__", "0.0.0+other")
    assert invoke(*args).stdout == first.stdout
    assert len(replays) == 9


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still there."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(child) for child in f.read().split())
    return found


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_interrupted_sweep_prints_what_finished_and_resumes(tmp_path: Path, jobs: str) -> None:
    cache = tmp_path / "cache"
    args = (
        "sweep", str(TRACES / "zero-heavy.msgpack"), "--grid", "pages_to_scan=100,200,300,400",
        "--grid", "sleep_millisecs=20,50", "--jobs", jobs, "--cache", str(cache),
        "--format", "csv",
    )  # fmt: skip
    # GIVEN a sweep stopped by Ctrl-C once its first run is in the cache (its
    # SIGINT as a terminal gives it: ksmreplay leaves an ignored SIGINT ignored,
    # as a suite started in the background would hand it on)
    proc = ksmreplay(*args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and any(p.suffix == ".json" for p in cache.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert len(workers) == (0 if jobs == "1" else 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # THEN it ends by SIGINT (130 in a shell) and prints the runs that finished, in order
    assert proc.returncode == -signal.SIGINT, err
    rows = out.decode().splitlines()[1:]
    entries = len(list(cache.glob("*.json")))
    assert 1 <= len(rows) <= entries < 8
    assert err.decode().endswith(f"ksmreplay: interrupted: {len(rows)} of 8 runs finished\n")
    # AND its worker processes are gone
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    # WHEN it runs again THEN it replays only what is not in the cache
    resumed = invoke(*args)
    assert resumed.exit_code == 0
    assert f"{entries} of 8 runs found, {8 - entries} replayed" in resumed.stderr
    full = resumed.stdout.splitlines()
    assert len(full) == 9

    def figures(lines: list[str]) -> list[str]:  # (pareto and recommended change)
        return [line.rsplit(",", 2)[0] for line in lines]

    finished = figures(rows)
    assert [line for line in figures(full[1:]) if line in finished] == finished


def test_progress_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    main, tty = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ksmreplay", "sweep", str(DEMO), *DEMO_GRID, "--jobs", "1"],
            stdout=subprocess.PIPE,
            stderr=tty,
            check=True,
        )
        os.close(tty)
        seen = b""
        with pytest.raises(OSError):  # EIO once the writer is gone and all is read
            while chunk := os.read(main, 4096):
                seen += chunk
    finally:
        os.close(main)
    assert b"\r4/4 runs\x1b[K" in seen and seen.endswith(b"\r\x1b[K")
    assert proc.stdout.startswith(b"trace     ")


# --------------------------------------------------------------------------- run --jobs


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_run_jobs_gives_the_same_report(fmt: str) -> None:
    args = (
        "run", str(VM), "--mode", "both", "--kernel", "6.12", "--kernel", "6.18",
        "--pin", "pages_to_scan=500", "--every", "500ms", "--format", fmt,
    )  # fmt: skip
    one = invoke(*args)
    two = invoke(*args, "--jobs", "3")
    assert (one.exit_code, two.exit_code) == (0, 0)
    assert one.stdout == two.stdout
    assert one.stderr and sorted(one.stderr.splitlines()) == sorted(two.stderr.splitlines())


def test_run_jobs_with_explain_and_from_stdin() -> None:
    args = ("run", "--mode", "all", "--explain", "--format", "json")
    one = invoke(*args, str(DEMO))
    assert invoke(*args, "--jobs", "2", str(DEMO)).stdout == one.stdout
    piped = invoke(*args, "--jobs", "2", "-", input=DEMO.read_bytes())
    assert piped.stdout == one.stdout.replace(json.dumps(str(DEMO)), '"<stdin>"')


# --------------------------------------------------------------------------- dask


DASK = pytest.mark.xdist_group("dask")
"""The dask tests, as one group (pytest-xdist's ``loadgroup``; ``make test``
distributes by load, and each worker that runs one builds its own cluster)."""


@pytest.fixture(scope="module")
def issue_grid_csv() -> str:
    """The README's 12-point sweep as CSV, replayed here (``--jobs 1``)."""
    result = invoke("sweep", str(VM), "--at", "dirtied", *ISSUE_GRID, "--format", "csv")
    assert result.exit_code == 0
    return result.stdout


LOCAL = ("--host", "127.0.0.1", "--no-dashboard")
"""Scheduler and workers listen on the loopback address only."""

WORKER = ("--nthreads", "1", "--no-nanny")
"""One replay at a time per worker process, and no nanny to bring a killed one back."""


@pytest.fixture(scope="module")
def dask_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A dask scheduler and two workers (one thread each, no nanny) on localhost:
    the scheduler's address and the workers' processes.  A test may kill a
    worker: the other one serves the tests after it."""
    pytest.importorskip("distributed")
    tmp_path = tmp_path_factory.mktemp("dask")
    started: list[subprocess.Popen[bytes]] = []
    dask = [sys.executable, "-m", "dask"]
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}  # their scratch space
    where: dict[str, Any] = {"cwd": tmp_path, "stdout": subprocess.DEVNULL, "env": env}
    info = tmp_path / "scheduler.json"
    try:
        started.append(
            subprocess.Popen(
                [*dask, "scheduler", *LOCAL, "--port", "0", "--scheduler-file", str(info)],
                stderr=subprocess.DEVNULL,
                **where,
            )
        )
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.05)
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        for log in logs:
            with log.open("wb") as err:
                started.append(
                    subprocess.Popen(
                        [*dask, "worker", *LOCAL, *WORKER, "--scheduler-file", str(info)],
                        stderr=err,
                        **where,
                    )
                )
        while not all(b"Registered to" in log.read_bytes() for log in logs):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        yield json.loads(info.read_text())["address"], started[1:]
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)


@DASK
def test_dask_local_gives_the_same_bytes(issue_grid_csv: str) -> None:
    pytest.importorskip("distributed")
    args = ("sweep", str(VM), "--at", "dirtied", *ISSUE_GRID, "--format", "csv")
    proc = ksmreplay(*args, "--dask", "local", "--jobs", "2")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.decode() == issue_grid_csv


@DASK
def test_a_dask_cluster_gives_the_same_bytes(
    dask_cluster: tuple[str, list[Any]], issue_grid_csv: str
) -> None:
    address, _workers = dask_cluster
    args = ("sweep", str(VM), "--at", "dirtied", *ISSUE_GRID, "--format", "csv")
    proc = ksmreplay(*args, "--dask", address)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.decode() == issue_grid_csv


@DASK
def test_a_sweep_outlives_a_lost_dask_worker(
    dask_cluster: tuple[str, list[subprocess.Popen[bytes]]], tmp_path: Path, issue_grid_csv: str
) -> None:
    address, workers = dask_cluster
    cache = tmp_path / "cache"
    args = ("sweep", str(VM), "--at", "dirtied", *ISSUE_GRID, "--format", "csv")
    # GIVEN a sweep on two dask workers
    assert all(worker.poll() is None for worker in workers)
    proc = ksmreplay(*args, "--dask", address, "--cache", str(cache))
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and any(p.suffix == ".json" for p in cache.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    # WHEN one worker is killed once the first run is done
    workers[0].kill()
    assert len(list(cache.glob("*.json"))) < 12, "the sweep ended before the worker was lost"
    out, err = proc.communicate(timeout=120)
    # THEN the other worker finishes the sweep, and its rows are those of --jobs 1
    assert proc.returncode == 0, err
    assert b"0 of 12 runs found, 12 replayed" in err
    assert out.decode() == issue_grid_csv
