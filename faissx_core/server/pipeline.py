"""What the request pipeline tells the rest of the server about each request.

Every request the server answers, whatever its operation and wherever it ran (inline on the
socket thread, on the pool, replayed from the idempotency table, or refused before it was
understood), ends in exactly one :class:`RequestEvent`, handed to each registered observer.
Metrics, request logs and tracing hook in here, in one place, instead of in the operations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from faissx_core.operations import Operation

log = logging.getLogger("faissx.server")


class RequestEvent(NamedTuple):
    """One answered request. ``outcome`` is ``"ok"`` or the wire error code.

    A named tuple, not a frozen dataclass: one is made per request, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` (several times the cost)."""

    request_id: int
    op: str
    tenant: str | None
    index: str | None  # type: ignore[assignment]  # shadows tuple.index, unused on an event
    outcome: str
    duration_s: float
    bytes_in: int
    bytes_out: int
    #: Answered from the idempotency table: a retry of a request already applied.
    deduplicated: bool = False
    #: Answered on the socket thread without a hop to the pool.
    inline: bool = False


Observer = Callable[[RequestEvent], None]


@dataclass
class Call:
    """One request on its way through the pipeline: what the completion event is made of."""

    ident: Any
    request_id: int
    bytes_in: int
    started: float = field(default_factory=time.perf_counter)
    op: Operation | None = None
    tenant: str | None = None
    index: str | None = None
    inline: bool = False
    deduplicated: bool = False

    def event(self, bytes_out: int, outcome: str) -> RequestEvent:
        """The completion event; ``bytes_out``: the reply's size (its sender measured it)."""
        op = self.op
        return RequestEvent(
            self.request_id,
            op.name if op is not None else "?",
            self.tenant,
            self.index,
            outcome,
            time.perf_counter() - self.started,
            self.bytes_in,
            bytes_out,
            self.deduplicated,
            self.inline,
        )


class Observers:
    """The observers of completed requests; one failing never costs a request its reply."""

    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def notify(self, event: RequestEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("a request observer failed")
