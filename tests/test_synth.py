"""Synthetic workloads: valid, deterministic, true to their parameters, telling when replayed."""

from __future__ import annotations

import dataclasses
import io
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from support import replay_path

from ksmreplay.cli import cli
from ksmreplay.errors import UsageError
from ksmreplay.report import Report, Snap
from ksmreplay.synth import (
    MIB_PAGES,
    WORKLOAD_BY_NAME,
    WORKLOAD_NAMES,
    WORKLOADS,
    get_workload,
    resolve_params,
    synthesize,
)
from ksmreplay.trace import open_trace
from ksmreplay.trace.events import Event, Exit, Fork, Ksm, Madvise, Prctl, Settle, Snapshot, Write

TRACES = Path(__file__).resolve().parents[1] / "traces"
PAGE = 4096

SMALL: dict[str, dict[str, Any]] = {
    "vm-guests": {"guests": 3, "guest_mib": 1, "duration_s": 0.5, "dirty_pages_per_s": 100.0},
    "containers": {
        "processes": 3,
        "starts": 2,
        "stops": 1,
        "template_mib": 1,
        "heap_mib": 1,
        "private_mib": 1,
        "duration_s": 0.5,
    },
    "gc-heap": {"heap_mib": 2, "alloc_mib_per_s": 8, "duration_s": 1.0},
    "zero-heavy": {"processes": 3, "mib": 1, "unmerging_processes": 1, "duration_s": 0.5},
    "unmerge-cycle": {"mib": 1, "cycles": 1},
}
"""Parameters that make each workload small enough to replay in a test."""


def build(name: str, seed: int = 1, form: str = "msgpack", **params: Any) -> bytes:
    out = io.BytesIO()
    synthesize(name, out, {**SMALL[name], **params}, seed=seed, form=form)
    return out.getvalue()


def read(data: bytes, tmp_path: Path, name: str = "t.msgpack") -> tuple[Any, list[Event]]:
    path = tmp_path / name
    path.write_bytes(data)
    with open_trace(str(path)) as reader:
        events = list(reader)
    return reader, events


def run_both(data: bytes, tmp_path: Path) -> Report:
    path = tmp_path / "replay.msgpack"
    path.write_bytes(data)
    return replay_path(path, ["legacy", "unshare"])


def snap(report: Report, mode: str, label: str) -> Snap:
    run = next(r for r in report["runs"] if r["mode"] == mode)
    return next(s for s in [*run["snapshots"], run["final"]] if s["label"] == label)


def rss(s: Snap) -> int:
    return sum(p["rss_anon_pages"] for p in s["processes"])


