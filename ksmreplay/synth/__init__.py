"""Synthetic workloads: deterministic trace generators named after what a host runs.

Each workload is declared once, in :data:`WORKLOADS`, with its parameters
(:class:`Param`: name, default, range, help).  That one table drives the
validation of ``--param NAME=VALUE``, ``ksmreplay synth --list`` and the help
text.  Parameters are named after what a user knows about a host (how many
guests, how many MiB each, what share of their memory is zeros), never after
simulator internals::

    values = resolve_params(WORKLOAD_BY_NAME["vm-guests"], ["guests=8"])
    with open("vm.msgpack", "wb") as out:
        synthesize("vm-guests", out, values, seed=1)

Every generated trace

* has page size 4096 and records the workload, seed and every parameter value
  in the header's ``meta``;
* sets every KSM knob it relies on with a ``ksm`` event at ``t`` = 0
  (``run`` = 1 plus the knob parameters of the workload), so that a replay's
  ``--set`` cannot silently change what the trace means;
* writes page contents as fingerprint lists (one ``uint64`` per page): ``0``
  for a page of zeros, otherwise values drawn for the trace, each distinct
  from every other unless the workload means two pages to be identical;
* places ``settle`` and ``snapshot`` events where a user would look (with
  ``--param settle=0`` only the snapshots: ksmd then merges in trace time only).

The same workload, parameters and seed give byte-identical output (with the
same numpy version: the generators draw from ``numpy.random.default_rng``).

Modules: :mod:`~ksmreplay.synth.params` (parameters and units),
:mod:`~ksmreplay.synth.builder` (what the generators write with),
:mod:`~ksmreplay.synth.workloads` (the workloads), :mod:`~ksmreplay.synth.fit`
(parameters fitted to a recorded trace).
"""

from ksmreplay.synth.fit import (
    FIT_WORKLOADS,
    Fitted,
    fit_contents,
    fit_params,
)
from ksmreplay.synth.params import (
    MIB_PAGES,
    PAGE_SIZE,
    SETTLE,
    Param,
    ParamValue,
    Values,
)
from ksmreplay.synth.workloads import (
    SEED_LIMIT,
    WORKLOAD_BY_NAME,
    WORKLOAD_NAMES,
    WORKLOADS,
    Workload,
    describe_workloads,
    get_workload,
    resolve_params,
    synthesize,
)

__all__ = [
    "FIT_WORKLOADS",
    "MIB_PAGES",
    "PAGE_SIZE",
    "SEED_LIMIT",
    "SETTLE",
    "WORKLOADS",
    "WORKLOAD_BY_NAME",
    "WORKLOAD_NAMES",
    "Fitted",
    "Param",
    "ParamValue",
    "Values",
    "Workload",
    "describe_workloads",
    "fit_contents",
    "fit_params",
    "get_workload",
    "resolve_params",
    "synthesize",
]
