"""The client's one settings model: ``configure()`` arguments over ``FAISSX_*`` environment."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from faissx_core.errors import InvalidArgument
from faissx_core.security import is_key, read_secret_key

DEFAULT_SERVER = "tcp://localhost:45678"
#: ``host:port`` with no scheme: what people type first, taken as ``tcp://host:port``.
_BARE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
#: The largest write window: more in flight buys nothing once the socket is kept busy, every
#: deferred write's bytes are held until it is acknowledged, and each reply is matched
#: against every request in flight (its deadline), a cost that grows with the window.
MAX_WRITE_WINDOW = 1024
_TCP = re.compile(r"^tcp://(\[[0-9a-fA-F:]+\]|[^:/\[\]]+|\*)(:(\d+))?$")


def normalize_endpoint(server: str) -> str:
    """The ZeroMQ endpoint for ``server``: ``host:port`` gains ``tcp://``; a TCP endpoint must
    name its port (ZeroMQ would only fail at connect, with "Invalid argument", on every retry).
    """
    server = server.strip()
    if _BARE.match(server):
        server = f"tcp://{server}"
    if server.startswith("tcp://"):
        match = _TCP.match(server)
        if match is None or match.group(3) is None:
            raise ValueError(
                f"server {server!r} has no port: write it as tcp://HOST:PORT, "
                "e.g. tcp://localhost:45678"
            )
        if not 0 < int(match.group(3)) < 65536:
            raise ValueError(f"server {server!r}: port {match.group(3)} is not in 1-65535")
        return server
    if not server.startswith(("ipc://", "inproc://")):
        raise ValueError(
            f"server {server!r} is not a ZeroMQ endpoint: write it as "
            "tcp://HOST:PORT (e.g. tcp://localhost:45678) or ipc:///path/to/socket"
        )
    return server


class ClientSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = DEFAULT_SERVER
    api_key: str | None = Field(None, repr=False)
    tenant_id: str | None = None
    #: Seconds to wait for one reply before raising ServerUnavailable.
    timeout: float = Field(30.0, gt=0)
    #: The server's CURVE public key (Z85, ``faissx keys curve``): encrypts the connection.
    server_public_key: str | None = None
    #: This client's CURVE key pair (Z85; the secret may be a file), for a server with an
    #: allow-list. Without it each connection uses a fresh anonymous pair.
    client_public_key: str | None = None
    client_secret_key: str | None = Field(None, repr=False)
    #: One-request ``add`` / ``add_with_ids`` calls a thread may leave unacknowledged at once
    #: (faissx_client/transport.py, "Write window"); 0: each waits for its reply, as faiss's add
    #: returns once done.
    write_window: int = Field(0, ge=0, le=MAX_WRITE_WINDOW)

    @field_validator("server")
    @classmethod
    def _endpoint(cls, server: str) -> str:
        return normalize_endpoint(server)

    @field_validator("server_public_key", "client_public_key")
    @classmethod
    def _public_key(cls, key: str | None) -> str | None:
        if key is not None and not is_key(key):
            raise ValueError("a CURVE public key is 40 Z85 characters (faissx keys curve)")
        return key

    @field_validator("client_secret_key", mode="before")
    @classmethod
    def _secret_key(cls, key: object) -> object:
        return read_secret_key(key) if isinstance(key, str) else key

    @model_validator(mode="after")
    def _curve(self) -> ClientSettings:
        if (self.client_public_key is None) != (self.client_secret_key is None):
            raise ValueError("give both client_public_key and client_secret_key, or neither")
        if self.client_public_key is not None and self.server_public_key is None:
            raise ValueError("a client key pair needs the server_public_key")
        return self

    @classmethod
    def from_env(cls, **given: Any) -> ClientSettings:
        """Explicit arguments win; missing ones come from FAISSX_SERVER / _API_KEY / _TENANT_ID /
        _TIMEOUT / _WRITE_WINDOW and the CURVE keys' variables."""
        env = {
            "server": os.environ.get("FAISSX_SERVER"),
            "api_key": os.environ.get("FAISSX_API_KEY"),
            "tenant_id": os.environ.get("FAISSX_TENANT_ID"),
            "timeout": os.environ.get("FAISSX_TIMEOUT"),
            "server_public_key": os.environ.get("FAISSX_SERVER_PUBLIC_KEY"),
            "client_public_key": os.environ.get("FAISSX_CLIENT_PUBLIC_KEY"),
            "client_secret_key": os.environ.get("FAISSX_CLIENT_SECRET_KEY"),
            "write_window": os.environ.get("FAISSX_WRITE_WINDOW"),
        }
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls.checked(**values)

    @classmethod
    def checked(cls, **values: Any) -> ClientSettings:
        """The settings, or one :class:`InvalidArgument` line naming the bad value (a pydantic
        report, with its URL, tells a newcomer less than the sentence inside it)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", exc)).removeprefix("Value error, ")
            raise InvalidArgument(
                f"configure(): {where + ': ' if where else ''}{msg}", field=where
            ) from None
