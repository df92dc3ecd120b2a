"""Workload parameters (:class:`Param`: name, default, range, help), their
resolved values, and the units every generator writes in."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ksmreplay.errors import UsageError
from ksmreplay.ksm.knobs import KNOB_BY_NAME

ParamValue = int | float

PAGE_SIZE = 4096
"""Bytes per page of every synthetic trace."""
MIB_PAGES = 2**20 // PAGE_SIZE
"""Pages per MiB."""
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
TICK_NS = 100 * NS_PER_MS
"""Activity over time (dirtying, private writes, allocation) is written in batches,
one per process every this many ns of trace time."""


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a workload.

    :ivar name: the name ``--param NAME=VALUE`` uses.
    :ivar default: the value when not given; an ``int`` default makes an
        integer parameter, a ``float`` default a decimal one.
    :ivar minimum: smallest accepted value.
    :ivar maximum: largest accepted value.
    :ivar help: one line for ``--list``.
    """

    name: str
    default: ParamValue
    minimum: ParamValue
    maximum: ParamValue
    help: str

    @property
    def is_int(self) -> bool:
        """Whether the parameter takes integers only."""
        return isinstance(self.default, int)

    def parse(self, text: str) -> ParamValue:
        """Parse a command-line value; raise :class:`UsageError` if it is not accepted."""
        value: ParamValue
        try:
            value = int(text, 10) if self.is_int else float(text)
        except ValueError:
            what = "an integer" if self.is_int else "a number"
            raise UsageError(f"parameter {self.name} must be {what}, not {text!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"parameter {self.name} must be a finite number, not {text!r}")
        if not self.minimum <= value <= self.maximum:
            raise UsageError(
                f"parameter {self.name} must be between {_number(self.minimum)} and "
                f"{_number(self.maximum)}, not {text}"
            )
        return value

    def range_text(self) -> str:
        """``MIN..MAX`` as ``--list`` shows it."""
        return f"{_number(self.minimum)}..{_number(self.maximum)}"


def _number(value: ParamValue) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _knob_param(name: str, default: int) -> Param:
    """A parameter that sets the KSM knob ``name`` at t=0 (range and help from the knob table)."""
    knob = KNOB_BY_NAME[name]
    return Param(name, default, knob.minimum, knob.maximum, f"KSM knob at t=0: {knob.help}")


SETTLE = Param(
    "settle",
    1,
    0,
    1,
    "1: ksmd settles before the snapshots that end a phase; "
    "0: no settle, ksmd works in trace time only",
)
"""Every workload's last parameter: whether its trace has ``settle`` events."""


def _common_knobs(pages_to_scan: int, use_zero_pages: int | None) -> tuple[Param, ...]:
    """The knob parameters every workload has, and :data:`SETTLE`."""
    params = [_knob_param("pages_to_scan", pages_to_scan), _knob_param("sleep_millisecs", 20)]
    if use_zero_pages is not None:
        params.append(_knob_param("use_zero_pages", use_zero_pages))
    params.append(SETTLE)
    return tuple(params)


def _duration(default: float) -> Param:
    return Param(
        "duration_s", default, 0.0, 3600.0, "seconds of trace time the activity phase lasts"
    )


class Values(Mapping[str, ParamValue]):
    """The resolved parameter values of one workload, with typed accessors."""

    def __init__(self, values: Mapping[str, ParamValue]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> ParamValue:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Values({self._values!r})"

    def integer(self, name: str) -> int:
        value = self._values[name]
        assert isinstance(value, int)
        return value

    def share(self, name: str) -> float:
        """A ``*_percent`` parameter as a fraction of 1."""
        return float(self._values[name]) / 100.0

    def ns(self, name: str) -> int:
        """A ``*_s`` parameter in nanoseconds."""
        return round(float(self._values[name]) * NS_PER_S)

    def pages(self, name: str) -> int:
        """A ``*_mib`` parameter in pages."""
        return self.integer(name) * MIB_PAGES
