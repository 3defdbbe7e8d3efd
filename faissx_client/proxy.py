"""Remote indices: objects that look like faiss indices and run every call on the server.

A proxy's server-side index is created on first use, not in the constructor: an index that is
only ever described (an IVF's quantizer, say) never becomes a server object of its own. A proxy
built with ``name=`` is created at once (by its class) and is durable; an unnamed one belongs
to this client's session and is dropped when the proxy is garbage-collected or the client goes
away.
"""

from __future__ import annotations

import itertools
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import faiss
import numpy as np

from faissx_client import optimization as _opt
from faissx_client import views
from faissx_client.cache import vector_cache
from faissx_client.selection import RemoteSelector, describe_selector, resolve
from faissx_core.errors import (
    FaissError,
    FaissxWarning,
    InvalidArgument,
    ServerUnavailable,
    UnsupportedOperation,
    WrongType,
)
from faissx_core.finite import all_finite, first_bad_row
from faissx_core.specs import IMPORTED, REF_TYPE, IndexSpec, IndexType, encode_serialized

if TYPE_CHECKING:
    from faissx_client.client import Client

_anon = itertools.count(1)

#: Ownership flags of faiss's C++ parts: the server decides who frees what (see __setattr__).
SERVER_OWNED = frozenset({"own_invlists"})

#: Attributes every proxy answers from the server; faiss lets you read, not meaningfully set them.
READ_ONLY = frozenset({"d", "ntotal", "name", "spec"})
#: faiss classes whose ``add`` faiss refuses (ids are the caller's: ``add_with_ids``).
_ID_MAPS = frozenset({"IndexIDMap", "IndexIDMap2", "IndexBinaryIDMap", "IndexBinaryIDMap2"})


