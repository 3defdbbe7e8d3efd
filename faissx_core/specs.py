"""What an index *is*, independent of where it runs.

A plugin describes each index class it provides with an :class:`IndexType`; a concrete index is an
:class:`IndexSpec` (type name + validated constructor parameters). The same objects serve both
sides: the server builds the faiss object from a spec, the client offers a class with the type's
name whose positional parameters are the params model's fields, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
            obj = getattr(obj, part)
        return obj

    def write(self, index: Any, value: Any) -> None:
        *parents, leaf = self.path.split(".")
        obj = index
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, leaf, self.coerce(value))


#: Builds nested specs (an IVF's quantizer, an IDMap's inner index) for a plugin's ``build``.
BuildNested = Callable[[IndexSpec], Any]


class IndexType(BaseModel):
    """One index class a plugin provides.

    ``params`` is a pydantic model whose fields, in declaration order, are the constructor's
    positional parameters. ``build(params, build_nested)`` returns the faiss object.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    family: str
    params: type[BaseModel]
    build: Callable[[Any, BuildNested], Any]
    vector_kind: VectorKind = "float"
    requires_training: bool = False
    runtime_params: tuple[RuntimeParam, ...] = ()
    doc: str = ""

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> IndexSpec:
        """Map constructor arguments onto the params model, as Python binds a signature."""
        fields = list(self.params.model_fields)
        if len(args) > len(fields):
            raise TypeError(f"{self.name}() takes at most {len(fields)} arguments ({len(args)} given)")
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

    def runtime_param(self, name: str) -> RuntimeParam:
        for param in self.runtime_params:
            if param.name == name:
                return param
        known = ", ".join(p.name for p in self.runtime_params) or "none"
        raise UnknownParameter(f"{self.name} has no runtime parameter {name!r} (known: {known})")

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for listings (``faissx plugins``, ``docs/index-types.md``)."""
        return {
            "name": self.name,
            "family": self.family,
            "vector_kind": self.vector_kind,
            "requires_training": self.requires_training,
            "params": list(self.params.model_fields),
            "runtime_params": [p.name for p in self.runtime_params],
            "doc": self.doc,
        }
