"""Replay on another kernel: a qemu guest booting a given kernel image (``exec --kernel-image``).

The replay logic stays on the host (``driver.py``); the guest is a
:class:`~ksmreplay.live.machine.Machine` reached through a small agent:

* the initramfs is made here, at run time, without root: a ``newc`` cpio
  archive holding the agent (``native/agent.c``, built statically at
  install, as ``/init``), the live worker (``native/worker.c``, the host's
  own build) and ``/dev/console``, written into the boot's temporary
  directory;
* qemu boots the image with that initramfs, the kernel's console on the
  first serial port (kept in a log, quoted when the guest fails) and the
  agent's channel on the second, connected to a socket pair of ours;
* every file access and worker command of the replay becomes one request to
  the agent and one reply; nothing in the guest guesses or waits on a clock;
* the guest is powered off at the end, and on every path out (an error,
  Ctrl-C, SIGTERM) qemu is killed and its temporary directory removed.

Only the guest's KSM is touched: the host's ``/sys/kernel/mm/ksm`` and its
live lock are left alone.  The kernel needs KSM, an 8250 serial port and
initramfs support built in (``CONFIG_KSM``, ``CONFIG_SERIAL_8250``,
``CONFIG_BLK_DEV_INITRD``, ``CONFIG_DEVTMPFS``, ``CONFIG_PROC_PAGE_MONITOR``),
as Debian's kernels and an x86-64 defconfig have them.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ksmreplay import signals
from ksmreplay.live.kernel import LiveKernelError
from ksmreplay.live.machine import Channel, Machine
from ksmreplay.live.worker import worker_binary

AGENT = Path(__file__).with_name("ksmreplay-agent")
"""The guest's ``/init``, built at install (``native/agent.c``, linked statically)."""
MAGIC = b"KSMREPLAY-AGENT 1"

A_READ = 2
A_PREAD = 3
A_WRITE = 4
A_LISTDIR = 5
A_SPAWN = 6
A_SEND = 7
A_RECV = 8
A_FORK = 9
A_KILL = 10
A_CLOSE = 11
A_POWEROFF = 12
A_ACCESS = 13
A_CALL = 14

MAX_FRAME = 1 << 22
"""Largest frame the agent takes or sends, bytes (its buffers)."""
READ_CHUNK = MAX_FRAME - 64
"""Largest ``pread`` asked for in one request, bytes."""

DEFAULT_MEMORY_MIB = 1024
BOOT_TIMEOUT_S = 300.0
"""Longest wait for the agent's hello after qemu starts (TCG boots in about 10 s)."""
KVM_BOOT_TIMEOUT_S = 30.0
"""With ``accel="auto"``, a KVM guest silent for this long is given up for TCG."""
REQUEST_TIMEOUT_S = 900.0
"""Longest wait for one reply of the agent (a guest that hangs)."""
POWEROFF_TIMEOUT_S = 20.0
"""Longest wait for qemu to end after the guest was asked to power off."""
QEMU_BINARY = {"x86_64": "qemu-system-x86_64"}


class GuestError(LiveKernelError):
    """The guest cannot be booted or stopped answering (exit status 5)."""


def find_qemu(qemu: str | None = None) -> str:
    """The qemu program: ``qemu`` (a path or a name on ``PATH``), or the host's system emulator.

    :raises GuestError: when it cannot be found.
    """
    arch = os.uname().machine
    name = qemu or QEMU_BINARY.get(arch)
    if name is None:
        raise GuestError(f"replaying under qemu is supported on x86_64 hosts only (this is {arch})")
    found = shutil.which(name)
    if found is None:
        hint = "" if qemu else " (Debian: apt-get install qemu-system-x86)"
        raise GuestError(f"qemu not found: {name}{hint}")
    return found


def check_image(image: str) -> Path:
    """The kernel image as a path, if it is a readable file.

    :raises GuestError: missing, not a file, or unreadable.
    """
    path = Path(image)
    if not path.exists():
        raise GuestError(f"kernel image not found: {image}")
    if not path.is_file():
        raise GuestError(f"kernel image is not a file: {image}")
    if not os.access(path, os.R_OK):
        raise GuestError(f"kernel image is not readable: {image}")
    return path


def agent_binary() -> Path:
    """The guest agent built at install; a clear error where it was not."""
    if not os.access(AGENT, os.X_OK):
        raise GuestError(
            f"--kernel-image needs the guest agent, {AGENT}, which was not built at install "
            "(it needs a C compiler and a static C library: reinstall ksmreplay where both are)"
        )
    return AGENT


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One ``newc`` cpio member (owner root, time 0)."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def initramfs_bytes(agent: bytes, worker: bytes) -> bytes:
    """The guest's initramfs: ``/init`` (the agent), ``/worker``, ``/dev/console``, mount points."""
    out = [
        _cpio_entry("dev", 0o040755),
        _cpio_entry("dev/console", 0o020600, rdev=(5, 1)),
        _cpio_entry("proc", 0o040755),
        _cpio_entry("sys", 0o040755),
        _cpio_entry("init", 0o100755, agent),
        _cpio_entry("worker", 0o100755, worker),
        _cpio_entry("TRAILER!!!", 0),
    ]
    data = b"".join(out)
    return data + b"\0" * (-len(data) % 512)


