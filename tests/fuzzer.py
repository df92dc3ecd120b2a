"""A structured fuzzer of the command line: valid traces, mutated, through every reading command.

Seeds are the bundled traces (``traces/*.msgpack``, cut to a prefix of their
events), the golden cases (``tests/cases/**/*.jsonl``) and random traces of
``tests/randtrace.py``.  Mutant ``i`` of seed ``S`` is made by a random
generator seeded with ``(S, i)`` alone, so the same seed gives the same
mutants whatever the order, the number of jobs or the machine.  A mutant is
either structured (a list of objects, written in both forms when both can
carry it: these *twins* must agree) or bytes (one form, bit flips and the
like).

Every mutant is run through ``validate``, ``run``, ``inspect`` and ``convert``
(to the other form, and the converted trace through ``validate`` and ``run``
again), each as its own process with a CPU-time limit, a wall-clock limit and
an address-space limit (RLIMIT_AS), and the outcomes must pass these checks:

- no traceback, no Python exception name, no Python warning on stderr; an exit status
  in :data:`OK_STATUSES` (``run`` also :data:`RESOURCES`: a valid trace that
  needs more memory than the replay may take, :data:`MEMORY_BUDGET`); not
  killed by a signal; no hang (CPU or wall limit); no more than
  :data:`RSS_LIMIT` of memory; nothing on stderr on success, one line
  ``ksmreplay: ...`` on failure, besides ``run``'s warning lines
  (``ksmreplay: warning: ...``, which only ``run`` may print);
- ``run``, ``inspect`` and ``convert`` fail (exit 3) exactly when ``validate``
  does, with the same message (``run`` may refuse a trace ``validate``
  accepts with :data:`RESOURCES`), and a failed ``convert`` leaves no output;
- with and without the native core, ``validate`` and ``run`` print the same;
- a converted trace validates, and replays to the same report;
- the msgpack and JSON-lines twins of a structured mutant give the same
  statuses, the same ``validate`` line or message (the event index only, for
  messages about the encoding itself) and the same report.

Each command runs in a child forked from a worker that has already imported
``ksmreplay`` (the child runs ``python -m ksmreplay`` as the interpreter
would, see :func:`_child_main`): a ``validate`` of a small trace takes 30 ms
instead of 300 ms.  The smallest instance of every failure found is checked
again with ``sys.executable -m ksmreplay`` (``confirmed`` in the summary).

Usage (``make fuzz`` runs the first)::

    python tests/fuzzer.py -n 10000 --seed 0 -j 2 --out fuzz-out
    python tests/fuzzer.py --replay fuzz-out/traceback-run-msgpack-OverflowError.json
"""

from __future__ import annotations

import argparse
import atexit
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import random
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
CASES_DIR = TESTS / "fuzz_cases"
"""Saved regression cases: ``NAME.json`` and its trace(s) ``NAME.msgpack`` / ``NAME.jsonl``."""

OK_STATUSES = frozenset({0, 3})
"""Exit statuses allowed for validate, run, inspect and convert of a readable trace file."""
RESOURCES = 6
"""The exit status of a replay refused for want of memory (ExitStatus.RESOURCES): the
trace is valid, the machine too small.  Allowed for ``run`` alone."""
RUN_VERBS = frozenset({"run", "run-pure", "run-out"})
"""The fuzzer's names of ``run`` commands (see :func:`check_mutant`)."""
WARNING_PREFIX = "ksmreplay: warning: "
"""How ``run`` starts a warning line on stderr: a trap in the trace or the
options, not a failure; kept apart from the rest of stderr."""
MEMORY_BUDGET = 256 << 20
"""``KSMREPLAY_MEMORY`` of every command, in bytes: the most a replay may take.  Fixed,
so that whether ``run`` has room does not depend on what the machine has free at the
moment; and small, because a replay's time follows its memory (the pages it
simulates): a valid trace that declares more work than the CPU limit allows (a
fill of a million pages in three modes) is refused with :data:`RESOURCES` instead
of being taken for a hang.  Every seed replays in less than 50 MiB."""
MEMORY_ENV = "KSMREPLAY_MEMORY"
MEMORY_LIMIT = 2 * 2**30
"""Address space of one command, in bytes (RLIMIT_AS)."""
RSS_LIMIT = 1536 * 2**20
"""Peak resident memory of one command above which it counts as a blow-up, in bytes."""
CPU_SECONDS = 5
"""CPU time of one command above which it counts as a hang, in seconds."""
FSIZE_LIMIT = 2**30
"""Largest file one command may write, in bytes (RLIMIT_FSIZE)."""
FORMS = ("msgpack", "jsonl")
PAGE = 4096
NATIVE_ENV = "KSMREPLAY_NATIVE"

# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """A valid trace to mutate: the header and the event arrays, as decoded objects."""

    name: str
    objects: tuple[Any, ...]


_SEEDS: list[Seed] | None = None
MAX_SEED_EVENTS = 3000


def _from_jsonl(data: bytes) -> list[Any]:
    objects: list[Any] = []
    for line in data.splitlines():
        text = line.strip()
        if not text or text.startswith(b"#"):
            continue
        obj = json.loads(text)
        if isinstance(obj, list) and len(obj) == 6 and isinstance(obj[5], dict):
            obj[5] = base64.b64decode(obj[5]["b64"])
        objects.append(obj)
    return objects


def load_seeds() -> list[Seed]:
    """The seed traces, in a fixed order (loaded once per process)."""
    global _SEEDS
    if _SEEDS is not None:
        return _SEEDS
    seeds: list[Seed] = []
    for path in sorted((ROOT / "traces").glob("*.msgpack")):
        with path.open("rb") as stream:
            unpacker = msgpack.Unpacker(stream, raw=False, max_buffer_size=2**27)
            objects = [obj for _, obj in zip(range(MAX_SEED_EVENTS + 1), unpacker, strict=False)]
        seeds.append(Seed(f"traces/{path.name}", tuple(objects)))
    sys.path.insert(0, str(TESTS))
    try:
        from randtrace import large_random_trace, random_trace
        from testdata import CASES_DIR, case_traces
    finally:
        sys.path.remove(str(TESTS))
    # the golden cases' traces, in the order of their paths had each its own copy in
    # tests/cases (a run's mutants are a function of the seeds' order)
    for path in sorted(
        case_traces(), key=lambda p: p if p.is_relative_to(CASES_DIR) else CASES_DIR / p.name
    ):
        rel = path.relative_to(TESTS).as_posix()
        seeds.append(Seed(f"tests/{rel}", tuple(_from_jsonl(path.read_bytes()))))
    from ksmreplay.trace import event_array, header_object
    from ksmreplay.trace.events import Header

    for n in range(12):
        events = [event_array(e) for e in random_trace(n)]
        seeds.append(Seed(f"random_trace({n})", (header_object(Header()), *events)))
    for n in range(4):
        events = [event_array(e) for e in large_random_trace(n)]
        seeds.append(Seed(f"large_random_trace({n})", (header_object(Header()), *events)))
    _SEEDS = seeds
    return seeds


# --------------------------------------------------------------------------- encoding


_DEEP = "\x00deep:"
"""A str standing for a deeply nested value (``\\x00deep:DEPTH:KIND\\x00``), spliced in
by the encoders: no library writes 100,000 levels of nesting."""


def deep(depth: int, kind: str) -> str:
    """The placeholder of ``depth`` nested arrays (``kind`` ``a``) or maps (``m``)."""
    return f"{_DEEP}{depth}:{kind}\x00"


def _deep_markers(obj: Any, found: set[str]) -> None:
    if isinstance(obj, str):
        if obj.startswith(_DEEP):
            found.add(obj)
    elif isinstance(obj, list):
        for item in obj:
            _deep_markers(item, found)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _deep_markers(key, found)
            _deep_markers(item, found)


def _deep_bytes(marker: str, form: str) -> bytes:
    depth_text, kind = marker[len(_DEEP) : -1].split(":")
    depth = int(depth_text)
    if form == "msgpack":
        return (b"\x91" if kind == "a" else b"\x81\xa1k") * depth + b"\xc0"
    if kind == "a":
        return b"[" * depth + b"null" + b"]" * depth
    return b'{"k":' * depth + b"null" + b"}" * depth


def _is_content(container: list[Any], index: int) -> bool:
    return index == 5 and len(container) == 6 and container[1] == "write"


def _jsonable(obj: Any, top: bool = False) -> Any:
    """``obj`` for json.dumps (a write's bin content as ``{"b64": ...}``); ValueError if it
    holds what JSON cannot say the same way (a bin elsewhere, a key that is not a str)."""
    if isinstance(obj, list):
        out = []
        for i, item in enumerate(obj):
            if top and isinstance(item, bytes) and _is_content(obj, i):
                out.append({"b64": base64.b64encode(item).decode("ascii")})
            else:
                out.append(_jsonable(item))
        return out
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError("map key that is not a str")
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (bytes, bytearray)):
        raise ValueError("bin outside a write's content")
    return obj


def encode(objects: list[Any], form: str) -> bytes | None:
    """The trace ``objects`` in ``form``, or None when that form cannot carry them."""
    markers: set[str] = set()
    for obj in objects:
        _deep_markers(obj, markers)
    try:
        if form == "msgpack":
            packer = msgpack.Packer(use_bin_type=True)
            data = b"".join(packer.pack(obj) for obj in objects)
        else:
            lines = [
                json.dumps(_jsonable(obj, top=i > 0), separators=(", ", ": "))
                for i, obj in enumerate(objects)
            ]
            data = "".join(line + "\n" for line in lines).encode("utf-8")
    except (ValueError, OverflowError, TypeError, UnicodeEncodeError, RecursionError):
        return None
    for marker in sorted(markers):
        if form == "msgpack":
            placeholder = msgpack.packb(marker, use_bin_type=True)
        else:
            placeholder = json.dumps(marker).encode("ascii")
        data = data.replace(placeholder, _deep_bytes(marker, form))
    return data


