"""Measure how fast ksmreplay reads traces and simulates ksmd, against the real ksmd.

Usage: ``python bench/run.py [--runs N] [--big-runs N] [--events N] [--pages N]
[--chain-pages N] [--only NAME ...] [--no-live] [--host-trace FILE] [--out FILE]``

Every trace is generated here, deterministically, into a temporary directory:

* ``read``: decode and validate N fingerprint writes (default 1,000,000),
  as the replay reads them (runs of writes stay columns); events per second.
* ``events``: N fingerprint-list writes (``bench/gen_events.py``) end to end
  through ``ksmreplay run --mode unshare`` (decoding, the fault path, ksmd,
  the report); events per second.

Both are measured with the native core (``ksmreplay.native``, when it was
built here) and without it (``KSMREPLAY_NATIVE=0``: the pure-Python reader
and the numpy fault path), rows marked ``accel`` and ``pure``; ``--no-accel``
measures the other rows without it (marked ``pure``).
* ``steady``: N mergeable pages (default 200,000) in 4 processes, 1,000
  distinct contents, already merged (a ``settle`` before the timed part); the
  timed part is one second of trace time in which ksmd wakes every 20 ms and
  scans a whole pass per wake-up (``pages_to_scan`` = N).
* ``merge``: the same pages, from ksmd's first pass until settled (the
  ``settle`` itself is timed).
* ``distinct``: N all-different pages, settled (checksums, the unstable
  tree; nothing merges).
* ``zero``: N zero-filled pages with ``use_zero_pages=1``, settled.
* ``chains``: ``--chain-pages`` pages (default 1,000,000: 4 GiB) holding
  1,000 contents, 1,000 sharers each, from ksmd's first pass until settled
  (one ``settle``, timed), ``pages_to_scan`` = 10,000, the other knobs at
  their defaults (``use_zero_pages=0``, ``max_page_sharing=256``: every
  content needs a stable node chain of 4 dups).  The real ksmd runs the same
  pages with ``pages_to_scan`` = 10,000; a note gives both times for the
  same passes.
* ``kernel-6.1``: ``ksmreplay run --mode legacy`` of 4 ``vm-guests`` of
  1 GiB (1,048,576 pages, the workload's other defaults) with
  ``--kernel 6.1`` (Linux 6.1's older visit order: the stable tree searched
  before the checksum) and with ``--kernel 6.18``; seconds and their ratio.
* ``scale``: ``steady`` at 250k, 1M and 4M pages: time per visit and bytes per
  page, to show the cost grows linearly (4M runs ``--big-runs`` times).
* ``sweep``: ``ksmreplay sweep`` of 100 runs (``pages_to_scan`` x
  ``sleep_millisecs``, 10 values each, mode ``unshare``) of a 200k-page
  trace (``vm-guests``: 8 guests of 100 MiB, 10 s of trace time without
  settles), with ``--jobs 1`` and with ``--jobs 2``: seconds of each
  (``--sweep-runs`` times each, alternately, median) and their ratio; the
  target is under 0.6.
  The note gives the load average around it: on a machine shared with other
  work the ratio says as much about that work as about the sweep.
* ``host``: host-4m, 64 ``vm-guests`` of 250 MiB (4,096,000 pages of zero,
  shared and own contents), one hour of trace time with writes, through
  ``ksmreplay run``: seconds and peak RSS (``--big-runs`` times; generating
  it takes minutes, ``--host-trace`` reuses a file made earlier).
* ``record``: ``ksmreplay record``'s sampling of a process holding 1 GiB of
  distinct pages (``--record-mib``): ``record-1g first`` is a recorder's first
  sample (every present page read), median of ``--runs`` fresh recorders;
  ``record-1g 1% dirty`` is a later sample after the process rewrote 1 % of
  its pages, spread at random, median of ``--record-samples`` samples (with
  the native core where it was built: ``KSMREPLAY_NATIVE=0`` measures numpy
  and a hash call per page).  Targets: under 1.5 s and under 0.2 s.  Where the kernel keeps no
  soft-dirty bits the second row reads every page (as ``record`` does
  there), and a note gives the same samples with the bits simulated: the
  bench sets bit 55 in the pagemap entries of the pages it rewrote, so that
  the recorder reads those pages only, while the kernel still walks the page
  table to clear the bits (``clear_refs``).

The anchor: where root may write ``/sys/kernel/mm/ksm``, each of the four
replay traces is also run on the live kernel: 4 child processes map and fill
the same pages and madvise them mergeable, ksmd runs at its fastest
(``sleep_millisecs=0``, ``pages_to_scan`` = N, other knobs at their defaults)
and its visits per second are ``pages_scanned`` over wall time for the same
number of full passes the simulator made (steady: after it settled; the
others: from ``run=1``).  The knobs are written only under the live lock and
the knob guard, which leave KSM stopped, unmerged and every knob restored.
``ratio`` is simulated visits/s divided by the real ksmd's.

Figures: simulated page visits (``pages_scanned`` during the timed part) per
second of the timed part; trace events per second of the whole run
(decoding included); peak RSS; and bytes of peak RSS per simulated page above
the RSS of the process before the trace was read (host-4m: all of peak RSS).
Each measurement runs in a fresh child process, so its peak RSS
(``ru_maxrss``) is its own (host-4m's taken when the run returns, before
the child counts the trace's events); the table shows medians of the runs
shown and the largest peak RSS.  The package's modules are byte-compiled first, as they are
once installed, so that no run pays for compiling them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAGE = 4096
BASE = 0x7F0000000000
PROCS = 4
SECOND = 1_000_000_000
START, END = "bench-start", "bench-end"
"""Labels of the snapshot events around the timed part of a replay trace."""

REPLAYS = ("steady", "merge", "distinct", "zero")
CHAIN_SCAN = 10_000
"""``pages_to_scan`` of the ``chains`` trace (and of the real ksmd running it)."""
SCALES = (250_000, 1_000_000, 4_000_000)
"""Page counts of the steady-state cost measurements (``scale``)."""
LIVE_TIMEOUT_S = 300.0


def make_read_trace(path: Path, events: int) -> None:
    """``events`` one-page fingerprint writes cycling over 1024 mergeable pages."""
    from ksmreplay.trace import TraceWriter

    pages = 1024
    with path.open("wb") as f:
        w = TraceWriter(f)
        w.alloc(0, 1, BASE, pages * PAGE)
        w.madvise(0, 1, BASE, pages * PAGE, "mergeable")
        for i in range(events - 2):
            w.write(i * 1000, 1, BASE + (i % pages) * PAGE, PAGE, (i * 2654435761) % 2**32 + 1)


def make_replay_trace(path: Path, kind: str, pages: int) -> None:
    """One of the replay traces (see the module docstring), ``pages`` pages in all."""
    from ksmreplay.trace import TraceWriter

    per = pages // PROCS
    scan = CHAIN_SCAN if kind == "chains" else max(pages, 1)
    knobs: dict[str, int] = {"pages_to_scan": scan, "sleep_millisecs": 20}
    if kind == "zero":
        knobs["use_zero_pages"] = 1
    with path.open("wb") as f:
        w = TraceWriter(f)
        w.ksm(0, knobs)
        for p in range(PROCS):
            pid = p + 1
            w.alloc(0, pid, BASE, per * PAGE)
            w.write(0, pid, BASE, per * PAGE, page_contents(kind, pages, p))
            w.madvise(0, pid, BASE, per * PAGE, "mergeable")
        t = SECOND
        w.ksm(t, {"run": 1})
        if kind == "steady":
            # Settle untimed, then one second of wake-ups, each a whole pass.
            w.settle(t)
            w.snapshot(t, START)
            w.snapshot(2 * SECOND, END)
        else:
            w.snapshot(t, START)
            w.settle(t)
            w.snapshot(t, END)


HOST_PARAMS = (
    "guests=64",
    "guest_mib=250",
    "duration_s=3600",
    "dirty_pages_per_s=50",
)
"""host-4m: 64 guests of 250 MiB (4,096,000 pages, mixed zero/shared/own contents),
one hour of trace time in which every guest rewrites 50 pages a second."""


SWEEP_PARAMS = (
    "guests=8",
    "guest_mib=100",
    "duration_s=10",
    "settle=0",
)
"""sweep: 8 guests of 100 MiB (204,800 pages), 10 s of trace time, no settles."""

SWEEP_GRID = (
    "--grid",
    "pages_to_scan=100,200,400,700,1000,1500,2000,3000,4000,5000",
    "--grid",
    "sleep_millisecs=10,20,30,50,70,100,150,200,300,500",
)
"""The sweep's 100 runs."""


