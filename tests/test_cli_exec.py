"""``ksmreplay exec`` against ``ksmreplay run`` through the command line.

GIVEN a scenario the simulator is known to model, WHEN it is replayed on the
live kernel with ``exec`` and simulated with ``run --mode unshare``, THEN
``diff`` finds no difference and exits 0, the exec report follows the shipped
schema with the same summaries and milestones as the simulator's, and the
kernel is left at rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from kernel_answer import why_not_live
from testdata import SCENARIOS_DIR

from ksmreplay.cli import cli
from ksmreplay.live import kernel
from ksmreplay.report import schema_text

pytestmark = pytest.mark.live

KSM = Path(kernel.KSM_DIR)
REASON = why_not_live()
if REASON is not None:  # pragma: no cover - depends on the machine
    pytest.skip(REASON, allow_module_level=True)

SCENARIOS = SCENARIOS_DIR


@pytest.mark.parametrize(
    "name", ["example_a_pair_merge", "example_c_zero_pages", "example_e_fork_after_merge"]
)
def test_exec_agrees_with_run(name: str, tmp_path: Path) -> None:
    trace = SCENARIOS / f"{name}.jsonl"
    if not trace.exists():
        pytest.skip(f"scenario {name} not bundled")
    kernel_json, sim_json = tmp_path / "kernel.json", tmp_path / "sim.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["exec", str(trace), "--format", "json", "-o", str(kernel_json)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["run", str(trace), "--mode", "unshare", "--format", "json", "-o", str(sim_json)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(kernel_json.read_text())
    assert report["runs"][0]["mode"] == "unshare"
    result = runner.invoke(cli, ["diff", str(sim_json), str(kernel_json)])
    assert result.exit_code == 0, result.output
    # the summary measured on the kernel (page tables, page contents) is the simulator's
    jsonschema.validate(report, json.loads(schema_text()))
    (live,) = report["runs"]
    (sim,) = json.loads(sim_json.read_text())["runs"]
    lives, sims = [*live["snapshots"], live["final"]], [*sim["snapshots"], sim["final"]]
    for got, want in zip(lives, sims, strict=True):
        assert got["summary"] == want["summary"], got["label"]
    assert live["milestones"] == sim["milestones"]
    ksmd = live["ksmd"]
    assert ksmd["visits"] == live["final"]["ksm"]["pages_scanned"] == sim["ksmd"]["visits"]
    assert ksmd["wakeups"] is None  # the kernel does not count ksmd's batches
    # ksmd's own CPU time, measured (ksmd is visible here: the scenarios settle)
    assert isinstance(ksmd["cpu_ns"], int) and ksmd["cpu_ns"] >= 0
    assert isinstance(ksmd["settle_cpu_ns"], int) and ksmd["settle_cpu_ns"] > 0
    assert (KSM / "run").read_text().strip() == "0"
    assert (KSM / "pages_shared").read_text().strip() == "0"
