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
from typing import Any

import faiss

from faissx_client.classes import DropIn, make_class
from faissx_client.client import Client
from faissx_client.proxy import RemoteIndex, RemoteSelector, _ids
from faissx_client.settings import ClientSettings
from faissx_core import __version__
from faissx_core.errors import (
    FaissxError,
    IndexExists,
    IndexNotFound,
    InvalidArgument,
    NotConfigured,
    PermissionDenied,
    ServerUnavailable,
    Unauthenticated,
    UnknownIndexType,
)
from faissx_core.plugins import PluginRegistry
from faissx_core.selectors import SelectorSpec
from faissx_core.specs import IndexSpec

__all__ = [
    "Client", "FaissxError", "IndexExists", "IndexNotFound", "InvalidArgument", "NotConfigured",
    "PermissionDenied", "RemoteIndex", "ServerUnavailable", "Unauthenticated",
    "UnknownIndexType", "__version__", "configure", "delete_index", "disconnect",
    "get_client", "is_remote", "list_indexes", "open_index",
]

_client: Client | None = None
_lock = threading.Lock()


def configure(server: str | None = None, api_key: str | None = None,
              tenant_id: str | None = None, timeout: float | None = None) -> Client:
    """Switch to remote mode: every index created from now on lives on ``server``.

    Arguments not given come from ``FAISSX_SERVER``, ``FAISSX_API_KEY``, ``FAISSX_TENANT_ID``
    and ``FAISSX_TIMEOUT``. The server is pinged once, so a wrong address or key fails here.
    """
    global _client
    settings = ClientSettings.from_env(server=server, api_key=api_key, tenant_id=tenant_id,
                                       timeout=timeout)
    client = Client(settings)
    try:
        client.call("touch")
    except Exception:
        client.close()
        raise
    with _lock:
        old, _client = _client, client
    if old is not None:
        old.close()
    return client


def disconnect() -> None:
    """Close the remote client and return to local mode (its unnamed indices are dropped)."""
    global _client
    with _lock:
        old, _client = _client, None
    if old is not None:
        old.close()


def get_client() -> Client | None:
    """The configured client, configuring from ``FAISSX_SERVER`` on first use if it is set."""
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
_classes: dict[str, DropIn] = {}
for _itype in _registry.types.values():
    _classes[_itype.name] = globals()[_itype.name] = make_class(_itype, _registry, get_client)


def open_index(name: str) -> RemoteIndex:
    """Re-attach to the named index ``name`` of this tenant."""
    client = _require_client("open_index")
    info, _ = client.call("info", name)
    cls = _classes.get(info["type"], RemoteIndex)
    spec = IndexSpec.model_validate(info["spec"])
    return type.__call__(cls, client, spec, name=name, info=info)


def list_indexes() -> list[dict[str, Any]]:
    """This tenant's named indices: name, type, d, ntotal, ... per index."""
    return _require_client("list_indexes").call("list")[0]["indexes"]


def delete_index(name: str) -> None:
    """Delete the named index ``name`` (and, with a data directory, its files)."""
    _require_client("delete_index").call("delete", name)


# -- selectors: real faiss locally, data remotely ---------------------------------------------

def IDSelectorRange(imin: int, imax: int, assume_sorted: bool = False) -> Any:  # noqa: N802
    """Ids in ``[imin, imax)``."""
    if get_client() is None:
        return faiss.IDSelectorRange(imin, imax, assume_sorted)
    return RemoteSelector(SelectorSpec(kind="range", imin=imin, imax=imax))


def IDSelectorBatch(*args: Any) -> Any:  # noqa: N802
    """Ids in a set: ``IDSelectorBatch(ids)`` or ``IDSelectorBatch(n, ids)``."""
    return _id_set("batch", faiss.IDSelectorBatch, args)


def IDSelectorArray(*args: Any) -> Any:  # noqa: N802
    """Ids in an array: ``IDSelectorArray(ids)`` or ``IDSelectorArray(n, ids)``."""
    return _id_set("array", faiss.IDSelectorArray, args)


def _id_set(kind: str, local: Any, args: tuple[Any, ...]) -> Any:
    if get_client() is None:
        return local(*args)
    ids = _ids(args[-1])
    if len(args) == 2:
        ids = ids[: int(args[0])]
    return RemoteSelector(SelectorSpec(kind=kind), ids)


def __getattr__(name: str) -> Any:
    """Everything FAISSx does not proxy is faiss's own."""
    try:
        return getattr(faiss, name)
    except AttributeError:
        raise AttributeError(f"module 'faissx_client' (faiss) has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(faiss)))
