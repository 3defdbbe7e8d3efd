"""Integrity under faults: real servers, real files, real disk errors, real kill -9.

Each test reproduces one way a data directory can be hurt and checks the promise of
docs/durability.md: every acknowledged write is present after a restart, or the index is
visibly quarantined with every byte of its files kept; nothing is applied twice; nothing
deleted comes back.

* mid-log damage (a valid record after a bad one) quarantines the index; a torn tail is cut;
* a missing snapshot, an empty ``meta.json`` or an unreadable index directory quarantine too,
  and the files survive restarts and re-create attempts; ``repair`` and ``drop`` are the ways
  out, and ``repair`` keeps a byte-identical backup;
* ``merge_from`` is one commit: whatever the crash point, the vectors are in one index;
* a delete racing a tenant-wide snapshot is not resurrected;
* idempotency keys survive snapshots (explicit and threshold) and creates;
* a write that could not be logged is never snapshotted and its retry is applied once;
* a failed durable create leaves nothing; a failed threshold snapshot does not fail the write;
  SIGTERM with a full disk exits 0 without a traceback;
* a crash test kills the server at random commit points of create, delete, snapshot and
  merge_from (and at random moments), 20+ times, and checks the whole data set each time.

Disk faults are made with ``prlimit --fsize`` on the running server (RLIMIT_FSIZE: a write past
the limit fails with EFBIG, which Python sees as OSError because it ignores SIGXFSZ) and
``prlimit --nofile`` (no file descriptors); a read-only directory with ``chattr +i`` (as root
``chmod`` cannot make one; the step is skipped where the immutable attribute is refused). A small
tmpfs would need privileges this container lacks. Crash points are the server's
``FAISSX_TEST_CRASH_AT=point:N`` hook (faissx_core/server/storage.py, off by default).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import faissx_client as fx
from faissx_core.errors import IndexDamaged
from faissx_core.plugins import PluginRegistry
from faissx_core.protocol import decode, encode
from faissx_core.server.storage import read_records

from .conftest import FAISSX, ServerProcess, server_env

D = 8
SPEC = PluginRegistry().index_type("IndexFlatL2").bind((D,), {}).model_dump()
PRLIMIT = shutil.which("prlimit")


# -- harness -----------------------------------------------------------------------------------


class Raw:
    """A bare DEALER speaking the wire protocol, so a test chooses each idempotency key."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(srv.endpoint)
        self.ids = iter(range(1, 1 << 30))

    def send(
        self,
        op: str,
        index: str | None = None,
        args: dict | None = None,
        arrays: dict | None = None,
        idem: str | None = None,
    ) -> int:
        rid = next(self.ids)
        header = {"v": 1, "id": rid, "op": op, "index": index, "args": args or {}}
        if idem:
            header["idem"] = idem
        self.sock.send_multipart(encode(header, arrays))
        return rid

    def recv(self, rid: int, timeout: float = 60.0) -> tuple[dict, dict] | None:
        """The reply to ``rid``; None if the server process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(20):
                header, arrays = decode(self.sock.recv_multipart())
                if header["id"] == rid:
                    return header, arrays
                continue
            if not self.srv.alive:
                return None
        raise AssertionError(f"no reply to request {rid} in {timeout}s")

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict | None = None,
        arrays: dict | None = None,
        idem: str | None = None,
    ) -> tuple[dict, dict]:
        reply = self.recv(self.send(op, index, args, arrays, idem))
        assert reply is not None, f"the server died during {op}:\n{self.srv.output()[-3000:]}"
        return reply

    def ok(self, *args: Any, **kwargs: Any) -> dict:
        header, arrays = self.call(*args, **kwargs)
        assert header["ok"], header
        return {**header["result"], **arrays}

    def close(self) -> None:
        self.sock.close(0)


def start(data: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess("--data-dir", str(data), "--log-level", "INFO", *args, env=env).start()


@pytest.fixture
def servers():
    started: list[ServerProcess] = []

    def make(data: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        srv = start(data, *args, env=env)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


def tagged(tags: np.ndarray) -> np.ndarray:
    """Vectors whose first component is their tag: an index's contents read back as tags."""
    x = np.random.default_rng(int(tags[0]) if len(tags) else 0).random((len(tags), D))
    x = x.astype("float32")
    x[:, 0] = tags
    return x


