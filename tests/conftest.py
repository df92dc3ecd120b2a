"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ksmreplay import native


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
        monkeypatch.setenv(native.ENV, "0")
        assert native.native() is None
    else:
        monkeypatch.delenv(native.ENV, raising=False)
        if native.native() is None:
            pytest.skip("the decoding accelerator cannot be built here (no C compiler?)")
    yield request.param
