"""Where indices live and how an operation reaches one.

The server talks to a backend only through :class:`Backend`: create, look up, delete, list and
run an op. :class:`LocalBackend` keeps every index in this process; a sharded backend (Ray actors
merging results like ``IndexShards``) is meant to be a second implementation of the same class.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypedDict, cast

import faiss
import numpy as np

from faissx_core import attrs, readers
from faissx_core.errors import (
    FaissxError,
    IndexDamaged,
    IndexExists,
    IndexNotFound,
    InternalError,
    InvalidArgument,
    QuotaExceeded,
    UnsupportedOperation,
)
from faissx_core.estimate import build_bytes, refs, train_bytes
from faissx_core.introspect import bytes_per_vector, core_params, index_bytes
from faissx_core.messages import PROTOCOL_VERSION
from faissx_core.operations import OPERATIONS
from faissx_core.plugins import PluginRegistry
from faissx_core.protocol import encode
from faissx_core.server.locks import RWLock
from faissx_core.server.shards import Placement
from faissx_core.server.storage import (
    Damage,
    IndexStore,
    LogRecord,
    RememberedKey,
    SaveEntry,
    StoredIndex,
    Ticket,
)
from faissx_core.settings import ServerSettings
from faissx_core.specs import (
    IndexSpec,
    IndexType,
    RuntimeParam,
    downcast,
    faiss_class_name,
    lookup_param,
)

log = logging.getLogger(__name__)


class _Layout(NamedTuple):
    """What the per-request checks read from one faiss object, worked out once for it.

    faiss's downcast and SWIG's ``hasattr`` cost microseconds, which a one-vector search pays
    several times over; none of this changes for a given object. Knobs (``nprobe``,
    ``efSearch``) and ``ntotal`` are not in here: they change, so they are read live.
    """

    #: The object described: a layout is stale once the managed index is another object.
    index: Any
    binary: bool
    #: Numbers per vector on the wire: floats, or bytes of a binary code.
    row_width: int
    #: The object (seen through wrappers) whose ``nprobe``/``nlist`` a search uses, if any.
    ivf: Any
    #: Its ``hnsw`` struct, whose ``efSearch`` a search uses, if it has one.
    hnsw: Any

    @classmethod
    def of(cls, index: Any) -> _Layout:
        binary = isinstance(index, faiss.IndexBinary)
        tuned = downcast(index)
        while hasattr(tuned, "index") and not hasattr(tuned, "nprobe"):  # see through wrappers
            inner = getattr(tuned, "index", None)
            if not isinstance(inner, faiss.Index | faiss.IndexBinary):
                break
            tuned = downcast(inner)
        ivf = tuned if hasattr(tuned, "nprobe") and hasattr(tuned, "nlist") else None
        hnsw = tuned.hnsw if hasattr(tuned, "hnsw") else None
        return cls(index, binary, index.d // 8 if binary else index.d, ivf, hnsw)


@dataclass(eq=False)
class ManagedIndex:
    """A faiss object plus what the server knows about it."""

    tenant: str
    name: str
    spec: IndexSpec
    itype: IndexType
    index: Any
    created: float = field(default_factory=time.time)
    #: Unnamed indices belong to a client session and vanish with it.
    session: str | None = None
    lock: RWLock = field(default_factory=RWLock)
    #: Why writes are refused: its log could not be written, so memory is ahead of disk.
    broken: str | None = None
    #: Set (under the write lock) when the index is deleted: ops that raced the delete fail.
    deleted: bool = False
    #: Idempotency keys the next snapshot carries: those of the writes in the current log and
    #: those carried from earlier snapshots that are still young enough (oldest first).
    keys: dict[str, RememberedKey] = field(default_factory=dict)
    #: The log passed ``--snapshot-every-mb`` but the snapshot failed: retried by a later write
    #: (not before ``snapshot_retry_at``, a ``time.monotonic()``).
    snapshot_due: bool = False
    snapshot_retry_at: float = 0.0
    #: The registry that built it: ops build search parameters and the like through it.
    registry: PluginRegistry | None = None
    #: ``faiss.StandardGpuResources`` when the server runs with ``--gpu``: searches then run on
    #: a GPU copy of the index (see :meth:`searcher`).
    gpu: Any = None
    params: dict[str, RuntimeParam] = field(init=False)
    #: Bytes the index holds and bytes one more vector adds (introspect.py); refreshed by
    #: :meth:`measure` (or :meth:`grew`) after every write, read by ``--max-memory`` checks
    #: and ``info``.
    memory_bytes: int = field(init=False, default=0)
    vector_bytes: int = field(init=False, default=0)
    #: Of :attr:`memory_bytes`, what :meth:`grew` estimated since the last :meth:`measure`.
    _estimated: int = field(init=False, default=0, repr=False)
    #: Bytes of flat storage made room for ahead of a pipelined add (ops.grow_storage).
    storage_capacity: int = field(init=False, default=0)
    #: ``(own lists, wrapper)`` while an IVF serves through a wrapper over its own inverted
    #: lists (ops.replace_invlists); the index does not own its lists meanwhile.
    invlists_held: tuple[Any, Any] | None = field(init=False, default=None)
    _layout: _Layout | None = field(init=False, default=None, repr=False)

    def restore_invlists(self) -> None:
        """Serve through the IVF's own inverted lists again (they were wrapped), the index
        owning them once more. Taking the lists' ownership into Python instead breaks SWIG's
        type table (faiss 1.15), so the index must get them back before it is freed."""
        held, self.invlists_held = self.invlists_held, None
        if held is not None:
            faiss.extract_index_ivf(self.index).replace_invlists(held[0], True)

    def check_lists_writable(self, what: str) -> None:
        """Refuse a write through a read-only wrapper (StopWordsInvertedLists): faiss throws it
        inside a parallel loop, which aborts the whole server process."""
        held = self.invlists_held
        if held is not None and isinstance(held[1], faiss.ReadOnlyInvertedLists):  # type: ignore[attr-defined]  # faiss's stubs lack it
            raise UnsupportedOperation(
                f"{what} on {self.name!r}: it serves through a {type(held[1]).__name__}, which "
                "is read-only; put its own lists back first "
                "(index.replace_invlists(index.invlists))"
            )

    def __del__(self) -> None:
        # an index dropped while wrapped: its lists go back to it, which frees them
        if getattr(self, "invlists_held", None) is not None:
            self.restore_invlists()

    def __post_init__(self) -> None:
        self.params = self.itype.params_of(self.index, self.registry.types if self.registry else {})
        self.params.update(
            (p.name, p) for p in core_params(self.index) if p.name not in self.params
        )
        self._gpu_mutex = threading.Lock()
        self._gpu_copy: Any = None
        self._gpu_failed = False
        self.measure()

    def grew(self, nbytes: int) -> None:
        """Account for an add of about ``nbytes`` (rows x :attr:`vector_bytes`) without
        walking faiss's containers, which costs more than a one-row add itself (the caller
        keeps writers out). The estimate is exact for flat, IVF and PQ codes and id maps, and
        close for HNSW (whose levels are random); a full :meth:`measure` runs once estimates
        would pass 1/16 of the measured size, so the figure never drifts further than that."""
        if self._estimated + nbytes > (self.memory_bytes - self._estimated) // 16:
            self.measure()
            return
        self._estimated += nbytes
        self.memory_bytes += nbytes
        self._gpu_copy = None  # a write happened: the GPU copy is out of date

    def measure(self) -> int:
        """Recompute :attr:`memory_bytes` (the caller keeps writers out)."""
        self._estimated = 0
        try:
            self.memory_bytes = index_bytes(self.index)
            self.vector_bytes = bytes_per_vector(self.index)
        except Exception as exc:  # accounting must never fail a request; fall back to raw size
            log.debug(
                "%s/%s: cannot measure %s: %s",
                self.tenant,
                self.name,
                type(self.index).__name__,
                exc,
            )
            self.vector_bytes = self.row_width * (1 if self.binary else 4)
            self.memory_bytes = int(self.index.ntotal) * self.vector_bytes
        self._gpu_copy = None  # a write happened: the GPU copy is out of date
        return self.memory_bytes

    def searcher(self, index: Any) -> Any:
        """What a search runs on: with ``--gpu``, a GPU copy of ``index`` made by faiss's
        ``index_cpu_to_gpu`` (re-made after each write) when faiss supports the type on GPU;
        otherwise ``index`` itself. The CPU index stays the one that is logged and saved."""
        if self.gpu is None or self._gpu_failed:
            return index
        with self._gpu_mutex:
            if self._gpu_copy is None and not self._gpu_failed:
                try:
                    self._gpu_copy = faiss.index_cpu_to_gpu(self.gpu, 0, index)
                except (RuntimeError, AttributeError) as exc:
                    self._gpu_failed = True
                    log.info(
                        "%s/%s: %s stays on the CPU (%s)",
                        self.tenant,
                        self.name,
                        faiss_class_name(index),
                        exc,
                    )
            return self._gpu_copy if self._gpu_copy is not None else index

    def runtime_param(self, name: str) -> RuntimeParam:
        return lookup_param(self.params, name, self.spec.type)

    def search_work(self, queries: int, args: dict[str, Any] | None = None) -> float:
        """Rough count of vector components one read touches: how heavy the call is.

        Brute force touches every stored vector; an IVF the ``nprobe / nlist`` share of them;
        an HNSW about ``efSearch`` times its neighbours per level. The call's own ``args``
        count too: ``nprobe`` / ``efSearch`` of its search parameters replace the index's, and
        ``k`` results per query are kept in a heap. Only the order of magnitude matters: it
        decides whether a call is small enough to answer without a thread hop.
        """
        layout = self.layout()
        stored = max(int(self.index.ntotal), 1)
        per_call = _call_params(args)
        nlist = layout.ivf.nlist if layout.ivf is not None else 0
        if nlist:
            nprobe = per_call.get("nprobe", layout.ivf.nprobe)
            stored = stored * min(nprobe, nlist) // nlist + nlist
        elif layout.hnsw is not None:
            ef = per_call.get("efSearch", layout.hnsw.efSearch)
            stored = min(stored, 64 * max(ef, 16))
        k = args.get("k") if args else None
        heap = queries * k * 8 if type(k) is int and k > 0 else 0
        return float(queries) * stored * layout.row_width + heap

    def add_work(self, rows: int) -> float:
        """Rough work of adding ``rows`` vectors, on the scale of :meth:`search_work`: an IVF
        assigns each to its nearest of ``nlist`` centroids; an HNSW searches about
        ``efConstruction`` neighbourhoods to link it; anything else copies or encodes it.
        It decides whether a small write is answered without a thread hop."""
        layout = self.layout()
        if layout.ivf is not None:
            per_row = layout.ivf.nlist
        elif layout.hnsw is not None:
            per_row = 64 * max(layout.hnsw.efConstruction, 16)
        else:
            per_row = 1
        return float(rows) * per_row * layout.row_width

    def layout(self) -> _Layout:
        """The cached :class:`_Layout` of :attr:`index`, re-made if ``index`` was replaced."""
        layout = self._layout
        if layout is None or layout.index is not self.index:
            layout = self._layout = _Layout.of(self.index)
        return layout

    @property
    def ephemeral(self) -> bool:
        return self.session is not None

    @property
    def ntotal(self) -> int:
        """Vectors stored: the faiss object's count here; a sharded index sums its shards."""
        return int(self.index.ntotal)

    def local_only(self, what: str) -> None:
        """Raise if ``what`` (an op reaching into :attr:`index` directly) cannot run on this
        index. Here it can: every vector is in :attr:`index`. A sharded index's are not, and
        its class raises."""
        return None

    @property
    def binary(self) -> bool:
        return self.layout().binary

    @property
    def row_width(self) -> int:
        """Numbers per vector on the wire: floats, or bytes of a binary code."""
        return self.layout().row_width

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.spec.type,
            "spec": self.spec.model_dump(),
            "d": int(self.index.d),
            "ntotal": int(self.index.ntotal),
            "is_trained": bool(self.index.is_trained),
            "metric_type": int(self.index.metric_type),
            "vector_kind": "binary" if self.binary else "float",
            "faiss_class": faiss_class_name(self.index),
            "runtime_params": {n: p.path for n, p in self.params.items()},
            "ephemeral": self.ephemeral,
            "created": self.created,
            "memory_bytes": self.memory_bytes,
            "vector_bytes": self.vector_bytes,
            "state": "broken" if self.broken else "ok",
            **({"broken": self.broken} if self.broken else {}),
        }


