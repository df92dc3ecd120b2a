"""Record a kernel's answer to the traces of a directory: the live kernel's, or a qemu guest's.

    .venv/bin/python tests/record_kernel.py DIR [--runs N] [NAME ...]
    .venv/bin/python tests/record_kernel.py DIR --spread N [NAME ...]
    .venv/bin/python tests/record_kernel.py DIR --tracepoints [--runs N] [NAME ...]
    .venv/bin/python tests/record_kernel.py DIR --kernel 6.1 [--kernel-image IMAGE] [NAME ...]

For the scenarios (``tests/scenarios``), the ported selftests
(``tests/selftests``) and the golden cases' own traces (``tests/cases``; the
cases that are scenarios have their answers beside the scenario, see
``tests/testdata.py``).  Replays each
4 KiB ``NAME.jsonl`` of DIR (or only the NAMEs given) ``--runs`` times
(default 2) through ``ksmreplay.live.execute``; refuses to record a trace
whose reports differ between runs; and writes the report with the trace path
normalised to the file name.  Traces of other page sizes are skipped.

Without ``--kernel``, the running kernel answers (needs root and KSM;
``execute`` holds the live-kernel lock and restores KSM afterwards), into
``NAME.kernel.json``.  With ``--kernel VERSION``, a qemu guest booting
``--kernel-image`` (default: the image ``tests/qemu_kernels.py`` fetched for
VERSION) answers, into ``NAME.kernel-VERSION.json``; each run boots its own
guest and replays every trace in it, one after the other, so that the two
runs compare two boots.  The host's KSM is not touched then.

With ``--spread N`` (the timed scenarios, ``tests/scenarios/timed``, whose
answers depend on how fast ksmd runs) each trace is replayed N times and
``NAME.kernel-spread.json`` records, at every snapshot, every run's
``full_scans`` and ``pages_scanned`` with their median and 10th and 90th
percentiles (``kernel_answer.spread_of``), and alike ksmd's CPU time and the
real time since the replay started.  Before each replay it waits
until no other process has mergeable memory: ksmd would scan that too.

With ``--tracepoints`` each trace is replayed ``--runs`` times on the running
kernel with its KSM trace events read (``exec --tracepoints``), and
``NAME.kernel-tracepoints.json`` records them per full scan: the count of
each kind and the events themselves, without their times
(``kernel_answer.tracepoint_scans``); a trace whose runs differ is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from kernel_answer import SPREAD_VERSION, dump_tracepoints, spread_of, tracepoint_scans
from qemu_kernels import image_path

from ksmreplay.live import execute
from ksmreplay.live.kernel import exclusive_lock, free_leftover_items, mergeable_processes
from ksmreplay.live.machine import Machine
from ksmreplay.trace import open_trace

ALONE_TIMEOUT_S = 7200.0
"""Longest wait for other processes' mergeable memory to go (seconds)."""


def live_names(directory: Path) -> list[str]:
    """The traces of ``directory`` that a 4 KiB kernel can run."""
    names = []
    for path in sorted(directory.glob("*.jsonl")):
        with open_trace(str(path)) as reader:
            if reader.header.page_size == 4096:
                names.append(path.name[: -len(".jsonl")])
    return names


def replay(
    directory: Path, name: str, machine: Machine | None = None, clock: bool = False
) -> dict[str, Any]:
    with open_trace(str(directory / f"{name}.jsonl")) as reader:
        report: dict[str, Any] = dict(execute(reader, machine=machine, ksmd_clock=clock))
    report["trace"]["path"] = f"{name}.jsonl"
    return report


@contextmanager
def guest(image: Path | None) -> Iterator[Machine | None]:
    """A booted guest for one run (None: the live kernel)."""
    if image is None:
        yield None
        return
    from ksmreplay.live.qemu import boot

    with boot(str(image), accel="tcg") as machine:
        yield machine


def wait_alone() -> None:
    """Wait until no other process of the machine has mergeable memory."""
    deadline = time.monotonic() + ALONE_TIMEOUT_S
    said = False
    while others := mergeable_processes():
        if time.monotonic() > deadline:
            raise SystemExit(f"other processes keep mergeable memory: {others}")
        if not said:
            print(f"waiting for {others} to end", flush=True)
            said = True
        time.sleep(5)


def record_spread(directory: Path, name: str, runs: int) -> None:
    reports: list[dict[str, Any]] = []
    while len(reports) < runs:
        wait_alone()
        with exclusive_lock(timeout=ALONE_TIMEOUT_S):  # (others replay live too)
            if mergeable_processes():
                continue
            free_leftover_items()
            report = replay(directory, name, clock=True)["runs"][0]
        if not mergeable_processes():  # (else it came while the replay ran: again)
            reports.append(report)
    spread = {
        "spread": SPREAD_VERSION,
        "trace": f"{name}.jsonl",
        "kernel": reports[0]["kernel"],
        "runs": runs,
        "snapshots": spread_of(reports),
    }
    (directory / f"{name}.kernel-spread.json").write_text(json.dumps(spread, indent=1) + "\n")
    print(f"{name}: {runs} runs", flush=True)


def record_tracepoints(directory: Path, names: list[str], runs: int) -> int:
    unstable = []
    for name in names:
        seen = []
        kernel = ""
        for _ in range(runs):
            events: list[dict[str, Any]] = []
            with open_trace(str(directory / f"{name}.jsonl")) as reader:
                report = execute(reader, tracepoints=events.append)
            kernel = report["runs"][0]["kernel"] or ""
            seen.append(tracepoint_scans(events))
        same = all(s == seen[0] for s in seen)
        print(f"{name}: {'ok' if same else 'NOT REPRODUCIBLE'}", flush=True)
        if same:
            text = dump_tracepoints(name, kernel, seen[0])
            (directory / f"{name}.kernel-tracepoints.json").write_text(text)
        else:
            unstable.append(name)
    return 1 if unstable else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--kernel", metavar="VERSION", help="record a guest's answer (6.1, 6.12)")
    parser.add_argument("--kernel-image", type=Path, help="the guest's image (with --kernel)")
    parser.add_argument("--spread", type=int, default=0, metavar="N")
    parser.add_argument("--tracepoints", action="store_true")
    parser.add_argument("names", nargs="*")
    args = parser.parse_intermixed_args()
    directory: Path = args.dir
    if args.tracepoints:
        return record_tracepoints(directory, args.names or live_names(directory), args.runs)
    if args.spread:
        for name in args.names or live_names(directory):
            record_spread(directory, name, args.spread)
        return 0
    image: Path | None = None
    suffix = ".kernel.json"
    if args.kernel is not None:
        image = args.kernel_image or image_path(args.kernel)
        suffix = f".kernel-{args.kernel}.json"
    names = args.names or live_names(directory)
    runs: list[dict[str, dict[str, Any]]] = []
    for _ in range(args.runs):
        reports: dict[str, dict[str, Any]] = {}
        with guest(image) if image is not None else nullcontext(None) as machine:
            for name in names:
                reports[name] = replay(directory, name, machine)
                print(f"{name}: replayed", flush=True)
        runs.append(reports)
    unstable = []
    for name in names:
        same = len({json.dumps(run[name], sort_keys=True) for run in runs}) == 1
        print(f"{name}: {'ok' if same else 'NOT REPRODUCIBLE'}", flush=True)
        if same:
            text = json.dumps(runs[0][name], indent=1) + "\n"
            (directory / f"{name}{suffix}").write_text(text)
        else:
            unstable.append(name)
    return 1 if unstable else 0


if __name__ == "__main__":
    sys.exit(main())
