"""The command line: parse options, call the library, format its answers.

Nothing here models memory or ksmd.  :func:`_exit_status` is the one place
that turns whatever ends a command into its message and exit status: a
:class:`~ksmreplay.errors.KsmreplayError` becomes ``ksmreplay: <message>`` on
stderr (``--debug`` adds the traceback) and its status; click's usage errors
exit with 2; a stop signal (SIGINT, SIGTERM, SIGHUP, SIGPIPE, which
:func:`ksmreplay.signals.raising` turns into exceptions for the whole run, so
that every cleanup runs) and a write into a closed pipe end the process
quietly by that signal (status 128 + N as a shell shows it); any other failed
read or write is one line with status 4.  :func:`main` also keeps a standard
stream that was closed at start behaving as closed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from ksmreplay import __version__, arrays, native, signals, traps
from ksmreplay.diff import diff_reports, load_report, render_differences
from ksmreplay.errors import ExitStatus, KsmreplayError, Stopped
from ksmreplay.inspect import inspect_trace
from ksmreplay.ksm.kernels import DEFAULT_KERNEL, KERNELS, expand_kernels
from ksmreplay.ksm.knobs import KNOB_BY_NAME, KNOBS, KnobValue, start_order
from ksmreplay.output import open_output, open_text_output
from ksmreplay.plot import PLOT_FORMATS
from ksmreplay.render import FORMATS, UNITS, plain_table, render, table_view
from ksmreplay.replay import (
    MODE_CHOICES,
    MODE_GROUPS,
    check_every,
    expand_modes,
    replay_spooled,
    run_pairs,
)
from ksmreplay.report import close_spools, schema_text
from ksmreplay.synth import (
    FIT_WORKLOADS,
    WORKLOAD_NAMES,
    describe_workloads,
    fit_contents,
    fit_params,
    get_workload,
    resolve_params,
    synthesize,
)
from ksmreplay.trace import FORMS, TraceWriter, form_for_path, open_trace
from ksmreplay.tracepoints import EVENTS as TRACEPOINT_EVENTS
from ksmreplay.tracepoints import open_tracepoints

if TYPE_CHECKING:
    from ksmreplay.record import RecordSummary

_DEBUG = "ksmreplay.debug"

OUTPUT_HELP = (
    "A regular file is replaced only once complete (a temporary file beside it is "
    "renamed over it, keeping its permissions), a symbolic link's target likewise; "
    "a device, FIFO or /dev/stdout is written through."
)
"""What every -o FILE (and convert's OUT) does with the path it is given."""


def _seconds(ns: int) -> str:
    """Nanoseconds as exact decimal seconds."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d} s"


def _error(message: str) -> None:
    """``ksmreplay: <message>`` on stderr; dropped if stderr cannot take it."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(f"ksmreplay: {message}", err=True)


WARNINGS_PER_KIND = 5
"""Warnings of one kind printed in full; the rest are counted in one line."""


class _Warnings:
    """Prints a replay's warnings on stderr: ``ksmreplay: warning: <text>``, one line each.

    At most :data:`WARNINGS_PER_KIND` of one kind; :meth:`close` says how many
    more there were.  A progress line being drawn is cleared first.
    """

    def __init__(self, progress: bool) -> None:
        self._progress = progress
        self._counts: dict[str, int] = {}

    def __call__(self, trap: traps.Trap) -> None:
        count = self._counts[trap.kind] = self._counts.get(trap.kind, 0) + 1
        if count <= WARNINGS_PER_KIND:
            if self._progress:
                _progress_line("")
            _error(f"warning: {trap.text}")

    def close(self) -> None:
        for kind, count in self._counts.items():
            if count > WARNINGS_PER_KIND:
                more = count - WARNINGS_PER_KIND
                _error(f"warning: {more} more {kind} warning{'s' * (more > 1)} not shown")


def _memory_warning(reader: Any, modes: int) -> traps.Trap | None:
    """A warning when the trace is likely to need more memory than the replay may take.

    Estimated before replaying from what validating the whole trace found
    (:class:`~ksmreplay.trace.Footprint`); nothing for a trace read from a pipe.
    """
    footprint = reader.footprint
    if footprint is None:
        return None
    need = arrays.estimate_replay(footprint.peak_pages, footprint.peak_processes, modes)
    room = arrays.room()
    if room is None or need <= room:
        return None
    modes_text = "1 mode" if modes == 1 else f"{modes} modes"
    return traps.Trap(
        traps.MEMORY,
        f"{reader.name}: the replay may need about {arrays.format_size(need)} "
        f"(up to {footprint.peak_pages} pages resident, in {modes_text}), and only "
        f"{arrays.format_size(room)} may be taken: it is likely to stop with exit status "
        f"{int(ExitStatus.RESOURCES)} (fewer --mode, or set {arrays.MEMORY_ENV}=SIZE to change "
        "the limit)",
    )


def _exit_status(exc: BaseException, debug: bool) -> int:
    """The exit status for ``exc``, which ended a command, after telling the user why.

    The one place exit statuses are decided (their meanings: ExitStatus).
    An exception that is not the user's doing (a bug) is raised again.
    """
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        if isinstance(exc.__context__, BrokenPipeError):  # click's own end for a closed pipe
            return _exit_status(exc.__context__, debug)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    if isinstance(exc, click.Abort):  # click's wrapping of Ctrl-C outside a command
        cause = exc.__cause__ or exc.__context__
        return ExitStatus.INTERRUPTED if cause is None else _exit_status(cause, debug)
    if isinstance(exc, Stopped):
        if exc.detail:
            _error(exc.detail)
        if exc.exit_status == ExitStatus.BROKEN_PIPE:
            signals.quiet_stdout()
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    if isinstance(exc, click.ClickException):
        with contextlib.suppress(OSError, ValueError):
            exc.show()
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        signals.quiet_stdout()
        return ExitStatus.BROKEN_PIPE
    if isinstance(exc, KsmreplayError | OSError):
        if debug:
            with contextlib.suppress(OSError, ValueError):
                traceback.print_exc()
        if isinstance(exc, KsmreplayError):
            _error(str(exc))
            return exc.exit_status
        # an OSError nothing else named: a write to standard output or error
        if exc.filename is not None:
            _error(f"{exc.filename}: {exc.strerror or exc}")
        else:
            _error(f"<stdout>: cannot write: {exc.strerror or exc}")
        return ExitStatus.IO_ERROR
    raise exc


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"ksmreplay {__version__}\nengine: {native.engine()}")
        ctx.exit()


