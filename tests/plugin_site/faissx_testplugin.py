"""A third-party plugin, as another package would ship it: one index type faiss lacks."""

import faiss
from pydantic import BaseModel, Field

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType


class RotatedParams(BaseModel):
    d: int = Field(gt=0, le=4096)
    seed: int = Field(12345, ge=0)


def build(params: RotatedParams, _nested: object) -> faiss.Index:
    """Exact L2 search behind a fixed random rotation (distances are rotation-invariant)."""
    rotation = faiss.RandomRotationMatrix(params.d, params.d)
    rotation.init(params.seed)
    return faiss.IndexPreTransform(rotation, faiss.IndexFlatL2(params.d))


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="IndexTestRotatedFlat",
            family="testrotated",
            params=RotatedParams,
            build=build,
            doc="Exact L2 search in a randomly rotated space.",
        )
    ]
