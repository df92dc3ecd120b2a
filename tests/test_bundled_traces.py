"""Every trace shipped in traces/ is valid and replays into a report.

GIVEN each bundled trace (demo, synth workloads, recordings, ported
selftests), WHEN it is validated and replayed in every mode, THEN the report
has one run per mode with a final snapshot, and the engine's invariants hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import quick, replay_path

from ksmreplay.replay import expand_modes

TRACES = Path(__file__).parent.parent / "traces"
BUNDLED = quick(sorted(TRACES.glob("*.msgpack"))) + sorted((TRACES / "selftests").glob("*.jsonl"))


def test_the_bundle_has_demo_recordings_and_selftests() -> None:
    names = {p.name for p in BUNDLED}
    assert "demo.msgpack" in names
    assert len([n for n in names if n.startswith("recorded-")]) >= 2
    assert any(p.parent.name == "selftests" for p in BUNDLED)


@pytest.mark.parametrize("path", BUNDLED, ids=[str(p.relative_to(TRACES)) for p in BUNDLED])
def test_bundled_trace_replays(path: Path) -> None:
    assert path.stat().st_size <= 5 * 1024 * 1024
    modes = expand_modes(["all"])
    report = replay_path(path, modes)
    assert [run["mode"] for run in report["runs"]] == list(modes)
    for run in report["runs"]:
        assert run["final"]["label"] == "final"
        assert run["final"]["ksm"]["full_scans"] >= 0
