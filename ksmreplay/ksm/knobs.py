"""The KSM sysfs knobs, each declared once.

One table drives the validation of ``ksm`` trace events, the ``--set`` option of
the CLI and its help text.  Defaults are Linux's (``mm/ksm.c``); the ranges are
what the knob's ``*_store()`` accepts in every state, so a value outside them
is an error of the trace, while a value Linux refuses only in some states
(EBUSY, EINVAL under the advisor) is a refusal the simulator records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

KnobValue = int | str

UINT_MAX = 2**32 - 1
INT_MAX = 2**31 - 1
ULONG_MAX = 2**64 - 1

ADVISOR_MODES = ("none", "scan-time")


@dataclass(frozen=True, slots=True)
class Knob:
    """One ``/sys/kernel/mm/ksm`` knob.

    :ivar name: the sysfs file name.
    :ivar default: Linux's boot-time value.
    :ivar minimum: smallest accepted value (int knobs).
    :ivar maximum: largest accepted value (int knobs).
    :ivar help: one line for ``--help`` and the docs.
    :ivar choices: the accepted words, for a string knob (``advisor_mode``).
    """

    name: str
    default: KnobValue
    minimum: int
    maximum: int
    help: str
    choices: tuple[str, ...] = ()

    def check(self, value: object) -> str | None:
        """Return why ``value`` can never be written to this knob, or None if it can."""
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                return f"must be one of {', '.join(repr(c) for c in self.choices)}"
            return None
        if type(value) is not int:
            return "must be an integer"
        if value < self.minimum or value > self.maximum:
            if self.maximum == 1 and self.minimum == 0:
                return "must be 0 or 1"
            if self.maximum in (UINT_MAX, INT_MAX, ULONG_MAX):
                return f"must be >= {self.minimum}" if value < self.minimum else "is too large"
            return f"must be between {self.minimum} and {self.maximum}"
        return None

    def parse(self, text: str) -> KnobValue:
        """Parse a command-line value (``--set NAME=TEXT``); raise ValueError if invalid."""
        value: object = text
        if not self.choices:
            try:
                value = int(text, 10)
            except ValueError:
                raise ValueError(f"{self.name} must be an integer, not {text!r}") from None
        problem = self.check(value)
        if problem is not None:
            raise ValueError(f"{self.name} {problem}")
        assert isinstance(value, (int, str))
        return value


KNOBS: tuple[Knob, ...] = (
    Knob("run", 0, 0, 2, "0 stops ksmd, 1 runs it, 2 stops it and unmerges everything"),
    Knob("pages_to_scan", 100, 0, UINT_MAX, "pages ksmd visits per wake-up"),
    Knob("sleep_millisecs", 20, 0, UINT_MAX, "ms ksmd sleeps between batches (jiffy-rounded)"),
    Knob("use_zero_pages", 0, 0, 1, "map zero-filled pages to the shared zero page"),
    Knob("max_page_sharing", 256, 2, INT_MAX, "most mappings of one KSM page (EBUSY while shared)"),
    Knob("smart_scan", 1, 0, 1, "skip pages that did not merge on recent passes"),
    Knob("merge_across_nodes", 1, 0, 1, "merge pages of different NUMA nodes (EBUSY while shared)"),
    Knob(
        "stable_node_chains_prune_millisecs",
        2000,
        0,
        UINT_MAX,
        "ms between prunes of one stable node chain",
    ),
    Knob("advisor_mode", "none", 0, 0, "pages_to_scan advisor", choices=ADVISOR_MODES),
    Knob("advisor_max_cpu", 70, 0, ULONG_MAX, "advisor: most CPU percent ksmd may use"),
    Knob("advisor_min_pages_to_scan", 500, 0, ULONG_MAX, "advisor: pages_to_scan to start with"),
    Knob("advisor_max_pages_to_scan", 30000, 0, ULONG_MAX, "advisor: largest pages_to_scan"),
    Knob(
        "advisor_target_scan_time", 200, 1, ULONG_MAX, "advisor: seconds one full scan should take"
    ),
)

KNOB_BY_NAME: Mapping[str, Knob] = {k.name: k for k in KNOBS}

DEFAULTS: Mapping[str, KnobValue] = {k.name: k.default for k in KNOBS}


class Knobs:
    """The current value of every knob, as typed attributes named as sysfs
    names them (:data:`KNOBS`, which the attributes are checked against).

    Made from every knob's value (:data:`DEFAULTS` by default).  A write by
    name (a ``ksm`` event, ``--set``) goes through ``knobs[name] = value``.
    """

    __slots__ = tuple(k.name for k in KNOBS)

    run: int
    pages_to_scan: int
    sleep_millisecs: int
    use_zero_pages: int
    max_page_sharing: int
    smart_scan: int
    merge_across_nodes: int
    stable_node_chains_prune_millisecs: int
    advisor_mode: str
    advisor_max_cpu: int
    advisor_min_pages_to_scan: int
    advisor_max_pages_to_scan: int
    advisor_target_scan_time: int

    def __init__(self, values: Mapping[str, KnobValue] = DEFAULTS) -> None:
        for name in self.__slots__:
            setattr(self, name, values[name])

    def __getitem__(self, name: str) -> KnobValue:
        value: KnobValue = getattr(self, name)
        return value

    def __setitem__(self, name: str, value: KnobValue) -> None:
        if name not in KNOB_BY_NAME:
            raise KeyError(name)
        setattr(self, name, value)

    def items(self) -> Iterator[tuple[str, KnobValue]]:
        """Every knob's name and value, in :data:`KNOBS` order."""
        for name in self.__slots__:
            yield name, getattr(self, name)


