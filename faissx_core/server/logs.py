"""Logging set-up shared by ``faissx serve`` and ``faissx.server.run()``, and the request log.

Two formats: ``text`` (rich on a terminal, one plain line per record otherwise) and ``json``
(one JSON object per line, for log shippers). Every request can be logged once, when it is
answered, by :class:`RequestLog` on the ``faissx.requests`` logger: successful ones at INFO,
failed ones at WARNING (INTERNAL errors at ERROR). Which of them are written is
``--log-requests``: ``all``, ``errors`` (the default) or ``none``. A request line carries the
request id (the header's ``id``, as 16 hex digits, which the client shows in its errors),
tenant, operation, index, outcome, duration and bytes; never an API key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from faissx_core.messages import request_id_text

#: The logger of per-request lines.
REQUESTS = "faissx.requests"
#: LogRecord attributes that are not fields a caller added with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def setup(level: str, fmt: str = "text", requests: str = "errors") -> None:
    """Configure the root logger once: ``fmt`` is ``text`` or ``json``."""
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        # rich only for a terminal: a server under a supervisor or in a container starts
        # without importing it (tens of milliseconds of every start)
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    threshold = {"all": logging.INFO, "errors": logging.WARNING, "none": logging.CRITICAL + 1}
    logging.getLogger(REQUESTS).setLevel(threshold[requests])


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RequestLog:
    """A request observer: one log record per answered request (see the module docstring)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(REQUESTS)

    def __call__(self, event: Any) -> None:
        ok = event.outcome == "ok"
        level = (
            logging.INFO
            if ok
            else (logging.ERROR if event.outcome == "internal" else logging.WARNING)
        )
        if not self.logger.isEnabledFor(level):  # cheap: logging caches this per level
            return
        fields = {
            "request_id": request_id_text(event.request_id),
            "tenant": event.tenant,
            "op": event.op,
            "index": event.index,
            "outcome": event.outcome,
            "duration_ms": round(event.duration_s * 1000, 3),
            "bytes_in": event.bytes_in,
            "bytes_out": event.bytes_out,
        }
        if event.deduplicated:
            fields["deduplicated"] = True
        if event.inline:  # answered on the socket thread, without a hop to the pool
            fields["inline"] = True
        target = f" {event.index!r}" if event.index else ""
        self.logger.log(
            level,
            "%s%s -> %s in %.2f ms [%s] tenant=%s",
            event.op,
            target,
            event.outcome,
            fields["duration_ms"],
            fields["request_id"],
            event.tenant or "-",
            extra=fields,
        )
