"""Write the ported kernel selftests as JSON-lines traces (this directory).

    .venv/bin/python tests/selftests/generate.py

Each trace ports one test of ``tools/testing/selftests/mm/ksm_functional_tests.c``
or one mode of ``tools/testing/selftests/mm/ksm_tests.c`` (Linux).  The
selftests make ksmd merge by writing ``run`` = 1 and waiting until
``full_scans`` has grown by two; the traces say ``settle 2`` (exactly two full
scans from a pass boundary) and take a ``snapshot`` where the selftest reads a
counter or the page tables.  ``tests/test_selftests.py`` holds the assertions.

The functional tests work on 2 MiB regions, so their page counts depend on the
page size: each has a 4 KiB trace and a 64 KiB one (``_64k``).  ``ksm_tests``
counts in pages, so only its 4 KiB form is written.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

MIB = 1 << 20
BASE = 0x40_0000
"""Where each trace maps its region (any page-aligned address would do)."""
FILL_CF = 0xCFCF_CFCF_CFCF_CFCF
"""Fingerprint of a page memset to 0xcf."""
FILL_STAR = 0x2A2A_2A2A_2A2A_2A2A
"""Fingerprint of a page memset to '*' (0x2a)."""
KSM_TESTS_PAGES = 10
"""ksm_tests' default page count (-p) and so its pages_to_scan."""

Event = list[Any]


