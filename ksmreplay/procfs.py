"""Reading processes through ``/proc``: maps, pagemap, kpageflags, memory, soft-dirty bits.

The one place that knows the layout of these files:

* ``/proc/PID/maps`` (and ``smaps`` for the ``VmFlags`` line): :func:`read_maps`
  gives :class:`Mapping` records, each of one :data:`KINDS` kind;
* ``/proc/PID/pagemap``: one little-endian 64-bit entry per page, bits
  :data:`PM_PRESENT`, :data:`PM_SWAPPED`, :data:`PM_FILE`,
  :data:`PM_MMAP_EXCLUSIVE`, :data:`PM_SOFT_DIRTY` and the frame number
  (:data:`PM_PFN_MASK`; reads as 0 without CAP_SYS_ADMIN);
* ``/proc/kpageflags``: one 64-bit flags word per frame (root only), bits
  :data:`KPF_ANON`, :data:`KPF_KSM`, :data:`KPF_THP`, :data:`KPF_ZERO_PAGE`;
* memory: :class:`MemoryReader` reads many ranges with one
  ``process_vm_readv``, or each with a ``preadv`` of ``/proc/PID/mem``;
* ``/proc/PID/clear_refs``: writing ``4`` clears the soft-dirty bits of every
  page of the process (:func:`clear_soft_dirty`); the kernel sets a page's
  bit again when the page is written.  Kernels built without soft-dirty
  support accept the write and never set the bit: :func:`soft_dirty_works`
  finds out once, on a page of this process;
* ``/proc/PID/stat``, ``task/*/children``, ``task/*/stat``: start time,
  children, kernel threads, stopped threads;
* page kinds: :func:`classify` tells absent, anonymous, KSM and zero pages
  apart from pagemap entries and kpageflags, for the live replay.

``record`` reads this machine; the live replay reads this machine's files or
a guest's, through any object with a ``pread`` (:class:`Files`).

A process that exits while it is read raises :class:`ProcessGone`; a
permission problem stays a :class:`PermissionError` naming the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ksmreplay.native import Native

Entries = npt.NDArray[np.uint64]
"""Pagemap entries, one per page."""

PM_PFN_MASK = (1 << 55) - 1
"""Pagemap: the frame number (0 when the reader lacks CAP_SYS_ADMIN)."""
PM_SOFT_DIRTY = 1 << 55
"""Pagemap: written since the soft-dirty bits were last cleared."""
PM_MMAP_EXCLUSIVE = 1 << 56
"""Pagemap: the page is mapped by this process only."""
PM_FILE = 1 << 61
"""Pagemap: a file page or shared anonymous page."""
PM_SWAPPED = 1 << 62
"""Pagemap: swapped out."""
PM_PRESENT = 1 << 63
"""Pagemap: present in memory."""

KPF_ANON = 1 << 12
KPF_HUGE = 1 << 17
KPF_KSM = 1 << 21
KPF_THP = 1 << 22
KPF_ZERO_PAGE = 1 << 24

CLEAR_SOFT_DIRTY = b"4"
"""What ``/proc/PID/clear_refs`` takes to clear the soft-dirty bits."""

PF_KTHREAD = 0x00200000
"""The ``flags`` bit (field 9 of ``/proc/PID/stat``) of a kernel thread."""

KINDS = ("anonymous", "shared", "file", "device", "hugetlb", "special", "inaccessible")
"""What a mapping is.  ``anonymous``: private anonymous memory (heap, stack,
anonymous mmaps), what KSM merges; ``shared``: MAP_SHARED memory of any kind;
``file``: private mappings of files; ``device``: mappings of device files;
``hugetlb``: hugetlbfs pages; ``special``: the kernel's own ([vdso] and the
like); ``inaccessible``: private anonymous with no access (PROT_NONE)."""

_SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]")


class ProcessGone(Exception):
    """The process exited (or its memory was torn down) while it was read."""


# --------------------------------------------------------------------------- files


class Files(Protocol):
    """Where ``/proc`` is read: this machine by default, or another (a guest,
    ``ksmreplay.live.machine.Machine``)."""

    def pread(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from byte ``offset`` (fewer at its end)."""
        ...


