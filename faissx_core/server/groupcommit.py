"""Group commit: one ``fdatasync`` of a log covers every record written to it before.

A durable write is applied, its record is written to the index's log (the page cache), and its
reply is *held*: it is handed to :meth:`Committer.when_durable` instead of being sent. One
committer thread repeatedly takes every log with unsynced records, runs one ``fdatasync`` per
log, and then releases the held replies those syncs covered, in the order their records were
written. Nothing waits for a disk flush on the socket thread or on a pool worker, and writers
that arrive while a flush is running share the next one (PostgreSQL's and InnoDB's group
commit). ``--fsync always`` keeps its promise (no reply before its record is on disk) and
``batch`` its own (docs/durability.md).

A log's file descriptor is only closed through :meth:`Committer.retire`, which waits for a sync
of it that is under way: a snapshot or a delete can never close a descriptor the committer is
about to sync (the descriptor number could already name another file), and every reply held on
the retired log is settled there (the snapshot that retires it holds its records; a delete that
retires it made them moot).

A failed ``fdatasync`` fails the log for good (Linux may have dropped the dirty pages, so a
later sync that succeeds proves nothing): the replies held on it, and every later one, are
released with the reason instead of an acknowledgement, and ``on_failure`` tells the owner
(the backend marks the index broken).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Told ``None`` once the record is on disk, or why it never will be.
Release = Callable[[str | None], None]


@dataclass(eq=False)
class OpenLog:
    """One open write-ahead log and how far its records are: written, on disk, or failed."""

    key: tuple[str, str]
    fd: int
    #: Sequence number of the last record written to it.
    written: int = 0
    #: Every record up to this sequence number is on disk.
    synced: int = 0
    #: Why it can no longer be synced (a failed fdatasync), if it cannot.
    failed: str | None = None
    #: The committer is syncing it right now (its descriptor must stay open).
    syncing: bool = False

    def state(self, seq: int) -> bool | None:
        """True: record ``seq`` is on disk; False: it never will be; None: not yet."""
        if self.synced >= seq:
            return True
        return False if self.failed is not None else None


@dataclass(frozen=True, eq=False)
class Ticket:
    """A record written to ``log`` as number ``seq``: what a held reply waits for."""

    log: OpenLog
    seq: int


class Committer:
    """The one thread that syncs logs and releases the replies waiting for them."""

    def __init__(
        self,
        sync: Callable[[int], None],
        on_failure: Callable[[tuple[str, str], str], None] | None = None,
    ) -> None:
        self._sync = sync  # fdatasync of a descriptor (timed, fault-injectable by the store)
        self.on_failure = on_failure
        self._cond = threading.Condition()
        self._seq = 0
        self._dirty: set[OpenLog] = set()
        self._held: list[tuple[Ticket, Release]] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        #: The committer is between taking work and having released its replies.
        self._busy = False

    # -- writers -----------------------------------------------------------------------------
    def written(self, olog: OpenLog) -> Ticket:
        """A record was just written to ``olog``: its ticket, due in the next sync."""
        with self._cond:
            self._seq += 1
            olog.written = self._seq
            self._dirty.add(olog)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, daemon=True, name="faissx-wal-committer"
                )
                self._thread.start()
            self._cond.notify_all()
            return Ticket(olog, self._seq)

    def when_durable(self, ticket: Ticket, release: Release) -> None:
        """Call ``release`` (on the committer's thread) once ``ticket`` is settled."""
        with self._cond:
            self._held.append((ticket, release))
            self._cond.notify_all()

    def wait(self, ticket: Ticket) -> None:
        """Block until ``ticket`` is on disk; OSError if it never will be."""
        with self._cond:
            while (state := ticket.log.state(ticket.seq)) is None:
                self._cond.wait()
        if not state:
            raise OSError(f"the write-ahead log could not be synced: {ticket.log.failed}")

    def pending(self, olog: OpenLog) -> Ticket | None:
        """The last record of ``olog`` if it is not on disk yet (what a read of it waits for).
        None once the log has failed: its index is broken, and served as broken indices are
        (reads answered, writes refused)."""
        with self._cond:
            if olog.written > olog.synced and olog.failed is None:
                return Ticket(olog, olog.written)
            return None

    # -- owners of descriptors ---------------------------------------------------------------
    def retire(self, olog: OpenLog, failure: str | None = None) -> None:
        """Take ``olog`` out of the committer's hands before its descriptor is closed.

        Waits for a sync of it under way. Its unsynced records are then settled: as durable
        (``failure`` None: a committed snapshot holds them, or the index is durably gone), or
        as failed with ``failure``.
        """
        with self._cond:
            while olog.syncing:
                self._cond.wait()
            self._dirty.discard(olog)
            if olog.failed is None:
                if failure is None:
                    olog.synced = olog.written
                else:
                    olog.failed = failure
            self._cond.notify_all()

    def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every written record is synced and every held
        reply released; False if time ran out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._dirty or self._held or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Sync what is written, release what is held, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the committer thread ----------------------------------------------------------------
    def _ready(self) -> list[tuple[Ticket, Release]]:
        """Held replies that can go now, in record order (caller holds the condition)."""
        ready = [h for h in self._held if h[0].log.state(h[0].seq) is not None]
        if ready:
            self._held = [h for h in self._held if h[0].log.state(h[0].seq) is None]
            ready.sort(key=lambda h: h[0].seq)
        return ready

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._dirty and not self._ready_any():
                    self._cond.wait()
                if self._closing and not self._dirty and not self._ready_any():
                    held, self._held = self._held, []
                    self._cond.notify_all()
                    break
                batch = [(o, o.written) for o in self._dirty]
                self._dirty.clear()
                self._busy = True
                for olog, _ in batch:
                    olog.syncing = True
            failures: dict[OpenLog, str] = {}
            for olog, _ in batch:  # one fdatasync per log, outside the lock
                try:
                    self._sync(olog.fd)
                except OSError as exc:
                    failures[olog] = str(exc)
                    log.critical(
                        "fdatasync of the write-ahead log of %s/%s failed: %s", *olog.key, exc
                    )
            with self._cond:
                for olog, upto in batch:
                    olog.syncing = False
                    if olog in failures:
                        olog.failed = olog.failed or failures[olog]
                    else:
                        olog.synced = max(olog.synced, upto)
                ready = self._ready()
                self._cond.notify_all()
            for olog, reason in failures.items():  # before any reply says otherwise
                if self.on_failure is not None:
                    try:
                        self.on_failure(olog.key, reason)
                    except Exception:
                        log.exception("the log failure hook failed")
            self._release(ready)
        # closing, with nothing left to sync: what is still held never will be
        for ticket, release in held:
            state = ticket.log.state(ticket.seq)
            self._call(release, None if state else (ticket.log.failed or "the server stopped"))

    def _ready_any(self) -> bool:
        return any(t.log.state(t.seq) is not None for t, _ in self._held)

    def _release(self, ready: list[tuple[Ticket, Release]]) -> None:
        for ticket, release in ready:
            self._call(release, None if ticket.log.state(ticket.seq) else ticket.log.failed)
        with self._cond:
            self._busy = False
            self._cond.notify_all()  # settle() waits for this

    @staticmethod
    def _call(release: Release, failure: str | None) -> None:
        try:
            release(failure)
        except Exception:
            log.exception("releasing a held reply failed")
