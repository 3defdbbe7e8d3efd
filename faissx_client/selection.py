"""ID selectors in remote mode: descriptions the server turns into faiss selectors.

``IDSelectorRange/Batch/Array/Bitmap`` built after ``configure()`` are :class:`RemoteSelector`
objects; ``IDSelectorNot/And/Or/XOr`` combine them (and local faiss selectors whose contents
Python can read: ranges, arrays, bitmaps, and combinations of those, so a bitmap selector
built before ``configure()`` still crosses the wire). faissx_core/selectors.py is the wire
form and the server's builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from faissx_client.pointers import pointers
from faissx_client.views import _Owned
from faissx_core.errors import InvalidArgument, UnsupportedOperation
from faissx_core.selectors import IDS_FRAME, SelectorSpec, combine

Described = tuple[SelectorSpec, dict[str, np.ndarray]]


class RemoteSelector:
    """A remote-mode ID selector: a :class:`SelectorSpec` and the arrays its leaves name."""

    #: ``sel.this.own()``: the Python object owns what it stands for, as faiss's does.
    this = _Owned()

    def __init__(
        self,
        spec: SelectorSpec,
        ids: np.ndarray | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.spec = spec
        self.arrays = dict(arrays or {})
        if ids is not None:
            self.arrays[spec.frame] = ids

    @property
    def ids(self) -> np.ndarray | None:
        return self.arrays.get(self.spec.frame)

    def is_member(self, i: int) -> bool:
        return bool(_member(self.spec, self.arrays, int(i)))

    def find_sorted_ids_bounds(self, n: int, ids: Any, jmin: Any, jmax: Any) -> None:
        """faiss's IDSelectorRange.find_sorted_ids_bounds on pointers from ``swig_ptr``:
        ``[*jmin, *jmax)`` is the part of the sorted ``ids[:n]`` inside ``[imin, imax)``."""
        if self.spec.kind != "range":
            raise AttributeError("find_sorted_ids_bounds is a method of IDSelectorRange")
        sorted_ids, lo, hi = (pointers.array(p) for p in (ids, jmin, jmax))
        if sorted_ids is None or lo is None or hi is None:
            raise InvalidArgument(
                "find_sorted_ids_bounds needs arrays passed through "
                "faiss.swig_ptr (from this module)"
            )
        sorted_ids = sorted_ids[: int(n)]
        imin, imax = self.spec.imin, self.spec.imax
        if not len(sorted_ids) or imax <= sorted_ids[0] or imin > sorted_ids[-1]:
            lo[0] = hi[0] = 0  # as faiss answers a range outside the list
            return
        j0 = int(np.searchsorted(sorted_ids, imin, side="left"))
        j1 = int(np.searchsorted(sorted_ids, imax, side="left"))
        lo[0], hi[0] = j0, max(j0, j1)

    def __repr__(self) -> str:
        return f"<remote IDSelector {self.spec.kind}>"


#: Most ids a callback selector is evaluated on before a remote call (one Python call each).
MAX_CALLBACK_IDS = 1 << 20


class DeferredIds:
    """The ids a Python callback selects, worked out once the index is known: in place of
    an id array until a call on a remote index sends it (see :func:`resolve`)."""

    def __init__(self, callback: Callable[[int], Any]) -> None:
        self.callback = callback

    def select(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) > MAX_CALLBACK_IDS:
            raise UnsupportedOperation(
                f"a PyCallbackIDSelector runs in this process, so FAISSx asks it about each of "
                f"the index's ids before the call, for at most {MAX_CALLBACK_IDS:,} ids (this "
                f"index has {len(ids):,}); use IDSelectorBatch, IDSelectorBitmap or a range"
            )
        keep = [i for i in ids.tolist() if self.callback(i)]
        return np.array(keep, dtype=np.int64)


class CallbackSelector(RemoteSelector):
    """``faiss.PyCallbackIDSelector(fn)`` in remote mode. A callback cannot run on the
    server; a call on a remote index first asks it about every id the index stores (fetched
    with ``export``) and sends the selected ones as an ``IDSelectorBatch``: the same filter,
    evaluated here, once per call rather than once per candidate."""

    def __init__(self, callback: Callable[[int], Any]) -> None:
        if not callable(callback):
            raise InvalidArgument("PyCallbackIDSelector takes a callable")
        super().__init__(SelectorSpec(kind="batch"), arrays={IDS_FRAME: DeferredIds(callback)})  # type: ignore[dict-item]  # resolved before it is sent
        self.callback = callback

    def is_member(self, i: int) -> bool:
        return bool(self.callback(int(i)))


def deferred(arrays: dict[str, Any]) -> bool:
    """Whether some of a call's arrays wait for the index's ids (callback selectors)."""
    return any(isinstance(a, DeferredIds) for a in arrays.values())


def resolve(arrays: dict[str, Any], stored_ids: Callable[[], np.ndarray]) -> dict[str, Any]:
    """``arrays`` with every callback selector's ids worked out over ``stored_ids()``."""
    if not deferred(arrays):
        return arrays
    ids = stored_ids()
    return {k: a.select(ids) if isinstance(a, DeferredIds) else a for k, a in arrays.items()}


