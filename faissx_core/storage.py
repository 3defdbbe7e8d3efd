"""The built-in filesystem store: snapshots plus a write-ahead log per index.

Layout under the data directory::

    <data_dir>/tenants/<tenant>/<index>/meta.json           {"format", "spec", "generation", ...}
    <data_dir>/tenants/<tenant>/<index>/snapshot-<G>.faiss  faiss.write_index output
    <data_dir>/tenants/<tenant>/<index>/wal-<G>.log         every mutation since snapshot G

The promise: a mutation is acknowledged only after its log record is written (and, with
``fsync="always"`` or ``"batch"``, on disk), so recovery = load snapshot G + replay log G gives
back every acknowledged write. A snapshot is a new generation: snapshot G+1 and an empty log
G+1 are written and fsynced first, then ``meta.json`` is atomically replaced to name G+1 (the
commit point), then generation G's files are removed. A crash anywhere leaves ``meta.json``
naming a complete pair: never a new snapshot with the old log replayed on top of it.

A log record is ``MAGIC | u32 length | u32 crc32 | payload``; the payload is a msgpack header
(op, args, array descriptors, idempotency key) followed by the raw array bytes, the same shape
as a wire message. A torn or corrupt tail (from a crash mid-append) fails its length or checksum
and is dropped with everything after it: such a record was never acknowledged.

Tenant and index names are validated identifiers (``tenancy.check_name``) before they become
path components.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import msgpack
import numpy as np

from faissx_core.hookspecs import hookimpl
from faissx_core.protocol import decode, encode
from faissx_core.settings import ServerSettings
from faissx_core.specs import IndexSpec
from faissx_core.tenancy import check_name

FORMAT_VERSION = 1
MAGIC = b"FXL1"
#: Held (flock) by the server that owns a data directory: a second server, or a restore, is
#: refused instead of interleaving writes with it.
LOCK_FILE = ".lock"
_PREFIX = struct.Struct("<4sII")  # magic, payload length, crc32 of payload
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
class StoredIndex:
    tenant: str
    name: str
    spec: IndexSpec
    created: float
    index: Any
    records: list[LogRecord]
    #: What recovery dropped from the log's tail, if anything (for the operator's log).
    dropped: str | None = None


class IndexStore(Protocol):
    """What the server needs from a store. Calls for one index are serialised by its lock."""

    def save(self, tenant: str, name: str, spec: IndexSpec, created: float, index: Any) -> None:
        """Snapshot ``index`` atomically and empty its log (caller excludes writers)."""

    def append(self, tenant: str, name: str, record: LogRecord) -> int:
        """Write ``record`` to the index's log; returns a ticket for :meth:`wait`."""

    def wait(self, ticket: int) -> None:
        """Return once the record behind ``ticket`` is as durable as the fsync policy says."""

    def log_bytes(self, tenant: str, name: str) -> int:
        """Size of the log since the last snapshot (the server snapshots past a threshold)."""

    def delete(self, tenant: str, name: str) -> None:
        """Forget the index; a later ``load_all`` must not return it."""

    def load_all(self) -> Iterator[StoredIndex]:
        """Every stored index with the log records to replay, for the server to reopen."""

    def close(self) -> None:
        """Flush and close logs."""


def encode_record(record: LogRecord) -> list[Any]:
    """The record as buffers to write in order: prefix, header, then each array's bytes."""
    header, *arrays = encode({"op": record.op, "args": record.args, "idem": record.idem},
                             record.arrays)
    parts = [struct.pack("<I", len(header)), header, *(memoryview(a).cast("B") for a in arrays)]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    length = sum(len(p) for p in parts)
    return [_PREFIX.pack(MAGIC, length, crc), *parts]


def read_records(data: memoryview) -> tuple[list[LogRecord], int, str | None]:
    """Records from a log's bytes: (records, bytes of good prefix, why the rest was dropped)."""
    records: list[LogRecord] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _PREFIX.size:
            return records, pos, f"torn record header at byte {pos}"
        magic, length, crc = _PREFIX.unpack_from(data, pos)
        body = data[pos + _PREFIX.size: pos + _PREFIX.size + length]
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


