"""Every wire operation, declared once.

This table is the contract between client and server for *what* an operation is; the server's
pipeline (``faissx_core/server/pipeline.py``) and the client's retry rules
(``faissx_client/recovery.py``) read it, and nothing else lists operation names. An entry says:

* ``access``: the least key role allowed to send it (``none`` for ``ping``, which needs no key;
  ``read``; ``write``).
* ``target``: ``index`` for an operation on one existing index (run by the backend under that
  index's lock: a job from ``faissx_core/server/ops.py``), ``control`` for one the server runs
  itself (create, delete, import, merge, list, ...: a method of the server's control table).
* ``mutates``: it changes state. A mutating request carries an idempotency key (``idem``), so a
  retry of it is applied at most once, and it is refused to read-only keys.
* ``logged``: an index write that is appended to the index's write-ahead log and replayed at start.
* ``ordered``: requests on one index run in arrival order (the parts of a pipelined add).
* ``repeatable``: not mutating in a way a repeat could double (``bye``, ``snapshot``), so the client
  may resend it without a key.
* ``adds_vectors`` / ``creates_index``: what a tenant quota counts for it.
* ``args``: the pydantic model of its arguments, validated before it touches faiss.

Adding an operation is one :class:`Operation` here plus its function on the server (an ``@op`` in
ops.py for an index operation, a control method for a control one); the server refuses to start
if either is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from faissx_core.errors import InvalidArgument, ProtocolError
from faissx_core.selectors import SelectorSpec
from faissx_core.specs import IndexSpec

Access = Literal["none", "read", "write"]
Target = Literal["index", "control"]


# -- argument models -------------------------------------------------------------------------


class Args(BaseModel):
    """Arguments of an index operation: strict, as a header field of the wrong type is not a
    header (``"1"`` is not a ``k``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    #: The largest reply this call may build (--max-message-mb; 0: no limit), set by the
    #: server, never by the client: ops whose reply size is known only as they run read it.
    _reply_bytes: int = PrivateAttr(0)


class ControlArgs(BaseModel):
    """Arguments of a control operation (specs arrive as plain maps, so not strict)."""

    model_config = ConfigDict(extra="forbid")


class SearchArgs(Args):
    k: int = Field(ge=1, le=1 << 20)
    params: IndexSpec | None = None
    #: Answer an IVF search's own counts too (``ivf_stats``: faiss's IndexIVFStats fields).
    stats: bool = False
    #: A sharded index (``--backend ray``) with a shard down answers from the other shards
    #: instead of failing with ``shard_unavailable``; a single index has nothing to leave out.
    partial: bool = False


class RangeArgs(Args):
    radius: float
    params: IndexSpec | None = None
    partial: bool = False


class KeyArgs(Args):
    key: int = Field(ge=-(1 << 63), lt=1 << 63)


class RangeOfKeys(Args):
    n0: int = Field(0, ge=0)
    ni: int = Field(ge=0)


class RemoveArgs(Args):
    selector: SelectorSpec | None = None


class ParamName(Args):
    name: str = Field(max_length=64)


class ParamValue(ParamName):
    value: StrictBool | StrictInt | StrictFloat


class ExportArgs(Args):
    vectors: bool = True
    start: int = Field(0, ge=0, lt=1 << 62)
    count: int | None = Field(None, ge=0, lt=1 << 62)


class DirectMapArgs(Args):
    type: int = Field(ge=0, le=2, description="faiss.DirectMap.NoMap / Array / Hashtable")


class AttrPath(Args):
    """A dotted path from an index to a member (faissx_core/attrs.py says what it may name)."""

    path: str = Field("", max_length=512)


class InvlistWrap(BaseModel):
    """A faiss wrapper over an IVF's own inverted lists, built on the server:
    ``CappedInvertedLists(lists, value)`` (each list read as at most ``value`` entries) or
    ``StopWordsInvertedLists(lists, value)`` (lists longer than ``value`` read as empty)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["CappedInvertedLists", "StopWordsInvertedLists"]
    value: int = Field(ge=0, lt=1 << 62)


class AttrCall(AttrPath):
    method: str = Field(max_length=64)
    args: list[StrictInt] = Field(default_factory=list, max_length=4)
    #: Call the method on this wrapper over the inverted lists at ``path`` (built for the call).
    wrap: InvlistWrap | None = None


class ReplaceInvlistsArgs(Args):
    """``index.replace_invlists(...)``: serve through ``wrap`` over the index's own lists, or
    (``None``) through its own lists again."""

    wrap: InvlistWrap | None = None


class AttrValue(AttrPath):
    value: StrictBool | StrictInt | StrictFloat | str


class AttrAssign(AttrPath):
    """A whole value for a structural member (attrs.assign): its kind, a plain struct's
    scalar fields, and faiss bytes or an array in the ``data`` frame."""

    kind: str = Field(max_length=64)
    fields: dict[str, StrictBool | StrictInt | StrictFloat | str] = Field(
        default_factory=dict, max_length=64
    )


class TransformArgs(Args):
    """A vector transform for an index that takes one (``IndexIVFSpectralHash.replace_vt``):
    a transform component's spec, or a local one as faiss's bytes (``serialized``)."""

    transform: IndexSpec


class AddArgs(Args):
    #: Rows this request and the rest of its call add (each part of a pipelined add says so):
    #: flat storage then grows ahead instead of reallocating, part after part.
    reserve: int = Field(0, ge=0, lt=1 << 40)


class CreateArgs(ControlArgs):
    spec: IndexSpec
    ephemeral: bool = False
    #: ``--backend ray``: this index's shards and replicas per shard (the server's default
    #: when absent); the local backend keeps every index whole and refuses more than one.
    shards: int | None = Field(None, ge=1, le=256)
    replicas: int | None = Field(None, ge=1, le=16)


class ImportArgs(ControlArgs):
    spec: IndexSpec | None = None
    ephemeral: bool = False
    #: A multi-part upload (faissx_core/server/uploads.py): this part's place and the whole size.
    offset: int = Field(0, ge=0)
    total: int | None = Field(None, gt=0)


class CloneArgs(ControlArgs):
    source: str
    #: A member of ``source`` to copy instead of the whole index (``quantizer``; attrs.py).
    path: str = Field("", max_length=512)
    ephemeral: bool = False


class MergeArgs(ControlArgs):
    other: str
    add_id: int = Field(0, ge=0, lt=1 << 62)


class CopySubsetArgs(ControlArgs):
    """``source.copy_subset_to(index, subset_type, a1, a2)``: the request's index is the
    destination (the one written); ``source`` is only read."""

    source: str
    subset_type: int = Field(
        ge=0,
        le=4,
        description="faiss.InvertedLists.SUBSET_TYPE_*: id range, id modulo, "
        "element range, list fraction, list range",
    )
    a1: int = Field(ge=-(1 << 62), lt=1 << 62)
    a2: int = Field(ge=-(1 << 62), lt=1 << 62)


class PreassignedArgs(Args):
    """``search_preassigned``: ``k`` results from the lists in the ``assign`` array (with their
    coarse distances ``centroid_dis``), as faiss's IndexIVF.search_preassigned."""

    k: int = Field(ge=1, le=1 << 20)


class RangePreassignedArgs(Args):
    radius: float


class ListArgs(ControlArgs):
    all: bool = Field(False, description="include this session's unnamed indices")


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """What one wire operation is, independent of how the server carries it out."""

    name: str
    access: Access
    target: Target
    args: type[BaseModel] = Args
    mutates: bool = False
    logged: bool = False
    ordered: bool = False
    repeatable: bool = False
    adds_vectors: bool = False
    creates_index: bool = False
    doc: str = ""

    @property
    def write(self) -> bool:
        """Needs a write key and the index's write lock."""
        return self.mutates

    @property
    def keyed(self) -> bool:
        """Carries an idempotency key; the server applies it at most once per key."""
        return self.mutates

    @property
    def retry_safe(self) -> bool:
        """May the client resend it when it may already have reached the server?"""
        return not self.mutates or self.keyed or self.repeatable

    def parse(self, raw: Mapping[str, Any]) -> Any:
        """The validated arguments, or InvalidArgument naming the first bad field."""
        try:
            return self.args.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "args"
            raise InvalidArgument(f"{self.name}: {where}: {err.get('msg')}") from None


def _read(name: str, args: type[BaseModel] = Args, doc: str = "") -> Operation:
    return Operation(name, "read", "index", args, doc=doc)


def _write(name: str, args: type[BaseModel] = Args, doc: str = "", **more: Any) -> Operation:
    return Operation(
        name, "write", "index", args, mutates=True, logged=True, ordered=True, doc=doc, **more
    )


_TABLE = (
    # -- control ----------------------------------------------------------------------------
    Operation(
        "ping",
        "none",
        "control",
        ControlArgs,
        repeatable=True,
        doc="liveness and protocol version; needs no key",
    ),
    Operation(
        "touch",
        "read",
        "control",
        ControlArgs,
        repeatable=True,
        doc="keep-alive for the session's unnamed indices; checks the key",
    ),
    Operation(
        "list",
        "read",
        "control",
        ListArgs,
        repeatable=True,
        doc="the tenant's indices and memory use",
    ),
    Operation(
        "stats",
        "read",
        "control",
        ControlArgs,
        repeatable=True,
        doc="faissx status: uptime, version, connections, the tenant's indices and logs",
    ),
    Operation(
        "bye",
        "write",
        "control",
        ControlArgs,
        repeatable=True,
        doc="drop the session's unnamed indices (a second bye drops nothing)",
    ),
    Operation(
        "create",
        "write",
        "control",
        CreateArgs,
        mutates=True,
        ordered=True,
        creates_index=True,
        doc="build an index from a spec",
    ),
    Operation(
        "import",
        "write",
        "control",
        ImportArgs,
        mutates=True,
        ordered=True,
        creates_index=True,
        adds_vectors=True,
        doc="an index from faiss.serialize_index bytes",
    ),
    Operation(
        "clone",
        "write",
        "control",
        CloneArgs,
        mutates=True,
        ordered=True,
        creates_index=True,
        adds_vectors=True,
        doc="a new index, faiss.clone_index of another of the tenant's (source)",
    ),
    Operation(
        "delete",
        "write",
        "control",
        ControlArgs,
        mutates=True,
        ordered=True,
        doc="drop an index and its files",
    ),
    Operation(
        "merge_from",
        "write",
        "control",
        MergeArgs,
        mutates=True,
        ordered=True,
        doc="move another index's vectors into this one (faiss merge_from)",
    ),
    Operation(
        "copy_subset_to",
        "write",
        "control",
        CopySubsetArgs,
        mutates=True,
        ordered=True,
        adds_vectors=True,
        doc="copy a subset of another IVF's inverted lists (source) into this one",
    ),
    Operation(
        "snapshot",
        "write",
        "control",
        ControlArgs,
        repeatable=True,
        ordered=True,
        doc="snapshot one named index, or all of the tenant's",
    ),
    Operation(
        "repair",
        "write",
        "control",
        ControlArgs,
        mutates=True,
        ordered=True,
        doc="rebuild a quarantined index from its intact part, its files copied aside",
    ),
    Operation(
        "drop",
        "write",
        "control",
        ControlArgs,
        mutates=True,
        ordered=True,
        doc="delete a quarantined index and its files, on request",
    ),
    # -- reads on one index -----------------------------------------------------------------
    _read("info", doc="d, ntotal, is_trained, metric, type, runtime parameters"),
    _read("search", SearchArgs),
    _read("assign", SearchArgs),
    _read("range_search", RangeArgs),
    _read("search_and_reconstruct", SearchArgs),
    _read("reconstruct", KeyArgs),
    _read("reconstruct_n", RangeOfKeys),
    _read("reconstruct_batch"),
    _read("search_preassigned", PreassignedArgs, doc="IVF search in given lists"),
    _read("range_search_preassigned", RangePreassignedArgs, doc="IVF range search in given lists"),
    _read("get_parameter", ParamName),
    _read("serialize", doc="faiss.serialize_index bytes"),
    _read("export", ExportArgs, doc="stored ids (and vectors), one page"),
    _read("get_attr", AttrPath, doc="a structural member at a path, as a value or a view"),
    _read("call_attr", AttrCall, doc="a read-only method of the object at a path"),
    _read("pack_attr", AttrPath, doc="the object at a path as data another index can take"),
    # -- writes on one index ----------------------------------------------------------------
    _write("add", AddArgs, adds_vectors=True),
    _write("add_with_ids", adds_vectors=True),
    _write("train"),
    _write("update_vectors", doc="IVF with a direct map: replace the vectors of ids"),
    _write("replace_invlists", ReplaceInvlistsArgs, doc="IVF: serve through a wrapper"),
    _write("remove_ids", RemoveArgs),
    _write("reset"),
    _write("set_parameter", ParamValue),
    _write("set_direct_map_type", DirectMapArgs),
    _write("set_attr", AttrValue, doc="a tuning knob or checked flag at a path (attrs.py)"),
    _write("assign_attr", AttrAssign, doc="replace a structural member (attrs.assign)"),
    _write("replace_vt", TransformArgs, doc="IndexIVFSpectralHash.replace_vt: a new transform"),
)

#: Every operation by name (read-only).
OPERATIONS: Mapping[str, Operation] = MappingProxyType({o.name: o for o in _TABLE})


def operation(name: str) -> Operation:
    """The declaration of ``name``, or ProtocolError: an unknown op is a malformed request."""
    found = OPERATIONS.get(name)
    if found is None:
        raise ProtocolError(f"unknown op {name!r}")
    return found


def retry_safe(name: str) -> bool:
    """May the client resend ``name`` when it may already have reached the server?"""
    found = OPERATIONS.get(name)
    return found is not None and found.retry_safe