# --------------------------------------------------------------------------- mutants


@dataclass
class Mutant:
    """One mutated trace.

    :ivar objects: header and events for a structured mutant, None for bytes.
    :ivar forms: the trace file's bytes per form (``msgpack``, ``jsonl``).
    """

    seed: int
    index: int
    origin: str
    steps: list[str]
    objects: list[Any] | None
    forms: dict[str, bytes]

    @property
    def size(self) -> int:
        return min(len(data) for data in self.forms.values())

    def describe(self) -> str:
        return f"mutant {self.seed}:{self.index} of {self.origin}: {'; '.join(self.steps)}"


class _State:
    """What the mutators share: the generator, the objects and form restrictions."""

    def __init__(self, rng: random.Random, objects: list[Any], seeds: list[Seed]) -> None:
        self.rng = rng
        self.objects = objects
        self.seeds = seeds
        self.only: str | None = None  # a form the mutation makes sense in only

    @property
    def events(self) -> list[Any]:
        return self.objects[1:]

    def event_index(self) -> int | None:
        """Index in ``objects`` of a random event (None if there is none)."""
        if len(self.objects) < 2:
            return None
        return self.rng.randrange(1, len(self.objects))

    def page_size(self) -> int:
        header = self.objects[0]
        size = header.get("page_size", PAGE) if isinstance(header, dict) else PAGE
        return size if isinstance(size, int) and size > 0 else PAGE

    def last_t(self) -> int:
        for obj in reversed(self.objects[1:]):
            if isinstance(obj, list) and obj and type(obj[0]) is int:
                return obj[0]
        return 0


INTS = [
    0, 1, -1, 2, 7, 4095, 4096, 4097, 65536, 2**20, 2**22, 2**22 + 1, 4194303, 10**6,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**47, 2**50, 2**53 + 1, 2**62,
    2**63 - 4096, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 4096, 2**64 - 1, 2**64, 2**64 + 4096,
    2**65, 2**100, -(2**31), -(2**63), -(2**63) - 1, -(2**64), 10**19, 10**30, 10**300,
]  # fmt: skip
STRINGS = [
    "", "x", "alloc", "write", "merge_any", "mergeable", "\x00", "a\nb", "tab\there",
    "\ud800", "\udfff", "\u202e", "\U0001f600", "é", "\\", '"', ",", "\r\n", "#",
]  # fmt: skip
OPS = [
    "alloc", "free", "write", "read", "madvise", "prctl", "fork", "exit", "ksm", "settle",
    "snapshot",
]  # fmt: skip
KNOBS = [
    "run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing",
    "smart_scan", "merge_across_nodes", "stable_node_chains_prune_millisecs", "advisor_mode",
    "advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
]  # fmt: skip


def _interesting_int(rng: random.Random, old: object) -> int:
    if type(old) is int and rng.random() < 0.4:
        v = old
        return rng.choice(
            [v + 1, v - 1, v + PAGE, v - PAGE, -v, 2 * v, v << 20, v ^ (1 << rng.randrange(64)),
             2**64 - v, 2**63 - v, v + 2**63, v + 2**64]
        )  # fmt: skip
    return rng.choice(INTS)


def _random_value(rng: random.Random, old: object = None) -> Any:
    """A value of another kind than ``old``."""
    choices: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.choice([0.5, -0.0, 1e300, float("nan"), float("inf"), float(PAGE)]),
        lambda: rng.choice(STRINGS),
        lambda: rng.choice([b"", b"x", bytes(PAGE)]),
        lambda: rng.choice([[], [1], [[]], [0, "write"]]),
        lambda: rng.choice([{}, {"a": 1}, {"b64": "AAAA"}]),
        lambda: _interesting_int(rng, old),
        lambda: str(old),
    ]
    for _ in range(10):
        value = rng.choice(choices)()
        if type(value) is not type(old):
            return value
    return None


