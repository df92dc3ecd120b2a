"""``record``'s options and processes it cannot record: one line, the right
option named, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ksmreplay.cli import cli
from ksmreplay.errors import ExitStatus, UsageError
from ksmreplay.record import parse_duration

PF_KTHREAD = 0x00200000
MAX_DURATION_NS = 2**62
"""The longest --interval and --duration (about 146 years)."""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("inf", "not a finite duration"),
        ("-inf", "not a finite duration"),
        ("nan", "not a finite duration"),
        ("1e400", "not a finite duration"),
        ("infms", "not a finite duration"),
        ("0", "must be positive"),
        ("-1s", "must be positive"),
        ("0.0001ns", "must be at least 1 ns"),
        ("1e300", "must be at most 2**62 ns (about 146 years)"),
        ("4611686019s", "must be at most 2**62 ns (about 146 years)"),
    ],
)
@pytest.mark.parametrize("option", ["--interval", "--duration"])
def test_bad_durations_are_one_line_naming_the_option(
    tmp_path: Path, option: str, text: str, problem: str
) -> None:
    out = tmp_path / "t.msgpack"
    other = "--duration" if option == "--interval" else "--interval"
    # Both options given, and a command that ends at once: nothing can wait long.
    result = invoke("record", option, text, other, "1s", "-o", str(out), "--", "true")
    assert result.exit_code == ExitStatus.USAGE
    assert result.stderr == f"ksmreplay: bad {option} {text!r}: {problem}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_durations_up_to_the_bound_are_read() -> None:
    assert parse_duration("1ns") == 1
    assert parse_duration("4611686018s", "--interval") == 4611686018 * 10**9
    assert parse_duration(f"{MAX_DURATION_NS}ns") == MAX_DURATION_NS
    with pytest.raises(UsageError, match=r"^bad duration 'x' \(examples"):
        parse_duration("x")


def _kernel_thread() -> int | None:
    """The pid of a kernel thread (kthreadd is pid 2 on most systems), or None."""
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stream:
                stat = stream.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[6]) & PF_KTHREAD:
            return int(name)
    return None


def test_a_kernel_thread_is_refused_in_one_line(tmp_path: Path) -> None:
    pid = _kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread is visible in /proc here")
    out = tmp_path / "t.msgpack"
    result = invoke("record", "--pid", str(pid), "--duration", "1s", "-o", str(out))
    assert result.exit_code == ExitStatus.USAGE
    assert result.stderr == (
        f"ksmreplay: pid {pid} is a kernel thread: it has no user memory to record\n"
    )
    assert not out.exists()
