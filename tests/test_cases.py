"""Golden cases: ``tests/cases/NAME.jsonl``, one behaviour each, with the expected report.

``NAME.expected.json`` is the output of ``ksmreplay run NAME.jsonl --mode both
--format json`` with ``trace.path`` reduced to the file name; the replay must
reproduce it byte for byte.  ``KSMREPLAY_UPDATE_GOLDEN=1`` rewrites the
expected files instead (review the diff before committing it).

A case's trace is its own (``tests/cases/NAME.jsonl``) or, for the cases
listed in ``tests/cases/scenarios.txt``, the scenario of that name
(``tests/scenarios/NAME.jsonl``); every case's trace has the live kernel's
answer beside it, ``NAME.kernel.json`` (the cases' own recorded with
``tests/record_kernel.py tests/cases``).
An expected file is only worth keeping when its unshare run is what the kernel
said, and its legacy run is the documented legacy behaviour (KSM_MODEL.md
section 13): those are tested here too.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from kernel_answer import format_differences, kernel_differences, load_recording, run_of
from support import UPDATE, check_golden, run_report
from testdata import CASES_DIR, SCENARIOS_DIR, TESTS, case_names, case_trace, names, scenario_cases

CASES = case_names()
RMAP_ITEM_BYTES = 64


def run_case(name: str) -> str:
    """``ksmreplay run`` on a case, as JSON, with the trace path normalised."""
    return run_report(case_trace(name), "both")


def expected(name: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((CASES_DIR / f"{name}.expected.json").read_text())
    return report


def test_enough_cases() -> None:
    assert len(CASES) >= 30
    if not UPDATE:
        assert names(CASES_DIR, ".expected.json") == CASES
    assert names(CASES_DIR, ".kernel.json") == names(CASES_DIR)
    for name in CASES:
        assert case_trace(name).with_name(f"{name}.kernel.json").exists(), name


def test_each_data_file_is_kept_once() -> None:
    # no file of the scenarios and the golden cases is a copy of another
    paths: dict[str, list[str]] = {}
    for path in sorted([*SCENARIOS_DIR.rglob("*"), *CASES_DIR.rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            paths.setdefault(digest, []).append(str(path.relative_to(TESTS)))
    assert [same for same in paths.values() if len(same) > 1] == []


def test_scenario_cases_name_scenarios_once() -> None:
    # each listed case has a scenario's trace and no trace of its own: every file is kept once
    listed = scenario_cases()
    assert listed == sorted(set(listed))
    assert set(listed) <= set(names(SCENARIOS_DIR))
    assert not set(listed) & set(names(CASES_DIR))


@pytest.mark.parametrize("name", CASES)
def test_case_matches_golden(name: str) -> None:
    check_golden(CASES_DIR / f"{name}.expected.json", run_case(name))


@pytest.mark.parametrize("name", CASES)
def test_golden_unshare_is_the_kernels_answer(name: str) -> None:
    recorded = load_recording(case_trace(name).with_name(f"{name}.kernel.json"))
    differences = kernel_differences(recorded, run_of(expected(name), "unshare"))
    assert not differences, format_differences(name, differences)


def _without_zero_page_counters(run: dict[str, Any]) -> dict[str, Any]:
    run = copy.deepcopy(run)
    run.pop("mode")
    for snap in [*run["snapshots"], run["final"]]:
        snap["ksm"]["ksm_zero_pages"] = None
        for proc in snap["processes"]:
            proc["ksm_zero_pages"] = None
    return run


@pytest.mark.parametrize("name", CASES)
def test_golden_legacy_is_documented_legacy(name: str) -> None:
    """Legacy differs from unshare only by the zero-page series (KSM_MODEL.md 13).

    No ksm_zero_pages anywhere, profits without zero pages; and a case in
    which KSM never placed a zero page gives unshare's numbers otherwise.
    """
    report = expected(name)
    page_size = report["trace"]["page_size"]
    legacy, unshare = run_of(report, "legacy"), run_of(report, "unshare")
    for snap in [*legacy["snapshots"], legacy["final"]]:
        ksm = snap["ksm"]
        assert ksm["ksm_zero_pages"] is None
        items = sum(
            ksm[k] for k in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
        )
        assert ksm["general_profit"] == ksm["pages_sharing"] * page_size - items * RMAP_ITEM_BYTES
        for proc in snap["processes"]:
            assert proc["ksm_zero_pages"] is None
            assert (
                proc["ksm_process_profit"]
                == proc["ksm_merging_pages"] * page_size - proc["ksm_rmap_items"] * RMAP_ITEM_BYTES
            )
    if unshare["final"]["events"]["zero_pages_merged"] == 0:
        assert _without_zero_page_counters(legacy) == _without_zero_page_counters(unshare)