def _paths(obj: Any, rng: random.Random, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to the nodes under ``obj`` (a few items of long lists only)."""
    if isinstance(obj, list):
        positions: Iterable[int] = range(len(obj))
        if len(obj) > 12:
            positions = sorted({0, 1, 2, 3, 4, 5, len(obj) - 1, *rng.sample(range(len(obj)), 4)})
        for i in positions:
            yield (*prefix, i)
            yield from _paths(obj[i], rng, (*prefix, i))
    elif isinstance(obj, dict):
        for key in list(obj)[:16]:
            yield (*prefix, key)
            yield from _paths(obj[key], rng, (*prefix, key))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def _pick_path(st: _State, want: Callable[[Any], bool]) -> tuple[Any, ...] | None:
    rng = st.rng
    for _ in range(8):
        i = 0 if rng.random() < 0.06 else st.event_index()
        if i is None:
            i = 0
        paths = [p for p in _paths(st.objects[i], rng) if want(_get(st.objects[i], p))]
        if paths:
            return (i, *rng.choice(paths))
    return None


# -- mutators that most likely make the trace invalid -------------------------


def m_int(st: _State) -> str:
    path = _pick_path(st, lambda v: type(v) is int)
    if path is None:
        return "int: none"
    old = _get(st.objects, path)
    new = _interesting_int(st.rng, old)
    _set(st.objects, path, new)
    return f"int at {list(path)}: {old} -> {new}"


def m_type(st: _State) -> str:
    rng = st.rng
    i = st.event_index()
    if i is None or rng.random() < 0.05:
        i = 0
    paths = [(), *_paths(st.objects[i], rng)]
    path = rng.choice(paths)
    old = _get(st.objects[i], path)
    new = _random_value(rng, old)
    if path:
        _set(st.objects[i], path, new)
    else:
        st.objects[i] = new
    return f"type at {[i, *path]}: {type(old).__name__} -> {new!r:.40}"


def m_arity(st: _State) -> str:
    i = st.event_index()
    if i is None or not isinstance(st.objects[i], list):
        return "arity: none"
    event = st.objects[i]
    if event and st.rng.random() < 0.5:
        event.pop()
        return f"arity of event {i}: dropped the last item"
    event.insert(st.rng.randrange(len(event) + 1), _random_value(st.rng))
    return f"arity of event {i}: one more item"


def m_op(st: _State) -> str:
    i = st.event_index()
    if i is None or not isinstance(st.objects[i], list) or len(st.objects[i]) < 2:
        return "op: none"
    new = st.rng.choice([*OPS, "ALLOC", "", "write\x00", "settle ", "snap"])
    st.objects[i][1] = new
    return f"op of event {i} -> {new!r}"


def m_events(st: _State) -> str:
    rng = st.rng
    n = len(st.objects)
    if n < 2:
        return "events: none"
    what = rng.randrange(6)
    i = rng.randrange(1, n)
    if what == 0:
        j = min(n, i + rng.choice([1, 1, 2, 10, 100]))
        del st.objects[i:j]
        return f"deleted events {i}..{j - 1}"
    if what == 1:
        st.objects.insert(i, copy_objects([st.objects[rng.randrange(1, n)]])[0])
        return f"duplicated an event at {i}"
    if what == 2:
        j = rng.randrange(1, n)
        st.objects[i], st.objects[j] = st.objects[j], st.objects[i]
        return f"swapped events {i} and {j}"
    if what == 3:
        other = rng.choice(st.seeds).objects
        if len(other) > 1:
            st.objects.insert(i, copy_objects([other[rng.randrange(1, len(other))]])[0])
        return f"inserted an event of another trace at {i}"
    if what == 4:
        del st.objects[i:]
        return f"kept events 1..{i - 1}"
    st.objects[1:] = st.objects[:0:-1]
    return "reversed the events"


def m_header(st: _State) -> str:
    rng = st.rng
    header = st.objects[0]
    if not isinstance(header, dict):
        return "header: not a map"
    what = rng.randrange(7)
    if what == 0 and header:
        key = rng.choice(list(header))
        del header[key]
        return f"header: dropped {key}"
    if what == 1:
        header["page_size"] = rng.choice([8192, 16384, 65536, 2048, 4097, 0, -4096, 2**20, 2**64])
        return f"header: page_size {header['page_size']}"
    if what == 2:
        header["ksmreplay"] = rng.choice([0, 2, -1, 2**64, True, "1", 1.0])
        return f"header: ksmreplay {header['ksmreplay']!r}"
    if what == 3:
        header["meta"] = rng.choice(
            [
                {"n": 2**64 - 1},
                {"n": 2**64},
                {"n": -(2**63) - 1},
                {"f": float("nan")},
                {"f": float("inf")},
                {"s": "\ud800"},
                {"b": b"bin"},
                {1: 2},
                {"l": [1, [2, {"x": None}]]},
                {f"k{i}": i for i in range(rng.choice([65535, 65536, 65537]))},
                [1, 2],
                "meta",
            ]
        )
        return f"header: meta {str(header['meta'])[:40]}"
    if what == 4:
        header["unknown"] = _random_value(rng)
        return "header: an unknown key"
    if what == 5:
        header["description"] = rng.choice([*STRINGS, 5, None, b"d"])
        return f"header: description {header['description']!r}"
    st.objects[0] = _random_value(rng, header)
    return f"header replaced by {st.objects[0]!r:.40}"


def m_knobs(st: _State) -> str:
    rng = st.rng
    settings: dict[Any, Any] = {}
    for _ in range(rng.randint(1, 3)):
        name = rng.choice([*KNOBS, "unknown", "RUN", ""])
        value: Any = rng.choice(
            [0, 1, 2, 3, -1, 2**31, 2**32, 2**63, 2**64 - 1, 2**64, True, 1.0, "1",
             "scan-time", "none", None]
        )  # fmt: skip
        settings[name] = value
    i = rng.randrange(1, len(st.objects) + 1)
    t = st.objects[i - 1][0] if i > 1 and isinstance(st.objects[i - 1], list) else 0
    st.objects.insert(i, [t if type(t) is int else 0, "ksm", settings])
    return f"ksm event at {i}: {settings}"


def m_content(st: _State) -> str:
    rng = st.rng
    writes = [
        i
        for i, e in enumerate(st.objects)
        if i and isinstance(e, list) and len(e) == 6 and e[1] == "write"
    ]
    if not writes:
        return "content: no write"
    i = rng.choice(writes)
    event = st.objects[i]
    content = event[5]
    what = rng.randrange(6)
    if what == 0 and isinstance(content, list):
        if content and rng.random() < 0.5:
            content.pop()
        else:
            content.append(rng.choice([0, 1, 2**64 - 1]))
        return f"content of event {i}: {len(content)} fingerprints"
    if what == 1:
        n = event[4] // PAGE if isinstance(event[4], int) and 0 < event[4] < 2**24 else 1
        items = [rng.choice([0, 1, 2**64 - 1]) for _ in range(n)]
        if items:
            items[rng.randrange(n)] = rng.choice([-1, 2**64, 0.5, "f", None, True])
        event[5] = items
        return f"content of event {i}: a bad fingerprint in a list"
    if what == 2:
        length = event[4] if isinstance(event[4], int) and 0 < event[4] < 2**20 else 8
        event[5] = bytes(rng.randrange(256) for _ in range(min(length, 64))) * (length // 64 + 1)
        event[5] = event[5][: length + rng.choice([-1, 0, 0, 1])]
        return f"content of event {i}: {len(event[5])} literal bytes"
    if what == 3:
        st.only = "jsonl"
        event[5] = rng.choice(
            [{"b64": "!!!"}, {"b64": 5}, {"b64": "AAAA", "x": 1}, {"b64": "\u00e9"}, {"b64": ""}]
        )
        return f"content of event {i}: b64 {event[5]!r}"
    if what == 4:
        event[5] = rng.choice([2**64, -1, 2**64 - 1, 1.0, True])
        return f"content of event {i}: {event[5]!r}"
    event[5] = []
    return f"content of event {i}: empty list"


def _long_text(rng: random.Random) -> str:
    n = rng.choice([1000, 2**20 - 1, 2**20, 2**20 + 1, 2**21])
    return rng.choice(["a", "é", "\U0001f600", "\n"]) * (n // 4 if rng.random() < 0.3 else n)


def m_label(st: _State) -> str:
    rng = st.rng
    where = rng.randrange(3)
    text = _long_text(rng) if rng.random() < 0.6 else rng.choice(STRINGS) * rng.randint(1, 3)
    if where == 0:
        i = rng.randrange(1, len(st.objects) + 1)
        st.objects.insert(i, [st.last_t(), "snapshot", text])
        return f"snapshot label of {len(text)} chars"
    header = st.objects[0]
    if not isinstance(header, dict):
        return "label: header is not a map"
    if where == 1:
        header["description"] = text
        return f"description of {len(text)} chars"
    header["meta"] = {text: 1} if rng.random() < 0.5 else {"k": text}
    return f"meta str of {len(text)} chars"


def m_deep(st: _State) -> str:
    rng = st.rng
    depth = rng.choice([64, 500, 1000, 3000, 100_000])
    marker = deep(depth, rng.choice("am"))
    i = st.event_index()
    if i is None or rng.random() < 0.2:
        header = st.objects[0]
        if isinstance(header, dict):
            header["meta"] = {"deep": marker}
            return f"meta nested {depth} deep"
        i = 1 if len(st.objects) > 1 else None
    if i is None or not isinstance(st.objects[i], list) or not st.objects[i]:
        st.objects.append(marker)
        return f"an event nested {depth} deep"
    event = st.objects[i]
    j = rng.randrange(len(event))
    event[j] = marker
    return f"item {j} of event {i} nested {depth} deep"


# -- mutators that keep the trace valid (they exercise the replay) ------------

_PID_ITEMS = {
    "alloc": (2,), "free": (2,), "write": (2,), "read": (2,), "madvise": (2,), "prctl": (2,),
    "fork": (2, 3), "exit": (2,),
}  # fmt: skip
_RANGE_OPS = {"alloc", "free", "write", "read", "madvise"}


def _ops(st: _State) -> Iterator[list[Any]]:
    for obj in st.objects[1:]:
        if isinstance(obj, list) and len(obj) >= 2 and isinstance(obj[1], str):
            yield obj


def v_time(st: _State) -> str:
    """t near 2**63 or 2**64, or gaps stretched."""
    rng = st.rng
    events = [e for e in st.objects[1:] if isinstance(e, list) and e and type(e[0]) is int]
    if not events:
        return "time: no event"
    if rng.random() < 0.4:
        factor = rng.choice([1000, 10**6, 10**9])
        for e in events:
            e[0] *= factor
        return f"t scaled by {factor}"
    k = rng.randrange(len(events))
    span = events[-1][0] - events[k][0]
    target = rng.choice([2**62, 2**63 - 1 - span, 2**63, 2**64 - 1 - span, 2**64, 2**64 + 1])
    offset = max(0, target - events[k][0])
    for e in events[k:]:
        e[0] += offset
    return f"t from the event {k} on shifted to {target}"


def v_sleep(st: _State) -> str:
    """sleep_millisecs 0 or 1 (with long gaps)."""
    rng = st.rng
    ms = rng.choice([0, 1])
    settings = {"run": 1, "sleep_millisecs": ms}
    if rng.random() < 0.5:
        settings["pages_to_scan"] = rng.choice([1, 100, 10000])
    for obj in _ops(st):
        if obj[1] == "ksm" and len(obj) == 3 and isinstance(obj[2], dict):
            obj[2].update(settings)
            break
    else:
        st.objects.insert(1, [0, "ksm", settings])
    gap = rng.choice([0, 10**8, 10**9, 10**10, 10**12])
    if gap:
        st.objects.append([st.last_t() + gap, "snapshot", "after the gap"])
    return f"sleep_millisecs {ms}, then a gap of {gap} ns"


def v_pids(st: _State) -> str:
    """Every pid moved to a large one."""
    rng = st.rng
    base = rng.choice([10**6, 4194303, 2**31, 2**32, 2**62, 2**63 - 1000, 2**63, 2**64 - 1000])
    base += 2**64 if rng.random() < 0.05 else 0  # only JSON lines can carry these
    seen: dict[int, int] = {}
    for obj in _ops(st):
        for j in _PID_ITEMS.get(obj[1], ()):
            if j < len(obj) and type(obj[j]) is int and obj[j] > 0:
                obj[j] = seen.setdefault(obj[j], base + 1 + len(seen))
    return f"pids moved to {base + 1}.."


def v_addresses(st: _State) -> str:
    """Every mapping moved up, so that the highest ends just below 2**64."""
    rng = st.rng
    page = st.page_size()
    lo, hi = None, None
    for obj in _ops(st):
        if obj[1] in _RANGE_OPS and len(obj) >= 5 and type(obj[3]) is int and type(obj[4]) is int:
            lo = obj[3] if lo is None else min(lo, obj[3])
            hi = obj[3] + obj[4] if hi is None else max(hi, obj[3] + obj[4])
    if lo is None or hi is None:
        return "addresses: no range"
    top = 2**64 - page * rng.choice([0, 1, 2, 16]) if rng.random() < 0.9 else 2**64 + page
    delta = (top - hi) // page * page
    for obj in _ops(st):
        if obj[1] in _RANGE_OPS and len(obj) >= 5 and type(obj[3]) is int:
            obj[3] += delta
    return f"addresses moved up by {delta:#x} (highest end {hi + delta:#x})"


def v_many_pids(st: _State) -> str:
    """Many one-page processes, with small or large pids."""
    rng = st.rng
    count = rng.choice([10, 100, 1000, 3000, 10000])
    base = rng.choice([1000, 10**6, 4194303 - count, 2**32, 2**62])
    t = st.last_t()
    page = st.page_size()
    new: list[Any] = []
    for k in range(count):
        pid = base + k * rng.choice([1, 1, 7])
        new.append([t, "alloc", pid, 0x10000, page])
        new.append([t, "write", pid, 0x10000, page, k % 5])
        new.append([t, "madvise", pid, 0x10000, page, "mergeable"])
    new.append([t, "ksm", {"run": 1}])
    new.append([t + 10**9, "snapshot", "many"])
    st.objects.extend(new)
    return f"{count} one-page processes from pid {base}"


def v_many_maps(st: _State) -> str:
    """One process with many mappings, or many write/read pairs."""
    rng = st.rng
    count = rng.choice([100, 1000, 5000, 30000])
    pid = rng.choice([999, 4194303, 2**40])
    page = st.page_size()
    t = st.last_t()
    new: list[Any] = []
    if rng.random() < 0.5:
        for k in range(count):
            new.append([t, "alloc", pid, 0x10000 + 2 * k * page, page])
        new.append([t, "madvise", pid, 0x10000, page, "mergeable"])
    else:
        new.append([t, "alloc", pid, 0x10000, page])
        for k in range(count):
            new.append([t, "write", pid, 0x10000, page, k % 3])
            new.append([t, "read", pid, 0x10000, page])
    new.append([t, "ksm", {"run": 1}])
    new.append([t + 10**8, "snapshot", "maps"])
    st.objects.extend(new)
    return f"{count} mappings or writes in pid {pid}"


def v_huge(st: _State) -> str:
    """A huge mapping written with one fingerprint (or a list, or bytes)."""
    rng = st.rng
    page = st.page_size()
    length = rng.choice([2**30, 2**34, 2**36, 2**40, 2**44, 2**47, 2**50, 2**56, 2**63])
    addr = rng.choice([0, page, 2**63 - page if length < 2**62 else 0])
    pid = rng.choice([1, 77, 2**31])
    t = st.last_t()
    content: Any = rng.choice([0, 1, 0x1234])
    write_len = length if rng.random() < 0.7 else rng.choice([page, 16 * page, 2**26])
    new: list[Any] = [[t, "alloc", pid + 10**5, addr, length]]
    if rng.random() < 0.8:
        new.append([t, "write", pid + 10**5, addr, write_len, content])
    if rng.random() < 0.5:
        new.append([t, "madvise", pid + 10**5, addr, length, "mergeable"])
        new.append([t, "ksm", {"run": 1}])
        new.append([t + 10**8, "settle"])
    new.append([t + 10**8, "snapshot", "huge"])
    st.objects.extend(new)
    return f"a mapping of {length} bytes, {write_len} written"


def v_snapshots(st: _State) -> str:
    """Many snapshots (the report grows with snapshots times processes)."""
    rng = st.rng
    count = rng.choice([100, 1000, 10000, 100000])
    t = st.last_t()
    st.objects.extend([t + k, "snapshot", f"s{k}"] for k in range(count))
    return f"{count} snapshots"


def v_prefix(st: _State) -> str:
    """A shorter valid trace: the events up to one."""
    n = st.rng.randrange(1, len(st.objects) + 1)
    del st.objects[n:]
    return f"first {n - 1} events"


# -- mutators of the bytes ----------------------------------------------------

_MSGPACK_BYTES = [
    0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6,
    0xC7, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD3, 0xD4, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD,
    0xDE, 0xDF, 0xE0, 0xFF,
]  # fmt: skip


def _msgpack_nodes(data: bytes, pos: int = 0, limit: int = 20000) -> list[tuple[int, int]]:
    """``(offset, type byte)`` of the objects in msgpack ``data`` (containers, str, bin)."""
    nodes: list[tuple[int, int]] = []
    n = len(data)
    while pos < n and len(nodes) < limit:
        b = data[pos]
        nodes.append((pos, b))
        if b <= 0x9F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            pos += 1  # fixint, fixmap and fixarray headers, nil, bools
        elif 0xA0 <= b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif b in (0xCC, 0xD0):
            pos += 2
        elif b in (0xCD, 0xD1):
            pos += 3
        elif b in (0xCE, 0xD2, 0xCA):
            pos += 5
        elif b in (0xCF, 0xD3, 0xCB):
            pos += 9
        elif b in (0xD9, 0xC4):
            pos += 2 + (data[pos + 1] if pos + 1 < n else 0)
        elif b in (0xDA, 0xC5):
            pos += 3 + int.from_bytes(data[pos + 1 : pos + 3], "big")
        elif b in (0xDB, 0xC6):
            pos += 5 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        elif b in (0xDC, 0xDE):
            pos += 3
        elif b in (0xDD, 0xDF):
            pos += 5
        else:
            break
    return nodes


def b_flip(data: bytearray, rng: random.Random, form: str) -> str:
    flips = rng.choice([1, 1, 2, 4, 8])
    for _ in range(flips):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return f"{flips} bit flips"


def b_byte(data: bytearray, rng: random.Random, form: str) -> str:
    i = rng.randrange(len(data))
    if form == "msgpack":
        data[i] = rng.choice(_MSGPACK_BYTES)
    else:
        data[i] = ord(rng.choice('{}[]",:0-9ex .\x00\xff#\n'))
    return f"byte {i} set to {data[i]:#x}"


def b_truncate(data: bytearray, rng: random.Random, form: str) -> str:
    n = rng.randrange(len(data))
    del data[n:]
    return f"truncated to {n} bytes"


def b_span(data: bytearray, rng: random.Random, form: str) -> str:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.choice([1, 2, 8, 64, 1000]))
    what = rng.randrange(3)
    if what == 0:
        del data[i:j]
        return f"deleted bytes {i}..{j}"
    if what == 1:
        data[i:i] = data[i:j]
        return f"duplicated bytes {i}..{j}"
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8])))
    data[i:i] = junk
    return f"inserted {junk!r} at {i}"


def b_declared(data: bytearray, rng: random.Random, form: str) -> str:
    """A str, bin, array or map header rewritten with a huge or off-by-one count."""
    nodes = [
        (pos, b)
        for pos, b in _msgpack_nodes(bytes(data))
        if 0x80 <= b <= 0xBF or b in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF)
    ]
    if not nodes:
        return "declared: no container"
    pos, b = rng.choice(nodes)
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        marker, limits = 0xDF, [2**16, 2**16 + 1, 2**32 - 1]
    elif 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        marker, limits = 0xDD, [2**22, 2**22 + 1, 2**31, 2**32 - 1]
    elif b in (0xC4, 0xC5, 0xC6):
        marker, limits = 0xC6, [64 * 2**20, 64 * 2**20 + 1, 2**32 - 1]
    else:
        marker, limits = 0xDB, [2**20, 2**20 + 1, 2**32 - 1]
    width = {0xDC: 3, 0xDE: 3, 0xC4: 2, 0xD9: 2, 0xC5: 3, 0xDA: 3}.get(b, 5)
    if 0x80 <= b <= 0xBF:
        width = 1
    count = rng.choice([*limits, 0, 1])
    data[pos : pos + width] = bytes([marker]) + count.to_bytes(4, "big")
    return f"header at {pos} ({b:#x}) declares {count}"


def b_json(data: bytearray, rng: random.Random, form: str) -> str:
    what = rng.randrange(8)
    if what == 0:
        data[0:0] = b"\xef\xbb\xbf"
        return "a UTF-8 BOM first"
    lines = bytes(data).split(b"\n")
    i = rng.randrange(len(lines))
    if what == 1:
        lines[i] += b"\r"
    elif what == 2:
        lines.insert(i, rng.choice([b"", b"   ", b"# comment", b"#", b"\x00", b"\xff\xfe"]))
    elif what == 3:
        lines[i] = lines[i].replace(b"1", b"9" * 5000, 1)
    elif what == 4:
        lines[i] = lines[i].replace(b"0", rng.choice([b"NaN", b"Infinity", b"-0", b"0.0"]), 1)
    elif what == 5:
        lines[i] = lines[i].replace(b"e", b"\xc3\x28", 1)
    elif what == 6:
        lines[i] = lines[i].replace(b"]", b",]", 1).replace(b"}", b",}", 1)
    else:
        lines[i] = lines[i].replace(b"{", b'{"ksmreplay": 2, ', 1)
    data[:] = b"\n".join(lines)
    return f"JSON edit {what} on line {i}"


STRUCTURED: list[tuple[Callable[[_State], str], int]] = [
    (m_int, 12), (m_type, 8), (m_arity, 3), (m_op, 3), (m_events, 6), (m_header, 4),
    (m_knobs, 4), (m_content, 5), (m_label, 3), (m_deep, 2),
    (v_time, 3), (v_sleep, 3), (v_pids, 4), (v_addresses, 4), (v_many_pids, 2),
    (v_many_maps, 1), (v_huge, 3), (v_snapshots, 1), (v_prefix, 3),
]  # fmt: skip
BYTEWISE: list[tuple[Callable[[bytearray, random.Random, str], str], int]] = [
    (b_flip, 4), (b_byte, 4), (b_truncate, 2), (b_span, 3), (b_declared, 3), (b_json, 3),
]  # fmt: skip


def _weighted(rng: random.Random, table: list[tuple[Any, int]]) -> Any:
    return rng.choices([f for f, _ in table], [w for _, w in table])[0]


def copy_objects(objects: list[Any]) -> list[Any]:
    """A deep copy of decoded objects (pickle is many times faster than copy.deepcopy)."""
    copied: list[Any] = pickle.loads(pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL))
    return copied


def make_mutant(seed: int, index: int) -> Mutant:
    """Mutant ``index`` of run ``seed``: a function of these two numbers only."""
    rng = random.Random(f"ksmreplay-fuzz:{seed}:{index}")
    seeds = load_seeds()
    origin = rng.choice(seeds)
    objects = list(origin.objects)
    if len(objects) > 60 and rng.random() < 0.8:
        objects = objects[: rng.choice([20, 40, 100, 300])]
    st = _State(rng, copy_objects(objects), seeds)
    steps: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        steps.append(_weighted(rng, STRUCTURED)(st))
    forms: dict[str, bytes] = {}
    for form in FORMS:
        if st.only in (None, form):
            data = encode(st.objects, form)
            if data is not None:
                forms[form] = data
    if not forms:  # nothing can carry it: fall back to the seed
        steps.append("(unencodable, seed used)")
        st.objects = copy_objects(objects)
        forms = {form: encode(st.objects, form) or b"" for form in FORMS}
    if rng.random() < 0.3:
        form = rng.choice(sorted(forms))
        data = bytearray(forms[form])
        if data:
            table = (
                BYTEWISE if form == "msgpack" else [e for e in BYTEWISE if e[0] is not b_declared]
            )
            if form == "msgpack":
                table = [e for e in table if e[0] is not b_json]
            steps.append(f"{form}: " + _weighted(rng, table)(data, rng, form))
        return Mutant(seed, index, origin.name, steps, None, {form: bytes(data)})
    return Mutant(seed, index, origin.name, steps, st.objects, forms)


def mutant_from_objects(template: Mutant, objects: list[Any]) -> Mutant | None:
    """A structured mutant with other objects, in the forms ``template`` has."""
    forms = {}
    for form in template.forms:
        data = encode(objects, form)
        if data is None:
            return None
        forms[form] = data
    return Mutant(template.seed, template.index, template.origin, template.steps, objects, forms)


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """How one command ended.

    :ivar status: exit status, or None when a signal ended it.
    :ivar signal: the signal that ended it, or None.
    :ivar timed_out: ended by the wall-clock limit.
    :ivar stdout_hash: sha256 of everything it printed on stdout.
    :ivar maxrss: peak resident memory, in bytes.
    :ivar seconds: CPU time, user and system, in s.
    """

    status: int | None
    signal: int | None
    timed_out: bool
    stdout: bytes
    stdout_hash: str
    stderr: str
    maxrss: int
    seconds: float
    warnings: tuple[str, ...] = ()
    """``run``'s warning lines (``ksmreplay: warning: ...``), kept apart from ``stderr``."""

    def summary(self) -> str:
        if self.timed_out:
            how = "timed out"
        elif self.signal is not None:
            how = f"killed by {signal.Signals(self.signal).name}"
        else:
            how = f"exit {self.status}"
        err = self.stderr.strip().splitlines()
        tail = f": {err[-1][:300]}" if err else ""
        return f"{how} after {self.seconds:.1f} s CPU, {self.maxrss >> 20} MiB{tail}"


@dataclass(frozen=True)
class Limits:
    """The limits of one command: CPU s, wall s, address space and file size in bytes."""

    cpu: int = CPU_SECONDS
    wall: float = 3 * CPU_SECONDS + 10
    memory: int = MEMORY_LIMIT
    fsize: int = FSIZE_LIMIT


def _set_limits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_main(argv: list[str], module: str = "ksmreplay") -> int:
    """What ``python -m ksmreplay ARGV`` does, in a forked child; its exit status.

    Fresh standard streams as the interpreter makes them for files, the
    module run as ``__main__``, an uncaught exception printed by
    ``sys.excepthook`` (status 1), and the streams flushed at the end (a
    failed flush of stdout is status 120, as at interpreter exit).
    """
    import io
    import runpy

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8"
    )
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8"
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        sys.stdout.flush()
    except Exception:
        print("Exception ignored on flushing sys.stdout", file=sys.stderr)
        code = 120
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return code


