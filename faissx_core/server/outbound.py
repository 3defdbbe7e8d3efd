"""A bound on the reply bytes the server holds for one peer that does not read them.

ZeroMQ queues a ROUTER's outgoing messages per peer until the peer's connection takes them, and
its high-water mark counts messages, not bytes: a client that sends eight small searches with a
large ``k`` and never reads the replies made the server hold 2.8 GB. Here every large reply is
sent zero-copy with a ``MessageTracker``, which reports when libzmq has let go of the message
(written it to the kernel, or dropped it with its connection). The bytes of a peer's replies not
yet let go are its backlog; a reply that would take the backlog past ``limit`` is not sent (it is
dropped and logged, as libzmq itself drops a ROUTER's message past the high-water mark), so a
slow or stalled reader costs the server at most ``limit`` plus one reply, and only it loses
replies. Small replies are copied into libzmq as before and bounded by the ROUTER's message
high-water mark (:data:`SNDHWM` x ``COPY_BELOW`` bytes).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import zmq

from faissx_core.protocol import COPY_BELOW, frame_bytes, send_parts

log = logging.getLogger("faissx.server")

#: Messages a ROUTER queues per peer before libzmq drops more (its default, made explicit).
SNDHWM = 1000


def reply_bytes(frames: list[Any]) -> int:
    """Bytes in ``frames`` (bytes, arrays, views or ``zmq.Frame``)."""
    return sum(map(frame_bytes, frames))


class PeerOutput:
    """Sends the ROUTER's replies, holding each peer's unsent bytes under ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._backlog: dict[bytes, deque[tuple[Any, int]]] = {}
        #: Replies not sent because their peer's backlog was full, since start.
        self.dropped = 0

    def send(self, router: zmq.Socket, frames: list[Any], size: int | None = None) -> bool:
        """Send ``[ident, *frames]``; False when the peer's backlog made it drop the reply.
        ``size``: the bytes after ``ident``, when the caller has counted them already."""
        if size is None:
            size = reply_bytes(frames[1:])
        if size < COPY_BELOW or not self.limit:
            send_parts(router, frames, size < COPY_BELOW)
            return True
        ident = bytes(frames[0])
        held = self._held(ident)
        if held and held + size > self.limit:
            self.dropped += 1
            # the first drop and then every power of two: a stalled peer must not flood the log
            level = logging.WARNING if self.dropped & (self.dropped - 1) == 0 else logging.DEBUG
            log.log(
                level,
                "peer %s reads its replies too slowly: %.1f MiB queued; dropped a "
                "reply of %.1f MiB (--max-peer-output-mb %.0f; %d dropped since start)",
                ident.hex()[:12],
                held / (1 << 20),
                size / (1 << 20),
                self.limit / (1 << 20),
                self.dropped,
            )
            return False
        tracked: list[zmq.Frame | bytes] = [
            ident,
            *(zmq.Frame(_buffer(f), track=True) for f in frames[1:]),
        ]
        tracker = router.send_multipart(tracked, copy=False, track=True)
        self._backlog.setdefault(ident, deque()).append((tracker, size))
        return True

    def _held(self, ident: bytes) -> int:
        """Bytes of ``ident``'s replies libzmq still holds (finished ones are forgotten)."""
        queue = self._backlog.get(ident)
        if not queue:
            return 0
        while queue and queue[0][0].done:
            queue.popleft()
        if not queue:
            del self._backlog[ident]
            return 0
        return sum(size for tracker, size in queue if not tracker.done)

    def sweep(self) -> None:
        """Forget peers whose replies have all gone (call now and then)."""
        for ident in list(self._backlog):
            self._held(ident)

    def held(self) -> int:
        """Bytes held for every peer together."""
        return sum(self._held(ident) for ident in list(self._backlog))


def _buffer(frame: Any) -> Any:
    """Something ``zmq.Frame`` wraps without a copy: a received frame's buffer, or the object."""
    return frame.buffer if isinstance(frame, zmq.Frame) else frame