def make_sweep_trace(path: Path) -> None:
    from ksmreplay.synth import get_workload, resolve_params, synthesize

    values = resolve_params(get_workload("vm-guests"), SWEEP_PARAMS)
    with path.open("wb") as f:
        synthesize("vm-guests", f, values, 1)


def measure_sweep(path: Path, jobs: int) -> tuple[float, float]:
    """Seconds of one ``ksmreplay sweep`` of :data:`SWEEP_GRID` with ``jobs``:
    wall time, and CPU time of the processes (user and system)."""
    command = [sys.executable, "-m", "ksmreplay", "sweep", str(path), *SWEEP_GRID]
    command += ["--mode", "unshare", "--format", "csv", "--jobs", str(jobs)]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    if done.returncode != 0:
        sys.exit(f"bench: the sweep failed:\n{done.stderr}")
    if done.stdout.count("\n") != 101:
        sys.exit("bench: the sweep did not give 100 rows")
    return seconds, cpu


GUESTS_PARAMS = ("guests=4", "guest_mib=1024")
"""kernel-6.1: 4 guests of 1 GiB (1,048,576 pages), the workload's other defaults."""


def make_guests_trace(path: Path) -> None:
    from ksmreplay.synth import get_workload, resolve_params, synthesize

    values = resolve_params(get_workload("vm-guests"), GUESTS_PARAMS)
    with path.open("wb") as f:
        synthesize("vm-guests", f, values, 1)


