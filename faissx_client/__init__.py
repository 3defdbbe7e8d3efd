"""The drop-in FAISS module: ``from faissx import client as faiss``.

Without :func:`configure` (and without ``FAISSX_SERVER`` in the environment) every name is real
faiss: index classes build genuine faiss objects and all other names are faiss's own. After
``configure()``, the index classes that plugins provide build proxies whose every call runs on
the server; nothing silently falls back to local execution. Names FAISSx does not proxy
(constants, ``normalize_L2``, ...) pass through to faiss in both modes.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import faiss
import numpy as np

from faissx_client import classes as _classes_module
from faissx_client import gpu as gpu_module
from faissx_client import modification, optimization, recovery, shards, views
from faissx_client import original as _original
from faissx_client.cache import vector_cache
from faissx_client.classes import _placement, make_class, make_generic_class
from faissx_client.client import Client
from faissx_client.invlists import shared as _shared_lists
from faissx_client.invlists import wrapper as _wrapped_lists
from faissx_client.ivf_stats import CVar
from faissx_client.original import FaissXClient
from faissx_client.pointers import pointers
from faissx_client.proxy import ParamNamespace, RemoteIndex, _ids, member_info
from faissx_client.recovery import configure_recovery, on_reconnect, with_retry
from faissx_client.selection import CallbackSelector, RemoteSelector, combination
from faissx_client.selection import translated as translated_selector
from faissx_client.settings import ClientSettings
from faissx_client.views import RemoteVector, RemoteView, class_of
from faissx_core import __version__
from faissx_core.errors import (
    Aborted,
    FaissError,
    FaissxError,
    IndexDamaged,
    IndexExists,
    IndexNotFound,
    InvalidArgument,
    NotConfigured,
    PermissionDenied,
    QuotaExceeded,
    ServerUnavailable,
    ShardUnavailable,
    Unauthenticated,
    UnknownIndexType,
    UnsupportedOperation,
)
from faissx_core.plugins import PluginRegistry
from faissx_core.selectors import SelectorSpec
from faissx_core.specs import IMPORTED, SERIALIZED, IndexSpec

__all__ = [
    "Aborted",
    "Client",
    "FaissXClient",
    "FaissxError",
    "IndexDamaged",
    "IndexExists",
    "IndexNotFound",
    "InvalidArgument",
    "NotConfigured",
    "PermissionDenied",
    "QuotaExceeded",
    "RemoteIndex",
    "ServerUnavailable",
    "ShardUnavailable",
    "Unauthenticated",
    "UnknownIndexType",
    "__version__",
    "configure",
    "configure_recovery",
    "delete_index",
    "disconnect",
    "flush",
    "get_client",
    "gpu",
    "is_remote",
    "list_indexes",
    "modification",
    "on_reconnect",
    "open_index",
    "optimization",
    "recovery",
    "with_retry",
]

# Local mode: indices built here honour batch_size / progress / the memory limit and GPU mode;
# faiss objects gain set_parameter / get_parameter (faissx_client/optimization.py explains).
_classes_module.local_hook = optimization.build_local
optimization.install_faiss_methods()

_client: FaissXClient | None = None
_lock = threading.Lock()


def configure(
    server: str | None = None,
    api_key: str | None = None,
    tenant_id: str | None = None,
    timeout: float | None = None,
    heartbeat: float | None = None,
    server_public_key: str | None = None,
    client_public_key: str | None = None,
    client_secret_key: str | None = None,
    *,
    gpu: bool | None = None,
    write_window: int | None = None,
) -> Client | None:
    """Switch to remote mode: every index created from now on lives on ``server``.

    Arguments not given come from ``FAISSX_SERVER``, ``FAISSX_API_KEY``, ``FAISSX_TENANT_ID``,
    ``FAISSX_TIMEOUT`` and ``FAISSX_HEARTBEAT``. ``timeout`` bounds each call, retries included
    (see :mod:`faissx_client.recovery`); ``heartbeat`` is the interval of the connection's
    heartbeats (0: none). The server is pinged once, so a wrong address or key fails here.
    ``server_public_key`` (``FAISSX_SERVER_PUBLIC_KEY``) turns on CURVE encryption; the client
    key pair (``FAISSX_CLIENT_PUBLIC_KEY`` / ``_SECRET_KEY``) is for servers with an allow-list.

    ``write_window`` (``FAISSX_WRITE_WINDOW``, default 0) lets up to that many one-request
    ``add`` / ``add_with_ids`` calls per thread return once sent instead of once acknowledged:
    any other call, :func:`flush` and :func:`disconnect` wait for them first, and raise the
    first that failed (docs/client.md, "Write window").

    ``configure(gpu=True)`` alone (no server, no ``FAISSX_SERVER``) stays in local mode and moves
    the indices built from then on to a GPU (faiss's ``index_cpu_to_gpu``); it raises on a faiss
    without GPU support. Remote indices use the server's GPU (``faissx serve --gpu``).
    """
    global _client
    if gpu is not None:
        remote = any(
            v is not None for v in (server, api_key, tenant_id, timeout, heartbeat, write_window)
        )
        if not remote and not os.environ.get("FAISSX_SERVER"):
            gpu_module.enable() if gpu else gpu_module.disable()
            return None
        if gpu:
            raise InvalidArgument(
                "gpu=True is for local mode; a remote index runs where the "
                "server puts it (start the server with `faissx serve --gpu`)"
            )
    settings = ClientSettings.from_env(
        server=server,
        api_key=api_key,
        tenant_id=tenant_id,
        timeout=timeout,
        server_public_key=server_public_key,
        client_public_key=client_public_key,
        client_secret_key=client_secret_key,
        write_window=write_window,
    )
    client = FaissXClient(settings, heartbeat)  # our client plus the original FAISSx's API
    try:
        client.hello()
    except Exception:
        client.close()
        raise
    with _lock:
        old, _client = _client, client
    try:
        if old is not None:
            old.close()  # raises a deferred write of its that failed, once closed
    finally:
        vector_cache.clear()
    return client


def flush() -> None:
    """Return once every deferred write is acknowledged, i.e. durable per the server's
    ``--fsync``; raise the first that failed (as its own type, saying it was deferred).

    Deferred writes exist only with ``configure(write_window=N)``: this thread's, and those of
    threads that have ended, are waited for. Without a window, or in local mode, it returns at
    once."""
    client = _client
    if client is not None:
        client.flush()


def disconnect() -> None:
    """Close the remote client and return to local mode (its unnamed indices are dropped).

    Deferred writes (``write_window``) are waited for first; one that failed is raised once
    the client is closed."""
    global _client
    with _lock:
        old, _client = _client, None
    try:
        if old is not None:
            old.close()  # raises a deferred write of its that failed, once closed
    finally:
        vector_cache.clear()


def get_client() -> FaissXClient | None:
    """The configured client, configuring from ``FAISSX_SERVER`` on first use if it is set.

    It is a :class:`FaissXClient`: our client, with the original FAISSx's by-name methods
    (``create_index``, ``add_vectors``, ``search``, ...) too. None in local mode."""
    if _client is None and os.environ.get("FAISSX_SERVER"):
        with _lock:
            if _client is not None:
                return _client
        configure()
    return _client


def is_remote() -> bool:
    return get_client() is not None


def _require_client(what: str) -> Client:
    client = get_client()
    if client is None:
        raise NotConfigured(f"{what} needs a server: call faissx.client.configure() first")
    return client


# -- index classes from plugins ----------------------------------------------------------------

_registry = PluginRegistry()
#: Types reached through a function of faiss's rather than a class of the same name (and the
#: core's ``serialized``, which stands for a local faiss object handed to a remote one).
_FUNCTIONS = {"index_factory", "index_binary_factory", IMPORTED.name, SERIALIZED.name}
_classes: dict[str, type] = {}
for _itype in _registry.types.values():
    if _itype.name not in _FUNCTIONS:
        _classes[_itype.name] = globals()[_itype.name] = make_class(_itype, _registry, get_client)
_original.install_index_extras(_classes)  # IndexPQ(d, M), IndexIVFPQ.M, ... (the original's)


#: The seed lists ``IndexHNSW``; faiss's class of that name is abstract (it has no storage and
#: refuses ``add``), so the drop-in name builds what it describes: an ``IndexHNSWFlat``.
if "IndexHNSWFlat" in _classes:
    IndexHNSW = _classes["IndexHNSWFlat"]


#: The type name of the generic family (faissx_plugins/generic.py), the backstop for faiss
#: index classes no named family declares.
GENERIC_TYPE = "faiss_index"


def _generic_class(name: str) -> type | None:
    """The drop-in class of faiss's index class ``name`` when the generic family serves it."""
    if name in _classes:
        return _classes[name]
    value = getattr(faiss, name, None)
    if (
        GENERIC_TYPE not in _registry.types
        or not isinstance(value, type)
        or not issubclass(value, faiss.Index | faiss.IndexBinary)
    ):
        return None
    _classes[name] = make_generic_class(name, _registry.types[GENERIC_TYPE], _registry, get_client)
    return _classes[name]


#: IndexShards, IndexReplicas and their binary and IVF variants: faiss cannot serialize them,
#: so in remote mode the client holds them over remote sub-indices (faissx_client/shards.py).
for _name in shards.WRAPPERS:
    globals()[_name] = shards.drop_in(_name, get_client)


if "SearchParametersIVF" in _classes:  # faiss's other spelling of it
    IVFSearchParameters = _classes["SearchParametersIVF"]


def _proxy_class(info: dict[str, Any]) -> type:
    """The proxy class for a server-side index: its own type's, else its faiss class's name."""
    spec_cls = (
        info.get("spec", {}).get("params", {}).get("cls") if info["type"] == GENERIC_TYPE else None
    )
    for name in (spec_cls, info["type"], info.get("faiss_class")):
        if name in _classes:
            return _classes[name]
    name = str(info.get("faiss_class") or "RemoteIndex")
    cls = _generic_class(name)
    if cls is None:
        cls = _classes[name] = type(name, (RemoteIndex,), {"__module__": __name__})
    return cls


def _attach(
    client: Client,
    spec: IndexSpec,
    name: str | None,
    info: dict | None = None,
    op: str = "create",
    data: Any = None,
    extra: dict | None = None,
    placement: dict | None = None,
) -> RemoteIndex:
    """A proxy created on the server now (``create``, ``import`` or ``clone``), typed after
    what it is."""
    proxy = type.__call__(RemoteIndex, client, spec, name=name, info=info, placement=placement)
    info = info or proxy._create(op=op, data=data, extra=extra)
    object.__setattr__(proxy, "__class__", _proxy_class(info))
    return proxy


def clone_index(index: Any, *, name: str | None = None) -> Any:
    """faiss.clone_index; a remote index is copied on the server into a new remote index
    (unnamed unless ``name``), its vectors and parameters included."""
    if isinstance(index, shards.ThreadedIndex):  # as faiss refuses to clone its wrappers
        raise UnsupportedOperation(f"clone not supported for {index.faiss_name}")
    if not isinstance(index, RemoteIndex):
        return faiss.clone_index(index)
    if index._info is None:
        index._create()
    return _attach(index._client, index.spec, name, op="clone", extra={"source": index.name})


def clone_binary_index(index: Any, *, name: str | None = None) -> Any:
    if not isinstance(index, RemoteIndex):
        return faiss.clone_binary_index(index)  # type: ignore[attr-defined]  # faiss's stubs lack it
    return clone_index(index, name=name)


def open_index(name: str) -> RemoteIndex:
    """Re-attach to the named index ``name`` of this tenant."""
    return _open(_require_client("open_index"), name)


def _open(client: Client, name: str) -> RemoteIndex:
    info, _ = client.call("info", name)
    return _attach(client, IndexSpec.model_validate(info["spec"]), name, info)


def index_factory(
    d: int,
    description: str,
    metric: int = faiss.METRIC_L2,
    *,
    name: str | None = None,
    shards: int | None = None,
    replicas: int | None = None,
) -> Any:
    """faiss.index_factory; in remote mode the server builds the index from the same string
    (``shards``/``replicas``: its placement with ``--backend ray``)."""
    client = get_client()
    if client is None:
        return optimization.build_local(
            lambda a, _k: faiss.index_factory(*a), (d, description, metric), {}
        )
    spec = _registry.index_type("index_factory").bind((d, description, metric), {})
    return _attach(client, spec, name, placement=_placement(shards, replicas))


def index_binary_factory(d: int, description: str, *, name: str | None = None) -> Any:
    client = get_client()
    if client is None:
        return optimization.build_local(
            lambda a, _k: faiss.index_binary_factory(*a), (d, description), {}
        )
    spec = _registry.index_type("index_binary_factory").bind((d, description), {})
    return _attach(client, spec, name)


# -- persistence: faiss's own functions locally, real faiss bytes to and from the server ------


def _not_serializable(index: Any) -> None:
    """faiss cannot write its sharding wrappers; neither can a client-held one be written."""
    if isinstance(index, shards.ThreadedIndex):
        raise UnsupportedOperation(
            f"{index.faiss_name} cannot be serialized (faiss does not know how either): "
            "write its sub-indices (index.at(i)) one by one"
        )


def serialize_index(index: Any) -> Any:
    _not_serializable(index)
    if isinstance(index, RemoteIndex):
        return index.serialize()
    return faiss.serialize_index(gpu_module.to_cpu(index))


def serialize_index_binary(index: Any) -> Any:
    _not_serializable(index)
    if isinstance(index, RemoteIndex):
        return index.serialize()
    return faiss.serialize_index_binary(index)


def deserialize_index(data: Any, *, name: str | None = None, spec: Any = None) -> Any:
    """Remote mode: upload the bytes as a new index (named if ``name``); local: faiss's own."""
    client = get_client()
    if client is None:
        optimization.memory_manager.check_create(len(data))
        return optimization.adopt_local(faiss.deserialize_index(data))
    return _upload(client, data, name, spec)


def deserialize_index_binary(data: Any, *, name: str | None = None) -> Any:
    client = get_client()
    if client is None:
        optimization.memory_manager.check_create(len(data))
        return optimization.adopt_local(faiss.deserialize_index_binary(data))
    return _upload(client, data, name, None)


def write_index(index: Any, path: Any, *args: Any) -> None:
    """A remote index is written locally as the same faiss file ``faiss.read_index`` opens."""
    _not_serializable(index)
    if not isinstance(index, RemoteIndex):
        return faiss.write_index(gpu_module.to_cpu(index), path, *args)
    data = np.ascontiguousarray(index.serialize())
    if isinstance(path, faiss.IOWriter):  # a VectorIOWriter, a PyCallbackIOWriter, ...
        write: Any = path  # faiss's stubs lack IOWriter.__call__ (the bytes, 1, how many)
        if len(data) and write(faiss.swig_ptr(data), 1, len(data)) != len(data):
            raise OSError(f"{type(path).__name__} took fewer than the index's {len(data)} bytes")
        return None
    with open(path, "wb") as out:
        out.write(data.tobytes())
    return None


def write_index_binary(index: Any, path: Any) -> None:
    _not_serializable(index)
    if not isinstance(index, RemoteIndex):
        return faiss.write_index_binary(index, path)
    return write_index(index, path)


def read_index(path: Any, io_flags: int = 0, *, name: str | None = None) -> Any:
    """faiss.read_index locally (memory-mapped with ``use_memory_mapping``); remote: uploads."""
    client = get_client()
    if client is None:
        return _read_local(faiss.read_index, path, io_flags)
    if isinstance(path, faiss.IOReader):
        return _upload(client, _reader_bytes(path, io_flags, binary=False), name, None)
    with open(path, "rb") as src:
        return _upload(client, src.read(), name, None)


def read_index_binary(path: Any, io_flags: int = 0, *, name: str | None = None) -> Any:
    client = get_client()
    if client is None:
        return _read_local(faiss.read_index_binary, path, io_flags)
    if isinstance(path, faiss.IOReader):
        return _upload(client, _reader_bytes(path, io_flags, binary=True), name, None)
    return read_index(path, io_flags, name=name)


def _reader_bytes(reader: Any, io_flags: int, binary: bool) -> np.ndarray:
    """The faiss bytes of the next index in a faiss ``IOReader`` (a ``VectorIOReader``, ...).

    A reader hands out bytes only as faiss parses them, so faiss reads the index here (a local
    copy, for as long as this call) and serializes it again for the upload."""
    if binary:
        return np.ascontiguousarray(
            faiss.serialize_index_binary(faiss.read_index_binary(reader, io_flags))
        )
    return np.ascontiguousarray(faiss.serialize_index(faiss.read_index(reader, io_flags)))


def _read_local(reader: Any, path: Any, io_flags: int) -> Any:
    manager = optimization.memory_manager
    flags = io_flags | manager.io_flags(path)
    mapped = [f for f in (faiss.IO_FLAG_MMAP, getattr(faiss, "IO_FLAG_MMAP_IFC", 0)) if f]
    if not any(flags & f == f for f in mapped):
        try:  # a mapped file is not loaded into memory: only a copied one counts
            manager.check_create(os.path.getsize(path))
        except (OSError, TypeError):
            manager.check_create()
    index = optimization.adopt_local(reader(path, flags))
    if any(flags & f == f for f in mapped):
        optimization.mark_mapped(index)  # its first write copies it into memory
    return index


def _upload(client: Client, data: Any, name: str | None, spec: Any) -> RemoteIndex:
    raw = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data, dtype=np.uint8)
    spec = (
        IndexSpec.model_validate(spec)
        if spec is not None
        else IndexSpec(type=IMPORTED.name, params={"faiss_class": "unknown until uploaded"})
    )
    return _attach(client, spec, name, op="import", data=np.ascontiguousarray(raw))


