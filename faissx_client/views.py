"""Remote views: the structure inside a remote index, read and tuned as faiss users do.

``index.invlists``, ``index.pq``, ``index.quantizer``, ``index.hnsw.levels`` on a proxy are
not local objects: each read asks the server (``get_attr``) for the value at that dotted path.
Scalars come back as Python values, numeric ``std::vector``s as :class:`RemoteVector` (which
``faiss.vector_to_array`` turns into numpy, as faiss does), and objects as :class:`RemoteView`,
which reads further, calls read-only methods (``list_size``, ``get_ids``, ``search`` on a
quantizer, ...; ``call_attr``) and sets tuning knobs (``set_attr``). faissx_core/attrs.py says
what the server lets a path reach. A view is live: it re-reads on every access.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from faissx_core.attrs import (
    FLAGS,
    OBJECT_MEMBERS,
    READ_METHODS,
    VECTOR_MEMBERS,
    WRITABLE,
    pack,
)
from faissx_core.errors import InvalidArgument

if TYPE_CHECKING:
    from faissx_client.proxy import RemoteIndex


class RemoteVector:
    """A numeric ``std::vector`` read from a remote index: ``size()``, ``at(i)``, numpy."""

    def __init__(
        self, array: np.ndarray, cls: str, proxy: RemoteIndex | None = None, path: str = ""
    ) -> None:
        self.array = array
        self.faiss_class = cls
        #: Where it was read (``faiss.copy_array_to_vector`` writes it back there).
        self.origin = (proxy, path)

    def assign(self, values: np.ndarray) -> None:
        """Overwrite the vector on the server (``faiss.copy_array_to_vector``)."""
        proxy, path = self.origin
        if proxy is None:
            raise InvalidArgument(f"this {self.faiss_class} was not read from a remote index")
        set_value(proxy, path, path.rpartition(".")[2], np.ascontiguousarray(values).ravel())
        self.array = np.array(values, dtype=self.array.dtype).ravel()

    def size(self) -> int:
        return len(self.array)

    def at(self, i: int) -> Any:
        return self.array[i].item()

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: Any) -> Any:
        return self.array[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.array)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)

    def __repr__(self) -> str:
        return f"<remote {self.faiss_class} of {len(self.array)}>"


#: Members a remote index takes assignments to beyond its tuning knobs (attrs.py checks them).
ASSIGNABLE = FLAGS | OBJECT_MEMBERS | VECTOR_MEMBERS


def join(path: str, step: str) -> str:
    return f"{path}.{step}" if path and step else path or step


def fetch(proxy: RemoteIndex, path: str) -> Any:
    """The value at ``path`` of ``proxy``'s server-side index, as faiss would hand it out."""
    try:
        result, arrays = proxy._call("get_attr", {"path": path})
    except InvalidArgument as exc:  # not a data member: what getattr says in faiss
        raise AttributeError(str(exc)) from None
    return _value(proxy, path, result, arrays)


def _value(proxy: RemoteIndex, path: str, result: dict[str, Any], arrays: dict) -> Any:
    kind = result["kind"]
    if kind == "scalar":
        return result["value"]
    if kind == "none":
        return None
    if kind == "array":
        return arrays["value"]
    if kind == "tuple":
        return tuple(arrays[str(i)] for i in range(int(result["n"])))
    if kind == "vector":
        return RemoteVector(arrays["value"], result["class"], proxy, path)
    return RemoteView(proxy, path, result)


class RemoteView:
    """An object at a dotted path inside a remote index (an ``IndexIVF``'s ``invlists``...).

    ``faiss_class`` names what it is on the server; ``isinstance(view, faiss.IndexFlatL2)``
    answers by that class. Attribute reads and method calls go to the server each time.
    """

    def __init__(self, proxy: RemoteIndex, path: str, described: dict[str, Any]) -> None:
        object.__setattr__(self, "_proxy", proxy)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_described", described)

    @property
    def faiss_class(self) -> str:
        return str(self._described.get("class", "?"))

    def precompute_table(self) -> None:
        """``IndexIVFPQ.precompute_table()``: rebuilt on the server (a logged write)."""
        assign_value(self._proxy, join(self._path, "precompute_table"), "call", {}, None)

    def _method(self, name: str) -> Any:
        def call(*args: Any, include_listnos: bool | None = None) -> Any:
            arrays: dict[str, np.ndarray] = {}
            ints = list(args)
            if READ_METHODS[name] is None:  # search(x, k), assign(x, k), sa_encode(x), ...
                binary = self._described.get("binary") or name == "sa_decode"
                x = np.ascontiguousarray(args[0], dtype="uint8" if binary else "float32")
                arrays, ints = {"x": x}, list(args[1:3])
                if include_listnos is not None:  # search_and_return_codes
                    ints = [*ints[:1], int(include_listnos)]
            result, out = self._proxy._call(
                "call_attr",
                {"path": self._path, "method": name, "args": [int(i) for i in ints]},
                arrays,
            )
            return _value(self._proxy, self._path, result, out)

        call.__name__ = name
        return call

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        if attr in READ_METHODS:
            return self._method(attr)
        return fetch(self._proxy, join(self._path, attr))

    def __setattr__(self, attr: str, value: Any) -> None:
        set_value(self._proxy, join(self._path, attr), attr, value)

    # a std::vector of objects (an IndexPreTransform's chain)
    def at(self, i: int) -> Any:
        return fetch(self._proxy, join(self._path, f"#{int(i)}"))

    def __len__(self) -> int:
        if self._described.get("kind") != "list":
            raise TypeError(f"remote {self.faiss_class} has no len()")
        return int(self._described["size"])

    def __getitem__(self, i: int) -> Any:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.at(i % len(self))

    def __repr__(self) -> str:
        return f"<remote view {self.faiss_class} at {self._path or '.'} of {self._proxy!r}>"


