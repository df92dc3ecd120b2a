"""The per-pid worker processes: the C program and talking to it.

The worker (``native/worker.c`` in the source tree) is built at install beside
this file, ``ksmreplay-worker``, with no C library, so that it owns no
anonymous memory besides its stack and a 64 KiB buffer, and marks even those
unmergeable (see the C file's header).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
from pathlib import Path

from ksmreplay.live.kernel import LiveKernelError

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


class Worker:
    """One live process standing for one trace pid."""

    def __init__(self, sock: socket.socket, pid: int, proc: subprocess.Popen[bytes] | None) -> None:
        self.sock = sock
        self.pid = pid
        self.proc = proc
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.pidfd = None
        self.alive = True

    @classmethod
    def spawn(cls, binary: Path) -> Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [str(binary)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as e:
            mine.close()
            raise LiveKernelError(f"cannot start the live worker {binary}: {e.strerror}") from None
        finally:
            theirs.close()
        _, pid = cls._recv_reply(mine)
        return cls(mine, pid, proc)

    @staticmethod
    def _recv_reply(sock: socket.socket) -> tuple[int, int]:
        data = sock.recv(REP.size)
        if len(data) != REP.size:
            raise WorkerError("a live worker died unexpectedly")
        ret, val = REP.unpack(data)
        return int(ret), int(val)

    def call(self, op: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
        """Send one command and wait for its completion; returns its value, raises on error."""
        self.sock.send(CMD.pack(op, a, b, c, d))
        return self._finish(op)

    def _finish(self, op: int) -> int:
        ret, val = self._recv_reply(self.sock)
        if ret < 0:
            raise WorkerError(f"live worker {self.pid}: command {op} failed: {os.strerror(-ret)}")
        return val

    def send_payload(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            self.sock.send(view[start : start + CHUNK])

    def fill_list(self, addr: int, length: int, values: bytes) -> None:
        self.sock.send(CMD.pack(OP_FILL_LIST, addr, length, 0, 0))
        self.send_payload(values)
        self._finish(OP_FILL_LIST)

    def write_bytes(self, addr: int, data: bytes) -> None:
        self.sock.send(CMD.pack(OP_BYTES, addr, len(data), 0, 0))
        self.send_payload(data)
        self._finish(OP_BYTES)

    def fork(self) -> Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            socket.send_fds(self.sock, [CMD.pack(OP_FORK, 0, 0, 0, 0)], [theirs.fileno()])
        finally:
            theirs.close()
        child_pid = self._finish(OP_FORK)
        ret, pid = self._recv_reply(mine)
        if ret < 0 or pid != child_pid:
            raise WorkerError(f"live worker {self.pid}: forked child did not start")
        return Worker(mine, child_pid, None)

    def exit(self) -> None:
        """End the process and wait until its memory is gone (the channel reaches end of file)."""
        if not self.alive:
            return
        self.sock.send(CMD.pack(OP_EXIT, 0, 0, 0, 0))
        self._wait_gone()

    def _wait_gone(self) -> None:
        # The kernel releases the address space before the descriptors, so end
        # of file on the channel means the exit's effect on memory is complete.
        while self.sock.recv(REP.size):
            pass
        self.alive = False
        if self.proc is not None:
            self.proc.wait()
        self.close()

    def kill(self) -> None:
        """Kill the process (by pidfd when possible, never a recycled pid) and wait for it."""
        if self.alive:
            try:
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                elif self.proc is not None:
                    self.proc.kill()
            except ProcessLookupError:
                pass
            try:
                self._wait_gone()
            except OSError:
                self.alive = False
        self.close()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.sock.close()
