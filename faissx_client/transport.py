"""Request/reply over DEALER sockets, one per calling thread, with retries and heartbeats.

ZeroMQ sockets must not be shared between threads, and a lock around one socket would make a
web server's workers wait for each other. Each thread therefore gets its own DEALER, all under
one session id (which owns the client's unnamed indices on the server). Every request carries an
id; a reply with another id is a late answer to a request this thread gave up on, and is dropped.

Reliability follows the zguide's patterns:

* **Heartbeats** (``ZMQ_HEARTBEAT_IVL`` / ``_TIMEOUT`` / ``_TTL``): libzmq pings the server every
  ``heartbeat`` seconds and drops a connection that stays silent for two more, so a server that
  froze or vanished from the network is noticed without waiting for the call's timeout. A
  server that was killed is noticed at once (its kernel closes the connection).
* **A monitor** per socket reports each drop (``EVENT_DISCONNECTED``) while a reply is awaited:
  the request went down with that connection, so the call is retried instead of waiting out
  its timeout. ZeroMQ reconnects by itself; ``IMMEDIATE`` keeps a request from being queued
  while no connection is up, so "not sent" and "sent, fate unknown" are told apart.
* **Lazy-pirate retries** within the call's deadline (``timeout``): a request that was never
  sent is always retried; one whose connection dropped is retried when it is a read or carries
  an idempotency key (every mutating request does), which the server uses to apply it once.
  The same request id is reused, so the reply to any attempt answers the call.

The requests sent on a connection and not yet answered (a pipelined call's parts, the write
window's deferred adds: faissx_client/window.py) are held in one place, the connection's
:class:`_InFlight`, and one method (:meth:`Transport._settle`) receives their replies and, when
the connection drops, sends the unanswered ones again in order, with their ids and keys.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from faissx_client import recovery
from faissx_client.settings import ClientSettings
from faissx_client.window import DEFERRABLE, WriteWindow
from faissx_core.errors import (
    Aborted,
    FaissxError,
    QuotaExceeded,
    ServerUnavailable,
    from_wire,
)
from faissx_core.messages import PROTOCOL_VERSION, request_id_text
from faissx_core.protocol import encode, frame_bytes, readable, recv_reply, send
from faissx_core.security import configure_dealer

log = logging.getLogger("faissx.client")

#: Seconds between heartbeats when neither ``configure(heartbeat=...)`` nor
#: ``FAISSX_HEARTBEAT`` says otherwise; 0 turns heartbeats off.
DEFAULT_HEARTBEAT = 1.0
#: A retry is not started with less than this many seconds of the call's timeout left.
MIN_ATTEMPT = 0.05
_MONITORED = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
#: What a ZAP status in a refused handshake means (faissx_core/security.py answers them).
_REFUSALS = {
    400: "the server refused this client's CURVE key (not on its --curve-allow-keys list)",
    500: "the server turned the connection away: it is at its connection limit (--max-connections)",
}
_EVENT = struct.Struct("=HI")  # a monitor event frame: u16 event, u32 value
#: How long a call waits on its reply alone before it also watches the connection monitor.
_REPLY_FIRST_MS = 20
_POLLIN = int(zmq.POLLIN)
#: A request this large whose connection dropped may have been over the server's message limit.
LARGE_REQUEST = 1 << 20


def _size(frames: Sequence[Any]) -> int:
    """Bytes of a request's frames."""
    return sum(map(frame_bytes, frames))


def _port_flag(server: str) -> str:
    """`` --port N`` for a tcp:// endpoint, so the hint names the command that would serve it."""
    port = server.rpartition(":")[2] if server.startswith("tcp://") else ""
    return f" --port {port}" if port.isdigit() else ""


def with_request_id(exc: FaissxError, rid: int) -> FaissxError:
    """``exc`` naming the request it answers: ``request_id`` (as the server logs it, 16 hex
    digits) as an attribute and at the end of the message, to find the server's log line."""
    exc.request_id = request_id_text(rid)
    exc.message = f"{exc.message} [request {exc.request_id}]"
    exc.args = (exc.message,)
    return exc


