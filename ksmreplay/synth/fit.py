"""Fitting a workload's parameters to what ``inspect`` found in a recorded trace."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ksmreplay.errors import UsageError
from ksmreplay.synth.params import ParamValue, _number
from ksmreplay.synth.workloads import get_workload

# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class Fitted:
    """Parameter values measured from a trace.

    :ivar assignments: ``NAME=VALUE`` texts, to resolve before the user's own
        ``--param`` (which override them).
    :ivar notes: what the user should know about the fit, one line each.
    """

    assignments: tuple[str, ...]
    notes: tuple[str, ...]


def fit_contents(inspected: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The measurements ``--fit`` takes from :func:`ksmreplay.inspect.inspect_trace`'s
    result, and what they are of, in words ("" when every written page is mergeable).

    Those of the pages in mergeable mappings when some written pages are and others
    are not (a recording made with ``--as-is``: a virtual machine's RAM, without the
    hypervisor's own memory, which KSM never merges); else those of every written
    page (all of them mergeable, or none: then what KSM could make of them if they
    were).
    """
    mergeable, everything = inspected["mergeable_contents"], inspected["contents"]
    if mergeable["pages"] == everything["pages"]:
        return everything, ""
    if not mergeable["pages"]:
        return everything, "every written page; none is in a mergeable mapping"
    return mergeable, (
        f"the {mergeable['pages']} pages in mergeable mappings, of {everything['pages']} written"
    )


def fit_params(name: str, contents: Mapping[str, Any]) -> Fitted:
    """The parameters of workload ``name`` that make a trace like the one ``contents``
    (the ``contents`` of :func:`ksmreplay.inspect.inspect_trace`) describes.

    ``vm-guests``: one guest per process, of the processes' mean size; the
    share of zero pages, the pages every guest holds, the rewrite rate, the
    share of rewrites that are zeros, ``duration_s`` and the KSM knobs.  The
    working set (``dirty_set_percent``) is the share of pages that
    ``rate * duration`` rewrites per guest, drawn at random from it, must
    fall on to touch as many pages as the trace's rewrites touched
    (``touched_percent``): a process that rewrites a few pages again and
    again has a small one.  The generator's rewrites turn zero and shared
    pages into others, so the shares are set to what they must be at the
    start for the trace to end with the measured ones (the pages left
    untouched are those the trace left untouched).  Pages shared between
    guests are set so that the copies a merge would save (the measured
    duplicate pages) are the same; they cannot be measured on one process.
    ``zero-heavy`` and ``unmerge-cycle``: processes, size, zero and shared
    shares and the knobs; their rates and phases keep their values.

    :raises UsageError: the workload cannot be fitted, or the trace holds no
        written pages.
    """
    if name not in _FITTERS:
        fits = ", ".join(_FITTERS)
        raise UsageError(f"--fit is not supported for {name} (it is for {fits})")
    if not contents["processes"]:
        raise UsageError("the trace holds no written pages to measure")
    workload = get_workload(name)
    values, notes = _FITTERS[name](contents)
    assignments = []
    for param in workload.params:
        if param.name not in values:
            continue
        value = values[param.name]
        bounded = min(max(value, param.minimum), param.maximum)
        if bounded != value:
            notes.append(f"{param.name} {_number(value)} is out of range: {_number(bounded)}")
        assignments.append(f"{param.name}={_number(bounded)}")
    return Fitted(tuple(assignments), tuple(notes))


def _composition(c: Mapping[str, Any], untouched: float) -> tuple[float, float | None]:
    """``zero_percent`` and ``shared_percent`` (None when it cannot be measured) that a
    generator must start with so that, with ``untouched`` of the pages never rewritten,
    it ends as measured."""
    processes, pages = int(c["processes"]), int(c["pages"])
    per = pages / processes
    dirty_zero = float(c["dirty_zero_percent"]) / 100.0
    zero = (int(c["zero_pages"]) / pages - (1.0 - untouched) * dirty_zero) / untouched
    zero = min(max(zero, 0.0), 1.0)
    # An image page (held by every process) is still held intact by k of them,
    # k ~ Binomial(processes, untouched): it leaves k - 1 duplicates (none when k = 0).
    copies = processes * untouched - 1.0 + (1.0 - untouched) ** processes
    if processes < 2 or copies <= 0:
        return round(100.0 * zero, 3), None
    shared = int(c["duplicate_pages"]) / copies / per
    zero_percent = round(100.0 * zero, 3)
    shared_percent = round(100.0 * min(max(shared, 0.0), 1.0), 3)
    if zero_percent + shared_percent > 100.0 - 1e-9:
        shared_percent = round(100.0 - zero_percent - 0.001, 3)
    return zero_percent, max(shared_percent, 0.0)


