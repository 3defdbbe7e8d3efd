"""What an index *is*, independent of where it runs.

A plugin describes each index class it provides with an :class:`IndexType`; a concrete index is an
:class:`IndexSpec` (type name + validated constructor parameters). The same objects serve both
sides: the server builds the faiss object from a spec, the client offers a class with the type's
name whose positional parameters are the params model's fields, in order.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faissx_core import readers
from faissx_core.errors import InvalidArgument, UnknownParameter

VectorKind = Literal["float", "binary"]


class IndexSpec(BaseModel):
    """A serialisable description of an index: enough to build it again anywhere.

    ``params`` may hold nested specs (an IVF quantizer, the index under an IDMap); they stay as
    plain dicts here and the type's params model validates them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)


class RuntimeParam(BaseModel):
    """A knob that may change after construction, such as ``nprobe`` or ``efSearch``.

    ``path`` is the dotted attribute path on the faiss object (``"hnsw.efSearch"``); setting
    the parameter by name and assigning the attribute on a proxy go through :meth:`coerce`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str
    kind: Literal["int", "float", "bool"]
    ge: float | None = None
    le: float | None = None
    doc: str = ""

    def coerce(self, value: Any) -> int | float | bool:
        """The value as faiss wants it, or InvalidArgument saying what range is allowed."""
        caster = {"int": int, "float": float, "bool": bool}[self.kind]
        if isinstance(value, bool) and self.kind != "bool":
            raise InvalidArgument(f"{self.name} must be {self.kind}, not bool")
        try:
            out = caster(value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{self.name} must be {self.kind}, got {value!r}") from None
        if self.kind == "int" and out != value:
            raise InvalidArgument(f"{self.name} must be an integer, got {value!r}")
        if (self.ge is not None and out < self.ge) or (self.le is not None and out > self.le):
            raise InvalidArgument(f"{self.name} must be in [{self.ge}, {self.le}], got {value!r}")
        return out

    def read(self, index: Any) -> Any:
        obj = index
        for part in self.path.split("."):
            obj = _step(obj, part)
        return obj

    def write(self, index: Any, value: Any) -> None:
        *parents, leaf = self.path.split(".")
        obj = index
        for part in parents:
            obj = _step(obj, part)
        setattr(obj, leaf, self.coerce(value))


def downcast(index: Any) -> Any:
    """The most derived Python class of a faiss index, float or binary."""
    if isinstance(index, faiss.IndexBinary):
        return faiss.downcast_IndexBinary(index)
    return faiss.downcast_index(index)


def faiss_class_name(index: Any) -> str:
    return type(downcast(index)).__name__


def _step(obj: Any, attr: str) -> Any:
    """One attribute along a path, seeing through faiss's base-class pointers.

    ``IndexIDMap.index`` or ``IndexPreTransform.index`` come back from SWIG typed as the base
    ``Index``; downcasting them is what lets ``"index.hnsw.efSearch"`` reach the HNSW inside.
    """
    value = getattr(obj, attr)
    return downcast(value) if isinstance(value, faiss.Index | faiss.IndexBinary) else value


#: Spec type of a reference to an existing index of the same tenant (``params: {"name"}``):
#: the server builds it as a copy of that index, state included.
REF_TYPE = "ref"

#: Builds nested specs (an IVF's quantizer, an IDMap's inner index) for a plugin's ``build``.
BuildNested = Callable[[IndexSpec], Any]


class IndexType(BaseModel):
    """One index class (or index component) a plugin provides.

    ``params`` is a pydantic model whose fields, in declaration order, are the constructor's
    positional parameters. ``build(params, build_nested)`` returns the faiss object.

    ``kind="component"`` marks things that are only ever parts of an index or of a call — a
    ``PCAMatrix`` inside an ``IndexPreTransform``, a ``SearchParametersIVF`` — so a remote client
    describes them and never creates them on the server by themselves.

    ``dynamic_params(index)`` adds runtime parameters found by inspecting the built object, for
    types whose structure is only known once built (``index_factory`` strings).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    family: str
    params: type[BaseModel]
    build: Callable[[Any, BuildNested], Any]
    vector_kind: VectorKind = "float"
    requires_training: bool = False
    runtime_params: tuple[RuntimeParam, ...] = ()
    kind: Literal["index", "component"] = "index"
    dynamic_params: Callable[[Any, Mapping[str, IndexType]], Sequence[RuntimeParam]] | None = None
    #: Rewrites a shorter spelling of the constructor call into faiss's own, or returns None:
    #: ``(args, kwargs) -> (args, kwargs)``, where an argument may be an :class:`IndexSpec`
    #: (a part the client builds locally or describes remotely). The seed's
    #: ``IndexIVFFlat(d, nlist=100)``, with no quantizer, is one.
    shorthand: (
        Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]] | None]
        | None
    ) = None
    doc: str = ""

    def params_of(self, index: Any, types: Mapping[str, IndexType]) -> dict[str, RuntimeParam]:
        """Every runtime parameter of a built ``index``, by name (``types``: all known types)."""
        params = {p.name: p for p in self.runtime_params}
        if self.dynamic_params is not None:
            params.update((p.name, p) for p in self.dynamic_params(index, types))
        return params

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> IndexSpec:
        """Map constructor arguments onto the params model, as Python binds a signature."""
        fields = list(self.params.model_fields)
        if len(args) > len(fields):
            raise TypeError(
                f"{self.name}() takes at most {len(fields)} arguments ({len(args)} given)"
            )
        values = dict(zip(fields, args, strict=False))
        for key, value in kwargs.items():
            if key in values:
                raise TypeError(f"{self.name}() got multiple values for argument {key!r}")
            values[key] = value
        return IndexSpec(type=self.name, params=self.validate_params(values).model_dump())

    def validate_params(self, values: dict[str, Any]) -> BaseModel:
        try:
            return self.params.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
            raise InvalidArgument(f"{self.name}: {where}: {err.get('msg')}") from None

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for listings (``faissx plugins``, ``docs/index-types.md``)."""
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "vector_kind": self.vector_kind,
            "requires_training": self.requires_training,
            "params": list(self.params.model_fields),
            "runtime_params": [p.name for p in self.runtime_params],
            "doc": self.doc,
        }


def lookup_param(params: dict[str, RuntimeParam], name: str, owner: str) -> RuntimeParam:
    try:
        return params[name]
    except KeyError:
        known = ", ".join(sorted(params)) or "none"
        raise UnknownParameter(
            f"{owner} has no runtime parameter {name!r} (known: {known})"
        ) from None


def params_by_structure(index: Any, types: Mapping[str, IndexType]) -> list[RuntimeParam]:
    """Runtime parameters of the indices nested inside ``index``, with paths from the top.

    Wrappers (``IndexIDMap``, ``IndexPreTransform``, ``index_factory`` results) expose the knobs
    of what they wrap: an ``IndexIDMap2`` over an HNSW gets ``efSearch`` at
    ``index.hnsw.efSearch``. Each level's knobs come from the type its family declared for that
    faiss class, so a parameter is declared once, by the family that owns it.
    """
    found: list[RuntimeParam] = []
    prefix = ""
    obj = downcast(index)
    for _ in range(8):  # wrappers nest shallowly; the bound guards against cycles
        itype = types.get(type(obj).__name__)
        if itype is not None:
            found.extend(
                p.model_copy(update={"path": prefix + p.path}) for p in itype.runtime_params
            )
        if not isinstance(getattr(obj, "index", None), faiss.Index | faiss.IndexBinary):
            break
        obj = _step(obj, "index")
        prefix += "index."
    return found


class ImportedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faiss_class: str = Field(description="the faiss class of the uploaded index")


def _not_rebuildable(params: ImportedParams, _: BuildNested) -> Any:
    raise InvalidArgument(
        f"an uploaded {params.faiss_class} has no constructor spec; it lives in its snapshot"
    )


#: The type of indices uploaded as faiss bytes (``read_index`` in remote mode, unpickling)
#: rather than constructed from a spec. Core owns it: it is no family's.
IMPORTED = IndexType(
    name="imported",
    family="core",
    params=ImportedParams,
    build=_not_rebuildable,
    dynamic_params=params_by_structure,
    doc="An index uploaded as serialized faiss bytes.",
)


#: Largest faiss object (in bytes) a spec carries inline: its base64 text stays well inside one
#: message header (messages.MAX_HEADER_BYTES, 1 MiB). Larger indices travel by ``import``.
MAX_SERIALIZED_BYTES = 512 << 10


class SerializedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["VectorTransform", "Index", "IndexBinary"] = Field(
        description="which faiss reader reads the bytes"
    )
    faiss_class: str = Field(max_length=64, description="the faiss class written (for messages)")
    data: str = Field(
        max_length=(MAX_SERIALIZED_BYTES + 2) // 3 * 4,
        description="faiss's own serialization of the object, base64",
    )


def encode_serialized(obj: Any) -> IndexSpec:
    """The ``serialized`` spec of a local faiss object (a trained ``LinearTransform``, a
    quantizer, ...): faiss's own bytes, so the server holds exactly what the program built.
    InvalidArgument when it is none of the kinds or larger than :data:`MAX_SERIALIZED_BYTES`."""
    name = type(obj).__name__
    if isinstance(obj, faiss.VectorTransform):
        writer = faiss.VectorIOWriter()
        faiss.write_VectorTransform(obj, writer)  # type: ignore[arg-type]  # faiss's stubs lack the IOWriter overload
        data, kind = faiss.vector_to_array(writer.data), "VectorTransform"
    elif isinstance(obj, faiss.IndexBinary):
        data, kind = faiss.serialize_index_binary(obj), "IndexBinary"
    elif isinstance(obj, faiss.Index):
        data, kind = faiss.serialize_index(obj), "Index"
    else:
        raise InvalidArgument(f"a local faiss {name} cannot be sent to the server")
    if len(data) > MAX_SERIALIZED_BYTES:
        raise InvalidArgument(
            f"a local faiss {name} of {len(data):,} bytes is too large to send inside another "
            f"index's constructor (at most {MAX_SERIALIZED_BYTES:,}): "
            + (
                "upload it first (faiss.deserialize_index(faiss.serialize_index(obj)) in remote "
                "mode) and pass the remote index"
                if kind != "VectorTransform"
                else "create it after configure(), so the server builds and trains it"
            )
        )
    text = base64.b64encode(np.ascontiguousarray(data).tobytes()).decode("ascii")
    return IndexSpec(type=SERIALIZED.name, params={"kind": kind, "faiss_class": name, "data": text})


def _read_serialized(p: SerializedParams, _: BuildNested) -> Any:
    try:
        raw = np.frombuffer(base64.b64decode(p.data, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError):
        raise InvalidArgument("a serialized part's data is not base64") from None
    try:
        if p.kind == "VectorTransform":
            return readers.read_transform(raw)
        return readers.read_index(raw, binary=p.kind == "IndexBinary")
    except MemoryError:  # corrupt sizes can ask for huge buffers (faiss's own errors: the caller)
        raise InvalidArgument(f"a serialized {p.faiss_class} asks for absurd memory") from None


#: A faiss object the client had built locally and sends as faiss's own bytes, inside the spec
#: of the index that uses it (``IndexPreTransform(local_linear_transform, index)``). Core owns
#: it, like ``imported``; the registry turns a malformed or unreadable one into InvalidArgument.
SERIALIZED = IndexType(
    name="serialized",
    family="core",
    kind="component",
    params=SerializedParams,
    build=_read_serialized,
    doc="A local faiss object (transform, quantizer) sent as its faiss serialization.",
)
