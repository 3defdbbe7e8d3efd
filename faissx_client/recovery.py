"""Retries, backoff and reconnection: ``faissx.client.recovery`` (the seed's import path).

The transport retries every call by itself (see docs/client.md): a request that could not be
sent, or whose connection dropped before the reply came, is sent again after a jittered
exponential backoff, as long as the call's ``timeout`` and ``max_retries`` allow. Reads are safe
to repeat; every mutating request carries an idempotency key (the header's ``idem``) that the
server remembers, so a repeated ``add`` is applied once. This module holds the policy those
retries follow, the callbacks run when the server is reachable again, and :func:`with_retry`
for retrying a whole function of yours::

    from faissx.client.recovery import configure_recovery, on_reconnect, with_retry

    configure_recovery(max_retries=5, initial_backoff=1.0, backoff_factor=2.0)
    on_reconnect(lambda: print("Reconnected to server!"))
    with_retry(index.add, vectors)

The policy is process-wide: it applies to the configured client and to any client made later.
Its defaults come from ``FAISSX_MAX_RETRIES``, ``FAISSX_INITIAL_BACKOFF``,
``FAISSX_BACKOFF_FACTOR``, ``FAISSX_MAX_BACKOFF`` and ``FAISSX_RETRY_JITTER`` when set.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from faissx_core import operations

__all__ = [
    "RecoveryPolicy",
    "configure_recovery",
    "current_policy",
    "force_reconnect",
    "is_connected",
    "on_disconnect",
    "on_reconnect",
    "remove_disconnect_callback",
    "remove_reconnect_callback",
    "reset_recovery",
    "with_retry",
]

log = logging.getLogger("faissx.client")
T = TypeVar("T")


def retry_safe(op: str) -> bool:
    """May ``op`` be sent again when it may already have reached the server? (Reads and
    repeatable control operations, and writes, which carry an idempotency key: the contract's
    table in faissx_core/operations.py says which is which.)"""
    return operations.retry_safe(op)


def keyed(op: str) -> bool:
    """Does ``op`` carry an idempotency key (is it a mutating request)?"""
    decl = operations.OPERATIONS.get(op)
    return decl is not None and decl.keyed


@dataclass(frozen=True)
class RecoveryPolicy:
    """How calls are retried when the server cannot be reached.

    Retry ``n`` (1, 2, ...) waits ``min(max_backoff, initial_backoff * backoff_factor**(n-1))``
    seconds, shortened by a random fraction of at most ``jitter`` so that clients cut off
    together do not come back in lockstep. A call stops retrying after ``max_retries`` retries
    or when its ``timeout`` (``configure(timeout=...)``) is spent, whichever comes first.
    """

    max_retries: int = 3
    initial_backoff: float = 0.5
    backoff_factor: float = 2.0
    max_backoff: float = 8.0
    jitter: float = 0.5
    #: False: no call is retried (``max_retries`` is kept for when it is turned back on).
    enabled: bool = True

    @property
    def retries(self) -> int:
        """Retries a call may make now: ``max_retries``, or 0 while disabled."""
        return self.max_retries if self.enabled else 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("initial_backoff", "max_backoff"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not float(self.backoff_factor) >= 1:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if not 0 <= float(self.jitter) <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be True or False, got {self.enabled!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first), jitter applied."""
        exponent = min(max(retry - 1, 0), 64)  # no float overflow for absurd retry counts
        base = min(self.max_backoff, self.initial_backoff * self.backoff_factor**exponent)
        return base * (1.0 - self.jitter * random.random())

    @classmethod
    def from_env(cls) -> RecoveryPolicy:
        env = {
            "max_retries": ("FAISSX_MAX_RETRIES", int),
            "initial_backoff": ("FAISSX_INITIAL_BACKOFF", float),
            "backoff_factor": ("FAISSX_BACKOFF_FACTOR", float),
            "max_backoff": ("FAISSX_MAX_BACKOFF", float),
            "jitter": ("FAISSX_RETRY_JITTER", float),
        }
        values: dict[str, Any] = {}
        for field, (var, kind) in env.items():
            raw = os.environ.get(var)
            if raw:
                try:
                    values[field] = kind(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)


_policy: RecoveryPolicy | None = None
_callbacks: list[Callable[[], Any]] = []
_disconnect_callbacks: list[Callable[[], Any]] = []
_mutex = threading.Lock()


def current_policy() -> RecoveryPolicy:
    """The policy calls follow now (read from the environment on first use)."""
    global _policy
    policy = _policy
    if policy is None:
        with _mutex:
            if _policy is None:
                _policy = RecoveryPolicy.from_env()
            policy = _policy
    return policy


