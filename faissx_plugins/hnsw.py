"""HNSW family: graph indices over flat, scalar-quantized or PQ storage, and their search knobs.

Constructors mirror faiss's (``IndexHNSWFlat(d, M, metric)``, ``IndexHNSWSQ(d, qtype, M,
metric)``, ``IndexHNSWPQ(d, pq_m, M, pq_nbits, metric)``): ``M`` has no default in faiss, so none
here either. The parameter models refuse what faiss 1.15 answers with an abort or a segfault of
the whole process (``M < 2``, ``pq_nbits = 0``, SQ types without symmetric distances, SQ with a
metric other than L2/IP), because on a server that would take every tenant's indices down.

``efSearch`` and ``efConstruction`` live at ``hnsw.efSearch`` / ``hnsw.efConstruction`` as in
faiss, so ``index.hnsw.efSearch = 64`` works on a proxy; wrappers (``IndexIDMap2``,
``IndexPreTransform``, factory strings) find them here through ``params_by_structure``.
"""

from __future__ import annotations

from typing import Annotated

import faiss
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from faissx_core.hookspecs import hookimpl
from faissx_core.specs import IndexType, RuntimeParam
from faissx_plugins.flat import Dimension, Metric, SearchParams

#: Largest ``efSearch``/``efConstruction`` accepted; typical values are 16..1024.
MAX_EF = 1 << 16

#: Graph degree: faiss crashes the process for M < 2; beyond 512 the graph is only memory.
Degree = Annotated[int, Field(ge=2, le=512, description="HNSW graph degree M")]

#: Scalar quantizer types whose codes give the symmetric distances graph building needs
#: (``QT_0bit`` and the ``QT_*_tq`` types abort the process inside faiss when used by HNSW).
SQ_TYPES = {
    value
    for name in (
        "QT_8bit",
        "QT_4bit",
        "QT_8bit_uniform",
        "QT_4bit_uniform",
        "QT_fp16",
        "QT_8bit_direct",
        "QT_6bit",
        "QT_bf16",
        "QT_8bit_direct_signed",
        "QT_1bit_tqmse",
        "QT_2bit_tqmse",
        "QT_3bit_tqmse",
        "QT_4bit_tqmse",
        "QT_8bit_tqmse",
        "QT_1bit_eden",
        "QT_2bit_eden",
        "QT_3bit_eden",
        "QT_4bit_eden",
        "QT_5bit_eden",
        "QT_6bit_eden",
        "QT_7bit_eden",
        "QT_8bit_eden",
    )
    if (value := getattr(faiss.ScalarQuantizer, name, None)) is not None
}

#: Metrics quantized storage computes; faiss aborts (SQ) or silently uses L2 (PQ) for others.
CODEC_METRICS = {faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT}


def _sq_type(qtype: int) -> int:
    if qtype not in SQ_TYPES:
        raise ValueError(
            f"scalar quantizer type {qtype} cannot back an HNSW graph; use a "
            "faiss.ScalarQuantizer.QT_* such as QT_8bit, QT_4bit or QT_fp16"
        )
    return qtype


def _codec_metric(metric: int) -> int:
    if metric not in CODEC_METRICS:
        raise ValueError(
            "quantized HNSW storage supports only METRIC_L2 and "
            f"METRIC_INNER_PRODUCT, not metric {metric}"
        )
    return metric


QuantizerType = Annotated[
    int, AfterValidator(_sq_type), Field(description="a faiss.ScalarQuantizer.QT_* type")
]
CodecMetric = Annotated[Metric, AfterValidator(_codec_metric)]


class HNSWFlatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: Dimension
    M: Degree
    metric: Metric = faiss.METRIC_L2


class HNSWSQParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: Dimension
    qtype: QuantizerType
    M: Degree
    metric: CodecMetric = faiss.METRIC_L2


class HNSWPQParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: Dimension
    pq_m: int = Field(ge=1, le=1 << 12, description="number of PQ sub-quantizers")
    M: Degree
    pq_nbits: int = Field(8, ge=1, le=16, description="bits per PQ code")
    metric: CodecMetric = faiss.METRIC_L2

    @model_validator(mode="after")
    def _pq_m_divides_d(self) -> HNSWPQParams:
        if self.d % self.pq_m:
            raise ValueError(f"d={self.d} must be a multiple of pq_m={self.pq_m}")
        return self


EfSearch = Annotated[int, Field(ge=1, le=MAX_EF, description="candidate list size at search")]


class SearchParamsHNSW(SearchParams):
    """``faiss.SearchParametersHNSW(efSearch=..., sel=...)``; defaults are faiss's."""

    efSearch: EfSearch = 16
    check_relative_distance: bool = True
    bounded_queue: bool = True


def _search_params(p: SearchParamsHNSW, _: object) -> faiss.SearchParametersHNSW:  # type: ignore[name-defined]  # faiss's stubs lack it
    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # faiss's stubs lack it
    params.efSearch = p.efSearch
    params.check_relative_distance = p.check_relative_distance
    params.bounded_queue = p.bounded_queue
    return params


RUNTIME_PARAMS = (
    RuntimeParam(
        name="efSearch",
        path="hnsw.efSearch",
        kind="int",
        ge=1,
        le=MAX_EF,
        doc="candidates explored per query; higher is slower and more accurate",
    ),
    RuntimeParam(
        name="efConstruction",
        path="hnsw.efConstruction",
        kind="int",
        ge=1,
        le=MAX_EF,
        doc="candidates explored when linking a new vector (affects later adds)",
    ),
)


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="SearchParametersHNSW",
            family="hnsw",
            kind="component",
            params=SearchParamsHNSW,
            build=_search_params,
            doc="Per-call HNSW search parameters: efSearch, and `sel` to restrict the ids.",
        ),
        IndexType(
            name="IndexHNSWFlat",
            family="hnsw",
            params=HNSWFlatParams,
            build=lambda p, _: faiss.IndexHNSWFlat(p.d, p.M, p.metric),
            runtime_params=RUNTIME_PARAMS,
            doc="HNSW graph over uncompressed vectors.",
        ),
        IndexType(
            name="IndexHNSWSQ",
            family="hnsw",
            params=HNSWSQParams,
            build=lambda p, _: faiss.IndexHNSWSQ(p.d, p.qtype, p.M, p.metric),
            requires_training=True,
            runtime_params=RUNTIME_PARAMS,
            doc="HNSW graph over scalar-quantized vectors (trained unless qtype is fp16/bf16/"
            "direct).",
        ),
        IndexType(
            name="IndexHNSWPQ",
            family="hnsw",
            params=HNSWPQParams,
            # faiss's stubs lack this (d, pq_m, M, pq_nbits, metric) constructor
            build=lambda p, _: faiss.IndexHNSWPQ(p.d, p.pq_m, p.M, p.pq_nbits, p.metric),  # type: ignore[call-arg]
            requires_training=True,
            runtime_params=RUNTIME_PARAMS,
            doc="HNSW graph over product-quantized vectors.",
        ),
    ]