def make_host_trace(path: Path) -> None:
    from ksmreplay.synth import get_workload, resolve_params, synthesize

    values = resolve_params(get_workload("vm-guests"), HOST_PARAMS)
    with path.open("wb") as f:
        synthesize("vm-guests", f, values, 1)


def page_contents(kind: str, pages: int, proc: int) -> list[int]:
    """The fingerprints (first word of each page) process ``proc`` of a replay trace holds."""
    per = pages // PROCS
    first = proc * per
    if kind in ("steady", "merge", "chains"):
        return [1 + (first + j) % 1000 for j in range(per)]
    if kind == "distinct":
        return [1 + first + j for j in range(per)]
    return [0] * per


def live_child(kind: str, pages: int, proc: int) -> None:
    """Map this process's pages of a replay trace, fill them, madvise them mergeable, wait.

    Prints ``ready`` once the pages are mergeable and exits when stdin closes.
    """
    import mmap

    import numpy as np

    fps = page_contents(kind, pages, proc)
    area = mmap.mmap(-1, len(fps) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    words = np.frombuffer(area, dtype=np.uint64).reshape(len(fps), PAGE // 8)
    words[:, 0] = np.array(fps, dtype=np.uint64)  # a write fault on every page, zeros too
    area.madvise(mmap.MADV_MERGEABLE)
    print("ready", flush=True)
    sys.stdin.read()
    del words
    area.close()


def live_once(kind: str, pages: int, passes: int) -> tuple[int, float]:
    """Real ksmd page visits, and seconds, for the work the simulator does on ``kind``.

    ``steady``: ``passes`` full scans after ksmd settled; otherwise the first
    ``passes`` full scans from ``run=1``.  Holds the live lock and the knob
    guard throughout; KSM is left stopped, unmerged, every knob restored.
    """
    from ksmreplay.ksm.knobs import DEFAULTS
    from ksmreplay.live.kernel import (
        RESTORE_ORDER,
        KsmGuard,
        LiveKernelError,
        available_knobs,
        exclusive_lock,
        read_int,
    )

    def wait_scans(target: int) -> None:
        deadline = time.monotonic() + LIVE_TIMEOUT_S
        while read_int("full_scans") < target:
            if time.monotonic() > deadline:
                raise LiveKernelError(f"ksmd did not reach full scan {target} in time")
            time.sleep(0.0005)

    with exclusive_lock(timeout=LIVE_TIMEOUT_S):
        guard = KsmGuard()
        guard.start()
        procs: list[subprocess.Popen[str]] = []
        try:
            for p in range(PROCS):
                child_proc = subprocess.Popen(
                    [sys.executable, __file__, "--live-child", kind, str(pages), str(p)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append(child_proc)
                assert child_proc.stdout is not None
                if child_proc.stdout.readline().strip() != "ready":
                    raise LiveKernelError("a page-holding child process failed")
            have = set(available_knobs())
            for name in RESTORE_ORDER:
                if name in have:
                    guard.write(name, DEFAULTS[name])
            guard.write("pages_to_scan", CHAIN_SCAN if kind == "chains" else max(pages, 1))
            guard.write("sleep_millisecs", 0)
            guard.write("use_zero_pages", 1 if kind == "zero" else 0)
            scans = read_int("full_scans")
            if kind == "steady":
                guard.write("run", 1)
                # Settled: the merged counts stay put over a whole pass.
                merged = -1
                while True:
                    scans = read_int("full_scans") + 1
                    wait_scans(scans)
                    now = read_int("pages_shared") + read_int("pages_sharing")
                    if now == merged:
                        break
                    merged = now
                wait_scans(scans + 1)
                scans += 1
                start, scanned = time.perf_counter(), read_int("pages_scanned")
            else:
                start, scanned = time.perf_counter(), read_int("pages_scanned")
                guard.write("run", 1)
            wait_scans(scans + passes)
            seconds = time.perf_counter() - start
            visits = read_int("pages_scanned") - scanned
        finally:
            problems = guard.stop()
            for child_proc in procs:
                child_proc.communicate("")
        if problems:
            raise LiveKernelError("; ".join(problems))
    return visits, seconds


def live_skip_reason() -> str | None:
    """Why the anchor cannot run here, or None when it can."""
    import os

    from ksmreplay.live.kernel import KSM_DIR, knob_path

    if os.geteuid() != 0:
        return "not root"
    if not os.path.isdir(KSM_DIR):
        return f"{KSM_DIR} is missing"
    if not os.access(knob_path("run"), os.W_OK):
        return f"{knob_path('run')} is not writable"
    return None


def measure_live(kind: str, pages: int, runs: int, passes: int) -> tuple[float, float]:
    """Median real ksmd visits/s, and median seconds, over ``runs`` runs."""
    done = [live_once(kind, pages, passes) for _ in range(runs)]
    return (
        statistics.median(visits / seconds for visits, seconds in done),
        statistics.median(seconds for _visits, seconds in done),
    )


def child(kind: str, path: str) -> None:
    """Run one measurement in this process and print it as JSON."""
    from ksmreplay.trace import open_trace, read_trace
    from ksmreplay.trace.events import WriteRun

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kib = 0
    start = time.perf_counter()
    if kind == "read":
        # As the replay reads: runs of writes stay columns.
        with open_trace(path) as reader:
            count = events = sum(
                len(item) if isinstance(item, WriteRun) else 1 for item in reader.runs()
            )
        timed = time.perf_counter() - start
        total = timed
    elif kind.startswith("cli"):
        # End to end: ``ksmreplay run --mode unshare`` as the command line does it
        # (``cli:KERNEL``: ``run --kernel KERNEL --mode legacy``).
        import contextlib
        import os

        from ksmreplay.cli import cli

        how = ["--mode", "unshare"]
        if ":" in kind:
            how = ["--kernel", kind.split(":")[1], "--mode", "legacy"]
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            try:
                cli.main(["run", *how, path], standalone_mode=False)
            except SystemExit as e:
                if e.code not in (0, None):
                    raise
        total = timed = time.perf_counter() - start
        # (the run's peak, before the events are counted: the count's own
        # objects would add to the run's memory, not all of it handed back yet)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open_trace(path) as reader:
            count = events = sum(1 for _ in reader)
    else:
        from ksmreplay.simulator import make_simulator
        from ksmreplay.trace.events import Snapshot

        header, evs = read_trace(path)
        sim = make_simulator("unshare", header.page_size, None)
        marks: dict[str, tuple[float, int]] = {}
        for ev in evs:
            sim.apply(ev)
            if isinstance(ev, Snapshot) and ev.label in (START, END):
                snap = sim.snapshot(ev.label, ev.t, ev.index)
                marks[ev.label] = (time.perf_counter(), int(snap["ksm"]["pages_scanned"]))
        total = time.perf_counter() - start
        timed = marks[END][0] - marks[START][0]
        count = marks[END][1] - marks[START][1]
        events = len(evs)
    maxrss_kib = peak_kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "count": count,
                "timed": timed,
                "events": events,
                "total": total,
                "maxrss_kib": maxrss_kib,
                "base_kib": base_kib,
            }
        )
    )


def measure(kind: str, path: Path, runs: int, pages: int, accel: bool = True) -> dict[str, Any]:
    import os

    from ksmreplay.native import ENV

    env = {**os.environ, ENV: "1" if accel else "0"}
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(path)],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            sys.exit(f"bench: the {kind} measurement failed:\n{done.stderr}")
        results.append(json.loads(done.stdout))
    peak = max(r["maxrss_kib"] for r in results)
    grown = statistics.median(r["maxrss_kib"] - r["base_kib"] for r in results)
    return {
        "count": results[0]["count"],
        "rate": statistics.median(r["count"] / r["timed"] for r in results),
        "events_rate": statistics.median(r["events"] / r["total"] for r in results),
        "events": results[0]["events"],
        "seconds": statistics.median(r["total"] for r in results),
        "timed": statistics.median(r["timed"] for r in results),
        "maxrss_mib": peak / 1024,
        "per_page": grown * 1024 / pages if pages else None,
    }


