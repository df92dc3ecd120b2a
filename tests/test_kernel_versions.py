"""``run --kernel 6.1 | 6.12``: the replay against the recorded answers of those kernels.

``NAME.kernel-6.1.json`` and ``NAME.kernel-6.12.json`` (``tests/scenarios``,
``tests/cases``) are the reports of ``exec`` in qemu guests booting Debian's
6.1 and 6.12 kernels (``tests/test_kernel_recordings.py``).  Nothing boots
here: the replay on the simulated version must give every value the
recording holds, nulls included (a counter or knob the version lacks),
compared by ``kernel_answer.kernel_differences`` as the 6.18 answers are.

One exception, and only where the recording shows it:

* 6.12, ``memory.ksm_frames``: the recording has null because 6.12's
  ``/proc/kpageflags`` marks every anonymous page KSM, so ``exec`` cannot
  count KSM frames there (``events_observed`` is false for the same reason,
  and ``kernel_differences`` leaves ``events`` out then).  The kernel has
  KSM pages all the same; the replay counts them.

``legacy`` on 6.12 is 6.12 with the zero-page series reverted, which no
kernel was: it is held to the 6.12 recording on the traces that never turn
``use_zero_pages`` on, where the series changes nothing but showing
``ksm_zero_pages`` (0 on the kernel, null in legacy).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from kernel_answer import format_differences, kernel_differences, replay_file, run_of
from reference import ReferenceSimulator
from testdata import CASES_DIR, SCENARIOS_DIR, TESTS, answered_traces, case_trace

from ksmreplay.cli import cli
from ksmreplay.engine import Engine
from ksmreplay.errors import ExitStatus, UsageError
from ksmreplay.ksm.kernels import KERNELS, LINUX_6_1
from ksmreplay.ksm.knobs import KNOBS
from ksmreplay.trace.events import Alloc, Event, Exit, Ksm, Madvise, Settle, Write

DIRS = (SCENARIOS_DIR, CASES_DIR)
"""The directories of the traces with recorded answers (each trace in one of them)."""


def recorded(version: str) -> list[tuple[str, str]]:
    suffix = f".kernel-{version}.json"
    return [
        (directory.name, path.name[: -len(suffix)])
        for directory in DIRS
        for path in sorted(directory.glob(f"*{suffix}"))
    ]


def recording(directory: str, name: str, version: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        (TESTS / directory / f"{name}.kernel-{version}.json").read_text()
    )
    (run,) = report["runs"]
    return dict(run)


def replayed(directory: str, name: str, mode: str, version: str) -> dict[str, Any]:
    report = replay_file(TESTS / directory / f"{name}.jsonl", [mode], kernel=version)
    run = run_of(report, mode)
    assert run["kernel"] == version
    return run


def not_observed(recorded_run: dict[str, Any], simulated: dict[str, Any]) -> None:
    """6.12's exception: ``memory.ksm_frames`` is null in the recording, and only that
    is taken out of the comparison (see the module's docstring)."""
    assert recorded_run["events_observed"] is False
    for rec, sim in zip(
        [*recorded_run["snapshots"], recorded_run["final"]],
        [*simulated["snapshots"], simulated["final"]],
        strict=True,
    ):
        assert rec["memory"]["ksm_frames"] is None
        rec["memory"] = {k: v for k, v in rec["memory"].items() if k != "ksm_frames"}
        assert isinstance(sim["memory"]["ksm_frames"], int)


def test_every_trace_is_recorded_on_both_versions() -> None:
    traces = [(path.parent.name, path.stem) for path in answered_traces()]
    assert len(traces) >= 65  # each trace once: the scenarios and the golden cases' own
    assert recorded("6.1") == recorded("6.12") == traces


@pytest.mark.parametrize(("directory", "name"), recorded("6.1"))
def test_6_1_legacy_is_linux_6_1(directory: str, name: str) -> None:
    rec = recording(directory, name, "6.1")
    differences = kernel_differences(rec, replayed(directory, name, "legacy", "6.1"))
    assert not differences, format_differences(name, differences)


@pytest.mark.parametrize(("directory", "name"), recorded("6.12"))
def test_6_12_unshare_is_linux_6_12(directory: str, name: str) -> None:
    rec = recording(directory, name, "6.12")
    sim = replayed(directory, name, "unshare", "6.12")
    not_observed(rec, sim)
    differences = kernel_differences(rec, sim)
    assert not differences, format_differences(name, differences)


def _sets_use_zero_pages(directory: str, name: str) -> bool:
    for line in (TESTS / directory / f"{name}.jsonl").read_text().splitlines():
        event = json.loads(line)
        if isinstance(event, list) and event[1] == "ksm" and event[2].get("use_zero_pages"):
            return True
    return False


WITHOUT_ZERO_PAGES = [t for t in recorded("6.12") if not _sets_use_zero_pages(*t)]


def test_most_traces_leave_zero_pages_off() -> None:
    assert len(WITHOUT_ZERO_PAGES) >= 50


@pytest.mark.parametrize(("directory", "name"), WITHOUT_ZERO_PAGES)
def test_6_12_legacy_is_linux_6_12_without_zero_pages(directory: str, name: str) -> None:
    rec = recording(directory, name, "6.12")
    sim = replayed(directory, name, "legacy", "6.12")
    not_observed(rec, sim)
    for snap in [*rec["snapshots"], rec["final"]]:
        # the series' counters: 0 on the kernel, absent in legacy
        assert snap["ksm"]["ksm_zero_pages"] == 0
        snap["ksm"]["ksm_zero_pages"] = None
        for proc in snap["processes"]:
            assert proc["ksm_zero_pages"] == 0
            proc["ksm_zero_pages"] = None
    differences = kernel_differences(rec, sim)
    assert not differences, format_differences(name, differences)


# -- the option and the report ------------------------------------------------------

TRACE = case_trace("example_e_fork_after_merge")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["run", str(TRACE), *args], prog_name="ksmreplay")


