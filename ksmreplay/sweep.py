"""Sweeps: traces replayed under every point of a grid of KSM settings, and the answer.

::

    with trace_inputs(["a.msgpack"]) as traces:
        plan = plan_sweep(traces, [parse_grid("pages_to_scan=100,1000")], ("unshare",))
        outcome = run_sweep(plan, jobs=2)
    render_sweep(outcome, "table", sys.stdout)

A sweep is a list of :class:`Task`: one (trace, kernel version, mode,
settings) each, the settings pinned for the whole replay (``run --pin``).
One task is one replay through :func:`ksmreplay.replay.replay`, whose
result is that run's whole report (REPORT_FORMAT.md, one run); a row of the
sweep (:class:`Row`) is read from the report: the ``summary`` at the chosen
snapshot, the run's ``milestones`` and ``ksmd`` cost, counters on request.
Tasks run here one after the other (``jobs=1``), in local worker processes
(:class:`concurrent.futures.ProcessPoolExecutor`), or on a dask.distributed
cluster (``dask=ADDRESS``, the optional extra ``ksmreplay[dask]``); every
way gives the same reports, and the rows are kept in task order, so the
output is byte-identical whichever way it ran.  A :class:`Cache` keeps each
report under the trace's content hash, the ksmreplay version and the
settings, so that an interrupted sweep resumes and a repeated one replays
nothing.

Per (trace, kernel, mode), the runs on the Pareto front of memory saved
against ksmd's CPU time are marked, and the recommendation is the run with
the least ksmd CPU among those within ``within`` percent of the best saving.

:func:`replay_in_parallel` is ``run --jobs``: the runs of one ``run``, each
in its own process, put back together into the report one driver would
have made.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar, cast

import msgpack

from ksmreplay import __version__, traps
from ksmreplay.errors import (
    ExitStatus,
    InputOutputError,
    Interrupted,
    KsmreplayError,
    UsageError,
)
from ksmreplay.ksm.knobs import KNOB_BY_NAME, KNOBS, KnobValue
from ksmreplay.output import open_text_output
from ksmreplay.render import csv_field, plain_table, render_json, tsv_field, wrapped_table
from ksmreplay.replay import check_every, replay, replay_spooled, run_names, run_pairs
from ksmreplay.report import (
    EVENT_COUNTERS,
    KSM_COUNTERS,
    KSMD_KEYS,
    MEMORY_COUNTERS,
    MILESTONE_KEYS,
    SUMMARY_KEYS,
    SnapshotSpool,
    SpooledReport,
    SpooledRun,
    close_spools,
)
from ksmreplay.simulator import make_simulator
from ksmreplay.synth import get_workload, resolve_params, synthesize
from ksmreplay.trace import TraceReader, open_trace
from ksmreplay.trace.events import Snapshot

SWEEP_VERSION = 1
"""The ``sweep`` key of the JSON output: its shape's version."""

FINAL = "final"
"""``--at``'s default: the run's final state."""

DEFAULT_WITHIN = 5.0
"""``--within``: how far below the best saving (percent of it) the recommendation may be."""

SEND_LIMIT = 8 << 20
"""Traces up to this many bytes are sent to dask workers with the tasks;
larger ones are read by the workers from their path, which they must share."""

COLUMN_SCOPES: Mapping[str, tuple[str, ...]] = {
    "summary": SUMMARY_KEYS,
    "ksm": (*KSM_COUNTERS, "zero_pages_sharing"),
    "memory": MEMORY_COUNTERS,
    "events": EVENT_COUNTERS,
    "ksmd": KSMD_KEYS,
    "milestones": MILESTONE_KEYS,
}
"""What ``--column`` takes, by the report section it comes from: a snapshot's
(at ``--at``) or, for ``ksmd`` and ``milestones``, the whole run's."""

COLUMN_CHOICES: Mapping[str, str] = {
    name: scope for scope, names in COLUMN_SCOPES.items() for name in names
}
"""Every ``--column`` name and its section (names are unique across sections)."""

_MIB = 1 << 20
_NS_PER_S = 1_000_000_000


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True, slots=True)
class Grid:
    """One ``--grid KNOB=V1,V2,...``: a knob and the values it takes, in order.

    :ivar knob: a knob of ``knobs.KNOBS``.
    :ivar values: each value checked as ``--pin`` checks it, each once.
    """

    knob: str
    values: tuple[KnobValue, ...]


