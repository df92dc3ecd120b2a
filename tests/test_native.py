"""The native core gives exactly what the scalar code gives.

Same events, same runs of writes, the same error message for every broken
trace, and the same replay report; and without a compiler everything still
works through the pure reader.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from randtrace import damaged

from ksmreplay import native
from ksmreplay.errors import TraceError
from ksmreplay.replay import replay
from ksmreplay.trace import TraceReader
from ksmreplay.trace.events import WriteRun

PAGE = 4096
TRACES = Path(__file__).parent.parent / "traces"
BASE = 0x7F0000000000

needs_native = pytest.mark.skipif(native.native() is None, reason="the native core was not built")


def read_with(data: bytes, accelerated: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Events of ``data`` (or the error message), with or without the native core."""
    monkeypatch.setenv(native.ENV, "1" if accelerated else "0")
    try:
        with TraceReader(io.BytesIO(data), "t") as reader:
            return reader.header, list(reader)
    except TraceError as exc:
        return str(exc)


def both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What both readers make of ``data``, asserting that they agree."""
    pure = read_with(data, False, monkeypatch)
    fast = read_with(data, True, monkeypatch)
    assert fast == pure
    return fast


def pack(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objects)


HEADER = {"ksmreplay": 1}
ALLOC = [0, "alloc", 1, BASE, 64 * PAGE]


# -- encodings -----------------------------------------------------------------


def uint(value: int, code: int) -> bytes:
    """``value`` in one chosen msgpack integer encoding."""
    fmt = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i"}
    fmt[0xD3] = ">q"
    return bytes([code]) + struct.pack(fmt[code], value)


@needs_native
@pytest.mark.parametrize("code", [0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3])
def test_every_integer_encoding(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN writes whose numbers use one integer encoding each
    small = 5
    event = (
        b"\x96"
        + uint(7, code)
        + b"\xa5write"
        + uint(1, code)
        + msgpack.packb(BASE)
        + msgpack.packb(PAGE)
        + b"\x91"
        + uint(small, code)
    )
    data = pack(HEADER, ALLOC) + event * 3
    # THEN both readers decode them the same
    _, events = both(data, monkeypatch)
    assert [e.t for e in events[1:]] == [7, 7, 7]
    assert events[1].content.tolist() == [small]


@needs_native
def test_long_forms_of_str_and_array(monkeypatch: pytest.MonkeyPatch) -> None:
    str8 = b"\xd9\x05write"
    arr16 = b"\xdc\x00\x06"
    fps16 = b"\xdc\x00\x02" + msgpack.packb(3) + msgpack.packb(2**64 - 1)
    event = arr16 + msgpack.packb(1) + str8 + msgpack.packb(1) + msgpack.packb(BASE)
    event += msgpack.packb(2 * PAGE) + fps16
    _, events = both(pack(HEADER, ALLOC) + event, monkeypatch)
    assert events[1].content.tolist() == [3, 2**64 - 1]


@needs_native
def test_negative_and_odd_shapes_go_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (
        [1, "write", 1, BASE, PAGE, [-1]],
        [1, "write", -1, BASE, PAGE, [1]],
        [1, "write", 0, BASE, PAGE, [1]],
        [1, "write", 1, BASE, PAGE, []],
        [1, "write", 1, BASE, 0, 3],
        [1, "write", 1, BASE + 1, PAGE, 3],
        [1, "write", 1, BASE, PAGE, [1, 2]],
        [1, "write", 1, BASE, PAGE, [1.5]],
        [1, "write", 1, BASE, PAGE],
        [1, "write", 2, BASE, PAGE, [1]],
        [1, "write", 1, BASE + 64 * PAGE, PAGE, [1]],
        [1, "writes", 1, BASE, PAGE, [1]],
    ):
        message = both(pack(HEADER, ALLOC, [1, "write", 1, BASE, PAGE, 4], bad), monkeypatch)
        assert isinstance(message, str) and message.startswith("t: event 3 (t=1): "), bad


# -- batches, runs and their edges -----------------------------------------------


def write_events(n: int, pages: int = 4, pids: int = 3, fill_every: int = 5) -> list[Any]:
    rng = np.random.default_rng(n)
    out: list[Any] = [[0, "alloc", pid, BASE, 4096 * PAGE] for pid in range(1, pids + 1)]
    for i in range(n):
        addr = BASE + int(rng.integers(0, 4096 - pages)) * PAGE
        content: Any = (
            int(rng.integers(0, 2**64, dtype=np.uint64))
            if i % fill_every == 0
            else [int(x) for x in rng.integers(0, 50, pages)]
        )
        out.append([i // 7, "write", 1 + i % pids, addr, pages * PAGE, content])
    return out


@needs_native
def test_runs_are_the_same_events(monkeypatch: pytest.MonkeyPatch) -> None:
    body = write_events(3000)
    later = [[1000 + w[0], *w[1:]] for w in write_events(500)[3:]]
    data = pack(HEADER, *body, [1000, "snapshot", "x"], *later)
    _, events = both(data, monkeypatch)
    assert len(events) == len(body) + 1 + 500
    monkeypatch.setenv(native.ENV, "1")
    with TraceReader(io.BytesIO(data), "t") as reader:
        items = list(reader.runs())
    # the writes come in a few runs, not one by one; int contents stay ints
    assert sum(isinstance(i, WriteRun) for i in items) <= 4
    flat = [e for i in items for e in (i.events() if isinstance(i, WriteRun) else [i])]
    assert flat == events
    assert isinstance(events[3].content, int)


@needs_native
def test_a_write_bigger_than_a_scan_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = 300_000  # more fingerprints than one scan first has room for
    fps = list(range(pages))
    data = pack(
        HEADER, [0, "alloc", 1, BASE, pages * PAGE], [1, "write", 1, BASE, pages * PAGE, fps]
    )
    _, events = both(data, monkeypatch)
    assert events[1].content.tolist() == fps


@needs_native
def test_an_error_inside_a_run_names_its_event(monkeypatch: pytest.MonkeyPatch) -> None:
    body = write_events(2000)
    body[1500][0] = 0  # time goes back in the middle of a run
    message = both(pack(HEADER, *body), monkeypatch)
    assert message.startswith("t: event 1501 (t=0): t goes back in time")


@needs_native
@pytest.mark.parametrize("cut", [1, 7, 100])
def test_truncated_and_garbage_after_runs(cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = pack(HEADER, *write_events(1000))
    assert "truncated" in both(data[:-cut], monkeypatch)
    assert "msgpack" in both(data + b"\xc1", monkeypatch)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=damaged())
def test_damaged_traces_read_the_same_both_ways(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    if native.native() is None:
        pytest.skip("the native core was not built")
    both(data, monkeypatch)


@needs_native
def test_damaged_write_runs_read_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(pack(HEADER, *write_events(300)))
    rng = np.random.default_rng(1)
    for _ in range(200):
        broken = bytearray(data)
        for at in rng.integers(0, len(data), 3):
            broken[at] = int(rng.integers(0, 256))
        both(bytes(broken), monkeypatch)


# -- a replay, and no compiler ---------------------------------------------------


@needs_native
def test_replay_reports_are_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body: list[Any] = [[0, "ksm", {"run": 1, "pages_to_scan": 300, "sleep_millisecs": 1}]]
    writes = write_events(4000, pids=3)
    body += writes[:3]
    body += [[0, "madvise", pid, BASE, 4096 * PAGE, "mergeable"] for pid in (1, 2, 3)]
    body += [[w[0] * 100_000, *w[1:]] for w in writes[3:]]
    path = tmp_path / "w.msgpack"
    path.write_bytes(pack(HEADER, *body))

    def report(accelerated: bool) -> Any:
        monkeypatch.setenv(native.ENV, "1" if accelerated else "0")
        with TraceReader(path.open("rb"), str(path)) as reader:
            return replay(reader, ["legacy", "v6", "unshare"])

    fast = report(True)
    assert fast == report(False)
    assert fast["runs"][0]["final"]["ksm"]["pages_sharing"] > 0


def _without_core(*args: str) -> subprocess.CompletedProcess[str]:
    """``ksmreplay ARGS`` in a process where the extension module cannot be
    imported, as after an install without a C compiler."""
    code = (
        "import sys; sys.modules['ksmreplay._native'] = None; "
        "from ksmreplay.cli import main; sys.argv = ['ksmreplay', *sys.argv[1:]]; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )


def test_without_the_core_everything_runs_and_says_so_once() -> None:
    # GIVEN an install without the native core
    # WHEN a trace is replayed THEN the report is the one the core gives, and
    # one line on stderr says that the scalar path ran
    trace = str(TRACES / "demo.msgpack")
    done = _without_core("run", "--format", "json", trace)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("engine: scalar (the native core was not built") == 1
    with_core = subprocess.run(
        [sys.executable, "-m", "ksmreplay", "run", "--format", "json", trace],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == json.loads(with_core.stdout)
    # ... and --version names the engine
    version = _without_core("--version")
    assert "engine: scalar (the native core was not built" in version.stdout


def test_the_engine_in_use_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV, "0")
    assert native.native() is None
    assert native.engine() == f"scalar ({native.ENV}=0)"


@needs_native
def test_the_values_without_the_core_are_the_cores() -> None:
    """ksmreplay.h's records and constants, as the module exports them, are the
    ones an install without the native core uses (native._WITHOUT_CORE)."""
    from ksmreplay import _native

    for name, value in vars(native._WITHOUT_CORE).items():
        assert getattr(_native, name) == value, name
    # ... and every record layout the module exports is there too.
    assert {"ITEM_HOT", "ITEM_COLD", "SLOT", "TRACED"} <= set(vars(native._WITHOUT_CORE))