def _member(spec: SelectorSpec, arrays: dict[str, np.ndarray], i: int) -> bool:
    kind = spec.kind
    if kind == "translated":
        raise InvalidArgument("IDSelectorTranslated.is_member needs the index's id map")
    if isinstance(arrays.get(spec.frame), DeferredIds):
        return bool(arrays[spec.frame].callback(i))  # type: ignore[attr-defined]  # a DeferredIds here
    if kind == "range":
        return spec.imin <= i < spec.imax
    if kind in ("batch", "array"):
        return bool(np.isin(i, arrays[spec.frame]))
    if kind == "bitmap":
        bitmap = arrays[spec.frame]
        return 0 <= i < 8 * len(bitmap) and bool(bitmap[i >> 3] >> (i & 7) & 1)
    values = [_member(c, arrays, i) for c in spec.children]
    return {
        "not": lambda: not values[0],
        "and": lambda: values[0] and values[1],
        "or": lambda: values[0] or values[1],
        "xor": lambda: values[0] != values[1],
    }[kind]()


def _referenced(value: Any, count: int) -> list[Any]:
    refs = list(getattr(value, "referenced_objects", []) or [])
    if len(refs) == 1 and isinstance(refs[0], tuple):  # faiss keeps (lhs, rhs) as one entry
        refs = list(refs[0])
    if len(refs) != count:
        raise InvalidArgument(f"the parts of a local {type(value).__name__} cannot be read")
    return refs


def describe_selector(value: Any) -> Described:
    """A remote or local selector as wire data, or InvalidArgument for one Python cannot read
    (a local ``IDSelectorBatch`` keeps its ids in a C++ hash set)."""
    if isinstance(value, RemoteSelector):
        return value.spec, value.arrays
    if isinstance(value, faiss.IDSelectorRange):
        return SelectorSpec(
            kind="range",
            imin=int(value.imin),
            imax=int(value.imax),
            assume_sorted=bool(value.assume_sorted),
        ), {}
    if isinstance(value, faiss.IDSelectorArray):
        ids = faiss.rev_swig_ptr(value.ids, value.n).copy() if value.n else np.empty(0, "int64")  # type: ignore[attr-defined]  # faiss's stubs lack it
        return SelectorSpec(kind="array"), {IDS_FRAME: ids}
    if isinstance(value, faiss.IDSelectorBitmap):
        bitmap = (
            faiss.rev_swig_ptr(value.bitmap, value.n).copy() if value.n else np.empty(0, "uint8")  # type: ignore[attr-defined]  # faiss's stubs lack it
        )
        return SelectorSpec(kind="bitmap"), {IDS_FRAME: bitmap}
    if isinstance(value, faiss.IDSelectorTranslated):
        raise InvalidArgument(
            "a local faiss IDSelectorTranslated cannot be sent to the server (its id map is "
            "C++); create it after configure() over the remote index"
        )
    for kind, cls in (
        ("not", faiss.IDSelectorNot),
        ("and", faiss.IDSelectorAnd),
        ("or", faiss.IDSelectorOr),
        ("xor", faiss.IDSelectorXOr),
    ):
        if isinstance(value, cls):
            count = 1 if kind == "not" else 2
            return combine(kind, [describe_selector(v) for v in _referenced(value, count)])
    raise InvalidArgument(
        f"a local faiss {type(value).__name__} cannot be sent to the server; create it after "
        "configure() so FAISSx can describe it"
    )


def remote_selector(value: Any) -> bool:
    return isinstance(value, RemoteSelector)


def combination(kind: str, local: Any, parts: tuple[Any, ...], remote: bool) -> Any:
    """``IDSelectorNot/And/Or/XOr``: faiss's own over local selectors; a description when
    configured or when a part is remote."""
    if not remote and not any(isinstance(p, RemoteSelector) for p in parts):
        return local(*parts)
    spec, arrays = combine(kind, [describe_selector(p) for p in parts])
    return RemoteSelector(spec, arrays=arrays)


def translated(target: Any, sel: Any) -> RemoteSelector:
    """``IDSelectorTranslated(index, sel)`` over a remote IDMap index (its own id map, on
    the server) or ``IDSelectorTranslated(id_map, sel)`` over an array of external ids."""
    from faissx_client.proxy import RemoteIndex
    from faissx_client.views import RemoteVector

    child = describe_selector(sel)
    if isinstance(target, RemoteIndex):
        inner, arrays = combine_one(child)
        return RemoteSelector(
            SelectorSpec(kind="translated", index=target.name, children=[inner]), arrays=arrays
        )
    id_map = np.asarray(target.array if isinstance(target, RemoteVector) else target)
    if id_map.ndim != 1 or id_map.dtype.kind not in "iu":
        raise InvalidArgument("IDSelectorTranslated takes an IDMap index or a 1-d id array")
    inner, arrays = combine_one(child)
    frame = f"{IDS_FRAME}_{len(arrays) + 1}"
    arrays[frame] = np.ascontiguousarray(id_map, dtype=np.int64)
    return RemoteSelector(
        SelectorSpec(kind="translated", frame=frame, children=[inner]), arrays=arrays
    )


def combine_one(part: Described) -> Described:
    """One described selector with its frames renumbered (``sel_ids_1``, ...), as
    :func:`faissx_core.selectors.combine` numbers a combination's."""
    spec, arrays = combine("not", [part])
    return spec.children[0], arrays
