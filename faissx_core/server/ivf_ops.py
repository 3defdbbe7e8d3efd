"""IVF inverted-list surgery on one index: faiss's ``IndexIVF`` methods that reach into lists.

``copy_subset_to`` (a write to another index, run by the backend as one commit: see
``LocalBackend.copy_into``), ``search_preassigned`` / ``range_search_preassigned``,
``update_vectors``, ``replace_invlists`` with a wrapper over the index's own lists
(``CappedInvertedLists``, ``StopWordsInvertedLists``) and reads of such a wrapper, and an IVF
search that counts its own work (``faiss.cvar.indexIVF_stats`` on the client). faiss crashes,
corrupts memory or aborts the process on some inputs of these methods; each such input is
refused here, with the reason, before faiss runs. Registered with the other index ops through
:func:`faissx_core.server.ops.op`; the server imports this module (app.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import faiss
import numpy as np

from faissx_core import attrs
from faissx_core.errors import InvalidArgument, OutOfRange, UnsupportedOperation
from faissx_core.finite import all_finite
from faissx_core.operations import AttrCall, InvlistWrap, ReplaceInvlistsArgs
from faissx_core.server.backend import ManagedIndex
from faissx_core.server.ops import (
    Args,
    Arrays,
    Job,
    Result,
    _info,
    _k,
    _radius,
    bounded_range_search,
    id_array,
    op,
    run_faiss,
    vectors,
)

# -- inverted-list surgery on IVF indices (faiss's IndexIVF methods) ----------------------------


def ivf_of(m: ManagedIndex, index: Any, what: str) -> Any:
    """``index`` as the IndexIVF (or IndexBinaryIVF) it is, or UnsupportedOperation: these
    are methods of IVF classes only (faiss has no such method on a wrapper around one)."""
    ivf = attrs.downcast_any(index)
    if not isinstance(ivf, faiss.IndexIVF | faiss.IndexBinaryIVF):
        raise UnsupportedOperation(f"{what} is a method of IVF indices; {m.spec.type} is not one")
    return ivf


def _array_lists(ivf: Any) -> bool:
    """Whether the lists are plain ``ArrayInvertedLists`` (fast-scan's block lists are not:
    faiss's entry-by-entry copy into them corrupts memory)."""
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists)


#: faiss's ``InvertedLists::subset_type_t``: what ``a1`` and ``a2`` mean for each.
SUBSET_TYPES = ("id range", "id modulo", "element range", "list fraction", "list range")


def copy_subset(into_m: ManagedIndex, source_m: ManagedIndex, a: Any) -> Callable[[Any, Any], None]:
    """The checked ``source.copy_subset_to(into, subset_type, a1, a2)`` for backend.copy_into.

    faiss divides by ``a1`` for the modulo types and by the source's size for an element range,
    and reads past its lists for an element range beyond ``ntotal``: each of those would kill
    the server, so they are refused here with the reason, before faiss runs.
    """
    if a.subset_type in (1, 3) and a.a1 < 1:
        raise InvalidArgument(
            f"copy_subset_to: subset type {a.subset_type} ({SUBSET_TYPES[a.subset_type]}) "
            f"takes a modulus a1 >= 1, got {a.a1}"
        )

    def copy(into: Any, source: Any) -> None:
        src = ivf_of(source_m, source, "copy_subset_to")
        dst = ivf_of(into_m, into, "copy_subset_to")
        if not isinstance(src, faiss.IndexIVF) or not isinstance(dst, faiss.IndexIVF):
            raise UnsupportedOperation("copy_subset_to is a method of float IVF indices")
        if type(src) is not type(dst) or src.nlist != dst.nlist or src.code_size != dst.code_size:
            raise InvalidArgument(
                f"copy_subset_to needs two IVF indices of one kind, nlist and code size: "
                f"{type(src).__name__}(nlist={src.nlist}, code_size={src.code_size}) into "
                f"{type(dst).__name__}(nlist={dst.nlist}, code_size={dst.code_size})"
            )
        if not (_array_lists(src) and _array_lists(dst)):
            raise UnsupportedOperation(
                f"copy_subset_to on {type(src).__name__}: faiss copies entries one by one, "
                "which its block (fast-scan) inverted lists do not support"
            )
        if not dst.direct_map.no():
            raise InvalidArgument("copy_subset_to: the destination must have no direct map")
        ntotal = int(src.ntotal)
        if a.subset_type == 2 and not 0 <= a.a1 <= a.a2 <= ntotal:
            raise OutOfRange(
                f"copy_subset_to: element range [{a.a1}, {a.a2}) must lie in [0, {ntotal}]"
            )
        if ntotal == 0:
            return  # nothing to copy (faiss would divide by the empty source's size)
        run_faiss(
            lambda: src.copy_subset_to(dst, a.subset_type, a.a1, a.a2), "copy_subset_to", into_m
        )

    return copy


