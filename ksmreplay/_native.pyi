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
WINDOW_CHUNKS: int
WALK_START: int
WALK_END: int
WALK_BUDGET: int
WALK_VISITS: int
WALK_PER_CHUNK: int
WALK_ITEM_PAGE: int
WALK_FREE: int
WALK_FRESH: int
WALK_ROWS: int
WALK_ROOM: int
WALK_SMART: int
WALK_DEAD_ROOM: int
WALK_CHUNKS: int
WALK_WINDOW_VISITS: int
WALK_STEPPED: int
WALK_STOP: int
WALK_STATUS: int
WALK_STEP_FREE: int
WALK_STEP_FRESH: int
WALK_SKIPPED: int
WALK_UNSHARED: int
WALK_SCANNED: int
WALK_HITS: int
WALK_MADE: int
WALK_FREED: int
WALK_FIELDS: int
WALKED_END: int
WALKED_BUDGET: int
WALKED_BEFORE: int
WALKED_AFTER: int
WORK_BATCHES: int
WORK_PASSES: int
WORK_SKIPS: int
WORK_HITS: int
WORK_CHECKSUMS: int
WORK_SEARCHES: int
WORK_PAIRS: int
WORK_MERGES: int
WORK_ZERO_MERGES: int
WORK_ALLOCS: int
WORK_FREES: int
WORK_DUPS: int
WORK_UNSTABLE_LEVELS: int
WORK_STABLE_LEVELS: int
WORK_FIELDS: int
CLOCK_PRICES: int
CLOCK_T: int
CLOCK_SEARCHED: int
CLOCK_SHARED_BITS: int
CLOCK_PRUNE_CLAMP: int
CLOCK_TIMEOUT: int
CLOCK_SHIFT: int
CLOCK_SHARE: int
CLOCK_JIFFY: int
CLOCK_WAKE: int
CLOCK_BATCHES: int
CLOCK_CPU: int
CLOCK_COST: int
CLOCK_LAST: int
CLOCK_WORK: int
CLOCK_SINCE: int
CLOCK_FIELDS: int
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
def walk(
    tables: Tables, pt: tuple[int, int, int, int], im: tuple[int, int, int, int], *args: Any
) -> tuple[int, int]: ...
def clock(work: NDArray[Any], clock: NDArray[Any], start: int, /) -> tuple[int, int]: ...
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
