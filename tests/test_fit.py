"""``synth --fit``: a workload's parameters set from what a trace holds, so that the
synthetic trace saves what the measured one saves."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support import needs_ptrace

from ksmreplay.cli import cli
from ksmreplay.trace import open_trace

REPO = Path(__file__).parent.parent


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="ksmreplay")


def fitted_params(stderr: str) -> dict[str, float]:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("  parameters: ")]
    return {
        name: float(value)
        for name, value in (word.split("=") for word in line.split(": ", 1)[1].split())
    }


def saved_share(trace: Path, label: str) -> float:
    """The share of the pages KSM saves at snapshot ``label`` (unshare mode): 1 - the
    frames in use / the pages the processes would hold without KSM."""
    result = invoke("run", "--mode", "unshare", "--format", "json", str(trace))
    assert result.exit_code == 0, result.stderr
    (snap,) = [s for s in json.loads(result.stdout)["runs"][0]["snapshots"] if s["label"] == label]
    without = sum(p["rss_anon_pages"] for p in snap["processes"])
    without += snap["memory"]["zero_page_maps_by_ksm"]
    return float(1 - snap["memory"]["anon_frames"] / without)


def header_params(trace: Path) -> dict[str, Any]:
    with open_trace(str(trace)) as reader:
        params: dict[str, Any] = reader.header.meta["params"]
    return params


def test_fit_recovers_the_parameters_of_a_vm_guests_trace(tmp_path: Path) -> None:
    """GIVEN a vm-guests trace with half of each guest rewritten during it, WHEN it is
    fitted, THEN the parameters come back (the shares as they were at the start)."""
    given = tmp_path / "given.msgpack"
    made = invoke(
        "synth", "vm-guests", "--seed", "3", "--param", "guests=6", "--param", "guest_mib=8",
        "--param", "zero_percent=25", "--param", "shared_percent=30",
        "--param", "dirty_pages_per_s=400", "--param", "dirty_zero_percent=20",
        "--param", "duration_s=2", "--param", "pages_to_scan=500", "-o", str(given),
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    fit = tmp_path / "fit.msgpack"
    result = invoke("synth", "vm-guests", "--fit", str(given), "-o", str(fit))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"fitted to {given}:\n")
    p = fitted_params(result.stderr)
    assert {k: p[k] for k in ("guests", "guest_mib", "duration_s")} == {
        "guests": 6,
        "guest_mib": 8,
        "duration_s": 2,
    }
    assert {k: p[k] for k in ("pages_to_scan", "sleep_millisecs", "use_zero_pages")} == {
        "pages_to_scan": 500,
        "sleep_millisecs": 20,
        "use_zero_pages": 1,
    }
    assert p["zero_percent"] == pytest.approx(25, abs=2)
    assert p["shared_percent"] == pytest.approx(30, abs=2)
    assert p["dirty_pages_per_s"] == pytest.approx(400, rel=0.05)
    assert p["dirty_zero_percent"] == pytest.approx(20, abs=2)
    assert header_params(fit) == {**header_params(given), **p}
    assert saved_share(fit, "settled") == pytest.approx(saved_share(given, "settled"), rel=0.05)


def test_fit_finds_the_working_set_the_rewrites_fall_on(tmp_path: Path) -> None:
    """GIVEN vm-guests traces whose rewrites fall on all pages or on a fifth of them, WHEN
    each is fitted, THEN dirty_set_percent comes back, and the fitted trace saves what
    the given one saves (a model of uniform rewrites would lose the pages shared)."""
    for working in (100, 20):
        given = tmp_path / f"given-{working}.msgpack"
        made = invoke(
            "synth", "vm-guests", "--seed", "5", "--param", "guest_mib=8",
            "--param", "zero_percent=10", "--param", "shared_percent=70",
            "--param", "dirty_pages_per_s=600", "--param", "duration_s=3",
            "--param", f"dirty_set_percent={working}", "-o", str(given),
        )  # fmt: skip
        assert made.exit_code == 0, made.stderr
        fit = tmp_path / f"fit-{working}.msgpack"
        result = invoke("synth", "vm-guests", "--fit", str(given), "-o", str(fit))
        assert result.exit_code == 0, result.stderr
        p = fitted_params(result.stderr)
        assert p["dirty_set_percent"] == pytest.approx(working, abs=4)
        assert p["shared_percent"] == pytest.approx(70, abs=3)
        assert saved_share(fit, "settled") == pytest.approx(saved_share(given, "settled"), rel=0.03)


def test_a_param_overrides_the_fit(tmp_path: Path) -> None:
    given = tmp_path / "given.msgpack"
    assert invoke("synth", "vm-guests", "--seed", "1", "-o", str(given)).exit_code == 0
    forty = tmp_path / "forty.msgpack"
    result = invoke(
        "synth", "vm-guests", "--fit", str(given), "--param", "guests=40",
        "--param", "guest_mib=2", "-o", str(forty),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    p = fitted_params(result.stderr)
    assert p["guests"] == 4
    params = header_params(forty)
    assert (params["guests"], params["guest_mib"]) == (40, 2)
    assert params["zero_percent"] == p["zero_percent"]


def test_static_workloads_take_the_composition(tmp_path: Path) -> None:
    given = tmp_path / "given.msgpack"
    made = invoke(
        "synth", "unmerge-cycle", "--param", "processes=3", "--param", "zero_percent=10",
        "--param", "shared_percent=60", "--param", "rewrite_percent=0", "-o", str(given),
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    for workload in ("zero-heavy", "unmerge-cycle"):
        result = invoke("synth", workload, "--fit", str(given), "-o", str(tmp_path / "f"))
        assert result.exit_code == 0, result.stderr
        p = fitted_params(result.stderr)
        assert (p["processes"], p["mib"]) == (3, 4)
        assert p["zero_percent"] == pytest.approx(10, abs=1)
        assert p["shared_percent"] == pytest.approx(60, abs=1)
        assert "note: rates and phases keep their values" in result.stderr


def test_what_cannot_be_fitted_is_one_line(tmp_path: Path) -> None:
    given = tmp_path / "given.msgpack"
    assert invoke("synth", "vm-guests", "--param", "guests=1", "-o", str(given)).exit_code == 0
    result = invoke("synth", "gc-heap", "--fit", str(given), "-o", str(tmp_path / "f"))
    assert (result.exit_code, result.stderr) == (
        2,
        "ksmreplay: --fit is not supported for gc-heap "
        "(it is for vm-guests, zero-heavy, unmerge-cycle)\n",
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"ksmreplay": 1}\n[0, "alloc", 1, 4096, 4096]\n')
    result = invoke("synth", "vm-guests", "--fit", str(empty), "-o", str(tmp_path / "f"))
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        2,
        "ksmreplay: the trace holds no written pages to measure",
    )
    result = invoke("synth", "vm-guests", "--fit", str(given), "-o", str(tmp_path / "f"))
    assert result.exit_code == 0
    assert "shared_percent" not in fitted_params(result.stderr)
    assert "note: one process: pages shared between guests cannot be measured" in result.stderr
    result = invoke("synth", "vm-guests", "--fit", str(tmp_path / "missing"), "-o", "-")
    assert result.exit_code == 4
    result = invoke("synth", "vm-guests", "--fit-since", "2s", "-o", str(tmp_path / "f"))
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        2,
        "Error: --fit-since needs --fit",
    )
    result = invoke("synth", "vm-guests", "--fit", str(given), "--fit-since", "0", "-o", "-")
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        2,
        "ksmreplay: bad --fit-since '0': must be positive",
    )


def test_since_measures_the_rewrites_from_then_in_inspect_and_fit(tmp_path: Path) -> None:
    """GIVEN a vm-guests trace whose rewrites run from 0 to 2 s, WHEN it is measured from
    1 s on, THEN inspect and --fit say so, half the rewrites count, and the duration is
    the second left."""
    given = tmp_path / "given.msgpack"
    made = invoke(
        "synth", "vm-guests", "--param", "guests=2", "--param", "guest_mib=4",
        "--param", "dirty_pages_per_s=200", "--param", "duration_s=2", "-o", str(given),
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    whole = json.loads(invoke("inspect", "--format", "json", str(given)).stdout)["contents"]
    late = json.loads(invoke("inspect", "--format", "json", "--since", "1s", str(given)).stdout)
    assert late["contents"]["activity_s"] == whole["activity_s"] - 1
    assert late["contents"]["rewritten_pages"] == pytest.approx(
        whole["rewritten_pages"] / 2, rel=0.15
    )
    table = invoke("inspect", "--since", "1s", str(given)).stdout
    assert "from t=1.000000000 s (--since)" in table
    result = invoke("synth", "vm-guests", "--fit", str(given), "--fit-since", "1s", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert fitted_params(result.stderr)["duration_s"] == pytest.approx(whole["activity_s"] - 1)


# Four processes of MIB MiB each: 20 % zeros, 40 % pages all four hold, the rest
# their own; "ready" once all are filled, then they wait.
FAMILY = r"""
import mmap, os, random, sys, time
MIB, PAGE = 2, mmap.PAGESIZE
n = MIB * 2**20 // PAGE
common = [random.Random(7).randbytes(PAGE) for _ in range(n * 40 // 100)]
def hold(k):
    rng = random.Random(100 + k)
    m = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    order = list(range(n))
    rng.shuffle(order)
    zeros = n * 20 // 100
    for i, p in enumerate(order):
        if i < zeros:
            m[p * PAGE:(p + 1) * PAGE] = bytes(PAGE)
        elif i < zeros + len(common):
            m[p * PAGE:(p + 1) * PAGE] = common[i - zeros]
        else:
            m[p * PAGE:(p + 1) * PAGE] = rng.randbytes(PAGE)
    return m
r, w = os.pipe()
for k in range(1, 4):
    if os.fork() == 0:
        m = hold(k)
        os.write(w, b"x")
        sys.stdin.read()
        os._exit(0)
m = hold(0)
for _ in range(3):
    os.read(r, 1)
print("ready", flush=True)
sys.stdin.read()
"""


@needs_ptrace
def test_a_fitted_trace_saves_what_the_recording_saves(tmp_path: Path) -> None:
    """GIVEN a recording of four processes holding zeros, pages they share and pages of
    their own, WHEN vm-guests is fitted to it, THEN its replay saves (frames against
    the pages held, once ksmd settled) within 10 % of what the recording's replay saves."""
    family = subprocess.Popen(
        [sys.executable, "-c", FAMILY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    recording = tmp_path / "recording.msgpack"
    try:
        assert family.stdout is not None
        assert family.stdout.readline().strip() == "ready"
        result = invoke(
            "record", "--pid", str(family.pid), "--interval", "250ms", "--duration", "1s",
            "-o", str(recording),
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    finally:
        assert family.stdin is not None
        family.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            family.wait(10)
        if family.poll() is None:
            family.send_signal(signal.SIGKILL)
            family.wait()
    fit = tmp_path / "fit.msgpack"
    result = invoke("synth", "vm-guests", "--fit", str(recording), "-o", str(fit))
    assert result.exit_code == 0, result.stderr
    p = fitted_params(result.stderr)
    assert p["guests"] == 4
    recorded, fitted = saved_share(recording, "settled"), saved_share(fit, "settled")
    # 20 % zeros and 3 of 4 copies of 40 % of the 2 MiB areas are saved at least
    assert recorded > 0.2
    assert fitted == pytest.approx(recorded, rel=0.10)
    inspected = invoke("inspect", "--format", "json", str(recording))
    contents = json.loads(inspected.stdout)["contents"]
    assert contents["processes"] == 4 and contents["snapshot"] == "settled"
    table = invoke("inspect", str(recording)).stdout
    assert f"processes          {contents['processes']}\n" in table
    assert f"  processes          {contents['processes']}\n" in result.stderr
