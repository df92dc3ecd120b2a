"""``exec --kernel-image`` without booting anything: its errors and the initramfs it builds.

These run in ``make test``; ``tests/test_qemu.py`` boots real guests (``make test-qemu``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from testdata import SCENARIOS_DIR

from ksmreplay.cli import cli
from ksmreplay.live.qemu import initramfs_bytes, qemu_command

SCENARIO = SCENARIOS_DIR / "example_a_pair_merge.jsonl"


def exec_args(*extra: str) -> list[str]:
    return ["exec", str(SCENARIO), "--format", "json", *extra]


def test_missing_qemu_is_one_line_and_status_5(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"not a kernel")
    missing = tmp_path / "no-such-qemu"
    result = CliRunner().invoke(
        cli, exec_args("--kernel-image", str(image), "--qemu", str(missing))
    )
    assert result.exit_code == 5
    assert result.stderr == f"ksmreplay: qemu not found: {missing}\n"
    assert result.stdout == ""


def test_missing_image_is_one_line_and_status_5(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text("#!/bin/sh\nexit 1\n")
    fake_qemu.chmod(0o755)
    missing = tmp_path / "bzImage"
    result = CliRunner().invoke(
        cli, exec_args("--kernel-image", str(missing), "--qemu", str(fake_qemu))
    )
    assert result.exit_code == 5
    assert result.stderr == f"ksmreplay: kernel image not found: {missing}\n"


def test_image_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text("#!/bin/sh\nexit 1\n")
    fake_qemu.chmod(0o755)
    result = CliRunner().invoke(
        cli, exec_args("--kernel-image", str(tmp_path), "--qemu", str(fake_qemu))
    )
    assert result.exit_code == 5
    assert result.stderr == f"ksmreplay: kernel image is not a file: {tmp_path}\n"


def test_qemu_without_image_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, exec_args("--qemu", "qemu-system-x86_64"))
    assert result.exit_code == 2
    assert "--qemu needs --kernel-image" in result.stderr


def test_qemu_that_fails_at_once_is_reported_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a "qemu" that prints an error and exits, WHEN exec boots it, THEN
    its last line of stderr is the message (status 5), and the guest's
    temporary directory is gone."""
    args_file = tmp_path / "args"
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text(
        f'#!/bin/sh\necho "$@" > {args_file}\necho "qemu: could not load kernel" >&2\nexit 1\n'
    )
    fake_qemu.chmod(0o755)
    image = tmp_path / "bzImage"
    image.write_bytes(b"not a kernel")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    result = CliRunner().invoke(
        cli,
        exec_args("--kernel-image", str(image), "--qemu", str(fake_qemu), "--accel", "tcg"),
    )
    assert result.exit_code == 5, result.output
    assert result.stderr == "ksmreplay: qemu failed: qemu: could not load kernel\n"
    assert f"-kernel {image} " in args_file.read_text()
    assert f"file:{tmp}/ksmreplay-guest-" in args_file.read_text()
    assert list(tmp.iterdir()) == []


def parse_cpio(data: bytes) -> dict[str, tuple[int, tuple[int, int], bytes]]:
    """name -> (mode, (rdevmajor, rdevminor), data) of a newc archive."""
    out: dict[str, tuple[int, tuple[int, int], bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_at = pos + 110
        name = data[name_at : name_at + namesize - 1].decode()
        body_at = name_at + namesize + (-(110 + namesize) % 4)
        body = data[body_at : body_at + size]
        pos = body_at + size + (-size % 4)
        if name == "TRAILER!!!":
            break
        out[name] = (mode, (rmaj, rmin), body)
    assert len(data) % 512 == 0
    assert set(data[pos:]) <= {0}
    return out


def test_initramfs_holds_the_agent_the_worker_and_a_console() -> None:
    entries = parse_cpio(initramfs_bytes(b"\x7fELF agent", b"\x7fELF worker!"))
    assert entries["init"] == (stat.S_IFREG | 0o755, (0, 0), b"\x7fELF agent")
    assert entries["worker"] == (stat.S_IFREG | 0o755, (0, 0), b"\x7fELF worker!")
    assert entries["dev/console"][:2] == (stat.S_IFCHR | 0o600, (5, 1))
    for directory in ("dev", "proc", "sys"):
        assert entries[directory][0] == stat.S_IFDIR | 0o755
    assert sorted(entries) == ["dev", "dev/console", "init", "proc", "sys", "worker"]


def test_qemu_command_keeps_the_console_and_the_agent_apart(tmp_path: Path) -> None:
    command = qemu_command(
        "qemu-system-x86_64",
        tmp_path / "bzImage",
        tmp_path / "initrd.cpio",
        tmp_path / "console.log",
        7,
        512,
        "tcg",
    )
    serials = [command[i + 1] for i, arg in enumerate(command) if arg == "-serial"]
    assert serials == [f"file:{tmp_path / 'console.log'}", "chardev:agent"]
    assert "socket,id=agent,fd=7" in command
    assert command[command.index("-accel") + 1] == "tcg"
    assert "-cpu" not in command
    append = command[command.index("-append") + 1]
    assert "console=ttyS0" in append.split()
    assert command[command.index("-m") + 1] == "512M"
    assert os.path.basename(command[0]) == "qemu-system-x86_64"