def _engine_notice() -> None:
    """Say once on stderr when the scalar path runs because the native core was not built."""
    if native.native() is None and not native.disabled():
        _error(f"note: engine: {native.engine()}; replays are much slower")


class _Cli(click.Group):
    """The command group; every run of it ends through :func:`_exit_status`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except BaseException as exc:  # _exit_status decides, or raises again
            ctx.exit(_exit_status(exc, bool(ctx.meta.get(_DEBUG))))

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        """Run the command line; return its exit status (standalone: exit with it)."""
        with signals.raising():
            try:
                try:
                    result = super().main(
                        args, prog_name, complete_var, standalone_mode=False, **extra
                    )
                    status = result if isinstance(result, int) else ExitStatus.OK
                    if status == ExitStatus.OK and sys.stdout is not None:
                        sys.stdout.flush()  # a failure to write is one more error
                except BaseException as exc:  # _exit_status decides, or raises again
                    status = _exit_status(exc, debug=False)
            except Stopped as exc:  # while the first ending was being told
                status = exc.exit_status
        if standalone_mode:
            sys.exit(status)
        return int(status)


@click.group(
    cls=_Cli,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and the engine in use (native core or scalar), and exit.",
)
@click.option("--debug", is_flag=True, help="Show a traceback with every error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Replay memory-event traces through a simulated Linux VM and ksmd.

    Exit statuses: 0 ok, 1 differences (diff), 2 bad usage, 3 invalid trace,
    4 I/O error, 5 live kernel unusable, 6 not enough memory for the replay;
    128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP, 141
    output pipe closed).

    Traces are read and replayed by a native core built at install
    (`ksmreplay --version` names the engine in use); KSMREPLAY_NATIVE=0 does
    without it (the same results, much slower).
    """
    ctx.meta[_DEBUG] = debug


def _standard_streams() -> None:
    """Keep a standard stream that was closed when ksmreplay started behaving as closed.

    Python leaves such a stream None and its descriptor free, so that the next
    file opened (an output, a trace) would take its number, and commands this
    process starts would inherit it as their stdin or stdout.  The number is
    held instead by ``/dev/null`` opened the wrong way round for stdin and
    stdout (reading or writing it fails with EBADF, as on a closed
    descriptor: one line, status 4, if a command needs it) and for writing
    for stderr (messages then go nowhere and the status is unchanged).
    """
    for fd, name, mode, flags in (
        (0, "stdin", "r", os.O_WRONLY),
        (1, "stdout", "w", os.O_RDONLY),
        (2, "stderr", "w", os.O_WRONLY),
    ):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
            continue  # open after all: leave it
        except OSError:
            pass
        try:
            held = os.open(os.devnull, flags)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
            os.set_inheritable(fd, True)
        except OSError:
            continue
        setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


def main() -> None:
    """Console-script entry point (``ksmreplay``)."""
    _standard_streams()
    try:
        status = cli.main(prog_name="ksmreplay", standalone_mode=False)
    except BaseException as exc:  # a signal in the last instants, when Python's handlers are back
        status = _exit_status(exc, debug=False)
    signals.exit_process(status)


# --------------------------------------------------------------------------- validate


@cli.command()
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.pass_context
def validate(ctx: click.Context, traces: Sequence[str]) -> None:
    """Check that each TRACE follows the trace format.

    TRACE '-' reads stdin.  Prints one line per valid trace on stdout and the error of each invalid
    one on stderr.  Exits with 0 if every trace is valid, else 3 (4 if a
    trace could not be read).

    \b
    Example:
        ksmreplay validate traces/*.msgpack
    """
    _engine_notice()
    status = ExitStatus.OK
    for path in traces:
        try:
            with open_trace(path) as reader:
                for _ in reader.runs():
                    pass
        except KsmreplayError as exc:
            if ctx.meta.get(_DEBUG):
                traceback.print_exc()
            _error(str(exc))
            status = max(status, exc.exit_status)
            continue
        processes = "process" if reader.processes == 1 else "processes"
        events = "event" if reader.events == 1 else "events"
        click.echo(
            f"{reader.name}: ok, {reader.events} {events}, "
            f"duration {_seconds(reader.duration_ns)}, {reader.processes} {processes}"
        )
    ctx.exit(int(status))


# --------------------------------------------------------------------------- inspect


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in settings.items())


def _inspect_table(info: dict[str, Any], since_ns: int = 0) -> str:
    header = info["header"]
    summary = [
        ["trace", f"{info['path']} ({info['form']})"],
        ["format version", str(header["version"])],
        ["page size", f"{header['page_size']} bytes"],
        ["description", header["description"] if header["description"] is not None else "-"],
        ["meta", json.dumps(header["meta"], sort_keys=True) if header["meta"] else "-"],
        ["events", str(info["events"])],
        ["duration", _seconds(info["duration_ns"])],
        ["distinct fingerprints", str(info["distinct_fingerprints"])],
        ["zero pages written", str(info["zero_pages_written"])],
    ]
    blocks = [
        plain_table(["", ""], summary, "ll").lstrip("\n"),
        plain_table(["op", "events"], [[op, str(n)] for op, n in info["ops"].items()], "lr"),
    ]
    if info["processes"]:
        rows = [
            [str(p["pid"]), str(p["peak_mapped_pages"]), str(p["peak_written_pages"])]
            for p in info["processes"]
        ]
        blocks.append(plain_table(["pid", "peak mapped pages", "peak written pages"], rows, "r"))
    if info["ksm_settings"]:
        rows = [
            [str(c["t"]), str(c["event"]), _settings_text(c["settings"])]
            for c in info["ksm_settings"]
        ]
        blocks.append(plain_table(["t (ns)", "event", "ksm settings"], rows, "rrl"))
    rows = _contents_rows(info["contents"], since_ns)
    blocks.append(plain_table(["contents", ""], rows, "ll"))
    mergeable = info["mergeable_contents"]
    if 0 < mergeable["pages"] != info["contents"]["pages"]:
        rows = _contents_rows(mergeable, since_ns)
        blocks.append(plain_table(["contents of mergeable mappings", ""], rows, "ll"))
    blocks.append(_inspect_explain(info["explain"], header["page_size"]))
    return "\n\n".join(blocks) + "\n"


