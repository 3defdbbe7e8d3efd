"""The one error table.

Every failure that crosses the wire has a stable ``code`` string. The server turns an exception
into ``{"code", "message", "details"}``; the client turns that back into the class registered for
the code. Each class also derives from the built-in exception a FAISS user already catches for the
same mistake, so ``except ValueError`` (or ``KeyError``, ``PermissionError``, ``RuntimeError``)
keeps working when an index moves from local to remote.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FaissxError(Exception):
    """Base of every FAISSx error; ``code`` is what travels on the wire."""

    code: ClassVar[str] = "internal"
    #: Client side: the id of the request this error answers, as the server's log shows it.
    request_id: str | None = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.message

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InternalError(FaissxError, RuntimeError):
    """A bug on the server side; the message carries no internals beyond the exception text."""

    code = "internal"


class ProtocolError(FaissxError, ValueError):
    """The frames could not be understood: bad msgpack, bad header, frames not matching it."""

    code = "protocol_error"


class InvalidArgument(FaissxError, ValueError, AssertionError):
    """Bad input to an index operation: wrong dimension, dtype, NaN, ``k <= 0`` and the like.

    faiss's own Python wrappers raise ``AssertionError`` for the same mistakes, so this is one too.
    """

    code = "invalid_argument"


class OutOfRange(InvalidArgument, RuntimeError, IndexError):
    """A key or range beyond the index's contents (faiss raises RuntimeError for the same;
    Python, and the original FAISSx, IndexError)."""

    code = "out_of_range"


class NotTrained(InvalidArgument, RuntimeError):
    """The index must be trained first (faiss raises RuntimeError for the same)."""

    code = "not_trained"


class InvalidParameters(InvalidArgument, RuntimeError):
    """faiss refused an index's construction parameters (a factory string it cannot parse,
    ``d`` not a multiple of ``M``): faiss raises RuntimeError for the same."""

    code = "invalid_parameters"


class WrongType(InvalidArgument, TypeError):
    """An argument of a type faiss refuses outright (binary codes that are not uint8, a
    fractional Hamming radius); faiss raises TypeError for the same."""

    code = "wrong_type"


class UnknownParameter(FaissxError, AttributeError):
    """A runtime parameter or attribute the index type does not declare (faiss: AttributeError)."""

    code = "unknown_parameter"


class IndexNotFound(FaissxError, KeyError):
    """No index of that name exists for the caller's tenant."""

    code = "index_not_found"


class IndexExists(FaissxError, ValueError):
    """An index of that name already exists for the caller's tenant."""

    code = "index_exists"


class IndexDamaged(FaissxError, RuntimeError):
    """The index's files on the server are damaged: it is quarantined, every byte kept.

    ``details`` name the ``path`` of the kept files and the ``reason``; the message says what
    to do (``faissx indexes repair NAME`` or ``faissx indexes drop NAME``). Every operation on
    the index, and creating another index of its name, answers this until then.
    """

    code = "index_damaged"


class UnknownIndexType(FaissxError, ValueError):
    """The server has no plugin providing this index type (named in ``details['plugin']``)."""

    code = "unknown_index_type"


class UnsupportedOperation(FaissxError, RuntimeError):
    """The index type cannot do this operation (faiss raises RuntimeError for the same)."""

    code = "unsupported_operation"


class FaissError(FaissxError, RuntimeError):
    """faiss itself refused the operation; the message is faiss's own."""

    code = "faiss_error"


class Unauthenticated(FaissxError, PermissionError):
    """No API key, or one the server does not know."""

    code = "unauthenticated"


class PermissionDenied(FaissxError, PermissionError):
    """The key is valid but may not do this (another tenant, or a read-only role writing)."""

    code = "permission_denied"


class QuotaExceeded(FaissxError, RuntimeError):
    """A per-request, per-tenant or server-wide limit would be crossed; nothing was changed."""

    code = "quota_exceeded"


class Aborted(FaissxError, RuntimeError):
    """A part of a pipelined call was not applied because the part before it was not: a large
    ``add`` sent in several requests stops at its first failure, as a sequential one would."""

    code = "aborted"


class ShardUnavailable(FaissxError, RuntimeError):
    """A sharded index (``--backend ray``) has a shard with no live replica: the answer would
    be missing that shard's vectors, so the call fails instead (``details['shard']`` names it)
    unless the caller asked for partial results."""

    code = "shard_unavailable"


class ServerUnavailable(FaissxError, ConnectionError):
    """Client side: the server did not answer in time (never sent by a server)."""

    code = "unavailable"


class NotConfigured(FaissxError, RuntimeError):
    """Client side: a remote-only call was made before ``configure()``."""

    code = "not_configured"


class FaissxWarning(UserWarning):
    """Something worked but may not do what the caller expects (the server says why, in the
    ``warnings`` list of a reply): a named index on a server that keeps nothing on disk."""


ERRORS: dict[str, type[FaissxError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        ProtocolError,
        InvalidArgument,
        OutOfRange,
        NotTrained,
        InvalidParameters,
        WrongType,
        UnknownParameter,
        IndexNotFound,
        IndexExists,
        IndexDamaged,
        UnknownIndexType,
        UnsupportedOperation,
        FaissError,
        Unauthenticated,
        PermissionDenied,
        QuotaExceeded,
        Aborted,
        ShardUnavailable,
        ServerUnavailable,
        NotConfigured,
    )
}


def from_wire(error: dict[str, Any]) -> FaissxError:
    """Rebuild the exception a server reported; unknown codes become InternalError."""
    cls = ERRORS.get(str(error.get("code")), InternalError)
    exc = cls(str(error.get("message", "")))
    details = error.get("details")
    exc.details = dict(details) if isinstance(details, dict) else {}
    return exc


def faiss_reason(text: str) -> str:
    """faiss's C++ message without its ``Error in <signature> at <file>:<line>:`` prefix."""
    text = str(text).strip()
    head, sep, reason = text.rpartition(": ")
    return reason.strip() if sep and text.startswith("Error in") and " at " in head else text
