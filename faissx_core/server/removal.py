"""``remove_ids`` on a flat index without faiss's row-by-row loop, with faiss's exact result.

faiss removes from ``IndexIDMap2(IndexFlat)`` in three passes: the flat index walks every row,
asks the selector (through the id map) whether it goes, and ``memmove``s each kept row down
on its own; the id map walks every row again, asking the selector again; then ``IndexIDMap2``
rebuilds its reverse map (an ``unordered_map`` of every id) from scratch. For 100 ids out of
1M x 128 that is about 110-150 ms on the 2-core benchmark machine, of which the reverse map is
about half, the per-row moves most of the rest (profile: benchmarks/results/peers/
profile-delete.txt).

Its *result* is fixed: the kept rows, in their order, at the front of the codes and of the id
map; ``ntotal`` the kept count; the buffers resized (not reallocated) to it; the reverse map
rebuilt from the new id map. This module reaches the same state with less work: the removed
positions found with one vectorised pass over the id map (or directly, for a plain flat
index, whose ids are positions), each run of kept rows moved with one ``memmove`` (at most as
many moves as removed rows), and the reverse map rebuilt by faiss's own
``construct_rev_map`` - concurrently with the code moves when the call has two OpenMP threads
to spend (both release the GIL; they touch different buffers). What remains is what faiss's
semantics force: every row after the first removed one moves, and the reverse map is rebuilt
over every id.

Only the shapes whose layout is known take this path - ``IndexFlat`` (L2, IP or any metric)
bare or under ``IndexIDMap`` / ``IndexIDMap2``, owning its codes, removed by a set of ids or an
id range; anything else (other types, selector combinations, very many removed runs) returns
None and the caller lets faiss do it. tests/test_delete_speed.py compares every case with
local faiss.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from faissx_core.specs import downcast

#: Past this many removed rows the per-run moves (one Python-level call each) stop paying:
#: faiss's own loop is used instead.
MAX_RUNS = 4096
#: Fibonacci hashing's multiplier (2^64 / golden ratio, odd): spreads ids over the filter.
_MIX = np.uint64(0x9E3779B97F4A7C15)
#: The flat types whose codes are exactly ``ntotal x code_size`` bytes and which remove with
#: ``IndexFlatCodes::remove_ids`` (not a subclass that keeps more per row, like IndexFlat1D).
_FLATS = (faiss.IndexFlat, faiss.IndexFlatL2, faiss.IndexFlatIP)
_ID_MAPS = (faiss.IndexIDMap, faiss.IndexIDMap2)


@dataclass(frozen=True)
class Removal:
    """What to remove, as faiss's ``IDSelectorBatch`` / ``IDSelectorArray`` (``ids``: the
    set of them) or ``IDSelectorRange`` (``imin <= id < imax``) would select it."""

    ids: np.ndarray | None = None
    imin: int = 0
    imax: int = 0

    def members(self, values: np.ndarray) -> np.ndarray:
        """Sorted positions ``i`` of ``values`` whose value this selects."""
        if self.ids is None:
            return np.flatnonzero((values >= self.imin) & (values < self.imax))
        return _positions_of(values, np.unique(self.ids))

    def positions(self, ntotal: int) -> np.ndarray:
        """Sorted positions it selects in an index numbered ``0..ntotal-1`` (a bare flat)."""
        if self.ids is None:
            lo, hi = max(self.imin, 0), min(self.imax, ntotal)
            return np.arange(lo, max(lo, hi), dtype=np.int64)
        wanted = np.unique(self.ids)
        return wanted[(wanted >= 0) & (wanted < ntotal)]


def removal_of(selector: Any, ids: np.ndarray | None, arrays: dict[str, np.ndarray]) -> Any:
    """The :class:`Removal` a request describes, or None when it is not a plain set or range
    of ids (a combination, a bitmap, a translation: faiss evaluates those itself)."""
    if selector is None:
        return Removal(ids=ids) if ids is not None else None
    if selector.kind == "range":
        return Removal(imin=selector.imin, imax=selector.imax)
    if selector.kind in ("batch", "array"):
        data = arrays.get(selector.frame)
        if data is not None and data.dtype == np.int64 and data.ndim == 1:
            return Removal(ids=data)
    return None


#: Below this many code bytes the moves are too short for a second thread to help.
PARALLEL_BYTES = 8 << 20


def remove(
    index: Any, removal: Removal, threads: int = 1, parallel_bytes: int = PARALLEL_BYTES
) -> int | None:
    """Remove what ``removal`` selects from ``index`` exactly as faiss's ``remove_ids`` would
    and return the count removed, or None (nothing changed) when ``index`` is not a shape this
    module handles. ``threads`` > 1 lets the reverse map be rebuilt alongside the row moves
    when the codes hold at least ``parallel_bytes``."""
    if type(index) not in (*_FLATS, *_ID_MAPS, faiss.Index):
        return None  # a subclass SWIG would downcast to its base (IndexFlat1D -> IndexFlatL2)
    outer = downcast(index)
    id_map = None
    if type(outer) in _ID_MAPS:
        flat = downcast(outer.index)
        id_map = outer.id_map
    else:
        flat = outer
    if type(flat) not in _FLATS or not flat.codes.is_owned:
        return None
    n = int(flat.ntotal)
    width = int(flat.code_size)
    if id_map is None:
        gone = removal.positions(n)
    else:
        if int(outer.ntotal) != n or id_map.size() != n:
            return None  # not the consistent state faiss's own loop assumes
        gone = removal.members(_view(id_map.data(), n, np.int64))
    if gone.size == 0:
        return 0
    if gone.size > MAX_RUNS:
        return None
    if gone[0] < 0 or gone[-1] >= n:  # cannot happen (members and positions are in range)
        return None
    kept = n - int(gone.size)
    rebuild: threading.Thread | None = None
    failed: list[BaseException] = []
    if id_map is not None:
        _compact(_view(id_map.data(), n, np.int64), 8, gone)
        id_map.resize(kept)
        outer.ntotal = kept
        if isinstance(outer, faiss.IndexIDMap2):
            if threads > 1 and n * width >= parallel_bytes:
                rebuild = threading.Thread(
                    target=_guarded, args=(outer.construct_rev_map, failed), daemon=True
                )
                rebuild.start()
            else:
                outer.construct_rev_map()
    try:
        _compact(_view(flat.codes.data(), n * width, np.uint8), width, gone)
        flat.codes.resize(kept * width)
        flat.ntotal = kept
    finally:
        if rebuild is not None:
            rebuild.join()
    if failed:
        raise failed[0]
    return int(gone.size)


def _guarded(fn: Any, failed: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # re-raised on the calling thread
        failed.append(exc)


def _view(ptr: Any, count: int, dtype: Any) -> np.ndarray:
    """A numpy view of ``count`` items at faiss's SWIG pointer ``ptr`` (no copy)."""
    if count == 0:
        return np.empty(0, dtype=dtype)
    return faiss.rev_swig_ptr(ptr, count).view(dtype)


