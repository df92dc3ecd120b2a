"""ksmd's clock: when it wakes, and what its batches cost.

The loop (``ksm_scan_thread()`` in mm/ksm.c, Linux 6.18): ksmd takes its
mutex, runs one batch (``ksm_do_scan(pages_to_scan)``), lets the mutex go,
then, if it may still run, waits on its own wait queue with a timeout of
``msecs_to_jiffies(sleep_millisecs)`` jiffies, or until ``sleep_millisecs``
is written with a different value; otherwise it waits, without a timeout,
until ``run`` is written or a process registers.  So:

* ``sleep_millisecs`` = 0 is a timeout of 0 jiffies, and a wait with a zero
  timeout returns at once without sleeping: ksmd runs its batches back to
  back, as fast as they cost (it only gives the CPU away where the
  scheduler asks, ``cond_resched()``);
* other values are rounded up to whole jiffies (HZ = 250 here: 4 ms), and
  the timer wheel fires a timeout on the tick after its expiry jiffy, one
  jiffy later than asked for timeouts up to 63 jiffies (about 1/4 s;
  longer ones land on coarser buckets: 8, 64, ... jiffies);
* the timeout starts when the batch ends, in the jiffy the batch ends in:
  a batch longer than what is left of its jiffy delays the next wake-up by
  whole jiffies.

A batch costs ksmd CPU time by what it did (:class:`Work`, priced by
:data:`COST_NS`): each kind of visit, the comparisons its tree walks make,
the smart_scan skips, the pages it freed or began to track, the start of a
pass (which drains the per-CPU page lists), the chains it walked, and the
batch itself.  The prices were measured on the live 6.18 kernel
(``bench/cpu_model.py``, ``bench/cpu_model.json``), on working sets far
larger than the CPU's cache; while ksmd runs back to back, work over a working
set that fits in the cache is cheaper (:func:`pass_percents`,
:data:`HOT_PERCENT`).  The same figure is the CPU time the scan-time advisor
reads (``task_sched_runtime()``).

A batch lasts its CPU time divided by the share of a CPU ksmd gets
(:data:`CPU_SHARE_PERCENT`): ksmd runs at nice 5 and gives the CPU away where
the scheduler asks, so beside other work it gets less (a nice-5 thread
beside one busy nice-0 task on its CPU gets about a quarter).  The share is
that measured while the timed scenarios' spreads were recorded
(``tests/scenarios/timed``).

Trace time 0 falls on a timer tick: jiffy ``j`` is ``[j, j + 1) * JIFFY_NS``.
"""

from __future__ import annotations

import operator
from functools import cache, lru_cache
from typing import NamedTuple

HZ = 250
"""Timer frequency of the modelled kernel (CONFIG_HZ of the 6.18 machine)."""

JIFFY_NS = 1_000_000_000 // HZ

MS = 1_000_000

_LVL_CLK_SHIFT = 3
_LVL_BITS = 6
_LVL_DEPTH = 9 if HZ > 100 else 8
"""The timer wheel's geometry (kernel/time/timer.c): level ``n`` has buckets
of ``8**n`` jiffies and takes timeouts below ``63 * 8**(n-1)`` jiffies."""


def _lvl_start(n: int) -> int:
    return ((1 << _LVL_BITS) - 1) << ((n - 1) * _LVL_CLK_SHIFT)


_TIMEOUT_CUTOFF = _lvl_start(_LVL_DEPTH)
_TIMEOUT_MAX = _TIMEOUT_CUTOFF - (1 << ((_LVL_DEPTH - 1) * _LVL_CLK_SHIFT))