def fingerprints(event: Write) -> np.ndarray:
    """One fingerprint per page of a fingerprint write."""
    content = event.content
    assert not isinstance(content, bytes), "synthetic traces write fingerprints only"
    if isinstance(content, int):
        return np.full(event.len // PAGE, content, dtype=np.uint64)
    return content


def initial_fill(
    events: Sequence[Event], pid: int, addr: int | None = None, t: int = 0
) -> np.ndarray:
    """The fingerprints ``pid`` writes at ``t`` (into the mapping at ``addr``), in address order."""
    writes = [
        e
        for e in events
        if isinstance(e, Write) and e.t == t and e.pid == pid and (addr is None or e.addr >= addr)
    ]
    writes.sort(key=lambda e: e.addr)
    if addr is not None:
        writes = [w for w in writes if w.addr < addr + 2**32]
    return np.concatenate([fingerprints(w) for w in writes])


# --------------------------------------------------------------------------- every workload


@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_trace_is_valid_and_sets_its_knobs_first(name: str, tmp_path: Path) -> None:
    # GIVEN a trace of the workload WHEN the reader validates all of it
    reader, events = read(build(name), tmp_path)
    # THEN the header says how it was made
    assert reader.header.page_size == PAGE
    assert reader.header.meta["workload"] == name
    assert reader.header.meta["seed"] == 1
    assert reader.header.meta["params"] == {**resolve_params(get_workload(name)), **SMALL[name]}
    # and the first event turns ksmd on, at t=0, with the knob parameters
    first = events[0]
    assert isinstance(first, Ksm) and first.t == 0
    assert first.settings["run"] == 1
    knob_params = {"pages_to_scan", "sleep_millisecs", "use_zero_pages"}
    for param in WORKLOAD_BY_NAME[name].params:
        if param.name in knob_params:
            assert first.settings[param.name] == param.default
    # and every settle is followed by a snapshot at the same instant, the last one at the end
    settles = [i for i, e in enumerate(events) if isinstance(e, Settle)]
    assert settles
    for i in settles:
        after = events[i + 1]
        assert isinstance(after, Snapshot) and after.t == events[i].t
    labels = [e.label for e in events if isinstance(e, Snapshot)]
    assert len(labels) == len(set(labels)) and "final" not in labels
    assert isinstance(events[-1], Snapshot)


@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_same_seed_same_bytes_other_seed_other_bytes(name: str) -> None:
    assert build(name, seed=7) == build(name, seed=7)
    assert build(name, seed=7) != build(name, seed=8)


@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_jsonl_form_holds_the_same_events(name: str, tmp_path: Path) -> None:
    _, packed = read(build(name), tmp_path, "t.msgpack")
    _, lines = read(build(name, form="jsonl"), tmp_path, "t.jsonl")
    assert lines == packed


@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_settle_0_leaves_out_the_settles_and_nothing_else(name: str, tmp_path: Path) -> None:
    # GIVEN the same workload with and without settles
    _, settled = read(build(name), tmp_path, "a.msgpack")
    reader, timed = read(build(name, settle=0), tmp_path, "b.msgpack")
    # THEN the second is the first without its settle events (events renumbered)
    assert reader.header.meta["params"]["settle"] == 0
    assert not any(isinstance(e, Settle) for e in timed)
    kept = [e for e in settled if not isinstance(e, Settle)]
    assert len(kept) < len(settled)
    for i, (a, b) in enumerate(zip(kept, timed, strict=True), start=1):
        assert b == dataclasses.replace(a, index=i)


@pytest.mark.parametrize("name", [w.name for w in WORKLOADS])
def test_defaults_are_accepted(name: str) -> None:
    values = resolve_params(get_workload(name))
    assert dict(values) == {p.name: p.default for p in get_workload(name).params}


# --------------------------------------------------------------------------- parameters


def test_vm_guests_fills_zero_shared_and_own_pages_as_asked(tmp_path: Path) -> None:
    # GIVEN 3 guests of 1 MiB, 25% zeros and 50% pages every guest holds
    _, events = read(build("vm-guests", zero_percent=25.0, shared_percent=50.0), tmp_path)
    fills = [initial_fill(events, pid) for pid in (1, 2, 3)]
    for fps in fills:
        # THEN each guest fills every page, a quarter with zeros
        assert len(fps) == MIB_PAGES
        assert int((fps == 0).sum()) == MIB_PAGES // 4
    # and exactly half of its pages are the ones every guest holds, the rest its own
    nonzero = [set(fps[fps != 0].tolist()) for fps in fills]
    common = nonzero[0] & nonzero[1] & nonzero[2]
    assert len(common) == MIB_PAGES // 2
    for i, own in enumerate(nonzero):
        others = set().union(*(s for j, s in enumerate(nonzero) if j != i))
        assert len(own - others) == MIB_PAGES // 4
    assert sum(isinstance(e, Madvise) and e.advice == "mergeable" for e in events) == 3


def test_vm_guests_without_zero_pages_writes_no_zero(tmp_path: Path) -> None:
    data = build("vm-guests", zero_percent=0.0, dirty_zero_percent=0.0)
    reader, events = read(data, tmp_path)
    writes = [e for e in events if isinstance(e, Write)]
    assert any(e.t > 0 for e in writes), "the dirty phase writes too"
    assert all(int((fingerprints(e) == 0).sum()) == 0 for e in writes)
    assert reader.processes == 3
    assert reader.duration_ns == 500_000_000


def test_vm_guests_dirty_rate_scales_the_writes(tmp_path: Path) -> None:
    def dirtied(rate: float) -> int:
        _, events = read(build("vm-guests", dirty_pages_per_s=rate, duration_s=1.0), tmp_path)
        return sum(e.len // PAGE for e in events if isinstance(e, Write) and e.t > 0)

    assert dirtied(0.0) == 0
    # 3 guests x 200 pages/s x 1 s, drawn at random: well within 20% of 600
    assert 480 <= dirtied(200.0) <= 720


def test_containers_start_and_stop_the_processes_asked_for(tmp_path: Path) -> None:
    # GIVEN 3 processes from the start, 2 started and 1 stopped later
    reader, events = read(build("containers"), tmp_path)
    forks = [e for e in events if isinstance(e, Fork)]
    exits = [e for e in events if isinstance(e, Exit)]
    # THEN one template plus 5 forked processes existed, and 1 exited
    assert reader.processes == 1 + 3 + 2
    assert {f.pid for f in forks} == {1} and len({f.child_pid for f in forks}) == 5
    assert [f.t for f in forks].count(0) == 3
    assert len(exits) == 1 and exits[0].pid != 1
    # and only the template says prctl: its children inherit merge_any
    assert [(e.pid, e.value) for e in events if isinstance(e, Prctl)] == [(1, True)]
    assert not any(isinstance(e, Madvise) for e in events)
    # and every process builds the same heap
    heaps = [initial_fill(events, f.child_pid, 0x7F0000000000 + 2**32, f.t) for f in forks]
    assert len(heaps[0]) == MIB_PAGES
    assert len({heap.tobytes() for heap in heaps}) == 1


def test_gc_heap_uses_prctl_and_zeroes_freed_regions(tmp_path: Path) -> None:
    _, events = read(build("gc-heap", instances=3), tmp_path)
    assert sorted(e.pid for e in events if isinstance(e, Prctl) and e.value) == [1, 2, 3]
    assert not any(isinstance(e, Madvise) for e in events)
    # 2 MiB heaps at 8 MiB/s for 1 s: the young half fills many times, and is zeroed each time
    zeroing = [
        e for e in events if isinstance(e, Write) and isinstance(e.content, int) and e.content == 0
    ]
    assert len(zeroing) >= 3 * 4
    assert all(e.len == MIB_PAGES * PAGE for e in zeroing if e.addr == 0x7F0000000000 + 2**20)


def test_zero_heavy_unmerges_the_processes_asked_for(tmp_path: Path) -> None:
    _, events = read(build("zero-heavy", processes=4, unmerging_processes=2), tmp_path)
    unmerges = [e for e in events if isinstance(e, Madvise) and e.advice == "unmergeable"]
    assert sorted(e.pid for e in unmerges) == [1, 2]
    assert all(e.len == MIB_PAGES * PAGE and e.t == 250_000_000 for e in unmerges)
    assert any(isinstance(e, Madvise) and e.advice == "dontneed" for e in events)
    fill = initial_fill(events, 3)
    assert int((fill == 0).sum()) == round(MIB_PAGES * 0.8)


def test_unmerge_cycle_toggles_zero_pages_each_cycle(tmp_path: Path) -> None:
    _, events = read(build("unmerge-cycle", cycles=3), tmp_path)
    toggles = [e.settings["use_zero_pages"] for e in events if isinstance(e, Ksm)]
    assert toggles == [1] + [1, 0] * 3
    labels = [e.label for e in events if isinstance(e, Snapshot)]
    assert len(labels) == 3 * 2 * 2 + 1 and labels[-1] == "end"
    assert labels[:2] == ["cycle1-zero-pages-on-merged", "cycle1-zero-pages-on-unmerged"]


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("vm-guests", ["guests=0"], "parameter guests must be between 1 and 1024, not 0"),
        ("vm-guests", ["guests=two"], "parameter guests must be an integer, not 'two'"),
        ("vm-guests", ["zero_percent=nan"], "parameter zero_percent must be a finite number"),
        ("vm-guests", ["zero_percent=101"], "between 0 and 100, not 101"),
        ("vm-guests", ["zero_percent=60", "shared_percent=50"], "must not exceed 100"),
        ("vm-guests", ["guests"], "expected NAME=VALUE, not 'guests'"),
        ("vm-guests", ["heap_mib=1"], "unknown parameter 'heap_mib' of vm-guests"),
        ("containers", ["stops=9"], "stops must not exceed processes"),
        ("containers", ["duration_s=0"], "starts and stops need duration_s > 0"),
        ("zero-heavy", ["unmerging_processes=5"], "must not exceed processes"),
        ("gc-heap", ["use_zero_pages=2"], "use_zero_pages must be between 0 and 1"),
    ],
)
def test_bad_parameters_are_usage_errors(name: str, params: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_params(get_workload(name), params)


def test_synthesize_rejects_unknown_workloads_and_seeds() -> None:
    with pytest.raises(UsageError, match="unknown workload 'nope'"):
        synthesize("nope", io.BytesIO())
    with pytest.raises(UsageError, match=r"seed must be between 0 and 2\*\*64-1"):
        synthesize("vm-guests", io.BytesIO(), seed=-1)
    with pytest.raises(UsageError, match="parameter guests must be an integer"):
        synthesize("vm-guests", io.BytesIO(), {"guests": 2.5})


# --------------------------------------------------------------------------- replayed


def test_vm_guests_merges_what_the_guests_share(tmp_path: Path) -> None:
    # GIVEN 3 guests of 256 pages: 51 zero, 102 shared by all (20% and 40%)
    report = run_both(build("vm-guests"), tmp_path)
    for mode in ("legacy", "unshare"):
        booted = snap(report, mode, "booted")
        # THEN after settling every shared page is one KSM page mapped by all three
        assert booted["ksm"]["pages_shared"] == 102
        assert booted["ksm"]["pages_sharing"] == 2 * 102
    # and only the unshare mode counts the zero pages KSM placed
    assert snap(report, "legacy", "booted")["ksm"]["ksm_zero_pages"] is None
    assert snap(report, "unshare", "booted")["ksm"]["ksm_zero_pages"] == 3 * 51
    # and the dirtying leaves fewer pages shared than at boot
    assert (
        snap(report, "unshare", "dirtied")["ksm"]["pages_sharing"]
        < snap(report, "unshare", "booted")["ksm"]["pages_sharing"]
    )


def test_zero_heavy_shows_the_modes_apart(tmp_path: Path) -> None:
    report = run_both(build("zero-heavy"), tmp_path)
    legacy, unshare = snap(report, "legacy", "unmerged"), snap(report, "unshare", "unmerged")
    # the unmerging process gets private zeroed pages in the unshare mode only
    assert rss(unshare) > rss(legacy)
    assert unshare["ksm"]["ksm_zero_pages"] > 0 and legacy["ksm"]["ksm_zero_pages"] is None
    assert unshare["events"]["zero_pages_unshared"] > 0
    assert legacy["events"]["zero_pages_unshared"] == 0
    by_pid = {
        mode: {p["pid"]: p for p in snap(report, mode, "unmerged")["processes"]}
        for mode in ("legacy", "unshare")
    }
    assert by_pid["unshare"][1]["ksm_zero_pages"] == 0
    assert by_pid["unshare"][2]["ksm_zero_pages"] > 0


def test_unmerge_cycle_unshares_zero_pages_only_in_unshare_mode(tmp_path: Path) -> None:
    report = run_both(build("unmerge-cycle"), tmp_path)
    total = 2 * MIB_PAGES
    unmerged = "cycle1-zero-pages-on-unmerged"
    assert rss(snap(report, "unshare", unmerged)) == total
    assert rss(snap(report, "legacy", unmerged)) == total - 2 * round(MIB_PAGES * 0.25)
    # with use_zero_pages=0 the unshare mode merges the zeroed private pages as KSM pages
    merged = "cycle1-zero-pages-off-merged"
    assert (
        snap(report, "unshare", merged)["ksm"]["pages_sharing"]
        > snap(report, "legacy", merged)["ksm"]["pages_sharing"]
    )


def test_containers_share_the_runtime_heap(tmp_path: Path) -> None:
    report = run_both(build("containers"), tmp_path)
    started = snap(report, "unshare", "started")
    assert started["ksm"]["pages_shared"] >= MIB_PAGES
    assert started["ksm"]["pages_sharing"] >= 2 * MIB_PAGES
    assert len(started["processes"]) == 1 + 3
    assert len(snap(report, "unshare", "final")["processes"]) == 1 + 3 + 2 - 1


def test_gc_heap_merges_zeroed_regions_and_alike_objects(tmp_path: Path) -> None:
    report = run_both(build("gc-heap"), tmp_path)
    settled = snap(report, "unshare", "settled")
    assert settled["ksm"]["ksm_zero_pages"] > 0
    assert settled["ksm"]["pages_sharing"] > 0
    assert all(p["ksm_merge_any"] for p in settled["processes"])


# --------------------------------------------------------------------------- command line


def invoke(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, prog_name="ksmreplay")


def test_list_describes_every_workload_and_parameter() -> None:
    result = invoke("synth", "--list")
    assert result.exit_code == 0 and result.stderr == ""
    for workload in WORKLOADS:
        assert f"{workload.name}: {workload.summary}\n" in result.stdout
    assert "    guests=4 " in result.stdout
    assert "    zero_percent=20 " in result.stdout
    one = invoke("synth", "--list", "gc-heap").stdout
    assert one.startswith("gc-heap: ") and "vm-guests" not in one


def test_synth_to_stdout_validates(tmp_path: Path) -> None:
    made = invoke("synth", "vm-guests", "--param", "guests=2", "--seed", "3", "-o", "-")
    assert made.exit_code == 0 and made.stderr == ""
    out = io.BytesIO()
    synthesize("vm-guests", out, {"guests": 2}, seed=3)
    assert made.stdout_bytes == out.getvalue()
    checked = invoke("validate", "-", input=made.stdout_bytes)
    assert checked.exit_code == 0
    assert re.fullmatch(
        r"<stdin>: ok, \d+ events, duration 2\.000000000 s, 2 processes\n", checked.stdout
    )


def test_synth_form_follows_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    assert invoke("synth", "unmerge-cycle", "-o", str(path)).exit_code == 0
    assert path.read_text().startswith('{"ksmreplay": 1,')
    other = tmp_path / "u.trace"
    assert invoke("synth", "unmerge-cycle", "--format", "jsonl", "-o", str(other)).exit_code == 0
    assert other.read_bytes() == path.read_bytes()


def test_synth_errors_are_one_line_with_status_2(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    result = invoke("synth", "vm-guests", "--param", "guests=0", "-o", str(path))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == "ksmreplay: parameter guests must be between 1 and 1024, not 0\n"
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert invoke("synth", "vm-guests").exit_code == 2
    assert invoke("synth", "-o", "-").exit_code == 2
    assert invoke("synth", "nope", "-o", "-").exit_code == 2


# --------------------------------------------------------------------------- bundled traces


def _bundled_commands() -> dict[str, list[str]]:
    """``{trace file name: arguments}`` of every ``ksmreplay synth`` line of traces/README.md."""
    commands = {}
    for line in (TRACES / "README.md").read_text().splitlines():
        if line.startswith("    ksmreplay synth "):
            args = shlex.split(line)[1:]
            target = args[args.index("-o") + 1]
            commands[Path(target).name] = args
    return commands


def test_every_workload_has_a_documented_bundled_trace() -> None:
    commands = _bundled_commands()
    assert Counter(args[1] for args in commands.values()) == Counter(WORKLOAD_NAMES)
    for name, args in commands.items():
        assert args[args.index("-o") + 1] == f"traces/{name}"
        assert (TRACES / name).stat().st_size <= 5 * 2**20


@pytest.mark.parametrize("name", sorted(_bundled_commands()))
def test_bundled_trace_is_what_its_command_writes(name: str, tmp_path: Path) -> None:
    args = _bundled_commands()[name]
    args[args.index("-o") + 1] = str(tmp_path / name)
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / name).read_bytes() == (TRACES / name).read_bytes(), (
        f"run: {shlex.join(_bundled_commands()[name])}"
    )
