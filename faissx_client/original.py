"""The original FAISSx's client API (github.com/muxi-ai/faissx), over this client.

Code written for the original imports ``FaissXClient`` and ``get_client`` from
``faissx.client.client`` and calls index operations by index name, getting dicts back
(``{"success": True, "results": [...]}``). :class:`FaissXClient` is our :class:`Client` with
those methods added, each a few lines over the same proxies the drop-in classes use: the client
``configure()`` makes is a ``FaissXClient``, so ``get_client()`` answers both APIs.

What is deliberately not copied (docs/client.md lists it): failures raise the typed errors of
:mod:`faissx_core.errors` instead of returning ``{"success": False}``; ``_send_request`` (the
original's wire format) is refused with an error naming it; binary dimensions are in bits, as
in faiss (the original took bytes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from faissx_client.client import Client
from faissx_client.settings import ClientSettings
from faissx_core.errors import InvalidArgument, NotConfigured, UnsupportedOperation

__all__ = ["FaissXClient", "configure_url", "factory_description"]

#: The original server's sizes for a bare "IVF" / "HNSW" index type.
DEFAULT_NLIST = 100
DEFAULT_HNSW_M = 32
#: Rows per request of ``batch_add_vectors`` / queries per request of ``batch_search``.
DEFAULT_BATCH_SIZE_ADD = 1000
DEFAULT_BATCH_SIZE_SEARCH = 100


def configure_url(
    url: str | None = None,
    api_key: str | None = None,
    tenant_id: str | None = None,
    connection_timeout: int | None = None,
    request_timeout: int | None = None,
    **more: Any,
) -> Client | None:
    """The original's top-level ``faissx.configure(url=..., ...)`` (timeouts in milliseconds).

    Our one ``timeout`` bounds each call, connecting included; it is the larger of the two
    given. Other keywords (``server=``, ``timeout=`` in seconds, ...) are
    :func:`faissx_client.configure`'s.
    """
    from faissx_client import configure

    if url is not None:
        if more.get("server") not in (None, url):
            raise InvalidArgument("give the server address once: url= or server=")
        more["server"] = url
    given = [t for t in (connection_timeout, request_timeout) if t is not None]
    if given:
        if "timeout" in more:
            raise InvalidArgument(
                "give timeout= (seconds) or connection_timeout= / "
                "request_timeout= (milliseconds), not both"
            )
        more["timeout"] = max(given) / 1000.0
    return configure(api_key=api_key, tenant_id=tenant_id, **more)


# -- the original's index_type strings -----------------------------------------------------------


def factory_description(index_type: str) -> tuple[str, int, bool]:
    """(``index_factory`` description, metric, binary) for the original's ``index_type``.

    The original spelled types its own way: ``"L2"``, ``"IP"``, ``"IVF16"``, ``"IVF16_IP"``,
    ``"IVF4_SQ8"``, ``"HNSW32"``, ``"HNSW16_IP"``, ``"PQ4x8"``, ``"IDMap:L2"``,
    ``"IDMap2:L2"``, ``"PCA4,L2"``, ``"NORM,L2"``, ``"BINARY_FLAT"``. Parts it did not
    rename pass through, so an ``index_factory`` string works as well. A bare ``"IVF"`` has
    the original server's 100 lists, a bare ``"HNSW"`` its 32 neighbours.
    """
    text = index_type.strip()
    if text.upper().startswith("BINARY"):
        rest = text[len("BINARY") :].lstrip("_:,")
        return ("BFlat" if rest.upper() in ("", "FLAT") else rest), faiss.METRIC_L2, True
    metric = faiss.METRIC_L2
    wrappers = []
    while (m := re.match(r"(?i)IDMap(2?):", text)) is not None:
        wrappers.append("IDMap" + m.group(1))
        text = text[m.end() :]
    parts = []
    for part in (p.strip() for p in text.split(",")):
        if part.upper() == "IP":
            metric, part = faiss.METRIC_INNER_PRODUCT, "Flat"
        elif part.upper().endswith("_IP"):
            metric, part = faiss.METRIC_INNER_PRODUCT, part[:-3]
        if part.upper() in ("L2", "FLAT"):
            part = "Flat"
        elif part.upper() == "NORM":
            part = "L2norm"
        elif (ivf := re.fullmatch(r"(?i)IVF(\d*)(?:_(.+))?", part)) is not None:
            part = f"IVF{ivf.group(1) or DEFAULT_NLIST},{ivf.group(2) or 'Flat'}"
        elif part.upper() == "HNSW":
            part = f"HNSW{DEFAULT_HNSW_M}"
        parts.append(part)
    return ",".join([*wrappers, *parts]), metric, False


# -- the client ----------------------------------------------------------------------------------


class FaissXClient(Client):
    """Our client plus the original FAISSx's by-name methods.

    ``FaissXClient()`` with no arguments is unconnected (``mode == "local"``), as in the
    original; :meth:`configure` connects it. Index ids are server-side index names of this
    tenant; indices made by :meth:`create_index` are named and stay until
    :meth:`delete_index`.
    """

    def __init__(
        self, settings: ClientSettings | None = None, heartbeat: float | None = None
    ) -> None:
        self._indices: dict[str, Any] = {}
        self._heartbeat = heartbeat
        if settings is None:
            self.settings = None  # type: ignore[assignment]
            self.transport = None  # type: ignore[assignment]
            return
        super().__init__(settings, heartbeat)

    # -- connection ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``"remote"`` once connected, ``"local"`` before (the original's attribute)."""
        return "local" if self.transport is None or self.transport.closed else "remote"

    @property
    def server(self) -> str:
        return self.settings.server if self.settings is not None else ""

    @property
    def api_key(self) -> str | None:
        return self.settings.api_key if self.settings is not None else None

    @property
    def tenant_id(self) -> str | None:
        return self.settings.tenant_id if self.settings is not None else None

    @property
    def timeout(self) -> float | None:
        return self.settings.timeout if self.settings is not None else None

    def configure(
        self,
        server: str | None = None,
        api_key: str | None = None,
        tenant_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Connect this client (and only this one) to ``server``; arguments not given come from
        ``FAISSX_*`` as for :func:`faissx_client.configure`. Raises if the server does not
        answer or refuses the key. ``timeout`` bounds each call, retries included (the
        original's default of 5 s was too short for training on a busy server; ours is
        ``FAISSX_TIMEOUT`` or 30 s)."""
        settings = ClientSettings.from_env(
            server=server, api_key=api_key, tenant_id=tenant_id, timeout=timeout
        )
        self.disconnect()
        super().__init__(settings, self._heartbeat)
        try:
            self.hello()
        except Exception:
            self.close()
            raise

    def connect(self) -> None:
        """(Re)connect with the configured settings and check the server answers."""
        if self.settings is None:
            raise NotConfigured(
                "FaissXClient.connect: no server configured; call configure(server=...) first"
            )
        self.configure(
            self.settings.server,
            self.settings.api_key,
            self.settings.tenant_id,
            self.settings.timeout,
        )

    def disconnect(self) -> None:
        if self.transport is not None:
            self.close()
        self._indices.clear()

    def close(self) -> None:
        if self.transport is not None:
            super().close()

    def get_client(self) -> FaissXClient | None:
        """This client if it is connected, else None (as in the original)."""
        return self if self.mode == "remote" else None

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self.transport is None:
            raise NotConfigured("this FaissXClient is not connected: call configure() first")
        return super().call(op, index, args, arrays, timeout)

    def _send_request(self, request: dict[str, Any]) -> dict[str, Any]:
        raise UnsupportedOperation(
            "FaissXClient._send_request sends the original FAISSx's wire messages "
            f"(action {request.get('action')!r}), which this server does not speak; use the "
            "FaissXClient methods (create_index, add_vectors, search, ...) or the index classes"
        )

    # -- indices by name -----------------------------------------------------------------------
    def _index(self, index_id: str) -> Any:
        index = self._indices.get(index_id)
        if index is None:
            from faissx_client import _open

            index = self._indices[index_id] = _open(self, index_id)
        return index

    def create_index(self, name: str, dimension: int, index_type: str = "L2") -> dict[str, Any]:
        """Create the named index ``name``; ``index_type`` in the original's spelling
        (:func:`factory_description`) or an ``index_factory`` string."""
        from faissx_client import _attach, _registry

        description, metric, binary = factory_description(index_type)
        if binary:
            spec = _registry.index_type("index_binary_factory").bind(
                (int(dimension), description), {}
            )
        else:
            spec = _registry.index_type("index_factory").bind(
                (int(dimension), description, metric), {}
            )
        self._indices[name] = index = _attach(self, spec, name)
        return {
            "success": True,
            "index_id": name,
            "dimension": index.d,
            "index_type": index_type,
            "description": description,
        }

    def add_vectors(self, index_id: str, vectors: Any) -> dict[str, Any]:
        index = self._index(index_id)
        x = _rows(index, vectors)
        index.add(x)
        total = index.ntotal
        return {"success": True, "count": len(x), "total": total, "ntotal": total}

    def batch_add_vectors(
        self, index_id: str, vectors: Any, batch_size: int = DEFAULT_BATCH_SIZE_ADD
    ) -> dict[str, Any]:
        index = self._index(index_id)
        x = _rows(index, vectors)
        for start in range(0, len(x), _batch(batch_size)):
            index.add(x[start : start + batch_size])
        total = index.ntotal
        return {"success": True, "count": len(x), "total": total, "ntotal": total}

    def train_index(self, index_id: str, training_vectors: Any) -> dict[str, Any]:
        index = self._index(index_id)
        index.train(_rows(index, training_vectors))
        return {"success": True, "index_id": index_id, "is_trained": index.is_trained}

    def search(
        self, index_id: str, query_vectors: Any, k: int = 10, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """k nearest neighbours; ``params`` (``nprobe``, ``efSearch``, ...) for this search only."""
        return self._searched(
            index_id, query_vectors, params, lambda index, x: _knn(index.search(x, k))
        )

    def batch_search(
        self,
        index_id: str,
        query_vectors: Any,
        k: int = 10,
        batch_size: int = DEFAULT_BATCH_SIZE_SEARCH,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        x = _rows(self._index(index_id), query_vectors)
        for start in range(0, len(x), _batch(batch_size)):
            results += self.search(index_id, x[start : start + batch_size], k, params)["results"]
        return {"success": True, "results": results}

    def range_search(self, index_id: str, query_vectors: Any, radius: float) -> dict[str, Any]:
        def run(index: Any, x: np.ndarray) -> list[dict[str, Any]]:
            lims, distances, ids = index.range_search(x, float(radius))
            return [
                {
                    "query_index": i,
                    "num_results": int(lims[i + 1] - lims[i]),
                    "indices": ids[lims[i] : lims[i + 1]].tolist(),
                    "distances": distances[lims[i] : lims[i + 1]].tolist(),
                }
                for i in range(len(x))
            ]

        return self._searched(index_id, query_vectors, None, run)

    def batch_range_search(
        self,
        index_id: str,
        query_vectors: Any,
        radius: float,
        batch_size: int = DEFAULT_BATCH_SIZE_SEARCH,
    ) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        x = _rows(self._index(index_id), query_vectors)
        for start in range(0, len(x), _batch(batch_size)):
            part = self.range_search(index_id, x[start : start + batch_size], radius)["results"]
            for item in part:
                item["query_index"] += start
            results += part
        return {"success": True, "results": results}

    def search_and_reconstruct(
        self, index_id: str, query_vectors: Any, k: int = 10, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        def run(index: Any, x: np.ndarray) -> list[dict[str, Any]]:
            distances, ids, vectors = index.search_and_reconstruct(x, k)
            return [
                {
                    "distances": distances[i].tolist(),
                    "indices": ids[i].tolist(),
                    "vectors": vectors[i].tolist(),
                }
                for i in range(len(x))
            ]

        return self._searched(index_id, query_vectors, params, run)

    def _searched(
        self,
        index_id: str,
        query_vectors: Any,
        params: dict[str, Any] | None,
        run: Callable[[Any, np.ndarray], list[dict[str, Any]]],
    ) -> dict[str, Any]:
        index = self._index(index_id)
        x = _rows(index, query_vectors)
        if not params:
            return {"success": True, "results": run(index, x), "num_queries": len(x)}
        old = {name: index.get_parameter(name) for name in params}
        try:
            for name, value in params.items():
                index.set_parameter(name, value)
            return {"success": True, "results": run(index, x), "num_queries": len(x)}
        finally:
            for name, value in old.items():
                index.set_parameter(name, value)

    def reconstruct(self, index_id: str, vector_id: int) -> dict[str, Any]:
        return {
            "success": True,
            "vector": self._index(index_id).reconstruct(int(vector_id)).tolist(),
        }

    def reconstruct_n(self, index_id: str, start_idx: int, n: int) -> dict[str, Any]:
        vectors = self._index(index_id).reconstruct_n(int(start_idx), int(n))
        return {
            "success": True,
            "vectors": vectors.tolist(),
            "start_idx": int(start_idx),
            "num_vectors": len(vectors),
        }

    def get_index_stats(self, index_id: str) -> dict[str, Any]:
        info, _ = self.call("info", index_id)
        return {"success": True, "index_id": index_id, "dimension": info["d"], **info}

    def list_indexes(self) -> dict[str, Any]:
        from faissx_client import _list

        return {"success": True, "indexes": _list(self)}

    def delete_index(self, index_id: str) -> dict[str, Any]:
        from faissx_client import _delete

        self._indices.pop(index_id, None)
        _delete(self, index_id)
        return {"success": True, "message": f"index {index_id!r} deleted"}

    def merge_indices(self, target_index_id: str, source_index_ids: list[str]) -> dict[str, Any]:
        """Add the vectors of the source indices to the target; the sources stay as they are
        (faiss's ``merge_from`` of server-side copies, or their vectors added where faiss
        cannot merge the two types)."""
        from faissx_client.modification import merge_into

        target = self._index(target_index_id)
        merge_into(target, [self._index(name) for name in source_index_ids])
        return {"success": True, "index_id": target_index_id, "ntotal": target.ntotal}


def _rows(index: Any, vectors: Any) -> np.ndarray:
    dtype = np.uint8 if index._binary() else np.float32
    return np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=dtype)))


def _batch(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise InvalidArgument(f"batch_size must be an integer >= 1, got {size!r}")
    return int(size)


def _knn(result: tuple[np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
    distances, ids = result
    return [
        {"distances": distances[i].tolist(), "indices": ids[i].tolist()} for i in range(len(ids))
    ]


# -- the original's constructor defaults and attributes ------------------------------------------

#: The original's defaults for arguments faiss requires: (class, where the argument goes, its
#: name, the default). A call that leaves it out, or passes None, gets the default; a call with
#: faiss's full argument list is unchanged. ``where`` is a function of the arguments because
#: ``IndexIVFScalarQuantizer`` takes its quantizer first in faiss's spelling and not in the
#: shorthand without one.
ORIGINAL_DEFAULTS: tuple[tuple[str, Callable[[tuple[Any, ...]], int], str, Any], ...] = (
    ("IndexPQ", lambda args: 1, "M", 8),
    ("IndexPQ", lambda args: 2, "nbits", 8),
    ("IndexHNSWFlat", lambda args: 1, "M", 32),
    ("IndexScalarQuantizer", lambda args: 1, "qtype", faiss.ScalarQuantizer.QT_8bit),
    (
        "IndexIVFScalarQuantizer",
        lambda args: 2 if args and type(args[0]) is int else 3,
        "qtype",
        faiss.ScalarQuantizer.QT_8bit,
    ),
)

#: Attributes the original's classes had and faiss's do not: name -> (class names, path).
ORIGINAL_ATTRIBUTES: dict[str, tuple[tuple[str, ...], str]] = {
    "M": (("IndexPQ", "IndexIVFPQ"), "pq.M"),
    "nbits": (("IndexPQ", "IndexIVFPQ"), "pq.nbits"),
    "d_in": (("IndexPreTransform",), "d"),
}


def _get_parameters(self: Any) -> dict[str, Any]:
    """Every runtime parameter of this index with its value (the original FAISSx's name for
    :func:`faissx_client.optimization.parameters`)."""
    from faissx_client.optimization import parameters

    return parameters(self)


def _estimate_memory_usage(self: Any) -> int:
    """Bytes this index holds: faiss's container sizes locally, the server's figure remotely
    (the original FAISSx's name for ``memory_manager.index_memory(index)``)."""
    from faissx_client.optimization import memory_manager

    return memory_manager.index_memory(self)


#: Methods the original's index classes had, added to faiss's and to the proxies.
ORIGINAL_METHODS: dict[str, Callable[..., Any]] = {
    "get_parameters": _get_parameters,
    "estimate_memory_usage": _estimate_memory_usage,
}

Rewrite = Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None]


def with_defaults(
    defaults: list[tuple[Callable[[tuple[Any, ...]], int], str, Any]], inner: Rewrite | None
) -> Rewrite:
    """A constructor rewrite that puts each ``(where, key, value)`` default in, in order, where
    the call left it out (the next positional argument missing) or gave None, then applies
    ``inner`` (the type's own shorthand)."""

    def rewrite(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        for where, key, value in defaults:
            position = where(args)
            if key in kwargs:
                if kwargs[key] is None:
                    kwargs = {**kwargs, key: value}
            elif len(args) == position:
                args = (*args, value)
            elif len(args) > position and args[position] is None:
                args = (*args[:position], value, *args[position + 1 :])
        if inner is not None:
            return inner(args, kwargs) or (args, kwargs)
        return args, kwargs

    return rewrite


def _attribute(path: str) -> property:
    def read(self: Any) -> Any:
        value = self
        for part in path.split("."):
            value = getattr(value, part)
        return value

    return property(read, doc=f"``{path}`` (the original FAISSx's name for it; read-only)")


# -- the original's transforms module and IndexPreTransform(index, transforms) ------------------


# The original's transforms were client-side objects that computed locally in both modes (its
# tests apply and train them on their own); these are faiss's transform objects, local in both
# modes too. Given to ``IndexPreTransform(index, ...)`` in remote mode, an untrained one travels
# as the description the server builds it from (:func:`described_transform`).


def L2NormTransform(d: int) -> Any:
    """The original's ``L2NormTransform(d)``: faiss's ``NormalizationTransform(d, 2.0)``."""
    return faiss.NormalizationTransform(int(d), 2.0)


def PCATransform(
    d_in: int, d_out: int, eigen_power: float = 0.0, random_rotation: bool = False
) -> Any:
    """The original's ``PCATransform(d_in, d_out)``: faiss's ``PCAMatrix``."""
    return faiss.PCAMatrix(int(d_in), int(d_out), float(eigen_power), bool(random_rotation))


def RemapDimensionsTransform(d_in: int, d_out: int, selected_dims: Any = None) -> Any:
    """The original's ``RemapDimensionsTransform(d_in, d_out, selected_dims)``: faiss's, with
    output dimension ``i`` taken from input dimension ``selected_dims[i]`` (-1: zero), or
    spread uniformly when ``selected_dims`` is None."""
    if selected_dims is None:
        return faiss.RemapDimensionsTransform(int(d_in), int(d_out), True)  # type: ignore[arg-type]  # faiss's stubs lack this overload
    dims = np.ascontiguousarray(selected_dims, dtype=np.int32)
    if dims.shape != (d_out,) or dims.min(initial=0) < -1 or dims.max(initial=0) >= d_in:
        raise InvalidArgument(
            f"selected_dims must hold d_out={d_out} input dimensions in [-1, {d_in}), "
            f"got {selected_dims!r}"
        )
    return faiss.RemapDimensionsTransform(int(d_in), int(d_out), faiss.swig_ptr(dims))


def described_transform(transform: Any) -> Any:
    """A local faiss transform as the remote component it describes, for a remote
    ``IndexPreTransform``: an untrained ``PCAMatrix`` or a ``NormalizationTransform``. Others,
    and a trained PCA (its matrix is not a description), are refused."""
    import faissx_client

    if isinstance(transform, faiss.NormalizationTransform):
        make: Any = faissx_client.NormalizationTransform  # generated at import
        return make(transform.d_in, transform.norm)
    if isinstance(transform, faiss.PCAMatrix) and not transform.is_trained:
        make = faissx_client.PCAMatrix
        return make(
            transform.d_in, transform.d_out, transform.eigen_power, transform.random_rotation
        )
    raise InvalidArgument(
        f"a local {type(transform).__name__}"
        f"{' (trained)' if transform.is_trained else ''} cannot go into a remote "
        "IndexPreTransform: give an untrained PCATransform / L2NormTransform, or the drop-in "
        "faissx.client.PCAMatrix / NormalizationTransform, and train the index"
    )


def _is_transform(value: Any) -> bool:
    from faissx_client.proxy import RemoteComponent

    return isinstance(value, faiss.VectorTransform | RemoteComponent)


def transforms_after_index(cls: type) -> Rewrite:
    """``IndexPreTransform(index, transform)`` and ``IndexPreTransform(index, [t1, t2, ...])``,
    the original's order, as faiss's ``IndexPreTransform(t1, IndexPreTransform(t2, ...
    index))``: the vectors go through t1, then t2, ..., then reach ``index``."""

    def rewrite(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if len(args) != 2 or kwargs or _is_transform(args[0]):
            return None  # faiss's own spellings
        index, given = args
        chain = list(given) if isinstance(given, list | tuple) else [given]
        if not chain or not all(_is_transform(t) for t in chain):
            return None  # faiss reports the bad arguments
        if cls._current() is not None:  # type: ignore[attr-defined]  # remote mode
            chain = [
                described_transform(t) if isinstance(t, faiss.VectorTransform) else t for t in chain
            ]
        for transform in reversed(chain[1:]):
            index = cls(transform, index)
        return (chain[0], index), {}

    return rewrite


def _transform_chain(self: Any) -> list[Any]:
    """The transforms applied before the wrapped index, in order, through nested
    ``IndexPreTransform``s (the original's ``transform_chain``). Locally faiss's transform
    objects; on a remote index, remote views of them."""
    from faissx_client.proxy import RemoteIndex
    from faissx_client.views import RemoteView, class_of

    chain: list[Any] = []
    index = self
    while True:
        remote = isinstance(index, RemoteIndex | RemoteView)
        cls = class_of(index) if remote else type(index)
        if cls is None or not issubclass(cls, faiss.IndexPreTransform):
            return chain
        vector: Any = index.chain  # a SWIG vector locally (faiss's stubs say list)
        if remote:
            chain += [vector.at(i) for i in range(len(vector))]
        else:
            chain += [faiss.downcast_VectorTransform(vector.at(i)) for i in range(vector.size())]
        index = index.index if remote else faiss.downcast_index(index.index)


def _get_vectors(self: Any) -> np.ndarray:
    """Every vector of the index, as faiss reconstructs them (``reconstruct_n(0, ntotal)``;
    the original FAISSx's name). Raises where faiss cannot reconstruct."""
    return self.reconstruct_n(0, self.ntotal)


def install_index_extras(classes: dict[str, type]) -> None:
    """Give the drop-in classes the original's constructor defaults, and them and faiss's
    classes the original's attribute names (``IndexPQ.M`` is ``pq.M``); nothing existing is
    replaced, so faiss's full spellings behave exactly as in faiss."""
    defaults: dict[str, list[tuple[Callable[[tuple[Any, ...]], int], str, Any]]] = {}
    for name, where, key, value in ORIGINAL_DEFAULTS:
        defaults.setdefault(name, []).append((where, key, value))
    for name, given in defaults.items():
        cls = classes.get(name)
        if cls is None:
            continue
        itype = cls.itype  # type: ignore[attr-defined]
        rewrite = with_defaults(given, itype.shorthand)
        type.__setattr__(cls, "itype", itype.model_copy(update={"shorthand": rewrite}))
    from faissx_client.proxy import RemoteIndex

    for cls in (faiss.Index, faiss.IndexBinary, RemoteIndex):
        for attr, method in ORIGINAL_METHODS.items():
            if attr not in dir(cls):
                setattr(cls, attr, method)
    pretransform = classes.get("IndexPreTransform")
    if pretransform is not None:
        itype = pretransform.itype  # type: ignore[attr-defined]
        shorthand = transforms_after_index(pretransform)
        if itype.shorthand is not None:
            raise RuntimeError("IndexPreTransform has a shorthand already; compose it here")
        type.__setattr__(pretransform, "itype", itype.model_copy(update={"shorthand": shorthand}))
    for cls in (pretransform, faiss.IndexPreTransform):
        if cls is not None and "transform_chain" not in dir(cls):
            chain = property(_transform_chain, doc=_transform_chain.__doc__)
            type.__setattr__(cls, "transform_chain", chain)
    for name in ("IndexPQ", "IndexIVFPQ", "IndexIVFScalarQuantizer"):
        for cls in (classes.get(name), getattr(faiss, name, None)):
            if isinstance(cls, type) and "get_vectors" not in dir(cls):
                type.__setattr__(cls, "get_vectors", _get_vectors)
    for attr, (names, path) in ORIGINAL_ATTRIBUTES.items():
        for name in names:
            for cls in (classes.get(name), getattr(faiss, name, None)):
                if isinstance(cls, type) and attr not in dir(cls):
                    setattr(cls, attr, _attribute(path))
