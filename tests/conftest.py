"""Fixtures shared by the test modules."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest

from ksmreplay import native

LIVE_TESTS_LOCK = "/run/lock/ksmreplay-live-tests.lock"
"""Held for the whole of every test marked ``live``, so that such tests run one
at a time whatever runs them (the workers of ``make test``, two suites at
once): KSM is one global state, and a test that reads the knobs before and
after a replay must not see another test's replay change them in between.
Not the project's live lock, which the replays under test take themselves
(some in child processes)."""


@pytest.fixture(autouse=True)
def _one_live_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("live") is None:
        yield
        return
    fd = os.open(LIVE_TESTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture(params=["scalar", "native"])
def both_engines(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on the scalar path (the pure-Python reader, the numpy fault
    path, the scalar ksmd), then with the native core: its id says which.

    The native run is skipped where the native core was not built (no C
    compiler at install); the other runs everywhere.
    """
    if request.param == "scalar":
        monkeypatch.setenv(native.ENV, "0")
        assert native.native() is None
    else:
        monkeypatch.delenv(native.ENV, raising=False)
        if native.native() is None:
            pytest.skip("the native core was not built (no C compiler at install?)")
    yield request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: a bounded run of the fuzzer (tests/fuzzer.py); -m 'not fuzz' skips it"
    )