def _contents_rows(c: Mapping[str, Any], since_ns: int = 0) -> list[list[str]]:
    """The measurements of ``inspect`` (and ``synth --fit``) as rows of two cells
    (``since_ns``: the ``--since`` given, 0 without one)."""
    if c["t"] is None:
        where = "-"
    elif c["snapshot"] is None:
        where = f"the end (t={_seconds(c['t'])})"
    else:
        where = f"snapshot {c['snapshot']!r} (t={_seconds(c['t'])})"
    first = "the first write" if not since_ns else f"t={_seconds(since_ns)} (--since)"
    first_t = "the first write's t" if not since_ns else f"t={_seconds(since_ns)}"
    return [
        ["measured at", where],
        ["processes", str(c["processes"])],
        ["pages", f"{c['pages']} ({c['bytes_per_process']} bytes per process)"],
        ["zero pages", f"{c['zero_pages']} ({c['zero_percent']:.3f} %)"],
        ["distinct contents", f"{c['distinct_contents']} (not zeros)"],
        ["duplicate pages", f"{c['duplicate_pages']} (copies of a content another page holds)"],
        [
            "shared pages",
            f"{c['shared_pages']} ({c['shared_percent']:.3f} %, content another process holds)",
        ],
        [
            "rewritten pages",
            f"{c['rewritten_pages']} in {c['activity_s']:.3f} s from {first}: "
            f"{c['dirty_pages_per_s']:.3f} pages/s per process",
        ],
        [
            "touched pages",
            f"{c['touched_pages']} ({c['touched_percent']:.3f} %, written after {first_t}, "
            "each once)",
        ],
        ["later writes", f"{c['dirty_zero_percent']:.3f} % zeros (after {first_t})"],
    ]


def _inspect_explain(explain: dict[str, Any], page_size: int) -> str:
    """``inspect``'s ``explain``: what KSM could save at the trace's end, in pages and MiB."""

    def pages(n: int) -> str:
        return f"{n} ({n * page_size / (1 << 20):.2f} MiB)"

    rows = [
        ["written pages", pages(explain["written_pages"])],
        ["in mergeable mappings", pages(explain["mergeable_pages"])],
        ["distinct contents", str(explain["distinct_contents"])],
        ["of those in mergeable mappings", str(explain["distinct_mergeable_contents"])],
        ["ideal saving", pages(explain["ideal_saved_pages"])],
        ["if every mapping were mergeable", pages(explain["ideal_saved_pages_all_mergeable"])],
        ["kept from sharing by unmergeable", pages(explain["saved_lost_to_unmergeable_pages"])],
    ]
    text = "explain (at the trace's end, without a replay)\n" + plain_table([], rows, "ll")
    if explain["processes"]:
        procs = [
            [
                str(p["pid"]),
                str(p["written_pages"]),
                str(p["mergeable_pages"]),
                str(p["distinct_contents"]),
            ]
            for p in explain["processes"]
        ]
        headers = ["pid", "written pages", "mergeable", "distinct contents"]
        text += "\n\n" + plain_table(headers, procs, "r")
    return text


@cli.command()
@click.argument("trace")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--since",
    metavar="DURATION",
    help="Measure the rewrites from this t on (after a recorded boot), not the first write's.",
)
def inspect(trace: str, fmt: str, since: str | None) -> None:
    """Summarise TRACE without replaying it.

    TRACE '-' reads stdin.  Shows the header, the duration, the events per op, each process's peak
    mapped and written pages, the distinct fingerprints written, the pages
    written as zeros, every change of the KSM settings, and what the memory
    holds at the last snapshot (zeros, duplicates, pages shared between
    processes, the rate of rewrites; and the same of the pages in mergeable
    mappings when some written pages are not): what `synth --fit` uses; and
    (explain) what KSM could save at the trace's end: the pages written per
    process, their distinct contents, the ideal saving, and how much of it
    mappings that are not mergeable keep out of reach.

    \b
    Example:
        ksmreplay inspect trace.msgpack --format json
        ksmreplay inspect guests.msgpack --since 25s
    """
    _engine_notice()
    since_ns = _since(since, "--since")
    with open_trace(trace) as reader:
        info = inspect_trace(reader, since_ns)
    text = json.dumps(info, indent=2) + "\n" if fmt == "json" else _inspect_table(info, since_ns)
    click.echo(text, nl=False)


def _since(text: str | None, option: str) -> int:
    """The ns of a ``--since``-like option (0 when not given)."""
    if text is None:
        return 0
    from ksmreplay.record import parse_duration

    return parse_duration(text, option)


# --------------------------------------------------------------------------- convert


@cli.command()
def schema() -> None:
    """Print the JSON schema of the report that `run --format json` writes.

    \b
    Example:
      ksmreplay run t.msgpack --format json > r.json
      ksmreplay schema > report.schema.json   # then check r.json with any JSON-schema tool
    """
    with open_text_output("-") as out:
        out.write(schema_text())


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
@click.option(
    "--to",
    "form",
    type=click.Choice(FORMS),
    help="Form to write; by default OUT's suffix decides (.msgpack or .jsonl).",
)
def convert(source: str, target: str, form: str | None) -> None:
    """Convert trace IN to the msgpack or JSON-lines form OUT.

    IN '-' reads stdin and OUT '-' writes stdout.  IN is validated on the
    way; a regular file OUT is replaced only when the whole trace was
    converted (a temporary file beside it is renamed over it, keeping its
    permissions; a symbolic link's target likewise), while a device, FIFO
    or /dev/stdout is written through.

    \b
    Example:
        ksmreplay convert trace.msgpack trace.jsonl
        ksmreplay convert trace.jsonl - --to msgpack | ksmreplay validate -
    """
    _engine_notice()
    if form is None:
        if target == "-":
            raise click.UsageError("--to is required when OUT is '-'")
        form = form_for_path(target)
        if form is None:
            raise click.UsageError(
                f"cannot tell the form of {target!r} from its suffix "
                "(use .msgpack or .jsonl, or --to)"
            )
    with open_trace(source) as reader, open_output(target) as out:
        writer = TraceWriter(out, reader.header, form)
        for event in reader:
            writer.event(event)


# --------------------------------------------------------------------------- run


def _knob_help() -> str:
    lines = [f"{k.name} (default {k.default})" for k in KNOBS]
    return "Set a KSM knob before the first event; repeatable. Knobs: " + ", ".join(lines) + "."


