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

from support import replay_path

SNAP_SECTIONS = ("ksm", "processes", "memory", "events")
"""The sections of a snapshot that hold counters."""


def replay_file(
    path: Path, modes: Sequence[str], check_invariants: bool = True, kernel: str = "6.18"
) -> dict[str, Any]:
    """Replay one trace file through the simulator on one kernel version
    (invariants checked after every event)."""
    report = replay_path(path, modes, check_invariants=check_invariants, kernels=(kernel,))
    return dict(report)


def load_recording(path: Path) -> dict[str, Any]:
    """The recorded kernel run of ``path`` (a ``.kernel.json`` file)."""
    report: dict[str, Any] = json.loads(path.read_text())
    (run,) = report["runs"]
    assert run["mode"] == "unshare", f"{path.name}: recorded on a kernel without zero-page tracking"
    return dict(run)


MEASURED_KSMD = ("cpu_ns", "cpu_percent", "settle_cpu_ns")
"""The values of an ``exec`` run's ``ksmd`` that are measured, never the same twice."""


def comparable(live: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A run ``exec`` made, as a recording of the same trace can hold it:
    without ksmd's measured CPU times, and without what ``exec`` reports and
    the recording (made before it did) lacks: ``summary``, ``ksmd``,
    ``milestones``.  Apply it to both sides to compare them with ``==``."""
    out = json.loads(json.dumps(live))
    for key in ("ksmd", "milestones"):
        if key not in recorded:
            out.pop(key, None)
    if "ksmd" in out:
        for key in MEASURED_KSMD:
            out["ksmd"].pop(key, None)
    if "summary" not in recorded["final"]:
        for snap in [*out["snapshots"], out["final"]]:
            snap.pop("summary", None)
    return dict(out)


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
    says the kernel's events were observed and ``summary`` when it has one.
    Returns one line per difference (empty: they agree).
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
        if "summary" in rec:  # (exec measures it since recordings were first made)
            _differences(f"{where} summary", rec["summary"], sim.get("summary"), out)
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


# -- timed scenarios: the live kernel's spread ---------------------------------------

SPREAD_COUNTERS = ("full_scans", "pages_scanned")
"""The counters a timed scenario's recorded spread covers, at each snapshot."""

SPREAD_VERSION = 1


def percentile(values: Sequence[int], q: float) -> float:
    """The ``q``-th percentile of ``values``, linear between the closest ranks
    (numpy's default): for 20 values the 10th lies between the 2nd and 3rd smallest."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


SPREAD_CLOCK = ("ksmd_cpu_ns", "elapsed_ns")
"""What a spread also records at each snapshot when the runs read ksmd's clock
(``execute(..., ksmd_clock=True)``): ksmd's CPU time and the real time since
the replay started, ns (not compared with the simulator: they say how much
of a CPU ksmd had while the spread was recorded)."""


def _spread(values: Sequence[int]) -> dict[str, Any]:
    return {
        "median": percentile(values, 50),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
        "values": list(values),
    }


def spread_of(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per snapshot of several live runs of one trace: label, t, and for each of
    :data:`SPREAD_COUNTERS` (and :data:`SPREAD_CLOCK` if the runs read it) every
    run's value, their median and 10th and 90th percentiles."""
    snaps = [run["snapshots"] for run in runs]
    out = []
    for i, first in enumerate(snaps[0]):
        entry: dict[str, Any] = {"label": first["label"], "t": first["t"]}
        for name in SPREAD_COUNTERS:
            entry[name] = _spread([s[i]["ksm"][name] for s in snaps])
        if all("live" in s[i] for s in snaps):
            for name in SPREAD_CLOCK:
                entry[name] = _spread([s[i]["live"][name] for s in snaps])
        out.append(entry)
    return out


def load_spread(path: Path) -> dict[str, Any]:
    """A timed scenario's recorded spread (``NAME.kernel-spread.json``)."""
    spread: dict[str, Any] = json.loads(path.read_text())
    assert spread["spread"] == SPREAD_VERSION, f"{path.name}: not a spread of this version"
    return spread


def outside_spread(
    snapshots: Sequence[Mapping[str, Any]], simulated: Mapping[str, Any]
) -> list[str]:
    """Every snapshot counter of a simulated run outside the live 10th-90th percentile
    range of ``snapshots`` (:func:`spread_of`); one line each (empty: all inside)."""
    out = []
    sims = simulated["snapshots"]
    if len(sims) != len(snapshots):
        return [f"snapshots: live {len(snapshots)}, simulator {len(sims)}"]
    for rec, sim in zip(snapshots, sims, strict=True):
        for name in SPREAD_COUNTERS:
            r, value = rec[name], sim["ksm"][name]
            if not r["p10"] <= value <= r["p90"]:
                out.append(
                    f"snapshot {rec['label']!r} {name}: simulator {value}, live median "
                    f"{r['median']:g}, 10th-90th percentile {r['p10']:g}-{r['p90']:g}"
                )
    return out


# -- tracepoints: the live kernel's KSM trace events, per full scan --------------------

TRACEPOINTS_VERSION = 1

TIMED_FIELDS = {"ksm_advisor": ("scan_time", "cpu_percent")}
"""Fields that measure the real ksmd's time (the advisor's scan time, and its
CPU share, whose first reading is of ksmd's whole life): not recorded."""

UNNAMED = {"mm": str, "rmap_item": str, "pfn": int, "ksm_page": int}
"""What a live event's field is when the replay could not name it (the
kernel's hashed pointer, its frame number): it then matches anything."""


def tracepoint_scans(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Events per full scan (``tracepoints.per_full_scan``'s split): each scan's
    ``counts`` by kind and its ``events`` without time, mode and kernel (nor
    :data:`TIMED_FIELDS`)."""
    from ksmreplay.tracepoints import per_full_scan

    scans: list[list[dict[str, Any]]] = [[]]
    listed = list(events)
    for event in listed:
        plain = {k: v for k, v in event.items() if k not in ("t", "mode", "kernel")}
        for name in TIMED_FIELDS.get(plain["event"], ()):
            plain.pop(name)
        scans[-1].append(plain)
        if plain["event"] == "ksm_stop_scan":
            scans.append([])
    return [
        {"counts": counts, "events": scan}
        for counts, scan in zip(per_full_scan(listed), scans, strict=True)
    ]


def _same_event(live: Mapping[str, Any], simulated: Mapping[str, Any]) -> bool:
    if live.keys() != simulated.keys():
        return False
    for key, value in live.items():
        unnamed = UNNAMED.get(key)
        if unnamed is not None and type(value) is unnamed:
            continue
        if value != simulated[key]:
            return False
    return True


def tracepoint_differences(
    live: Sequence[Mapping[str, Any]], simulated: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Every full scan (:func:`tracepoint_scans`) whose counts differ, or whose
    events differ where the live side named them; one line each."""
    out = []
    if len(live) != len(simulated):
        out.append(f"full scans: live {len(live) - 1}, simulator {len(simulated) - 1}")
    for i, (a, b) in enumerate(zip(live, simulated, strict=False)):
        if a["counts"] != b["counts"]:
            out.append(f"scan {i}: counts live {a['counts']}, simulator {b['counts']}")
            continue
        for x, y in zip(a["events"], b["events"], strict=True):
            if not _same_event(x, y):
                out.append(f"scan {i}: live {x}, simulator {y}")
                break
    return out


def dump_tracepoints(name: str, kernel: str, scans: Sequence[Mapping[str, Any]]) -> str:
    """A ``NAME.kernel-tracepoints.json`` recording, one event a line."""
    lines = [
        "{",
        f' "tracepoints": {TRACEPOINTS_VERSION},',
        f' "trace": {json.dumps(name + ".jsonl")},',
        f' "kernel": {json.dumps(kernel)},',
        ' "full_scans": [',
    ]
    for i, scan in enumerate(scans):
        events = ",\n".join(f"    {json.dumps(e)}" for e in scan["events"])
        lines.append("  {")
        lines.append(f'   "counts": {json.dumps(scan["counts"])},')
        lines.append('   "events": [' + (f"\n{events}\n   ]" if events else "]"))
        lines.append("  }" + ("," if i < len(scans) - 1 else ""))
    lines += [" ]", "}"]
    return "\n".join(lines) + "\n"


def load_tracepoints(path: Path) -> list[dict[str, Any]]:
    """The full scans of a ``NAME.kernel-tracepoints.json`` recording."""
    recorded: dict[str, Any] = json.loads(path.read_text())
    assert recorded["tracepoints"] == TRACEPOINTS_VERSION, f"{path.name}: another version"
    scans: list[dict[str, Any]] = recorded["full_scans"]
    return scans
