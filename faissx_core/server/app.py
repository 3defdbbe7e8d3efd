"""The request loop: a ROUTER socket in front, faiss work on a thread pool behind.

One thread owns the ROUTER socket (ZeroMQ sockets are not thread-safe). It decodes and validates
each request, authenticates it, and hands the work to the pool; workers send their replies back
through per-thread PUSH sockets to an inproc PULL the loop forwards from. faiss releases the GIL,
so a long search on one index runs while other requests are served. :meth:`Server.handle` is the
one place every request passes through, where timing and counting can hook in.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import msgpack
import numpy as np
import zmq

from faissx_core import __version__
from faissx_core.errors import (
    Aborted,
    FaissxError,
    IndexNotFound,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    UnsupportedOperation,
)
from faissx_core.messages import PROTOCOL_VERSION, Request
from faissx_core.operations import OPERATIONS, Operation, operation
from faissx_core.plugins import PluginRegistry
from faissx_core.protocol import (
    decode_request,
    encode,
    readable,
    recv_frames,
    request_id,
    send,
)
from faissx_core.security import configure_router
from faissx_core.server import storage
from faissx_core.server.auth import KeyStore
from faissx_core.server.backend import ManagedIndex, clone_member, make_backend, placement
from faissx_core.server.connections import (
    ConnectionCount,
    default_max_connections,
    harden_router,
    raise_fd_limit,
)
from faissx_core.server.fairness import FairScheduler
from faissx_core.server.idempotency import IdempotencyTable
from faissx_core.server.ivf_ops import copy_subset  # also registers the IVF list ops
from faissx_core.server.limits import Limits
from faissx_core.server.logs import RequestLog
from faissx_core.server.metrics import Metrics
from faissx_core.server.ops import OPS, Arrays, IndexOp, deserialize, run_faiss
from faissx_core.server.ordering import SerialQueues
from faissx_core.server.outbound import SNDHWM, PeerOutput, reply_bytes
from faissx_core.server.pipeline import Call, Observers
from faissx_core.server.progress import Progress
from faissx_core.server.storage import LogRecord, Ticket
from faissx_core.server.uploads import Uploads
from faissx_core.settings import ServerSettings
from faissx_core.specs import IMPORTED, IndexSpec, faiss_class_name
from faissx_core.tenancy import Principal, check_name

log = logging.getLogger("faissx.server")
#: A control operation's function: (caller, request, parsed args, arrays) -> result.
Control = Callable[[Principal, Request, Any, Arrays], dict[str, Any]]

#: Exit status when a write-ahead log could not be synced at shutdown (docs/durability.md).
EXIT_UNSYNCED = 3
#: Seconds between sweeps for idle unnamed indices.
SWEEP_EVERY = 5.0
#: A read whose work (queries x vectors x width) is below this runs on the socket thread when
#: the index is free: a thread hop costs more than a small search (tens of microseconds).
INLINE_WORK = 1 << 22
#: A pooled read below this runs on one OpenMP thread: waking a team costs more than it saves.
SMALL_WORK = 1 << 24
#: Request arrays (vectors and ids) at most this large may be answered on the socket thread.
INLINE_BYTES = 1 << 16
#: The writes that may run inline: one-row adds (LlamaIndex and the like add one vector per
#: call) are cheap and their cost is known from the row count (``ManagedIndex.add_work``).
#: Others (``remove_ids`` compacts the index, ``train`` clusters) can take long on a big index.
INLINE_WRITES = frozenset({"add", "add_with_ids"})
#: More than a log record adds to its arrays (framing, op, arguments, idempotency key).
LOG_HEADER_BYTES = 4096


class Server:
    def __init__(self, settings: ServerSettings, registry: PluginRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or PluginRegistry(settings.plugins)
        # the server's built-in plugins: registered here, not by PluginRegistry, which the
        # client also builds (and which must not import storage); their hooks are trylast
        self.registry.manager.register(storage, name="builtin:faissx_core.server.storage")
        self.registry.manager.register(KeyStore(settings), name="builtin:keystore")
        #: Every plugin is registered by now: the hook is resolved once, not per request.
        self._authenticate = self.registry.first_result("faissx_authenticate")
        store = self.registry.hook.faissx_open_store(settings=settings)
        max_memory = (
            int(settings.max_memory_mb * (1 << 20)) if settings.max_memory_mb is not None else None
        )
        self.backend = make_backend(settings, self.registry, store, max_memory)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="faissx-worker")
        self.writes = SerialQueues(self.pool)  # each index's writes, in arrival order
        self.fair = FairScheduler(
            self.pool, settings.workers, heavy=SMALL_WORK, quantum=INLINE_WORK
        )  # reads: one tenant cannot starve others
        self.limits = Limits(settings)  # request sizes, tenant quotas, per-key rates
        self.uploads = Uploads(self.backend)  # imports larger than one message, being assembled
        self.progress = Progress(settings.progress_every)  # heartbeats of long requests
        #: Reply bytes held per peer that reads slowly, bounded (outbound.py).
        self.output = PeerOutput(settings.max_peer_output_bytes)
        self._router: zmq.Socket | None = None
        #: Replies of recent mutating requests by idempotency key: a retry is applied once.
        self.idempotency = IdempotencyTable.from_env()
        self.backend.keys = self.idempotency  # keys recovered from snapshots go back in here
        #: The process's exit status once serve_forever returns (docs/durability.md).
        self.exit_code = 0
        self.ctx = zmq.Context()
        self._reply_endpoint = f"inproc://faissx-replies-{uuid.uuid4().hex}"
        self._local = threading.local()
        self._stopping = threading.Event()
        #: Completed requests are reported here (metrics, request logs): see pipeline.py.
        self.observers = Observers()
        #: Prometheus metrics (served by --metrics-port) and the request log observe them.
        self.metrics = Metrics(self.backend, self.idempotency)
        if store is not None and hasattr(store, "timings"):
            store.timings = self.metrics.storage_timing  # fsync and snapshot durations
        #: Replies of durable writes are held until their log record is on disk and sent by
        #: the store's committer (group commit), when the store can do that.
        self._holds = store is not None and hasattr(store, "when_durable")
        self.observers.add(self.metrics.observe)
        self.observers.add(RequestLog())
        self.control, self.index_ops = self._implementations()

    def _implementations(self) -> tuple[dict[str, Control], dict[str, IndexOp]]:
        """Each declared operation's function: ``_<name>`` here for a control operation, the
        ``@op`` of ops.py for an index one. A declaration without one is a bug: fail at start."""
        control: dict[str, Control] = {}
        missing = []
        for decl in OPERATIONS.values():
            if decl.target == "control":
                fn = getattr(self, f"_{decl.name}", None)
                if fn is None:
                    missing.append(decl.name)
                else:
                    control[decl.name] = fn
            elif decl.name not in OPS:
                missing.append(decl.name)
        if missing:
            raise RuntimeError(f"operations declared without an implementation: {missing}")
        return control, dict(OPS)

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        """Ask the loop to finish; safe from a signal handler or another thread."""
        self._stopping.set()

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        connections = self._connection_limit(router)
        # MAXMSGSIZE; CURVE and its allow-list; the connection limit, in the ZAP handler
        configure_router(self.ctx, router, self.settings, connections)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.SNDHWM, SNDHWM)
        self._router = router
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        for endpoint in self.settings.endpoints:
            router.bind(endpoint)
        replies = self.ctx.socket(zmq.PULL)
        replies.bind(self._reply_endpoint)
        if connections is not None:  # it owns the ROUTER's one monitor
            self.metrics.connections.follow(connections)
        else:
            self.metrics.connections.watch(router)
        if self.settings.metrics_port is not None:
            port = self.metrics.serve(self.settings.bind_address, self.settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.settings.bind_address, port)
        loaded = self.backend.load(self._replay)
        if self.backend.store is not None:
            log.info(
                "data dir %s: %d index(es) reopened; fsync=%s",
                self.settings.data_dir,
                loaded,
                self.settings.fsync,
            )
        log.info(
            "faissx %s listening on %s (plugins: %s; workers: %d; auth: %s)",
            __version__,
            ", ".join(self.settings.endpoints),
            ", ".join(sorted(p for p, i in self.registry.plugins.items() if i.enabled)) or "none",
            self.settings.workers,
            "on" if self.settings.enable_auth else "off",
        )
        # The socket thread only runs small reads inline (INLINE_WORK): one OpenMP thread each,
        # since waking a team costs more than such a search and would compete with the pool.
        faiss.omp_set_num_threads(1)
        if ready is not None:
            ready()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        sweep_every = min(SWEEP_EVERY, self.settings.idle_ttl / 2)
        next_sweep = time.monotonic() + sweep_every
        try:
            while not self._stopping.is_set():
                polled = dict(
                    poller.poll(min(200, max(10, int(self.settings.progress_every * 1000))))
                )
                self.progress.beat(lambda frames: send(router, frames))
                if replies in polled:
                    self._forward(replies, router)
                if router in polled:
                    # drain a burst of requests, then let finished replies through again
                    for _ in range(64):
                        frames = recv_frames(router)
                        self.handle(frames[0], frames[1:], router)
                        if not readable(router):
                            break
                if time.monotonic() >= next_sweep:
                    self.backend.expire(self.settings.idle_ttl)
                    self.uploads.expire(self.settings.idle_ttl)
                    self.output.sweep()
                    next_sweep = time.monotonic() + sweep_every
        finally:
            log.info("shutting down: finishing in-flight requests")
            self.pool.shutdown(wait=True)
            if self._holds:  # replies still held for their records' sync: let them out
                deadline = time.monotonic() + 10
                while not self.backend.store.settle(0.05):  # type: ignore[union-attr]
                    self._forward(replies, router)  # the committer's pusher must not block
                    if time.monotonic() > deadline:
                        break
            self._forward(replies, router)
            saved = self.backend.snapshot_all()
            if saved:
                log.info("snapshotted %d named index(es)", saved)
            if self.backend.store is not None:
                try:
                    self.backend.store.close()
                except OSError as exc:  # e.g. a full disk: say so plainly, no traceback
                    log.critical(
                        "shutdown: %s; writes acknowledged since the last fsync may "
                        "be lost on power failure",
                        exc,
                    )
                    self.exit_code = EXIT_UNSYNCED
            self.metrics.close()
            router.close()
            replies.close()
            for sock in getattr(self, "_pushers", []):
                sock.close(0)
            self.ctx.term()
            log.info("stopped")

    def _connection_limit(self, router: zmq.Socket) -> ConnectionCount | None:
        """Raise the descriptor limit, time out handshakes and silent peers, and count the
        ROUTER's connections against ``--max-connections`` (server/connections.py)."""
        fd_limit = raise_fd_limit()
        harden_router(router)
        limit = self.settings.max_connections
        if limit is None:
            limit = default_max_connections(fd_limit)
        log.info(
            "open-file limit %d; at most %s client connection(s)", fd_limit, limit or "unlimited"
        )
        return ConnectionCount(router, limit) if limit else None

    def _forward(self, replies: zmq.Socket, router: zmq.Socket) -> None:
        """Pass the workers' finished replies to the ROUTER (frames as received, no copy),
        each within its peer's output bound (outbound.py)."""
        while readable(replies):
            frames = recv_frames(replies)
            try:
                self.output.send(router, frames)
            except (zmq.ZMQError, ValueError, TypeError):  # one reply lost, not the server
                log.exception("could not send a reply")

    # -- the pipeline ------------------------------------------------------------------------
    # Every request takes the same path: decode, look up its declaration, authenticate,
    # authorize by the declaration's access, admit (request limits), then either answer inline
    # (a small read, or ping) or queue it: in arrival order per index when the declaration says
    # ``ordered``, else on the pool. There, a keyed request goes through the idempotency table,
    # and the operation runs: a control method, or an index op under the backend's locks, log
    # and acknowledgement. Every answer leaves through :meth:`_finish`, which tells observers.

    def handle(self, ident: Any, frames: list[Any], router: zmq.Socket) -> None:
        """Validate, authenticate and dispatch one request. Never raises."""
        call = Call(ident, 0, sum(map(len, frames)))  # a zmq.Frame's len is its size
        try:
            request, arrays = decode_request(frames)
            call.request_id, call.index = request.id, request.index
            op = call.op = operation(request.op)
            if op.access == "none":  # ping: no key, nothing to look up
                call.inline = True
                self._finish(
                    call,
                    router,
                    self._ok(request.id, self._ping(None, request, op.parse(request.args), arrays)),
                )
                return
            principal = self._authenticate(
                api_key=request.api_key, tenant=request.tenant, settings=self.settings
            )
            call.tenant = principal.tenant
            if op.access == "write" and not principal.can_write:
                raise PermissionDenied(f"a {principal.role} key may not {op.name}")
            if op.target == "index" and request.index is None:
                raise InvalidArgument(f"{op.name} needs an index name")
            self.limits.admit(principal, request, arrays)
            if request.session:
                self.backend.touch(request.session)
            if self._inline(call, principal, op, request, arrays, router):
                return
            if request.progress:
                self.progress.start(call.ident, call.request_id)
            if op.ordered and request.index is not None:
                # in arrival order per index: a pipelined add's parts must not overtake
                self.writes.submit(
                    (principal.tenant, request.index),
                    lambda: self._work(call, principal, op, request, arrays),
                )
            else:  # reads and control ops: fair queueing per tenant (fairness.py)
                self.fair.submit(
                    principal.tenant,
                    self._cost(principal, op, request, arrays),
                    lambda: self._work(call, principal, op, request, arrays),
                )
        except FaissxError as exc:
            call.request_id = call.request_id or request_id(frames)
            self._finish(call, router, self._error(call.request_id, exc), exc.code)
        except Exception as exc:  # a bug must cost one request, not the server
            log.exception("unexpected error decoding a request")
            self._finish(
                call,
                router,
                self._error(call.request_id, InternalError(str(exc))),
                InternalError.code,
            )

    def _inline(
        self,
        call: Call,
        principal: Principal,
        op: Operation,
        request: Request,
        arrays: Arrays,
        router: zmq.Socket,
    ) -> bool:
        """Answer a small request right here if its index is free; False sends it to the pool.

        A thread hop to the pool and back costs more than a small search or a one-row add
        (tens of microseconds each way). A read runs here if its index's read lock is free; a
        write (:meth:`_inline_write`) if no write of its index is queued, its lock is free and
        nothing makes its reply wait. Both then take the same steps as on the pool.
        """
        if op.target != "index" or (op.mutates and op.name not in INLINE_WRITES):
            return False
        if sum(a.nbytes for a in arrays.values()) > INLINE_BYTES:
            return False
        try:
            managed = self._get(principal, request)
        except FaissxError:
            return False  # the pool reports it, with the same code path as every other error
        x = arrays.get("x")
        rows = x.shape[0] if x is not None and x.ndim else 1
        if op.mutates:
            return self._inline_write(call, principal, op, request, arrays, router, managed, rows)
        if managed.search_work(rows, request.args) > INLINE_WORK:
            return False
        if not managed.lock.acquire_read(blocking=False):
            return False
        call.inline = True
        holds: list[Ticket] = []
        try:
            frames, outcome = self._respond(
                request,
                lambda: self._run(
                    self.index_ops[op.name],
                    managed,
                    request,
                    arrays,
                    locked=True,
                    defer=holds.append if self._holds else None,
                ),
            )
        finally:
            managed.lock.release_read()
        self._reply(call, router, frames, outcome, holds[-1] if holds else None)
        return True

    def _inline_write(
        self,
        call: Call,
        principal: Principal,
        op: Operation,
        request: Request,
        arrays: Arrays,
        router: zmq.Socket,
        managed: ManagedIndex,
        rows: int,
    ) -> bool:
        """Run a small add on this thread, through the same steps as on the pool (idempotency,
        ``after``, limits, the backend's run with its log), when that cannot reorder or stall:

        * no earlier write of the index is queued or running (arrival order is kept);
        * nothing on this thread waits for a disk: the index is in memory (unnamed, or no data
          directory), or its record is only written here (to the page cache) and its reply is
          held until the committer has synced it (``--fsync always``/``batch``: group commit)
          or sent at once (``off``); and the log is far from its snapshot threshold;
        * its work is small and its lock is free right now.
        """
        store = self.backend.store
        if store is not None and not managed.ephemeral:
            if (self.settings.fsync != "off" and not self._holds) or managed.snapshot_due:
                return False
            record = sum(a.nbytes for a in arrays.values()) + LOG_HEADER_BYTES
            if store.log_bytes(managed.tenant, managed.name) + record > self.backend.snapshot_bytes:
                return False  # this write would call for a snapshot: the pool takes it
        if not self.writes.idle((principal.tenant, request.index)):
            return False
        if managed.add_work(rows) > INLINE_WORK:
            return False
        if not managed.lock.acquire_write(blocking=False):
            return False
        call.inline = True
        try:
            self._work(call, principal, op, request, arrays, router, held=managed)
        finally:
            managed.lock.release_write()
        return True

    def _cost(self, principal: Principal, op: Operation, request: Request, arrays: Arrays) -> float:
        """Estimated work of a pooled read (what fair queueing weighs it by); 0 for others."""
        if op.target != "index" or op.mutates:
            return 0.0
        try:
            managed = self._get(principal, request)
        except FaissxError:
            return 0.0  # its error is reported when it runs
        x = arrays.get("x")
        return managed.search_work(x.shape[0] if x is not None and x.ndim else 1, request.args)

    def _work(
        self,
        call: Call,
        principal: Principal,
        op: Operation,
        request: Request,
        arrays: Arrays,
        sock: zmq.Socket | None = None,
        held: ManagedIndex | None = None,
    ) -> None:
        """Run the request (once per idempotency key) and send its reply: on the pool, or on
        the socket thread (``sock``, the ROUTER) holding the write lock of ``held``."""
        outcome: str | None = None
        holds: list[Ticket] = []  # the log record its reply waits for (group commit)

        def execute() -> tuple[list[Any], Ticket | None]:
            nonlocal outcome
            frames, outcome = self._respond(
                request,
                lambda: self._execute(
                    principal, op, request, arrays, held, holds.append if self._holds else None
                ),
            )
            return frames, holds[-1] if holds else None

        if request.idem is not None and op.keyed:

            def reply(
                token: Call, frames: list[Any], deduplicated: bool, hold: Ticket | None
            ) -> None:
                token.deduplicated = deduplicated
                self._reply(
                    token,
                    sock,
                    frames,
                    outcome if token is call and not deduplicated else None,
                    hold,
                )

            self.idempotency.handle(principal.tenant, request, call, execute, reply)
            return
        frames, hold = execute()
        self._reply(call, sock, frames, outcome, hold)

    def _reply(
        self,
        call: Call,
        sock: zmq.Socket | None,
        frames: list[Any],
        outcome: str | None,
        hold: Ticket | None,
    ) -> None:
        """Send a reply now (on ``sock``, else this thread's pusher), or, when it waits for a
        log record (``hold``), from the store's committer once the record is on disk. If it
        never gets there (a failed fdatasync), the reply is an error instead: nothing is
        acknowledged that a crash could undo."""
        if hold is None:
            self._finish(call, sock or self._pusher(), frames, outcome)
            return

        def release(failure: str | None) -> None:
            if failure is None:
                self._finish(call, self._pusher(), frames, outcome)
                return
            what = (
                "was applied but is not acknowledged"
                if call.op and call.op.mutates
                else ("saw writes that are not acknowledged")
            )
            exc = InternalError(
                f"{call.op.name if call.op else 'request'} {what}: the write-ahead log could "
                f"not be synced ({failure}); the index refuses writes until a restart recovers "
                "its last durable state"
            )
            self._finish(call, self._pusher(), self._error(call.request_id, exc), exc.code)

        self.backend.store.when_durable(hold, release)  # type: ignore[union-attr]

    def _finish(
        self, call: Call, sock: zmq.Socket, frames: list[Any], outcome: str | None = "ok"
    ) -> None:
        """Send a request's reply, then tell the observers: the one exit of the pipeline.
        ``outcome`` None means: read it from the reply (one the idempotency table made)."""
        self.progress.finish(call.ident, call.request_id)  # no heartbeat after the answer
        size = reply_bytes(frames)
        if sock is self._router:
            self.output.send(sock, [call.ident, *frames], size)
        else:
            send(sock, [call.ident, *frames])
        if self.observers:
            self.observers.notify(call.event(size, outcome or _outcome(frames)))

    def _respond(self, request: Request, execute: Callable[[], list[Any]]) -> tuple[list[Any], str]:
        """Frames of the reply to ``request`` (its result, or its error as a typed reply), and
        its outcome: ``ok`` or the error's code."""
        try:
            return execute(), "ok"
        except FaissxError as exc:
            return self._error(request.id, exc), exc.code
        except Exception as exc:
            log.exception("op %s failed unexpectedly", request.op)
            return (
                self._error(request.id, InternalError(f"{type(exc).__name__}: {exc}")),
                InternalError.code,
            )

    def _execute(
        self,
        principal: Principal,
        op: Operation,
        request: Request,
        arrays: Arrays,
        held: ManagedIndex | None = None,
        defer: Callable[[Ticket], None] | None = None,
    ) -> list[Any]:
        """Run one operation; ``held``: its index, whose write lock the caller holds;
        ``defer``: takes the log record the reply must wait for (see ``backend.run``)."""
        if op.target == "control":
            return self._ok(
                request.id,
                self.control[op.name](principal, request, op.parse(request.args), arrays),
            )
        managed = held if held is not None else self._get(principal, request)
        if request.after is not None and not self.idempotency.succeeded(
            principal.tenant, request.after
        ):
            raise Aborted(
                f"{request.op} on {managed.name!r}: not applied, because the part "
                "of this call before it was not"
            )
        with self.limits.write(op, principal.tenant, self.backend, arrays):
            return self._run(
                self.index_ops[op.name],
                managed,
                request,
                arrays,
                locked=held is not None,
                defer=defer,
            )

    def _run(
        self,
        op: IndexOp,
        managed: ManagedIndex,
        request: Request,
        arrays: Arrays,
        locked: bool = False,
        defer: Callable[[Ticket], None] | None = None,
    ) -> list[Any]:
        args = op.parse(request.args)  # malformed arguments are invalid_argument, first
        self.limits.check_op(op.name, managed, request.args, arrays)
        args._reply_bytes = self.limits.reply_bytes
        job = op.prepare(managed, args, arrays)
        if locked and not op.write:  # an inline read: nothing to log, no budget to share
            result, out = job(managed.index)
            if defer is not None and (ticket := self.backend.pending(managed)) is not None:
                defer(ticket)  # it may show a write that is not on disk yet
        else:
            record = (
                LogRecord(op.name, request.args, arrays, request.idem) if op.decl.logged else None
            )
            x = arrays.get("x")
            queries = x.shape[0] if x is not None and x.ndim else 1
            # One OpenMP thread for a small read, and for any one-query read: faiss splits a
            # search by query, so a second thread has nothing to do but cost its wake-up (a
            # one-query exact search of 1M vectors took 78 ms with two threads, 37 ms with one).
            small = locked or (
                not op.write
                and (queries == 1 or managed.search_work(queries, request.args) <= SMALL_WORK)
            )
            result, out = self.backend.run(
                managed, op.write, job, record, small=small, held=locked, defer=defer
            )
        return self._ok(request.id, result, out)

    def _replay(self, managed: ManagedIndex, record: LogRecord) -> Any:
        """Re-apply one logged write at start-up, through the same op code that applied it.

        Its idempotency key is remembered with the reply it got, so a client retrying a write
        whose reply the crash swallowed is answered without applying it twice.
        """
        op = self.index_ops[record.op]
        result, _ = op.prepare(managed, op.parse(record.args), record.arrays)(managed.index)
        if record.idem:
            self.idempotency.remember(
                managed.tenant, record.idem, record.op, managed.name, self._ok(0, result)
            )
        return result

    def _get(self, principal: Principal, request: Request, name: str | None = None) -> ManagedIndex:
        """The caller's index; another session's unnamed index does not exist for it."""
        managed = self.backend.get(principal.tenant, check_name(name or request.index or ""))
        if managed.ephemeral and managed.session != request.session:
            raise IndexNotFound(f"no index named {managed.name!r}")
        return managed

    def _pusher(self) -> zmq.Socket:
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self._local.push = self.ctx.socket(zmq.PUSH)
            sock.connect(self._reply_endpoint)
            self.__dict__.setdefault("_pushers", []).append(sock)
        return sock

    @staticmethod
    def _ok(rid: int, result: dict[str, Any], arrays: Arrays | None = None) -> list[Any]:
        return encode({"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}, arrays)

    @staticmethod
    def _error(rid: int, exc: FaissxError) -> list[Any]:
        return encode({"v": PROTOCOL_VERSION, "id": rid, "ok": False, "error": exc.to_wire()})

    # -- control ops -------------------------------------------------------------------------
    def _create(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        name, session = _target(request, args.ephemeral)
        with self.limits.new_index(
            principal.tenant, self.backend, spec=args.spec, session=request.session
        ):
            info = self.backend.create(
                principal.tenant,
                name,
                args.spec,
                session,
                idem=request.idem,
                caller=request.session,
                **placement(args.shards, args.replicas),
            ).info()
        return self._hint_volatile(info, args.ephemeral)

    def _import(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Create an index from ``faiss.serialize_index`` bytes in the ``data`` frame."""
        data = arrays.get("data")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise InvalidArgument("import needs the index bytes as a 1-d uint8 array 'data'")
        if args.total is not None and (args.offset or args.total != data.nbytes):
            key = (principal.tenant, request.session, check_name(request.index or ""))
            data = self.uploads.part(key, args.offset, args.total, data)
            if data is None:
                return {"received": args.offset + int(arrays["data"].nbytes), "total": args.total}
        with self.backend.reserve(int(data.nbytes), f"importing {request.index!r}"):
            index = deserialize(data)  # faiss builds about what the bytes hold
        spec = args.spec or IndexSpec(
            type=IMPORTED.name, params={"faiss_class": faiss_class_name(index)}
        )
        name, session = _target(request, args.ephemeral)
        with self.limits.new_index(principal.tenant, self.backend, index=index):
            info = self.backend.create(
                principal.tenant, name, spec, session, index=index, idem=request.idem, op="import"
            ).info()
        return self._hint_volatile(info, args.ephemeral)

    def _hint_volatile(self, info: dict[str, Any], ephemeral: bool) -> dict[str, Any]:
        """A named index on a server without a data directory is lost when it stops: say so
        in the reply (the client shows it as a warning)."""
        if ephemeral or self.backend.store is not None:
            return info
        return {
            **info,
            "warnings": [
                f"index {info['name']!r} is named, but this server keeps indices in memory only "
                "(no --data-dir): it will not survive a server restart"
            ],
        }

    def _clone(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """``faiss.clone_index`` of ``source`` (or of the index at ``path`` inside it) as a
        new index (``index``), state included."""
        source = self._get(principal, request, args.source)
        with source.lock.read():
            index = run_faiss(lambda: clone_member(source.index, args.path), "clone", source)
        spec = source.spec
        if args.path:  # a member has no spec of its own: it is known by its faiss class
            spec = IndexSpec(type=IMPORTED.name, params={"faiss_class": faiss_class_name(index)})
        name, session = _target(request, args.ephemeral)
        with self.limits.new_index(principal.tenant, self.backend, index=index):
            return self.backend.create(principal.tenant, name, spec, session, index=index).info()

    def _merge_from(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """``target.merge_from(source, add_id)``: faiss moves the vectors, emptying the source."""
        target = self._get(principal, request)
        source = self._get(principal, request, args.other)
        if source is target:
            raise InvalidArgument("an index cannot be merged into itself")

        def merge(into: Any, other: Any) -> None:
            for managed in (target, source):  # under both locks: no wrapper comes meanwhile
                managed.check_lists_writable("merge_from")
            run_faiss(lambda: into.merge_from(other, args.add_id), "merge_from", target)

        # one commit for both (the moved vectors are in no log), applied once per key
        return self.backend.merge(target, source, merge, request.idem)

    def _copy_subset_to(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """``source.copy_subset_to(index, ...)``: a write to ``index`` (the request's), one
        commit like a merge (backend.copy_into); the source is only read."""
        target = self._get(principal, request)
        source = self._get(principal, request, args.source)
        if source is target:
            raise InvalidArgument("copy_subset_to: an index cannot be copied into itself")
        rows = int(source.index.ntotal)  # at most all of them: the subset's bound
        with self.limits.reserve(
            principal.tenant, self.backend, vectors=rows, nbytes=rows * source.vector_bytes
        ):
            return self.backend.copy_into(
                target, source, copy_subset(target, source, args), request.idem
            )

    def _snapshot(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Snapshot one named index (``index``) or all of the tenant's, emptying their logs."""
        if self.backend.store is None:
            raise UnsupportedOperation("this server has no data directory to snapshot into")
        targets = (
            [self._get(principal, request)]
            if request.index
            else [m for m in self.backend.list(principal.tenant) if not m.ephemeral]
        )
        # tenant-wide: deleted and broken indices are skipped (a named broken one is an error)
        return {
            "snapshotted": [
                m.name for m in targets if self.backend.snapshot(m, strict=bool(request.index))
            ]
        }

    def _delete(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        self.backend.delete(principal.tenant, self._get(principal, request).name)
        return {}

    def _list(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        return {
            "indexes": [
                m.info()
                for m in self.backend.list(principal.tenant)
                if not m.ephemeral or (args.all and m.session == request.session)
            ]
            + [d.info() for d in self.backend.damaged(principal.tenant)],
            "memory_bytes": self.backend.memory_used(principal.tenant),
            "memory_limit_bytes": self.backend.max_memory_bytes,
            "memory_free_bytes": self.backend.memory_free(),
        }

    def _ping(
        self, principal: Principal | None, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Liveness: answered on the socket thread, without a key."""
        return {"version": __version__, "protocol": PROTOCOL_VERSION}

    def _repair(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Rebuild a quarantined index from its intact part; its files are copied aside."""
        return self.backend.repair(principal.tenant, check_name(request.index or ""), self._replay)

    def _drop(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Delete a quarantined index and its files, on the operator's explicit request."""
        return self.backend.drop(principal.tenant, check_name(request.index or ""))

    def _stats(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """What ``faissx status`` shows: the server's vitals and the caller's indices.

        Server-wide index and memory totals (which sum over tenants) go to admin keys only.
        """
        store = self.backend.store
        indexes = [
            {
                "name": m.name,
                "type": m.spec.type,
                "ntotal": int(m.index.ntotal),
                "memory_bytes": m.memory_bytes,
                "log_bytes": store.log_bytes(m.tenant, m.name) if store else None,
            }
            for m in self.backend.list(principal.tenant)
            if not m.ephemeral
        ]
        stats: dict[str, Any] = {
            "version": __version__,
            "uptime_s": round(self.metrics.uptime(), 3),
            "connections": self.metrics.connections.open,
            "connections_accepted": self.metrics.connections.accepted,
            "requests": self.metrics.requests.total(),
            "workers": self.settings.workers,
            "durable": store is not None,
            "fsync": self.settings.fsync if store else None,
            "metrics_port": self.settings.metrics_port,
            "tenant": principal.tenant,
            "indexes": indexes,
            "memory_bytes": self.backend.memory_used(principal.tenant),
            "memory_limit_bytes": self.backend.max_memory_bytes,
        }
        if principal.role == "admin":
            every = list(self.backend)
            stats["server"] = {
                "indexes": len(every),
                "memory_bytes": sum(m.memory_bytes for m in every),
            }
        return stats

    def _touch(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """Keep-alive (and, from configure(), a check that the key works)."""
        return {
            "tenant": principal.tenant,
            "version": __version__,
            "idle_ttl": self.settings.idle_ttl,
            # the client splits what it sends to fit (0: no limit)
            "max_message_bytes": self.settings.max_message_bytes,
            "max_request_vectors": self.settings.max_request_vectors,
        }

    def _bye(
        self, principal: Principal, request: Request, args: Any, arrays: Arrays
    ) -> dict[str, Any]:
        """A client going away: drop the unnamed indices of its session."""
        dropped = (
            self.backend.drop_session(request.session, principal.tenant) if request.session else 0
        )
        if request.session:
            self.uploads.drop_session(request.session)
        return {"dropped": dropped}


def _target(request: Request, ephemeral: bool) -> tuple[str, str | None]:
    """A new index's checked name, and the session owning it when it is unnamed."""
    if ephemeral and not request.session:
        raise InvalidArgument("an unnamed index needs a client session")
    return check_name(request.index or ""), request.session if ephemeral else None


def _outcome(frames: list[Any]) -> str:
    """``ok`` or the error code of an encoded reply (one remembered by the idempotency table)."""
    header = msgpack.unpackb(frames[0], raw=False)
    return "ok" if header.get("ok") else str(header.get("error", {}).get("code", "internal"))


def run_server(settings: ServerSettings) -> int:
    """Serve until SIGINT or SIGTERM, then shut down cleanly; returns the exit status."""
    for level, line in settings.notices():  # unsafe or surprising settings, said at start
        log.log(level, line)
    server = Server(settings)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, server.stop)
        signal.signal(signal.SIGTERM, server.stop)
    server.serve_forever()
    return server.exit_code
