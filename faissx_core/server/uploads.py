"""Multi-part imports: faiss bytes larger than one message, assembled before they are read.

A message is capped by ``--max-message-mb`` (ZeroMQ drops a connection that sends more), but
``read_index`` of a large file, ``deserialize_index`` and ``faissx indexes import`` upload an
index whole. The client therefore sends such bytes as ``import`` requests that carry ``offset``
and ``total``: the server appends each part to a staging buffer kept per (tenant, session,
name), in order, and reads the index once the last byte is in. Until then nothing exists under
that name.

The staging buffer is bounded: it grows only with bytes actually received, ``total`` is held
against ``--max-memory`` from the first part on (so an upload that could never fit is refused
before it is sent), each tenant has at most :data:`PER_TENANT` uploads in progress, and an
upload whose client falls silent is dropped with its session's unnamed indices (``idle_ttl``).
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from faissx_core.errors import InvalidArgument, QuotaExceeded

if TYPE_CHECKING:
    from faissx_core.server.backend import LocalBackend

#: Uploads one tenant may have in progress at once.
PER_TENANT = 16

Key = tuple[str, str | None, str]  # tenant, session, index name


@dataclass
class Staging:
    """One upload in progress: the bytes so far, and its hold on ``--max-memory``."""

    total: int
    buffer: bytearray = field(default_factory=bytearray)
    hold: ExitStack = field(default_factory=ExitStack)
    touched: float = field(default_factory=time.monotonic)


class Uploads:
    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self._staging: dict[Key, Staging] = {}
        self._mutex = threading.Lock()

    def part(self, key: Key, offset: int, total: int, data: np.ndarray) -> np.ndarray | None:
        """Add one part; the whole upload once its last part is in, else None.

        A part at offset 0 starts the upload again (a client that gave up and retried from
        the start replaces its earlier attempt); any other part must continue exactly where the
        upload stands, so a lost or repeated part is reported rather than assembled wrongly.
        """
        size = int(data.nbytes)
        if total <= 0 or offset < 0 or offset + size > total:
            raise InvalidArgument(
                f"import: part of {size} bytes at offset {offset} does not fit "
                f"an upload of {total} bytes"
            )
        with self._mutex:
            if offset == 0:
                self._drop(key)
                self._start(key, total)
            staging = self._staging.get(key)
            if staging is None:
                raise InvalidArgument(
                    f"import of {key[2]!r}: no upload in progress (it expired "
                    "or was replaced); send it again from offset 0"
                )
            if staging.total != total or len(staging.buffer) != offset:
                have = len(staging.buffer)
                self._drop(key)
                raise InvalidArgument(
                    f"import of {key[2]!r}: part at offset {offset} of {total} bytes, but the "
                    f"upload holds {have} of {staging.total}; send it again from offset 0"
                )
            staging.buffer += np.ascontiguousarray(data).data
            staging.touched = time.monotonic()
            if len(staging.buffer) < total:
                return None
            del self._staging[key]
        staging.hold.close()  # the index built from it is counted by the create
        return np.frombuffer(staging.buffer, dtype=np.uint8)

    def _start(self, key: Key, total: int) -> None:
        tenant = key[0]
        if sum(1 for k in self._staging if k[0] == tenant) >= PER_TENANT:
            raise QuotaExceeded(
                f"import: tenant {tenant!r} already has {PER_TENANT} uploads in progress",
                limit=PER_TENANT,
            )
        staging = Staging(total)
        # held until the last part arrives: several uploads cannot together overrun the limit
        staging.hold.enter_context(self.backend.reserve(total, f"an upload of {key[2]!r}"))
        self._staging[key] = staging

    def _drop(self, key: Key) -> None:
        staging = self._staging.pop(key, None)
        if staging is not None:
            staging.hold.close()

    def drop_session(self, session: str) -> int:
        """Forget the uploads of a client that said goodbye."""
        with self._mutex:
            doomed = [k for k in self._staging if k[1] == session]
            for key in doomed:
                self._drop(key)
        return len(doomed)

    def expire(self, ttl: float) -> int:
        """Forget uploads that received nothing for ``ttl`` seconds."""
        cutoff = time.monotonic() - ttl
        with self._mutex:
            doomed = [k for k, s in self._staging.items() if s.touched < cutoff]
            for key in doomed:
                self._drop(key)
        return len(doomed)

    @property
    def staged_bytes(self) -> int:
        with self._mutex:
            return sum(len(s.buffer) for s in self._staging.values())
