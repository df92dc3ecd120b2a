"""What several test modules share: the helpers they all use.

Where the test data lives is :mod:`testdata`'s.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ksmreplay.cli import cli
from ksmreplay.engine import Engine
from ksmreplay.replay import MODES, replay
from ksmreplay.report import Report
from ksmreplay.trace import open_trace
from ksmreplay.trace.events import Event, Free, Header, Madvise, Write

# -- the bundled traces ---------------------------------------------------------------

SLOW_BUNDLED = frozenset({"recorded-guests.msgpack"})
"""Bundled traces that the tests of every bundled trace leave out: the recording of
QEMU guests takes seconds per mode (70,899 mergeable pages, 52,000 merges; over
35 s in those tests), so tests/test_recorded_guests.py replays it once, in one
mode, and checks there what they check."""


def quick(paths: Iterable[Path]) -> list[Path]:
    """``paths`` (bundled traces) without those of :data:`SLOW_BUNDLED`."""
    return [path for path in paths if path.name not in SLOW_BUNDLED]


# -- replaying ------------------------------------------------------------------------


def replay_path(path: Path | str, modes: Sequence[str] = MODES, **options: Any) -> Report:
    """``replay.replay`` of the trace file ``path`` in ``modes`` (``options`` as replay's)."""
    with open_trace(str(path)) as reader:
        return replay(reader, modes, **options)


def write_jsonl(
    path: Path, events: Iterable[Sequence[Any]], header: dict[str, Any] | None = None
) -> Path:
    """Write a JSON-lines trace of ``events`` (each ``[t, op, ...]``) to ``path``, after
    ``header`` (default ``{"ksmreplay": 1}``); returns ``path``."""
    lines = [json.dumps(header or {"ksmreplay": 1}), *(json.dumps(list(e)) for e in events)]
    path.write_text("\n".join(lines) + "\n")
    return path


def counted(engine: Engine, name: str = "batch") -> list[int]:
    """Count the engine's calls to ``engine.ksmd.<name>``: a one-item list, counting.

    For ``batch``, the batches the native core ran whole in ``Ksmd.batches``
    count as calls too (one wake-up each, as one call each would run them)."""
    calls = [0]
    ksmd = engine.ksmd
    method = getattr(ksmd, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return method(*args, **kwargs)

    setattr(ksmd, name, counting)
    if name == "batch":
        batches = ksmd.batches

        def running(*args: Any) -> Any:
            before, called = ksmd.work_done.batches, calls[0]
            found = batches(*args)
            # (a batch C stopped in was finished by a call, counted above)
            calls[0] += ksmd.work_done.batches - before - (calls[0] - called)
            return found

        ksmd.batches = running  # type: ignore[method-assign]
    return calls


# -- golden files ---------------------------------------------------------------------

UPDATE = os.environ.get("KSMREPLAY_UPDATE_GOLDEN") == "1"
"""``KSMREPLAY_UPDATE_GOLDEN=1`` (``make golden``) rewrites every golden file a test
checks (review the diff before committing); otherwise a test fails on any byte of
difference."""


def check_golden(target: Path, got: str) -> None:
    """Assert ``got`` is the content of ``target`` (or rewrite it when updating)."""
    if UPDATE:
        target.write_bytes(got.encode())
        return
    assert got == target.read_bytes().decode()


def run_report(trace: Path, mode: str) -> str:
    """``ksmreplay run TRACE --mode MODE --format json``, with the trace path cut to its name."""
    result = CliRunner().invoke(
        cli,
        ["run", str(trace), "--mode", mode, "--format", "json", "--check-invariants"],
        prog_name="ksmreplay",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trace"]["path"] == str(trace)
    report["trace"]["path"] = trace.name
    return json.dumps(report, indent=2) + "\n"


# -- the summary and milestones of a report, as REPORT_FORMAT.md words them ----------


def percent(part: int, whole: int, empty: float) -> float:
    """``part`` in percent of ``whole``, to 2 places; ``empty`` when ``whole`` is 0."""
    return round(100 * part / whole, 2) if whole else empty


def check_summary(snap: dict[str, Any], page_size: int) -> None:
    """Assert a snapshot's ``summary`` is what its other sections say (pages, bytes)."""
    s = snap["summary"]
    without = sum(p["rss_anon_pages"] for p in snap["processes"])
    without += snap["memory"]["zero_page_maps_by_ksm"]
    assert s["resident_without_ksm"] == without
    assert s["resident_with_ksm"] == snap["memory"]["anon_frames"]
    assert s["saved_pages"] == without - s["resident_with_ksm"]
    assert s["saved_pages"] >= 0  # every frame is mapped by a PTE counted in without
    assert s["saved_bytes"] == s["saved_pages"] * page_size
    assert s["saved_percent"] == percent(s["saved_pages"], without, 0.0)
    assert 0 <= s["ideal_frames"] <= without
    assert s["ideal_saved_pages"] == without - s["ideal_frames"]
    assert s["percent_of_ideal"] == percent(s["saved_pages"], s["ideal_saved_pages"], 100.0)


def milestones(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """RUN.milestones worked out from the snapshots, as the spec words it."""
    top = max((s["summary"]["saved_pages"] for s in snaps), default=0)

    def first(share: float) -> int | None:
        if top == 0:
            return None
        return next(s["t"] for s in snaps if s["summary"]["saved_pages"] >= share * top)

    return {"max_saved_pages": top, "t_saved_50": first(0.5), "t_saved_90": first(0.9)}


# -- the machine ----------------------------------------------------------------------


def can_read_memory() -> bool:
    """Whether this process may read another's memory through /proc/PID/mem (ptrace
    rights), as ``record`` needs."""
    try:
        with open(f"/proc/{os.getpid()}/mem", "rb") as stream:
            stream.seek(id(SLOW_BUNDLED))
            stream.read(1)
    except OSError:
        return False
    return True


needs_ptrace = pytest.mark.skipif(not can_read_memory(), reason="needs ptrace rights over children")


# -- recording ------------------------------------------------------------------------

_READ_BACK = itertools.count()


def read_back(data: bytes) -> tuple[Header, list[Event], Path]:
    """Read the trace ``data`` (as ``record`` wrote it) through a file, as a user would:
    its header, its events and the (removed) file's path."""
    path = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"ksmreplay-record-{os.getpid()}-{next(_READ_BACK)}.msgpack"
    )
    path.write_bytes(data)
    try:
        with open_trace(str(path)) as reader:
            events = list(reader)
            header = reader.header
    finally:
        path.unlink()
    return header, events, path


def pages_of(
    events: list[Event], pid: int, page_size: int = mmap.PAGESIZE
) -> Iterator[tuple[int, dict[int, int]]]:
    """After each instant: ``(t, {addr: fingerprint})`` of the written pages of ``pid``."""
    pages: dict[int, int] = {}
    for i, event in enumerate(events):
        if getattr(event, "pid", None) == pid:
            if isinstance(event, Write):
                n = event.len // page_size
                fps = [event.content] * n if isinstance(event.content, int) else list(event.content)
                for k in range(n):
                    pages[event.addr + k * page_size] = int(fps[k])
            elif isinstance(event, (Free, Madvise)) and (
                isinstance(event, Free) or event.advice == "dontneed"
            ):
                for addr in range(event.addr, event.addr + event.len, page_size):
                    pages.pop(addr, None)
        if i + 1 == len(events) or events[i + 1].t != event.t:
            yield event.t, dict(pages)


WRITER_PAGES = 8
"""The pages of a :class:`Writer`."""

# A process with WRITER_PAGES pages, each of its own bytes, driven by lines on stdin:
# "set I SEED" (page I gets pseudo-random bytes), "fill I V" (V repeated), "drop I"
# (MADV_DONTNEED); each answered "ok".
_WRITER = r"""
import ctypes, mmap, random, sys
PAGE = mmap.PAGESIZE
m = mmap.mmap(-1, %(pages)d * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(%(pages)d):
    m[i * PAGE:(i + 1) * PAGE] = random.Random(i).randbytes(PAGE)
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
for line in sys.stdin:
    op, i, *arg = line.split()
    i = int(i)
    if op == "set":
        m[i * PAGE:(i + 1) * PAGE] = random.Random(int(arg[0])).randbytes(PAGE)
    elif op == "fill":
        m[i * PAGE:(i + 1) * PAGE] = int(arg[0]).to_bytes(8, "little") * (PAGE // 8)
    elif op == "drop":
        m.madvise(mmap.MADV_DONTNEED, i * PAGE, PAGE)
    print("ok", flush=True)
"""


class Writer:
    """A child process with :data:`WRITER_PAGES` pages of its own bytes, which it changes
    when told (:meth:`do`): ``set I SEED``, ``fill I V``, ``drop I``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER % {"pages": WRITER_PAGES}],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.addr = int(self.proc.stdout.readline())

    def do(self, *words: object) -> None:
        """Send one command and wait for its ``ok``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        """End the child (its stdin closed) and wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)

    def page(self, i: int) -> int:
        """The address of page ``i``."""
        return self.addr + i * mmap.PAGESIZE
