"""Where the test data lives, each file kept once (for the tests and the recording tools).

* ``tests/scenarios/NAME.jsonl``: the differential suite's traces, each beside
  its recorded kernel answers (``NAME.kernel.json`` from the live kernel,
  ``NAME.kernel-6.1.json`` and ``NAME.kernel-6.12.json`` from qemu guests,
  ``NAME.kernel-tracepoints.json``); ``timed/`` holds the timed scenarios.
* ``tests/cases/NAME.expected.json``: the golden cases' expected reports.  A
  case's trace is ``tests/cases/NAME.jsonl`` (with its kernel answers beside
  it) or, for the cases listed in ``tests/cases/scenarios.txt``, the scenario
  of that name: :func:`case_trace` says which.  ``cases/v6/`` holds the v6
  design's cases.
* ``tests/selftests/``: the kernel's KSM selftests ported as traces.

:func:`answered_traces` lists every trace that has recorded kernel answers,
each once: the recording tools (``tests/record_kernel.py DIR``) write beside
the trace they replay, so a scenario's answers are recorded in
``tests/scenarios`` and a case's own in ``tests/cases``.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TRACES_DIR = ROOT / "traces"
"""The traces shipped with ksmreplay (``traces/``)."""
SCENARIOS_DIR = TESTS / "scenarios"
TIMED_DIR = SCENARIOS_DIR / "timed"
CASES_DIR = TESTS / "cases"
V6_CASES_DIR = CASES_DIR / "v6"
SELFTESTS_DIR = TESTS / "selftests"
SCENARIO_CASES = CASES_DIR / "scenarios.txt"
"""The golden cases whose trace is the scenario of the same name, one name a line
(``#`` starts a comment)."""


# -- the traces -----------------------------------------------------------------------


def names(directory: Path, suffix: str = ".jsonl") -> list[str]:
    """The sorted names of the files of ``directory`` ending in ``suffix``, without it."""
    return sorted(p.name[: -len(suffix)] for p in directory.glob(f"*{suffix}"))


def scenario_cases() -> list[str]:
    """The golden cases whose trace is a scenario (:data:`SCENARIO_CASES`), in its order."""
    lines = (line.split("#", 1)[0].strip() for line in SCENARIO_CASES.read_text().splitlines())
    return [line for line in lines if line]


def case_names() -> list[str]:
    """Every golden case of ``tests/cases`` (not ``v6/``): its own traces and the listed
    scenarios, sorted."""
    return sorted([*names(CASES_DIR), *scenario_cases()])


def case_trace(name: str) -> Path:
    """The trace of the golden case ``name``: its own, or the scenario it names.

    Its kernel answers (``NAME.kernel*.json``) sit beside it.
    """
    own = CASES_DIR / f"{name}.jsonl"
    return own if own.exists() else SCENARIOS_DIR / f"{name}.jsonl"


def case_traces() -> list[Path]:
    """The traces of every golden case, ``v6/`` included, each once, in the order of the
    cases' names (``NAME`` then ``v6/NAME``)."""
    return [*(case_trace(name) for name in case_names()), *sorted(V6_CASES_DIR.glob("*.jsonl"))]


def answered_traces() -> list[Path]:
    """Every trace with recorded kernel answers beside it, each once: the scenarios,
    then the golden cases' own traces."""
    return [*sorted(SCENARIOS_DIR.glob("*.jsonl")), *sorted(CASES_DIR.glob("*.jsonl"))]


def data_traces() -> list[Path]:
    """Every trace of the scenarios (``timed/`` too) and the golden cases (``v6/`` too),
    each file once, sorted."""
    return sorted([*SCENARIOS_DIR.rglob("*.jsonl"), *CASES_DIR.rglob("*.jsonl")])
