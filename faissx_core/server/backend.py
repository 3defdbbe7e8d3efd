"""Where indices live and how an operation reaches one.

The server talks to a backend only through :class:`Backend`: create, look up, delete, list and
run an op. :class:`LocalBackend` keeps every index in this process; a sharded backend (Ray actors
merging results like ``IndexShards``) is meant to be a second implementation of the same class.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import faiss

from faissx_core.errors import (
    IndexExists,
    IndexNotFound,
    InternalError,
    InvalidArgument,
    QuotaExceeded,
)
from faissx_core.introspect import bytes_per_vector, core_params, index_bytes
from faissx_core.operations import OPERATIONS
from faissx_core.plugins import PluginRegistry
from faissx_core.server.locks import RWLock
from faissx_core.specs import (
    IndexSpec,
    IndexType,
    RuntimeParam,
    downcast,
    faiss_class_name,
    lookup_param,
)
from faissx_core.storage import IndexStore, LogRecord, StoredIndex

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
    #: The registry that built it: ops build search parameters and the like through it.
    registry: PluginRegistry | None = None
    #: ``faiss.StandardGpuResources`` when the server runs with ``--gpu``: searches then run on
    #: a GPU copy of the index (see :meth:`searcher`).
    gpu: Any = None
    params: dict[str, RuntimeParam] = field(init=False)
    #: Bytes the index holds and bytes one more vector adds (introspect.py); refreshed by
    #: :meth:`measure` after every write, read by ``--max-memory`` checks and ``info``.
    memory_bytes: int = field(init=False, default=0)
    vector_bytes: int = field(init=False, default=0)
    #: Bytes of flat storage made room for ahead of a pipelined add (ops.grow_storage).
    storage_capacity: int = field(init=False, default=0)
    _layout: _Layout | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.params = self.itype.params_of(self.index, self.registry.types if self.registry else {})
        self.params.update((p.name, p) for p in core_params(self.index)
                           if p.name not in self.params)
        self._gpu_mutex = threading.Lock()
        self._gpu_copy: Any = None
        self._gpu_failed = False
        self.measure()

    def measure(self) -> int:
        """Recompute :attr:`memory_bytes` (the caller keeps writers out)."""
        try:
            self.memory_bytes = index_bytes(self.index)
            self.vector_bytes = bytes_per_vector(self.index)
        except Exception as exc:  # accounting must never fail a request; fall back to raw size
            log.debug("%s/%s: cannot measure %s: %s", self.tenant, self.name,
                      type(self.index).__name__, exc)
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
                    log.info("%s/%s: %s stays on the CPU (%s)", self.tenant, self.name,
                             faiss_class_name(index), exc)
            return self._gpu_copy if self._gpu_copy is not None else index

    def runtime_param(self, name: str) -> RuntimeParam:
        return lookup_param(self.params, name, self.spec.type)

    def search_work(self, queries: int) -> float:
        """Rough count of vector components one read touches: how heavy the call is.

        Brute force touches every stored vector; an IVF the ``nprobe / nlist`` share of them;
        an HNSW about ``efSearch`` times its neighbours per level. Only the order of magnitude
        matters: it decides whether a call is small enough to answer without a thread hop.
        """
        layout = self.layout()
        stored = max(int(self.index.ntotal), 1)
        nlist = layout.ivf.nlist if layout.ivf is not None else 0
        if nlist:
            stored = stored * min(layout.ivf.nprobe, nlist) // nlist + nlist
        elif layout.hnsw is not None:
            stored = min(stored, 64 * max(layout.hnsw.efSearch, 16))
        return float(queries) * stored * layout.row_width

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
        }


class Backend(Protocol):
    def create(self, tenant: str, name: str, spec: IndexSpec, session: str | None) -> ManagedIndex:
        ...

    def get(self, tenant: str, name: str) -> ManagedIndex:
        ...

    def delete(self, tenant: str, name: str) -> None:
        ...

    def list(self, tenant: str) -> list[ManagedIndex]:
        ...

    def run(self, managed: ManagedIndex, write: bool, fn: Callable[[Any], Any]) -> Any:
        ...


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

    def __init__(self, registry: PluginRegistry, store: IndexStore | None = None,
                 snapshot_bytes: int = 256 << 20, max_memory_bytes: int | None = None,
                 gpu: bool = False) -> None:
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

    # -- memory ------------------------------------------------------------------------------
    def memory_used(self, tenant: str | None = None) -> int:
        """Bytes held by every index (of ``tenant``, when given), as last measured."""
        with self._mutex:
            return sum(m.memory_bytes for (t, _), m in self._indices.items()
                       if tenant in (None, t))

    def memory_free(self) -> int | None:
        """Bytes ``--max-memory`` still allows (None without a limit)."""
        if self.max_memory_bytes is None:
            return None
        with self._memory_mutex:
            return max(0, self.max_memory_bytes - self.memory_used() - self._reserved)

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold ``nbytes`` against ``--max-memory`` while a create or an add runs, or raise
        QuotaExceeded before anything changes when they would not fit."""
        if self.max_memory_bytes is None or nbytes <= 0:
            yield
            return
        with self._memory_mutex:
            used = self.memory_used() + self._reserved
            if used + nbytes > self.max_memory_bytes:
                raise QuotaExceeded(
                    f"{what} needs {_mb(nbytes)} but the server holds {_mb(used)} of its "
                    f"{_mb(self.max_memory_bytes)} limit (--max-memory)",
                    used=used, limit=self.max_memory_bytes, needed=nbytes)
            self._reserved += nbytes
        try:
            yield
        finally:
            with self._memory_mutex:
                self._reserved -= nbytes

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, tenant: str, name: str, spec: IndexSpec, session: str | None,
               index: Any = None) -> ManagedIndex:
        """Register a new index, built from ``spec`` unless an ``index`` is given (an import)."""
        itype = self.registry.index_type(spec.type)
        if itype.kind != "index":
            raise InvalidArgument(f"{spec.type} is a component, not an index: pass it to one")
        if index is None:
            index = self.registry.build(spec, resolve=lambda ref: self._copy(tenant, ref))
        managed = ManagedIndex(tenant, name, spec, itype, index, session=session,
                               registry=self.registry, gpu=self.gpu)
        durable = session is None and self.store is not None
        # A durable create publishes the index and writes its first snapshot as one step with
        # respect to deletes of the same name (which remove its directory).
        with self._files if durable else contextlib.nullcontext():
            with self.reserve(managed.memory_bytes, f"creating {name!r}"), self._mutex:
                if (tenant, name) in self._indices:
                    raise IndexExists(f"index {name!r} already exists")
                self._indices[(tenant, name)] = managed
            if durable:
                with managed.lock.write():
                    self.store.save(tenant, name, spec, managed.created, index)
        if session is not None:
            self.touch(session)
        return managed

    def _copy(self, tenant: str, name: str) -> Any:
        """A copy of one of ``tenant``'s indices, as a nested part of a new one."""
        source = self.get(tenant, name)
        with source.lock.read():
            clone = faiss.clone_binary_index if source.binary else faiss.clone_index
            return clone(source.index)

    def adopt(self, tenant: str, name: str, spec: IndexSpec, index: Any, created: float) -> None:
        """Register an index loaded from the store at start-up."""
        itype = self.registry.index_type(spec.type)
        with self._mutex:
            self._indices[(tenant, name)] = ManagedIndex(tenant, name, spec, itype, index, created,
                                                         registry=self.registry, gpu=self.gpu)

    def get(self, tenant: str, name: str) -> ManagedIndex:
        with self._mutex:
            managed = self._indices.get((tenant, name))
        if managed is None:
            raise IndexNotFound(f"no index named {name!r}")
        return managed

    def delete(self, tenant: str, name: str) -> None:
        with self._files:
            with self._mutex:
                managed = self._indices.pop((tenant, name), None)
            if managed is None:
                raise IndexNotFound(f"no index named {name!r}")
            with managed.lock.write():  # let in-flight ops on it finish first
                managed.deleted = True
                if self.store is not None and not managed.ephemeral:
                    self.store.delete(tenant, name)

    def list(self, tenant: str) -> list[ManagedIndex]:
        with self._mutex:
            return sorted(
                (m for (t, _), m in self._indices.items() if t == tenant), key=lambda m: m.name
            )

    def run(self, managed: ManagedIndex, write: bool, fn: Callable[[Any], Any],
            record: LogRecord | None = None, small: bool = False) -> Any:
        """Run ``fn(index)`` under the index's lock; log ``record`` if the index is durable.

        The record is appended after ``fn`` succeeded and before the lock is released, so the
        log's order is the order writes were applied; the caller acknowledges only after this
        returns, which (fsync policy permitting) is after the record is on disk.
        """
        ticket = None
        with managed.lock.write() if write else managed.lock.read(), self.budget.share(small):
            if managed.deleted:
                raise IndexNotFound(f"no index named {managed.name!r}")
            if write and managed.broken:
                raise InternalError(f"index {managed.name!r} refuses writes until the server "
                                    f"restarts and recovers it: {managed.broken}")
            if write:
                with self.reserve(_growth(managed, record), f"{record.op if record else 'write'}"
                                  f" on {managed.name!r}"):
                    try:
                        result = fn(managed.index)
                    finally:
                        managed.measure()
            else:
                result = fn(managed.index)
            if record is not None and self.store is not None and not managed.ephemeral:
                try:
                    ticket = self.store.append(managed.tenant, managed.name, record)
                    if self.store.log_bytes(managed.tenant, managed.name) > self.snapshot_bytes:
                        self._save(managed)
                except OSError as exc:
                    # The change is in memory but not on disk: refuse further writes rather
                    # than acknowledge a history the log does not hold.
                    managed.broken = f"write-ahead log failed: {exc}"
                    log.critical("%s/%s: %s", managed.tenant, managed.name, managed.broken)
                    raise InternalError(f"{record.op} was applied but could not be logged: "
                                        f"{exc}") from None
        if ticket is not None:
            try:
                self.store.wait(ticket)
            except OSError as exc:
                raise InternalError(f"{record.op} could not be made durable: {exc}") from None
        return result

    # -- unnamed indices ---------------------------------------------------------------------
    def touch(self, session: str) -> None:
        self._sessions[session] = time.monotonic()

    def drop_session(self, session: str, tenant: str | None = None) -> int:
        """Drop the session's unnamed indices (only ``tenant``'s, when given)."""
        with self._mutex:
            doomed = [k for k, m in self._indices.items()
                      if m.session == session and tenant in (None, m.tenant)]
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
    def load(self, replay: Callable[[ManagedIndex, LogRecord], None]) -> int:
        """Reopen every stored index: its snapshot, then ``replay`` of each logged write."""
        if self.store is None:
            return 0
        count = 0
        for stored in self.store.load_all():
            try:
                self._recover(stored, replay)
                count += 1
            except Exception as exc:
                log.error("cannot reopen %s/%s: %s", stored.tenant, stored.name, exc)
        return count

    def _recover(self, stored: StoredIndex, replay: Callable[[ManagedIndex, LogRecord], None]
                 ) -> None:
        self.adopt(stored.tenant, stored.name, stored.spec, stored.index, stored.created)
        managed = self.get(stored.tenant, stored.name)
        for number, record in enumerate(stored.records):
            try:
                replay(managed, record)
            except Exception as exc:  # it succeeded once; report loudly, keep the rest
                log.error("%s/%s: replaying log record %d (%s) failed: %s", stored.tenant,
                          stored.name, number, record.op, exc)
        if stored.dropped:
            log.warning("%s/%s: log tail dropped (never acknowledged): %s", stored.tenant,
                        stored.name, stored.dropped)
        managed.measure()
        log.info("reopened %s/%s: snapshot + %d logged write(s), %d vectors", stored.tenant,
                 stored.name, len(stored.records), managed.index.ntotal)

    def _save(self, managed: ManagedIndex) -> None:
        """Snapshot (caller holds the write lock or otherwise excludes writers)."""
        assert self.store is not None
        self.store.save(managed.tenant, managed.name, managed.spec, managed.created,
                        managed.index)

    def snapshot(self, managed: ManagedIndex) -> None:
        if self.store is not None and not managed.ephemeral:
            with managed.lock.write():
                self._save(managed)

    def snapshot_all(self) -> int:
        if self.store is None:
            return 0
        with self._mutex:
            named = [m for m in self._indices.values() if not m.ephemeral]
        for managed in named:
            self.snapshot(managed)
        return len(named)

    def __iter__(self) -> Iterator[ManagedIndex]:
        with self._mutex:
            return iter(list(self._indices.values()))


def _growth(managed: ManagedIndex, record: LogRecord | None) -> int:
    """Bytes a logged write will add: vectors x bytes per vector for an add, else 0."""
    if record is None or not OPERATIONS[record.op].adds_vectors:
        return 0
    x = record.arrays.get("x")
    return 0 if x is None or x.ndim != 2 else int(x.shape[0]) * managed.vector_bytes


def _mb(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def gpu_resources() -> Any:
    """faiss GPU resources for ``--gpu``, or ValueError saying why there are none."""
    count = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if not count or not hasattr(faiss, "StandardGpuResources"):
        raise ValueError(
            "--gpu needs a GPU build of faiss (faiss-gpu) and a visible GPU; this faiss "
            f"{faiss.__version__} sees {count} GPU(s)")
    return faiss.StandardGpuResources()
