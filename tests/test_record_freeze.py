"""``record --freeze``: the processes are stopped while a sample is read, and never left
stopped, however the sample or the recording ends (success, an error, Ctrl-C,
SIGTERM, a recorded process dying in the middle of a sample)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Writer, needs_ptrace, read_back

from ksmreplay import procfs, record
from ksmreplay.errors import Stopped
from ksmreplay.trace.events import Exit

pytestmark = needs_ptrace

REPO = Path(__file__).parent.parent


def stopped(pid: int) -> bool:
    states = procfs.thread_states(pid)
    return bool(states) and all(s in "tT" for s in states)


def alive(pid: int) -> bool:
    states = procfs.thread_states(pid)
    return bool(states) and not all(s in "ZX" for s in states)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    try:
        yield made
    finally:
        for w in made:
            with contextlib.suppress(OSError):
                os.kill(w.proc.pid, signal.SIGCONT)
            w.proc.kill()
            w.proc.wait(10)


def during_samples(
    monkeypatch: pytest.MonkeyPatch, action: Callable[[int, int], None]
) -> list[int]:
    """Call ``action(sample, pid)`` whenever a sample reads a process's maps (from
    inside the sample, after the freeze); return the list of samples seen."""
    seen: list[int] = []
    real = procfs.read_maps
    count = {"sample": -1}
    real_sample = record.Recorder.sample

    def sample(self: record.Recorder, t: int) -> Any:
        count["sample"] += 1
        return real_sample(self, t)

    def read_maps(pid: int, with_flags: bool = False) -> Any:
        seen.append(count["sample"])
        action(count["sample"], pid)
        return real(pid, with_flags)

    monkeypatch.setattr(record.Recorder, "sample", sample)
    monkeypatch.setattr(procfs, "read_maps", read_maps)
    return seen


def run(pids: list[int], duration_ms: int = 200) -> record.RecordSummary:
    return record.record(pids, None, 20_000_000, duration_ms * 1_000_000, io.BytesIO(), freeze=True)


def test_the_processes_are_stopped_while_a_sample_is_read_and_let_go_after(
    writers: list[Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    writers.extend([Writer(), Writer()])
    pids = [w.proc.pid for w in writers]
    assert record.choose_freezer(pids).name == "signals"
    states: list[bool] = []
    during_samples(monkeypatch, lambda n, pid: states.append(all(stopped(p) for p in pids)))
    summary = run(pids)
    assert summary.freeze == "signals"
    assert summary.samples >= 2 and states and all(states)
    assert not any(stopped(p) for p in pids)
    writers[0].do("set", 0, 1)  # it runs


def test_an_error_in_a_sample_lets_the_processes_go(
    writers: list[Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    writers.append(Writer())
    pid = writers[0].proc.pid

    def fail(n: int, p: int) -> None:
        if n == 1:
            assert stopped(pid)
            raise OSError(errno.EIO, "injected")

    during_samples(monkeypatch, fail)
    with pytest.raises(OSError, match="injected"):
        run([pid])
    assert not stopped(pid)
    writers[0].do("set", 0, 1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=str)
def test_a_stop_signal_in_a_sample_lets_the_processes_go(
    writers: list[Writer], monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    """The CLI turns stop signals into exceptions (ksmreplay.signals); here one is raised
    from inside a sample, where the processes are stopped."""
    from ksmreplay.errors import stopped as exception_for

    writers.append(Writer())
    pid = writers[0].proc.pid

    def stop(n: int, p: int) -> None:
        if n == 2:
            raise exception_for(signum)

    during_samples(monkeypatch, stop)
    if signum == signal.SIGINT:
        out = io.BytesIO()
        summary = record.record([pid], None, 20_000_000, None, out, freeze=True)
        assert summary.samples == 2  # Ctrl-C in the third ends it with a complete trace
        _, events, _ = read_back(out.getvalue())
        assert events[-1].op == "snapshot"
    else:
        with pytest.raises(Stopped):
            run([pid], 10_000)
    assert not stopped(pid)
    writers[0].do("set", 0, 1)


def test_a_process_that_dies_in_a_sample_does_not_keep_the_others_stopped(
    writers: list[Writer], monkeypatch: pytest.MonkeyPatch
) -> None:
    writers.extend([Writer(), Writer()])
    doomed, other = (w.proc.pid for w in writers)

    def kill(n: int, pid: int) -> None:
        if n == 1 and pid == doomed:
            os.kill(doomed, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(doomed) and time.monotonic() < deadline:
                time.sleep(0.001)

    during_samples(monkeypatch, kill)
    out = io.BytesIO()
    summary = record.record([doomed, other], None, 20_000_000, 200_000_000, out, freeze=True)
    assert summary.samples >= 3  # it went on after the death
    assert not stopped(other)
    _, events, _ = read_back(out.getvalue())
    assert next(e.pid for e in events if isinstance(e, Exit)) == 1
    writers[1].do("set", 0, 1)


def test_a_process_stopped_by_someone_else_stays_stopped(writers: list[Writer]) -> None:
    writers.extend([Writer(), Writer()])
    held, free = (w.proc.pid for w in writers)
    os.kill(held, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while not stopped(held) and time.monotonic() < deadline:
        time.sleep(0.001)
    run([held, free], 100)
    assert stopped(held) and not stopped(free)


def test_sigterm_to_the_command_line_in_the_middle_of_samples(tmp_path: Path) -> None:
    """GIVEN `ksmreplay record --freeze --pid P` reading P (64 MiB: most of the time is
    spent inside samples), WHEN ksmreplay gets SIGTERM while P is seen stopped, THEN it
    ends by the signal and P runs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; b = bytearray(range(256)) * (64 * 4096); print('ready', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        for _ in range(3):
            command = ["record", "--freeze", "--interval", "1ms", "--pid", str(holder.pid)]
            proc = subprocess.Popen(
                [sys.executable, "-m", "ksmreplay", *command, "-o", str(tmp_path / "t")],
                cwd=REPO,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 60
            while not stopped(holder.pid):  # in a sample now
                assert proc.poll() is None and time.monotonic() < deadline
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGTERM
            assert not stopped(holder.pid)
            assert alive(holder.pid)
    finally:
        with contextlib.suppress(OSError):
            os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait(10)


# --------------------------------------------------------------------------- cgroup v2


def cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as stream:
        for line in stream:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return left.split()[4]
    return None


@pytest.fixture
def alone_in_a_cgroup() -> Iterator[tuple[Writer, str]]:
    """A writer process alone in a cgroup v2 of its own (root and cgroup2 needed)."""
    mount = cgroup2_mount()
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup v2 hierarchy")
    path = os.path.join(mount, f"ksmreplay-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc.strerror}")
    w = Writer()
    try:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(w.proc.pid))
        except OSError as exc:
            pytest.skip(f"cannot move a process into a cgroup here: {exc.strerror}")
        if not os.path.exists(os.path.join(path, "cgroup.freeze")):
            pytest.skip("no cgroup v2 freezer")
        yield w, path
    finally:
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
        w.proc.kill()
        w.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.01)