def create(raw: Raw, name: str, idem: str | None = None) -> dict:
    return raw.ok("create", name, {"spec": SPEC, "ephemeral": False}, idem=idem)


def add(raw: Raw, name: str, tags: range | np.ndarray, idem: str | None = None) -> dict:
    return raw.ok("add", name, {}, {"x": tagged(np.asarray(tags, dtype="float32"))}, idem)


def tags_of(raw: Raw, name: str) -> list[int]:
    n = raw.ok("info", name)["ntotal"]
    if n == 0:
        return []
    x = raw.ok("reconstruct_n", name, {"n0": 0, "ni": n})["x"]
    return sorted(int(t) for t in x[:, 0])


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (or the file itself), by relative path, with its bytes."""
    if folder.is_file():
        return {".": folder.read_bytes()}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def folder_of(data: Path, name: str) -> Path:
    return data / "tenants" / "default" / name


def record_spans(log: Path) -> list[tuple[int, int]]:
    """(start, end) of each record in a log."""
    data = log.read_bytes()
    spans, pos = [], 0
    while pos < len(data):
        (length,) = np.frombuffer(data[pos + 4 : pos + 8], dtype="<u4")
        spans.append((pos, pos + 12 + int(length)))
        pos += 12 + int(length)
    return spans


def admin(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAISSX), "indexes", *args, "--server", srv.endpoint],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def limit(srv: ServerProcess, **limits: int | str) -> None:
    """Change a running server's soft resource limits (``fsize=bytes``, ``nofile=count``);
    the hard limits stay, so a soft one can be raised again without privileges."""
    assert PRLIMIT, "prlimit is needed for the disk fault tests"
    opts = [f"--{k}={v}:" for k, v in limits.items()]
    subprocess.run([PRLIMIT, "--pid", str(srv.proc.pid), *opts], check=True)


def error_code(header: dict) -> str:
    assert not header["ok"], header
    return header["error"]["code"]


# -- 1. mid-log damage vs torn tail ------------------------------------------------------------


def test_mid_log_damage_quarantines_keeps_every_byte_and_repairs(servers, tmp_path):
    data = tmp_path / "data"
    srv = servers(data)
    raw = Raw(srv)
    create(raw, "mid")
    for i in range(40):  # 40 acknowledged keyed writes of 10 vectors
        add(raw, "mid", range(10 * i, 10 * i + 10), idem=f"k-{i}")
    raw.close()
    srv.stop(signal.SIGKILL)
    folder = folder_of(data, "mid")
    (log,) = folder.glob("wal-*.log")
    spans = record_spans(log)
    assert len(spans) == 40
    damaged = bytearray(log.read_bytes())
    start_, end = spans[15]
    damaged[(start_ + end) // 2] ^= 0xFF  # one flipped byte in record 15 of 40
    log.write_bytes(bytes(damaged))
    before = files_of(folder)

    srv.start()
    raw = Raw(srv)
    listed = {i["name"]: i for i in raw.ok("list")["indexes"]}
    assert listed["mid"]["state"] == "damaged", listed
    assert "damaged in the middle" in listed["mid"]["damaged"]
    for op, args in (("info", {}), ("search", {"k": 1}), ("add", {})):
        arrays = {"x": tagged(np.arange(1, dtype="float32"))}
        header, _ = raw.call(
            op,
            "mid",
            args,
            arrays if op != "info" else None,
            idem=uuid.uuid4().hex if op == "add" else None,
        )
        assert error_code(header) == "index_damaged", header
        assert str(folder) in header["error"]["message"]
        assert "faissx indexes repair mid" in header["error"]["message"]
    header, _ = raw.call("create", "mid", {"spec": SPEC}, idem="again")
    assert error_code(header) == "index_damaged"
    header, _ = raw.call("delete", "mid", idem="del")
    assert error_code(header) == "index_damaged"
    # a retry of a write recorded intact in the damaged log is not applied anywhere
    header, _ = raw.call(
        "add", "mid", {}, {"x": tagged(np.arange(30, 40, dtype="float32"))}, idem="k-3"
    )
    assert error_code(header) == "index_damaged"
    # the drop-in module raises the typed error
    fx.configure(server=srv.endpoint, timeout=30)
    try:
        with pytest.raises(IndexDamaged) as caught:
            fx.open_index("mid").search(tagged(np.zeros(1, "float32")), 1)
        assert caught.value.details["path"] == str(folder)
        assert fx.IndexDamaged is IndexDamaged
    finally:
        fx.disconnect()
    assert files_of(folder) == before, "quarantine changed a file"
    assert "QUARANTINED" in srv.output()

    # repair: the snapshot + the 15 records before the damage; a byte-identical backup
    result = admin(srv, "repair", "mid")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "150 vectors" in result.stdout, result.stdout
    (backup,) = (data / "damaged" / "default").iterdir()
    assert backup.name.startswith("mid-")
    assert files_of(backup) == before, "the backup is not a byte-for-byte copy"
    assert tags_of(raw, "mid") == list(range(150))
    assert (
        raw.ok("add", "mid", {}, {"x": tagged(np.arange(30, 40, dtype="float32"))}, idem="k-3")
        is not None
    )  # remembered: not applied again
    header, _ = raw.call(
        "add", "mid", {}, {"x": tagged(np.arange(200, 210, dtype="float32"))}, idem="k-20"
    )  # in the damaged part: kept in the backup, not applied
    assert error_code(header) == "index_damaged"
    assert raw.ok("info", "mid")["ntotal"] == 150
    add(raw, "mid", range(1000, 1010), idem="after-repair")
    raw.close()
    srv.stop(signal.SIGKILL)

    srv.start()
    raw = Raw(srv)
    assert tags_of(raw, "mid") == list(range(150)) + list(range(1000, 1010))
    add(raw, "mid", range(30, 40), idem="k-3")  # the key came back from the repaired snapshot
    add(raw, "mid", range(1000, 1010), idem="after-repair")  # and from the log
    assert raw.ok("info", "mid")["ntotal"] == 160
    assert files_of(backup) == before
    raw.close()


def test_torn_tail_is_cut_but_damage_before_it_is_not(servers, tmp_path):
    """A half-written last record is cut; a bad byte in the last record alone is a torn tail
    too (nothing valid follows it); bad bytes with a valid record after them are damage."""
    data = tmp_path / "data"
    srv = servers(data)
    raw = Raw(srv)
    create(raw, "tail")
    for i in range(5):
        add(raw, "tail", range(10 * i, 10 * i + 10))
    raw.close()
    srv.stop(signal.SIGKILL)
    (log,) = folder_of(data, "tail").glob("wal-*.log")
    whole = log.read_bytes()
    spans = record_spans(log)
    log.write_bytes(whole[: spans[4][0] + 30])  # the fifth record torn mid-append
    srv.start()
    raw = Raw(srv)
    assert tags_of(raw, "tail") == list(range(40))
    assert log.stat().st_size == spans[4][0], "the torn tail was not cut"
    assert "torn log tail cut" in srv.output()
    raw.close()
    srv.stop(signal.SIGKILL)
    # a zeroed stretch (as a lost page leaves) in record 2 with records 3 and 4 valid after it
    hurt = bytearray(log.read_bytes())
    hurt[spans[2][0] + 20 : spans[2][0] + 60] = bytes(40)
    log.write_bytes(bytes(hurt))
    srv.start()
    raw = Raw(srv)
    header, _ = raw.call("info", "tail")
    assert error_code(header) == "index_damaged"
    assert log.read_bytes() == bytes(hurt)
    raw.close()


# -- 2. missing snapshot, empty meta.json, unreadable directory --------------------------------


def test_missing_snapshot_empty_meta_unreadable_dir_are_quarantined_never_deleted(
    servers, tmp_path
):
    data = tmp_path / "data"
    srv = servers(data)
    raw = Raw(srv)
    for name in ("nosnap", "nometa", "nodir", "fine"):
        create(raw, name)
        for i in range(3):  # 300 acknowledged vectors, all in the log
            add(raw, name, range(100 * i, 100 * i + 100), idem=f"{name}-{i}")
    raw.close()
    srv.stop(signal.SIGKILL)
    (folder_of(data, "nosnap") / "snapshot-1.faiss").unlink()
    (folder_of(data, "nometa") / "meta.json").write_bytes(b"")
    nodir = folder_of(data, "nodir")
    kept_nodir = files_of(nodir)
    shutil.rmtree(nodir)
    nodir.write_bytes(b"not a directory")  # what the index directory turned into
    before = {n: files_of(folder_of(data, n)) for n in ("nosnap", "nometa", "nodir")}

    for restart in range(2):  # quarantine holds across restarts, and re-creates
        srv.start()
        raw = Raw(srv)
        listed = {i["name"]: i for i in raw.ok("list")["indexes"]}
        assert listed["fine"]["ntotal"] == 300
        for name, why in (
            ("nosnap", "snapshot-1.faiss"),
            ("nometa", "meta.json is empty"),
            ("nodir", "cannot be read"),
        ):
            assert listed[name]["state"] == "damaged"
            assert why in listed[name]["damaged"], listed[name]
            header, _ = raw.call("create", name, {"spec": SPEC}, idem=f"re-{restart}-{name}")
            assert error_code(header) == "index_damaged"
            header, _ = raw.call("search", name, {"k": 1}, {"x": tagged(np.zeros(1, "float32"))})
            assert error_code(header) == "index_damaged"
        raw.close()
        srv.stop(signal.SIGKILL)
        for name, files in before.items():
            assert files_of(folder_of(data, name)) == files, f"{name}: a file changed"

    srv.start()
    raw = Raw(srv)
    # a live backup copies the quarantined indices byte for byte, as they are
    copy = subprocess.run(
        [str(FAISSX), "backup", str(data), str(tmp_path / "copy")],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copy.returncode == 0, copy.stderr + copy.stdout
    for name, files in before.items():
        assert files_of(tmp_path / "copy" / "tenants" / "default" / name) == files
    shown = admin(srv, "list")
    assert shown.returncode == 0 and shown.stdout.count("DAMAGED") == 3, shown.stdout
    # nothing to rebuild from without the snapshot: repair refuses and keeps everything
    result = admin(srv, "repair", "nosnap")
    assert result.returncode != 0 and "cannot be repaired" in result.stderr + result.stdout
    assert files_of(folder_of(data, "nosnap")) == before["nosnap"]
    # meta.json lost: rebuilt from the snapshot and log of the newest generation
    result = admin(srv, "repair", "nometa")
    assert result.returncode == 0, result.stderr + result.stdout
    assert tags_of(raw, "nometa") == list(range(300))
    # drop: the one path that deletes, on request; the name is free again afterwards
    result = admin(srv, "drop", "nodir", "--yes")
    assert result.returncode == 0, result.stderr + result.stdout
    assert not os.path.lexists(nodir)
    assert kept_nodir  # (those bytes were removed by the test itself, not by the server)
    create(raw, "nodir", idem="fresh")
    header, _ = raw.call("drop", "fine", idem="drop-fine")
    assert error_code(header) == "invalid_argument", "drop is for damaged indices only"
    raw.close()


# -- 3. merge_from is one commit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "committed"),
    [("commit:prepared", False), ("commit:intent", True), ("commit:meta", True)],
)
def test_merge_from_crash_leaves_vectors_in_exactly_one_index(servers, tmp_path, point, committed):
    data = tmp_path / "data"
    srv = servers(data, env={"FAISSX_TEST_CRASH_AT": f"{point}:1"})
    raw = Raw(srv)
    create(raw, "a")
    create(raw, "b")
    add(raw, "a", range(0, 50))
    add(raw, "b", range(100, 130))
    rid = raw.send("merge_from", "a", {"other": "b"}, idem="merge-1")
    assert raw.recv(rid) is None, "the crash point was not reached"
    raw.close()
    srv.stop(signal.SIGKILL)
    srv.env = {}
    srv.start()
    raw = Raw(srv)
    a, b = tags_of(raw, "a"), tags_of(raw, "b")
    if committed:
        assert (a, b) == (list(range(50)) + list(range(100, 130)), [])
    else:
        assert (a, b) == (list(range(50)), list(range(100, 130)))
    add(raw, "b", range(200, 205))  # a merge applied twice would move these too
    raw.ok("merge_from", "a", {"other": "b"}, idem="merge-1")  # the retry: applied once
    raw.ok("merge_from", "a", {"other": "b"}, idem="merge-1")
    if committed:  # its key came back from the target's committed generation
        assert tags_of(raw, "a") == list(range(50)) + list(range(100, 130))
        assert tags_of(raw, "b") == list(range(200, 205))
    else:  # never applied: the retry is the one merge
        assert tags_of(raw, "a") == list(range(50)) + list(range(100, 130)) + list(range(200, 205))
        assert tags_of(raw, "b") == []
    assert not list((data / "tenants" / "default").glob(".commit-*")), "intent left behind"
    raw.close()


# -- 4. delete during a tenant-wide snapshot ---------------------------------------------------


def test_delete_during_tenant_snapshot_is_not_resurrected(servers, tmp_path):
    data = tmp_path / "data"
    srv = servers(data)
    raw = Raw(srv)
    names = [f"s{i:02d}" for i in range(24)]
    for name in names:
        create(raw, name)
        add(raw, name, range(2000))
    snap = Raw(srv)
    rid = snap.send("snapshot")
    deleted = []
    for name in reversed(names):  # meets the snapshot loop in the middle
        raw.ok("delete", name, idem=f"del-{name}")
        deleted.append(name)
    header, _ = snap.recv(rid)
    assert header["ok"], header
    snapshotted = header["result"]["snapshotted"]
    assert len(snapshotted) < len(names), "no delete overlapped the snapshot: proves nothing"
    snap.close()
    raw.close()
    srv.stop(signal.SIGKILL)
    srv.start()
    raw = Raw(srv)
    assert raw.ok("list")["indexes"] == [], "a deleted index came back"
    assert sorted(p.name for p in (data / "tenants" / "default").iterdir()) == []
    raw.close()


# -- 5. idempotency keys survive snapshots ------------------------------------------------------


def test_idempotency_keys_survive_snapshots_and_creates(servers, tmp_path):
    data = tmp_path / "data"
    srv = servers(data, "--snapshot-every-mb", "0.0625")  # 64 KiB, the smallest allowed
    raw = Raw(srv)
    create(raw, "keys", idem="create-keys")
    add(raw, "keys", range(0, 10), idem="first")
    raw.ok("snapshot", "keys")  # an explicit snapshot folds "first" into the snapshot
    add(raw, "keys", range(10, 2400), idem="big")  # 76 KiB crosses the threshold
    folder = folder_of(data, "keys")
    (log,) = folder.glob("wal-*.log")
    assert log.stat().st_size == 0, "the threshold snapshot did not happen"
    raw.close()
    srv.stop(signal.SIGKILL)
    srv.start()
    raw = Raw(srv)
    # every retry is answered from the remembered reply, none is applied again
    assert create(raw, "keys", idem="create-keys")["name"] == "keys"
    add(raw, "keys", range(0, 10), idem="first")
    add(raw, "keys", range(10, 2400), idem="big")
    assert tags_of(raw, "keys") == list(range(2400))
    raw.ok("snapshot")
    raw.close()
    srv.stop(signal.SIGTERM)  # and once more through a clean shutdown's snapshot
    srv.start()
    raw = Raw(srv)
    add(raw, "keys", range(10, 2400), idem="big")
    assert tags_of(raw, "keys") == list(range(2400))
    raw.close()


# -- 6. a write that could not be logged -------------------------------------------------------


@pytest.mark.skipif(PRLIMIT is None, reason="needs prlimit")
def test_unlogged_write_is_never_snapshotted_and_its_retry_applies_once(servers, tmp_path):
    data = tmp_path / "data"
    srv = servers(data)
    raw = Raw(srv)
    create(raw, "full")
    for i in range(20):
        add(raw, "full", range(500 * i, 500 * i + 500), idem=f"w{i}")
    (log,) = folder_of(data, "full").glob("wal-*.log")
    limit(srv, fsize=log.stat().st_size + 5000)  # the disk fills up mid-record
    header, _ = raw.call(
        "add", "full", {}, {"x": tagged(np.arange(20000, 20500, dtype="float32"))}, idem="lost"
    )
    assert error_code(header) == "internal"
    assert "could not be logged" in header["error"]["message"]
    info = raw.ok("info", "full")
    assert info["state"] == "broken"
    header, _ = raw.call(
        "add", "full", {}, {"x": tagged(np.arange(1, dtype="float32"))}, idem="refused"
    )
    assert "refuses writes" in header["error"]["message"]
    header, _ = raw.call("snapshot", "full")
    assert not header["ok"] and "not snapshotted" in header["error"]["message"]
    raw.close()
    assert srv.stop(signal.SIGTERM) == 0
    out = srv.output()
    assert "Traceback" not in out
    assert "not snapshotted" in out
    meta = (folder_of(data, "full") / "meta.json").read_text()
    assert '"generation": 1' in meta, "the broken index was snapshotted at shutdown"

    srv.start()
    raw = Raw(srv)
    assert raw.ok("info", "full")["ntotal"] == 10000, "recovery is the last durable state"
    add(raw, "full", range(20000, 20500), idem="lost")  # the retry: applied now, once
    add(raw, "full", range(20000, 20500), idem="lost")
    assert tags_of(raw, "full") == list(range(10000)) + list(range(20000, 20500))
    raw.close()


# -- 7. failed create, failed threshold snapshot, shutdown on a full disk ----------------------


@pytest.mark.skipif(PRLIMIT is None, reason="needs prlimit")
def test_failed_durable_create_leaves_nothing_behind(servers, tmp_path):
    data = tmp_path / "data"
    srv = servers(data, "--workers", "1")
    raw = Raw(srv)
    create(raw, "before")
    tenant_dir = data / "tenants" / "default"
    # a full disk: an import of a 1.2 MB index cannot write its snapshot
    big = np.ascontiguousarray(np.frombuffer(_flat_bytes(40000), dtype="uint8"))
    limit(srv, fsize=600_000)
    header, _ = raw.call("import", "big", {"ephemeral": False}, {"data": big}, idem="imp")
    assert (
        error_code(header) == "internal" and "left nothing behind" in header["error"]["message"]
    ), header
    # a disk with no room at all: even the empty index's small files fail
    limit(srv, fsize=1)
    header, _ = raw.call("create", "tiny", {"spec": SPEC}, idem="tiny")
    assert error_code(header) == "internal"
    limit(srv, fsize="unlimited")
    # no file descriptors left
    fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
    limit(srv, nofile=fds)
    header, _ = raw.call("create", "nofd", {"spec": SPEC}, idem="nofd")
    assert error_code(header) == "internal", header
    limit(srv, nofile=4096)
    # a read-only directory: as root only the immutable attribute makes one (chmod does not)
    if _immutable(tenant_dir, True):
        try:
            header, _ = raw.call("create", "ro", {"spec": SPEC}, idem="ro")
            assert error_code(header) == "internal", header
        finally:
            _immutable(tenant_dir, False)
    names = [i["name"] for i in raw.ok("list")["indexes"]]
    assert names == ["before"], f"a ghost index is listed: {names}"
    for name in ("big", "tiny", "nofd", "ro"):
        header, _ = raw.call("info", name)
        assert error_code(header) == "index_not_found"
    assert sorted(p.name for p in tenant_dir.iterdir()) == ["before"], "a half directory"
    create(raw, "tiny", idem="tiny-2")  # the name is free
    add(raw, "tiny", range(5))
    raw.close()
    srv.stop(signal.SIGKILL)
    srv.start()
    raw = Raw(srv)
    assert sorted(i["name"] for i in raw.ok("list")["indexes"]) == ["before", "tiny"]
    assert tags_of(raw, "tiny") == list(range(5))
    raw.close()


def _immutable(path: Path, on: bool) -> bool:
    """``chattr +i``/``-i``; False where the filesystem or the container does not allow it."""
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, "+i" if on else "-i", str(path)], capture_output=True)
    return done.returncode == 0


def _flat_bytes(n: int) -> bytes:
    import faiss

    index = faiss.IndexFlatL2(D)
    index.add(tagged(np.arange(n, dtype="float32")))
    return faiss.serialize_index(index).tobytes()


@pytest.mark.skipif(PRLIMIT is None, reason="needs prlimit")
def test_failed_threshold_snapshot_acknowledges_the_write_and_shutdown_exits_cleanly(
    servers, tmp_path
):
    data = tmp_path / "data"
    srv = servers(data, "--snapshot-every-mb", "0.25")
    raw = Raw(srv)
    create(raw, "grow")
    for i in range(10):  # 10 x 32 KiB: snapshots at ~256 KiB
        add(raw, "grow", range(1000 * i, 1000 * i + 1000), idem=f"g{i}")
    limit(srv, fsize=420_000)  # a snapshot (>= 320 KiB of vectors + header) now fails
    for i in range(10, 20):  # the log crosses the threshold again: its snapshot fails
        add(raw, "grow", range(1000 * i, 1000 * i + 1000), idem=f"g{i}")
    assert "snapshot failed" in srv.output()
    folder = folder_of(data, "grow")
    assert not list(folder.glob("*.tmp")), "a failed snapshot left a temporary file"
    assert raw.ok("info", "grow")["state"] == "ok"
    raw.close()
    assert srv.stop(signal.SIGTERM) == 0  # the shutdown snapshot fails too: a clean exit
    out = srv.output()
    assert "Traceback" not in out and "its log still holds every acknowledged write" in out
    srv.start()
    raw = Raw(srv)
    assert tags_of(raw, "grow") == list(range(20000))
    add(raw, "grow", range(19000, 20000), idem="g19")
    assert raw.ok("info", "grow")["ntotal"] == 20000
    raw.close()


# -- the crash test ----------------------------------------------------------------------------

CRASH_POINTS = [
    "create:staged",
    "create:committed",
    "save:prepared",
    "save:committed",
    "commit:prepared",
    "commit:intent",
    "commit:meta",
    "delete:renamed",
]


class Model:
    """What the server must hold: each index's tags; plus the one write in doubt."""

    def __init__(self) -> None:
        self.indices: dict[str, list[int]] = {}
        self.next_tag = 0
        self.next_name = 0

    def apply(self, op: str, name: str, args: dict, tags: list[int]) -> None:
        if op == "create":
            self.indices[name] = []
        elif op == "add":
            self.indices[name] = sorted(self.indices[name] + tags)
        elif op == "merge_from":
            other = args["other"]
            self.indices[name] = sorted(self.indices[name] + self.indices[other])
            self.indices[other] = []
        elif op == "delete":
            del self.indices[name]


