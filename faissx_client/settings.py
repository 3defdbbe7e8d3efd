"""The client's one settings model: ``configure()`` arguments over ``FAISSX_*`` environment."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SERVER = "tcp://localhost:45678"


class ClientSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = DEFAULT_SERVER
    api_key: str | None = Field(None, repr=False)
    tenant_id: str | None = None
    #: Seconds to wait for one reply before raising ServerUnavailable.
    timeout: float = Field(30.0, gt=0)

    @field_validator("server")
    @classmethod
    def _endpoint(cls, server: str) -> str:
        if not server.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(
                f"server must be a ZeroMQ endpoint like tcp://host:45678, got {server!r}")
        return server

    @classmethod
    def from_env(cls, **given: Any) -> ClientSettings:
        """Explicit arguments win; missing ones come from FAISSX_SERVER / _API_KEY / _TENANT_ID."""
        env = {
            "server": os.environ.get("FAISSX_SERVER"),
            "api_key": os.environ.get("FAISSX_API_KEY"),
            "tenant_id": os.environ.get("FAISSX_TENANT_ID"),
            "timeout": os.environ.get("FAISSX_TIMEOUT"),
        }
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(**values)
