"""``--backend ray``: each index cut into shards, each shard kept by replicas that are Ray actors.

The ZeroMQ front end (auth, tenancy, limits, validation, per-index write order) is the same
server; only where an op runs changes. :class:`RayBackend` is the backend seam's second
implementation: ``run`` receives the op's :class:`~faissx_core.server.ops.BoundJob` and, instead
of calling it on a local faiss object, sends the call to shard actors
(:mod:`faissx_core.server.ray_actors`) and merges their answers as faiss's ``IndexShards``
would (:mod:`faissx_core.server.shards`).

Consistency, in one front end: writes to an index are applied in arrival order (the front
end's per-index write lock), each reaches every replica of the shards it touches, and it is
acknowledged only after every one of them has applied and logged it. A read holds the index's
read lock, asks one replica per shard, and fails with :class:`ShardUnavailable` naming the shard
when no replica of a shard answers (unless the call says ``partial=True``), never returning a
silently partial answer. ``docs/distributed.md`` has the design and the measured costs.

The front end keeps a template of each index (the same faiss object, empty): requests are
validated against it exactly as on a single server, and ``train`` runs on it once; the trained
template (its coarse quantizer, its codebooks) is then installed on every replica, so all
shards share one quantizer as in faiss's ``IndexShardsIVF``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faissx_core import attrs
from faissx_core.errors import (
    FaissxError,
    IndexExists,
    IndexNotFound,
    InternalError,
    InvalidArgument,
    NotTrained,
    OutOfRange,
    ShardUnavailable,
    UnsupportedOperation,
    from_wire,
)
from faissx_core.plugins import PluginRegistry
from faissx_core.server.backend import LocalBackend, ManagedIndex
from faissx_core.server.ops import OPS, BoundJob
from faissx_core.server.shards import (
    Placement,
    keep_max,
    merge_knn,
    merge_range,
    shard_of,
    split,
    takes_ids,
)
from faissx_core.server.storage import IndexStore, LogRecord, Ticket
from faissx_core.specs import IndexSpec

log = logging.getLogger(__name__)

#: Ray namespace of every actor this backend starts (``faissx cluster status`` looks there).
NAMESPACE = "faissx"
#: Seconds a read waits for one replica before trying the next.
READ_TIMEOUT = 10.0
#: Seconds a write keeps re-sending to a replica Ray is restarting before giving up.
WRITE_TIMEOUT = 60.0
#: Seconds a replica that failed a read is skipped by later reads.
DOWN_FOR = 2.0


def cluster_config() -> dict[str, Any]:
    """Ray's ``_system_config`` for a cluster that serves replicas (set on the head node; the
    other nodes read it from there).

    Ray runs every worker process at niceness 15 (``worker_niceness``) to keep its own control
    processes ahead of user tasks; but a replica is the service itself, and the front end waits
    on it. At niceness 15 a replica gets a few percent of a core next to any ordinary busy
    process: on a 2-core machine running four busy loops, four replica actors took 31-40 s to
    start against 8 s at niceness 0 (idle: 2.8 s against 2.0 s). ``RAY_worker_niceness`` in the
    environment still decides where it is set."""
    return {} if "RAY_worker_niceness" in os.environ else {"worker_niceness": 0}


@dataclass(eq=False)
class Replica:
    actor: Any
    shard: int
    replica: int
    #: Until when reads skip it (it failed one); writes always go to it.
    down_until: float = 0.0
    #: It may not hold the shard's newest write (a write to it was not confirmed).
    stale: bool = False


@dataclass(eq=False)
class ShardedIndex(ManagedIndex):
    """An index whose vectors live in shard actors; ``index`` is the local empty template."""

    placement: Placement = field(default_factory=Placement)
    replicas: list[list[Replica]] = field(default_factory=list)
    #: Last write number sent to each shard.
    seqs: list[int] = field(default_factory=list)
    #: Vectors and bytes each shard reported after its last write.
    counts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    #: Whether ids route by hash (the index takes the caller's ids) or by ``id % shards``.
    hashed: bool = False
    #: Whether replicas wrap the type in an ``IndexIDMap2`` (types numbering vectors themselves).
    wrap: bool = False
    _next: int = field(init=False, default=0)

    def search_work(self, queries: int, args: dict[str, Any] | None = None) -> float:
        """The work of the slowest shard (each holds about ``ntotal / shards`` vectors), but at
        least 2**23: past the server's inline threshold (``INLINE_WORK``, 2**22), since a read
        is Ray hops away and must never block the socket thread, and still under its heavy mark
        (2**24) when the shards' share is small, since this process only merges."""
        share = max(self.ntotal // self.placement.shards, 1)
        return max(float(queries) * share * self.row_width, float(1 << 23))

    def add_work(self, rows: int) -> float:
        """Past the inline threshold, as :meth:`search_work`: a write is Ray hops away."""
        return float(1 << 23)

    @property
    def ntotal(self) -> int:
        return sum(self.counts)

    def measure(self) -> int:
        """Bytes held across the cluster: every shard's, times its copies."""
        self.memory_bytes = sum(getattr(self, "sizes", None) or [0]) * self.placement.replicas
        self.vector_bytes = max(1, self.row_width * (1 if self.binary else 4))
        return self.memory_bytes

    def local_only(self, what: str) -> None:
        raise UnsupportedOperation(
            f"{what} is not supported on a sharded index ({self.name!r} "
            f"has {self.placement.shards} shard(s) on Ray)"
        )

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(
            ntotal=self.ntotal,
            shards=self.placement.shards,
            replicas=self.placement.replicas,
            memory_bytes=self.memory_bytes,
        )
        return info


class RayBackend(LocalBackend):
    """Indices as Ray actors; lifecycle, sessions and memory accounting as the local backend."""

    def __init__(
        self,
        registry: PluginRegistry,
        store: IndexStore | None = None,
        *,
        data_dir: Path | None = None,
        fsync: str = "always",
        snapshot_bytes: int = 256 << 20,
        max_memory_bytes: int | None = None,
        address: str = "local",
        node_ip: str = "127.0.0.1",
        placement: Placement | None = None,
        plugins: list[str] | None = None,
    ) -> None:
        super().__init__(registry, store, snapshot_bytes, max_memory_bytes=max_memory_bytes)
        import ray

        self.ray = ray
        self.data_dir = data_dir
        self.fsync = fsync
        self.placement = placement or Placement()
        self.plugins = plugins
        #: This front end's actors are named under it, so a restarted front end never meets
        #: the previous one's (Ray ends those with their owner).
        self.instance = uuid.uuid4().hex[:8]
        #: Where the next index's first replica goes, among the live nodes (see _placements).
        self._rotation = itertools.count()
        #: Whether the log already said that replicas run at a lower priority than this process.
        self._niced_said = False
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "namespace": NAMESPACE,
                "log_to_driver": False,
                "configure_logging": False,
                "_node_ip_address": node_ip,
            }
            if address == "local":
                ray.init(include_dashboard=False, _system_config=cluster_config(), **options)
            else:
                ray.init(address=address, **options)
        self.actor_class: Any = ray.remote(_actor_class())  # a Ray actor class, made at run time

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
        """Start the replicas of a new index (``idem``, ``op`` and ``caller`` as the local
        backend's: this backend keeps no create in a log, and builds no index from another)."""
        if index is not None:
            raise UnsupportedOperation(
                "import is not supported with --backend ray: create the index and add its vectors"
            )
        itype = self.registry.index_type(spec.type)
        if itype.kind != "index":
            raise InvalidArgument(f"{spec.type} is a component, not an index: pass it to one")
        template = self.registry.build(spec, resolve=_no_refs)
        if session is None and self.data_dir is not None:  # as the local backend: its replicas'
            attrs.check_storable(template)  # snapshots must come back whole after a restart
        with self._mutex:
            if (tenant, name) in self._indices:
                raise IndexExists(f"index {name!r} already exists")
        managed = self._start(
            tenant, name, spec, template, placement or self.placement, session, time.time()
        )
        with self._mutex:
            if (tenant, name) in self._indices:
                self._stop(managed, forget=True)
                raise IndexExists(f"index {name!r} already exists")
            self._indices[(tenant, name)] = managed
        if session is not None:
            self.touch(session)
        return managed

    def _start(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        template: Any,
        placement: Placement,
        session: str | None,
        created: float,
    ) -> ShardedIndex:
        """Start (or, for a stored index, restart) every replica and wait until they serve."""
        itype = self.registry.index_type(spec.type)
        managed = ShardedIndex(
            tenant,
            name,
            spec,
            itype,
            template,
            created=created,
            session=session,
            registry=self.registry,
            placement=placement,
            hashed=takes_ids(template),
            wrap=not takes_ids(template),
        )
        durable = session is None and self.data_dir is not None
        folder = self._folder(tenant, name) if durable else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "placement.json").write_text(
                json.dumps(
                    {
                        "spec": spec.model_dump(),
                        "shards": placement.shards,
                        "replicas": placement.replicas,
                        "created": created,
                    }
                )
            )
            _write_template(folder, template)
        data = _serialize(template).tobytes()
        where = self._placements(placement)
        for s in range(placement.shards):
            row = []
            for r in range(placement.replicas):
                actor = self.actor_class.options(
                    name=f"{self.instance}/{tenant}/{name}/s{s}r{r}",
                    namespace=NAMESPACE,
                    max_restarts=-1,
                    max_task_retries=0,
                    num_cpus=0,
                    # one byte of Ray's logical `memory` resource: asking for nothing, 5 of 12
                    # affinity placements ignored the node asked for (see _placements)
                    memory=1,
                    scheduling_strategy=where[s][r],
                ).remote(
                    tenant,
                    name,
                    s,
                    r,
                    spec.model_dump(),
                    data,
                    managed.wrap,
                    self.plugins,
                    str(folder / f"s{s}r{r}") if folder else None,
                    self.fsync,
                    self.snapshot_bytes,
                )
                row.append(Replica(actor, s, r))
            managed.replicas.append(row)
        states = self._statuses(managed, timeout=WRITE_TIMEOUT)
        self._check_priority([st for row in states for st in row if st])
        managed.seqs = [
            max((st["seq"] for st in states[s] if st), default=0) for s in range(placement.shards)
        ]
        managed.counts = [0] * placement.shards
        managed.sizes = [0] * placement.shards
        for s, found in enumerate(states):
            if not any(found):
                self._stop(managed, forget=False)
                raise ShardUnavailable(f"index {name!r}: no replica of shard {s} started", shard=s)
            best = max((st for st in found if st), key=lambda st: st["seq"])
            managed.counts[s], managed.sizes[s] = best["ntotal"], best["memory_bytes"]
            for replica, st in zip(managed.replicas[s], found, strict=True):
                replica.stale = st is None or st["seq"] < best["seq"]
        managed.measure()
        if any(r.stale for row in managed.replicas for r in row):
            with managed.lock.write():
                for s in range(placement.shards):
                    self._heal(managed, s)
        return managed

    def _placements(self, placement: Placement) -> list[list[Any]]:
        """Where each replica starts: ``[shard][replica]`` -> a Ray scheduling strategy.

        Replica ``r`` of shard ``s`` is the ``s * replicas + r``-th of the index's actors, and
        goes to the live node that many places after where the previous index began; so the
        copies of a shard are on different nodes whenever there are as many nodes as copies,
        and shards spread over the rest. The affinity is soft: a node gone at start, or later
        (Ray restarting the replica), lets Ray pick another. Ray's own ``SPREAD`` does not
        promise this: the node the control store picks may send the request on to another, and
        on a loaded two-node cluster all four replicas of a 2 x 2 index were seen on one node,
        both copies of each shard on the same machine. (Each replica also asks for one byte of
        ``memory``: for an actor that asks for no resource at all, Ray ignored both ``SPREAD``
        and a soft affinity in some placements, measured on an idle two-node cluster.)"""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in self.ray.nodes() if n.get("Alive"))
        if not nodes:
            return [["SPREAD"] * placement.replicas for _ in range(placement.shards)]
        first = next(self._rotation)
        return [
            [
                NodeAffinitySchedulingStrategy(
                    nodes[(first + s * placement.replicas + r) % len(nodes)], soft=True
                )
                for r in range(placement.replicas)
            ]
            for s in range(placement.shards)
        ]

    def _check_priority(self, states: list[dict]) -> None:
        """Say once when replicas run at a lower priority than this front end."""
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        lower = niced(states, mine)
        if lower and not self._niced_said:
            self._niced_said = True
            log.warning(
                "replicas run at niceness %s, this server at %d: on a busy machine they get a "
                "small share of a core (start the Ray head node with "
                "--system-config='{\"worker_niceness\": 0}')",
                lower,
                mine,
            )

    def _statuses(self, managed: ShardedIndex, timeout: float) -> list[list[dict | None]]:
        refs = [[r.actor.status.remote() for r in row] for row in managed.replicas]
        deadline = time.monotonic() + timeout
        return [[self._get(ref, deadline) for ref in row] for row in refs]

    def _get(self, ref: Any, deadline: float) -> Any:
        """``ray.get`` bounded by ``deadline``; None if the actor failed or did not answer."""
        try:
            return self.ray.get(ref, timeout=max(0.05, deadline - time.monotonic()))
        except (
            self.ray.exceptions.RayActorError,
            self.ray.exceptions.GetTimeoutError,
            self.ray.exceptions.ActorUnavailableError,
        ):
            return None

    def _folder(self, tenant: str, name: str) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "ray" / tenant / name

    def delete(self, tenant: str, name: str) -> None:
        with self._mutex:
            managed = self._indices.pop((tenant, name), None)
        if managed is None:
            raise IndexNotFound(f"no index named {name!r}")
        with managed.lock.write():
            managed.deleted = True
            self._stop(managed, forget=True)

    def _stop(self, managed: ManagedIndex, forget: bool) -> None:
        """Kill the replicas; with ``forget``, remove their files first."""
        assert isinstance(managed, ShardedIndex)
        if forget:
            deadline = time.monotonic() + READ_TIMEOUT
            refs = [r.actor.destroy.remote() for row in managed.replicas for r in row]
            for ref in refs:
                self._get(ref, deadline)
            if self.data_dir is not None and not managed.ephemeral:
                folder = self._folder(managed.tenant, managed.name)
                for path in sorted(folder.rglob("*"), reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
                folder.rmdir()
        for row in managed.replicas:
            for r in row:
                self.ray.kill(r.actor, no_restart=True)

    def drop_session(self, session: str, tenant: str | None = None) -> int:
        with self._mutex:
            doomed = [
                m
                for m in self._indices.values()
                if m.session == session and tenant in (None, m.tenant)
            ]
        dropped = super().drop_session(session, tenant)
        for managed in doomed:
            self._stop(managed, forget=True)
        return dropped

    def load(self, replay: Callable[[ManagedIndex, LogRecord], None]) -> int:
        """Restart the replicas of every stored index; each reloads its own snapshot + log."""
        if self.data_dir is None or not (self.data_dir / "ray").is_dir():
            return 0
        count = 0
        for folder in sorted((self.data_dir / "ray").glob("*/*")):
            try:
                meta = json.loads((folder / "placement.json").read_text())
                spec = IndexSpec.model_validate(meta["spec"])
                template = _read_template(folder)
                placement = Placement(meta["shards"], meta["replicas"])
                managed = self._start(
                    folder.parent.name,
                    folder.name,
                    spec,
                    template,
                    placement,
                    None,
                    meta["created"],
                )
                with self._mutex:
                    self._indices[(managed.tenant, managed.name)] = managed
                count += 1
                log.info(
                    "reopened %s/%s on Ray: %d shard(s) x %d replica(s), %d vectors",
                    managed.tenant,
                    managed.name,
                    placement.shards,
                    placement.replicas,
                    managed.ntotal,
                )
            except Exception as exc:
                log.error("cannot reopen %s on Ray: %s", folder, exc)
        return count

    def snapshot(self, managed: ManagedIndex, strict: bool = True) -> bool:
        """Every replica snapshots its own index (and empties its log)."""
        assert isinstance(managed, ShardedIndex)
        if managed.ephemeral or self.data_dir is None:
            return False
        with managed.lock.write():
            if managed.deleted:
                return False
            deadline = time.monotonic() + WRITE_TIMEOUT
            refs = [r.actor.snapshot.remote() for row in managed.replicas for r in row]
            answered = [self._get(ref, deadline) is not None for ref in refs]
        if strict and not all(answered):
            raise ShardUnavailable(
                f"index {managed.name!r}: some replicas did not snapshot "
                "(their logs still hold every write)"
            )
        return True

    def merge(
        self,
        target: ManagedIndex,
        source: ManagedIndex,
        merge: Callable[[Any, Any], None],
        idem: str | None = None,
    ) -> dict[str, Any]:
        for managed in (target, source):
            managed.local_only("merge_from")
        return super().merge(target, source, merge, idem)

    def copy_into(
        self,
        target: ManagedIndex,
        source: ManagedIndex,
        copy: Callable[[Any, Any], None],
        idem: str | None = None,
        op: str = "copy_subset_to",
    ) -> dict[str, Any]:
        for managed in (target, source):
            managed.local_only(op)
        return super().copy_into(target, source, copy, idem, op)

    def _save(self, managed: ManagedIndex) -> None:
        managed.local_only("a snapshot outside the backend")

    # -- running ops -------------------------------------------------------------------------
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
        if not isinstance(managed, ShardedIndex):
            return super().run(managed, write, fn, record, small, held, defer)
        assert isinstance(fn, BoundJob)  # ops.op makes every index op's job one
        handler = self._handlers.get(fn.op)
        if handler is None:
            raise UnsupportedOperation(
                f"{fn.op} is not supported on a sharded index ({managed.name!r}, --backend ray)"
            )
        with managed.lock.write() if write else managed.lock.read():
            if managed.deleted:
                raise IndexNotFound(f"no index named {managed.name!r}")
            if write:
                if record is None:
                    raise InternalError(f"{fn.op}: a write reached the Ray backend unlogged")
                with self.reserve(
                    _rows(record) * managed.vector_bytes, f"{fn.op} on {managed.name!r}"
                ):
                    result = handler(self, managed, fn, record)
                managed.measure()
                return result
            return handler(self, managed, fn, record)

    # reads ------------------------------------------------------------------------------------
    def _read(
        self,
        managed: ShardedIndex,
        op: str,
        args: Any,
        arrays: dict[str, np.ndarray],
        shards: list[int] | None = None,
        partial: bool = False,
    ) -> dict[int, tuple[dict, dict]]:
        """Ask one replica of each shard; the next replica when one fails; every answer or
        ShardUnavailable (``partial``: the answers there are)."""
        shards = list(range(managed.placement.shards)) if shards is None else shards
        for s in shards:
            if all(r.stale for r in managed.replicas[s]):
                self._refresh(managed, s)
        order = {s: self._read_order(managed, s) for s in shards}
        pending = {s: (order[s].pop(0), None) for s in shards if order[s]}
        answers: dict[int, tuple[dict, dict]] = {}
        missing = [s for s in shards if s not in pending]
        while pending:
            refs = {
                s: (rep, ref or rep.actor.read.remote(op, args, arrays))
                for s, (rep, ref) in pending.items()
            }
            pending = {}
            deadline = time.monotonic() + READ_TIMEOUT
            for s, (rep, ref) in refs.items():
                out = self._get(ref, deadline)
                if out is not None and out[0] == "ok":
                    answers[s] = (out[1], out[2])
                    continue
                if out is not None and out[0] == "error":
                    raise from_wire(out[1])
                rep.down_until = time.monotonic() + DOWN_FOR
                if order[s]:
                    pending[s] = (order[s].pop(0), None)
                else:
                    missing.append(s)
        if missing and not partial:
            first = min(missing)
            raise ShardUnavailable(
                f"index {managed.name!r}: shard {first} has no live replica"
                + (f" (shards {sorted(missing)} are down)" if len(missing) > 1 else "")
                + "; pass partial=True to search the others",
                shard=first,
                shards=sorted(missing),
            )
        return answers

    def _refresh(self, managed: ShardedIndex, s: int) -> None:
        """Readmit the replicas of shard ``s`` that hold its newest write after all (a write
        that timed out on them landed later). The caller holds the read lock: no write moves
        the number meanwhile."""
        deadline = time.monotonic() + READ_TIMEOUT
        refs = [(r, r.actor.status.remote()) for r in managed.replicas[s]]
        for rep, ref in refs:
            st = self._get(ref, deadline)
            if st is not None and not st["lost"] and st["seq"] == managed.seqs[s]:
                rep.stale = False

    @staticmethod
    def _read_order(managed: ShardedIndex, s: int) -> list[Replica]:
        """Replicas to try for a read: fresh ones round-robin, recently failed ones last."""
        row = [r for r in managed.replicas[s] if not r.stale]
        managed._next += 1
        start = managed._next % max(len(row), 1)
        row = row[start:] + row[:start]
        now = time.monotonic()
        return [r for r in row if r.down_until <= now] + [r for r in row if r.down_until > now]

    def _search(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        answers = self._read(managed, "search", fn.args, fn.arrays, partial=fn.args.partial)
        parts = [(a[1]["D"], a[1]["I"]) for _, a in sorted(answers.items())]
        if not parts:
            nq = len(fn.arrays["x"])
            D = np.full((nq, fn.args.k), np.inf, dtype=np.float32)
            return {"missing_shards": list(range(managed.placement.shards))}, {
                "D": D,
                "I": np.full((nq, fn.args.k), -1, dtype=np.int64),
            }
        D, I = merge_knn(parts, keep_max(managed.index))
        return _missing(managed, answers), {"D": D, "I": I}

    def _assign(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        answers = self._read(managed, "search", fn.args, fn.arrays)
        parts = [(a[1]["D"], a[1]["I"]) for _, a in sorted(answers.items())]
        return {}, {"I": merge_knn(parts, keep_max(managed.index))[1]}

    def _range_search(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        answers = self._read(managed, "range_search", fn.args, fn.arrays, partial=fn.args.partial)
        parts = [a[1] for _, a in sorted(answers.items())]
        return _missing(managed, answers), merge_range(parts, len(fn.arrays["x"]))

    def _reconstruct(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        key = fn.args.key
        self._check_keys(managed, np.array([key], dtype=np.int64))
        (s,) = shard_of(np.array([key], dtype=np.int64), managed.placement.shards, managed.hashed)
        return self._read(managed, "reconstruct", fn.args, {}, [int(s)])[int(s)]

    def _reconstruct_ids(self, managed: ShardedIndex, ids: np.ndarray) -> np.ndarray:
        self._check_keys(managed, ids)
        groups = split(ids, managed.placement.shards, managed.hashed)
        wanted = [s for s, rows in enumerate(groups) if len(rows)]
        answers = {
            s: self._read(
                managed,
                "reconstruct_batch",
                OPS["reconstruct_batch"].parse({}),
                {"ids": ids[groups[s]]},
                [s],
            )[s]
            for s in wanted
        }
        width = managed.index.d
        out = np.empty((len(ids), width), dtype=np.float32)
        for s in wanted:
            out[groups[s]] = answers[s][1]["x"]
        return out

    def _reconstruct_batch(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        return {}, {"x": self._reconstruct_ids(managed, fn.arrays["ids"])}

    def _reconstruct_n(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        if managed.hashed:
            raise UnsupportedOperation(
                f"reconstruct_n is not supported by {managed.spec.type} "
                "on Ray: ask reconstruct_batch for the ids"
            )
        n0, ni = fn.args.n0, fn.args.ni
        if n0 + ni > managed.ntotal:
            raise OutOfRange(f"range [{n0}, {n0 + ni}) exceeds ntotal={managed.ntotal}")
        return {}, {"x": self._reconstruct_ids(managed, np.arange(n0, n0 + ni, dtype=np.int64))}

    @staticmethod
    def _check_keys(managed: ShardedIndex, ids: np.ndarray) -> None:
        if not managed.hashed and ids.size and (ids.min() < 0 or ids.max() >= managed.ntotal):
            raise OutOfRange(f"ids out of range [0, {managed.ntotal})")

    def _info(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        return managed.info(), {}

    def _get_parameter(self, managed: ShardedIndex, fn: Any, record: Any) -> tuple[dict, dict]:
        return self._read(managed, "get_parameter", fn.args, {}, [0])[0]

    # writes -----------------------------------------------------------------------------------
    def _write(
        self, managed: ShardedIndex, calls: dict[int, tuple[str, dict, dict]]
    ) -> dict[int, dict]:
        """Send write ``calls[shard] = (op, args, arrays)`` to every replica of each shard and
        return each shard's result once all replicas applied it; else raise (not acked)."""
        sent: dict[int, tuple[int, list[Any]]] = {}
        for s, (op, args, arrays) in calls.items():
            managed.seqs[s] += 1
            seq = managed.seqs[s]
            sent[s] = (
                seq,
                [r.actor.apply.remote(seq, op, args, arrays) for r in managed.replicas[s]],
            )
        results: dict[int, dict] = {}
        failure: FaissxError | None = None
        for s, (seq, refs) in sent.items():
            op, args, arrays = calls[s]
            try:
                results[s] = self._settle(
                    managed,
                    s,
                    seq,
                    refs,
                    functools.partial(_apply_again, calls[s]),
                )
            except FaissxError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return results

    def _settle(
        self,
        managed: ShardedIndex,
        s: int,
        seq: int,
        refs: list[Any],
        resend: Callable[[Replica, int], Any],
        renumbered: bool = False,
    ) -> dict:
        """Wait for every replica of shard ``s`` to report write ``seq``; re-send to a replica
        Ray restarted (it reloaded from its log, and ignores a number it already has).

        If every replica reports a gap, the numbers between theirs and ``seq`` reached no
        replica (never acknowledged): the write is sent again under the next number they
        expect, once."""
        deadline = time.monotonic() + WRITE_TIMEOUT
        outcomes: list[tuple | None] = []
        for rep, ref in zip(managed.replicas[s], refs, strict=True):
            out = None
            while True:
                try:
                    out = self.ray.get(ref, timeout=max(0.05, deadline - time.monotonic()))
                    break
                except self.ray.exceptions.GetTimeoutError:
                    break
                except (
                    self.ray.exceptions.RayActorError,
                    self.ray.exceptions.ActorUnavailableError,
                ):
                    if time.monotonic() >= deadline or actor_state(rep.actor) == "DEAD":
                        break  # a dead actor (killed for good) is not coming back
                    time.sleep(0.2)
                    ref = resend(rep, seq)
            if out is None or out[0] == "lost":
                rep.stale = True
            outcomes.append(out)
        done = [o for o in outcomes if o is not None and o[0] in ("ok", "error")]
        if not renumbered and outcomes and all(o is not None and o[0] == "gap" for o in outcomes):
            number = max(int(o[1]) for o in outcomes if o is not None) + 1
            managed.seqs[s] = number
            refs = [resend(r, number) for r in managed.replicas[s]]
            return self._settle(managed, s, number, refs, resend, renumbered=True)
        if done:
            for rep, out in zip(managed.replicas[s], outcomes, strict=True):
                if out is not None and out[0] == "gap":
                    rep.stale = True
            ok = [o for o in done if o[0] == "ok"]
            if ok and len(ok) < len(done):  # faiss refused on some replica only: copy over it
                for rep, out in zip(managed.replicas[s], outcomes, strict=True):
                    if out is not None and out[0] == "error":
                        rep.stale = True
            self._heal(managed, s)
        # a replica that did not apply it but was then made a copy of one that did has it too
        missed = [
            rep
            for rep, o in zip(managed.replicas[s], outcomes, strict=True)
            if (o is None or o[0] not in ("ok", "error")) and (rep.stale or not done)
        ]
        if missed:
            down = len(missed)
            raise ShardUnavailable(
                f"index {managed.name!r}: write not acknowledged: {down} of "
                f"{len(outcomes)} replica(s) of shard {s} did not apply it",
                shard=s,
            )
        ok = [o for o in done if o[0] == "ok"]
        if not ok:
            raise from_wire(done[0][1])
        managed.counts[s] = int(ok[0][1]["ntotal"])
        managed.sizes[s] = int(ok[0][1]["memory_bytes"])
        return ok[0][1]

    def _heal(self, managed: ShardedIndex, s: int) -> None:
        """Copy the most advanced replica's index over every stale replica of shard ``s``."""
        stale = [r for r in managed.replicas[s] if r.stale]
        if not stale:
            return
        deadline = time.monotonic() + WRITE_TIMEOUT
        fresh = [r for r in managed.replicas[s] if not r.stale]
        states = [(r, self._get(r.actor.status.remote(), deadline)) for r in fresh or stale]
        states = [(r, st) for r, st in states if st is not None and not st["lost"]]
        if not states:
            return
        source, best = max(states, key=lambda rs: rs[1]["seq"])
        if best["seq"] < managed.seqs[s] and not fresh:
            managed.seqs[s] = best["seq"]  # the newest number reached no replica: never acked
        data, seq = self._get(source.actor.export_state.remote(), deadline) or (None, None)
        if data is None:
            return
        source.stale = False
        for rep in stale:
            if rep is source:
                continue
            if self._get(rep.actor.restore.remote(data, seq), deadline) == seq:
                rep.stale = False
                log.warning(
                    "%s/%s shard %d replica %d: copied from replica %d at write %d",
                    managed.tenant,
                    managed.name,
                    s,
                    rep.replica,
                    source.replica,
                    seq,
                )

    def _broadcast(self, managed: ShardedIndex, record: LogRecord) -> dict:
        shards = range(managed.placement.shards)
        results = self._write(managed, {s: (record.op, record.args, record.arrays) for s in shards})
        return results[0]

    def _add(self, managed: ShardedIndex, fn: Any, record: LogRecord) -> tuple[dict, dict]:
        x = fn.arrays["x"]
        if not managed.index.is_trained:
            raise NotTrained(f"{managed.spec.type} must be trained before add")
        if managed.hashed:
            raise UnsupportedOperation(
                f"add is not supported by {managed.spec.type}: use add_with_ids"
            )
        ids = np.arange(managed.ntotal, managed.ntotal + len(x), dtype=np.int64)
        return self._add_rows(managed, x, ids)

    def _add_with_ids(self, managed: ShardedIndex, fn: Any, record: LogRecord) -> tuple[dict, dict]:
        if not managed.index.is_trained:
            raise NotTrained(f"{managed.spec.type} must be trained before add_with_ids")
        if not managed.hashed and not _is_ivf(managed.index):
            raise UnsupportedOperation(f"add_with_ids is not supported by {managed.spec.type}")
        return self._add_rows(managed, fn.arrays["x"], fn.arrays["ids"])

    def _add_rows(self, managed: ShardedIndex, x: np.ndarray, ids: np.ndarray) -> tuple[dict, dict]:
        groups = split(ids, managed.placement.shards, managed.hashed)
        self._write(
            managed,
            {
                s: ("add_with_ids", {}, {"x": x[rows], "ids": ids[rows]})
                for s, rows in enumerate(groups)
                if len(rows)
            },
        )
        return {"ntotal": managed.ntotal, "is_trained": True}, {}

    def _train(self, managed: ShardedIndex, fn: Any, record: LogRecord) -> tuple[dict, dict]:
        if managed.ntotal:
            raise UnsupportedOperation(
                f"train on a sharded index that holds vectors "
                f"({managed.ntotal}): train before adding"
            )
        result, _ = fn(managed.index)  # once, here: every shard gets this quantizer
        data = _serialize(managed.index).tobytes()
        sent = {}
        for s in range(managed.placement.shards):
            managed.seqs[s] += 1
            seq = managed.seqs[s]
            sent[s] = (seq, [r.actor.replace.remote(seq, data) for r in managed.replicas[s]])
        for s, (seq, refs) in sent.items():
            self._settle(
                managed, s, seq, refs, lambda rep, number: rep.actor.replace.remote(number, data)
            )
        if self.data_dir is not None and not managed.ephemeral:
            _write_template(self._folder(managed.tenant, managed.name), managed.index)
        return result, {}

    def _remove_ids(self, managed: ShardedIndex, fn: Any, record: LogRecord) -> tuple[dict, dict]:
        if not managed.hashed and not _is_ivf(managed.index):
            raise UnsupportedOperation(
                f"remove_ids is not supported by {managed.spec.type} on Ray: faiss renumbers "
                "the vectors after the removed ones, which a sharded index cannot do in step"
            )
        results = self._write(
            managed,
            {s: (record.op, record.args, record.arrays) for s in range(managed.placement.shards)},
        )
        removed = sum(int(r.get("removed", 0)) for r in results.values())
        return {
            "removed": removed,
            "ntotal": managed.ntotal,
            "is_trained": bool(managed.index.is_trained),
        }, {}

    def _reset(self, managed: ShardedIndex, fn: Any, record: LogRecord) -> tuple[dict, dict]:
        self._broadcast(managed, record)
        return {"ntotal": managed.ntotal, "is_trained": bool(managed.index.is_trained)}, {}

    def _set_parameter(
        self, managed: ShardedIndex, fn: Any, record: LogRecord
    ) -> tuple[dict, dict]:
        return {"value": self._broadcast(managed, record)["value"]}, {}

    def _set_direct_map_type(
        self, managed: ShardedIndex, fn: Any, record: LogRecord
    ) -> tuple[dict, dict]:
        self._broadcast(managed, record)
        return {"ntotal": managed.ntotal, "is_trained": bool(managed.index.is_trained)}, {}

    _handlers: dict[str, Callable[..., tuple[dict, dict]]] = {
        "info": _info,
        "search": _search,
        "assign": _assign,
        "range_search": _range_search,
        "reconstruct": _reconstruct,
        "reconstruct_batch": _reconstruct_batch,
        "reconstruct_n": _reconstruct_n,
        "get_parameter": _get_parameter,
        "add": _add,
        "add_with_ids": _add_with_ids,
        "train": _train,
        "remove_ids": _remove_ids,
        "reset": _reset,
        "set_parameter": _set_parameter,
        "set_direct_map_type": _set_direct_map_type,
    }

    # -- cluster status ----------------------------------------------------------------------
    def cluster_status(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """One row per replica of every index: where it runs and what it holds."""
        return cluster_rows(self.ray, timeout)


def cluster_rows(ray: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every FAISSx replica actor in the cluster (by name, in :data:`NAMESPACE`), asked for
    its status; an actor that does not answer is listed as unreachable."""
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE
    )
    rows = []
    handles = []
    for name in names:
        try:
            handles.append((name, ray.get_actor(name, namespace=NAMESPACE)))
        except ValueError:
            continue  # it ended between the listing and now
    refs = [(name, h.status.remote()) for name, h in handles]
    deadline = time.monotonic() + timeout
    for name, ref in refs:
        instance, tenant, index, _ = name.split("/", 3)
        row: dict[str, Any] = {
            "instance": instance,
            "tenant": tenant,
            "index": index,
            "actor": name,
        }
        handle = dict(handles)[name]
        try:
            row.update(ray.get(ref, timeout=max(0.05, deadline - time.monotonic())))
            row["state"] = "LOST (no files to reload)" if row.get("lost") else "ALIVE"
        except Exception as exc:
            row["state"] = f"{actor_state(handle) or 'UNREACHABLE'} ({type(exc).__name__})"
        row["restarts"] = actor_restarts(handle)
        rows.append(row)
    return rows


def niced(states: list[dict[str, Any]], mine: int) -> list[int]:
    """The nicenesses above ``mine`` among replica statuses: replicas of a cluster started
    without :func:`cluster_config` (Ray's 15), which fall far behind any busy process."""
    return sorted({int(st["niceness"]) for st in states if int(st.get("niceness", mine)) > mine})


def _gcs_info(actor: Any) -> dict[str, Any]:
    """What Ray's control store says of ``actor`` (state, restarts), or {} if it cannot say.

    ``ray._private.state.actors`` reads the GCS directly; Ray's public state API needs the
    dashboard's server, which this backend does not start."""
    try:
        from ray._private import state

        return dict(state.actors(actor_id=actor._actor_id.hex()) or {})
    except Exception:
        return {}


def actor_state(actor: Any) -> str | None:
    """``ALIVE``, ``RESTARTING``, ``DEAD``, ... for an actor; None if Ray cannot tell."""
    return _gcs_info(actor).get("State")


def actor_restarts(actor: Any) -> int | None:
    return _gcs_info(actor).get("NumRestarts")


def _actor_class() -> type:
    from faissx_core.server.ray_actors import ShardReplica

    return ShardReplica


def _no_refs(name: str, path: str = "") -> Any:
    raise UnsupportedOperation(
        f"an index built from another index ({name!r}) is not supported with --backend ray"
    )


def _serialize(index: Any) -> np.ndarray:
    writer = (
        faiss.serialize_index_binary
        if isinstance(index, faiss.IndexBinary)
        else faiss.serialize_index
    )
    return writer(index)


def _write_template(folder: Path, index: Any) -> None:
    tmp = folder / "template.faiss.tmp"
    tmp.write_bytes(_serialize(index).tobytes())
    tmp.replace(folder / "template.faiss")


def _read_template(folder: Path) -> Any:
    from faissx_core.server.ops import deserialize

    template = np.frombuffer((folder / "template.faiss").read_bytes(), dtype=np.uint8)
    return deserialize(template, trusted=True)  # our own file


def _apply_again(call: tuple[str, Any, dict[str, np.ndarray]], rep: Replica, number: int) -> Any:
    """Send a shard's ``call`` to ``rep`` again, under the sequence number it expects."""
    return rep.actor.apply.remote(number, *call)


def _is_ivf(index: Any) -> bool:
    return hasattr(
        faiss.downcast_index(index) if isinstance(index, faiss.Index) else index, "nlist"
    )


def _rows(record: LogRecord) -> int:
    x = record.arrays.get("x")
    return int(x.shape[0]) if x is not None and x.ndim == 2 else 0


def _missing(managed: ShardedIndex, answers: dict[int, Any]) -> dict[str, Any]:
    missing = [s for s in range(managed.placement.shards) if s not in answers]
    return {"missing_shards": missing} if missing else {}
