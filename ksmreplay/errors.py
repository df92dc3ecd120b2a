"""Exit statuses and the exceptions that carry them.

Every failure the user can cause (bad input, bad usage, I/O) is one of these
exceptions; the CLI turns it into one line on stderr and its exit status, and
only ``--debug`` shows a traceback.
"""

from __future__ import annotations

import enum
import signal

SIGNAL_BASE = 128
"""A process stopped by signal N exits with status SIGNAL_BASE + N (as a shell shows it)."""


class ExitStatus(enum.IntEnum):
    """The process exit statuses of ``ksmreplay``, in one place."""

    OK = 0
    """Success."""
    DIFFERENCES = 1
    """``diff`` found differences."""
    USAGE = 2
    """Bad command line (unknown option, bad value, missing argument)."""
    INVALID_TRACE = 3
    """The trace breaks a rule of the trace format."""
    IO_ERROR = 4
    """A file could not be read or written."""
    LIVE_KERNEL = 5
    """The live kernel cannot be used (not root, no KSM, busy, locked)."""
    RESOURCES = 6
    """The replay needs more memory than it may take (the memory this machine
    has available, or ``KSMREPLAY_MEMORY``); the trace itself is valid."""
    HANGUP = SIGNAL_BASE + signal.SIGHUP
    """Stopped by SIGHUP (129)."""
    INTERRUPTED = SIGNAL_BASE + signal.SIGINT
    """Stopped by SIGINT, Ctrl-C (130)."""
    BROKEN_PIPE = SIGNAL_BASE + signal.SIGPIPE
    """The output pipe was closed (a write failed with EPIPE), or SIGPIPE arrived (141)."""
    TERMINATED = SIGNAL_BASE + signal.SIGTERM
    """Stopped by SIGTERM (143)."""

    @classmethod
    def of_signal(cls, signum: int) -> ExitStatus:
        """The status of a process stopped by ``signum`` (one of the stop signals)."""
        return cls(SIGNAL_BASE + signum)

    @property
    def signum(self) -> signal.Signals | None:
        """The signal this status stands for, or None for an ordinary status."""
        if self <= SIGNAL_BASE:
            return None
        return signal.Signals(self - SIGNAL_BASE)


class KsmreplayError(Exception):
    """An error reported to the user as one line, with an exit status."""

    exit_status: ExitStatus = ExitStatus.USAGE


class UsageError(KsmreplayError):
    """A bad option value or combination that the argument parser cannot see."""

    exit_status = ExitStatus.USAGE


class InputOutputError(KsmreplayError):
    """A file that cannot be opened, read or written."""

    exit_status = ExitStatus.IO_ERROR


class ResourceError(KsmreplayError):
    """A replay that would need more memory than it may take, found before
    the memory is taken."""

    exit_status = ExitStatus.RESOURCES


class TraceError(KsmreplayError):
    """A trace that breaks the trace format.

    The message names the file, the event index (0 = header) and, when the
    event got far enough to have one, its ``t``::

        trace.msgpack: event 1742 (t=3000000): write to pid 7 at 0x7f0000003000 outside any mapping
    """

    exit_status = ExitStatus.INVALID_TRACE

    def __init__(self, path: str, index: int | None, t: int | None, message: str) -> None:
        self.path = path
        self.index = index
        self.t = t
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.path}: {self.message}"
        where = f"event {self.index}" if self.t is None else f"event {self.index} (t={self.t})"
        return f"{self.path}: {where}: {self.message}"


class Stopped(BaseException):
    """A stop signal (SIGTERM, SIGHUP, SIGPIPE, SIGINT) arrived; raised so that cleanup runs.

    Not an :class:`Exception`: only ``finally`` blocks, ``with`` exits and the
    CLI's boundary see it.  ``detail`` is a message for stderr (None: stop
    quietly, as a process killed by the signal would).
    """

    def __init__(self, signum: int, detail: str | None = None) -> None:
        self.signum = signal.Signals(signum)
        self.detail = detail
        super().__init__(self.signum.name)

    @property
    def exit_status(self) -> ExitStatus:
        """128 + the signal's number."""
        return ExitStatus.of_signal(self.signum)


class Interrupted(Stopped, KeyboardInterrupt):
    """SIGINT (Ctrl-C): a :class:`Stopped` that is also a :class:`KeyboardInterrupt`."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(signal.SIGINT, detail)


def stopped(signum: int) -> Stopped:
    """The exception that stands for ``signum`` arriving."""
    return Interrupted() if signum == signal.SIGINT else Stopped(signum)


class InvariantError(AssertionError):
    """A simulator invariant does not hold (a bug in ksmreplay, never in the trace)."""
