"""What each simulated kernel version does differently: one object per version.

A run replays one zero-page mode (``modes.py``) on one kernel version.  The
engine asks the version, as it asks the mode; it never tests a version's
name.  Every behaviour that differs from Linux 6.18 is one attribute here,
with the kernel commit that introduced it.  Versions older than a feature
lack it; the report shows ``null`` for a counter or knob the version does not
have, and a trace's write to a knob it does not have is refused with ENOENT,
as the sysfs file is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ksmreplay.errors import UsageError
from ksmreplay.ksm.knobs import KnobValue
from ksmreplay.ksm.modes import MODES

SMART_SCAN_KNOBS = ("smart_scan",)
"""The knobs of smart_scan (Linux 6.7)."""

ADVISOR_KNOBS = (
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)
"""The knobs of the scan-time advisor (Linux 6.8)."""

ABSENT: Mapping[str, KnobValue] = {"smart_scan": 0, "advisor_mode": "none"}
"""What ksmd behaves as when a knob's file does not exist: no smart_scan, no advisor."""


@dataclass(frozen=True, slots=True)
class Kernel:
    """One Linux version, as the differences from 6.18 that KSM's counters can show.

    :ivar version: the report's ``kernel`` (``6.1``, ``6.12``, ``6.18``).
    :ivar modes: the zero-page modes this version can replay.  The zero-page
        tracking series (Linux kernel commits 79271476b336, e2942062e01d,
        6080d19f0704, 1a8e84305783, in v6.6) is what ``unshare`` is, and the
        ``v6`` design was proposed on top of 6.2; before 6.6 only ``legacy``
        exists.  On later versions ``legacy`` is that version with the series
        reverted.
    :ivar pages_scanned: ``/sys/kernel/mm/ksm/pages_scanned`` exists (commit
        b348b5fe2b5f "mm/ksm: add pages scanned metric", in v6.6).
    :ivar smart_scan: the ``smart_scan`` knob and ``pages_skipped`` exist
        (commits 5e924ff54d08 "mm/ksm: add "smart" page scanning mode" and
        e5a689912689 "mm/ksm: add pages_skipped metric", in v6.7).  Without
        it ksmd visits every page of every pass.
    :ivar advisor: the scan-time advisor and its five knobs exist (commits
        4e5fa4f5eff6 "mm/ksm: add ksm advisor" and 66790e9a735b "mm/ksm: add
        sysfs knobs for advisor", in v6.8).
    :ivar merge_any: ``prctl(PR_SET_MEMORY_MERGE)`` exists (commit
        d7597f59d1d3 "mm: add new api to enable ksm per process", in v6.4);
        before, the prctl fails with EINVAL and the process stays as it was.
    :ivar profits: ``general_profit`` and ksm_stat's ``ksm_process_profit``
        exist (commit d21077fbc2fc "mm: add new KSM process and sysfs knobs",
        in v6.4).
    :ivar checksum_first: an ordinary page's visit tests the checksum (and
        then the zero page) before it searches the stable tree (commits
        d58a361b0350 "mm/ksm: don't waste time searching stable tree for fast
        changing page" and ac90c56bbd73 "mm/ksm: refactor out
        try_to_merge_with_zero_page()", in v6.11).  Before, the stable tree
        was searched first, with the item still linked where it was: a page
        equal to an existing KSM page merged on its first visit, and a page
        of zeros joined an existing KSM page of zeros rather than the zero
        page.
    :ivar fork_resets_counters: a fork child's ``ksm_rmap_items`` and
        ``ksm_merging_pages`` start at 0 (commit 4d6fc29f3634 "mm/ksm: fix
        incorrect KSM counter handling in mm_struct during fork", in v6.18,
        backported to the 6.12 stable series: Debian's 6.12 has it, as its
        recorded answers show).  Before, the child's mm was a copy of the
        parent's, counters included, and the copied values stayed in the
        child's counters for its whole life.
    :ivar chain_collapse_any: a stable node chain left with one dup becomes a
        plain node at any lookup, and the lookup settles for the fullest dup
        when none has room (commit a0b856b617c5 "mm/ksm: optimize the
        chain()/chain_prune() interfaces", in v6.11).  Before, only a lookup
        that pruned the chain (at most every
        ``stable_node_chains_prune_millisecs``) collapsed it, and only if its
        one dup had room for another page; a lookup that found no dup with
        room returned nothing and left the chain as it was.
    :ivar merge_flags: ksm_stat shows ``ksm_merge_any`` and ``ksm_mergeable``
        (commit 3ab76c767bc7 "ksm: add ksm involvement information for each
        process", in v6.14).
    """

    version: str
    modes: tuple[str, ...]
    pages_scanned: bool
    smart_scan: bool
    advisor: bool
    merge_any: bool
    profits: bool
    checksum_first: bool
    chain_collapse_any: bool
    fork_resets_counters: bool
    merge_flags: bool

    @property
    def missing_knobs(self) -> frozenset[str]:
        """The knobs whose sysfs file this version does not have."""
        missing: list[str] = []
        if not self.smart_scan:
            missing += SMART_SCAN_KNOBS
        if not self.advisor:
            missing += ADVISOR_KNOBS
        return frozenset(missing)

    def check_mode(self, mode: str) -> None:
        """Raise a usage error if ``mode`` cannot be replayed on this version."""
        if mode not in self.modes:
            raise UsageError(
                f"mode {mode!r} does not exist on Linux {self.version}: the zero-page "
                f"tracking series came in 6.6 (modes on {self.version}: "
                f"{', '.join(self.modes)})"
            )


