"""Helpers shared by the tests that hold the simulator to the live kernel's recorded answers.

A recording (``NAME.kernel.json``) is the report of ``ksmreplay.live.execute`` on
the real kernel: one run, mode ``unshare``.  :func:`kernel_differences` lists
every counter of that recording that the simulator's run gets wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ksmreplay.replay import replay
from ksmreplay.trace import open_trace

SNAP_SECTIONS = ("ksm", "processes", "memory", "events")
"""The sections of a snapshot that hold counters."""


def replay_file(
    path: Path, modes: Sequence[str], check_invariants: bool = True, kernel: str = "6.18"
) -> dict[str, Any]:
    """Replay one trace file through the simulator on one kernel version
    (invariants checked after every event)."""
    with open_trace(str(path)) as reader:
        report: dict[str, Any] = dict(
            replay(reader, modes, check_invariants=check_invariants, kernels=(kernel,))
        )
    return report


def load_recording(path: Path) -> dict[str, Any]:
    """The recorded kernel run of ``path`` (a ``.kernel.json`` file)."""
    report: dict[str, Any] = json.loads(path.read_text())
    (run,) = report["runs"]
    assert run["mode"] == "unshare", f"{path.name}: recorded on a kernel without zero-page tracking"
    return dict(run)


def _differences(where: str, recorded: Any, simulated: Any, out: list[str]) -> None:
    if isinstance(recorded, Mapping):
        if not isinstance(simulated, Mapping):
            out.append(f"{where}: kernel {recorded!r}, simulator {simulated!r}")
            return
        for key, value in recorded.items():
            if key not in simulated:
                out.append(f"{where}.{key}: kernel {value!r}, simulator has no such counter")
            else:
                _differences(f"{where}.{key}", value, simulated[key], out)
    elif isinstance(recorded, list) and isinstance(simulated, list):
        if len(recorded) != len(simulated):
            out.append(f"{where}: kernel has {len(recorded)} entries, simulator {len(simulated)}")
        for i, (a, b) in enumerate(zip(recorded, simulated, strict=False)):
            _differences(f"{where}[{i}]", a, b, out)
    elif recorded != simulated or isinstance(recorded, bool) != isinstance(simulated, bool):
        out.append(f"{where}: kernel {recorded!r}, simulator {simulated!r}")


def kernel_differences(recorded: Mapping[str, Any], simulated: Mapping[str, Any]) -> list[str]:
    """Every counter on which a simulated run differs from a recorded kernel run.

    Compares the settings, the refused writes, and for every snapshot and the
    final state its label, time, event index and each counter of the ``ksm``,
    ``processes`` and ``memory`` sections, plus ``events`` when the recording
    says the kernel's events were observed.  Returns one line per difference
    (empty: they agree).
    """
    out: list[str] = []
    _differences("settings", recorded["settings"], simulated["settings"], out)
    _differences("refused", recorded["refused"], simulated["refused"], out)
    rec_snaps = [*recorded["snapshots"], recorded["final"]]
    sim_snaps = [*simulated["snapshots"], simulated["final"]]
    if len(rec_snaps) != len(sim_snaps):
        out.append(f"snapshots: kernel has {len(rec_snaps)}, simulator {len(sim_snaps)}")
    sections = SNAP_SECTIONS if recorded.get("events_observed", True) else SNAP_SECTIONS[:-1]
    for rec, sim in zip(rec_snaps, sim_snaps, strict=False):
        where = f"snapshot {rec['label']!r}"
        for key in ("label", "t", "event"):
            _differences(f"{where} {key}", rec[key], sim[key], out)
        for section in sections:
            _differences(f"{where} {section}", rec[section], sim[section], out)
    return out


def run_of(report: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """The run of ``mode`` in a report."""
    (run,) = (r for r in report["runs"] if r["mode"] == mode)
    return dict(run)


def why_not_live() -> str | None:
    """Why this machine cannot replay on the live kernel, or None if it can."""
    ksm = Path("/sys/kernel/mm/ksm")
    if os.geteuid() != 0:
        return "live replay needs root"
    if not ksm.is_dir():
        return f"no KSM on this kernel ({ksm} missing)"
    if not os.access(ksm / "run", os.W_OK):
        return f"{ksm / 'run'} is not writable"
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "live replay needs gcc to build the worker"
    return None


def recorded_names(directory: Path) -> list[str]:
    """Names of the traces of ``directory`` that have a recorded kernel answer."""
    return sorted(p.name[: -len(".kernel.json")] for p in directory.glob("*.kernel.json"))


def format_differences(name: str, lines: Iterable[str]) -> str:
    """An assertion message listing the differences of one trace."""
    return f"{name}: simulator and kernel differ:\n  " + "\n  ".join(lines)
