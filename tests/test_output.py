"""Output paths: what -o FILE and convert's OUT do with each kind of path.

A regular file (or a new path) is replaced once complete, keeping its mode
and owner; a symbolic link's target likewise; anything else (a device, a FIFO,
a socket, /dev/stdout) is written through and never renamed onto.  Device
nodes are made here with mknod (copies of /dev/null and /dev/full), never the
real ones.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from ksmreplay import output
from ksmreplay.errors import InputOutputError
from ksmreplay.output import open_output, open_text_output

REPO = Path(__file__).parent.parent
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mknod and chown need root")

TRACE = [
    {"ksmreplay": 1},
    [0, "alloc", 1, 0x10000, 0x4000],
    [1, "write", 1, 0x10000, 0x4000, 7],
    [2, "ksm", {"run": 1}],
    [3_000_000, "snapshot", "end"],
]


@pytest.fixture(params=["unnamed", "named"])
def temp_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: with an O_TMPFILE temporary file where the file system
    allows it, and with a named ``.NAME.XXXXXXXX`` one (the fallback)."""
    monkeypatch.setattr(output, "_unnamed_ok", request.param == "unnamed")
    return str(request.param)


def mknod(path: Path, major: int, minor: int) -> Path:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def is_device(path: Path, major: int, minor: int) -> bool:
    info = os.lstat(path)
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(major, minor)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- regular files


def test_a_new_file_gets_the_umask_mode(tmp_path: Path, temp_kind: str) -> None:
    old = os.umask(0o027)
    try:
        with open_output(str(tmp_path / "new.bin")) as out:
            out.write(b"data")
    finally:
        os.umask(old)
    info = os.stat(tmp_path / "new.bin")
    assert (tmp_path / "new.bin").read_bytes() == b"data"
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert entries(tmp_path) == ["new.bin"]


def test_an_existing_file_keeps_its_mode_and_owner(tmp_path: Path, temp_kind: str) -> None:
    path = tmp_path / "old.txt"
    path.write_text("old\n")
    os.chmod(path, 0o604)
    owner = (1234, 5678) if ROOT else (os.geteuid(), os.getegid())
    os.chown(path, *owner)
    with open_text_output(str(path)) as out:
        out.write("new\n")
    info = os.stat(path)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(info.st_mode) == 0o604
    assert (info.st_uid, info.st_gid) == owner
    assert entries(tmp_path) == ["old.txt"]


def test_a_failure_keeps_the_old_file_and_leaves_nothing(tmp_path: Path, temp_kind: str) -> None:
    path = tmp_path / "old.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), open_output(str(path)) as out:
        out.write(b"x" * 200_000)
        raise RuntimeError("stop half-way")
    assert path.read_text() == "old\n"
    assert entries(tmp_path) == ["old.txt"]


def test_a_symbolic_link_stays_and_its_target_is_replaced(tmp_path: Path, temp_kind: str) -> None:
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "report.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    (tmp_path / "links").mkdir()
    first = tmp_path / "links" / "first"
    first.symlink_to("second")  # a chain, with relative targets
    (tmp_path / "links" / "second").symlink_to("../data/report.json")
    with open_output(str(first)) as out:
        out.write(b"new")
    assert first.is_symlink() and (tmp_path / "links" / "second").is_symlink()
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert entries(tmp_path / "data") == ["report.json"]
    assert entries(tmp_path / "links") == ["first", "second"]


def test_a_dangling_link_gets_its_target_made(tmp_path: Path, temp_kind: str) -> None:
    link = tmp_path / "link"
    link.symlink_to("made.txt")
    with open_output(str(link)) as out:
        out.write(b"made")
    assert link.is_symlink()
    assert (tmp_path / "made.txt").read_bytes() == b"made"


def test_a_link_loop_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(InputOutputError, match=r"/a: cannot write: Too many levels of symbolic"):
        open_output(str(tmp_path / "a")).__enter__()


def test_a_directory_and_a_missing_directory_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputOutputError, match=r"cannot write: Is a directory$"):
        open_output(str(tmp_path)).__enter__()
    with pytest.raises(InputOutputError, match=r"cannot write: No such file or directory$"):
        open_output(str(tmp_path / "no" / "file")).__enter__()


# --------------------------------------------------------------------------- written through


@needs_root
def test_a_character_device_is_written_through_and_stays(tmp_path: Path, temp_kind: str) -> None:
    null = mknod(tmp_path / "null", 1, 3)
    with open_output(str(null)) as out:
        out.write(b"x" * 1_000_000)
    assert is_device(null, 1, 3)
    assert entries(tmp_path) == ["null"]