LINUX_6_18 = Kernel(
    "6.18",
    modes=tuple(MODES),
    pages_scanned=True,
    smart_scan=True,
    advisor=True,
    merge_any=True,
    profits=True,
    checksum_first=True,
    chain_collapse_any=True,
    fork_resets_counters=True,
    merge_flags=True,
)
"""Linux 6.18: what the modes of ``modes.py`` describe."""

LINUX_6_12 = replace(LINUX_6_18, version="6.12", merge_flags=False)
"""Linux 6.12 (Debian 13): 6.18 without ksm_stat's two yes/no lines.

The fork fix of 6.18 is in the 6.12 stable series, so it is kept here."""

LINUX_6_1 = Kernel(
    "6.1",
    modes=("legacy",),
    pages_scanned=False,
    smart_scan=False,
    advisor=False,
    merge_any=False,
    profits=False,
    checksum_first=False,
    chain_collapse_any=False,
    fork_resets_counters=False,
    merge_flags=False,
)
"""Linux 6.1 (Debian 12): no zero-page series, pages_scanned, smart_scan,
advisor, prctl or profits; the stable tree searched before the checksum test;
chains collapsed only when pruned; fork children inherit their parent's
per-mm counters."""

KERNELS: dict[str, Kernel] = {k.version: k for k in (LINUX_6_1, LINUX_6_12, LINUX_6_18)}
"""Every version ``--kernel`` accepts, oldest first."""

DEFAULT_KERNEL = LINUX_6_18.version
"""The version replayed when none is named."""


def kernel(version: str) -> Kernel:
    """The :class:`Kernel` of ``version``; raise a usage error for an unknown one."""
    found = KERNELS.get(version)
    if found is None:
        raise UsageError(f"unknown kernel version {version!r} (choose from {', '.join(KERNELS)})")
    return found


def expand_kernels(versions: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``--kernel`` values as a list of versions, each once, in the order asked for."""
    if isinstance(versions, str):
        versions = (versions,)
    out: list[str] = []
    for v in versions:
        kernel(v)
        if v not in out:
            out.append(v)
    return tuple(out) or (DEFAULT_KERNEL,)
