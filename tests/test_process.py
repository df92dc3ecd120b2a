"""ksmreplay as a process: exit statuses on signals and write errors, closed standard streams.

Every case runs ``python -m ksmreplay`` and looks at its exit status and its
whole stderr: one line, never a traceback.  A process ended by a signal shows
as a negative return code here (128+N in a shell).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from ksmreplay.cli import cli
from ksmreplay.errors import ExitStatus

REPO = Path(__file__).parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")

TRACE = [
    {"ksmreplay": 1},
    [0, "alloc", 1, 0x10000, 0x4000],
    [1, "write", 1, 0x10000, 0x4000, 7],
    [2, "ksm", {"run": 1}],
    [3_000_000, "snapshot", "end"],
]


def pack(objects: list[object]) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.msgpack"
    path.write_bytes(pack(TRACE))
    return path


def ksmreplay(
    *args: str,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    closed: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """``ksmreplay ARGS`` with the standard streams in ``closed`` closed (``<&-``, ``>&-``).

    SIGINT is reset to its default in the child: a shell that starts this suite in
    the background has it ignored, and Ctrl-C must reach the process under test.
    """

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for fd in closed:
            os.close(fd)

    return subprocess.Popen(
        [sys.executable, "-m", "ksmreplay", *args],
        cwd=REPO,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=prepare,
    )


def run(*args: str, **kwargs: object) -> tuple[int, bytes, bytes]:
    proc = ksmreplay(*args, **kwargs)  # type: ignore[arg-type]
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out or b"", err or b""


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A character device like /dev/full (writes fail with ENOSPC), made here."""
    path = tmp_path / "full"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return path


# --------------------------------------------------------------------------- the table


def test_the_readme_lists_every_exit_status() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit statuses") :]
    section = section[: section.index("\n## ", 1)]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert listed == {int(s) for s in ExitStatus}
    assert {130, 143, 129, 141} <= listed


# --------------------------------------------------------------------------- signals


def wait_until(condition: Callable[[], object], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def reads(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("sig", STOPS, ids=[s.name for s in STOPS])
def test_a_stop_signal_while_reading_ends_the_run_by_that_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """GIVEN `run` reading a trace from a FIFO, WHEN a stop signal comes, THEN it ends by
    that signal (130 for Ctrl-C, not 1, the status of "differences"), says nothing and
    writes nothing."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = ksmreplay("run", str(fifo), "-o", str(tmp_path / "report.txt"))
    writer = os.open(fifo, os.O_WRONLY)
    try:
        os.write(writer, pack(TRACE[:3]))
        wait_until(lambda: reads(proc.pid, fifo), proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, stderr) == (-sig, b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_closed_output_pipe_ends_run_quietly(tmp_path: Path) -> None:
    events = [[0, "ksm", {"run": 1}], [0, "alloc", 1, 0, 1 << 24]]  # (run=1: no warning)
    events += [[i, "snapshot", f"s{i}"] for i in range(2000)]
    path = tmp_path / "many.msgpack"
    path.write_bytes(pack([{"ksmreplay": 1}, *events]))
    proc = ksmreplay("run", str(path), "--format", "csv")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"mode,snapshot,t,event,scope,pid,counter,value\n"
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (-signal.SIGPIPE, b"")  # 141 in a shell, as `head` expects


# --------------------------------------------------------------------------- write errors


@needs_root
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],  # written while the command line is parsed
        ["validate", "{trace}"],  # echoed lines
        ["run", "{trace}"],  # a report, through the output path '-'
        ["convert", "{trace}", "-", "--to", "jsonl"],  # bytes, likewise
        ["diff", "{report}", "{report}"],  # a table
    ],
    ids=lambda args: args[0].strip("-"),
)
def test_a_full_stdout_is_one_line_and_status_4(
    args: list[str], trace: Path, full: Path, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["run", str(trace), "--format", "json", "-o", str(report)])
    assert result.exit_code == 0
    with open(full, "wb") as stdout:
        status, _, stderr = run(
            *[a.format(trace=trace, report=report) for a in args], stdout=stdout.fileno()
        )
    assert (status, stderr) == (4, b"ksmreplay: <stdout>: cannot write: No space left on device\n")


@needs_root
def test_a_full_stderr_changes_no_status(trace: Path, full: Path, tmp_path: Path) -> None:
    with open(full, "wb") as stderr:
        assert run("validate", str(tmp_path / "missing"), stderr=stderr.fileno())[0] == 4
        assert run("validate", str(trace), stderr=stderr.fileno())[0] == 0
        assert run("frobnicate", stderr=stderr.fileno())[0] == 2


# --------------------------------------------------------------------------- closed streams


def test_closed_stdin(trace: Path) -> None:
    assert run("run", "-", closed=(0,)) == (
        4,
        b"",
        b"ksmreplay: <stdin>: cannot read: Bad file descriptor\n",
    )
    assert run("diff", "-", closed=(0,)) == (4, b"", b"ksmreplay: <stdin>: Bad file descriptor\n")
    status, _, stderr = run("validate", str(trace), closed=(0,))
    assert (status, stderr) == (0, b"")


def test_closed_stdout(trace: Path, tmp_path: Path) -> None:
    bad = b"ksmreplay: <stdout>: cannot write: Bad file descriptor\n"
    assert run("run", str(trace), closed=(1,)) == (4, b"", bad)
    assert run("validate", str(trace), closed=(1,)) == (4, b"", bad)
    assert run("--help", closed=(1,)) == (4, b"", bad)
    out = tmp_path / "report.txt"
    assert run("run", str(trace), "-o", str(out), closed=(1,)) == (0, b"", b"")
    assert out.read_text().startswith("trace ")


def test_closed_stderr(trace: Path, tmp_path: Path) -> None:
    status, stdout, _ = run("run", str(trace), closed=(2,))
    assert status == 0 and stdout.startswith(b"trace ")
    assert run("validate", str(tmp_path / "missing"), closed=(2,))[0] == 4
    assert run("run", "--mode", "nope", str(trace), closed=(2,))[0] == 2


def test_all_streams_closed_and_the_output_file_is_still_right(trace: Path, tmp_path: Path) -> None:
    """The output file must not take the number of a closed standard stream."""
    out = tmp_path / "report.json"
    assert run("run", str(trace), "--format", "json", "-o", str(out), closed=(0, 1, 2))[0] == 0
    expected = run("run", str(trace), "--format", "json")
    assert out.read_bytes() == expected[1]