COLUMNS = (
    "trace",
    "runs",
    "visits",
    "visits/s",
    "ns/visit",
    "events/s",
    "seconds",
    "peak RSS MiB",
    "bytes/page",
    "ksmd visits/s",
    "ratio",
)


def row(name: str, runs: int, r: dict[str, Any], replay: bool) -> list[str]:
    return [
        name,
        str(runs),
        f"{r['count']:,}" if replay else "",
        f"{r['rate']:,.0f}" if replay else "",
        f"{1e9 / r['rate']:,.0f}" if replay and r["rate"] else "",
        f"{r['events_rate']:,.0f}",
        f"{r['seconds']:.2f}",
        f"{r['maxrss_mib']:.0f}",
        "" if r["per_page"] is None else f"{r['per_page']:.0f}",
        "",
        "",
    ]


ALL = ("read", "events", *REPLAYS, "chains", "kernel-6.1", "scale", "sweep", "host", "record")
RECORD_DIRTY = 0.01
"""Share of the recorded process's pages rewritten between two samples (``record``)."""


def record_holder(mib: int) -> None:
    """Map ``mib`` MiB of distinct pages, print the address, then rewrite pages on demand.

    Each stdin line ``dirty SEED`` rewrites the pages :func:`dirty_pages` names
    and answers ``ok``; end of input ends it.
    """
    import ctypes
    import mmap

    import numpy as np

    pages = mib * 256
    area = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    words = np.frombuffer(area, dtype=np.uint64).reshape(pages, PAGE // 8)
    words[:, :] = np.arange(1, pages + 1, dtype=np.uint64)[:, None]
    words[:, 1] = 0  # not one repeated value: every page is hashed
    holder = ctypes.c_char.from_buffer(area)
    print(ctypes.addressof(holder), flush=True)
    for generation, line in enumerate(sys.stdin, 1):
        chosen = dirty_pages(pages, int(line.split()[1]))
        words[chosen, 2] = generation
        print("ok", flush=True)


def dirty_pages(pages: int, seed: int) -> Any:
    """The pages a ``dirty SEED`` rewrites: RECORD_DIRTY of them, at random."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pages, size=max(1, round(pages * RECORD_DIRTY)), replace=False))


def record_child(mib: int, runs: int, samples: int) -> None:
    """Time ``record``'s samples of a holder process; print the seconds as JSON."""
    import io

    from ksmreplay import procfs
    from ksmreplay.record import Recorder
    from ksmreplay.trace import TraceWriter

    holder = subprocess.Popen(
        [sys.executable, __file__, "--record-holder", str(mib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    pages = mib * 256
    first_page = int(holder.stdout.readline()) // PAGE
    start = procfs.start_time(holder.pid)
    assert start is not None
    sink = io.BytesIO()

    def recorder() -> Recorder:
        sink.seek(0)
        sink.truncate()
        r = Recorder(TraceWriter(sink), PAGE)
        r.watch(holder.pid, start)
        return r

    def dirty(seed: int) -> Any:
        holder.stdin.write(f"dirty {seed}\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        assert holder.stdout.readline().strip() == "ok"  # type: ignore[union-attr]
        return dirty_pages(pages, seed)

    cpu: dict[str, list[float]] = {"first": [], "dirty": [], "simulated": []}

    def timed(r: Recorder, t: int, kind: str) -> float:
        begin, used = time.perf_counter(), time.process_time()
        r.sample(t)
        cpu[kind].append(time.process_time() - used)
        return time.perf_counter() - begin

    try:
        first = [timed(recorder(), 0, "first") for _ in range(runs)]
        r = recorder()
        r.sample(0)
        later = []
        for k in range(samples):
            dirty(k)
            later.append(timed(r, k + 1, "dirty"))
        result: dict[str, Any] = {
            "first": first,
            "dirty": later,
            "soft_dirty": r.soft_dirty,
            "pages_read": r.summary.pages_read,
        }
        if not r.soft_dirty:
            # The same samples as a kernel with soft-dirty bits would give them.
            import numpy as np

            real_entries = procfs.pagemap_entries
            marked: Any = np.zeros(0, dtype=np.int64)

            def entries(fd: int, first: int, npages: int) -> Any:
                out = real_entries(fd, first, npages).copy()
                inside = marked[(marked >= first) & (marked < first + npages)]
                out[inside - first] |= np.uint64(procfs.PM_SOFT_DIRTY)
                return out

            procfs.soft_dirty_works = lambda: True  # type: ignore[assignment]
            procfs.pagemap_entries = entries  # type: ignore[assignment]
            r = recorder()
            r.sample(0)
            simulated = []
            for k in range(samples):
                marked = dirty(1000 + k) + first_page
                simulated.append(timed(r, k + 1, "simulated"))
            result["simulated"] = simulated
            result["simulated_read"] = r.summary.pages_read
        result["cpu"] = cpu
        print(json.dumps(result))
    finally:
        holder.stdin.close()
        holder.wait()


def measure_record(mib: int, runs: int, samples: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--record-child", str(mib), str(runs), str(samples)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"bench: the record measurement failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def record_row(name: str, runs: int, seconds: float) -> list[str]:
    return [name, str(runs), "", "", "", "", f"{seconds:.3f}", "", "", "", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument(
        "--big-runs", type=int, default=5, help="runs of host-4m and of steady-4m (median)"
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the read trace")
    parser.add_argument("--pages", type=int, default=200_000, help="pages of the replay traces")
    parser.add_argument(
        "--chain-pages", type=int, default=1_000_000, help="pages of the chains trace"
    )
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these measurements")
    parser.add_argument("--no-live", action="store_true", help="skip the real-ksmd anchor")
    parser.add_argument("--host-trace", type=Path, help="reuse this host-4m trace file")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--no-accel",
        action="store_true",
        help="replay traces, scale and host-4m without the accelerator (read and events "
        "are measured both ways anyway)",
    )
    parser.add_argument(
        "--record-mib", type=int, default=1024, help="memory of the recorded process (record)"
    )
    parser.add_argument(
        "--record-samples", type=int, default=10, help="1%%-dirty samples timed (record)"
    )
    parser.add_argument(
        "--sweep-runs", type=int, default=1, help="runs of each sweep measurement (median)"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--record-child", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--record-holder", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--live-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.record_child:
        record_child(*args.record_child)
        return
    if args.record_holder:
        record_holder(args.record_holder)
        return
    if args.live_child:
        live_child(args.live_child[0], int(args.live_child[1]), int(args.live_child[2]))
        return

    import compileall
    import os

    import ksmreplay
    from ksmreplay.native import native
    from ksmreplay.render import plain_table

    compileall.compile_dir(Path(ksmreplay.__file__).parent, quiet=1)
    kinds = args.only or ALL
    accel = not args.no_accel
    suffix = "" if accel else ", pure"
    skip = "--no-live given" if args.no_live else live_skip_reason()
    rows: list[list[str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ksmreplay-bench-") as tmp:
        for kind in kinds:
            path = Path(tmp) / f"{kind}.msgpack"
            if kind in ("read", "events"):
                from gen_events import generate

                if kind == "read":
                    make_read_trace(path, args.events)
                else:
                    generate(str(path), args.events)
                name = f"{kind}-{args.events // 1000}k" + (" (run)" if kind == "events" else "")
                for both, label in ((True, "accel"), (False, "pure")):
                    if both and native() is None:
                        notes.append("native core: not built at install (no C compiler?)")
                        continue
                    r = measure("read" if kind == "read" else "cli", path, args.runs, 0, both)
                    rows.append(row(f"{name}, {label}", args.runs, r, False))
            elif kind in REPLAYS:
                make_replay_trace(path, kind, args.pages)
                r = measure(kind, path, args.runs, args.pages, accel)
                line = row(f"{kind}-{args.pages // 1000}k{suffix}", args.runs, r, True)
                if skip is None:
                    passes = max(1, round(r["count"] / args.pages))
                    real, _seconds = measure_live(kind, args.pages, args.runs, passes)
                    line[-2] = f"{real:,.0f}"
                    line[-1] = f"{r['rate'] / real:.2f}"
                rows.append(line)
            elif kind == "chains":
                pages = args.chain_pages
                make_replay_trace(path, kind, pages)
                before = os.getloadavg()[0]
                r = measure(kind, path, args.runs, pages, accel)
                line = row(f"chains-{pages // 1000}k{suffix}", args.runs, r, True)
                note = (
                    f"chains-{pages // 1000}k: the settle replays in {r['timed']:.2f} s "
                    f"({r['seconds']:.2f} s in all, start-up and reading included)"
                )
                if skip is None:
                    passes = max(1, round(r["count"] / pages))
                    real, seconds = measure_live(kind, pages, args.runs, passes)
                    line[-2] = f"{real:,.0f}"
                    line[-1] = f"{r['rate'] / real:.2f}"
                    note += f"; the real ksmd takes {seconds:.2f} s for the same {passes} passes"
                after = os.getloadavg()[0]
                notes.append(f"{note}; load average {before:.1f} before, {after:.1f} after")
                rows.append(line)
            elif kind == "kernel-6.1":
                make_guests_trace(path)
                before = os.getloadavg()[0]
                old = measure("cli:6.1", path, args.runs, 0, accel)
                new = measure("cli:6.18", path, args.runs, 0, accel)
                after = os.getloadavg()[0]
                rows.append(row(f"guests-4x1g --kernel 6.1 (run){suffix}", args.runs, old, False))
                rows.append(row(f"guests-4x1g --kernel 6.18 (run){suffix}", args.runs, new, False))
                notes.append(
                    f"guests-4x1g: --kernel 6.1 takes {old['seconds'] / new['seconds']:.2f} of "
                    f"the time of --kernel 6.18 (mode legacy); load average {before:.1f} "
                    f"before, {after:.1f} after"
                )
            elif kind == "record":
                r = measure_record(args.record_mib, args.runs, args.record_samples)
                size = (
                    f"{args.record_mib // 1024}g"
                    if args.record_mib >= 1024
                    else (f"{args.record_mib}m")
                )
                first = statistics.median(r["first"])
                dirty = statistics.median(r["dirty"])
                how = "" if r["soft_dirty"] else " (no soft-dirty: every page read)"
                rows.append(record_row(f"record-{size} first", args.runs, first))
                rows.append(record_row(f"record-{size} 1% dirty{how}", args.record_samples, dirty))
                cpu = {k: statistics.median(v) for k, v in r["cpu"].items() if v}
                load = os.getloadavg()[0]
                notes.append(
                    f"record-{size}: first sample {first:.3f} s (CPU {cpu['first']:.3f} s; "
                    f"target < 1.5 s), 1% dirty {dirty:.3f} s (CPU {cpu['dirty']:.3f} s; "
                    f"target < 0.2 s); load average {load:.1f} on "
                    f"{len(os.sched_getaffinity(0))} CPUs"
                )
                if "simulated" in r:
                    notes.append(
                        f"record-{size} 1% dirty, soft-dirty bits simulated (this kernel keeps "
                        f"none): {statistics.median(r['simulated']):.3f} s per sample (CPU "
                        f"{cpu['simulated']:.3f} s), "
                        f"{r['simulated_read'] // (args.record_samples + 1)} pages read per "
                        "sample on average (the first sample included)"
                    )
            elif kind == "sweep":
                make_sweep_trace(path)
                before = os.getloadavg()[0]
                times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
                for _ in range(args.sweep_runs):  # alternately, so that both see the same load
                    for jobs in times:
                        times[jobs].append(measure_sweep(path, jobs))
                after = os.getloadavg()[0]
                seconds = {jobs: statistics.median(t for t, _ in times[jobs]) for jobs in times}
                cpu = {jobs: statistics.median(c for _, c in times[jobs]) for jobs in times}
                cpus = len(os.sched_getaffinity(0))
                ratio = seconds[2] / seconds[1]
                for jobs in (1, 2):
                    rows.append(
                        record_row(
                            f"sweep-200k x100, --jobs {jobs}", args.sweep_runs, seconds[jobs]
                        )
                    )
                notes.append(
                    f"sweep-200k x100: --jobs 2 took {ratio:.2f} of the time of --jobs 1 "
                    f"(target under 0.6: {'met' if ratio < 0.6 else 'not met'}); load average "
                    f"{before:.1f} before, {after:.1f} after, on {cpus} CPUs; CPU time "
                    f"{cpu[1]:.1f} s and {cpu[2]:.1f} s, that is {cpu[1] / seconds[1]:.2f} and "
                    f"{cpu[2] / seconds[2]:.2f} CPUs busy"
                )
            elif kind == "scale":
                for pages in SCALES:
                    make_replay_trace(path, "steady", pages)
                    runs = args.runs if pages < 4_000_000 else args.big_runs
                    r = measure("steady", path, runs, pages, accel)
                    rows.append(row(f"steady-{pages // 1000}k{suffix}", runs, r, True))
                    path.unlink()
            else:
                host = args.host_trace
                if host is None:
                    host = path
                    make_host_trace(host)
                r = measure("cli", host, args.big_runs, 0, accel)
                r["per_page"] = (r["maxrss_mib"] * 2**20) / 4_096_000
                rows.append(row(f"host-4m (run){suffix}", args.big_runs, r, False))
    lines = [
        f"median of the runs shown, each in a fresh process "
        f"(Python {platform.python_version()}, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs)",
        plain_table(list(COLUMNS), rows, "llrrrrrrrrr"),
    ]
    if skip is not None and any(k in REPLAYS for k in kinds):
        lines.append(f"anchor skipped: {skip}")
    lines += notes
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
