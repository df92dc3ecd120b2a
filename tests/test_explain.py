"""``run --explain``: every resident page in exactly one category (``explain.py``).

GIVEN a trace, WHEN it is replayed with ``explain``, THEN every snapshot's
categories add up to the pages counted as resident without KSM, for the
system, each process and each mapping; small traces with the counts worked
out by hand from the rules (README, "Why pages are not merged") show each
category; the scalar ksmd and the native core explain alike.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from randtrace import encode_trace, valid_traces
from support import quick, replay_path
from testdata import SCENARIOS_DIR, case_traces

from ksmreplay import native
from ksmreplay.cli import cli
from ksmreplay.explain import CATEGORIES, TWIN_NOT_MERGED
from ksmreplay.inspect import inspect_trace
from ksmreplay.replay import MODES
from ksmreplay.report import Report, schema_text
from ksmreplay.trace import TraceReader, open_trace
from ksmreplay.trace.events import (
    Alloc,
    Event,
    Exit,
    Fork,
    Free,
    Header,
    Ksm,
    Madvise,
    Prctl,
    Write,
)
from ksmreplay.vm.content import PageStore, literal_write

ROOT = Path(__file__).parent.parent
BUNDLED = quick(sorted((ROOT / "traces").glob("*.msgpack"))) + sorted(
    (ROOT / "traces" / "selftests").glob("*.jsonl")
)
CASES = case_traces()
"""The golden cases' traces (those that are scenarios' too)."""
SCENARIOS = [p for p in sorted(SCENARIOS_DIR.glob("*.jsonl")) if p not in CASES]
"""The scenarios' traces that are no golden case's."""
SMALL = CASES + SCENARIOS + sorted((ROOT / "traces" / "selftests").glob("*.jsonl"))


def _replay(path: Path, modes: tuple[str, ...] = MODES, explain: bool = True) -> Report:
    return replay_path(path, modes, explain=explain)


def _snaps(report: Report) -> list[tuple[str, dict[str, Any]]]:
    return [
        (run["mode"], dict(snap))
        for run in report["runs"]
        for snap in [*run["snapshots"], run["final"]]
    ]


def check_sums(report: Report) -> None:
    """The categories of every snapshot add up, for the system, each process and each mapping."""
    for mode, snap in _snaps(report):
        explain = snap["explain"]
        where = f"{mode} {snap['label']!r}"
        zero = snap["memory"]["zero_page_maps_by_ksm"]
        without = sum(p["rss_anon_pages"] for p in snap["processes"]) + zero
        assert list(explain["system"]) == list(CATEGORIES), where
        assert sum(explain["system"].values()) == without, where
        assert explain["system"]["ksm_zero_page"] == zero, where
        assert [p["pid"] for p in explain["processes"]] == [p["pid"] for p in snap["processes"]]
        for proc, ex in zip(snap["processes"], explain["processes"], strict=True):
            cats = ex["categories"]
            assert list(cats) == list(CATEGORIES)
            assert min(cats.values()) >= 0
            # RssAnon, plus the process's PTEs KSM pointed at the zero page
            assert sum(cats.values()) - cats["ksm_zero_page"] == proc["rss_anon_pages"], where
            if mode == "unshare":
                assert cats["ksm_zero_page"] == proc["ksm_zero_pages"], where
            mappings = [m for m in explain["mappings"] if m["pid"] == proc["pid"]]
            for name in CATEGORIES:
                assert sum(m["categories"][name] for m in mappings) == cats[name], where
        for name in CATEGORIES:
            total = sum(p["categories"][name] for p in explain["processes"])
            assert total == explain["system"][name], where
        keys = [(m["pid"], m["start"]) for m in explain["mappings"]]
        assert keys == sorted(keys), where
        for m in explain["mappings"]:
            assert m["start"] < m["end"] and sum(m["categories"].values()) > 0, where
            assert sum(m["categories"].values()) <= (m["end"] - m["start"]) // 4096


def check_against_inspect(path: Path, report: Report) -> None:
    """At the end, ``inspect`` (no replay) finds as many written pages, and
    as many in mergeable mappings, as the unshare replay explains (legacy and
    v6 keep KSM's zero pages in mappings made unmergeable; v6 also unshares
    zero pages that were only read)."""
    with open_trace(str(path)) as reader:
        info = inspect_trace(reader)["explain"]
    (run,) = [run for run in report["runs"] if run["mode"] == "unshare"]
    system = run["final"]["explain"]["system"]
    total = sum(system.values())
    assert (total, total - system["not_mergeable"]) == (
        info["written_pages"],
        info["mergeable_pages"],
    )
    by_pid = {p["pid"]: p for p in run["final"]["explain"]["processes"]}
    for proc in info["processes"]:
        assert sum(by_pid[proc["pid"]]["categories"].values()) == proc["written_pages"]


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_categories_add_up_in_every_bundled_trace(path: Path) -> None:
    report = _replay(path)
    check_sums(report)
    check_against_inspect(path, report)


@pytest.mark.parametrize("path", CASES + SCENARIOS, ids=[p.name for p in CASES + SCENARIOS])
def test_categories_add_up_in_every_case_and_scenario(path: Path) -> None:
    report = _replay(path)
    check_sums(report)
    check_against_inspect(path, report)


# --- hand-worked cases ----------------------------------------------------------------

KNOBS = '[0, "ksm", {"pages_to_scan": 1000, "sleep_millisecs": 20, "smart_scan": 0}]'
TWO_PAGES = [
    '[0, "alloc", 1, 65536, 8192]',
    '[0, "write", 1, 65536, 8192, 66]',
    '[0, "madvise", 1, 65536, 8192, "mergeable"]',
    '[0, "ksm", {"run": 1}]',
]

HAND: dict[str, tuple[list[str], dict[str, int]]] = {
    # Two pages of one content, settled: one KSM page mapped twice.
    "merged": ([KNOBS, *TWO_PAGES, '[0, "settle"]'], {"merged": 2}),
    # Two zero-filled pages with use_zero_pages=1: both PTEs point at the zero page.
    "ksm_zero_page": (
        [
            '[0, "ksm", {"pages_to_scan": 1000, "smart_scan": 0, "use_zero_pages": 1}]',
            '[0, "alloc", 1, 65536, 8192]',
            '[0, "write", 1, 65536, 8192, 0]',
            '[0, "madvise", 1, 65536, 8192, "mergeable"]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle"]',
        ],
        {"ksm_zero_page": 2},
    ),
    # Three equal pages never madvised.
    "not_mergeable": (
        [
            KNOBS,
            '[0, "alloc", 1, 65536, 12288]',
            '[0, "write", 1, 65536, 12288, 66]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle"]',
        ],
        {"not_mergeable": 3},
    ),
    # Three different contents in a mergeable mapping; the fourth page holds
    # the first's content but in a mapping that is not mergeable: no twin.
    "unique_content": (
        [
            KNOBS,
            '[0, "alloc", 1, 65536, 12288]',
            '[0, "write", 1, 65536, 12288, [66, 67, 68]]',
            '[0, "madvise", 1, 65536, 12288, "mergeable"]',
            '[0, "alloc", 2, 65536, 4096]',
            '[0, "write", 2, 65536, 4096, 66]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle"]',
        ],
        {"unique_content": 3, "not_mergeable": 1},
    ),
    # Two different pages, then fork: four PTEs, two frames, no twin.
    "shared_after_fork": (
        [
            KNOBS,
            '[0, "alloc", 1, 65536, 8192]',
            '[0, "write", 1, 65536, 8192, [97, 98]]',
            '[0, "madvise", 1, 65536, 8192, "mergeable"]',
            '[0, "fork", 1, 2]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle"]',
        ],
        {"shared_after_fork": 4},
    ),
    # ksmd wakes only after the instant: at t=0 it has seen nothing.
    "not_yet_visited": ([KNOBS, *TWO_PAGES], {"not_yet_visited": 2}),
    # The wake-up at t=0 records both checksums (66); at 1 ms both pages hold 67.
    "changed_since_visit": (
        [KNOBS, *TWO_PAGES, '[1000000, "write", 1, 65536, 8192, 67]'],
        {"changed_since_visit": 2},
    ),
    # The same without the write: the next visit compares them.
    "awaiting_next_visit": (
        [KNOBS, *TWO_PAGES, '[1000000, "read", 1, 65536, 4096]'],
        {"awaiting_next_visit": 2},
    ),
    # Pass 1 records A=66 and B=67; B then becomes 66; pass 2 puts A in the
    # unstable tree, and records B's new checksum (no tree search).
    "in_unstable_tree": (
        [
            KNOBS,
            '[0, "alloc", 1, 65536, 8192]',
            '[0, "write", 1, 65536, 8192, [66, 67]]',
            '[0, "madvise", 1, 65536, 8192, "mergeable"]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle", 1]',
            '[0, "write", 1, 69632, 4096, 66]',
            '[0, "settle", 1]',
        ],
        {"in_unstable_tree": 1, "awaiting_next_visit": 1},
    ),
    # smart_scan: A (66) is visited in passes 1-4 and 6 and skipped in 5 and
    # 7 (ages 4 and 6; skip_age gives 1 then 2 skips); B changes before every
    # pass, then becomes 66.  After pass 7 A has one skip left.
    "skipped_by_smart_scan": (
        [
            '[0, "ksm", {"pages_to_scan": 1000, "sleep_millisecs": 20, "smart_scan": 1}]',
            '[0, "alloc", 1, 65536, 8192]',
            '[0, "write", 1, 65536, 8192, [66, 100]]',
            '[0, "madvise", 1, 65536, 8192, "mergeable"]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle", 1]',
            *(f'[0, "write", 1, 69632, 4096, {101 + i}]\n[0, "settle", 1]' for i in range(6)),
            '[0, "write", 1, 69632, 4096, 66]',
        ],
        {"skipped_by_smart_scan": 1, "changed_since_visit": 1},
    ),
    # max_page_sharing=2, five equal pages: two KSM pages of two mappings
    # each (a chain), the fifth has no KSM page with room and no private twin.
    "max_page_sharing": (
        [
            '[0, "ksm", {"pages_to_scan": 1000, "smart_scan": 0, "max_page_sharing": 2}]',
            '[0, "alloc", 1, 65536, 20480]',
            '[0, "write", 1, 65536, 20480, 66]',
            '[0, "madvise", 1, 65536, 20480, "mergeable"]',
            '[0, "ksm", {"run": 1}]',
            '[0, "settle"]',
        ],
        {"merged": 4, "max_page_sharing": 1},
    ),
}


def _write_trace(tmp_path: Path, lines: list[str]) -> Path:
    """The trace of ``lines`` with a snapshot "s" at the end (at the last event's time)."""
    t = json.loads(lines[-1].splitlines()[-1])[0]
    path = tmp_path / "case.jsonl"
    path.write_text('{"ksmreplay": 1}\n' + "\n".join([*lines, f'[{t}, "snapshot", "s"]']) + "\n")
    return path


def test_every_category_has_a_hand_worked_case() -> None:
    assert {name for _lines, expected in HAND.values() for name in expected} == set(CATEGORIES)


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_worked_case(name: str, tmp_path: Path, both_engines: str) -> None:
    lines, expected = HAND[name]
    report = _replay(_write_trace(tmp_path, lines))
    check_sums(report)
    want = {c: expected.get(c, 0) for c in CATEGORIES}
    for mode, snap in _snaps(report):
        assert snap["explain"]["system"] == want, (mode, snap["label"])


def test_each_process_and_mapping_has_its_own_pages(tmp_path: Path) -> None:
    lines, _expected = HAND["unique_content"]
    explain = _replay(_write_trace(tmp_path, lines), ("unshare",))["runs"][0]["final"]["explain"]
    zero = dict.fromkeys(CATEGORIES, 0)
    assert explain["processes"] == [
        {"pid": 1, "categories": {**zero, "unique_content": 3}},
        {"pid": 2, "categories": {**zero, "not_mergeable": 1}},
    ]
    assert explain["mappings"] == [
        {"pid": 1, "start": 65536, "end": 77824, "categories": {**zero, "unique_content": 3}},
        {"pid": 2, "start": 65536, "end": 69632, "categories": {**zero, "not_mergeable": 1}},
    ]


@pytest.mark.parametrize("smart_scan", [0, 1])
def test_random_content_is_unique_whatever_smart_scan(tmp_path: Path, smart_scan: int) -> None:
    # 3,930 pages of random content: the kernel counts them as pages_unshared
    # or, once smart_scan skips them, as pages_volatile; they are unique.
    rng = random.Random(3930)
    contents = rng.sample(range(1, 2**63), 3930)
    lines = [
        f'[0, "ksm", {{"pages_to_scan": 1000, "smart_scan": {smart_scan}}}]',
        f'[0, "alloc", 1, 1048576, {3930 * 4096}]',
        f'[0, "write", 1, 1048576, {3930 * 4096}, {json.dumps(contents)}]',
        f'[0, "madvise", 1, 1048576, {3930 * 4096}, "mergeable"]',
        '[0, "ksm", {"run": 1}]',
        '[5000000, "snapshot", "first pass"]',
        '[5000000, "settle", 2]',
        '[5000000, "snapshot", "two passes"]',
        '[5000000, "settle"]',
        *(f'[{t * 100_000_000}, "snapshot", "{t / 10} s"]' for t in range(1, 21)),
    ]
    report = _replay(_write_trace(tmp_path, lines))
    check_sums(report)
    want = {c: 3930 if c == "unique_content" else 0 for c in CATEGORIES}
    volatile = {mode: 0 for mode in MODES}
    for mode, snap in _snaps(report):
        assert snap["explain"]["system"] == want, (mode, snap["label"])
        if snap["label"].endswith(" s"):
            ksm = snap["ksm"]
            volatile[mode] = max(volatile[mode], ksm["pages_volatile"])
            if not smart_scan:
                assert ksm["pages_unshared"] == 3930, (mode, ksm)
    # What the kernel's counters say instead: with smart_scan, every one of
    # those pages at times shows as "volatile" (changing too fast).
    assert volatile == {mode: 3930 if smart_scan else 0 for mode in MODES}


def _explains(path: Path) -> list[Any]:
    return [snap["explain"] for _mode, snap in _snaps(_replay(path))]


def test_scalar_and_native_explain_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    if native.native() is None:
        pytest.skip("the native core was not built (no C compiler at install?)")
    traces = [*SMALL, ROOT / "traces" / "demo.msgpack"]
    fast = [_explains(path) for path in traces]
    monkeypatch.setenv(native.ENV, "0")
    assert native.native() is None
    for path, got in zip(traces, fast, strict=True):
        assert _explains(path) == got, path.name


def test_without_explain_no_snapshot_has_it() -> None:
    report = _replay(ROOT / "traces" / "demo.msgpack", explain=False)
    assert all("explain" not in snap for _mode, snap in _snaps(report))


# --- the command ----------------------------------------------------------------------


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["run", *args], prog_name="ksmreplay")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_run_explain_json_follows_the_schema(tmp_path: Path) -> None:
    lines, _expected = HAND["max_page_sharing"]
    path = str(_write_trace(tmp_path, lines))
    report = json.loads(_run(path, "--mode", "all", "--format", "json", "--explain"))
    jsonschema.validate(report, json.loads(schema_text()))
    assert report["runs"][0]["final"]["explain"]["system"]["max_page_sharing"] == 1
    assert '"explain":' not in _run(path, "--format", "json")
    broken = json.loads(json.dumps(report))
    del broken["runs"][0]["final"]["explain"]["system"]["merged"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(schema_text()))


