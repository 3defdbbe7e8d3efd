"""The FAISSx server, and the seed's Python spelling of it::

from faissx import server
server.configure(port=45678, data_dir="/data", auth_keys={"key": "tenant"}, enable_auth=True)
server.run()
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faissx_core.settings import DEFAULT_PORT, ServerSettings

if TYPE_CHECKING:
    from faissx_core.server.app import Server

__all__ = ["Server", "ServerSettings", "configure", "get_config", "run"]

_settings: ServerSettings | None = None


def configure(
    port: int = DEFAULT_PORT,
    bind_address: str = "127.0.0.1",
    data_dir: str | Path | None = None,
    auth_keys: dict[str, str] | None = None,
    auth_file: str | Path | None = None,
    enable_auth: bool = False,
    **more: Any,
) -> ServerSettings:
    """Validate and remember the settings :func:`run` will use; returns them."""
    global _settings
    _settings = ServerSettings(
        port=port,
        bind_address=bind_address,
        data_dir=data_dir,
        auth_keys=auth_keys or {},
        auth_file=auth_file,
        enable_auth=enable_auth,
        **more,
    )
    return _settings


def get_config() -> dict[str, Any]:
    """The settings :func:`run` will use, as a new dict (changing it changes nothing): the
    original FAISSx's ``faissx.server.get_config()``. Secrets are not included in clear:
    ``auth_keys`` maps a fingerprint of each key (``sha256:`` and 12 hex digits) to its tenant,
    and ``curve_secret_key`` is ``"(set)"`` when one is."""
    config = (_settings or ServerSettings()).model_dump(mode="json")
    config["auth_keys"] = {
        f"sha256:{hashlib.sha256(key.encode()).hexdigest()[:12]}": tenant
        for key, tenant in config.get("auth_keys", {}).items()
    }
    if config.get("curve_secret_key") is not None:
        config["curve_secret_key"] = "(set)"
    return config


def run() -> None:
    """Serve with the configured settings (defaults if never configured) until SIGINT/SIGTERM."""
    from faissx_core.server.app import run_server
    from faissx_core.server.logs import setup as setup_logging

    settings = _settings or ServerSettings()
    setup_logging(settings.log_level, settings.log_format, settings.log_requests)
    run_server(settings)


def __getattr__(name: str) -> Any:
    """``Server`` loads the request loop only when asked: importing a server submodule (the
    store for ``faissx backup``, the key file for ``faissx keys``) does not start it all."""
    if name == "Server":
        from faissx_core.server.app import Server

        return Server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