if set(Knobs.__annotations__) != set(KNOB_BY_NAME):  # (one list of names: the table's)
    raise AssertionError("Knobs' attributes are not the knobs of KNOBS")


def check_settings(settings: Mapping[object, object]) -> str | None:
    """Return why a ``ksm`` event's settings map is invalid, or None."""
    if not settings:
        return "ksm settings must not be empty"
    for name, value in settings.items():
        if not isinstance(name, str):
            return f"ksm setting name must be a string, not {name!r}"
        knob = KNOB_BY_NAME.get(name)
        if knob is None:
            return f"unknown ksm setting {name!r}"
        problem = knob.check(value)
        if problem is not None:
            return f"ksm setting {name}={value!r}: {problem}"
    return None


ADVISOR_OWNS = "pages_to_scan"
"""The knob the scan-time advisor writes itself (and Linux refuses to take from
outside while the advisor is on)."""


def start_order(
    settings: Mapping[str, KnobValue], pins: Mapping[str, KnobValue]
) -> list[tuple[str, KnobValue]]:
    """The knob writes that set up the state before the first event, in order.

    ``settings`` (``--set``) and ``pins`` (``--pin``) together, each knob
    once, written as sysfs writes: every knob in the order given, except
    ``advisor_mode``, which is written last, so that switching the advisor on
    starts it from the ``advisor_min_pages_to_scan`` given beside it (the
    switch sets ``pages_to_scan`` from it, as ``advisor_mode_store()`` does).

    :raises ValueError: a knob both set and pinned, or ``pages_to_scan`` given
        together with ``advisor_mode=scan-time`` (the advisor owns
        ``pages_to_scan``: Linux refuses a write of it while the advisor is on,
        and switching the advisor on overwrites it).
    """
    both = [name for name in settings if name in pins]
    if both:
        name = both[0]
        raise ValueError(
            f"--set {name}={settings[name]} and --pin {name}={pins[name]}: "
            f"give {name} once (--pin keeps it for the whole replay, --set only at the start)"
        )
    start = {**settings, **pins}
    if start.get("advisor_mode") == "scan-time" and ADVISOR_OWNS in start:
        given = "--pin" if ADVISOR_OWNS in pins else "--set"
        raise ValueError(
            f"{given} {ADVISOR_OWNS}={start[ADVISOR_OWNS]} with advisor_mode=scan-time: "
            f"the scan-time advisor sets {ADVISOR_OWNS} itself, starting from "
            "advisor_min_pages_to_scan (set that instead)"
        )
    order = [(name, value) for name, value in start.items() if name != "advisor_mode"]
    if "advisor_mode" in start:
        order.append(("advisor_mode", start["advisor_mode"]))
    return order
