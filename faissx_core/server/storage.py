"""The built-in filesystem store: snapshots plus a write-ahead log per index.

Layout under the data directory::

    <data_dir>/tenants/<tenant>/<index>/meta.json           {"format", "spec", "generation", ...}
    <data_dir>/tenants/<tenant>/<index>/snapshot-<G>.faiss  faiss.write_index output
    <data_dir>/tenants/<tenant>/<index>/wal-<G>.log         every mutation since snapshot G
    <data_dir>/tenants/<tenant>/<index>/keys-<G>.msgpack    idempotency keys folded into snapshot G
    <data_dir>/damaged/<tenant>/<index>-<UTC time>/         what ``repair`` set aside, byte for byte

The promise: a mutation is acknowledged only after its log record is written (and, with
``fsync="always"`` or ``"batch"``, on disk), so recovery = load snapshot G + replay log G gives
back every acknowledged write. A snapshot is a new generation: snapshot G+1, its keys and an
empty log G+1 are written and fsynced first, then ``meta.json`` is atomically replaced to name
G+1 (the commit point), then generation G's files are removed. A change to several indices at
once (``merge_from``) commits through one intent file naming every new generation, which
recovery rolls forward. A create is built in a hidden directory renamed into place; a delete
renames the directory out of sight before removing it: neither is ever seen half done.

A log record is ``MAGIC | u32 length | u32 crc32 | payload``; the payload is a msgpack header
(op, args, array descriptors, idempotency key) followed by the raw array bytes, the same shape
as a wire message. Recovery tells two failures apart:

* a **torn tail** -- nothing valid follows the first bad record -- is what a crash mid-append
  leaves; that record was never acknowledged, so it is cut off;
* **damage** -- a valid record follows the bad one -- means acknowledged writes sit behind
  garbage. Nothing is cut: the index is quarantined (:class:`Damage`) with every byte kept,
  until an operator repairs or drops it. The same goes for a missing or unreadable
  ``meta.json``, snapshot, keys file or log, and for an unreadable index directory.

Tenant and index names are validated identifiers (``tenancy.check_name``) before they become
path components.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import msgpack
import numpy as np

from faissx_core import readers
from faissx_core.errors import faiss_reason
from faissx_core.hookspecs import hookimpl
from faissx_core.protocol import decode, encode
from faissx_core.server.groupcommit import Committer, OpenLog, Release, Ticket
from faissx_core.settings import ServerSettings
from faissx_core.specs import IMPORTED, IndexSpec, faiss_class_name
from faissx_core.tenancy import check_name

FORMAT_VERSION = 1
MAGIC = b"FXL1"
#: Held (flock) by the server that owns a data directory: a second server, or a restore, is
#: refused instead of interleaving writes with it.
LOCK_FILE = ".lock"
#: Where ``repair`` sets a damaged index's files aside (outside ``tenants/``: never loaded).
DAMAGED_DIR = "damaged"
_PREFIX = struct.Struct("<4sII")  # magic, payload length, crc32 of payload
#: Files of generation N in an index directory; anything else there is left alone.
_GENERATION_FILE = re.compile(r"^(snapshot|wal|keys)-(\d+)\.(faiss|log|msgpack)(\.tmp)?$")
#: Test hook: ``FAISSX_TEST_CRASH_AT=point:N`` exits abruptly at the N-th pass through a named
#: point of a commit (see :class:`CrashPoints`); unset in production.
CRASH_AT_ENV = "FAISSX_TEST_CRASH_AT"
#: Test hook: ``FAISSX_TEST_FAIL_SYNC=N`` makes the N-th ``fdatasync`` of a log by the committer
#: fail with EIO (as a failing disk would); unset in production.
FAIL_SYNC_ENV = "FAISSX_TEST_FAIL_SYNC"
FsyncMode = Literal["always", "batch", "off"]
log = logging.getLogger(__name__)


@dataclass
class LogRecord:
    """One mutation, exactly as the server applied it."""

    op: str
    args: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    idem: str | None = None


@dataclass
class RememberedKey:
    """An idempotency key whose write is folded into a snapshot, with the reply it got."""

    key: str
    op: str
    #: ``time.time()`` when the write was applied (old keys are not carried forever).
    saved: float
    #: The reply's frames (header first), as the server sent them.
    reply: list[bytes]


@dataclass
class StoredIndex:
    tenant: str
    name: str
    spec: IndexSpec
    created: float
    index: Any
    records: list[LogRecord]
    #: What recovery cut from the log's torn tail, if anything (for the operator's log).
    dropped: str | None = None
    #: Keys folded into the snapshot (records' own keys come with the records).
    keys: list[RememberedKey] = field(default_factory=list)


@dataclass
class Damage:
    """A stored index that cannot be served as it is: quarantined, every byte kept."""

    tenant: str
    name: str
    path: Path
    reason: str
    #: (key, op) of every write found intact in its files: a retry must not apply them anew.
    keys: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class LogScan:
    """What a log holds: the valid prefix, why it ends, and valid records beyond the end."""

    records: list[LogRecord]
    good: int
    problem: str | None
    #: Valid records after the problem: when there are any, the log is damaged, not torn.
    later: list[LogRecord] = field(default_factory=list)


class IndexStore(Protocol):
    """What the server needs from a store. Calls for one index are serialised by its lock."""

    def create(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> None:
        """Write a new index's first generation; nothing is left behind if this raises."""

    def save(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> None:
        """Snapshot ``index`` atomically and empty its log (caller excludes writers)."""

    def save_many(self, tenant: str, entries: list[SaveEntry]) -> None:
        """Snapshot several indices of one tenant as one commit (all or none)."""

    def append(self, tenant: str, name: str, record: LogRecord) -> Ticket | None:
        """Write ``record`` to the index's log; returns a ticket for :meth:`wait` (None: it is
        as durable as the fsync policy asks already)."""

    def wait(self, ticket: Ticket | None) -> None:
        """Return once the record behind ``ticket`` is as durable as the fsync policy says."""

    def log_bytes(self, tenant: str, name: str) -> int:
        """Size of the log since the last snapshot (the server snapshots past a threshold)."""

    def delete(self, tenant: str, name: str) -> None:
        """Forget the index; a later ``load_all`` must not return it."""

    def load_all(self) -> Iterator[StoredIndex | Damage]:
        """Every stored index with the log records to replay, or why it is quarantined."""

    def salvage(self, tenant: str, name: str) -> tuple[StoredIndex, str]:
        """A damaged index's intact part, and what was left out of it."""

    def replace(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> Path:
        """Back a damaged index's files up, then commit ``index`` as its new generation."""

    def drop(self, tenant: str, name: str) -> None:
        """Delete a quarantined index's files: the operator asked for it by name."""

    def path_of(self, tenant: str, name: str) -> Path:
        """Where the index's files are (for messages to the operator)."""

    def close(self) -> None:
        """Flush and close logs."""


@dataclass
class SaveEntry:
    """One index's part of a multi-index commit."""

    name: str
    spec: IndexSpec
    created: float
    index: Any
    keys: list[RememberedKey]


class CrashPoints:
    """Deterministic crashes for tests: ``FAISSX_TEST_CRASH_AT=create:staged:1`` makes the
    process exit abruptly (``os._exit``, as ``kill -9`` would stop it) the first time a
    create has staged its files. Off unless the variable is set."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.count = 0
        if spec:
            point, _, nth = spec.rpartition(":")
            self.point, self.count = point, int(nth)
            log.warning(
                "%s=%s: this server will exit abruptly there (a test hook)", CRASH_AT_ENV, spec
            )

    def __call__(self, point: str) -> None:
        if self.point != point:
            return
        self.count -= 1
        if self.count <= 0:
            log.warning("%s: exiting at %s", CRASH_AT_ENV, point)
            logging.shutdown()
            os._exit(75)


def encode_record(record: LogRecord) -> list[Any]:
    """The record as buffers to write in order: prefix, header, then each array's bytes."""
    header, *arrays = encode(
        {"op": record.op, "args": record.args, "idem": record.idem}, record.arrays
    )
    # an empty array (a zero-row add, which faiss takes as a no-op) is no bytes: memoryview
    # cannot cast a view with a zero in its shape
    parts = [
        struct.pack("<I", len(header)),
        header,
        *(memoryview(a).cast("B") if a.size else b"" for a in arrays),
    ]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    length = sum(len(p) for p in parts)
    return [_PREFIX.pack(MAGIC, length, crc), *parts]


def _after(parts: list[Any], done: int) -> list[memoryview]:
    """Views of what follows the first ``done`` bytes of ``parts`` (a record is not copied
    to finish a short write)."""
    rest = []
    for part in parts:
        view = memoryview(part)
        if done >= view.nbytes:
            done -= view.nbytes
            continue
        rest.append(view[done:])
        done = 0
    return rest


def read_records(data: memoryview) -> tuple[list[LogRecord], int, str | None]:
    """Records from a log's bytes: (records, bytes of good prefix, why the rest was dropped)."""
    records: list[LogRecord] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _PREFIX.size:
            return records, pos, f"torn record header at byte {pos}"
        magic, length, crc = _PREFIX.unpack_from(data, pos)
        body = data[pos + _PREFIX.size : pos + _PREFIX.size + length]
        if magic != MAGIC:
            return records, pos, f"bad record marker at byte {pos}"
        if len(body) < length:
            return records, pos, f"torn record at byte {pos} ({len(body)} of {length} bytes)"
        if zlib.crc32(body) != crc:
            return records, pos, f"checksum mismatch in record at byte {pos}"
        try:
            records.append(_parse(body))
        except Exception as exc:  # a checksummed record we cannot parse: stop, don't guess
            return records, pos, f"unreadable record at byte {pos}: {exc}"
        pos += _PREFIX.size + length
    return records, pos, None


def scan_log(data: bytes) -> LogScan:
    """Read a log and look past its first bad record for later valid ones.

    A crash mid-append leaves garbage only at the very end. A valid record (marker, length and
    CRC-32 all right) anywhere after a bad one means the bad bytes sit in the middle of
    acknowledged history: damage, which must be kept, not cut.
    """
    view = memoryview(data)
    records, good, problem = read_records(view)
    scan = LogScan(records, good, problem)
    if problem is None:
        return scan
    pos = data.find(MAGIC, good + 1)
    while pos >= 0:
        found = _record_at(view, pos)
        if found is None:
            pos = data.find(MAGIC, pos + 1)
            continue
        record, size = found
        scan.later.append(record)
        pos += size
        if pos < len(data) and data[pos : pos + len(MAGIC)] != MAGIC:
            pos = data.find(MAGIC, pos + 1)
    return scan


def _record_at(data: memoryview, pos: int) -> tuple[LogRecord, int] | None:
    """The valid record starting at ``pos`` and its size, or None."""
    if len(data) - pos < _PREFIX.size:
        return None
    magic, length, crc = _PREFIX.unpack_from(data, pos)
    body = data[pos + _PREFIX.size : pos + _PREFIX.size + length]
    if magic != MAGIC or len(body) < length or zlib.crc32(body) != crc:
        return None
    try:
        return _parse(body), _PREFIX.size + length
    except Exception:
        return None


def _parse(body: memoryview) -> LogRecord:
    (hlen,) = struct.unpack_from("<I", body, 0)
    header_bytes = body[4 : 4 + hlen]
    header = msgpack.unpackb(header_bytes, raw=False)
    frames: list[Any] = [header_bytes]
    pos = 4 + hlen
    for desc in header.get("arrays", []):
        size = int(np.prod(desc["shape"], dtype=np.int64)) * np.dtype(desc["dtype"]).itemsize
        frames.append(body[pos : pos + size])
        pos += size
    _, arrays = decode(frames)
    # copies: the log's buffer is released after recovery, the replayed index keeps nothing
    return LogRecord(
        header["op"],
        header.get("args") or {},
        {k: np.array(v) for k, v in arrays.items()},
        header.get("idem"),
    )


def encode_keys(keys: list[RememberedKey]) -> bytes:
    return msgpack.packb([[k.key, k.op, k.saved, k.reply] for k in keys], use_bin_type=True)


def decode_keys(data: bytes) -> list[RememberedKey]:
    return [
        RememberedKey(str(k), str(op), float(saved), [bytes(f) for f in reply])
        for k, op, saved, reply in msgpack.unpackb(data, raw=False)
    ]


class FileStore:
    def __init__(self, root: Path, fsync: FsyncMode = "always") -> None:
        self.root = root
        self.fsync = fsync
        (root / "tenants").mkdir(parents=True, exist_ok=True)
        self._lock_file = open(root / LOCK_FILE, "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ValueError(f"data dir {root} is in use by another FAISSx server") from None
        self._logs: dict[tuple[str, str], OpenLog] = {}  # open logs
        self._sizes: dict[tuple[str, str], int] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._mutex = threading.Lock()
        self.crash = CrashPoints(os.environ.get(CRASH_AT_ENV))
        self._syncs = 0
        self._fail_sync = int(os.environ.get(FAIL_SYNC_ENV) or 0)
        if self._fail_sync:
            log.warning(
                "%s=%d: a log fdatasync will fail (a test hook)", FAIL_SYNC_ENV, self._fail_sync
            )
        #: Group commit (groupcommit.py): with ``always`` or ``batch``, one thread syncs every
        #: log written since its last pass and then releases the replies waiting for them.
        #: Its ``on_failure`` is set by the backend (a failed sync marks the index broken).
        self.committer = Committer(self._sync)
        #: Told how long each log fsync (``"fsync"``) and snapshot (``"snapshot"``) took and
        #: whether it succeeded: the server's metrics set it; None records nothing.
        self.timings: Callable[[str, float, bool], None] | None = None

    def _timed(self, what: str, step: Callable[[], Any]) -> Any:
        """Run ``step``, telling :attr:`timings` how long it took (its error still raises)."""
        if self.timings is None:
            return step()
        start = time.perf_counter()
        ok = False
        try:
            result = step()
            ok = True
            return result
        finally:
            self.timings(what, time.perf_counter() - start, ok)

    def _dir(self, tenant: str, name: str) -> Path:
        return self.root / "tenants" / check_name(tenant, "tenant id") / check_name(name)

    def path_of(self, tenant: str, name: str) -> Path:
        """Where the index's files are (for messages to the operator)."""
        return self._dir(tenant, name)

    # -- generations -------------------------------------------------------------------------
    def _write_generation(
        self,
        folder: Path,
        gen: int,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> dict[str, Any]:
        """Snapshot, keys and an empty log of generation ``gen``, all on disk; the meta.json
        that would commit them is returned, not written."""
        binary = isinstance(index, faiss.IndexBinary)
        tmp = folder / f"snapshot-{gen}.faiss.tmp"
        try:
            (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
        except RuntimeError as exc:  # faiss reports a failed write (EFBIG, ENOSPC) this way
            raise OSError(f"cannot write {tmp.name}: {faiss_reason(str(exc))}") from None
        _fsync_rename(tmp, folder / f"snapshot-{gen}.faiss", sync_dir=False)
        tmp = folder / f"keys-{gen}.msgpack.tmp"
        _write_synced(tmp, encode_keys(keys))
        _fsync_rename(tmp, folder / f"keys-{gen}.msgpack", sync_dir=False)
        fd = os.open(folder / f"wal-{gen}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_path(folder)
        return {
            "format": FORMAT_VERSION,
            "spec": spec.model_dump(),
            "created": created,
            "binary": binary,
            "generation": gen,
            "keys": True,
            "saved": time.time(),
        }

    @staticmethod
    def _commit_meta(folder: Path, meta: dict[str, Any]) -> None:
        tmp = folder / "meta.json.tmp"
        _write_synced(tmp, json.dumps(meta).encode())
        _fsync_rename(tmp, folder / "meta.json")  # the commit point

    def _unstage(self, staging: Path) -> None:
        """Remove a create's staging directory by the names it can hold: listing a directory
        takes a file descriptor, which a create that failed for lack of them does not have."""
        self._remove_generation(staging, 1)
        for name in ("meta.json", "meta.json.tmp"):
            with contextlib.suppress(OSError):
                (staging / name).unlink(missing_ok=True)
        try:
            staging.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)

    def _remove_generation(self, folder: Path, gen: int) -> None:
        for stem in (f"snapshot-{gen}.faiss", f"keys-{gen}.msgpack", f"wal-{gen}.log"):
            for path in (folder / stem, folder / f"{stem}.tmp"):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def _switch(self, key: tuple[str, str], gen: int) -> int | None:
        """Point appends at generation ``gen``'s (empty) log; returns the old generation.

        Called once generation ``gen`` is committed: its snapshot holds every record of the
        old log, so the replies held on them are released as durable."""
        with self._mutex:
            old_log = self._logs.pop(key, None)
            self._sizes[key] = 0
            old = self._generations.get(key)
            self._generations[key] = gen
        if old_log is not None:
            self.committer.retire(old_log)  # waits for a sync of it under way
            with contextlib.suppress(OSError):
                os.close(old_log.fd)
        return old

    def _check_log(self, key: tuple[str, str]) -> None:
        """Refuse to snapshot an index whose log failed to sync: its memory may hold writes
        that were answered with an error, which a snapshot would make durable."""
        with self._mutex:
            olog = self._logs.get(key)
        if olog is not None and olog.failed is not None:
            raise OSError(
                f"not snapshotted: its write-ahead log could not be synced ({olog.failed})"
            )

    # -- create, snapshot, multi-index commit --------------------------------------------
    def create(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> None:
        final = self._dir(tenant, name)
        if os.path.lexists(final):
            raise FileExistsError(f"{final} already exists")
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = parent / f".creating-{name}-{uuid.uuid4().hex[:8]}"
        renamed = False
        try:
            staging.mkdir()
            self._commit_meta(
                staging, self._write_generation(staging, 1, spec, created, index, keys)
            )
            self.crash("create:staged")
            os.rename(staging, final)
            renamed = True
            _fsync_path(parent)
            self.crash("create:committed")
        except BaseException:
            if renamed:  # on disk but not durably: take it back, the create is refused
                self._discard(final)
            self._unstage(staging)
            raise
        self._switch((tenant, name), 1)

    def save(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> None:
        self._timed("snapshot", lambda: self._save(tenant, name, spec, created, index, keys))

    def _save(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> None:
        key = (tenant, name)
        folder = self._dir(tenant, name)
        old = self._generations.get(key)
        if old is None or not folder.is_dir():
            raise FileNotFoundError(f"{tenant}/{name} has no directory to snapshot into")
        gen = old + 1
        committed = False
        try:
            meta = self._write_generation(folder, gen, spec, created, index, keys)
            self.crash("save:prepared")
            self._check_log(key)
            self._commit_meta(folder, meta)
            committed = True
        except BaseException:
            if not committed:
                self._remove_generation(folder, gen)
            raise
        self.crash("save:committed")
        self._switch(key, gen)
        self._remove_generation(folder, old)

    def save_many(self, tenant: str, entries: list[SaveEntry]) -> None:
        """One commit for several indices: each new generation is written, then one intent
        file names them all (the commit point), then each ``meta.json`` is switched.
        Recovery finishes an intent it finds (:meth:`_finish_commits`)."""
        if len(entries) == 1:
            e = entries[0]
            self.save(tenant, e.name, e.spec, e.created, e.index, e.keys)
            return
        self._timed("snapshot", lambda: self._save_many(tenant, entries))

    def _save_many(self, tenant: str, entries: list[SaveEntry]) -> None:
        tenant_dir = self.root / "tenants" / check_name(tenant, "tenant id")
        plan: list[tuple[str, Path, int, int, dict[str, Any]]] = []
        intent = tenant_dir / f".commit-{uuid.uuid4().hex[:12]}.json"
        try:
            for e in entries:
                folder = self._dir(tenant, e.name)
                old = self._generations.get((tenant, e.name))
                if old is None or not folder.is_dir():
                    raise FileNotFoundError(f"{tenant}/{e.name} has no directory to write into")
                plan.append((e.name, folder, old, old + 1, {}))
                plan[-1][4].update(
                    self._write_generation(folder, old + 1, e.spec, e.created, e.index, e.keys)
                )
            self.crash("commit:prepared")
            for e in entries:
                self._check_log((tenant, e.name))
            tmp = intent.with_name(intent.name + ".tmp")
            _write_synced(
                tmp,
                json.dumps(
                    {"indices": [{"name": n, "meta": m} for n, _, _, _, m in plan]}
                ).encode(),
            )
            _fsync_rename(tmp, intent)  # the commit point for all of them
        except BaseException:
            for _, folder, _, gen, _ in plan:
                self._remove_generation(folder, gen)
            with contextlib.suppress(OSError):
                intent.with_name(intent.name + ".tmp").unlink(missing_ok=True)
            raise
        self.crash("commit:intent")
        # Committed: from here on failures are logged, and the next start finishes the job.
        for name, _, _, gen, _ in plan:
            self._switch((tenant, name), gen)
        try:
            for number, (_, folder, _, _, meta) in enumerate(plan):
                self._commit_meta(folder, meta)
                if number == 0:
                    self.crash("commit:meta")
            intent.unlink()
            _fsync_path(tenant_dir)
        except OSError as exc:
            log.error(
                "%s: a committed multi-index change is not fully switched over yet "
                "(%s); %s finishes it at the next start",
                tenant,
                exc,
                intent,
            )
            return
        for _, folder, old, _, _ in plan:
            self._remove_generation(folder, old)

    def _finish_commits(self, tenant_dir: Path) -> bool:
        """Roll committed multi-index changes forward; drop ones that never committed.
        False when an intent cannot be read: then no newer-generation file in the tenant may
        be taken for an uncommitted leftover."""
        for tmp in tenant_dir.glob(".commit-*.json.tmp"):
            tmp.unlink()
        sure = True
        for intent in sorted(tenant_dir.glob(".commit-*.json")):
            try:
                plan = json.loads(intent.read_text())
                self._finish_commit(tenant_dir, plan)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error(
                    "%s cannot be finished (%s): kept, with every newer-generation file of %s",
                    intent,
                    exc,
                    tenant_dir,
                )
                sure = False
                continue
            intent.unlink()
            _fsync_path(tenant_dir)
        return sure

    def _finish_commit(self, tenant_dir: Path, plan: dict[str, Any]) -> None:
        """Switch each index the intent names forward to its committed generation."""
        for item in plan["indices"]:
            folder = tenant_dir / check_name(item["name"])
            meta = item["meta"]
            try:
                current = json.loads((folder / "meta.json").read_text())["generation"]
            except (OSError, ValueError, KeyError, TypeError):
                current = None
            if not folder.is_dir() or (current is not None and current >= meta["generation"]):
                continue  # deleted since, or already switched (and maybe snapshotted on)
            self._commit_meta(folder, meta)
            log.info("%s: finished a committed change (generation %d)", folder, meta["generation"])

    # -- the log -----------------------------------------------------------------------------
    def _log(self, tenant: str, name: str) -> OpenLog:
        key = (tenant, name)
        olog = self._logs.get(key)
        if olog is None:
            gen = self._generations.get(key)
            if gen is None:
                raise RuntimeError(f"{tenant}/{name} has no snapshot to log against")
            path = self._dir(tenant, name) / f"wal-{gen}.log"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND, 0o600)
            olog = OpenLog(key, fd)
            with self._mutex:
                self._logs[key] = olog
                self._sizes.setdefault(key, os.fstat(fd).st_size)
        return olog

    def append(self, tenant: str, name: str, record: LogRecord) -> Ticket | None:
        """Write ``record`` (to the page cache) and return its ticket: with ``always`` or
        ``batch`` it is on disk once the committer settles the ticket (:meth:`wait`,
        :meth:`when_durable`); with ``off`` there is nothing to wait for (None). Appends to
        one log are serialised by its index's write lock."""
        olog = self._log(tenant, name)
        if olog.failed is not None:
            raise OSError(f"its write-ahead log could not be synced earlier ({olog.failed})")
        parts = encode_record(record)
        total = sum(len(p) for p in parts)
        written = os.writev(olog.fd, parts)
        while written < total:  # writev stops short past 2 GiB; the rest goes as views
            written += os.writev(olog.fd, _after(parts, written))
        self._sizes[(tenant, name)] = self._sizes.get((tenant, name), 0) + total
        if self.fsync == "off":
            return None
        return self.committer.written(olog)

    def wait(self, ticket: Ticket | None) -> None:
        """Block until ``ticket``'s record is on disk (OSError if it never will be)."""
        if ticket is not None:
            self.committer.wait(ticket)

    def when_durable(self, ticket: Ticket, release: Release) -> None:
        """Call ``release(None)`` on the committer's thread once ``ticket``'s record is on
        disk, or ``release(reason)`` if it never will be: how a held reply is sent."""
        self.committer.when_durable(ticket, release)

    def pending(self, tenant: str, name: str) -> Ticket | None:
        """With ``always``: the index's last record if it is not on disk yet, which a read's
        reply waits for (no reply shows a write that a crash could still undo). None with
        ``batch`` (a read may see writes whose shared sync is under way) and ``off``."""
        if self.fsync != "always":
            return None
        olog = self._logs.get((tenant, name))
        return self.committer.pending(olog) if olog is not None else None

    def settle(self, timeout: float = 10.0) -> bool:
        """Sync every written record and release every held reply (at shutdown)."""
        return self.committer.settle(timeout)

    def _sync(self, fd: int) -> None:
        """The committer's ``fdatasync`` of one log, timed (and failed on purpose by the
        ``FAISSX_TEST_FAIL_SYNC`` test hook)."""
        self._syncs += 1
        if self._syncs == self._fail_sync:
            log.warning("%s: failing fdatasync %d", FAIL_SYNC_ENV, self._syncs)
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected by {FAIL_SYNC_ENV})")
        self._timed("fsync", functools.partial(os.fdatasync, fd))

    def log_bytes(self, tenant: str, name: str) -> int:
        return self._sizes.get((tenant, name), 0)

    # -- delete ------------------------------------------------------------------------------
    def delete(self, tenant: str, name: str) -> None:
        with self._mutex:
            olog = self._logs.pop((tenant, name), None)
            self._sizes.pop((tenant, name), None)
            self._generations.pop((tenant, name), None)
        if olog is None:
            self._discard(self._dir(tenant, name))
            return
        # Replies held on its log are released once the delete is durable: the writes
        # they acknowledge are moot then (and refused if the delete fails).
        failure: str | None = "the index was being deleted"
        try:
            self._discard(self._dir(tenant, name))
            failure = None
        finally:
            self.committer.retire(olog, failure)  # waits for a sync of it under way
            os.close(olog.fd)

    def _discard(self, folder: Path) -> None:
        """Remove an index directory as one step: renamed out of sight (the commit), then
        removed; a crash in between leaves a hidden ``.deleting-*`` that the next start
        finishes removing."""
        if not os.path.lexists(folder):
            return
        gone = folder.with_name(f".deleting-{folder.name}-{uuid.uuid4().hex[:8]}")
        os.rename(folder, gone)
        _fsync_path(folder.parent)
        self.crash("delete:renamed")
        if gone.is_dir() and not gone.is_symlink():
            shutil.rmtree(gone, ignore_errors=True)
        else:
            gone.unlink()

    # -- start-up ----------------------------------------------------------------------------
    def load_all(self) -> Iterator[StoredIndex | Damage]:
        for tenant_dir in sorted((self.root / "tenants").iterdir()):
            if not tenant_dir.is_dir():
                continue
            sure = self._finish_commits(tenant_dir)
            for entry in sorted(tenant_dir.iterdir()):
                if entry.name.startswith((".creating-", ".deleting-")):
                    # a create that never committed, or a delete that did
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    continue
                if entry.name.startswith("."):
                    continue
                try:
                    check_name(entry.name)
                except Exception:
                    log.warning("ignoring %s: not an index name", entry)
                    continue
                yield self._open(tenant_dir.name, entry, sure)

    def _open(self, tenant: str, folder: Path, sure: bool = True) -> StoredIndex | Damage:
        name = folder.name
        try:
            files = {p.name for p in folder.iterdir()}
        except OSError as exc:
            return Damage(tenant, name, folder, f"the index directory cannot be read: {exc}")
        try:
            meta = self._meta(folder, files)
            gen = int(meta["generation"])
            spec = IndexSpec.model_validate(meta["spec"])
        except Exception as exc:
            return self._damage(tenant, folder, files, str(exc))
        try:
            index = self._snapshot(folder, gen, bool(meta.get("binary")))
            keys = self._keys(folder, gen) if meta.get("keys") else []
            wal = folder / f"wal-{gen}.log"
            if not wal.is_file():
                raise ValueError(f"{wal.name} (the log of generation {gen}) is missing")
            data = wal.read_bytes()
            scan = scan_log(data)
            if scan.later:
                raise ValueError(
                    f"{wal.name} is damaged in the middle: {scan.problem}, and "
                    f"{len(scan.later)} valid record(s) follow it (acknowledged writes "
                    "behind the damage; nothing was cut)"
                )
            stray = self._stray_logs(folder, files, gen)
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} hold records but meta.json names generation {gen}"
                )
        except Exception as exc:
            return self._damage(tenant, folder, files, str(exc))
        dropped = None
        if scan.problem is not None:  # a torn tail: never acknowledged, cut it off
            with open(wal, "r+b") as f:
                f.truncate(scan.good)
                f.flush()
                os.fsync(f.fileno())
            dropped = f"{scan.problem}; {len(data) - scan.good} byte(s) dropped"
        self._clean_leftovers(folder, files, gen, newer=sure)
        self._generations[(tenant, name)] = gen
        return StoredIndex(tenant, name, spec, meta["created"], index, scan.records, dropped, keys)

    @staticmethod
    def _meta(folder: Path, files: set[str]) -> dict[str, Any]:
        if "meta.json" not in files:
            raise ValueError("meta.json is missing")
        text = (folder / "meta.json").read_text()
        if not text.strip():
            raise ValueError("meta.json is empty")
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"meta.json is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or "generation" not in meta or "spec" not in meta:
            raise ValueError("meta.json lacks its generation or spec")
        return meta

    @staticmethod
    def _snapshot(folder: Path, gen: int, binary: bool) -> Any:
        path = folder / f"snapshot-{gen}.faiss"
        if not path.is_file():
            raise ValueError(f"{path.name} (the snapshot meta.json names) is missing")
        try:
            return readers.read_index_file(path, binary=binary)
        except RuntimeError as exc:
            raise ValueError(f"{path.name} cannot be read by faiss: {exc}") from None

    @staticmethod
    def _keys(folder: Path, gen: int) -> list[RememberedKey]:
        path = folder / f"keys-{gen}.msgpack"
        try:
            return decode_keys(path.read_bytes())
        except FileNotFoundError:
            raise ValueError(f"{path.name} (named by meta.json) is missing") from None
        except Exception as exc:
            raise ValueError(f"{path.name} is unreadable: {exc}") from None

    @staticmethod
    def _stray_logs(folder: Path, files: set[str], gen: int) -> list[str]:
        """Logs of a later generation that hold bytes: writes meta.json does not account for."""
        stray = []
        for name in files:
            match = _GENERATION_FILE.match(name)
            if (
                match
                and match.group(1) == "wal"
                and int(match.group(2)) > gen
                and (folder / name).stat().st_size > 0
            ):
                stray.append(name)
        return sorted(stray)

    def _clean_leftovers(self, folder: Path, files: set[str], gen: int, newer: bool) -> None:
        """Remove files of other generations: older ones are folded into snapshot ``gen``,
        newer ones never committed (their logs are empty: :meth:`_stray_logs` checked; kept
        unless ``newer``). Files of any other name are left alone."""
        for name in files:
            match = _GENERATION_FILE.match(name)
            number = int(match.group(2)) if match else gen
            if (
                number < gen
                or (number > gen and newer)
                or name == "meta.json.tmp"
                or (match and match.group(4) and (number <= gen or newer))
            ):
                (folder / name).unlink(missing_ok=True)

    def _damage(self, tenant: str, folder: Path, files: set[str], reason: str) -> Damage:
        """Quarantine: nothing in ``folder`` is changed; keys of intact writes are gathered."""
        keys: dict[str, str] = {}
        for name in sorted(files):
            match = _GENERATION_FILE.match(name)
            if not match or match.group(4):
                continue
            try:
                if match.group(1) == "keys":
                    keys.update((k.key, k.op) for k in decode_keys((folder / name).read_bytes()))
                elif match.group(1) == "wal":
                    scan = scan_log((folder / name).read_bytes())
                    keys.update((r.idem, r.op) for r in scan.records + scan.later if r.idem)
            except Exception as exc:
                log.debug("%s: no keys from %s: %s", folder, name, exc)
        return Damage(tenant, folder.name, folder, reason, list(keys.items()))

    # -- repair ------------------------------------------------------------------------------
    def salvage(self, tenant: str, name: str) -> tuple[StoredIndex, str]:
        """The intact part of a damaged index: the newest readable snapshot, its keys, and
        its log's records up to the first bad one. Raises ValueError when there is no
        snapshot to start from."""
        folder = self._dir(tenant, name)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a readable directory: nothing to rebuild from")
        files = {p.name for p in folder.iterdir()}
        notes = []
        try:
            meta = self._meta(folder, files)
            gens = [int(meta["generation"])]
            spec = IndexSpec.model_validate(meta["spec"])
            created = float(meta.get("created", time.time()))
        except Exception as exc:
            notes.append(f"{exc}: rebuilt as an imported index")
            meta, spec, created = {}, None, time.time()
            gens = sorted(
                {
                    int(m.group(2))
                    for m in map(_GENERATION_FILE.match, files)
                    if m and m.group(1) == "snapshot" and not m.group(4)
                },
                reverse=True,
            )
        for gen in gens:
            try:
                index = self._snapshot(folder, gen, bool(meta.get("binary")))
                break
            except ValueError:
                try:
                    index = self._snapshot(folder, gen, not meta.get("binary"))
                    break
                except ValueError as exc:
                    notes.append(str(exc))
        else:
            raise ValueError(
                f"no readable snapshot in {folder}: nothing to rebuild from "
                f"({'; '.join(notes) or 'no snapshot file'})"
            )
        if spec is None:
            spec = IndexSpec(type=IMPORTED.name, params={"faiss_class": faiss_class_name(index)})
        try:
            keys = self._keys(folder, gen) if f"keys-{gen}.msgpack" in files else []
        except ValueError as exc:
            notes.append(str(exc))
            keys = []
        records: list[LogRecord] = []
        wal = folder / f"wal-{gen}.log"
        if wal.is_file():
            scan = scan_log(wal.read_bytes())
            records = scan.records
            if scan.problem:
                notes.append(
                    f"{wal.name}: kept {len(scan.records)} record(s) before "
                    f"{scan.problem}; left out {len(scan.later)} valid record(s) "
                    "after it"
                )
        else:
            notes.append(f"{wal.name} is missing: the snapshot alone is rebuilt")
        stored = StoredIndex(tenant, name, spec, created, index, records, None, keys)
        return stored, "; ".join(notes) or "nothing was damaged"

    def replace(
        self,
        tenant: str,
        name: str,
        spec: IndexSpec,
        created: float,
        index: Any,
        keys: list[RememberedKey],
    ) -> Path:
        """Copy every file of the index into ``damaged/<tenant>/<name>-<time>/`` (synced),
        then commit ``index`` as a new generation in place; returns the backup's path."""
        folder = self._dir(tenant, name)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = self.root / DAMAGED_DIR / check_name(tenant, "tenant id") / f"{name}-{stamp}"
        suffix = 1
        while backup.exists():
            suffix += 1
            backup = backup.with_name(f"{name}-{stamp}-{suffix}")
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, backup)
        for path in backup.rglob("*"):
            if path.is_file():
                _fsync_path(path)
        _fsync_path(backup)
        _fsync_path(backup.parent)
        files = {p.name for p in folder.iterdir()}
        gens = [int(m.group(2)) for m in map(_GENERATION_FILE.match, files) if m]
        gen = max(gens, default=0) + 1
        try:
            meta = self._write_generation(folder, gen, spec, created, index, keys)
            self._commit_meta(folder, meta)
        except BaseException:
            self._remove_generation(folder, gen)
            raise
        for file in files:  # every one of them is in the backup
            if file != "meta.json" and (folder / file).is_file():
                (folder / file).unlink()
        _fsync_path(folder)
        self._switch((tenant, name), gen)
        return backup

    def drop(self, tenant: str, name: str) -> None:
        """Delete a quarantined index's files: the operator asked for it by name."""
        self.delete(tenant, name)

    def close(self) -> None:
        self.committer.close()
        with self._mutex:
            fds, self._logs = [o.fd for o in self._logs.values()], {}
        failures = []
        for fd in fds:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                failures.append(str(exc))
            finally:
                os.close(fd)
        self._lock_file.close()  # releases the flock
        if failures:
            raise OSError(
                f"{len(failures)} write-ahead log(s) could not be synced at shutdown: {failures[0]}"
            )


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so a rename or a new entry in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_rename(tmp: Path, final: Path, sync_dir: bool = True) -> None:
    _fsync_path(tmp)
    os.replace(tmp, final)
    if sync_dir:
        _fsync_path(final.parent)


@hookimpl(trylast=True)
def faissx_open_store(settings: ServerSettings) -> IndexStore | None:
    if settings.data_dir is None:
        return None
    return FileStore(settings.data_dir, settings.fsync)
