"""A readers-writer lock: concurrent searches on one index, exclusive writes.

faiss's const methods (search, reconstruct) are safe to run in parallel; mutations are not, and
must not overlap a search. Writers are preferred so a stream of searches cannot starve an add.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    def __init__(self) -> None:
        # The bare mutex is taken directly where nothing waits (``with`` on a Lock is C;
        # on a Condition it is Python): every one-query search takes and releases a share.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def acquire_read(self, blocking: bool = True) -> bool:
        """Take a read share; ``blocking=False`` gives up at once if a writer has or wants it."""
        with self._mutex:
            if not (self._writer or self._waiting_writers):
                self._readers += 1
                return True
            if not blocking:
                return False
            while self._writer or self._waiting_writers:
                self._cond.wait()  # release_write wakes it
            self._readers += 1
            return True

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            # only a writer waits for the readers to leave
            if not self._readers and self._waiting_writers:
                self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    def acquire_write(self, blocking: bool = True) -> bool:
        """Take the lock alone; ``blocking=False`` gives up at once if anyone holds or wants it
        (the socket thread's inline writes must never wait, nor jump a queued writer)."""
        with self._cond:
            if not blocking and (self._writer or self._readers or self._waiting_writers):
                return False
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
            return True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()
