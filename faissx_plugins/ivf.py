"""IVF family: ``IndexIVFFlat``, ``IndexIVFPQ`` and ``IndexIVFScalarQuantizer``.

An IVF index routes each vector to one of ``nlist`` lists through a coarse *quantizer*, itself
an index (usually ``IndexFlatL2(d)``). The quantizer is a nested :class:`IndexSpec`: a remote
client passes the quantizer proxy, which is described, never created on the server by itself,
and the server builds it here and hands its ownership to the IVF index, as faiss's
``own_fields`` idiom does. Search visits ``nprobe`` lists (and at most ``max_codes`` codes);
both are runtime parameters, and ``SearchParametersIVF`` sets them for one call.
"""

from __future__ import annotations

from typing import Annotated, Any

import faiss
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faissx_core.errors import InvalidArgument
from faissx_core.hookspecs import hookimpl
from faissx_core.specs import BuildNested, IndexSpec, IndexType, RuntimeParam
from faissx_plugins.flat import Dimension, Metric, SearchParams
from faissx_plugins.pq import CodeBits, QType, Subquantizers, check_subquantizers

NList = Annotated[int, Field(gt=0, le=1 << 24, description="number of inverted lists")]
#: faiss stores these as size_t; the bounds keep a typo from overflowing SWIG's conversion.
NPROBE_MAX = 1 << 24
MAX_CODES_MAX = (1 << 63) - 1


class IVFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantizer: IndexSpec = Field(description="the coarse quantizer, e.g. IndexFlatL2(d)")
    d: Dimension
    nlist: NList


class IVFFlatParams(IVFParams):
    """``faiss.IndexIVFFlat(quantizer, d, nlist, metric=METRIC_L2)``."""

    metric: Metric = faiss.METRIC_L2


class IVFPQParams(IVFParams):
    """``faiss.IndexIVFPQ(quantizer, d, nlist, M, nbits, metric=METRIC_L2)``."""

    M: Subquantizers
    nbits: CodeBits
    metric: Metric = faiss.METRIC_L2

    @model_validator(mode="after")
    def _divides(self) -> IVFPQParams:
        check_subquantizers(self.d, self.M)
        return self


class IVFSQParams(IVFParams):
    """``faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qtype, metric=METRIC_L2,
    by_residual=True)``."""

    qtype: QType
    metric: Metric = faiss.METRIC_L2
    by_residual: bool = True


class SearchParamsIVF(SearchParams):
    """``faiss.SearchParametersIVF(nprobe=1, max_codes=0, sel=None)``: one call's IVF knobs."""

    nprobe: int = Field(1, ge=1, le=NPROBE_MAX, description="inverted lists visited per query")
    max_codes: int = Field(
        0, ge=0, le=MAX_CODES_MAX, description="codes visited per query at most (0: no limit)"
    )
    max_lists_num: int = Field(
        0, ge=0, le=NPROBE_MAX, description="lists scanned at most (0: nprobe)"
    )
    ensure_topk_full: bool = Field(False, description="keep scanning until k results")
    max_empty_result_buckets: int = Field(
        0,
        ge=0,
        le=NPROBE_MAX,
        description="range search: stop after this many lists without a hit (0: never)",
    )
    quantizer_params: IndexSpec | None = Field(
        None,
        description="SearchParameters for the coarse quantizer's search (a nested "
        "component, e.g. SearchParametersHNSW(efSearch=...))",
    )


def _search_params_ivf(p: SearchParamsIVF) -> faiss.SearchParametersIVF:
    out = faiss.SearchParametersIVF()
    out.nprobe = p.nprobe
    out.max_codes = p.max_codes
    out.max_lists_num = p.max_lists_num
    out.ensure_topk_full = p.ensure_topk_full
    out.max_empty_result_buckets = p.max_empty_result_buckets
    return out