def msecs_to_jiffies(msecs: int) -> int:
    """``msecs_to_jiffies()``: milliseconds rounded up to whole jiffies."""
    return -(-msecs * HZ // 1000)


def jiffies_ns(msecs: int) -> int:
    """``msecs`` rounded up to whole jiffies, in nanoseconds."""
    return msecs_to_jiffies(msecs) * JIFFY_NS


@lru_cache(maxsize=256)
def _timer_level(delta: int) -> int:
    """The wheel level a timer ``delta`` jiffies ahead goes to (a timeout: few of them)."""
    for n in range(1, _LVL_DEPTH):
        if delta < _lvl_start(n):
            return n - 1
    return _LVL_DEPTH - 1


def timer_fires_jiffy(now: int, timeout: int) -> int:
    """The jiffy on whose tick a timer armed at jiffy ``now`` for ``timeout`` (> 0) jiffies runs.

    ``calc_wheel_index()``: the expiry is rounded up to the next bucket of
    its level, so a timer never fires early and, on level 0, one jiffy late.
    """
    expires = now + timeout
    if timeout >= _TIMEOUT_CUTOFF:
        expires = now + _TIMEOUT_MAX
    shift = _timer_level(expires - now) * _LVL_CLK_SHIFT
    return ((expires >> shift) + 1) << shift


def timer_granularity_ns(msecs: int) -> int:
    """The bucket width of the timer of a ``msecs`` sleep, in ns (a jiffy up to 63 jiffies)."""
    timeout = min(msecs_to_jiffies(msecs), _TIMEOUT_MAX)
    return JIFFY_NS << (_timer_level(max(timeout, 1)) * _LVL_CLK_SHIFT)


CPU_SHARE_PERCENT = 99
"""The share of real time ksmd runs while it has work, percent: the median of
its CPU time over the trace time between two snapshots of the timed scenarios
with ``sleep_millisecs`` 0 (ksmd never sleeps there), over the recorded runs
(``tests/scenarios/timed/sleep0_*.kernel-spread.json``).  The calibration
traces, measured on a busier machine, saw about a quarter."""


def batch_wall_ns(cost_ns: int) -> int:
    """The real time a batch of ``cost_ns`` CPU time lasts, in ns
    (:data:`CPU_SHARE_PERCENT`)."""
    return cost_ns * 100 // CPU_SHARE_PERCENT


def next_wake_ns(batch_start: int, cost_ns: int, sleep_millisecs: int) -> int:
    """When ksmd starts its next batch, after one that started at ``batch_start``
    (ns) and cost ``cost_ns`` of CPU time, if nothing wakes it earlier.

    The batch ends :func:`batch_wall_ns` later.  A zero timeout does not
    sleep: the next batch starts where this one ends (a jiffy later if it
    cost nothing).  Otherwise the timer
    is armed in the jiffy the batch ends in.
    """
    end = batch_start + batch_wall_ns(cost_ns)
    timeout = msecs_to_jiffies(sleep_millisecs)
    if timeout == 0:
        # (a batch of no cost, pages_to_scan 0 (every other batch visits a
        # page or ends a pass), would spin in no time: a jiffy instead, as
        # if the scheduler took the CPU for a tick)
        return end if end > batch_start else batch_start + JIFFY_NS
    return timer_fires_jiffy(end // JIFFY_NS, timeout) * JIFFY_NS


def wake_clock(msecs: int) -> tuple[int, int]:
    """:func:`next_wake_ns`'s numbers for a sleep of ``msecs``, for the native
    core (``ksr_next_wake``): the timeout in jiffies as the timer wheel takes
    it (0: no sleep), and the bucket shift of its wheel level."""
    timeout = msecs_to_jiffies(msecs)
    if timeout == 0:
        return 0, 0
    if timeout >= _TIMEOUT_CUTOFF:
        timeout = _TIMEOUT_MAX
    return timeout, _timer_level(timeout) * _LVL_CLK_SHIFT


def sleep_ns(msecs: int) -> int:
    """ksmd's period when its batches are short and start on a tick, in ns (for
    0 a jiffy: what :func:`next_wake_ns` gives a batch of no cost).

    That is ``msecs`` rounded up to jiffies and then to the timer wheel's next
    bucket: one jiffy more up to 63 jiffies (about what was measured on the
    live 6.18 kernel over 2 s of one-page passes: sleep_millisecs 20, 10 and
    100 gave periods of about 24, 16 and 104 ms).
    """
    return next_wake_ns(0, 0, msecs)


class Work(NamedTuple):
    """What ksmd did, by kind (counts; the unit of each is priced by :data:`COST_NS`).

    A visit (``pages_scanned``) is exactly one of ``hits``, ``checksums``,
    ``searches``, ``merges`` and ``zero_merges``.
    """

    batches: int = 0
    """Batches (``ksm_do_scan()`` calls; a settle runs one per pass)."""
    passes: int = 0
    """Passes ended (the per-CPU page lists drained and the unstable tree reset
    at the next start: charged to the batch that ends the pass)."""
    skips: int = 0
    """smart_scan skips (``pages_skipped``)."""
    hits: int = 0
    """Visits of a KSM page (already linked to its item, or reached through fork)."""
    checksums: int = 0
    """Visits that found the page changed since the last (or first) look: a checksum, no more."""
    searches: int = 0
    """Visits that searched the stable tree without a merge and then the unstable
    tree (inserted, aborted, or found a partner: see ``pairs``)."""
    pairs: int = 0
    """Of the ``searches``, those that found a partner and made a new KSM page."""
    merges: int = 0
    """Visits merged into an existing KSM page (found by the stable tree search)."""
    zero_merges: int = 0
    """Visits that mapped the zero page (use_zero_pages)."""
    allocs: int = 0
    """Items made (a page seen for the first time)."""
    frees: int = 0
    """Items freed by the scan (page gone, mapping gone or unmergeable, process exited)."""
    dups: int = 0
    """Dups of a stable node chain looked at by a walk."""
    unstable_levels: int = 0
    """Comparisons of the unstable tree walks: the i-th search of a pass walks
    ``i.bit_length()`` levels (see :func:`unstable_levels`)."""
    stable_levels: int = 0
    """Comparisons of the stable tree walks of ``searches`` and ``merges``:
    ``pages_shared.bit_length()`` at the pass start, each."""


COST_NS = Work(
    batches=7,
    passes=387,
    skips=299,
    hits=224,
    checksums=826,
    searches=0,
    pairs=1_799,
    merges=4_459,
    zero_merges=2_176,
    allocs=194,
    frees=83,
    dups=25,
    unstable_levels=310,
    stable_levels=222,
)
"""ksmd's CPU time per unit of each kind of :class:`Work`, ns (fitted by
``bench/cpu_model.py`` on the live 6.18 kernel of a 2-CPU x86-64 machine)."""


CACHE_BYTES = 512 * 1024
"""The cache a pass's working set may fit in: a stated, effective size, not the
hardware's (this machine reports a 1 MiB L2 per core); the timed scenarios'
live spreads want it below 846 KiB, the working set of N = 200 pages, which
they show only partly cached (README "ksmd's clock")."""

ITEM_BYTES = 8 + 64 + 64
"""What a pass touches of every page it walks, skipped or visited: the page
table entry (8 bytes), the ``struct page`` and the rmap item (64 bytes each)."""

PAGE_BYTES = 4096
"""What a visit touches besides: the page itself (its checksum reads all of it)."""

HOT_PERCENT = 73
"""The price of work over a working set that fits in :data:`CACHE_BYTES`, in
percent of :data:`COST_NS` (fitted by ``bench/cpu_model.py hot`` on the timed
scenarios that never sleep: ksmd going round a hundred pages back to back
finds them in the cache)."""

_FIXED = ("batches", "passes")
"""Kinds priced alike whatever the working set (the batch and the pass start)."""


def cache_percent(size: int) -> int:
    """The share of :data:`COST_NS` that work over a working set of ``size``
    bytes pays, percent.

    The part of the working set that fits in :data:`CACHE_BYTES` is priced at
    :data:`HOT_PERCENT`, the rest at the full price: a working set 16 times the
    cache pays ``100 - (100 - HOT_PERCENT) / 16`` percent.
    """
    if size <= CACHE_BYTES:
        return HOT_PERCENT
    return (HOT_PERCENT * CACHE_BYTES + 100 * (size - CACHE_BYTES)) // size


def pass_percents(pages: int | None) -> tuple[int, int]:
    """What a pass over ``pages`` pages pays for its skips and for the rest of
    its work over the pages, percent of :data:`COST_NS` (None: an unknown
    working set, the full price).

    A skip touches the page's entry, ``struct page`` and item
    (:data:`ITEM_BYTES`), and a pass walks them all; a visit also reads the
    page (:data:`PAGE_BYTES`), and a pass over a working set may visit any of
    them: so skips are priced on ``pages * ITEM_BYTES``, visits, their tree
    walks, the items made and freed on ``pages * (ITEM_BYTES + PAGE_BYTES)``.
    """
    if pages is None:
        return 100, 100
    return cache_percent(pages * ITEM_BYTES), cache_percent(pages * (ITEM_BYTES + PAGE_BYTES))


def cached_pages(pass_pages: int, sleep_millisecs: int) -> int | None:
    """The working set a batch may find in the cache, in pages, for
    :func:`batch_cost_ns`: the pages of its pass while ksmd runs back to back
    (``sleep_millisecs`` 0); none (the full price) when it sleeps between
    batches, and the CPU's caches serve other work meanwhile (measured: the
    timed scenarios that sleep cost the live ksmd more, not less, than the
    full price)."""
    return pass_pages if sleep_millisecs == 0 else None


def batch_cost_ns(work: Work, pages: int | None = None) -> int:
    """Modelled ksmd CPU time of ``work``, in ns, done in a pass over ``pages``
    pages (:func:`pass_percents`; None: the full price).

    Each unit's price is a whole number of ns (its :data:`COST_NS` price times
    the percent, rounded down), so that work costs the same however it is
    split into batches.
    """
    return sum(map(operator.mul, work, _prices(*pass_percents(pages))))


def unit_prices(pages: int | None = None) -> Work:
    """What each unit of :class:`Work` costs in a pass over ``pages`` pages
    (:func:`batch_cost_ns`, which is their sum over the units)."""
    return _prices(*pass_percents(pages))


@cache
def _prices(skips: int, visits: int) -> Work:
    """Each unit's price at these percents of :data:`COST_NS` (:func:`batch_cost_ns`)."""
    return Work(
        *(
            c if name in _FIXED else c * (skips if name == "skips" else visits) // 100
            for name, c in zip(Work._fields, COST_NS, strict=True)
        )
    )


def unstable_levels(first: int, last: int) -> int:
    """Comparisons of the unstable tree walks of the searches ``first + 1`` to
    ``last`` of a pass: ``sum(i.bit_length() for i in range(first + 1, last + 1))``.

    The i-th search of a pass meets a tree of about i - 1 items: a balanced
    tree's walk is about ``log2(i)`` levels deep.
    """
    return _levels(last) - _levels(first)


def _levels(m: int) -> int:
    """``sum(i.bit_length() for i in range(1, m + 1))`` in closed form."""
    if m <= 0:
        return 0
    n = m.bit_length()
    return (n - 2) * (1 << (n - 1)) + 1 + n * (m - (1 << (n - 1)) + 1)


def worst_visit_ns(items: int, shared: int, dups: int) -> int:
    """The most one visit can cost with at most ``items`` items, ``shared`` KSM
    pages and ``dups`` chain dups, ns (with the items it frees on the way
    charged to the batch separately: see :func:`worst_batch_ns`)."""
    c = COST_NS
    depth = max(items, 1).bit_length()
    tree = c.unstable_levels * depth + c.stable_levels * max(shared, 1).bit_length()
    kinds = max(c.hits, c.checksums + c.allocs, c.searches, c.pairs, c.merges, c.zero_merges)
    return kinds + tree + c.dups * (dups + 1)


def worst_batch_ns(budget: int, items: int, shared: int, dups: int) -> int:
    """The most a batch of ``budget`` visits can cost, ns, in a state of ``items``
    items (each may be freed once), ``shared`` KSM pages and ``dups`` chain dups
    (each visit may add a KSM page and a dup)."""
    c = COST_NS
    most = items + budget
    visit = worst_visit_ns(most, shared + budget, dups + budget)
    skips = c.skips * most
    return c.batches + c.passes + budget * visit + c.frees * most + skips