def _unpickle_index(spec: dict[str, Any], data: bytes) -> Any:
    """Restore a pickled proxy: remote where configured, else a plain faiss index."""
    if get_client() is None:
        arr = np.frombuffer(data, dtype=np.uint8)
        try:
            return faiss.deserialize_index(arr)
        except RuntimeError:
            return faiss.deserialize_index_binary(arr)
    return deserialize_index(data, spec=spec)


# -- faiss helpers that must see through proxies ------------------------------------------------


class ParameterSpace(faiss.ParameterSpace):
    """faiss.ParameterSpace that also sets runtime parameters of remote indices.

    It speaks faiss's parameter names (``ht`` is the ``polysemous_ht`` runtime parameter) and,
    like faiss, raises RuntimeError for a parameter the index does not have.
    """

    #: faiss ParameterSpace name -> the runtime parameter the families declare
    ALIASES: ClassVar[dict[str, str]] = {"ht": "polysemous_ht"}

    def set_index_parameter(self, index: Any, name: str, value: Any) -> None:
        if not isinstance(index, RemoteIndex):
            super().set_index_parameter(index, name, value)
            return
        param = self.ALIASES.get(name, name)
        if param not in index._runtime_params() and name.startswith("quantizer_"):
            # as faiss does: the rest of the name is a parameter of the IVF's quantizer
            self._set_on_quantizer(index, name.removeprefix("quantizer_"), value)
            return
        if param not in index._runtime_params():
            raise FaissError(f"could not set parameter {name} on {type(index).__name__}")
        if name == "ht" and "search_type" in index._runtime_params():
            # as faiss does
            index.set_parameter("search_type", faiss.IndexPQ.ST_polysemous)  # type: ignore[attr-defined]  # faiss's stubs lack it
        index.set_parameter(param, value)

    @staticmethod
    def _set_on_quantizer(index: RemoteIndex, name: str, value: Any) -> None:
        for path in (f"@ivf.quantizer.{name}", f"@ivf.quantizer.hnsw.{name}"):
            try:
                views.set_value(index, path, name, value)
                return
            except (InvalidArgument, AttributeError, UnsupportedOperation):
                continue
        raise FaissError(f"could not set parameter quantizer_{name} on {type(index).__name__}")

    # faiss's stubs lack the @overload on ParameterSpace.set_index_parameters (int | str)
    def set_index_parameters(self, index: Any, description: str) -> None:  # type: ignore[override]
        if not isinstance(index, RemoteIndex):
            super().set_index_parameters(index, description)  # type: ignore[arg-type]
            return
        for item in filter(None, description.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgument(f"parameter {item!r} is not name=value")
            index.set_parameter(key.strip(), float(value) if "." in value else int(value))


_REMOTE = (RemoteIndex, ParamNamespace, RemoteView)


def member_proxy(obj: Any) -> Any:
    """An index inside a remote index (``index.quantizer``, ``index.index``) as a proxy of its
    own faiss class, as ``faiss.downcast_index`` hands out locally: ``type(q) is
    faiss.IndexHNSWFlat``, and reads, searches and knob writes reach that member on the
    server (proxy.RemoteIndex._member_call). Anything else is returned as it is."""
    if isinstance(obj, RemoteView):
        owner, path, described = obj._proxy, obj._path, obj._described
    elif isinstance(obj, ParamNamespace):
        owner, path = obj._proxy, obj._prefix
        described = owner._call("get_attr", {"path": path})[0]
    else:
        return obj
    if described.get("kind") != "index":
        return obj
    name = f"{owner.name}.{path}"
    info = member_info(name, described)
    proxy = type.__call__(RemoteIndex, owner._client, IndexSpec(**info["spec"]), info=info)
    object.__setattr__(proxy, "_member", (owner, path))
    object.__setattr__(proxy, "_name", name)
    object.__setattr__(proxy, "__class__", _proxy_class(info))
    return proxy


def _downcaster(name: str) -> Any:
    def downcast(obj: Any) -> Any:
        """Proxies already are their server-side object's class; an index inside one comes
        back as a proxy of its own class (member_proxy), other remote views as they are."""
        if isinstance(obj, shards.ThreadedIndex):  # a client-held wrapper is its own class
            return obj
        if isinstance(obj, _REMOTE):
            return member_proxy(obj) if name in ("downcast_index", "downcast_IndexBinary") else obj
        return getattr(faiss, name)(obj)

    downcast.__name__ = downcast.__qualname__ = name
    return downcast


downcast_index = _downcaster("downcast_index")
downcast_IndexBinary = _downcaster("downcast_IndexBinary")
downcast_InvertedLists = _downcaster("downcast_InvertedLists")
downcast_VectorTransform = _downcaster("downcast_VectorTransform")


def extract_index_ivf(index: Any) -> Any:
    """The IVF index inside ``index``; for a remote one, the proxy itself when it is the IVF
    (so ``nprobe`` and friends stay runtime parameters), else a remote view of the IVF."""
    if not isinstance(index, _REMOTE):
        return faiss.extract_index_ivf(index)
    ivf_classes = (faiss.IndexIVF, faiss.IndexBinaryIVF)
    if isinstance(index, RemoteIndex) and issubclass(class_of(index) or object, ivf_classes):
        return index
    proxy, path = (
        (index, "")
        if isinstance(index, RemoteIndex)
        else (index._proxy, index._path if isinstance(index, RemoteView) else index._prefix)
    )
    try:
        return views.fetch(proxy, views.join(path, "@ivf"))
    except UnsupportedOperation as exc:
        raise RuntimeError(str(exc)) from None  # what faiss raises for a non-IVF index


def try_extract_index_ivf(index: Any) -> Any:
    if not isinstance(index, _REMOTE):
        return faiss.try_extract_index_ivf(index)
    try:
        return extract_index_ivf(index)
    except RuntimeError:
        return None


def swig_ptr(array: Any) -> Any:
    """faiss.swig_ptr; in remote mode the array is remembered, so a selector built on the
    pointer can send its ids (faissx_client/pointers.py)."""
    ptr = faiss.swig_ptr(array)
    if get_client() is not None:
        pointers.remember(ptr, array)
    return ptr


def vector_to_array(v: Any) -> Any:
    """faiss.vector_to_array; a vector read from a remote index is already numpy inside."""
    return v.array.copy() if isinstance(v, RemoteVector) else faiss.vector_to_array(v)


def vector_float_to_array(v: Any) -> Any:
    """faiss.vector_float_to_array (the older spelling), remote vectors included."""
    return v.array.copy() if isinstance(v, RemoteVector) else faiss.vector_float_to_array(v)


def copy_array_to_vector(a: Any, v: Any) -> None:
    """faiss.copy_array_to_vector; a vector read from a remote index (``index.sq.trained``,
    ``index.pq.centroids``) is overwritten on the server, which checks its size first."""
    if isinstance(v, RemoteVector):
        v.assign(np.asarray(a))
        return
    faiss.copy_array_to_vector(a, v)


def rev_swig_ptr(ptr: Any, n: int) -> Any:
    """faiss.rev_swig_ptr; remote views hand out arrays (``get_ids``) where faiss has
    pointers, so those are cut to ``n`` here."""
    if isinstance(ptr, np.ndarray):
        return ptr[:n]
    return faiss.rev_swig_ptr(ptr, n)


def list_indexes() -> list[dict[str, Any]]:
    """This tenant's named indices: name, type, d, ntotal, ... per index."""
    return _list(_require_client("list_indexes"))


def _list(client: Client) -> list[dict[str, Any]]:
    return client.call("list")[0]["indexes"]


def delete_index(name: str) -> None:
    """Delete the named index ``name`` (and, with a data directory, its files)."""
    _delete(_require_client("delete_index"), name)


def _delete(client: Client, name: str) -> None:
    try:
        client.call("delete", name)
    finally:
        vector_cache.invalidate((client.transport.session, name))


# -- selectors: real faiss locally, data remotely ---------------------------------------------


def IDSelectorRange(imin: int, imax: int, assume_sorted: bool = False) -> Any:
    """Ids in ``[imin, imax)``."""
    if get_client() is None:
        return faiss.IDSelectorRange(imin, imax, assume_sorted)
    return RemoteSelector(
        SelectorSpec(kind="range", imin=imin, imax=imax, assume_sorted=bool(assume_sorted))
    )


def IDSelectorBitmap(*args: Any) -> Any:
    """Ids whose bit is set: ``IDSelectorBitmap(bitmap)`` or ``IDSelectorBitmap(n, bitmap)``
    (``n`` bytes; bit ``i % 8`` of byte ``i // 8`` is id ``i``)."""
    if get_client() is None:
        return faiss.IDSelectorBitmap(*args)
    behind = pointers.array(args[-1])
    bitmap = np.asarray(behind if behind is not None else args[-1])
    if bitmap.dtype != np.uint8 or bitmap.ndim != 1:
        raise InvalidArgument(
            "IDSelectorBitmap takes a 1-d uint8 array (np.packbits, bitorder='little')"
        )
    if len(args) == 2:
        bitmap = bitmap[: int(args[0])]
    return RemoteSelector(SelectorSpec(kind="bitmap"), np.ascontiguousarray(bitmap))


def IDSelectorNot(sel: Any) -> Any:
    """Ids ``sel`` does not select."""
    return combination("not", faiss.IDSelectorNot, (sel,), get_client() is not None)


def IDSelectorAnd(lhs: Any, rhs: Any) -> Any:
    return combination("and", faiss.IDSelectorAnd, (lhs, rhs), get_client() is not None)


def IDSelectorOr(lhs: Any, rhs: Any) -> Any:
    return combination("or", faiss.IDSelectorOr, (lhs, rhs), get_client() is not None)


def IDSelectorXOr(lhs: Any, rhs: Any) -> Any:
    return combination("xor", faiss.IDSelectorXOr, (lhs, rhs), get_client() is not None)


def IDSelectorTranslated(*args: Any) -> Any:
    """``IDSelectorTranslated(index_idmap, sel)`` or ``(id_map, sel)``: ``sel`` asked about
    the external ids an id map gives an index's internal numbers."""
    if get_client() is None and not any(isinstance(a, RemoteSelector | RemoteIndex) for a in args):
        return faiss.IDSelectorTranslated(*args)
    if len(args) != 2:
        raise InvalidArgument("IDSelectorTranslated takes (index or id_map, selector)")
    return translated_selector(*args)


def PyCallbackIDSelector(callback: Any) -> Any:
    """A selector that asks a Python function; in remote mode it is evaluated here over the
    index's ids before each call (selection.CallbackSelector says how, and its bound)."""
    if get_client() is None:
        return faiss.PyCallbackIDSelector(callback)  # type: ignore[attr-defined]  # faiss's stubs lack it
    return CallbackSelector(callback)


def IDSelectorBatch(*args: Any) -> Any:
    """Ids in a set: ``IDSelectorBatch(ids)`` or ``IDSelectorBatch(n, ids)``."""
    return _id_set("batch", faiss.IDSelectorBatch, args)


def IDSelectorArray(*args: Any) -> Any:
    """Ids in an array: ``IDSelectorArray(ids)`` or ``IDSelectorArray(n, ids)``."""
    return _id_set("array", faiss.IDSelectorArray, args)


def _id_set(kind: str, local: Any, args: tuple[Any, ...]) -> Any:
    if get_client() is None:
        return local(*args)
    behind = pointers.array(args[-1])  # IDSelectorArray(n, faiss.swig_ptr(ids))
    ids = _ids(behind if behind is not None else args[-1])
    if len(args) == 2:
        ids = ids[: int(args[0])]
    return RemoteSelector(SelectorSpec(kind=kind), ids)


#: ``faiss.cvar``: faiss's own globals, except ``indexIVF_stats`` in remote mode (ivf_stats.py).
cvar = CVar(lambda: get_client())


# -- inverted-list wrappers: faiss's own over local lists, built on the server over remote ones -


def CappedInvertedLists(il: Any, maxsize: int) -> Any:
    """Each list of ``il`` read as at most ``maxsize`` entries (writes pass through)."""
    return _wrapped_lists("CappedInvertedLists", il, maxsize)


def StopWordsInvertedLists(il: Any, maxsize: int) -> Any:
    """Lists of ``il`` longer than ``maxsize`` read as empty (their "stop words")."""
    return _wrapped_lists("StopWordsInvertedLists", il, maxsize)


def SliceInvertedLists(*args: Any) -> Any:
    return _shared_lists("SliceInvertedLists", args)


def VStackInvertedLists(*args: Any) -> Any:
    return _shared_lists("VStackInvertedLists", args)


def HStackInvertedLists(*args: Any) -> Any:
    return _shared_lists("HStackInvertedLists", args)


def __getattr__(name: str) -> Any:
    """Everything FAISSx does not proxy is faiss's own, except indices in remote mode."""
    try:
        value = getattr(faiss, name)
    except AttributeError:
        raise AttributeError(f"module 'faissx_client' (faiss) has no attribute {name!r}") from None
    if (
        isinstance(value, type)
        and issubclass(value, faiss.Index | faiss.IndexBinary)
        and get_client() is not None
    ):
        return _generic_class(name) or _not_served(name)
    return value


def _not_served(name: str) -> Any:
    """Remote mode never builds a local index: a faiss index class no plugin serves refuses."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOperation(
            f"{name} is not available in remote mode: no plugin on this client provides it, "
            "and the generic family is not installed "
            "(index_factory may build it on the server, or call disconnect() for local mode)"
        )

    refuse.__name__ = refuse.__qualname__ = name
    return refuse


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(faiss)))