def _choose(rng: random.Random, model: Model) -> tuple[str, str | None, dict, list[int]]:
    names = sorted(model.indices)
    roll = rng.random()
    if not names or roll < 0.15:
        model.next_name += 1
        return "create", f"i{model.next_name}", {"spec": SPEC}, []
    if roll < 0.55:
        n = rng.randint(1, 400)  # up to 12.8 KiB: the 64 KiB threshold snapshots often
        tags = list(range(model.next_tag, model.next_tag + n))
        model.next_tag += n
        return "add", rng.choice(names), {}, tags
    if roll < 0.75 and len(names) >= 2:
        a, b = rng.sample(names, 2)
        return "merge_from", a, {"other": b}, []
    if roll < 0.85 and len(names) >= 3:
        return "delete", rng.choice(names), {}, []
    return "snapshot", rng.choice([None, *names]), {}, []


#: The operation that passes each group of crash points (``save`` is a snapshot's, ``commit``
#: the one commit of a ``merge_from``'s two indices).
POINT_OPS = {"create": "create", "save": "snapshot", "commit": "merge_from", "delete": "delete"}


def _toward(rng: random.Random, model: Model, point: str) -> tuple[str, str | None, dict, list]:
    """The operation that passes ``point``, or a create toward it (a merge needs two indices,
    and the test deletes only while three are left)."""
    names = sorted(model.indices)
    op = POINT_OPS[point.split(":")[0]]
    if op == "snapshot" and names:
        return "snapshot", rng.choice(names), {}, []
    if op == "merge_from" and len(names) >= 2:
        a, b = rng.sample(names, 2)
        return "merge_from", a, {"other": b}, []
    if op == "delete" and len(names) >= 3:
        return "delete", rng.choice(names), {}, []
    model.next_name += 1
    return "create", f"i{model.next_name}", {"spec": SPEC}, []


