"""What a built faiss index holds: its memory, its ids, its vectors.

Both sides use these: the server to account for memory (``--max-memory``, ``memory_bytes`` in the
index info) and to answer ``export``; the client to account for its local indices and to merge and
split them. Everything is read from faiss's own containers (code arrays, inverted lists, graph
links, id maps), so the numbers follow what faiss actually allocated rather than a formula per
index type; wrappers (``IndexIDMap``, ``IndexPreTransform``, ``IndexRefine``, an IVF's quantizer,
an HNSW's storage) are walked into.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from faissx_core.errors import UnsupportedOperation
from faissx_core.estimate import IVF_LIST_BYTES
from faissx_core.specs import RuntimeParam, downcast

#: ``IndexRefine``'s knob: the base index is searched for ``k * k_factor`` candidates, which the
#: refinement index re-ranks exactly. faiss's own attribute, declared here because no family
#: owns the refine wrappers (they come from ``index_factory`` strings such as ``...,RFlat``).
K_FACTOR = RuntimeParam(
    name="k_factor",
    path="k_factor",
    kind="float",
    ge=1.0,
    le=float(1 << 16),
    doc="candidates re-ranked per result by an IndexRefine (more: slower, better recall)",
)

_FAISS_INDEX = (faiss.Index, faiss.IndexBinary)
#: Bytes per entry of an id map's reverse hash table (IndexIDMap2): key, value, node overhead.
_REV_MAP_ENTRY = 32


def _is_index(obj: Any) -> bool:
    return isinstance(obj, _FAISS_INDEX)


def _child(obj: Any, attr: str) -> Any:
    value = getattr(obj, attr, None)
    return downcast(value) if _is_index(value) else None


def _size(vec: Any) -> int:
    try:
        return int(vec.size())
    except (AttributeError, TypeError, RuntimeError):
        return 0


def _has_rev_map(idx: Any) -> bool:
    # not hasattr(idx, "rev_map"): SWIG wraps that unordered_map without a destructor and warns
    return isinstance(idx, faiss.IndexIDMap2 | faiss.IndexBinaryIDMap2)


def _is_ivf(idx: Any) -> bool:
    return isinstance(idx, faiss.IndexIVF | faiss.IndexBinaryIVF)


def core_params(index: Any) -> list[RuntimeParam]:
    """Runtime parameters of faiss wrappers no family declares: an ``IndexRefine``'s
    ``k_factor``, at the top or under an id map / pre-transform (``index.k_factor``)."""
    found: list[RuntimeParam] = []
    obj, prefix = downcast(index), ""
    for _ in range(8):
        if isinstance(obj, faiss.IndexRefine):
            found.append(K_FACTOR.model_copy(update={"path": prefix + K_FACTOR.path}))
        inner = _child(obj, "index")
        if inner is None:
            break
        obj, prefix = inner, prefix + "index."
    return found


# -- memory ------------------------------------------------------------------------------------


def index_bytes(index: Any) -> int:
    """Bytes of data the index holds, read from faiss's containers (not a serialisation)."""
    idx = downcast(index)
    total = 0
    if isinstance(idx, faiss.IndexFlatCodes):  # Flat, PQ, SQ, LSH, ...: one code per vector
        total += _size(idx.codes)
    if isinstance(idx, faiss.IndexBinaryFlat):
        total += _size(idx.xb)  # type: ignore[attr-defined]  # faiss's stubs lack it
    if _is_ivf(idx):
        invlists = idx.invlists
        total += int(invlists.compute_ntotal()) * (int(idx.code_size) + 8)  # codes + ids
        total += int(idx.nlist) * IVF_LIST_BYTES  # every list's (empty) containers
        total += _size(getattr(idx, "precomputed_table", None)) * 4
    for attr in ("pq", "sq", "refine_pq"):
        sub = getattr(idx, attr, None)
        total += 4 * (_size(getattr(sub, "centroids", None)) + _size(getattr(sub, "trained", None)))
    hnsw = getattr(idx, "hnsw", None)
    if hnsw is not None:
        total += _size(hnsw.neighbors) * 4 + _size(hnsw.levels) * 4 + _size(hnsw.offsets) * 8
    if isinstance(idx, faiss.IndexPreTransform):
        for number in range(idx.chain.size()):  # type: ignore[attr-defined]  # faiss's stubs lack it
            step = idx.chain.at(number)  # type: ignore[attr-defined]  # faiss's stubs lack it
            total += sum(_size(getattr(step, a, None)) * 4 for a in ("A", "b", "mean", "PCAMat"))
    if hasattr(idx, "id_map"):
        total += _size(idx.id_map) * 8
        if _has_rev_map(idx):
            total += _size(idx.id_map) * _REV_MAP_ENTRY
    for attr in ("index", "quantizer", "storage", "base_index", "refine_index"):
        inner = _child(idx, attr)
        if inner is not None and inner is not idx:
            total += index_bytes(inner)
    if total == 0 and idx.ntotal:  # a type whose containers we do not know: its codes at least
        total = int(idx.ntotal) * _code_bytes(idx)
    return total


def _code_bytes(idx: Any) -> int:
    size = getattr(idx, "code_size", None)
    if isinstance(size, int) and size > 0:
        return size
    return int(idx.d) // 8 if isinstance(idx, faiss.IndexBinary) else int(idx.d) * 4