def heartbeat_from_env(heartbeat: float | None) -> float:
    if heartbeat is None:
        raw = os.environ.get("FAISSX_HEARTBEAT")
        try:
            heartbeat = float(raw) if raw else DEFAULT_HEARTBEAT
        except ValueError:
            raise ValueError(f"FAISSX_HEARTBEAT={raw!r} is not a number of seconds") from None
    if not heartbeat >= 0:
        raise ValueError(f"heartbeat must be >= 0 seconds, got {heartbeat!r}")
    return float(heartbeat)


class _Failure(Exception):
    """One attempt failed; ``sent`` says whether the request may have reached the server."""

    def __init__(
        self,
        reason: str,
        sent: bool,
        connection_lost: bool = True,
        answered: list[tuple[Any, dict]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        #: the connection failed (as opposed to a live server not answering in time)
        self.connection_lost = connection_lost
        #: replies that arrived before the connection dropped
        self.answered = answered or []


@dataclass(eq=False, slots=True)
class _Sent:
    """A request sent on a connection, kept until it is answered (to be sent again with the
    same id and key if the connection drops first)."""

    header: dict[str, Any]
    frames: list[Any]
    #: told the reply, or ``(None, {})`` when it is not sent again because the write it was
    #: chained to (``after``) failed
    on_reply: Callable[[Any, dict[str, np.ndarray]], None]


class _InFlight:
    """The requests sent on one connection and not yet answered, in the order they were sent.

    Sent one after another on one connection, writes to one index are applied in that order;
    so after a drop they are sent again in that order too, skipping a write chained to one that
    failed (the server would refuse it: nothing past a failure is applied)."""

    def __init__(self) -> None:
        self.sent: dict[int, _Sent] = {}
        #: request id -> deadline, as :meth:`Transport._receive` takes it (and moves it on a
        #: ``working`` heartbeat)
        self.deadlines: dict[int, float] = {}
        #: idempotency keys of the writes that failed since the connection was last idle
        self.failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.sent)

    def add(self, sent: _Sent, deadline: float) -> None:
        if not self.sent:  # idle until now: earlier failures have been reported
            self.failed.clear()
        rid = sent.header["id"]
        self.sent[rid] = sent
        self.deadlines[rid] = deadline

    def answer(self, reply: Any, out: dict[str, np.ndarray]) -> None:
        """Hand ``reply`` (to a request in flight) to its request's ``on_reply``."""
        sent = self.sent.pop(reply.id)
        del self.deadlines[reply.id]
        self.done(sent, reply, out)

    def done(self, sent: _Sent, reply: Any, out: dict[str, np.ndarray]) -> None:
        """``sent`` is answered (``reply`` None: not sent again, after a failed write)."""
        key = sent.header.get("idem")
        if key is not None and (reply is None or not reply.ok):
            self.failed.add(key)
        sent.on_reply(reply, out)

    def take(self) -> list[_Sent]:
        """Every unanswered request, oldest first, no longer in flight (to be sent again)."""
        taken = list(self.sent.values())
        self.sent.clear()
        self.deadlines.clear()
        return taken


class _Conn:
    """One thread's DEALER, the monitor that reports its connection's drops, and a poller."""

    def __init__(self, ctx: zmq.Context, settings: ClientSettings, heartbeat: float) -> None:
        #: The thread that uses it: another may drain its deferred writes only once it ended.
        self.owner = threading.current_thread()
        self.flight = _InFlight()
        self.window = WriteWindow(settings.write_window)
        self.sock = ctx.socket(zmq.DEALER)
        configure_dealer(self.sock, settings)  # CURVE when a server public key is configured
        self.sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a server we are not connected to: a request that could not be
        # sent must fail now, not be delivered minutes later after we reported an error.
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        if heartbeat > 0:
            ivl = max(1, int(heartbeat * 1000))
            self.sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 2 * ivl)
            # the server drops our connection if it hears nothing for this long (ms, rounded
            # down to tenths of a second by libzmq)
            self.sock.setsockopt(zmq.HEARTBEAT_TTL, min(6_553_500, max(100, 4 * ivl)))
        self.monitor = self.sock.get_monitor_socket(
            _MONITORED, addr=f"inproc://faissx-monitor-{uuid.uuid4().hex}"
        )
        self.sock.connect(settings.server)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        #: The reply socket alone (``Socket.poll`` builds a new Poller on every call).
        self.reply_poller = zmq.Poller()
        self.reply_poller.register(self.sock, zmq.POLLIN)
        self.key = -1
        #: ZAP status of the last handshake the server refused (None: none was)
        self.refused: int | None = None
        self.sndtimeo = -1  # the socket's current ZMQ_SNDTIMEO (ms), set only when it changes

    def events(self) -> bool:
        """Read pending monitor events; True if a connection dropped since the last read."""
        dropped = False
        while readable(self.monitor):  # checked before every request
            frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            event, value = _EVENT.unpack_from(frames[0])
            dropped = dropped or event == zmq.EVENT_DISCONNECTED
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused = value
        return dropped


