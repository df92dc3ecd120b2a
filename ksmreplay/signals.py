"""Stop signals as exceptions, so that every cleanup runs; and how the process ends.

Left to Python, SIGTERM and SIGHUP end the process at once, without running a
single ``finally`` block (a temporary file stays behind, a recorded command
keeps running, the live kernel's knobs stay changed), and SIGPIPE is ignored.
Inside :func:`raising`, each stop signal raises
:class:`~ksmreplay.errors.Stopped` in the main thread instead (SIGINT raises
:class:`~ksmreplay.errors.Interrupted`, which is also a
:class:`KeyboardInterrupt`), so that ``finally`` blocks and ``with`` exits
run on the way out.  :func:`held` keeps them waiting while a cleanup must
finish.  :func:`exit_process` ends the process with an exit status; for a
stop signal's status (128 + N) the process ends by that signal itself, as
the shell and a parent expect of a process that was stopped.

A signal the parent process set to be ignored (``nohup`` ignores SIGHUP; a
background job of a script ignores SIGINT) stays ignored.  SIGPIPE is the
exception: Python ignores it on its own, so its inherited setting is unknown;
it always stops ksmreplay.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import IO, Any, NoReturn

from ksmreplay.errors import ExitStatus, stopped

STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGPIPE,
)
"""The signals :func:`raising` turns into :class:`~ksmreplay.errors.Stopped`."""

_held = 0
"""How many :func:`held` blocks are open (main thread)."""

_pending: list[int] = []
"""Stop signals that arrived inside :func:`held`, in order, each once."""


def _handler(signum: int, frame: FrameType | None) -> None:
    if _held:
        if signum not in _pending:
            _pending.append(signum)
        return
    raise stopped(signum)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Turn the stop signals into exceptions for the duration of the block.

    Nests (an inner block changes nothing); outside the main thread, where a
    process cannot set signal handlers, it does nothing.
    """
    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in STOP_SIGNALS:
            if signum != signal.SIGPIPE and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, _handler)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Keep the stop signals waiting until the block ends (a cleanup that must finish).

    A stop signal that arrives inside the block takes effect just after it,
    by being sent again.  Only the Python handlers wait: the process's signal
    mask is left alone, so that a process started inside the block (which
    inherits the mask) can still be stopped.  Effective inside
    :func:`raising`; nests.
    """
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            waiting = list(_pending)
            _pending.clear()
            for signum in waiting:
                signal.raise_signal(signum)


def quiet_stdout() -> None:
    """Send what is left of standard output to ``/dev/null`` (after it failed: a closed pipe).

    Whatever is still buffered then goes nowhere instead of failing again when
    the process ends.
    """
    _quiet(sys.stdout, 1)


def _quiet(stream: IO[str] | None, default_fd: int) -> None:
    try:
        fd = stream.fileno() if stream is not None else default_fd
    except (OSError, ValueError, io.UnsupportedOperation):
        return  # not a file (a test's stream): nothing to redirect
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def exit_process(status: int) -> NoReturn:
    """End the process with ``status``; a stop signal's status (128 + N) ends it by signal N.

    Standard output and standard error are flushed first; what cannot be
    written is dropped (the status already says what went wrong).
    """
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            _quiet(stream, fd)
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    try:
        signum = ExitStatus(status).signum
    except ValueError:
        signum = None
    if signum is None:
        sys.exit(status)
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    os._exit(status)  # not reached: the signal ends the process
