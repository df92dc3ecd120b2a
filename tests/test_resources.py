"""A trace that validates never blows up ``run``: its cost follows the work it declares.

GIVEN small traces that declare huge or many things (a petabyte mapping, a
petabyte read, a terabyte written with one fingerprint, thousands of
processes with large pids, tens of thousands of mappings, pids near 2**64),
WHEN ``ksmreplay run`` replays them in a process whose address space is
limited (``RLIMIT_AS``) and within a time limit, THEN it either finishes or
fails before taking the memory, with one line naming the event and its size
and exit status 6, never a traceback.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ksmreplay import native
from ksmreplay.errors import ExitStatus

PAGE = 4096
MIB = 1 << 20


def write_trace(path: Path, events: Iterable[list[Any]]) -> Path:
    """A JSON-lines trace of ``events``."""
    with path.open("w") as f:
        f.write(json.dumps({"ksmreplay": 1}) + "\n")
        for event in events:
            f.write(json.dumps(event) + "\n")
    return path


def run(
    trace: Path,
    memory: int,
    timeout: float,
    env: dict[str, str] | None = None,
    accelerated: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``ksmreplay run --format json TRACE`` with at most ``memory`` bytes of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    environ = {**os.environ, **(env or {})}
    environ[native.ENV] = "1" if accelerated else "0"
    return subprocess.run(
        [sys.executable, "-m", "ksmreplay", "run", "--format", "json", str(trace)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env=environ,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one line of a replay that did not fit (asserting that it is one)."""
    assert done.returncode == ExitStatus.RESOURCES, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ksmreplay: "), done.stderr
    return lines[0]


def test_a_petabyte_mapping_costs_nothing_per_page(tmp_path: Path) -> None:
    # GIVEN a mergeable petabyte mapping with a few pages written far apart
    size = 1 << 50
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            [0, "ksm", {"run": 1}],
            [0, "alloc", 1, 0, size],
            [0, "madvise", 1, 0, size, "mergeable"],
            [0, "write", 1, 0, 2 * PAGE, 7],
            [0, "write", 1, size // 2, PAGE, 7],
            [0, "write", 1, size - PAGE, PAGE, 7],
            [0, "read", 1, size // 4, 8 * PAGE],
            [2_000_000_000, "madvise", 1, size // 4, size // 2, "dontneed"],
            [2_000_000_000, "snapshot", "merged"],
        ],
    )
    # WHEN replayed in 600 MiB THEN the pages merge
    done = run(trace, 600 * MIB, timeout=60)
    assert done.returncode == 0, done.stderr
    ksm = json.loads(done.stdout)["runs"][0]["snapshots"][0]["ksm"]
    assert ksm["pages_shared"] == 1 and ksm["pages_sharing"] == 3


def test_a_petabyte_read_fails_at_once(tmp_path: Path) -> None:
    # GIVEN a read of a whole petabyte mapping (every page maps the zero page)
    trace = write_trace(
        tmp_path / "t.jsonl",
        [[0, "alloc", 1, 0, 1 << 50], [0, "read", 1, 0, 1 << 50]],
    )
    # WHEN replayed THEN it fails before taking the memory, naming the event and size
    line = refused(run(trace, 1024 * MIB, timeout=60))
    assert line.startswith("ksmreplay: event 2 (t=0): read of 1.0 PiB (274877906944 pages)")


@pytest.mark.parametrize("accelerated", [True, False])
@pytest.mark.parametrize("limit", ["KSMREPLAY_MEMORY", "RLIMIT_AS"])
def test_a_terabyte_written_with_one_fingerprint(
    tmp_path: Path, limit: str, accelerated: bool
) -> None:
    # GIVEN one write of one fingerprint over 2**40 bytes (a 66-byte trace)
    trace = write_trace(
        tmp_path / "t.jsonl", [[0, "alloc", 1, 0, 1 << 40], [0, "write", 1, 0, 1 << 40, 7]]
    )
    # WHEN replayed with less memory than its 2**28 pages need (the limit set
    # by the environment, or by the address space)
    env = {"KSMREPLAY_MEMORY": "512M"} if limit == "KSMREPLAY_MEMORY" else {}
    memory = 8192 * MIB if env else 1536 * MIB
    line = refused(run(trace, memory, timeout=60, env=env, accelerated=accelerated))
    # THEN it fails before taking it, naming the event and its size
    assert line.startswith("ksmreplay: event 2 (t=0): write of 1.0 TiB (268435456 pages)")
    assert "KSMREPLAY_MEMORY" in line


@pytest.mark.parametrize("accelerated", [True, False])
def test_many_processes_with_large_pids(tmp_path: Path, accelerated: bool) -> None:
    # GIVEN 1,000 one-page processes with pids from a million up
    events: list[list[Any]] = [[0, "ksm", {"run": 1, "pages_to_scan": 1000}]]
    for i in range(1000):
        pid = 10**6 + 997 * i
        events += [[i, "alloc", pid, PAGE, PAGE], [i, "write", pid, PAGE, PAGE, i % 50 + 1]]
        events.append([i, "madvise", pid, PAGE, PAGE, "mergeable"])
    events.append([5 * 10**8, "snapshot", "end"])
    trace = write_trace(tmp_path / "t.jsonl", events)
    # WHEN replayed in 1 GiB THEN every process is there and the pages merged
    done = run(trace, 1024 * MIB, timeout=120, accelerated=accelerated)
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)["runs"][0]["snapshots"][0]
    assert len(snap["processes"]) == 1000
    assert snap["ksm"]["pages_shared"] == 50


