"""Generic family: any faiss index class that faiss can serialize, built from its constructor.

The named families (flat, ivf, pq, hnsw, ...) validate each parameter and keep their fast paths;
this family is the backstop that lets a remote client build what no family declares --
``IndexLSH``, ``IndexRefineFlat``, ``IndexBinaryHNSW``, ``IndexPQFastScan``,
``IndexResidualQuantizer`` and the rest -- without ever building it locally.

A spec names the faiss class and its positional constructor arguments: numbers, short strings
and nested index specs (a remote proxy passed to the constructor). Two rules keep a hostile
spec harmless: only classes deriving from ``faiss.Index`` / ``faiss.IndexBinary`` (no GPU ones)
are built, and every number is bounded, so no constructor is asked for absurd memory. The built
object then goes once through ``serialize_index`` and back: that proves the server can snapshot
it (a class faiss cannot write is refused here, not at its first snapshot), and the copy owns
every nested part, as faiss's reader makes it.
"""

from __future__ import annotations

from typing import Any

import faiss
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from faissx_core import readers
from faissx_core.attrs import structure_loss
from faissx_core.errors import InvalidArgument, UnsupportedOperation, faiss_reason
from faissx_core.hookspecs import hookimpl
from faissx_core.specs import BuildNested, IndexSpec, IndexType, params_by_structure
from faissx_plugins.flat import SearchParams

#: The spec type of generic indices; the faiss class is in ``params["cls"]``.
GENERIC = "faiss_index"
#: Bound of every integer argument (dimensions, list counts, bits, graph degrees).
MAX_INT = 1 << 20
#: Scalar constructor arguments; nested index specs are dicts.
Scalar = StrictBool | StrictInt | StrictFloat | str


class GenericParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cls: str = Field(pattern=r"^[A-Z][A-Za-z0-9_]{1,64}$", description="the faiss class")
    args: list[Scalar | IndexSpec] = Field(
        [], max_length=16, description="its positional constructor arguments"
    )


def index_class(name: str) -> type:
    """The faiss index class ``name``, or InvalidArgument when it is not one we may build."""
    cls = getattr(faiss, name, None)
    if (
        not isinstance(cls, type)
        or not issubclass(cls, faiss.Index | faiss.IndexBinary)
        or "Gpu" in name
        or "GPU" in name
    ):
        raise InvalidArgument(f"{name} is not a faiss CPU index class")
    return cls


def _argument(value: Any, build_nested: BuildNested) -> Any:
    if isinstance(value, IndexSpec):
        return build_nested(value)
    if isinstance(value, bool | str):
        if isinstance(value, str) and len(value) > 256:
            raise InvalidArgument("a string constructor argument is at most 256 characters")
        return value
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise InvalidArgument(f"integer argument {value} is outside [-{MAX_INT}, {MAX_INT}]")
    if isinstance(value, float) and not abs(value) < 1e30:
        raise InvalidArgument(f"float argument {value} is not a finite number below 1e30")
    return value


def build(p: GenericParams, build_nested: BuildNested) -> Any:
    cls = index_class(p.cls)
    args = [_argument(a, build_nested) for a in p.args]
    try:
        built = cls(*args)
    except (TypeError, NotImplementedError, AttributeError) as exc:
        raise InvalidArgument(f"{p.cls}{tuple(p.args)!r}: {faiss_reason(str(exc))}") from None
    try:
        copy = readers.copy_through_bytes(built)
    except RuntimeError as exc:
        reason = faiss_reason(str(exc))
        if "don't know how to serialize" in reason or "not supported" in reason:
            raise UnsupportedOperation(
                f"{p.cls} cannot be served remotely: faiss cannot serialize it, so the server "
                f"could not snapshot it ({reason})"
            ) from None
        # Some classes serialize only once trained (an additive quantizer's codebooks): the
        # object is kept as built.
        return _keep_built(p.cls, built, args, reason)
    loss = structure_loss(built, copy)
    if loss is None:
        return copy
    try:  # faiss writes it incompletely (an untrained IndexIVFPQR), or as a base class
        return _keep_built(p.cls, built, args, f"faiss's copy is incomplete: {loss}")
    except UnsupportedOperation:
        if loss.startswith("it came back as"):
            # only the class changed, to the one faiss itself reads back from its file
            # (a MultiIndexQuantizer2 is written as the MultiIndexQuantizer it computes as)
            return copy
        raise


def _keep_built(cls: str, built: Any, args: list[Any], reason: str) -> Any:
    """``built`` itself, for a class faiss cannot copy yet; a nested part it points to must
    then be owned by it."""
    nested = [a for a in args if isinstance(a, faiss.Index | faiss.IndexBinary)]
    if len(nested) > 1 or (nested and not hasattr(built, "own_fields")):
        raise UnsupportedOperation(
            f"{cls} with nested indices cannot be served remotely before it is trained: "
            f"faiss cannot copy it yet ({reason})"
        )
    for part in nested:
        part.this.disown()  # type: ignore[union-attr]  # faiss's stubs lack it
        built.own_fields = True
    return built


class RefineSearchParams(SearchParams):
    """``faiss.IndexRefineSearchParameters(k_factor=1, base_index_params=None)``."""

    k_factor: float = Field(1.0, ge=1.0, le=1 << 10, description="base results per result")
    base_index_params: IndexSpec | None = Field(
        None, description="SearchParameters for the base index's search (a nested component)"
    )


def _refine_params(p: RefineSearchParams) -> Any:
    out = faiss.IndexRefineSearchParameters()
    out.k_factor = p.k_factor  # base_index_params and sel are set where the call is built
    return out


@hookimpl
def faissx_index_types() -> list[IndexType]:
    return [
        IndexType(
            name="IndexRefineSearchParameters",
            family="generic",
            kind="component",
            params=RefineSearchParams,
            build=lambda p, _: _refine_params(p),
            doc="Per-call IndexRefine parameters: k_factor, and the base index's own "
            "parameters in base_index_params.",
        ),
        IndexType(
            name=GENERIC,
            family="generic",
            params=GenericParams,
            build=build,
            dynamic_params=params_by_structure,
            doc="Any faiss index class faiss can serialize, from its constructor arguments "
            "(the backstop for classes no named family declares).",
        ),
    ]
