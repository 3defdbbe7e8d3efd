"""Mutating requests applied at most once per idempotency key.

A client sends every mutating request (``add``, ``remove_ids``, ``create``, ...) with a key in the
header's ``idem`` field and repeats the key when it retries, because a dropped connection leaves
it unable to tell whether the first attempt was applied. The server remembers the reply to each
key for a while, per tenant:

* the first request with a key runs, and its reply (success or error) is remembered;
* a repeat that arrives while the first is still running waits for it and gets the same reply;
* a later repeat gets the remembered reply again, without running anything.

Keys live in memory, at most :data:`PER_TENANT` per tenant and for :data:`KEEP_FOR` seconds
(the oldest finished ones go first). With a data directory each logged write carries its key,
so replaying the log at start-up remembers the keys again: a write applied just before a crash,
whose reply never left, is still recognised when the client retries it against the restarted
server. Keys of writes folded into a snapshot are kept with it (``keys-G.msgpack``, committed
with the snapshot's ``meta.json``) and come back from there.

Test hook (off unless the variable is set): with ``FAISSX_TEST_CRASH_AFTER_WRITES=N`` in its
environment, the server exits abruptly (``os._exit``, like a ``kill -9``) right after the N-th
successful index write that carries a key has been applied and logged, before its reply is sent:
the "applied, reply lost" failure, made deterministic for tests/test_resilience.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from faissx_core.errors import InvalidArgument
from faissx_core.messages import PROTOCOL_VERSION, Request
from faissx_core.operations import OPERATIONS
from faissx_core.protocol import encode

log = logging.getLogger("faissx.server")

#: Seconds a finished key is remembered at least, unless its tenant exceeds PER_TENANT.
KEEP_FOR = 600.0
#: Most keys remembered per tenant; past it the oldest finished ones are forgotten.
PER_TENANT = 100_000
CRASH_ENV = "FAISSX_TEST_CRASH_AFTER_WRITES"

Frames = list[Any]
#: How the table answers a caller: (the caller's token, reply frames, deduplicated, hold).
#: ``hold`` is what the reply must wait for before it is sent (the log record of a durable
#: write, under group commit), or None; a repeat of a held reply waits for the same.
Reply = Callable[[Any, Frames, bool, Any], None]


def _ok(reply: Frames) -> bool:
    return bool(msgpack.unpackb(reply[0], raw=False).get("ok"))


def readdress(frames: Frames, rid: int) -> Frames:
    """A remembered reply as the answer to request ``rid``."""
    header = msgpack.unpackb(frames[0], raw=False)
    header["id"] = rid
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


@dataclass
class _Entry:
    op: str
    index: str | None
    created: float = field(default_factory=time.monotonic)
    #: The reply's frames; None while the first request is still running.
    reply: Frames | None = None
    #: Whether that reply reports success (what a pipelined call's next part asks).
    ok: bool = False
    #: Repeats that arrived while it ran: (routing id, request id).
    waiters: list[tuple[Any, int]] = field(default_factory=list)
    #: What its reply waits for before it may be sent (see :data:`Reply`).
    hold: Any = None


class IdempotencyTable:
    def __init__(
        self,
        keep_for: float = KEEP_FOR,
        per_tenant: int = PER_TENANT,
        crash_after: int | None = None,
    ) -> None:
        self.keep_for = keep_for
        self.per_tenant = per_tenant
        self._tenants: dict[str, OrderedDict[str, _Entry]] = {}
        self._mutex = threading.Lock()
        self._claims = itertools.count(1)
        self._crash_after = crash_after
        self._writes = itertools.count(1)

    @classmethod
    def from_env(cls) -> IdempotencyTable:
        raw = os.environ.get(CRASH_ENV)
        crash_after = int(raw) if raw else None
        if crash_after is not None:
            log.warning(
                "%s=%d: this server will exit abruptly after write %d (a test hook)",
                CRASH_ENV,
                crash_after,
                crash_after,
            )
        return cls(crash_after=crash_after)

    def __len__(self) -> int:
        with self._mutex:
            return sum(len(keys) for keys in self._tenants.values())

    # -- the request path ------------------------------------------------------------------
    def handle(
        self,
        tenant: str,
        request: Request,
        token: Any,
        execute: Callable[[], tuple[Frames, Any]],
        reply: Reply,
    ) -> None:
        """Answer ``request`` (which has an ``idem`` key): run it once, or repeat its reply.

        ``token`` stands for the caller (the server's record of the request); ``execute``
        returns the reply's frames and what they wait for (:data:`Reply`). Every answer is
        ``reply(token, frames, deduplicated, hold)``, ``deduplicated`` when it repeats an
        earlier one. The key is recorded when the request is applied, so a repeat that
        arrives while the first reply is held is not applied again: it is held as well.
        """
        assert request.idem is not None
        with self._mutex:
            keys = self._tenants.setdefault(tenant, OrderedDict())
            entry = keys.get(request.idem)
            if entry is None:
                keys[request.idem] = _Entry(request.op, request.index)
                self._evict(keys)
                if next(self._claims) % 1024 == 0:
                    self._sweep()
            elif (entry.op, entry.index) == (request.op, request.index):
                if entry.reply is None:  # the first is still running: answer both at its end
                    entry.waiters.append((token, request.id))
                    return
                remembered, hold = entry.reply, entry.hold
        if entry is not None:
            if (entry.op, entry.index) == (request.op, request.index):
                reply(token, readdress(remembered, request.id), True, hold)
                return
            error = InvalidArgument(
                f"idempotency key {request.idem!r} was used for {entry.op} on {entry.index!r}; "
                "a different request needs a new key"
            )
            reply(
                token,
                encode(
                    {"v": PROTOCOL_VERSION, "id": request.id, "ok": False, "error": error.to_wire()}
                ),
                False,
                None,
            )
            return
        frames: Frames | None = None
        hold = None
        try:
            frames, hold = execute()
            self._maybe_crash(request, frames)
        finally:
            waiters = self._finish(tenant, request.idem, frames, hold)
        reply(token, frames, False, hold)
        for waiter, rid in waiters:
            reply(waiter, readdress(frames, rid), True, hold)

    def succeeded(self, tenant: str, key: str) -> bool:
        """Was the request with this key applied, with a success reply?

        A pipelined call's part names the part before it (``after``); the server applies it
        only if this holds. Writes to one index run in arrival order, so the part before has
        finished by the time the next one asks.
        """
        with self._mutex:
            entry = self._tenants.get(tenant, OrderedDict()).get(key)
            return entry is not None and entry.reply is not None and entry.ok

    def remember(self, tenant: str, key: str, op: str, index: str | None, reply: Frames) -> None:
        """Record a key whose request was applied before (a logged write, at replay; a key
        kept in a snapshot; or a write in a quarantined index's files, whose reply is then
        the IndexDamaged error)."""
        with self._mutex:
            keys = self._tenants.setdefault(tenant, OrderedDict())
            keys[key] = _Entry(op, index, reply=reply, ok=_ok(reply))
            keys.move_to_end(key)
            self._evict(keys)

    # -- bookkeeping -------------------------------------------------------------------------
    def _finish(
        self, tenant: str, key: str, reply: Frames | None, hold: Any = None
    ) -> list[tuple[Any, int]]:
        with self._mutex:
            keys = self._tenants.get(tenant, OrderedDict())
            entry = keys.get(key)
            if entry is None:
                return []
            if reply is None:  # it never produced a reply: let a repeat run it
                del keys[key]
                return []
            entry.reply = reply
            entry.hold = hold
            entry.ok = _ok(reply)
            entry.created = time.monotonic()
            waiters, entry.waiters = entry.waiters, []
            return waiters

    def _evict(self, keys: OrderedDict[str, _Entry]) -> None:
        """Forget the oldest finished keys past the count or age limit (caller holds the lock)."""
        cutoff = time.monotonic() - self.keep_for
        while keys:
            key, oldest = next(iter(keys.items()))
            if oldest.reply is None or (len(keys) <= self.per_tenant and oldest.created >= cutoff):
                break  # a running request is never forgotten; the rest are younger
            del keys[key]

    def _sweep(self) -> None:
        for tenant, keys in list(self._tenants.items()):
            self._evict(keys)
            if not keys:
                del self._tenants[tenant]

    def _maybe_crash(self, request: Request, reply: Frames) -> None:
        if (
            self._crash_after is None
            or OPERATIONS[request.op].target == "control"
            or not _ok(reply)
        ):
            return
        if next(self._writes) >= self._crash_after:
            log.warning(
                "%s: exiting after %s (idem %s) without replying",
                CRASH_ENV,
                request.op,
                request.idem,
            )
            logging.shutdown()
            os._exit(75)
