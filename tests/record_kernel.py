"""Record the live kernel's answer to the traces of a directory (needs root and KSM).

    .venv/bin/python tests/record_kernel.py DIR [--runs N] [NAME ...]

For the scenarios (``tests/scenarios``), the ported selftests
(``tests/selftests``) and the golden cases (``tests/cases``).  Replays each
4 KiB ``NAME.jsonl`` of DIR (or only the NAMEs given) on the running kernel
``--runs`` times (default 2) through ``ksmreplay.live.execute``, which holds
the live-kernel lock and restores KSM afterwards; refuses to record a trace
whose reports differ between runs; and writes ``NAME.kernel.json`` with the
trace path normalised to the file name.  Traces of other page sizes cannot run
on this kernel and are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ksmreplay.live import execute
from ksmreplay.trace import open_trace


def live_names(directory: Path) -> list[str]:
    """The traces of ``directory`` that the live kernel can run (4 KiB pages)."""
    names = []
    for path in sorted(directory.glob("*.jsonl")):
        with open_trace(str(path)) as reader:
            if reader.header.page_size == 4096:
                names.append(path.name[: -len(".jsonl")])
    return names


def replay(directory: Path, name: str) -> dict[str, Any]:
    with open_trace(str(directory / f"{name}.jsonl")) as reader:
        report: dict[str, Any] = dict(execute(reader))
    report["trace"]["path"] = f"{name}.jsonl"
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("names", nargs="*")
    args = parser.parse_intermixed_args()
    unstable = []
    directory: Path = args.dir
    for name in args.names or live_names(directory):
        reports = [replay(directory, name) for _ in range(args.runs)]
        same = len({json.dumps(r, sort_keys=True) for r in reports}) == 1
        print(f"{name}: {'ok' if same else 'NOT REPRODUCIBLE'}", flush=True)
        if same:
            (directory / f"{name}.kernel.json").write_text(json.dumps(reports[0], indent=1) + "\n")
        else:
            unstable.append(name)
    return 1 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