def _split(text: str, option: str, what: str) -> tuple[str, list[str]]:
    """``NAME=V1,V2,...`` as the name and its values (blanks around each dropped)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"{option}: expected {what}=V1,V2,..., not {text!r}")
    items = [item.strip() for item in values.split(",")]
    if not all(items):
        raise UsageError(f"{option} {text}: an empty value")
    repeated = [item for i, item in enumerate(items) if item in items[:i]]
    if repeated:
        raise UsageError(f"{option} {text}: {repeated[0]} given twice")
    return name.strip(), items


def parse_grid(text: str) -> Grid:
    """``KNOB=V1,V2,...`` (``--grid``) as a :class:`Grid`.

    :raises UsageError: for an unknown knob, a value the knob never takes, an
        empty or repeated value.
    """
    name, items = _split(text, "--grid", "KNOB")
    knob = KNOB_BY_NAME.get(name)
    if knob is None:
        raise UsageError(
            f"--grid {text}: unknown knob {name!r} (knobs: {', '.join(k.name for k in KNOBS)})"
        )
    try:
        values = tuple(knob.parse(item) for item in items)
    except ValueError as exc:
        raise UsageError(f"--grid {text}: {exc}") from None
    return Grid(name, values)


def grid_points(grids: Sequence[Grid]) -> list[tuple[tuple[str, KnobValue], ...]]:
    """Every point of the grids' cartesian product, as ``((knob, value), ...)``
    in the grids' order; the first grid varies slowest.  No grid: one point,
    the trace's own settings (``()``).

    :raises UsageError: a knob in two grids.
    """
    knobs = [grid.knob for grid in grids]
    for i, knob in enumerate(knobs):
        if knob in knobs[:i]:
            raise UsageError(f"--grid: knob {knob} given twice")
    return [
        tuple(zip(knobs, values, strict=True))
        for values in itertools.product(*(grid.values for grid in grids))
    ]


def parse_within(text: str) -> float:
    """``--within``: ``5%`` or ``5`` as 5.0 (percent of the best saving, 0 to 100).

    :raises UsageError: not a number from 0 to 100.
    """
    number = text.strip().removesuffix("%").strip()
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"--within {text!r}: not a percentage (e.g. 5%)") from None
    if not 0 <= value <= 100:
        raise UsageError(f"--within {text!r}: must be from 0 to 100 %")
    return value


# --------------------------------------------------------------------------- traces


@dataclass(frozen=True, slots=True)
class TraceInput:
    """One trace of a sweep, checked whole before any replay.

    :ivar name: what rows and reports call it (the report's ``trace.path``):
        the path as given, or for a ``--synth`` trace ``WORKLOAD[NAME=VALUE ...]``
        with the parameters given more than one value (``WORKLOAD`` if none).
    :ivar path: an absolute path to the file that holds it.
    :ivar digest: the SHA-256 of its bytes (hex): the cache's key.
    :ivar size: its size, bytes.
    :ivar labels: the labels of its ``snapshot`` events.
    :ivar duration_ns: ``t`` of its last event, ns.
    :ivar page_size: its header's page size, bytes.
    """

    name: str
    path: str
    digest: str
    size: int
    labels: frozenset[str]
    duration_ns: int
    page_size: int


def _digest(path: str) -> tuple[str, int]:
    """The SHA-256 (hex) and size (bytes) of the file at ``path``."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def check_trace(path: str, name: str | None = None) -> TraceInput:
    """Read the trace at ``path`` whole: check it, hash it, note its snapshot labels.

    :param name: what the sweep calls it (default: ``path``).
    :raises UsageError: for ``-`` (a sweep reads every trace many times).
    :raises TraceError: the trace breaks the trace format.
    :raises InputOutputError: it cannot be read.
    """
    if path == "-":
        raise UsageError("sweep: TRACE '-' cannot be replayed many times; give a file")
    labels: set[str] = set()
    with open_trace(path) as reader:
        for item in reader.runs():
            if isinstance(item, Snapshot):
                labels.add(item.label)
        header = reader.header
        duration = reader.duration_ns
    try:
        digest, size = _digest(path)
    except OSError as exc:  # gone since it was read
        raise InputOutputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return TraceInput(
        name if name is not None else path,
        os.path.abspath(path),
        digest,
        size,
        frozenset(labels),
        duration,
        header.page_size,
    )


def parse_param_grid(workload: str, text: str) -> tuple[str, list[str]]:
    """``NAME=V1,V2,...`` (``--param`` of ``sweep --synth``): the parameter and its values.

    :raises UsageError: for an unknown parameter or an empty or repeated value
        (the values themselves are checked when the traces are made).
    """
    name, items = _split(text, "--param", "NAME")
    known = get_workload(workload).param_by_name
    if name not in known:
        raise UsageError(
            f"--param {text}: unknown parameter {name!r} of {workload} "
            f"(parameters: {', '.join(known)})"
        )
    return name, items


@contextlib.contextmanager
def trace_inputs(
    paths: Sequence[str],
    workload: str | None = None,
    params: Sequence[str] = (),
    seed: int = 0,
) -> Iterator[list[TraceInput]]:
    """The traces of a sweep: each file of ``paths``, then, with ``workload``,
    one ``synth`` trace per point of the ``--param`` grids (``params``, texts
    ``NAME=V1,V2,...``; the first varies slowest), made here into a temporary
    directory that lasts as long as the block.

    :raises UsageError: no trace, a path given twice, a bad parameter.
    """
    if not paths and workload is None:
        raise UsageError("sweep: give TRACE... or --synth WORKLOAD")
    if params and workload is None:
        raise UsageError("--param needs --synth WORKLOAD")
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UsageError(f"sweep: trace {path} given twice")
    inputs = [check_trace(path) for path in paths]
    with contextlib.ExitStack() as stack:
        if workload is not None:
            grids = [parse_param_grid(workload, text) for text in params]
            names = [name for name, _values in grids]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise UsageError(f"--param: parameter {name} given twice")
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ksmreplay-sweep-"))
            spec = get_workload(workload)
            for n, values in enumerate(itertools.product(*(items for _name, items in grids))):
                texts = [f"{name}={value}" for name, value in zip(names, values, strict=True)]
                resolved = resolve_params(spec, texts)
                path = os.path.join(tmp, f"{n}.msgpack")
                with open(path, "wb") as f:
                    synthesize(workload, f, resolved, seed)
                # named by the parameters that differ between the traces
                varying = [
                    t for t, (_name, items) in zip(texts, grids, strict=True) if len(items) > 1
                ]
                label = f"{workload}[{' '.join(varying)}]" if varying else workload
                inputs.append(check_trace(path, label))
        yield inputs


# --------------------------------------------------------------------------- tasks


Settings = tuple[tuple[str, KnobValue], ...]
"""Pinned knobs in the order they are written: ``((knob, value), ...)``."""


@dataclass(frozen=True, slots=True)
class Task:
    """One replay of a sweep: one run of one trace.

    :ivar index: its place in the sweep (rows come in this order).
    :ivar name: the trace's name (:attr:`TraceInput.name`).
    :ivar path: the trace's absolute path.
    :ivar digest: the trace's SHA-256 (hex).
    :ivar kernel: the kernel version replayed.
    :ivar mode: the mode replayed.
    :ivar settings: the knobs pinned for the whole replay.
    :ivar every: ``run --every``: a snapshot every this many ns, or None.
    """

    index: int
    name: str
    path: str
    digest: str
    kernel: str
    mode: str
    settings: Settings
    every: int | None = None


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What one task gives back.

    :ivar index: the task's :attr:`Task.index`.
    :ivar report: the run's whole report as ``run --format json`` writes it
        (None after an error).
    :ivar warnings: the replay's warnings, ``(kind, text)`` each.
    :ivar error: the exit status and message of a user-caused failure, or None.
    """

    index: int
    report: str | None
    warnings: tuple[tuple[str, str], ...] = ()
    error: tuple[int, str] | None = None


class TaskError(KsmreplayError):
    """A failure inside a task (its process, or a dask worker), told as it was
    there: its message and its exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.exit_status = ExitStatus(status)


_REPLAY_LOCK = threading.Lock()
"""One replay at a time per process: a dask worker may run tasks in several
threads, and a replay is CPU-bound Python that threads would only slow."""


def replay_task(task: Task, data: bytes | None = None) -> TaskResult:
    """Replay one task; its run's report as JSON text.

    Runs wherever the task is sent (a worker process, a dask worker).  A
    user-caused failure (:class:`~ksmreplay.errors.KsmreplayError`) comes
    back as :attr:`TaskResult.error`, so that it crosses processes intact.

    :param data: the trace's bytes, when they were sent with the task; else
        the trace is read from :attr:`Task.path`.
    """
    found: list[traps.Trap] = []
    try:
        with _REPLAY_LOCK:
            stream = io.BytesIO(data) if data is not None else _open(task.path, task.name)
            with TraceReader(stream, task.name) as reader:
                report = replay(
                    reader,
                    (task.mode,),
                    kernels=(task.kernel,),
                    pins=dict(task.settings) or None,
                    warn=found.append,
                    every=task.every,
                )
        out = io.StringIO()
        render_json(report, out)
    except KsmreplayError as exc:
        return TaskResult(task.index, None, error=(int(exc.exit_status), str(exc)))
    return TaskResult(task.index, out.getvalue(), tuple((t.kind, t.text) for t in found))


def _open(path: str, name: str) -> io.BufferedReader:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputOutputError(f"{name}: cannot open {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked sweep, ready to run.

    :ivar traces: the traces, in order.
    :ivar knobs: the grid's knobs, in order.
    :ivar tasks: every replay, in row order: by trace, then kernel and mode
        (as ``run`` orders runs), then grid point.
    :ivar at: the snapshot whose figures the rows show (``final``: the end).
    :ivar columns: the extra columns (``--column``).
    :ivar within: the recommendation's tolerance, percent of the best saving.
    """

    traces: tuple[TraceInput, ...]
    knobs: tuple[str, ...]
    tasks: tuple[Task, ...]
    at: str = FINAL
    columns: tuple[str, ...] = ()
    within: float = DEFAULT_WITHIN


def _check_at(trace: TraceInput, at: str, every: int | None) -> None:
    if at == FINAL or at in trace.labels:
        return
    if every is not None and at.startswith("every@"):
        t = at.removeprefix("every@")
        if t.isdigit() and int(t) % every == 0 and int(t) <= trace.duration_ns and t == str(int(t)):
            return
    labels = ", ".join(json.dumps(label) for label in sorted(trace.labels)) or "none"
    raise UsageError(
        f"--at {at}: {trace.name} has no snapshot labelled {json.dumps(at)} "
        f"(its snapshots: {labels}; 'final' is the end)"
    )


def plan_sweep(
    traces: Sequence[TraceInput],
    grids: Sequence[Grid] = (),
    modes: Sequence[str] = ("legacy", "unshare"),
    kernels: Sequence[str] = ("6.18",),
    *,
    only_modes_each_has: bool = False,
    at: str = FINAL,
    columns: Sequence[str] = (),
    within: float = DEFAULT_WITHIN,
    every: int | None = None,
) -> Plan:
    """Check everything a sweep could fail on before any replay, and list its tasks.

    :param modes: modes, each once (``replay.expand_modes``).
    :param kernels: kernel versions, each once.
    :param only_modes_each_has: on each version, leave out the modes it lacks
        (``--mode both`` or ``all``, as ``run`` does).
    :param at: the snapshot label whose figures rows show; every trace must
        have it (``final``: the end; ``every@T`` with ``every``).
    :param columns: counters to add to each row (:data:`COLUMN_CHOICES`).
    :param every: ``--every`` in ns, or None.
    :raises UsageError: a knob a version lacks or refuses, a missing
        snapshot, an unknown column, too many ``every`` snapshots.
    """
    pairs = run_pairs(modes, kernels, only_modes_each_has)
    points = grid_points(grids)
    for name in columns:
        if name not in COLUMN_CHOICES:
            raise UsageError(f"--column {name}: unknown (choose from {', '.join(COLUMN_CHOICES)})")
    for i, name in enumerate(columns):
        if name in columns[:i]:
            raise UsageError(f"--column {name} given twice")
    for trace in traces:
        _check_at(trace, at, every)
        if every is not None:
            check_every(every, trace.duration_ns)
    # Every point on every version: refused knobs (a version's missing knob,
    # the advisor's pages_to_scan) are found here, before any replay.  (The
    # knobs a simulator takes depend on the version, not on the mode.)
    page_sizes = sorted({trace.page_size for trace in traces})
    first_mode = {version: mode for version, mode in reversed(pairs)}
    for (version, mode), point, page_size in itertools.product(
        first_mode.items(), points, page_sizes
    ):
        try:
            make_simulator(mode, page_size, None, dict(point) or None, version)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--pin ", "--grid ", 1)) from None
    runs = itertools.product(traces, pairs, points)
    tasks = tuple(
        Task(i, trace.name, trace.path, trace.digest, version, mode, point, every)
        for i, (trace, (version, mode), point) in enumerate(runs)
    )
    return Plan(
        tuple(traces), tuple(grid.knob for grid in grids), tasks, at, tuple(columns), within
    )


# --------------------------------------------------------------------------- cache


class Cache:
    """Reports of finished tasks, one file each in ``directory``, found again by key.

    The key is the trace's content hash (not its name), the ksmreplay
    version, the kernel version, the mode, the pinned settings (in order)
    and ``every``: the same trace under another name is found, and a new
    version of ksmreplay replays everything again.  A file is written whole
    (a temporary file renamed over it), as soon as its task finishes, so an
    interrupted sweep leaves only complete entries.  An entry that cannot be
    read is replayed again.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise InputOutputError(f"--cache {directory}: {exc.strerror or exc}") from exc

    @staticmethod
    def key(task: Task) -> dict[str, Any]:
        """What a task's report depends on (its trace's name aside)."""
        return {
            "ksmreplay": __version__,
            "trace_sha256": task.digest,
            "kernel": task.kernel,
            "mode": task.mode,
            "settings": [list(pair) for pair in task.settings],
            "every": task.every,
        }

    def _path(self, task: Task) -> str:
        text = json.dumps(self.key(task), sort_keys=True, separators=(",", ":"))
        return os.path.join(self.directory, hashlib.sha256(text.encode()).hexdigest() + ".json")

    def get(self, task: Task) -> TaskResult | None:
        """The cached result of ``task``, or None; its report names the
        trace as the task does."""
        try:
            with open(self._path(task), encoding="utf-8") as f:
                entry = json.load(f)
            if entry["key"] != json.loads(json.dumps(self.key(task))):
                return None
            report = entry["report"]
            report["trace"]["path"] = task.name
            warnings = tuple((str(kind), str(text)) for kind, text in entry["warnings"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        out = io.StringIO()
        render_json(report, out)
        return TaskResult(task.index, out.getvalue(), warnings)

    def put(self, task: Task, result: TaskResult) -> None:
        """Keep a finished task's result.

        :raises InputOutputError: the directory cannot be written.
        """
        assert result.report is not None
        entry = {
            "key": self.key(task),
            "warnings": [list(w) for w in result.warnings],
            "report": json.loads(result.report),
        }
        path = self._path(task)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".entry-", dir=self.directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entry, f, separators=(",", ":"))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise InputOutputError(f"--cache {self.directory}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- execution


T = TypeVar("T")
R = TypeVar("R")


def _worker_start() -> None:
    """A local worker process: Ctrl-C is the parent's to handle (it stops the
    workers); the other stop signals end the worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _context() -> Any:
    """Worker processes are forked where the platform can (fast, nothing to import again)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def cpu_count() -> int:
    """The CPUs this process may run on (``--jobs``'s default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_results(fn: Callable[[T], R], tasks: Sequence[T], jobs: int) -> Generator[R, None, None]:
    """``fn(task)`` for every task, each result as soon as it is made.

    ``jobs`` 1 runs them here, in order; more runs them in that many worker
    processes (at most one per task), in the order they finish.  Leaving the
    iteration early (an error, Ctrl-C) stops the workers at once.
    """
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield fn(task)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)), mp_context=_context(), initializer=_worker_start
    )
    finished = False
    try:
        futures: list[Future[R]] = [pool.submit(fn, task) for task in tasks]
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                raise TaskError(
                    ExitStatus.RESOURCES,
                    "a worker process ended without its result (killed; out of memory?)",
                ) from None
            yield result
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, end the running workers.

    While the pool's own threads notice that its workers are gone, a write of
    theirs into a pipe no worker reads any more must fail there, not stop
    ksmreplay by SIGPIPE: SIGPIPE is ignored until they have ended.
    """
    workers = dict(getattr(pool, "_processes", None) or {})
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers.values():
        if process.is_alive():
            process.terminate()
    try:
        previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        previous = None
    try:
        for process in workers.values():
            process.join()
        pool.shutdown(wait=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGPIPE, previous)


def dask_results(
    tasks: Sequence[Task], traces: Sequence[TraceInput], address: str, jobs: int
) -> Generator[TaskResult, None, None]:
    """Every task run on a dask.distributed cluster, each result as it comes.

    ``address`` is a scheduler's (``tcp://host:8786``), or ``local`` for a
    cluster of ``jobs`` worker processes on this machine, one thread each,
    listening on the loopback address only (their scratch space a temporary
    directory, removed after).
    A trace of at most :data:`SEND_LIMIT` bytes goes to the cluster once,
    as a task of its own that the replays depend on (the scheduler can make
    it again if the worker holding it is lost); a larger one is read by the
    workers from its absolute path.  The scheduler runs again elsewhere a
    task whose worker died.  Leaving the iteration early cancels the rest.

    :raises UsageError: dask.distributed is not installed.
    :raises InputOutputError: the scheduler cannot be reached.
    """
    try:
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'ksmreplay[dask]'") from None
    with contextlib.ExitStack() as stack:
        try:
            if address == "local":
                scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="ksmreplay-dask-"))
                config: Any = importlib.import_module("dask.config")
                stack.enter_context(config.set({"temporary-directory": scratch}))
                cluster = stack.enter_context(
                    distributed.LocalCluster(
                        n_workers=jobs,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(distributed.Client(cluster))
            else:
                client = stack.enter_context(distributed.Client(address, timeout="20s"))
        except (OSError, TimeoutError) as exc:
            raise InputOutputError(f"--dask {address}: cannot reach the scheduler: {exc}") from exc
        sent: dict[str, Any] = {}
        for trace in traces:
            if trace.size <= SEND_LIMIT and trace.digest not in sent:
                with open(trace.path, "rb") as f:
                    sent[trace.digest] = client.submit(_trace_bytes, f.read(), pure=False)
        futures = [
            client.submit(replay_task, task, sent.get(task.digest), pure=False) for task in tasks
        ]
        finished = False
        try:
            for future in distributed.as_completed(futures):
                yield cast(TaskResult, future.result())
            finished = True
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    client.cancel(futures)


def _trace_bytes(data: bytes) -> bytes:
    """A trace's bytes as a dask task (so that the scheduler can make them again)."""
    return data


# --------------------------------------------------------------------------- rows


@dataclass(slots=True)
class Row:
    """One finished run: what a sweep's output shows of it.

    Figures at the snapshot :attr:`at` (``final``: the end), except
    ``t_saved_90`` (the run's milestone) and the ksmd cost (the whole run).

    :ivar task: the task that made it.
    :ivar at: the snapshot label (:attr:`Plan.at`).
    :ivar t: that snapshot's ``t``, ns.
    :ivar page_size: the trace's page size, bytes.
    :ivar summary: the snapshot's ``summary`` (REPORT_FORMAT.md "Additions").
    :ivar t_saved_90: ns, or None.
    :ivar cpu_ns: ksmd's modelled CPU time in trace time, ns.
    :ivar cpu_percent: that, percent of one CPU over the trace.
    :ivar columns: the ``--column`` values, by name (None: not on this kernel or mode).
    :ivar pareto: on its group's Pareto front of saving against CPU.
    :ivar recommended: its group's recommendation.
    :ivar report: the run's whole report as JSON text (kept for ``--reports``).
    :ivar report_path: where ``--reports`` wrote it.
    """

    task: Task
    at: str
    t: int
    page_size: int
    summary: dict[str, Any]
    t_saved_90: int | None
    cpu_ns: int
    cpu_percent: float
    columns: dict[str, Any]
    pareto: bool = False
    recommended: bool = False
    report: str | None = None
    report_path: str | None = None

    @property
    def saved_pages(self) -> int:
        """Pages saved at :attr:`at`."""
        return int(self.summary["saved_pages"])

    @property
    def group(self) -> tuple[str, str, str]:
        """What a recommendation is for: (trace, kernel, mode)."""
        return (self.task.name, self.task.kernel, self.task.mode)


def make_row(task: Task, report_text: str, at: str, columns: Sequence[str]) -> Row:
    """The row of a finished task from its report."""
    report = json.loads(report_text)
    (run,) = report["runs"]
    if at == FINAL:
        snap = run["final"]
    else:
        snap = next((s for s in run["snapshots"] if s["label"] == at), None)
        if snap is None:  # checked by plan_sweep; a trace changed since?
            raise UsageError(f"--at {at}: no such snapshot in {task.name}")
    sections = {**{scope: snap.get(scope, {}) for scope in ("summary", "ksm", "memory", "events")}}
    sections["ksmd"] = run["ksmd"]
    sections["milestones"] = run["milestones"]
    return Row(
        task,
        at,
        int(snap["t"]),
        int(report["trace"]["page_size"]),
        dict(snap["summary"]),
        run["milestones"]["t_saved_90"],
        int(run["ksmd"]["cpu_ns"]),
        float(run["ksmd"]["cpu_percent"]),
        {name: sections[COLUMN_CHOICES[name]].get(name) for name in columns},
    )


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """The rows no other row beats: none saves as much for less ksmd CPU, or
    more for as little.  Rows equal in both are all on it."""
    ranked = sorted(rows, key=lambda r: (-r.saved_pages, r.cpu_ns))
    front: list[Row] = []
    best_cpu = math.inf
    for _saved, same in itertools.groupby(ranked, key=lambda r: r.saved_pages):
        group = list(same)
        cheapest = group[0].cpu_ns
        if cheapest < best_cpu:
            front.extend(r for r in group if r.cpu_ns == cheapest)
            best_cpu = cheapest
    return front


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The recommended run of one (trace, kernel, mode) and the best saving it is held to.

    :ivar row: the run with the least ksmd CPU among those that save at least
        ``100 - within`` percent of :attr:`best`'s saving (ties: the larger
        saving, then the first in the sweep).
    :ivar best: the run that saves the most (ties: the least CPU, then the first).
    :ivar where: what it is for: the trace, and ``(MODE@KERNEL)`` when the
        sweep has several.
    :ivar advice: the settings and what they give, one sentence.
    """

    row: Row
    best: Row
    where: str
    advice: str

    @property
    def text(self) -> str:
        """The recommendation in one line: ``WHERE: ADVICE``."""
        return f"{self.where}: {self.advice}"


def _mib(pages: int, page_size: int) -> str:
    return f"{pages * page_size / _MIB:.2f}"


def settings_text(settings: Settings) -> str:
    """``knob=value knob=value``, or what stands for no grid."""
    return " ".join(f"{k}={v}" for k, v in settings) or "the trace's own settings"


def recommend(rows: Sequence[Row], within: float, several: bool) -> list[Recommendation]:
    """The recommendation of every (trace, kernel, mode) of ``rows``, in row order.

    Also marks :attr:`Row.pareto` and :attr:`Row.recommended`.

    :param within: percent of the best saving the recommendation may be below it.
    :param several: name the kernel and mode in the text (they differ between rows).
    """
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    out = []
    for (trace, version, mode), group in groups.items():
        for row in pareto_front(group):
            row.pareto = True
        order = {id(r): i for i, r in enumerate(group)}
        best = min(group, key=lambda r: (-r.saved_pages, r.cpu_ns, order[id(r)]))
        floor = best.saved_pages * (100 - within) / 100
        chosen = min(
            (r for r in group if r.saved_pages >= floor),
            key=lambda r: (r.cpu_ns, -r.saved_pages, order[id(r)]),
        )
        chosen.recommended = True
        ps = chosen.page_size
        where = f"{trace} ({mode}@{version})" if several else trace
        head = settings_text(chosen.task.settings)
        if best.saved_pages <= 0:
            advice = (
                f"{head}: no setting saves memory here; the least ksmd CPU: "
                f"{chosen.cpu_percent:.2f} %"
            )
        elif chosen is best:
            advice = (
                f"{head}: saves the most, {_mib(chosen.saved_pages, ps)} MiB "
                f"({chosen.summary['saved_percent']:.2f} %), for {chosen.cpu_percent:.2f} % "
                "ksmd CPU"
            )
        else:
            share = 100 * chosen.saved_pages / best.saved_pages
            advice = (
                f"{head}: saves {_mib(chosen.saved_pages, ps)} MiB ({share:.1f} % of the best, "
                f"{_mib(best.saved_pages, ps)} MiB) for {chosen.cpu_percent:.2f} % ksmd CPU "
                f"(the best: {best.cpu_percent:.2f} %)"
            )
        out.append(Recommendation(chosen, best, where, advice))
    return out


# --------------------------------------------------------------------------- the sweep


ProgressCallback = Callable[[int, int, float | None], None]
"""``progress(done, total, eta_s)``: runs done of all, and the seconds left as
estimated from the replays so far (None before the first)."""


@dataclass
class Outcome:
    """A sweep's result.

    :ivar plan: what was asked.
    :ivar rows: the finished runs, in task order (all of them unless interrupted).
    :ivar recommendations: per (trace, kernel, mode) of :attr:`rows`.
    :ivar replayed: tasks replayed by this sweep.
    :ivar cached: tasks found in the cache.
    :ivar warnings: the replays' warnings, as lines (``warning: ...`` without the prefix).
    :ivar interrupted: the Ctrl-C that stopped the sweep, or None.
    """

    plan: Plan
    rows: list[Row]
    recommendations: list[Recommendation] = field(default_factory=list)
    replayed: int = 0
    cached: int = 0
    warnings: list[str] = field(default_factory=list)
    interrupted: Interrupted | None = None

    @property
    def several(self) -> bool:
        """Whether the runs differ in kernel or mode."""
        return len({(t.kernel, t.mode) for t in self.plan.tasks}) > 1


def run_sweep(
    plan: Plan,
    jobs: int = 1,
    *,
    dask: str | None = None,
    cache: Cache | None = None,
    keep_reports: bool = False,
    progress: ProgressCallback | None = None,
) -> Outcome:
    """Run every task of ``plan`` not in ``cache``; the rows and recommendations.

    :param jobs: local worker processes (1: here, in order); with
        ``dask="local"``, the local cluster's workers.
    :param dask: a dask scheduler's address, or ``local``, or None (local).
    :param cache: where finished reports are kept and looked up.
    :param keep_reports: keep each run's report in its row (``--reports``).
    :param progress: called after every finished run (cached ones at once).
    :returns: an :class:`Outcome`; after Ctrl-C, the runs finished until then
        and the interrupt (:attr:`Outcome.interrupted`).
    :raises TaskError: a task failed (the sweep stops; the cache keeps what finished).
    """
    tasks = plan.tasks
    results: dict[int, TaskResult] = {}
    todo: list[Task] = []
    for task in tasks:
        hit = cache.get(task) if cache is not None else None
        if hit is None:
            todo.append(task)
        else:
            results[task.index] = hit
    outcome = Outcome(plan, [], cached=len(results))
    start = time.monotonic()
    if progress is not None:
        progress(len(results), len(tasks), None)
    try:
        if dask is not None and todo:  # (no cluster for a sweep the cache holds whole)
            stream = dask_results(todo, plan.traces, dask, jobs)
        else:
            stream = local_results(replay_task, todo, jobs)
        with contextlib.closing(stream):
            for result in stream:
                if result.error is not None:
                    raise TaskError(*result.error)
                if cache is not None:
                    cache.put(tasks[result.index], result)
                results[result.index] = result
                outcome.replayed += 1
                if progress is not None:
                    spent = time.monotonic() - start
                    left = len(todo) - outcome.replayed
                    progress(len(results), len(tasks), spent / outcome.replayed * left)
    except Interrupted as exc:
        outcome.interrupted = exc
    for index in sorted(results):
        result = results[index]
        assert result.report is not None
        row = make_row(tasks[index], result.report, plan.at, plan.columns)
        if keep_reports:
            row.report = result.report
        outcome.rows.append(row)
    outcome.recommendations = recommend(outcome.rows, plan.within, outcome.several)
    outcome.warnings = _warning_lines([(tasks[i], results[i].warnings) for i in sorted(results)])
    return outcome


WARNINGS_PER_KIND = 5
"""Warnings of one kind told in full; the rest are counted in one line."""


def _warning_lines(found: Sequence[tuple[Task, Sequence[tuple[str, str]]]]) -> list[str]:
    """The sweep's warnings: each text once per trace, saying in how many of
    its runs it came when not in all, at most :data:`WARNINGS_PER_KIND` of a kind."""
    runs: dict[str, int] = {}
    having: dict[tuple[str, str, str], list[Task]] = {}
    for task, warnings in found:
        runs[task.name] = runs.get(task.name, 0) + 1
        for kind, text in warnings:
            having.setdefault((task.name, kind, text), []).append(task)
    counts: dict[str, int] = {}
    lines = []
    for (name, kind, text), tasks in having.items():
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] > WARNINGS_PER_KIND:
            continue
        if len(tasks) == runs[name]:
            lines.append(f"{name}: {text}")
        else:
            first = tasks[0]
            example = f"{first.mode}@{first.kernel} {settings_text(first.settings)}"
            lines.append(f"{name} [{len(tasks)} of {runs[name]} runs, as {example}]: {text}")
    for kind, count in counts.items():
        if count > WARNINGS_PER_KIND:
            more = count - WARNINGS_PER_KIND
            lines.append(f"{more} more {kind} warning{'s' * (more > 1)} not shown")
    return lines


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "trace"


def write_reports(outcome: Outcome, directory: str) -> None:
    """Write every finished run's whole report into ``directory``, one JSON file
    each (``NNN-TRACE-MODE@KERNEL-KNOB=VALUE....json``, NNN its place in the
    sweep), and note the path in its row.

    :raises InputOutputError: the directory or a file cannot be written.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise InputOutputError(f"--reports {directory}: {exc.strerror or exc}") from exc
    width = len(str(len(outcome.plan.tasks)))
    for row in outcome.rows:
        task = row.task
        stem = os.path.splitext(os.path.basename(task.name))[0]
        parts = [f"{task.index + 1:0{width}d}", _safe(stem), f"{task.mode}@{task.kernel}"]
        parts += [_safe(f"{k}={v}") for k, v in task.settings]
        path = os.path.join(directory, "-".join(parts) + ".json")
        assert row.report is not None
        with open_text_output(path) as out:
            out.write(row.report)
        row.report_path = path


# --------------------------------------------------------------------------- output


def _seconds(ns: int | None) -> str:
    """ns as seconds with 3 decimals (truncated, exact), ``-`` for None."""
    if ns is None:
        return "-"
    return f"{ns // _NS_PER_S}.{ns % _NS_PER_S // 1_000_000:03d}"


def _value(value: object) -> str:
    """A table cell of a ``--column``: yes/no, ``-`` for null."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _printable(text: str) -> str:
    return text if text.isprintable() else json.dumps(text)


_FIGURES: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("saved MiB", lambda r: _mib(r.saved_pages, r.page_size)),
    ("saved %", lambda r: f"{r.summary['saved_percent']:.2f}"),
    ("of ideal %", lambda r: f"{r.summary['percent_of_ideal']:.2f}"),
    ("90 % at", lambda r: _seconds(r.t_saved_90)),
    ("cpu %", lambda r: f"{r.cpu_percent:.2f}"),
    ("cpu s", lambda r: _seconds(r.cpu_ns)),
)
"""The table's figures: a header and how to show it."""

LEGEND = (
    "saved: at that snapshot; 90 % at: when 90 % of the run's most saving came (s);\n"
    "cpu: ksmd's modelled CPU over the run; front: * on the Pareto front of saving\n"
    "against CPU, pick: the recommendation\n"
)
"""What the table's columns are, under it."""


def _block(outcome: Outcome, rows: Sequence[Row]) -> str:
    """The table of one (trace, kernel, mode): a row per grid point."""
    columns = outcome.plan.columns
    cols: list[tuple[str, Callable[[Row], str]]] = [
        ("settings", lambda r: ", ".join(str(v) for _k, v in r.task.settings) or "-"),
        *_FIGURES,
        *((name, lambda r, n=name: _value(r.columns[n])) for name in columns),
        ("front", lambda r: ("* pick" if r.recommended else "*") if r.pareto else ""),
    ]
    cells = [[cell(row) for _title, cell in cols] for row in rows]
    aligns = "l" + "r" * (len(cols) - 2) + "l"
    return wrapped_table([title for title, _ in cols], cells, aligns, keep=1)


def render_table(outcome: Outcome, out: TextIO) -> None:
    """The sweep for people: what every run shares, then for each trace (and
    kernel and mode) its table, a row per grid point, and its recommendation
    in one line; then what the columns are.

    Tables fit :data:`~ksmreplay.render.TABLE_WIDTH` columns (a table too wide
    is cut into several that repeat the settings); a recommendation is one
    line, however long.
    """
    plan = outcome.plan
    tasks = plan.tasks
    head: list[list[str]] = []
    names = list(dict.fromkeys(t.name for t in tasks))
    if len(names) == 1:
        head.append(["trace", _printable(names[0])])
    for title, values in (
        ("kernel", [t.kernel for t in tasks]),
        ("mode", [t.mode for t in tasks]),
    ):
        distinct = list(dict.fromkeys(values))
        if len(distinct) == 1:
            head.append([title, distinct[0]])
    head.append(["at", FINAL if plan.at == FINAL else f"snapshot {json.dumps(plan.at)}"])
    head.append(["settings", ", ".join(plan.knobs) if plan.knobs else "the trace's own"])
    done = len(outcome.rows)
    runs = f"{done}" if done == len(tasks) else f"{done} of {len(tasks)} (interrupted)"
    head.append(["runs", runs])
    head.append(["pick", f"the least ksmd CPU within {plan.within:g} % of the best saving"])
    out.write(plain_table([], head, "ll") + "\n")
    groups = len({row.group for row in outcome.rows}) > 1
    for rec in outcome.recommendations:
        rows = [row for row in outcome.rows if row.group == rec.row.group]
        title = _printable(rec.where) + "\n" if groups else ""
        out.write(f"\n{title}{_block(outcome, rows)}\nrecommended: {rec.advice}\n")
    if outcome.rows:
        out.write("\n" + LEGEND)


def _row_object(row: Row) -> dict[str, Any]:
    s = row.summary
    obj: dict[str, Any] = {
        "trace": row.task.name,
        "kernel": row.task.kernel,
        "mode": row.task.mode,
        "settings": dict(row.task.settings),
        "at": row.at,
        "t": row.t,
        "saved_pages": s["saved_pages"],
        "saved_bytes": s["saved_bytes"],
        "saved_percent": s["saved_percent"],
        "ideal_saved_pages": s["ideal_saved_pages"],
        "percent_of_ideal": s["percent_of_ideal"],
        "t_saved_90": row.t_saved_90,
        "cpu_ns": row.cpu_ns,
        "cpu_percent": row.cpu_percent,
    }
    if row.columns:
        obj["columns"] = row.columns
    obj["pareto"] = row.pareto
    obj["recommended"] = row.recommended
    if row.report_path is not None:
        obj["report"] = row.report_path
    return obj


def render_sweep_json(outcome: Outcome, out: TextIO) -> None:
    """The sweep as one JSON object: its shape, every row, the recommendations."""
    plan = outcome.plan
    document = {
        "sweep": SWEEP_VERSION,
        "at": plan.at,
        "knobs": list(plan.knobs),
        "within_percent": plan.within,
        "planned": len(plan.tasks),
        "finished": len(outcome.rows),
        "runs": [_row_object(row) for row in outcome.rows],
        "recommendations": [
            {
                "trace": rec.row.task.name,
                "kernel": rec.row.task.kernel,
                "mode": rec.row.task.mode,
                "settings": dict(rec.row.task.settings),
                "saved_pages": rec.row.saved_pages,
                "cpu_ns": rec.row.cpu_ns,
                "best_settings": dict(rec.best.task.settings),
                "best_saved_pages": rec.best.saved_pages,
                "best_cpu_ns": rec.best.cpu_ns,
                "text": rec.text,
            }
            for rec in outcome.recommendations
        ],
    }
    out.write(json.dumps(document, indent=2) + "\n")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


ROW_COLUMNS: tuple[str, ...] = (
    "at",
    "t",
    "saved_pages",
    "saved_bytes",
    "saved_percent",
    "ideal_saved_pages",
    "percent_of_ideal",
    "t_saved_90",
    "cpu_ns",
    "cpu_percent",
)
"""The figures of every CSV/TSV row, after trace, kernel, mode and the knobs."""


def _write_rows(outcome: Outcome, out: TextIO, field_: Callable[[str], str], sep: str) -> None:
    plan = outcome.plan
    reports = any(row.report_path is not None for row in outcome.rows)
    header = [
        "trace",
        "kernel",
        "mode",
        *plan.knobs,
        *ROW_COLUMNS,
        *plan.columns,
        "pareto",
        "recommended",
        *(["report"] if reports else []),
    ]
    out.write(sep.join(field_(h) for h in header) + "\n")
    for row in outcome.rows:
        obj = _row_object(row)
        cells = [row.task.name, row.task.kernel, row.task.mode]
        cells += [_cell(v) for _k, v in row.task.settings]
        cells += [_cell(obj[name]) for name in ROW_COLUMNS]
        cells += [_cell(row.columns[name]) for name in plan.columns]
        cells += [_cell(row.pareto), _cell(row.recommended)]
        if reports:
            cells.append(_cell(row.report_path))
        out.write(sep.join(field_(c) for c in cells) + "\n")


SWEEP_FORMATS: tuple[str, ...] = ("table", "json", "csv", "tsv")
"""Every ``sweep --format``, the default first (those of ``run``)."""


def render_sweep(outcome: Outcome, fmt: str, out: TextIO) -> None:
    """Write a sweep's rows and recommendations to ``out`` in ``fmt``.

    ``table``: for people (:func:`render_table`); ``json``: one object
    (:func:`render_sweep_json`); ``csv``/``tsv``: a header, then one row per run
    (trace, kernel, mode, each knob, :data:`ROW_COLUMNS`, each ``--column``,
    pareto and recommended as yes/no, the report's path with ``--reports``),
    fields as ``run``'s CSV/TSV write them.

    :raises ValueError: an unknown format.
    """
    if fmt == "table":
        render_table(outcome, out)
    elif fmt == "json":
        render_sweep_json(outcome, out)
    elif fmt == "csv":
        _write_rows(outcome, out, csv_field, ",")
    elif fmt == "tsv":
        _write_rows(outcome, out, tsv_field, "\t")
    else:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(SWEEP_FORMATS)})")


# --------------------------------------------------------------------------- run --jobs


@dataclass(frozen=True, slots=True)
class _RunTask:
    index: int
    path: str
    name: str
    kernel: str
    mode: str
    settings: tuple[tuple[str, KnobValue], ...]
    pins: tuple[tuple[str, KnobValue], ...]
    every: int | None
    explain: bool
    check_invariants: bool
    snapshots: str
    """The file the run's snapshots go to (msgpack, one after the other)."""


@dataclass(frozen=True, slots=True)
class _RunResult:
    index: int
    report: dict[str, Any] | None
    """The report of one run, its ``snapshots`` None (they are in the task's file)."""
    traps: tuple[traps.Trap, ...] = ()
    error: tuple[int, str] | None = None


def _replay_run(task: _RunTask) -> _RunResult:
    """One run of ``run --jobs``, in a worker process."""
    found: list[traps.Trap] = []
    try:
        with TraceReader(_open(task.path, task.name), task.name) as reader:
            report = replay_spooled(
                reader,
                (task.mode,),
                dict(task.settings) or None,
                check_invariants=task.check_invariants,
                kernels=(task.kernel,),
                pins=dict(task.pins) or None,
                warn=found.append,
                every=task.every,
                explain=task.explain,
            )
        try:
            (run,) = report["runs"]
            packer = msgpack.Packer()
            with open(task.snapshots, "wb") as f:
                for snap in run["snapshots"]:
                    f.write(packer.pack(snap))
        except OSError as exc:
            raise InputOutputError(f"{task.snapshots}: {exc.strerror or exc}") from exc
        finally:
            close_spools(report)
    except KsmreplayError as exc:
        return _RunResult(task.index, None, error=(int(exc.exit_status), str(exc)))
    plain: dict[str, Any] = {**report, "runs": [{**run, "snapshots": None}]}
    return _RunResult(task.index, plain, tuple(found))


def _spool_file(path: str, spool: SnapshotSpool) -> None:
    """Append the snapshots of a run's file to ``spool``."""
    try:
        with open(path, "rb") as f:
            for snap in msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=0):
                spool.append(snap)
    except OSError as exc:
        raise InputOutputError(f"{path}: {exc.strerror or exc}") from exc