def test_run_explain_csv_and_tsv_rows(tmp_path: Path) -> None:
    lines, _expected = HAND["unique_content"]
    path = str(_write_trace(tmp_path, lines))

    def without_t_and_event(text: str, sep: str) -> list[str]:
        # (the columns t and event follow the snapshot's label)
        return [sep.join(r.split(sep)[:2] + r.split(sep)[4:]) for r in text.splitlines()]

    csv = _run(path, "--mode", "unshare", "--format", "csv", "--explain")
    rows = without_t_and_event(csv, ",")
    final = [r for r in rows if r.startswith("unshare,final,explain")]
    assert "unshare,final,explain,,unique_content,3" in final
    assert "unshare,final,explain,,not_mergeable,1" in final
    assert "unshare,final,explain_process,2,not_mergeable,1" in final
    assert "unshare,final,explain_mapping,1,65536-77824:unique_content,3" in final
    assert len(final) == len(CATEGORIES) * (1 + 2 + 2)
    tsv = without_t_and_event(_run(path, "--mode", "unshare", "--format", "tsv", "--explain"), "\t")
    assert "unshare\tfinal\texplain_mapping\t2\t65536-69632:not_mergeable\t1" in tsv
    assert not [r for r in _run(path, "--format", "csv").splitlines() if ",explain" in r]