@dataclass(eq=False)
class DamagedIndex:
    """A stored index recovery could not serve: listed, its name blocked, its files kept."""

    tenant: str
    name: str
    path: Path
    reason: str
    session: None = None
    ephemeral: bool = False

    def error(self) -> IndexDamaged:
        return IndexDamaged(
            f"index {self.name!r} is damaged and quarantined: {self.reason}. Every byte of its "
            f"files is kept in {self.path}. Rebuild it from its intact part with `faissx "
            f"indexes repair {self.name}` (the damaged files are copied aside first), or "
            f"delete it with `faissx indexes drop {self.name}`.",
            path=str(self.path),
            reason=self.reason,
        )

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": "damaged",
            "damaged": self.reason,
            "path": str(self.path),
            "ephemeral": False,
        }


def reply_frames(result: Any) -> list[bytes]:
    """The success reply to a write whose job returned ``result``, as remembered bytes."""
    body, arrays = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    frames = encode({"v": PROTOCOL_VERSION, "id": 0, "ok": True, "result": body}, arrays)
    return [f if isinstance(f, bytes) else np.ascontiguousarray(f).tobytes() for f in frames]


def error_frames(error: Exception) -> list[bytes]:
    wire = error.to_wire()  # type: ignore[attr-defined]
    return [bytes(f) for f in encode({"v": PROTOCOL_VERSION, "id": 0, "ok": False, "error": wire})]


