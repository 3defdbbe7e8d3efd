"""PreTransform family: ``IndexPreTransform`` and the vector transforms it applies.

The transforms (``PCAMatrix``, ``NormalizationTransform``, ``OPQMatrix``,
``RandomRotationMatrix``, ``ITQTransform``) are components: in remote mode the client only
describes them, and the server builds them inside the ``IndexPreTransform`` that uses them (or
the ``IndexIVFSpectralHash.replace_vt`` call that passes one). Training the
``IndexPreTransform`` trains its transform (and then the index it wraps), as in faiss.

Both faiss constructors work: ``IndexPreTransform(transform, index)`` and
``IndexPreTransform(index)``. A chain of transforms is a ``IndexPreTransform`` wrapping another,
which faiss accepts and applies outermost first. The wrapped index's runtime parameters (an
inner IVF's ``nprobe``, an HNSW's ``efSearch``) are reachable on the wrapper, found by walking
the built structure.
"""

from __future__ import annotations

from typing import Any

import faiss
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from faissx_core.errors import InvalidArgument
from faissx_core.hookspecs import hookimpl
from faissx_core.specs import BuildNested, IndexSpec, IndexType, params_by_structure
from faissx_plugins.flat import Dimension


def _alias(name: str, faiss_kwarg: str) -> Any:
    """Accept faiss's keyword spelling (``din=``) as well as the attribute name (``d_in``)."""
    return AliasChoices(name, faiss_kwarg)


class TransformParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PCAParams(TransformParams):
    """``PCAMatrix(d_in, d_out, eigen_power=0, random_rotation=False)``."""

    d_in: Dimension = Field(validation_alias=_alias("d_in", "din"))
    d_out: Dimension = Field(validation_alias=_alias("d_out", "dout"))
    eigen_power: float = Field(
        0.0,
        validation_alias=_alias("eigen_power", "eigen_power_in"),
        description="0: no whitening, -0.5: full whitening",
    )
    random_rotation: bool = Field(
        False, validation_alias=_alias("random_rotation", "random_rotation_in")
    )

    @model_validator(mode="after")
    def _reduces(self) -> PCAParams:
        if self.d_out > self.d_in:
            raise ValueError(f"PCA cannot output d_out={self.d_out} > d_in={self.d_in} dimensions")
        return self


class NormalizationParams(TransformParams):
    """``NormalizationTransform(d, norm=2.0)``; faiss implements only the L2 norm."""

    d: Dimension
    norm: float = Field(2.0, description="the norm to divide by (faiss supports 2.0)")


class OPQParams(TransformParams):
    """``OPQMatrix(d, M=1, d2=-1)``: a rotation learnt for a product quantizer of ``M`` parts."""

    d: Dimension
    M: int = Field(1, gt=0, le=1 << 12, validation_alias=_alias("M", "M_in"))
    d2: int = Field(-1, ge=-1, le=1 << 16, description="output dimension; -1: same as d")
    niter: int = Field(50, ge=0, le=1 << 12, description="OPQ training iterations")
    niter_pq: int = Field(4, ge=0, le=1 << 12, description="PQ iterations per OPQ iteration")

    @model_validator(mode="after")
    def _splits(self) -> OPQParams:
        if self.d2 == 0:
            raise ValueError("d2 must be -1 (same as d) or a positive dimension")
        if _out(self) % self.M:
            raise ValueError(f"the output dimension {_out(self)} is not a multiple of M={self.M}")
        return self


class RandomRotationParams(TransformParams):
    """``RandomRotationMatrix(d_in, d_out)``: a seeded random orthogonal projection."""

    d_in: Dimension
    d_out: Dimension


class ITQParams(TransformParams):
    """``ITQTransform(d_in, d_out, do_pca=False)``: iterative quantization, a rotation learnt so
    that the signs of the output make good binary codes (spectral hashing's transform)."""

    d_in: Dimension
    d_out: Dimension
    do_pca: bool = Field(False, description="reduce with a PCA first")


def _opq(p: OPQParams, _: BuildNested) -> Any:
    opq = faiss.OPQMatrix(p.d, p.M, p.d2)
    opq.niter, opq.niter_pq = p.niter, p.niter_pq
    return opq


def _out(p: OPQParams) -> int:
    return p.d2 if p.d2 != -1 else p.d


#: (input dimension, output dimension) of each transform, from its params.
TRANSFORM_DIMS: dict[str, Any] = {
    "PCAMatrix": lambda p: (p.d_in, p.d_out),
    "NormalizationTransform": lambda p: (p.d, p.d),
    "OPQMatrix": lambda p: (p.d, _out(p)),
    "RandomRotationMatrix": lambda p: (p.d_in, p.d_out),
    "ITQTransform": lambda p: (p.d_in, p.d_out),
}

