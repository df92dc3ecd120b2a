"""Typed trace records: one frozen, slotted dataclass per ``op``.

The trace reader decodes and validates every event exactly once into one of
these; nothing downstream sees raw msgpack.  Each record carries its event
``index`` (the header is event 0) and ``t`` so that later errors can say where
they happened.

``Write.content`` is one of:

* ``int`` — one fingerprint for every page of the range (0 = zeros);
* ``numpy.ndarray`` of ``uint64`` — one fingerprint per page, in address order;
* ``bytes`` — the literal bytes stored at ``addr`` (any alignment).

:class:`WriteRun` holds many consecutive fingerprint writes as columns, the
form in which the reader hands them to the replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ksmreplay.ksm.knobs import KnobValue

FingerprintArray = npt.NDArray[np.uint64]
Content = int | bytes | FingerprintArray
Advice = Literal["mergeable", "unmergeable", "dontneed"]
ADVICES: tuple[str, ...] = ("mergeable", "unmergeable", "dontneed")

DEFAULT_PAGE_SIZE = 4096
DEFAULT_MAX_FULL_SCANS = 10


@dataclass(frozen=True, slots=True)
class Header:
    """The first object of a trace."""

    version: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    description: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alloc:
    index: int
    t: int
    pid: int
    addr: int
    len: int
    op: Literal["alloc"] = "alloc"


@dataclass(frozen=True, slots=True)
class Free:
    index: int
    t: int
    pid: int
    addr: int
    len: int
    op: Literal["free"] = "free"


@dataclass(frozen=True, slots=True, eq=False)
class Write:
    index: int
    t: int
    pid: int
    addr: int
    len: int
    content: Content
    op: Literal["write"] = "write"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Write):
            return NotImplemented
        mine, theirs = self.content, other.content
        same_content = (
            np.array_equal(mine, theirs)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray)
            else type(mine) is type(theirs) and mine == theirs
        )
        return (self.index, self.t, self.pid, self.addr, self.len) == (
            other.index,
            other.t,
            other.pid,
            other.addr,
            other.len,
        ) and bool(same_content)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Read:
    index: int
    t: int
    pid: int
    addr: int
    len: int
    op: Literal["read"] = "read"


@dataclass(frozen=True, slots=True)
class Madvise:
    index: int
    t: int
    pid: int
    addr: int
    len: int
    advice: Advice
    op: Literal["madvise"] = "madvise"


@dataclass(frozen=True, slots=True)
class Prctl:
    """PR_SET_MEMORY_MERGE; ``option`` is always ``"merge_any"`` in format v1."""

    index: int
    t: int
    pid: int
    option: str
    value: bool
    op: Literal["prctl"] = "prctl"


@dataclass(frozen=True, slots=True)
class Fork:
    index: int
    t: int
    pid: int
    child_pid: int
    op: Literal["fork"] = "fork"


@dataclass(frozen=True, slots=True)
class Exit:
    index: int
    t: int
    pid: int
    op: Literal["exit"] = "exit"


@dataclass(frozen=True, slots=True)
class Ksm:
    """Writes to ``/sys/kernel/mm/ksm`` knobs, in the order the trace lists them."""

    index: int
    t: int
    settings: Mapping[str, KnobValue]
    op: Literal["ksm"] = "ksm"


@dataclass(frozen=True, slots=True)
class Settle:
    index: int
    t: int
    max_full_scans: int = DEFAULT_MAX_FULL_SCANS
    op: Literal["settle"] = "settle"


@dataclass(frozen=True, slots=True)
class Snapshot:
    index: int
    t: int
    label: str
    op: Literal["snapshot"] = "snapshot"


Event = Alloc | Free | Write | Read | Madvise | Prctl | Fork | Exit | Ksm | Settle | Snapshot
RangeEvent = Alloc | Free | Write | Read | Madvise

OPS: tuple[str, ...] = (
    "alloc",
    "free",
    "write",
    "read",
    "madvise",
    "prctl",
    "fork",
    "exit",
    "ksm",
    "settle",
    "snapshot",
)


@dataclass(frozen=True, slots=True)
class WriteRun:
    """Consecutive, validated fingerprint writes, as columns (events ``index`` on).

    Large traces are mostly writes; the reader hands runs of them to the
    replay in this form so that neither side builds one object per event.
    Event ``index + i`` is ``write(t[i], pid[i], addr[i], len[i], content)``
    whose content is ``fps[fp_end[i-1]:fp_end[i]]`` (from 0 for ``i = 0``),
    one fingerprint per page, or the int ``fps[fp_end[i-1]]`` where ``fill[i]``
    (the trace gave one fingerprint for the whole range).  :meth:`events`
    turns the run back into :class:`Write` records.
    """

    index: int
    t: npt.NDArray[np.uint64]
    pid: npt.NDArray[np.int64]
    addr: npt.NDArray[np.uint64]
    len: npt.NDArray[np.uint64]
    fill: npt.NDArray[np.bool_]
    fp_end: npt.NDArray[np.int64]
    fps: FingerprintArray
    op: Literal["write-run"] = "write-run"

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def build(
        cls,
        index: int,
        fields: list[tuple[int, int, int, int]],
        contents: list[int | FingerprintArray],
        page_shift: int,
    ) -> WriteRun:
        """The run of writes ``fields[i] = (t, pid, addr, len)`` with ``contents[i]``:
        one fingerprint for every page of the range, or a uint64 array of them."""
        t, pid, addr, length = zip(*fields, strict=True)
        lengths = np.array(length, np.uint64)
        fill = np.array([isinstance(c, int) for c in contents], np.bool_)
        arrays = [c for c in contents if not isinstance(c, int)]
        counts = np.zeros(len(fields), np.int64)
        counts[fill] = (lengths[fill] >> np.uint64(page_shift)).astype(np.int64)
        counts[~fill] = [len(a) for a in arrays]
        fps = np.empty(int(counts.sum()), np.uint64)
        filled = np.repeat(fill, counts)
        if arrays:
            fps[~filled] = np.concatenate(arrays)
        if fill.any():
            values = np.array([c for c in contents if isinstance(c, int)], np.uint64)
            fps[filled] = np.repeat(values, counts[fill])
        return cls(
            index,
            np.array(t, np.uint64),
            np.array(pid, np.int64),
            np.array(addr, np.uint64),
            lengths,
            fill,
            np.cumsum(counts),
            fps,
        )

    @classmethod
    def of(cls, writes: list[Write], page_size: int) -> WriteRun:
        """The run of ``writes`` (consecutive events; int or fingerprint-array content)."""
        contents: list[int | FingerprintArray] = []
        for w in writes:
            if isinstance(w.content, bytes):
                raise ValueError(f"event {w.index}: a literal write cannot join a run")
            contents.append(w.content)
        fields = [(w.t, w.pid, w.addr, w.len) for w in writes]
        return cls.build(writes[0].index, fields, contents, page_size.bit_length() - 1)

    @property
    def last_t(self) -> int:
        return int(self.t[-1])

    @property
    def last_index(self) -> int:
        return self.index + len(self.t) - 1

    def cut(self, lo: int, hi: int) -> WriteRun:
        """Events ``lo:hi`` of the run (``0 <= lo < hi <= len``), as a run of their own."""
        base = int(self.fp_end[lo - 1]) if lo else 0
        return WriteRun(
            self.index + lo,
            self.t[lo:hi],
            self.pid[lo:hi],
            self.addr[lo:hi],
            self.len[lo:hi],
            self.fill[lo:hi],
            self.fp_end[lo:hi] - base,
            self.fps[base : int(self.fp_end[hi - 1])],
        )

    def fp_start(self, lo: int = 0, hi: int | None = None) -> npt.NDArray[np.int64]:
        """Where the fingerprints of events ``lo:hi`` start in :attr:`fps`."""
        end = self.fp_end[lo:hi]
        start = np.empty_like(end)
        start[:1] = self.fp_end[lo - 1] if lo else 0
        start[1:] = end[:-1]
        return start

    def events(self) -> list[Write]:
        """The run as :class:`Write` records, in order."""
        # A frozen dataclass sets each field through object.__setattr__; for
        # millions of records, setting the slots directly costs far less.
        fps = self.fps
        out: list[Write] = []
        append = out.append
        columns = zip(
            range(self.index, self.index + len(self.t)),
            self.t.tolist(),
            self.pid.tolist(),
            self.addr.tolist(),
            self.len.tolist(),
            self.fill.tolist(),
            self.fp_start().tolist(),
            self.fp_end.tolist(),
            strict=True,
        )
        for index, t, pid, addr, length, fill, lo, hi in columns:
            record: Write = _new(Write)
            _set_index(record, index)
            _set_t(record, t)
            _set_pid(record, pid)
            _set_addr(record, addr)
            _set_len(record, length)
            _set_content(record, int(fps[lo]) if fill else fps[lo:hi])
            _set_op(record, "write")
            append(record)
        return out


_new = object.__new__
_set_index, _set_t, _set_pid, _set_addr, _set_len, _set_content, _set_op = (
    Write.__dict__[name].__set__ for name in ("index", "t", "pid", "addr", "len", "content", "op")
)
