"""Binary family: Hamming-distance indices over packed bit codes.

``d`` counts bits and must be a multiple of 8; a vector is ``d // 8`` bytes of ``uint8`` and
distances are ``int32`` Hamming distances. ``IndexBinaryIVF`` takes its coarse quantizer as a
nested index spec (an ``IndexBinaryFlat`` of the same ``d`` in the usual case), built on the
server together with the IVF, so the quantizer never exists there on its own.
"""

from __future__ import annotations

from typing import Annotated, Any

import faiss
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from faissx_core.errors import InvalidArgument
from faissx_core.hookspecs import hookimpl
from faissx_core.specs import BuildNested, IndexSpec, IndexType, RuntimeParam

#: Widest code a hash index can use: faiss keys its buckets with a uint64.
MAX_HASH_BITS = 64


def _whole_bytes(d: int) -> int:
    if d % 8:
        raise ValueError(f"binary indices need d (in bits) to be a multiple of 8, got {d}")
    return d


#: A binary dimension: bits, a positive multiple of 8.
BinaryDimension = Annotated[
    int,
    Field(gt=0, le=1 << 16, description="dimension in bits (a multiple of 8)"),
    AfterValidator(_whole_bytes),
]


class BinaryDim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d: BinaryDimension


class BinaryIVFParams(BaseModel):
    """``IndexBinaryIVF(quantizer, d, nlist)``; the quantizer is a nested binary index spec."""

    model_config = ConfigDict(extra="forbid")

    quantizer: IndexSpec = Field(description="the coarse quantizer, e.g. IndexBinaryFlat(d)")
    d: BinaryDimension
    nlist: int = Field(gt=0, le=1 << 20, description="number of inverted lists")

    @model_validator(mode="after")
    def _same_dimension(self) -> BinaryIVFParams:
        qd = self.quantizer.params.get("d")
        if isinstance(qd, int) and qd != self.d:
            raise ValueError(f"the quantizer has d={qd}, the index d={self.d}")
        return self


class BinaryHashParams(BaseModel):
    """``IndexBinaryHash(d, b)``: buckets keyed by the first ``b`` bits of each code."""

    model_config = ConfigDict(extra="forbid")

    d: BinaryDimension
    b: int = Field(ge=0, le=MAX_HASH_BITS, description="bits of the code used as hash key")

    @model_validator(mode="after")
    def _key_fits(self) -> BinaryHashParams:
        if self.b > self.d:
            raise ValueError(f"b={self.b} hash bits exceed the code's d={self.d} bits")
        return self


def _build_ivf(p: BinaryIVFParams, build_nested: BuildNested) -> Any:
    quantizer = build_nested(IndexSpec.model_validate(p.quantizer))
    if not isinstance(quantizer, faiss.IndexBinary):
        raise InvalidArgument(
            f"IndexBinaryIVF needs a binary quantizer, not {type(quantizer).__name__}"
        )
    # faiss's Python constructor keeps a reference to the quantizer in the IVF object
    return faiss.IndexBinaryIVF(quantizer, p.d, p.nlist)


NPROBE = RuntimeParam(
    name="nprobe",
    path="nprobe",
    kind="int",
    ge=0,  # faiss takes 0; a search then fails with faiss's own error
    le=1 << 20,
    doc="inverted lists visited per query",
)
NFLIP = RuntimeParam(
    name="nflip",
    path="nflip",
    kind="int",
    ge=0,
    le=MAX_HASH_BITS,
    doc="bits flipped when probing neighbouring hash buckets",
)


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="IndexBinaryFlat",
            family="binary",
            params=BinaryDim,
            vector_kind="binary",
            build=lambda p, _: faiss.IndexBinaryFlat(p.d),
            doc="Exact Hamming search over d-bit codes.",
        ),
        IndexType(
            name="IndexBinaryIVF",
            family="binary",
            params=BinaryIVFParams,
            vector_kind="binary",
            requires_training=True,
            build=_build_ivf,
            runtime_params=(NPROBE,),
            doc="Inverted-file Hamming search; the quantizer is a nested binary index.",
        ),
        IndexType(
            name="IndexBinaryHash",
            family="binary",
            params=BinaryHashParams,
            vector_kind="binary",
            build=lambda p, _: faiss.IndexBinaryHash(p.d, p.b),
            runtime_params=(NFLIP,),
            doc="Hash buckets on the first b bits; nflip probes neighbouring buckets.",
        ),
    ]