@needs_root
def test_a_full_device_is_one_error_and_stays(tmp_path: Path) -> None:
    full = mknod(tmp_path / "full", 1, 7)
    with pytest.raises(InputOutputError) as caught, open_output(str(full)) as out:
        out.write(b"x" * 1_000_000)
    assert str(caught.value) == f"{full}: cannot write: No space left on device"
    assert is_device(full, 1, 7)


@needs_root
def test_a_link_to_a_device_is_followed_and_both_stay(tmp_path: Path) -> None:
    null = mknod(tmp_path / "null", 1, 3)
    link = tmp_path / "out"
    link.symlink_to("null")
    with open_output(str(link)) as out:
        out.write(b"report")
    assert link.is_symlink() and is_device(null, 1, 3)


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with open_output(str(fifo)) as out:
        out.write(b"y" * 300_000)
    reader.join(timeout=30)
    assert got == [b"y" * 300_000]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert entries(tmp_path) == ["fifo"]


def test_a_socket_is_one_error_and_stays(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(InputOutputError, match=r"cannot write: No such device or address$"):
            open_output(str(path)).__enter__()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_own_descriptors_are_written_as_they_are(tmp_path: Path) -> None:
    """/proc/self/fd/N and /dev/fd/N write through descriptor N itself: a file opened
    for appending is appended to, not replaced, and a pipe gets the bytes."""
    log = tmp_path / "log"
    log.write_bytes(b"header\n")
    inode = os.stat(log).st_ino
    with open(log, "ab") as appending:
        with open_output(f"/proc/self/fd/{appending.fileno()}") as out:
            out.write(b"report\n")
        with open_output(f"/dev/fd/{appending.fileno()}") as out:
            out.write(b"again\n")
    assert log.read_bytes() == b"header\nreport\nagain\n"
    assert os.stat(log).st_ino == inode
    read_end, write_end = os.pipe()
    try:
        with open_output(f"/proc/self/fd/{write_end}") as out:
            out.write(b"piped")
        assert os.read(read_end, 100) == b"piped"
    finally:
        os.close(read_end)
        os.close(write_end)
    assert entries(tmp_path) == ["log"]


# --------------------------------------------------------------------------- the commands


def ksmreplay(
    *args: str, named: bool = False, ignored: tuple[signal.Signals, ...] = ()
) -> subprocess.Popen[bytes]:
    """ksmreplay as a process; ``named`` forces the named temporary file (the fallback);
    ``ignored`` signals are ignored from the start, as ``nohup`` does with SIGHUP.

    SIGINT is otherwise reset to its default in the child: a shell that starts this
    suite in the background has it ignored, and Ctrl-C must reach the process under test.
    """

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)

    if named:
        prelude = "from ksmreplay import output; output._unnamed_ok = False; "
        command = [sys.executable, "-c", prelude + "from ksmreplay.cli import main; main()"]
    else:
        command = [sys.executable, "-m", "ksmreplay"]
    return subprocess.Popen(
        [*command, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=prepare,
    )


def wait_until(condition: Callable[[], object], proc: subprocess.Popen[bytes]) -> None:
    """Poll ``condition`` while ``proc`` runs (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.msgpack"
    path.write_bytes(b"".join(msgpack.packb(o) for o in TRACE))
    return path


def errors(stderr: bytes, command: list[str]) -> bytes:
    """``stderr`` without record's closing summary and warnings (``command``: the
    arguments; other commands print nothing of the kind)."""
    if command[0] != "record":
        return stderr
    return b"".join(
        line + b"\n"
        for line in stderr.splitlines()
        if not line.startswith((b"[ ksmreplay record: ", b"ksmreplay: warning: "))
    )


@needs_root
@pytest.mark.parametrize(
    "command",
    [
        ["run", "{trace}", "-o", "{out}"],
        ["run", "{trace}", "--format", "json", "--output", "{out}"],
        ["convert", "{trace}", "{out}", "--to", "jsonl"],
        ["synth", "zero-heavy", "--param", "mib=1", "-o", "{out}"],
        ["record", "--interval", "10ms", "-o", "{out}", "--", "true"],
    ],
    ids=["run", "run-json", "convert", "synth", "record"],
)
def test_every_command_writes_through_a_device(
    command: list[str], trace: Path, tmp_path: Path
) -> None:
    """`ksmreplay run t -o /dev/null` must not replace /dev/null with a file."""
    null = mknod(tmp_path / "null", 1, 3)
    full = mknod(tmp_path / "full", 1, 7)
    args = [a.format(trace=trace, out=null) for a in command]
    proc = ksmreplay(*args)
    _, stderr = proc.communicate(timeout=120)
    if command[0] == "record":  # its closing summary, and a warning on some kernels
        assert f" to {null} ]\n" in stderr.decode()  # the summary names the device
    assert (proc.returncode, errors(stderr, command)) == (0, b"")
    assert is_device(null, 1, 3)
    args = [a.format(trace=trace, out=full) for a in command]
    proc = ksmreplay(*args)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4
    assert (
        errors(stderr, command)
        == f"ksmreplay: {full}: cannot write: No space left on device\n".encode()
    )
    assert is_device(full, 1, 7)
    assert entries(tmp_path) == ["full", "null", "t.msgpack"]


def test_a_fifo_output_whose_reader_leaves_ends_like_a_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = ksmreplay("synth", "vm-guests", "--param", "guests=8", "-o", str(fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        wait_until(lambda: select.select([reader], [], [], 0.1)[0], proc)
        assert os.read(reader, 1000)
    finally:
        os.close(reader)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (-signal.SIGPIPE, b"")  # 141 in a shell
    assert entries(tmp_path) == ["fifo"]


# --------------------------------------------------------------------------- stopped half-way


def open_in(pid: int, directory: Path) -> list[str]:
    """What the descriptors of ``pid`` that lead to files in ``directory`` point at."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if os.path.dirname(target) == str(directory):
                found.append(target)
    return found


