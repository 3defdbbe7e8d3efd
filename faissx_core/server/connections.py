"""How many peers may hold a connection to the server, and the file descriptors behind them.

Every TCP connection costs the server a file descriptor; without a bound, a thousand idle
DEALERs (no key needed: keys are checked per request, after the connection exists) use up the
process's descriptors, and then workers cannot open reply sockets and durable writes cannot
open files. Three measures:

* at start the soft ``RLIMIT_NOFILE`` is raised to the hard limit (:func:`raise_fd_limit`);
* ``--max-connections`` (default: half the descriptors, :func:`default_max_connections`) is
  enforced in the ZMTP handshake: the ROUTER's monitor reports each accepted and each closed
  connection to a :class:`ConnectionCount`, and the ZAP handler (security.py) answers a
  handshake past the limit with status 500, which libzmq sends the peer as a ZMTP ERROR (the
  faissx client reports "the server is at its connection limit") before closing it; the peer's
  descriptor is freed at once;
* peers that never finish a handshake are dropped after :data:`HANDSHAKE_MS`, and peers that
  stop answering ZMTP heartbeats after :data:`HEARTBEAT_TIMEOUT_MS`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import struct
import threading
import time
from collections.abc import Callable

import zmq

log = logging.getLogger("faissx.server")

#: A peer must finish the ZMTP handshake (greeting, mechanism, ZAP) within this many ms.
HANDSHAKE_MS = 10_000
#: The server pings every peer this often, and drops one silent for the timeout (a vanished
#: host keeps its connection, and so a descriptor, open forever otherwise).
HEARTBEAT_IVL_MS = 10_000
HEARTBEAT_TIMEOUT_MS = 30_000
#: Descriptors kept for everything but client connections when the default limit is derived.
RESERVED_FDS = 64
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_EVENT = struct.Struct("=HI")


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one where the OS allows; the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def default_max_connections(fd_limit: int) -> int:
    """Half the descriptors left after a reserve, so files and sockets always have the rest."""
    return max(16, (fd_limit - RESERVED_FDS) // 2)


class ConnectionCount:
    """Open connections of one ROUTER, as its monitor reports them (read by the ZAP thread).

    An accepted connection counts until it is closed, whether or not its handshake succeeds,
    so the count includes the peer whose handshake is being decided and every other one still
    in its handshake: a burst of connections past the limit is turned away as a whole (each
    client retries with a fresh connection), and the descriptors in use never pass the limit
    by more than the handshakes in flight.
    """

    def __init__(self, router: zmq.Socket, limit: int) -> None:
        self.limit = limit
        self.open = 0
        #: Connections accepted since start (the metrics read it: this is the ROUTER's one
        #: monitor, see metrics.Connections.follow).
        self.accepted = 0
        self.refused = 0
        self.monitor = router.get_monitor_socket(EVENTS)
        self._mutex = threading.Lock()
        #: When to give freed memory back to the OS (after a disconnect), or None.
        self.trim_at: float | None = None
        self._trim = _malloc_trim()

    def drain(self) -> None:
        """Apply every pending monitor event (call before deciding a handshake)."""
        while self.monitor.poll(0):
            frames = self.monitor.recv_multipart()
            event, _ = _EVENT.unpack_from(frames[0])
            with self._mutex:
                if event == zmq.EVENT_ACCEPTED:
                    self.open += 1
                    self.accepted += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    self.open = max(0, self.open - 1)
                    if self._trim is not None and self.trim_at is None:
                        self.trim_at = time.monotonic() + TRIM_DELAY

    def trim(self) -> None:
        """Give the heap's free pages back to the OS, once due.

        A disconnected peer's buffers (a half-sent multipart message can be hundreds of MB
        of small frames) are freed by libzmq, but glibc keeps freed small blocks in its arenas:
        without this the server's RSS stays at its peak.
        """
        if self.trim_at is not None and time.monotonic() >= self.trim_at:
            self.trim_at = None
            assert self._trim is not None  # trim_at is set only when it is
            self._trim(0)

    def wait_ms(self) -> int | None:
        """How long the ZAP thread may block before :meth:`trim` is due (None: forever)."""
        if self.trim_at is None:
            return None
        return max(0, int((self.trim_at - time.monotonic()) * 1000))

    def admit(self) -> bool:
        """Whether the connection now in its handshake may stay."""
        self.drain()
        with self._mutex:
            if self.open <= self.limit:
                return True
            self.refused += 1
            refused = self.refused
        if refused == 1 or refused % 1000 == 0:
            log.warning(
                "connection limit (%d, --max-connections) reached: turned away %d "
                "connection(s) so far",
                self.limit,
                refused,
            )
        return False

    def close(self) -> None:
        self.monitor.close(0)


#: Seconds after a disconnect before freed memory is returned (disconnects come in bursts).
TRIM_DELAY = 0.5


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on other C libraries, where nothing needs doing)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def harden_router(router: zmq.Socket) -> None:
    """Handshake and heartbeat timeouts on the ROUTER (before it binds)."""
    router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