def open_proc(pid: int, name: str, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``/proc/PID/NAME``.

    :raises ProcessGone: no such process.
    :raises PermissionError: not allowed (its ``filename`` names the file).
    """
    try:
        return os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc


def _gone_error(exc: OSError) -> bool:
    return exc.errno in (errno.ESRCH, errno.ENOENT)


def read_text(pid: int, name: str) -> str:
    """The whole of ``/proc/PID/NAME`` as text.

    :raises ProcessGone: the process is gone.
    """
    fd = open_proc(pid, name)
    chunks = []
    try:
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            chunks.append(data)
    except OSError as exc:
        if _gone_error(exc):
            raise ProcessGone(pid) from exc
        raise
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _stat_fields(text: str) -> list[str]:
    """The fields of a ``stat`` file after the command name (field 3, the state, first)."""
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks (it tells the process from a later one
    with the same pid); None if there is no such process or it is a zombie."""
    try:
        fields = _stat_fields(read_text(pid, "stat"))
    except ProcessGone:
        return None
    if fields[0] in ("Z", "X", "x"):
        return None
    return int(fields[19])


def is_kernel_thread(pid: int) -> bool:
    """Whether ``pid`` is a kernel thread (it has no user memory)."""
    try:
        fields = _stat_fields(read_text(pid, "stat"))
    except ProcessGone:
        return False
    return len(fields) > 6 and int(fields[6]) & PF_KTHREAD != 0


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (empty if it is gone)."""
    out: list[int] = []
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as stream:
                out.extend(int(word) for word in stream.read().split())
        except OSError:
            continue
    return out


def thread_states(pid: int) -> list[str]:
    """The state letter of each thread of ``pid`` (``R``, ``S``, ``T``, ...); empty if gone."""
    states: list[str] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return states
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stream:
                states.append(_stat_fields(stream.read())[0])
        except (OSError, IndexError):
            continue
    return states


# --------------------------------------------------------------------------- maps


@dataclass(slots=True)
class Mapping:
    """One line of ``/proc/PID/maps``.

    :ivar start: first address (bytes).
    :ivar end: address after the last byte.
    :ivar perms: ``rwxp``-style permissions (``s`` instead of ``p`` for shared).
    :ivar inode: inode of the mapped file (0: none).
    :ivar path: the name the kernel shows ("" for anonymous memory).
    :ivar flags: the two-letter ``VmFlags`` of ``smaps`` (empty when read from ``maps``).
    """

    start: int
    end: int
    perms: str
    inode: int
    path: str
    flags: frozenset[str] = frozenset()

    @property
    def kind(self) -> str:
        """Which of :data:`KINDS` this mapping is."""
        path = self.path
        if "ht" in self.flags or path.startswith("/anon_hugepage"):
            return "hugetlb"
        if len(self.perms) < 4 or self.perms[3] == "s" or "sh" in self.flags:
            return "shared"
        if path in _SPECIAL:
            return "special"
        if "io" in self.flags or "pf" in self.flags:
            return "device"
        if path == "/dev/zero" or (self.inode == 0 and _anonymous_name(path)):
            return "inaccessible" if self.perms[:3] == "---" else "anonymous"
        if path.startswith("/dev/"):
            return "device"
        if self.inode != 0 or path.startswith("/") or path.startswith("memfd:"):
            return "file"
        return "special"

    @property
    def mergeable(self) -> bool:
        """Whether the process made it mergeable (the ``mg`` VmFlag; needs ``smaps``)."""
        return "mg" in self.flags


def _anonymous_name(path: str) -> bool:
    return path in ("", "[heap]", "[stack]") or path.startswith(("[anon:", "[stack:"))


def read_maps(pid: int, with_flags: bool = False) -> list[Mapping]:
    """Every mapping of ``pid``, from ``maps`` (or ``smaps`` with ``with_flags``).

    ``smaps`` costs more: the kernel counts each mapping's pages to write it.

    :raises ProcessGone: the process is gone.
    """
    return parse_maps(read_text(pid, "smaps" if with_flags else "maps"))


def parse_maps(text: str) -> list[Mapping]:
    """The mappings of the text of a ``maps`` or ``smaps`` file (:func:`read_maps`;
    ``exec`` reads the file from the machine it drives)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        if line.startswith("VmFlags:"):
            if out:
                out[-1].flags = frozenset(line.split()[1:])
            continue
        parts = line.split(None, 5)
        if len(parts) < 5 or "-" not in parts[0] or parts[0].endswith(":"):
            continue
        try:
            start_text, end_text = parts[0].split("-")
            start, end, inode = int(start_text, 16), int(end_text, 16), int(parts[4])
        except ValueError:
            continue
        path = parts[5].strip() if len(parts) > 5 else ""
        out.append(Mapping(start, end, parts[1], inode, path))
    return out


# --------------------------------------------------------------------------- pagemap


def pagemap_entries(fd: int, first_page: int, npages: int) -> Entries:
    """``npages`` pagemap entries from page number ``first_page``, read from ``fd``.

    :raises ProcessGone: the process is gone (the read fails or returns nothing).
    """
    want = npages * 8
    chunks: list[bytes] = []
    got = 0
    while got < want:
        try:
            data = os.pread(fd, want - got, first_page * 8 + got)
        except OSError as exc:
            if _gone_error(exc):
                raise ProcessGone from exc
            raise
        if not data:
            raise ProcessGone
        chunks.append(data)
        got += len(data)
    return np.frombuffer(b"".join(chunks) if len(chunks) > 1 else chunks[0], dtype="<u8").astype(
        np.uint64, copy=False
    )


def read_pagemap(
    pid: int, addr: int, npages: int, page_size: int, files: Files | None = None
) -> Entries:
    """Pagemap entries of ``npages`` pages from address ``addr`` of process ``pid``.

    :param files: the machine whose process it is (e.g. a guest's); by default
        this machine's.
    :raises OSError: a short read or the process is gone.
    """
    if files is not None:
        data = files.pread(f"/proc/{pid}/pagemap", (addr // page_size) * 8, npages * 8)
        if len(data) != npages * 8:
            raise OSError(f"short pagemap read for pid {pid}")
        return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return pagemap_entries(fd, addr // page_size, npages)
    except ProcessGone:
        raise OSError(f"short pagemap read for pid {pid}") from None
    finally:
        os.close(fd)


def read_kpageflags(pfns: Iterable[int], files: Files | None = None) -> dict[int, int]:
    """The page flags of each frame number, reading close frames in one go.

    :param files: the machine whose frames they are (e.g. a guest's); by
        default this machine's ``/proc/kpageflags`` is read.
    :raises OSError: ``/proc/kpageflags`` cannot be read (it needs root).
    """
    wanted = sorted(set(pfns))
    flags: dict[int, int] = {}
    if not wanted:
        return flags
    pread: Callable[[int, int], bytes] | None = (
        None if files is None else partial(files.pread, "/proc/kpageflags")
    )
    with contextlib.ExitStack() as stack:
        if pread is None:
            fd = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
            stack.callback(os.close, fd)

            def pread(offset: int, length: int) -> bytes:
                return os.pread(fd, length, offset)

        i = 0
        while i < len(wanted):
            j = i
            while j + 1 < len(wanted) and wanted[j + 1] - wanted[j] < 64:
                j += 1
            first, last = wanted[i], wanted[j]
            data = pread(first * 8, (last - first + 1) * 8)
            values = np.frombuffer(data[: len(data) // 8 * 8], dtype="<u8").tolist()
            for pfn in wanted[i : j + 1]:
                if pfn - first < len(values):
                    flags[pfn] = values[pfn - first]
            i = j + 1
    return flags


def address_of(area: mmap.mmap) -> int:
    """The address of ``area``'s first byte in this process."""
    holder = ctypes.c_char.from_buffer(area)
    try:
        return ctypes.addressof(holder)
    finally:
        del holder


def zero_pfn(page_size: int) -> int:
    """Frame number of the shared zero page: map a private page, read-fault it, look.

    :raises OSError: pagemap shows no frame numbers (not root) or the page
        is not flagged as the zero page.
    """
    area = mmap.mmap(-1, page_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = area[0]  # a read fault maps the zero page
        entry = int(read_pagemap(os.getpid(), address_of(area), 1, page_size)[0])
    finally:
        area.close()
    if not entry & PM_PRESENT or not entry & PM_PFN_MASK:
        raise OSError("cannot find the zero page's frame number in pagemap")
    pfn = entry & PM_PFN_MASK
    if not read_kpageflags([pfn]).get(pfn, 0) & KPF_ZERO_PAGE:
        raise OSError("the read-faulted page is not flagged as the zero page")
    return pfn


def huge_zero_order(page_size: int) -> int:
    """log2 of the pages of the huge zero page (a PMD's worth: 9 for 4 KiB pages on x86-64)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as stream:
            size = int(stream.read())
    except (OSError, ValueError):
        size = 512 * page_size
    return max(size // page_size, 1).bit_length() - 1


class ZeroFrames:
    """Tells which frames are the shared zero page (the small one and the huge one's).

    The small zero page's frame is this process's own (:func:`zero_pfn`).  The
    huge zero page is one naturally aligned block of ``1 << order`` frames
    (:func:`huge_zero_order`): a frame of another block is asked about in
    ``/proc/kpageflags`` once per block, the block's first frame standing for
    all of its frames (they belong to one folio, or the block is not the huge
    zero page's).  So a guest of 1 M zero-filled pages costs a flags read per
    block, once, and 8 bytes per block remembered.  Without root neither file
    is readable and no frame is known (such pages read as written zeros).
    """

    def __init__(self, page_size: int) -> None:
        self._frames = np.zeros(0, np.uint64)  # known small zero pages, sorted
        self._blocks = np.zeros(0, np.uint64)  # known huge zero page blocks, sorted
        self._asked = np.zeros(0, np.uint64)  # blocks asked about, sorted
        self._order = np.uint64(huge_zero_order(page_size))
        with contextlib.suppress(OSError):
            self._frames = np.array([zero_pfn(page_size)], np.uint64)
        self._readable = os.access("/proc/kpageflags", os.R_OK)

    @property
    def frames(self) -> npt.NDArray[np.uint64]:
        """The frame numbers known to be the zero page, sorted."""
        blocks = (self._blocks[:, None] << self._order) + np.arange(
            1 << int(self._order), dtype=np.uint64
        )
        return np.union1d(self._frames, blocks.ravel())

    def known(self, pfns: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Which of ``pfns`` are known to be the zero page (nothing is asked)."""
        found: npt.NDArray[np.bool_] = np.isin(pfns, self._frames)
        if len(self._blocks):
            found |= np.isin(pfns >> self._order, self._blocks)
        return found

    def check(self, pfns: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """Which of ``pfns`` (frames of pages that read as zeros) are the zero page;
        the blocks of those not known yet are asked about first."""
        if self._readable and len(pfns):
            blocks = np.unique(pfns[pfns != 0] >> self._order)
            new = blocks[~np.isin(blocks, self._asked, assume_unique=True)]
            if len(new):
                self._asked = np.union1d(self._asked, new)
                try:
                    flags = read_kpageflags((new << self._order).tolist())
                except OSError:
                    flags = {}
                zero = [pfn for pfn, f in flags.items() if f & KPF_ZERO_PAGE]
                if zero:
                    found = np.array(zero, np.uint64) >> self._order
                    self._blocks = np.union1d(self._blocks, found)
        return self.known(pfns)


# --------------------------------------------------------------------------- memory


IOV_MAX = 1024
"""Most ranges one ``process_vm_readv`` call takes."""


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def _vm_readv() -> Any:
    """The C library's ``process_vm_readv``, or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    pointer = ctypes.POINTER(_IoVec)
    function.argtypes = (
        ctypes.c_int,
        pointer,
        ctypes.c_ulong,
        pointer,
        ctypes.c_ulong,
        ctypes.c_ulong,
    )
    function.restype = ctypes.c_ssize_t
    return function


_VM_READV = _vm_readv()


class MemoryReader:
    """Reads ranges of one process's memory into a buffer, in as few system calls as it can.

    ``process_vm_readv`` reads up to :data:`IOV_MAX` ranges in one call; where
    the kernel or a sandbox refuses it (or ``use_vm_readv`` is False), each
    range is read by a ``preadv`` of ``/proc/PID/mem``.  Both need the same
    rights over the process (ptrace, or root).

    :param buffer: where the bytes go, from its start; it must not be resized
        while the reader lives.
    """

    def __init__(self, pid: int, buffer: bytearray, use_vm_readv: bool = True) -> None:
        self.pid = pid
        self._view = memoryview(buffer)
        self._holder: Any = ctypes.c_char.from_buffer(buffer)
        self._address = ctypes.addressof(self._holder)
        self._mem: int | None = None
        self._vm_readv: Any = _VM_READV if use_vm_readv else None

    def close(self) -> None:
        """Close ``/proc/PID/mem`` if it was opened, and let go of the buffer."""
        if self._mem is not None:
            os.close(self._mem)
            self._mem = None
        self._holder = None

    def __enter__(self) -> MemoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Read the ``(address, bytes)`` ``ranges`` one after the other into the buffer.

        :returns: the bytes read; fewer than asked when the byte after them
            cannot be read (a page unmapped meanwhile, or of a kind that cannot
            be read).
        :raises ProcessGone: the process or its memory is gone.
        :raises PermissionError: not allowed.
        """
        if self._vm_readv is not None:
            done = self._read_vm(ranges)
            if done is not None:
                return done
        return self._read_mem(ranges)

    def fingerprints(
        self, core: Native, runs: npt.NDArray[np.uint64], page_size: int, out: Entries
    ) -> tuple[int, bool]:
        """Read the pages of ``runs`` (rows of first address and pages) into the buffer
        and fingerprint each one into ``out``, in order, with the native core
        (:meth:`ksmreplay.native.Native.read_pages`; it needs a hash function).

        :returns: the pages done, and whether the page after them cannot be
            read (False: all were done).
        :raises ProcessGone: the process or its memory is gone.
        :raises PermissionError: not allowed.
        """
        buffer = self._view.obj
        assert isinstance(buffer, bytearray)
        done = 0
        while True:
            mem = -1 if self._vm_readv is not None else self._open_mem()
            got, error = core.read_pages(self.pid, mem, runs, page_size, buffer, out[done:])
            done += got
            if not error:
                return done, False
            if error == errno.ESRCH:
                raise ProcessGone(self.pid)
            if error in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                if mem < 0:
                    self._vm_readv = None  # refused: /proc/PID/mem says whether it is allowed
                    runs = skip_pages(runs, got, page_size)
                    continue
                raise PermissionError(error, os.strerror(error), f"/proc/{self.pid}/mem")
            return done, True

    def _open_mem(self) -> int:
        if self._mem is None:
            self._mem = open_proc(self.pid, "mem")
        return self._mem

    def _read_vm(self, ranges: Sequence[tuple[int, int]]) -> int | None:
        """Bytes read by ``process_vm_readv``, or None when it is refused (the caller
        reads through ``/proc/PID/mem`` instead, which says whether that is allowed)."""
        done = 0
        for first in range(0, len(ranges), IOV_MAX):
            part = ranges[first : first + IOV_MAX]
            remote = np.array(part, dtype=np.uint64).reshape(len(part), 2)
            want = int(remote[:, 1].sum())
            local = _IoVec(self._address + done, want)
            got: int = self._vm_readv(
                self.pid,
                ctypes.byref(local),
                1,
                remote.ctypes.data_as(ctypes.POINTER(_IoVec)),
                len(part),
                0,
            )
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.ESRCH:
                    raise ProcessGone(self.pid)
                if code in (errno.EPERM, errno.ENOSYS, errno.EACCES):
                    self._vm_readv = None
                    if done:
                        return done
                    return None
                return done  # EFAULT, ENOMEM: the first page cannot be read
            done += got
            if got < want:
                return done
        return done

    def _read_mem(self, ranges: Sequence[tuple[int, int]]) -> int:
        self._open_mem()
        assert self._mem is not None
        done = 0
        for addr, length in ranges:
            start, end = done, done + length
            while done < end:
                try:
                    got = os.preadv(self._mem, [self._view[done:end]], addr + done - start)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        raise ProcessGone(self.pid) from exc
                    if isinstance(exc, PermissionError):
                        raise
                    return done  # EIO, EFAULT: this page cannot be read
                if got == 0:
                    if done == 0:
                        raise ProcessGone(self.pid)  # an exiting process reads as nothing
                    return done
                done += got
        return done


def skip_pages(runs: npt.NDArray[np.uint64], pages: int, page_size: int) -> npt.NDArray[np.uint64]:
    """``runs`` (rows of first address and pages, bytes and pages of ``page_size``
    bytes) without their first ``pages`` pages."""
    if not pages:
        return runs
    ends = np.cumsum(runs[:, 1].astype(np.int64))
    first = int(np.searchsorted(ends, pages, side="right"))
    rest: npt.NDArray[np.uint64] = runs[first:].copy()
    if len(rest):
        into = pages - (int(ends[first - 1]) if first else 0)
        rest[0, 0] += np.uint64(into * page_size)
        rest[0, 1] -= np.uint64(into)
    return rest


# --------------------------------------------------------------------------- soft-dirty


def clear_soft_dirty(pid: int) -> None:
    """Clear the soft-dirty bit of every page of ``pid``.

    :raises ProcessGone: the process is gone.
    :raises PermissionError: not allowed.
    """
    fd = open_proc(pid, "clear_refs", os.O_WRONLY)
    try:
        os.write(fd, CLEAR_SOFT_DIRTY)
    except OSError as exc:
        if _gone_error(exc):
            raise ProcessGone(pid) from exc
        raise
    finally:
        os.close(fd)


_soft_dirty: bool | None = None


def soft_dirty_works() -> bool:
    """Whether this kernel keeps soft-dirty bits (found once, on a page of this process).

    The test clears this process's bits, checks that a page's bit is clear,
    writes the page and checks that its bit is set.  A kernel built without
    soft-dirty support leaves the bit clear; one that refuses the write to
    ``clear_refs`` has no support either.
    """
    global _soft_dirty
    if _soft_dirty is None:
        _soft_dirty = _test_soft_dirty()
    return _soft_dirty


def _test_soft_dirty() -> bool:
    page = mmap.PAGESIZE
    area = mmap.mmap(-1, page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area[0] = 1
        addr = address_of(area)
        fd = open_proc(os.getpid(), "pagemap")
        try:
            clear_soft_dirty(os.getpid())
            before = int(pagemap_entries(fd, addr // page, 1)[0])
            area[0] = 2
            after = int(pagemap_entries(fd, addr // page, 1)[0])
        finally:
            os.close(fd)
    except (OSError, ProcessGone):
        return False
    finally:
        area.close()
    return not before & PM_SOFT_DIRTY and bool(after & PM_SOFT_DIRTY)


# --------------------------------------------------------------------------- page kinds
#
# Page tables cannot tell a zero PTE that KSM placed (dirty) from one a read
# fault placed (clean): a live replay decides that from the trace's own
# history (``live/driver.py``).

NONE = 0
ANON = 1
KSM = 2
ZERO = 3
"""The kinds of page :func:`classify` tells apart: not present, an ordinary
anonymous frame, a KSM frame, the shared zero page."""


class PageView:
    """Classified pages of one range: ``kinds[i]`` and ``pfns[i]`` for page ``i``."""

    __slots__ = ("kinds", "pfns", "thp")

    def __init__(self, kinds: list[int], pfns: list[int], thp: bool) -> None:
        self.kinds = kinds
        self.pfns = pfns
        self.thp = thp


def classify(entries: list[int], zpfn: int, files: Files | None = None) -> PageView:
    """Classify raw pagemap entries (one kpageflags lookup for all frames)."""
    pfns = [e & PM_PFN_MASK if e & PM_PRESENT else 0 for e in entries]
    flags = read_kpageflags((p for p in pfns if p and p != zpfn), files)
    kinds: list[int] = []
    thp = False
    for e, pfn in zip(entries, pfns, strict=True):
        if not e & PM_PRESENT:
            if e & PM_SWAPPED:
                raise OSError("a replayed page was swapped out; live replay needs no swap pressure")
            kinds.append(NONE)
        elif pfn == zpfn:
            kinds.append(ZERO)
        else:
            f = flags.get(pfn, 0)
            thp = thp or bool(f & KPF_THP)
            kinds.append(KSM if f & KPF_KSM else ANON)
    return PageView(kinds, pfns, thp)
