"""Install ksmreplay as its users do, and check what they get (``make install-check``).

    python3 tests/install_check.py

Builds and installs the package from this source tree with pip (a wheel, not
editable) into a fresh virtual environment, twice:

* with the machine's C compiler: ``ksmreplay --version`` must name the native
  core, and the live worker must be there;
* with no C compiler (``CC`` set to a program that fails): the install must
  still succeed, ``--version`` must name the scalar path, and a replay must
  say so once on stderr;

and both must replay the bundled demo trace to the same report, byte for
byte; the wheel must carry the report schema (``ksmreplay schema``).  Exits 0
when all holds, else 1 with what did not.  Needs pip's index (or its cache) for
the build requirements and the dependencies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "traces" / "demo.msgpack"


SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "ksmreplay-worker"
)
"""What a copy of the source tree leaves out: anything a build or an install made."""


def install(venv: Path, env: dict[str, str]) -> Path:
    """A fresh venv at ``venv`` with ksmreplay installed from a clean copy of
    ``ROOT`` (setuptools builds in the tree: a build must not see another's);
    its ksmreplay."""
    source = venv.with_name(venv.name + "-src")
    shutil.copytree(ROOT, source, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-cache-dir", str(source)], check=True, env=env)
    return venv / "bin" / "ksmreplay"


def run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), *args], capture_output=True, text=True, check=False, cwd="/"
    )


def main() -> int:
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ}
        base.pop("KSMREPLAY_NATIVE", None)
        native = install(Path(tmp) / "native", base)
        scalar = install(Path(tmp) / "scalar", {**base, "CC": "false", "LDSHARED": "false"})

        version = run(native, "--version")
        if "engine: native core" not in version.stdout:
            problems.append(f"with a compiler, --version says: {version.stdout!r}")
        site = "lib/python*/site-packages"
        worker = Path(tmp, "native").glob(f"{site}/ksmreplay/live/ksmreplay-worker")
        if not any(os.access(w, os.X_OK) for w in worker):
            problems.append("with a compiler, the live worker was not installed")
        version = run(scalar, "--version")
        if "engine: scalar (the native core was not built" not in version.stdout:
            problems.append(f"without a compiler, --version says: {version.stdout!r}")

        schema = run(native, "schema")
        if schema.returncode != 0 or '"$schema"' not in schema.stdout:
            problems.append(f"the report schema is not in the wheel: {schema.stderr!r}")

        reports = {}
        for name, program in (("native", native), ("scalar", scalar)):
            done = run(program, "run", "--format", "json", str(DEMO))
            if done.returncode != 0:
                problems.append(f"{name}: run failed ({done.returncode}): {done.stderr}")
            reports[name] = done.stdout
            notes = done.stderr.count("engine: scalar")
            if notes != (name == "scalar"):
                problems.append(f"{name}: the scalar path was named {notes} times: {done.stderr!r}")
        if reports["native"] != reports["scalar"]:
            problems.append("the two installs give different reports for the demo trace")
    for problem in problems:
        print(f"install-check: {problem}", file=sys.stderr)
    print("install-check: " + ("FAILED" if problems else "ok: native and scalar installs agree"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
