"""Golden files: compare an output with its reviewed copy, or rewrite it.

``KSMREPLAY_UPDATE_GOLDEN=1`` rewrites every golden file a test checks
(review the diff before committing); otherwise a test fails on any byte of
difference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from ksmreplay.cli import cli

UPDATE = os.environ.get("KSMREPLAY_UPDATE_GOLDEN") == "1"


def check_golden(target: Path, got: str) -> None:
    """Assert ``got`` is the content of ``target`` (or rewrite it when updating)."""
    if UPDATE:
        target.write_bytes(got.encode())
        return
    assert got == target.read_bytes().decode()


def run_report(trace: Path, mode: str) -> str:
    """``ksmreplay run TRACE --mode MODE --format json``, with the trace path cut to its name."""
    result = CliRunner().invoke(
        cli,
        ["run", str(trace), "--mode", mode, "--format", "json", "--check-invariants"],
        prog_name="ksmreplay",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trace"]["path"] == str(trace)
    report["trace"]["path"] = trace.name
    return json.dumps(report, indent=2) + "\n"
