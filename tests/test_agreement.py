"""The simulator against the live kernel: every recorded scenario, replayed in unshare mode.

``tests/scenarios/NAME.kernel.json`` is the real kernel's report for
``NAME.jsonl`` (recorded by ``tests/record_kernel.py tests/scenarios``).  The unshare run
must give every counter that recording carries: settings, refused writes, and
in every snapshot and the final state the ``ksm``, ``processes`` and
``memory`` sections, plus ``events`` when the kernel's events were observed.
"""

from __future__ import annotations

import pytest
from kernel_answer import (
    format_differences,
    kernel_differences,
    load_recording,
    recorded_names,
    replay_file,
    run_of,
)
from testdata import SCENARIOS_DIR

SCENARIOS = SCENARIOS_DIR
RECORDED = recorded_names(SCENARIOS)


def test_scenarios_are_recorded() -> None:
    assert len(RECORDED) >= 40


@pytest.mark.parametrize("name", RECORDED)
def test_unshare_agrees_with_kernel(name: str) -> None:
    recorded = load_recording(SCENARIOS / f"{name}.kernel.json")
    report = replay_file(SCENARIOS / f"{name}.jsonl", ["unshare"])
    differences = kernel_differences(recorded, run_of(report, "unshare"))
    assert not differences, format_differences(name, differences)
