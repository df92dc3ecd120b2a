"""Record the live kernel's answer to every scenario (needs root and KSM).

    .venv/bin/python tests/scenarios/record.py [--runs N] [NAME ...]

Replays each ``NAME.jsonl`` of this directory on the running kernel ``--runs``
times (default 2), refuses to record a scenario whose reports differ between
runs, and writes ``NAME.kernel.json`` (the report, with the ``kernel`` and
``path`` fields normalised so the file does not depend on the machine's exact
kernel build or the working directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from ksmreplay.live import execute  # noqa: E402
from ksmreplay.trace import open_trace  # noqa: E402


def replay(name: str) -> dict[str, Any]:
    with open_trace(str(HERE / f"{name}.jsonl")) as reader:
        report: dict[str, Any] = dict(execute(reader))
    return normalise(report, name)


def normalise(report: dict[str, Any], name: str) -> dict[str, Any]:
    report["trace"]["path"] = f"{name}.jsonl"
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    names = args.names or sorted(p.name[: -len(".jsonl")] for p in HERE.glob("*.jsonl"))
    unstable = []
    for name in names:
        reports = [replay(name) for _ in range(args.runs)]
        texts = {json.dumps(r, sort_keys=True) for r in reports}
        same = len(texts) == 1
        status = "ok" if same else "NOT REPRODUCIBLE"
        print(f"{name}: {status}", flush=True)
        if same:
            (HERE / f"{name}.kernel.json").write_text(json.dumps(reports[0], indent=1) + "\n")
        else:
            unstable.append(name)
    return 1 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
