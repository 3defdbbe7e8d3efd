"""PQ family: compressed-code indices searched exhaustively (``IndexPQ``, ``IndexScalarQuantizer``).

Both store one code per vector and scan all of them; both must be trained (``IndexPQ`` learns its
sub-quantizer centroids, most scalar quantizer types learn per-dimension ranges). The IVF family
reuses :data:`QType`, :data:`Subquantizers` and :data:`CodeBits` for its ``IndexIVFPQ`` and
``IndexIVFScalarQuantizer``, so a code is described the same way with or without inverted lists.
"""

from __future__ import annotations

from typing import Annotated

import faiss
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType, RuntimeParam
from faissx_plugins.flat import Dimension, Metric, SearchParams

#: Every scalar quantizer type faiss names, by value. ``QT_count`` is not a type but the number
#: of them: faiss accepts it in the constructor and then aborts the process when it trains or
#: searches, so it is left out.
QTYPES: dict[int, str] = {
    getattr(faiss.ScalarQuantizer, name): name
    for name in dir(faiss.ScalarQuantizer)
    if name.startswith("QT_") and name != "QT_count"
}


def _known_qtype(qtype: int) -> int:
    if qtype not in QTYPES:
        raise ValueError(
            f"unknown scalar quantizer type {qtype}; use a faiss.ScalarQuantizer.QT_* constant "
            f"({', '.join(f'{n}={v}' for v, n in sorted(QTYPES.items()))})"
        )
    return qtype


#: Field types the IVF family reuses for its IVFPQ / IVFScalarQuantizer.
QType = Annotated[
    int, AfterValidator(_known_qtype), Field(description="a faiss.ScalarQuantizer.QT_* constant")
]
Subquantizers = Annotated[int, Field(gt=0, le=1 << 16, description="number of sub-quantizers M")]
#: faiss itself stops at 24 bits (and crashes on 0); 16 bits already means 65536 centroids per
#: sub-quantizer, so the server refuses more rather than allocate gigabytes for one index.
CodeBits = Annotated[int, Field(ge=1, le=16, description="bits per sub-quantizer code")]


def check_subquantizers(d: int, M: int) -> None:
    """faiss needs d to split evenly into M sub-vectors (it refuses deep inside otherwise)."""
    if d % M:
        raise ValueError(f"d={d} is not a multiple of M={M} (the number of sub-quantizers)")


class PQParams(BaseModel):
    """``faiss.IndexPQ(d, M, nbits, metric=METRIC_L2)``."""

    model_config = ConfigDict(extra="forbid")

    d: Dimension
    M: Subquantizers
    nbits: CodeBits
    metric: Metric = faiss.METRIC_L2

    @model_validator(mode="after")
    def _divides(self) -> PQParams:
        check_subquantizers(self.d, self.M)
        return self


class SQParams(BaseModel):
    """``faiss.IndexScalarQuantizer(d, qtype, metric=METRIC_L2)``."""

    model_config = ConfigDict(extra="forbid")

    d: Dimension
    qtype: QType
    metric: Metric = faiss.METRIC_L2


#: ``IndexPQ.search_type`` values (``faiss.IndexPQ.ST_*``); faiss reads past its tables on others.
PQ_SEARCH_TYPES = {
    getattr(faiss.IndexPQ, name) for name in dir(faiss.IndexPQ) if name.startswith("ST_")
}


class SearchParamsPQ(SearchParams):
    """``faiss.SearchParametersPQ(search_type=..., polysemous_ht=..., sel=...)``."""

    search_type: int = Field(
        faiss.IndexPQ.ST_PQ,  # type: ignore[attr-defined]  # faiss's stubs lack it
        ge=min(PQ_SEARCH_TYPES),
        le=max(PQ_SEARCH_TYPES),
        description="a faiss.IndexPQ.ST_*",
    )
    polysemous_ht: int = Field(
        0, ge=0, le=(1 << 31) - 1, description="Hamming threshold of polysemous filtering"
    )


def _search_params_pq(p: SearchParamsPQ) -> faiss.SearchParametersPQ:  # type: ignore[name-defined]  # faiss's stubs lack it
    out = faiss.SearchParametersPQ()  # type: ignore[attr-defined]  # faiss's stubs lack it
    out.search_type = p.search_type
    out.polysemous_ht = p.polysemous_ht
    return out


PQ_RUNTIME = (
    RuntimeParam(
        name="search_type",
        path="search_type",
        kind="int",
        ge=min(PQ_SEARCH_TYPES),
        le=max(PQ_SEARCH_TYPES),
        doc="how codes are compared: faiss.IndexPQ.ST_PQ (asymmetric), ST_HE, ...",
    ),
    RuntimeParam(
        name="polysemous_ht",
        path="polysemous_ht",
        kind="int",
        ge=0,
        le=(1 << 31) - 1,
        doc="Hamming threshold for ST_polysemous search (8-bit codes only)",
    ),
)


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="SearchParametersPQ",
            family="pq",
            kind="component",
            params=SearchParamsPQ,
            build=lambda p, _: _search_params_pq(p),
            doc="Per-call IndexPQ parameters: search_type, polysemous_ht (and sel, which faiss "
            "honours in range_search only).",
        ),
        IndexType(
            name="IndexPQ",
            family="pq",
            params=PQParams,
            build=lambda p, _: faiss.IndexPQ(p.d, p.M, p.nbits, p.metric),
            requires_training=True,
            runtime_params=PQ_RUNTIME,
            doc="Product quantization: M sub-vector codes of nbits each, exhaustive search.",
        ),
        IndexType(
            name="IndexScalarQuantizer",
            family="pq",
            params=SQParams,
            build=lambda p, _: faiss.IndexScalarQuantizer(p.d, p.qtype, p.metric),
            requires_training=True,
            doc="Scalar quantization of each dimension (QT_8bit, QT_4bit, QT_fp16, ...), "
            "exhaustive search.",
        ),
    ]