def set_value(proxy: RemoteIndex, path: str, leaf: str, value: Any) -> None:
    """``obj.<leaf> = value`` at ``path``: a tuning knob or a checked flag (``is_trained``)
    by value, a structural member (``pq``, ``quantizer``, ``sq.trained``...) by what
    :func:`pack_value` makes of the new value; other members refused."""
    if isinstance(value, np.generic):
        value = value.item()
    scalar = isinstance(value, bool | int | float | str)
    if leaf in WRITABLE or (leaf in FLAGS and scalar):
        try:
            proxy._call("set_attr", {"path": path, "value": value})
        finally:
            proxy._mutated()
        return
    if leaf in OBJECT_MEMBERS or leaf in VECTOR_MEMBERS:
        kind, fields, data = pack_value(value)
        assign_value(proxy, path, kind, fields, data)
        return
    raise AttributeError(
        f"{leaf!r} cannot be set on a remote index: tuning knobs "
        f"({', '.join(sorted(WRITABLE)[:6])}, ...), the flags {', '.join(sorted(FLAGS))} and "
        f"the members {', '.join(sorted(OBJECT_MEMBERS | VECTOR_MEMBERS))} can"
    )


def assign_value(
    proxy: RemoteIndex, path: str, kind: str, fields: dict[str, Any], data: np.ndarray | None
) -> None:
    """Send a packed value for the member at ``path`` (the server checks that it fits)."""
    try:
        proxy._call(
            "assign_attr",
            {"path": path, "kind": kind, "fields": fields},
            {"data": data} if data is not None else None,
        )
    finally:
        proxy._mutated()


def pack_value(value: Any) -> tuple[str, dict[str, Any], np.ndarray | None]:
    """A new member value as (kind, fields, data): a remote object is packed by its server
    (``pack_attr``) and travels through this client, so the target's write log holds the
    very bytes it applied; a local faiss object is packed here the same way (attrs.pack)."""
    from faissx_client.proxy import ParamNamespace, RemoteIndex

    if isinstance(value, RemoteVector):
        return "vector", {}, value.array
    if isinstance(value, np.ndarray):
        return "vector", {}, np.ascontiguousarray(value).ravel()
    source: tuple[Any, str] | None = None
    if isinstance(value, RemoteView):
        source = (value._proxy, value._path)
    elif isinstance(value, ParamNamespace):
        source = (value._proxy, value._prefix)
    elif isinstance(value, RemoteIndex):
        source = (value, "")
    if source is not None:
        result, out = source[0]._call("pack_attr", {"path": source[1]})
        return str(result["kind"]), dict(result.get("fields") or {}), out.get("data")
    return pack(value)


def class_of(obj: Any) -> type | None:
    """faiss's class for a proxy or a view (by the name the server reported), else None."""
    if isinstance(obj, RemoteView):
        name: str | None = obj.faiss_class
    else:
        info = getattr(obj, "_info", None)
        name = info.get("faiss_class") if isinstance(info, dict) else None
    cls = getattr(faiss, str(name), None) if name else None
    return cls if isinstance(cls, type) else None


class _Owned:
    """``dc.this``: the Python object owns what it stands for (faiss's tests check it)."""

    @staticmethod
    def own() -> bool:
        return True


class RemoteDistanceComputer:
    """``index.get_distance_computer()`` of a remote index: ``set_query(x)``, ``dc(i)``,
    ``dc.symmetric_dis(i, j)``, each distance computed on the server by faiss's own
    distance computer (so codes are compared as the index compares them)."""

    this = _Owned()

    def __init__(self, proxy: RemoteIndex, path: str, flat: bool) -> None:
        self._proxy, self._path, self._flat = proxy, path, flat
        self._query: np.ndarray | None = None

    def set_query(self, x: Any) -> None:
        from faissx_client.pointers import pointers  # the array behind faiss.swig_ptr(x)

        behind = pointers.array(x)
        query = np.asarray(behind if behind is not None else x, dtype="float32").reshape(-1)
        self._query = np.ascontiguousarray(query[None, :])

    def _ask(self, method: str, ids: list[int], query: np.ndarray | None) -> np.ndarray:
        arrays = {"ids": np.asarray(ids, dtype="int64")}
        if query is not None:
            arrays["x"] = query
        _, out = self._proxy._call(
            "call_attr",
            {"path": self._path, "method": method, "args": [int(self._flat)]},
            arrays,
        )
        return out["value"]

    def __call__(self, i: int) -> float:
        if self._query is None:
            raise InvalidArgument("set_query() first")
        return float(self._ask("distances", [int(i)], self._query)[0])

    def distances(self, ids: Any) -> np.ndarray:
        """Distances of the query to many stored ids in one request (FAISSx's addition)."""
        if self._query is None:
            raise InvalidArgument("set_query() first")
        return self._ask("distances", list(np.asarray(ids).reshape(-1)), self._query)

    def symmetric_dis(self, i: int, j: int) -> float:
        return float(self._ask("symmetric_dis", [int(i), int(j)], None)[0])