def _size(c: Mapping[str, Any]) -> int:
    """MiB per process, at least 1."""
    return max(1, round(int(c["bytes_per_process"]) / 2**20))


def _knobs(c: Mapping[str, Any], names: Iterable[str]) -> dict[str, ParamValue]:
    return {name: int(c["ksm_settings"][name]) for name in names}


def _working_set(rewrites: float, c: Mapping[str, Any]) -> float:
    """The share ``x`` of each guest's pages that its rewrites fall on, such that
    ``rewrites`` (per page of the guest) drawn at random from them touch the measured
    share of the pages (``touched_percent``): ``touched = x * (1 - exp(-rewrites / x))``.

    1 (every page) when the rewrites are spread as widely as at random over all
    pages, or wider; else found by bisection, which the function's growth in
    ``x`` allows.
    """
    touched = float(c.get("touched_percent", 100.0)) / 100.0

    def reach(x: float) -> float:
        return x * -math.expm1(-rewrites / x)

    if rewrites <= 0 or touched >= reach(1.0):
        return 1.0
    lo, hi = max(touched, 1e-9), 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reach(mid) < touched else (lo, mid)
    return round(hi, 5)


def _fit_vm_guests(c: Mapping[str, Any]) -> tuple[dict[str, ParamValue], list[str]]:
    notes: list[str] = []
    processes = int(c["processes"])
    per = int(c["pages"]) / processes
    duration = min(float(c["activity_s"]), 3600.0)
    rate = float(c["dirty_pages_per_s"])
    working = _working_set(rate * duration / per if per else 0.0, c)
    untouched = 1.0 - working * (1.0 - math.exp(-rate * duration / per / working)) if per else 1.0
    if untouched < 0.05:
        notes.append(
            f"at {rate:g} pages/s for {duration:g} s a guest rewrites nearly every page; "
            "the zero and shared shares are fitted as if 5 % of the pages stayed"
        )
        untouched = 0.05
    zero, shared = _composition(c, untouched)
    values: dict[str, ParamValue] = {
        "guests": processes,
        "guest_mib": _size(c),
        "zero_percent": zero,
        "dirty_pages_per_s": round(rate, 3),
        "dirty_zero_percent": round(float(c["dirty_zero_percent"]), 3),
        "dirty_set_percent": round(100.0 * working, 3),
        "duration_s": round(duration, 3),
        **_knobs(c, ("pages_to_scan", "sleep_millisecs", "use_zero_pages")),
    }
    if shared is None:
        notes.append(
            "one process: pages shared between guests cannot be measured, "
            "shared_percent keeps its value (give it with --param)"
        )
    else:
        values["shared_percent"] = shared
    return values, notes


def _fit_static(
    knobs: tuple[str, ...],
) -> Callable[[Mapping[str, Any]], tuple[dict[str, ParamValue], list[str]]]:
    def fit(c: Mapping[str, Any]) -> tuple[dict[str, ParamValue], list[str]]:
        zero, shared = _composition(c, 1.0)
        values: dict[str, ParamValue] = {
            "processes": int(c["processes"]),
            "mib": _size(c),
            "zero_percent": zero,
            **_knobs(c, knobs),
        }
        notes = ["rates and phases keep their values (the shares are those measured)"]
        if shared is None:
            notes.append("one process: shared_percent keeps its value")
        else:
            values["shared_percent"] = shared
        return values, notes

    return fit


_FITTERS: Mapping[str, Callable[[Mapping[str, Any]], tuple[dict[str, ParamValue], list[str]]]] = {
    "vm-guests": _fit_vm_guests,
    "zero-heavy": _fit_static(("pages_to_scan", "sleep_millisecs", "use_zero_pages")),
    "unmerge-cycle": _fit_static(("pages_to_scan", "sleep_millisecs")),
}
FIT_WORKLOADS: tuple[str, ...] = tuple(_FITTERS)
"""The workloads ``--fit`` can set from a trace."""
