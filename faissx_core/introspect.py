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
from faissx_core.specs import RuntimeParam, downcast

#: ``IndexRefine``'s knob: the base index is searched for ``k * k_factor`` candidates, which the
#: refinement index re-ranks exactly. faiss's own attribute, declared here because no family
#: owns the refine wrappers (they come from ``index_factory`` strings such as ``...,RFlat``).
K_FACTOR = RuntimeParam(name="k_factor", path="k_factor", kind="float", ge=1.0, le=float(1 << 16),
                        doc="candidates re-ranked per result by an IndexRefine (more: slower, "
                            "better recall)")

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
        total += _size(idx.xb)
    if _is_ivf(idx):
        invlists = idx.invlists
        total += int(invlists.compute_ntotal()) * (int(idx.code_size) + 8)  # codes + ids
        total += _size(getattr(idx, "precomputed_table", None)) * 4
    for attr in ("pq", "sq", "refine_pq"):
        sub = getattr(idx, attr, None)
        total += 4 * (_size(getattr(sub, "centroids", None)) + _size(getattr(sub, "trained", None)))
    hnsw = getattr(idx, "hnsw", None)
    if hnsw is not None:
        total += _size(hnsw.neighbors) * 4 + _size(hnsw.levels) * 4 + _size(hnsw.offsets) * 8
    if isinstance(idx, faiss.IndexPreTransform):
        for number in range(idx.chain.size()):
            step = idx.chain.at(number)
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


def _ivf_lists(ivf: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ids, codes) of each non-empty inverted list, copied out of faiss."""
    invlists, code_size = ivf.invlists, int(ivf.code_size)
    ids, codes = [], []
    for list_no in range(int(ivf.nlist)):
        n = int(invlists.list_size(list_no))
        if n == 0:
            continue
        ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), n).copy())
        raw = faiss.rev_swig_ptr(invlists.get_codes(list_no), n * code_size)
        codes.append(np.array(raw, dtype=np.uint8).reshape(n, code_size))
        codes[-1] = _with_list_no(ivf, list_no, codes[-1])
    return ids, codes


def _with_list_no(ivf: Any, list_no: int, codes: np.ndarray) -> np.ndarray:
    """Float IVF codes prefixed with their list number: the standalone codes ``sa_decode``
    reads (the residual's centroid comes from the list number)."""
    if isinstance(ivf, faiss.IndexBinaryIVF):
        return codes  # binary IVF lists hold the vectors themselves
    width = int(ivf.coarse_code_size())
    prefix = np.frombuffer(int(list_no).to_bytes(8, "little")[:width], dtype=np.uint8)
    return np.hstack([np.broadcast_to(prefix, (len(codes), width)), codes])


def export_vectors(index: Any, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Every stored vector with its id: ``(ids, x)``, ``x`` None unless ``vectors``.

    Order: insertion order where the index keeps one (positions of Flat, PQ, SQ, HNSW; an id
    map's order), ascending ids for IVF (which keeps none). The ids are what ``search`` returns
    and what ``remove_ids`` takes. Vectors are faiss's reconstructions (exact for Flat, decoded
    codes for quantized indices).
    """
    idx = downcast(index)
    if hasattr(idx, "id_map"):
        inner_ids, x = export_vectors(idx.index, vectors)
        id_map = faiss.vector_to_array(idx.id_map).astype(np.int64)
        return id_map[inner_ids], x
    if isinstance(idx, faiss.IndexPreTransform):
        ids, x = export_vectors(idx.index, vectors)
        if x is not None:
            for number in reversed(range(idx.chain.size())):
                x = idx.chain.at(number).reverse_transform(x)
        return ids, x
    if _is_ivf(idx):
        ids_by_list, codes_by_list = _ivf_lists(idx)
        if not ids_by_list:
            return np.empty(0, np.int64), _empty(idx) if vectors else None
        ids = np.concatenate(ids_by_list)
        order = np.argsort(ids, kind="stable")
        x = None
        if vectors:
            codes = np.vstack(codes_by_list)
            x = codes if isinstance(idx, faiss.IndexBinaryIVF) else idx.sa_decode(codes)
            x = x[order]
        return ids[order], x
    ntotal = int(idx.ntotal)
    ids = np.arange(ntotal, dtype=np.int64)
    if not vectors:
        return ids, None
    if ntotal == 0:
        return ids, _empty(idx)
    try:
        return ids, idx.reconstruct_n(0, ntotal)
    except RuntimeError as exc:
        raise UnsupportedOperation(
            f"{type(idx).__name__} cannot give its vectors back (faiss: reconstruct not "
            "supported)") from exc


def _empty(idx: Any) -> np.ndarray:
    if isinstance(idx, faiss.IndexBinary):
        return np.empty((0, int(idx.d) // 8), np.uint8)
    return np.empty((0, int(idx.d)), np.float32)
