"""The simulator's tables: how they grow, what their free stacks hand out, and
the bounds that let them keep rows and ids in 32 bits, and an item's page and
mm slot in one word."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ksmreplay import native
from ksmreplay.arrays import GROWTH, ROW_LIMIT, grow_rows, more_rows
from ksmreplay.engine import Engine
from ksmreplay.errors import ResourceError
from ksmreplay.ksm import ksmd as ksmd_module
from ksmreplay.ksm.contentmap import ContentMap
from ksmreplay.ksm.items import ITEM_PAGE_LIMIT, ItemTable
from ksmreplay.ksm.stable import ChainColumns, NodeColumns, StableNode
from ksmreplay.native import CHAIN_ENTRY, ITEM_SLOT_LIMIT
from ksmreplay.trace.events import Alloc, Event, Exit, Ksm, Madvise, Settle, Write
from ksmreplay.vm import FreeStack
from ksmreplay.vm.frames import FrameTable, FreeList


class _Owner:
    column: npt.NDArray[np.int64]


def test_free_rows_come_back_last_freed_first_then_the_unused_in_order() -> None:
    stack = FreeStack(4)
    assert stack.pop(3).tolist() == [0, 1, 2]
    stack.push(np.array([2, 0]))
    stack.push_one(1)
    assert len(stack) == 4
    assert stack.peek(4).tolist() == [1, 0, 2, 3]
    assert stack.pop(4).tolist() == [1, 0, 2, 3]
    stack.grow(4, 6)
    assert stack.pop(2).tolist() == [4, 5]
    assert len(stack) == 0


def test_a_column_grows_in_place_unless_something_holds_it() -> None:
    owner = _Owner()
    owner.column = np.arange(5, dtype=np.int64)
    grow_rows(owner, "column", 8)
    assert owner.column.tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
    held = owner.column[:2]
    grow_rows(owner, "column", 10)
    assert owner.column.tolist() == [0, 1, 2, 3, 4, 0, 0, 0, 0, 0]
    owner.column[0] = 7
    assert held.tolist() == [0, 1]  # the holder keeps the old rows, never freed memory


def test_tables_grow_by_an_eighth_and_stop_at_the_row_limit() -> None:
    assert more_rows(80_000, 1) == 80_000 // GROWTH
    assert more_rows(80_000, 50_000) == 50_000
    assert more_rows(0, 1) == 1024
    with pytest.raises(ResourceError):
        more_rows(ROW_LIMIT, 1)


def test_item_and_frame_tables_hold_little_more_than_they_need() -> None:
    items, frames = ItemTable(), FrameTable()
    pages = np.arange(100_000, dtype=np.int64)
    for lo in range(0, len(pages), 7_000):
        rows = items.alloc(3, pages[lo : lo + 7_000])
        assert items.pages(rows).tolist() == pages[lo : lo + 7_000].tolist()
        frames.alloc(pages[lo : lo + 7_000].astype(np.uint64))
    assert items.slots(rows).tolist() == [3] * len(rows)
    assert (items.hnext == -1).all() and items.hnext.dtype == np.int32
    for capacity in (len(items.hot), frames.capacity):
        assert 100_000 <= capacity <= 100_000 + 100_000 // GROWTH + 7_000
    assert frames.content[: frames.capacity].sum() == pages.sum()


def test_a_content_map_stays_at_most_seven_eighths_full_in_the_fewest_slots() -> None:
    m = ContentMap()
    for lo in range(0, 6_000, 500):
        keys = np.arange(lo, lo + 500, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        m.insert_new(keys, np.arange(lo, lo + 500, dtype=np.int64))
        table, _bits, _now = m.table()
        assert 8 * len(m) <= 7 * len(table)
    assert len(m.table()[0]) == 8192  # 6,000 entries: 4,096 slots would be over 7/8
    m.insert_new(np.arange(1, 1_100, dtype=np.uint64), np.arange(1, 1_100, dtype=np.int64))
    assert len(m.table()[0]) == 8192  # 7,099 entries: 8,192 slots hold them
    everything = np.arange(6_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    assert m.find(everything).tolist() == list(range(6_000))


def test_a_content_map_s_room_is_what_it_takes_before_it_moves() -> None:
    # GIVEN a map with entries
    m = ContentMap()
    keys = np.arange(1, 3_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    m.insert_new(keys, np.arange(3_000, dtype=np.int64))
    # WHEN as many more as its room are reserved, the table stays
    bits = m.table()[1]
    m.reserve(m.room())
    assert m.table()[1] == bits
    # and one more moves it
    m.reserve(m.room() + 1)
    assert m.table()[1] > bits


def test_node_and_chain_ids_stay_below_chain_entry() -> None:
    nodes: dict[int, StableNode] = {}
    cols = NodeColumns()
    with pytest.raises(ResourceError):
        cols.reserve(CHAIN_ENTRY + 1)
    chains = ChainColumns(nodes, cols)
    with pytest.raises(ResourceError):
        chains.reserve(CHAIN_ENTRY + 1)
    assert len(cols.size) < 1 << 20  # refused before anything was allocated


def test_a_chain_walk_takes_its_dups_one_at_a_time() -> None:
    # GIVEN a chain of 5 dups (head first: 4, 3, 2, 1, 0)
    nodes: dict[int, StableNode] = {}
    cols = NodeColumns()
    cols.reserve(5)
    chains = ChainColumns(nodes, cols)
    chain = chains.new(7, 0)
    for nid in range(5):
        nodes[nid] = StableNode(nid, 7, nid)
        chain.push(nodes[nid])
    walk = chain.walk()
    # WHEN a walk takes the first two dups and takes the second out of the chain
    assert next(walk).id == 4
    second = next(walk)
    chain.remove(second)
    # THEN the walk goes on from its successor, and the chain holds the rest
    assert [d.id for d in walk] == [2, 1, 0]
    assert [d.id for d in chain.dups] == [4, 2, 1, 0]
    # and a walk that stops early has read only the dups it handed out
    cols.dup_next[2] = 99  # (a broken link past the first dup is never followed)
    assert next(chain.walk()).id == 4


def test_an_items_page_slot_and_flags_share_one_word_within_their_bounds() -> None:
    # GIVEN items at the highest page and the highest slot id the word holds
    items = ItemTable()
    top = ITEM_PAGE_LIMIT - 1
    rows = items.alloc(ITEM_SLOT_LIMIT - 1, np.array([top, 0, 5], np.int64))
    items.record_checksum(int(rows[0]), 7)
    items.flag(rows[:1])
    # THEN each field reads back as it was made, the flags apart from the rest
    assert items.pages(rows).tolist() == [top, 0, 5]
    assert items.slots(rows).tolist() == [ITEM_SLOT_LIMIT - 1] * 3
    assert items.checked(rows).tolist() == [True, False, False]
    assert items.flagged(rows).tolist() == [True, False, False]
    items.unflag(rows[:1])
    assert items.is_checked(int(rows[0])) and not items.is_flagged(int(rows[0]))
    assert items.page_of(int(rows[0])) == top
    # and a freed item has no slot
    items.release(rows[1:2])
    assert items.slots(rows).tolist() == [ITEM_SLOT_LIMIT - 1, -1, ITEM_SLOT_LIMIT - 1]


def test_items_beyond_the_words_bounds_are_refused_where_they_are_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a process whose mergeable pages lie at the page limit, one below it
    page = 1 << 12
    below = (ITEM_PAGE_LIMIT - 512) * page
    events: list[Event] = [
        Ksm(0, 0, {"run": 1}),
        Alloc(1, 0, 1, below, 1024 * page),
        Write(2, 0, 1, below, 1024 * page, 7),
        Madvise(3, 0, 1, below, 1024 * page, "mergeable"),
        Settle(4, 0, 1),
    ]
    engine = Engine("unshare", page)
    # THEN ksmd makes no item map chunk (nor item) at or above it
    with pytest.raises(ResourceError, match="rmap_item's page below 0x100000000000"):
        for event in events:
            engine.apply(event)
    assert engine.ksmd.c.rmap_items <= 512
    # and no more processes hold a KSM slot at once than the word holds,
    monkeypatch.setattr(ksmd_module, "ITEM_SLOT_LIMIT", 2)
    engine = Engine("unshare", page)
    engine.apply(Ksm(0, 0, {"run": 1}))
    for pid in (1, 2):
        engine.apply(Alloc(pid, 0, pid, 0, page))
        engine.apply(Madvise(pid, 0, pid, 0, page, "mergeable"))
    # though one that exits gives its slot's id to the next
    engine.apply(Exit(3, 0, 1))
    engine.apply(Alloc(4, 0, 3, 0, page))
    engine.apply(Madvise(5, 0, 3, 0, page, "mergeable"))
    assert sorted(s.mm.pid for s in engine.ksmd.slots) == [2, 3]
    with pytest.raises(ResourceError, match="at most 2 processes"):
        engine.apply(Alloc(6, 0, 4, 0, page))
        engine.apply(Madvise(7, 0, 4, 0, page, "mergeable"))


@pytest.mark.parametrize("scalar", [False, True], ids=["native", "scalar"])
def test_the_frames_list_of_freed_rows_hands_them_out_as_the_stack_does(
    scalar: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a free stack and a free list of the same table, the list linked
    # through a column whose taken rows the caller overwrites, as faults do
    if scalar:
        monkeypatch.setenv(native.ENV, "0")
    rng = np.random.default_rng(3)
    stack, free = FreeStack(40), FreeList(40)
    links = np.zeros(40, np.uint64)
    taken: list[int] = []
    for _ in range(300):
        # WHEN rows are freed, one or many, and taken, some of those listed
        if taken and rng.random() < 0.5:
            rows = rng.permutation(taken)[: rng.integers(1, len(taken) + 1)]
            taken = [r for r in taken if r not in set(rows.tolist())]
            if len(rows) == 1 and rng.random() < 0.5:
                stack.push_one(int(rows[0]))
                free.push_one(links, int(rows[0]))
            else:
                stack.push(rows)
                free.push(links, rows)
        else:
            n = int(rng.integers(0, len(stack) + 1))
            listed = free.peek(links, n)
            # THEN the list offers the stack's rows, in its order
            assert listed.tolist() == stack.peek(n).tolist()
            used = int(rng.integers(0, n + 1))
            links[listed[:used]] = rng.integers(0, 2**63, used, np.uint64)
            free.pop(used)
            taken += stack.pop(used).tolist()
        assert len(free) == len(stack)