class KeyMemory(Protocol):
    """Where recovered idempotency keys go (the server's idempotency table)."""

    def remember(
        self, tenant: str, key: str, op: str, index: str | None, reply: list[Any]
    ) -> None: ...


class Backend(Protocol):
    def create(
        self, tenant: str, name: str, spec: IndexSpec, session: str | None
    ) -> ManagedIndex: ...

    def get(self, tenant: str, name: str) -> ManagedIndex: ...

    def delete(self, tenant: str, name: str) -> None: ...

    def list(self, tenant: str) -> list[ManagedIndex]: ...

    def run(self, managed: ManagedIndex, write: bool, fn: Callable[[Any], Any]) -> Any: ...


class ThreadBudget:
    """Shares the cores between the faiss calls running at once.

    Each worker thread runs faiss with ``cores // running`` OpenMP threads: a lone big search
    gets every core, concurrent calls split them instead of oversubscribing the machine
    (OpenMP's thread count is per calling thread, so each job sets its own).
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._running = 0
        self._mutex = threading.Lock()

    @contextmanager
    def share(self, small: bool = False) -> Iterator[int]:
        """OpenMP threads for one call; a ``small`` one gets one (a team costs more to wake)."""
        with self._mutex:
            self._running += 1
            threads = 1 if small else max(1, self.cores // self._running)
        faiss.omp_set_num_threads(threads)
        try:
            yield threads
        finally:
            with self._mutex:
                self._running -= 1


class LocalBackend:
    """All indices in this process, one readers-writer lock each."""

    def __init__(
        self,
        registry: PluginRegistry,
        store: IndexStore | None = None,
        snapshot_bytes: int = 256 << 20,
        max_memory_bytes: int | None = None,
        gpu: bool = False,
    ) -> None:
        self.registry = registry
        self.store = store
        self.snapshot_bytes = snapshot_bytes
        self.budget = ThreadBudget()
        self._indices: dict[tuple[str, str], ManagedIndex] = {}
        self._mutex = threading.Lock()
        #: Serialises durable creates and deletes, which touch the same directories.
        self._files = threading.Lock()
        self._sessions: dict[str, float] = {}
        #: ``--max-memory``: creates and adds that would take the indices past it are refused.
        self.max_memory_bytes = max_memory_bytes
        self._reserved = 0  # bytes promised to creates and adds in progress
        self._memory_mutex = threading.Lock()
        self.gpu = gpu_resources() if gpu else None
        #: Quarantined indices (damaged files), by (tenant, name): listed, never served.
        self._damaged: dict[tuple[str, str], DamagedIndex] = {}
        #: The server's idempotency table, which recovered keys are put back into.
        self.keys: KeyMemory | None = None
        committer = getattr(store, "committer", None)
        if committer is not None:  # a log that fails to sync breaks its index
            committer.on_failure = self._log_failed
        #: Idempotency keys a snapshot carries: younger than this many seconds, at most this
        #: many per index (the idempotency table's own limits).
        self.keep_keys_for = 600.0
        self.keys_per_index = 100_000

    # -- memory ------------------------------------------------------------------------------
    def memory_used(self, tenant: str | None = None) -> int:
        """Bytes held by every index (of ``tenant``, when given), as last measured."""
        with self._mutex:
            return sum(m.memory_bytes for (t, _), m in self._indices.items() if tenant in (None, t))

    def memory_free(self) -> int | None:
        """Bytes ``--max-memory`` still allows (None without a limit)."""
        if self.max_memory_bytes is None:
            return None
        with self._memory_mutex:
            return max(0, self.max_memory_bytes - self.memory_used() - self._reserved)

    def reserve(self, nbytes: int, what: str) -> AbstractContextManager[None]:
        """Hold ``nbytes`` against ``--max-memory`` while a create or an add runs, or raise
        QuotaExceeded before anything changes when they would not fit."""
        if self.max_memory_bytes is None or nbytes <= 0:
            return nullcontext()
        return self._reserve(nbytes, what)

    @contextmanager
    def _reserve(self, nbytes: int, what: str) -> Iterator[None]:
        limit = self.max_memory_bytes
        assert limit is not None  # reserve() returns a null context without one
        with self._memory_mutex:
            used = self.memory_used() + self._reserved
            if used + nbytes > limit:
                raise QuotaExceeded(
                    f"{what} needs {_mb(nbytes)} but the server holds {_mb(used)} of its "
                    f"{_mb(limit)} limit (--max-memory)",
                    used=used,
                    limit=self.max_memory_bytes,
                    needed=nbytes,
                )
            self._reserved += nbytes
        try:
            yield
        finally:
            with self._memory_mutex:
                self._reserved -= nbytes

    # -- lifecycle ---------------------------------------------------------------------------
    def create(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        session: str | None,
        index: Any = None,
        idem: str | None = None,
        op: str = "create",
        caller: str | None = None,
        placement: Placement | None = None,
    ) -> ManagedIndex:
        """Register a new index, built from ``spec`` unless an ``index`` is given (an import).

        A durable create is published only once its first generation is on disk; if writing
        it fails (disk full, no descriptors) nothing is left behind, in memory or on disk.
        A build is first reserved against ``--max-memory`` at its estimated size (estimate.py),
        so faiss never allocates what the limit refuses. ``caller`` is the requesting client's
        session: refs may copy its unnamed indices, never another session's. ``placement``
        (shards x replicas) is for backends that cut indices up; this one keeps each whole.
        """
        if placement is not None and (placement.shards > 1 or placement.replicas > 1):
            raise UnsupportedOperation(
                f"{placement.shards} shard(s) x {placement.replicas} replica(s) need a "
                "distributed backend: start the server with --backend ray"
            )
        itype = self.registry.index_type(spec.type)
        if itype.kind != "index":
            raise InvalidArgument(f"{spec.type} is a component, not an index: pass it to one")
        self._refuse_damaged(tenant, name)
        built_here = index is None
        if index is None:
            with self.reserve(self.estimate(tenant, spec, caller), f"creating {name!r}"):

                def copy(ref: str, path: str = "") -> Any:
                    return self._copy(tenant, ref, caller, path)

                index = self.registry.build(spec, resolve=copy)
        managed = ManagedIndex(
            tenant, name, spec, itype, index, session=session, registry=self.registry, gpu=self.gpu
        )
        durable = session is None and self.store is not None
        if durable and built_here:  # its snapshot must come back whole after a restart
            attrs.check_storable(index)
        # A durable create publishes the index and writes its first generation as one step
        # with respect to deletes of the same name (which remove its directory).
        with self._files if durable else contextlib.nullcontext():
            with self.reserve(managed.memory_bytes, f"creating {name!r}"), self._mutex:
                self._refuse_damaged(tenant, name, locked=True)
                if (tenant, name) in self._indices:
                    raise IndexExists(f"index {name!r} already exists")
                self._indices[(tenant, name)] = managed
            if durable:
                assert self.store is not None
                try:
                    with managed.lock.write():
                        if idem:
                            self._carry(managed, idem, op, managed.info())
                        self.store.create(
                            tenant, name, spec, managed.created, index, self._carried(managed)
                        )
                except BaseException as exc:
                    with self._mutex:
                        self._indices.pop((tenant, name), None)
                    managed.deleted = True
                    if isinstance(exc, FileExistsError):
                        raise IndexExists(f"index {name!r} already exists on disk") from None
                    if isinstance(exc, OSError):
                        log.error("%s/%s: create failed, nothing kept: %s", tenant, name, exc)
                        raise InternalError(
                            f"create of {name!r} failed and left nothing behind: {exc}"
                        ) from None
                    raise
        if session is not None:
            self.touch(session)
        return managed

    def _refuse_damaged(self, tenant: str, name: str, locked: bool = False) -> None:
        with contextlib.nullcontext() if locked else self._mutex:
            damaged = self._damaged.get((tenant, name))
        if damaged is not None:
            raise damaged.error()

    def estimate(self, tenant: str, spec: IndexSpec, caller: str | None) -> int:
        """Bytes building ``spec`` will take: its own structures plus the indices it copies."""
        total = build_bytes(spec)
        for name in refs(spec):
            with contextlib.suppress(IndexNotFound):  # the build reports it
                total += self.source(tenant, name, caller).memory_bytes
        return total

    def source(self, tenant: str, name: str, caller: str | None) -> ManagedIndex:
        """An index a ref may name: the tenant's named ones, and the caller's unnamed ones."""
        source = self.get(tenant, name)
        if source.ephemeral and source.session != caller:
            raise IndexNotFound(f"no index named {name!r}")
        return source

    def _copy(self, tenant: str, name: str, caller: str | None, path: str = "") -> Any:
        """A copy of one of ``tenant``'s indices (or of the index at ``path`` inside it, such
        as its ``quantizer``), as a nested part of a new one."""
        source = self.source(tenant, name, caller)
        with source.lock.read():
            return clone_member(source.index, path)

    def adopt(
        self, tenant: str, name: str, spec: IndexSpec, index: Any, created: float
    ) -> ManagedIndex:
        """Register an index loaded from the store at start-up."""
        itype = self.registry.index_type(spec.type)
        managed = ManagedIndex(
            tenant, name, spec, itype, index, created, registry=self.registry, gpu=self.gpu
        )
        with self._mutex:
            self._indices[(tenant, name)] = managed
        return managed

    def get(self, tenant: str, name: str) -> ManagedIndex:
        with self._mutex:
            managed = self._indices.get((tenant, name))
            damaged = self._damaged.get((tenant, name)) if managed is None else None
        if damaged is not None:
            raise damaged.error()
        if managed is None:
            raise IndexNotFound(f"no index named {name!r}")
        return managed

    def delete(self, tenant: str, name: str) -> None:
        with self._files:
            self._refuse_damaged(tenant, name)
            with self._mutex:
                managed = self._indices.pop((tenant, name), None)
            if managed is None:
                raise IndexNotFound(f"no index named {name!r}")
            with managed.lock.write():  # let in-flight ops (and snapshots) on it finish first
                managed.deleted = True
                if self.store is not None and not managed.ephemeral:
                    self.store.delete(tenant, name)

    def list(self, tenant: str) -> list[ManagedIndex]:
        with self._mutex:
            return sorted(
                (m for (t, _), m in self._indices.items() if t == tenant), key=lambda m: m.name
            )

    def damaged(self, tenant: str) -> builtins.list[DamagedIndex]:
        """The tenant's quarantined indices (listed with the others, served by none)."""
        with self._mutex:
            return sorted(
                (d for (t, _), d in self._damaged.items() if t == tenant), key=lambda d: d.name
            )

    def run(
        self,
        managed: ManagedIndex,
        write: bool,
        fn: Callable[[Any], Any],
        record: LogRecord | None = None,
        small: bool = False,
        held: bool = False,
        defer: Callable[[Ticket], None] | None = None,
    ) -> Any:
        """Run ``fn(index)`` under the index's lock; log ``record`` if the index is durable.

        The record is appended after ``fn`` succeeded and before the lock is released, so the
        log's order is the order writes were applied. A snapshot the log's size calls for
        never fails the write: the write is durable in the log. ``held``: the caller already
        holds the lock (the socket thread's inline path, which takes it without waiting and
        must not block on it here).

        The caller acknowledges once the record is on disk (fsync policy permitting): this
        waits for it, unless ``defer`` is given, which is handed the ticket to hold the reply
        on instead (group commit: groupcommit.py). With ``--fsync always`` a read is handed
        the ticket of the last write it may have seen, if that is not on disk yet.
        """
        ticket: Ticket | None = None
        if held:
            lock: Any = nullcontext()
        else:
            lock = managed.lock.write() if write else managed.lock.read()
        with lock, self.budget.share(small):
            if managed.deleted:
                raise IndexNotFound(f"no index named {managed.name!r}")
            if write and managed.broken:
                raise InternalError(
                    f"index {managed.name!r} refuses writes until the server "
                    f"restarts and recovers it: {managed.broken}"
                )
            if write and managed.snapshot_due and time.monotonic() >= managed.snapshot_retry_at:
                self._threshold_snapshot(managed)
            if write:
                growth = _growth(managed, record)
                adds = record is not None and OPERATIONS[record.op].adds_vectors
                with self.reserve(
                    growth, f"{record.op if record else 'write'} on {managed.name!r}"
                ):
                    applied = False
                    try:
                        result = fn(managed.index)
                        applied = True
                    finally:
                        if applied and adds and growth > 0:
                            managed.grew(growth)  # rows x vector_bytes: no container walk
                        else:
                            managed.measure()
            else:
                result = fn(managed.index)
                if defer is not None:
                    ticket = self.pending(managed)
            if record is not None and self.store is not None and not managed.ephemeral:
                try:
                    ticket = self.store.append(managed.tenant, managed.name, record)
                except OSError as exc:
                    # The change is in memory but not on disk: refuse further writes (and
                    # snapshots) rather than acknowledge a history the log does not hold.
                    managed.broken = f"write-ahead log failed: {exc}"
                    log.critical(
                        "%s/%s: %s; it is not snapshotted, and a restart recovers "
                        "its last durable state",
                        managed.tenant,
                        managed.name,
                        managed.broken,
                    )
                    raise InternalError(
                        f"{record.op} was applied but could not be logged: {exc}"
                    ) from None
                if record.idem:
                    self._carry(managed, record.idem, record.op, result)
                if self.store.log_bytes(managed.tenant, managed.name) > self.snapshot_bytes:
                    self._threshold_snapshot(managed)
        if ticket is not None:
            assert self.store is not None  # it made the ticket
            if defer is not None:
                defer(ticket)
                return result
            try:
                self.store.wait(ticket)
            except OSError as exc:
                op = record.op if record else "the write"
                raise InternalError(f"{op} could not be made durable: {exc}") from None
        return result

    def pending(self, managed: ManagedIndex) -> Ticket | None:
        """The log record a read of ``managed`` must not be answered before (it may show that
        write), or None (``FileStore.pending``: only ``--fsync always`` holds reads)."""
        pending = getattr(self.store, "pending", None)  # a store without group commit: none
        if pending is None or managed.ephemeral:
            return None
        return cast("Ticket | None", pending(managed.tenant, managed.name))

    def _log_failed(self, key: tuple[str, str], reason: str) -> None:
        """A log could not be synced (the committer's thread): the index's memory may be
        ahead of its disk, so it refuses writes and snapshots from now on, as after a failed
        append."""
        with self._mutex:
            managed = self._indices.get(key)
        if managed is not None and managed.broken is None:
            managed.broken = f"write-ahead log could not be synced: {reason}"
            log.critical(
                "%s/%s: %s; it is not snapshotted, and a restart recovers its last durable state",
                managed.tenant,
                managed.name,
                managed.broken,
            )

    def merge(
        self,
        target: ManagedIndex,
        source: ManagedIndex,
        merge: Callable[[Any, Any], None],
        idem: str | None = None,
    ) -> dict[str, Any]:
        """``merge(target, source)`` (faiss's merge_from: moves the vectors) as one commit.

        For durable indices the merge runs on copies, both new generations are committed
        together (:meth:`FileStore.save_many`), and only then do the copies replace the
        served objects: a crash or a failure at any point leaves the vectors in exactly one
        of the two indices, and the merge's key is in the target's new generation.
        """
        first, second = sorted((target, source), key=lambda m: m.name)
        with first.lock.write(), second.lock.write():
            for managed in (target, source):
                if managed.deleted:
                    raise IndexNotFound(f"no index named {managed.name!r}")
                if managed.broken:
                    raise InternalError(
                        f"index {managed.name!r} refuses writes until the "
                        f"server restarts and recovers it: {managed.broken}"
                    )
            durable = [m for m in (target, source) if self.store is not None and not m.ephemeral]
            if not durable:
                merge(target.index, source.index)
                target.measure()
                source.measure()
                return target.info()
            new_target, new_source = _clone(target.index), _clone(source.index)
            merge(new_target, new_source)
            reply = _preview(target, new_target)
            if idem:
                self._carry(target, idem, "merge_from", reply)
            entries = [
                SaveEntry(
                    m.name,
                    m.spec,
                    m.created,
                    new_target if m is target else new_source,
                    self._carried(m),
                )
                for m in durable
            ]
            assert self.store is not None  # durable is empty without one
            try:
                self.store.save_many(target.tenant, entries)
            except BaseException:
                if idem:
                    target.keys.pop(idem, None)
                raise
            for managed, index in ((target, new_target), (source, new_source)):
                managed.index = index
                managed.storage_capacity = 0
                managed.snapshot_due = False
                managed.measure()
            return target.info()

    def copy_into(
        self,
        target: ManagedIndex,
        source: ManagedIndex,
        copy: Callable[[Any, Any], None],
        idem: str | None = None,
        op: str = "copy_subset_to",
    ) -> dict[str, Any]:
        """``copy(target, source)``, a write to ``target`` made of ``source``'s entries (faiss's
        ``copy_subset_to``), with ``source`` only read.

        The copied entries are in no log (replaying them would need ``source`` as it was), so
        a durable target takes a new generation instead, as a merge does: the copy runs on a
        clone of the target, whose snapshot (with the request's key) is committed before the
        clone replaces the served object. A failure or a crash at any point leaves the target
        as it was or with the whole copy, never half of it. Memory for the copy (and the clone)
        is held against --max-memory before anything is copied.
        """
        first, second = sorted((target, source), key=lambda m: m.name)
        locks = [m.lock.write() if m is target else m.lock.read() for m in (first, second)]
        durable = self.store is not None and not target.ephemeral
        need = int(source.index.ntotal) * max(source.vector_bytes, 1)
        if durable:
            need += int(target.memory_bytes)
        with locks[0], locks[1], self.reserve(need, f"{op} into {target.name!r}"):
            for managed in (target, source):
                if managed.deleted:
                    raise IndexNotFound(f"no index named {managed.name!r}")
            if target.broken:
                raise InternalError(
                    f"index {target.name!r} refuses writes until the "
                    f"server restarts and recovers it: {target.broken}"
                )
            if not durable:
                try:
                    copy(target.index, source.index)
                finally:
                    target.measure()
                return target.info()
            new_target = _clone(target.index)
            copy(new_target, source.index)
            reply = _preview(target, new_target)
            if idem:
                self._carry(target, idem, op, reply)
            entry = SaveEntry(
                target.name, target.spec, target.created, new_target, self._carried(target)
            )
            assert self.store is not None  # durable says there is one
            try:
                self.store.save_many(target.tenant, [entry])
            except BaseException:
                if idem:
                    target.keys.pop(idem, None)
                raise
            target.index = new_target
            target.storage_capacity = 0
            target.snapshot_due = False
            target.measure()
            return target.info()

    def repair(
        self, tenant: str, name: str, replay: Callable[[ManagedIndex, LogRecord], Any]
    ) -> dict[str, Any]:
        """Rebuild a quarantined index from its intact part (the newest readable snapshot and
        the log records before the first bad one), after copying every file aside."""
        with self._files:
            with self._mutex:
                damaged = self._damaged.get((tenant, name))
            if damaged is None:
                self.get(tenant, name)  # IndexNotFound when there is no such index
                raise InvalidArgument(f"index {name!r} is not damaged: nothing to repair")
            assert self.store is not None  # only a store's load quarantines an index
            try:
                stored, notes = self.store.salvage(tenant, name)
                itype = self.registry.index_type(stored.spec.type)
            except (ValueError, FaissxError) as exc:
                raise IndexDamaged(
                    f"index {name!r} cannot be repaired: {exc}. Its files are "
                    f"kept in {damaged.path}; `faissx indexes drop {name}` "
                    "deletes them.",
                    path=str(damaged.path),
                    reason=damaged.reason,
                ) from None
            managed = ManagedIndex(
                tenant,
                name,
                stored.spec,
                itype,
                stored.index,
                stored.created,
                registry=self.registry,
                gpu=self.gpu,
            )
            self._restore_keys(managed, stored.keys)
            for number, record in enumerate(stored.records):
                try:
                    result = replay(managed, record)
                except Exception as exc:
                    raise IndexDamaged(
                        f"index {name!r} cannot be repaired: replaying log "
                        f"record {number} ({record.op}) failed: {exc}",
                        path=str(damaged.path),
                        reason=damaged.reason,
                    ) from None
                if record.idem:
                    self._carry(managed, record.idem, record.op, result)
            managed.measure()
            backup = self.store.replace(
                tenant, name, stored.spec, stored.created, managed.index, self._carried(managed)
            )
            with self._mutex:
                self._damaged.pop((tenant, name), None)
                self._indices[(tenant, name)] = managed
        log.warning(
            "%s/%s repaired: %s; the damaged files are kept in %s", tenant, name, notes, backup
        )
        return {
            **managed.info(),
            "backup": str(backup),
            "notes": notes,
            "records": len(stored.records),
        }

    def drop(self, tenant: str, name: str) -> dict[str, Any]:
        """Delete a quarantined index and its files: the one path that removes damaged data,
        taken only on an operator's explicit request."""
        with self._files:
            with self._mutex:
                damaged = self._damaged.get((tenant, name))
            if damaged is None:
                self.get(tenant, name)
                raise InvalidArgument(f"index {name!r} is not damaged: use delete")
            assert self.store is not None  # only a store's load quarantines an index
            self.store.drop(tenant, name)
            with self._mutex:
                self._damaged.pop((tenant, name), None)
        log.warning("%s/%s: dropped on request with its files (%s)", tenant, name, damaged.path)
        return {"dropped": name, "path": str(damaged.path)}

    # -- unnamed indices ---------------------------------------------------------------------
    def touch(self, session: str) -> None:
        self._sessions[session] = time.monotonic()

    def drop_session(self, session: str, tenant: str | None = None) -> int:
        """Drop the session's unnamed indices (only ``tenant``'s, when given)."""
        with self._mutex:
            doomed = [
                k
                for k, m in self._indices.items()
                if m.session == session and tenant in (None, m.tenant)
            ]
            for key in doomed:
                del self._indices[key]
        if tenant is None:
            self._sessions.pop(session, None)
        return len(doomed)

    def expire(self, ttl: float) -> int:
        """Drop unnamed indices whose session has been silent for ``ttl`` seconds."""
        cutoff = time.monotonic() - ttl
        dead = [s for s, seen in list(self._sessions.items()) if seen < cutoff]
        dropped = sum(self.drop_session(s) for s in dead)
        if dropped:
            log.info("expired %d unnamed index(es) of %d idle session(s)", dropped, len(dead))
        return dropped

    # -- persistence -------------------------------------------------------------------------
    def load(self, replay: Callable[[ManagedIndex, LogRecord], Any]) -> int:
        """Reopen every stored index: its snapshot, then ``replay`` of each logged write.

        An index whose files are damaged, or that cannot be rebuilt from them, is quarantined
        (listed, name blocked, every op answering IndexDamaged) with its files untouched.
        """
        if self.store is None:
            return 0
        count = 0
        for stored in self.store.load_all():
            if isinstance(stored, Damage):
                self._quarantine(stored)
                continue
            try:
                self._recover(stored, replay)
                count += 1
            except Exception as exc:
                with self._mutex:
                    self._indices.pop((stored.tenant, stored.name), None)
                keys = [(k.key, k.op) for k in stored.keys] + [
                    (r.idem, r.op) for r in stored.records if r.idem
                ]
                self._quarantine(
                    Damage(
                        stored.tenant,
                        stored.name,
                        self.store.path_of(stored.tenant, stored.name),
                        f"it cannot be reopened: {exc}",
                        keys,
                    )
                )
        return count

    def _recover(
        self, stored: StoredIndex, replay: Callable[[ManagedIndex, LogRecord], Any]
    ) -> None:
        managed = self.adopt(stored.tenant, stored.name, stored.spec, stored.index, stored.created)
        self._restore_keys(managed, stored.keys)
        for number, record in enumerate(stored.records):
            try:
                result = replay(managed, record)
            except Exception as exc:  # it succeeded once: the files do not hold what we wrote
                raise RuntimeError(
                    f"replaying log record {number} ({record.op}) failed: {exc}"
                ) from None
            if record.idem:
                self._carry(managed, record.idem, record.op, result)
        if stored.dropped:
            log.warning(
                "%s/%s: torn log tail cut (never acknowledged): %s",
                stored.tenant,
                stored.name,
                stored.dropped,
            )
        managed.measure()
        log.info(
            "reopened %s/%s: snapshot + %d logged write(s), %d vectors",
            stored.tenant,
            stored.name,
            len(stored.records),
            managed.index.ntotal,
        )

    def _quarantine(self, damage: Damage) -> None:
        item = DamagedIndex(damage.tenant, damage.name, damage.path, damage.reason)
        with self._mutex:
            self._damaged[(damage.tenant, damage.name)] = item
        log.error(
            "%s/%s QUARANTINED: %s. Its files are kept untouched in %s; run `faissx "
            "indexes repair %s` or `faissx indexes drop %s`.",
            damage.tenant,
            damage.name,
            damage.reason,
            damage.path,
            damage.name,
            damage.name,
        )
        if self.keys is not None:  # a retry of a write found in its files is never re-applied
            reply = error_frames(item.error())
            for key, op in damage.keys:
                self.keys.remember(damage.tenant, key, op, damage.name, reply)

    def _restore_keys(self, managed: ManagedIndex, keys: builtins.list[RememberedKey]) -> None:
        for key in keys:
            managed.keys[key.key] = key
            if self.keys is not None:
                self.keys.remember(managed.tenant, key.key, key.op, managed.name, key.reply)

    def _carry(self, managed: ManagedIndex, key: str, op: str, result: Any) -> None:
        """Remember a write's key and reply for the index's next snapshot."""
        managed.keys.pop(key, None)
        managed.keys[key] = RememberedKey(key, op, time.time(), reply_frames(result))
        while len(managed.keys) > self.keys_per_index:
            del managed.keys[next(iter(managed.keys))]

    def _carried(self, managed: ManagedIndex) -> builtins.list[RememberedKey]:
        """The keys a new snapshot keeps: those younger than ``keep_keys_for`` seconds."""
        cutoff = time.time() - self.keep_keys_for
        for key in [k for k, v in managed.keys.items() if v.saved < cutoff]:
            del managed.keys[key]
        return list(managed.keys.values())

    def _save(self, managed: ManagedIndex) -> None:
        """Snapshot (caller holds the write lock or otherwise excludes writers)."""
        assert self.store is not None
        if managed.broken:
            raise InternalError(
                f"index {managed.name!r} is not snapshotted: its memory is "
                f"ahead of its log ({managed.broken})"
            )
        self.store.save(
            managed.tenant,
            managed.name,
            managed.spec,
            managed.created,
            managed.index,
            self._carried(managed),
        )
        managed.snapshot_due = False

    def _threshold_snapshot(self, managed: ManagedIndex) -> None:
        """The snapshot a long log calls for; a failure is logged and retried later, never
        reported to the write that triggered it (that write is durable in the log)."""
        managed.snapshot_due = True
        try:
            self._save(managed)
        except Exception as exc:
            managed.snapshot_retry_at = time.monotonic() + SNAPSHOT_RETRY
            log.error(
                "%s/%s: snapshot failed (%s); the log still holds every write, retrying "
                "in %.0f s or more",
                managed.tenant,
                managed.name,
                exc,
                SNAPSHOT_RETRY,
            )

    def snapshot(self, managed: ManagedIndex, strict: bool = True) -> bool:
        """Snapshot a named index now; False when it is unnamed or was deleted meanwhile, or
        (unless ``strict``, which raises instead) when it is broken."""
        if self.store is None or managed.ephemeral:
            return False
        with managed.lock.write():
            if managed.deleted:  # a delete that won the lock: never write it back
                return False
            if managed.broken and not strict:
                return False
            self._save(managed)
        return True

    def snapshot_all(self) -> int:
        """Snapshot every healthy named index (at shutdown); failures are logged, not raised:
        each index's log still holds its writes. Broken indices are never snapshotted."""
        if self.store is None:
            return 0
        with self._mutex:
            named = [m for m in self._indices.values() if not m.ephemeral]
        saved = 0
        for managed in named:
            if managed.broken:
                log.error(
                    "%s/%s: not snapshotted (%s); its log holds its last durable state",
                    managed.tenant,
                    managed.name,
                    managed.broken,
                )
                continue
            try:
                saved += self.snapshot(managed)
            except Exception as exc:
                log.error(
                    "%s/%s: snapshot failed (%s); its log still holds every acknowledged write",
                    managed.tenant,
                    managed.name,
                    exc,
                )
        return saved

    def __iter__(self) -> Iterator[ManagedIndex]:
        with self._mutex:
            return iter(list(self._indices.values()))


