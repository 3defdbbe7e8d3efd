"""ID selectors as data, so ``remove_ids`` (and search filters) can cross the wire.

faiss's selector objects hide their contents from Python (``IDSelectorBatch`` keeps a C++ hash
set), so a remote client describes the selector instead and the server builds the faiss object.
"""

from __future__ import annotations

from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from faissx_core.errors import InvalidArgument

#: Name of the array frame that carries a selector's ids.
IDS_FRAME = "sel_ids"


class SelectorSpec(BaseModel):
    """``range``: ids in ``[imin, imax)``; ``batch``/``array``: the ids in frame ``sel_ids``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["range", "batch", "array"]
    imin: int = Field(0, ge=-(1 << 63), lt=1 << 63)
    imax: int = Field(0, ge=-(1 << 63), lt=1 << 63)


def build_selector(spec: SelectorSpec, arrays: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """The faiss selector, plus the array it points into (keep it alive while it is used)."""
    if spec.kind == "range":
        return faiss.IDSelectorRange(spec.imin, spec.imax), None
    ids = arrays.get(IDS_FRAME)
    if ids is None or ids.dtype != np.int64 or ids.ndim != 1:
        raise InvalidArgument(f"a {spec.kind} selector needs a 1-d int64 array {IDS_FRAME!r}")
    cls = faiss.IDSelectorBatch if spec.kind == "batch" else faiss.IDSelectorArray
    return cls(ids.size, faiss.swig_ptr(ids)), ids
