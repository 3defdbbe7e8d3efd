"""Socket security: ZeroMQ CURVE encryption, a client-key allow-list, and the frame-size cap.

Two entry points, one per side, each called once on a fresh socket:

* :func:`configure_router` (server): before the ROUTER binds. Caps inbound frames at
  ``max_message_bytes`` (``zmq.MAXMSGSIZE``: a peer that sends a larger frame is disconnected),
  and with ``curve_secret_key`` makes the socket a CURVE server. With ``curve_allow_keys`` it also
  starts a ZAP handler (RFC 27) that admits only the listed client public keys.
* :func:`configure_dealer` (client): before the DEALER connects. With ``server_public_key`` the
  socket becomes a CURVE client, with the configured key pair or a fresh one per socket.

CURVE encrypts and authenticates the connection; API keys still decide the tenant (auth.py).
Keys are 40-character Z85 strings, as ``zmq.curve_keypair()`` makes (``faissx keys curve``).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

if TYPE_CHECKING:
    from faissx_core.server.connections import ConnectionCount
    from faissx_core.settings import ServerSettings

log = logging.getLogger("faissx.security")

#: Where libzmq looks for the ZAP handler of a context (fixed by RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"faissx"
#: ZAP status of a handshake turned away at the connection limit: libzmq sends it to the peer
#: in a ZMTP ERROR (400 is a refused CURVE key; 300 would send nothing and let it retry at once).
CONNECTION_LIMIT_STATUS = b"500"
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
# a pyzmq certificate file (zmq.auth.create_certificates) spells keys this way
_CERT_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')


def is_key(text: object) -> bool:
    """True for a 40-character Z85 string that decodes to a 32-byte CURVE key."""
    if not isinstance(text, str) or not _Z85.fullmatch(text):
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError):
        return False


def _keys_in(text: str, kind: str) -> tuple[list[str], list[int]]:
    """Keys in a file: bare Z85 lines, or ``kind``-key lines of a pyzmq certificate.

    Returns the keys and the numbers of lines that are neither a key, a comment (``#`` first,
    unless the line is itself a key: ``#`` is a Z85 digit), blank, nor certificate structure.
    """
    keys, bad = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        cert = _CERT_LINE.match(line)
        if cert:
            key = cert.group(2)
            if cert.group(1) != kind:
                continue
        elif not line or line in ("curve", "metadata") or ("=" in line and not is_key(line)):
            continue  # blank, or certificate structure and metadata
        elif line.startswith("#") and not is_key(line):
            continue  # a comment ('#' is also a Z85 digit: a key line is a key)
        else:
            key = line
        if is_key(key):
            keys.append(key)
        else:
            bad.append(number)
    return keys, bad


def read_secret_key(value: str | Path) -> str:
    """A Z85 secret key given inline, or read from a file (bare key or pyzmq certificate).

    The error names the file, never the key.
    """
    text = str(value).strip()
    if is_key(text):
        return text
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            "the CURVE secret key must be a 40-character Z85 key or a file "
            "holding one (faissx keys curve)"
        )
    try:
        found, bad = _keys_in(path.read_text(), "secret")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read CURVE secret key file {path}: {exc}") from None
    if bad or len(found) != 1:
        raise ValueError(f"{path} must hold exactly one Z85 CURVE secret key")
    return found[0]


def load_allow_list(path: Path) -> frozenset[str]:
    """Client public keys from ``path``: one Z85 key a line (or a pyzmq certificate)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read CURVE allow-list {path}: {exc}") from None
    keys, bad = _keys_in(text, "public")
    if bad:
        raise ValueError(
            f"CURVE allow-list {path}: line {bad[0]} is not a 40-character Z85 public key"
        )
    if not keys:
        raise ValueError(f"CURVE allow-list {path} lists no keys: no client could connect")
    return frozenset(keys)


def public_key_of(secret_key: str) -> str:
    return zmq.curve_public(secret_key.encode("ascii")).decode("ascii")


def configure_router(
    ctx: zmq.Context,
    sock: zmq.Socket,
    settings: ServerSettings,
    connections: ConnectionCount | None = None,
) -> None:
    """Secure the server's ROUTER; call before ``bind``. With ``connections`` every handshake
    also goes through the ZAP handler, which turns away peers past the connection limit."""
    if settings.max_message_bytes:
        sock.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
    allowed = (
        load_allow_list(settings.curve_allow_keys)
        if settings.curve_allow_keys is not None
        else None
    )
    if allowed is not None or connections is not None:
        # bound before the socket sees its first handshake
        ZapHandler(ctx, allowed, connections).start()
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    if settings.curve_secret_key is None:
        return
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support")
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, settings.curve_secret_key.encode("ascii"))
    log.info(
        "CURVE encryption on; server public key %s; %s",
        public_key_of(settings.curve_secret_key),
        f"{len(allowed)} allowed client key(s)"
        if allowed is not None
        else "any client key accepted",
    )