TRANSFORM_PARAMS: dict[str, type[TransformParams]] = {
    "PCAMatrix": PCAParams,
    "NormalizationTransform": NormalizationParams,
    "OPQMatrix": OPQParams,
    "RandomRotationMatrix": RandomRotationParams,
    "ITQTransform": ITQParams,
}


def _transform_dims(spec: IndexSpec) -> tuple[int, int] | None:
    params = TRANSFORM_PARAMS.get(spec.type)
    if params is None:
        return None
    try:
        return TRANSFORM_DIMS[spec.type](params.model_validate(spec.params))
    except ValueError:
        return None  # the transform's own validation reports it when it is built


def _input_dim(spec: IndexSpec, depth: int = 0) -> int | None:
    """The dimension an index spec takes as input, where the spec says it plainly."""
    if spec.type == "IndexPreTransform":
        transform, index = spec.params.get("transform"), spec.params.get("index")
        try:
            if transform is not None:
                dims = _transform_dims(IndexSpec.model_validate(transform))
                return dims[0] if dims is not None else None
            if index is not None and depth < 8:
                return _input_dim(IndexSpec.model_validate(index), depth + 1)
        except ValueError:
            pass  # a malformed nested spec is reported when it is validated itself
        return None
    d = spec.params.get("d")
    return d if isinstance(d, int) and not isinstance(d, bool) else None


class PreTransformParams(BaseModel):
    """``IndexPreTransform(transform, index)`` or ``IndexPreTransform(index)``."""

    model_config = ConfigDict(extra="forbid")

    transform: IndexSpec | None = Field(None, description="a vector transform component")
    index: IndexSpec | None = Field(None, description="the index the transformed vectors go to")

    @model_validator(mode="before")
    @classmethod
    def _single_argument_is_the_index(cls, values: Any) -> Any:
        # faiss has no IndexPreTransform(transform) overload: a lone argument is the index
        if (
            isinstance(values, dict)
            and values.get("index") is None
            and values.get("transform") is not None
        ):
            values = {**values, "index": values["transform"], "transform": None}
        return values

    @model_validator(mode="after")
    def _dimensions_chain(self) -> PreTransformParams:
        if self.index is None or self.index.type in TRANSFORM_PARAMS:
            raise ValueError("IndexPreTransform needs the index to wrap")
        if self.transform is not None:
            dims = _transform_dims(self.transform)
            d = _input_dim(self.index)
            if dims is not None and d is not None and dims[1] != d:
                raise ValueError(
                    f"{self.transform.type} outputs {dims[1]} dimensions but the "
                    f"wrapped {self.index.type} has d={d}"
                )
        return self


def _build_pretransform(p: PreTransformParams, build_nested: BuildNested) -> Any:
    assert p.index is not None  # the params model requires it
    index = build_nested(IndexSpec.model_validate(p.index))
    if not isinstance(index, faiss.Index):
        raise InvalidArgument(f"IndexPreTransform wraps a float index, not {type(index).__name__}")
    if p.transform is None:
        return faiss.IndexPreTransform(index)
    transform = build_nested(IndexSpec.model_validate(p.transform))
    if not isinstance(transform, faiss.VectorTransform):
        raise InvalidArgument(
            f"IndexPreTransform's transform must be a vector transform, not {p.transform.type}"
        )
    # faiss's Python constructor keeps references to both, so they live as long as the wrapper
    return faiss.IndexPreTransform(transform, index)


def _build_normalization(p: NormalizationParams, _: BuildNested) -> Any:
    return faiss.NormalizationTransform(p.d, p.norm)


def _component(name: str, params: type[BaseModel], build: Any, doc: str) -> IndexType:
    return IndexType(
        name=name, family="pretransform", kind="component", params=params, build=build, doc=doc
    )


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        _component(
            "PCAMatrix",
            PCAParams,
            lambda p, _: faiss.PCAMatrix(p.d_in, p.d_out, p.eigen_power, p.random_rotation),
            "PCA projection to d_out dimensions, optionally whitened and rotated.",
        ),
        _component(
            "NormalizationTransform",
            NormalizationParams,
            _build_normalization,
            "Divides each vector by its L2 norm.",
        ),
        _component(
            "OPQMatrix",
            OPQParams,
            _opq,
            "Rotation learnt to suit a product quantizer with M sub-quantizers.",
        ),
        _component(
            "RandomRotationMatrix",
            RandomRotationParams,
            lambda p, _: faiss.RandomRotationMatrix(p.d_in, p.d_out),
            "Random orthogonal projection (faiss seeds it: the same everywhere).",
        ),
        _component(
            "ITQTransform",
            ITQParams,
            lambda p, _: faiss.ITQTransform(p.d_in, p.d_out, p.do_pca),
            "Iterative quantization: a learnt rotation whose output signs are binary codes.",
        ),
        IndexType(
            name="IndexPreTransform",
            family="pretransform",
            params=PreTransformParams,
            build=_build_pretransform,
            dynamic_params=params_by_structure,
            doc="Applies a vector transform before the index it wraps; train trains both.",
        ),
    ]
