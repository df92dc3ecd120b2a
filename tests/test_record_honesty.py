"""What ``record`` tells the user: the recorded command's exit status, one warning when
the interval cannot be kept, the memory it did not record, and a closing summary that
agrees with the trace written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import needs_ptrace, read_back

from ksmreplay.cli import cli
from ksmreplay.record import normalise, subtract
from ksmreplay.trace.events import Alloc, Free

pytestmark = needs_ptrace

REPO = Path(__file__).parent.parent


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


def summary_lines(stderr: str) -> list[str]:
    return [
        line[len("[ ksmreplay record: ") : -len(" ]")]
        for line in stderr.splitlines()
        if line.startswith("[ ksmreplay record: ")
    ]


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 3", 3), ("kill -USR1 $$", 128 + 10), ("kill -KILL $$", 128 + 9)],
)
def test_record_exits_with_the_command_s_status(tmp_path: Path, script: str, status: int) -> None:
    out = tmp_path / "t.msgpack"
    result = invoke("record", "--interval", "10ms", "-o", str(out), "--", "sh", "-c", script)
    assert result.exit_code == status, result.stderr
    read_back(out.read_bytes())  # a complete trace all the same
    assert summary_lines(result.stderr)


def test_record_false_exits_1_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ksmreplay", "record", "-o", "-", "--", "false"],
        cwd=REPO,
        capture_output=True,
    )
    assert done.returncode == 1
    read_back(done.stdout)


def test_a_command_ended_by_record_itself_leaves_status_0(tmp_path: Path) -> None:
    """--duration ends the recording first: record ends the command (SIGTERM) and
    succeeds; the command's end is not its own."""
    out = tmp_path / "t.msgpack"
    result = invoke(
        "record", "--interval", "20ms", "--duration", "100ms", "-o", str(out), "--", "sleep", "30"
    )
    assert result.exit_code == 0, result.stderr


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ksmreplay: warning: ")]


def test_an_overrun_interval_is_said_once_with_the_interval_achieved(tmp_path: Path) -> None:
    """GIVEN an interval far shorter than a sample takes (a Python process: megabytes of
    pages), WHEN recording, THEN one warning says so with the time between two samples,
    and the summary gives the mean achieved."""
    out = tmp_path / "t.msgpack"
    result = invoke(
        "record", "--interval", "1us", "--duration", "400ms", "-o", str(out), "--",
        sys.executable, "-c", "import time; time.sleep(30)",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    overruns = [line for line in warnings(result.stderr) if "overrun" in line]
    assert len(overruns) == 1, result.stderr
    found = re.fullmatch(
        r"ksmreplay: warning: --interval 0\.000 s overrun: sample (\d+) started (\S+) s "
        r"after sample (\d+) \(the summary at the end gives the interval achieved\)",
        overruns[0],
    )
    assert found is not None, overruns[0]
    assert int(found[1]) == int(found[3]) + 1 and float(found[2]) > 0.0
    (first, *_) = summary_lines(result.stderr)
    achieved = re.search(r", (\d+\.\d+) s achieved \(mean; longest (\d+\.\d+) s\)", first)
    assert achieved is not None, first
    assert 0.000001 < float(achieved[1]) <= float(achieved[2])


def test_a_kept_interval_draws_no_warning(tmp_path: Path) -> None:
    out = tmp_path / "t.msgpack"
    result = invoke(
        "record", "--interval", "300ms", "--duration", "700ms", "-o", str(out), "--",
        "sleep", "30",
    )  # fmt: skip
    assert result.exit_code == 0
    assert [line for line in warnings(result.stderr) if "overrun" in line] == []


HOLDS_SHARED_MEMORY = r"""
import ctypes, mmap, sys, tempfile, time
shared = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
shared[:] = b"s" * (8 << 20)
backing = tempfile.TemporaryFile()
backing.truncate(4 << 20)
filed = mmap.mmap(backing.fileno(), 4 << 20, flags=mmap.MAP_PRIVATE)
filed[:] = b"f" * (4 << 20)
with open(sys.argv[1], "w") as where:
    for m in (shared, filed):
        where.write(f"{ctypes.addressof(ctypes.c_char.from_buffer(m))}\n")
time.sleep(30)
"""


def test_memory_not_recorded_is_summarised_once(tmp_path: Path) -> None:
    """GIVEN a process holding 8 MiB of MAP_SHARED memory and 4 MiB of a file, WHEN it
    is recorded, THEN the summary names both, once, and the trace holds neither."""
    out = tmp_path / "t.msgpack"
    result = invoke(
        "record", "--interval", "50ms", "--duration", "1500ms", "-o", str(out), "--",
        sys.executable, "-c", HOLDS_SHARED_MEMORY, str(tmp_path / "addresses"),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    skipped = [line for line in summary_lines(result.stderr) if line.startswith("not recorded")]
    assert len(skipped) == 1
    sizes = dict(
        (kind, float(size) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit])
        for kind, size, unit in re.findall(
            r"(shared|file-backed) (\d+\.\d) (KiB|MiB|GiB)", skipped[0]
        )
    )
    assert 8 * 2**20 <= sizes["shared"] < 9 * 2**20
    assert sizes["file-backed"] >= 4 * 2**20
    _, events, _ = read_back(out.read_bytes())
    live: list[tuple[int, int]] = []  # the ranges the trace has mapped at its end
    for e in events:
        if isinstance(e, Alloc):
            live = normalise([*live, (e.addr, e.addr + e.len)])
        elif isinstance(e, Free):
            live = subtract(live, [(e.addr, e.addr + e.len)])
    addresses = [int(word) for word in (tmp_path / "addresses").read_text().split()]
    assert live and len(addresses) == 2
    for addr in addresses:
        assert not [(lo, hi) for lo, hi in live if lo <= addr < hi]


def test_the_closing_summary_agrees_with_the_trace(tmp_path: Path) -> None:
    out = tmp_path / "t.msgpack"
    result = invoke(
        "record", "--interval", "50ms", "--duration", "300ms", "-o", str(out), "--",
        sys.executable, "-c", "import time; b = bytearray(3 << 20); time.sleep(30)",
    )  # fmt: skip
    assert result.exit_code == 0
    lines = summary_lines(result.stderr)
    _, events, _ = read_back(out.read_bytes())
    samples = re.match(r"(\d+) samples of (\d+) process(?:es)? over (\d+\.\d+) s", lines[0])
    assert samples is not None, lines[0]
    assert int(samples[1]) >= 3 and int(samples[2]) == 1
    times = sorted({e.t for e in events})
    assert float(samples[3]) == pytest.approx(times[-1] / 1e9, abs=1e-9)
    pages = re.match(r"(\d+) pages read \(.*\); at most (\d+) pages recorded at once", lines[1])
    assert pages is not None, lines[1]
    assert (
        int(pages[2]) >= (3 << 20) // 4096 and int(pages[1]) >= int(samples[1]) * int(pages[2]) // 2
    )
    wrote = re.fullmatch(r"wrote (\d+) events, (\d+) bytes \(.*\) to (.*)", lines[2])
    assert wrote is not None, lines[2]
    assert (int(wrote[1]), int(wrote[2]), wrote[3]) == (
        len(events),
        out.stat().st_size,
        str(out),
    )