def _parse_sets(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, KnobValue]:
    settings: dict[str, KnobValue] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KNOB=VALUE, not {text!r}")
        knob = KNOB_BY_NAME.get(name)
        if knob is None:
            raise click.BadParameter(
                f"unknown knob {name!r} (knobs: {', '.join(k.name for k in KNOBS)})"
            )
        try:
            settings[name] = knob.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return settings


def _report_options(command: Any) -> Any:
    """The options every command that prints a report shares: --format, --set, -o."""
    for option in reversed(
        (
            click.option(
                "--format",
                "fmt",
                type=click.Choice(FORMATS),
                default=FORMATS[0],
                show_default=True,
                help="Output format.",
            ),
            click.option(
                "--set",
                "settings",
                metavar="KNOB=VALUE",
                multiple=True,
                callback=_parse_sets,
                help=_knob_help(),
            ),
            click.option(
                "-o",
                "--output",
                default="-",
                metavar="FILE",
                help=f"Write the report to FILE instead of stdout. {OUTPUT_HELP}",
            ),
        )
    ):
        command = option(command)
    return command


def _tracepoint_options(command: Any) -> Any:
    """--tracepoints and --tracepoints-filter (run and exec)."""
    for option in reversed(
        (
            click.option(
                "--tracepoints",
                metavar="FILE",
                help="Also write ksmd's KSM trace events (include/trace/events/ksm.h) to "
                "FILE, one JSON object a line. " + OUTPUT_HELP,
            ),
            click.option(
                "--tracepoints-filter",
                "tracepoints_filter",
                metavar="EVENTS|pid=PIDS",
                multiple=True,
                help="Keep only these events (comma-separated names: "
                + ", ".join(TRACEPOINT_EVENTS)
                + "), or those of these trace pids (pid=1,2); repeatable.",
            ),
        )
    ):
        command = option(command)
    return command


def _table_options(command: Any) -> Any:
    """The options that choose what the table format shows: --units,
    --processes/--no-processes, --pid, --snapshot (see :func:`table_view`)."""
    for option in reversed(
        (
            click.option(
                "--units",
                type=click.Choice(UNITS),
                default=UNITS[0],
                show_default=True,
                help="Sizes in the table's summary, ksmd and explain blocks: human (KiB, MiB, "
                "GiB), pages or bytes. The kernel's counters show as the kernel counts them; "
                "JSON, CSV and TSV always hold exact integers (pages, bytes as named).",
            ),
            click.option(
                "--processes/--no-processes",
                default=True,
                show_default=True,
                help="Show the process tables in the table format.",
            ),
            click.option(
                "--pid",
                "pids",
                type=click.IntRange(min=1),
                multiple=True,
                metavar="PID",
                help="Show only this process in the table format; repeatable.",
            ),
            click.option(
                "--snapshot",
                "snapshots",
                multiple=True,
                metavar="LABEL",
                help="Show only the snapshots of this label in the table format (final: "
                "the final state); repeatable. JSON, CSV and TSV are always whole.",
            ),
        )
    ):
        command = option(command)
    return command


