"""The recorded answers of Linux 6.1 and 6.12 (``NAME.kernel-6.1.json``, ``NAME.kernel-6.12.json``).

They were recorded by ``tests/record_kernel.py DIR --kernel VERSION`` in qemu
guests booting Debian's kernels (``tests/qemu_kernels.py``).  These tests boot
nothing: they check that every trace has both recordings, and that each says
what its kernel has and lacks, found by feature as ``exec`` finds it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from testdata import CASES_DIR, SCENARIOS_DIR, TESTS

from ksmreplay.ksm.knobs import KNOBS

DIRS = (SCENARIOS_DIR, CASES_DIR)
VERSIONS = ("6.1", "6.12")
TRACES = [
    (directory.name, path.name[: -len(".jsonl")])
    for directory in DIRS
    for path in sorted(directory.glob("*.jsonl"))
]
ADDED_AFTER_6_1 = {
    "knobs": {
        "smart_scan",
        "advisor_mode",
        "advisor_max_cpu",
        "advisor_min_pages_to_scan",
        "advisor_max_pages_to_scan",
        "advisor_target_scan_time",
    },
    "ksm": {"pages_scanned", "pages_skipped", "ksm_zero_pages", "general_profit"},
    "process": {"ksm_zero_pages", "ksm_process_profit", "ksm_merge_any", "ksm_mergeable"},
}
"""What Linux 6.1 does not have."""
PROCESS_AFTER_6_12 = {"ksm_merge_any", "ksm_mergeable"}
"""The ``ksm_stat`` fields that 6.12 does not show either."""


def recording(directory: str, name: str, version: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        (TESTS / directory / f"{name}.kernel-{version}.json").read_text()
    )
    (run,) = report["runs"]
    return dict(run)


def trace_uses(directory: str, name: str, op: str) -> bool:
    for line in (TESTS / directory / f"{name}.jsonl").read_text().splitlines():
        if line.startswith("[") and json.loads(line)[1] == op:
            return True
    return False


def test_every_trace_has_both_recordings() -> None:
    for directory in DIRS:
        traces = sorted(p.name[: -len(".jsonl")] for p in directory.glob("*.jsonl"))
        for version in VERSIONS:
            suffix = f".kernel-{version}.json"
            recorded = sorted(p.name[: -len(suffix)] for p in directory.glob(f"*{suffix}"))
            assert recorded == traces, (directory.name, version)


@pytest.mark.parametrize(("directory", "name"), TRACES)
def test_6_1_recording_has_only_what_6_1_has(directory: str, name: str) -> None:
    run = recording(directory, name, "6.1")
    assert run["kernel"].startswith("6.1.")
    assert run["mode"] == "legacy"  # no ksm_zero_pages file: no zero-page series
    assert set(run["settings"]) == {k.name for k in KNOBS}
    for knob, value in run["settings"].items():
        assert (value is None) == (knob in ADDED_AFTER_6_1["knobs"]), knob
    for snap in [*run["snapshots"], run["final"]]:
        for counter, value in snap["ksm"].items():
            assert (value is None) == (counter in ADDED_AFTER_6_1["ksm"]), counter
        for proc in snap["processes"]:
            for counter, value in proc.items():
                assert (value is None) == (counter in ADDED_AFTER_6_1["process"]), counter
    prctl_refusals = [r for r in run["refused"] if r["knob"] == "merge_any"]
    assert bool(prctl_refusals) == trace_uses(directory, name, "prctl")
    assert all(r["error"] == "EINVAL" for r in prctl_refusals)
    for refusal in run["refused"]:
        if refusal["knob"] in ADDED_AFTER_6_1["knobs"]:
            assert refusal["error"] == "ENOENT"


@pytest.mark.parametrize(("directory", "name"), TRACES)
def test_6_12_recording_has_every_counter(directory: str, name: str) -> None:
    run = recording(directory, name, "6.12")
    assert run["kernel"].startswith("6.12.")
    assert run["mode"] == "unshare"
    assert None not in run["settings"].values()
    assert all(r["knob"] != "merge_any" and r["error"] != "ENOENT" for r in run["refused"])
    # 6.12's /proc/kpageflags flags every anonymous page KSM: KSM frames cannot be seen.
    assert run["events_observed"] is False
    for snap in [*run["snapshots"], run["final"]]:
        assert None not in snap["ksm"].values()
        assert snap["memory"]["ksm_frames"] is None
        for proc in snap["processes"]:
            for counter, value in proc.items():
                assert (value is None) == (counter in PROCESS_AFTER_6_12), counter