def own_quantizer(params: type[IVFParams]) -> Any:
    """The shorthand without a quantizer, ``IndexIVFFlat(d, nlist=100)`` (the seed README's
    spelling): a flat quantizer of the same metric is made for it, ``IndexFlat(d, metric)``, as
    the original FAISSx and faiss's ``index_factory`` do. The call comes back positional, in
    faiss's order, because faiss's constructors take no keyword arguments."""
    fields = [name for name in params.model_fields if name != "quantizer"]

    def rewrite(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        first = args[0] if args else kwargs.get("d")
        if "quantizer" in kwargs or type(first) is not int:
            return None  # faiss's own spelling: a quantizer comes first
        if len(args) > len(fields):
            raise TypeError(
                f"at most {len(fields)} arguments without a quantizer "
                f"({', '.join(fields)}); {len(args)} given"
            )
        values = dict(zip(fields, args, strict=False))
        for key, value in kwargs.items():
            if key in values:
                raise TypeError(f"got multiple values for argument {key!r}")
            if key not in fields:
                raise TypeError(f"unexpected keyword argument {key!r} (known: {', '.join(fields)})")
            values[key] = value
        last = max(fields.index(key) for key in values)
        ordered = []
        for name in fields[: last + 1]:
            if name not in values and params.model_fields[name].is_required():
                raise TypeError(f"missing required argument {name!r}")
            ordered.append(values.get(name, params.model_fields[name].default))
        metric = values.get("metric", faiss.METRIC_L2)
        quantizer = IndexSpec(type="IndexFlat", params={"d": values.get("d"), "metric": metric})
        return (quantizer, *ordered), {}

    return rewrite


def _quantizer(params: IVFParams, build_nested: BuildNested) -> Any:
    """Build the nested quantizer and check it can serve as one before faiss sees it."""
    quantizer = build_nested(IndexSpec.model_validate(params.quantizer))
    if not isinstance(quantizer, faiss.Index):
        raise InvalidArgument(
            f"the quantizer must be a float index such as IndexFlatL2(d), not "
            f"{params.quantizer.type}"
        )
    if quantizer.d != params.d:
        raise InvalidArgument(
            f"the quantizer has d={quantizer.d} but the IVF index has d={params.d}"
        )
    return quantizer


def _owning(index: Any, quantizer: Any) -> Any:
    """Hand the quantizer to the index (``own_fields``), as a deserialized index holds it."""
    quantizer.this.disown()
    index.own_fields = True
    return index


def _build_ivf_flat(p: IVFFlatParams, build_nested: BuildNested) -> Any:
    q = _quantizer(p, build_nested)
    return _owning(faiss.IndexIVFFlat(q, p.d, p.nlist, p.metric), q)


def _build_ivf_pq(p: IVFPQParams, build_nested: BuildNested) -> Any:
    q = _quantizer(p, build_nested)
    return _owning(faiss.IndexIVFPQ(q, p.d, p.nlist, p.M, p.nbits, p.metric), q)


def _build_ivf_sq(p: IVFSQParams, build_nested: BuildNested) -> Any:
    q = _quantizer(p, build_nested)
    return _owning(
        faiss.IndexIVFScalarQuantizer(q, p.d, p.nlist, p.qtype, p.metric, p.by_residual), q
    )


IVF_RUNTIME = (
    RuntimeParam(
        name="nprobe",
        path="nprobe",
        kind="int",
        ge=0,  # faiss takes 0; a search then fails with faiss's own error
        le=NPROBE_MAX,
        doc="inverted lists visited per query (more: slower, better recall)",
    ),
    RuntimeParam(
        name="max_codes",
        path="max_codes",
        kind="int",
        ge=0,
        le=MAX_CODES_MAX,
        doc="stop a query after visiting this many codes (0: no limit)",
    ),
)
IVFPQ_RUNTIME = (
    *IVF_RUNTIME,
    RuntimeParam(
        name="polysemous_ht",
        path="polysemous_ht",
        kind="int",
        ge=0,
        le=(1 << 31) - 1,
        doc="Hamming threshold of polysemous filtering (0: off; 8-bit codes only)",
    ),
)


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="SearchParametersIVF",
            family="ivf",
            kind="component",
            params=SearchParamsIVF,
            build=lambda p, _: _search_params_ivf(p),
            doc="Per-call IVF parameters: nprobe, max_codes, and sel to restrict the ids searched.",
        ),
        IndexType(
            name="IndexIVFFlat",
            family="ivf",
            params=IVFFlatParams,
            shorthand=own_quantizer(IVFFlatParams),
            build=_build_ivf_flat,
            requires_training=True,
            runtime_params=IVF_RUNTIME,
            doc="Inverted lists of full vectors: exact distances within the nprobe lists visited.",
        ),
        IndexType(
            name="IndexIVFPQ",
            family="ivf",
            params=IVFPQParams,
            shorthand=own_quantizer(IVFPQParams),
            build=_build_ivf_pq,
            requires_training=True,
            runtime_params=IVFPQ_RUNTIME,
            doc="Inverted lists of product-quantized residuals (M codes of nbits each).",
        ),
        IndexType(
            name="IndexIVFScalarQuantizer",
            family="ivf",
            params=IVFSQParams,
            shorthand=own_quantizer(IVFSQParams),
            build=_build_ivf_sq,
            requires_training=True,
            runtime_params=IVF_RUNTIME,
            doc="Inverted lists of scalar-quantized vectors (residuals unless by_residual=False).",
        ),
    ]