def literal(data: bytes) -> dict[str, str]:
    """The JSON-lines form of a literal ``write`` content."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def merge(val: int, size: int, how: str = "madvise", pid: int = 1) -> list[Event]:
    """The functional tests' map-and-merge helper: stop KSM with run=2, map
    ``size`` bytes, fill every page with ``val``, make them mergeable (madvise,
    prctl, or nothing when merge_any is inherited), run ksmd for two full scans."""
    events: list[Event] = [
        [0, "ksm", {"run": 2}],
        [0, "alloc", pid, BASE, size],
        [0, "write", pid, BASE, size, val],
    ]
    if how == "madvise":
        events.append([0, "madvise", pid, BASE, size, "mergeable"])
    elif how == "prctl":
        events.append([0, "prctl", pid, "merge_any", True])
    events += [[0, "ksm", {"run": 1}], [0, "settle", 2], [0, "snapshot", "merged"]]
    return events


def functional(page_size: int) -> dict[str, tuple[str, list[Event]]]:
    """ksm_functional_tests.c, for one page size: name -> (description, events)."""
    size = 2 * MIB
    half = size // 2
    where = "ksm_functional_tests.c"
    zero_writes: list[Event] = [
        # the test stores the page's offset (a 4-byte int) at the start of each
        # page of the second half: a write fault on each KSM zero page
        [0, "write", 1, BASE + offs, 4, literal(struct.pack("<I", offs))]
        for offs in range(half, size, page_size)
    ]
    return {
        "functional_unmerge": (
            f"{where} test_unmerge: 2 MiB of 0xcf merged (run=1, two full scans), then "
            "MADV_UNMERGEABLE on all of it: no two pages may map the same frame",
            [
                *merge(FILL_CF, size),
                [0, "madvise", 1, BASE, size, "unmergeable"],
                [0, "snapshot", "unmerged"],
                [0, "free", 1, BASE, size],
            ],
        ),
        "functional_unmerge_zero_pages": (
            f"{where} test_unmerge_zero_pages: use_zero_pages=1, 2 MiB of zeros merged: "
            "ksm_zero_pages = every page; MADV_UNMERGEABLE of the first half: half remain; "
            "a 4-byte store into each page of the second half: none remain, no duplicates",
            [
                [0, "ksm", {"use_zero_pages": 1}],
                *merge(0, size),
                [0, "madvise", 1, BASE, half, "unmergeable"],
                [0, "snapshot", "first half unmerged"],
                *zero_writes,
                [0, "snapshot", "second half written"],
                [0, "free", 1, BASE, size],
            ],
        ),
        "functional_unmerge_discarded": (
            f"{where} test_unmerge_discarded: 2 MiB of 0xcf merged, MADV_DONTNEED of the "
            "first half (empty page-table entries), MADV_UNMERGEABLE of all: no duplicates",
            [
                *merge(FILL_CF, size),
                [0, "madvise", 1, BASE, half, "dontneed"],
                [0, "madvise", 1, BASE, size, "unmergeable"],
                [0, "snapshot", "unmerged"],
                [0, "free", 1, BASE, size],
            ],
        ),
        "functional_prctl_fork": (
            f"{where} test_prctl_fork: PR_SET_MEMORY_MERGE=1, fork: the child has merge_any "
            "and merges a 2 MiB region of 0xcf without madvise; after it exits the parent "
            "clears merge_any",
            [
                [0, "prctl", 1, "merge_any", True],
                [0, "fork", 1, 2],
                [0, "snapshot", "forked"],
                *merge(FILL_CF, size, how="inherited", pid=2),
                [0, "free", 2, BASE, size],
                [0, "exit", 2],
                [0, "prctl", 1, "merge_any", False],
                [0, "snapshot", "parent cleared"],
            ],
        ),
        "functional_prctl_unmerge": (
            f"{where} test_prctl_unmerge: 2 MiB of 0xcf merged through PR_SET_MEMORY_MERGE=1, "
            "then PR_SET_MEMORY_MERGE=0: no duplicates",
            [
                *merge(FILL_CF, size, how="prctl"),
                [0, "prctl", 1, "merge_any", False],
                [0, "snapshot", "unmerged"],
                [0, "free", 1, BASE, size],
            ],
        ),
        "functional_fork_merging_page_count": (
            f"{where} test_fork_ksm_merging_page_count: 2 MiB of 0xcf merged, fork: the "
            "child's ksm_merging_pages is 0 (not inherited); then run=2 and munmap",
            [
                *merge(FILL_CF, size),
                [0, "fork", 1, 2],
                [0, "snapshot", "forked"],
                [0, "exit", 2],
                [0, "ksm", {"run": 2}],
                [0, "snapshot", "stopped"],
                [0, "free", 1, BASE, size],
            ],
        ),
    }


def page_size_free() -> dict[str, tuple[str, list[Event]]]:
    """Ports whose numbers do not depend on the page size (4 KiB only)."""
    page = 4096
    size = KSM_TESTS_PAGES * page
    setup: list[Event] = [
        # ksm_tests' main(): stop and unmerge, then its tunables
        [0, "ksm", {"run": 2, "sleep_millisecs": 0, "pages_to_scan": KSM_TESTS_PAGES}],
    ]

    def merge_pages(count: int, val: int, how: str = "madvise") -> list[Event]:
        advice: Event = (
            [0, "madvise", 1, BASE, count * page, "mergeable"]
            if how == "madvise"
            else [0, "prctl", 1, "merge_any", True]
        )
        return [
            [0, "alloc", 1, BASE, count * page],
            [0, "write", 1, BASE, count * page, val],
            advice,
            [0, "ksm", {"run": 1}],
            [0, "settle", 2],
            [0, "snapshot", "merged"],
        ]

    def zero(z: int) -> list[Event]:
        return [
            *setup,
            [0, "ksm", {"use_zero_pages": z}],
            *merge_pages(KSM_TESTS_PAGES, 0),
            [0, "free", 1, BASE, size],
        ]

    return {
        "functional_prctl": (
            "ksm_functional_tests.c test_prctl: PR_SET_MEMORY_MERGE=1 is reported back as "
            "set, PR_SET_MEMORY_MERGE=0 as cleared (the process owns one mapping)",
            [
                [0, "alloc", 1, BASE, page],
                [0, "prctl", 1, "merge_any", True],
                [0, "snapshot", "set"],
                [0, "prctl", 1, "merge_any", False],
                [0, "snapshot", "cleared"],
            ],
        ),
        "ksm_tests_merge": (
            "ksm_tests.c -M (madvise): 10 pages of '*', pages_to_scan 10, sleep_millisecs 0, "
            "merged after two full scans: pages_shared 1, pages_sharing 9",
            [*setup, *merge_pages(KSM_TESTS_PAGES, FILL_STAR), [0, "free", 1, BASE, size]],
        ),
        "ksm_tests_merge_prctl": (
            "ksm_tests.c -M -t 1 (prctl): as -M, the pages made mergeable by "
            "PR_SET_MEMORY_MERGE=1, which the test clears again after munmap",
            [
                *setup,
                *merge_pages(KSM_TESTS_PAGES, FILL_STAR, how="prctl"),
                [0, "free", 1, BASE, size],
                [0, "prctl", 1, "merge_any", False],
            ],
        ),
        "ksm_tests_unmerge": (
            "ksm_tests.c -U: 2 pages of '*' merged, one byte changed in each ('-' and '+'), "
            "one more full scan: pages_shared 0, pages_sharing 0",
            [
                *setup,
                *merge_pages(2, FILL_STAR),
                [0, "write", 1, BASE, 1, literal(b"-")],
                [0, "write", 1, BASE + page, 1, literal(b"+")],
                [0, "settle", 1],
                [0, "snapshot", "after one scan"],
                [0, "free", 1, BASE, 2 * page],
            ],
        ),
        "ksm_tests_zero_pages_z0": (
            "ksm_tests.c -Z -z 0: 10 zero pages with use_zero_pages 0 merge with each "
            "other: pages_shared 1, pages_sharing 9",
            zero(0),
        ),
        "ksm_tests_zero_pages_z1": (
            "ksm_tests.c -Z -z 1: 10 zero pages with use_zero_pages 1 go to the zero page: "
            "pages_shared 0, pages_sharing 0",
            zero(1),
        ),
    }


def write(name: str, description: str, page_size: int, events: list[Event]) -> None:
    header: dict[str, Any] = {"ksmreplay": 1}
    if page_size != 4096:
        header["page_size"] = page_size
    header["description"] = description
    lines = [json.dumps(header)] + [json.dumps(event) for event in events]
    (HERE / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def main() -> int:
    for page_size, suffix in ((4096, ""), (65536, "_64k")):
        for name, (description, events) in functional(page_size).items():
            write(name + suffix, description, page_size, events)
    for name, (description, events) in page_size_free().items():
        write(name, description, 4096, events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
