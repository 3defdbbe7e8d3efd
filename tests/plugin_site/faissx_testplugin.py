"""A third-party plugin, as another package would ship it: one index type faiss lacks."""

import faiss
from pydantic import BaseModel, Field

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType


class CosineParams(BaseModel):
    d: int = Field(gt=0, le=4096)


def build(params: CosineParams, _nested: object) -> faiss.Index:
    index = faiss.IndexPreTransform(faiss.NormalizationTransform(params.d), faiss.IndexFlatIP(params.d))
    return index


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [IndexType(name="IndexTestCosine", family="testcosine", params=CosineParams,
                      build=build, doc="Cosine similarity: inner product of L2-normalised vectors.")]
