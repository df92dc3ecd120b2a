"""The live kernel's KSM: sysfs access, the lock, and the promise to leave it at rest.

``/sys/kernel/mm/ksm`` is one global state shared by every process of the
machine.  :class:`KsmGuard` is the only way ksmreplay touches it: it takes an
exclusive lock, records every knob, refuses to start when others are using
KSM, and on the way out (success, exception, or a stop signal: Ctrl-C,
SIGTERM, SIGHUP, SIGPIPE, which :func:`ksmreplay.signals.raising` turns into
exceptions) restores every knob it touched and leaves KSM stopped with
nothing merged.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ksmreplay.errors import ExitStatus, KsmreplayError
from ksmreplay.ksm.knobs import ADVISOR_OWNS, KNOBS, KnobValue
from ksmreplay.live.machine import LOCAL, Machine

KSM_DIR = "/sys/kernel/mm/ksm"
LOCK_PATH = "/run/lock/ksmreplay-live.lock"
LOCK_TIMEOUT_S = 30.0

BUSY_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "ksm_zero_pages",
    "pages_unshared",
    "pages_volatile",
)
"""Counters that are 0 when nobody uses KSM (with ``run`` 0)."""

RESTORE_ORDER = (
    "advisor_mode",
    *(k.name for k in KNOBS if k.name not in ("run", "advisor_mode")),
)
"""Knob write order when setting or restoring everything but ``run``.

``advisor_mode`` comes first because switching it rewrites ``pages_to_scan``
and, while it is ``scan-time``, ``pages_to_scan`` cannot be written.
"""


class LiveKernelError(KsmreplayError):
    """The live kernel cannot be used: not root, no KSM, busy, locked, no compiler."""

    exit_status = ExitStatus.LIVE_KERNEL


class RefusedWrite(Exception):
    """The kernel refused a knob write with ``errno`` (EBUSY, EINVAL)."""

    def __init__(self, knob: str, value: KnobValue, err: int) -> None:
        super().__init__(f"{knob}={value}: {os.strerror(err)}")
        self.knob = knob
        self.value = value
        self.errno = err


def knob_path(name: str) -> str:
    return os.path.join(KSM_DIR, name)


class KsmFiles:
    """``/sys/kernel/mm/ksm`` of one machine (this one by default)."""

    def __init__(self, machine: Machine = LOCAL) -> None:
        self.machine = machine

    def read_text(self, name: str) -> str:
        return self.machine.read(knob_path(name)).decode("ascii").strip()

    def read_int(self, name: str) -> int:
        return int(self.read_text(name))

    def read_knob(self, name: str) -> KnobValue:
        """One knob's value; ``advisor_mode`` is shown as ``[none] scan-time`` and parsed."""
        text = self.read_text(name)
        if name == "advisor_mode":
            for word in text.split():
                if word.startswith("["):
                    return word.strip("[]")
            return text
        return int(text)

    def has(self, name: str) -> bool:
        """Whether this kernel has the file ``name`` (a knob or a counter)."""
        return self.machine.exists(knob_path(name))

    def available_knobs(self) -> list[str]:
        """The knobs of the table that this kernel has."""
        names = set(self.machine.listdir(KSM_DIR))
        return [k.name for k in KNOBS if k.name in names]

    def write_knob(self, name: str, value: KnobValue) -> None:
        """Write one knob, retrying EINTR.

        :raises RefusedWrite: the kernel refused the value (EBUSY, EINVAL), or
            has no such knob (ENOENT: an older kernel).
        """
        data = str(value).encode("ascii")
        while True:
            try:
                self.machine.write(knob_path(name), data)
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno in (errno.EBUSY, errno.EINVAL, errno.ENOENT):
                    raise RefusedWrite(name, value, e.errno) from None
                raise LiveKernelError(f"cannot write {name}={value}: {e.strerror}") from None

    def read_counters(self) -> dict[str, int]:
        """Every integer file of ``/sys/kernel/mm/ksm`` (counters and knobs)."""
        out: dict[str, int] = {}
        for name in sorted(self.machine.listdir(KSM_DIR)):
            try:
                out[name] = int(self.read_text(name))
            except (ValueError, OSError):
                continue
        return out


LOCAL_KSM = KsmFiles(LOCAL)
"""This machine's KSM files."""


def read_text(name: str) -> str:
    return LOCAL_KSM.read_text(name)


def read_int(name: str) -> int:
    return LOCAL_KSM.read_int(name)


def read_knob(name: str) -> KnobValue:
    """One knob's value; ``advisor_mode`` is shown as ``[none] scan-time`` and parsed."""
    return LOCAL_KSM.read_knob(name)


def available_knobs() -> list[str]:
    """The knobs of the table that this kernel has."""
    return LOCAL_KSM.available_knobs()


def write_knob(name: str, value: KnobValue) -> None:
    """Write one knob; raise :class:`RefusedWrite` on EBUSY/EINVAL, retry EINTR."""
    LOCAL_KSM.write_knob(name, value)


def read_counters() -> dict[str, int]:
    """Every integer file of ``/sys/kernel/mm/ksm`` (counters and knobs)."""
    return LOCAL_KSM.read_counters()


def check_usable(page_size: int, machine: Machine = LOCAL) -> None:
    """Refuse early (exit status 5) when ``machine`` cannot replay live."""
    if not machine.is_root():
        raise LiveKernelError("live replay needs root (it writes /sys/kernel/mm/ksm)")
    if not machine.exists(KSM_DIR):
        raise LiveKernelError(f"this kernel has no KSM ({KSM_DIR} is missing)")
    if not machine.access(knob_path("run"), os.W_OK):
        raise LiveKernelError(f"{knob_path('run')} is not writable")
    own = machine.page_size()
    if page_size != own:
        raise LiveKernelError(f"the trace's page size is {page_size} but this machine's is {own}")


