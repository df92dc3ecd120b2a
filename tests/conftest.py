"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ksmreplay import accel


@pytest.fixture(params=["pure", "accelerated"])
def with_and_without_accel(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Run the test without the accelerator (pure-Python reader, numpy fault path),
    then with it.

    The accelerated run is skipped where the accelerator cannot be built (no C
    compiler); the other runs everywhere.
    """
    if request.param == "pure":
        monkeypatch.setenv(accel.ENV, "0")
        assert accel.accelerator() is None
    else:
        monkeypatch.delenv(accel.ENV, raising=False)
        if accel.accelerator() is None:
            pytest.skip("the decoding accelerator cannot be built here (no C compiler?)")
    yield request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: a bounded run of the fuzzer (tests/fuzzer.py); -m 'not fuzz' skips it"
    )
