"""The snapshot spool: a run's snapshots in an anonymous temporary file, read back equal.

``ksmreplay run`` keeps snapshots there instead of in memory; every renderer
reads them back, so what comes out must be the snapshot that went in: the
same values of the same types, dict keys in the same order.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import pytest
from report_samples import two_mode_report

from ksmreplay.errors import InputOutputError
from ksmreplay.report import Snap, SnapshotSpool


class _Level(enum.IntEnum):
    HIGH = 7


def _snap(label: str, processes: int = 2) -> Snap:
    snap = two_mode_report()["runs"][1]["final"]
    template = snap["processes"][0]
    snap["label"] = label
    snap["processes"] = [dict(template, pid=pid) for pid in range(1, processes + 1)]
    return snap


def _same(a: object, b: object) -> bool:
    """Equal values of equal types, dict keys in the same order (JSON text compares all that)."""
    return json.dumps(a) == json.dumps(b) and a == b


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_snapshots_come_back_in_order_with_their_keys_in_order() -> None:
    snaps = [_snap(f"s{i}", processes=i) for i in range(5)]
    with SnapshotSpool() as spool:
        for snap in snaps:
            spool.append(snap)
        assert len(spool) == 5
        back = list(spool)
    assert len(back) == 5
    for a, b in zip(back, snaps, strict=True):
        assert _same(a, b)
        assert list(a) == list(b)
        assert [list(p) for p in a["processes"]] == [list(p) for p in b["processes"]]


def test_every_value_json_can_show_comes_back_as_json_shows_it() -> None:
    # GIVEN values at the edges: 64-bit limits, floats, null, booleans, every kind of text,
    # empty and nested containers, and types json.dumps treats as their base type
    odd: dict[str, Any] = {
        "ints": [0, -1, -(2**63), 2**64 - 1, True, False, None],
        "floats": [0.1, -0.0, 1e308, 5e-324],
        "text": ["", '\x00\x1b\r\n\t\\"', "\u2028é😀", "a" * 70000],
        "empty": [{}, [], {"": {}}],
        "nested": {"b": {"c": [[1, {"d": []}], ()]}, "a": (1, 2)},
        "ordered": OrderedDict([("z", 1), ("a", 2)]),
        "enum": _Level.HIGH,
        "tuple": (1, (2, 3)),
    }
    snap = cast(Snap, {"label": "odd", "t": 1, "event": 2, **odd})
    with SnapshotSpool() as spool:
        spool.append(snap)
        (back,) = list(spool)
    # THEN json.dumps sees the same report (tuples as lists, subclasses as their base type)
    assert json.dumps(back) == json.dumps(snap)
    assert back["ints"] == odd["ints"]  # type: ignore[typeddict-item]
    assert [type(v) for v in back["ints"]] == [int, int, int, int, bool, bool, type(None)]  # type: ignore[typeddict-item]
    assert back["tuple"] == [1, [2, 3]]  # type: ignore[typeddict-item]
    assert type(back["enum"]) is int  # type: ignore[typeddict-item]


def test_a_value_json_cannot_show_is_refused() -> None:
    with SnapshotSpool() as spool, pytest.raises(TypeError, match="cannot hold set"):
        spool.append(cast(Snap, {"label": "x", "bad": {1, 2}}))


def test_reading_starts_over_each_time_and_readers_may_run_side_by_side() -> None:
    with SnapshotSpool() as spool:
        spool.append(_snap("a"))
        assert [s["label"] for s in spool] == ["a"]
        spool.append(_snap("b"))  # appending after a read
        spool.append(_snap("c"))
        assert [s["label"] for s in spool] == ["a", "b", "c"]
        pairs = [(x["label"], y["label"]) for x, y in zip(spool, spool, strict=True)]
        assert pairs == [("a", "a"), ("b", "b"), ("c", "c")]
        assert list(SnapshotSpool()) == []


def test_the_file_is_compact() -> None:
    # a process is its values and a few bytes, not its keys: about 10 bytes here
    with SnapshotSpool() as small, SnapshotSpool() as large:
        small.append(_snap("x", processes=1))
        large.append(_snap("x", processes=101))
        per_process = (large.size - small.size) / 100
    assert 8 <= per_process <= 16


def test_the_file_has_no_name_and_close_frees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _open_fds()
    spool = SnapshotSpool()
    spool.append(_snap("a"))
    assert list(spool)
    # nothing in the directory to leave behind, whatever ends the process
    assert list(tmp_path.iterdir()) == []
    assert _open_fds() == before + 1
    spool.close()
    assert _open_fds() == before


def test_an_unusable_temporary_directory_is_an_io_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setattr(tempfile, "tempdir", str(missing))
    with pytest.raises(InputOutputError) as caught:
        SnapshotSpool()
    assert str(caught.value) == (
        f"temporary file for the report in {missing}: No such file or directory"
    )
    assert caught.value.exit_status == 4