def test_run_explain_table(tmp_path: Path) -> None:
    lines, _expected = HAND["max_page_sharing"]
    path = str(_write_trace(tmp_path, lines))
    text = _run(path, "--mode", "legacy", "--explain")
    rows = text.splitlines()
    # 5 pages of 4 KiB: 4 merged (80 %), 1 held back (20 %)
    cells = [row.split() for row in rows]
    assert ["merged", "legacy", "4", "16.00", "KiB", "80.00"] in cells
    assert ["max_page_sharing", "legacy", "1", "4.00", "KiB", "20.00"] in cells
    assert ["unique_content", "legacy", "0", "0", "B", "0.00"] in cells
    # snapshot "s" only: the final state, the same, is one line
    assert cells.count(["explain", "mode", "pages", "size", "%"]) == 1
    assert 'final (event 7, t=0 ns): as snapshot "s" above' in rows
    title = "mappings with the most pages that have a twin, not merged (top 10)"
    at = len(rows) - 1 - rows[::-1].index(title)
    assert rows[at + 1].split() == [
        "mode",
        "pid",
        "start",
        "end",
        "twin,",
        "not",
        "merged",
        "size",
        "mostly",
    ]
    assert rows[at + 2].split() == [
        "legacy",
        "1",
        "0x10000",
        "0x15000",
        "1",
        "4.00",
        "KiB",
        "max_page_sharing",
    ]
    assert len(rows) > at + 3 and rows[at + 3] == ""
    assert title not in _run(path, "--mode", "legacy")
    # in pages, no size column; in bytes, exact
    in_pages = _run(path, "--mode", "legacy", "--explain", "--units", "pages").splitlines()
    assert ["merged", "legacy", "4", "80.00"] in [row.split() for row in in_pages]
    in_bytes = _run(path, "--mode", "legacy", "--explain", "--units", "bytes").splitlines()
    assert ["merged", "legacy", "4", "16384", "80.00"] in [row.split() for row in in_bytes]