def configure_recovery(
    max_retries: int | None = None,
    initial_backoff: float | None = None,
    backoff_factor: float | None = None,
    max_backoff: float | None = None,
    *,
    jitter: float | None = None,
    enabled: bool | None = None,
    auto_reconnect: bool | None = None,
) -> RecoveryPolicy:
    """Change how calls are retried; arguments left out keep their current value.

    Takes effect for every call that starts afterwards, on every client. Returns the new policy.
    ``enabled=False`` turns retries off (and ``True`` back on). ``auto_reconnect`` is the
    original FAISSx's switch: connections are always re-made here (ZeroMQ reconnects by
    itself), so only ``True`` is accepted.
    """
    global _policy
    if auto_reconnect is not None and auto_reconnect is not True:
        raise ValueError(
            "auto_reconnect=False is not supported: the connection is always "
            "re-made when the server comes back (use enabled=False to stop "
            "retrying calls)"
        )
    given: dict[str, Any] = {
        "max_retries": max_retries,
        "initial_backoff": initial_backoff,
        "backoff_factor": backoff_factor,
        "max_backoff": max_backoff,
        "jitter": jitter,
        "enabled": enabled,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    policy = dataclasses.replace(current_policy(), **changes)
    with _mutex:
        _policy = policy
    return policy


def reset_recovery() -> RecoveryPolicy:
    """Back to the defaults (and ``FAISSX_*`` environment); reconnect callbacks are kept."""
    global _policy
    with _mutex:
        _policy = None
    return current_policy()


# -- reconnection callbacks --------------------------------------------------------------------


def on_reconnect(callback: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``callback()`` each time a client gets a reply after having lost its server.

    "Lost" means a connection dropped or could not be made; the callback runs once per
    recovery, in the thread whose call got through first, before that call returns. An
    exception it raises is logged, not propagated. Returns ``callback`` (usable as a decorator).
    """
    if not callable(callback):
        raise TypeError(f"on_reconnect needs a callable, got {callback!r}")
    with _mutex:
        _callbacks.append(callback)
    return callback


def remove_reconnect_callback(callback: Callable[[], Any]) -> None:
    """Stop running a callback registered with :func:`on_reconnect` (no error if absent)."""
    with _mutex:
        if callback in _callbacks:
            _callbacks.remove(callback)


def notify_reconnected(server: str) -> None:
    """Called by the transport once a lost server answers again."""
    log.info("reconnected to %s", server)
    with _mutex:
        callbacks = list(_callbacks)
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("on_reconnect callback %r failed", callback)


def on_disconnect(callback: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``callback()`` each time a client loses its server (the original FAISSx's name).

    It runs once per loss, in the thread that noticed it (a connection that dropped or could
    not be made, after the server had answered), before that call's retries; the matching
    :func:`on_reconnect` callbacks run when the server answers again. An exception it raises is
    logged, not propagated. Returns ``callback`` (usable as a decorator).
    """
    if not callable(callback):
        raise TypeError(f"on_disconnect needs a callable, got {callback!r}")
    with _mutex:
        _disconnect_callbacks.append(callback)
    return callback


def remove_disconnect_callback(callback: Callable[[], Any]) -> None:
    """Stop running a callback registered with :func:`on_disconnect` (no error if absent)."""
    with _mutex:
        if callback in _disconnect_callbacks:
            _disconnect_callbacks.remove(callback)


def notify_disconnected(server: str) -> None:
    """Called by the transport when it loses a server that had answered."""
    log.warning("lost the connection to %s", server)
    with _mutex:
        callbacks = list(_disconnect_callbacks)
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("on_disconnect callback %r failed", callback)


def force_reconnect() -> None:
    """Drop this thread's connection to the configured server and make a new one now (the
    original FAISSx's name): the ``on_disconnect`` callbacks run, then, once the server
    answers, the ``on_reconnect`` ones. Raises ``NotConfigured`` in local mode and
    ``ServerUnavailable`` if the server does not answer within the call timeout."""
    from faissx_client import get_client
    from faissx_core.errors import NotConfigured

    client = get_client()
    if client is None or client.transport is None:
        raise NotConfigured("force_reconnect needs a server: call faissx.client.configure()")
    client.transport.reconnect()


def is_connected() -> bool:
    """Is the configured client's server answering (as far as its last call knows)? False in
    local mode."""
    from faissx_client import get_client

    client = get_client()
    return client is not None and client.transport is not None and client.transport.connected


# -- idempotency keys and with_retry ------------------------------------------------------------


class _Scope:
    """Idempotency keys of one :func:`with_retry` call: a prefix plus a sequence number."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex
        self.sequence = 0


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "faissx_retry_scope", default=None
)


def new_idempotency_key() -> str:
    """The key for the next mutating request of this thread.

    Outside :func:`with_retry` every request gets a fresh random key (the transport reuses it
    for its own retries of that request). Inside, the n-th write of the function gets the same
    key on every run, so a write whose reply was lost is not applied again when the function
    is retried.
    """
    scope = _scope.get()
    if scope is None:
        return uuid.uuid4().hex
    scope.sequence += 1
    return f"{scope.prefix}-{scope.sequence}"


def with_retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run again after a ``ConnectionError`` under the current policy.

    Every transport call inside ``fn`` already retries on its own; this retries the whole
    function when a call still failed (``ServerUnavailable`` is a ``ConnectionError``), for
    example because the server stayed away longer than one call's timeout. The writes ``fn``
    makes repeat their idempotency keys from one run to the next, so a write that reached the
    server before the failure is applied once, not once per run. ``fn`` must therefore make
    the same calls in the same order each time it runs. Other exceptions pass through at once;
    the last ``ConnectionError`` is raised when the retries are spent.
    """
    policy = current_policy()
    scope = _scope.get()
    token = None
    if scope is None:
        scope = _Scope()
        token = _scope.set(scope)
    start = scope.sequence
    try:
        retry = 0
        while True:
            scope.sequence = start  # a run repeats the previous run's keys
            try:
                return fn(*args, **kwargs)
            except ConnectionError as exc:
                if retry >= policy.retries:
                    raise
                retry += 1
                pause = policy.delay(retry)
                log.info(
                    "with_retry: %s failed (%s); retry %d of %d in %.2fs",
                    getattr(fn, "__qualname__", fn),
                    exc,
                    retry,
                    policy.max_retries,
                    pause,
                )
                time.sleep(pause)
    finally:
        if token is not None:
            _scope.reset(token)
