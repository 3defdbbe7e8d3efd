"""``IndexFlatCosine(d)``: exact search by cosine similarity.

faiss has no such class: cosine similarity is inner product on L2-normalised vectors, and users
normally call ``faiss.normalize_L2`` on every batch themselves. This type bakes the
normalisation into the index (an ``IndexPreTransform`` with a ``NormalizationTransform`` over an
``IndexFlatIP``), so vectors are normalised on the server, on every add and every query.
"""

from __future__ import annotations

import faiss
from pydantic import BaseModel, ConfigDict, Field

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType


class CosineParams(BaseModel):
    """Constructor parameters, in positional order: ``IndexFlatCosine(d)``."""

    model_config = ConfigDict(extra="forbid")

    d: int = Field(gt=0, le=1 << 16, description="vector dimension")


def build(params: CosineParams, build_nested: object) -> faiss.Index:
    return faiss.IndexPreTransform(
        faiss.NormalizationTransform(params.d, 2.0), faiss.IndexFlatIP(params.d)
    )


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="IndexFlatCosine",
            family="cosine",
            params=CosineParams,
            build=build,
            doc="Exact cosine similarity (vectors are L2-normalised on the server).",
        )
    ]