def bytes_per_vector(index: Any) -> int:
    """Bytes one more vector adds to the index (its code, id and links)."""
    idx = downcast(index)
    if hasattr(idx, "id_map"):
        extra = 8 + (_REV_MAP_ENTRY if _has_rev_map(idx) else 0)
        return bytes_per_vector(idx.index) + extra
    if isinstance(idx, faiss.IndexRefine):
        return bytes_per_vector(idx.base_index) + bytes_per_vector(idx.refine_index)
    inner = _child(idx, "index")  # IndexPreTransform and other single wrappers
    if inner is not None and not _is_ivf(idx):
        return bytes_per_vector(inner)
    if _is_ivf(idx):
        return int(idx.code_size) + 8
    hnsw = getattr(idx, "hnsw", None)
    if hnsw is not None:
        level0, upper = hnsw.nb_neighbors(0), hnsw.nb_neighbors(1)
        # every vector has level-0 links; a fraction 1/M of them one more level, and so on
        links = level0 + upper / max(upper - 1, 1)
        storage = _child(idx, "storage")
        return int(links * 4) + 12 + (bytes_per_vector(storage) if storage is not None else 0)
    return _code_bytes(idx)


# -- ids and vectors ----------------------------------------------------------------------------


def keeps_ids(index: Any) -> bool:
    """Whether the index stores the ids it is given (id maps, IVF lists) rather than
    numbering vectors by position (Flat, PQ, SQ, HNSW, ...)."""
    idx = downcast(index)
    if hasattr(idx, "id_map") or _is_ivf(idx):
        return True
    inner = _child(idx, "index")
    return inner is not None and keeps_ids(inner)


def _ivf_entries(ivf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stored id of an IVF with its list number and offset, sorted by id."""
    invlists = ivf.invlists
    ids, lists, offsets = [], [], []
    for list_no in range(int(ivf.nlist)):
        n = int(invlists.list_size(list_no))
        if n == 0:
            continue
        ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), n).copy())
        lists.append(np.full(n, list_no, dtype=np.int64))
        offsets.append(np.arange(n, dtype=np.int64))
    if not ids:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    all_ids = np.concatenate(ids)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], np.concatenate(lists)[order], np.concatenate(offsets)[order]


def _ivf_decode(ivf: Any, lists: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The vectors at (list, offset): binary IVF lists hold the vectors themselves; float IVF
    codes are decoded with ``sa_decode`` after their list number (the residual's centroid)."""
    code_size = int(ivf.code_size)
    codes = np.empty((len(lists), code_size), dtype=np.uint8)
    invlists = ivf.invlists
    for list_no in np.unique(lists):
        rows = np.flatnonzero(lists == list_no)
        n = int(invlists.list_size(int(list_no)))
        stored = faiss.rev_swig_ptr(invlists.get_codes(int(list_no)), n * code_size)
        codes[rows] = np.asarray(stored).reshape(n, code_size)[offsets[rows]]
    if isinstance(ivf, faiss.IndexBinaryIVF):
        return codes
    if len(codes) == 0:
        return _empty(ivf)
    width = int(ivf.coarse_code_size())
    prefix = np.zeros((len(codes), width), dtype=np.uint8)
    for byte in range(width):  # list numbers, little-endian, as IndexIVF::encode_listno
        prefix[:, byte] = (lists >> (8 * byte)) & 0xFF
    return ivf.sa_decode(np.hstack([prefix, codes]))


def export_vectors(
    index: Any, vectors: bool = True, start: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored vectors with their ids: ``(ids, x)`` for the entries ``start`` to
    ``start + count`` (all by default) in stored order; ``x`` is None unless ``vectors``.

    Stored order: insertion order where the index keeps one (positions of Flat, PQ, SQ, HNSW; an
    id map's order), ascending ids for IVF (which keeps none). The ids are what ``search``
    returns and what ``remove_ids`` takes. Vectors are faiss's reconstructions (exact for Flat,
    decoded codes for quantized indices).
    """
    idx = downcast(index)
    ntotal = int(idx.ntotal)
    start = min(max(int(start), 0), ntotal)
    stop = ntotal if count is None else min(ntotal, start + max(int(count), 0))
    if hasattr(idx, "id_map"):
        inner_ids, x = export_vectors(idx.index, vectors, start, stop - start)
        id_map = faiss.rev_swig_ptr(idx.id_map.data(), ntotal) if ntotal else np.empty(0)
        return np.asarray(id_map, dtype=np.int64)[inner_ids].copy(), x
    if isinstance(idx, faiss.IndexPreTransform):
        ids, x = export_vectors(idx.index, vectors, start, stop - start)
        if x is not None and len(x):
            for number in reversed(range(idx.chain.size())):  # type: ignore[attr-defined]  # faiss's stubs lack it
                x = idx.chain.at(number).reverse_transform(x)  # type: ignore[attr-defined]  # faiss's stubs lack it
        return ids, x
    if _is_ivf(idx):
        ids, lists, offsets = _ivf_entries(idx)
        page = slice(start, stop)
        x = _ivf_decode(idx, lists[page], offsets[page]) if vectors else None
        return ids[page].copy(), x
    ids = np.arange(start, stop, dtype=np.int64)
    if not vectors:
        return ids, None
    if stop == start:
        return ids, _empty(idx)
    try:
        return ids, idx.reconstruct_n(start, stop - start)
    except RuntimeError as exc:
        raise UnsupportedOperation(
            f"{type(idx).__name__} cannot give its vectors back (faiss: reconstruct not supported)"
        ) from exc


def _empty(idx: Any) -> np.ndarray:
    if isinstance(idx, faiss.IndexBinary):
        return np.empty((0, int(idx.d) // 8), np.uint8)
    return np.empty((0, int(idx.d)), np.float32)