_FORK_READY = False


def _prepare_fork() -> None:
    """Import everything a command needs once, so that forked children start warm."""
    global _FORK_READY
    if _FORK_READY:
        return
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    import importlib
    import pkgutil

    import ksmreplay.cli
    import ksmreplay.native

    # What a command imports on its way (the engine, the renderers): imported
    # once here, as the interpreter would import it in every child.
    for info in pkgutil.iter_modules(ksmreplay.__path__, "ksmreplay."):
        if info.name not in ("ksmreplay.__main__", "ksmreplay.live", "ksmreplay.record"):
            importlib.import_module(info.name)
    ksmreplay.native.native()  # loaded once, before any child runs
    _FORK_READY = True


def run_command(
    argv: list[str],
    cwd: Path,
    native: bool = True,
    limits: Limits = Limits(),
    spawn: bool = False,
    module: str = "ksmreplay",
) -> Outcome:
    """Run ``python -m MODULE ARGV`` (``ksmreplay``) in ``cwd`` as a child process with
    ``limits``; how it ended."""
    out_fd, out_path = tempfile.mkstemp(prefix=".out.", dir=cwd.parent)
    err_fd, err_path = tempfile.mkstemp(prefix=".err.", dir=cwd.parent)
    try:
        pid = _start(argv, cwd, native, limits, spawn, out_fd, err_fd, module)
        os.close(out_fd)
        os.close(err_fd)
        out_fd = err_fd = -1
        timed_out = False
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], limits.wall)
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(pidfd)
        _, wait_status, usage = os.wait4(pid, 0)
        with open(out_path, "rb") as stream:
            digest = hashlib.sha256()
            head = stream.read(1 << 20)
            digest.update(head)
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        with open(err_path, "rb") as stream:
            err = stream.read(1 << 20).decode("utf-8", "backslashreplace")
    finally:
        for fd in (out_fd, err_fd):
            if fd >= 0:
                os.close(fd)
        for path in (out_path, err_path):
            os.unlink(path)
    sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
    lines = err.splitlines(keepends=True)
    warnings = tuple(line for line in lines if line.startswith(WARNING_PREFIX))
    return Outcome(
        status=os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None,
        signal=sig,
        timed_out=timed_out,
        stdout=head,
        stdout_hash=digest.hexdigest(),
        stderr="".join(line for line in lines if not line.startswith(WARNING_PREFIX)),
        maxrss=usage.ru_maxrss * 1024,
        seconds=usage.ru_utime + usage.ru_stime,
        warnings=warnings,
    )