def preassigned(m: ManagedIndex, arrays: Arrays, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``assign`` (int64) and ``centroid_dis`` arrays of a preassigned search, checked
    for shape; their list numbers are checked against ``nlist`` under the lock."""
    assign = arrays.get("assign")
    if assign is None or assign.dtype != np.int64 or assign.ndim != 2 or len(assign) != n:
        raise InvalidArgument(f"assign must be an int64 array of shape ({n}, nprobe)")
    dis_type = np.int32 if m.binary else np.float32
    dis = arrays.get("centroid_dis")
    if dis is None:
        dis = np.zeros(assign.shape, dtype=dis_type)
    elif dis.dtype != dis_type or dis.shape != assign.shape:
        raise InvalidArgument(
            f"centroid_dis must be a {np.dtype(dis_type).name} array of shape {assign.shape}"
        )
    if dis.dtype == np.float32 and dis.size and not all_finite(dis):
        raise InvalidArgument("centroid_dis contains NaN or infinity")
    return np.ascontiguousarray(assign), np.ascontiguousarray(dis)


def _check_lists(m: ManagedIndex, ivf: Any, assign: np.ndarray, what: str) -> None:
    """faiss reads ``assign`` with a stride of the index's ``nprobe`` and takes every entry as
    a list number (-1: none): both are checked, as a wrong one reads out of bounds."""
    nprobe, nlist = int(ivf.nprobe), int(ivf.nlist)
    if assign.shape[1] != nprobe or nprobe > nlist:
        raise InvalidArgument(
            f"{what}: assign has {assign.shape[1]} lists per query; {m.spec.type} searches "
            f"nprobe={nprobe} of its {nlist} (set nprobe to the number of columns, at most nlist)"
        )
    if assign.size and (assign.min() < -1 or assign.max() >= nlist):
        raise OutOfRange(f"{what}: list numbers must be in [-1, {nlist}) (-1: no list)")


@op("search_preassigned")
def search_preassigned(m: ManagedIndex, a: Any, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    k = _k(a.k, len(x))
    assign, dis = preassigned(m, arrays, len(x))

    def job(index: Any) -> Result:
        ivf = ivf_of(m, index, "search_preassigned")
        _check_lists(m, ivf, assign, "search_preassigned")
        D, I = run_faiss(lambda: ivf.search_preassigned(x, k, assign, dis), "search_preassigned", m)
        return {}, {"D": D, "I": I}

    return job


@op("range_search_preassigned")
def range_search_preassigned(m: ManagedIndex, a: Any, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    radius = _radius(m, a.radius)
    assign, dis = preassigned(m, arrays, len(x))

    def job(index: Any) -> Result:
        ivf = ivf_of(m, index, "range_search_preassigned")
        _check_lists(m, ivf, assign, "range_search_preassigned")

        def part(lo: int, hi: int) -> Any:
            return ivf.range_search_preassigned(x[lo:hi], radius, assign[lo:hi], dis[lo:hi])

        lims, D, I = bounded_range_search(
            m, ivf, x, radius, None, a._reply_bytes, part=part, what="range_search_preassigned"
        )
        return {}, {"lims": lims, "D": D, "I": I}

    return job


@op("update_vectors")
def update_vectors(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    """``IndexIVF.update_vectors(keys, x)``: new vectors for stored ids, through the direct map.

    faiss changes entries one by one and throws at the first bad id, which would leave the
    update half done: every id is checked first (present, unique), so it applies whole or
    not at all.
    """
    x = vectors(m, arrays)
    ids = id_array(arrays, "ids", len(x))
    if len(np.unique(ids)) != len(ids):
        raise InvalidArgument("update_vectors: ids must be distinct")

    def job(index: Any) -> Result:
        ivf = ivf_of(m, index, "update_vectors")
        m.check_lists_writable("update_vectors")
        if not hasattr(ivf, "update_vectors"):
            raise UnsupportedOperation(f"update_vectors is not supported by {m.spec.type}")
        kind = int(ivf.direct_map.type)
        if kind == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]  # faiss's stubs lack it
            raise InvalidArgument(
                "update_vectors needs a direct map: call make_direct_map() or "
                "set_direct_map_type() first"
            )
        if kind == faiss.DirectMap.Array:  # type: ignore[attr-defined]
            if ids.size and (ids.min() < 0 or ids.max() >= ivf.ntotal):
                raise OutOfRange(f"update_vectors: ids must be in [0, {ivf.ntotal})")
        else:
            missing = [i for i in ids.tolist() if not _in_hashtable(ivf, i)]
            if missing:
                raise OutOfRange(f"update_vectors: no stored vector has id {missing[0]}")
        run_faiss(lambda: ivf.update_vectors(ids, x), "update_vectors", m)
        return _info(index), {}

    return job


def _in_hashtable(ivf: Any, key: int) -> bool:
    try:
        ivf.direct_map.get(key)
    except RuntimeError:
        return False
    return True


# -- wrappers over an IVF's own inverted lists (faiss's CappedInvertedLists, ...) ------------

#: What a client may read from a wrapper before (or without) installing it.
WRAPPER_READS = ("list_size", "real_list_size", "get_ids", "get_codes", "imbalance_factor")
WRAPPERS = {
    "CappedInvertedLists": "CappedInvertedLists",
    "StopWordsInvertedLists": "StopWordsInvertedLists",
}


def own_lists(m: ManagedIndex, ivf: Any) -> Any:
    """The IVF's own inverted lists, under whatever wrapper it serves through now."""
    return m.invlists_held[0] if m.invlists_held is not None else ivf.invlists


def wrap_lists(lists: Any, wrap: InvlistWrap) -> Any:
    """faiss's wrapper ``wrap.type`` over ``lists`` (which it points into, not owns)."""
    if wrap.type == "CappedInvertedLists" and wrap.value < 1:
        raise InvalidArgument("CappedInvertedLists caps each list at 1 entry or more")
    return getattr(faiss, WRAPPERS[wrap.type])(lists, wrap.value)


@op("replace_invlists")
def replace_invlists(m: ManagedIndex, a: ReplaceInvlistsArgs, arrays: Arrays) -> Job:
    """``index.replace_invlists(wrapper over index.invlists)`` and back, built on the server.

    The server keeps ownership straight whatever ``own`` the client passed: while a wrapper
    serves, the managed index holds the wrapper (Python frees it) and the index's own lists,
    which it gives back to the index when they are put back or the index goes
    (ManagedIndex.restore_invlists), so the index frees them, once. A named index is
    refused a wrapper: faiss cannot write one into a snapshot, so it could not stay durable.
    """
    if a.wrap is not None and not m.ephemeral:
        raise UnsupportedOperation(
            f"replace_invlists with a {a.wrap.type} on named index {m.name!r}: faiss cannot "
            "write that wrapper into a snapshot, so a named (durable) index cannot serve "
            "through it; use it on an unnamed index"
        )

    def job(index: Any) -> Result:
        ivf = ivf_of(m, index, "replace_invlists")
        if not isinstance(ivf, faiss.IndexIVF):
            raise UnsupportedOperation("replace_invlists with a wrapper needs a float IVF index")
        held = m.invlists_held
        if a.wrap is None:
            if held is not None:
                m.restore_invlists()
            return _info(index), {}
        lists = own_lists(m, ivf)
        wrapper = run_faiss(partial(wrap_lists, lists, a.wrap), "replace_invlists", m)
        if held is None:
            ivf.own_invlists = False  # replace_invlists would free the own lists otherwise
        ivf.replace_invlists(wrapper, False)  # a previous wrapper is freed as Python drops it
        m.invlists_held = (lists, wrapper)
        return _info(index), {}

    return job


def wrapper_read(m: ManagedIndex, a: AttrCall) -> Job:
    """``call_attr`` with ``wrap``: a read of faiss's wrapper over the IVF's own lists (the
    client's ``CappedInvertedLists(index.invlists, n).list_size(i)``), built for the call."""
    if a.path != "invlists" or a.method not in WRAPPER_READS:
        raise InvalidArgument(
            f"a wrapper over inverted lists is read at path 'invlists' with "
            f"{', '.join(WRAPPER_READS)}, not {a.path!r}.{a.method}"
        )
    wrap = a.wrap
    assert wrap is not None  # ops.call_attr sends only those here

    def job(index: Any) -> Result:
        lists = own_lists(m, ivf_of(m, index, "an inverted-lists wrapper"))
        wrapper = run_faiss(partial(wrap_lists, lists, wrap), "call_attr", m)
        return run_faiss(lambda: attrs.call(wrapper, a.method, list(a.args), None), "call_attr", m)

    return job


#: IVF classes whose search is faiss's IndexIVF::search (a quantizer search, then
#: search_preassigned): for them that pair, with a stats object of its own, is the same search.
COUNTED_IVF = tuple(
    getattr(faiss, name)
    for name in (
        "IndexIVFFlat",
        "IndexIVFFlatDedup",
        "IndexIVFScalarQuantizer",
        "IndexIVFPQ",
        "IndexIVFResidualQuantizer",
        "IndexIVFLocalSearchQuantizer",
        "IndexIVFProductResidualQuantizer",
        "IndexIVFProductLocalSearchQuantizer",
    )
    if hasattr(faiss, name)
)


def ivf_search_counted(
    index: Any, x: np.ndarray, k: int, params: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """faiss's IVF search with its own ``IndexIVFStats`` (the global one mixes every caller's
    searches); None for an index that is not one of :data:`COUNTED_IVF`, which searches as usual.
    """
    ivf = attrs.downcast_any(index)
    if type(ivf) not in COUNTED_IVF:
        return None
    if params is not None and not isinstance(params, faiss.SearchParametersIVF):
        return None  # faiss's own search refuses them, with its own error
    nprobe = int(params.nprobe if isinstance(params, faiss.SearchParametersIVF) else ivf.nprobe)
    nprobe = min(nprobe, int(ivf.nlist))
    if nprobe < 1:
        return None  # faiss's own search reports it
    n = len(x)
    quantizer_params = getattr(params, "quantizer_params", None)
    start = time.perf_counter()
    Dq, Iq = ivf.quantizer.search(x, nprobe, params=quantizer_params)
    quantized = time.perf_counter()
    stats = faiss.IndexIVFStats()
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    ivf.search_preassigned_c(
        n,
        faiss.swig_ptr(x),
        k,
        faiss.swig_ptr(Iq),
        faiss.swig_ptr(Dq),
        faiss.swig_ptr(D),
        faiss.swig_ptr(I),
        False,
        params,
        stats,
    )
    done = time.perf_counter()
    counts = {
        "nq": int(stats.nq),
        "nlist": int(stats.nlist),
        "ndis": int(stats.ndis),
        "nheap_updates": int(stats.nheap_updates),
        "quantization_time": (quantized - start) * 1000.0,  # milliseconds, as faiss's
        "search_time": (done - quantized) * 1000.0,
    }
    return D, I, counts