class RemoteIndex:
    """Base of every proxy class; ``itype`` is set on the generated per-type subclasses."""

    itype: ClassVar[IndexType | None] = None

    def __init__(
        self,
        client: Client,
        spec: IndexSpec,
        name: str | None = None,
        info: dict[str, Any] | None = None,
        placement: dict[str, int] | None = None,
    ) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_named", name is not None)
        anon = f"anon-{client.transport.session[:12]}-{next(_anon)}"
        object.__setattr__(self, "_name", name or anon)
        object.__setattr__(self, "_info", info)
        #: ``shards``/``replicas`` asked for at construction (``--backend ray``).
        object.__setattr__(self, "_placement", placement or {})
        object.__setattr__(self, "_create_lock", threading.Lock())
        #: Client-side parameters (batch_size): they shape this proxy's calls.
        object.__setattr__(self, "_values", {})
        #: Set by the constructor that took this (still unbuilt) proxy as a part:
        #: (weak reference to that index, the member path it is there, e.g. "quantizer").
        object.__setattr__(self, "_bound", None)
        #: Re-describes this index's constructor arguments when it is created (parts).
        object.__setattr__(self, "_rebuild", None)
        #: (proxy, path) when this proxy is an index *inside* another remote index, as
        #: ``faiss.downcast_index(index.quantizer)`` hands out (see :func:`member_proxy`).
        object.__setattr__(self, "_member", None)
        #: Indices this one's parts are members of, kept alive until it is created.
        object.__setattr__(self, "_sources", [])

    # -- lifecycle ---------------------------------------------------------------------------
    def _create(
        self,
        op: str = "create",
        data: np.ndarray | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create the server-side index (``import`` uploads ``data`` instead of building;
        ``clone`` copies the index named in ``extra``)."""
        with self._create_lock:  # threads sharing a fresh proxy create it once
            if self._info is not None:
                return self._info
            if self._member is not None:  # a member exists inside its index
                return self._fetch()
            client = self._client
            _opt.memory_manager.check_create(0 if data is None else int(data.nbytes), client)
            args: dict[str, Any] = {
                "ephemeral": not self._named,
                **self._placement,
                **(extra or {}),
            }
            source = self._source_member() if op == "create" else None
            if source is not None:  # a part handed to a constructor: a copy of that member
                op = "clone"
                args.update(source=source[0], path=source[1])
            elif op == "create" and self._rebuild is not None:  # parts may exist since
                object.__setattr__(self, "_spec", self._rebuild())
            # an upload's spec is the server's to infer; a clone's is its source's
            if self._spec.type != IMPORTED.name and op != "clone":
                args["spec"] = self._spec.model_dump()
            if op == "import" and data is not None:  # in parts when over one message
                info = client.upload(self._name, data, args["ephemeral"], args.get("spec"))
            else:
                info, _ = client.call(
                    op, self._name, args, {"data": data} if data is not None else None
                )
            for line in info.pop("warnings", None) or ():  # the server's hints, e.g. volatile
                warnings.warn(line, FaissxWarning, stacklevel=_caller_level())
            object.__setattr__(self, "_spec", IndexSpec.model_validate(info["spec"]))
            object.__setattr__(self, "_info", info)
            object.__setattr__(self, "_sources", [])  # copied: they may go now
            if not self._named:
                client.adopt_anonymous(self._name)
                weakref.finalize(self, client.forget_anonymous, self._name)
            return info

    def _source_member(self) -> tuple[str, str] | None:
        """(server-side index, member path) that this proxy stands for, or None.

        In faiss, an index handed to a constructor (``IndexIVFFlat(quantizer, ...)``) *is*
        the new index's member: training the IVF trains it, and the same object can be handed
        to the next constructor. A proxy that was only described when it was handed over is
        bound to that member; once the owner exists on the server, using the proxy (or
        handing it to another constructor) copies the member as it is then, state included.
        """
        if self._info is not None:
            return (self._name, "")
        if self._bound is None:
            return None
        owner_ref, path = self._bound
        owner = owner_ref()
        source = owner._source_member() if owner is not None else None
        if source is None:
            return None
        return source[0], views.join(source[1], path)

    def _owners(self) -> list[RemoteIndex]:
        """The live indices this unbuilt proxy is a member of, innermost first."""
        owners: list[RemoteIndex] = []
        bound = self._bound if self._info is None else None
        while bound is not None:
            owner = bound[0]()
            if owner is None:
                break
            owners.append(owner)
            bound = owner._bound if owner._info is None else None
        return owners

    def _call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, Any], dict]:
        if self._member is not None:
            return self._member_call(op, args or {}, arrays)
        if self._info is None:
            self._create()
        return self._client.call(op, self._name, args, arrays)

    def _member_call(
        self, op: str, args: dict[str, Any], arrays: dict[str, np.ndarray] | None
    ) -> tuple[dict[str, Any], dict]:
        """An operation on an index inside another one, as that index's path operations:
        reads, searches and knob writes reach the member itself; adding, training and
        removing go through the index that holds it (faiss's own wrappers keep the two in
        step: an IVF's lists and its quantizer's centroids)."""
        owner, prefix = self._member
        if op in ("get_attr", "call_attr", "set_attr", "assign_attr", "pack_attr"):
            path = views.join(prefix, args.get("path", ""))
            return owner._call(op, {**args, "path": path}, arrays)
        if op == "info":
            result, _ = owner._call("get_attr", {"path": prefix})
            return member_info(self._name, result), {}
        if op == "serialize":
            return {}, {"data": owner._call("pack_attr", {"path": prefix})[1]["data"]}
        calls = {"search": "D I", "assign": "I", "reconstruct": "x", "reconstruct_n": "x"}
        if op in calls and "params" not in args:
            ints = [args[k] for k in ("k", "key", "n0", "ni") if k in args]
            result, out = owner._call(
                "call_attr", {"path": prefix, "method": op, "args": ints}, arrays
            )
            names = calls[op].split()
            values = [out[str(i)] for i in range(len(names))] if len(names) > 1 else [out["value"]]
            if op == "reconstruct":
                values = [values[0].reshape(-1)]
            return {}, dict(zip(names, values, strict=True))
        raise UnsupportedOperation(
            f"{op} on {type(self).__name__} at {prefix!r} inside a remote index: a member "
            "index answers reads, searches and tuning knobs here; change its contents "
            "through the index that holds it"
        )

    @property
    def name(self) -> str:
        """The server-side name (generated for unnamed indices)."""
        return self._name

    @property
    def index_id(self) -> str:
        """The original FAISSx's name for :attr:`name`. The original created an index on
        construction, so its code hands this id to ``FaissXClient`` methods straight away: the
        server-side index is created here if it does not exist yet."""
        if self._info is None:
            self._create()
        return self._name

    @property
    def spec(self) -> IndexSpec:
        return self._spec

    # -- attributes --------------------------------------------------------------------------
    def _fetch(self) -> dict[str, Any]:
        info, _ = self._call("info")
        object.__setattr__(self, "_info", info)
        return info

    @property
    def d(self) -> int:
        return int((self._info or self._fetch())["d"])

    @property
    def metric_type(self) -> int:
        return int((self._info or self._fetch())["metric_type"])

    @property
    def ntotal(self) -> int:
        return int(self._fetch()["ntotal"])

    @property
    def is_trained(self) -> bool:
        return bool(self._fetch()["is_trained"])

    def _runtime_params(self) -> dict[str, str]:
        """Runtime parameter name -> attribute path, as the server found them on the index."""
        return (self._info or self._create()).get("runtime_params", {})

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr in _opt.CLIENT_PARAMS:
            return self.get_parameter(attr)
        params = self._runtime_params()
        if attr in params:
            return self.get_parameter(attr)
        if any(path.startswith(f"{attr}.") for path in params.values()):
            return ParamNamespace(self, attr)  # index.hnsw.efSearch, as in faiss
        if attr in views.READ_METHODS:  # index.check_ids_sorted(), index.sa_code_size()
            return views.RemoteView(self, "", {}).__getattr__(attr)
        return views.fetch(self, attr)  # structure: index.nlist, index.pq, index.invlists

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in SERVER_OWNED:
            # faiss users clear these before handing lists or parts to a second owner; on
            # the server every part has one owner already (invlists.py), so there is nothing
            # to change: the value read back is the server's own
            if not isinstance(value, bool | int | np.bool_):
                raise InvalidArgument(f"{attr} is a flag, not {value!r}")
            return
        if attr in READ_ONLY:
            raise AttributeError(f"{attr!r} of a remote index is read-only")
        if attr in self._runtime_params() or attr in _opt.CLIENT_PARAMS:
            self.set_parameter(attr, value)
            return
        if attr in views.WRITABLE or attr in views.ASSIGNABLE:
            views.set_value(self, attr, attr, value)
            if attr == "metric_type":
                self._fetch()  # the cached info holds it
            return
        raise AttributeError(
            f"{type(self).__name__!r} remote index: {attr!r} cannot be set (not a runtime "
            "parameter or tuning knob)"
        )

    def set_parameter(self, name: str, value: Any) -> None:
        """Set a runtime parameter (``nprobe``, ``efSearch``, ...) on the server, which
        validates it, or the client-side ``batch_size``."""
        if name in _opt.CLIENT_PARAMS:
            self._values[name] = _opt.CLIENT_PARAMS[name].coerce(value)
            return
        if name in _opt.TRAINING_PARAMS and name not in self._runtime_params():
            _opt.set_training_param(self, name, value)  # the original's n_iter: cp.niter
            return
        if name not in self._runtime_params():
            raise _opt.unknown(self, name, self._runtime_params())
        self._call("set_parameter", {"name": name, "value": value})

    def set_nprobe(self, nprobe: int) -> None:
        """The original FAISSx's spelling of ``set_parameter("nprobe", nprobe)``."""
        self.set_parameter("nprobe", nprobe)

    def get_parameter(self, name: str) -> Any:
        if name in _opt.CLIENT_PARAMS:
            return self._values.get(name, _opt.get_default(name))
        if name in _opt.TRAINING_PARAMS and name not in self._runtime_params():
            return _opt.get_training_param(self, name)
        if name not in self._runtime_params():
            raise _opt.unknown(self, name, self._runtime_params())
        return self._call("get_parameter", {"name": name})[0]["value"]

    # -- client-side behaviour: chunked calls, vector cache ------------------------------------
    def _cache_key(self) -> tuple[str, str]:
        return (self._client.transport.session, self._name)

    def _mutated(self) -> None:
        """This client changed the index: its cached vectors are no longer true."""
        vector_cache.invalidate(self._cache_key())

    def _rows(self, x: np.ndarray, progress: bool | None, k: int | None = None) -> tuple[int, bool]:
        """(rows per request, show a progress bar) for a call on the rows of ``x``."""
        show = _opt.progress_wanted(progress)
        if len(x) == 1:  # one row is one request whatever the part sizes: nothing to plan
            return 1, show
        row_bytes = x.itemsize * x.shape[1]
        transport = self._client.transport
        rows = _opt.chunk_rows(
            len(x),
            row_bytes,
            _opt.batch_size_of(self._values),
            remote=True,
            progress=show,
            k=k,
            part_bytes=_opt.pipeline_part(transport.max_frame),
        )
        # no part over the server's message limit or its --max-request-vectors, whatever
        # batch_size asks for
        fits = max(1, self._client.part_bytes() // max(1, row_bytes))
        return min(rows, fits, transport.max_rows or rows), show

    def _add_rows(
        self, op: str, x: np.ndarray, ids: np.ndarray | None, progress: bool | None
    ) -> None:
        """``add`` / ``add_with_ids`` in parts of ``batch_size`` rows (automatic: parts of 4 to
        16 MiB above 8 MiB), after the memory check and, when split, the check for NaN and
        infinity the server would make part by part. The parts are pipelined and applied in
        order; a failure part-way leaves the earlier parts added and the later ones not."""
        if self._info is None:
            self._create()
        rows, show = self._rows(x, progress)
        _opt.memory_manager.check_add(self, len(x), chunked=rows < len(x))
        if rows < len(x) and x.dtype.kind == "f" and not all_finite(x):
            # the server would refuse the part that holds it, after the earlier ones were
            # added: refused here, the call changes nothing
            raise InvalidArgument(
                f"x contains NaN or infinity (row {first_bad_row(x):,}); nothing was sent"
            )
        try:
            if rows >= len(x) and not show:
                arrays = {"x": x} if ids is None else {"x": x, "ids": ids}
                if self._member is None and self._client.transport.defers(op):
                    # the write window (faissx_client/window.py): returns once sent
                    self._refuse_before_deferring(op, x)
                    self._client.transport.write(op, self._name, arrays)
                else:
                    self._call(op, arrays=arrays)
            else:
                # each add part says how many rows it and the rest bring: storage grows ahead
                try:
                    self._pipelined(
                        op,
                        None,
                        x,
                        rows,
                        show,
                        lambda lo, hi: {} if ids is None else {"ids": ids[lo:hi]},
                        args_of=(lambda lo: {"reserve": len(x) - lo}) if op == "add" else None,
                    )
                except ServerUnavailable as exc:
                    raise self._interrupted(op, exc, len(x), rows) from None
        finally:
            self._mutated()

    def _interrupted(self, op: str, exc: ServerUnavailable, n: int, rows: int) -> ServerUnavailable:
        """A pipelined add cut short by a lost server: say what was acknowledged, and so
        what ``ntotal`` was, rather than only that the connection failed."""
        parts = int(exc.details.get("parts") or -(-n // rows))
        acked = list(exc.details.get("acknowledged") or [])
        done = sum(min(n, (i + 1) * rows) - i * rows for i in acked)
        last = exc.details.get("last_result") or {}
        ntotal = last.get("ntotal")
        where = (
            f"ntotal was {ntotal:,} after the last acknowledged part"
            if ntotal is not None
            else "nothing was acknowledged, so ntotal is what it was before the call"
        )
        return ServerUnavailable(
            f"{op} of {n:,} rows to {self._name!r} was interrupted: the server acknowledged "
            f"{len(acked)} of {parts} parts ({done:,} rows), and {where}; the other "
            f"{n - done:,} rows are not confirmed (a part in flight may still have been "
            f"applied: read index.ntotal once the server is back, then add what is missing). "
            f"Cause: {exc}",
            **exc.details,
            rows_acknowledged=done,
            ntotal=ntotal,
        )

    def _pipelined(
        self,
        op: str,
        args: dict[str, Any] | None,
        x: np.ndarray,
        rows: int,
        show: bool,
        extra: Callable[[int, int], dict[str, np.ndarray]],
        args_of: Callable[[int], dict[str, Any]] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """``op`` on the rows of ``x`` in parts of ``rows``, several in flight; the parts'
        result arrays in order. ``args_of(lo)``, when given, are the args of the part at row
        ``lo`` (else ``args``)."""
        if self._member is not None:
            return [self._member_call(op, args or {}, {"x": x, **extra(0, len(x))})[1]]
        bounds = [(lo, min(len(x), lo + rows)) for lo in range(0, len(x), rows)]
        parts = [
            (args_of(lo) if args_of is not None else args, {"x": x[lo:hi], **extra(lo, hi)})
            for lo, hi in bounds
        ]
        with _opt.progress_bar(len(x), op, show) as advance:
            replies = self._client.pipeline(
                op,
                self._name,
                parts,
                _opt.PIPELINE_WINDOW,
                done=lambda i: advance(bounds[i][1] - bounds[i][0]),
            )
        for result, _ in replies:
            if "ivf_stats" in result:  # a search's parts, counted as faiss counts one search
                self._client.ivf_stats.add(result["ivf_stats"])
        return [out for _, out in replies]

    # -- faiss methods -----------------------------------------------------------------------
    def _binary(self) -> bool:
        itype = type(self).itype
        if itype is not None and itype.vector_kind == "binary":
            return True
        return self._info is not None and self._info.get("vector_kind") == "binary"

    def _vectors(self, x: Any) -> np.ndarray:
        # faiss converts float input to float32, but takes binary codes only as uint8
        if self._binary() and (not isinstance(x, np.ndarray) or x.dtype != np.uint8):
            raise WrongType(
                "binary codes must be an ndarray of dtype uint8, got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        x = np.asarray(x, dtype="uint8" if self._binary() else "float32")
        if x.ndim != 2:
            raise InvalidArgument(f"expected a 2-d array of vectors, got shape {x.shape}")
        return np.ascontiguousarray(x)

    def _refuse_before_deferring(self, op: str, x: np.ndarray) -> None:
        """Refuse here what the server would refuse for reasons known here: ``x`` itself, and
        what cannot change about the index (its class and ``d``). A deferred write's error
        surfaces only at a later call (docs/client.md, "Write window"); these are the common
        mistakes, which faiss raises at the add itself, so they are raised at the add too."""
        info = self._info
        assert info is not None  # _add_rows created the index first
        d = int(info["d"])
        width = d // 8 if self._binary() else d
        if x.shape[1] != width:
            raise InvalidArgument(
                f"x has shape {tuple(x.shape)}; {info['type']} (d={d}) expects (n, {width}); "
                "nothing was sent"
            )
        if op == "add" and info.get("faiss_class") in _ID_MAPS:
            raise FaissError(
                f"add on {info['type']}: add does not make sense with IndexIDMap, use "
                "add_with_ids; nothing was sent"
            )
        if not self._binary() and not all_finite(x):
            raise InvalidArgument(
                f"x contains NaN or infinity (row {first_bad_row(x):,}); nothing was sent"
            )

    def add(self, x: Any, *, progress: bool | None = None) -> None:
        self._add_rows("add", self._vectors(x), None, progress)

    def add_with_ids(self, x: Any, ids: Any, *, progress: bool | None = None) -> None:
        x, ids = self._vectors(x), _ids(ids)
        if len(ids) != len(x):
            raise InvalidArgument(f"ids has {len(ids)} ids for {len(x)} vectors")
        self._add_rows("add_with_ids", x, ids, progress)

    def train(self, x: Any, *, progress: bool | None = None) -> None:
        """faiss's train, on the server in one request; ``progress=True`` shows a spinner with
        the time elapsed meanwhile (faiss reports no share done)."""
        x = self._vectors(x)
        try:
            with _opt.progress_spinner(
                f"train {type(self).__name__} on {len(x):,} vectors", _opt.progress_wanted(progress)
            ):
                self._call("train", arrays={"x": x})
        finally:
            self._mutated()

    def search(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
        progress: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's search; queries go in pipelined parts of ``batch_size`` rows (automatic:
        parts of 4 to 16 MiB above 8 MiB of queries, at most 4M results each), with a progress
        bar when asked."""
        x = self._vectors(x)
        args, arrays = self._with_params({"k": _positive_k(k)}, {"x": x}, params)
        rows, show = self._rows(x, progress, k=args["k"])
        if self._client.ivf_stats.wanted:  # faiss.cvar.indexIVF_stats was read (ivf_stats.py)
            args["stats"] = True
        if rows >= len(x) and not show:
            result, out = self._call("search", args, arrays)
            if "ivf_stats" in result:
                self._client.ivf_stats.add(result["ivf_stats"])
            return _into(D, out["D"]), _into(I, out["I"])
        if self._info is None:
            self._create()
        shared = {name: a for name, a in arrays.items() if name != "x"}  # a selector's ids
        parts = self._pipelined("search", args, x, rows, show, lambda lo, hi: shared)
        Dall, Iall = _opt.stack_results([(out["D"], out["I"]) for out in parts])
        return _into(D, Dall), _into(I, Iall)

    def assign(self, x: Any, k: int, labels: np.ndarray | None = None) -> np.ndarray:
        _, out = self._call("assign", {"k": _positive_k(k)}, {"x": self._vectors(x)})
        return _into(labels, out["I"])

    def range_search(
        self, x: Any, thresh: float, *, params: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        radius = thresh if isinstance(thresh, int) else float(thresh)  # binary wants an int
        args, arrays = self._with_params({"radius": radius}, {"x": self._vectors(x)}, params)
        _, out = self._call("range_search", args, arrays)
        return out["lims"], out["D"], out["I"]

    def search_and_reconstruct(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
        R: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._binary():  # faiss's binary wrapper lacks it: its call fails with TypeError
            raise TypeError(f"{type(self).__name__} does not support search_and_reconstruct")
        args, arrays = self._with_params({"k": _positive_k(k)}, {"x": self._vectors(x)}, params)
        _, out = self._call("search_and_reconstruct", args, arrays)
        return _into(D, out["D"]), _into(I, out["I"]), _into(R, out["R"])

    def reconstruct(self, key: int, x: np.ndarray | None = None) -> np.ndarray:
        """faiss's reconstruct; answered from the vector cache when it holds ``key``."""
        cache, ids = self._cache_key(), np.array([int(key)], dtype=np.int64)
        hit = vector_cache.get_many(cache, ids)[0]
        if hit is not None:
            return _into(x, hit.copy())
        generation = vector_cache.generation(cache)
        vector = self._call("reconstruct", {"key": int(key)})[1]["x"]
        vector_cache.put_many(cache, ids, vector[None], generation)
        return _into(x, vector)

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: np.ndarray | None = None) -> np.ndarray:
        if ni == -1:
            ni = self.ntotal - n0
        return _into(x, self._call("reconstruct_n", {"n0": int(n0), "ni": int(ni)})[1]["x"])

    def reconstruct_batch(self, key: Any, x: np.ndarray | None = None) -> np.ndarray:
        if self._binary():  # as on faiss's IndexBinary, which has no such method
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute 'reconstruct_batch'"
            )
        ids, cache = _ids(key), self._cache_key()
        if vector_cache.capacity <= 0:
            return _into(x, self._call("reconstruct_batch", arrays={"ids": ids})[1]["x"])
        cached = vector_cache.get_many(cache, ids)
        missing = np.array(
            [i for i, v in zip(ids.tolist(), cached, strict=True) if v is None], dtype=np.int64
        )
        if len(missing) == len(ids):  # nothing cached (or the cache is off): one plain call
            generation = vector_cache.generation(cache)
            out = self._call("reconstruct_batch", arrays={"ids": ids})[1]["x"]
            vector_cache.put_many(cache, ids, out, generation)
            return _into(x, out)
        found: dict[int, np.ndarray] = {}
        if len(missing):
            unique = np.unique(missing)
            generation = vector_cache.generation(cache)
            fetched = self._call("reconstruct_batch", arrays={"ids": unique})[1]["x"]
            vector_cache.put_many(cache, unique, fetched, generation)
            found = dict(zip(unique.tolist(), fetched, strict=True))
        rows = [found[i] if v is None else v for i, v in zip(ids.tolist(), cached, strict=True)]
        return _into(x, np.stack(rows).astype(rows[0].dtype, copy=True))

    def remove_ids(self, x: Any) -> int:
        """Remove by id array or ``IDSelectorRange``/``Batch``/``Array``; returns the count."""
        try:
            if isinstance(x, RemoteSelector | faiss.IDSelector):
                selector, arrays = describe(x)
                arrays = resolve(arrays, self._stored_ids)
                return int(self._call("remove_ids", {"selector": selector}, arrays)[0]["removed"])
            return int(self._call("remove_ids", arrays={"ids": _ids(x)})[0]["removed"])
        finally:
            self._mutated()

    def _with_params(
        self, args: dict[str, Any], arrays: dict[str, np.ndarray], params: Any
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A call's args and arrays with its ``params`` described (callback selectors
        evaluated over this index's ids)."""
        args, arrays = _with_params(args, arrays, params)
        return args, resolve(arrays, self._stored_ids)

    def _stored_ids(self) -> np.ndarray:
        """Every id the index stores (``export`` without vectors, in pages)."""
        ids, start, total = [], 0, None
        while total is None or start < total:
            result, out = self._call("export", {"vectors": False, "start": start, "count": 1 << 20})
            total = int(result["ntotal"])
            ids.append(out["ids"])
            start += 1 << 20
        return np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)

    def reset(self) -> None:
        try:
            self._call("reset")
        finally:
            self._mutated()

    def get_distance_computer(self) -> views.RemoteDistanceComputer:
        """faiss's distance computer of this index, run on the server (views.py)."""
        if self._binary():
            raise AttributeError(f"{type(self).__name__!r} has no distance computer")
        return views.RemoteDistanceComputer(self, "", flat=False)

    def get_FlatCodesDistanceComputer(self) -> views.RemoteDistanceComputer:
        if not issubclass(views.class_of(self) or object, faiss.IndexFlatCodes):
            raise AttributeError(f"{type(self).__name__!r} is not an IndexFlatCodes")
        return views.RemoteDistanceComputer(self, "", flat=True)

    def precompute_table(self) -> None:
        """``IndexIVFPQ.precompute_table()``: rebuilt on the server (a logged write)."""
        views.assign_value(self, "precompute_table", "call", {}, None)

    def set_direct_map_type(self, map_type: int) -> None:
        """IVF: ``faiss.DirectMap.Array`` or ``Hashtable`` makes ``reconstruct`` possible."""
        self._call("set_direct_map_type", {"type": int(map_type)})

    def make_direct_map(self, new_maintain_direct_map: bool = True) -> None:
        direct_map = faiss.DirectMap  # type: ignore[attr-defined]  # faiss's stubs lack it
        self.set_direct_map_type(direct_map.Array if new_maintain_direct_map else direct_map.NoMap)

    # -- inverted-list surgery (IVF indices; docs/client.md "IVF inverted lists") --------------
    def copy_subset_to(self, other: RemoteIndex, subset_type: int, a1: int, a2: int) -> None:
        """faiss's ``IndexIVF.copy_subset_to``: copy the entries of this index that the subset
        selects into ``other`` (another remote IVF of the same kind), on the server. This index
        is only read; ``other`` is written, and with a data directory durably."""
        if not isinstance(other, RemoteIndex) or other._client is not self._client:
            raise InvalidArgument("copy_subset_to needs another remote index on the same server")
        if self._info is None:
            self._create()
        args = {"source": self.name, "subset_type": int(subset_type), "a1": int(a1), "a2": int(a2)}
        try:
            info, _ = other._call("copy_subset_to", args)
        finally:
            other._mutated()
        object.__setattr__(other, "_info", info)

    def search_preassigned(
        self,
        x: Any,
        k: int,
        Iq: Any,
        Dq: Any,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's ``IndexIVF.search_preassigned``: search the lists ``Iq`` (``Dq``: their
        coarse distances, or None) instead of asking the quantizer; ``Iq`` has ``nprobe``
        columns, as in faiss."""
        args, arrays = self._preassigned(x, Iq, Dq, params, {"k": _positive_k(k)})
        _, out = self._call("search_preassigned", args, arrays)
        return _into(D, out["D"]), _into(I, out["I"])

    def range_search_preassigned(
        self, x: Any, thresh: float, Iq: Any, Dq: Any, *, params: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """faiss's ``IndexIVF.range_search_preassigned``: ``(lims, D, I)`` as range_search."""
        radius = int(thresh) if self._binary() else float(thresh)
        args, arrays = self._preassigned(x, Iq, Dq, params, {"radius": radius})
        _, out = self._call("range_search_preassigned", args, arrays)
        return out["lims"], out["D"], out["I"]

    def _preassigned(
        self, x: Any, Iq: Any, Dq: Any, params: Any, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if params is not None:  # as faiss's own wrapper, which asserts it
            raise InvalidArgument("search_preassigned takes no params (faiss supports none)")
        x = self._vectors(x)
        assign = np.ascontiguousarray(Iq, dtype="int64")
        if assign.ndim != 2 or len(assign) != len(x):
            raise InvalidArgument(f"Iq must have shape ({len(x)}, nprobe), got {assign.shape}")
        arrays = {"x": x, "assign": assign}
        if Dq is not None:
            dis = np.ascontiguousarray(Dq, dtype="int32" if self._binary() else "float32")
            if dis.shape != assign.shape:
                raise InvalidArgument(f"Dq must have the shape of Iq {assign.shape}")
            arrays["centroid_dis"] = dis
        return args, arrays

    def replace_invlists(self, il: Any, own: bool = False) -> None:
        """faiss's ``IndexIVF.replace_invlists``: serve through a wrapper over this index's own
        lists (``CappedInvertedLists(index.invlists, n)``, ``StopWordsInvertedLists``), built
        on the server, or through ``index.invlists`` again. ``own`` is accepted as faiss's
        signature has it; the server owns every list (invlists.py)."""
        from faissx_client import invlists

        try:
            invlists.replace(self, il)
        finally:
            self._mutated()

    def update_vectors(self, keys: Any, x: Any) -> None:
        """faiss's ``IndexIVF.update_vectors``: new vectors for stored ids (a direct map is
        needed, as in faiss); all of them change or, on an error, none."""
        ids, x = _ids(keys), self._vectors(x)
        if len(ids) != len(x):
            raise InvalidArgument(f"{len(ids)} keys for {len(x)} vectors")
        try:
            self._call("update_vectors", arrays={"x": x, "ids": ids})
        finally:
            self._mutated()

    def merge_from(self, other: RemoteIndex, add_id: int = 0) -> None:
        """Move ``other``'s vectors into this index on the server (faiss empties ``other``)."""
        if not isinstance(other, RemoteIndex) or other._client is not self._client:
            raise InvalidArgument("merge_from needs another remote index on the same server")
        if other._info is None:
            other._create()
        try:
            info, _ = self._call("merge_from", {"other": other.name, "add_id": int(add_id)})
        finally:
            self._mutated()
            other._mutated()
        object.__setattr__(self, "_info", info)

    def replace_vt(self, vt: Any, own: bool = False) -> None:
        """``IndexIVFSpectralHash.replace_vt``: a new vector transform (a transform component
        such as ``faiss.ITQTransform(d, nbit)`` made after configure(), or a local faiss one,
        sent as its bytes), on the server as a logged write. The server's index owns its copy,
        so ``own`` changes nothing."""
        spec, arrays = describe(vt)
        if arrays or not isinstance(spec, dict):
            raise InvalidArgument(f"replace_vt takes a vector transform, not {vt!r}")
        try:
            self._call("replace_vt", {"transform": spec})
        finally:
            self._mutated()

    def serialize(self) -> np.ndarray:
        """``faiss.serialize_index`` of the server-side index, as faiss returns it (uint8)."""
        return self._call("serialize")[1]["data"]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The pickle carries the index itself, so it restores anywhere: as a new unnamed remote
        # index when unpickled in remote mode, as a plain faiss index in local mode.
        from faissx_client import _unpickle_index

        return _unpickle_index, (self._spec.model_dump(), self.serialize().tobytes())

    def __repr__(self) -> str:
        kind = "named" if self._named else "unnamed"
        return f"<remote {type(self).__name__} {kind} {self._name!r} on {self._client.server}>"


def member_info(name: str, described: dict[str, Any]) -> dict[str, Any]:
    """The index info of a member index, from its ``get_attr`` description."""
    cls = str(described.get("class") or "Index")
    spec = {"type": IMPORTED.name, "params": {"faiss_class": cls}}
    return {
        "name": name,
        "type": IMPORTED.name,
        "faiss_class": cls,
        "spec": spec,
        "d": described.get("d"),
        "ntotal": described.get("ntotal"),
        "is_trained": described.get("is_trained"),
        "metric_type": described.get("metric_type"),
        "vector_kind": "binary" if described.get("binary") else "float",
        "runtime_params": {},
    }


class ParamNamespace:
    """``index.hnsw`` on a proxy: attribute reads and writes of ``hnsw.*`` runtime parameters."""

    def __init__(self, proxy: RemoteIndex, prefix: str) -> None:
        object.__setattr__(self, "_proxy", proxy)
        object.__setattr__(self, "_prefix", prefix)

    def _param(self, attr: str) -> str:
        path = f"{self._prefix}.{attr}"
        for name, param_path in self._proxy._runtime_params().items():
            if param_path == path:
                return name
        raise AttributeError(f"remote {self._prefix!r} has no runtime parameter {attr!r}")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        deeper = f"{self._prefix}.{attr}."
        if any(p.startswith(deeper) for p in self._proxy._runtime_params().values()):
            return ParamNamespace(self._proxy, f"{self._prefix}.{attr}")  # idmap.index.hnsw
        try:
            name = self._param(attr)
        except AttributeError:  # not a runtime parameter: the structure, as a remote view
            return views.RemoteView(self._proxy, self._prefix, {}).__getattr__(attr)
        return self._proxy.get_parameter(name)

    def __setattr__(self, attr: str, value: Any) -> None:
        try:
            name = self._param(attr)
        except AttributeError:
            views.set_value(self._proxy, f"{self._prefix}.{attr}", attr, value)
            return
        self._proxy.set_parameter(name, value)

    @property
    def faiss_class(self) -> str:
        return str(self._proxy._call("get_attr", {"path": self._prefix})[0].get("class"))


class RemoteComponent:
    """A remote-mode index component (``PCAMatrix``, ``SearchParametersIVF``, ...): a spec.

    It exists only as a description until an index or a call that uses it reaches the server.
    Parameters read and write like faiss attributes (``params.nprobe = 8``).
    """

    itype: ClassVar[IndexType | None] = None

    def __init__(
        self,
        spec: IndexSpec,
        arrays: dict[str, np.ndarray] | None = None,
        referenced: list[Any] | None = None,
    ) -> None:
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_arrays", arrays or {})
        #: The objects it was given (a selector...), kept alive with it as faiss keeps them.
        object.__setattr__(self, "_referenced", list(referenced or ()))

    @property
    def spec(self) -> IndexSpec:
        return self._spec

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr not in self._spec.params:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {attr!r}")
        return self._spec.params[attr]

    def __setattr__(self, attr: str, value: Any) -> None:
        itype = type(self).itype
        if itype is None or attr not in itype.params.model_fields:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {attr!r}")
        described, arrays = describe(value)
        params = itype.validate_params({**self._spec.params, attr: described}).model_dump()
        object.__setattr__(self, "_spec", IndexSpec(type=self._spec.type, params=params))
        object.__setattr__(self, "_arrays", {**self._arrays, **arrays})
        self._referenced.append(value)

    def __repr__(self) -> str:
        return f"<remote {self._spec.type} {self._spec.params}>"


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside FAISSx (the user's
    line that created the index, however many of our frames lie between)."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        ("faissx_client", "faissx_core", "faissx.")
    ):
        frame, level = frame.f_back, level + 1
    return level


def describe(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """A constructor or call argument as wire data: proxies and components become specs.

    A proxy that already exists on the server (trained, filled) is sent as a reference the
    server resolves to a copy of that index, so its state comes along (faiss would share the
    object; the server copies it); so is a view of a member index (``index.quantizer``).
    One that was only ever described is sent as its spec.
    A local faiss index or vector transform (one the program built, perhaps trained, itself)
    travels as faiss's own serialization (a ``serialized`` spec, built on the server by faiss's
    reader), so the server holds what the program built; other local faiss objects (search
    parameters) are refused rather than silently sent as something else.
    """
    if isinstance(value, IndexSpec):  # a part a shorthand constructor made up (a quantizer)
        return value.model_dump(), {}
    source = value._source_member() if isinstance(value, RemoteIndex) else None
    if source is not None:  # an existing index, or a member of one (see _source_member)
        params = {"name": source[0], **({"path": source[1]} if source[1] else {})}
        return IndexSpec(type=REF_TYPE, params=params).model_dump(), {}
    if isinstance(value, views.RemoteView) and value._described.get("kind") == "index":
        # a member index read from a remote one (``index.quantizer``): a copy of that member
        owner = value._proxy._source_member()
        if owner is not None:
            params = {"name": owner[0], "path": views.join(owner[1], value._path)}
            return IndexSpec(type=REF_TYPE, params=params).model_dump(), {}
    if isinstance(value, RemoteIndex | RemoteComponent):
        arrays = value._arrays if isinstance(value, RemoteComponent) else {}
        return value.spec.model_dump(), arrays
    if isinstance(value, RemoteSelector | faiss.IDSelector):
        spec, arrays = describe_selector(value)
        return spec.model_dump(), arrays
    if isinstance(value, faiss.Index | faiss.IndexBinary | faiss.VectorTransform):
        # a local faiss object (a trained LinearTransform, a quantizer): faiss's own bytes
        return encode_serialized(value).model_dump(), {}
    if isinstance(value, faiss.SearchParameters):
        raise InvalidArgument(
            f"a local faiss {type(value).__name__} cannot be sent to the server; create it after "
            "configure() so FAISSx can describe it"
        )
    if isinstance(value, list | tuple):
        out, arrays = [], {}
        for item in value:
            described, more = describe(item)
            out.append(described)
            arrays.update(more)
        return out, arrays
    return value, {}


def _with_params(
    args: dict[str, Any], arrays: dict[str, np.ndarray], params: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if params is None:
        return args, arrays
    if not isinstance(params, RemoteComponent):
        describe(params)  # raises the clear error for local faiss objects
        raise InvalidArgument(f"params must be a SearchParameters object, not {params!r}")
    spec, more = describe(params)
    return {**args, "params": spec}, {**arrays, **more}


def _ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids, dtype="int64")  # not ascontiguousarray: it turns a scalar into (1,)
    if arr.ndim != 1:
        raise InvalidArgument(f"ids must be a 1-d array, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _positive_k(k: Any) -> int:
    if int(k) != k or k <= 0:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    return int(k)


def _into(dest: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """Honour faiss's optional output arrays (``D=``, ``I=``, ``x=``)."""
    if dest is None:
        return result
    if dest.shape != result.shape:
        raise InvalidArgument(f"output array has shape {dest.shape}, result is {result.shape}")
    dest[...] = result
    return dest