def _start(
    argv: list[str],
    cwd: Path,
    native: bool,
    limits: Limits,
    spawn: bool,
    out_fd: int,
    err_fd: int,
    module: str,
) -> int:
    env = dict(os.environ)
    env.pop(NATIVE_ENV, None)
    env[MEMORY_ENV] = str(MEMORY_BUDGET)
    if not native:
        env[NATIVE_ENV] = "0"
    if module != "ksmreplay":  # a helper of the tests
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    if spawn:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        process = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_fd,
            stderr=err_fd,
            preexec_fn=lambda: _set_limits(limits),
        )
        process.returncode = 0  # reaped by the caller with wait4, not by Popen
        return process.pid
    _prepare_fork()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.chdir(cwd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.environ.clear()
        os.environ.update(env)
        _set_limits(limits)
        code = _child_main(argv, module)
    finally:
        os._exit(code)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Failure:
    """One thing a mutant made go wrong.

    :ivar kind: ``traceback``, ``warning``, ``memory``, ``hang``, ``crash``,
        ``status``, ``stderr``, ``disagree`` or ``leftover``.
    :ivar command: the command (or the pair of commands) and the input form.
    :ivar detail: what identifies the failure beyond kind and command (an
        exception name, a signal, the two statuses).
    :ivar message: what happened, for people.
    """

    kind: str
    command: str
    detail: str
    message: str

    @property
    def signature(self) -> str:
        return f"{self.kind}|{self.command}|{self.detail}"


_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Exception ignored")
_EXCEPTION = re.compile(r"\b_?[A-Z][A-Za-z]*(?:Error|Exception|Interrupt|Exit)\b")
_WARNING = re.compile(r"\b[A-Z][A-Za-z]*Warning\b")
_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|Unable to allocate")


def _exception_name(stderr: str) -> str:
    for line in reversed(stderr.strip().splitlines()):
        m = re.match(r"^([\w.]+(?:Error|Exception|Warning|Exit|Interrupt))\b", line)
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    m = _EXCEPTION.search(stderr) or _WARNING.search(stderr)
    return m.group(0) if m else "?"


def command_problem(command: str, o: Outcome) -> Failure | None:
    """The failure of one outcome on its own, or None when it ended cleanly."""
    text = o.summary()
    if o.timed_out or o.signal == signal.SIGXCPU:
        return Failure("hang", command, "", text)
    if _MEMORY.search(o.stderr):
        return Failure("memory", command, _exception_name(o.stderr), text)
    if o.signal is not None:
        return Failure("crash", command, signal.Signals(o.signal).name, text)
    if _TRACEBACK.search(o.stderr) or _EXCEPTION.search(o.stderr):
        return Failure("traceback", command, _exception_name(o.stderr), text)
    if _WARNING.search(o.stderr):
        return Failure("warning", command, _exception_name(o.stderr), text)
    if o.maxrss > RSS_LIMIT:
        return Failure("memory", command, "rss", text)
    if o.warnings and command.split(" ")[0] not in RUN_VERBS:
        return Failure("stderr", command, "a warning from a command that has none", text)
    allowed = OK_STATUSES | {RESOURCES} if command.split(" ")[0] in RUN_VERBS else OK_STATUSES
    if o.status not in allowed:
        return Failure("status", command, str(o.status), text)
    if o.status == 0 and o.stderr:
        return Failure("stderr", command, "output on success", text)
    lines = o.stderr.splitlines()
    if o.status != 0 and (len(lines) != 1 or not lines[0].startswith("ksmreplay: ")):
        return Failure("stderr", command, "not one line", text)
    return None


def _event_of(message: str) -> str:
    m = re.search(r": event (\d+)", message)
    return m.group(1) if m else message


_ROOM = re.compile(r"only [\d.]+ [KMGTP]?i?B may be taken")


def _message(o: Outcome) -> str:
    """What ``o`` said on stderr, less what depends on the moment: the memory a refused
    replay had room for (it varies with the process's own size)."""
    return _ROOM.sub("only ... may be taken", o.stderr) if o.status == RESOURCES else o.stderr


_ENCODING_WORDS = re.compile(r"msgpack|JSON|UTF-8|this reader's limit|truncated|nested too deeply")


@dataclass
class Check:
    """The outcomes of one mutant's commands and the failures they show."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def clean(self, command: str) -> Outcome | None:
        o = self.outcomes.get(command)
        return o if o is not None and command_problem(command, o) is None else None

    def agree(self, first: str, second: str, same_output: bool = False) -> None:
        """``second`` fails exactly when ``first`` does, with the same message; a ``run``
        may also refuse, with :data:`RESOURCES`, a trace that ``first``, not a ``run``,
        accepts (two runs of one trace must agree on that too)."""
        a, b = self.clean(first), self.clean(second)
        if a is None or b is None:
            return
        if b.status == RESOURCES and a.status == 0 and first.split(" ")[0] not in RUN_VERBS:
            return
        if a.status != b.status or (a.status != 0 and _message(a) != _message(b)):
            self.failures.append(
                Failure(
                    "disagree",
                    f"{first} / {second}",
                    f"{a.status} vs {b.status}",
                    f"{first}: {a.summary()}; {second}: {b.summary()}",
                )
            )
        elif same_output and a.stdout_hash != b.stdout_hash:
            self.failures.append(
                Failure(
                    "disagree",
                    f"{first} / {second}",
                    "stdout",
                    f"{first} and {second} print different output "
                    f"({a.stdout[:200]!r} vs {b.stdout[:200]!r})",
                )
            )

    def twins(self, first: str, second: str) -> None:
        """The msgpack and JSON-lines forms of one trace: same status and result."""
        a, b = self.clean(first), self.clean(second)
        if a is None or b is None:
            return
        if a.status != b.status:
            detail = f"{a.status} vs {b.status}"
        elif a.status == 0 and a.stdout_hash != b.stdout_hash:
            detail = "stdout"
        elif a.status != 0 and _message(a) != _message(b):
            if _ENCODING_WORDS.search(a.stderr + b.stderr):
                if _event_of(a.stderr) == _event_of(b.stderr):
                    return
                detail = "event"
            else:
                detail = "message"
        else:
            return
        self.failures.append(
            Failure(
                "disagree",
                f"{first} / {second}",
                detail,
                f"{first}: {a.summary()}; {second}: {b.summary()}",
            )
        )


RUN_ARGS = ["run", "--mode", "all", "--format", "json", "trace"]
_STALLS = ("hang", "memory", "crash")


def needed_commands(signature: str) -> set[str]:
    """The commands a failure signature needs (and those its checks compare with)."""
    names = signature.split("|")[1].split(" / ")
    needed = set(names)
    for name in names:
        verb, _, form = name.partition(" ")
        needed.add(f"validate {form}")
        if verb in ("validate-out", "run-out"):
            needed.update({f"convert {form}", f"run {form}"})
    return needed


SNAPSHOTS_PER_CPU_SECOND = 2000
"""Snapshots of one mode's run that a CPU second may write: each is a few KiB
of indented JSON, about 0.15 ms apiece on this project's machine (100,000
snapshots of a 4,000-page trace in three modes: 43 s), so this leaves room for
a slower machine and a larger report."""

SCALAR_CPU_FACTOR = 3
"""The scalar path (no native core) may take this many times the CPU limit: it
is the slow fallback of an install without a C compiler, a few times slower
than the native core on traces of many pages; a hang exceeds any factor."""


FLAT_OUT_CPU_PER_SECOND = 3
"""CPU seconds ``run --mode all`` may take per second of trace time in which
ksmd runs with ``sleep_millisecs=0``: it then scans back to back, as many
visits as its modelled cost allows (millions a second).  Sized when the v6
mode replayed them on the scalar walk (some 2 us a visit); every mode runs on
the native core now, and the scalar path has :data:`SCALAR_CPU_FACTOR`."""


EVENTS_PER_CPU_SECOND = 5000
"""Events ``run --mode all`` may replay per CPU second beyond the first
:data:`CPU_SECONDS`: an event that cannot join a run of writes (a write
and a read of one page, over and over) costs some 80 us in each mode,
reading and validating included."""

WRITTEN_PAGES_PER_CPU_SECOND = 10_000
"""Pages written that ``run --mode all`` may settle per CPU second: each is
visited a few times until the counters settle (sized when the v6 mode visited
on the scalar walk, some 10 us a visit). One content in many pages takes longer: it
makes a stable node chain whose dups each visit looks through, as Linux's
does (262,144 pages of one content: 1,024 dups, 26 s in three modes)."""


DECLARED_MAX_SECONDS = 120
"""The most CPU seconds one kind of declared work (ksmd flat out, pages written)
adds to a mutant's limit, so that a hang still ends."""