#: Seconds before a failed threshold snapshot is tried again.
SNAPSHOT_RETRY = 30.0


def _preview(target: ManagedIndex, index: Any) -> dict[str, Any]:
    """The info ``target`` will report once ``index`` (its changed copy) replaces its own: the
    reply of a write that is committed as a new snapshot before it is applied."""
    return ManagedIndex(
        target.tenant,
        target.name,
        target.spec,
        target.itype,
        index,
        target.created,
        registry=target.registry,
    ).info()


def _clone(index: Any) -> Any:
    """A deep copy of a faiss index (through its serialized bytes when clone refuses it)."""
    binary = isinstance(index, faiss.IndexBinary)
    try:
        return (faiss.clone_binary_index if binary else faiss.clone_index)(index)  # type: ignore[attr-defined]  # faiss's stubs lack it
    except RuntimeError:
        return readers.copy_through_bytes(index)


def _call_params(args: dict[str, Any] | None) -> dict[str, int]:
    """The work knobs (``nprobe``, ``efSearch``) a call's search parameters set, if any."""
    spec = args.get("params") if args else None
    params = spec.get("params") if isinstance(spec, dict) else None
    if not isinstance(params, dict):
        return {}
    return {
        name: value
        for name in ("nprobe", "efSearch")
        if type(value := params.get(name)) is int and value > 0
    }