def test_unshare_on_6_1_is_a_usage_error() -> None:
    result = invoke("--kernel", "6.1", "--mode", "unshare")
    assert result.exit_code == ExitStatus.USAGE
    assert "mode 'unshare' does not exist on Linux 6.1" in result.output
    assert "Traceback" not in result.output


def test_default_modes_on_6_1_are_those_it_has() -> None:
    result = invoke("--kernel", "6.1", "--kernel", "6.18", "--format", "json")
    assert result.exit_code == 0, result.output
    runs = [(run["kernel"], run["mode"]) for run in json.loads(result.stdout)["runs"]]
    assert runs == [("6.1", "legacy"), ("6.18", "legacy"), ("6.18", "unshare")]


def test_all_on_6_1_is_legacy() -> None:
    result = invoke("--kernel", "6.1", "--kernel", "6.12", "--mode", "all", "--format", "json")
    assert result.exit_code == 0, result.output
    runs = [(run["kernel"], run["mode"]) for run in json.loads(result.stdout)["runs"]]
    assert runs == [("6.1", "legacy"), ("6.12", "legacy"), ("6.12", "v6"), ("6.12", "unshare")]
    named = invoke("--kernel", "6.1", "--mode", "all", "--mode", "v6")
    assert named.exit_code == ExitStatus.USAGE


def test_default_kernel_is_6_18() -> None:
    result = invoke("--mode", "legacy", "--format", "json")
    assert [run["kernel"] for run in json.loads(result.stdout)["runs"]] == ["6.18"]


def test_table_names_the_kernels_when_there_are_two() -> None:
    two = invoke("--kernel", "6.1", "--kernel", "6.18", "--mode", "legacy").output
    assert "ksm                 legacy@6.1  legacy@6.18  difference" in two
    assert "modes      legacy@6.1, legacy@6.18" in two
    one = invoke("--kernel", "6.1").output
    assert "@" not in one


