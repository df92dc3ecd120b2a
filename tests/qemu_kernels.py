"""Fetch the Debian kernels that ``exec --kernel-image`` is checked against (6.1 and 6.12).

    .venv/bin/python tests/qemu_kernels.py [--dir DIR] [VERSION ...]

VERSION is ``6.1`` (Debian 12, bookworm) or ``6.12`` (Debian 13, trixie);
both by default.  For each, the current ``linux-image-cloud-amd64`` of that
release is downloaded with apt through a private sources list (the
machine's own apt sources and lists are not touched), unpacked with
``dpkg-deb``, its configuration checked for what the guest needs built in
(KSM, the 8250 serial port, initramfs, devtmpfs, page flags in /proc), and
its image copied to ``DIR/vmlinuz-VERSION`` (default: the ``kernels``
directory of ksmreplay's cache, ``~/.cache/ksmreplay/kernels``), where
``make test-qemu`` and ``tests/record_kernel.py`` look for it.  Needs
``apt-get``, ``dpkg-deb`` and Debian's archive keyring (Debian and its
derivatives have them); not root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUITES = {"6.1": "bookworm", "6.12": "trixie"}
"""Kernel series -> the Debian release that ships it."""
META_PACKAGE = "linux-image-cloud-amd64"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
REQUIRED = (
    "CONFIG_KSM",
    "CONFIG_SERIAL_8250",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_PROC_PAGE_MONITOR",
)
"""Options the guest needs built in (=y): it loads no modules."""


def kernels_dir() -> Path:
    """Where the fetched images are kept (``$XDG_CACHE_HOME/ksmreplay/kernels``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ksmreplay" / "kernels"


def image_path(version: str, directory: Path | None = None) -> Path:
    """The image of ``version`` (fetched or not)."""
    return (directory or kernels_dir()) / f"vmlinuz-{version}"


def _apt(tmp: Path, suite: str) -> list[str]:
    """apt options that use only a private sources list and private package lists."""
    sources = tmp / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
    (tmp / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (tmp / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return [
        "-o",
        f"Dir::Etc::sourcelist={sources}",
        "-o",
        "Dir::Etc::sourceparts=-",
        "-o",
        f"Dir::State::Lists={tmp / 'lists'}",
        "-o",
        f"Dir::Cache={tmp / 'cache'}",
        "-o",
        "Dir::Cache::pkgcache=",
        "-o",
        "Dir::Cache::srcpkgcache=",
        "-o",
        "Debug::NoLocking=1",
    ]


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:2])} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def check_config(config: Path) -> list[str]:
    """The options of :data:`REQUIRED` that ``config`` does not build in."""
    built_in = {
        line.split("=", 1)[0]
        for line in config.read_text().splitlines()
        if line.startswith("CONFIG_") and line.endswith("=y")
    }
    return [name for name in REQUIRED if name not in built_in]


def fetch(version: str, directory: Path) -> Path:
    """Download, unpack, check and install the image of ``version``; return its path."""
    suite = SUITES[version]
    with tempfile.TemporaryDirectory(prefix="ksmreplay-kernel-") as name:
        tmp = Path(name)
        options = _apt(tmp, suite)
        _run(["apt-get", *options, "update"])
        depends = _run(["apt-cache", *options, "depends", META_PACKAGE])
        package = next(
            (
                line.split(":", 1)[1].strip()
                for line in depends.splitlines()
                if line.strip().startswith("Depends: linux-image-")
            ),
            None,
        )
        if package is None:
            raise SystemExit(f"{META_PACKAGE} of {suite} names no kernel package")
        _run(["apt-get", *options, "download", package], cwd=tmp)
        (deb,) = tmp.glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
        (config,) = (tmp / "root" / "boot").glob("config-*")
        (vmlinuz,) = (tmp / "root" / "boot").glob("vmlinuz-*")
        missing = check_config(config)
        if missing:
            raise SystemExit(f"{package} does not build in {', '.join(missing)}")
        directory.mkdir(parents=True, exist_ok=True)
        target = image_path(version, directory)
        shutil.copyfile(config, directory / f"config-{version}")
        partial = target.with_name(f".{target.name}.part")
        shutil.copyfile(vmlinuz, partial)
        os.replace(partial, target)
        print(f"{version}: {package} ({deb.name}) -> {target}", flush=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to put the images")
    parser.add_argument("versions", nargs="*", choices=[[], *SUITES], default=[])
    args = parser.parse_args()
    for version in args.versions or list(SUITES):
        fetch(version, args.dir or kernels_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
