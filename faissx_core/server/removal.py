"""``remove_ids`` on ``IndexIDMap2(IndexFlat)`` with faiss's exact result, its two long halves
run side by side.

faiss's ``IndexIDMap2::remove_ids`` works in three sequential passes: the flat index walks every
row, asking the selector (through the id map) whether it goes, and moves each kept row down;
the id map walks every row again, asking again; then the reverse map (an ``unordered_map`` of
every id) is rebuilt from scratch. For 100 ids out of 1M x 128 the row moves (every row after
the first removed one: memory bandwidth) and the rebuild (1M node allocations) each take about
half (profile: benchmarks/results/peers/profile-delete.txt). Both are forced by faiss's
semantics - the kept rows stay in order at the front, and the map covers every id - but they
do not depend on each other: the rebuild reads only the new id map.

So here: the removed positions are found with one vectorised pass over the id map, the id map
is compacted with numpy, and then faiss's own ``construct_rev_map`` (on a second thread) and
faiss's own ``IndexFlatCodes::remove_ids`` (selecting those positions) run at once; both
release the GIL and touch different buffers. The flat index removes exactly the rows faiss's
``IDSelectorTranslated`` would have selected (a position is selected iff the selector selects
its id), with faiss's own loop, so the codes, ``ntotal`` and removed count are faiss's; the id
map is the kept ids in order, resized as faiss resizes it; the reverse map is rebuilt from it as
faiss rebuilds it.

Only worth it - and only taken - when the call may use two OpenMP threads (the server's
ThreadBudget gives a lone write both cores) and the index is big enough for the overlap to
pay; for a set or range of ids (faiss's IDSelectorBatch / IDSelectorArray / IDSelectorRange);
on exactly ``IndexIDMap2`` over ``IndexFlat`` / ``IndexFlatL2`` / ``IndexFlatIP``. Anything else
returns None and the caller lets faiss do all of it. tests/test_removal.py compares the
result with local faiss's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from faissx_core.specs import downcast

#: Below this many bytes of codes the two halves are too short for a second thread to pay.
PARALLEL_BYTES = 8 << 20
#: Fibonacci hashing's multiplier (2^64 / golden ratio, odd): spreads ids over the filter.
_MIX = np.uint64(0x9E3779B97F4A7C15)
#: The flat types whose ``remove_ids`` is ``IndexFlatCodes::remove_ids``: it asks the selector
#: about positions ``0..ntotal-1`` only, once each, in order.
_FLATS = (faiss.IndexFlat, faiss.IndexFlatL2, faiss.IndexFlatIP)


@dataclass(frozen=True)
class Removal:
    """What to remove, as faiss's ``IDSelectorBatch`` / ``IDSelectorArray`` (``ids``: the set
    of them) or ``IDSelectorRange`` (``imin <= id < imax``) would select it."""

    ids: np.ndarray | None = None
    imin: int = 0
    imax: int = 0

    def members(self, values: np.ndarray) -> np.ndarray:
        """Whether each of ``values`` is selected (a bool per value)."""
        if self.ids is None:
            return (values >= self.imin) & (values < self.imax)
        return _isin(values, np.unique(self.ids))


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


def remove(
    index: Any, removal: Removal, threads: int = 1, parallel_bytes: int = PARALLEL_BYTES
) -> int | None:
    """Remove what ``removal`` selects from ``index`` exactly as faiss's ``remove_ids`` would
    and return the count removed; or None, with nothing changed, when this is not worth doing
    here (one thread, codes under ``parallel_bytes``, another index type): then the caller
    calls faiss."""
    if threads < 2 or type(index) not in (faiss.IndexIDMap2, faiss.Index):
        return None
    index = downcast(index)
    if type(index) is not faiss.IndexIDMap2:
        return None
    flat = downcast(index.index)
    if type(flat) not in _FLATS:
        return None
    n = int(index.ntotal)
    if int(flat.ntotal) != n or index.id_map.size() != n or n * flat.code_size < parallel_bytes:
        return None
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)  # a view: no copy
    gone = removal.members(ids)
    count = int(np.count_nonzero(gone))
    if count == 0:
        # faiss still rebuilds the reverse map, which is not always a no-op: faiss's reset
        # of an IndexIDMap2 leaves the old map behind
        return None
    positions = np.flatnonzero(gone).astype(np.int64, copy=False)
    kept = n - count
    ids[:kept] = ids[~gone]  # the kept ids, in order (the right side is a copy)
    del ids, gone
    index.id_map.resize(kept)
    index.ntotal = kept
    failed: list[BaseException] = []
    rebuild = threading.Thread(target=_rebuild, args=(index, failed), daemon=True)
    rebuild.start()
    try:
        removed = flat.remove_ids(faiss.IDSelectorBatch(positions.size, faiss.swig_ptr(positions)))
    finally:
        rebuild.join()
    if failed:
        raise failed[0]
    if removed != count or int(flat.ntotal) != kept:  # cannot happen: same positions
        raise RuntimeError(f"remove_ids: the flat index removed {removed} rows, not {count}")
    return count


def _rebuild(index: Any, failed: list[BaseException]) -> None:
    try:
        index.construct_rev_map()
    except BaseException as exc:  # re-raised on the calling thread
        failed.append(exc)


def _isin(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` (``wanted`` sorted and unique) without sorting ``values``:
    a hashed filter (one multiply, shift and lookup per value, like the bloom filter of faiss's
    IDSelectorBatch) picks the candidates, an exact test decides them."""
    out = np.zeros(values.size, dtype=bool)
    if wanted.size == 0 or values.size == 0:
        return out
    bits = min(max(int(wanted.size).bit_length() + 4, 10), 24)  # a table of 1 KiB to 16 MiB
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[(wanted.view(np.uint64) * _MIX) >> shift] = True
    hashed = np.multiply(values.view(np.uint64), _MIX)
    np.right_shift(hashed, shift, out=hashed)
    candidates = np.flatnonzero(table[hashed])
    del hashed
    out[candidates] = np.isin(values[candidates], wanted)
    return out
