"""Structural attributes of a faiss index as remote views: the contract and the server's walk.

faiss users read an index's structure (``index.nlist``, ``index.pq.centroids``,
``index.invlists.list_size(l)``, ``index.hnsw.levels``, ``index.quantizer.ntotal``) and set
some of its knobs (``index.cp.min_points_per_centroid``, ``index.use_heap``). A remote proxy
serves these through three index ops -- ``get_attr``, ``call_attr`` and ``set_attr`` -- that
take a dotted *path* from the index. This module fixes what a path may name and walks it on
the server's faiss object; the client imports only the constants.

What may be reached, and why it is safe:

- A step reads a C++ data member only: SWIG exposes those as ``property`` objects on the
  class, so a name that is not one (a method, ``this``, anything private) is refused. Two
  special steps exist: ``@ivf`` (``faiss.extract_index_ivf``) and ``#i`` (element ``i`` of a
  vector of objects, such as an ``IndexPreTransform``'s ``chain``).
- A method is called only if it is in :data:`READ_METHODS`: read-only by faiss's contract,
  with integer arguments (and, for searches, the request's ``x``).
- A write sets a scalar member named in :data:`WRITABLE`: tuning and training knobs that
  faiss reads at call time. Sizes, counts and pointers (``d``, ``ntotal``, ``code_size``,
  ``nlist``, ``own_fields``) are never written: a wrong value corrupts memory.
- Arrays come back through ``faiss.vector_to_array`` and are bounded by :data:`MAX_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from faissx_core import readers
from faissx_core.errors import (
    InvalidArgument,
    NotTrained,
    OutOfRange,
    UnknownParameter,
    UnsupportedOperation,
    WrongType,
)

#: Largest array one view read returns (a whole flat index's codes fit; a runaway read not).
MAX_BYTES = 256 << 20
#: Most results (queries x k) one search through a view returns, as for a plain search.
MAX_RESULTS = 1 << 25
#: Deepest path (``index.index.quantizer.invlists`` is 4).
MAX_DEPTH = 8
_STEP = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_]{0,63}|@ivf|#\d{1,9})$")

#: Read-only methods a view may call: name -> number of integer arguments (None: the call
#: takes the request's ``x`` and an integer ``k``, as a search does).
READ_METHODS: dict[str, int | None] = {
    "list_size": 1,
    "real_list_size": 1,  # a CappedInvertedLists' uncapped size
    "get_ids": 1,
    "get_codes": 1,
    "sa_code_size": 0,
    "imbalance_factor": 0,
    "reconstruct": 1,
    "reconstruct_n": 2,
    "search": None,
    "assign": None,
    "size": 0,
    "get_list_size": 1,
    "compute_codes": None,
    "search_and_return_codes": None,
    "sa_encode": None,
    "nb_neighbors": 1,
    # recompute / drop a flat index's cached norms: no result changes, nothing to log
    "sync_l2norms": 0,
    "clear_l2norms": 0,
    "sa_decode": None,
    "check_ids_sorted": 0,
    "check_consistency": 0,
    # a vector transform's map of the request's ``x`` (index.chain.at(i).apply_py(x))
    "apply": None,
    "apply_py": None,
    "reverse_transform": None,
}
#: Methods of a VectorTransform that map ``x`` (its input width) to rows of its output width.
TRANSFORM_METHODS = frozenset({"apply", "apply_py", "reverse_transform"})

#: Scalar members a remote client may set: knobs faiss reads when it trains, adds or searches.
WRITABLE = frozenset(
    {
        # IVF and its quantizer / training
        "nprobe",
        "max_codes",
        "parallel_mode",
        "use_heap",
        "quantizer_trains_alone",
        "clustering_index_none",
        "verbose",
        "niter",
        "nredo",
        "seed",
        "spherical",
        "int_centroids",
        "update_index",
        "frozen_centroids",
        "min_points_per_centroid",
        "max_points_per_centroid",
        "decode_block_size",
        "check_input_data_for_NaNs",
        "use_faster_subsampling",
        "per_invlist_search",
        "threshold_type",
        "period",
        # HNSW / NSG / NNDescent
        "efSearch",
        "efConstruction",
        "check_relative_distance",
        "search_bounded_queue",
        "search_L",
        "build_type",
        "nndescent_S",
        "nndescent_R",
        "nndescent_L",
        "nndescent_iter",
        "S",
        "R",
        "L",
        "iter",  # an NNDescent's build parameters
        "by_residual",
        "n_iter",
        "n_redo",
        "max_memory",  # IVF encoding choice, polysemous training
        # PQ, polysemous, fast-scan, refine, additive quantizers
        "polysemous_ht",
        "search_type",
        "do_polysemous_training",
        "scan_table_threshold",
        "k_factor",
        "implem",
        "qbs",
        "skip",
        "max_beam_size",
        "use_beam_LUT",
        "encode_ils_iters",
        "train_iters",
        "lsq_lambda",
        "norm_max",
        "norm_min",
        "train_type",
        # faiss branches on it at search time; only known metrics are accepted (set_member)
        "metric_type",
    }
)
#: faiss's metrics by value: what ``metric_type`` may be set to.
METRICS = frozenset(
    getattr(faiss, n)
    for n in dir(faiss)
    if n.startswith("METRIC_") and isinstance(getattr(faiss, n), int)
)

SCALAR = (bool, int, float, str)


def check_path(path: str) -> list[str]:
    """The steps of ``path``, or InvalidArgument (empty means the index itself)."""
    steps = path.split(".") if path else []
    if len(steps) > MAX_DEPTH or not all(_STEP.match(s) for s in steps):
        raise InvalidArgument(
            f"{path!r} is not an attribute path (names, @ivf, #i; at most {MAX_DEPTH} steps)"
        )
    return steps


def downcast_any(obj: Any) -> Any:
    """The most derived class of a SWIG object faiss hands out as a base pointer."""
    downcasts: tuple[tuple[type, Callable[[Any], Any] | None], ...] = (
        (faiss.Index, faiss.downcast_index),
        (faiss.IndexBinary, faiss.downcast_IndexBinary),
        (faiss.InvertedLists, faiss.downcast_InvertedLists),
        (faiss.VectorTransform, faiss.downcast_VectorTransform),
        (faiss.Quantizer, getattr(faiss, "downcast_Quantizer", None)),
        (faiss.AdditiveQuantizer, getattr(faiss, "downcast_AdditiveQuantizer", None)),
    )
    for base, down in downcasts:
        if isinstance(obj, base):
            return down(obj) if down is not None else obj
    return obj


def _member(obj: Any, name: str) -> Any:
    if name == "@ivf":
        try:
            return faiss.extract_index_ivf(obj)
        except (RuntimeError, TypeError):
            raise UnsupportedOperation(
                f"{type(obj).__name__} is not an IVF index and holds none"
            ) from None
    if name.startswith("#"):
        size = obj.size() if hasattr(obj, "size") and hasattr(obj, "at") else None
        if size is None:
            raise InvalidArgument(f"{type(obj).__name__} is not a vector of objects")
        i = int(name[1:])
        if i >= size:
            raise OutOfRange(f"element {i} of a vector of {size}")
        return obj.at(i)
    if not isinstance(getattr(type(obj), name, None), property) or name in ("this", "thisown"):
        raise UnknownParameter(f"{type(obj).__name__} has no data member {name!r}")
    return getattr(obj, name)


def walk(root: Any, path: str) -> Any:
    """The object at ``path`` from ``root`` (the server's index), downcast at every step."""
    obj = downcast_any(root)
    for step in check_path(path):
        if obj is None:
            raise InvalidArgument(f"{path!r} passes through a null pointer")
        obj = downcast_any(_member(obj, step))
    return obj


def as_vector(obj: Any) -> np.ndarray | None:
    """A SWIG std::vector of numbers as a numpy copy; None for anything else."""
    name = type(obj).__name__
    if not (name.endswith("Vector") or name.startswith("MaybeOwnedVector")):
        return None
    try:
        size = obj.size()
    except (AttributeError, TypeError):
        return None
    if size > MAX_BYTES:  # at least a byte each: too big whatever the type
        raise InvalidArgument(f"{name} of {size} elements exceeds the {MAX_BYTES} byte limit")
    try:
        arr = faiss.vector_to_array(obj)
    except (TypeError, AttributeError, KeyError):
        return None
    if arr.nbytes > MAX_BYTES:
        raise InvalidArgument(f"{name} of {arr.nbytes} bytes exceeds the {MAX_BYTES} limit")
    return arr


def describe(obj: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What the client needs to stand in for ``obj``: a value, an array or an object view."""
    if obj is None:
        return {"kind": "none"}, {}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, SCALAR):
        return {"kind": "scalar", "value": obj}, {}
    if isinstance(obj, np.ndarray):
        return {"kind": "array"}, {"value": obj}
    arr = as_vector(obj)
    if arr is not None:
        return {"kind": "vector", "class": type(obj).__name__}, {"value": arr}
    if callable(obj):
        raise InvalidArgument("a method is not an attribute value")
    out: dict[str, Any] = {"kind": "object", "class": type(obj).__name__}
    if isinstance(obj, faiss.Index | faiss.IndexBinary):
        out.update(
            kind="index",
            d=int(obj.d),
            ntotal=int(obj.ntotal),
            is_trained=bool(obj.is_trained),
            metric_type=int(obj.metric_type),  # type: ignore[union-attr]  # faiss's stubs lack it
            binary=isinstance(obj, faiss.IndexBinary),
        )
    elif hasattr(obj, "size") and hasattr(obj, "at"):
        out.update(kind="list", size=int(obj.size()))
    return out, {}


def call(
    obj: Any, method: str, args: list[int], x: np.ndarray | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A read-only method of the object at a path, its result described."""
    if method not in READ_METHODS:
        raise InvalidArgument(f"{method!r} is not a read-only method a view may call")
    want = READ_METHODS[method]
    fn = getattr(obj, method, None)
    if fn is None or not callable(fn):
        raise InvalidArgument(f"{type(obj).__name__} has no method {method!r}")
    if want is None:
        if x is None or len(args) > (2 if method == "search_and_return_codes" else 1):
            raise InvalidArgument(f"{method} takes the array x (and k)")
        if args and not (1 <= args[0] <= 1 << 20 and len(x) * args[0] <= MAX_RESULTS):
            raise InvalidArgument(f"k={args[0]} for {len(x)} queries is out of bounds")
        if method in TRANSFORM_METHODS:
            return {"kind": "array"}, {"value": _transform(obj, method, fn, x)}
        if method == "sa_decode":  # x is codes here, not vectors
            size = int(obj.sa_code_size())
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != size:
                raise InvalidArgument(f"sa_decode takes uint8 codes of shape (n, {size})")
            return {"kind": "array"}, {"value": fn(x)}
        if method == "sa_encode":
            return {"kind": "array"}, {"value": fn(x)}
        if method == "compute_codes":
            return {"kind": "array"}, {
                "value": obj.sa_encode(x) if hasattr(obj, "sa_encode") else fn(x)
            }
        if method == "assign":
            return {"kind": "array"}, {"value": fn(x, *args)}
        if method == "search_and_return_codes":
            listnos = bool(args[1:] and args[1])
            out = fn(x, args[0], include_listnos=listnos)
        else:
            out = fn(x, *args)  # search: (D, I)
        return {"kind": "tuple", "n": len(out)}, {str(i): a for i, a in enumerate(out)}
    if len(args) != want:
        raise InvalidArgument(f"{method} takes {want} integer argument(s)")
    if method in ("list_size", "get_ids", "get_codes", "get_list_size", "real_list_size"):
        nlist = int(obj.nlist)
        if not 0 <= args[0] < nlist:
            raise OutOfRange(f"list {args[0]} out of range [0, {nlist})")
    if isinstance(obj, faiss.Index | faiss.IndexBinary) and method.startswith("reconstruct"):
        hi = args[0] + (args[1] if method == "reconstruct_n" else 1)
        if not 0 <= args[0] <= hi <= obj.ntotal:
            raise OutOfRange(f"keys [{args[0]}, {hi}) out of range [0, {obj.ntotal})")
    if method in ("get_ids", "get_codes"):
        n = int(obj.list_size(args[0]))
        if method == "get_ids":
            ptr = obj.get_ids(args[0])
            out = faiss.rev_swig_ptr(ptr, n).copy() if n else np.empty(0, np.int64)
            obj.release_ids(args[0], ptr)
        else:
            ptr = obj.get_codes(args[0])
            size = n * int(obj.code_size)
            out = faiss.rev_swig_ptr(ptr, size).copy() if size else np.empty(0, np.uint8)
            obj.release_codes(args[0], ptr)
        return {"kind": "array"}, {"value": out}
    return describe(fn(*args))


def _transform(obj: Any, method: str, fn: Callable[..., Any], x: np.ndarray) -> np.ndarray:
    """A vector transform applied to ``x`` (or reversed), checked as faiss asserts it: the
    right width, a trained transform, a result within :data:`MAX_BYTES`."""
    if not isinstance(obj, faiss.VectorTransform):
        raise InvalidArgument(f"{method} is a method of vector transforms")
    d_in, d_out = int(obj.d_in), int(obj.d_out)
    if method == "reverse_transform":
        d_in, d_out = d_out, d_in
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != d_in:
        raise InvalidArgument(f"{method} takes float32 rows of width {d_in}, got {x.shape}")
    if len(x) * d_out * 4 > MAX_BYTES:
        raise InvalidArgument(f"{method} of {len(x)} rows exceeds the {MAX_BYTES} byte limit")
    if not obj.is_trained:
        raise NotTrained(f"{type(obj).__name__} must be trained before {method}")
    return np.ascontiguousarray(fn(x), dtype=np.float32)


def check_transform_readable(vt: Any) -> None:
    """InvalidArgument unless faiss reads ``vt`` back from its own serialization (an untrained
    ``ITQTransform`` it cannot): a durable index's snapshot must load again."""
    writer = faiss.VectorIOWriter()
    faiss.write_VectorTransform(vt, writer)  # type: ignore[arg-type]  # faiss's stubs lack the IOWriter overload
    reader = faiss.VectorIOReader()
    reader.data.swap(writer.data)
    try:
        faiss.read_VectorTransform(reader)  # type: ignore[arg-type]  # faiss's stubs lack the IOReader overload
    except RuntimeError as exc:
        raise InvalidArgument(
            f"a named index cannot take this {type(vt).__name__} yet: faiss could not read it "
            f"back from the index's snapshot ({str(exc).splitlines()[0]}); train it first, or "
            "use an unnamed index"
        ) from None


def set_member(obj: Any, name: str, value: Any) -> None:
    """Set a knob in :data:`WRITABLE` on the object at a path, with faiss's own type."""
    if name not in WRITABLE:
        raise UnsupportedOperation(
            f"{name!r} cannot be set on a remote index (it is not a "
            "tuning knob; sizes and pointers stay the server's)"
        )
    current = _member(obj, name)
    if name == "metric_type" and value not in METRICS:
        raise InvalidArgument(f"metric_type must be a faiss.METRIC_* value, got {value!r}")
    if isinstance(current, str) and len(current) <= 1 and isinstance(value, bool | int):
        value = int(value)  # a C++ char flag (quantizer_trains_alone): SWIG takes 0..255
        if not 0 <= value <= 255:
            raise InvalidArgument(f"{name} is a char flag, not {value!r}")
        try:
            setattr(obj, name, value)
        except TypeError:
            setattr(obj, name, chr(value))
        return
    if not isinstance(current, SCALAR) or isinstance(value, str) != isinstance(current, str):
        raise InvalidArgument(f"{name} is a {type(current).__name__}, not {value!r}")
    if isinstance(current, bool) or (isinstance(current, int) and not isinstance(current, bool)):
        if isinstance(value, float) and value != int(value):
            raise InvalidArgument(f"{name} is an integer, got {value!r}")
        value = type(current)(value)
    elif isinstance(current, float):
        value = float(value)
    setattr(obj, name, value)


#: Distance-computer calls (``index.get_distance_computer()`` on the client): ``distances``
#: of the query ``x`` to stored ids, ``symmetric_dis`` between stored pairs.
DC_METHODS = frozenset({"distances", "symmetric_dis"})
#: Most distances one call computes.
MAX_DC_IDS = 1 << 20


def distance_computer_call(
    obj: Any, method: str, flat: bool, x: np.ndarray | None, ids: np.ndarray | None
) -> np.ndarray:
    """faiss's distance computer of the index at a path, used once: the ids are checked
    against ``ntotal`` first (a distance computer reads out of bounds otherwise)."""
    if not isinstance(obj, faiss.Index):
        raise InvalidArgument("a distance computer belongs to a float index")
    if flat and not isinstance(obj, faiss.IndexFlatCodes):
        raise UnsupportedOperation(f"{type(obj).__name__} is not an IndexFlatCodes")
    if ids is None or ids.dtype != np.int64 or ids.ndim != 1 or ids.size > MAX_DC_IDS:
        raise InvalidArgument("a distance computer call needs a 1-d int64 array 'ids'")
    if ids.size and (ids.min() < 0 or ids.max() >= obj.ntotal):
        raise OutOfRange(f"ids out of range [0, {obj.ntotal})")
    # faiss's stubs lack these DistanceComputer methods (symmetric_dis, set_query, __call__)
    dc: Any = obj.get_FlatCodesDistanceComputer() if flat else obj.get_distance_computer()  # type: ignore[attr-defined]  # faiss's stubs lack it
    if method == "symmetric_dis":
        if ids.size % 2:
            raise InvalidArgument("symmetric_dis takes pairs of ids")
        pairs = ids.reshape(-1, 2)
        return np.array([dc.symmetric_dis(int(i), int(j)) for i, j in pairs], dtype="float32")
    if x is None or x.dtype != np.float32 or x.shape != (1, obj.d):
        raise InvalidArgument(f"the query must be one float32 vector of d={obj.d}")
    query = np.ascontiguousarray(x[0])
    dc.set_query(faiss.swig_ptr(query))
    return np.array([dc(int(i)) for i in ids], dtype="float32")


# -- structure a client may assign: index.pq = other.pq, index.quantizer = q, ... -------------
#
# faiss lets Python code replace parts of an index wholesale. Remotely the new value travels as
# data (faiss's own serialization, a numeric array, or a plain struct's scalars), so the write
# log holds exactly what was applied and replays it. Every assignment is checked first against
# what the index already holds: a part whose sizes differ from the codes it must read would make
# faiss read out of bounds, on a server other tenants share.

#: Flags faiss lets users write; the server checks the value against the object's state.
FLAGS = frozenset({"is_trained", "use_precomputed_table"})
#: Members that may be replaced by a whole object of the same kind.
OBJECT_MEMBERS = frozenset(
    {"pq", "refine_pq", "sq", "quantizer", "polysemous_training", "cp", "pq_cp"}
)
#: Numeric vectors that may be overwritten (``faiss.copy_array_to_vector``), at the size
#: faiss expects of them.
VECTOR_MEMBERS = frozenset({"centroids", "trained"})
#: Methods that rebuild a cache from the index's state: writes, run under the write lock.
WRITE_METHODS = frozenset({"precompute_table"})
#: Plain structs of scalars that travel as their fields.
STRUCTS = frozenset({"PolysemousTraining", "ClusteringParameters"})
#: Index classes whose ``is_trained = True`` the server can check is true of their state
#: (an untrained codebook, transform or scalar range would be read out of bounds).
_CHECKABLE_TRAINING: tuple[str, ...] = (
    "IndexFlat",
    "IndexBinaryFlat",
    "IndexPQ",
    "IndexScalarQuantizer",
    "IndexIVFFlat",
    "IndexIVFPQ",
    "IndexIVFScalarQuantizer",
    "IndexBinaryIVF",
    "Index2Layer",
    "MultiIndexQuantizer",
    "IndexIDMap",
    "IndexIDMap2",
)


def scalar_fields(obj: Any) -> dict[str, Any]:
    """The scalar data members of a SWIG struct (what a plain struct is made of)."""
    out = {}
    for name in dir(type(obj)):
        if name in ("this", "thisown") or not isinstance(getattr(type(obj), name), property):
            continue
        value = getattr(obj, name)
        if isinstance(value, SCALAR):
            out[name] = value
    return out


def pack(obj: Any) -> tuple[str, dict[str, Any], np.ndarray | None]:
    """``obj`` as (kind, fields, bytes or array) for :func:`assign` on another index.

    Indices travel as ``faiss.serialize_index``; a product or scalar quantizer inside a bare
    ``IndexPQ`` / ``IndexScalarQuantizer`` carrier (faiss serializes no quantizer alone);
    plain structs as their scalar fields; numeric vectors as arrays.
    """
    obj = downcast_any(obj)
    if isinstance(obj, faiss.IndexBinary):
        return "index_binary", {}, faiss.serialize_index_binary(obj)
    if isinstance(obj, faiss.Index):
        return "index", {}, faiss.serialize_index(obj)
    if isinstance(obj, faiss.ProductQuantizer):
        pq_carrier = faiss.IndexPQ(obj.d, obj.M, obj.nbits)
        pq_carrier.pq = obj
        pq_carrier.is_trained = True
        return "ProductQuantizer", {}, faiss.serialize_index(pq_carrier)
    if isinstance(obj, faiss.ScalarQuantizer):
        sq_carrier = faiss.IndexScalarQuantizer(obj.d, obj.qtype)
        sq_carrier.sq = obj
        return "ScalarQuantizer", {}, faiss.serialize_index(sq_carrier)
    if type(obj).__name__ in STRUCTS:
        return type(obj).__name__, scalar_fields(obj), None
    arr = as_vector(obj)
    if arr is not None:
        return "vector", {}, arr
    raise InvalidArgument(f"a {type(obj).__name__} cannot be assigned to a remote index")


def _sq_trained_size(sq: Any) -> int:
    """How many trained values faiss's scalar quantizer of this type reads."""
    probe = faiss.ScalarQuantizer(int(sq.d), int(sq.qtype))
    probe.rangestat = sq.rangestat
    probe.train(np.zeros((2, int(sq.d)), dtype="float32"))
    return int(probe.trained.size())


def untrained_reason(obj: Any) -> str | None:
    """Why ``obj.is_trained = True`` would be false of its state, or None when it is true."""
    obj = downcast_any(obj)
    name = type(obj).__name__
    if not any(isinstance(obj, getattr(faiss, c)) for c in _CHECKABLE_TRAINING):
        return (
            f"FAISSx cannot check that a {name}'s trained state is complete, so it only "
            "becomes trained by train()"
        )
    if isinstance(obj, faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = downcast_any(obj.index)
        return None if inner.is_trained else f"its inner {type(inner).__name__} is not trained"
    nlist = getattr(obj, "nlist", None)
    quantizer = getattr(obj, "quantizer", None)
    if isinstance(nlist, int) and quantizer is not None and quantizer.ntotal > nlist:
        # the quantizer's ids are list numbers: one past nlist would write past the lists
        return f"its quantizer holds {quantizer.ntotal} centroids for {nlist} lists"
    sq = getattr(obj, "sq", None)
    if isinstance(sq, faiss.ScalarQuantizer):
        need, have = _sq_trained_size(sq), int(sq.trained.size())
        if need != have:
            return f"its scalar quantizer holds {have} trained values where it reads {need}"
    return None


def set_flag(obj: Any, leaf: str, value: Any) -> None:
    """``is_trained`` / ``use_precomputed_table``, as faiss lets users write them, checked."""
    flag = value
    if leaf == "is_trained":
        if not isinstance(flag, bool):  # faiss's setter takes a bool only (TypeError)
            raise WrongType(f"is_trained is a bool, not {value!r}")
        if flag:
            reason = untrained_reason(obj)
            if reason is not None:
                raise UnsupportedOperation(f"is_trained cannot be set on a remote index: {reason}")
        obj.is_trained = bool(flag)
        return
    if not isinstance(obj, faiss.IndexIVFPQ):
        raise UnknownParameter(f"{type(obj).__name__} has no data member {leaf!r}")
    if isinstance(flag, bool) or flag not in (-1, 0, 1, 2):
        raise InvalidArgument(f"use_precomputed_table is -1, 0, 1 or 2, not {value!r}")
    if flag == 2 and not isinstance(downcast_any(obj.quantizer), faiss.MultiIndexQuantizer):
        raise InvalidArgument("use_precomputed_table=2 needs a MultiIndexQuantizer quantizer")
    if flag > 0:
        _check_table_source(obj)
    obj.use_precomputed_table = flag
    if flag > 0:  # faiss reads the table at search time: it must be there, at its size
        obj.precompute_table()


def _check_table_source(obj: Any) -> None:
    """A precomputed table reads ``nlist`` centroids from the quantizer: it must hold them."""
    if not obj.is_trained or obj.quantizer.ntotal < obj.nlist:
        raise NotTrained(
            f"a precomputed table needs the {obj.nlist} trained centroids of the quantizer "
            f"(it holds {obj.quantizer.ntotal})"
        )


def call_write(obj: Any, method: str) -> None:
    """A method of :data:`WRITE_METHODS` (it rebuilds a cache the index reads)."""
    if method not in WRITE_METHODS or not isinstance(obj, faiss.IndexIVFPQ):
        raise InvalidArgument(f"{type(obj).__name__} has no method {method!r} a client may call")
    _check_table_source(obj)
    getattr(obj, method)()


def assign(
    parent: Any, leaf: str, kind: str, fields: dict[str, Any], data: np.ndarray | None, keep: Any
) -> None:
    """``parent.<leaf> = <value packed by pack()>``, checked against what ``parent`` holds.

    ``keep(obj)`` keeps a new object alive as long as the index (a pointer member such as an
    ``IndexIVFPQ``'s ``polysemous_training`` does not own what it points to).
    """
    if leaf in WRITE_METHODS and kind == "call":
        call_write(parent, leaf)
        return
    if leaf not in OBJECT_MEMBERS | VECTOR_MEMBERS:
        raise UnsupportedOperation(
            f"{leaf!r} cannot be assigned on a remote index (assignable: "
            f"{', '.join(sorted(OBJECT_MEMBERS | VECTOR_MEMBERS))})"
        )
    current = _member(parent, leaf)  # None for a null pointer (polysemous_training)
    if kind == "vector":
        _assign_vector(parent, leaf, current, data)
    elif kind in STRUCTS:
        _assign_struct(parent, leaf, current, kind, fields, keep)
    elif kind in ("ProductQuantizer", "ScalarQuantizer"):
        _assign_quantizer(parent, leaf, current, kind, data)
    elif kind in ("index", "index_binary"):
        _assign_index(parent, leaf, current, kind, data)
    else:
        raise InvalidArgument(f"{kind!r} is not a kind of value to assign")


def _bytes(data: np.ndarray | None) -> np.ndarray:
    if data is None or data.dtype != np.uint8 or data.ndim != 1:
        raise InvalidArgument("an object assignment carries faiss bytes as a 1-d uint8 'data'")
    return data


def _deserialize(data: np.ndarray | None, binary: bool) -> Any:
    """The index in ``data``, downcast, owning its memory (a downcast wrapper does not: the
    one that owns is released here, and ownership moves to the one returned)."""
    try:
        raw: Any = readers.read_index(_bytes(data), binary=binary)
    except RuntimeError as exc:
        raise InvalidArgument(f"the assigned value's bytes are not a faiss index: {exc}") from None
    obj = downcast_any(raw)
    if obj is not raw:
        raw.this.disown()
        obj.this.acquire()
    return obj


def _assign_vector(parent: Any, leaf: str, current: Any, data: np.ndarray | None) -> None:
    if isinstance(parent, faiss.ProductQuantizer) and leaf == "centroids":
        need = int(parent.d) * int(parent.ksub)
    elif isinstance(parent, faiss.ScalarQuantizer) and leaf == "trained":
        need = _sq_trained_size(parent)
    else:
        raise UnsupportedOperation(
            f"{type(parent).__name__}.{leaf} cannot be overwritten on a remote index "
            "(ProductQuantizer.centroids and ScalarQuantizer.trained can)"
        )
    dtype = faiss.vector_to_array(current).dtype
    if data is None or data.ndim != 1 or data.dtype.kind != dtype.kind:
        raise InvalidArgument(f"{leaf} takes a 1-d {dtype} array")
    if data.size != need:
        raise InvalidArgument(
            f"{type(parent).__name__}.{leaf} holds {need} values here, not {data.size}"
        )
    faiss.copy_array_to_vector(np.ascontiguousarray(data, dtype=dtype), current)
    if isinstance(parent, faiss.ProductQuantizer) and parent.transposed_centroids.size():
        parent.sync_transposed_centroids()  # the cache fast paths read


def _assign_struct(
    parent: Any, leaf: str, current: Any, kind: str, fields: dict[str, Any], keep: Any
) -> None:
    if current is not None and type(current).__name__ != kind:
        raise InvalidArgument(f"{leaf} is a {type(current).__name__}, not a {kind}")
    new = getattr(faiss, kind)()
    for name, value in fields.items():
        _set_scalar(new, name, value)
    setattr(parent, leaf, new)  # a value member copies it; a pointer member points to it
    keep(new)


def _assign_quantizer(
    parent: Any, leaf: str, current: Any, kind: str, data: np.ndarray | None
) -> None:
    if type(current).__name__ != kind:
        raise InvalidArgument(f"{leaf} is a {type(current).__name__}, not a {kind}")
    carrier = _deserialize(data, binary=False)
    new = carrier.pq if kind == "ProductQuantizer" else carrier.sq
    shape = ("d", "M", "nbits") if kind == "ProductQuantizer" else ("d", "qtype", "code_size")
    for key in shape:
        if getattr(new, key) != getattr(current, key):
            raise InvalidArgument(
                f"the assigned {kind} has {key}={getattr(new, key)}, the index's has "
                f"{getattr(current, key)}: its codes would not fit"
            )
    if kind == "ScalarQuantizer" and new.trained.size() != _sq_trained_size(new):
        raise InvalidArgument("the assigned ScalarQuantizer's trained values are incomplete")
    setattr(parent, leaf, new)  # SWIG copies the struct into the index


def _assign_index(parent: Any, leaf: str, current: Any, kind: str, data: np.ndarray | None) -> None:
    level1 = faiss.Level1Quantizer  # type: ignore[attr-defined]  # faiss's stubs lack it
    if leaf != "quantizer" or not isinstance(parent, level1 | faiss.IndexBinaryIVF):
        raise UnsupportedOperation(
            f"an index can replace an IVF's quantizer on a remote index, not {leaf!r} of "
            f"a {type(parent).__name__}"
        )
    new = _deserialize(data, binary=kind == "index_binary")
    if isinstance(new, faiss.IndexBinary) != isinstance(current, faiss.IndexBinary):
        raise InvalidArgument("the new quantizer's vectors are not of the index's kind")
    if new.d != current.d:
        raise InvalidArgument(f"the new quantizer has d={new.d}, the index's has d={current.d}")
    if new.ntotal > parent.nlist:  # its ids are list numbers: more would index past nlist
        raise InvalidArgument(
            f"the new quantizer holds {new.ntotal} centroids for {parent.nlist} lists"
        )
    owned = bool(parent.own_fields)
    parent.quantizer = new
    new.this.disown()  # the index owns it from now on and frees it
    parent.own_fields = True
    if owned:
        current.this.acquire()  # the replaced one is freed with its last reference


def _set_scalar(obj: Any, name: str, value: Any) -> None:
    """Set one scalar data member with faiss's own type (a struct's field)."""
    if not isinstance(getattr(type(obj), name, None), property) or name in ("this", "thisown"):
        raise UnknownParameter(f"{type(obj).__name__} has no data member {name!r}")
    current = getattr(obj, name)
    if not isinstance(current, SCALAR) or isinstance(value, str) != isinstance(current, str):
        raise InvalidArgument(f"{name} is a {type(current).__name__}, not {value!r}")
    if isinstance(current, bool | int) and isinstance(value, float) and value != int(value):
        raise InvalidArgument(f"{name} is an integer, got {value!r}")
    setattr(obj, name, type(current)(value))


#: The scalars that fix how codes are laid out and read: a copy differing in one of them is
#: broken, not just reset (faiss does not write training knobs such as
#: ``do_polysemous_training``, and reads them back at their defaults, as it does locally).
_SHAPE_KEYS = frozenset(
    {"d", "code_size", "M", "nbits", "ksub", "dsub", "nlist", "qtype", "ntotal", "metric_type"}
)
#: Struct members compared by :func:`structure_loss` (the parts codes are read with).
_STRUCT_MEMBERS = ("pq", "refine_pq", "sq", "quantizer", "refine_index", "base_index", "index")


def structure_loss(original: Any, copy: Any) -> str | None:
    """What a faiss serialization round trip broke, or None: the class, and the layout
    scalars of the index and of its quantizers / nested indices, compared. faiss writes some
    untrained indices incompletely (an untrained ``IndexIVFPQR`` comes back with an empty
    ``refine_pq``, whose training then divides by zero and kills the process), so a copy is
    checked, not trusted."""
    a, b = downcast_any(original), downcast_any(copy)
    # a freshly built object has its own class; faiss's downcast may stop at a base
    # (IndexFlat1D reads as IndexFlatL2, and faiss writes it as one)
    made = type(original) if type(original) not in (faiss.Index, faiss.IndexBinary) else type(a)
    if not issubclass(type(b), type(a)) or not issubclass(type(b), made):
        # a subclass is faiss's equivalent (IndexRefine over a flat index reads back as
        # IndexRefineFlat); a base is not (IndexFlat1D would search as IndexFlatL2)
        return f"it came back as a {type(b).__name__}"
    pairs = [("", a, b)]
    for name in _STRUCT_MEMBERS:
        if isinstance(getattr(type(a), name, None), property):
            pairs.append((name, getattr(a, name), getattr(b, name)))
    for name, x, y in pairs:
        if x is None or y is None:
            if (x is None) != (y is None):
                return f"{name or 'the index'} came back {'empty' if y is None else 'set'}"
            continue
        fx, fy = _shape_fields(downcast_any(x)), _shape_fields(downcast_any(y))
        for key in fx:
            if fx[key] != fy.get(key):
                where = f"{name}.{key}" if name else key
                return f"{where} came back {fy.get(key)!r}, was {fx[key]!r}"
    return None


def _shape_fields(obj: Any) -> dict[str, Any]:
    """The :data:`_SHAPE_KEYS` ``obj`` has. Only those are read: reading a member of a type
    SWIG does not wrap (faiss 1.15's ``std::optional<bool> use_visited_hashset`` on HNSW
    indices) makes a copy Python cannot free, and SWIG says so on stderr each time."""
    members = type(obj)
    return {
        key: getattr(obj, key)
        for key in _SHAPE_KEYS
        if isinstance(getattr(members, key, None), property)
    }


def round_trip_loss(index: Any) -> str | None:
    """What faiss's own serialization of ``index`` breaks (see :func:`structure_loss`); None
    also where faiss refuses to read it back: a restart then quarantines it, visibly."""
    try:
        copy = readers.copy_through_bytes(index)
    except RuntimeError:
        return None
    return structure_loss(index, copy)


def check_storable(index: Any) -> None:
    """Refuse to keep ``index`` named (on disk) if its snapshot would come back broken after a
    restart (:func:`round_trip_loss`): a write acknowledged on it could not be replayed."""
    loss = round_trip_loss(index)
    if loss is not None:
        raise UnsupportedOperation(
            f"a named {type(index).__name__} cannot be stored before it is trained: faiss's "
            f"snapshot of it would be incomplete ({loss}); create it unnamed, or train a copy first"
        )
