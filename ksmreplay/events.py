"""Typed trace records: one frozen, slotted dataclass per ``op``.

The trace reader decodes and validates every event exactly once into one of
these; nothing downstream sees raw msgpack.  Each record carries its event
``index`` (the header is event 0) and ``t`` so that later errors can say where
they happened.

``Write.content`` is one of:

* ``int`` — one fingerprint for every page of the range (0 = zeros);
* ``numpy.ndarray`` of ``uint64`` — one fingerprint per page, in address order;
* ``bytes`` — the literal bytes stored at ``addr`` (any alignment).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ksmreplay.knobs import KnobValue

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