def _parse(body: memoryview) -> LogRecord:
    (hlen,) = struct.unpack_from("<I", body, 0)
    header_bytes = body[4: 4 + hlen]
    header = msgpack.unpackb(header_bytes, raw=False)
    frames: list[Any] = [header_bytes]
    pos = 4 + hlen
    for desc in header.get("arrays", []):
        size = int(np.prod(desc["shape"], dtype=np.int64)) * np.dtype(desc["dtype"]).itemsize
        frames.append(body[pos: pos + size])
        pos += size
    _, arrays = decode(frames)
    # copies: the log's buffer is released after recovery, the replayed index keeps nothing
    return LogRecord(header["op"], header.get("args") or {},
                     {k: np.array(v) for k, v in arrays.items()}, header.get("idem"))


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
        self._logs: dict[tuple[str, str], int] = {}  # open log file descriptors
        self._sizes: dict[tuple[str, str], int] = {}
        self._generations: dict[tuple[str, str], int] = {}
        #: A failed fsync makes every later durability promise void: reported, never hidden.
        self._failure: str | None = None
        self._mutex = threading.Lock()
        # group commit ("batch"): writers wait while one flusher fsyncs every dirty log
        self._dirty: set[int] = set()
        self._written = 0
        self._synced = 0
        self._cond = threading.Condition(self._mutex)
        self._flusher: threading.Thread | None = None
        self._closing = False

    def _dir(self, tenant: str, name: str) -> Path:
        return self.root / "tenants" / check_name(tenant, "tenant id") / check_name(name)

    # -- snapshots ---------------------------------------------------------------------------
    def save(self, tenant: str, name: str, spec: IndexSpec, created: float, index: Any) -> None:
        key = (tenant, name)
        folder = self._dir(tenant, name)
        folder.mkdir(parents=True, exist_ok=True)
        old = self._generations.get(key)
        gen = (old or 0) + 1
        binary = isinstance(index, faiss.IndexBinary)
        tmp = folder / f"snapshot-{gen}.faiss.tmp"
        (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
        _fsync_rename(tmp, folder / f"snapshot-{gen}.faiss")
        new_log = os.open(folder / f"wal-{gen}.log",
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.fsync(new_log)
        meta = {"format": FORMAT_VERSION, "spec": spec.model_dump(), "created": created,
                "binary": binary, "generation": gen, "saved": time.time()}
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        _fsync_rename(tmp, folder / "meta.json")  # the commit point
        with self._mutex:
            old_log = self._logs.pop(key, None)
            self._logs[key] = new_log
            self._sizes[key] = 0
            self._generations[key] = gen
        if old_log is not None:
            os.close(old_log)
        if old is not None:
            for stale in (f"snapshot-{old}.faiss", f"wal-{old}.log"):
                (folder / stale).unlink(missing_ok=True)

    # -- the log -----------------------------------------------------------------------------
    def _log_fd(self, tenant: str, name: str) -> int:
        key = (tenant, name)
        fd = self._logs.get(key)
        if fd is None:
            gen = self._generations.get(key)
            if gen is None:
                raise RuntimeError(f"{tenant}/{name} has no snapshot to log against")
            path = self._dir(tenant, name) / f"wal-{gen}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with self._mutex:
                self._logs[key] = fd
                self._sizes.setdefault(key, os.fstat(fd).st_size)
        return fd

    def append(self, tenant: str, name: str, record: LogRecord) -> int:
        fd = self._log_fd(tenant, name)
        parts = encode_record(record)
        total = sum(len(p) for p in parts)
        written = os.writev(fd, parts)
        while written < total:  # writev may stop short on huge records; finish the rest
            rest = b"".join(bytes(p) for p in parts)[written:]
            written += os.write(fd, rest)
        self._sizes[(tenant, name)] = self._sizes.get((tenant, name), 0) + total
        if self.fsync == "always":
            os.fdatasync(fd)
            return 0
        if self.fsync == "off":
            return 0
        with self._cond:
            self._written += 1
            self._dirty.add(fd)
            self._cond.notify_all()
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                                 name="faissx-wal-flusher")
                self._flusher.start()
            return self._written

    def wait(self, ticket: int) -> None:
        if self.fsync != "batch" or ticket == 0:
            return
        with self._cond:
            while self._synced < ticket and self._failure is None:
                self._cond.wait()
            if self._failure is not None:
                raise OSError(f"the write-ahead log could not be synced: {self._failure}")

    def _flush_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if self._closing and not self._dirty:
                    return
                dirty, self._dirty = self._dirty, set()
                upto = self._written
            failure = None
            for fd in dirty:  # one fsync per log covers every record written before it
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    failure = str(exc)
                    log.critical("fsync of a write-ahead log failed: %s", exc)
            with self._cond:
                if failure is not None:
                    self._failure = failure
                else:
                    self._synced = upto
                self._cond.notify_all()

    def log_bytes(self, tenant: str, name: str) -> int:
        return self._sizes.get((tenant, name), 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def delete(self, tenant: str, name: str) -> None:
        with self._mutex:
            fd = self._logs.pop((tenant, name), None)
            self._sizes.pop((tenant, name), None)
            self._generations.pop((tenant, name), None)
        if fd is not None:
            os.close(fd)
        shutil.rmtree(self._dir(tenant, name), ignore_errors=True)

    def load_all(self) -> Iterator[StoredIndex]:
        for folder in sorted((self.root / "tenants").glob("*/*")):
            try:
                meta = json.loads((folder / "meta.json").read_text())
                gen = int(meta["generation"])
                reader = faiss.read_index_binary if meta.get("binary") else faiss.read_index
                index = reader(str(folder / f"snapshot-{gen}.faiss"))
                records, _, dropped = self._read_log(folder / f"wal-{gen}.log")
                for stale in folder.iterdir():  # leftovers of a snapshot that never committed
                    if stale.name not in ("meta.json", f"snapshot-{gen}.faiss", f"wal-{gen}.log"):
                        stale.unlink()
                self._generations[(folder.parent.name, folder.name)] = gen
                yield StoredIndex(folder.parent.name, folder.name,
                                  IndexSpec.model_validate(meta["spec"]), meta["created"], index,
                                  records, dropped)
            except Exception as exc:  # one bad directory must not keep the others offline
                log.error("skipping stored index %s: %s", folder, exc)

    @staticmethod
    def _read_log(path: Path) -> tuple[list[LogRecord], int, str | None]:
        if not path.exists():
            return [], 0, None
        data = path.read_bytes()
        records, good, dropped = read_records(memoryview(data))
        if dropped is not None:
            # Cut the bad tail so new records never follow garbage.
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
            dropped += f"; {len(data) - good} byte(s) dropped"
        return records, good, dropped

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._flusher is not None:
            self._flusher.join(5)
        with self._mutex:
            fds, self._logs = list(self._logs.values()), {}
        for fd in fds:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        self._lock_file.close()  # releases the flock


def _fsync_rename(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@hookimpl(trylast=True)
def faissx_open_store(settings: ServerSettings) -> IndexStore | None:
    if settings.data_dir is None:
        return None
    return FileStore(settings.data_dir, settings.fsync)