def _send(raw: Raw, op: str, name: str | None, args: dict, tags: list[int], idem: str) -> int:
    arrays = {"x": tagged(np.asarray(tags, dtype="float32"))} if op == "add" else None
    return raw.send(op, name, args, arrays, idem)


def _check(raw: Raw, model: Model, cycle: int) -> None:
    listed = raw.ok("list")["indexes"]
    assert not [i for i in listed if i.get("state") == "damaged"], (cycle, listed)
    assert sorted(i["name"] for i in listed) == sorted(model.indices), (
        f"cycle {cycle}: indices {sorted(i['name'] for i in listed)} != "
        f"{sorted(model.indices)} (lost, ghost or resurrected)"
    )
    for name, tags in model.indices.items():
        assert tags_of(raw, name) == tags, f"cycle {cycle}: {name} lost or duplicated vectors"


def _retry(raw: Raw, model: Model, doubt: tuple, cycle: int) -> bool:
    """Re-send the write a crash left in doubt, with its key: it must now be applied exactly
    once. A delete that had been applied may answer "not found" (the index, and the keys it
    held, are gone); every other write must succeed. False: the server crashed again during
    the retry (its own point, as a crash during recovery's client retries would), so the
    write is still in doubt."""
    op, name, args, tags, idem = doubt
    reply = raw.recv(_send(raw, op, name, args, tags, idem))
    if reply is None:
        return False
    header, _ = reply
    gone = op == "delete" and not header["ok"] and header["error"]["code"] == "index_not_found"
    assert header["ok"] or gone, (cycle, doubt, header)
    model.apply(op, name, args, tags)
    return True


