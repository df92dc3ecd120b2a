"""ContentMap against a dictionary, through every operation and growth."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ksmreplay.ksm.contentmap import ABSENT, VALUE_LIMIT, ContentMap

pytestmark = pytest.mark.usefixtures("both_engines")


def _keys(rng: random.Random) -> list[int]:
    # Fingerprints, small contents, and keys that share their top bits (one slot).
    return (
        [rng.getrandbits(64) for _ in range(40)]
        + list(range(12))
        + [(7 << 58) | i for i in range(8)]
        + [(1 << 64) - 1]
    )


@pytest.mark.parametrize("seed", range(40))
def test_operations_agree_with_a_dict(seed: int) -> None:
    rng = random.Random(seed)
    m, d = ContentMap(bits=rng.choice([1, 2, 4])), {}
    space = _keys(rng)
    for _ in range(400):
        op = rng.random()
        if op < 0.25:
            k, v = rng.choice(space), rng.randrange(VALUE_LIMIT + 1)
            m[k] = v
            d[k] = v
        elif op < 0.4 and d:
            k = rng.choice(list(d))
            del m[k]
            del d[k]
        elif op < 0.43:
            m.clear()
            d.clear()
        elif op < 0.65:
            new = sorted({rng.choice(space) for _ in range(rng.randrange(12))} - set(d))
            vals = [rng.randrange(VALUE_LIMIT + 1) for _ in new]
            m.insert_new(np.array(new, np.uint64), np.array(vals, np.int64))
            d.update(zip(new, vals, strict=True))
        else:
            asked = [rng.choice(space) for _ in range(rng.randrange(30))]
            found = m.find(np.array(asked, np.uint64)).tolist()
            assert found == [d.get(k, ABSENT) for k in asked]
        assert len(m) == len(d)
        probe = rng.choice(space)
        assert m.get(probe) == d.get(probe)
        assert (probe in m) == (probe in d)
    assert dict(m.items()) == d


def test_delete_of_a_missing_key_raises() -> None:
    m = ContentMap()
    m[5] = 1
    del m[5]
    with pytest.raises(KeyError):
        del m[5]


def test_tombstones_do_not_hide_later_entries() -> None:
    # Keys with the same top bits probe the same slots in turn.
    m = ContentMap(bits=6)
    keys = [(3 << 58) | i for i in range(6)]
    for i, k in enumerate(keys):
        m[k] = i
    for k in keys[:5]:
        del m[k]
    assert m.get(keys[5]) == 5
    assert m.find(np.array(keys, np.uint64)).tolist() == [ABSENT] * 5 + [5]
    m[keys[0]] = 9  # back in, past the tombstones
    assert m.get(keys[0]) == 9 and len(m) == 2


def test_clear_costs_no_pass_and_forgets_everything() -> None:
    m = ContentMap(bits=4)
    m.insert_new(np.arange(1, 6, dtype=np.uint64), np.arange(5, dtype=np.int64))
    m.clear()
    assert len(m) == 0 and m.get(3) is None
    assert (m.find(np.arange(1, 6, dtype=np.uint64)) == ABSENT).all()
    m[3] = 7
    assert dict(m.items()) == {3: 7}


def test_growth_keeps_a_million_entries() -> None:
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**63, 1_000_000, dtype=np.uint64))
    vals = np.arange(len(keys), dtype=np.int64)
    m = ContentMap()
    for lo in range(0, len(keys), 100_000):
        m.insert_new(keys[lo : lo + 100_000], vals[lo : lo + 100_000])
    assert len(m) == len(keys)
    assert (m.find(keys) == vals).all()
    assert (m.find(keys + np.uint64(1 << 63)) == ABSENT).all()
