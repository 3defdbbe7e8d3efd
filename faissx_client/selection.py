"""ID selectors in remote mode: descriptions the server turns into faiss selectors.

``IDSelectorRange/Batch/Array/Bitmap`` built after ``configure()`` are :class:`RemoteSelector`
objects; ``IDSelectorNot/And/Or/XOr`` combine them (and local faiss selectors whose contents
Python can read: ranges, arrays, bitmaps, and combinations of those, so a bitmap selector
built before ``configure()`` still crosses the wire). faissx_core/selectors.py is the wire
form and the server's builder.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from faissx_client.pointers import pointers
from faissx_core.errors import InvalidArgument
from faissx_core.selectors import IDS_FRAME, SelectorSpec, combine

Described = tuple[SelectorSpec, dict[str, np.ndarray]]


class RemoteSelector:
    """A remote-mode ID selector: a :class:`SelectorSpec` and the arrays its leaves name."""

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


def _member(spec: SelectorSpec, arrays: dict[str, np.ndarray], i: int) -> bool:
    kind = spec.kind
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
