"""The command line, in-process (CliRunner, stdout and stderr apart) and as a process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner, Result

from ksmreplay import __version__, native
from ksmreplay.cli import cli
from ksmreplay.ksm.knobs import DEFAULTS

H = {"ksmreplay": 1}


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


def invoke(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, prog_name="ksmreplay")


SMALL = [
    [0, "alloc", 1, 0x10000, 0x4000],
    [1, "write", 1, 0x10000, 0x2000, [5, 0]],
    [2, "write", 1, 0x12000, 0x1000, 0],
    [3, "write", 1, 0x1300A, 4, b"\x00\x00\x00\x00"],
    [4, "fork", 1, 2],
    [5, "madvise", 2, 0x10000, 0x1000, "dontneed"],
    [6, "free", 1, 0x10000, 0x2000],
    [7, "ksm", {"run": 1, "pages_to_scan": 50}],
    [8, "exit", 2],
    [9, "prctl", 3, "merge_any", True],
    [9, "write", 1, 0x12000, 0x1000, b"\x01" * 4096],
    [3_000_000_010, "snapshot", "end"],
]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.msgpack"
    path.write_bytes(pack({"ksmreplay": 1, "description": "small", "meta": {"k": 1}}, *SMALL))
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.msgpack"
    path.write_bytes(pack(H, [0, "alloc", 1, 0x10000, 0x1000], [5, "read", 1, 0x11000, 1]))
    return path


BAD_MESSAGE = "event 2 (t=5): read from pid 1 at 0x11000 outside any mapping"


# --------------------------------------------------------------------------- general


def test_version() -> None:
    result = invoke("--version")
    expected = f"ksmreplay {__version__}\nengine: {native.engine()}\n"
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, "")


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    from pathlib import Path

    from ksmreplay.cli import cli

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    top = invoke("--help")
    assert top.exit_code == 0
    assert {"validate", "inspect", "convert", "run", "exec", "diff", "synth"} <= set(cli.commands)
    for name in cli.commands:
        assert f"  {name} " in top.stdout
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, name
        assert f"ksmreplay {name}" in readme, f"README does not show {name}"


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert invoke("frobnicate").exit_code == 2
    result = invoke("validate", "--frob", "x")
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: No such option '--frob'.\n")
    assert result.stderr.startswith("Usage: ksmreplay validate [OPTIONS] TRACE...\n")
    assert result.stdout == ""


def test_main_runs_as_a_module(small: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ksmreplay", "validate", str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"{small}: ok, 12 events, duration 3.000000010 s, 3 processes\n"


# --------------------------------------------------------------------------- validate


def test_validate_ok(small: Path) -> None:
    result = invoke("validate", str(small))
    assert result.exit_code == 0
    assert result.stdout == f"{small}: ok, 12 events, duration 3.000000010 s, 3 processes\n"
    assert result.stderr == ""


def test_validate_singular_words(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"ksmreplay": 1}\n[7, "prctl", 4, "merge_any", false]\n')
    result = invoke("validate", str(path))
    assert result.stdout == f"{path}: ok, 1 event, duration 0.000000007 s, 1 process\n"


def test_validate_reports_each_trace_and_fails_if_any_is_bad(small: Path, bad: Path) -> None:
    result = invoke("validate", str(bad), str(small))
    assert result.exit_code == 3
    assert result.stdout == f"{small}: ok, 12 events, duration 3.000000010 s, 3 processes\n"
    assert result.stderr == f"ksmreplay: {bad}: {BAD_MESSAGE}\n"


def test_validate_missing_file_is_an_io_error(small: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.msgpack"
    result = invoke("validate", str(small), str(missing))
    assert result.exit_code == 4
    assert result.stderr == f"ksmreplay: {missing}: cannot open: No such file or directory\n"


def test_validate_reads_stdin(small: Path) -> None:
    result = invoke("validate", "-", input=small.read_bytes())
    assert result.exit_code == 0
    assert result.stdout == "<stdin>: ok, 12 events, duration 3.000000010 s, 3 processes\n"


def test_validate_needs_a_trace() -> None:
    result = invoke("validate")
    assert result.exit_code == 2
    assert "Missing argument 'TRACE...'" in result.stderr


def test_debug_adds_a_traceback(bad: Path) -> None:
    plain = invoke("validate", str(bad))
    assert "Traceback" not in plain.stderr
    result = invoke("--debug", "validate", str(bad))
    assert result.exit_code == 3
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert "TraceError" in result.stderr
    assert result.stderr.endswith(f"ksmreplay: {bad}: {BAD_MESSAGE}\n")


def test_errors_of_other_commands_go_through_the_same_place(bad: Path) -> None:
    result = invoke("inspect", str(bad))
    assert (result.exit_code, result.stdout) == (3, "")
    assert result.stderr == f"ksmreplay: {bad}: {BAD_MESSAGE}\n"
    debug = invoke("--debug", "inspect", str(bad))
    assert debug.exit_code == 3
    assert "Traceback (most recent call last):" in debug.stderr


# --------------------------------------------------------------------------- inspect

EXPECTED_INSPECT: dict[str, Any] = {
    "form": "msgpack",
    "header": {"version": 1, "page_size": 4096, "description": "small", "meta": {"k": 1}},
    "events": 12,
    "duration_ns": 3_000_000_010,
    "ops": {
        "alloc": 1,
        "free": 1,
        "write": 4,
        "read": 0,
        "madvise": 1,
        "prctl": 1,
        "fork": 1,
        "exit": 1,
        "ksm": 1,
        "settle": 0,
        "snapshot": 1,
    },
    # pid 1: 4 pages mapped, all 4 written (5, 0, 0, and a page of zeros by a
    # partial bin write); pid 2 is forked with the same; pid 3 has nothing.
    "processes": [
        {"pid": 1, "peak_mapped_pages": 4, "peak_written_pages": 4},
        {"pid": 2, "peak_mapped_pages": 4, "peak_written_pages": 4},
        {"pid": 3, "peak_mapped_pages": 0, "peak_written_pages": 0},
    ],
    # 5, 0 and the page of bytes 0x01 (fingerprint 0x0101010101010101)
    "distinct_fingerprints": 3,
    "zero_pages_written": 3,
    "ksm_settings": [{"t": 7, "event": 8, "settings": {"run": 1, "pages_to_scan": 50}}],
    # At the snapshot: pid 1 holds 0x12000 (bytes 0x01) and 0x13000 (zeros); pid 2 is
    # gone and pid 3 holds nothing.  One write went over a written page (t=9, bytes
    # 0x01 over the zeros of t=2), 3.000000009 s before the snapshot from the first
    # write (t=1); after t=1 three pages were written, two of them zeros (t=2, t=3):
    # both pages held at the snapshot were written after t=1.
    "contents": {
        "t": 3_000_000_010,
        "snapshot": "end",
        "processes": 1,
        "pages": 2,
        "bytes_per_process": 8192,
        "zero_pages": 1,
        "zero_percent": 50.0,
        "distinct_contents": 1,
        "duplicate_pages": 0,
        "shared_pages": 0,
        "shared_percent": 0.0,
        "activity_s": 3.0,
        "rewritten_pages": 1,
        "touched_pages": 2,
        "touched_percent": 100.0,
        "dirty_pages_per_s": 0.333,
        "dirty_zero_percent": 66.667,
        "ksm_settings": {**DEFAULTS, "run": 1, "pages_to_scan": 50},
    },
    # No page of pid 1 is in a mergeable mapping (nothing was madvised) and pid 3
    # (merge_any) wrote nothing: the same moment, nothing to measure (no activity).
    "mergeable_contents": {
        "t": 3_000_000_010,
        "snapshot": "end",
        "processes": 0,
        "pages": 0,
        "bytes_per_process": 0,
        "zero_pages": 0,
        "zero_percent": 0.0,
        "distinct_contents": 0,
        "duplicate_pages": 0,
        "shared_pages": 0,
        "shared_percent": 0.0,
        "activity_s": 0.0,
        "rewritten_pages": 0,
        "touched_pages": 0,
        "touched_percent": 0.0,
        "dirty_pages_per_s": 0.0,
        "dirty_zero_percent": 0.0,
        "ksm_settings": {**DEFAULTS, "run": 1, "pages_to_scan": 50},
    },
    # At the end pid 1 keeps pages 0x12000 (bytes 0x01) and 0x13000 (zeros),
    # in no mergeable mapping; pid 2 exited; pid 3 (merge_any) wrote nothing.
    "explain": {
        "written_pages": 2,
        "mergeable_pages": 0,
        "distinct_contents": 2,
        "distinct_mergeable_contents": 0,
        "ideal_saved_pages": 0,
        "ideal_saved_pages_all_mergeable": 0,
        "saved_lost_to_unmergeable_pages": 0,
        "processes": [
            {"pid": 1, "written_pages": 2, "mergeable_pages": 0, "distinct_contents": 2},
            {"pid": 3, "written_pages": 0, "mergeable_pages": 0, "distinct_contents": 0},
        ],
    },
}


def test_inspect_json(small: Path) -> None:
    result = invoke("inspect", str(small), "--format", "json")
    assert result.exit_code == 0
    assert result.stdout.endswith("}\n")
    assert json.loads(result.stdout) == {"path": str(small), **EXPECTED_INSPECT}
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2) + "\n"


def test_inspect_written_pages_follow_fork_free_dontneed_and_exit(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        H,
        [0, "alloc", 1, 0, 0x8000],
        [0, "write", 1, 0, 0x8000, 9],  # 8 written
        [1, "madvise", 1, 0, 0x2000, "dontneed"],  # 6
        [2, "fork", 1, 2],  # child: 6
        [3, "write", 2, 0, 0x1000, 9],  # child: 7 (peak)
        [4, "free", 1, 0x4000, 0x4000],  # parent: 2
        [5, "exit", 2],
        [6, "alloc", 2, 0, 0x1000],  # pid 2 again: nothing written
        [7, "write", 1, 0x2000, 0x1000, 9],  # parent: rewrites a written page, still 2
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = invoke("inspect", str(path), "--format", "json")
    info = json.loads(result.stdout)
    assert info["processes"] == [
        {"pid": 1, "peak_mapped_pages": 8, "peak_written_pages": 8},
        {"pid": 2, "peak_mapped_pages": 8, "peak_written_pages": 7},
    ]
    assert (info["distinct_fingerprints"], info["zero_pages_written"]) == (1, 0)


def test_inspect_table(small: Path) -> None:
    result = invoke("inspect", str(small))
    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout == (
        f"trace                  {small} (msgpack)\n"
        "format version         1\n"
        "page size              4096 bytes\n"
        "description            small\n"
        'meta                   {"k": 1}\n'
        "events                 12\n"
        "duration               3.000000010 s\n"
        "distinct fingerprints  3\n"
        "zero pages written     3\n"
        "\n"
        "op        events\n"
        "alloc          1\n"
        "free           1\n"
        "write          4\n"
        "read           0\n"
        "madvise        1\n"
        "prctl          1\n"
        "fork           1\n"
        "exit           1\n"
        "ksm            1\n"
        "settle         0\n"
        "snapshot       1\n"
        "\n"
        "pid  peak mapped pages  peak written pages\n"
        "  1                  4                   4\n"
        "  2                  4                   4\n"
        "  3                  0                   0\n"
        "\n"
        "t (ns)  event  ksm settings\n"
        "     7      8  run=1 pages_to_scan=50\n"
        "\n"
        "contents\n"
        "measured at        snapshot 'end' (t=3.000000010 s)\n"
        "processes          1\n"
        "pages              2 (8192 bytes per process)\n"
        "zero pages         1 (50.000 %)\n"
        "distinct contents  1 (not zeros)\n"
        "duplicate pages    0 (copies of a content another page holds)\n"
        "shared pages       0 (0.000 %, content another process holds)\n"
        "rewritten pages    1 in 3.000 s from the first write: 0.333 pages/s per process\n"
        "touched pages      2 (100.000 %, written after the first write's t, each once)\n"
        "later writes       66.667 % zeros (after the first write's t)\n"
        "\n"
        "explain (at the trace's end, without a replay)\n"
        "written pages                     2 (0.01 MiB)\n"
        "in mergeable mappings             0 (0.00 MiB)\n"
        "distinct contents                 2\n"
        "of those in mergeable mappings    0\n"
        "ideal saving                      0 (0.00 MiB)\n"
        "if every mapping were mergeable   0 (0.00 MiB)\n"
        "kept from sharing by unmergeable  0 (0.00 MiB)\n"
        "\n"
        "pid  written pages  mergeable  distinct contents\n"
        "  1              2          0                  2\n"
        "  3              0          0                  0\n"
    )


def test_inspect_reads_stdin(small: Path) -> None:
    result = invoke("inspect", "-", "--format", "json", input=small.read_bytes())
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"path": "<stdin>", **EXPECTED_INSPECT}


# --------------------------------------------------------------------------- convert


def test_convert_round_trip_through_files_and_pipes(small: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "small.jsonl"
    result = invoke("convert", str(small), str(jsonl))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert jsonl.read_text().splitlines()[:2] == [
        '{"ksmreplay": 1, "page_size": 4096, "description": "small", "meta": {"k": 1}}',
        '[0, "alloc", 1, 65536, 16384]',
    ]
    back = invoke("convert", str(jsonl), "-", "--to", "msgpack")
    assert back.exit_code == 0
    # the original had no page_size; the converted trace states the default
    original = list(msgpack.Unpacker(io.BytesIO(small.read_bytes())))
    converted = list(msgpack.Unpacker(io.BytesIO(back.stdout_bytes)))
    assert converted[0] == {**original[0], "page_size": 4096}
    assert converted[1:] == original[1:]
    # stdin to stdout
    again = invoke("convert", "-", "-", "--to", "jsonl", input=back.stdout_bytes)
    assert again.stdout_bytes == jsonl.read_bytes()


def test_convert_needs_to_for_stdout_and_a_known_suffix(small: Path, tmp_path: Path) -> None:
    result = invoke("convert", str(small), "-")
    assert result.exit_code == 2
    assert "--to is required when OUT is '-'" in result.stderr
    result = invoke("convert", str(small), str(tmp_path / "x.txt"))
    assert result.exit_code == 2
    assert "cannot tell the form of" in result.stderr
    assert not (tmp_path / "x.txt").exists()


def test_convert_of_a_bad_trace_leaves_no_file(bad: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = invoke("convert", str(bad), str(out))
    assert result.exit_code == 3
    assert result.stderr == f"ksmreplay: {bad}: {BAD_MESSAGE}\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.msgpack"]


def test_convert_failure_keeps_the_old_output(bad: Path, small: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    assert invoke("convert", str(bad), str(out)).exit_code == 3
    assert out.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.msgpack", "out.jsonl", "small.msgpack"]
    assert invoke("convert", str(small), str(out)).exit_code == 0
    assert out.read_text().startswith('{"ksmreplay": 1')


def test_convert_into_a_missing_directory_is_an_io_error(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "out.jsonl"
    result = invoke("convert", str(small), str(out))
    assert result.exit_code == 4
    assert result.stderr == f"ksmreplay: {out}: cannot write: No such file or directory\n"


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    path = tmp_path / "big.msgpack"
    events = [[0, "alloc", 1, 0, 1 << 30]] + [
        [i, "write", 1, (i % 100) * 4096, 4096, i] for i in range(50_000)
    ]
    path.write_bytes(pack(H, *events))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksmreplay", "convert", str(path), "-", "--to", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b'{"ksmreplay": 1')
    proc.stdout.close()
    stderr = proc.stderr.read()
    # as a Unix tool does: ended by SIGPIPE, status 141 in a shell (and nothing said)
    assert proc.wait(timeout=60) == -signal.SIGPIPE
    assert stderr == b""


# --------------------------------------------------------------------------- run and diff


def test_run_json_report_shape(small: Path) -> None:
    result = invoke("run", str(small), "--mode", "legacy", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["report"] == 1
    assert report["trace"] == {
        "path": str(small),
        "events": 12,
        "duration_ns": 3_000_000_010,
        "page_size": 4096,
        "meta": {"k": 1},
    }
    assert [run["mode"] for run in report["runs"]] == ["legacy"]
    assert [s["label"] for s in report["runs"][0]["snapshots"]] == ["end"]


def test_run_default_modes_and_set(small: Path) -> None:
    result = invoke("run", str(small), "--format", "json", "--set", "pages_to_scan=7")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [run["mode"] for run in report["runs"]] == ["legacy", "unshare"]
    # the trace's own ksm event (pages_to_scan 50) applies after the override
    assert all(run["settings"]["pages_to_scan"] == 50 for run in report["runs"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("pages_to_scan", "expected KNOB=VALUE, not 'pages_to_scan'"),
        ("frob=1", "unknown knob 'frob'"),
        ("run=3", "run must be between 0 and 2"),
        ("pages_to_scan=x", "pages_to_scan must be an integer, not 'x'"),
        ("advisor_mode=fast", "advisor_mode must be one of 'none', 'scan-time'"),
    ],
)
def test_run_bad_set_is_a_usage_error(small: Path, setting: str, message: str) -> None:
    result = invoke("run", str(small), "--set", setting)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_run_help_lists_every_knob() -> None:
    from ksmreplay.ksm.knobs import KNOBS

    text = " ".join(invoke("run", "--help").stdout.split())
    for knob in KNOBS:
        assert f"{knob.name} (default {knob.default})" in text


def test_run_output_file_and_invalid_trace(small: Path, bad: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    result = invoke("run", str(small), "--mode", "unshare", "--format", "csv", "-o", str(out))
    assert (result.exit_code, result.stdout) == (0, "")
    assert out.read_text().startswith("mode,snapshot,t,event,scope,pid,counter,value\n")
    out2 = tmp_path / "never.json"
    result = invoke("run", str(bad), "-o", str(out2))
    assert result.exit_code == 3
    assert result.stderr == f"ksmreplay: {bad}: {BAD_MESSAGE}\n"
    assert not out2.exists()


def test_diff_same_and_different(small: Path, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    assert (
        invoke("run", str(small), "--mode", "legacy", "--format", "json", "-o", str(a)).exit_code
        == 0
    )
    assert (
        invoke("run", str(small), "--mode", "legacy", "--format", "json", "-o", str(b)).exit_code
        == 0
    )
    same = invoke("diff", str(a), str(b))
    assert (same.exit_code, same.stdout) == (0, "no differences\n")
    report = json.loads(b.read_text())
    report["runs"][0]["final"]["ksm"]["pages_scanned"] += 5
    b.write_text(json.dumps(report))
    differ = invoke("diff", str(a), str(b))
    assert differ.exit_code == 1
    assert "pages_scanned" in differ.stdout
    assert invoke("diff", str(a), str(b), "--ignore", "pages_scanned").exit_code == 0
    assert invoke("diff", str(a), str(b), "--tolerance", "5").exit_code == 0
    assert invoke("diff", str(a), str(b), "--tolerance", "-1").exit_code == 2


# --------------------------------------------------------------------------- layering


def test_library_modules_never_import_click_or_tabulate() -> None:
    code = (
        "import sys\n"
        "import ksmreplay.trace, ksmreplay.inspect, ksmreplay.trace.events, ksmreplay.vm.content\n"
        "import ksmreplay.ksm.knobs, ksmreplay.report\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'tabulate')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "[]\n"