class _OpenSockets:
    """Every thread's sockets, so close() reaches them all; a thread's go when it ends."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.sockets: dict[int, tuple[zmq.Socket, ...]] = {}
        self._keys = itertools.count()

    def add(self, conn: _Conn) -> None:
        with self.mutex:
            key = next(self._keys)
            self.sockets[key] = (conn.monitor, conn.sock)
        conn.key = key
        # runs when the thread ends and its thread-local connection is collected
        weakref.finalize(conn, self.forget, key).atexit = False

    def forget(self, key: int) -> None:
        with self.mutex:
            sockets = self.sockets.pop(key, None)
        for sock in sockets or ():
            try:
                sock.close(0)
            except Exception as exc:  # closing must never raise out of a finalizer
                log.debug("closing a socket failed: %s", exc)

    def forget_all(self) -> None:
        with self.mutex:
            keys = list(self.sockets)
        for key in keys:
            self.forget(key)


class Transport:
    def __init__(self, settings: ClientSettings, heartbeat: float | None = None) -> None:
        self.settings = settings
        self.heartbeat = heartbeat_from_env(heartbeat)
        #: How long one attempt waits for a connection before it counts as failed.
        self.connect_wait = 2 * self.heartbeat if self.heartbeat > 0 else 2 * DEFAULT_HEARTBEAT
        self.session = uuid.uuid4().hex
        self._ctx = zmq.Context()
        self._local = threading.local()
        # Ids start at a random point: the id is then unique across clients in practice, so
        # it names one request in the server's log and in this client's errors alike.
        self._ids = itertools.count(secrets.randbits(61) + 1)
        self._open = _OpenSockets()
        self._mutex = threading.Lock()
        #: The server's largest frame (``--max-message-mb``), learnt at configure(); None: unknown.
        self.max_frame: int | None = None
        #: The most vectors it takes in one request (``--max-request-vectors``); None: unknown.
        self.max_rows: int | None = None
        #: Connections with deferred writes unacknowledged, by key: kept alive (and drained by
        #: flush()) after their thread ended.
        self._windows: dict[int, _Conn] = {}
        self._reached = False  # a reply has arrived at least once
        self._lost = False  # ... and since then a connection dropped or could not be made
        self.closed = False

    @property
    def connected(self) -> bool:
        """The server has answered, and no connection has dropped since its last answer."""
        return self._reached and not self._lost and not self.closed

    def _mark_lost(self) -> None:
        """A connection dropped or could not be made: on_disconnect callbacks run once per
        loss (before the retries), on_reconnect ones once the server answers again."""
        with self._mutex:
            first, self._lost = not self._lost, True
        if first:
            recovery.notify_disconnected(self.settings.server)

    def reconnect(self) -> None:
        """Close this thread's sockets and reach the server on new ones (``force_reconnect``);
        its deferred writes are acknowledged first (closing their socket would lose them)."""
        self._barrier()
        self._discard()
        if self._reached:
            self._mark_lost()
        self.call("touch")

    # -- sockets -----------------------------------------------------------------------------
    def _conn(self) -> _Conn:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._mutex:
                if self.closed:
                    raise ServerUnavailable(
                        "this client has been closed", server=self.settings.server
                    )
                conn = _Conn(self._ctx, self.settings, self.heartbeat)
                self._open.add(conn)
            self._local.conn = conn
        return conn

    def _discard(self) -> None:
        """Close this thread's sockets (anything still queued in them goes too)."""
        conn = self._local.__dict__.pop("conn", None)
        if conn is not None:
            self._open.forget(conn.key)

    # -- requests ----------------------------------------------------------------------------
    def header(self, op: str, index: str | None, args: dict[str, Any] | None) -> dict[str, Any]:
        header = {
            "v": PROTOCOL_VERSION,
            "id": next(self._ids),
            "op": op,
            "index": index,
            "args": args or {},
            "api_key": self.settings.api_key,
            "tenant": self.settings.tenant_id,
            "session": self.session,
            "progress": True,  # heartbeats while it runs: the timeout bounds silence, not work
        }
        if recovery.keyed(op):
            header["idem"] = recovery.new_idempotency_key()
        return header

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request and return its reply; raise the server's error as its type.

        Retried per :mod:`faissx_client.recovery` while ``timeout`` (the whole call's budget,
        retries included) lasts; gives up with :class:`ServerUnavailable`.
        """
        self._barrier()
        header = self.header(op, index, args)
        frames = encode(header, arrays)
        self._check_size(op, index, frames)
        reply, out = self._request(header, frames, timeout)
        return self._result(reply, header["id"]), out

    def _check_size(self, op: str, index: str | None, frames: Sequence[Any]) -> None:
        """Refuse, before sending, a frame the server would drop the connection for: ZeroMQ
        gives the sender no error, only a connection that goes away."""
        limit = self.max_frame
        if not limit:
            return
        largest = max(map(frame_bytes, frames))
        if largest > limit:
            target = f" on index {index!r}" if index else ""
            raise QuotaExceeded(
                f"{op!r}{target}: a message of {largest / (1 << 20):,.1f} MiB is over the "
                f"server's limit of {limit / (1 << 20):,.1f} MiB (--max-message-mb); send less "
                "at once (a smaller batch_size, fewer training vectors) or start the server "
                "with a larger --max-message-mb; nothing was sent",
                size=largest,
                limit=limit,
            )

    def pipeline(
        self,
        op: str,
        index: str | None,
        parts: Sequence[tuple[dict[str, Any] | None, dict[str, np.ndarray]]],
        window: int,
        timeout: float | None = None,
        done: Callable[[int], None] | None = None,
    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """Send ``parts`` as requests of one call, ``window`` of them in flight at once.

        The transfer of one part overlaps the server's work on the one before, which is what
        makes a large ``add`` run near the socket's bandwidth. Writes to one index are applied
        in arrival order, and each write part names the one before it (``after``): the server
        applies it only if that one succeeded, so a failure stops the call where it happened,
        as a sequential loop would. Replies are matched by request id; ``done(i)`` runs as part
        ``i`` is answered. The first failure in part order is raised once the parts in flight
        have been answered. A dropped connection falls back to :meth:`call`'s retries for the
        parts still unanswered, in order, reusing their ids and idempotency keys.
        """
        self._barrier()
        requests = []
        previous = None
        for args, arrays in parts:
            header = self.header(op, index, args)
            if previous is not None:
                header["after"] = previous
            previous = header.get("idem")
            frames = encode(header, arrays)
            self._check_size(op, index, frames)
            requests.append((header, frames))
        timeout = self.settings.timeout if timeout is None else timeout
        slot = {header["id"]: i for i, (header, _) in enumerate(requests)}
        replies: dict[int, tuple[Any, dict[str, np.ndarray]]] = {}
        failed = False

        def record(reply: Any, out: dict[str, np.ndarray]) -> None:
            """Keep part ``slot[reply.id]``'s reply (None: a part not sent again)."""
            nonlocal failed
            if reply is None or not reply.ok:
                failed = True
            if reply is None:
                return
            i = slot[reply.id]
            replies[i] = (reply, out)
            if done is not None and reply.ok:
                done(i)

        width = max(1, window)
        try:
            for header, frames in requests:
                conn = self._conn()  # a new one if a retry had to replace the last
                flight = conn.flight
                self._settle(conn, lambda: len(flight) < width, timeout)  # noqa: B023
                if failed:
                    break  # a part failed: what follows it is not sent
                self._submit(conn, _Sent(header, frames, record), timeout)
            self._settle(self._conn(), lambda: False, timeout)
        except ServerUnavailable as exc:
            # what was acknowledged before the link failed, for the caller to report
            acked = sorted(i for i, (reply, _) in replies.items() if reply.ok)
            exc.details.update(
                parts=len(requests),
                acknowledged=acked,
                last_result=replies[acked[-1]][0].result if acked else None,
            )
            raise
        results = []
        for i in range(len(requests)):
            if i not in replies:
                break
            reply, out = replies[i]
            results.append((self._result(reply, requests[i][0]["id"]), out))
        return results

    def _submit(self, conn: _Conn, sent: _Sent, timeout: float) -> None:
        """Send ``sent`` on ``conn`` and keep it in flight there; when it cannot be sent (no
        connection), the requests in flight are answered first and then this one is made with
        :meth:`_request`'s retries, so the order is kept either way.

        A drop seen here, before sending, took the requests in flight with it: they are made
        again first (their replies can never come; a server restarted on the same address
        would otherwise get this one before them, and the caller wait out their timeout)."""
        if conn.flight and conn.events():
            if self._reached:
                self._mark_lost()
            self._make_again(conn, _Failure("the connection dropped", sent=True), timeout)
        deadline = time.monotonic() + timeout
        try:
            self._send(conn, sent.frames, deadline)
        except _Failure:
            self._settle(conn, lambda: False, timeout)
            conn.flight.done(sent, *self._request(sent.header, sent.frames, timeout))
            return
        conn.flight.add(sent, deadline)

    def _settle(
        self, conn: _Conn, enough: Callable[[], bool], timeout: float, fresh: bool = False
    ) -> None:
        """Receive replies to the requests in flight on ``conn`` until ``enough()`` or none is
        left. When the connection drops (or a reply is overdue), every unanswered request is
        made again in order with :meth:`_request`'s retries, same id and key (the server
        applies a write once), skipping a write chained to one that failed.

        ``fresh``: each waits up to ``timeout`` from now (a deferred write may have been sent
        long ago, while the caller was busy elsewhere); else from when it was sent.
        """
        flight = conn.flight
        if not flight or enough():
            return  # the common case of a deferred write: room in the window, nothing to wait
        if fresh:
            start = time.monotonic() + timeout
            for rid, deadline in flight.deadlines.items():
                flight.deadlines[rid] = max(deadline, start)
        try:
            while flight and not enough():
                reply, out = self._receive(conn, flight.deadlines, timeout)
                self._reached = True
                flight.answer(reply, out)
        except _Failure as failure:
            self._make_again(conn, failure, timeout)

    def _make_again(self, conn: _Conn, failure: _Failure, timeout: float) -> None:
        """The connection the requests in flight went out on failed: record the replies that
        came before it did, then make every unanswered request again in order with
        :meth:`_request`'s retries, same id and key (the server applies a write once),
        skipping a write chained to one that failed."""
        flight = conn.flight
        for reply, out in failure.answered:
            flight.answer(reply, out)
        log.debug(
            "%d request(s) in flight to %s: %s; making them again one by one",
            len(flight),
            self.settings.server,
            failure.reason,
        )
        for sent in flight.take():
            if sent.header.get("after") in flight.failed:
                flight.done(sent, None, {})  # the server would refuse it: nothing past a
                continue  # failure is applied
            flight.done(sent, *self._request(sent.header, sent.frames, timeout))

    # -- the write window (faissx_client/window.py) ------------------------------------------
    def defers(self, op: str) -> bool:
        """Does :meth:`write` defer ``op``? Decided once: a write window was configured and
        faiss's result for ``op`` is None (nobody reads its reply)."""
        return self.settings.write_window > 0 and op in DEFERRABLE

    def write(
        self,
        op: str,
        index: str | None,
        arrays: dict[str, np.ndarray],
        args: dict[str, Any] | None = None,
    ) -> None:
        """A write whose result the caller does not read (faiss returns None for it).

        Only for an op :meth:`defers`: it returns once the request is sent. A copy of
        ``arrays`` is kept until the server acknowledges it, and the next barrier (any other
        call on this thread, :meth:`flush`, closing) waits for that acknowledgement and
        raises its failure.
        """
        if not self.defers(op):
            raise ValueError(f"{op!r} is not deferred by this client (see Transport.defers)")
        conn = self._conn()
        window = conn.window
        timeout = self.settings.timeout
        size = sum(int(a.nbytes) for a in arrays.values())
        try:
            self._settle(conn, lambda: window.has_room(size), timeout, fresh=True)
        except ServerUnavailable as exc:
            raise self._given_up(conn, exc) from None
        if window.failure is not None:  # found while making room: this write is not made
            self._barrier(conn)
        # faiss's add copies the vectors: the caller may overwrite its array once we return
        arrays = {name: np.array(a, copy=True) for name, a in arrays.items()}
        header = self.header(op, index, args)
        window.chain(header)
        frames = encode(header, arrays)
        self._check_size(op, index, frames)
        rid = header["id"]

        def acknowledged(reply: Any, out: dict[str, np.ndarray]) -> None:
            error: FaissxError | None = None
            if reply is None:
                error = Aborted(
                    f"{op} on {index!r}: not applied, because a deferred write before it was not"
                )
            elif not reply.ok:
                error = from_wire(reply.error.model_dump() if reply.error else {})
            window.answered(rid, None if error is None else with_request_id(error, rid))

        if not window.pending:
            with self._mutex:  # reachable by flush() from another thread once this one ends
                self._windows[conn.key] = conn
        window.sent(header, size)
        try:
            self._submit(conn, _Sent(header, frames, acknowledged), timeout)
        except ServerUnavailable as exc:
            raise self._given_up(conn, exc) from None

    def flush(self) -> None:
        """Return once every deferred write of this thread, and of threads that have ended, is
        acknowledged, i.e. durable per the server's ``--fsync``; raise the first that failed."""
        self._barrier()
        with self._mutex:  # claimed here, so two threads never read one socket at once
            ended = [c for c in self._windows.values() if not c.owner.is_alive()]
            for conn in ended:
                del self._windows[conn.key]
        first: FaissxError | None = None
        for conn in ended:  # each is drained, whatever the others' outcome
            try:
                self._drain(conn)
            except FaissxError as exc:
                first = first or exc
        if first is not None:
            raise first

    def unflushed(self) -> list[str]:
        """What other live threads still owe (their sockets are theirs alone to read)."""
        with self._mutex:
            conns = list(self._windows.values())
        return [
            f"thread {c.owner.name}: {c.window.describe()}"
            for c in conns
            if c.window.pending and c.owner.is_alive()
        ]

    def _barrier(self, conn: _Conn | None = None) -> None:
        """Wait for every deferred write of this thread; raise the first that failed. Nothing
        to do (one attribute check) unless the window is in use."""
        if conn is None:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                return
        window = conn.window
        if window.pending or window.failure is not None:
            self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        """Wait for ``conn``'s deferred writes (retrying them if it drops); raise the first
        that failed, or :class:`ServerUnavailable` naming those left unacknowledged."""
        window = conn.window
        try:
            self._settle(conn, lambda: not window.pending, self.settings.timeout, fresh=True)
        except ServerUnavailable as exc:
            raise self._given_up(conn, exc) from None
        with self._mutex:
            self._windows.pop(conn.key, None)
        failure = window.take_failure()
        if failure is not None:
            raise failure

    def _given_up(self, conn: _Conn, exc: ServerUnavailable) -> ServerUnavailable:
        """``exc`` naming the deferred writes that were given up on with it (the retries ran
        out of time): they are dropped from the window, their fate unknown."""
        window = conn.window
        if window.pending:
            exc.details["unacknowledged"] = len(window)
            exc.message = (
                f"{exc.message}; deferred writes not acknowledged: {window.describe()} (whether "
                "they were applied is unknown: read ntotal once the server is back)"
            )
            exc.args = (exc.message,)
            window.forget()
        conn.flight.take()
        with self._mutex:
            self._windows.pop(conn.key, None)
        return exc

    def _request(
        self, header: dict[str, Any], frames: list[Any], timeout: float | None
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """One request, retried per the recovery policy; its reply, ok or not."""
        op, index = header["op"], header["index"]
        timeout = self.settings.timeout if timeout is None else timeout
        start = time.monotonic()
        deadline = start + timeout
        policy = recovery.current_policy()
        attempts = 0
        while True:
            attempts += 1
            try:
                conn = self._conn()
                reply, out = self._attempt(conn, frames, header["id"], deadline, timeout)
                break
            except _Failure as failure:
                if failure.answered:  # its reply came in just before the connection dropped
                    reply, out = failure.answered[0]
                    break
                last = failure
            except zmq.ZMQError as exc:  # e.g. the context was terminated by close()
                self._discard()
                last = _Failure(f"socket error: {exc}", sent=True)
                if self.closed:
                    raise with_request_id(
                        self._unavailable(op, index, attempts, start, last), header["id"]
                    ) from None
            if self._reached and last.connection_lost:
                self._mark_lost()
            retryable = not last.sent or recovery.retry_safe(op)
            remaining = deadline - time.monotonic()
            if not retryable or attempts > policy.retries or remaining <= MIN_ATTEMPT:
                if last.sent:
                    # the request may still sit in this socket: never deliver it later
                    self._discard()
                raise with_request_id(
                    self._unavailable(op, index, attempts, start, last, _size(frames)), header["id"]
                )
            pause = min(policy.delay(attempts), remaining - MIN_ATTEMPT)
            log.debug(
                "%s to %s failed (%s); attempt %d in %.2fs",
                op,
                self.settings.server,
                last.reason,
                attempts + 1,
                pause,
            )
            time.sleep(pause)
        self._reached = True
        if self._lost:
            with self._mutex:
                recovered, self._lost = self._lost, False
            if recovered:
                recovery.notify_reconnected(self.settings.server)
        return reply, out

    @staticmethod
    def _result(reply: Any, rid: int) -> dict[str, Any]:
        if not reply.ok:
            raise with_request_id(from_wire(reply.error.model_dump() if reply.error else {}), rid)
        return reply.result

    def _attempt(
        self, conn: _Conn, frames: list[Any], rid: int, deadline: float, silence: float
    ) -> Any:
        self._send(conn, frames, deadline)
        return self._receive(conn, {rid: deadline}, silence)

    def _send(self, conn: _Conn, frames: list[Any], deadline: float) -> None:
        if conn.events() and self._reached:  # dropped while idle: the server went away
            self._mark_lost()
        wait = min(deadline - time.monotonic(), self.connect_wait)
        try:
            sndtimeo = max(0, int(wait * 1000))
            if sndtimeo != conn.sndtimeo:
                conn.sock.setsockopt(zmq.SNDTIMEO, sndtimeo)
                conn.sndtimeo = sndtimeo
            send(conn.sock, frames)
        except zmq.Again:
            conn.events()
            if conn.refused is not None:  # libzmq does not retry a refused handshake: a new
                status = conn.refused  # socket (next attempt) connects afresh
                self._discard()
                raise _Failure(
                    _REFUSALS.get(
                        status, f"the server refused the connection (ZAP status {status})"
                    ),
                    sent=False,
                ) from None
            raise _Failure(f"could not connect within {max(wait, 0):.1f}s", sent=False) from None

    def _receive(self, conn: _Conn, waiting: dict[int, float], silence: float) -> tuple[Any, dict]:
        """The next reply to one of the requests ``waiting`` (request id -> its deadline).

        A ``working`` heartbeat from the server moves that request's deadline to ``silence``
        seconds from now: a call fails when the server goes quiet, not while it works.
        """
        while True:
            remaining = min(waiting.values()) - time.monotonic()
            if remaining <= 0:
                raise _Failure("no reply before the timeout", sent=True, connection_lost=False)
            # the reply alone first, briefly: polling one socket costs half of polling both,
            # and a drop is still noticed within _REPLY_FIRST_MS
            if conn.reply_poller.poll(min(int(remaining * 1000), _REPLY_FIRST_MS)):
                ready = {conn.sock: _POLLIN}
            else:
                ready = dict(conn.poller.poll(max(0, int(remaining * 1000) - _REPLY_FIRST_MS)))
            if conn.sock in ready:
                reply, out = recv_reply(conn.sock)
                if reply.id in waiting and reply.working:
                    waiting[reply.id] = max(waiting[reply.id], time.monotonic() + silence)
                    continue
                if reply.id in waiting:
                    return reply, out
                continue  # a late reply to a request given up on
            if conn.monitor in ready and conn.events():
                # The connection our requests went out on is gone. Replies that came in before
                # the drop are still in the socket; the others can never arrive.
                answered = []
                while readable(conn.sock):
                    reply, out = recv_reply(conn.sock)
                    if reply.id in waiting and not reply.working:
                        answered.append((reply, out))
                raise _Failure(
                    "the connection dropped before the reply arrived", sent=True, answered=answered
                )

    def _unavailable(
        self, op: str, index: str | None, attempts: int, start: float, last: _Failure, size: int = 0
    ) -> ServerUnavailable:
        """The error of a call that got no reply: what happened, and what to check."""
        target = f" on index {index!r}" if index else ""
        elapsed = time.monotonic() - start
        server = self.settings.server
        if not last.sent and not self._reached:
            # never connected: the likeliest cause is no server at that address
            hint = (
                f"; check that a FAISSx server is running at {server} (`faissx serve"
                f"{_port_flag(server)}`) and that this machine can reach it"
            )
        elif last.sent and last.connection_lost and size > LARGE_REQUEST:
            # ZeroMQ drops a connection whose message is over the peer's MAXMSGSIZE
            hint = (
                f"; the request was {size / (1 << 20):,.1f} MiB: if it is over the "
                "server's --max-message-mb, send it in parts (batch_size) or raise that "
                "limit"
            )
        else:
            hint = ""
        return ServerUnavailable(
            f"{op!r}{target} failed: no reply from {server} after {attempts} "
            f"attempt(s) in {elapsed:.1f}s ({last.reason}){hint}",
            server=self.settings.server,
            op=op,
            index=index,
            attempts=attempts,
            elapsed=round(elapsed, 3),
            reason=last.reason,
        )

    def send_nowait(self, op: str, index: str | None = None) -> None:
        """Fire and forget (used from finalizers): never blocks, never raises."""
        try:
            sock = self._conn().sock
            send(sock, encode(self.header(op, index, None)), flags=zmq.NOBLOCK)
        except Exception as exc:
            log.debug("could not send %s for %s: %s", op, index, exc)

    def close(self) -> None:
        with self._mutex:
            if self.closed:
                return
            self.closed = True
        self._open.forget_all()
        self._local = threading.local()  # other threads' connections are closed already
        self._ctx.term()