def test_category_names() -> None:
    # lower_snake_case; one name says "unique" (REPORT_FORMAT.md); the table's
    # "twin, not merged" column adds up the categories of pages with a twin.
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", name) for name in CATEGORIES)
    assert [c for c in CATEGORIES if "unique" in c] == ["unique_content"]
    assert set(TWIN_NOT_MERGED) == {
        "not_yet_visited",
        "changed_since_visit",
        "max_page_sharing",
        "in_unstable_tree",
        "skipped_by_smart_scan",
        "awaiting_next_visit",
    }


# --- inspect: what KSM could save, without a replay -----------------------------------


def model_explain(header: Header, events: list[Event]) -> dict[str, Any]:
    """``inspect``'s ``explain``, page by page."""
    shift = header.page_size.bit_length() - 1
    store = PageStore(header.page_size)
    written: dict[int, dict[int, int]] = {}
    mapped: dict[int, set[int]] = {}
    mergeable: dict[int, set[int]] = {}
    merge_any: dict[int, bool] = {}
    use_zero = False

    def new(pid: int) -> None:
        if pid not in mapped:
            written[pid], mapped[pid], mergeable[pid], merge_any[pid] = {}, set(), set(), False

    for ev in events:
        if isinstance(ev, (Alloc, Free, Madvise, Write)):
            pages = set(range(ev.addr >> shift, -(-(ev.addr + ev.len) // header.page_size)))
        if isinstance(ev, Alloc):
            new(ev.pid)
            mapped[ev.pid] |= pages
            if merge_any[ev.pid]:
                mergeable[ev.pid] |= pages
        elif isinstance(ev, Prctl):
            new(ev.pid)
            if ev.value != merge_any[ev.pid]:
                merge_any[ev.pid] = ev.value
                mergeable[ev.pid] = set(mapped[ev.pid]) if ev.value else set()
        elif isinstance(ev, Write):
            page_map = written[ev.pid]
            if isinstance(ev.content, bytes):
                first, fps = literal_write(
                    ev.addr, ev.content, header.page_size, lambda p, m=page_map: m.get(p, 0), store
                )
            elif isinstance(ev.content, int):
                first, fps = ev.addr >> shift, [ev.content] * len(pages)
            else:
                first, fps = ev.addr >> shift, ev.content.tolist()
            page_map.update(zip(range(first, first + len(fps)), fps, strict=True))
        elif isinstance(ev, Free):
            for page in pages:
                written[ev.pid].pop(page, None)
            mapped[ev.pid] -= pages
            mergeable[ev.pid] -= pages
        elif isinstance(ev, Madvise):
            if ev.advice == "dontneed":
                for page in pages:
                    written[ev.pid].pop(page, None)
            elif ev.advice == "mergeable":
                mergeable[ev.pid] |= pages & mapped[ev.pid]
            else:
                mergeable[ev.pid] -= pages
        elif isinstance(ev, Fork):
            written[ev.child_pid] = dict(written[ev.pid])
            mapped[ev.child_pid] = set(mapped[ev.pid])
            mergeable[ev.child_pid] = set(mergeable[ev.pid])
            merge_any[ev.child_pid] = merge_any[ev.pid]
        elif isinstance(ev, Exit):
            del written[ev.pid], mapped[ev.pid], mergeable[ev.pid], merge_any[ev.pid]
        elif isinstance(ev, Ksm) and "use_zero_pages" in ev.settings:
            use_zero = bool(ev.settings["use_zero_pages"])

    def saved(contents: list[int]) -> int:
        distinct = set(contents)
        return len(contents) - len(distinct) + int(use_zero and 0 in distinct)

    every = [fp for pid in written for fp in written[pid].values()]
    merg = [fp for pid in written for p, fp in written[pid].items() if p in mergeable[pid]]
    return {
        "written_pages": len(every),
        "mergeable_pages": len(merg),
        "distinct_contents": len(set(every)),
        "distinct_mergeable_contents": len(set(merg)),
        "ideal_saved_pages": saved(merg),
        "ideal_saved_pages_all_mergeable": saved(every),
        "saved_lost_to_unmergeable_pages": saved(every) - saved(merg),
        "processes": [
            {
                "pid": pid,
                "written_pages": len(written[pid]),
                "mergeable_pages": len(written[pid].keys() & mergeable[pid]),
                "distinct_contents": len(set(written[pid].values())),
            }
            for pid in sorted(written)
        ],
    }


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(valid_traces())
def test_inspect_explain_is_what_a_page_by_page_model_finds(
    trace: tuple[Header, list[Event]],
) -> None:
    header, events = trace
    with TraceReader(io.BytesIO(encode_trace(header, events, "msgpack")), "t") as reader:
        info = inspect_trace(reader)
    assert info["explain"] == model_explain(header, events)


def test_inspect_explain_by_hand(tmp_path: Path) -> None:
    # Two processes: pid 1 madvises 4 of its 6 pages (contents 5 5 5 0 | 7 7),
    # pid 2 (merge_any) holds 5 5 and a 9; use_zero_pages=1.
    lines = [
        '[0, "ksm", {"use_zero_pages": 1}]',
        '[0, "alloc", 1, 65536, 24576]',
        '[0, "write", 1, 65536, 24576, [5, 5, 5, 0, 7, 7]]',
        '[0, "madvise", 1, 65536, 16384, "mergeable"]',
        '[0, "prctl", 2, "merge_any", true]',
        '[0, "alloc", 2, 65536, 12288]',
        '[0, "write", 2, 65536, 12288, [5, 5, 9]]',
    ]
    path = _write_trace(tmp_path, lines)
    with open_trace(str(path)) as reader:
        explain = inspect_trace(reader)["explain"]
    assert explain == {
        "written_pages": 9,
        "mergeable_pages": 7,  # 5 5 5 0 and 5 5 9
        "distinct_contents": 4,  # 5 0 7 9
        "distinct_mergeable_contents": 3,  # 5 0 9
        "ideal_saved_pages": 5,  # 7 pages in 2 frames: one 5, one 9 (0: the zero page)
        "ideal_saved_pages_all_mergeable": 6,  # 9 pages in 3 frames (5, 7, 9)
        "saved_lost_to_unmergeable_pages": 1,  # the second 7
        "processes": [
            {"pid": 1, "written_pages": 6, "mergeable_pages": 4, "distinct_contents": 3},
            {"pid": 2, "written_pages": 3, "mergeable_pages": 3, "distinct_contents": 2},
        ],
    }


def test_explain_beyond_the_memory_budget_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ksmreplay import explain as explain_module

    lines, _expected = HAND["merged"]
    path = str(_write_trace(tmp_path, lines))
    monkeypatch.setattr(explain_module, "CHECK_FROM", 0)  # (a large trace, in effect)
    monkeypatch.setenv("KSMREPLAY_MEMORY", "1K")
    result = CliRunner().invoke(cli, ["run", path, "--explain"], prog_name="ksmreplay")
    assert result.exit_code == 6
    # (after the warning that the budget is below what the replay may need)
    error = result.stderr.splitlines()[-1]
    assert error.startswith("ksmreplay: --explain (its columns of every page) needs ")
    assert _run(path) != ""  # without --explain, the same replay fits
