"""Page contents: fingerprints, and the one rule that maps bytes to them.

A fingerprint stands for one concrete page (trace format, "Materialising page
contents"):

* ``0`` is the page of zeros;
* ``f != 0`` is the 8 bytes of ``f`` in little-endian order, repeated;
* any other page is named by ``xxh3_64`` of its bytes (0 taken as 1).

:func:`fingerprint` (one page) and :func:`fingerprint_pages` (a buffer of whole
pages at once) are the only places that turn bytes into a fingerprint, and
:func:`materialise` the only place that turns one back into bytes.  Pages of
the third kind cannot be rebuilt from their fingerprint, so a
:class:`PageStore` keeps their bytes for as long as a replay may need them (a
later partial write into such a page).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import xxhash

from ksmreplay.native import native

ZERO = 0
"""Fingerprint of the page of zeros."""


def _pattern_value(page: bytes) -> int | None:
    """The 8-byte little-endian value ``page`` repeats, or None if it is not one."""
    head = page[:8]
    if len(page) % 8 or page != head * (len(page) // 8):
        return None
    return int.from_bytes(head, "little")


def _classify(page: bytes) -> tuple[int, bool]:
    """The fingerprint of ``page``, and whether it is a hash (not a repeated value)."""
    value = _pattern_value(page)
    if value is not None:
        return value, False
    digest: int = xxhash.xxh3_64_intdigest(page)
    return digest or 1, True


def fingerprint(page: bytes) -> int:
    """The canonical fingerprint of one whole page of bytes."""
    return _classify(page)[0]


def fingerprint_pages(
    data: memoryview, page_size: int, views: Sequence[memoryview] | None = None
) -> npt.NDArray[np.uint64]:
    """The fingerprint of each whole page of ``data`` (``len(data)`` bytes, a multiple
    of ``page_size``), by the same rule as :func:`fingerprint`.

    With the native core, one call names every page (:meth:`ksmreplay.native.
    Native.fingerprint_pages`).  Without it, the repeated-value test runs on
    all pages at once (numpy: the first, second and last words first, then
    every word of the pages that pass); only the other pages are hashed, one
    ``xxh3_64`` call each on a view of the buffer (no copy).  ``views`` may
    give those views ready made (``views[i]`` is page ``i``), for a buffer
    that is read into again and again.
    """
    count = len(data) // page_size
    core = native()
    if core is not None:
        out = np.empty(count, np.uint64)
        whole = data.cast("B") if data.format != "B" else data
        if core.fingerprint_pages(whole[: count * page_size], page_size, out):
            return out
    words = np.frombuffer(data, dtype="<u8", count=count * (page_size // 8))
    words = words.reshape(count, page_size // 8)
    first = words[:, 0]
    maybe = np.flatnonzero((words[:, 1] == first) & (words[:, -1] == first))
    repeated = np.zeros(count, dtype=bool)
    if len(maybe):
        repeated[maybe] = (words[maybe] == first[maybe, None]).all(axis=1)
    fps: npt.NDArray[np.uint64] = first.astype(np.uint64)
    hashed = np.flatnonzero(~repeated).tolist()
    if hashed:
        if views is None:
            whole = data.cast("B") if data.format != "B" else data
            views = [whole[i * page_size : (i + 1) * page_size] for i in hashed]
            digests = [xxhash.xxh3_64_intdigest(v) for v in views]
        else:
            digests = [xxhash.xxh3_64_intdigest(views[i]) for i in hashed]
        values = np.array(digests, dtype=np.uint64)
        values[values == 0] = 1
        fps[hashed] = values
    return fps


def pattern_page(fp: int, page_size: int) -> bytes:
    """The bytes of the page that fingerprint ``fp`` names by the repeat rule."""
    return fp.to_bytes(8, "little") * (page_size // 8)


class PageStore:
    """Bytes of the pages whose fingerprint is a hash (not a repeated value).

    Pages named by a repeated value are rebuilt on demand; only hashed pages are
    kept, one copy per distinct content.
    """

    __slots__ = ("_pages", "page_size")

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._pages: dict[int, bytes] = {}

    def fingerprint(self, page: bytes) -> int:
        """Fingerprint ``page`` and remember its bytes if they cannot be rebuilt."""
        fp, hashed = _classify(page)
        if hashed:
            self._pages.setdefault(fp, page)
        return fp

    def materialise(self, fp: int) -> bytes:
        """The bytes of the page named ``fp``.

        A hashed fingerprint must have been produced by this store; a
        fingerprint given directly by a trace is always a repeated value.
        """
        page = self._pages.get(fp)
        return page if page is not None else pattern_page(fp, self.page_size)


def literal_write(
    addr: int,
    data: bytes,
    page_size: int,
    current: Callable[[int], int],
    store: PageStore,
) -> tuple[int, list[int]]:
    """Apply a literal ``bin`` write to whole pages.

    ``current(page_number)`` gives the fingerprint a page holds before the
    write (0 for a page that is not populated).  Returns the first page number
    touched and the new fingerprint of each page touched, in order.  Partial
    pages keep their other bytes.
    """
    first = addr // page_size
    last = (addr + len(data) - 1) // page_size
    fps: list[int] = []
    for page_no in range(first, last + 1):
        start = page_no * page_size
        lo = max(addr, start) - start
        hi = min(addr + len(data), start + page_size) - start
        if lo == 0 and hi == page_size:
            page = data[start - addr : start - addr + page_size]
        else:
            old = bytearray(store.materialise(current(page_no)))
            old[lo:hi] = data[start + lo - addr : start + hi - addr]
            page = bytes(old)
        fps.append(store.fingerprint(page))
    return first, fps
