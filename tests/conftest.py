"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ksmreplay import accel


@pytest.fixture(params=["pure", "accelerated"])
def both_readers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the pure-Python trace reader, then with the accelerator.

    The accelerated run is skipped where the accelerator cannot be built (no C
    compiler); the pure one runs everywhere.
    """
    if request.param == "pure":
        monkeypatch.setenv(accel.ENV, "0")
        assert accel.scanner() is None
    else:
        monkeypatch.delenv(accel.ENV, raising=False)
        if accel.scanner() is None:
            pytest.skip("the decoding accelerator cannot be built here (no C compiler?)")
    yield request.param
