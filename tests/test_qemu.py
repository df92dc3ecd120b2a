"""``exec --kernel-image`` booting real guests (``make test-qemu``; never in ``make test``).

Runs only when ``KSMREPLAY_TEST_QEMU=1`` (the make target sets it), qemu is
installed and the images of ``tests/qemu_kernels.py`` were fetched; skipped
otherwise.  ``KSMREPLAY_TEST_QEMU_ACCEL`` picks the accelerator (default
``auto``; ``tcg`` saves the 30 s that ``auto`` waits where KVM guests hang).

GIVEN a small scenario and its recorded answer of Linux 6.1 or 6.12, WHEN
``exec --kernel-image`` replays it in a guest booting that kernel, THEN the
report is the recorded one, the host's KSM was not touched (its knobs are
unchanged and its live lock was held by this test all along), and no qemu
process or temporary directory is left; the same cleanup after an error and
after SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu_kernels import SUITES, image_path
from testdata import SCENARIOS_DIR

from ksmreplay.live import kernel

HERE = Path(__file__).parent
REPO = HERE.parent
SCENARIO = "example_a_pair_merge"
ACCEL = os.environ.get("KSMREPLAY_TEST_QEMU_ACCEL", "auto")

if os.environ.get("KSMREPLAY_TEST_QEMU") != "1":
    pytest.skip("boots qemu: run with make test-qemu", allow_module_level=True)
if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)
VERSIONS = [v for v in SUITES if image_path(v).exists()]
if not VERSIONS:
    pytest.skip("no kernel image: run tests/qemu_kernels.py", allow_module_level=True)


def host_ksm() -> dict[str, str]:
    """Every file of the host's /sys/kernel/mm/ksm (empty without KSM)."""
    ksm = Path(kernel.KSM_DIR)
    if not ksm.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(ksm.iterdir()) if p.name != "full_scans"}


def qemu_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and whose command is qemu."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        ppid = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")
        )
        if ppid == pid and comm.startswith("qemu"):
            found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def host_lock_held() -> Iterator[None]:
    """Hold the host's live lock: an exec that took it would wait and fail."""
    if not os.access(os.path.dirname(kernel.LOCK_PATH), os.W_OK):
        yield
        return
    with kernel.exclusive_lock():
        yield


def ksmreplay(*args: str, tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-m", "ksmreplay", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_scenario_matches_the_recorded_answer(
    version: str, tmp_path: Path, host_lock_held: None
) -> None:
    expected: dict[str, Any] = json.loads(
        (SCENARIOS_DIR / f"{SCENARIO}.kernel-{version}.json").read_text()
    )
    before = host_ksm()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    trace = SCENARIOS_DIR / f"{SCENARIO}.jsonl"
    child = ksmreplay(
        "exec", str(trace), "--kernel-image", str(image_path(version)), "--accel", ACCEL,
        "--format", "json", tmp=tmp,
    )  # fmt: skip
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr
    got = json.loads(stdout)
    got["trace"]["path"] = f"{SCENARIO}.jsonl"
    assert got == expected
    assert got["runs"][0]["kernel"].startswith(version + ".")
    assert host_ksm() == before
    assert list(tmp.iterdir()) == []


def test_error_in_the_guest_stops_it(tmp_path: Path) -> None:
    """A mapping the guest's kernel refuses (larger than its memory): status 5, guest ended."""
    trace = tmp_path / "t.jsonl"
    lines: list[Any] = [
        {"ksmreplay": 1},
        [0, "alloc", 1, 0x10000, 512 << 20],
        [0, "write", 1, 0x10000, 512 << 20, 7],
    ]
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    child = ksmreplay(
        "exec", str(trace), "--kernel-image", str(image_path(VERSIONS[0])), "--accel", ACCEL,
        "--guest-memory", "160", tmp=tmp,
    )  # fmt: skip
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 5, stderr
    assert stderr.startswith("ksmreplay: live worker ")
    assert stderr.endswith("failed: Cannot allocate memory\n")
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_ends_the_guest(sig: signal.Signals, tmp_path: Path) -> None:
    """GIVEN exec waiting in a guest for a snapshot a minute away, WHEN a stop
    signal comes, THEN ksmreplay ends by that signal, quietly, and takes its
    qemu and temporary directory with it."""
    trace = tmp_path / "t.jsonl"
    lines: list[Any] = [
        {"ksmreplay": 1},
        [0, "ksm", {"pages_to_scan": 1000, "run": 1}],
        [0, "alloc", 1, 0x10000, 8 * 4096],
        [0, "write", 1, 0x10000, 8 * 4096, 0x77],
        [0, "madvise", 1, 0x10000, 8 * 4096, "mergeable"],
        [0, "settle"],
        [0, "snapshot", "settled"],
        [60_000_000_000, "snapshot", "late"],
    ]
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out.json"
    child = ksmreplay(
        "exec", str(trace), "--kernel-image", str(image_path(VERSIONS[0])), "--accel", ACCEL,
        "-o", str(out), tmp=tmp,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        qemu: list[int] = []
        # Wait for the first qemu, then long enough for a TCG guest to boot and
        # settle (about 10 s here): the signal most likely comes during the
        # minute of waiting, and the cleanup must hold wherever it comes.
        while not qemu:
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "no qemu started"
            qemu = qemu_children(child.pid)
            time.sleep(0.2)
        time.sleep(20)
        assert child.poll() is None, child.communicate()[1]
        qemu += qemu_children(child.pid)
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert (child.returncode, stderr) == (-sig, "")
    assert all(gone(pid) for pid in qemu)
    assert list(tmp.iterdir()) == []
    assert not out.exists()
