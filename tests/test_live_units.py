"""Parts of the live replay that need neither root nor KSM."""

from __future__ import annotations

import pytest

from ksmreplay.live.driver import WINDOW_HI, WINDOW_LO, _runs, address_offset
from ksmreplay.live.kernel import LiveKernelError, busy_reason
from ksmreplay.trace.events import Alloc, Snapshot


def test_small_addresses_sit_at_the_window_base() -> None:
    events = [Alloc(1, 0, 1, 0x10000, 4096), Snapshot(2, 0, "s")]
    assert address_offset(events) == WINDOW_LO


def test_high_addresses_are_shifted_keeping_their_order() -> None:
    events = [Alloc(1, 0, 1, 0x7F00_0000_3000, 4096), Alloc(2, 0, 2, 0x7F10_0000_0000, 4096)]
    offset = address_offset(events)
    assert 0x7F00_0000_3000 + offset >= WINDOW_LO
    assert 0x7F10_0000_0000 + 4096 + offset <= WINDOW_HI
    assert offset % (1 << 30) == 0


def test_span_larger_than_the_window_is_refused() -> None:
    events = [Alloc(1, 0, 1, 0, 4096), Alloc(2, 0, 1, WINDOW_HI, 4096)]
    with pytest.raises(LiveKernelError, match="window"):
        address_offset(events)


def test_busy_reason() -> None:
    idle = {"run": 0, "pages_shared": 0, "pages_sharing": 0, "pages_volatile": 0}
    assert busy_reason(idle) is None
    assert busy_reason({**idle, "run": 1}) == "run is 1"
    assert busy_reason({**idle, "pages_volatile": 3}) == "pages_volatile is 3"


def test_runs() -> None:
    assert _runs([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 1), (7, 2)]
