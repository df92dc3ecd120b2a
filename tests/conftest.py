"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ksmreplay import native


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs two workers), every test that
    uses the live kernel runs in one worker, one after another: KSM is one
    global state, and a test that reads the knobs before and after a replay
    must not see another worker's replay change them in between."""
    for item in items:
        if item.get_closest_marker("live") is not None:
            item.add_marker(pytest.mark.xdist_group("live-kernel"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: a bounded run of the fuzzer (tests/fuzzer.py); -m 'not fuzz' skips it"
    )
