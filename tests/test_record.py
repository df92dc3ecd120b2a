"""Recording real processes: the trace reproduces the pages a child process wrote."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import needs_ptrace, pages_of, read_back

from ksmreplay.cli import cli
from ksmreplay.errors import UsageError
from ksmreplay.record import (
    ProcessNotFoundError,
    intersect,
    normalise,
    parse_duration,
    record,
    subtract,
)
from ksmreplay.trace.events import Alloc, Event, Exit, Fork, Header, Madvise, Read, Snapshot, Write
from ksmreplay.vm.content import fingerprint

PAGE = os.sysconf("SC_PAGE_SIZE")
PAGES = 16
VALUE = 0x1122334455667788
NEW_VALUE = 0x0123456789ABCDEF

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/pagemap"), reason="needs /proc/PID/pagemap"
)

# The child maps PAGES anonymous pages and fills them:
#   0 zeros written; 1, 2 VALUE repeated; 3, 4 the same pseudo-random bytes;
#   5 other pseudo-random bytes; 6 untouched; 7 read only (the zero page);
#   8.. untouched.
# It prints the address and the bytes of pages 3 and 5, then on "change" writes
# NEW_VALUE into page 6 and new bytes into page 5 and drops page 2, then on "exit" exits.
CHILD = r"""
import ctypes, mmap, os, sys
PAGE = mmap.PAGESIZE
m = mmap.mmap(-1, %(pages)d * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if %(mergeable)d:
    m.madvise(mmap.MADV_MERGEABLE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
value = (%(value)d).to_bytes(8, "little") * (PAGE // 8)
shared = os.urandom(PAGE)
unique = os.urandom(PAGE)
m[0:PAGE] = bytes(PAGE)
m[PAGE:3 * PAGE] = value * 2
m[3 * PAGE:5 * PAGE] = shared * 2
m[5 * PAGE:6 * PAGE] = unique
_ = m[7 * PAGE]
print(addr, shared.hex(), unique.hex(), flush=True)
assert sys.stdin.readline().strip() == "change"
fresh = os.urandom(PAGE)
m[5 * PAGE:6 * PAGE] = fresh
m.madvise(mmap.MADV_DONTNEED, 2 * PAGE, PAGE)
m[6 * PAGE:7 * PAGE] = (%(new)d).to_bytes(8, "little") * (PAGE // 8)
print(fresh.hex(), flush=True)
assert sys.stdin.readline().strip() == "exit"
os._exit(0)  # without unmapping m first
"""


class Child:
    """The child process above, driven through its stdin and stdout."""

    def __init__(self, mergeable: bool = False) -> None:
        source = CHILD % {"pages": PAGES, "value": VALUE, "new": NEW_VALUE, "mergeable": mergeable}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        addr, shared, unique = self.proc.stdout.readline().split()
        self.addr = int(addr)
        self.shared = bytes.fromhex(shared)
        self.unique = bytes.fromhex(unique)
        self.fresh = b""

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def change(self) -> None:
        self.say("change")
        assert self.proc.stdout is not None
        self.fresh = bytes.fromhex(self.proc.stdout.readline().strip())

    def finish(self) -> None:
        self.say("exit")
        self.proc.wait(10)


def recorded(child: Child, as_is: bool = False) -> tuple[Header, list[Event], Path]:
    """Record ``child`` through a change until it exits; the trace's header and events."""
    out = io.BytesIO()
    done = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["summary"] = record([child.proc.pid], None, 50_000_000, 20 * 10**9, out, as_is)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        done.wait(0.3)
        child.change()
        done.wait(0.3)
    finally:
        child.finish()
    thread.join(20)
    assert "summary" in result
    return read_back(out.getvalue())


@needs_ptrace
def test_record_reproduces_the_pages_a_child_wrote() -> None:
    child = Child()
    header, events, _ = recorded(child)
    assert header.page_size == PAGE
    assert header.meta["pids"] == [child.proc.pid]
    assert header.meta["kernel"] == os.uname().release
    start, end = child.addr, child.addr + PAGES * PAGE
    allocs = [e for e in events if isinstance(e, Alloc) and e.pid == 1]
    assert any(a.addr <= start and end <= a.addr + a.len for a in allocs)
    assert events[0].t == 0
    mergeable = [e for e in events if isinstance(e, Madvise) and e.advice == "mergeable"]
    assert any(m.t == 0 and m.addr <= start and end <= m.addr + m.len for m in mergeable)

    states = list(pages_of(events, 1))
    _, first = states[0]
    want = {
        start: 0,
        start + PAGE: VALUE,
        start + 2 * PAGE: VALUE,
        start + 3 * PAGE: fingerprint(child.shared),
        start + 4 * PAGE: fingerprint(child.shared),
        start + 5 * PAGE: fingerprint(child.unique),
    }
    assert {a: first[a] for a in want if a in first} == want
    assert start + 6 * PAGE not in first
    assert fingerprint(child.shared) not in (0, VALUE)

    _, last = states[-1]
    assert last[start + 5 * PAGE] == fingerprint(child.fresh) != fingerprint(child.unique)
    assert last[start + 6 * PAGE] == NEW_VALUE
    assert last[start + PAGE] == VALUE and start + 2 * PAGE not in last
    drops = [e for e in events if isinstance(e, Madvise) and e.advice == "dontneed"]
    assert any(d.t > 0 and (d.addr, d.len) == (start + 2 * PAGE, PAGE) for d in drops)
    later = [
        e
        for e in events
        if isinstance(e, Write) and e.t > 0 and e.addr <= start + 6 * PAGE < e.addr + e.len
    ]
    assert later

    if os.geteuid() == 0 and os.path.exists("/proc/kpageflags"):
        reads = [e for e in events if isinstance(e, Read) and e.pid == 1]
        assert any(r.addr <= start + 7 * PAGE < r.addr + r.len for r in reads)
    assert start + 7 * PAGE not in last

    exits = [e for e in events if isinstance(e, Exit)]
    assert [e.pid for e in exits] == [1]
    assert exits[0] is events[-1]
    assert any(isinstance(e, Snapshot) for e in events)


@needs_ptrace
def test_as_is_keeps_the_mergeability_the_process_set() -> None:
    ksm = os.path.exists("/sys/kernel/mm/ksm")
    child = Child(mergeable=True)
    _, events, _ = recorded(child, as_is=True)
    start, end = child.addr, child.addr + PAGES * PAGE
    mergeable = [e for e in events if isinstance(e, Madvise) and e.advice == "mergeable"]
    if ksm:
        assert [(m.addr, m.addr + m.len) for m in mergeable] == [(start, end)]
    else:
        assert mergeable == []


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_unknown_pid_is_a_clean_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = int(proc.stdout)  # reaped, so no process has it (barring reuse within the test)
    out = tmp_path / "t.msgpack"
    result = invoke("record", "--pid", str(gone), "-o", str(out))
    assert result.exit_code == 2
    assert result.stderr == f"ksmreplay: no process with pid {gone}\n"
    assert not out.exists()
    with pytest.raises(ProcessNotFoundError):
        record([gone], None, 10**9, None, io.BytesIO())


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read every process")
def test_permission_denied_is_a_clean_error(tmp_path: Path) -> None:
    result = invoke("record", "--pid", "1", "-o", str(tmp_path / "t.msgpack"))
    assert result.exit_code == 4
    assert "permission denied" in result.stderr and "ptrace" in result.stderr


def test_bad_usage() -> None:
    assert invoke("record", "-o", "x.msgpack").exit_code == 2
    assert invoke("record", "--pid", "1", "-o", "x.msgpack", "--", "true").exit_code == 2
    result = invoke("record", "--interval", "soon", "-o", "x.msgpack", "--", "true")
    assert result.exit_code == 2 and "bad --interval 'soon'" in result.stderr


@needs_ptrace
def test_record_a_command_and_its_children(tmp_path: Path) -> None:
    script = (
        "import os, time\n"
        "buf = bytearray(b'\\x05' * (64 * 4096))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(0.4)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.3)\n"
        "os._exit(0)\n"
    )
    out = tmp_path / "t.jsonl"
    result = invoke(
        "record", "-o", str(out), "--interval", "100ms", "--", sys.executable, "-c", script
    )
    assert result.exit_code == 0, result.stderr
    _, events, _ = read_back(out.read_bytes())
    forks = [e for e in events if isinstance(e, Fork)]
    assert [(f.pid, f.child_pid) for f in forks] == [(1, 2)]
    exits = [e for e in events if isinstance(e, Exit)]
    assert [e.pid for e in exits] == [2, 1]
    assert exits[0].t < exits[1].t
    counts = [list(p.values()).count(0x0505050505050505) for _, p in pages_of(events, 1)]
    assert max(counts) >= 60


def test_a_command_that_cannot_start_is_a_clean_error(tmp_path: Path) -> None:
    out = tmp_path / "t.msgpack"
    result = invoke("record", "-o", str(out), "--", str(tmp_path / "no-such-program"))
    assert result.exit_code == 2
    assert result.stderr.startswith("ksmreplay: cannot start ")
    assert not out.exists()


@needs_ptrace
def test_trace_on_stdout_stays_apart_from_the_command_output() -> None:
    result = CliRunner().invoke(
        cli, ["record", "--interval", "50ms", "-o", "-", "--", "sh", "-c", "echo hello"]
    )
    assert result.exit_code == 0, result.stderr
    _, events, _ = read_back(result.stdout_bytes)
    assert isinstance(events[-1], (Exit, Snapshot))


REPO = Path(__file__).parent.parent
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _recording_a_sleeper(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`ksmreplay record -o tmp/t.msgpack -- python SLEEPER` with the sleeper started."""
    pid_file = tmp_path / "pid"
    command = [sys.executable, "-c", SLEEPER, str(pid_file)]
    options = ["--interval", "20ms", "-o", str(tmp_path / "t.msgpack")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksmreplay", "record", *options, "--", *command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.005)
    return proc, int(pid_file.read_text())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_ptrace
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=str)
def test_a_stop_signal_ends_the_recorded_command_too(tmp_path: Path, sig: signal.Signals) -> None:
    """GIVEN `record -- CMD` running, WHEN it gets SIGTERM or SIGHUP, THEN CMD ends too
    (it is not left running under init), no trace is written and record ends by that
    signal; WHEN it gets Ctrl-C, THEN CMD ends and the trace is complete (status 0)."""
    proc, pid = _recording_a_sleeper(tmp_path)
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        assert not _alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    lines = stderr.decode().splitlines()
    summary = [line for line in lines if line.startswith("[ ksmreplay record: ")]
    warnings = [line for line in lines if line.startswith("ksmreplay: warning: ")]
    assert len(summary) + len(warnings) == len(lines), lines
    if sig == signal.SIGINT:
        assert proc.returncode == 0 and summary
        _, events, _ = read_back((tmp_path / "t.msgpack").read_bytes())
        assert isinstance(events[-1], (Exit, Snapshot))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pid", "t.msgpack"]
    else:
        assert (proc.returncode, summary) == (-sig, [])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pid"]


def test_durations() -> None:
    assert parse_duration("500ms") == 500_000_000
    assert parse_duration("1s") == 10**9
    assert parse_duration("2m") == 120 * 10**9
    assert parse_duration("1.5") == 1_500_000_000
    for bad in ("", "0s", "-1s", "fast", "ms"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_range_sets() -> None:
    a = normalise([(30, 40), (0, 10), (10, 20), (5, 5)])
    assert a == [(0, 20), (30, 40)]
    assert subtract(a, [(5, 8), (15, 35)]) == [(0, 5), (8, 15), (35, 40)]
    assert intersect(a, [(5, 8), (15, 35)]) == [(5, 8), (15, 20), (30, 35)]
    assert subtract(a, []) == a and subtract([], a) == []
