"""Boot small QEMU guests and record them booting and idling: what made ``recorded-guests.msgpack``.

    .venv/bin/python traces/recorded_guests.py [-o FILE] [--guests N] [--memory-mib MIB]
        [--duration 45s] [--interval 1s] [--kernel 6.12 | --kernel-image PATH] [--prealloc]

Each guest is ``qemu-system-x86_64`` with TCG (no KVM needed), one CPU,
``--memory-mib`` of RAM, booting a Debian kernel image (``make kernels``
fetches them; ``--kernel`` picks one) with the initramfs that ``exec
--kernel-image`` boots: the guest agent as ``/init``, which mounts ``/proc``,
says hello on the second serial port and then waits for requests that never
come.  So a guest boots its kernel, runs one tiny program and idles.

As soon as the guests are started, ``ksmreplay record --as-is --pid ...`` of
their qemu processes records them for ``--duration`` (boot included): with
``--as-is`` only what QEMU itself madvised mergeable (the guest's RAM, with
QEMU's default ``mem-merge=on``) is mergeable in the trace; QEMU's own heap
and translated code are recorded but never merged, as on a real host.  The
guests are powered off when the recording ends, and killed on any way out.

``--prealloc`` makes QEMU touch every page of guest RAM at start
(``-mem-prealloc``), so that every page is present from the first sample: the
way to measure what a sample of a guest of several GiB costs (the script
prints the recorder's peak RSS and the samples' pace).

Prints the guests' boot times (from the recorder's start, which is about the
trace's t=0), ``record``'s closing summary and the peak RSS of the recorder.
On every way out (an error, Ctrl-C, SIGTERM) the recorder is ended and every
qemu is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qemu_kernels import image_path

from ksmreplay import signals
from ksmreplay.live import qemu


def start_guest(
    program: str, image: Path, initrd: Path, tmp: Path, k: int, memory_mib: int, prealloc: bool
) -> qemu.GuestMachine:
    """Start guest ``k`` (not waiting for its boot)."""
    console = tmp / f"console-{k}.log"
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        command = qemu.qemu_command(
            program, image, initrd, console, theirs.fileno(), memory_mib, "tcg"
        )
        if prealloc:
            command.append("-mem-prealloc")
        with open(tmp / f"qemu-{k}.err", "wb") as err:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return qemu.GuestMachine(proc, mine, console)


def main() -> int:
    with signals.raising():  # Ctrl-C, SIGTERM: the guests are killed all the same
        return run()


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="traces/recorded-guests.msgpack")
    parser.add_argument("--guests", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--duration", default="45s")
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--kernel", default="6.12", help="a version `make kernels` fetched")
    parser.add_argument("--kernel-image", type=Path, help="a kernel image (instead of --kernel)")
    parser.add_argument("--prealloc", action="store_true", help="QEMU touches all guest RAM")
    args = parser.parse_args()

    image = args.kernel_image or image_path(args.kernel)
    if not image.is_file():
        sys.exit(f"no kernel image {image}: run `make kernels` first")
    program = qemu.find_qemu()
    tmp = Path(tempfile.mkdtemp(prefix="ksmreplay-guests-"))
    guests: list[qemu.GuestMachine] = []
    recorder: subprocess.Popen[bytes] | None = None
    try:
        initrd = qemu.initramfs(tmp)
        began = time.monotonic()
        for k in range(args.guests):
            guests.append(
                start_guest(program, image, initrd, tmp, k, args.memory_mib, args.prealloc)
            )
        pids = [str(g.proc.pid) for g in guests]
        command = [sys.executable, "-m", "ksmreplay", "record", "--as-is"]
        command += [word for pid in pids for word in ("--pid", pid)]
        command += ["--interval", args.interval, "--duration", args.duration, "-o", args.output]
        print("$", " ".join(command[1:]), flush=True)
        recorder = subprocess.Popen(command)
        recording = time.monotonic()
        print(f"guests started {recording - began:.1f} s before the recorder", flush=True)
        for k, guest in enumerate(guests):
            guest.hello(qemu.BOOT_TIMEOUT_S)
            print(
                f"guest {k} (pid {guest.proc.pid}): Linux {guest.kernel_release} booted "
                f"{time.monotonic() - recording:.1f} s after the recorder started",
                flush=True,
            )
        _, status, usage = os.wait4(recorder.pid, 0)
        recorder.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss / 1024  # KiB on Linux
        print(f"record: exit status {recorder.returncode}, peak RSS {peak:.0f} MiB")
        return recorder.returncode
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(10)
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
        with signals.held():
            for guest in guests:
                guest.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
