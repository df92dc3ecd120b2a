"""The per-pid worker processes: the C program and talking to it.

The worker (``native/worker.c`` in the source tree) is built at install beside
this file, ``ksmreplay-worker``, with no C library, so that it owns no
anonymous memory besides its stack and a 64 KiB buffer, and marks even those
unmergeable (see the C file's header).
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

from ksmreplay.live.kernel import LiveKernelError
from ksmreplay.live.machine import Channel, Machine

BINARY = Path(__file__).with_name("ksmreplay-worker")
"""The worker, built at install (``setup.py``)."""

OP_INIT = 1
OP_MMAP = 2
OP_MUNMAP = 3
OP_FILL = 4
OP_FILL_LIST = 5
OP_BYTES = 6
OP_READ = 7
OP_MADVISE = 8
OP_PRCTL = 9
OP_FORK = 10
OP_EXIT = 11
OP_PING = 12

MADV_DONTNEED = 4
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
ADVICE = {"mergeable": MADV_MERGEABLE, "unmergeable": MADV_UNMERGEABLE, "dontneed": MADV_DONTNEED}

CMD = struct.Struct("<QQQQQ")
REP = struct.Struct("<qq")
CHUNK = 65536
"""Largest payload record (the worker's buffer)."""


def worker_binary() -> Path:
    """The worker program, built at install.

    :raises LiveKernelError: it was not built (no C compiler at install).
    """
    if not os.access(BINARY, os.X_OK):
        raise LiveKernelError(
            f"live replay needs its worker, {BINARY}, which was not built at install "
            "(no C compiler?): install ksmreplay again where gcc works"
        )
    return BINARY


class WorkerError(LiveKernelError):
    """A worker command failed (the kernel returned an error the trace did not expect)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class Worker:
    """One live process standing for one trace pid, reached through a :class:`Channel`."""

    def __init__(self, channel: Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        channel.bind(pid)
        self.alive = True

    @classmethod
    def spawn(cls, machine: Machine) -> Worker:
        """Start a worker on ``machine`` and wait for its first record (its pid)."""
        channel = machine.spawn_worker()
        try:
            _, pid = cls._reply(channel.recv(REP.size))
        except BaseException:
            channel.close()
            raise
        return cls(channel, pid)

    @staticmethod
    def _reply(data: bytes) -> tuple[int, int]:
        if len(data) != REP.size:
            raise WorkerError("a live worker died unexpectedly")
        ret, val = REP.unpack(data)
        return int(ret), int(val)

    def call(self, op: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
        """Send one command and wait for its completion; returns its value, raises on error."""
        return self._check(op, self.channel.call(CMD.pack(op, a, b, c, d), REP.size))

    def _check(self, op: int, data: bytes) -> int:
        ret, val = self._reply(data)
        if ret < 0:
            raise WorkerError(
                f"live worker {self.pid}: command {op} failed: {os.strerror(-ret)}", -ret
            )
        return val

    def _finish(self, op: int) -> int:
        return self._check(op, self.channel.recv(REP.size))

    def send_payload(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            self.channel.send(bytes(view[start : start + CHUNK]))

    def fill_list(self, addr: int, length: int, values: bytes) -> None:
        self.channel.send(CMD.pack(OP_FILL_LIST, addr, length, 0, 0))
        self.send_payload(values)
        self._finish(OP_FILL_LIST)

    def write_bytes(self, addr: int, data: bytes) -> None:
        self.channel.send(CMD.pack(OP_BYTES, addr, len(data), 0, 0))
        self.send_payload(data)
        self._finish(OP_BYTES)

    def fork(self) -> Worker:
        child = self.channel.fork(CMD.pack(OP_FORK, 0, 0, 0, 0))
        try:
            child_pid = self._finish(OP_FORK)
            ret, pid = self._reply(child.recv(REP.size))
            if ret < 0 or pid != child_pid:
                raise WorkerError(f"live worker {self.pid}: forked child did not start")
        except BaseException:
            child.close()
            raise
        return Worker(child, child_pid)

    def exit(self) -> None:
        """End the process and wait until its memory is gone (the channel reaches end of file)."""
        if not self.alive:
            return
        self.channel.send(CMD.pack(OP_EXIT, 0, 0, 0, 0))
        # The kernel releases the address space before the descriptors, so end
        # of file on the channel means the exit's effect on memory is complete.
        while self.channel.recv(REP.size):
            pass
        self.alive = False
        self.channel.reap()
        self.close()

    def kill(self) -> None:
        """Kill the process (by pidfd when possible, never a recycled pid) and wait for it."""
        if self.alive:
            self.alive = False
            with contextlib.suppress(OSError):
                self.channel.kill(self.pid)
        self.close()

    def close(self) -> None:
        self.channel.close()
