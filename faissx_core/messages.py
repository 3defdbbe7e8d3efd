"""Message models: the header of every request and reply, validated with pydantic.

A message on the wire is ``[header, *buffers]`` (see ``protocol.py``); these models are the header.
Arrays are never inside the header: each is described by an :class:`ArrayDesc` and travels as one
raw frame of its own, in the order the descriptors are listed.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

PROTOCOL_VERSION: Final = 1

#: The dtypes an array frame may carry. Everything else is refused before numpy sees it.
DType = Literal["float32", "uint8", "int64", "uint64", "int32"]
ITEM_SIZES = {"float32": 4, "uint8": 1, "int64": 8, "uint64": 8, "int32": 4}

#: Upper bound on each dimension of an array's shape.
MAX_ELEMENTS = 1 << 34
#: Upper bound on a request's header frame: the header is msgpack, parsed before anything else.
MAX_HEADER_BYTES = 1 << 20


def request_id_text(rid: int) -> str:
    """How a request id is shown in the server's log and in the client's errors: 16 hex digits
    (a JSON number would lose the low digits of a 63-bit id in many log tools)."""
    return f"{rid:016x}"


Name = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    # strict: a header field of the wrong msgpack type is an error, never coerced ("7" is not 7)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ArrayDesc(_Strict):
    """Describes one raw frame: its name (the argument it binds to), dtype and shape.

    The element count is not bounded here: nothing is allocated from a descriptor. Each array
    wraps the frame that arrived, after its length was compared with :attr:`nbytes` (protocol.py),
    so a descriptor announcing more than its frame holds is refused whatever it announces. (A
    validator of the product ran in Python for every message: half the header's validation.)
    """

    name: Name
    dtype: DType
    shape: Annotated[list[Annotated[int, Field(ge=0, le=MAX_ELEMENTS)]], Field(max_length=3)]

    @property
    def nbytes(self) -> int:
        """Bytes of the frame this descriptor announces (a scalar is one element)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count * ITEM_SIZES[self.dtype]


class Request(_Strict):
    """A request header. ``index`` is the index name within the caller's tenant."""

    v: Literal[1] = PROTOCOL_VERSION
    id: Annotated[StrictInt, Field(ge=0, lt=1 << 63)]
    op: Annotated[str, Field(min_length=1, max_length=64)]
    index: Annotated[str, Field(max_length=512)] | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    arrays: Annotated[list[ArrayDesc], Field(max_length=8)] = Field(default_factory=list)
    api_key: Annotated[str, Field(max_length=1024)] | None = None
    tenant: Annotated[str, Field(max_length=128)] | None = None
    #: Identifies one client process: the owner of its unnamed indices.
    session: Annotated[str, Field(max_length=128)] | None = None
    #: Idempotency key of a mutating request (applied at most once per tenant).
    idem: Annotated[str, Field(max_length=128)] | None = None
    #: Idempotency key of the write this one must follow: applied only if that one succeeded
    #: (the parts of a pipelined call, so a failure part-way stops the rest).
    after: Annotated[str, Field(max_length=128)] | None = None
    #: The client understands ``working`` heartbeat replies: while this request runs, the
    #: server sends one every ``--progress-every`` seconds, so its timeout bounds silence.
    progress: bool = False


class ErrorBody(_Strict):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Reply(_Strict):
    """A reply header: ``ok`` with ``result`` (and arrays), or not ``ok`` with ``error``."""

    v: Literal[1] = PROTOCOL_VERSION
    id: int
    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    arrays: list[ArrayDesc] = Field(default_factory=list)
    error: ErrorBody | None = None
    #: A heartbeat, not the answer: the request ``id`` is still being worked on (sent to
    #: requests that asked with ``progress``); the client keeps waiting.
    working: bool = False