def _growth(managed: ManagedIndex, record: LogRecord | None) -> int:
    """Bytes a logged write will add: vectors x bytes per vector for an add, what training
    keeps and works in for a train (estimate.train_bytes), else 0."""
    moves = record is not None and record.op == "update_vectors"  # a hashtable map re-adds
    if record is None or not (OPERATIONS[record.op].adds_vectors or record.op == "train" or moves):
        return 0
    x = record.arrays.get("x")
    if x is None or x.ndim != 2:
        return 0
    if record.op == "train":
        return train_bytes(managed.index, int(x.shape[0]))
    return int(x.shape[0]) * managed.vector_bytes


def _mb(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def gpu_resources() -> Any:
    """faiss GPU resources for ``--gpu``, or ValueError saying why there are none."""
    count = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not count or not hasattr(faiss, "StandardGpuResources"):
        raise ValueError(
            "--gpu needs a GPU build of faiss (faiss-gpu) and a visible GPU; this faiss "
            f"{faiss.__version__} sees {count} GPU(s)"
        )
    return faiss.StandardGpuResources()


class PlacementKeyword(TypedDict, total=False):
    """``create``'s optional ``placement`` keyword, as :func:`placement` gives it."""

    placement: Placement


def placement(shards: int | None, replicas: int | None) -> PlacementKeyword:
    """``create``'s keyword for a per-index placement, or none to take the server's default."""
    if shards is None and replicas is None:
        return {}
    return {"placement": Placement(shards or 1, replicas or 1)}


def make_backend(
    settings: ServerSettings,
    registry: PluginRegistry,
    store: IndexStore | None,
    max_memory_bytes: int | None,
) -> LocalBackend:
    """The backend ``settings.backend`` names: this process, or Ray (``faissx[ray]``)."""
    if settings.backend == "local":
        if settings.shards > 1 or settings.replicas > 1:
            raise ValueError("--shards and --replicas need --backend ray")
        return LocalBackend(
            registry,
            store,
            settings.snapshot_bytes,
            max_memory_bytes=max_memory_bytes,
            gpu=settings.gpu,
        )
    if settings.gpu:
        raise ValueError("--gpu is not supported with --backend ray")
    from faissx_core.server.ray_loopback import keep_loopback

    keep_loopback(settings.ray_node_ip)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'faissx[ray]'") from None
    from faissx_core.server.ray_backend import RayBackend

    return RayBackend(
        registry,
        store,
        data_dir=settings.data_dir,
        fsync=settings.fsync,
        snapshot_bytes=settings.snapshot_bytes,
        max_memory_bytes=max_memory_bytes,
        address=settings.ray_address,
        node_ip=settings.ray_node_ip,
        placement=Placement(settings.shards, settings.replicas),
        plugins=settings.plugins,
    )


def clone_member(index: Any, path: str = "") -> Any:
    """``faiss.clone_index`` of ``index`` or of the index at ``path`` inside it (a remote
    proxy that was handed to a constructor stands for that member, see attrs.py)."""
    obj = attrs.walk(index, path) if path else index
    if isinstance(obj, faiss.IndexBinary):
        return faiss.clone_binary_index(obj)  # type: ignore[attr-defined]  # faiss's stubs lack it
    if not isinstance(obj, faiss.Index):
        raise InvalidArgument(f"{path!r} is a {type(obj).__name__}, not an index to copy")
    return faiss.clone_index(obj)