def configure_dealer(sock: zmq.Socket, settings: Any) -> None:
    """Secure a client's DEALER (``settings``: a ClientSettings); call before ``connect``."""
    server_key = getattr(settings, "server_public_key", None)
    if not server_key:
        return
    public, secret = settings.client_public_key, settings.client_secret_key
    if not public:
        public_b, secret_b = zmq.curve_keypair()  # an anonymous key pair, for this socket only
        public, secret = public_b.decode("ascii"), secret_b.decode("ascii")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public.encode("ascii"))
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret.encode("ascii"))


class ZapHandler(threading.Thread):
    """Answers libzmq's ZAP requests: past the connection limit (``connections``) a peer is
    turned away with status 500; otherwise, with an allow-list, a CURVE client is admitted iff
    its key is listed, and without one every peer is.

    The REP socket is bound in the constructor (so the handler exists before any handshake)
    and then used only by this thread, which also reads the ROUTER's monitor events (so none
    pile up). When the context terminates, the poll fails with ETERM and the thread closes its
    sockets, so ``ctx.term()`` never waits on it.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        allowed: frozenset[str] | None,
        connections: ConnectionCount | None = None,
    ) -> None:
        super().__init__(name="faissx-zap", daemon=True)
        self.allowed = frozenset(z85.decode(k) for k in allowed) if allowed is not None else None
        self.connections = connections
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.connections is not None:
            poller.register(self.connections.monitor, zmq.POLLIN)
        try:
            while True:
                wait = self.connections.wait_ms() if self.connections is not None else None
                ready = dict(poller.poll(wait))
                if self.connections is not None:
                    if self.connections.monitor in ready:
                        self.connections.drain()
                    self.connections.trim()
                if self.sock in ready:
                    self.sock.send_multipart(self.answer(self.sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # pragma: no cover - nothing else is expected
            log.error("ZAP handler stopped: %s", exc)
        finally:
            self.sock.close(0)
            if self.connections is not None:
                self.connections.close()

    def answer(self, request: list[bytes]) -> list[bytes]:
        """``[version, id, domain, address, identity, mechanism, *credentials]`` -> reply."""
        if len(request) < 6 or request[0] != b"1.0":
            rid = request[1] if len(request) > 1 else b""
            return [b"1.0", rid, b"500", b"malformed ZAP request", b"", b""]
        rid, mechanism, credentials = request[1], request[5], request[6:]
        if self.connections is not None and not self.connections.admit():
            return [b"1.0", rid, CONNECTION_LIMIT_STATUS, b"connection limit reached", b"", b""]
        if self.allowed is None:
            user = z85.encode(credentials[0]) if mechanism == b"CURVE" and credentials else b""
            return [b"1.0", rid, b"200", b"OK", user, b""]
        if mechanism == b"CURVE" and credentials and credentials[0] in self.allowed:
            return [b"1.0", rid, b"200", b"OK", z85.encode(credentials[0]), b""]
        log.debug(
            "refused a connection from an unlisted CURVE key (%s)",
            z85.encode(credentials[0]).decode()
            if credentials and len(credentials[0]) == 32
            else mechanism.decode(errors="replace"),
        )
        return [b"1.0", rid, b"400", b"client key not allowed", b"", b""]
