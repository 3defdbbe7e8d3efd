"""Remote indices: objects that look like faiss indices and run every call on the server.

A proxy's server-side index is created on first use, not in the constructor: an index that is
only ever described (an IVF's quantizer, say) never becomes a server object of its own. A proxy
built with ``name=`` is created at once and is durable; an unnamed one belongs to this client's
session and is dropped when the proxy is garbage-collected or the client goes away.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import faiss
import numpy as np

from faissx_core.errors import InvalidArgument, UnknownParameter
from faissx_core.selectors import IDS_FRAME, SelectorSpec
from faissx_core.specs import IndexSpec, IndexType

if TYPE_CHECKING:
    from faissx_client.client import Client

_anon = itertools.count(1)

#: Attributes every proxy answers from the server; faiss lets you read, not meaningfully set them.
READ_ONLY = frozenset({"d", "ntotal", "is_trained", "metric_type", "name", "spec"})


class RemoteIndex:
    """Base of every proxy class; ``itype`` is set on the generated per-type subclasses."""

    itype: ClassVar[IndexType | None] = None

    def __init__(self, client: Client, spec: IndexSpec, name: str | None = None,
                 info: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_client", client)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_named", name is not None)
        object.__setattr__(self, "_name", name or f"anon-{client.transport.session[:12]}-{next(_anon)}")
        object.__setattr__(self, "_info", info)
        object.__setattr__(self, "_create_lock", threading.Lock())
        if name is not None and info is None:
            self._create()

    # -- lifecycle ---------------------------------------------------------------------------
    def _create(self) -> dict[str, Any]:
        with self._create_lock:  # threads sharing a fresh proxy create it once
            if self._info is not None:
                return self._info
            client = self._client
            info, _ = client.call("create", self._name, {"spec": self._spec.model_dump(),
                                                         "ephemeral": not self._named})
            object.__setattr__(self, "_info", info)
            if not self._named:
                client.adopt_anonymous(self._name)
                weakref.finalize(self, client.forget_anonymous, self._name)
            return info

    def _call(self, op: str, args: dict[str, Any] | None = None,
              arrays: dict[str, np.ndarray] | None = None) -> tuple[dict[str, Any], dict]:
        if self._info is None:
            self._create()
        return self._client.call(op, self._name, args, arrays)

    @property
    def name(self) -> str:
        """The server-side name (generated for unnamed indices)."""
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

    def __getattr__(self, attr: str) -> Any:
        itype = type(self).itype
        if attr.startswith("_") or itype is None:
            raise AttributeError(attr)
        try:
            itype.runtime_param(attr)
        except UnknownParameter:
            raise AttributeError(
                f"{type(self).__name__!r} remote index has no attribute {attr!r}") from None
        return self.get_parameter(attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in READ_ONLY:
            raise AttributeError(f"{attr!r} of a remote index is read-only")
        itype = type(self).itype
        try:
            if itype is None:
                raise UnknownParameter(attr)
            itype.runtime_param(attr)
        except UnknownParameter:
            raise AttributeError(
                f"{type(self).__name__!r} remote index has no attribute {attr!r}") from None
        self.set_parameter(attr, value)

    def set_parameter(self, name: str, value: Any) -> None:
        """Set a runtime parameter the index type declares (``nprobe``, ``efSearch``, ...)."""
        if type(self).itype is not None:
            value = type(self).itype.runtime_param(name).coerce(value)
        self._call("set_parameter", {"name": name, "value": value})

    def get_parameter(self, name: str) -> Any:
        return self._call("get_parameter", {"name": name})[0]["value"]

    # -- faiss methods -----------------------------------------------------------------------
    def _vectors(self, x: Any) -> np.ndarray:
        binary = type(self).itype is not None and type(self).itype.vector_kind == "binary"
        x = np.ascontiguousarray(x, dtype="uint8" if binary else "float32")
        if x.ndim != 2:
            raise InvalidArgument(f"expected a 2-d array of vectors, got shape {x.shape}")
        return x

    def add(self, x: Any) -> None:
        self._call("add", arrays={"x": self._vectors(x)})

    def add_with_ids(self, x: Any, ids: Any) -> None:
        self._call("add_with_ids", arrays={"x": self._vectors(x), "ids": _ids(ids)})

    def train(self, x: Any) -> None:
        self._call("train", arrays={"x": self._vectors(x)})

    def search(self, x: Any, k: int, *, params: Any = None, D: np.ndarray | None = None,
               I: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: E741
        _no_params(params, "search")
        _, out = self._call("search", {"k": _positive_k(k)}, {"x": self._vectors(x)})
        return _into(D, out["D"]), _into(I, out["I"])

    def assign(self, x: Any, k: int, labels: np.ndarray | None = None) -> np.ndarray:
        _, out = self._call("assign", {"k": _positive_k(k)}, {"x": self._vectors(x)})
        return _into(labels, out["I"])

    def range_search(self, x: Any, thresh: float, *, params: Any = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _no_params(params, "range_search")
        _, out = self._call("range_search", {"radius": float(thresh)}, {"x": self._vectors(x)})
        return out["lims"], out["D"], out["I"]

    def search_and_reconstruct(self, x: Any, k: int, *, params: Any = None,
                               D: np.ndarray | None = None, I: np.ndarray | None = None,  # noqa: E741
                               R: np.ndarray | None = None
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _no_params(params, "search_and_reconstruct")
        _, out = self._call("search_and_reconstruct", {"k": _positive_k(k)},
                            {"x": self._vectors(x)})
        return _into(D, out["D"]), _into(I, out["I"]), _into(R, out["R"])

    def reconstruct(self, key: int, x: np.ndarray | None = None) -> np.ndarray:
        return _into(x, self._call("reconstruct", {"key": int(key)})[1]["x"])

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: np.ndarray | None = None) -> np.ndarray:
        if ni == -1:
            ni = self.ntotal - n0
        return _into(x, self._call("reconstruct_n", {"n0": int(n0), "ni": int(ni)})[1]["x"])

    def reconstruct_batch(self, key: Any, x: np.ndarray | None = None) -> np.ndarray:
        return _into(x, self._call("reconstruct_batch", arrays={"ids": _ids(key)})[1]["x"])

    def remove_ids(self, x: Any) -> int:
        """Remove by an id array or an ``IDSelectorRange``/``Batch``/``Array``; returns the count."""
        selector, arrays = describe_selector(x)
        args = {"selector": selector.model_dump()} if selector is not None else {}
        return int(self._call("remove_ids", args, arrays)[0]["removed"])

    def reset(self) -> None:
        self._call("reset")

    def __repr__(self) -> str:
        kind = "named" if self._named else "unnamed"
        return f"<remote {type(self).__name__} {kind} {self._name!r} on {self._client.server}>"


class RemoteSelector:
    """A remote-mode ``IDSelectorRange``/``IDSelectorBatch``/``IDSelectorArray``: data, not C++."""

    def __init__(self, spec: SelectorSpec, ids: np.ndarray | None = None) -> None:
        self.spec = spec
        self.ids = ids

    def is_member(self, i: int) -> bool:
        if self.spec.kind == "range":
            return self.spec.imin <= i < self.spec.imax
        return bool(self.ids is not None and np.isin(i, self.ids))


def describe_selector(x: Any) -> tuple[SelectorSpec | None, dict[str, np.ndarray]]:
    """An id array, a remote selector, or a readable faiss selector, as (spec, arrays)."""
    if isinstance(x, RemoteSelector):
        return x.spec, ({IDS_FRAME: x.ids} if x.ids is not None else {})
    if isinstance(x, faiss.IDSelectorRange):
        return SelectorSpec(kind="range", imin=int(x.imin), imax=int(x.imax)), {}
    if isinstance(x, faiss.IDSelector):
        raise InvalidArgument(
            f"a local faiss {type(x).__name__} cannot be sent to the server; create it after "
            "configure() so FAISSx can describe it, or pass the ids as an array")
    return None, {"ids": _ids(x)}


def _ids(ids: Any) -> np.ndarray:
    arr = np.ascontiguousarray(ids, dtype="int64")
    if arr.ndim != 1:
        raise InvalidArgument(f"ids must be a 1-d array, got shape {arr.shape}")
    return arr


def _positive_k(k: Any) -> int:
    if int(k) != k or k <= 0:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    return int(k)


def _no_params(params: Any, op: str) -> None:
    if params is not None:
        raise InvalidArgument(f"{op}(params=...) is not supported by remote indices yet")


def _into(dest: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """Honour faiss's optional output arrays (``D=``, ``I=``, ``x=``)."""
    if dest is None:
        return result
    if dest.shape != result.shape:
        raise InvalidArgument(f"output array has shape {dest.shape}, result is {result.shape}")
    dest[...] = result
    return dest