def initramfs(directory: Path) -> Path:
    """The initramfs file, written into ``directory`` (the boot's temporary directory)."""
    data = initramfs_bytes(agent_binary().read_bytes(), worker_binary().read_bytes())
    target = directory / "initramfs.cpio"
    try:
        target.write_bytes(data)
    except OSError as e:
        raise GuestError(f"cannot write the initramfs into {directory}: {e.strerror}") from None
    return target


def kvm_usable() -> bool:
    """Whether ``/dev/kvm`` exists and may be opened for reading and writing."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


class GuestChannel(Channel):
    """A worker in the guest: its socket is held by the agent, by number."""

    def __init__(self, guest: GuestMachine, ident: int) -> None:
        self.guest = guest
        self.ident = ident
        self.open = True

    def send(self, record: bytes) -> None:
        self.guest.request(A_SEND, struct.pack("<I", self.ident) + record)

    def recv(self, size: int) -> bytes:
        return self.guest.request(A_RECV, struct.pack("<II", self.ident, size))

    def call(self, record: bytes, size: int) -> bytes:
        return self.guest.request(A_CALL, struct.pack("<II", self.ident, size) + record)

    def fork(self, record: bytes) -> Channel:
        reply = self.guest.request(A_FORK, struct.pack("<I", self.ident) + record)
        return GuestChannel(self.guest, struct.unpack("<I", reply)[0])

    def kill(self, pid: int) -> None:
        if self.open and self.guest.alive:
            self.open = False
            self.guest.request(A_KILL, struct.pack("<IQ", self.ident, pid))

    def close(self) -> None:
        if self.open and self.guest.alive:
            self.open = False
            self.guest.request(A_CLOSE, struct.pack("<I", self.ident))
        self.open = False


class GuestMachine(Machine):
    """A kernel booted under qemu, driven through its agent (use :func:`boot`)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, console: Path) -> None:
        self.proc = proc
        self.sock = sock
        self.console = console
        self.alive = True
        self._buffer = b""
        self.kernel_release = ""
        self.machine = ""
        self.pagesize = 4096

    # ------------------------------------------------------------ transport

    def console_tail(self, lines: int = 8) -> str:
        """The last lines of the guest's console (for error messages)."""
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)

    def _fail(self, what: str) -> GuestError:
        self.alive = False
        tail = self.console_tail()
        return GuestError(f"the guest {what}" + (f"; its console ends: {tail}" if tail else ""))

    def _read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"did not answer within {timeout:g} s")
            ready, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise self._fail(f"stopped (qemu exited with status {self.proc.returncode})")
                continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise self._fail("closed its channel")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _reply(self, timeout: float) -> tuple[int, bytes]:
        (length,) = struct.unpack("<I", self._read(4, timeout))
        if not 4 <= length <= MAX_FRAME:
            raise self._fail(f"sent a malformed reply (length {length})")
        body = self._read(length, timeout)
        (status,) = struct.unpack("<i", body[:4])
        return status, body[4:]

    def request(self, op: int, body: bytes = b"", path: str | None = None) -> bytes:
        """One request to the agent; its reply's data.

        :raises OSError: the agent's operation failed with that errno (``path`` names it).
        :raises GuestError: the guest is gone or does not answer.
        """
        if not self.alive:
            raise GuestError("the guest is no longer running")
        frame = struct.pack("<IB", len(body) + 1, op) + body
        if len(frame) > MAX_FRAME:
            raise GuestError(f"a request of {len(frame)} bytes is too large for the guest agent")
        try:
            self.sock.sendall(frame)
            status, data = self._reply(REQUEST_TIMEOUT_S)
        except OSError as e:
            raise self._fail(f"channel failed: {e.strerror}") from None
        except BaseException:
            # A stop signal between a request and its reply: the channel is out
            # of step, and the guest is given up (stop() kills it).
            self.alive = False
            raise
        if status < 0:
            raise OSError(-status, os.strerror(-status), path)
        return data

    def hello(self, timeout: float) -> None:
        """Wait for the agent's first frame: the kernel's release, the machine, the page size."""
        status, data = self._reply(timeout)
        parts = data.split(b"\0")
        if status != 0 or len(parts) < 4 or parts[0] != MAGIC:
            raise self._fail("did not start the ksmreplay agent")
        self.kernel_release = parts[1].decode("ascii", "replace")
        self.machine = parts[2].decode("ascii", "replace")
        self.pagesize = int(parts[3])

    # -------------------------------------------------------------- machine

    def read(self, path: str) -> bytes:
        return self.request(A_READ, path.encode() + b"\0", path)

    def pread(self, path: str, offset: int, length: int) -> bytes:
        out = []
        while length > 0:
            n = min(length, READ_CHUNK)
            head = struct.pack("<QI", offset, n)
            data = self.request(A_PREAD, head + path.encode() + b"\0", path)
            out.append(data)
            if len(data) < n:
                break
            offset += n
            length -= n
        return b"".join(out)

    def write(self, path: str, data: bytes) -> None:
        encoded = path.encode()
        self.request(A_WRITE, struct.pack("<I", len(encoded)) + encoded + data, path)

    def listdir(self, path: str) -> list[str]:
        data = self.request(A_LISTDIR, path.encode() + b"\0", path)
        return [name.decode("utf-8", "replace") for name in data.split(b"\0") if name]

    def access(self, path: str, mode: int) -> bool:
        try:
            self.request(A_ACCESS, struct.pack("<I", mode) + path.encode() + b"\0", path)
        except OSError:
            return False
        return True

    def spawn_worker(self) -> Channel:
        reply = self.request(A_SPAWN)
        return GuestChannel(self, struct.unpack("<I", reply)[0])

    def release(self) -> str:
        return self.kernel_release

    def arch(self) -> str:
        return self.machine

    def is_root(self) -> bool:
        return True  # the agent is the guest's init

    def page_size(self) -> int:
        return self.pagesize

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        """Power the guest off (kill qemu if it does not end in time) and wait for qemu.

        A guest that stopped answering, or whose channel a stop signal left out
        of step, is killed at once.
        """
        if self.alive:
            self.alive = False
            try:
                self.sock.sendall(struct.pack("<IB", 1, A_POWEROFF))
                self._reply(POWEROFF_TIMEOUT_S)
                powered_off = True
            except (OSError, GuestError):
                powered_off = False
            if powered_off:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=POWEROFF_TIMEOUT_S)
        kill(self.proc)
        self.sock.close()


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL qemu if it still runs, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
    proc.wait()


