"""Writes to one index run in the order they arrived.

The read-write lock already keeps two writes from running at once, but not in order: two pool
threads woken together take the lock in any order. Order matters to a client that pipelines a
large ``add`` (several parts in flight, ids assigned in sequence) and to anyone reading back
what they wrote, so each index gets a queue: the socket thread appends in arrival order, and
one pool task at a time drains it. Reads do not queue; they still run side by side.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor

log = logging.getLogger("faissx.server")


class SerialQueues:
    """Runs the jobs submitted under one key one after another, on a shared pool."""

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._queues: dict[Hashable, deque[Callable[[], None]]] = {}
        self._mutex = threading.Lock()

    def submit(self, key: Hashable, job: Callable[[], None]) -> None:
        """Queue ``job`` behind every earlier job of ``key``."""
        with self._mutex:
            queue = self._queues.get(key)
            if queue is not None:  # a drain task is running for this key and will reach it
                queue.append(job)
                return
            self._queues[key] = deque((job,))
        self._pool.submit(self._drain, key)

    def _drain(self, key: Hashable) -> None:
        while True:
            with self._mutex:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                job = queue[0]
            try:
                job()
            except Exception:  # a job reports its own errors; this keeps the queue moving
                log.exception("a queued write failed unexpectedly")
            finally:
                with self._mutex:
                    queue.popleft()

    def idle(self, key: Hashable) -> bool:
        """No job of ``key`` is queued or running: a write may run elsewhere (the socket
        thread's inline path) without overtaking one that arrived before it. Only the
        submitting thread may rely on the answer, since only it adds jobs."""
        with self._mutex:
            return key not in self._queues

    def pending(self) -> int:
        """Jobs queued or running (for tests and introspection)."""
        with self._mutex:
            return sum(len(q) for q in self._queues.values())
