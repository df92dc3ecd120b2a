"""Writing an output path: every file a command writes (``-o FILE``, ``convert ... OUT``).

:func:`open_output` looks at what the path names and writes each kind its
own way:

* ``-``: standard output, written through.
* a regular file, or a path that does not exist yet: the data goes to a
  temporary file in the same directory, which replaces the path (rename) only
  when complete, with the old file's permissions (and, as root, its owner and
  group; a new file gets 0666 less the umask).  On an error or a stop signal
  the temporary file is removed and the path is left as it was.  A symbolic
  link is followed, also a dangling one, and its target is replaced; the
  link stays a link.  Where the file system allows it (``O_TMPFILE``) the
  temporary file has no name until the moment it replaces the path, so that
  not even SIGKILL can leave it behind; elsewhere it is ``.NAME.XXXXXXXX``
  beside the path.
* anything else (a character or block device such as ``/dev/null``, a FIFO,
  a socket, ``/dev/stdout``, ``/proc/self/fd/N``): opened and written
  through, never renamed onto.  ``/dev/stdout``, ``/dev/fd/N`` and
  ``/proc/self/fd/N`` write to this process's descriptor N itself (as the
  shell's ``>&N`` would), not to a new opening of what it points at.

A write that fails raises :class:`~ksmreplay.errors.InputOutputError`
(``PATH: cannot write: REASON``), except a write into a closed pipe, which
stays a :class:`BrokenPipeError` (the CLI stops quietly, as on SIGPIPE).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import io
import os
import re
import secrets
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from ksmreplay import signals
from ksmreplay.errors import InputOutputError

STDOUT_NAME = "<stdout>"
"""How messages name standard output (``-``)."""

_MAX_LINKS = 40
"""Symbolic links followed before giving up (ELOOP), as the kernel does."""

_BUFFER_BYTES = 1 << 16

_OWN_FD = re.compile(r"/proc/(\d+)/(?:task/\d+/)?fd/(\d+)")

_unnamed_ok = True
"""Whether to try an unnamed temporary file (``O_TMPFILE``) first; tests turn it off."""


# --------------------------------------------------------------------------- writing


class _Sink(io.RawIOBase):
    """The bottom of an output stream: ``write`` calls, failures named after the path."""

    def __init__(self, write: Callable[[memoryview], int | None], name: str) -> None:
        super().__init__()
        self._write = write
        self.name = name
        self.dropping = False
        """Set after a failure: what is still buffered goes nowhere."""

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        if self.dropping:
            return view.nbytes
        try:
            written = self._write(view)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _write_error(self.name, exc) from exc
        return view.nbytes if written is None else written


def _write_error(name: str, exc: OSError) -> InputOutputError:
    return InputOutputError(f"{name}: cannot write: {exc.strerror or exc}")


def _drop(stream: IO[bytes]) -> None:
    raw = getattr(stream, "raw", None)
    if isinstance(raw, _Sink):
        raw.dropping = True


@contextlib.contextmanager
def _stream(sink: _Sink) -> Iterator[IO[bytes]]:
    """A buffered stream over ``sink``; flushed at the end, its buffer dropped on failure."""
    stream = io.BufferedWriter(sink, _BUFFER_BYTES)
    try:
        yield stream
        stream.flush()
    except BaseException:
        sink.dropping = True
        raise
    finally:
        with contextlib.suppress(Exception):
            stream.close()


# --------------------------------------------------------------------------- where a path leads


def _proc_device() -> int | None:
    """The device of procfs (its links are not followed but written through), if mounted."""
    try:
        return os.stat("/proc/self").st_dev
    except OSError:
        return None


def _resolve(path: str) -> tuple[str, os.stat_result | None]:
    """The path that ``path`` leads to after its symbolic links, and what is there.

    The stat result is None when nothing is there (a new file); it is a link's
    own when that link lives in ``/proc`` (``/proc/self/fd/N``: written
    through, never followed by name).
    """
    proc = _proc_device()
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        directory = os.path.realpath(os.path.dirname(current))
        current = os.path.join(directory, os.path.basename(current))
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if not os.path.isdir(directory):
                raise
            return current, None
        if not stat.S_ISLNK(info.st_mode) or info.st_dev == proc:
            return current, info
        current = os.path.join(directory, os.readlink(current))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))


@contextlib.contextmanager
def open_output(path: str) -> Iterator[IO[bytes]]:
    """A binary stream that writes ``path`` (``-``: standard output), as the module says.

    Leave the block normally to complete the output; an exception leaving it
    removes a temporary file and keeps the old file.

    :raises InputOutputError: the path cannot be written (``PATH: cannot write: REASON``).
    """
    if path == "-":
        with _stdout() as out:
            yield out
        return
    try:
        target, info = _resolve(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    if info is None or stat.S_ISREG(info.st_mode):
        with _replacing(path, target, info) as out:
            yield out
    elif stat.S_ISDIR(info.st_mode):
        raise InputOutputError(f"{path}: cannot write: {os.strerror(errno.EISDIR)}")
    else:
        with _through(path, target) as out:
            yield out


@contextlib.contextmanager
def open_text_output(path: str) -> Iterator[TextIO]:
    """Like :func:`open_output`, as UTF-8 text with ``\\n`` line endings."""
    with open_output(path) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="\n")
        try:
            yield text
            text.flush()
        except BaseException:
            _drop(binary)  # what the text layer still holds goes nowhere
            raise
        finally:
            text.detach()


@contextlib.contextmanager
def _stdout() -> Iterator[IO[bytes]]:
    stdout = sys.stdout
    if stdout is None:
        raise InputOutputError(f"{STDOUT_NAME}: cannot write: standard output is closed")
    _flush_stdout(stdout)
    buffer = stdout.buffer
    sink = _Sink(buffer.write, STDOUT_NAME)
    with _stream(sink) as out:
        yield out
    _flush_stdout(buffer)


def _flush_stdout(stream: IO[Any]) -> None:
    """Flush standard output; a write error becomes one line (a closed pipe stays
    :class:`BrokenPipeError`, for the quiet exit)."""
    try:
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _write_error(STDOUT_NAME, exc) from exc


@contextlib.contextmanager
def _through(path: str, target: str) -> Iterator[IO[bytes]]:
    """Write into what ``target`` is (a device, FIFO, socket, a descriptor of ours)."""
    own = _OWN_FD.fullmatch(target)
    try:
        if own is not None and int(own.group(1)) == os.getpid():
            fd = os.dup(int(own.group(2)))
        else:
            fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with _stream(_Sink(lambda data: os.write(fd, data), path)) as out:
            yield out
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- replacing a file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _link_by_proc(fd: int, name: str) -> None:
    os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)


_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _link_by_descriptor(fd: int, name: str) -> None:
    if _libc().linkat(fd, b"", _AT_FDCWD, os.fsencode(name), _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


_LINKS = (_link_by_proc, _link_by_descriptor)
"""Ways to give an unnamed file a name: through ``/proc`` (any user, where it
works), and by descriptor (needs privilege on older kernels)."""


class _TempFile:
    """The temporary file that becomes ``target``: unnamed where the file system allows."""

    def __init__(self, target: str) -> None:
        self.directory, self.base = os.path.split(target)
        self.target = target
        self.name: str | None = None  # while it has a name
        self.link: Callable[[int, str], None] | None = None
        fd = self._open_unnamed() if _unnamed_ok else None
        if fd is None:
            fd, self.name = tempfile.mkstemp(prefix=f".{self.base}.", dir=self.directory)
        self.fd: int | None = fd

    def _spare(self) -> str:
        return os.path.join(self.directory, f".{self.base}.{secrets.token_hex(4)}")

    def _named(self, fd: int, link: Callable[[int, str], None]) -> str:
        for _ in range(100):
            name = self._spare()
            try:
                link(fd, name)
            except FileExistsError:
                continue
            return name
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))

    def _open_unnamed(self) -> int | None:
        """An ``O_TMPFILE`` file that can be given a name later, or None."""
        fd = self._open_tmpfile()
        if fd is None:
            return None
        # A file can get a name only once (its first link ends its linkability), so
        # the ways to name it are tried on a second, empty one, unlinked at once.
        trial = self._open_tmpfile()
        if trial is not None:
            try:
                for link in _LINKS:
                    try:
                        os.unlink(self._named(trial, link))
                    except (OSError, AttributeError):  # AttributeError: no linkat in libc
                        continue
                    self.link = link
                    return fd
            finally:
                os.close(trial)
        os.close(fd)
        return None

    def _open_tmpfile(self) -> int | None:
        flag = getattr(os, "O_TMPFILE", 0)
        if not flag:
            return None
        try:
            return os.open(self.directory, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                return None  # no O_TMPFILE on this file system or kernel
            raise

    def commit(self, mode: int, owner: tuple[int, int] | None) -> None:
        """Give the file its permissions (and owner), and put it in place of the target."""
        assert self.fd is not None
        if owner is not None:
            os.fchown(self.fd, *owner)
        os.fchmod(self.fd, mode)
        if self.name is None:
            assert self.link is not None
            self.name = self._named(self.fd, self.link)
        os.close(self.fd)
        self.fd = None
        os.replace(self.name, self.target)
        self.name = None

    def discard(self) -> None:
        """Close and remove the file (nothing is left of it)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name)
            self.name = None


def _owner(info: os.stat_result) -> tuple[int, int] | None:
    """The owner and group to give the new file (None: leave ours)."""
    if os.geteuid() == 0:
        return info.st_uid, info.st_gid
    if info.st_gid != os.getegid() and info.st_gid in os.getgroups():
        return -1, info.st_gid
    return None


@contextlib.contextmanager
def _replacing(path: str, target: str, info: os.stat_result | None) -> Iterator[IO[bytes]]:
    """Write a temporary file beside ``target`` and rename it over ``target`` at the end."""
    if info is not None and not os.access(target, os.W_OK):
        raise InputOutputError(f"{path}: cannot write: {os.strerror(errno.EACCES)}")
    temp: _TempFile | None = None
    try:
        try:
            with signals.held():
                temp = _TempFile(target)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        fd = temp.fd
        assert fd is not None
        with _stream(_Sink(lambda data: os.write(fd, data), path)) as out:
            yield out
        try:
            with signals.held():
                if info is None:
                    temp.commit(0o666 & ~_umask(), None)
                else:
                    temp.commit(stat.S_IMODE(info.st_mode), _owner(info))
        except OSError as exc:
            raise _write_error(path, exc) from exc
    finally:
        with signals.held():
            if temp is not None:
                temp.discard()
