"""The fuzzer (``tests/fuzzer.py``): its own checks, a short run, and the saved cases it found.

``test_short_fuzz_run`` is marked ``fuzz`` (``pytest -m "not fuzz"`` leaves it
out); it runs by default, for about 30 seconds.  ``make fuzz`` runs the long
campaign.  Every case in ``tests/fuzz_cases/`` is a trace that once made a
command fail; it must now pass every check of the fuzzer.  A case whose
``xfail`` field is set still fails on this code (strict: the test errs once
it passes, so that the field is removed with the fix), and the short run
tolerates the failures those cases stand for.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import fuzzer
import msgpack
import pytest

CASE_FILES = sorted(fuzzer.CASES_DIR.glob("*.json"))
SHORT_SEED = 0
SHORT_COUNT = 400
SHORT_SECONDS = 25.0
"""The short run starts no mutant after this long (it stops earlier when all are done)."""
SHORT_MIN_MUTANTS = 8
CASE_LIMITS = fuzzer.Limits(cpu=2, wall=30)
SHORT_LIMITS = fuzzer.Limits(cpu=3, wall=30)


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
        objects = fuzzer._copy(list(seed.objects[:100]))
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
    assert fuzzer._ddmin(items, lambda xs: 17 in xs and 64 in xs) == [17, 64]
    assert fuzzer._ddmin(items, lambda xs: len(xs) == 100) == items


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
) -> dict[Path, concurrent.futures.Future[list[fuzzer.Failure]]]:
    """Every saved case checked at once, two at a time."""
    return {path: workers.submit(fuzzer.check_case, str(path), CASE_LIMITS) for path in CASE_FILES}


def test_saved_cases_are_well_formed() -> None:
    assert CASE_FILES, "no saved fuzz cases"
    for path in CASE_FILES:
        meta, mutant = fuzzer.load_case(path)
        assert meta["expect"] in ("valid", "invalid", "any"), path
        assert set(mutant.forms) == set(meta["forms"]), path
        assert meta["signature"].split("|")[0] == meta["kind"], path


@pytest.mark.parametrize("path", [_case_param(p) for p in CASE_FILES])
def test_saved_case(
    path: Path, case_results: dict[Path, concurrent.futures.Future[list[fuzzer.Failure]]]
) -> None:
    """GIVEN a trace that once made a command fail, THEN every check of the fuzzer passes
    and ``validate`` gives the outcome the case expects."""
    failures = case_results[path].result()
    assert not failures, "\n".join(f"{f.signature}: {f.message}" for f in failures)
    meta, mutant = fuzzer.load_case(path)
    if meta["expect"] != "any":
        form = next(f for f in fuzzer.FORMS if f in mutant.forms)
        workdir = Path(fuzzer.tempfile.mkdtemp(prefix="ksmreplay-case."))
        try:
            (workdir / "d").mkdir()
            (workdir / "d" / "trace").write_bytes(mutant.forms[form])
            o = fuzzer.run_command(["validate", "trace"], workdir / "d", limits=CASE_LIMITS)
        finally:
            fuzzer.shutil.rmtree(workdir)
        assert o.status == (0 if meta["expect"] == "valid" else 3), o.summary()
