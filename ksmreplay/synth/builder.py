"""What every generator writes with: processes, regions, KSM settings and
writes in batches over trace time, into one trace."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from ksmreplay.arrays import consecutive_runs
from ksmreplay.synth.params import NS_PER_S, PAGE_SIZE, TICK_NS, Values
from ksmreplay.trace import TraceWriter
from ksmreplay.trace.events import FingerprintArray

WRITE_CHUNK_PAGES = 8192
"""Largest number of pages one ``write`` event covers (bulk fills are split)."""

BASE = 0x7F0000000000
"""Address of each process's first mapping."""
REGION_STRIDE = 2**32
"""Distance between the mappings of one process (none is larger than this)."""


# --------------------------------------------------------------------------- the builder


class _Synth:
    """A :class:`TraceWriter` with the generators' shared helpers.

    :ivar rng: the one source of randomness of a trace.
    """

    def __init__(self, writer: TraceWriter, seed: int, settles: bool = True) -> None:
        self.w = writer
        self.settles = settles
        """Whether :meth:`settle` writes a ``settle`` event (parameter ``settle``)."""
        self.rng = np.random.default_rng(seed)
        # Fresh fingerprints are counter * an odd multiplier, modulo 2**64: a
        # bijection, so they never repeat and never hit 0 (counter >= 1).
        self._multiplier = np.uint64(int(self.rng.integers(0, 2**63)) * 2 + 1)
        self._counter = 1
        self._t = 0

    def at(self, t: int) -> int:
        """Check that events stay in time order; return ``t``."""
        if t < self._t:
            raise AssertionError(f"synthetic event at t={t} before t={self._t}")
        self._t = t
        return t

    def fresh(self, n: int) -> FingerprintArray:
        """``n`` fingerprints never returned before (no zeros)."""
        counters = np.arange(self._counter, self._counter + n, dtype=np.uint64)
        self._counter += n
        fps: FingerprintArray = counters * self._multiplier
        return fps

    def mixed(
        self, n: int, zero: float, pool: FingerprintArray | None = None, pooled: float = 0.0
    ) -> FingerprintArray:
        """``n`` page contents: each zero with chance ``zero``, else from ``pool``
        with chance ``pooled``, else fresh."""
        fps = self.fresh(n)
        draw = self.rng.random(n)
        if pool is not None and len(pool) and pooled > 0:
            from_pool = (draw >= zero) & (draw < zero + pooled)
            fps[from_pool] = pool[self.rng.integers(0, len(pool), int(from_pool.sum()))]
        fps[draw < zero] = 0
        return fps

    def layout(self, parts: Iterable[FingerprintArray]) -> FingerprintArray:
        """The pages of ``parts`` concatenated, then shuffled over the address range."""
        fps: FingerprintArray = np.concatenate(list(parts)).astype(np.uint64)
        shuffled: FingerprintArray = fps[self.rng.permutation(len(fps))]
        return shuffled

    def sample(self, n: int, k: int) -> np.ndarray:
        """``k`` distinct page indices out of ``n`` (at most ``n``), sorted."""
        k = min(k, n)
        return np.sort(self.rng.choice(n, size=k, replace=False))

    def poisson(self, mean: float) -> int:
        return int(self.rng.poisson(mean)) if mean > 0 else 0

    def ksm(self, t: int, settings: Mapping[str, int]) -> None:
        self.w.ksm(self.at(t), settings)

    def alloc(self, t: int, pid: int, addr: int, pages: int) -> None:
        self.w.alloc(self.at(t), pid, addr, pages * PAGE_SIZE)

    def madvise(self, t: int, pid: int, addr: int, pages: int, advice: str) -> None:
        self.w.madvise(self.at(t), pid, addr, pages * PAGE_SIZE, advice)

    def fill(self, t: int, pid: int, addr: int, fps: FingerprintArray) -> None:
        """Write ``fps`` to consecutive pages from ``addr``, in chunks."""
        self.at(t)
        for start in range(0, len(fps), WRITE_CHUNK_PAGES):
            chunk = fps[start : start + WRITE_CHUNK_PAGES]
            self._write(t, pid, addr + start * PAGE_SIZE, chunk)

    def scatter(
        self, t: int, pid: int, addr: int, pages: np.ndarray, fps: FingerprintArray
    ) -> None:
        """Write ``fps[i]`` to page ``pages[i]`` of the mapping at ``addr`` (sorted pages);
        adjacent pages share one ``write`` event."""
        self.at(t)
        los, his = consecutive_runs(pages)
        for lo, hi in zip(los.tolist(), his.tolist(), strict=True):
            self._write(t, pid, addr + int(pages[lo]) * PAGE_SIZE, fps[lo:hi])

    def dontneed(self, t: int, pid: int, addr: int, pages: np.ndarray) -> None:
        """MADV_DONTNEED on each page of ``pages`` (sorted), one event per run."""
        self.at(t)
        los, his = consecutive_runs(pages)
        for lo, hi in zip(los.tolist(), his.tolist(), strict=True):
            start = addr + int(pages[lo]) * PAGE_SIZE
            self.w.madvise(t, pid, start, (hi - lo) * PAGE_SIZE, "dontneed")

    def _write(self, t: int, pid: int, addr: int, fps: FingerprintArray) -> None:
        length = len(fps) * PAGE_SIZE
        if len(fps) and bool((fps == fps[0]).all()):
            self.w.write(t, pid, addr, length, int(fps[0]))
        else:
            self.w.write(t, pid, addr, length, fps)

    def settle(self, t: int, label: str) -> None:
        """Let ksmd settle (unless :attr:`settles` is off), then take the snapshot ``label``."""
        if self.settles:
            self.w.settle(self.at(t))
        self.w.snapshot(self.at(t), label)

    def snapshot(self, t: int, label: str) -> None:
        self.w.snapshot(self.at(t), label)


def _ticks(duration_ns: int) -> Iterator[tuple[int, float]]:
    """``(t, seconds since the previous tick)`` for every tick of the activity phase,
    the last one at ``duration_ns`` exactly."""
    t = 0
    while t < duration_ns:
        step = min(TICK_NS, duration_ns - t)
        t += step
        yield t, step / NS_PER_S


def _start_ksm(s: _Synth, v: Values, **extra: int) -> None:
    """The ``ksm`` event at t=0: run=1 and the workload's knob parameters."""
    settings = {"run": 1}
    for name in ("pages_to_scan", "sleep_millisecs", "use_zero_pages"):
        if name in v:
            settings[name] = v.integer(name)
    settings.update(extra)
    s.ksm(0, settings)
