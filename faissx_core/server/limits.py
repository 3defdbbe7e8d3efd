"""Limits on what one request, one tenant and one API key may cost the server.

Three kinds, all refused with ``QuotaExceeded`` before anything changes:

* **Per request** (:meth:`Limits.admit`, :meth:`Limits.check_op`): vectors sent in one request,
  vectors and bytes a reply would hold (``reconstruct_n``, ``reconstruct_batch``,
  ``search_and_reconstruct``), and the dimension of a new index. The frame size itself is capped
  by ZeroMQ (``MAXMSGSIZE``, set in security.py) before a request is even read.
* **Per tenant** (:meth:`Limits.reserve`): indices (named and unnamed), stored vectors, and bytes
  of stored vectors (``ntotal`` x the raw vector size: ``4 d`` for float, ``d / 8`` for binary;
  what faiss builds around them, such as an HNSW graph or IVF lists, is not counted). Usage is
  read from the backend when a write needs it, plus what concurrent writes have reserved but not
  yet stored, so two parallel adds cannot both squeeze under a quota.
* **Per API key** (:meth:`Limits.admit`): a token bucket of requests per second. Only with auth:
  without it there is no key, and a tenant name is whatever the client claims.

A limit of 0 is no limit.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from faissx_core.errors import IndexNotFound, QuotaExceeded
from faissx_core.estimate import refs, walk

if TYPE_CHECKING:
    from faissx_core.messages import Request
    from faissx_core.operations import Operation
    from faissx_core.server.backend import LocalBackend, ManagedIndex
    from faissx_core.settings import ServerSettings
    from faissx_core.tenancy import Principal

#: Buckets kept before full (idle) ones are forgotten; a full bucket equals a fresh one.
MAX_BUCKETS = 1 << 16


class TokenBucket:
    """``take(n)`` succeeds while tokens last; tokens refill at ``rate`` per second up to
    ``burst``. Not thread-safe: callers serialise."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def refill(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, n: float = 1.0) -> bool:
        if self.refill() < n:
            return False
        self.tokens -= n
        return True

    def wait_for(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there."""
        return max(0.0, (n - self.tokens) / self.rate) if self.rate else float("inf")


def vector_bytes(managed: ManagedIndex) -> int:
    """Bytes of one stored vector as the client sends it (what the byte quota counts)."""
    layout = managed.layout()
    return layout.row_width * (1 if layout.binary else 4)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _rows(array: Any) -> int:
    return int(array.shape[0]) if isinstance(array, np.ndarray) and array.ndim else 1


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


class Limits:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.rate = settings.rate_limit if settings.enable_auth else 0.0
        self.burst = settings.rate_burst or max(1, round(2 * self.rate))
        self._buckets: dict[bytes, TokenBucket] = {}
        #: tenant -> [indices, vectors, bytes] reserved by writes in flight
        self._pending: dict[str, list[int]] = {}
        self._mutex = threading.Lock()

    # -- per key and per request, on the socket thread, after authentication -----------------
    def admit(self, principal: Principal, request: Request, arrays: dict[str, Any]) -> None:
        if self.rate and request.api_key:
            self._rate(request.api_key)
        x = arrays.get("x")
        most = self.settings.max_request_vectors
        if most and x is not None and _rows(x) > most:
            raise QuotaExceeded(
                f"{request.op}: {_rows(x):,} vectors in one request; this "
                f"server takes at most {most:,} (--max-request-vectors)",
                limit=most,
            )
        if request.op == "create":
            spec = request.args.get("spec")
            refs(spec)  # every ref names an index by a string, at any depth (or InvalidArgument)
            self._dimensions(spec)

    def _rate(self, api_key: str) -> None:
        key = hashlib.sha256(api_key.encode("utf-8")).digest()
        with self._mutex:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._buckets = {k: b for k, b in self._buckets.items() if b.refill() < b.burst}
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            if bucket.take():
                return
            wait = bucket.wait_for()
        raise QuotaExceeded(
            f"rate limit: this API key may send {self.rate:g} requests per "
            f"second (bursts of {self.burst}); retry in {wait:.2f}s",
            retry_after=round(wait, 3),
            limit=self.rate,
        )

    def _dimensions(self, spec: Any) -> None:
        """Every ``d`` in a (possibly nested) index spec is within ``max_dimension``."""
        most = self.settings.max_dimension
        for params, _ in walk(spec) if most else ():
            d = _int(params.get("d"))
            if d is not None and d > most:
                raise QuotaExceeded(
                    f"dimension {d:,} exceeds this server's limit of {most:,} (--max-dimension)",
                    limit=most,
                )

    # -- per request, once the index is known (both the pool and the socket thread) ----------
    def check_op(
        self, op: str, managed: ManagedIndex, args: dict[str, Any], arrays: dict[str, Any]
    ) -> None:
        """Bound what a reply would hold before it is built: nothing is allocated past these
        limits. ``range_search``, whose size is known only as it runs, is bounded while it runs
        (ops.range_search, from :attr:`reply_bytes`)."""
        rows, size = self.reply(op, managed, args, arrays)
        most, cap = self.settings.max_request_vectors, self.settings.max_message_bytes
        if most and rows > most:
            raise QuotaExceeded(
                f"{op}: a reply of {rows:,} vectors; this server returns at "
                f"most {most:,} per request (--max-request-vectors)",
                limit=most,
            )
        if cap and size > cap:
            raise QuotaExceeded(
                f"{op}: a reply of {_mib(size)}; this server's messages are at "
                f"most {_mib(cap)} (--max-message-mb)",
                limit=cap,
                needed=min(size, (1 << 63) - 1),
            )  # msgpack: 64-bit ints

    @property
    def reply_bytes(self) -> int:
        """The largest reply an op may build (0: no limit)."""
        return self.settings.max_message_bytes

    @staticmethod
    def reply(
        op: str, managed: ManagedIndex, args: dict[str, Any], arrays: dict[str, Any]
    ) -> tuple[int, int]:
        """``(vectors, bytes)`` the reply to ``op`` would hold, from its arguments alone
        (0, 0 when malformed arguments leave it unknown: the op's validation reports them)."""
        width = vector_bytes(managed)
        x = arrays.get("x")
        queries = _rows(x) if x is not None else 0
        k = _int(args.get("k")) or 0
        if op == "reconstruct_n":
            rows = max(_int(args.get("ni")) or 0, 0)
            return rows, rows * width
        if op == "reconstruct_batch":
            ids = arrays.get("ids")
            rows = int(ids.size) if isinstance(ids, np.ndarray) else 0
            return rows, rows * width
        if op in ("search", "assign", "search_and_reconstruct", "search_preassigned"):
            results = max(queries * k, 0)
            per = {"search": 12, "search_preassigned": 12, "assign": 8}.get(op, 12 + width)
            return (results if op == "search_and_reconstruct" else 0), results * per
        if op == "export":
            ntotal = int(managed.index.ntotal)
            start = min(max(_int(args.get("start")) or 0, 0), ntotal)
            count = args.get("count")
            rows = ntotal - start if type(count) is not int else min(max(count, 0), ntotal - start)
            return 0, rows * (8 + (width if args.get("vectors", True) is not False else 0))
        if op == "serialize":
            return 0, int(managed.memory_bytes)
        return 0, 0

    # -- per tenant ----------------------------------------------------------------------------
    def reserve(
        self,
        tenant: str,
        backend: LocalBackend,
        indices: int = 0,
        vectors: int = 0,
        nbytes: int = 0,
    ) -> AbstractContextManager[None]:
        """Hold room for a write of this size, or raise QuotaExceeded; released on exit
        (by then a successful write is counted in the index itself)."""
        s = self.settings
        wanted = (indices, vectors, nbytes)
        limits = (s.tenant_max_indices, s.tenant_max_vectors, s.tenant_max_bytes)
        if not any(w and lim for w, lim in zip(wanted, limits, strict=True)):
            return nullcontext()  # no quota applies: every small write passes here
        return self._reserve(tenant, backend, wanted, limits)

    @contextmanager
    def _reserve(
        self,
        tenant: str,
        backend: LocalBackend,
        wanted: tuple[int, int, int],
        limits: tuple[int | None, int | None, int | None],
    ) -> Iterator[None]:
        with self._mutex:
            stored = self._usage(tenant, backend)
            pending = self._pending.setdefault(tenant, [0, 0, 0])
            for what, have, held, want, limit in zip(
                ("indices", "vectors", "bytes of vectors"),
                stored,
                pending,
                wanted,
                limits,
                strict=True,
            ):
                if want and limit and have + held + want > limit:
                    shown = _mib if what.startswith("bytes") else "{:,}".format
                    raise QuotaExceeded(
                        f"tenant quota: this would bring the tenant to {shown(have + held + want)}"
                        f" {what}, over its limit of {shown(limit)} ({shown(have)} stored)",
                        limit=limit,
                        used=have,
                    )
            for i, want in enumerate(wanted):
                pending[i] += want
        try:
            yield
        finally:
            with self._mutex:
                for i, want in enumerate(wanted):
                    pending[i] -= want

    @staticmethod
    def _usage(tenant: str, backend: LocalBackend) -> tuple[int, int, int]:
        count = vectors = nbytes = 0
        for managed in backend.list(tenant):
            count += 1
            vectors += managed.ntotal
            nbytes += managed.ntotal * vector_bytes(managed)
        return count, vectors, nbytes

    def write(
        self, op: Operation, tenant: str, backend: LocalBackend, arrays: dict[str, Any]
    ) -> Any:
        """The reservation an index op needs: the vectors it adds (others need none)."""
        x = arrays.get("x")
        if not op.adds_vectors or not isinstance(x, np.ndarray):
            return self.reserve(tenant, backend)
        return self.reserve(tenant, backend, vectors=_rows(x), nbytes=int(x.nbytes))

    def new_index(
        self,
        tenant: str,
        backend: LocalBackend,
        spec: Any = None,
        index: Any = None,
        session: str | None = None,
    ) -> Any:
        """The reservation of a create (vectors of every index its spec copies, at any depth:
        estimate.refs) or an import; ``session`` is the caller's, whose unnamed indices a ref
        may name."""
        vectors = nbytes = 0
        if index is not None:
            import faiss  # the server has it loaded; keeps `faissx keys` light

            most = self.settings.max_dimension
            if most and index.d > most:
                raise QuotaExceeded(
                    f"dimension {index.d:,} exceeds this server's limit of "
                    f"{most:,} (--max-dimension)",
                    limit=most,
                )
            width = index.d // 8 if isinstance(index, faiss.IndexBinary) else index.d * 4
            vectors, nbytes = int(index.ntotal), int(index.ntotal) * width
        for name in refs(spec) if spec is not None else ():
            try:
                source = backend.source(tenant, name, session)
            except IndexNotFound:
                continue  # the create itself reports the missing index
            vectors += int(source.index.ntotal)
            nbytes += int(source.index.ntotal) * vector_bytes(source)
        return self.reserve(tenant, backend, indices=1, vectors=vectors, nbytes=nbytes)