FLAT_OUT_ENDLESS_NS = 10**14
"""Trace time (ns, a day and more) of ksmd flat out past which a replay that
does not end within the limits is not a hang: the work is declared.  Such a
stretch is skipped by circles where ksmd goes round in them, but not where a
stable node chain is looked at in every pass: its prunes then come at no
repeating place in the passes, and each costs some twenty passes (README,
"How fast"); centuries of them do not end."""


def _written_pages(objects: list[Any]) -> int:
    """The pages the ``write`` events of ``objects`` declare (a page per 4 KiB)."""
    total = 0
    for obj in objects[1:]:
        if isinstance(obj, list) and len(obj) >= 5 and obj[1] == "write" and type(obj[4]) is int:
            total += max(obj[4], 0) // PAGE
    return total


def _flat_out_ns(objects: list[Any]) -> int:
    """Trace time (ns) during which ksmd runs with ``sleep_millisecs=0``."""
    run, sleep, last, total = 0, 20, None, 0
    for obj in objects[1:]:
        if not (isinstance(obj, list) and len(obj) >= 2 and type(obj[0]) is int):
            continue
        t = obj[0]
        if last is not None and run == 1 and sleep == 0 and t > last:
            total += t - last
        last = t if last is None else max(last, t)
        if obj[1] == "ksm" and len(obj) > 2 and isinstance(obj[2], dict):
            run = obj[2].get("run", run) if type(obj[2].get("run", run)) is int else run
            value = obj[2].get("sleep_millisecs", sleep)
            sleep = value if type(value) is int else sleep
    return total


def declares_endless(mutant: Mutant) -> bool:
    """Whether ``mutant`` declares ksmd flat out for :data:`FLAT_OUT_ENDLESS_NS` or more."""
    return mutant.objects is not None and _flat_out_ns(mutant.objects) >= FLAT_OUT_ENDLESS_NS


