"""Incremental samples: after a process's first sample, only the pages whose soft-dirty
bit is set (or that are new) are read; where the kernel keeps no soft-dirty bits every
present page is read, and the user is told once.

The kernel this suite runs on may keep no soft-dirty bits (a build option); the tests
that need them then simulate the kernel's part: the bits of the pages the test wrote
are set in the pagemap entries the recorder reads, and clearing them forgets them.
One test uses the real bits where the kernel keeps them.
"""

from __future__ import annotations

import io
import mmap
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import WRITER_PAGES, Writer, needs_ptrace, pages_of, read_back

from ksmreplay import native, procfs
from ksmreplay.record import Recorder
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import Madvise, Write
from ksmreplay.vm.content import fingerprint, fingerprint_pages

PAGE = mmap.PAGESIZE
PAGES = WRITER_PAGES


@pytest.fixture
def writer() -> Iterator[Writer]:
    w = Writer()
    try:
        yield w
    finally:
        w.close()


def random_page(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(PAGE)


class Kernel:
    """The kernel's soft-dirty bits, simulated: pages marked dirty until cleared."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dirty: set[int] = set()  # page numbers
        self.clears = 0
        real = procfs.pagemap_entries

        def entries(fd: int, first: int, npages: int) -> Any:
            out = real(fd, first, npages).copy()
            for page in self.dirty:
                if first <= page < first + npages:
                    out[page - first] |= np.uint64(procfs.PM_SOFT_DIRTY)
            return out

        def clear(pid: int) -> None:
            self.clears += 1
            self.dirty.clear()

        monkeypatch.setattr(procfs, "soft_dirty_works", lambda: True)
        monkeypatch.setattr(procfs, "pagemap_entries", entries)
        monkeypatch.setattr(procfs, "clear_soft_dirty", clear)


class ReadLog:
    """The addresses of the pages the recorder reads (with the native core or without)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pages: list[int] = []
        real = procfs.MemoryReader.read
        real_fingerprints = procfs.MemoryReader.fingerprints

        def log(ranges: list[tuple[int, int]], done: int) -> None:
            for addr, length in ranges:
                n = min(length, done) // PAGE
                self.pages.extend(addr + k * PAGE for k in range(n))
                done -= n * PAGE

        def read(reader: procfs.MemoryReader, ranges: list[tuple[int, int]]) -> int:
            done: int = real(reader, ranges)
            log(ranges, done)
            return done

        def fingerprints(
            reader: procfs.MemoryReader, core: Any, runs: Any, page_size: int, out: Any
        ) -> tuple[int, bool]:
            done, stopped = real_fingerprints(reader, core, runs, page_size, out)
            log([(int(a), int(n) * page_size) for a, n in runs], done * page_size)
            return done, stopped

        monkeypatch.setattr(procfs.MemoryReader, "read", read)
        monkeypatch.setattr(procfs.MemoryReader, "fingerprints", fingerprints)

    def take(self, lo: int, hi: int) -> set[int]:
        """The pages read in ``[lo, hi)`` since the last call."""
        pages = {p for p in self.pages if lo <= p < hi}
        self.pages.clear()
        return pages


def recorder(out: io.BytesIO, **options: Any) -> Recorder:
    return Recorder(TraceWriter(out), PAGE, **options)


@needs_ptrace
def test_only_soft_dirty_and_new_pages_are_read(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a recorded process whose first sample read every page, WHEN it changes
    pages and the kernel marks some of them soft-dirty, THEN the next sample reads
    exactly the marked pages of its memory, records their changes and a dropped page,
    and misses the change the kernel did not mark: unchanged pages cost nothing more."""
    kernel = Kernel(monkeypatch)
    log = ReadLog(monkeypatch)
    out = io.BytesIO()
    rec = recorder(out)
    assert rec.soft_dirty
    start = procfs.start_time(writer.proc.pid)
    assert start is not None
    rec.watch(writer.proc.pid, start)
    area = (writer.page(0), writer.page(PAGES))
    rec.sample(0)
    assert log.take(*area) == {writer.page(i) for i in range(PAGES)}
    assert kernel.clears == 1

    writer.do("set", 1, 101)
    writer.do("set", 2, 102)  # not marked below: a write the kernel did not report
    writer.do("drop", 3)
    writer.do("fill", 4, 0x4444)
    kernel.dirty |= {writer.page(1) // PAGE, writer.page(4) // PAGE}
    rec.sample(1_000)
    assert log.take(*area) == {writer.page(1), writer.page(4)}
    assert kernel.clears == 2

    rec.sample(2_000)  # nothing changed, nothing marked: nothing read
    assert log.take(*area) == set()

    writer.do("set", 3, 103)  # the dropped page comes back: new, read unmarked
    rec.sample(3_000)
    assert log.take(*area) == {writer.page(3)}

    _, events, _ = read_back(out.getvalue())
    states = dict(pages_of(events, 1))
    assert states[1_000][writer.page(1)] == fingerprint(random_page(101))
    assert states[1_000][writer.page(2)] == fingerprint(random_page(2))  # missed
    assert writer.page(3) not in states[1_000]
    assert states[1_000][writer.page(4)] == 0x4444
    assert states[3_000][writer.page(3)] == fingerprint(random_page(103))
    in_area = [
        e
        for e in events
        if isinstance(e, (Write, Madvise)) and e.t > 0 and area[0] <= e.addr < area[1]
    ]
    assert sorted((e.t, e.op, e.addr) for e in in_area) == [
        (1_000, "madvise", writer.page(3)),
        (1_000, "write", writer.page(1)),
        (1_000, "write", writer.page(4)),
        (3_000, "write", writer.page(3)),
    ]


@needs_ptrace
def test_without_soft_dirty_bits_every_present_page_is_read(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a kernel that keeps no soft-dirty bits, WHEN a process is sampled again,
    THEN every present page is read and every change is seen."""
    monkeypatch.setattr(procfs, "soft_dirty_works", lambda: False)
    log = ReadLog(monkeypatch)
    out = io.BytesIO()
    rec = recorder(out)
    assert not rec.soft_dirty
    start = procfs.start_time(writer.proc.pid)
    assert start is not None
    rec.watch(writer.proc.pid, start)
    area = (writer.page(0), writer.page(PAGES))
    rec.sample(0)
    assert log.take(*area) == {writer.page(i) for i in range(PAGES)}
    writer.do("set", 2, 102)
    writer.do("drop", 5)
    rec.sample(1_000)
    assert log.take(*area) == {writer.page(i) for i in range(PAGES) if i != 5}
    _, events, _ = read_back(out.getvalue())
    states = dict(pages_of(events, 1))
    assert states[1_000][writer.page(2)] == fingerprint(random_page(102))
    assert writer.page(5) not in states[1_000]


@needs_ptrace
def test_the_user_is_told_once_that_every_page_is_read(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ksmreplay.record import record

    monkeypatch.setattr(procfs, "soft_dirty_works", lambda: False)
    said: list[str] = []
    summary = record([writer.proc.pid], None, 1_000_000, 30_000_000, io.BytesIO(), warn=said.append)
    about = [m for m in said if "soft-dirty" in m]
    assert about == [
        "this kernel keeps no soft-dirty bits (/proc/PID/clear_refs): "
        "every sample reads every present page"
    ]
    assert summary.samples >= 2 and not summary.soft_dirty


@needs_ptrace
@pytest.mark.skipif(not procfs.soft_dirty_works(), reason="this kernel keeps no soft-dirty bits")
def test_the_kernel_s_soft_dirty_bits_pick_the_pages_to_read(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ReadLog(monkeypatch)
    out = io.BytesIO()
    rec = recorder(out)
    start = procfs.start_time(writer.proc.pid)
    assert start is not None
    rec.watch(writer.proc.pid, start)
    area = (writer.page(0), writer.page(PAGES))
    rec.sample(0)
    log.take(*area)
    writer.do("set", 6, 106)
    rec.sample(1_000)
    assert log.take(*area) == {writer.page(6)}
    _, events, _ = read_back(out.getvalue())
    assert dict(pages_of(events, 1))[1_000][writer.page(6)] == fingerprint(random_page(106))


@needs_ptrace
def test_every_way_of_reading_memory_records_the_same_pages(writer: Writer) -> None:
    """process_vm_readv or /proc/PID/mem, the native core or a hash call per page."""
    writer.do("fill", 0, 0)
    writer.do("fill", 7, 0x77)
    traces = []
    for use_vm_readv, use_native in ((True, True), (False, True), (True, False), (False, False)):
        out = io.BytesIO()
        rec = recorder(out, use_vm_readv=use_vm_readv, use_native=use_native, soft_dirty=False)
        assert rec.native_core == (use_native and native.native() is not None)
        start = procfs.start_time(writer.proc.pid)
        assert start is not None
        rec.watch(writer.proc.pid, start)
        rec.sample(0)
        _, events, _ = read_back(out.getvalue())
        (_, pages), *_ = pages_of(events, 1)
        traces.append({a: f for a, f in pages.items() if writer.addr <= a < writer.page(PAGES)})
    assert traces[0] == traces[1] == traces[2] == traces[3]
    assert traces[0][writer.page(0)] == 0 and traces[0][writer.page(7)] == 0x77
    assert traces[0][writer.page(3)] == fingerprint(random_page(3))


# --------------------------------------------------------------------------- fingerprints

PATTERNS = st.one_of(
    st.binary(min_size=8, max_size=8).map(lambda b: b * (PAGE // 8)),
    # (random pages drawn from a seed: a page of drawn bytes would fill most
    # of what one example may draw)
    st.integers(0, 2**64 - 1).map(lambda seed: random.Random(seed).randbytes(PAGE)),
    st.tuples(
        st.binary(min_size=8, max_size=8),
        st.integers(0, PAGE // 8 - 1),
        st.binary(min_size=8, max_size=8),
    ).map(lambda t: (t[0] * (PAGE // 8))[: t[1] * 8] + t[2] + (t[0] * (PAGE // 8))[t[1] * 8 + 8 :]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(PATTERNS, min_size=1, max_size=12), st.booleans())
def test_fingerprint_pages_names_each_page_as_fingerprint_does(
    both_engines: str, pages: list[bytes], ready_views: bool
) -> None:
    """A buffer of pages: zeros, one 8-byte value repeated, such a page with one word
    changed anywhere (first, last, in between), random bytes; named by numpy and a hash
    call per page, or by the native core in one call."""
    data = memoryview(bytearray(b"".join(pages)))
    views = [data[i * PAGE : (i + 1) * PAGE] for i in range(len(pages))] if ready_views else None
    got = fingerprint_pages(data, PAGE, views)
    assert got.dtype == np.uint64
    assert got.tolist() == [fingerprint(p) for p in pages]


def test_a_hash_of_zero_is_taken_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import xxhash

    monkeypatch.setenv(native.ENV, "0")
    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", lambda page: 0)
    page = os.urandom(PAGE)
    assert (
        fingerprint_pages(memoryview(bytearray(page)), PAGE).tolist() == [1] == [fingerprint(page)]
    )


def test_the_native_core_takes_a_hash_of_zero_as_one_too() -> None:
    """The native core with a hash function that gives 0: 1, as the rule says; a page of
    one repeated value is named without the hash."""
    import ctypes

    if native.native() is None:
        pytest.skip("the native core was not built (no C compiler at install?)")
    from ksmreplay import _native

    hashed: list[int] = []

    @ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t)
    def zero(data: int, size: int) -> int:
        hashed.append(size)
        return 0

    address = ctypes.cast(zero, ctypes.c_void_p).value
    data = bytearray(os.urandom(PAGE) + bytes(PAGE) + b"\x07" * PAGE)
    out = np.zeros(3, np.uint64)
    _native.fingerprint_pages(data, PAGE, address, out)
    assert out.tolist() == [1, 0, 0x0707070707070707]
    assert hashed == [PAGE]


def test_the_native_core_hashes_with_xxh3_of_every_page_size() -> None:
    """The C hash function found in the xxhash module's library gives its Python API's
    values for pages of 4 to 64 KiB (a machine's page size may be any of them)."""
    import xxhash

    core = native.native()
    if core is None or not native.hash_address(PAGE):
        pytest.skip("no native core, or no C hash function found")
    rng = np.random.default_rng(18)
    for size in (4096, 16384, 65536):
        data = bytearray(rng.integers(0, 256, 3 * size, dtype=np.uint8).tobytes())
        out = np.zeros(3, np.uint64)
        assert core.fingerprint_pages(data, size, out)
        want = [xxhash.xxh3_64_intdigest(bytes(data[i * size : (i + 1) * size])) for i in range(3)]
        assert out.tolist() == want


def test_maps_opened_before_an_exec_read_nothing() -> None:
    """The kernel's behaviour the recorder must live with: ``maps`` opened on a process
    that then execs reads empty; opened again, it reads the new program's maps."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; sys.stdin.readline(); os.execv('/bin/sleep', ['sleep', '5'])",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert procfs.read_maps(child.pid)  # the interpreter is running
        fd = os.open(f"/proc/{child.pid}/maps", os.O_RDONLY)
        try:
            assert child.stdin is not None
            child.stdin.write("exec\n")
            child.stdin.flush()
            deadline = time.monotonic() + 10
            while "sleep" not in procfs.read_text(child.pid, "comm"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert os.read(fd, 1 << 20) == b""
        finally:
            os.close(fd)
        assert any(m.path.endswith("sleep") for m in procfs.read_maps(child.pid))
    finally:
        child.kill()
        child.wait()


@needs_ptrace
def test_a_process_met_in_an_exec_is_read_again_not_taken_for_gone(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a sample whose first read of a process's maps is empty, as when they were
    opened just before an exec, WHEN the process is still there, THEN it is read again
    and recorded, not written off as exited."""
    real = procfs.read_maps
    empty_once = {writer.proc.pid}

    def maps(pid: int, with_flags: bool = False) -> list[procfs.Mapping]:
        if pid in empty_once:
            empty_once.discard(pid)
            return []
        return real(pid, with_flags)

    monkeypatch.setattr(procfs, "read_maps", maps)
    out = io.BytesIO()
    rec = recorder(out)
    start = procfs.start_time(writer.proc.pid)
    assert start is not None
    rec.watch(writer.proc.pid, start)
    assert rec.sample(0) == []
    assert writer.proc.pid in rec.procs and not empty_once
    _, events, _ = read_back(out.getvalue())
    (_, pages), *_ = pages_of(events, 1)
    assert pages[writer.page(3)] == fingerprint(random_page(3))
