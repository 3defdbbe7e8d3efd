"""A configured connection to one FAISSx server, shared by every proxy made after configure()."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from faissx_client.ivf_stats import IVFStats
from faissx_client.settings import ClientSettings
from faissx_client.transport import Transport

log = logging.getLogger("faissx.client")

#: Most seconds between keep-alives while this client owns unnamed indices; a server with a
#: short ``--idle-ttl`` gets them three times per TTL.
KEEPALIVE_EVERY = 60.0
#: Most bytes of an upload (``import``) sent in one request.
UPLOAD_PART = 64 << 20


class Client:
    def __init__(self, settings: ClientSettings, heartbeat: float | None = None) -> None:
        self.settings = settings
        self.transport = Transport(settings, heartbeat)
        #: What this client's remote IVF searches counted (``faiss.cvar.indexIVF_stats``).
        self.ivf_stats = IVFStats()
        self._anonymous: set[str] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None
        self.keepalive_every = KEEPALIVE_EVERY
        atexit.register(self._at_exit)

    def hello(self) -> dict[str, Any]:
        """Check the server answers and accepts our key; learn its idle TTL."""
        info, _ = self.call("touch")
        ttl = info.get("idle_ttl")
        if isinstance(ttl, int | float) and ttl > 0:
            self.keepalive_every = min(KEEPALIVE_EVERY, ttl / 3)
        limit = info.get("max_message_bytes")
        if type(limit) is int and limit > 0:
            self.transport.max_frame = limit
        rows = info.get("max_request_vectors")
        if type(rows) is int and rows > 0:
            self.transport.max_rows = rows
        return info

    def part_bytes(self) -> int:
        """Bytes of array data one request may carry: the server's ``--max-message-mb`` less
        room for the header, and never more than :data:`UPLOAD_PART` (0: no limit)."""
        limit = self.transport.max_frame
        return min(UPLOAD_PART, limit * 3 // 4) if limit else UPLOAD_PART

    def upload(
        self,
        name: str,
        data: np.ndarray,
        ephemeral: bool,
        spec: dict[str, Any] | None = None,
        sent: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """``import`` faiss bytes as index ``name``, in parts when they exceed one message
        (the server assembles them: faissx_core/server/uploads.py); the new index's info.
        ``sent(n)`` is told the bytes of each part the server has acknowledged."""
        args: dict[str, Any] = {"ephemeral": ephemeral}
        if spec is not None:
            args["spec"] = spec
        total, part = int(data.nbytes), max(1, self.part_bytes())
        info: dict[str, Any] = {}
        if total <= part:
            info = self.call("import", name, args, {"data": data})[0]
            if sent is not None:
                sent(total)
            return info
        for offset in range(0, total, part):
            chunk = data[offset : offset + part]
            info, _ = self.call(
                "import", name, {**args, "offset": offset, "total": total}, {"data": chunk}
            )
            if sent is not None:
                sent(int(chunk.nbytes))
        return info

    @property
    def server(self) -> str:
        return self.settings.server

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.transport.call(op, index, args, arrays, timeout)

    def flush(self) -> None:
        """Return once every deferred write (this thread's, and those of threads that have
        ended) is acknowledged, i.e. durable per the server's ``--fsync``."""
        self.transport.flush()

    def pipeline(
        self,
        op: str,
        index: str | None,
        parts: Sequence[tuple[dict[str, Any] | None, dict[str, np.ndarray]]],
        window: int,
        done: Callable[[int], None] | None = None,
    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """One call sent as several requests in flight (:meth:`Transport.pipeline`)."""
        return self.transport.pipeline(op, index, parts, window, done=done)

    # -- unnamed indices ---------------------------------------------------------------------
    def adopt_anonymous(self, name: str) -> None:
        with self._mutex:
            self._anonymous.add(name)
            if self._keepalive is None:
                self._keepalive = threading.Thread(
                    target=self._keep_alive, name="faissx-keepalive", daemon=True
                )
                self._keepalive.start()

    def forget_anonymous(self, name: str) -> None:
        """Called when an unnamed proxy is collected: drop its server-side index."""
        with self._mutex:
            if name not in self._anonymous:
                return
            self._anonymous.discard(name)
        if not self.transport.closed:
            self.transport.send_nowait("delete", name)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.keepalive_every):
            if self._anonymous:
                try:
                    self.call("touch", timeout=10)
                except Exception as exc:  # the next real call reports a dead server
                    log.debug("keep-alive failed: %s", exc)

    def close(self) -> None:
        """Wait for the deferred writes (write window), drop this client's unnamed indices on
        the server and close the sockets. A deferred write that failed, or that could not be
        acknowledged within the timeout, is logged as an error and raised once closed."""
        if self.transport.closed:
            return
        self._stop.set()
        failure: Exception | None = None
        try:
            self.transport.flush()
        except Exception as exc:  # closed all the same: the caller asked to be done with it
            failure = exc
            log.error("closing the client of %s: %s", self.settings.server, exc)
        for line in self.transport.unflushed():
            log.error(
                "closing the client of %s: deferred writes of a running thread are not "
                "acknowledged (call faissx.client.flush() in that thread first): %s",
                self.settings.server,
                line,
            )
        if self._anonymous:
            try:
                self.call("bye", timeout=min(2.0, self.settings.timeout))
            except Exception as exc:  # the server's idle expiry is the backstop
                log.debug("bye failed: %s", exc)
        self.transport.close()
        atexit.unregister(self._at_exit)
        if failure is not None:
            raise failure

    def _at_exit(self) -> None:
        """Interpreter exit: wait (within the timeout) for the deferred writes; what failed or
        was not acknowledged is logged by close(), not raised into the interpreter's exit."""
        try:
            self.close()
        except Exception as exc:
            log.debug("closing at exit: %s", exc)


def __getattr__(name: str) -> Any:
    """The original FAISSx's names of this module (``faissx.client.client``): its
    ``FaissXClient`` class and the module's ``get_client`` / ``configure``."""
    if name == "FaissXClient":
        from faissx_client.original import FaissXClient

        return FaissXClient
    if name in ("get_client", "configure"):
        import faissx_client

        return getattr(faissx_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
