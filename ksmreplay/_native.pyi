# Types of the native core's extension module (native/module.c); see ksmreplay/native.py.
from typing import Any

from numpy.typing import NDArray

PTE_NONE: int
PTE_ZERO: int
PTE_KSM_ZERO: int
CHUNK_SHIFT: int
STATE_NONE: int
STATE_UNSTABLE: int
STATE_STABLE: int
AGE_MAX: int
SEQNR_MASK: int
ZERO_PAGE_FLAG: int
CHAIN_ENTRY: int
SLOT_ABSENT: int
SLOT_DELETED: int
SCAN_END: int
SCAN_OTHER: int
SCAN_FULL: int
LISTED_VISIT: int
LISTED_SKIPPED: int
LISTED_STALE: int
FRONT_LISTED: int
FRONT_VISITS: int
FRONT_SKIPPED: int
FRONT_STALE: int
FRONT_LAST: int
FRONT_STOPPED: int
FRONT_UNSHARED: int
FRONT_HITS: int
FRONT_SUMS: int
VISIT_SHARED: int
VISIT_SHARING: int
VISIT_UNSHARED: int
VISIT_MERGING: int
VISIT_MERGES: int
VISIT_ZERO: int
VISIT_INSERTED: int
VISIT_DEAD: int
VISIT_PTES: int
VISIT_HITS: int
VISIT_CHECKSUMS: int
VISIT_SEARCHES: int
VISIT_TRACED: int
VISIT_DUPS: int
VISIT_PAIRS: int
VISIT_MADE: int
VISIT_CHAINS: int
VISIT_DUPS_MADE: int
VISIT_STABLE_ADDED: int
VISIT_UNSTABLE_DELETED: int
MADE_CHAIN: int
MADE_NEW_CHAIN: int
MADE_FIELDS: int
TRACED_ZERO: int
VISIT_SUMS: int
WRITE_RSS: int
WRITE_KSM_ZERO: int
WRITE_FAULT_ZERO: int
WRITE_STATS: int
WRITE_COW_KSM: int
WRITE_COW_ZERO: int
WRITE_EVENTS: int
WRITE_MISSING: int
STEP_NONE: int
STEP_ALLOC: int
STEP_HANDED: int
STEP_DONE: int
STEP_STOP: int
STEP_ITEMS: int
STEP_FREED: int
STEP_SUMS: int
ITEM_HOT: dict[str, Any]
ITEM_COLD: dict[str, Any]
SLOT: dict[str, Any]
TRACED: dict[str, Any]
VISIT_ARGS: dict[str, Any]

def scan(
    buf: bytes,
    pos: int,
    shift: int,
    max_items: int,
    max_fill_pages: int,
    max_event_bytes: int,
    t: NDArray[Any],
    pid: NDArray[Any],
    addr: NDArray[Any],
    len: NDArray[Any],
    fill: NDArray[Any],
    fp_end: NDArray[Any],
    fps: NDArray[Any],
    /,
) -> tuple[int, int, int]: ...
def skip(buf: bytes, pos: int, /) -> int: ...
def write_run(*arrays: NDArray[Any]) -> int: ...
def window(
    ptes: NDArray[Any],
    imap: NDArray[Any],
    fr_ksm: NDArray[Any],
    fr_node: NDArray[Any],
    items: NDArray[Any],
    cold: NDArray[Any],
    smart: int,
    keep_flagged: int,
    seqnr: int,
    budget: int,
    out_pos: NDArray[Any],
    out_cum: NDArray[Any],
    out_kind: NDArray[Any],
    out_stale: NDArray[Any],
    summary: NDArray[Any],
    /,
) -> None: ...

class Tables:
    def __init__(self, *args: Any) -> None: ...

def visit(tables: Tables, start: int, *args: Any) -> int: ...
def step(tables: Tables, *args: Any) -> tuple[int, int, int]: ...
def map_find(
    keys: NDArray[Any], bits: int, table: NDArray[Any], now: int, out: NDArray[Any], /
) -> None: ...
def map_insert(
    keys: NDArray[Any], vals: NDArray[Any], bits: int, table: NDArray[Any], now: int, /
) -> None: ...
def map_grow(table: NDArray[Any], old_bits: int, bits: int, now: int, /) -> int: ...
def free_walk(links: NDArray[Any], head: int, out: NDArray[Any], /) -> int: ...
def fingerprint_pages(data: Any, page_size: int, hash: int, out: NDArray[Any], /) -> None: ...
def read_pages(
    pid: int,
    mem: int,
    runs: NDArray[Any],
    page_size: int,
    buffer: Any,
    hash: int,
    out: NDArray[Any],
    /,
) -> tuple[int, int]: ...