def test_kill_9_at_random_points_of_create_delete_snapshot_and_merge(tmp_path):
    """21 crashes, each at a commit point (via the crash hook) or at a random moment (kill -9
    right after sending a request), then a restart, a retry of the write in doubt with its
    key (which must apply it exactly once), and a check of every index against the model.

    The hooked cycles take the crash points in turn, and after a few random operations send
    the one that passes their point: every point is crashed at (random choices had left four
    of the eight untried, two of them tried nowhere else)."""
    rng = random.Random(12)
    data = tmp_path / "data"
    model = Model()
    srv = ServerProcess(
        "--data-dir", str(data), "--log-level", "INFO", "--snapshot-every-mb", "0.0625"
    )
    kills = 0
    died: list[tuple[str, str]] = []
    doubt: tuple[str, str | None, dict, list[int], str] | None = None
    try:
        for cycle in range(21):
            hooked = cycle % 3 != 2
            target = CRASH_POINTS[(cycle - cycle // 3) % len(CRASH_POINTS)]
            point = f"{target}:{rng.randint(1, 2)}"
            srv.env = {"FAISSX_TEST_CRASH_AT": point} if hooked else {}
            srv.start()
            raw = Raw(srv)
            if doubt is not None:  # after the restart: retry the write in doubt, same key
                if not _retry(raw, model, doubt, cycle):
                    died.append((doubt[0], point))
                    raw.close()
                    srv.kill()
                    kills += 1
                    continue
                doubt = None
            _check(raw, model, cycle)
            for step in range(10):
                if hooked and step >= 4:
                    op, name, args, tags = _toward(rng, model, target)
                else:
                    op, name, args, tags = _choose(rng, model)
                idem = uuid.uuid4().hex
                rid = _send(raw, op, name, args, tags, idem)
                if not hooked and rng.random() < 0.3:
                    time.sleep(rng.uniform(0, 0.01))
                    srv.kill()
                reply = raw.recv(rid)
                if reply is None:
                    died.append((op, point if hooked else "kill -9"))
                    if op != "snapshot":
                        doubt = (op, name, args, tags, idem)
                    break
                assert reply[0]["ok"], (cycle, op, name, reply[0])
                if op != "snapshot":
                    model.apply(op, name, args, tags)
            raw.close()
            srv.kill()
            kills += 1
        srv.env = {}
        srv.start()
        raw = Raw(srv)
        if doubt is not None:
            assert _retry(raw, model, doubt, -1), "the server died without a crash point"
        _check(raw, model, -1)
        raw.close()
    finally:
        srv.kill()
    assert kills >= 20
    print(f"{kills} kills; died during: {died}; doubt retried: {len(died)}")
    assert len(died) >= 10, f"too few crashes inside an operation: {died}"
    crashed_at = {where.rpartition(":")[0] for _, where in died if where != "kill -9"}
    assert crashed_at == set(CRASH_POINTS), f"never crashed at {set(CRASH_POINTS) - crashed_at}"
    assert sum(len(t) for t in model.indices.values()) > 0, "the test wrote nothing"


def test_crash_hook_is_off_by_default():
    from faissx_core.server.storage import CRASH_AT_ENV, CrashPoints

    hook = CrashPoints(None)
    hook("create:staged")  # returns: no crash without the variable
    assert CRASH_AT_ENV == "FAISSX_TEST_CRASH_AT"
    assert CRASH_AT_ENV not in server_env()
    assert read_records(memoryview(b"")) == ([], 0, None)
