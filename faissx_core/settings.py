"""The one settings model of the server.

The CLI, ``faissx.server.configure()`` and environment variables all end up here, so every
setting is validated in one place with one set of messages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from faissx_core.tenancy import check_name

DEFAULT_PORT = 45678
#: Bind addresses that keep the server to this machine.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    #: Loopback by default: exposing the server is a decision, made with ``--bind-address``.
    bind_address: str = "127.0.0.1"
    #: Also listen on this Unix socket path (``ipc://``): the same-host fast path.
    ipc: Path | None = None
    data_dir: Path | None = None
    #: When a logged write is acknowledged: after an fsync of its log, shared with concurrent
    #: writers ("always", whose reads also wait for it, and "batch"), or once in the OS page
    #: cache ("off": survives a killed server, not a power loss).
    fsync: Literal["always", "batch", "off"] = "always"
    #: Snapshot an index once its log exceeds this many bytes.
    snapshot_bytes: int = Field(256 << 20, ge=1 << 16)
    #: Entry-point names of the index-family plugins to enable; None enables all discovered.
    plugins: list[str] | None = None
    enable_auth: bool = False
    auth_keys: dict[str, str] = Field(default_factory=dict, repr=False)
    auth_file: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` (rich on a terminal, plain lines otherwise) or ``json`` (one object a line).
    log_format: Literal["text", "json"] = "text"
    #: Log every request (``all``), only failed ones (``errors``), or none.
    log_requests: Literal["all", "errors", "none"] = "errors"
    #: ``--metrics-port``: serve Prometheus metrics over HTTP on the bind address (off: None;
    #: 0 picks a free port, for tests).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    #: Seconds an unnamed index survives without its client showing signs of life.
    idle_ttl: float = Field(600.0, gt=0)
    #: ``--max-memory``: MiB all indices together may hold; creates and adds past it are refused.
    max_memory_mb: float | None = Field(None, gt=0)
    #: ``--gpu``: searches run on GPU copies of the indices faiss supports on GPU.
    gpu: bool = False
    #: Reply bytes the server holds for one peer that does not read them (server/outbound.py);
    #: past it that peer's replies are dropped. 0: no limit.
    max_peer_output_bytes: int = Field(256 << 20, ge=0)
    #: Connections open at once (server/connections.py); None: half the open-file limit, 0: no
    #: limit. Past it a handshake is turned away with a ZMTP ERROR.
    max_connections: int | None = Field(None, ge=0)
    #: Seconds between ``working`` heartbeats to a request still running (server/progress.py).
    progress_every: float = Field(1.0, gt=0, le=3600)
    #: ``--backend ray``: indices live in Ray actors, cut into ``shards`` pieces of ``replicas``
    #: copies each (per index, ``create`` may choose others); ``ray_address`` is ``local`` (start
    #: Ray here, on 127.0.0.1), ``auto`` (the cluster this machine joined) or ``ray://...``.
    backend: Literal["local", "ray"] = "local"
    ray_address: str = "local"
    #: This machine's address as Ray sees it: loopback unless the cluster spans machines.
    ray_node_ip: str = "127.0.0.1"
    shards: int = Field(1, ge=1, le=256)
    replicas: int = Field(1, ge=1, le=16)

    # -- transport security (faissx_core/security.py, docs/security.md) -------------------------
    #: The server's CURVE secret key (Z85), or a file holding it: turns on encryption.
    curve_secret_key: str | None = Field(None, repr=False)
    #: A file of client public keys (Z85, one a line): only those clients may connect.
    curve_allow_keys: Path | None = None

    # -- limits (faissx_core/server/limits.py); 0 turns a limit off --------------------------------
    #: Largest frame the socket accepts (zmq.MAXMSGSIZE) and largest reply an op may build.
    max_message_bytes: int = Field(256 << 20, ge=0)
    #: Most vectors one request may send (rows of ``x``) or ask back (reconstruct*).
    max_request_vectors: int = Field(1_000_000, ge=0)
    #: Largest vector dimension an index may be created or imported with.
    max_dimension: int = Field(65536, ge=0)
    #: Per tenant: indices (named and unnamed), stored vectors, bytes of stored vectors.
    tenant_max_indices: int = Field(1000, ge=0)
    tenant_max_vectors: int = Field(0, ge=0)
    tenant_max_bytes: int = Field(0, ge=0)
    #: Requests per second per API key (token bucket; only with auth), and the bucket size.
    rate_limit: float = Field(10_000.0, ge=0)
    rate_burst: int | None = Field(None, ge=1)

    @field_validator("data_dir", "auth_file", "ipc", mode="before")
    @classmethod
    def _home(cls, value: object) -> object:
        """``~`` means the home directory, whoever passes the path (the shell expands it only
        at the start of a word, so ``--data-dir=~/x`` and ``FAISSX_DATA_DIR=~/x`` need this)."""
        return Path(value).expanduser() if isinstance(value, str | Path) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("auth_keys")
    @classmethod
    def _tenants_are_names(cls, keys: dict[str, str]) -> dict[str, str]:
        for key, tenant in keys.items():
            if not key:
                raise ValueError("an API key may not be empty")
            check_name(tenant, "tenant id")
        return keys

    @field_validator("curve_secret_key", mode="before")
    @classmethod
    def _curve_secret(cls, value: object) -> object:
        from faissx_core.security import read_secret_key

        return read_secret_key(value) if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.auth_keys and self.auth_file:
            raise ValueError("give API keys inline or in a file, not both")
        if self.enable_auth and not (self.auth_keys or self.auth_file):
            raise ValueError("--enable-auth needs --auth-keys or --auth-file")
        if self.auth_file is not None and not self.auth_file.is_file():
            raise ValueError(f"auth file {self.auth_file} does not exist")
        if self.auth_file is not None:
            from faissx_core.server.auth import read_key_file

            read_key_file(self.auth_file)  # a malformed file stops the server at start
        if self.curve_allow_keys is not None:
            from faissx_core.security import load_allow_list

            if self.curve_secret_key is None:
                raise ValueError("--curve-allow-keys needs --curve-secret-key")
            load_allow_list(self.curve_allow_keys)  # raises ValueError with the reason
        if self.data_dir is not None:
            if self.data_dir.exists() and not self.data_dir.is_dir():
                raise ValueError(f"data dir {self.data_dir} exists and is not a directory")
            parent = self.data_dir if self.data_dir.exists() else self.data_dir.parent
            if not os.access(parent, os.W_OK):
                raise ValueError(f"data dir {self.data_dir} is not writable")
        return self

    def notices(self) -> list[tuple[int, str]]:
        """(log level, line) for settings that are legal but surprising or unsafe, logged at
        start so an operator sees them before a client does."""
        out: list[tuple[int, str]] = []
        if (self.auth_keys or self.auth_file) and not self.enable_auth:
            out.append(
                (
                    logging.WARNING,
                    "API keys were given but --enable-auth was not: the keys "
                    "are NOT enforced, and any client can read, change and delete every "
                    "tenant's indices (add --enable-auth)",
                )
            )
        if (
            self.bind_address not in LOOPBACK
            and not self.enable_auth
            and (self.curve_secret_key is None)
        ):
            out.append(
                (
                    logging.WARNING,
                    f"listening on {self.bind_address} with neither "
                    "--enable-auth nor --curve-secret-key: anyone who can reach this port "
                    "can read, change and delete every index (docs/security.md)",
                )
            )
        if self.data_dir is None:
            out.append(
                (
                    logging.INFO,
                    "no --data-dir: indices are kept in memory only and "
                    "are lost when the server stops (give --data-dir to keep named indices)",
                )
            )
        return out

    @property
    def endpoint(self) -> str:
        host = "*" if self.bind_address in ("0.0.0.0", "*") else self.bind_address
        return f"tcp://{host}:{self.port}"

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint the server binds: TCP always, IPC when asked."""
        return [self.endpoint] + ([f"ipc://{self.ipc}"] if self.ipc is not None else [])


def parse_auth_keys(text: str) -> dict[str, str]:
    """``"key1:tenant1,key2:tenant2"`` -> mapping; the CLI and env var spelling."""
    keys: dict[str, str] = {}
    items = filter(None, (part.strip() for part in text.split(",")))
    for number, item in enumerate(items, 1):
        key, sep, tenant = item.rpartition(":")
        if not sep or not key or not tenant:  # the entry may be a key: never echo it
            raise ValueError(f"auth key entry #{number} is not of the form key:tenant")
        keys[key] = tenant
    return keys
