"""Calibrate ksmd's CPU cost model (``ksmreplay.timing.COST_NS``) on the live kernel.

Usage::

    sudo .venv/bin/python bench/cpu_model.py measure [--reps N] [--only NAME ...]
    .venv/bin/python bench/cpu_model.py fit
    .venv/bin/python bench/cpu_model.py hot
    sudo .venv/bin/python bench/cpu_model.py validate [--reps N] [--only NAME ...]
    .venv/bin/python bench/cpu_model.py rework | report

``measure`` replays each calibration trace (:data:`EXPERIMENTS`) ``--reps``
times on the live kernel with ``ksmreplay.live.execute(..., ksmd_clock=True)``
(under the live lock; KSM is left stopped, unmerged, every knob restored),
which reads ksmd's own CPU time (``/proc/<ksmd>/schedstat``) at every
snapshot, and once through the simulator, which says what ksmd did between
two snapshots, kind by kind (``ksmreplay.timing.Work``).  Each trace isolates
one kind of work: most of them run ksmd one pass at a time (``settle 1``:
the live kernel and the simulator do exactly the same work, which the
snapshots' counters check), the batch overhead is measured with
``sleep_millisecs=0`` and few pages per batch.  The rows (one per
interval between two snapshots and replay) go to ``bench/cpu_model.json``.

``fit`` reads that file, takes the median CPU time of each interval over the
replays, fits one cost per kind (non-negative least squares on the relative
error) and prints :data:`ksmreplay.timing.COST_NS` as fitted, and the
calibration table: for each trace, the kind it isolates, the measured CPU
time per unit of work (median, 10th and 90th percentile over the replays)
and what the model says.

``hot`` fits :data:`ksmreplay.timing.HOT_PERCENT`, the price of work over
a working set that fits in the cache, from the live spreads of the timed
scenarios that never sleep (``tests/scenarios/timed/sleep0_*``, recorded
with ksmd's CPU time at every snapshot): for each scenario whose working set
fits (:func:`ksmreplay.timing.pass_percents`), each live run and each interval
between two snapshots after the first (the first passes left out), the live
CPU time per full scan over what the model at full price charges per pass
over the same interval; the median of those ratios, in percent.  ``fit``
prices the calibration traces' work with :data:`~ksmreplay.timing.HOT_PERCENT`
(their working sets are far larger than the cache: it takes at most 1 % off)
and ``hot`` divides by :data:`~ksmreplay.timing.COST_NS`: the two are fitted
together by running both until neither changes.

``rework`` counts the work of every recorded interval again with the
simulator of today (after the kinds of work changed), keeping the live
measurements.

``validate`` replays workloads the model was not fitted on (``synth``
traces: guests, containers, a garbage-collected heap) live ``--reps`` times
and through the simulator, and prints ksmd's CPU time by the live kernel
(median, spread) and by the model at every snapshot; the results go to
``bench/cpu_validation.json``.

The machine is noisy (other work shares its 2 CPUs): the traces are large
(tens of thousands of pages, many passes), repeated, and summarised by
medians.  The work is CPU time, not wall time: what other processes run
changes it less than it changes how long ksmd takes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ksmreplay.engine import Engine
from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.live.kernel import mergeable_processes
from ksmreplay.replay import replay
from ksmreplay.report import Snap
from ksmreplay.timing import (
    CACHE_BYTES,
    COST_NS,
    HOT_PERCENT,
    ITEM_BYTES,
    PAGE_BYTES,
    Work,
    batch_cost_ns,
    cached_pages,
    pass_percents,
)
from ksmreplay.trace import TraceWriter, open_trace

HERE = Path(__file__).resolve().parent
DATA = HERE / "cpu_model.json"
VALIDATION = HERE / "cpu_validation.json"
PAGE = 4096
BASE = 0x10000000
STRIDE = 1 << 36
"""Address distance between two mappings of one process."""
MS = 1_000_000
LOCK_WAIT_S = 3600.0
"""Longest wait for the live lock (seconds): other replays may hold it a while."""
KINDS = Work._fields
COUNTERS = ("pages_scanned", "pages_skipped", "full_scans", "pages_shared", "pages_sharing")
"""Counters the live kernel and the simulator must agree on for a settled interval."""


class Trace:
    """A trace being built: :class:`TraceWriter` over a file, and a clock."""

    def __init__(self, path: Path, knobs: Mapping[str, KnobValue]) -> None:
        self.path = path
        self._file = path.open("wb")
        self.w = TraceWriter(self._file)
        self.t = 0
        self.w.ksm(0, dict(knobs))
        self.mappings: dict[int, int] = {}
        self.pages = 0
        """Pages of the mergeable mappings made so far."""

    def fill(self, pid: int, fps: Sequence[int] | np.ndarray, region: int = 0) -> int:
        """A new mergeable mapping of ``pid`` holding ``fps``; its address."""
        addr = BASE + region * STRIDE
        n = len(fps)
        self.pages += n
        self.w.alloc(self.t, pid, addr, n * PAGE)
        self.w.write(self.t, pid, addr, n * PAGE, [int(x) for x in fps])
        self.w.madvise(self.t, pid, addr, n * PAGE, "mergeable")
        return addr

    def rewrite(self, pid: int, addr: int, fps: Sequence[int] | np.ndarray) -> None:
        self.w.write(self.t, pid, addr, len(fps) * PAGE, [int(x) for x in fps])

    def passes(self, n: int, label: str) -> None:
        """``n`` passes, one at a time, a snapshot after each (``label``.1, ...)."""
        for i in range(1, n + 1):
            self.w.settle(self.t, 1)
            self.w.snapshot(self.t, f"{label}.{i}")

    def start(self) -> None:
        """A first snapshot: the intervals are measured from here."""
        self.w.snapshot(self.t, "start")

    def run(self, knobs: Mapping[str, KnobValue], ms: int, label: str, every: int) -> None:
        """``knobs``, then ksmd in trace time for ``ms``, a snapshot every ``every`` ms."""
        self.w.ksm(self.t, dict(knobs))
        self.w.snapshot(self.t, f"{label}.0")
        for i in range(1, ms // every + 1):
            self.w.snapshot(self.t + i * every * MS, f"{label}.{i}")
        self.t += ms * MS

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Experiment:
    """A calibration trace: ``build(trace, pages)`` writes it; ``kind`` is what it isolates."""

    name: str
    kind: str
    pages: int
    build: Callable[[Trace, int], None]
    timed: bool = False
    """ksmd runs in trace time (the simulator's work is scaled to the live counters)."""
    knobs: Mapping[str, KnobValue] | None = None


def _spread(n: int) -> np.ndarray:
    """0..n-1 in an order that keeps consecutive numbers apart (tree walks, cache)."""
    return (np.arange(n, dtype=np.int64) * 7919) % n


def distinct(t: Trace, n: int) -> None:
    # pass 1: new items and checksums; then unstable tree searches and inserts
    t.fill(1, 1000 + _spread(n))
    t.start()
    t.passes(1, "first")
    t.passes(5, "search")


def changed(t: Trace, n: int) -> None:
    # every page rewritten before each pass: checksums of known items only
    addr = t.fill(1, 1000 + _spread(n))
    t.start()
    t.passes(1, "first")
    for i in range(1, 6):
        t.rewrite(1, addr, 1000 + i * n + _spread(n))
        t.passes(1, f"checksum{i}")


def pairs(t: Trace, n: int) -> None:
    # two copies of each content, half a mapping apart: inserts, then new KSM pages
    half = _spread(n // 2) + 5000
    t.fill(1, np.concatenate([half, half]))
    t.start()
    t.passes(1, "first")
    t.passes(1, "pair")
    t.passes(4, "hit")


def groups(t: Trace, n: int) -> None:
    # 16 copies of each content: a new KSM page, then 14 merges into it
    k = n // 16
    t.fill(1, np.tile(_spread(k) + 9000, 16))
    t.start()
    t.passes(1, "first")
    t.passes(1, "merge")
    t.passes(3, "hit")


def onto_stable(t: Trace, n: int) -> None:
    # a stable tree of n/2 KSM pages, then n/2 distinct pages searched through it
    half = _spread(n // 2) + 20000
    t.fill(1, np.concatenate([half, half]))
    t.passes(3, "merged")
    t.fill(2, 10**7 + _spread(n // 2))
    t.start()
    t.passes(1, "first")
    t.passes(4, "search")


def zero(t: Trace, n: int) -> None:
    # use_zero_pages: checksums, zero-page merges, items freed, then zero PTEs walked
    t.fill(1, np.zeros(n, np.int64))
    t.start()
    t.passes(1, "first")
    t.passes(1, "zero")
    t.passes(1, "free")
    t.passes(3, "empty")


def skips(t: Trace, n: int) -> None:
    # smart_scan on distinct pages: most passes skip most pages
    t.fill(1, 1000 + _spread(n))
    t.passes(12, "young")
    t.start()
    t.passes(27, "skip")


def chain(t: Trace, n: int) -> None:
    # max_page_sharing 2: one content in n pages makes a chain of n/2 dups
    t.fill(1, np.full(n, 77, np.int64))
    t.start()
    t.passes(1, "first")
    t.passes(1, "chain")
    t.passes(2, "hit")


def hits_timed(t: Trace, n: int) -> None:
    # merged pages scanned back to back, few pages a batch: the batch overhead
    t.fill(1, np.tile(np.arange(64) + 300, n // 64))
    t.passes(3, "merged")
    t.run({"pages_to_scan": 4, "sleep_millisecs": 0}, 1500, "batch4", 500)
    t.run({"pages_to_scan": 64, "sleep_millisecs": 0}, 1500, "batch64", 500)
    t.run({"pages_to_scan": n, "sleep_millisecs": 0}, 1500, "pass", 500)


def empty_timed(t: Trace, n: int) -> None:
    # no page at all in a mergeable mapping, back to back: passes of nothing
    del n
    t.w.alloc(0, 1, BASE, 16 * PAGE)
    t.w.madvise(0, 1, BASE, 16 * PAGE, "mergeable")
    t.pages += 16
    t.run({"sleep_millisecs": 0}, 1500, "empty", 500)


SMART_OFF = {"smart_scan": 0, "pages_to_scan": 100, "sleep_millisecs": 20}
EXPERIMENTS: tuple[Experiment, ...] = (
    *(
        Experiment(f"distinct-{n}", "searches", n, distinct, knobs=SMART_OFF)
        for n in (4096, 16384, 65536)
    ),
    *(Experiment(f"changed-{n}", "checksums", n, changed, knobs=SMART_OFF) for n in (16384, 65536)),
    *(Experiment(f"pairs-{n}", "pairs", n, pairs, knobs=SMART_OFF) for n in (16384, 65536)),
    Experiment("groups-32768", "merges", 32768, groups, knobs=SMART_OFF),
    Experiment("onto-stable-32768", "stable_levels", 32768, onto_stable, knobs=SMART_OFF),
    Experiment("zero-32768", "zero_merges", 32768, zero, knobs={**SMART_OFF, "use_zero_pages": 1}),
    Experiment("skips-32768", "skips", 32768, skips, knobs={"smart_scan": 1}),
    Experiment("chain-2048", "dups", 2048, chain, knobs={**SMART_OFF, "max_page_sharing": 2}),
    Experiment("hits-timed-4096", "batches", 4096, hits_timed, timed=True, knobs=SMART_OFF),
    Experiment("empty-timed", "passes", 0, empty_timed, timed=True, knobs=SMART_OFF),
)  # fmt: skip


# -- replays ---------------------------------------------------------------------


def make_trace(exp: Experiment, directory: Path) -> Path:
    return _build(exp, directory)[0]


def _build(exp: Experiment, directory: Path) -> tuple[Path, int]:
    """The trace of ``exp`` written in ``directory``, and the pages of its
    mergeable mappings (every one is made before the measured intervals)."""
    path = directory / f"{exp.name}.msgpack"
    trace = Trace(path, {"run": 1, **(exp.knobs or {})})
    exp.build(trace, exp.pages)
    trace.close()
    return path, trace.pages


def working_pages() -> dict[str, int | None]:
    """Per calibration trace, the working set its batches may find in the cache
    (:func:`ksmreplay.timing.cached_pages`): the pages its passes walk for the
    timed traces, which run ksmd back to back; none for the rest, which run it
    pass by pass under ``sleep_millisecs`` 20."""
    with tempfile.TemporaryDirectory() as tmp:
        pages = {exp.name: _build(exp, Path(tmp))[1] for exp in EXPERIMENTS}
    return {exp.name: cached_pages(pages[exp.name], 0 if exp.timed else 20) for exp in EXPERIMENTS}


class _Recording(Engine):
    """The engine, keeping ksmd's work and modelled CPU time at every snapshot."""

    kept: list[tuple[str, Work, int, int]]

    def snapshot(self, label: str, t: int, index: int) -> Snap:
        if label:  # (not the engine's own look during a settle)
            ksmd = self.ksmd
            self.kept.append((label, ksmd.work_done, ksmd.cpu_ns, ksmd.pass_pages))
        return super().snapshot(label, t, index)


def simulate(path: Path) -> list[dict[str, Any]]:
    """Every snapshot of the simulator's replay: label, ksm counters, work, modelled CPU."""
    kept: list[tuple[str, Work, int, int]] = []

    def factory(mode: str, page_size: int, settings: Any, pins: Any, kernel: str) -> Engine:
        engine = _Recording(mode, page_size, settings, kernel, pins=pins)
        engine.kept = kept
        return engine

    with open_trace(str(path)) as reader:
        report = replay(reader, ["unshare"], factory=factory)
    snaps = [*report["runs"][0]["snapshots"], report["runs"][0]["final"]]
    return [
        {
            "label": s["label"],
            "ksm": dict(s["ksm"]),
            "work": list(work),
            "cpu_ns": cpu,
            "pages": pages,
        }
        for s, (_label, work, cpu, pages) in zip(snaps, kept, strict=True)
    ]


def wait_alone(timeout_s: float = 3600.0) -> None:
    """Wait until no other process has mergeable memory (a replay's pages would
    be scanned with theirs)."""
    deadline = time.monotonic() + timeout_s
    said = False
    while users := [f"{pid} {comm}" for pid, comm in mergeable_processes()]:
        if time.monotonic() > deadline:
            raise SystemExit(f"other processes keep mergeable memory: {', '.join(users)}")
        if not said:
            print(f"waiting for {', '.join(users)} to end", flush=True)
            said = True
        time.sleep(5)


def live(path: Path) -> list[dict[str, Any]]:
    """Every snapshot of a live replay: label, ksm counters, ksmd's CPU time, real time.

    Waits first until no other process has mergeable memory."""
    from ksmreplay.live import execute
    from ksmreplay.live.kernel import exclusive_lock, free_leftover_items

    while True:
        wait_alone()
        with exclusive_lock(timeout=LOCK_WAIT_S):  # (others replay live too)
            if mergeable_processes():
                continue
            free_leftover_items()
            with open_trace(str(path)) as reader:
                report = execute(reader, ksmd_clock=True, observe_events=False)
            break
    snaps = [*report["runs"][0]["snapshots"], report["runs"][0]["final"]]
    return [
        {
            "label": s["label"],
            "ksm": dict(s["ksm"]),
            "cpu_ns": s["live"]["ksmd_cpu_ns"],  # type: ignore[typeddict-item]
            "elapsed_ns": s["live"]["elapsed_ns"],  # type: ignore[typeddict-item]
        }
        for s in snaps
    ]


def intervals(
    exp: Experiment, sim: list[dict[str, Any]], got: list[dict[str, Any]], rep: int
) -> Iterator[dict[str, Any]]:
    """The rows of one live replay: one per interval between two snapshots that
    measure (after ``start``; for a timed trace, two of one timed phase)."""
    labels = [s["label"] for s in sim]
    first = labels.index("start") if "start" in labels else 0
    for i in range(first + 1, len(sim) - 1):  # (the final snapshot repeats the last)
        a, b = sim[i - 1], sim[i]
        la, lb = got[i - 1], got[i]
        phase = b["label"].split(".")[0]
        if exp.timed and (phase not in TIMED_BUDGETS or a["label"].split(".")[0] != phase):
            continue
        live_delta = {k: lb["ksm"][k] - la["ksm"][k] for k in COUNTERS}
        sim_delta = {k: b["ksm"][k] - a["ksm"][k] for k in COUNTERS}
        if exp.timed:
            # every visit a KSM page already linked: the work follows from the counters
            visits, passes = live_delta["pages_scanned"], live_delta["full_scans"]
            budget = TIMED_BUDGETS[phase] or max(exp.pages, 1)
            per_pass = exp.pages // budget + 1  # (the last batch of a pass ends it)
            batches = round(visits / exp.pages * per_pass) if exp.pages else passes
            work = list(Work(batches=batches, passes=passes, hits=visits))
            # (no other process's pages: every pass visits the trace's pages)
            agree = abs(visits - passes * exp.pages) <= max(exp.pages, 1)
        else:
            work = [y - x for x, y in zip(a["work"], b["work"], strict=True)]
            agree = all(lb["ksm"][k] == b["ksm"][k] for k in COUNTERS)
        yield {
            "experiment": exp.name,
            "kind": exp.kind,
            "interval": b["label"],
            "rep": rep,
            "cpu_ns": lb["cpu_ns"] - la["cpu_ns"],
            "elapsed_ns": lb["elapsed_ns"] - la["elapsed_ns"],
            "work": work,
            "live": live_delta,
            "simulated": sim_delta,
            "agree": agree,
        }


TIMED_BUDGETS = {"batch4": 4, "batch64": 64, "pass": 0, "empty": 100}
"""pages_to_scan of the phases of the timed traces (0: the trace's pages)."""


def measure(names: Sequence[str], reps: int) -> None:
    data = load(DATA) if DATA.exists() else {"rows": []}
    chosen = [e for e in EXPERIMENTS if not names or e.name in names]
    with tempfile.TemporaryDirectory() as tmp:
        for exp in chosen:
            path = make_trace(exp, Path(tmp))
            sim = simulate(path)
            rows = [r for r in data["rows"] if r["experiment"] != exp.name]
            for rep in range(reps):
                began = time.monotonic()
                new = list(intervals(exp, sim, live(path), rep))
                rows += new
                bad = sum(not r["agree"] for r in new)
                print(
                    f"{exp.name} rep {rep}: {len(new)} intervals, {bad} disagreeing, "
                    f"{time.monotonic() - began:.1f} s",
                    flush=True,
                )
            data["rows"] = rows
            data["kernel"] = platform.release()
            data["machine"] = platform.machine()
            data["kinds"] = list(KINDS)
            save(DATA, data)


def rework() -> None:
    """Count again, with the simulator of today, the work of every recorded
    interval of :data:`DATA` (after the kinds of :class:`Work` changed); the
    live measurements stay as they are.  The simulated counters must still be
    the live ones."""
    data = load(DATA)
    with tempfile.TemporaryDirectory() as tmp:
        for exp in EXPERIMENTS:
            rows = [r for r in data["rows"] if r["experiment"] == exp.name]
            if not rows:
                continue
            if exp.timed:
                for r in rows:
                    r["work"] = r["work"] + [0] * (len(KINDS) - len(r["work"]))
                continue
            sim = simulate(make_trace(exp, Path(tmp)))
            for a, b in itertools.pairwise(sim):
                for r in rows:
                    if r["interval"] == b["label"]:
                        r["work"] = [y - x for x, y in zip(a["work"], b["work"], strict=True)]
                        assert all(r["live"][k] == b["ksm"][k] - a["ksm"][k] for k in COUNTERS)
            print(f"{exp.name}: {len(rows)} rows", flush=True)
    data["kinds"] = list(KINDS)
    save(DATA, data)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def save(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


# -- the fit ---------------------------------------------------------------------


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Non-negative least squares, min |a x - b| with x >= 0 (Lawson and Hanson)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    w = a.T @ (b - a @ x)
    for _ in range(iterations):
        if passive.all() or (w[~passive] <= 1e-12).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
        w = a.T @ (b - a @ x)
    del m
    return x


def medians(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (experiment, interval): the work and the CPU time's median and spread."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["agree"]:
            groups.setdefault((r["experiment"], r["interval"]), []).append(r)
    out = []
    for (exp, interval), rs in groups.items():
        cpu = sorted(r["cpu_ns"] for r in rs)
        works = {tuple(r["work"]) for r in rs}
        work = [statistics.median(col) for col in zip(*(r["work"] for r in rs), strict=True)]
        out.append(
            {
                "experiment": exp,
                "kind": rs[0]["kind"],
                "interval": interval,
                "work": work,
                "exact": len(works) == 1,
                "cpu": statistics.median(cpu),
                "p10": percentile(cpu, 10),
                "p90": percentile(cpu, 90),
                "n": len(cpu),
            }
        )
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of sorted ``values`` (linear between the nearest ranks)."""
    return float(np.percentile(np.asarray(values, float), q))


def priced_work(entry: Mapping[str, Any], pages: Mapping[str, int | None]) -> list[float]:
    """An interval's work in units of the full price: the work over the
    working set scaled by what a pass over it pays
    (:func:`ksmreplay.timing.pass_percents`: close to 100 % for these traces)."""
    skips, visits = pass_percents(pages[entry["experiment"]])
    return [
        n if kind in ("batches", "passes") else n * (skips if kind == "skips" else visits) / 100
        for kind, n in zip(KINDS, entry["work"], strict=True)
    ]


def fit(data: Mapping[str, Any]) -> Work:
    entries = [e for e in medians(data["rows"]) if e["cpu"] > 0]
    pages = working_pages()
    a = np.array([priced_work(e, pages) for e in entries], float)
    y = np.array([e["cpu"] for e in entries], float)
    # relative error: each interval weighs the same, whatever its size
    scale = 1.0 / y
    x = nnls(a * scale[:, None], y * scale)
    return Work(*(round(v) for v in x))


def table(data: Mapping[str, Any], costs: Work) -> list[list[str]]:
    """Per experiment: the kind, the measured and the modelled CPU time per unit of it."""
    entries = medians(data["rows"])
    pages = working_pages()
    out = []
    for exp in EXPERIMENTS:
        mine = [e for e in entries if e["experiment"] == exp.name]
        if not mine:
            continue
        k = KINDS.index(exp.kind)
        chosen = [e for e in mine if e["work"][k] > 0] or mine
        units = sum(e["work"][k] for e in chosen) or 1
        measured = sum(e["cpu"] for e in chosen) / units
        p10 = sum(e["p10"] for e in chosen) / units
        p90 = sum(e["p90"] for e in chosen) / units
        modelled = sum(cost(priced_work(e, pages), costs) for e in chosen) / units
        out.append(
            [
                exp.name,
                exp.kind,
                f"{measured:,.0f}",
                f"{p10:,.0f}-{p90:,.0f}",
                f"{modelled:,.0f}",
                f"{100 * (modelled / measured - 1):+.0f} %",
            ]
        )
    return out


def cost(work: Sequence[float], costs: Work) -> float:
    return float(sum(n * c for n, c in zip(work, costs, strict=True)))


def show(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(x).rjust(w) if i else str(x).ljust(w)
                for i, (x, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def run_fit() -> None:
    data = load(DATA)
    costs = fit(data)
    print("COST_NS = Work(")
    for name, value in zip(KINDS, costs, strict=True):
        print(f"    {name}={value:_},")
    print(")")
    print()
    header = ["trace", "kind", "measured ns/unit", "p10-p90", "modelled", "error"]
    show(table(data, costs), header)
    if tuple(costs) != tuple(COST_NS):
        print("\n(ksmreplay.timing.COST_NS differs from this fit)")


# -- the price of work over a cached working set ----------------------------------

TIMED = HERE.parent / "tests" / "scenarios" / "timed"


def hot_ratios() -> dict[str, list[float]]:
    """Per timed scenario that never sleeps and whose working set fits in the
    cache: every live run's CPU time per full scan, over an interval between
    two snapshots after the first, divided by the model's full-price CPU time
    per pass over the same interval of trace time."""
    out: dict[str, list[float]] = {}
    for path in sorted(TIMED.glob("sleep0_*.kernel-spread.json")):
        name = path.name[: -len(".kernel-spread.json")]
        sim = simulate(TIMED / f"{name}.jsonl")
        if any(s["pages"] * (ITEM_BYTES + PAGE_BYTES) > CACHE_BYTES for s in sim):
            continue
        spread = load(path)
        ratios = []
        snaps = spread["snapshots"]
        for i in range(1, len(snaps) - 1):
            a, b = snaps[i], snaps[i + 1]
            sa, sb = sim[i], sim[i + 1]
            work = Work(*(y - x for x, y in zip(sa["work"], sb["work"], strict=True)))
            passes = sb["ksm"]["full_scans"] - sa["ksm"]["full_scans"]
            if not passes:
                continue
            model = batch_cost_ns(work) / passes
            for run in range(spread["runs"]):
                scans = b["full_scans"]["values"][run] - a["full_scans"]["values"][run]
                cpu = b["ksmd_cpu_ns"]["values"][run] - a["ksmd_cpu_ns"]["values"][run]
                if scans > 0:
                    ratios.append(cpu / scans / model)
        out[name] = ratios
    return out


def fit_hot() -> int:
    """:data:`ksmreplay.timing.HOT_PERCENT` as the timed spreads say (see ``hot``)."""
    ratios = [r for rs in hot_ratios().values() for r in rs]
    return round(100 * statistics.median(ratios))


def run_hot() -> None:
    for name, rs in hot_ratios().items():
        print(
            f"{name}: {len(rs)} intervals, live / modelled per pass: median "
            f"{statistics.median(rs):.2f}, 10th-90th percentile "
            f"{percentile(rs, 10):.2f}-{percentile(rs, 90):.2f}"
        )
    hot = fit_hot()
    print(f"HOT_PERCENT = {hot}")
    if hot != HOT_PERCENT:
        print("(ksmreplay.timing.HOT_PERCENT differs from this fit)")


# -- validation ------------------------------------------------------------------

HELD_OUT: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("guests", "vm-guests", ("guests=4", "guest_mib=32", "duration_s=3")),
    ("containers", "containers", ("processes=8", "heap_mib=8", "private_mib=4", "duration_s=3")),
    ("gc-heap", "gc-heap", ("instances=2", "heap_mib=32", "duration_s=3")),
    ("zero-heavy", "zero-heavy", ("processes=4", "mib=16", "duration_s=2")),
    ("unmerge-cycle", "unmerge-cycle", ("processes=4", "mib=16")),
)
"""Workloads the model is checked on: name, ``synth`` workload, parameters."""


def synth_trace(name: str, directory: Path) -> Path:
    """The trace of the held-out workload ``name`` (:data:`HELD_OUT`), written in ``directory``."""
    from ksmreplay.synth import get_workload, resolve_params, synthesize

    workload, params = next((w, p) for n, w, p in HELD_OUT if n == name)
    path = directory / f"{name}.msgpack"
    values = resolve_params(get_workload(workload), params)
    with path.open("wb") as f:
        synthesize(workload, f, values, 1)
    return path


def live_median(result: Mapping[str, Any]) -> float:
    """The median over the live replays of ksmd's CPU time at the end of a workload, ns."""
    return float(statistics.median(run[-1]["cpu_ns"] for run in result["live"]))


def validate(names: Sequence[str], reps: int) -> None:
    results: dict[str, Any] = (
        load(VALIDATION) if VALIDATION.exists() else {"kernel": platform.release(), "workloads": {}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, workload, params in HELD_OUT:
            if names and name not in names:
                continue
            path = synth_trace(name, Path(tmp))
            sim = simulate(path)
            runs = []
            for rep in range(reps):
                runs.append(live(path))
                print(f"{name} rep {rep}: done", flush=True)
            results["workloads"][name] = {
                "synth": [workload, *params],
                "simulated": sim,
                "live": runs,
            }
            save(VALIDATION, results)
    report_validation(results)


def report_validation(results: Mapping[str, Any]) -> None:
    rows = []
    for name, w in results["workloads"].items():
        sim = w["simulated"]
        for i, s in enumerate(sim[:-1]):
            cpu = sorted(run[i]["cpu_ns"] for run in w["live"])
            if not s["cpu_ns"] and not cpu[-1]:
                continue
            med = statistics.median(cpu)
            rows.append(
                [
                    name,
                    s["label"],
                    f"{med / 1e6:,.1f}",
                    f"{percentile(cpu, 10) / 1e6:,.1f}-{percentile(cpu, 90) / 1e6:,.1f}",
                    f"{s['cpu_ns'] / 1e6:,.1f}",
                    f"{100 * (s['cpu_ns'] / med - 1):+.0f} %" if med else "-",
                ]
            )
    show(rows, ["workload", "snapshot", "live ms", "p10-p90", "model ms", "error"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--reps", type=int, default=5)
    m.add_argument("--only", nargs="*", default=[])
    sub.add_parser("fit")
    sub.add_parser("hot")
    v = sub.add_parser("validate")
    v.add_argument("--reps", type=int, default=5)
    v.add_argument("--only", nargs="*", default=[])
    sub.add_parser("report")
    sub.add_parser("rework")
    args = parser.parse_args()
    if args.command == "measure":
        measure(args.only, args.reps)
    elif args.command == "fit":
        run_fit()
    elif args.command == "hot":
        run_hot()
    elif args.command == "validate":
        validate(args.only, args.reps)
    elif args.command == "rework":
        rework()
    else:
        report_validation(load(VALIDATION))
    return 0


if __name__ == "__main__":
    sys.exit(main())
