"""Index operations: validation first, then a closure that touches faiss under the index lock.

Each op is registered with :func:`op`. Its function receives the managed index, the validated
arguments and the request's arrays, checks everything that could make faiss misbehave, and
returns a ``job(index) -> (result, arrays)`` that the backend runs under the read or write lock.
These functions work on any ``faiss.Index`` or ``faiss.IndexBinary``; what differs between
families lives in the plugins' specs, not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import faiss
import numpy as np
from pydantic import (
    ValidationError,
)

from faissx_core import attrs, readers
from faissx_core.errors import (
    FaissError,
    FaissxError,
    InvalidArgument,
    NotTrained,
    OutOfRange,
    QuotaExceeded,
    UnsupportedOperation,
    WrongType,
    faiss_reason,
)
from faissx_core.finite import all_finite, first_bad_row
from faissx_core.introspect import export_vectors, keeps_ids
from faissx_core.operations import (
    OPERATIONS,
    AddArgs,
    Args,
    AttrAssign,
    AttrCall,
    AttrPath,
    AttrValue,
    DirectMapArgs,
    ExportArgs,
    KeyArgs,
    Operation,
    ParamName,
    ParamValue,
    RangeArgs,
    RangeOfKeys,
    RemoveArgs,
    SearchArgs,
    TransformArgs,
)
from faissx_core.selectors import SelectorSpec, build_selector
from faissx_core.server.backend import ManagedIndex
from faissx_core.specs import IndexSpec, downcast

Arrays = dict[str, np.ndarray]
Result = tuple[dict[str, Any], Arrays]
Job = Callable[[Any], Result]

#: Largest result (queries x k) one search may allocate: 2**25 results are 384 MiB of D and I.
MAX_RESULTS = 1 << 25


@dataclass(frozen=True)
class IndexOp:
    """An index operation's declaration (the contract's table) with its server function."""

    decl: Operation
    prepare: Callable[[ManagedIndex, Any, Arrays], Job]

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def write(self) -> bool:
        return self.decl.write

    def parse(self, raw: dict[str, Any]) -> Any:
        return self.decl.parse(raw)


#: The function of every index operation, by name; each is declared in faissx_core/operations.py.
OPS: dict[str, IndexOp] = {}


class BoundJob(NamedTuple):
    """A prepared job that still knows which call it is: a backend that does not run the
    closure in this process (the Ray backend sends the call to shard actors) reads ``op``,
    ``args`` (validated) and ``arrays``; every other caller just calls it."""

    job: Job
    op: str
    args: Any
    arrays: Arrays

    def __call__(self, index: Any) -> Result:
        return self.job(index)


def op(name: str) -> Callable:
    """Register the function that prepares ``name``'s job; ``name`` must be declared in the
    contract (faissx_core/operations.py) as an index operation."""
    decl = OPERATIONS.get(name)
    if decl is None or decl.target != "index":
        raise LookupError(
            f"op {name!r}: declare it as an index operation in faissx_core/operations.py first"
        )

    def register(fn: Callable[[ManagedIndex, Any, Arrays], Job]) -> Callable:
        def bound(m: ManagedIndex, a: Any, arrays: Arrays) -> Job:
            return BoundJob(fn(m, a, arrays), name, a, arrays)  # type: ignore[return-value]  # mypy misses a NamedTuple's __call__

        OPS[name] = IndexOp(decl, bound)
        return fn

    return register


def run_faiss(fn: Callable[[], Any], what: str, managed: ManagedIndex) -> Any:
    """Call into faiss, turning its C++ exceptions into typed errors."""
    try:
        return fn()
    except FaissxError:  # already typed (UnknownParameter is also an AttributeError)
        raise
    except TypeError as exc:  # SWIG found no overload for these values: faiss refuses them
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WrongType(
            f"{what} on {managed.spec.type}: faiss refused the arguments ({first})"
        ) from None
    except AttributeError as exc:  # the faiss class has no such method
        raise UnsupportedOperation(
            f"{what} is not supported by {managed.spec.type} ({exc})"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if "not implemented" in text.lower() or "not supported" in text.lower():
            raise UnsupportedOperation(
                f"{what} is not supported by {managed.spec.type}: {faiss_reason(text)}"
            ) from None
        raise FaissError(f"{what} on {managed.spec.type}: {faiss_reason(text)}") from None


def deserialize(data: np.ndarray, *, trusted: bool = False) -> Any:
    """faiss bytes -> index, float or binary (the header says which; faiss checks it).

    A client's bytes (``trusted`` False) may make faiss allocate no more than they could hold
    (readers.py); our own (a Ray replica's state) are read as faiss reads them.
    """
    errors = []
    for binary in (False, True):
        try:
            return readers.read_index(data, binary=binary, trusted=trusted)
        except (RuntimeError, MemoryError) as exc:  # corrupt sizes can ask for huge buffers
            errors.append(faiss_reason(str(exc)) or type(exc).__name__)
    raise InvalidArgument(f"not a faiss index: {errors[0]}")


# -- input checks ------------------------------------------------------------------------------


def vectors(m: ManagedIndex, arrays: Arrays, name: str = "x") -> np.ndarray:
    x = arrays.get(name)
    if x is None:
        raise InvalidArgument(f"missing array {name!r}")
    binary = m.binary  # ``m`` may be a _Shape (a nested object's), not a ManagedIndex
    want = _UINT8 if binary else _FLOAT32
    if x.dtype != want:
        error = WrongType if binary else InvalidArgument
        raise error(f"{name} must be {want.name} for {m.spec.type}, got {x.dtype}")
    width = m.row_width
    if x.ndim != 2 or x.shape[1] != width:
        raise InvalidArgument(
            f"{name} has shape {tuple(x.shape)}; {m.spec.type} (d={m.index.d}) expects (n, {width})"
        )
    if not binary and x.size and not all_finite(x):
        raise InvalidArgument(f"{name} contains NaN or infinity (row {first_bad_row(x):,})")
    return x


_FLOAT32, _UINT8 = np.dtype(np.float32), np.dtype(np.uint8)


def id_array(arrays: Arrays, name: str, n: int | None = None) -> np.ndarray:
    ids = arrays.get(name)
    if ids is None:
        raise InvalidArgument(f"missing array {name!r}")
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise InvalidArgument(f"{name} must be a 1-d int64 array, got {ids.dtype}{ids.shape}")
    if n is not None and ids.size != n:
        raise InvalidArgument(f"{name} has {ids.size} ids for {n} vectors")
    return ids


def _k(k: int, nq: int) -> int:
    if nq * k > MAX_RESULTS:
        raise InvalidArgument(f"{nq} queries x k={k} exceeds {MAX_RESULTS} results per request")
    return k


def _key(m: ManagedIndex, index: Any, key: int) -> int:
    if not 0 <= key < index.ntotal and not _has_id_map(index):
        raise OutOfRange(f"key {key} out of range [0, {index.ntotal})")
    return key


def _has_id_map(index: Any) -> bool:
    return hasattr(index, "id_map") or getattr(index, "direct_map", None) is not None


def _info(index: Any) -> dict[str, Any]:
    return {"ntotal": int(index.ntotal), "is_trained": bool(index.is_trained)}


# -- argument models ---------------------------------------------------------------------------


class SearchParams(NamedTuple):
    """faiss search parameters plus what they point into (a selector and its id array).

    faiss keeps raw pointers to both, so jobs hold this tuple, not just ``params``.
    """

    params: Any
    held: Any


#: A call without ``params``: one shared value, as it holds nothing.
_NO_PARAMS = SearchParams(None, None)


def search_params(
    m: ManagedIndex, spec: IndexSpec | None, arrays: Arrays, depth: int = 0
) -> SearchParams:
    """Build a ``SearchParameters*`` component (and its selector) for one call."""
    if spec is None:
        return _NO_PARAMS
    assert m.registry is not None
    itype = m.registry.index_type(spec.type)
    if itype.kind != "component" or "SearchParameters" not in spec.type:
        raise InvalidArgument(f"params must be a SearchParameters object, not {spec.type}")
    values = dict(spec.params)
    sel = values.pop("sel", None)
    nested = {key: values.pop(key) for key in NESTED_PARAMS if values.get(key) is not None}
    params = itype.build(itype.validate_params(values), m.registry.build)
    held: list[Any] = []
    if sel is not None:
        try:
            sel_spec = SelectorSpec.model_validate(sel)
        except ValidationError as exc:
            raise InvalidArgument(f"params.sel: {exc.errors()[0].get('msg')}") from None
        built = build_selector(sel_spec, arrays, id_map_of=partial(_searched, m))
        params.sel = built[0]
        held.append(built)
    for key, inner_spec in nested.items():  # the coarse quantizer's, a refine base's
        if depth >= 2:
            raise InvalidArgument(f"{key} nest at most 2 deep")
        inner = search_params(m, IndexSpec.model_validate(inner_spec), arrays, depth + 1)
        setattr(params, key, inner.params)
        held.append(inner)
    return SearchParams(params, held)


def _searched(m: ManagedIndex, name: str) -> Any:
    """The index an ``IDSelectorTranslated`` names: only the one the call is on (its id map
    is read under this call's lock; another index's would not be)."""
    if name != m.name:
        raise InvalidArgument(
            f"IDSelectorTranslated over index {name!r} cannot be used on {m.name!r}: "
            "a remote call translates through the id map of the index it runs on"
        )
    return m.index


#: SearchParameters fields that hold the parameters of a nested search.
NESTED_PARAMS = ("quantizer_params", "base_index_params")


# -- operations --------------------------------------------------------------------------------


@op("info")
def info(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    return lambda index: (m.info(), {})


#: Storage grows ahead by at most this many times the rows of the request asking, so a request
#: cannot make the server hold much more memory than it sends.
RESERVE_AHEAD = 16


def grow_storage(m: ManagedIndex, index: Any, rows: int, reserve: int) -> None:
    """Before adding ``rows`` vectors, make room for up to ``reserve`` in a flat code store.

    faiss appends by resizing a ``std::vector``, which reallocates whenever an add overflows
    its capacity. Resizing up once and back down keeps the capacity (a vector does not shrink),
    so the later parts of a call copy each vector once. ``m.storage_capacity`` remembers how far
    room was made; other structures grow as they always do.
    """
    flat = downcast(index)
    if not isinstance(flat, faiss.IndexFlatCodes) or not flat.codes.is_owned:
        return
    have = flat.ntotal * flat.code_size
    if have + rows * flat.code_size <= m.storage_capacity:
        return
    m.storage_capacity = have + min(reserve, RESERVE_AHEAD * rows) * flat.code_size
    flat.codes.resize(m.storage_capacity)
    flat.codes.resize(have)


@op("add")
def add(m: ManagedIndex, a: AddArgs, arrays: Arrays) -> Job:
    x = vectors(m, arrays)

    def job(index: Any) -> Result:
        if not index.is_trained:
            raise NotTrained(f"{m.spec.type} must be trained before add")
        m.check_lists_writable("add")
        if a.reserve > len(x):
            run_faiss(lambda: grow_storage(m, index, len(x), a.reserve), "add", m)
        run_faiss(lambda: index.add(x), "add", m)
        return _info(index), {}

    return job


@op("add_with_ids")
def add_with_ids(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    ids = id_array(arrays, "ids", len(x))

    def job(index: Any) -> Result:
        if not index.is_trained:
            raise NotTrained(f"{m.spec.type} must be trained before add_with_ids")
        m.check_lists_writable("add_with_ids")
        run_faiss(lambda: index.add_with_ids(x, ids), "add_with_ids", m)
        return _info(index), {}

    return job


@op("train")
def train(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    x = vectors(m, arrays)

    def job(index: Any) -> Result:
        run_faiss(lambda: index.train(x), "train", m)
        return _info(index), {}

    return job


@op("search")
def search(m: ManagedIndex, a: SearchArgs, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    k = _k(a.k, len(x))
    sp = search_params(m, a.params, arrays)

    def job(index: Any) -> Result:
        if a.stats:  # faiss.cvar.indexIVF_stats read on the client: this search's own counts
            from faissx_core.server.ivf_ops import ivf_search_counted

            counted = run_faiss(lambda: ivf_search_counted(index, x, k, sp.params), "search", m)
            if counted is not None:
                D, I, stats = counted
                return {"ivf_stats": stats}, {"D": D, "I": I}
        on = m.searcher(index) if sp.params is None else index  # --gpu: a GPU copy
        D, I = run_faiss(lambda: on.search(x, k, params=sp.params), "search", m)
        return {}, {"D": D, "I": I}

    return job


@op("assign")
def assign(m: ManagedIndex, a: SearchArgs, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    k = _k(a.k, len(x))
    return lambda index: ({}, {"I": run_faiss(lambda: m.searcher(index).assign(x, k), "assign", m)})


@op("range_search")
def range_search(m: ManagedIndex, a: RangeArgs, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    radius = _radius(m, a.radius)
    sp = search_params(m, a.params, arrays)

    def job(index: Any) -> Result:
        if index.ntotal == 0:  # faiss's HNSW aborts the process on this; the answer is empty
            lims = np.zeros(len(x) + 1, dtype=np.uint64)
            dist = np.empty(0, dtype=np.int32 if m.binary else np.float32)
            return {}, {"lims": lims, "D": dist, "I": np.empty(0, dtype=np.int64)}
        lims, D, I = bounded_range_search(m, index, x, radius, sp.params, a._reply_bytes)
        return {}, {"lims": lims, "D": D, "I": I}

    return job


def _radius(m: ManagedIndex, radius: float) -> float | int:
    """A range search's radius as faiss takes it: a float, or a C int for a Hamming radius."""
    if m.binary and radius != int(radius):
        raise WrongType(f"a Hamming radius is an integer, got {radius}")
    if m.binary and not -(1 << 31) <= radius < 1 << 31:
        # faiss takes it as a C int (its Python call raises TypeError past that)
        raise WrongType(f"a Hamming radius must fit a 32-bit int, got {int(radius)}")
    return int(radius) if m.binary else float(radius)


#: A range_search batch may overshoot the reply limit by at most this share of it.
RANGE_BATCH_SHARE = 8
#: Bytes of one range_search result on the wire: a distance (float32 or int32) and an id.
RANGE_RESULT_BYTES = 12


def bounded_range_search(
    m: ManagedIndex,
    index: Any,
    x: np.ndarray,
    radius: float,
    params: Any,
    cap: int,
    part: Callable[[int, int], Any] | None = None,
    what: str = "range_search",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faiss's range_search, in query batches, stopped with QuotaExceeded as soon as the
    results so far make a reply larger than ``cap`` bytes.

    A faiss ``RangeSearchResult`` cannot be capped while faiss fills it, so each batch is sized
    for its worst case (every stored vector within the radius of every query) to stay under
    ``cap / RANGE_BATCH_SHARE``: memory never goes much past the limit, whatever the radius.
    ``part(lo, hi)``, when given, is the search of queries ``lo:hi`` (a preassigned one).
    """
    nq = len(x)
    if part is None:

        def part(lo: int, hi: int) -> Any:
            return index.range_search(x[lo:hi], radius, params=params)

    if not cap or not nq:
        return run_faiss(partial(part, 0, nq), what, m)
    worst = max(int(index.ntotal), 1) * RANGE_RESULT_BYTES
    batch = max(1, min(nq, cap // (RANGE_BATCH_SHARE * worst)))
    lims_parts, dists, ids = [np.zeros(1, dtype=np.uint64)], [], []
    found = 0
    for start in range(0, nq, batch):
        end = min(nq, start + batch)
        lims, D, I = run_faiss(partial(part, start, end), what, m)
        lims_parts.append(lims[1:] + np.uint64(found))
        dists.append(D)
        ids.append(I)
        found += len(I)
        size = found * RANGE_RESULT_BYTES + (nq + 1) * 8
        if size > cap:
            raise QuotaExceeded(
                f"{what}: the results of the first {end:,} of {nq:,} "
                f"queries already exceed this server's message limit of {cap / (1 << 20):,.1f} "
                "MiB (--max-message-mb); use a smaller radius or fewer queries per call",
                limit=cap,
                queries_done=end,
            )
    return np.concatenate(lims_parts), np.concatenate(dists), np.concatenate(ids)


@op("search_and_reconstruct")
def search_and_reconstruct(m: ManagedIndex, a: SearchArgs, arrays: Arrays) -> Job:
    x = vectors(m, arrays)
    k = _k(a.k, len(x))
    sp = search_params(m, a.params, arrays)

    def job(index: Any) -> Result:
        if m.binary:
            return {}, binary_search_and_reconstruct(m, index, x, k, sp.params)
        D, I, R = run_faiss(
            lambda: index.search_and_reconstruct(x, k, params=sp.params),
            "search_and_reconstruct",
            m,
        )
        return {}, {"D": D, "I": I, "R": R}

    return job


def binary_search_and_reconstruct(
    m: ManagedIndex, index: Any, x: np.ndarray, k: int, params: Any
) -> Arrays:
    """faiss's C++ ``IndexBinary::search_and_reconstruct``, which its Python wrapper does not
    expose (a call to it fails with TypeError): called through SWIG pointers instead, so the
    result is faiss's own, a label of -1 reconstructed as all 0xff bytes."""
    n = len(x)
    D = np.empty((n, k), dtype=np.int32)
    I = np.empty((n, k), dtype=np.int64)
    R = np.empty((n, k, index.code_size), dtype=np.uint8)
    run_faiss(
        lambda: index.search_and_reconstruct(
            n, faiss.swig_ptr(x), k, faiss.swig_ptr(D), faiss.swig_ptr(I), faiss.swig_ptr(R), params
        ),
        "search_and_reconstruct",
        m,
    )
    return {"D": D, "I": I, "R": R}


@op("reconstruct")
def reconstruct(m: ManagedIndex, a: KeyArgs, arrays: Arrays) -> Job:
    def job(index: Any) -> Result:
        key = _key(m, index, a.key)
        return {}, {"x": run_faiss(lambda: index.reconstruct(key), "reconstruct", m)}

    return job


@op("reconstruct_n")
def reconstruct_n(m: ManagedIndex, a: RangeOfKeys, arrays: Arrays) -> Job:
    def job(index: Any) -> Result:
        if a.n0 + a.ni > index.ntotal:
            raise OutOfRange(f"range [{a.n0}, {a.n0 + a.ni}) exceeds ntotal={index.ntotal}")
        if hasattr(index, "id_map"):
            # faiss's IDMap reconstruct_n throws inside an OpenMP loop, which aborts the
            # process; reconstruct_batch reports a missing id as an ordinary error instead
            # (faiss's IndexBinaryIDMap2 has no reconstruct_batch)
            if not isinstance(index, faiss.IndexIDMap2):
                raise UnsupportedOperation(f"reconstruct_n is not supported by {m.spec.type}")
            keys = np.arange(a.n0, a.n0 + a.ni, dtype=np.int64)
            return {}, {"x": run_faiss(lambda: index.reconstruct_batch(keys), "reconstruct_n", m)}
        x = run_faiss(lambda: index.reconstruct_n(a.n0, a.ni), "reconstruct_n", m)
        return {}, {"x": x}

    return job


@op("reconstruct_batch")
def reconstruct_batch(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    ids = id_array(arrays, "ids")

    def job(index: Any) -> Result:
        if not _has_id_map(index) and ids.size and (ids.min() < 0 or ids.max() >= index.ntotal):
            raise OutOfRange(f"ids out of range [0, {index.ntotal})")
        if m.binary:  # faiss's IndexBinary has no reconstruct_batch: one key at a time
            out = np.empty((ids.size, index.code_size), dtype=np.uint8)
            for row, key in enumerate(ids.tolist()):
                out[row] = run_faiss(partial(index.reconstruct, key), "reconstruct_batch", m)
            return {}, {"x": out}
        return {}, {"x": run_faiss(lambda: index.reconstruct_batch(ids), "reconstruct_batch", m)}

    return job


@op("remove_ids")
def remove_ids(m: ManagedIndex, a: RemoveArgs, arrays: Arrays) -> Job:
    if a.selector is None:
        # faiss's own remove_ids picks the selector (IDSelectorArray for a hashtable
        # direct map, IDSelectorBatch otherwise)
        ids = id_array(arrays, "ids")
        held = ids, None
    else:
        held = build_selector(a.selector, arrays, id_map_of=partial(_searched, m))

    def job(index: Any) -> Result:
        # held = (selector, the id array it points into): both live as long as this closure
        removed = run_faiss(lambda: index.remove_ids(held[0]), "remove_ids", m)
        return {"removed": int(removed), **_info(index)}, {}

    return job


@op("reset")
def reset(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    def job(index: Any) -> Result:
        run_faiss(index.reset, "reset", m)
        return _info(index), {}

    return job


@op("get_parameter")
def get_parameter(m: ManagedIndex, a: ParamName, arrays: Arrays) -> Job:
    param = m.runtime_param(a.name)
    return lambda index: ({"value": param.read(index)}, {})


@op("set_parameter")
def set_parameter(m: ManagedIndex, a: ParamValue, arrays: Arrays) -> Job:
    param = m.runtime_param(a.name)
    value = param.coerce(a.value)

    def job(index: Any) -> Result:
        param.write(index, value)
        return {"value": param.read(index)}, {}

    return job


@op("serialize")
def serialize(m: ManagedIndex, a: Args, arrays: Arrays) -> Job:
    """The index as ``faiss.serialize_index`` bytes: what pickling and ``write_index`` carry."""
    writer = faiss.serialize_index_binary if m.binary else faiss.serialize_index
    return lambda index: ({}, {"data": run_faiss(lambda: writer(index), "serialize", m)})


@op("export")
def export(m: ManagedIndex, a: ExportArgs, arrays: Arrays) -> Job:
    """Stored ids (and, with ``vectors``, their reconstructed vectors) in stored order, entries
    ``start`` to ``start + count``: what merging and splitting need from an index faiss cannot
    merge or split by itself. ``ntotal`` in the result is the whole count, for paging."""

    def job(index: Any) -> Result:
        ids, x = run_faiss(lambda: export_vectors(index, a.vectors, a.start, a.count), "export", m)
        result = {"ntotal": int(index.ntotal), "keeps_ids": keeps_ids(index)}
        return result, ({"ids": ids, "x": x} if x is not None else {"ids": ids})

    return job


@op("set_direct_map_type")
def set_direct_map_type(m: ManagedIndex, a: DirectMapArgs, arrays: Arrays) -> Job:
    """IVF only: keep an id -> list position map so ``reconstruct`` works."""

    def job(index: Any) -> Result:
        if not hasattr(index, "set_direct_map_type"):
            raise UnsupportedOperation(f"{m.spec.type} has no direct map (it is not an IVF)")
        run_faiss(lambda: index.set_direct_map_type(a.type), "set_direct_map_type", m)
        return _info(index), {}

    return job


@op("replace_vt")
def replace_vt(m: ManagedIndex, a: TransformArgs, arrays: Arrays) -> Job:
    """``IndexIVFSpectralHash.replace_vt``: the index gets a new vector transform, built here
    from its spec (a component, or a local transform as faiss's bytes), which it then owns.

    A named index keeps only transforms faiss can read back: its snapshot holds the transform,
    and faiss cannot read some back before they are trained (an ``ITQTransform``), which would
    leave a snapshot that does not load. Unnamed indices are never written, so they take any.
    """
    registry = m.registry
    assert registry is not None
    if registry.index_type(a.transform.type).kind != "component":
        raise InvalidArgument(f"replace_vt takes a vector transform, not {a.transform.type}")

    def job(index: Any) -> Result:
        if not isinstance(index, faiss.IndexIVFSpectralHash):
            raise UnsupportedOperation(f"{m.spec.type} has no replace_vt (not spectral hashing)")
        hashing: Any = index  # faiss's stubs lack nbit and replace_vt's ``own``
        built = registry.build(a.transform)  # no resolver: a ref is refused
        if not isinstance(built, faiss.VectorTransform):
            raise InvalidArgument(f"replace_vt takes a vector transform, not {a.transform.type}")
        vt: Any = built  # faiss's stubs lack ``this``
        if (vt.d_in, vt.d_out) != (hashing.d, hashing.nbit):
            raise InvalidArgument(
                f"the transform maps {vt.d_in} -> {vt.d_out} dimensions; this index needs "
                f"{hashing.d} -> {hashing.nbit}"
            )
        if m.session is None:
            attrs.check_transform_readable(vt)
        vt.this.disown()  # the index owns (and frees) it from now on
        run_faiss(lambda: hashing.replace_vt(vt, True), "replace_vt", m)
        return _info(index), {}

    return job


# -- structural attributes as remote views (faissx_core/attrs.py says what a path may name) ----


@op("get_attr")
def get_attr(m: ManagedIndex, a: AttrPath, arrays: Arrays) -> Job:
    """The value at a dotted path from the index: a scalar, an array, or an object to view."""
    attrs.check_path(a.path)
    return lambda index: run_faiss(lambda: attrs.describe(attrs.walk(index, a.path)), "get_attr", m)


@op("call_attr")
def call_attr(m: ManagedIndex, a: AttrCall, arrays: Arrays) -> Job:
    """A read-only method (attrs.READ_METHODS) of the object at a path."""
    attrs.check_path(a.path)
    if a.method not in attrs.READ_METHODS and a.method not in attrs.DC_METHODS:
        raise InvalidArgument(f"{a.method!r} is not a read-only method a view may call")
    x = arrays.get("x")
    if a.wrap is not None:  # a wrapper over the IVF's own lists, built for this one call
        from faissx_core.server.ivf_ops import wrapper_read

        return wrapper_read(m, a)

    def job(index: Any) -> Result:
        obj = attrs.walk(index, a.path)
        if a.method in attrs.DC_METHODS:  # args: [1] for get_FlatCodesDistanceComputer
            flat = bool(a.args and a.args[0])
            return run_faiss(
                lambda: (
                    {"kind": "array"},
                    {
                        "value": attrs.distance_computer_call(
                            obj, a.method, flat, x, arrays.get("ids")
                        )
                    },
                ),
                "distance computer",
                m,
            )
        # sa_decode's x is codes; a transform's x is checked against its own d_in / d_out
        if x is not None and a.method != "sa_decode" and a.method not in attrs.TRANSFORM_METHODS:
            width = obj.d
            vectors(_Shape(obj, width), {"x": x})  # type: ignore[arg-type]
        return run_faiss(lambda: attrs.call(obj, a.method, list(a.args), x), "call_attr", m)

    return job


class _Shape:
    """What :func:`vectors` needs to check ``x`` against a nested object (not the index)."""

    def __init__(self, obj: Any, width: int) -> None:
        self.binary = isinstance(obj, faiss.IndexBinary)
        self.row_width = int(width) // 8 if self.binary else int(width)
        self.spec = IndexSpec(type=type(obj).__name__)
        self.index = obj


@op("set_attr")
def set_attr(m: ManagedIndex, a: AttrValue, arrays: Arrays) -> Job:
    """Set a tuning knob (attrs.WRITABLE) at a path; logged like every write."""
    *parents, leaf = attrs.check_path(a.path) or [""]
    if leaf not in attrs.WRITABLE and leaf not in attrs.FLAGS:
        raise UnsupportedOperation(
            f"{leaf!r} cannot be set on a remote index (it is not a "
            "tuning knob; sizes and pointers stay the server's)"
        )
    setter = attrs.set_flag if leaf in attrs.FLAGS else attrs.set_member

    def job(index: Any) -> Result:
        obj = attrs.walk(index, ".".join(parents))
        run_faiss(lambda: setter(obj, leaf, a.value), "set_attr", m)
        return attrs.describe(attrs.walk(index, a.path))

    return job


@op("pack_attr")
def pack_attr(m: ManagedIndex, a: AttrPath, arrays: Arrays) -> Job:
    """The object at a path as (kind, fields, data): what ``assign_attr`` on another index
    takes (``index.pq = other.pq`` in remote mode)."""
    attrs.check_path(a.path)

    def job(index: Any) -> Result:
        kind, fields, data = run_faiss(lambda: attrs.pack(attrs.walk(index, a.path)), "pack", m)
        if data is not None and data.nbytes > attrs.MAX_BYTES:
            raise InvalidArgument(f"{a.path!r} is {data.nbytes} bytes, over {attrs.MAX_BYTES}")
        return {"kind": kind, "fields": fields}, ({"data": data} if data is not None else {})

    return job


@op("assign_attr")
def assign_attr(m: ManagedIndex, a: AttrAssign, arrays: Arrays) -> Job:
    """Replace a structural member (attrs.assign checks it fits); logged like every write,
    with the value's bytes, so a replay applies the same value."""
    *parents, leaf = attrs.check_path(a.path) or [""]
    if not leaf:
        raise InvalidArgument("assign_attr needs a member path")
    data = arrays.get("data")

    def job(index: Any) -> Result:
        obj = attrs.walk(index, ".".join(parents))
        kept = index.__dict__.setdefault("_faissx_kept", {})  # what pointer members point to
        keep = partial(kept.__setitem__, a.path)
        run_faiss(lambda: attrs.assign(obj, leaf, a.kind, a.fields, data, keep), "assign", m)
        return _info(index), {}

    return job
