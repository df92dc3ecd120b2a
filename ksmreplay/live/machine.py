"""Where a live replay runs: this machine, or a guest reached through its agent.

The replay logic (``driver.py``) reads and writes kernel files and talks to
worker processes only through a :class:`Machine`:

* :class:`LocalMachine` is the running kernel: files are opened directly and
  workers are child processes connected by a socket pair;
* ``ksmreplay.live.qemu.GuestMachine`` is a kernel booted under qemu: the same
  requests are carried out by a small agent in the guest (see ``native/agent.c``).

A worker's end of the conversation is a :class:`Channel`: records go out and
come back exactly as they do over the local ``SOCK_SEQPACKET`` socket.
"""

from __future__ import annotations

import abc
import os
import signal
import socket
import subprocess
from pathlib import Path


class Channel(abc.ABC):
    """The replay's end of one worker's command channel (records, not a byte stream)."""

    @abc.abstractmethod
    def send(self, record: bytes) -> None:
        """Send one record."""

    @abc.abstractmethod
    def recv(self, size: int) -> bytes:
        """Receive one record of at most ``size`` bytes; empty at end of file."""

    def call(self, record: bytes, size: int) -> bytes:
        """Send one record and receive the answer (one round trip where that is cheaper)."""
        self.send(record)
        return self.recv(size)

    @abc.abstractmethod
    def fork(self, record: bytes) -> Channel:
        """Send ``record`` with a new channel's far end attached; return its near end."""

    def bind(self, pid: int) -> None:  # noqa: B027 - optional hook
        """Learn the worker's process id (sent as its first record)."""

    @abc.abstractmethod
    def kill(self, pid: int) -> None:
        """SIGKILL the worker and wait until its channel reaches end of file."""

    def reap(self) -> None:  # noqa: B027 - optional hook
        """Wait for the process the channel started, after its end of file."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the channel (the worker then reads end of file)."""


class Machine(abc.ABC):
    """A running kernel that a live replay can drive."""

    @abc.abstractmethod
    def read(self, path: str) -> bytes:
        """The whole content of a (proc, sysfs) file; raises :class:`OSError`."""

    @abc.abstractmethod
    def pread(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from byte ``offset`` (fewer at its end)."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """One ``write()`` of ``data`` to ``path``; raises :class:`OSError` with the errno."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """The names in a directory (unsorted)."""

    @abc.abstractmethod
    def access(self, path: str, mode: int) -> bool:
        """``os.access`` on the machine."""

    @abc.abstractmethod
    def spawn_worker(self) -> Channel:
        """Start a new worker process; its first record is ``(0, pid)``."""

    @abc.abstractmethod
    def release(self) -> str:
        """The kernel's release (``uname -r``)."""

    @abc.abstractmethod
    def arch(self) -> str:
        """The machine's hardware name (``uname -m``)."""

    @abc.abstractmethod
    def is_root(self) -> bool:
        """Whether the replay acts as root there."""

    @abc.abstractmethod
    def page_size(self) -> int:
        """The kernel's page size, bytes."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the machine."""
        return self.access(path, os.F_OK)


class LocalChannel(Channel):
    """A worker of this machine: a socket pair end, and a pidfd once its pid is known."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes] | None) -> None:
        self.sock = sock
        self.proc = proc
        self.pidfd: int | None = None

    def send(self, record: bytes) -> None:
        self.sock.send(record)

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def fork(self, record: bytes) -> Channel:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            socket.send_fds(self.sock, [record], [theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return LocalChannel(mine, None)

    def bind(self, pid: int) -> None:
        try:
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.pidfd = None

    def kill(self, pid: int) -> None:
        """Kill by pidfd when possible (never a recycled pid), then wait for end of file."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.proc is not None:
                self.proc.kill()
        except ProcessLookupError:
            pass
        while self.sock.recv(64):
            pass
        self.reap()

    def reap(self) -> None:
        """Wait for the process this channel started (a forked worker is reaped by the kernel)."""
        if self.proc is not None:
            self.proc.wait()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.sock.close()


class LocalMachine(Machine):
    """The running kernel of this machine."""

    def __init__(self, worker: Path | None = None) -> None:
        self.worker = worker

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def pread(self, path: str, offset: int, length: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)

    def spawn_worker(self) -> Channel:
        from ksmreplay.live.kernel import LiveKernelError
        from ksmreplay.live.worker import worker_binary

        binary = self.worker or worker_binary()
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
        return LocalChannel(mine, proc)

    def release(self) -> str:
        return os.uname().release

    def arch(self) -> str:
        return os.uname().machine

    def is_root(self) -> bool:
        return os.geteuid() == 0

    def page_size(self) -> int:
        return os.sysconf("SC_PAGE_SIZE")


LOCAL = LocalMachine()
"""This machine's running kernel."""
