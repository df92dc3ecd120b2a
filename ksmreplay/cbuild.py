"""Compile a C file of the package once per version into the user's cache.

The live worker and the optional decoding accelerator are small C files that
ship as source and are built with the machine's C compiler on first use; the
result is kept under ``$XDG_CACHE_HOME/ksmreplay`` (or ``~/.cache/ksmreplay``),
named by a digest of the source and the flags, so that a changed source is
rebuilt and concurrent first uses cannot see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


class BuildError(Exception):
    """No compiler, or the compiler failed; the message says which."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ksmreplay"


def build(
    sources: Sequence[Path], cflags: Sequence[str], stem: str, headers: Sequence[Path] = ()
) -> Path:
    """``sources`` compiled into one file (``cache_dir()/stem-DIGEST``), built if needed.

    The digest covers the sources, the ``headers`` they include and the flags.

    :raises BuildError: when no compiler is found (``$CC``, ``gcc``, ``cc``),
        the cache directory cannot be created, or the compiler fails.
    """
    text = b"".join(source.read_bytes() for source in (*sources, *headers))
    digest = hashlib.sha256(text + " ".join(cflags).encode()).hexdigest()[:16]
    target = cache_dir() / f"{stem}-{digest}"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BuildError("no C compiler found (gcc or cc)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot create {target.parent}: {e.strerror}") from None
    try:
        result = subprocess.run(
            [cc, *cflags, "-o", tmp, *map(str, sources)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            names = ", ".join(source.name for source in sources)
            raise BuildError(f"{cc} failed on {names}: {first}")
        os.replace(tmp, target)
    except OSError as e:
        raise BuildError(f"cannot run {cc}: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