def test_unknown_kernel_is_a_usage_error() -> None:
    result = invoke("--kernel", "5.15")
    assert result.exit_code == ExitStatus.USAGE
    assert "5.15" in result.output


def test_a_knob_6_1_lacks_cannot_be_set() -> None:
    with pytest.raises(UsageError, match=r"Linux 6\.1 has no such knob"):
        Engine("legacy", 4096, {"smart_scan": 0}, "6.1")
    result = invoke("--kernel", "6.1", "--set", "advisor_mode=scan-time")
    assert result.exit_code == ExitStatus.USAGE


def test_6_1_settings_are_null_where_it_has_no_knob() -> None:
    settings = Engine("legacy", 4096, None, "6.1").settings
    assert {k for k, v in settings.items() if v is None} == LINUX_6_1.missing_knobs
    assert set(settings) == {k.name for k in KNOBS}
    assert None not in Engine("legacy", 4096, None, "6.12").settings.values()


def test_diff_compares_one_mode_on_two_kernels() -> None:
    report = invoke("--kernel", "6.1", "--kernel", "6.18", "--mode", "legacy", "--format", "json")
    result = CliRunner().invoke(cli, ["diff", "-"], input=report.stdout)
    assert result.exit_code == ExitStatus.DIFFERENCES
    assert "legacy@6.1/legacy@6.18" in result.output
    # the 6.18 fork fix: the child's counters no longer start at the parent's
    assert "ksm_rmap_items" in result.output


def test_every_version_is_listed_oldest_first() -> None:
    assert list(KERNELS) == ["6.1", "6.12", "6.18"]


# -- a rule no recorded trace shows: the chain lookup before 6.11 -------------------


def full_dup_left_alone() -> list[Event]:
    """Four pages of one content with max_page_sharing 2 make a chain of two full
    dups; two of the processes exit (one dup goes stale), then a fifth page of
    that content makes ksmd look the chain up, within the prune interval."""
    page = 4096
    events: list[Event] = [
        Ksm(1, 0, {"pages_to_scan": 1000, "sleep_millisecs": 20, "max_page_sharing": 2})
    ]

    def process(pid: int) -> None:
        for make in (
            lambda i: Alloc(i, 0, pid, 0x10000, page),
            lambda i: Write(i, 0, pid, 0x10000, page, 7),
            lambda i: Madvise(i, 0, pid, 0x10000, page, "mergeable"),
        ):
            events.append(make(len(events) + 1))

    for pid in (1, 2, 3, 4):
        process(pid)
    events += [Ksm(len(events) + 1, 0, {"run": 1}), Settle(len(events) + 2, 0)]
    events += [Exit(len(events) + 1, 0, 3), Exit(len(events) + 2, 0, 4)]
    process(5)
    events.append(Settle(len(events) + 1, 0))
    return events


@pytest.mark.usefixtures("both_engines")
@pytest.mark.parametrize(("kernel", "chains"), [("6.1", 1), ("6.12", 0), ("6.18", 0)])
def test_a_chain_of_one_full_dup_collapses_only_since_6_11(kernel: str, chains: int) -> None:
    engine = Engine("legacy", 4096, None, kernel)
    ref = ReferenceSimulator("legacy", 4096, kernel=kernel)
    snap: dict[str, Any] = {}
    for event in full_dup_left_alone():
        engine.apply(event)
        ref.apply(event)
        snap = dict(engine.snapshot("x", event.t, event.index))
        assert snap == ref.snapshot("x", event.t, event.index), f"{kernel}, after {event}"
        if isinstance(event, Settle) and event.index < 20:
            assert (snap["ksm"]["stable_node_chains"], snap["ksm"]["stable_node_dups"]) == (1, 2)
    # 6.11+: the lookup collapses the chain into its one (full) dup; before, only
    # a pruning lookup that found a dup with room did.
    assert snap["ksm"]["stable_node_chains"] == chains
    assert snap["ksm"]["stable_node_dups"] == chains
    assert snap["ksm"]["pages_shared"] == 1
