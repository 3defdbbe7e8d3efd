"""Request/reply over DEALER sockets, one per calling thread.

ZeroMQ sockets must not be shared between threads, and a lock around one socket would make a
web server's workers wait for each other. Each thread therefore gets its own DEALER, all under
one session id (which owns the client's unnamed indices on the server). Every request carries an
id; a reply with another id is a late answer to a request this thread gave up on, and is dropped.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq

from faissx_client.settings import ClientSettings
from faissx_core.errors import ServerUnavailable, from_wire
from faissx_core.messages import PROTOCOL_VERSION
from faissx_core.protocol import encode, recv_reply, send

log = logging.getLogger("faissx.client")


class Transport:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.session = uuid.uuid4().hex
        self._ctx = zmq.Context()
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._sockets: set[zmq.Socket] = set()
        self._mutex = threading.Lock()
        self.closed = False

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            if self.closed:
                raise ServerUnavailable("this client has been closed", server=self.settings.server)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue nothing for a server we are not connected to: a request that could not be
            # sent must fail now, not be delivered minutes later after we reported an error.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.settings.server)
            self._local.sock = sock
            with self._mutex:
                self._sockets.add(sock)
        return sock

    def _discard_socket(self) -> None:
        sock = self._local.__dict__.pop("sock", None)
        if sock is not None:
            with self._mutex:
                self._sockets.discard(sock)
            sock.close(0)

    def header(self, op: str, index: str | None, args: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION, "id": next(self._ids), "op": op, "index": index,
            "args": args or {}, "api_key": self.settings.api_key,
            "tenant": self.settings.tenant_id, "session": self.session,
        }

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request and wait for its reply; raise the server's error as its type."""
        header = self.header(op, index, args)
        frames = encode(header, arrays)
        timeout = self.settings.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        sock = self._socket()
        try:
            sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
            send(sock, frames)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(remaining * 1000):
                    raise zmq.Again()
                reply, out = recv_reply(sock)
                if reply.id != header["id"]:
                    continue
                if not reply.ok:
                    raise from_wire(reply.error.model_dump() if reply.error else {})
                return reply.result, out
        except zmq.Again:
            # The socket may still hold this request or receive its reply: start afresh.
            self._discard_socket()
            raise ServerUnavailable(
                f"no reply from {self.settings.server} to {op!r} within {timeout:g}s",
                server=self.settings.server, op=op,
            ) from None
        except zmq.ZMQError as exc:
            self._discard_socket()
            raise ServerUnavailable(
                f"{op!r} to {self.settings.server} failed: {exc}", server=self.settings.server,
                op=op,
            ) from None

    def send_nowait(self, op: str, index: str | None = None) -> None:
        """Fire and forget (used from finalizers): never blocks, never raises."""
        try:
            sock = self._socket()
            send(sock, encode(self.header(op, index, None)), flags=zmq.NOBLOCK)
        except Exception as exc:
            log.debug("could not send %s for %s: %s", op, index, exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._mutex:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            sock.close(0)
        self._ctx.term()
