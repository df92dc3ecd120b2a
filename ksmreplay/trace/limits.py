"""The trace format's limits and the wording of its error messages (TRACE_FORMAT.md)."""

from __future__ import annotations

import math
from typing import Literal

FORMAT_VERSION = 1
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 65536
ADDR_LIMIT = 2**64
"""``addr + len`` must stay below this."""
INT_LIMIT = 2**64
"""Every int of an event (``t``, fingerprints, ``max_full_scans``) is below this."""
PID_LIMIT = 2**63
"""pids and child pids are below this (they fit the signed 64-bit pid columns)."""

MAX_BIN_BYTES = 64 * 2**20
"""Largest literal write (a ``bin`` content), in bytes."""
MAX_ARRAY_ITEMS = 2**22
"""Largest array (the fingerprints of one write, an array in ``meta``), in items."""
MAX_MAP_ITEMS = 2**16
"""Largest map (``ksm`` settings, a map in ``meta``), in entries."""
MAX_STR_BYTES = 2**20
"""Longest str (snapshot label, description, a str of ``meta``), in bytes of UTF-8."""
MAX_META_BYTES = 2**20
"""Largest header ``meta``, in bytes written as msgpack."""
MAX_META_DEPTH = 32
"""Deepest nesting of maps and arrays in the header's ``meta`` (``meta`` itself is 1)."""
MAX_EVENT_BYTES = MAX_BIN_BYTES + 4096
"""Largest msgpack object (header or event) the reader decodes, in bytes."""
MAX_LINE_BYTES = 4 * MAX_EVENT_BYTES
"""Longest JSON line the reader decodes, in bytes."""

TraceForm = Literal["msgpack", "jsonl"]
FORMS: tuple[str, ...] = ("msgpack", "jsonl")

# How each op names the process it acts on, for messages.
_PHRASE = {
    "alloc": "alloc in pid",
    "free": "free in pid",
    "write": "write to pid",
    "read": "read from pid",
    "madvise": "madvise in pid",
    "prctl": "prctl of pid",
    "fork": "fork of pid",
    "exit": "exit of pid",
}

# Items after t and op, per op (settle takes 0 or 1).
_ITEMS = {
    "alloc": ("pid", "addr", "len"),
    "free": ("pid", "addr", "len"),
    "write": ("pid", "addr", "len", "content"),
    "read": ("pid", "addr", "len"),
    "madvise": ("pid", "addr", "len", "advice"),
    "prctl": ("pid", "option", "value"),
    "fork": ("pid", "child_pid"),
    "exit": ("pid",),
    "ksm": ("settings",),
    "settle": ("max_full_scans",),
    "snapshot": ("label",),
}


def kind(value: object) -> str:
    """The trace-format name of a decoded value's type (for messages)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray)):
        return "bin"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "map"
    return "ext"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------- validation


def _short(text: str) -> str:
    """``repr(text)``, cut short for messages."""
    return repr(text) if len(text) <= 40 else repr(text[:32]) + "..."


def _str_problem(value: str, where: str) -> str | None:
    """Why the str ``value`` breaks the limits of a str (valid Unicode, size), or None."""
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{where} is a str that is not valid Unicode"
    if size > MAX_STR_BYTES:
        return f"{where} is a str of {size} bytes, over the limit of {MAX_STR_BYTES}"
    return None


_NOT_JSON = "; meta may hold only JSON values"


def _json_value_problem(value: object, where: str, depth: int = 1) -> str | None:
    """Why ``value`` cannot be carried into a JSON report and written in both
    forms (a value of ``meta``, at nesting ``depth``), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            return f"{where} is an int outside the 64-bit range{_NOT_JSON}"
        return None
    if isinstance(value, str):
        return _str_problem(value, where)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is a non-finite float{_NOT_JSON}"
    if not isinstance(value, (list, dict)):
        return f"{where} is {kind(value)}{_NOT_JSON}"
    if depth > MAX_META_DEPTH:
        return f"{where} is nested deeper than the limit of {MAX_META_DEPTH}"
    if isinstance(value, list):
        if len(value) > MAX_ARRAY_ITEMS:
            return f"{where} is an array of {len(value)} items, over the limit of {MAX_ARRAY_ITEMS}"
        for i, item in enumerate(value):
            problem = _json_value_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if len(value) > MAX_MAP_ITEMS:
        return f"{where} is a map of {len(value)} entries, over the limit of {MAX_MAP_ITEMS}"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"{where} has a {kind(key)} key{_NOT_JSON}"
        problem = _str_problem(key, f"{where} key {_short(key)}") or _json_value_problem(
            item, f"{where}[{_short(key)}]", depth + 1
        )
        if problem:
            return problem
    return None


def _int_text(value: int) -> str:
    """``value`` in decimal, cut short for messages when it is very long."""
    if -(10**30) < value < 10**30:
        return str(value)
    digits = len(str(abs(value)))
    return f"{str(value)[:12]}...({digits} digits)"


_INT_ONLY = {int}


_MAX_B64_CHARS = -(-MAX_BIN_BYTES // 3) * 4
"""Length of the base64 text of a bin of :data:`MAX_BIN_BYTES` bytes."""


def _bin_over_limit(size: int) -> str:
    return f"write content is a bin of {size} bytes, over the limit of {MAX_BIN_BYTES}"


_SHORT_RUN = 8
"""Runs of at most this many writes are checked one event at a time."""
