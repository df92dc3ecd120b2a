"""The fuzzer (``tests/fuzzer.py``): its own checks, a short run, and the saved cases it found.

``test_short_fuzz_run`` is marked ``fuzz`` (``pytest -m "not fuzz"`` leaves it
out); it runs by default, for about 30 seconds.  ``make fuzz`` runs the long
campaign.  Every case in ``tests/fuzz_cases/`` is a trace that once made a
command fail (its trace files, or a recipe in ``NAME.json`` for a large one);
it must now pass every check of the fuzzer and end as ``expect``, ``run`` and
``message`` say.  A case whose ``xfail`` field is set still fails on this
code (strict: the test errs once it passes, so that the field is removed with
the fix), and the short run tolerates the failures those cases stand for.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzzer
import msgpack
import pytest

from ksmreplay.ksm.modes import MODES

CASE_FILES = sorted(fuzzer.CASES_DIR.glob("*.json"))
SHORT_SEED = 0
SHORT_COUNT = 400
SHORT_SECONDS = 25.0
"""The short run starts no mutant after this long (it stops earlier when all are done)."""
SHORT_MIN_MUTANTS = 8
CASE_LIMITS = fuzzer.Limits(cpu=2, wall=30)
SHORT_LIMITS = fuzzer.Limits(cpu=fuzzer.CPU_SECONDS, wall=30)
"""As ``make fuzz`` gives: a mutant of 5,000 small mappings takes 3 s of CPU in
all modes, more on a loaded machine; a hang takes any limit."""


@pytest.fixture(scope="module")
def workers() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    with fuzzer.pool(2) as executor:
        yield executor


# --------------------------------------------------------------------------- the fuzzer itself


def test_the_same_seed_gives_the_same_mutants() -> None:
    first = [fuzzer.make_mutant(2, index) for index in range(8)]
    again = [fuzzer.make_mutant(2, index) for index in reversed(range(8))][::-1]
    assert [(m.forms, m.steps, m.origin) for m in first] == [
        (m.forms, m.steps, m.origin) for m in again
    ]
    assert [m.forms for m in first] != [fuzzer.make_mutant(3, i).forms for i in range(8)]


def test_mutants_cover_both_forms_and_every_mutator() -> None:
    forms: set[tuple[str, ...]] = set()
    names: set[str] = set()
    for index in range(300):
        mutant = fuzzer.make_mutant(11, index)
        assert mutant.forms and all(isinstance(d, bytes) for d in mutant.forms.values())
        forms.add(tuple(sorted(mutant.forms)))
        names.update(step.split(":")[0] for step in mutant.steps)
        if len(forms) == 3 and {"msgpack", "jsonl"} <= names:
            break
    assert forms == {("jsonl", "msgpack"), ("msgpack",), ("jsonl",)}
    assert {"msgpack", "jsonl"} <= names  # byte mutations of either form


@pytest.mark.parametrize("mutator", [m for m, _ in fuzzer.STRUCTURED], ids=lambda m: m.__name__)
def test_each_mutator_changes_a_trace(mutator: fuzzer.Callable[[fuzzer._State], str]) -> None:
    seeds = fuzzer.load_seeds()
    rng = random.Random(3)
    changed = 0
    for k in range(20):
        seed = seeds[k % len(seeds)]
        objects = fuzzer.copy_objects(list(seed.objects[:100]))
        state = fuzzer._State(rng, objects, seeds)
        assert isinstance(mutator(state), str)
        changed += state.objects != list(seed.objects[:100])
    assert changed >= 10


@pytest.mark.parametrize("mutator", [m for m, _ in fuzzer.BYTEWISE], ids=lambda m: m.__name__)
def test_each_byte_mutator_changes_the_bytes(
    mutator: fuzzer.Callable[[bytearray, random.Random, str], str],
) -> None:
    seed = fuzzer.load_seeds()[0]
    form = "jsonl" if mutator is fuzzer.b_json else "msgpack"
    original = fuzzer.encode(list(seed.objects[:50]), form)
    assert original is not None
    rng = random.Random(4)
    changed = 0
    for _ in range(20):
        data = bytearray(original)
        mutator(data, rng, form)
        changed += bytes(data) != original
    assert changed >= 15


def test_encoders_write_deep_nesting_and_refuse_what_a_form_cannot_carry() -> None:
    objects = [{"ksmreplay": 1, "meta": {"d": fuzzer.deep(3, "a")}}, [0, "snapshot", "s"]]
    assert fuzzer.encode(objects, "msgpack") == (
        msgpack.packb({"ksmreplay": 1, "meta": {"d": [[[None]]]}}) + msgpack.packb(objects[1])
    )
    assert fuzzer.encode(objects, "jsonl") == (
        b'{"ksmreplay": 1, "meta": {"d": [[[null]]]}}\n[0, "snapshot", "s"]\n'
    )
    assert fuzzer.encode([{"ksmreplay": 1}, [2**64, "snapshot", "s"]], "msgpack") is None
    assert fuzzer.encode([{"ksmreplay": 1, "meta": {1: 2}}], "jsonl") is None
    assert fuzzer.encode([{"ksmreplay": 1, "description": b"d"}], "jsonl") is None
    write = [0, "write", 1, 0, 3, b"abc"]
    assert fuzzer.encode([{"ksmreplay": 1}, write], "jsonl") == (
        b'{"ksmreplay": 1}\n[0, "write", 1, 0, 3, {"b64": "YWJj"}]\n'
    )


def _outcome(status: int | None = 0, stderr: str = "", **kw: object) -> fuzzer.Outcome:
    values: dict[str, object] = {
        "status": status,
        "signal": None,
        "timed_out": False,
        "stdout": b"",
        "stdout_hash": "h",
        "stderr": stderr,
        "maxrss": 50 << 20,
        "seconds": 0.1,
    }
    values.update(kw)
    return fuzzer.Outcome(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("outcome", "kind", "detail"),
    [
        (_outcome(0), None, None),
        (_outcome(3, "ksmreplay: t: event 1 (t=0): bad\n"), None, None),
        (
            _outcome(1, "Traceback (most recent call last):\n  ...\nOverflowError: too big\n"),
            "traceback",
            "OverflowError",
        ),
        (
            _outcome(1, "numpy._core._exceptions._ArrayMemoryError: Unable to allocate 1 TiB\n"),
            "memory",
            "_ArrayMemoryError",
        ),
        (_outcome(None, signal=signal.SIGXCPU), "hang", ""),
        (_outcome(None, signal=signal.SIGKILL, timed_out=True), "hang", ""),
        (_outcome(None, signal=signal.SIGSEGV), "crash", "SIGSEGV"),
        (_outcome(0, "x.py:1: RuntimeWarning: overflow\n"), "warning", "RuntimeWarning"),
        (_outcome(4, "ksmreplay: t: cannot read\n"), "status", "4"),
        (_outcome(0, "ksmreplay: a note\n"), "stderr", "output on success"),
        (_outcome(3, "ksmreplay: one\nksmreplay: two\n"), "stderr", "not one line"),
        (_outcome(0, maxrss=fuzzer.RSS_LIMIT + 1), "memory", "rss"),
    ],
)
def test_each_outcome_is_judged(outcome: fuzzer.Outcome, kind: str | None, detail: str) -> None:
    problem = fuzzer.command_problem("run msgpack", outcome)
    assert (problem.kind, problem.detail) == (kind, detail) if problem else kind is None


NO_ROOM = (
    "ksmreplay: event 2 (t=0): write of 1.0 PiB: the replay needs 8.0 TiB more memory, "
    "and only 981.2 MiB may be taken\n"
)


def test_a_run_may_refuse_a_valid_trace_for_want_of_memory() -> None:
    """Exit 6 (one line) is an outcome of ``run`` only; a run that has no room must
    not disagree with ``validate`` accepting the trace, but two runs must agree."""
    for command in ("run msgpack", "run-pure msgpack", "run-out jsonl"):
        assert fuzzer.command_problem(command, _outcome(6, NO_ROOM)) is None
    for command in ("validate msgpack", "inspect jsonl", "convert msgpack"):
        problem = fuzzer.command_problem(command, _outcome(6, NO_ROOM))
        assert problem is not None and (problem.kind, problem.detail) == ("status", "6")
    problem = fuzzer.command_problem("run msgpack", _outcome(6, NO_ROOM + "ksmreplay: more\n"))
    assert problem is not None and (problem.kind, problem.detail) == ("stderr", "not one line")
    problem = fuzzer.command_problem(
        "run msgpack", _outcome(6, "Traceback (most recent call last):\nOverflowError\n")
    )
    assert problem is not None and problem.kind == "traceback"

    check = fuzzer.Check()
    check.outcomes = {
        "validate msgpack": _outcome(0),
        "run msgpack": _outcome(6, NO_ROOM),
        "run-pure msgpack": _outcome(0),
        "validate jsonl": _outcome(3, "ksmreplay: trace: event 2 (t=0): bad\n"),
        "run jsonl": _outcome(6, NO_ROOM),
        "run-out jsonl": _outcome(6, NO_ROOM.replace("981.2 MiB", "1.1 GiB")),
        "run-pure jsonl": _outcome(6, NO_ROOM.replace("8.0", "9.0")),
    }
    check.agree("validate msgpack", "run msgpack")  # valid, no room: fine
    check.agree("run msgpack", "run-pure msgpack", same_output=True)
    check.agree("validate jsonl", "run jsonl")  # invalid, yet run says no room
    check.agree("run jsonl", "run-out jsonl", same_output=True)  # the same refusal, less room
    check.agree("run jsonl", "run-pure jsonl", same_output=True)
    check.twins("run msgpack", "run jsonl")  # (same status and message)
    assert [f.signature for f in check.failures] == [
        "disagree|run msgpack / run-pure msgpack|6 vs 0",
        "disagree|validate jsonl / run jsonl|3 vs 6",
        "disagree|run jsonl / run-pure jsonl|6 vs 6",
    ]


def test_commands_run_with_a_fixed_memory_budget(
    tmp_path: Path, workers: concurrent.futures.ProcessPoolExecutor
) -> None:
    """Whether a replay has room does not depend on the machine's free memory: every
    command gets ``KSMREPLAY_MEMORY`` (256 MiB), below its address-space limit (2 GiB)."""
    trace = tmp_path / "d" / "trace"
    trace.parent.mkdir()
    trace.write_bytes(
        msgpack.packb({"ksmreplay": 1})
        + msgpack.packb([0, "alloc", 1, 0, 2**50])
        + msgpack.packb([0, "write", 1, 0, 2**50, 7])
    )
    for spawn in (False, True):
        future = workers.submit(
            fuzzer.run_command, ["run", "trace"], trace.parent, True, CASE_LIMITS, spawn
        )
        o = future.result()
        assert o.status == fuzzer.RESOURCES, o.summary()
        room = re.search(r"only ([\d.]+) (MiB|GiB) may be taken", o.stderr)
        assert room is not None and o.stderr.count("\n") == 1, o.stderr
        mib = fuzzer.MEMORY_BUDGET >> 20
        assert room.group(2) == "MiB" and mib - 128 < float(room.group(1)) < mib, o.stderr


def test_disagreements_are_found() -> None:
    check = fuzzer.Check()
    check.outcomes = {
        "validate msgpack": _outcome(0),
        "run msgpack": _outcome(3, "ksmreplay: trace: event 2 (t=5): bad\n"),
        "validate jsonl": _outcome(3, "ksmreplay: trace: event 2 (t=5): bad\n"),
        "run jsonl": _outcome(3, "ksmreplay: trace: event 2 (t=5): other\n"),
        "inspect jsonl": _outcome(3, "ksmreplay: trace: event 2 (t=5): bad\n"),
    }
    check.agree("validate msgpack", "run msgpack")
    check.agree("validate jsonl", "run jsonl")
    check.agree("validate jsonl", "inspect jsonl")
    check.twins("validate msgpack", "validate jsonl")
    assert [f.signature for f in check.failures] == [
        "disagree|validate msgpack / run msgpack|0 vs 3",
        "disagree|validate jsonl / run jsonl|3 vs 3",
        "disagree|validate msgpack / validate jsonl|0 vs 3",
    ]
    # Messages about the encoding itself may differ between the forms, the event may not.
    check = fuzzer.Check()
    check.outcomes = {
        "validate msgpack": _outcome(3, "ksmreplay: trace: event 4: invalid msgpack data\n"),
        "validate jsonl": _outcome(3, "ksmreplay: trace: event 4: invalid JSON (x)\n"),
        "run msgpack": _outcome(3, "ksmreplay: trace: event 4: invalid msgpack data\n"),
        "run jsonl": _outcome(3, "ksmreplay: trace: event 5: invalid JSON (x)\n"),
    }
    check.twins("validate msgpack", "validate jsonl")
    check.twins("run msgpack", "run jsonl")
    assert [f.signature for f in check.failures] == ["disagree|run msgpack / run jsonl|event"]


def test_delta_debugging_keeps_what_fails() -> None:
    items = list(range(100))
    assert fuzzer.ddmin(items, lambda xs: 17 in xs and 64 in xs) == [17, 64]
    assert fuzzer.ddmin(items, lambda xs: len(xs) == 100) == items


def test_forked_commands_behave_as_a_fresh_interpreter(
    tmp_path: Path, workers: concurrent.futures.ProcessPoolExecutor
) -> None:
    """The fork runner gives what ``python -m ksmreplay`` gives, failures included."""
    trace = tmp_path / "t" / "trace"
    trace.parent.mkdir()
    trace.write_bytes(msgpack.packb({"ksmreplay": 1}) + msgpack.packb([0, "alloc", 1, 4096, 4096]))
    bad = tmp_path / "t" / "bad"
    bad.write_bytes(msgpack.packb({"ksmreplay": 1}) + msgpack.packb([0, "read", 1, 0, 4096]))
    commands = [
        ["validate", "trace"],
        ["run", "--format", "json", "trace"],
        ["validate", "bad"],
        ["run", "bad"],
        ["inspect", "missing"],
        ["convert", "trace", "-", "--to", "jsonl"],
        ["run", "--bogus"],
    ]
    forked = [workers.submit(fuzzer.run_command, argv, trace.parent) for argv in commands]
    spawned = [
        workers.submit(fuzzer.run_command, argv, trace.parent, spawn=True) for argv in commands
    ]
    for argv, f, s in zip(commands, forked, spawned, strict=True):
        a, b = f.result(), s.result()
        assert (a.status, a.stdout, a.stderr) == (b.status, b.stdout, b.stderr), argv
    assert [f.result().status for f in forked] == [0, 0, 3, 3, 4, 0, 2]


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_limits_end_a_command(
    tmp_path: Path, spawn: bool, workers: concurrent.futures.ProcessPoolExecutor
) -> None:
    """The CPU, wall-clock and address-space limits end a child; the runner says which."""
    (tmp_path / "d").mkdir()

    def hog(what: str, limits: fuzzer.Limits | None = None) -> fuzzer.Outcome:
        future = workers.submit(
            fuzzer.run_command,
            [what],
            tmp_path / "d",
            True,
            limits or fuzzer.Limits(),
            spawn,
            "fuzz_hog",
        )
        return future.result()

    o = hog("cpu", fuzzer.Limits(cpu=1, wall=20))
    assert fuzzer.command_problem("c", o) == fuzzer.Failure("hang", "c", "", o.summary())
    assert o.signal == signal.SIGXCPU and not o.timed_out
    o = hog("sleep", fuzzer.Limits(cpu=30, wall=1))
    assert o.timed_out and o.signal == signal.SIGKILL
    o = hog("memory")
    problem = fuzzer.command_problem("c", o)
    assert problem is not None and (problem.kind, problem.detail) == ("memory", "MemoryError")
    o = hog("ok")
    assert (o.status, o.stdout, o.stderr) == (0, b"ok\n", "")


# --------------------------------------------------------------------------- a short run


def _failure_report(campaign: fuzzer.Campaign, signatures: set[str]) -> str:
    lines = []
    for sig, items in campaign.failures().items():
        if sig in signatures:
            r, f = items[0]
            mutant = fuzzer.make_mutant(campaign.seed, r.index)
            lines.append(f"{sig} ({len(items)} mutants), e.g. {mutant.describe()}: {f.message}")
    return "\n".join(lines)


@pytest.mark.fuzz
def test_short_fuzz_run(workers: concurrent.futures.ProcessPoolExecutor) -> None:
    """A bounded run of the fuzzer finds nothing but what a saved, xfailed case stands for."""
    campaign = fuzzer.fuzz(
        SHORT_SEED, SHORT_COUNT, 2, SHORT_LIMITS, deadline=SHORT_SECONDS, executor=workers
    )
    assert len(campaign.results) >= SHORT_MIN_MUTANTS
    known = fuzzer.known_signatures()
    unknown = set(campaign.failures()) - set(known)
    assert not unknown, (
        "new failures (run `python tests/fuzzer.py -n "
        f"{SHORT_COUNT} --seed {SHORT_SEED}` to minimise and save them):\n"
        + _failure_report(campaign, unknown)
    )


# --------------------------------------------------------------------------- saved cases


def _case_param(path: Path) -> object:
    meta = json.loads(path.read_text())
    marks = []
    if meta.get("xfail"):
        marks.append(pytest.mark.xfail(strict=True, reason=meta["xfail"]))
    return pytest.param(path, id=path.name[: -len(".json")], marks=marks)


@pytest.fixture(scope="module")
def case_results(
    workers: concurrent.futures.ProcessPoolExecutor,
) -> dict[Path, concurrent.futures.Future[fuzzer.Check]]:
    """Every saved case checked at once, two at a time."""
    submit = workers.submit
    return {path: submit(fuzzer.check_case, str(path), _case_limits(path)) for path in CASE_FILES}


def _case_limits(path: Path) -> fuzzer.Limits:
    """:data:`CASE_LIMITS`, with the case's own ``cpu`` (s) where it sets one (a case that
    once hung: more than it needs now, less than it took then)."""
    cpu = json.loads(path.read_text()).get("cpu", CASE_LIMITS.cpu)
    return dataclasses.replace(CASE_LIMITS, cpu=cpu)


def test_saved_cases_are_well_formed() -> None:
    assert CASE_FILES, "no saved fuzz cases"
    for path in CASE_FILES:
        meta, mutant = fuzzer.load_case(path)
        assert meta["expect"] in ("valid", "invalid", "any"), path
        assert meta.get("run", 0) in (0, 3, fuzzer.RESOURCES), path
        assert set(mutant.forms) == set(meta["forms"]), path
        assert meta["signature"].split("|")[0] == meta["kind"], path
        assert ("objects" in meta) == (mutant.objects is not None), path


def test_saved_cases_are_small() -> None:
    """Large traces are kept as recipes: the cases take little room in the repository."""
    sizes = {p.name: p.stat().st_size for p in fuzzer.CASES_DIR.iterdir()}
    assert {name: n for name, n in sizes.items() if n > fuzzer.CASE_FILE_BYTES} == {}
    assert sum(sizes.values()) < 64 << 10


def test_a_recipe_gives_back_the_trace_it_was_made_from() -> None:
    label = "é" * 300_001
    objects = [
        {"ksmreplay": 1, "meta": {f"k{i}": i for i in range(100)}, "description": "ab" * 40},
        [0, "alloc", 7, 0, 4096],
        *([[0, "write", 7, 0, 4096, k], [0, "read", 7, 0, 4096]] for k in (1, True, 1.0) * 10),
        *[[1, "write", 7, 0, 4096, b"\x00" * 4096]] * 20,
        [2, "snapshot", label],
        [2, "snapshot", "\ud800" * 100],
    ]
    recipe = fuzzer.compact(objects)
    text = json.dumps(recipe)
    assert len(text) < 7000, text
    assert '"$repeat": "\\u00e9", "times": 300001' in text
    assert '{"$numbered": "k", "count": 100}' in text
    again = fuzzer.expand(json.loads(text))
    assert repr(again) == repr(objects)  # (True, 1 and 1.0 kept apart)
    for form in fuzzer.FORMS:
        assert fuzzer.encode(again, form) == fuzzer.encode(objects, form)


def test_a_large_case_is_saved_as_a_recipe(tmp_path: Path) -> None:
    objects = [{"ksmreplay": 1}, [0, "snapshot", "a" * 2**20]]
    forms = {form: fuzzer.encode(objects, form) or b"" for form in fuzzer.FORMS}
    mutant = fuzzer.Mutant(0, 7, "o", ["step"], objects, forms)
    failure = fuzzer.Failure("traceback", "run msgpack", "E", "what")
    path = fuzzer.save_case(tmp_path, "big", mutant, failure)
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]
    assert path.stat().st_size < 1000
    meta, again = fuzzer.load_case(path)
    assert again.forms == forms and meta["signature"] == failure.signature
    # A small one keeps its trace files, which a person can run as they are.
    small = fuzzer.Mutant(0, 8, "o", [], objects[:1], {"jsonl": b'{"ksmreplay": 1}\n'})
    fuzzer.save_case(tmp_path, "small", small, failure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.json", "small.json", "small.jsonl"]
    assert "objects" not in json.loads((tmp_path / "small.json").read_text())


@pytest.mark.parametrize("path", [_case_param(p) for p in CASE_FILES])
def test_saved_case(
    path: Path, case_results: dict[Path, concurrent.futures.Future[fuzzer.Check]]
) -> None:
    """GIVEN a trace that once made a command fail, THEN every check of the fuzzer passes,
    ``validate`` and ``run`` end, in every form, as the case expects (``expect``: valid or
    invalid; ``run``: the status of run, by default the same as validate's) and every
    message matches the case's ``message``."""
    check = case_results[path].result()
    failures = check.failures
    assert not failures, "\n".join(f"{f.signature}: {f.message}" for f in failures)
    meta, mutant = fuzzer.load_case(path)
    if meta["expect"] == "any":
        return
    validate = 0 if meta["expect"] == "valid" else 3
    expected = {"validate": validate, "run": meta.get("run", validate)}
    for form in mutant.forms:
        for verb, status in expected.items():
            o = check.outcomes[f"{verb} {form}"]
            assert o.status == status, f"{verb} {form}: {o.summary()}"
            if status != 0 and "message" in meta:
                assert re.search(meta["message"], o.stderr), f"{verb} {form}: {o.summary()}"


def test_the_limits_grow_with_the_work_a_mutant_declares() -> None:
    base = fuzzer.Limits(cpu=5, wall=30)
    header = {"ksmreplay": 1}

    def limits(objects: list[Any] | None, forms: dict[str, bytes] | None = None) -> int:
        mutant = fuzzer.Mutant(0, 0, "test", [], objects, forms or {"jsonl": b""})
        return fuzzer.declared_limits(mutant, base).cpu

    assert limits([header, [0, "ksm", {"run": 1}], [10**10, "settle"]]) == 5
    # ksmd flat out (sleep_millisecs=0) for 10 s of trace time: its visits
    flat = [header, [0, "ksm", {"run": 1, "sleep_millisecs": 0}], [10**10, "snapshot", "x"]]
    assert limits(flat) == 5 + 1 + 10 * fuzzer.FLAT_OUT_CPU_PER_SECOND
    # not while ksmd sleeps or is stopped, and never without end
    stopped = [header, [0, "ksm", {"run": 0, "sleep_millisecs": 0}], [10**10, "settle"]]
    assert limits(stopped) == 5
    forever = [header, [0, "ksm", {"run": 1, "sleep_millisecs": 0}], [2**62, "settle"]]
    assert limits(forever) == 5 + fuzzer.DECLARED_MAX_SECONDS
    # and past a day of it, a replay that does not end is declared work, not a hang
    endless = fuzzer.Mutant(0, 0, "test", [], forever, {"jsonl": b""})
    assert fuzzer.declares_endless(endless)
    assert not fuzzer.declares_endless(fuzzer.Mutant(0, 0, "test", [], flat, {"jsonl": b""}))
    # snapshots, counted in the bytes of a mutant damaged byte by byte
    data = b"".join(b'[%d, "snapshot", "s"]\n' % t for t in range(20_000))
    per_second = fuzzer.SNAPSHOTS_PER_CPU_SECOND
    assert limits(None, {"jsonl": data}) == (
        5 + 20_000 * len(MODES) // per_second + 20_000 // fuzzer.EVENTS_PER_CPU_SECOND
    )
    # events, and pages written (each settled by visits)
    many = [header] + [[0, "read", 1, 0, 4096]] * (3 * fuzzer.EVENTS_PER_CPU_SECOND)
    assert limits(many) == 5 + 3
    pages = 2 * fuzzer.WRITTEN_PAGES_PER_CPU_SECOND
    big = [header, [0, "alloc", 1, 0, pages * 4096], [0, "write", 1, 0, pages * 4096, 1]]
    assert limits(big) == 5 + 2
