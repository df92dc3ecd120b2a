"""``procfs``: the kinds of mappings, pagemap bits, the zero page's frames and the two
ways of reading another process's memory, checked against processes made here."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import pytest
from support import needs_ptrace

from ksmreplay import native, procfs
from ksmreplay.procfs import Mapping
from ksmreplay.vm.content import fingerprint

PAGE = mmap.PAGESIZE

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/pagemap"), reason="needs /proc/PID/pagemap"
)


@pytest.mark.parametrize(
    ("perms", "inode", "path", "flags", "kind"),
    [
        ("rw-p", 0, "", (), "anonymous"),
        ("rw-p", 0, "[heap]", (), "anonymous"),
        ("rw-p", 0, "[stack]", (), "anonymous"),
        ("rw-p", 0, "[anon:buffers]", (), "anonymous"),
        ("r--p", 7, "/dev/zero", (), "anonymous"),
        ("---p", 0, "", (), "inaccessible"),
        ("rw-s", 9, "/dev/zero (deleted)", (), "shared"),
        ("rw-s", 0, "", (), "shared"),
        ("rw-s", 12, "/memfd:guest-ram (deleted)", (), "shared"),
        ("rw-p", 12, "/usr/lib/libc.so.6", (), "file"),
        ("rw-p", 12, "/memfd:jit (deleted)", (), "file"),
        ("rw-p", 3, "/dev/dri/card0", (), "device"),
        ("rw-p", 0, "", ("io", "pf"), "device"),
        ("rw-p", 5, "/anon_hugepage (deleted)", (), "hugetlb"),
        ("rw-p", 0, "", ("ht",), "hugetlb"),
        ("r--p", 0, "[vvar]", (), "special"),
        ("r-xp", 0, "[vdso]", (), "special"),
    ],
)
def test_kinds_of_mappings(
    perms: str, inode: int, path: str, flags: tuple[str, ...], kind: str
) -> None:
    assert kind in procfs.KINDS
    assert Mapping(0x1000, 0x2000, perms, inode, path, frozenset(flags)).kind == kind


def _find(maps: list[Mapping], start: int) -> Mapping:
    return next(m for m in maps if m.start <= start < m.end)


def test_read_maps_tells_this_process_s_mappings_apart() -> None:
    private = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    shared = mmap.mmap(-1, 4 * PAGE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    with tempfile.TemporaryFile() as backing:
        backing.write(b"x" * PAGE)
        backing.flush()
        filed = mmap.mmap(backing.fileno(), PAGE, flags=mmap.MAP_PRIVATE)
        try:
            addresses = [procfs.address_of(m) for m in (private, shared, filed)]
            maps = procfs.read_maps(os.getpid())
            flagged = procfs.read_maps(os.getpid(), with_flags=True)
            assert [_find(maps, a).kind for a in addresses] == ["anonymous", "shared", "file"]
            assert [_find(flagged, a).kind for a in addresses] == ["anonymous", "shared", "file"]
            assert all(_find(flagged, a).flags for a in addresses)
            assert not any(_find(maps, a).flags for a in addresses)
        finally:
            filed.close()
            shared.close()
            private.close()


def test_pagemap_shows_written_and_untouched_pages() -> None:
    area = mmap.mmap(-1, 3 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[PAGE] = 1
        entries = procfs.read_pagemap(os.getpid(), procfs.address_of(area), 3, PAGE)
        present = (entries & np.uint64(procfs.PM_PRESENT)) != 0
        assert present.tolist() == [False, True, False]
        assert entries.dtype == np.uint64
    finally:
        area.close()


@pytest.mark.skipif(not os.access("/proc/kpageflags", os.R_OK), reason="needs root")
def test_the_zero_page_is_known_by_its_frame() -> None:
    area = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = area[0]  # read fault: the zero page
        area[PAGE] = 0  # write fault: a page of its own, of zeros
        entries = procfs.read_pagemap(os.getpid(), procfs.address_of(area), 2, PAGE)
        pfns = entries & np.uint64(procfs.PM_PFN_MASK)
        assert int(pfns[0]) == procfs.zero_pfn(PAGE)
        assert procfs.ZeroFrames(PAGE).check(pfns).tolist() == [True, False]
    finally:
        area.close()


@pytest.mark.skipif(not os.access("/proc/kpageflags", os.R_OK), reason="needs root")
def test_the_huge_zero_page_is_known_by_its_block_asked_once() -> None:
    """GIVEN an aligned huge page's worth of memory that is read (the huge zero page,
    where the kernel maps it) and a page of it written, WHEN their frames are checked,
    THEN every frame of the huge zero page is the zero page and the written one is not;
    their block was asked about once, and the check knows them from then on."""
    order = procfs.huge_zero_order(PAGE)
    huge = PAGE << order
    area = mmap.mmap(-1, 3 * huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        offset = -procfs.address_of(area) % huge
        area.madvise(mmap.MADV_HUGEPAGE, offset, huge)
        _ = area[offset]  # a read fault of the whole huge page
        entries = procfs.read_pagemap(
            os.getpid(), procfs.address_of(area) + offset, 1 << order, PAGE
        )
        pfns = entries & np.uint64(procfs.PM_PFN_MASK)
        if int(pfns[1]) != int(pfns[0]) + 1:
            pytest.skip("no huge zero page here (transparent huge pages off, or its use)")
        area[offset + huge] = 0  # a page of its own, in the next block
        own = procfs.read_pagemap(os.getpid(), procfs.address_of(area) + offset + huge, 1, PAGE)
        zero = procfs.ZeroFrames(PAGE)
        asked: list[list[int]] = []
        real = procfs.read_kpageflags

        def counted(frames: list[int]) -> dict[int, int]:
            asked.append(frames)
            return real(frames)

        both = np.concatenate([pfns, own & np.uint64(procfs.PM_PFN_MASK)])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(procfs, "read_kpageflags", counted)
            assert not zero.known(pfns).any()
            assert zero.check(both).tolist() == [True] * (1 << order) + [False]
            assert zero.check(both).tolist() == [True] * (1 << order) + [False]
        assert len(asked) == 1 and int(pfns[0]) in asked[0]
        assert zero.known(pfns).all()
    finally:
        area.close()


HOLDER = r"""
import ctypes, mmap, sys
PAGE = mmap.PAGESIZE
area = mmap.mmap(-1, 10 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(10):
    area[i * PAGE:(i + 1) * PAGE] = bytes([i + 1]) * PAGE
addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
libc = ctypes.CDLL(None, use_errno=True)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
assert libc.munmap(addr + 8 * PAGE, PAGE) == 0  # a hole after page 7
print(addr, flush=True)
sys.stdin.readline()
"""


@needs_ptrace
@pytest.mark.parametrize("use_vm_readv", [True, False], ids=["process_vm_readv", "proc-mem"])
def test_memory_reader_reads_ranges_in_order_and_stops_where_it_cannot(
    use_vm_readv: bool,
) -> None:
    """GIVEN a process holding pages of bytes 1..8, then a hole, WHEN ranges of them
    are read, THEN the buffer holds them one after the other; a range in the hole
    stops the read at the last byte that could be read."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        buffer = bytearray(16 * PAGE)
        with procfs.MemoryReader(child.pid, buffer, use_vm_readv) as reader:
            ranges = [(addr + 5 * PAGE, PAGE), (addr, 2 * PAGE), (addr + 7 * PAGE, PAGE)]
            assert reader.read(ranges) == 4 * PAGE
            assert bytes(buffer[: 4 * PAGE]) == b"".join(bytes([v]) * PAGE for v in (6, 1, 2, 8))
            buffer[:] = bytes(len(buffer))
            beyond = [(addr + 6 * PAGE, 2 * PAGE), (addr + 8 * PAGE, PAGE), (addr, PAGE)]
            assert reader.read(beyond) == 2 * PAGE
            assert bytes(buffer[: 2 * PAGE]) == bytes([7]) * PAGE + bytes([8]) * PAGE
            assert reader.read([(addr + 8 * PAGE, PAGE)]) == 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def _core() -> Any:
    core = native.native()
    if core is None or not native.hash_address(PAGE):
        pytest.skip("no native core, or no C hash function found")
    return core


def _runs(*rows: tuple[int, int]) -> Any:
    return np.array(rows, dtype=np.uint64).reshape(len(rows), 2)


@needs_ptrace
@pytest.mark.parametrize("use_vm_readv", [True, False], ids=["process_vm_readv", "proc-mem"])
def test_memory_reader_fingerprints_runs_in_order_and_stops_where_it_cannot(
    use_vm_readv: bool,
) -> None:
    """GIVEN the same process, WHEN runs of its pages are fingerprinted by the native core
    through a buffer of 2 pages, THEN the fingerprints come in order of the runs; a run
    into the hole stops at the page before it, and says that the next cannot be read."""
    core = _core()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        buffer = bytearray(2 * PAGE)
        value = [fingerprint(bytes([v]) * PAGE) for v in range(11)]
        with procfs.MemoryReader(child.pid, buffer, use_vm_readv) as reader:
            out = np.zeros(8, np.uint64)
            runs = _runs((addr + 5 * PAGE, 1), (addr, 3), (addr + 7 * PAGE, 1))
            assert reader.fingerprints(core, runs, PAGE, out) == (5, False)
            assert out[:5].tolist() == [value[6], value[1], value[2], value[3], value[8]]
            runs = _runs((addr + 6 * PAGE, 3), (addr, 1))
            assert reader.fingerprints(core, runs, PAGE, out) == (2, True)
            assert out[:2].tolist() == [value[7], value[8]]
            rest = procfs.skip_pages(runs, 3, PAGE)
            assert rest.tolist() == [[addr, 1]]
            assert reader.fingerprints(core, rest, PAGE, out) == (1, False)
            assert out[0] == value[1]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


@needs_ptrace
def test_native_reading_says_when_the_process_is_gone_and_falls_back_when_refused() -> None:
    """GIVEN the native core refused by process_vm_readv (EPERM from a sandbox, here
    simulated), WHEN pages are fingerprinted, THEN /proc/PID/mem reads them and the
    refusal is not asked again; once the process is gone, ProcessGone either way."""
    real = _core()

    class Refusing:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def read_pages(self, pid: int, mem: int, runs: Any, *rest: Any) -> tuple[int, int]:
            self.calls.append(mem)
            if mem < 0:
                return 0, errno.EPERM
            done, error = real.read_pages(pid, mem, runs, *rest)
            return done, error

    core = Refusing()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    addr = int(child.stdout.readline())
    buffer = bytearray(PAGE)
    out = np.zeros(2, np.uint64)
    with procfs.MemoryReader(child.pid, buffer) as reader:
        assert reader.fingerprints(core, _runs((addr + 2 * PAGE, 2)), PAGE, out) == (2, False)  # type: ignore[arg-type]
        assert out.tolist() == [fingerprint(bytes([3]) * PAGE), fingerprint(bytes([4]) * PAGE)]
        assert reader.fingerprints(core, _runs((addr, 1)), PAGE, out) == (1, False)  # type: ignore[arg-type]
        assert core.calls[0] == -1 and all(mem >= 0 for mem in core.calls[1:])
        live = procfs.MemoryReader(child.pid, bytearray(PAGE))
        child.stdin.close()
        child.wait(10)
        for r, c in ((reader, core), (live, real)):
            with pytest.raises(procfs.ProcessGone):
                r.fingerprints(c, _runs((addr, 1)), PAGE, out)  # type: ignore[arg-type]
        live.close()


@needs_ptrace
def test_memory_reader_says_when_the_process_is_gone() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    addr = int(child.stdout.readline())
    buffer = bytearray(PAGE)
    readers = [procfs.MemoryReader(child.pid, buffer, flag) for flag in (True, False)]
    readers[1].read([(addr, PAGE)])  # opens /proc/PID/mem while the process lives
    child.stdin.close()
    child.wait(10)
    for reader in readers:
        with pytest.raises(procfs.ProcessGone):
            reader.read([(addr, PAGE)])
        reader.close()


def test_soft_dirty_works_agrees_with_the_kernel() -> None:
    """Whatever the kernel, the answer is what a page of this process shows."""
    area = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[0] = 1
        addr = procfs.address_of(area)
        procfs.clear_soft_dirty(os.getpid())
        area[0] = 2
        entry = int(procfs.read_pagemap(os.getpid(), addr, 1, PAGE)[0])
    finally:
        area.close()
    assert procfs.soft_dirty_works() == bool(entry & procfs.PM_SOFT_DIRTY)


@needs_ptrace
def test_a_refused_process_vm_readv_falls_back_to_proc_mem(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN process_vm_readv refused (EPERM, as a sandbox does), WHEN memory is read,
    THEN it is read through /proc/PID/mem instead, and the refusal is not asked again."""
    import ctypes
    import errno

    calls = []

    def refused(*args: object) -> int:
        calls.append(args)
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(procfs, "_VM_READV", refused)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        addr = int(child.stdout.readline())
        buffer = bytearray(2 * PAGE)
        with procfs.MemoryReader(child.pid, buffer) as reader:
            assert reader.read([(addr + 2 * PAGE, PAGE)]) == PAGE
            assert reader.read([(addr + 3 * PAGE, PAGE)]) == PAGE
        assert bytes(buffer[:PAGE]) == bytes([4]) * PAGE
        assert len(calls) == 1
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