def waits_on_a_pipe(pid: int) -> bool:
    """Whether ``pid`` sleeps in a read of a pipe or FIFO (its wait channel)."""
    with open(f"/proc/{pid}/wchan") as f:
        return "pipe" in f.read()


@contextlib.contextmanager
def convert_stuck_writing(
    tmp_path: Path, named: bool = False, ignored: tuple[signal.Signals, ...] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """`convert FIFO tmp_path/out.jsonl` with its temporary output file open, blocked on
    reading more input from the FIFO; yields the process and its open temporary file."""
    (tmp_path / "in").mkdir()
    fifo = tmp_path / "in" / "fifo"
    os.mkfifo(fifo)
    proc = ksmreplay(
        "convert", str(fifo), str(tmp_path / "out.jsonl"), named=named, ignored=ignored
    )
    writer = os.open(fifo, os.O_WRONLY)  # waits for convert to open it
    try:
        os.write(writer, b"".join(msgpack.packb(o) for o in TRACE[:3]))
        # (the output is made before convert reads on: a second, trial file is
        # open for a moment while it is made)
        wait_until(lambda: open_in(proc.pid, tmp_path) and waits_on_a_pipe(proc.pid), proc)
        yield proc, open_in(proc.pid, tmp_path)
    finally:
        os.close(writer)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


STOPS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE]


@pytest.mark.parametrize("sig", STOPS, ids=[s.name for s in STOPS])
@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_a_stop_signal_mid_write_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, named: bool
) -> None:
    """GIVEN convert writing its new output, WHEN a stop signal comes, THEN the temporary
    file is gone and the process ends by that signal (128+N in a shell), quietly."""
    with convert_stuck_writing(tmp_path, named) as (proc, temps):
        if named:
            assert [os.path.basename(t)[:11] for t in temps] == [".out.jsonl."]
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (-sig, b"")
    assert entries(tmp_path) == ["in"]


def test_an_ignored_sighup_stays_ignored(tmp_path: Path) -> None:
    """Under nohup, SIGHUP is ignored from the start: it must not stop ksmreplay, which
    then finishes its work when the rest of its input comes."""
    (tmp_path / "in").mkdir()
    fifo = tmp_path / "in" / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    proc = ksmreplay("convert", str(fifo), str(out), ignored=(signal.SIGHUP,))
    with open(fifo, "wb") as writer:
        writer.write(msgpack.packb(TRACE[0]))
        writer.flush()
        wait_until(lambda: open_in(proc.pid, tmp_path), proc)  # its output is open
        proc.send_signal(signal.SIGHUP)
        writer.write(b"".join(msgpack.packb(o) for o in TRACE[1:]))
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (0, b"")
    assert len(out.read_text().splitlines()) == len(TRACE)


def test_even_sigkill_leaves_no_unnamed_temporary_file(tmp_path: Path) -> None:
    with convert_stuck_writing(tmp_path) as (proc, temps):
        if not temps[0].endswith(" (deleted)"):
            pytest.skip("no O_TMPFILE here: the temporary file has a name")
        proc.kill()
        proc.communicate(timeout=30)
    assert entries(tmp_path) == ["in"]


def test_the_old_output_survives_a_stop(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    with convert_stuck_writing(tmp_path) as (proc, temps):
        assert len(temps) == 1 and temps != [str(out)]  # only the temporary file is open
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (-signal.SIGTERM, b"")
    assert out.read_text() == "old\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    assert entries(tmp_path) == ["in", "out.jsonl"]
