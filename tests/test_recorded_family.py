"""The bundled recording of processes that share content (traces/recorded-family.msgpack).

``traces/recorded_family.py`` is the program it recorded (four processes, each
filling 4 MiB with zeros, pages all four hold and pages of its own, then
rewriting some of its own pages); ``traces/README.md`` has the command.  The
recording stands in for a few small guests: its replay must show merging
between the processes, and ``synth vm-guests --fit`` of it must save what it
saves.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ksmreplay.cli import cli
from ksmreplay.trace import open_trace

TRACES = Path(__file__).parent.parent / "traces"
RECORDING = TRACES / "recorded-family.msgpack"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


def program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recorded_family", TRACES / "recorded_family.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settled(trace: Path) -> dict[str, Any]:
    """The unshare mode's snapshot ``settled`` of ``trace``."""
    result = invoke("run", "--mode", "unshare", "--format", "json", str(trace))
    assert result.exit_code == 0, result.stderr
    (snap,) = [
        s for s in json.loads(result.stdout)["runs"][0]["snapshots"] if s["label"] == "settled"
    ]
    return dict(snap)


def saved_share(snap: dict[str, Any]) -> float:
    """1 - the frames in use / the pages the processes would hold without KSM."""
    without = sum(p["rss_anon_pages"] for p in snap["processes"])
    without += snap["memory"]["zero_page_maps_by_ksm"]
    return float(1 - snap["memory"]["anon_frames"] / without)


def salt(fingerprint: int, pid: int) -> int:
    """A content of process ``pid`` alone, for ``fingerprint`` (zeros stay zeros)."""
    if fingerprint == 0:
        return 0
    return (fingerprint * 0x9E3779B97F4A7C15 + (pid + 1) * 0xBF58476D1CE4E5B9) % 2**64 or 1


def test_the_recording_is_small_and_of_the_program(tmp_path: Path) -> None:
    assert RECORDING.stat().st_size < 2 * 2**20
    with open_trace(str(RECORDING)) as reader:
        meta = reader.header.meta
    assert meta["command"] == ["python3", "traces/recorded_family.py"]
    inspected = invoke("inspect", "--format", "json", str(RECORDING))
    assert inspected.exit_code == 0, inspected.stderr
    contents = json.loads(inspected.stdout)["contents"]
    assert contents["processes"] == program().PROCESSES


def test_its_replay_merges_pages_between_processes(tmp_path: Path) -> None:
    """GIVEN the recording and the same recording with every page content made its
    process's own (forks still share what they inherit), WHEN both are replayed, THEN
    the recording needs fewer frames by at least the copies of the pages all four
    processes hold: KSM merged them across processes."""
    text = tmp_path / "recording.jsonl"
    assert invoke("convert", str(RECORDING), str(text)).exit_code == 0
    lines = text.read_text().splitlines()
    salted = [lines[0]]
    for line in lines[1:]:
        event = json.loads(line)
        if event[1] == "write":
            pid, content = event[2], event[5]
            if isinstance(content, list):
                event[5] = [salt(f, pid) for f in content]
            elif isinstance(content, int):
                event[5] = salt(content, pid)
        salted.append(json.dumps(event))
    alone = tmp_path / "alone.jsonl"
    alone.write_text("\n".join(salted) + "\n")
    together, apart = settled(RECORDING), settled(alone)
    f = program()
    copies = (f.PROCESSES - 1) * f.COMMON
    assert apart["memory"]["anon_frames"] - together["memory"]["anon_frames"] >= 0.9 * copies
    assert together["ksm"]["pages_sharing"] - apart["ksm"]["pages_sharing"] >= 0.9 * copies


def test_a_fit_to_it_saves_what_it_saves(tmp_path: Path) -> None:
    """GIVEN the recording, WHEN vm-guests is fitted to it, THEN the fitted trace, of the
    same guests and size, saves within 10 % of what the recording's replay saves."""
    fit = tmp_path / "fit.msgpack"
    result = invoke("synth", "vm-guests", "--fit", str(RECORDING), "-o", str(fit))
    assert result.exit_code == 0, result.stderr
    inspected = json.loads(invoke("inspect", "--format", "json", str(RECORDING)).stdout)
    contents = inspected["contents"]
    with open_trace(str(fit)) as reader:
        params = reader.header.meta["params"]
    assert params["guests"] == contents["processes"]
    assert params["guest_mib"] == round(contents["bytes_per_process"] / 2**20)
    recorded, fitted = saved_share(settled(RECORDING)), saved_share(settled(fit))
    assert recorded > 0.3
    assert fitted == pytest.approx(recorded, rel=0.10)
