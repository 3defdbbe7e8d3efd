"""ID selectors as data, so ``remove_ids`` (and search filters) can cross the wire.

faiss's selector objects hide their contents from Python (``IDSelectorBatch`` keeps a C++ hash
set), so a remote client describes the selector instead and the server builds the faiss object.
A description is a small tree: leaves (``range``, ``batch``, ``array``, ``bitmap``), the
combinations faiss has (``not`` of one child; ``and``, ``or``, ``xor`` of two), and
``translated`` (faiss's ``IDSelectorTranslated``: its child is asked about the ids an id map
gives the index's internal numbers; the map is the searched index's own, named by ``index``, or
an array in ``frame``). A leaf's ids (or bitmap bytes) travel as an array frame it names
(``frame``), so a tree of several leaves sends each array once, without copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from faissx_core.errors import InvalidArgument

#: Name of the array frame that carries a (single) selector's ids; leaves of a combination
#: use ``sel_ids_1``, ``sel_ids_2``, ...
IDS_FRAME = "sel_ids"
#: Deepest combination accepted (``Not(And(Or(a, b), c))`` is 3).
MAX_DEPTH = 8
LEAVES = ("batch", "array", "bitmap")
COMBINATIONS = {"not": 1, "and": 2, "or": 2, "xor": 2}


class SelectorSpec(BaseModel):
    """``range``: ids in ``[imin, imax)``; ``batch``/``array``: the ids in frame ``frame``;
    ``bitmap``: id ``i`` selected iff bit ``i % 8`` of byte ``i // 8`` of frame ``frame`` is
    set; ``not``/``and``/``or``/``xor``: faiss's combinations of ``children``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["range", "batch", "array", "bitmap", "not", "and", "or", "xor", "translated"]
    imin: int = Field(0, ge=-(1 << 63), lt=1 << 63)
    imax: int = Field(0, ge=-(1 << 63), lt=1 << 63)
    assume_sorted: bool = False
    frame: str = Field(IDS_FRAME, pattern=r"^sel_ids(_\d{1,4})?$")
    children: list[SelectorSpec] = Field(default_factory=list, max_length=2)
    #: ``translated``: the index (by name) whose id map translates; None: the map is in frame.
    index: str | None = Field(None, min_length=1, max_length=256)


def _own_frame(spec: SelectorSpec) -> bool:
    """Whether ``spec`` itself names an array frame (a leaf, or a map-carrying translation)."""
    return spec.kind in LEAVES or (spec.kind == "translated" and spec.index is None)


def combine(
    kind: str, parts: list[tuple[SelectorSpec, dict[str, np.ndarray]]]
) -> tuple[SelectorSpec, dict[str, np.ndarray]]:
    """The description of ``kind`` over described ``parts``, their frames renumbered so
    that no two leaves share one."""
    if len(parts) != COMBINATIONS[kind]:
        raise InvalidArgument(f"IDSelector{kind.title()} takes {COMBINATIONS[kind]} selectors")
    arrays: dict[str, np.ndarray] = {}

    def renumber(spec: SelectorSpec, own: dict[str, np.ndarray]) -> SelectorSpec:
        update: dict[str, Any] = {}
        if _own_frame(spec):
            update["frame"] = f"{IDS_FRAME}_{len(arrays) + 1}"
            arrays[update["frame"]] = own[spec.frame]
        if spec.children:
            update["children"] = [renumber(c, own) for c in spec.children]
        return spec.model_copy(update=update)

    children = [renumber(spec, own) for spec, own in parts]
    return SelectorSpec(kind=kind, children=children), arrays


def translated(index: Any, child: Any) -> tuple[Any, Any]:
    """``IDSelectorTranslated`` over the id map of ``index``, which must have one."""
    down = faiss.downcast_IndexBinary if isinstance(index, faiss.IndexBinary) else None
    target = down(index) if down is not None else faiss.downcast_index(index)
    if not isinstance(target, faiss.IndexIDMap | faiss.IndexBinaryIDMap):
        raise InvalidArgument(
            f"IDSelectorTranslated needs an IndexIDMap (it translates through its id map), "
            f"not a {type(target).__name__}"
        )
    # faiss's stubs know only the id-array overload
    return faiss.IDSelectorTranslated(target, child), target  # type: ignore[arg-type]


#: Resolves a ``translated`` selector's ``index`` to that index (the server's searched one).
IdMapOf = Callable[[str], Any]


def build_selector(
    spec: SelectorSpec,
    arrays: dict[str, np.ndarray],
    depth: int = 0,
    id_map_of: IdMapOf | None = None,
) -> tuple[Any, Any]:
    """The faiss selector, plus what it points into (keep it alive while it is used)."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"selector combinations nest at most {MAX_DEPTH} deep")
    if spec.kind == "range":
        return faiss.IDSelectorRange(spec.imin, spec.imax, spec.assume_sorted), None
    if spec.kind == "translated":
        if len(spec.children) != 1:
            raise InvalidArgument("a translated selector translates for one selector")
        inner = build_selector(spec.children[0], arrays, depth + 1, id_map_of)
        if spec.index is not None:
            if id_map_of is None:
                raise InvalidArgument("IDSelectorTranslated over an index is not usable here")
            sel, target = translated(id_map_of(spec.index), inner[0])
            return sel, (inner, target)
        data = arrays.get(spec.frame)
        if data is None or data.dtype != np.int64 or data.ndim != 1:
            raise InvalidArgument(f"a translation map is a 1-d int64 array {spec.frame!r}")
        id_map: Any = faiss.Int64Vector()
        faiss.copy_array_to_vector(data, id_map)
        return faiss.IDSelectorTranslated(id_map, inner[0]), (inner, id_map)
    if spec.kind in COMBINATIONS:
        if len(spec.children) != COMBINATIONS[spec.kind]:
            raise InvalidArgument(
                f"a {spec.kind} selector combines {COMBINATIONS[spec.kind]} selectors"
            )
        built = [build_selector(c, arrays, depth + 1, id_map_of) for c in spec.children]
        cls = getattr(faiss, f"IDSelector{spec.kind.title() if spec.kind != 'xor' else 'XOr'}")
        return cls(*(b[0] for b in built)), built
    data = arrays.get(spec.frame)
    if spec.kind == "bitmap":
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise InvalidArgument(f"a bitmap selector needs a 1-d uint8 array {spec.frame!r}")
        return faiss.IDSelectorBitmap(data.size, faiss.swig_ptr(data)), data
    if data is None or data.dtype != np.int64 or data.ndim != 1:
        raise InvalidArgument(f"a {spec.kind} selector needs a 1-d int64 array {spec.frame!r}")
    cls = faiss.IDSelectorBatch if spec.kind == "batch" else faiss.IDSelectorArray
    return cls(data.size, faiss.swig_ptr(data)), data
