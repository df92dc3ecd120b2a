"""Read, validate and write traces (TRACE_FORMAT.md, version 1).

:func:`open_trace` opens a trace file (or ``-`` for stdin), tells the msgpack
stream from the JSON-lines form by its content, reads and validates the header,
and then yields one typed record (:mod:`ksmreplay.trace.events`) per event while it
streams through the file.  Every rule of the trace format is checked exactly
once, here; a broken rule raises :class:`~ksmreplay.errors.TraceError` naming
the file, the event index (0 = header) and ``t``::

    with open_trace("trace.msgpack") as reader:
        for event in reader:
            ...
        print(reader.events, reader.duration_ns)

The reader keeps, per live process, only the sorted list of its mapped address
ranges (:class:`RangeSet`), so memory does not grow with the size of mappings
or the length of the trace.

``reader.runs()`` yields the same events with each run of consecutive
fingerprint writes as one :class:`~ksmreplay.trace.events.WriteRun` (columns), the
form the replay uses.  Where the native core (:mod:`ksmreplay.native`) is
available, msgpack traces are decoded by it a few MiB at a time: write events
straight into columns, anything else (and every error) by the pure-Python
path, so both give the same events and messages.

Limits: one set, the same in both forms and checked when a trace is
validated, so that a trace valid in one form is valid in the other and
``convert`` can always write it (README, "The trace format, in short"):

* every int of an event is below 2**64 (``t``, ``addr + len``, fingerprints,
  ``max_full_scans``, knob values); ``pid`` and ``child_pid`` are below
  :data:`PID_LIMIT` (2**63: they fit a signed 64-bit column);
* a snapshot label, the header's description and every str of ``meta`` (keys
  too) are valid Unicode of at most :data:`MAX_STR_BYTES` bytes of UTF-8;
* ``meta`` holds JSON values only (ints from -2**63 to 2**64-1, finite
  floats), nested at most :data:`MAX_META_DEPTH` deep, no map of more than
  :data:`MAX_MAP_ITEMS` entries nor array of more than :data:`MAX_ARRAY_ITEMS`
  items, and takes at most :data:`MAX_META_BYTES` bytes written as msgpack;
* a literal write stores at most :data:`MAX_BIN_BYTES` bytes; a fingerprint
  array has at most :data:`MAX_ARRAY_ITEMS` items.

Then every valid event fits :data:`MAX_EVENT_BYTES` bytes of msgpack and
:data:`MAX_LINE_BYTES` bytes of JSON, the sizes the decoders accept.

A write's fingerprint array may be a view of one uint64 array shared by the
writes decoded in the same batch; the views never overlap.

The JSON-lines form also accepts blank lines and lines whose first non-blank
character is ``#`` (comments); both are skipped and not counted as events.

:class:`TraceWriter` writes either form; whatever it writes, the reader accepts
and decodes to equal records.
"""

from ksmreplay.trace.limits import (
    ADDR_LIMIT,
    FORMAT_VERSION,
    FORMS,
    INT_LIMIT,
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_EVENT_BYTES,
    MAX_LINE_BYTES,
    MAX_MAP_ITEMS,
    MAX_META_BYTES,
    MAX_META_DEPTH,
    MAX_PAGE_SIZE,
    MAX_STR_BYTES,
    MIN_PAGE_SIZE,
    PID_LIMIT,
    TraceForm,
    kind,
)
from ksmreplay.trace.read import (
    TraceReader,
    open_trace,
    read_trace,
)
from ksmreplay.trace.validate import (
    Footprint,
    RangeSet,
)
from ksmreplay.trace.write import (
    TraceWriter,
    event_array,
    form_for_path,
    header_object,
    write_trace,
)

__all__ = [
    "ADDR_LIMIT",
    "FORMAT_VERSION",
    "FORMS",
    "INT_LIMIT",
    "MAX_ARRAY_ITEMS",
    "MAX_BIN_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_LINE_BYTES",
    "MAX_MAP_ITEMS",
    "MAX_META_BYTES",
    "MAX_META_DEPTH",
    "MAX_PAGE_SIZE",
    "MAX_STR_BYTES",
    "MIN_PAGE_SIZE",
    "PID_LIMIT",
    "Footprint",
    "RangeSet",
    "TraceForm",
    "TraceReader",
    "TraceWriter",
    "event_array",
    "form_for_path",
    "header_object",
    "kind",
    "open_trace",
    "read_trace",
    "write_trace",
]
