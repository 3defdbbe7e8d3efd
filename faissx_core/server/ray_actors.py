"""One replica of one shard of an index: the Ray actor behind ``--backend ray``.

A replica holds a faiss object and, when the server has a data directory, its own snapshot +
log (the same :class:`~faissx_core.server.storage.FileStore` a single server uses) in a
directory the front end names. Ray restarts a killed replica (``max_restarts=-1``) by running
``__init__`` again with the same arguments, so ``__init__`` is where it reloads: snapshot, then
every logged write, before it answers anything.

Every write carries the shard's sequence number from the front end. A replica applies write
``n`` only after ``n - 1``; a repeat of a number it has seen (the front end re-sending after an
actor died mid-call) is answered without applying it again; a number past the next one is
reported as a gap, and the front end copies a healthy replica's state over this one. A write
faiss refuses still uses up its number (a ``skip`` record in the log), so replicas never
disagree about which numbers exist. The number is in every log record's idempotency field and
in each snapshot's envelope spec, so it survives restarts.

This module imports Ray lazily: the class is plain Python, made an actor by the backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faissx_core.errors import FaissxError
from faissx_core.plugins import PluginRegistry
from faissx_core.server.backend import ManagedIndex
from faissx_core.server.ops import OPS, deserialize
from faissx_core.server.storage import FileStore, LogRecord, StoredIndex
from faissx_core.specs import IndexSpec

#: The envelope a replica's snapshot is saved under: the index's own spec, the wrapping, the
#: last sequence number the snapshot contains.
ENVELOPE = "ShardReplica"
#: Ops that act on the index inside the id map a replica wraps around self-numbering types.
INNER_OPS = frozenset({"get_parameter", "set_parameter", "set_direct_map_type"})
#: The log record of a write faiss refused: it changed nothing but used up its number.
SKIP = "skip"
#: One tenant/name inside a replica's own store directory.
_T, _N = "shard", "replica"

Outcome = tuple[Any, ...]


class ShardReplica:
    """A replica: ``apply`` numbered writes, answer reads, report status, hand over state."""

    def __init__(
        self,
        tenant: str,
        name: str,
        shard: int,
        replica: int,
        spec: dict[str, Any],
        template: bytes,
        wrap: bool,
        plugins: list[str] | None,
        root: str | None,
        fsync: str = "always",
        snapshot_bytes: int = 64 << 20,
    ) -> None:
        import ray  # only inside an actor

        self.tenant, self.name, self.shard, self.replica = tenant, name, shard, replica
        self.spec = IndexSpec.model_validate(spec)
        self.wrap = wrap
        self.registry = PluginRegistry(plugins)
        self.itype = self.registry.index_type(self.spec.type)
        self.snapshot_bytes = snapshot_bytes
        self.seq = 0
        #: Set when Ray restarted this replica without a store: its vectors are gone, and it
        #: says so instead of answering from an empty index.
        self.lost = False
        self.store = FileStore(Path(root), fsync) if root else None  # type: ignore[arg-type]
        faiss.omp_set_num_threads(1)  # replicas share the machine's cores with each other
        #: Whether the store holds a generation of this replica (then snapshots are ``save``s),
        #: and whether what it holds is damaged (then the first snapshot ``replace``s it).
        self._on_disk = self._damaged = False
        stored = next(iter(self.store.load_all()), None) if self.store else None
        if isinstance(stored, StoredIndex):
            self._on_disk = True
            self._reload(stored)
        elif stored is not None:  # quarantined by the store: refuse until a peer's copy arrives
            self._damaged = self.lost = True
            self._install(np.frombuffer(template, dtype=np.uint8))
        else:
            self._install(np.frombuffer(template, dtype=np.uint8))
            if self.store is not None:
                self._save()
            elif ray.get_runtime_context().was_current_actor_reconstructed:
                self.lost = True

    # -- state -------------------------------------------------------------------------------
    def _install(self, data: np.ndarray) -> None:
        """Make ``data`` (faiss bytes of the unwrapped index) this replica's index."""
        inner = deserialize(data, trusted=True)  # the server's template of its own index
        if self.wrap:
            binary = isinstance(inner, faiss.IndexBinary)
            outer = (faiss.IndexBinaryIDMap2 if binary else faiss.IndexIDMap2)(inner)
        else:
            outer = inner
        self._set(outer, inner)

    def _set(self, outer: Any, inner: Any) -> None:
        self.outer, self.inner = outer, inner
        self.m = ManagedIndex(
            self.tenant, self.name, self.spec, self.itype, inner, registry=self.registry
        )

    def _adopt(self, outer: Any) -> None:
        """Take a whole (wrapped, if wrapping) index, as loaded from a snapshot or a peer.

        ``outer`` comes from faiss's readers, already downcast and owning its C++ object; it
        must stay the object kept (a second, downcast proxy of it would not own the index and
        dangle once the first is collected). Its part is owned by it, so ``inner`` is a view.
        """
        if self.wrap:
            inner = outer.index
            inner = (
                faiss.downcast_index(inner)
                if isinstance(inner, faiss.Index)
                else (faiss.downcast_IndexBinary(inner))
            )
        else:
            inner = outer
        self._set(outer, inner)

    def _reload(self, stored: Any) -> None:
        envelope = stored.spec.params
        self.seq = int(envelope["seq"])
        self._adopt(stored.index)
        for record in stored.records:
            number = int(str(record.idem).split(":", 1)[1])
            if record.op != SKIP:
                self._run(record.op, OPS[record.op].parse(record.args), record.arrays)
            self.seq = number

    def _save(self) -> None:
        assert self.store is not None
        envelope = IndexSpec(
            type=ENVELOPE,
            params={"spec": self.spec.model_dump(), "seq": self.seq, "wrap": self.wrap},
        )
        if self._on_disk:
            self.store.save(_T, _N, envelope, 0.0, self.outer, [])
        elif self._damaged:  # the damaged files are backed up by the store, not removed
            self.store.replace(_T, _N, envelope, 0.0, self.outer, [])
        else:
            self.store.create(_T, _N, envelope, 0.0, self.outer, [])
        self._on_disk, self._damaged = True, False

    def _run(self, op: str, args: Any, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
        target = self.inner if op in INNER_OPS else self.outer
        job = OPS[op].prepare(self.m, args, arrays)
        try:
            return job(target)
        finally:
            if OPS[op].write:
                self.m.measure()

    # -- the front end's calls ---------------------------------------------------------------
    def apply(
        self, seq: int, op: str, args: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> Outcome:
        """Apply write number ``seq``: ("ok", result, arrays) | ("error", wire) | ("gap", seq)."""
        if self.lost:
            return ("lost", self.seq)
        if seq <= self.seq:
            return ("ok", self._info(), {})  # a repeat after a lost reply: already applied
        if seq != self.seq + 1:
            return ("gap", self.seq)
        try:
            result, out = self._run(op, OPS[op].parse(args), arrays)
            record = LogRecord(op, args, arrays, f"seq:{seq}")
            outcome: Outcome = ("ok", {**result, **self._info()}, out)
        except FaissxError as exc:
            record = LogRecord(SKIP, {}, {}, f"seq:{seq}")
            outcome = ("error", exc.to_wire())
        self.seq = seq
        if not self._log(record):
            return ("lost", self.seq)
        return outcome

    def replace(self, seq: int, data: bytes) -> Outcome:
        """Write number ``seq`` that swaps the whole index (the trained template after a
        front-end ``train``): installed and snapshotted at once."""
        if self.lost:
            return ("lost", self.seq)
        if seq <= self.seq:
            return ("ok", self._info(), {})
        if seq != self.seq + 1:
            return ("gap", self.seq)
        self._install(np.frombuffer(data, dtype=np.uint8))
        self.seq = seq
        if self.store is not None:
            self._save()
        return ("ok", self._info(), {})

    def read(self, op: str, args: Any, arrays: dict[str, np.ndarray]) -> Outcome:
        if self.lost:
            return ("lost", self.seq)
        try:
            result, out = self._run(op, args, arrays)
        except FaissxError as exc:
            return ("error", exc.to_wire())
        return ("ok", result, out)

    def export_state(self) -> tuple[bytes, int]:
        """This replica's whole index and its sequence number, to copy onto a lagging peer."""
        writer = (
            faiss.serialize_index_binary
            if isinstance(self.outer, faiss.IndexBinary)
            else faiss.serialize_index
        )
        return writer(self.outer).tobytes(), self.seq

    def restore(self, data: bytes, seq: int) -> int:
        """Become a copy of a peer (``export_state``), snapshotted before it is used."""
        reader = deserialize(np.frombuffer(data, dtype=np.uint8), trusted=True)  # a peer's
        self._adopt(reader)
        self.seq = seq
        self.lost = False
        if self.store is not None:
            self._save()
        return self.seq

    def snapshot(self) -> int:
        if self.store is not None and not self.lost:
            self._save()
        return self.seq

    def status(self) -> dict[str, Any]:
        import ray

        return {
            "shard": self.shard,
            "replica": self.replica,
            "pid": os.getpid(),
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
            "node": ray.get_runtime_context().get_node_id(),
            "seq": self.seq,
            "lost": self.lost,
            "durable": self.store is not None,
            **self._info(),
        }

    def destroy(self) -> None:
        """Forget the replica's files (the index was deleted); the caller then kills it."""
        if self.store is not None:
            self.store.delete(_T, _N)
            self.store.close()
            self.store = None

    def _info(self) -> dict[str, Any]:
        return {
            "ntotal": int(self.outer.ntotal),
            "is_trained": bool(self.outer.is_trained),
            "memory_bytes": int(self.m.memory_bytes),
        }

    def _log(self, record: LogRecord) -> bool:
        """Log a write before it is reported applied; False (and ``lost``) if the disk failed:
        memory is then ahead of disk, and the replica stops answering rather than lie."""
        if self.store is None:
            return True
        try:
            self.store.wait(self.store.append(_T, _N, record))
            if self.store.log_bytes(_T, _N) > self.snapshot_bytes:
                self._save()
        except OSError:
            self.lost = True
            return False
        return True