def declared_limits(mutant: Mutant, limits: Limits) -> Limits:
    """``limits`` with room for the work ``mutant`` declares.

    The report grows with its snapshots in every mode ``run --mode all``
    replays, so a second of CPU more per :data:`SNAPSHOTS_PER_CPU_SECOND` of
    them (a trace of 100,000 snapshots is no hang; a mutant damaged byte by
    byte counts the word ``snapshot`` in its bytes); ksmd running flat
    out declares its visits: :data:`FLAT_OUT_CPU_PER_SECOND` per second of it;
    and a second more per :data:`EVENTS_PER_CPU_SECOND` events and per
    :data:`WRITTEN_PAGES_PER_CPU_SECOND` pages written.
    """
    from ksmreplay.ksm.modes import MODES

    if mutant.objects is None:
        snapshots = max((data.count(b"snapshot") for data in mutant.forms.values()), default=0)
        flat_out = 0
    else:
        snapshots = sum(
            1 for obj in mutant.objects[1:] if isinstance(obj, list) and obj[1:2] == ["snapshot"]
        )
        flat_out = min(
            -(-_flat_out_ns(mutant.objects) * FLAT_OUT_CPU_PER_SECOND // 10**9),
            DECLARED_MAX_SECONDS,
        )
    more = -(-snapshots * len(MODES) // SNAPSHOTS_PER_CPU_SECOND) + flat_out
    if mutant.objects is None:  # (damaged: a JSON-lines form's lines are its events)
        more += mutant.forms.get("jsonl", b"").count(b"\n") // EVENTS_PER_CPU_SECOND
    else:
        more += len(mutant.objects) // EVENTS_PER_CPU_SECOND
        more += min(
            _written_pages(mutant.objects) // WRITTEN_PAGES_PER_CPU_SECOND, DECLARED_MAX_SECONDS
        )
    return replace(limits, cpu=limits.cpu + more, wall=limits.wall + 3 * more)


def check_mutant(
    mutant: Mutant,
    workdir: Path,
    limits: Limits = Limits(),
    spawn: bool = False,
    only: set[str] | None = None,
) -> Check:
    """Run every command on ``mutant`` in ``workdir`` (emptied first); the failures found.

    The first form (msgpack when there are both) gets every command; the
    second, its twin, only those that compare the two.  Once a ``run`` hangs
    or blows up, no further replay of the mutant is started (they would do the
    same).  ``only`` restricts the commands (for minimising).
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    limits = declared_limits(mutant, limits)
    endless = declares_endless(mutant)
    check = Check()
    stalled = False

    def do(name: str, form_dir: str, argv: list[str], native: bool = True) -> Outcome | None:
        nonlocal stalled
        if only is not None and name not in only:
            return None
        if stalled and argv[0] == "run":
            return None
        mine = limits
        if not native:
            mine = replace(
                limits, cpu=limits.cpu * SCALAR_CPU_FACTOR, wall=limits.wall * SCALAR_CPU_FACTOR
            )
        o = run_command(argv, workdir / form_dir, native, mine, spawn)
        problem = command_problem(name, o)
        if problem is not None and problem.kind == "hang" and endless and argv[0] == "run":
            stalled = True  # (declared work: not a hang, nor an outcome to compare)
            return None
        check.outcomes[name] = o
        if problem is not None:
            check.failures.append(problem)
            stalled = stalled or (argv[0] == "run" and problem.kind in _STALLS)
        return o

    forms = [form for form in FORMS if form in mutant.forms]
    for form in forms:
        (workdir / form).mkdir()
        (workdir / form / "trace").write_bytes(mutant.forms[form])
    for k, form in enumerate(forms):
        first = k == 0
        other = "jsonl" if form == "msgpack" else "msgpack"
        out_dir = f"{form}-to-{other}"
        (workdir / out_dir).mkdir()
        v = f"validate {form}"
        do(v, form, ["validate", "trace"])
        if form == "msgpack":
            do(f"validate-pure {form}", form, ["validate", "trace"], native=False)
            check.agree(v, f"validate-pure {form}", same_output=True)
        do(f"run {form}", form, RUN_ARGS)
        check.agree(v, f"run {form}")
        if first:
            do(f"run-pure {form}", form, RUN_ARGS, native=False)
            check.agree(f"run {form}", f"run-pure {form}", same_output=True)
            do(f"inspect {form}", form, ["inspect", "--format", "json", "trace"])
            check.agree(v, f"inspect {form}")
        c = do(f"convert {form}", form, ["convert", "trace", f"../{out_dir}/trace", "--to", other])
        if c is None:
            continue
        check.agree(v, f"convert {form}")
        left = sorted(p.name for p in (workdir / out_dir).iterdir())
        ended = check.clean(f"convert {form}") is not None  # (a killed one cannot clean up)
        if ended and (left not in ([], ["trace"]) or (c.status != 0 and left)):
            check.failures.append(
                Failure(
                    "leftover",
                    f"convert {form}",
                    "",
                    f"convert exited {c.status} and left {left} where it writes",
                )
            )
        if c.status == 0 and check.clean(f"convert {form}"):
            vo = do(f"validate-out {form}", out_dir, ["validate", "trace"])
            if vo is not None and check.clean(f"validate-out {form}") and vo.status != 0:
                check.failures.append(
                    Failure(
                        "disagree",
                        f"convert {form} / validate-out {form}",
                        f"0 vs {vo.status}",
                        f"convert wrote a trace its reader refuses: {vo.summary()}",
                    )
                )
            else:
                check.agree(v, f"validate-out {form}", same_output=True)
            if len(forms) == 1:  # (a twin's replay is compared already)
                do(f"run-out {form}", out_dir, RUN_ARGS)
                check.agree(f"run {form}", f"run-out {form}", same_output=True)
    if len(forms) == 2:
        check.twins("validate msgpack", "validate jsonl")
        check.twins("run msgpack", "run jsonl")
    # One failure per signature and mutant.
    seen: set[str] = set()
    check.failures = [
        f for f in check.failures if not (f.signature in seen or seen.add(f.signature))
    ]
    return check


# --------------------------------------------------------------------------- minimising


def minimise(
    mutant: Mutant,
    signature: str,
    workdir: Path,
    limits: Limits = Limits(),
    tries: int = 60,
) -> Mutant:
    """A smaller mutant that still fails with ``signature`` (delta debugging, ``tries`` checks)."""
    budget = [tries]
    only = needed_commands(signature)

    def fails(candidate: Mutant) -> bool:
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        check = check_mutant(candidate, workdir, limits, only=only)
        return any(f.signature == signature for f in check.failures)

    if mutant.objects is not None:
        objects = mutant.objects
        header, events = objects[0], list(objects[1:])

        def build(evs: list[Any], head: Any = header) -> Mutant | None:
            return mutant_from_objects(mutant, [head, *evs])

        events = ddmin(events, lambda evs: (m := build(evs)) is not None and fails(m))
        if isinstance(header, dict):
            for key in ("description", "meta", "page_size"):
                if key in header:
                    smaller = {k: v for k, v in header.items() if k != key}
                    m = build(events, smaller)
                    if m is not None and fails(m):
                        header = smaller
        result = build(events, header)
        return result if result is not None else mutant
    (form, data), *_ = mutant.forms.items()

    def build_bytes(chunks: list[bytes]) -> Mutant:
        return Mutant(mutant.seed, mutant.index, mutant.origin, mutant.steps, None,
                      {form: b"".join(chunks)})  # fmt: skip

    size = max(1, len(data) // 64)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    chunks = ddmin(chunks, lambda cs: fails(build_bytes(cs)))
    return build_bytes(chunks)


def ddmin(items: list[Any], fails: Callable[[list[Any]], bool]) -> list[Any]:
    """A smaller list for which ``fails`` still holds (simplified delta debugging)."""
    n = 2
    while len(items) >= 2:
        size = math.ceil(len(items) / n)
        for start in range(0, len(items), size):
            rest = items[:start] + items[start + size :]
            if fails(rest):
                items = rest
                n = max(n - 1, 2)
                break
        else:
            if n >= len(items):
                break
            n = min(len(items), 2 * n)
    return items


# --------------------------------------------------------------------------- saving


def slug(signature: str) -> str:
    """A file name for a failure signature."""
    text = re.sub(r"[^A-Za-z0-9]+", "-", signature).strip("-").lower()
    return text[:80]


CASE_FILE_BYTES = 4096
"""The largest file a saved case may have: a larger trace is saved as a recipe."""
_RUN_MIN = 16
"""Items a repeated run of a list must cover to be written as one ``$repeat``."""


def expand(value: Any) -> Any:
    """A recipe (the ``objects`` of a saved case) made whole.

    ``{"$repeat": S, "times": N}`` is the str ``S`` N times over; as an item of a
    list, ``{"$repeat": [ITEMS], "times": N}`` stands for ``ITEMS`` N times over;
    ``{"$numbered": P, "count": N}`` is the map ``{P0: 0, P1: 1, ...}`` of N
    entries; ``{"$bin": B64}`` is bytes.  Anything else is itself.
    """
    if isinstance(value, dict):
        if "$repeat" in value:
            if not isinstance(value["$repeat"], str):
                raise ValueError("a $repeat of items stands only in a list")
            return value["$repeat"] * value["times"]
        if "$numbered" in value:
            return {f"{value['$numbered']}{i}": i for i in range(value["count"])}
        if "$bin" in value:
            return base64.b64decode(value["$bin"])
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("$repeat"), list):
                unit = item["$repeat"]
                for _ in range(item["times"]):
                    out.extend(expand(x) for x in unit)
            else:
                out.append(expand(item))
        return out
    return value


def _str_unit(text: str) -> str | None:
    for n in range(1, 9):
        if len(text) % n == 0 and text[:n] * (len(text) // n) == text:
            return text[:n]
    return None


def compact(value: Any) -> Any:
    """A recipe of ``value`` (see :func:`expand`): long repetitive strs, runs of
    repeated items and numbered maps written short."""
    if isinstance(value, str):
        unit = _str_unit(value) if len(value) >= 64 else None
        return {"$repeat": unit, "times": len(value) // len(unit)} if unit else value
    if isinstance(value, (bytes, bytearray)):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        n = len(value)
        if n >= 64 and all(isinstance(k, str) for k in value):
            prefix = next(iter(value))[:-1]
            if list(value.items()) == [(f"{prefix}{i}", i) for i in range(n)]:
                return {"$numbered": prefix, "count": n}
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        keys = [repr(item) for item in value]  # (repr tells True from 1 from 1.0)
        out: list[Any] = []
        i = 0
        while i < len(value):
            best = (1, 1)  # (period, times)
            for period in range(1, 9):
                unit = keys[i : i + period]
                times = 1
                while keys[i + times * period : i + (times + 1) * period] == unit:
                    times += 1
                if period * times > best[0] * best[1] and len(unit) == period:
                    best = (period, times)
            period, times = best
            if period * times >= _RUN_MIN and times > 1:
                out.append({"$repeat": [compact(x) for x in value[i : i + period]], "times": times})
                i += period * times
            else:
                out.append(compact(value[i]))
                i += 1
        return out
    return value


def _recipe_of(objects: list[Any], forms: dict[str, bytes]) -> Any | None:
    """A recipe that gives back exactly ``forms`` through JSON, or None."""
    recipe = compact(objects)
    try:
        again = expand(json.loads(json.dumps(recipe)))
    except ValueError:
        return None
    if any(encode(again, form) != data for form, data in forms.items()):
        return None
    return recipe


def save_case(directory: Path, name: str, mutant: Mutant, failure: Failure, **extra: Any) -> Path:
    """Write ``mutant`` and what went wrong as ``NAME.json`` plus its trace file(s), or as
    ``NAME.json`` alone with a recipe of the objects when a trace file would be over
    :data:`CASE_FILE_BYTES` (and the recipe gives the same bytes back)."""
    directory.mkdir(parents=True, exist_ok=True)
    recipe = None
    if mutant.objects is not None and max(map(len, mutant.forms.values())) > CASE_FILE_BYTES:
        recipe = _recipe_of(mutant.objects, mutant.forms)
    if recipe is None:
        for form, data in mutant.forms.items():
            (directory / f"{name}.{form}").write_bytes(data)
    meta = {
        "signature": failure.signature,
        "kind": failure.kind,
        "command": failure.command,
        "detail": failure.detail,
        "what happened": failure.message,
        "mutant": f"{mutant.seed}:{mutant.index}",
        "origin": mutant.origin,
        "steps": mutant.steps,
        "forms": sorted(mutant.forms),
        **extra,
    }
    if recipe is not None:
        meta["objects"] = recipe
    path = directory / f"{name}.json"
    path.write_text(_case_text(meta))
    return path


def _case_text(meta: dict[str, Any]) -> str:
    """``meta`` as JSON, one item of its ``objects`` (a recipe) a line."""
    objects = meta.get("objects")
    text = json.dumps({k: v for k, v in meta.items() if k != "objects"}, indent=2)
    if objects is None:
        return text + "\n"
    lines = ",\n".join(f"    {json.dumps(obj)}" for obj in objects)
    return f'{text[:-2]},\n  "objects": [\n{lines}\n  ]\n}}\n'


def load_case(meta_path: Path) -> tuple[dict[str, Any], Mutant]:
    """A saved case: its description and the mutant (its forms as saved, or made from
    its recipe)."""
    meta = json.loads(meta_path.read_text())
    stem = meta_path.name[: -len(".json")]
    seed, _, index = str(meta.get("mutant", "0:0")).partition(":")
    objects = None
    if "objects" in meta:
        objects = expand(meta["objects"])
        forms = {}
        for form in meta["forms"]:
            data = encode(objects, form)
            if data is None:
                raise ValueError(f"{meta_path}: the recipe cannot be written as {form}")
            forms[form] = data
    else:
        forms = {
            form: (meta_path.parent / f"{stem}.{form}").read_bytes()
            for form in FORMS
            if (meta_path.parent / f"{stem}.{form}").exists()
        }
    mutant = Mutant(int(seed), int(index or 0), stem, meta.get("steps", []), objects, forms)
    return meta, mutant


def compact_case(meta_path: Path) -> bool:
    """Rewrite a saved case with trace files as a recipe (its files removed), when the
    files are one structured trace the recipe gives back exactly; whether it did."""
    meta, mutant = load_case(meta_path)
    if "objects" in meta or "msgpack" not in mutant.forms:
        return False
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2**30)
    unpacker.feed(mutant.forms["msgpack"])
    try:
        objects = list(unpacker)
    except ValueError:
        return False
    recipe = _recipe_of(objects, mutant.forms)
    if recipe is None:
        return False
    meta["objects"] = recipe
    meta_path.write_text(_case_text(meta))
    for form in mutant.forms:
        meta_path.with_suffix(f".{form}").unlink()
    return True


# --------------------------------------------------------------------------- the run


_WORKDIR: Path | None = None


def _worker_dir() -> Path:
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = Path(tempfile.mkdtemp(prefix="ksmreplay-fuzz."))
        atexit.register(shutil.rmtree, _WORKDIR, True)
    return _WORKDIR


PR_SET_PDEATHSIG = 1


def _end_worker(signum: int, _frame: object) -> None:
    """A worker's SIGTERM: remove its work directory and exit at once (an
    exception would be taken for the task's outcome and the worker go on)."""
    if _WORKDIR is not None:
        shutil.rmtree(_WORKDIR, ignore_errors=True)
    os._exit(128 + signum)


def _init_worker() -> None:
    # A worker ends with the fuzzer however the fuzzer ends (a SIGKILL too).
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    signal.signal(signal.SIGTERM, _end_worker)
    _prepare_fork()
    load_seeds()


@dataclass
class Result:
    """What one mutant's check found (sent back from a worker)."""

    index: int
    size: int
    commands: int
    seconds: float
    failures: list[Failure]


def fuzz_one(seed: int, index: int, limits: Limits) -> Result:
    """Make and check mutant ``index`` of ``seed`` (in a worker)."""
    mutant = make_mutant(seed, index)
    start = time.monotonic()
    check = check_mutant(mutant, _worker_dir() / "m", limits)
    return Result(index, mutant.size, len(check.outcomes), time.monotonic() - start, check.failures)


def check_case(meta_path: str, limits: Limits) -> Check:
    """Check a saved case (in a worker): the outcomes and the failures found."""
    _, mutant = load_case(Path(meta_path))
    return check_mutant(mutant, _worker_dir() / "case", limits)


def confirm(seed: int, index: int, signature: str, limits: Limits) -> bool:
    """Whether the failure is also there with ``sys.executable -m ksmreplay`` (in a worker)."""
    mutant = make_mutant(seed, index)
    check = check_mutant(mutant, _worker_dir() / "confirm", limits, spawn=True)
    return any(f.signature == signature for f in check.failures)


def minimise_one(seed: int, index: int, signature: str, limits: Limits, tries: int) -> Mutant:
    """Mutant ``index`` of ``seed`` made smaller for ``signature`` (in a worker)."""
    return minimise(make_mutant(seed, index), signature, _worker_dir() / "min", limits, tries)


def pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes, each a fresh interpreter that imported ksmreplay once."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
    )


@dataclass
class Campaign:
    """The outcome of a fuzzing run."""

    seed: int
    results: list[Result]
    seconds: float

    def failures(self) -> dict[str, list[tuple[Result, Failure]]]:
        """Every failure, by signature (mutants in index order)."""
        out: dict[str, list[tuple[Result, Failure]]] = {}
        for r in sorted(self.results, key=lambda r: r.index):
            for f in r.failures:
                out.setdefault(f.signature, []).append((r, f))
        return out


def fuzz(
    seed: int,
    count: int,
    jobs: int,
    limits: Limits = Limits(),
    deadline: float | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    executor: concurrent.futures.ProcessPoolExecutor | None = None,
) -> Campaign:
    """Check mutants ``0..count-1`` of ``seed`` on ``jobs`` workers.

    With ``deadline`` (seconds), no mutant is started after it; the mutants
    run are then a prefix-like subset of the same sequence.
    """
    start = time.monotonic()
    own = executor is None
    ex = executor if executor is not None else pool(jobs)
    results: list[Result] = []
    try:
        pending: set[concurrent.futures.Future[Result]] = set()
        next_index = 0
        while next_index < count or pending:
            late = deadline is not None and time.monotonic() - start > deadline
            while next_index < count and len(pending) <= jobs and not late:
                pending.add(ex.submit(fuzz_one, seed, next_index, limits))
                next_index += 1
            if not pending:
                break
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                results.append(future.result())
            if progress is not None:
                progress(len(results), count, sum(1 for r in results if r.failures))
    finally:
        if own:
            ex.shutdown(cancel_futures=True)
    return Campaign(seed, results, time.monotonic() - start)


def known_signatures(directory: Path = CASES_DIR) -> dict[str, str]:
    """Signatures of the saved cases still marked to fail (``xfail``), with the reason."""
    known = {}
    for path in sorted(directory.glob("*.json")):
        meta = json.loads(path.read_text())
        if meta.get("xfail"):
            for sig in [meta["signature"], *meta.get("also", [])]:
                known[sig] = meta["xfail"]
    return known


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=10_000, help="mutants to run")
    parser.add_argument("--seed", type=int, default=0, help="run seed (same seed, same mutants)")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"), help="where failures go")
    parser.add_argument("--cpu-seconds", type=int, default=CPU_SECONDS)
    parser.add_argument("--memory-mib", type=int, default=MEMORY_LIMIT >> 20)
    parser.add_argument("--minimise-tries", type=int, default=60, help="0: do not minimise")
    parser.add_argument("--no-confirm", action="store_true", help="skip the check by spawning")
    parser.add_argument(
        "--seconds", type=float, help="start no mutant after this many seconds (a time budget)"
    )
    parser.add_argument("--replay", type=Path, help="check one saved case (NAME.json) and exit")
    parser.add_argument(
        "--compact", type=Path, nargs="+", help="rewrite saved cases (NAME.json) as recipes"
    )
    args = parser.parse_args()
    if args.compact:
        for path in args.compact:
            print(f"{path}: {'recipe' if compact_case(path) else 'left as it is'}")
        return 0
    limits = Limits(args.cpu_seconds, 3 * args.cpu_seconds + 10, args.memory_mib << 20)
    if args.replay is not None:
        _prepare_fork()
        failures = check_case(str(args.replay), limits).failures
        for f in failures:
            print(f"{f.kind:10} {f.command:40} {f.detail:20} {f.message}")
        print("no failure" if not failures else f"{len(failures)} failures")
        return 1 if failures else 0

    shown = [0]

    def progress(done: int, total: int, failing: int) -> None:
        if done // 100 > shown[0] // 100 or done == total:
            shown[0] = done
            print(f"\r{done}/{total} mutants, {failing} failing", end="", file=sys.stderr)

    with pool(args.jobs) as ex:
        campaign = fuzz(
            args.seed, args.count, args.jobs, limits, args.seconds, progress, executor=ex
        )
        print(file=sys.stderr)
        by_signature = campaign.failures()
        known = known_signatures()
        # The smallest instance of each signature: confirmed by spawning, minimised, saved.
        picks = {sig: min(items, key=lambda rf: rf[0].size) for sig, items in by_signature.items()}
        confirmed: dict[str, concurrent.futures.Future[bool]] = {}
        if not args.no_confirm:
            for sig, (r, _) in picks.items():
                confirmed[sig] = ex.submit(confirm, args.seed, r.index, sig, limits)
        smaller: dict[str, concurrent.futures.Future[Mutant]] = {}
        for sig, (r, f) in picks.items():
            # A hang costs its whole CPU limit per try: few tries, a lower limit.
            costly = f.kind in ("hang", "memory")
            tries = min(args.minimise_tries, 12) if costly else args.minimise_tries
            mlimits = Limits(min(limits.cpu, 3), limits.wall, limits.memory) if costly else limits
            smaller[sig] = ex.submit(minimise_one, args.seed, r.index, sig, mlimits, tries)
        if args.out.exists():
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True)
        rows = []
        for sig, items in sorted(by_signature.items()):
            r, f = picks[sig]
            mutant = smaller[sig].result()
            status = "confirmed" if args.no_confirm or confirmed[sig].result() else "NOT confirmed"
            name = slug(sig)
            save_case(args.out, name, mutant, f, mutants=len(items), confirmed=status)
            rows.append((sig, len(items), name, mutant.size, status, f.message))
    commands = sum(r.commands for r in campaign.results)
    cpu = sum(r.seconds for r in campaign.results)
    print(
        f"mutants run: {len(campaign.results)} of {args.count} (seed {args.seed}"
        f"{f', time budget {args.seconds:.0f} s' if args.seconds else ''}), commands: {commands}, "
        f"{campaign.seconds:.0f} s ({cpu:.0f} s in checks)"
    )
    kinds: dict[str, int] = {}
    for sig, items in by_signature.items():
        kinds[sig.split("|")[0]] = kinds.get(sig.split("|")[0], 0) + len(items)
    failing = sum(1 for r in campaign.results if r.failures)
    print(f"mutants failing: {failing}")
    print(
        "failures by kind: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")
    )
    for sig, n, name, size, status, message in rows:
        mark = " (known: a saved case expects it)" if sig in known else ""
        print(f"  {sig}: {n} mutants{mark}, {status}")
        print(f"      {args.out / name}.json ({size} bytes): {message[:300]}")
    summary = {
        "seed": args.seed,
        "mutants": len(campaign.results),
        "commands": commands,
        "seconds": round(campaign.seconds, 1),
        "failing mutants": failing,
        "failures": {sig: n for sig, n, *_ in rows},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if by_signature else 0


if __name__ == "__main__":
    sys.exit(_main())
