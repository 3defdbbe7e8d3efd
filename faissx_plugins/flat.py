"""Flat family: exact search by brute force (``IndexFlatL2``, ``IndexFlatIP``, ``IndexFlat``)."""

from __future__ import annotations

from typing import Annotated

import faiss
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType

#: Metrics IndexFlat computes; anything else faiss would reject deep inside a search.
FLAT_METRICS = {
    getattr(faiss, name)
    for name in dir(faiss)
    if name.startswith("METRIC_") and isinstance(getattr(faiss, name), int)
}


def _known_metric(metric: int) -> int:
    if metric not in FLAT_METRICS:
        raise ValueError(f"unknown metric {metric}; use a faiss.METRIC_* constant")
    return metric


#: Field types other families reuse, so a dimension or metric is checked the same everywhere.
Dimension = Annotated[int, Field(gt=0, le=1 << 16, description="vector dimension")]
Metric = Annotated[int, AfterValidator(_known_metric), Field(description="a faiss.METRIC_*")]


class Dim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: Dimension


class DimMetric(Dim):
    metric: Metric = faiss.METRIC_L2


class SearchParams(BaseModel):
    """``faiss.SearchParameters(sel=...)``: the filter every index's search accepts."""

    model_config = ConfigDict(extra="forbid")

    sel: dict | None = Field(None, description="an ID selector (described by the client)")


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="SearchParameters",
            family="flat",
            kind="component",
            params=SearchParams,
            build=lambda p, _: faiss.SearchParameters(),
            doc="Per-call search parameters; `sel` restricts the ids searched.",
        ),
        IndexType(
            name="IndexFlatL2",
            family="flat",
            params=Dim,
            build=lambda p, _: faiss.IndexFlatL2(p.d),
            doc="Exact search, squared L2 distance.",
        ),
        IndexType(
            name="IndexFlatIP",
            family="flat",
            params=Dim,
            build=lambda p, _: faiss.IndexFlatIP(p.d),
            doc="Exact search, inner product (cosine on normalised vectors).",
        ),
        IndexType(
            name="IndexFlat",
            family="flat",
            params=DimMetric,
            build=lambda p, _: faiss.IndexFlat(p.d, p.metric),
            doc="Exact search with any faiss metric.",
        ),
    ]