def qemu_command(
    qemu: str, image: Path, initrd: Path, console: Path, fd: int, memory_mib: int, accel: str
) -> list[str]:
    """The qemu command line of one guest (``fd``: our socket pair end for the agent's port)."""
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-accel",
        accel,
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-smp",
        "1",
        "-m",
        f"{memory_mib}M",
        "-kernel",
        str(image),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 loglevel=4 panic=-1 rdinit=/init",
        "-serial",
        f"file:{console}",
        "-chardev",
        f"socket,id=agent,fd={fd}",
        "-serial",
        "chardev:agent",
    ]


def _start(
    qemu: str, image: Path, initrd: Path, tmp: Path, memory_mib: int, accel: str, timeout: float
) -> GuestMachine:
    console = tmp / f"console-{accel}.log"
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        command = qemu_command(qemu, image, initrd, console, theirs.fileno(), memory_mib, accel)
        try:
            with open(tmp / f"qemu-{accel}.err", "wb") as err:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    pass_fds=(theirs.fileno(),),
                    # Not in our process group: a Ctrl-C reaches us, and we end qemu.
                    start_new_session=True,
                )
        except OSError as e:
            raise GuestError(f"cannot run {qemu}: {e.strerror}") from None
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    guest = GuestMachine(proc, mine, console)
    try:
        guest.hello(timeout)
    except BaseException as exc:
        kill(proc)
        mine.close()
        if isinstance(exc, GuestError):
            said = (tmp / f"qemu-{accel}.err").read_text(errors="replace").strip()
            if said:
                raise GuestError(f"qemu failed: {said.splitlines()[-1]}") from None
        raise
    return guest


@contextmanager
def boot(
    image: str,
    *,
    qemu: str | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    accel: str = "auto",
) -> Iterator[GuestMachine]:
    """Boot ``image`` under qemu and yield the guest, ready for requests; stop it on the way out.

    :param image: a bootable kernel image (``bzImage``, ``vmlinuz``).
    :param qemu: the qemu program (default ``qemu-system-x86_64`` on ``PATH``).
    :param memory_mib: the guest's memory, MiB.
    :param accel: ``kvm``, ``tcg``, or ``auto``: KVM when ``/dev/kvm`` may be
        used and the guest answers within :data:`KVM_BOOT_TIMEOUT_S`, TCG
        otherwise.
    :raises GuestError: (exit status 5) no qemu, no image, no compiler, or the
        guest did not boot into the agent (the message quotes its console).

    On every way out (also an exception or a stop signal raised inside the
    block) qemu is ended and the temporary directory removed.
    """
    program = find_qemu(qemu)
    path = check_image(image)
    agent_binary()  # before anything is made: a missing agent is a plain error
    tmp = Path(tempfile.mkdtemp(prefix="ksmreplay-guest-"))
    guest: GuestMachine | None = None
    try:
        initrd = initramfs(tmp)
        if accel == "auto":
            if kvm_usable():
                with contextlib.suppress(GuestError):
                    guest = _start(
                        program, path, initrd, tmp, memory_mib, "kvm", KVM_BOOT_TIMEOUT_S
                    )
            if guest is None:
                guest = _start(program, path, initrd, tmp, memory_mib, "tcg", BOOT_TIMEOUT_S)
        else:
            guest = _start(program, path, initrd, tmp, memory_mib, accel, BOOT_TIMEOUT_S)
        yield guest
    finally:
        with signals.held():
            if guest is not None:
                guest.stop()
            shutil.rmtree(tmp, ignore_errors=True)
