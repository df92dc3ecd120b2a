"""Coverage-guided fuzzing of the trace reader and writer with atheris (``make fuzz``).

Each input is read as a trace (its form told by its content, as ``open_trace``
does), without the native core and with it.  These must hold:

- reading raises nothing but a :class:`~ksmreplay.errors.KsmreplayError`;
- both readers give the same header and events, or the same message;
- a trace that reads whole is written in both forms by ``TraceWriter`` (what
  ``convert`` does) and reads back to the same header and events.

Nothing stops the run at the first finding: each distinct one (exception type
and the line of ksmreplay it came from, or the check that failed) is printed
once and its smallest input kept as ``OUT/finding-<hash>.bin`` with a
``.txt`` beside it.  Crashes of the process itself (a signal, a timeout, the
memory limit) stop libFuzzer as usual, which keeps the input as ``OUT/crash-*``.

Usage::

    python tests/fuzz_reader.py --seconds 300 --out fuzz-out/atheris
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import atheris
from testdata import case_traces

with atheris.instrument_imports(include=["ksmreplay"]):
    from ksmreplay.errors import KsmreplayError
    from ksmreplay.native import ENV, native
    from ksmreplay.trace import FORMS, TraceReader, TraceWriter, event_array, header_object

ROOT = Path(__file__).resolve().parent.parent
os.environ.pop(ENV, None)
_NATIVE = native() is not None
OUT = Path("fuzz-out/atheris")
_FOUND: dict[str, int] = {}


def _read(data: bytes, native_core: bool) -> tuple[str, Any, Any]:
    """``("ok", header, records)`` or ``("error", message, None)``."""
    os.environ[ENV] = "1" if native_core else "0"
    try:
        with TraceReader(io.BytesIO(data), "input") as reader:
            header = reader.header
            records = list(reader)
    except KsmreplayError as exc:
        return "error", str(exc), None
    return "ok", header, records


def _same(a: tuple[str, Any, Any], b: tuple[str, Any, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return bool(a[1] == b[1])
    return repr(header_object(a[1])) == repr(header_object(b[1])) and [
        repr(event_array(e)) for e in a[2]
    ] == [repr(event_array(e)) for e in b[2]]


def _finding(what: str, data: bytes, detail: str) -> None:
    """Keep ``data`` as an instance of finding ``what`` (the smallest so far)."""
    key = hashlib.sha256(what.encode()).hexdigest()[:12]
    size = _FOUND.get(key)
    if size is not None and size <= len(data):
        return
    if size is None:
        print(f"\nfinding {key}: {what} ({len(data)} bytes)", file=sys.stderr, flush=True)
    _FOUND[key] = len(data)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"finding-{key}.bin").write_bytes(data)
    (OUT / f"finding-{key}.txt").write_text(f"{what}\n{len(data)} bytes\n\n{detail}\n")


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "ksmreplay" in f.filename]
    frame = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"


def test_one_input(data: bytes) -> None:
    """The checks of one input (see the module's docstring)."""
    try:
        pure = _read(data, native_core=False)
    except Exception as exc:
        _finding(f"reader (scalar): {_where(exc)}", data, traceback.format_exc())
        return
    if _NATIVE:
        try:
            fast = _read(data, native_core=True)
        except Exception as exc:
            _finding(f"reader (native core): {_where(exc)}", data, traceback.format_exc())
            return
        if not _same(pure, fast):
            _finding("readers disagree", data, f"scalar: {pure[:2]!r}\nnative core: {fast[:2]!r}")
            return
    if pure[0] != "ok":
        return
    _, header, records = pure
    for form in FORMS:
        out = io.BytesIO()
        try:
            writer = TraceWriter(out, header, form)
            for record in records:
                writer.event(record)
        except Exception as exc:
            _finding(f"writer ({form}): {_where(exc)}", data, traceback.format_exc())
            continue
        try:
            again = _read(out.getvalue(), native_core=False)
        except Exception as exc:
            _finding(f"reader of {form} written: {_where(exc)}", data, traceback.format_exc())
            continue
        if not _same(pure, again):
            what = "refuses" if again[0] == "error" else "reads differently"
            _finding(f"{form} written, read back: {what}", data, f"{again[:2]!r}")


def _corpus(directory: Path) -> None:
    """Seed inputs: the golden cases and the small bundled traces."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in case_traces():
        (directory / f"case-{path.stem}.jsonl").write_bytes(path.read_bytes())
    for path in sorted((ROOT / "traces").glob("*.msgpack")):
        if path.stat().st_size <= 64 * 1024:
            (directory / path.name).write_bytes(path.read_bytes())


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description="Coverage-guided fuzzing of the trace reader")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args, rest = parser.parse_known_args()
    OUT = args.out
    corpus = OUT / "corpus"
    seeds = OUT / "seeds"
    _corpus(seeds)
    corpus.mkdir(parents=True, exist_ok=True)
    flags = [
        f"-max_total_time={args.seconds}",
        "-rss_limit_mb=2048",
        "-timeout=30",
        "-max_len=262144",
        "-print_final_stats=1",
        f"-artifact_prefix={OUT}/",
        *rest,
        str(corpus),
        str(seeds),
    ]
    atheris.Setup([sys.argv[0], *flags], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
