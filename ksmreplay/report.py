"""The report: one dict built once, in the shape of REPORT_FORMAT.md.

Renderers (``render.py``) only format it; simulators fill the snapshot parts.
Key order here is the order every format prints.

A report comes in two forms with the same keys: :class:`Report`, whose runs
hold their snapshots in lists (for library callers, ``diff`` and the tests),
and :class:`SpooledReport`, whose runs keep them in a :class:`SnapshotSpool`,
an anonymous temporary file read back in order, so that memory does not grow
with the number of snapshots (``ksmreplay run``).
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator
from importlib import resources
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import msgpack

from ksmreplay.errors import InputOutputError

if TYPE_CHECKING:  # (typing has it from Python 3.11 on)
    from typing_extensions import NotRequired

REPORT_VERSION = 1

ModeName = Literal["legacy", "v6", "unshare"]

KSM_COUNTERS: tuple[str, ...] = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "pages_scanned",
    "pages_skipped",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
    "general_profit",
)
"""``/sys/kernel/mm/ksm/*`` counters, in report order (``ksm`` section)."""

PROCESS_COUNTERS: tuple[str, ...] = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_merge_any",
    "ksm_mergeable",
    "rss_anon_pages",
)
"""``/proc/<pid>/ksm_stat`` fields plus RssAnon in pages (``processes`` entries)."""

MEMORY_COUNTERS: tuple[str, ...] = (
    "anon_frames",
    "ksm_frames",
    "zero_page_maps_by_ksm",
    "zero_page_maps_by_fault",
)
"""Ground truth the kernel's counters may hide (``memory`` section)."""

EVENT_COUNTERS: tuple[str, ...] = (
    "merges",
    "cow_breaks_ksm",
    "cow_breaks_zero",
    "unshared_by_unmerge",
    "zero_pages_unshared",
    "zero_pages_merged",
)
"""Cumulative counts since the trace started (``events`` section).

* ``merges``: pages ksmd mapped to a KSM page (2 for a pair merge, 1 for a
  merge into an existing KSM page; linking a forked mapping is not a merge);
* ``cow_breaks_ksm``: write faults that copied a KSM page;
* ``cow_breaks_zero``: write faults that copied a zero page KSM had placed;
* ``unshared_by_unmerge``: KSM-page mappings that unmerging replaced by private copies;
* ``zero_pages_unshared``: KSM-placed zero pages that unmerging replaced by private pages;
* ``zero_pages_merged``: pages ksmd replaced by the zero page.
"""


SUMMARY_KEYS: tuple[str, ...] = (
    "resident_without_ksm",
    "resident_with_ksm",
    "saved_pages",
    "saved_bytes",
    "saved_percent",
    "ideal_frames",
    "ideal_saved_pages",
    "percent_of_ideal",
)
"""The answer in pages, bytes and percent (``summary`` section, REPORT_FORMAT.md "Additions")."""

KSMD_KEYS: tuple[str, ...] = ("visits", "wakeups", "cpu_ns", "cpu_percent", "settle_cpu_ns")
"""ksmd's modelled work over a whole run (``RUN.ksmd``)."""

MILESTONE_KEYS: tuple[str, ...] = ("max_saved_pages", "t_saved_50", "t_saved_90")
"""When the savings came (``RUN.milestones``)."""


class Summary(TypedDict):
    resident_without_ksm: int
    resident_with_ksm: int
    saved_pages: int
    saved_bytes: int
    saved_percent: float
    ideal_frames: int
    ideal_saved_pages: int
    percent_of_ideal: float


def _percent(part: int, whole: int, empty: float) -> float:
    """``100 * part / whole`` rounded to 2 places; ``empty`` when ``whole`` is 0."""
    return round(100 * part / whole, 2) if whole else empty


def summarise(without: int, with_ksm: int, ideal_frames: int, page_size: int) -> Summary:
    """The ``summary`` section from its three measured quantities.

    :param without: pages that would be resident had KSM never run (the live
        processes' RssAnon plus the PTEs KSM pointed at the zero page).
    :param with_ksm: anonymous page frames in use (KSM pages counted once).
    :param ideal_frames: the frames the best deduplication would leave
        (one per distinct content of the pages in mergeable mappings,
        REPORT_FORMAT.md "Additions").
    :param page_size: bytes per page.
    :returns: pages, bytes (``saved_bytes``) and percentages (2 places).
    """
    saved = without - with_ksm
    ideal_saved = without - ideal_frames
    return {
        "resident_without_ksm": without,
        "resident_with_ksm": with_ksm,
        "saved_pages": saved,
        "saved_bytes": saved * page_size,
        "saved_percent": _percent(saved, without, 0.0),
        "ideal_frames": ideal_frames,
        "ideal_saved_pages": ideal_saved,
        "percent_of_ideal": _percent(saved, ideal_saved, 100.0),
    }


class KsmdWork(TypedDict):
    """What a simulator reports of ksmd's work; ``RUN.ksmd`` adds ``cpu_percent``."""

    visits: int
    wakeups: int
    cpu_ns: int
    settle_cpu_ns: int


class KsmdCost(TypedDict):
    visits: int
    wakeups: int
    cpu_ns: int
    cpu_percent: float
    settle_cpu_ns: int


def ksmd_cost(work: KsmdWork, duration_ns: int) -> KsmdCost:
    """``RUN.ksmd``: ``work`` with ``cpu_percent`` = 100 * cpu_ns / ``duration_ns``
    (of one CPU, 2 places; 0.0 for a trace of no duration)."""
    return {
        "visits": work["visits"],
        "wakeups": work["wakeups"],
        "cpu_ns": work["cpu_ns"],
        "cpu_percent": _percent(work["cpu_ns"], duration_ns, 0.0),
        "settle_cpu_ns": work["settle_cpu_ns"],
    }


class Milestones(TypedDict):
    max_saved_pages: int
    t_saved_50: int | None
    t_saved_90: int | None


class MilestoneTracker:
    """``RUN.milestones`` of a run, fed its snapshots' ``t`` and ``saved_pages`` in order.

    Only the snapshots that saved more than every one before them are kept
    (the first to reach any amount is one of them), as two integers each.
    """

    __slots__ = ("_saved", "_t")

    def __init__(self) -> None:
        self._t = array("Q")
        self._saved = array("q")

    def add(self, t: int, saved_pages: int) -> None:
        """One more snapshot, taken at ``t`` (ns), with ``saved_pages`` saved."""
        if not self._saved or saved_pages > self._saved[-1]:
            self._t.append(t)
            self._saved.append(saved_pages)

    def milestones(self) -> Milestones:
        """The largest saving and the first times it was half and 90 % reached."""
        top = max(self._saved[-1], 0) if self._saved else 0

        def first(percent: int) -> int | None:
            if top == 0:
                return None
            return next(
                t
                for t, saved in zip(self._t, self._saved, strict=True)
                if 100 * saved >= percent * top
            )

        return {"max_saved_pages": top, "t_saved_50": first(50), "t_saved_90": first(90)}


class KsmCounters(TypedDict):
    pages_shared: int
    pages_sharing: int
    pages_unshared: int
    pages_volatile: int
    pages_scanned: int
    pages_skipped: int
    full_scans: int
    stable_node_chains: int
    stable_node_dups: int
    ksm_zero_pages: int | None
    general_profit: int | None


class ProcessCounters(TypedDict):
    pid: int
    ksm_rmap_items: int
    ksm_zero_pages: int | None
    ksm_merging_pages: int
    ksm_process_profit: int | None
    ksm_merge_any: bool
    ksm_mergeable: bool
    rss_anon_pages: int


class MemoryCounters(TypedDict):
    anon_frames: int
    ksm_frames: int | None  # None: exec on a kernel whose page flags cannot tell KSM pages
    zero_page_maps_by_ksm: int
    zero_page_maps_by_fault: int


class EventCounters(TypedDict):
    merges: int
    cow_breaks_ksm: int
    cow_breaks_zero: int
    unshared_by_unmerge: int
    zero_pages_unshared: int
    zero_pages_merged: int


class Snap(TypedDict):
    label: str
    t: int
    event: int
    summary: NotRequired[Summary]
    """In every snapshot of a report, ``run``'s and ``exec``'s (a simulator
    asked not to count it, inside ``settle``'s per-pass check, leaves it out)."""
    ksm: dict[str, Any]
    processes: list[dict[str, Any]]
    memory: dict[str, int]
    events: dict[str, int]
    explain: NotRequired[Explain]


class ExplainProcess(TypedDict):
    pid: int
    categories: dict[str, int]


class ExplainMapping(TypedDict):
    pid: int
    start: int  # bytes
    end: int  # bytes
    categories: dict[str, int]


class Explain(TypedDict):
    """``SNAP.explain`` (``run --explain``): pages by category (``explain.py``)."""

    system: dict[str, int]
    processes: list[ExplainProcess]
    mappings: list[ExplainMapping]


class Refusal(TypedDict):
    event: int
    t: int
    knob: str
    value: Any
    error: Literal["EBUSY", "EINVAL", "ENOENT"]


class Ignored(TypedDict):
    """A trace's write of a pinned knob, which the replay ignored."""

    event: int
    t: int
    value: Any


class Pinned(TypedDict):
    """A knob held at ``value`` for the whole replay (``run --pin``)."""

    knob: str
    value: Any
    ignored: list[Ignored]


class _RunKeys(TypedDict):
    mode: str
    kernel: str
    settings: dict[str, Any]
    refused: list[Refusal]
    ksmd: KsmdCost
    milestones: Milestones
    snapshots: list[Snap]
    final: Snap


class Run(_RunKeys, total=False):
    pinned: list[Pinned]
    """Only when knobs were pinned (``run --pin``)."""


class TraceInfo(TypedDict):
    path: str
    events: int
    duration_ns: int
    page_size: int
    meta: dict[str, Any]


class Report(TypedDict):
    report: int
    trace: TraceInfo
    runs: list[Run]


class SnapshotSpool:
    """One run's snapshots, kept in an anonymous temporary file instead of memory.

    :meth:`append` packs a snapshot as msgpack; every dict in it is written as
    the number of its tuple of keys (each distinct tuple is kept once, in
    memory) and its values, so a process costs its values and a few bytes
    (about 10 bytes in all for a process of small counters).  Iterating reads
    the snapshots back, in the order they were appended, as equal dicts (same
    keys in the same order; tuples come back as lists).  Every iteration starts
    from the beginning, reads the file at its own offset and holds one
    snapshot at a time, so several iterations may run side by side.

    The file has no name (``tempfile.TemporaryFile`` in ``$TMPDIR``): it
    leaves nothing behind however the process ends.  :meth:`close` frees it;
    the spool is a context manager that closes it.
    """

    _CHUNK = 1 << 16
    """Bytes read from the file at a time."""

    def __init__(self) -> None:
        try:
            self._file = tempfile.TemporaryFile(prefix="ksmreplay-")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise _spool_error(exc) from exc
        self._packer = msgpack.Packer(autoreset=True, strict_types=True, default=self._default)
        self._keys: list[tuple[Any, ...]] = []
        self._key_ids: dict[tuple[Any, ...], int] = {}
        self._count = 0
        self._size = 0

    def __len__(self) -> int:
        """The number of snapshots appended."""
        return self._count

    @property
    def size(self) -> int:
        """Bytes the spooled snapshots take in the file."""
        return self._size

    def append(self, snap: Snap) -> None:
        """Write one snapshot to the end of the file.

        :raises InputOutputError: when the file cannot be written (e.g. a full disk).
        """
        data = self._packer.pack(self._encode(cast("dict[str, Any]", snap)))
        try:
            self._file.write(data)
        except OSError as exc:
            raise _spool_error(exc) from exc
        self._count += 1
        self._size += len(data)

    def __iter__(self) -> Iterator[Snap]:
        """The snapshots, in the order they were appended.

        :raises InputOutputError: when the file cannot be read back.
        """
        try:
            self._file.flush()
        except OSError as exc:
            raise _spool_error(exc) from exc
        unpacker = msgpack.Unpacker(
            object_hook=self._decode, strict_map_key=False, max_buffer_size=0
        )
        fd = self._file.fileno()
        offset = 0
        while offset < self._size:
            try:
                chunk = os.pread(fd, min(self._CHUNK, self._size - offset), offset)
            except OSError as exc:
                raise _spool_error(exc) from exc
            if not chunk:
                raise InputOutputError("the report's temporary file was cut short")
            offset += len(chunk)
            unpacker.feed(chunk)
            yield from unpacker

    def close(self) -> None:
        """Free the file (the snapshots cannot be read any more)."""
        self._file.close()

    def __enter__(self) -> SnapshotSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _encode(self, value: dict[Any, Any]) -> dict[int, list[Any]]:
        """A dict as ``{key tuple number: [values]}``, its values as :meth:`_encode_list`.

        Only dicts and lists of exactly those types are looked into here (one
        test in C per container says whether any of its values is one);
        msgpack hands everything else it cannot pack as it is (tuples, and
        subclasses of dict, list, int, float, str) to :meth:`_default`.
        """
        keys = tuple(value)
        key_id = self._key_ids.get(keys)
        if key_id is None:
            key_id = self._key_ids[keys] = len(self._keys)
            self._keys.append(keys)
        return {key_id: self._encode_list(list(value.values()))}

    def _encode_list(self, values: list[Any]) -> list[Any]:
        """``values`` with each dict and list in it encoded (the list itself when none is)."""
        if _CONTAINERS.isdisjoint(map(type, values)):
            return values
        return [
            self._encode(item)
            if type(item) is dict
            else self._encode_list(item)
            if type(item) is list
            else item
            for item in values
        ]

    def _default(self, value: object) -> object:
        """What msgpack packs for a value it does not pack itself: as ``json.dumps`` sees it."""
        if isinstance(value, dict):
            return self._encode(dict(value))
        if isinstance(value, (list, tuple)):
            return self._encode_list(list(value))
        for base in (int, float, str):
            if isinstance(value, base):
                return base(value)
        raise TypeError(f"a snapshot cannot hold {type(value).__name__}")

    def _decode(self, packed: dict[int, list[Any]]) -> dict[Any, Any]:
        """A dict back from :meth:`_encode`'s form (msgpack calls it for every map)."""
        ((key_id, values),) = packed.items()
        return dict(zip(self._keys[key_id], values, strict=True))


_CONTAINERS = frozenset((dict, list))
"""The types :meth:`SnapshotSpool._encode` looks into (exactly these, not subclasses)."""


def _spool_error(exc: OSError) -> InputOutputError:
    reason = exc.strerror or exc
    return InputOutputError(f"temporary file for the report in {tempfile.gettempdir()}: {reason}")


class _SpooledRunKeys(TypedDict):
    mode: str
    kernel: str
    settings: dict[str, Any]
    refused: list[Refusal]
    ksmd: KsmdCost
    milestones: Milestones
    snapshots: SnapshotSpool
    final: Snap


class SpooledRun(_SpooledRunKeys, total=False):
    """A :class:`Run` whose snapshots wait in a :class:`SnapshotSpool`."""

    pinned: list[Pinned]


class SpooledReport(TypedDict):
    """A :class:`Report` whose runs are :class:`SpooledRun` (``replay_spooled()``)."""

    report: int
    trace: TraceInfo
    runs: list[SpooledRun]


AnyReport = Report | SpooledReport
"""What the renderers take: either form of the report."""


def unspool(report: SpooledReport) -> Report:
    """The whole report in memory: every spool read back into a list."""
    runs: list[Run] = [{**run, "snapshots": list(run["snapshots"])} for run in report["runs"]]
    return {**report, "runs": runs}


def close_spools(report: SpooledReport) -> None:
    """Free every run's spool (the report cannot be rendered any more)."""
    for run in report["runs"]:
        run["snapshots"].close()


def schema_text() -> str:
    """The JSON schema of the report (``report.schema.json``, shipped in the package)."""
    return (resources.files("ksmreplay") / "report.schema.json").read_text(encoding="utf-8")
