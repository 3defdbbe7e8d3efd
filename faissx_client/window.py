"""The write window: one-request adds that return once sent, acknowledged later.

faiss's ``add`` returns once the vectors are in the index, so a client that adds one vector per
call (LlamaIndex does) waits a full round trip per vector, and the server's group commit has
nothing to share an ``fdatasync`` with. ``configure(write_window=N)`` (``FAISSX_WRITE_WINDOW``)
lets up to ``N`` such writes per thread go unacknowledged, as Redis pipelining or Qdrant's
``wait=False`` would. The server still applies them in arrival order and acknowledges each
only once it is durable (per its ``--fsync``); what changes is *when the caller hears of it*:

* **Only results nobody reads are deferred**: ``add`` / ``add_with_ids`` sent as one request
  (faiss returns None for them). Everything else is a *barrier*: it first waits until every
  deferred write of its thread is acknowledged, so a read sees the writes before it.
* **Failures surface late, and stop the rest**: the deferred writes to one index are chained
  (each names the one before it in ``after``), so once one fails the server refuses the later
  ones, as a loop of plain adds would have stopped there. The barrier raises the first failure
  as its own type, saying it was deferred and how many later writes were not applied; the call
  that reached the barrier is not performed.
* **Bounded**: a deferred write's arrays are copied (faiss copies too, so callers reuse their
  buffers) and kept until acknowledged, for a retry on another connection; past ``N`` writes or
  :data:`WINDOW_BYTES` the next one waits for acknowledgements first.

This module holds the accounting (what is owed, what failed, what the error says); the
transport (faissx_client/transport.py) sends, receives and retries, with the window's writes
among its requests in flight.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from faissx_core.errors import FaissxError

#: Bytes of deferred writes one connection may hold unacknowledged (copies kept for a retry);
#: past it the next write waits for acknowledgements first.
WINDOW_BYTES = 8 << 20
#: The ops whose reply a caller may not wait for: faiss's result for them is None.
DEFERRABLE = frozenset({"add", "add_with_ids"})


class DeferredWrite:
    """One deferred write: what its error must name, and the bytes it holds."""

    __slots__ = ("header", "size")

    def __init__(self, header: dict[str, Any], size: int) -> None:
        self.header = header
        self.size = size

    @property
    def what(self) -> str:
        return f"{self.header['op']} to {self.header['index']!r}"


class WriteWindow:
    """The deferred writes of one connection: how many and how many bytes are unacknowledged,
    the chain of each index, and the first failure, until a barrier reports it."""

    def __init__(self, size: int, max_bytes: int = WINDOW_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.pending: dict[int, DeferredWrite] = {}  # request id -> write, in send order
        self.bytes = 0
        #: index -> (request id, idempotency key) of its last deferred write
        self._chains: dict[str | None, tuple[int, str]] = {}
        #: (write, the error its reply carried), of the first deferred write that failed
        self.failure: tuple[DeferredWrite, FaissxError] | None = None
        self.refused = 0  # deferred writes after the failure that were not applied
        self.applied_after = 0  # ... and those (to other indices) that were

    def __len__(self) -> int:
        return len(self.pending)

    def has_room(self, size: int) -> bool:
        """May a write of ``size`` bytes be sent now? Always when none is pending, so a write
        larger than :data:`WINDOW_BYTES` is still sent (and waited for at the next call)."""
        if not self.pending:
            return True
        return len(self.pending) < self.size and self.bytes + size <= self.max_bytes

    def chain(self, header: dict[str, Any]) -> None:
        """Name the index's previous deferred write in ``after`` while it is unacknowledged: the
        server then applies this one only if that one succeeded. (Once acknowledged it needs no
        naming: a failure is raised before the next write is sent.)"""
        previous = self._chains.get(header["index"])
        if previous is not None and previous[0] in self.pending:
            header["after"] = previous[1]
        self._chains[header["index"]] = (header["id"], header["idem"])

    def sent(self, header: dict[str, Any], size: int) -> DeferredWrite:
        write = DeferredWrite(header, size)
        self.pending[header["id"]] = write
        self.bytes += size
        return write

    def answered(self, rid: int, error: FaissxError | None) -> None:
        """The reply to deferred write ``rid``: ``error`` is None when it was applied; a write
        not sent again (its chain had failed) counts as refused with ``error`` given."""
        write = self.pending.pop(rid, None)
        if write is None:
            return
        self.bytes -= write.size
        if self.failure is None:
            if error is not None:
                self.failure = (write, error)
        elif error is None:
            self.applied_after += 1
        else:
            self.refused += 1
        if not self.pending:
            self._chains.clear()

    def take_failure(self) -> FaissxError | None:
        """The first failure, annotated as deferred, and the window cleared for new writes."""
        if self.failure is None:
            return None
        write, exc = self.failure
        later = (
            f"; {self.refused} later deferred write(s) were not applied"
            if self.refused
            else "; no later deferred write was refused"
        )
        if self.applied_after:
            later += f" ({self.applied_after} to other indices were)"
        exc.message = (
            f"deferred {write.what} (configure(write_window=...)) failed: {exc.message}{later}; "
            "the call that found this was not performed"
        )
        exc.args = (exc.message,)
        exc.details.update(
            deferred=True,
            op=write.header["op"],
            index=write.header["index"],
            not_applied=self.refused,
            applied_after=self.applied_after,
        )
        self.failure, self.refused, self.applied_after = None, 0, 0
        return exc

    def describe(self) -> str:
        """What is unacknowledged, for a log line: ``3 (add to 'a' x2, add_with_ids to 'b')``."""
        counts = Counter(write.what for write in self.pending.values())
        parts = ", ".join(f"{what} x{n}" if n > 1 else what for what, n in counts.items())
        return f"{len(self.pending)} ({parts})"

    def forget(self) -> list[DeferredWrite]:
        """Drop every pending write (their fate is unknown: the caller reports them)."""
        lost = list(self.pending.values())
        self.pending.clear()
        self.bytes = 0
        self._chains.clear()
        return lost
