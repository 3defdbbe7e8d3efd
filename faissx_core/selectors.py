"""ID selectors as data, so ``remove_ids`` (and search filters) can cross the wire.

faiss's selector objects hide their contents from Python (``IDSelectorBatch`` keeps a C++ hash
set), so a remote client describes the selector instead and the server builds the faiss object.
A description is a small tree: leaves (``range``, ``batch``, ``array``, ``bitmap``) and the
combinations faiss has (``not`` of one child; ``and``, ``or``, ``xor`` of two). A leaf's ids
(or bitmap bytes) travel as an array frame it names (``frame``), so a tree of several leaves
sends each array once, without copies.
"""

from __future__ import annotations

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

    kind: Literal["range", "batch", "array", "bitmap", "not", "and", "or", "xor"]
    imin: int = Field(0, ge=-(1 << 63), lt=1 << 63)
    imax: int = Field(0, ge=-(1 << 63), lt=1 << 63)
    assume_sorted: bool = False
    frame: str = Field(IDS_FRAME, pattern=r"^sel_ids(_\d{1,4})?$")
    children: list[SelectorSpec] = Field(default_factory=list, max_length=2)


def combine(
    kind: str, parts: list[tuple[SelectorSpec, dict[str, np.ndarray]]]
) -> tuple[SelectorSpec, dict[str, np.ndarray]]:
    """The description of ``kind`` over described ``parts``, their frames renumbered so
    that no two leaves share one."""
    if len(parts) != COMBINATIONS[kind]:
        raise InvalidArgument(f"IDSelector{kind.title()} takes {COMBINATIONS[kind]} selectors")
    arrays: dict[str, np.ndarray] = {}

    def renumber(spec: SelectorSpec, own: dict[str, np.ndarray]) -> SelectorSpec:
        if spec.kind in LEAVES:
            name = f"{IDS_FRAME}_{len(arrays) + 1}"
            arrays[name] = own[spec.frame]
            return spec.model_copy(update={"frame": name})
        return spec.model_copy(update={"children": [renumber(c, own) for c in spec.children]})

    children = [renumber(spec, own) for spec, own in parts]
    return SelectorSpec(kind=kind, children=children), arrays


def build_selector(
    spec: SelectorSpec, arrays: dict[str, np.ndarray], depth: int = 0
) -> tuple[Any, Any]:
    """The faiss selector, plus what it points into (keep it alive while it is used)."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"selector combinations nest at most {MAX_DEPTH} deep")
    if spec.kind == "range":
        return faiss.IDSelectorRange(spec.imin, spec.imax, spec.assume_sorted), None
    if spec.kind in COMBINATIONS:
        if len(spec.children) != COMBINATIONS[spec.kind]:
            raise InvalidArgument(
                f"a {spec.kind} selector combines {COMBINATIONS[spec.kind]} selectors"
            )
        built = [build_selector(c, arrays, depth + 1) for c in spec.children]
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
