"""Heartbeats for requests still being worked on, so a client's timeout bounds silence, not work.

A ``train`` of a large IVF-PQ can take minutes; plain faiss returns when it is done, and so
must a remote call, while a server that died or froze must still be noticed within the
client's timeout. A request that sets ``progress`` in its header therefore gets a small
``working`` reply (``{"id": <its id>, "ok": true, "working": true}``) every ``progress_every``
seconds while it runs on the pool; the client restarts its timer on each and keeps waiting
for the real reply (docs/protocol.md). Workers register and finish requests; only the socket
thread sends the heartbeats (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from faissx_core.messages import PROTOCOL_VERSION
from faissx_core.protocol import encode


class Progress:
    """Requests in progress that asked for heartbeats, and when each is next due one."""

    def __init__(self, every: float) -> None:
        self.every = every
        #: (peer routing id, request id) -> [routing id frame, next heartbeat time]
        self._running: dict[tuple[bytes, int], list[Any]] = {}
        self._mutex = threading.Lock()

    def start(self, ident: Any, rid: int) -> None:
        key = (bytes(ident), rid)
        with self._mutex:
            self._running[key] = [bytes(ident), time.monotonic() + self.every]

    def finish(self, ident: Any, rid: int) -> None:
        """Called before the final reply is sent, so no heartbeat can follow it."""
        if self._running:
            with self._mutex:
                self._running.pop((bytes(ident), rid), None)

    def beat(self, send: Callable[[list[Any]], None]) -> int:
        """Send the heartbeats that are due (socket thread only); how many were sent."""
        if not self._running:
            return 0
        now = time.monotonic()
        due = []
        with self._mutex:
            for (_, rid), entry in self._running.items():
                if entry[1] <= now:
                    entry[1] = now + self.every
                    due.append((entry[0], rid))
        for ident, rid in due:
            send([ident, *encode({"v": PROTOCOL_VERSION, "id": rid, "ok": True, "working": True})])
        return len(due)
