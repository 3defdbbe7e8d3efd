"""IDMap family: ``IndexIDMap`` and ``IndexIDMap2`` give any float index user-chosen ids.

The wrapped index is a nested :class:`IndexSpec` (a remote proxy passed to the constructor
becomes its spec), built on the server together with the wrapper, which then owns it. The
wrapper has no knobs of its own: ``params_by_structure`` exposes those of what it wraps, so an
``IndexIDMap2`` over an ``IndexHNSWFlat`` has ``efSearch`` at ``index.hnsw.efSearch``.
"""

from __future__ import annotations

from typing import Any

import faiss
from pydantic import BaseModel, ConfigDict, Field

from faissx_core.errors import InvalidArgument
from faissx_core.hookspecs import hookimpl
from faissx_core.specs import BuildNested, IndexSpec, IndexType, params_by_structure


class IDMapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: IndexSpec = Field(description="the index whose vectors get external ids")


def _wrap(cls: type) -> Any:
    def build(p: IDMapParams, build_nested: BuildNested) -> Any:
        inner = build_nested(IndexSpec.model_validate(p.index))
        if isinstance(inner, faiss.IndexBinary):
            raise InvalidArgument(
                f"{cls.__name__} wraps float indices; a binary index needs IndexBinaryIDMap"
            )
        if not isinstance(inner, faiss.Index):
            raise InvalidArgument(f"{cls.__name__} wraps an index, not a {p.index.type}")
        wrapper = cls(inner)
        # The server keeps only the wrapper: hand it the inner index to own and free.
        inner.this.disown()  # type: ignore[attr-defined]  # faiss's stubs lack it
        wrapper.own_fields = True
        return wrapper

    return build


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="IndexIDMap",
            family="idmap",
            params=IDMapParams,
            build=_wrap(faiss.IndexIDMap),
            dynamic_params=params_by_structure,
            doc="Any index with 64-bit ids of your choosing (add_with_ids, remove_ids).",
        ),
        IndexType(
            name="IndexIDMap2",
            family="idmap",
            params=IDMapParams,
            build=_wrap(faiss.IndexIDMap2),
            dynamic_params=params_by_structure,
            doc="IndexIDMap that can also reconstruct vectors by their id.",
        ),
    ]