def _compact(buffer: np.ndarray, width: int, gone: np.ndarray) -> None:
    """Move the rows of ``buffer`` (``width`` bytes each) not in ``gone`` (sorted, unique
    positions) to its front, in order: one ``memmove`` per run of kept rows."""
    rows = buffer.nbytes // width
    base = buffer.ctypes.data
    ends = np.append(gone[1:], rows).tolist()
    dst = int(gone[0])
    for start, end in zip((gone + 1).tolist(), ends, strict=True):
        if end > start:
            ctypes.memmove(base + dst * width, base + start * width, (end - start) * width)
            dst += end - start
    assert dst == rows - gone.size  # every kept row moved exactly once


def _positions_of(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Sorted positions of ``values`` that are in ``wanted`` (sorted, unique): a hashed
    filter (one multiply, shift and lookup per value, like faiss's IDSelectorBatch's bloom
    filter) picks the candidates, an exact test keeps the true ones."""
    if wanted.size == 0 or values.size == 0:
        return np.empty(0, dtype=np.int64)
    bits = int(min(max(int(wanted.size).bit_length() + 4, 10), 26))
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[(wanted.view(np.uint64) * _MIX) >> shift] = True
    hashed = np.multiply(values.view(np.uint64), _MIX)
    np.right_shift(hashed, shift, out=hashed)
    candidates = np.flatnonzero(table[hashed])
    del hashed
    if candidates.size == 0:
        return candidates
    return candidates[np.isin(values[candidates], wanted, assume_unique=False)]