def _progress_line(text: str) -> None:
    """Draw ``text`` as the progress line on stderr (a terminal); "" clears it.

    Cosmetic: a terminal that cannot take it is not an error.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"\r{text}\033[K")
        sys.stderr.flush()


def _progress_callback(trace: str) -> Any:
    """A progress line on stderr, or None when stderr is no terminal or TRACE is stdin."""
    if trace == "-" or not sys.stderr.isatty():
        return None
    try:
        total = os.stat(trace).st_size
    except OSError:
        return None

    def progress(events: int, bytes_read: int) -> None:
        share = f" ({100 * bytes_read // total}%)" if total and bytes_read else ""
        _progress_line(f"{events} events{share}")

    return progress


@cli.command()
@click.argument("trace")
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODE_CHOICES),
    multiple=True,
    default=("both",),
    show_default=True,
    help="Mode(s) to replay in; repeatable. both = legacy and unshare; all = every mode.",
)
@click.option(
    "--kernel",
    "kernel_versions",
    type=click.Choice(tuple(KERNELS)),
    multiple=True,
    default=(DEFAULT_KERNEL,),
    show_default=True,
    help="Linux version(s) to replay on; repeatable (runs side by side). "
    "6.1 has only the legacy mode.",
)
@_report_options
@click.option(
    "--pin",
    "pins",
    metavar="KNOB=VALUE",
    multiple=True,
    callback=_parse_sets,
    help="Set a KSM knob before the first event and keep it for the whole replay: the "
    "trace's writes of it are ignored (listed in the report as pinned); repeatable. "
    "The knobs of --set; a knob is given to --set or to --pin, not both.",
)
@click.option(
    "--every",
    metavar="DURATION",
    help="Also take a snapshot every@T at every multiple T of DURATION (500ms, 1s, 2m; "
    "T = 0 included) up to the trace's end.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Add to every snapshot why each resident page is or is not merged, by category.",
)
@_tracepoint_options
@_table_options
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Replay the runs (kernel and mode) in up to this many processes at once; the "
    "same report. A trace on stdin, or with --tracepoints, is replayed in one.",
)
@click.option("--check-invariants", is_flag=True, hidden=True)
def run(
    trace: str,
    modes: Sequence[str],
    kernel_versions: Sequence[str],
    fmt: str,
    settings: dict[str, KnobValue],
    output: str,
    pins: dict[str, KnobValue],
    every: str | None,
    explain: bool,
    tracepoints: str | None,
    tracepoints_filter: Sequence[str],
    units: str,
    processes: bool,
    pids: Sequence[int],
    snapshots: Sequence[str],
    jobs: int,
    check_invariants: bool,
) -> None:
    """Replay TRACE through the simulated VM and ksmd; report the KSM counters.

    TRACE '-' reads stdin.  The report lists, for each kernel version and
    mode, every snapshot the trace asks for and the final state.  The groups
    `both` (the default) and `all` stand for the modes each version has (6.1:
    legacy only); a mode named on its own that a version lacks is an error.
    Warnings go to stderr, one line each (`ksmreplay: warning: ...`): a --set
    knob the trace overwrites, a settle cut short by max_full_scans or with
    ksmd stopped, a trace that never starts ksmd, a trace likely to need more
    memory than the replay may take.

    \b
    Examples:
        ksmreplay run trace.msgpack
        ksmreplay run trace.msgpack --mode all --format json -o report.json
        ksmreplay run trace.msgpack --set pages_to_scan=1000 --set use_zero_pages=1
        ksmreplay run trace.msgpack --kernel 6.1 --kernel 6.18 --mode legacy
        ksmreplay run trace.msgpack --pin pages_to_scan=1000
        ksmreplay run trace.msgpack --every 1s --format csv
        ksmreplay run trace.msgpack --explain
        ksmreplay run trace.msgpack --tracepoints events.jsonl --tracepoints-filter pid=2
        ksmreplay run trace.msgpack --every 5s --snapshot every@30000000000 --no-processes
        ksmreplay run trace.msgpack --mode all --kernel 6.12 --kernel 6.18 --jobs 2
    """
    _engine_notice()
    view = table_view(fmt, units, processes, pids, snapshots)
    try:
        start_order(settings, pins)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    chosen = expand_modes(modes)
    versions = expand_kernels(tuple(kernel_versions))
    # Groups (`both`, the default, and `all`) stand for the modes each version
    # has; a mode named on its own must exist on every version asked for.
    explicit = any(name not in MODE_GROUPS for name in modes)
    every_ns = None
    if every is not None:
        from ksmreplay.record import parse_duration

        every_ns = parse_duration(every, "--every")
    progress = _progress_callback(trace)
    warnings = _Warnings(progress is not None)
    try:
        # A file is checked whole before anything is simulated, so that an
        # invalid trace fails at once rather than after replaying up to it.
        with (
            open_tracepoints(tracepoints, tracepoints_filter, output) as tracer,
            open_trace(trace, validate_first=True) as reader,
        ):
            if every_ns is not None and reader.declared_duration_ns is not None:
                check_every(every_ns, reader.declared_duration_ns)
            memory = _memory_warning(reader, len(chosen) * len(versions))
            if memory is not None:
                warnings(memory)
            pairs = run_pairs(chosen, versions, not explicit)
            if jobs > 1 and len(pairs) > 1 and trace != "-" and tracer is None:
                report = _run_in_parallel(
                    reader.name,
                    pairs,
                    jobs,
                    settings=settings or None,
                    pins=pins or None,
                    every=every_ns,
                    explain=explain,
                    check_invariants=check_invariants,
                    progress=progress is not None,
                    warn=warnings,
                )
            else:
                report = replay_spooled(
                    reader,
                    chosen,
                    settings or None,
                    progress=progress,
                    check_invariants=check_invariants,
                    kernels=versions,
                    only_modes_each_has=not explicit,
                    pins=pins or None,
                    warn=warnings,
                    every=every_ns,
                    explain=explain,
                    tracepoints=tracer,
                )
    finally:
        if progress is not None:
            _progress_line("")
        warnings.close()
    try:
        with open_text_output(output) as out:
            render(report, fmt, out, view)
    finally:
        close_spools(report)


def _run_in_parallel(
    trace: str,
    pairs: Sequence[tuple[str, str]],
    jobs: int,
    *,
    progress: bool,
    warn: _Warnings,
    **options: Any,
) -> Any:
    """``run --jobs``: the runs in worker processes (``sweep.replay_in_parallel``),
    a progress line of runs done on a terminal, the warnings once all are done."""
    from ksmreplay.sweep import replay_in_parallel

    def runs_done(done: int, total: int) -> None:
        _progress_line(f"{done} of {total} runs replayed")

    if progress:
        runs_done(0, len(pairs))
    report, found = replay_in_parallel(
        trace, trace, pairs, jobs, progress=runs_done if progress else None, **options
    )
    for trap in found:
        warn(trap)
    return report


# --------------------------------------------------------------------------- sweep


def _sweep_progress() -> Any:
    """A progress line on stderr for ``sweep`` (runs done of all, ETA), or None
    when stderr is no terminal."""
    if not sys.stderr.isatty():
        return None

    def progress(done: int, total: int, eta: float | None) -> None:
        left = "" if eta is None or done == total else f", about {math.ceil(eta)} s left"
        _progress_line(f"{done}/{total} runs{left}")

    return progress


@cli.command()
@click.argument("traces", nargs=-1, metavar="[TRACE]...")
@click.option(
    "--grid",
    "grids",
    metavar="KNOB=V1,V2,...",
    multiple=True,
    help="A KSM knob and the values to try, each pinned for the whole replay (as run --pin); "
    "repeatable: every combination is replayed.",
)
@click.option(
    "--synth",
    "workload",
    type=click.Choice(WORKLOAD_NAMES),
    metavar="WORKLOAD",
    help="Also sweep traces of this synth workload, one per combination of --param.",
)
@click.option(
    "--param",
    "params",
    metavar="NAME=V1,V2,...",
    multiple=True,
    help="A parameter of the --synth workload and its values; repeatable.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed of the --synth traces.",
)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODE_CHOICES),
    multiple=True,
    default=("unshare",),
    show_default=True,
    help="Mode(s) to replay in; repeatable (as run --mode).",
)
@click.option(
    "--kernel",
    "kernel_versions",
    type=click.Choice(tuple(KERNELS)),
    multiple=True,
    default=(DEFAULT_KERNEL,),
    show_default=True,
    help="Linux version(s) to replay on; repeatable.",
)
@click.option(
    "--at",
    default="final",
    show_default=True,
    metavar="LABEL",
    help="Show savings at the snapshot with this label (final: the end of the trace).",
)
@click.option(
    "--column",
    "columns",
    metavar="COUNTER",
    multiple=True,
    help="Add a counter of the report to each row (ksm, memory, events, summary at --at; "
    "ksmd, milestones of the run); repeatable.",
)
@click.option(
    "--within",
    default="5%",
    show_default=True,
    metavar="PERCENT",
    help="Recommend the least ksmd CPU among the settings that save this close to the best.",
)
@click.option(
    "--every",
    metavar="DURATION",
    help="Snapshots every DURATION of trace time (as run --every): finer milestones.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=FORMATS[0],
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    default="-",
    metavar="FILE",
    help=f"Write the rows to FILE instead of stdout. {OUTPUT_HELP}",
)
@click.option(
    "--reports",
    metavar="DIR",
    help="Also write every run's whole report (run --format json) into DIR, one file each.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Local worker processes (with --dask local, the cluster's workers) "
    "[default: the CPU count].",
)
@click.option(
    "--dask",
    metavar="ADDRESS",
    help="Run the replays on the dask.distributed scheduler at ADDRESS, or 'local' for a "
    "cluster on this machine (needs ksmreplay[dask]).",
)
@click.option(
    "--cache",
    metavar="DIR",
    help="Keep each run's report in DIR (keyed by the trace's content, the version and "
    "the settings): a sweep run again replays only what is not there.",
)
def sweep(
    traces: Sequence[str],
    grids: Sequence[str],
    workload: str | None,
    params: Sequence[str],
    seed: int,
    modes: Sequence[str],
    kernel_versions: Sequence[str],
    at: str,
    columns: Sequence[str],
    within: str,
    every: str | None,
    fmt: str,
    output: str,
    reports: str | None,
    jobs: int | None,
    dask: str | None,
    cache: str | None,
) -> None:
    """Replay TRACEs under every combination of KSM settings; compare, recommend.

    Each run is one trace on one kernel version in one mode with one point of
    the grid, the grid's knobs pinned for the whole replay.  One row per run:
    the memory saved (MiB, % and % of the ideal) at --at, when 90 % of the
    run's most saving came, and ksmd's modelled CPU; then, per trace (and
    kernel and mode), the settings that cost ksmd the least CPU within
    --within of the best saving, in one line.  The rows are the same bytes
    however the runs ran: here, in --jobs processes, or on --dask workers.
    Ctrl-C stops the sweep and prints the runs that finished (exit 130).

    \b
    Examples:
        ksmreplay sweep traces/vm-guests.msgpack --at dirtied --grid use_zero_pages=0,1 \\
            --grid pages_to_scan=100,1000,4000 --grid sleep_millisecs=20,200
        ksmreplay sweep --synth vm-guests --param guests=8,40 --grid use_zero_pages=0,1
        ksmreplay sweep host*.msgpack --grid pages_to_scan=100,1000 --dask tcp://sched:8786
        ksmreplay sweep t.msgpack --grid pages_to_scan=100,1000 --cache ~/.cache/ksm --format csv
    """
    from ksmreplay import sweep as sweeps

    _engine_notice()
    chosen = expand_modes(modes)
    versions = expand_kernels(tuple(kernel_versions))
    explicit = any(name not in MODE_GROUPS for name in modes)
    every_ns = None
    if every is not None:
        from ksmreplay.record import parse_duration

        every_ns = parse_duration(every, "--every")
    parsed = [sweeps.parse_grid(text) for text in grids]
    tolerance = sweeps.parse_within(within)
    store = sweeps.Cache(cache) if cache is not None else None
    progress = _sweep_progress()
    try:
        with sweeps.trace_inputs(traces, workload, params, seed) as inputs:
            plan = sweeps.plan_sweep(
                inputs,
                parsed,
                chosen,
                versions,
                only_modes_each_has=not explicit,
                at=at,
                columns=columns,
                within=tolerance,
                every=every_ns,
            )
            outcome = sweeps.run_sweep(
                plan,
                jobs or sweeps.cpu_count(),
                dask=dask,
                cache=store,
                keep_reports=reports is not None,
                progress=progress,
            )
    finally:
        if progress is not None:
            _progress_line("")
    for line in outcome.warnings:
        _error(f"warning: {line}")
    if store is not None:
        _error(
            f"cache {cache}: {outcome.cached} of {len(plan.tasks)} runs found, "
            f"{outcome.replayed} replayed"
        )
    if reports is not None:
        sweeps.write_reports(outcome, reports)
    with open_text_output(output) as out:
        sweeps.render_sweep(outcome, fmt, out)
    if outcome.interrupted is not None:
        _error(f"interrupted: {len(outcome.rows)} of {len(plan.tasks)} runs finished")
        raise outcome.interrupted


@cli.command("exec")
@click.argument("trace")
@_report_options
@click.option(
    "--force",
    is_flag=True,
    help="Run even when other processes use KSM (they are unmerged at the end).",
)
@click.option(
    "--kernel-image",
    metavar="BZIMAGE",
    help="Replay inside a qemu guest booting this kernel image instead of on this kernel.",
)
@click.option(
    "--qemu",
    metavar="PATH",
    help="The qemu program for --kernel-image (default: qemu-system-x86_64 on PATH).",
)
@click.option(
    "--guest-memory",
    type=click.IntRange(min=128),
    default=1024,
    show_default=True,
    metavar="MIB",
    help="Memory of the guest of --kernel-image, MiB.",
)
@click.option(
    "--accel",
    type=click.Choice(("auto", "kvm", "tcg")),
    default="auto",
    show_default=True,
    help="qemu accelerator for --kernel-image; auto: KVM if it boots, else TCG.",
)
@_tracepoint_options
@_table_options
def exec_(
    trace: str,
    fmt: str,
    settings: dict[str, KnobValue],
    output: str,
    force: bool,
    kernel_image: str | None,
    qemu: str | None,
    guest_memory: int,
    accel: str,
    tracepoints: str | None,
    tracepoints_filter: Sequence[str],
    units: str,
    processes: bool,
    pids: Sequence[int],
    snapshots: Sequence[str],
) -> None:
    """Replay TRACE on this machine's kernel, or on KERNEL-IMAGE under qemu; report what KSM shows.

    Needs root, /sys/kernel/mm/ksm and a C compiler (a tiny worker process is
    built once per trace pid).  Events run at their times; one run is
    reported, in the mode of the kernel, with the kernel version, so that
    `ksmreplay diff` can compare it with `ksmreplay run`.  Every KSM knob is
    restored afterwards and KSM is left stopped with nothing merged, also on
    errors, Ctrl-C and SIGTERM.

    With --kernel-image the replay runs in a qemu guest booting that image
    (needs qemu and a C compiler; not root): this machine's KSM is not
    touched, and the guest is ended on every way out.

    \b
    Examples:
        ksmreplay exec trace.jsonl --format json -o kernel.json
        ksmreplay run trace.jsonl --mode unshare --format json -o sim.json
        ksmreplay diff sim.json kernel.json
        ksmreplay exec trace.jsonl --kernel-image arch/x86/boot/bzImage
        ksmreplay exec trace.jsonl --tracepoints kernel-events.jsonl
    """
    from ksmreplay.live import execute

    if kernel_image is None and qemu is not None:
        raise click.UsageError("--qemu needs --kernel-image")
    if kernel_image is not None and tracepoints is not None:
        raise click.UsageError("--tracepoints reads this machine's kernel, not a guest's")
    try:
        start_order(settings, {})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    view = table_view(fmt, units, processes, pids, snapshots)
    progress = _progress_callback(trace)
    try:
        with (
            open_tracepoints(tracepoints, tracepoints_filter, output) as tracer,
            open_trace(trace, validate_first=True) as reader,
        ):
            if kernel_image is None:
                report = execute(
                    reader,
                    force=force,
                    progress=progress,
                    settings=settings or None,
                    tracepoints=tracer,
                )
            else:
                from ksmreplay.live.qemu import boot

                with boot(kernel_image, qemu=qemu, memory_mib=guest_memory, accel=accel) as guest:
                    report = execute(
                        reader,
                        force=force,
                        progress=progress,
                        settings=settings or None,
                        machine=guest,
                        tracepoints=tracer,
                    )
    finally:
        if progress is not None:
            _progress_line("")
    with open_text_output(output) as out:
        render(report, fmt, out, view)


@cli.command()
@click.argument("report_a", metavar="A.json")
@click.argument("report_b", metavar="[B.json]", required=False)
@click.option(
    "--ignore",
    multiple=True,
    metavar="COUNTER",
    help="Leave out a counter, knob, scope or scope.counter; repeatable.",
)
@click.option(
    "--tolerance",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Integers that differ by at most this much are equal.",
)
@click.pass_context
def diff(
    ctx: click.Context,
    report_a: str,
    report_b: str | None,
    ignore: Sequence[str],
    tolerance: int,
) -> None:
    """Compare two JSON reports; exit 1 if anything differs.

    Compares counter by counter; '-' reads a report from stdin.  With one
    report holding two runs, compares the first run with the second.

    \b
    Examples:
        ksmreplay diff before.json after.json --ignore pages_scanned
        ksmreplay run trace.msgpack --format json | ksmreplay diff -
    """
    a = load_report(report_a)
    b = load_report(report_b) if report_b is not None else None
    diffs = diff_reports(a, b, ignore=set(ignore), tolerance=tolerance)
    out = sys.stdout
    render_differences(diffs, out)
    out.flush()
    ctx.exit(int(ExitStatus.DIFFERENCES if diffs else ExitStatus.OK))


# --------------------------------------------------------------------------- plot


@cli.command("plot")
@click.argument("report", metavar="REPORT.json")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help=f"Write the figures to FILE (.png, .svg or .html; '-' = stdout). {OUTPUT_HELP}",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(PLOT_FORMATS),
    help="png, svg or html (one self-contained page); by default FILE's suffix decides.",
)
def plot_(report: str, output: str, fmt: str | None) -> None:
    """Plot a JSON report's sharing over time, per mode.

    REPORT '-' reads stdin.  One figure per group: memory saved and the
    ideal (ksmd's CPU time so far on a second axis), the zero pages KSM
    placed, and pages_volatile/pages_unshared; a point per snapshot, so make
    the report with `run --every DURATION`.  Needs matplotlib: pip install
    'ksmreplay[plot]'.

    \b
    Examples:
        ksmreplay run trace.msgpack --every 1s --format json -o report.json
        ksmreplay plot report.json -o report.html
        ksmreplay run trace.msgpack --every 1s --format json | ksmreplay plot - -o sharing.png
    """
    from ksmreplay import plot as plotting

    fmt = plotting.output_format(output, fmt)
    plotting.require_matplotlib()
    data = load_report(report)
    name = "<stdin>" if report == "-" else report
    plotting.series(data, name)  # nothing to plot: said before the output is touched
    with open_output(output) as out:
        plotting.plot(data, fmt, out, name)


# --------------------------------------------------------------------------- synth


@cli.command()
@click.argument("workload", required=False, type=click.Choice(WORKLOAD_NAMES), metavar="WORKLOAD")
@click.option(
    "--param",
    "params",
    metavar="NAME=VALUE",
    multiple=True,
    help="Set a parameter of WORKLOAD; repeatable (see --list).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed."
)
@click.option(
    "--format",
    "form",
    type=click.Choice(FORMS),
    help="Form to write; by default FILE's suffix decides, else msgpack.",
)
@click.option(
    "-o", "--output", metavar="FILE", help=f"Write the trace to FILE ('-' = stdout). {OUTPUT_HELP}"
)
@click.option(
    "--fit",
    metavar="TRACE",
    help="Set the parameters from what TRACE (a recording) holds: size, zero and shared "
    f"pages, rewrite rate, KSM knobs ({', '.join(FIT_WORKLOADS)}); --param overrides.",
)
@click.option(
    "--fit-since",
    metavar="DURATION",
    help="With --fit: measure TRACE's rewrites from this t on (after a recorded boot).",
)
@click.option(
    "--list", "list_", is_flag=True, help="Describe every workload (or WORKLOAD) and exit."
)
def synth(
    workload: str | None,
    params: Sequence[str],
    seed: int,
    form: str | None,
    output: str | None,
    fit: str | None,
    fit_since: str | None,
    list_: bool,
) -> None:
    """Generate the trace of a synthetic WORKLOAD (see --list for each one).

    The same WORKLOAD, parameters and seed give the same bytes.  A regular
    file FILE is replaced only when the whole trace was written.  --fit
    measures a recorded trace as `inspect` does and prints on stderr what it
    measured and the parameters it set: of the pages in mergeable mappings
    when some written pages are not (a guest's RAM recorded with --as-is,
    without the hypervisor's own memory), else of every written page.
    --fit-since measures the rewrites from that t on, as if the memory had
    been built then (a recording of guests booting: the rate of their idle
    time, not of their boot).

    \b
    Examples:
        ksmreplay synth --list
        ksmreplay synth vm-guests --param guests=8 --param guest_mib=64 -o vm.msgpack
        ksmreplay synth zero-heavy --seed 2 -o - | ksmreplay run -
        ksmreplay synth vm-guests --fit guest.msgpack --param guests=40 -o forty.msgpack
        ksmreplay synth vm-guests --fit guests.msgpack --fit-since 25s -o fit.msgpack
    """
    if list_:
        click.echo(describe_workloads([workload] if workload else None), nl=False)
        return
    if workload is None:
        raise click.UsageError("missing WORKLOAD (see --list)")
    if output is None:
        raise click.UsageError("missing -o FILE ('-' for stdout)")
    if fit_since is not None and fit is None:
        raise click.UsageError("--fit-since needs --fit")
    since_ns = _since(fit_since, "--fit-since")
    fitted: Sequence[str] = ()
    if fit is not None:
        get_workload(workload)
        with open_trace(fit) as reader:
            inspected = inspect_trace(reader, since_ns)
        contents, which = fit_contents(inspected)
        found = fit_params(workload, contents)
        fitted = found.assignments
        lines = [f"fitted to {reader.name}" + (f" ({which}):" if which else ":")]
        lines += [
            f"  {line}"
            for line in plain_table(["", ""], _contents_rows(contents, since_ns), "ll")
            .strip("\n")
            .splitlines()
        ]
        lines.append("  parameters: " + " ".join(fitted))
        lines += [f"  note: {note}" for note in found.notes]
        for line in lines:
            with contextlib.suppress(OSError, ValueError):
                click.echo(line.rstrip(), err=True)
    values = resolve_params(get_workload(workload), [*fitted, *params])
    with open_output(output) as out:
        synthesize(workload, out, values, seed, form or form_for_path(output) or "msgpack")


# --------------------------------------------------------------------------- record


@cli.command(context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, metavar="[-- COMMAND ARGS...]")
@click.option("--pid", "pids", type=int, multiple=True, help="Record this process; repeatable.")
@click.option(
    "--interval", default="1s", show_default=True, help="Time between samples (500ms, 1s, 2m)."
)
@click.option("--duration", help="Stop after this long (default: when every process exited).")
@click.option(
    "--as-is",
    is_flag=True,
    help="Keep the mergeability the processes set (mg VmFlag) instead of making all mergeable.",
)
@click.option(
    "--freeze",
    is_flag=True,
    help="Stop the processes while each sample is read (cgroup v2 freezer when they are "
    "alone in their cgroup, else SIGSTOP/SIGCONT): consistent samples, at the cost of "
    "pausing them.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(FORMS),
    help="Form to write; by default FILE's suffix decides, else msgpack.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help=f"Write the trace to FILE ('-' = stdout). {OUTPUT_HELP}",
)
@click.pass_context
def record(
    ctx: click.Context,
    command: Sequence[str],
    pids: Sequence[int],
    interval: str,
    duration: str | None,
    as_is: bool,
    freeze: bool,
    form: str | None,
    output: str,
) -> None:
    """Record the anonymous memory of real processes into a trace.

    Samples the private anonymous memory (heap, stack, anonymous mmaps) of
    each --pid, or of COMMAND started here, and of their children, every
    --interval; each sample becomes alloc, free, write, madvise, fork and
    exit events.  After a process's first sample only the pages written
    since (soft-dirty bits) are read.  Needs ptrace rights over the
    processes (or root).  Ctrl-C ends the recording with a complete trace.
    A summary goes to stderr at the end.  With COMMAND, exits with its
    status when it ended by itself (128+N when signal N ended it).

    \b
    Examples:
        ksmreplay record --pid 1234 --interval 1s --duration 60s -o t.msgpack
        ksmreplay record -o t.msgpack --interval 500ms -- python3 -c "import numpy"
        ksmreplay record --pid "$(pidof qemu-system-x86_64)" --freeze --duration 1m -o vm.msgpack
    """
    from ksmreplay import record as recording

    if bool(pids) == bool(command):
        raise click.UsageError("give either --pid PID... or -- COMMAND ARGS...")
    interval_ns = recording.parse_duration(interval, "--interval")
    duration_ns = recording.parse_duration(duration, "--duration") if duration is not None else None
    progress = None
    if sys.stderr.isatty():

        def progress(samples: int, t: int, live: int, pages: int) -> None:
            _progress_line(f"{samples} samples, {_seconds(t)}, {live} processes, {pages} pages")

    def warn(message: str) -> None:
        if progress is not None:
            _progress_line("")
        _error(f"warning: {message}")

    try:
        with open_output(output) as out:
            summary = recording.record(
                list(pids) or None,
                list(command) or None,
                interval_ns,
                duration_ns,
                out,
                as_is=as_is,
                progress=progress,
                form=form or form_for_path(output) or "msgpack",
                command_stdout=2 if output == "-" else None,  # keep the trace alone on stdout
                freeze=freeze,
                warn=warn,
            )
    finally:
        if progress is not None:
            _progress_line("")
    for line in _record_summary(summary, output):
        with contextlib.suppress(OSError, ValueError):
            click.echo(f"[ ksmreplay record: {line} ]", err=True)
    if summary.command_status:
        ctx.exit(summary.command_status)


def _size(n: int) -> str:
    """Bytes for people: B, KiB, MiB, GiB with one decimal."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


_SKIPPED_NAMES = {
    "shared": "shared",
    "file": "file-backed",
    "device": "device",
    "hugetlb": "hugetlbfs",
}


def _record_summary(summary: RecordSummary, output: str) -> list[str]:
    """The closing lines of ``record`` (without their brackets)."""
    where = "stdout" if output == "-" else output
    samples = "sample" if summary.samples == 1 else "samples"
    processes = "process" if summary.processes == 1 else "processes"
    achieved = summary.achieved_interval_ns
    timing = f"interval {_seconds(summary.interval_ns)} asked"
    if achieved is not None:
        longest = _seconds(summary.longest_interval_ns)
        timing += f", {_seconds(achieved)} achieved (mean; longest {longest})"
    how = "changed pages read (soft-dirty)" if summary.soft_dirty else "every present page read"
    if summary.freeze:
        how += f", processes frozen while read ({summary.freeze})"
    lines = [
        f"{summary.samples} {samples} of {summary.processes} {processes} over "
        f"{_seconds(summary.duration_ns)}; {timing}",
        f"{summary.pages_read} pages read ({how}); at most {summary.max_present_pages} "
        "pages recorded at once",
        f"wrote {summary.events} events, {summary.bytes_written} bytes "
        f"({_size(summary.bytes_written)}) to {where}",
    ]
    skipped = [
        f"{_SKIPPED_NAMES[kind]} {_size(size)}"
        for kind, size in summary.skipped_bytes.items()
        if size
    ]
    if skipped:
        lines.append("not recorded (mapped, the most at one sample): " + ", ".join(skipped))
    if summary.unreadable_pages:
        lines.append(
            f"{summary.unreadable_pages} page reads failed (those pages kept their last state)"
        )
    return lines
