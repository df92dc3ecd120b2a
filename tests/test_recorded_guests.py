"""The bundled recording of three QEMU guests booting and idling (traces/recorded-guests.msgpack).

``traces/recorded_guests.py`` made it (``traces/README.md`` has the command):
three guests of 128 MiB under TCG, each booting Debian's 6.12 kernel into a
one-program initramfs and idling, recorded with ``--as-is`` by the pids of
their qemu processes, so that only what QEMU madvised mergeable (the guests'
RAM) is mergeable.  Its replay must show merging between the guests, and
``synth vm-guests --fit`` of it, the rewrites measured after the boot, must
save what it saves.  Its replay takes seconds per mode, so the tests of every
bundled trace leave it out (``support.SLOW_BUNDLED``): it is replayed here
once, in one mode, and checked for what they check.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from support import check_summary, milestones, percent, replay_path

from ksmreplay.cli import cli
from ksmreplay.render import render
from ksmreplay.report import Report
from ksmreplay.trace import open_trace

TRACES = Path(__file__).parent.parent / "traces"
RECORDING = TRACES / "recorded-guests.msgpack"
GUESTS = 3
GUEST_RAM = 128 << 20
BOOTED_S = 20
"""Every guest had booted by then (the recording's command printed 12.2 s)."""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


def unshare(trace: Path) -> Report:
    return replay_path(trace, ("unshare",))


@pytest.fixture(scope="module")
def replayed() -> Report:
    return unshare(RECORDING)


def settled(report: Report) -> dict[str, Any]:
    (snap,) = [s for s in report["runs"][0]["snapshots"] if s["label"] == "settled"]
    return dict(snap)


def saved_pages(snap: dict[str, Any]) -> int:
    """The pages the processes would hold without KSM, less the frames in use."""
    return int(snap["summary"]["saved_pages"])


def test_the_recording_is_small_and_of_three_guests() -> None:
    """Three qemu processes recorded --as-is; each madvised its guest's RAM mergeable."""
    assert RECORDING.stat().st_size < 3 * 2**20
    with open_trace(str(RECORDING)) as reader:
        meta = reader.header.meta
        mergeable: dict[int, list[int]] = {}
        for event in reader:
            if event.op == "madvise" and event.advice == "mergeable":
                mergeable.setdefault(event.pid, []).append(event.len)
    assert meta["recorder"] == "ksmreplay record" and meta["as_is"] is True
    assert meta["command"] is None and len(meta["pids"]) == GUESTS
    assert sorted(mergeable) == [1, 2, 3]
    assert all(GUEST_RAM in lengths for lengths in mergeable.values())


def test_its_replay_holds_what_every_bundled_trace_must(replayed: Report) -> None:
    """What the tests of every bundled trace check, in the unshare mode: a final
    snapshot, the summary's identities in every snapshot, a table of 80 columns."""
    run = replayed["runs"][0]
    assert run["final"]["label"] == "final"
    snaps: list[dict[str, Any]] = [*run["snapshots"]]  # type: ignore[list-item]
    for snap in [*snaps, run["final"]]:
        check_summary(snap, replayed["trace"]["page_size"])  # type: ignore[arg-type]
    ksmd = run["ksmd"]
    assert ksmd["visits"] == run["final"]["ksm"]["pages_scanned"]
    duration = replayed["trace"]["duration_ns"]
    assert ksmd["cpu_percent"] == percent(ksmd["cpu_ns"], duration, 0.0)
    assert run["milestones"] == milestones(snaps)
    table = io.StringIO()
    render(replayed, "table", table)
    assert max(len(line) for line in table.getvalue().splitlines()) <= 80


def salt(fps: Any, pid: int) -> Any:
    """Contents of process ``pid`` alone for the fingerprints ``fps`` (zeros stay zeros)."""
    values = np.atleast_1d(np.asarray(fps, dtype=np.uint64))
    with np.errstate(over="ignore"):
        out = values * np.uint64(0x9E3779B97F4A7C15) + np.uint64((pid + 1) * 0xBF58476D % 2**64)
    out[out == 0] = 1
    out[values == 0] = 0
    return out.tolist() if isinstance(fps, list) else int(out[0])


def test_its_replay_merges_pages_between_guests(replayed: Report, tmp_path: Path) -> None:
    """GIVEN the recording and the same recording with every content made its guest's
    own, WHEN both are replayed, THEN what only merging between guests can save (the
    ideal frames the two differ by) is a large share of the guests' RAM, and the
    recording's replay saves at least 90 % of it more than the other: KSM merged
    pages of different guests (the kernel, the initramfs, the firmware)."""
    text = tmp_path / "recording.jsonl"
    assert invoke("convert", str(RECORDING), str(text)).exit_code == 0
    lines = text.read_text().splitlines()
    salted = [lines[0]]
    for line in lines[1:]:
        event = json.loads(line)
        if event[1] == "write":
            event[5] = salt(event[5], event[2])
        salted.append(json.dumps(event))
    alone = tmp_path / "alone.jsonl"
    alone.write_text("\n".join(salted) + "\n")
    together, apart = settled(replayed), settled(unshare(alone))
    assert together["summary"]["resident_without_ksm"] == apart["summary"]["resident_without_ksm"]
    across = apart["summary"]["ideal_frames"] - together["summary"]["ideal_frames"]
    mergeable = sum(p["ksm_rmap_items"] for p in together["processes"])  # one per page
    assert across > 0.15 * mergeable
    assert saved_pages(together) - saved_pages(apart) >= 0.9 * across
    assert together["ksm"]["pages_sharing"] > apart["ksm"]["pages_sharing"] + 0.9 * across


def test_a_fit_after_the_boot_saves_what_it_saves(replayed: Report, tmp_path: Path) -> None:
    """GIVEN the recording, WHEN vm-guests is fitted to its guests' RAM (the mergeable
    pages), the rewrites measured after the boot, THEN the fitted trace, of the same
    guests and size, saves within 10 % of what the recording's replay saves."""
    fit = tmp_path / "fit.msgpack"
    result = invoke(
        "synth", "vm-guests", "--fit", str(RECORDING), "--fit-since", f"{BOOTED_S}s",
        "-o", str(fit),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "pages in mergeable mappings" in result.stderr.splitlines()[0]
    with open_trace(str(fit)) as reader:
        params = reader.header.meta["params"]
    recorded = settled(replayed)
    mergeable = sum(p["ksm_rmap_items"] for p in recorded["processes"])  # one per page
    assert params["guests"] == GUESTS
    assert params["guest_mib"] == round(mergeable * 4096 / GUESTS / 2**20)
    assert params["duration_s"] == pytest.approx(recorded["t"] / 1e9 - BOOTED_S, abs=0.01)
    fitted = settled(unshare(fit))
    assert saved_pages(recorded) > 0.3 * mergeable
    assert saved_pages(fitted) == pytest.approx(saved_pages(recorded), rel=0.10)
