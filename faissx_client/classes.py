"""Index classes that are real faiss in local mode and proxies in remote mode.

``faissx_client.IndexFlatL2(d)`` returns a genuine ``faiss.IndexFlatL2`` until ``configure()``
is called, and a :class:`RemoteIndex` proxy afterwards. The choice is made at call time by the
metaclass, so ``from faissx.client import IndexFlatL2`` works whichever happens first, and
``isinstance`` accepts both the faiss object and the proxy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import faiss

from faissx_client.proxy import RemoteComponent, RemoteIndex, describe
from faissx_client.views import RemoteView, class_of
from faissx_core.plugins import PluginRegistry
from faissx_core.specs import IndexSpec, IndexType


def _build_here(build: Callable[[tuple, dict], Any], args: tuple, kwargs: dict) -> Any:
    return build(args, kwargs)


#: How local mode builds an index: ``hook(build, args, kwargs)`` calls ``build(args, kwargs)``
#: (faiss's constructor) and returns what the caller gets. faissx_client.optimization installs
#: one that checks the memory limit, moves the index to the GPU in GPU mode and adds batching.
local_hook: Callable[[Callable[[tuple, dict], Any], tuple, dict], Any] = _build_here


class DropIn(type):
    """Metaclass of the generated classes: dispatches construction on the client's mode."""

    itype: IndexType
    _faiss_cls: type | None
    _registry: PluginRegistry
    _current: Callable[[], Any]

    def __call__(
        cls,
        *args: Any,
        name: str | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        **kwargs: Any,
    ) -> Any:
        client = cls._current()
        itype = cls.itype
        if itype.shorthand is not None:  # e.g. IndexIVFFlat(d, nlist=100): no quantizer
            rewritten = itype.shorthand(args, kwargs)
            if rewritten is not None:
                args, kwargs = rewritten
        if client is None:
            # parts the shorthand describes (a quantizer) are built here, as faiss objects
            args = tuple(cls._registry.build(a) if isinstance(a, IndexSpec) else a for a in args)

            def build(args: tuple, kwargs: dict) -> Any:
                if cls._faiss_cls is not None:  # faiss's own class, with all its overloads
                    return cls._faiss_cls(*args, **kwargs)
                return cls._registry.build(itype.bind(args, kwargs))

            if itype.kind != "index":
                return build(args, kwargs)
            if (shards or 1) > 1 or (replicas or 1) > 1:
                raise TypeError(
                    f"{itype.name}(shards=, replicas=) places a remote index: call "
                    "faissx.client.configure() first"
                )
            return local_hook(build, args, kwargs)
        given = dict(kwargs)
        spec, arrays = cls._describe(args, given)
        if itype.kind == "component":
            if name is not None or shards is not None or replicas is not None:
                raise TypeError(
                    f"{itype.name} is a component; only indices take name=, shards= and replicas="
                )
            return super().__call__(spec, arrays, [*args, *given.values()])
        if arrays:
            raise TypeError(
                f"{itype.name}(): selectors with id arrays cannot be constructor "
                "arguments of a remote index"
            )
        proxy = super().__call__(client, spec, name=name, placement=_placement(shards, replicas))
        # Like faiss's referenced_objects: a proxy given as a part stays alive (and on the
        # server) at least until this index, created lazily, has copied it.
        parts = [a for a in (*args, *given.values()) if isinstance(a, RemoteIndex)]
        object.__setattr__(proxy, "_parts", parts)
        if parts:
            # the indices that parts are members of stay too, until this one has copied
            # them (a loop that rebinds ``index = IndexIVFFlat(quantizer, ...)`` drops the
            # previous index before the new one, created lazily, reaches the server)
            object.__setattr__(proxy, "_sources", [o for p in parts for o in p._owners()])
            _bind_parts(proxy, cls._faiss_cls, parts)
            object.__setattr__(proxy, "_rebuild", lambda: cls._describe(args, given)[0])
        if name is not None:  # a named index exists from the constructor on, as users expect
            proxy._create()
        return proxy

    def _describe(
        cls, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[IndexSpec, dict[str, Any]]:
        """The spec of a constructor call, its proxies and components described (proxy.py)."""
        arrays: dict[str, Any] = {}
        described = []
        for arg in args:
            value, more = describe(arg)
            described.append(value)
            arrays.update(more)
        named = {}
        for key, arg in kwargs.items():
            named[key], more = describe(arg)
            arrays.update(more)
        return cls._bind(tuple(described), named), arrays

    def _bind(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> IndexSpec:
        return cls.itype.bind(args, kwargs)

    def __getattr__(cls, name: str) -> Any:
        """Class constants of faiss's class (``IndexPQ.ST_polysemous``), in both modes."""
        faiss_cls = type.__getattribute__(cls, "_faiss_cls")
        value = getattr(faiss_cls, name, None) if not name.startswith("_") else None
        if isinstance(value, int | float | str):
            return value
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")

    def __instancecheck__(cls, obj: Any) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        if cls._faiss_cls is None:
            return False
        if isinstance(obj, cls._faiss_cls):
            return True
        # a proxy or a view whose server-side object is of (a subclass of) this faiss class
        remote = class_of(obj) if isinstance(obj, RemoteIndex | RemoteView) else None
        return remote is not None and issubclass(remote, cls._faiss_cls)


#: Where a faiss class keeps the indices its constructor takes, in argument order: a proxy
#: handed over unbuilt stands for that member afterwards (RemoteIndex._source_member). The
#: first class the index is an instance of wins; a class not listed binds nothing.
PART_MEMBERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("IndexIVFIndependentQuantizer", ("quantizer", "index_ivf")),
    ("IndexRefine", ("base_index", "refine_index")),
    ("IndexIVF", ("quantizer",)),
    ("IndexBinaryIVF", ("quantizer",)),
    ("Index2Layer", ("q1.quantizer",)),
    ("IndexIDMap", ("index",)),
    ("IndexIDMap2", ("index",)),
    ("IndexBinaryIDMap", ("index",)),
    ("IndexBinaryIDMap2", ("index",)),
    ("IndexPreTransform", ("index",)),
    ("IndexHNSW", ("storage",)),
    ("IndexNSG", ("storage",)),
    ("IndexNNDescent", ("storage",)),
)


def _bind_parts(proxy: RemoteIndex, faiss_cls: type | None, parts: list[RemoteIndex]) -> None:
    """Bind each unbuilt part to the member of ``proxy`` it becomes (see PART_MEMBERS)."""
    members: tuple[str, ...] = ()
    for name, paths in PART_MEMBERS:
        base = getattr(faiss, name, None)
        if faiss_cls is not None and isinstance(base, type) and issubclass(faiss_cls, base):
            members = paths
            break
    owner = weakref.ref(proxy)
    for part, path in zip(parts, members, strict=False):
        if part._info is None and part._bound is None:
            object.__setattr__(part, "_bound", (owner, path))


def make_class(itype: IndexType, registry: PluginRegistry, current: Callable[[], Any]) -> type:
    faiss_cls = getattr(faiss, itype.name, None)
    base = RemoteComponent if itype.kind == "component" else RemoteIndex
    return DropIn(
        itype.name,
        (base,),
        {
            "itype": itype,
            "_faiss_cls": faiss_cls if isinstance(faiss_cls, type) else None,
            "_registry": registry,
            "_current": staticmethod(current),
            "__doc__": itype.doc or f"{itype.name} from plugin family {itype.family!r}.",
            "__module__": "faissx_client",
        },
    )


class GenericDropIn(DropIn):
    """Metaclass of faiss index classes no family declares, served by the generic family.

    The spec names the faiss class and carries the constructor's positional arguments as given
    (proxies described as specs), so the server calls the same constructor faiss would.
    """

    _faiss_name: str

    def _bind(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> IndexSpec:
        if kwargs:
            raise TypeError(f"{cls._faiss_name}() takes positional arguments only in remote mode")
        params = {"cls": cls._faiss_name, "args": list(args)}
        return IndexSpec(type=cls.itype.name, params=cls.itype.validate_params(params).model_dump())


def make_generic_class(
    faiss_name: str, itype: IndexType, registry: PluginRegistry, current: Callable[[], Any]
) -> type:
    """The drop-in class for faiss's ``faiss_name``, built remotely by the generic ``itype``."""
    faiss_cls = getattr(faiss, faiss_name)
    kind = "binary" if issubclass(faiss_cls, faiss.IndexBinary) else "float"
    return GenericDropIn(
        faiss_name,
        (RemoteIndex,),
        {
            "itype": itype.model_copy(update={"vector_kind": kind}),
            "_faiss_cls": faiss_cls,
            "_faiss_name": faiss_name,
            "_registry": registry,
            "_current": staticmethod(current),
            "__doc__": f"faiss.{faiss_name}, served remotely by the {itype.family!r} family.",
            "__module__": "faissx_client",
        },
    )


def _placement(shards: int | None, replicas: int | None) -> dict[str, int]:
    """``create``'s wire arguments for a per-index placement (``--backend ray``)."""
    placement = {}
    for key, value in (("shards", shards), ("replicas", replicas)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
            placement[key] = value
    return placement
