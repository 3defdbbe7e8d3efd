"""Factory family: ``index_factory`` and ``index_binary_factory`` for any string faiss accepts.

faiss parses the description; the structure it builds decides the runtime parameters, found by
walking the built index (an ``"IDMap2,HNSW32"`` gets ``efSearch`` from the HNSW family's type).
"""

from __future__ import annotations

import faiss
from pydantic import BaseModel, ConfigDict, Field, field_validator

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType, params_by_structure
from faissx_plugins.flat import Dimension, Metric


class FactoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: Dimension
    description: str = Field(min_length=1, max_length=512, description="an index_factory string")
    metric: Metric = faiss.METRIC_L2


class BinaryFactoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: int = Field(gt=0, le=1 << 16, description="dimension in bits")
    description: str = Field(min_length=1, max_length=512)

    @field_validator("d")
    @classmethod
    def _whole_bytes(cls, d: int) -> int:
        if d % 8:
            raise ValueError("binary indices need d to be a multiple of 8")
        return d


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="index_factory",
            family="factory",
            params=FactoryParams,
            build=lambda p, _: faiss.index_factory(p.d, p.description, p.metric),
            dynamic_params=params_by_structure,
            doc="Any index faiss.index_factory(d, description, metric) builds.",
        ),
        IndexType(
            name="index_binary_factory",
            family="factory",
            params=BinaryFactoryParams,
            vector_kind="binary",
            build=lambda p, _: faiss.index_binary_factory(p.d, p.description),
            dynamic_params=params_by_structure,
            doc="Any binary index faiss.index_binary_factory(d, description) builds.",
        ),
    ]