def replay_in_parallel(
    path: str,
    name: str,
    pairs: Sequence[tuple[str, str]],
    jobs: int,
    *,
    settings: Mapping[str, KnobValue] | None = None,
    pins: Mapping[str, KnobValue] | None = None,
    every: int | None = None,
    explain: bool = False,
    check_invariants: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SpooledReport, list[traps.Trap]]:
    """``replay_spooled`` of the trace at ``path``, each run in its own worker
    process (at most ``jobs`` at once): the same report, and its warnings.

    Each worker reads the trace itself and replays one (kernel, mode) pair
    (``replay.run_pairs``); its snapshots come back through a temporary file
    into the run's spool, so memory stays that of :func:`replay_spooled`.
    The warnings are those the runs' replay together would have given (each
    once, naming the runs that have it when not all do), after the replays
    rather than as they come.

    :param name: the trace's name in the report and messages.
    :param progress: called as ``progress(runs_done, runs)``.
    :raises TaskError: a run failed as :func:`replay_spooled` would have.
    """
    n = len(pairs)
    with tempfile.TemporaryDirectory(prefix="ksmreplay-run-") as tmp:
        tasks = [
            _RunTask(
                i,
                os.path.abspath(path),
                name,
                version,
                mode,
                tuple((settings or {}).items()),
                tuple((pins or {}).items()),
                every,
                explain,
                check_invariants,
                os.path.join(tmp, f"{i}.msgpack"),
            )
            for i, (version, mode) in enumerate(pairs)
        ]
        results: list[_RunResult | None] = [None] * n
        for done, result in enumerate(local_results(_replay_run, tasks, jobs), 1):
            if result.error is not None:
                raise TaskError(*result.error)
            results[result.index] = result
            if progress is not None:
                progress(done, n)
        finished = [r for r in results if r is not None and r.report is not None]
        assert len(finished) == n
        with contextlib.ExitStack() as stack:
            runs: list[SpooledRun] = []
            for task, result in zip(tasks, finished, strict=True):
                assert result.report is not None
                spool = stack.enter_context(SnapshotSpool())
                _spool_file(task.snapshots, spool)
                (run,) = result.report["runs"]
                run["snapshots"] = spool
                runs.append(cast(SpooledRun, run))
            stack.pop_all()
    first = finished[0].report
    assert first is not None
    report: SpooledReport = {"report": first["report"], "trace": first["trace"], "runs": runs}
    found = traps.merge(
        [(label, r.traps) for label, r in zip(run_names(pairs), finished, strict=True)]
    )
    return report, found