def test_thirty_thousand_mappings(tmp_path: Path) -> None:
    # GIVEN 30,000 one-page mappings of one process, written, then made mergeable
    n = 30_000
    events: list[list[Any]] = [[0, "ksm", {"run": 1}]]
    events += [[1, "alloc", 1, 2 * i * PAGE, PAGE] for i in range(n)]
    events += [[2, "write", 1, 2 * i * PAGE, PAGE, i % 3 + 1] for i in range(n)]
    events += [[3, "madvise", 1, 2 * i * PAGE, PAGE, "mergeable"] for i in range(0, n, 2)]
    events.append([4, "free", 1, 0, 2 * PAGE * 100])
    events.append([5, "snapshot", "end"])
    trace = write_trace(tmp_path / "t.jsonl", events)
    # WHEN replayed THEN in seconds
    done = run(trace, 1024 * MIB, timeout=60)
    assert done.returncode == 0, done.stderr
    processes = json.loads(done.stdout)["runs"][0]["snapshots"][0]["processes"]
    assert processes[0]["rss_anon_pages"] == n - 100


def test_pids_up_to_the_largest_the_format_allows(tmp_path: Path) -> None:
    # GIVEN processes with pids near the largest a trace may hold (2**63 - 1)
    # writing in one instant with pid 1
    big = [2**62 + 5, 2**63 - 1]
    events: list[list[Any]] = [[0, "ksm", {"run": 1}]]
    for pid in [*big, 1]:
        events += [[0, "alloc", pid, PAGE, 2 * PAGE], [0, "prctl", pid, "merge_any", True]]
    events += [[1, "write", pid, PAGE, 2 * PAGE, 9] for pid in [1, *big, 1]]
    events.append([10**9, "snapshot", "end"])
    trace = write_trace(tmp_path / "t.jsonl", events)
    # WHEN replayed with the native core and without THEN both give the same report
    reports = []
    for accelerated in (True, False):
        done = run(trace, 1024 * MIB, timeout=60, accelerated=accelerated)
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    assert reports[0] == reports[1]
    snap = reports[0]["runs"][0]["snapshots"][0]
    assert [p["pid"] for p in snap["processes"]] == [1, *big]
    assert snap["ksm"]["pages_shared"] == 1 and snap["ksm"]["pages_sharing"] == 5


def test_a_memory_limit_that_is_not_a_size(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "t.jsonl", [[0, "alloc", 1, 0, 1 << 40], [0, "write", 1, 0, 1 << 40, 7]]
    )
    done = run(trace, 1024 * MIB, timeout=60, env={"KSMREPLAY_MEMORY": "lots"})
    assert done.returncode == ExitStatus.USAGE
    assert (
        done.stderr
        == "ksmreplay: KSMREPLAY_MEMORY=lots: not a size (bytes, or with a K, M, G or T suffix)\n"
    )


@pytest.mark.parametrize("stdin", [False, True])
def test_an_invalid_event_after_huge_work_fails_before_any_of_it(
    tmp_path: Path, stdin: bool
) -> None:
    # GIVEN a trace whose valid part declares more work than the memory allowed,
    # then many events (more than the reader checks in one batch), and whose
    # last event is invalid (a write outside any mapping)
    padding = 100_000
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            [0, "alloc", 1, 0, 1 << 50],
            [1, "read", 1, 0, 1 << 50],
            *([2, "ksm", {"run": 0}] for _ in range(padding)),
            [3, "write", 1, 1 << 51, PAGE, 7],
        ],
    )
    # WHEN run replays the file (by name, or as stdin redirected from it)
    if stdin:
        with trace.open("rb") as source:
            done = subprocess.run(
                [sys.executable, "-m", "ksmreplay", "run", "-"],
                stdin=source,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "KSMREPLAY_MEMORY": "64M"},
                check=False,
            )
    else:
        done = run(trace, 2 << 30, 60, env={"KSMREPLAY_MEMORY": "64M"})
    # THEN the trace's error is reported (status 3), not the memory it would need
    assert done.returncode == ExitStatus.INVALID_TRACE, done.stderr
    assert f"event {padding + 3} " in done.stderr and "outside any mapping" in done.stderr