def busy_reason(counters: Mapping[str, int]) -> str | None:
    """Why KSM looks in use by someone else, or None when it is idle."""
    if counters.get("run", 0) != 0:
        return f"run is {counters['run']}"
    for name in BUSY_COUNTERS:
        if counters.get(name, 0):
            return f"{name} is {counters[name]}"
    return None


def mergeable_processes() -> list[tuple[int, str]]:
    """Processes with mergeable memory (``ksm_mergeable`` or ``ksm_merge_any`` in
    ``/proc/PID/ksm_stat``), as (pid, command name): ksmd scans their pages
    along with a replay's once ``run`` is 1, so timings and CPU times measured
    meanwhile are theirs too (virtual machines often madvise their memory)."""
    found = []
    for entry in sorted(os.listdir("/proc")):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/ksm_stat", encoding="ascii") as f:
                stat = f.read()
            with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if "ksm_mergeable: yes" in stat or "ksm_merge_any: yes" in stat:
            found.append((int(entry), comm))
    return found


_lock_depth = 0
"""How many :func:`exclusive_lock` blocks of this process are open (the lock is reentrant)."""


@contextmanager
def exclusive_lock(path: str = LOCK_PATH, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive flock on ``path``, waiting at most ``timeout`` seconds.

    Reentrant within one process (a test that holds the lock can call
    :func:`~ksmreplay.live.execute`); ``timeout`` defaults to :data:`LOCK_TIMEOUT_S`.
    """
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    wait = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise LiveKernelError(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LiveKernelError(
                        f"another live replay holds {path} (waited {wait:g} s)"
                    ) from None
                time.sleep(0.05)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class KsmGuard:
    """Ownership of ``/sys/kernel/mm/ksm`` for one replay.

    :meth:`start` records every knob and checks that KSM is idle; :meth:`stop`
    unmerges everything (run=2, then run=0), checks that nothing stays merged
    and writes every recorded knob back.
    """

    def __init__(self, force: bool = False, ksm: KsmFiles = LOCAL_KSM) -> None:
        self.force = force
        self.ksm = ksm
        self.saved: dict[str, KnobValue] = {}
        self.touched = False
        self.start_counters: dict[str, int] = {}

    def start(self) -> None:
        for name in self.ksm.available_knobs():
            self.saved[name] = self.ksm.read_knob(name)
        self.start_counters = self.ksm.read_counters()
        reason = busy_reason(self.start_counters)
        if reason is not None and not self.force:
            raise LiveKernelError(
                f"KSM is in use by other processes ({reason}); use force to override"
            )

    def write(self, name: str, value: KnobValue) -> None:
        """Write a knob (recorded for restoration); may raise :class:`RefusedWrite`."""
        self.touched = True
        self.ksm.write_knob(name, value)

    def unmerge_all(self) -> None:
        """run=2 (synchronous unmerge of everything), then run=0."""
        for _ in range(100):
            try:
                self.ksm.write_knob("run", 2)
                break
            except RefusedWrite:
                time.sleep(0.01)
        self.ksm.write_knob("run", 0)

    def stop(self) -> list[str]:
        """Leave KSM at rest and restore the knobs; returns problems found (empty if none)."""
        problems: list[str] = []
        if not self.touched:
            return problems
        try:
            self.unmerge_all()
        except (LiveKernelError, RefusedWrite) as e:
            problems.append(f"could not stop and unmerge KSM: {e}")
        order = list(RESTORE_ORDER)
        if self.saved.get("advisor_mode") == "scan-time":
            # The advisor owned pages_to_scan (a write of it is refused while
            # the advisor is on) and sets it again when switched on: switch it
            # on last, after the knobs it starts from.
            order = [n for n in order if n not in ("advisor_mode", ADVISOR_OWNS)]
            order.append("advisor_mode")
        for name in order:
            if name not in self.saved:
                continue
            try:
                if self.ksm.read_knob(name) != self.saved[name]:
                    self.ksm.write_knob(name, self.saved[name])
            except (LiveKernelError, RefusedWrite, OSError) as e:
                problems.append(f"could not restore {name}={self.saved[name]}: {e}")
        counters = self.ksm.read_counters()
        for name in ("pages_shared", "pages_sharing", "ksm_zero_pages"):
            if counters.get(name, 0) and not self.force:
                problems.append(f"{name} is {counters[name]} after unmerging")
        original_run = self.saved.get("run", 0)
        if original_run != 0:
            try:
                self.ksm.write_knob("run", original_run)
            except (LiveKernelError, RefusedWrite) as e:
                problems.append(f"could not restore run={original_run}: {e}")
        return problems


def free_leftover_items() -> bool:
    """Free rmap_items that only gone processes left (``pages_volatile`` or
    ``pages_unshared`` above 0 with ``run`` 0, nothing merged, no process with
    mergeable memory: ksmd frees an exited process's items only when it next
    runs), so that a replay does not take KSM for busy.  Holds the live lock;
    writes run=2 then run=0 through :class:`KsmGuard`, every knob restored.
    True if there were such items.
    """
    with exclusive_lock():
        counters = read_counters()
        reason = busy_reason(counters)
        merged = any(
            counters.get(n, 0) for n in ("run", "pages_shared", "pages_sharing", "ksm_zero_pages")
        )
        if reason is None or merged or mergeable_processes():
            return False
        guard = KsmGuard(force=True)
        guard.start()
        guard.touched = True
        problems = guard.stop()
        if problems:
            raise LiveKernelError("; ".join(problems))
        return True