def frozen(path: str) -> bool:
    with open(os.path.join(path, "cgroup.events")) as stream:
        return "frozen 1" in stream.read()


def test_a_process_alone_in_its_cgroup_is_frozen_by_the_cgroup_freezer(
    alone_in_a_cgroup: tuple[Writer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, path = alone_in_a_cgroup
    assert record.choose_freezer([w.proc.pid]).name == "cgroup"
    seen: list[bool] = []
    during_samples(monkeypatch, lambda n, pid: seen.append(frozen(path)))
    summary = run([w.proc.pid])
    assert summary.freeze == "cgroup" and seen and all(seen)
    assert not frozen(path)
    w.do("set", 0, 1)


def test_an_error_in_a_sample_thaws_the_cgroup(
    alone_in_a_cgroup: tuple[Writer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, path = alone_in_a_cgroup

    def fail(n: int, pid: int) -> None:
        if n == 1:
            assert frozen(path)
            raise Stopped(signal.SIGTERM)

    during_samples(monkeypatch, fail)
    with pytest.raises(Stopped):
        run([w.proc.pid])
    assert not frozen(path)
    w.do("set", 0, 1)


def test_a_cgroup_frozen_by_someone_else_stays_frozen(
    alone_in_a_cgroup: tuple[Writer, str],
) -> None:
    w, path = alone_in_a_cgroup
    with open(os.path.join(path, "cgroup.freeze"), "w") as f:
        f.write("1")
    run([w.proc.pid], 60)
    with open(os.path.join(path, "cgroup.freeze")) as f:
        assert f.read().strip() == "1"
