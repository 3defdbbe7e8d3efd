"""Group commit: durable writes share an fdatasync; no reply leaves before its record is on disk.

With ``--fsync always`` or ``batch`` a write is applied and written to its index's log without a
sync (a one-row add on the socket thread), and its reply is held until the store's committer has
run one ``fdatasync`` covering it (faissx_core/server/groupcommit.py). These tests check what a
client can see: pipelined one-row adds are answered in order with their ids; acknowledged rows
written by several clients at once survive ``kill -9`` right after the last acknowledgement; a
retry of a request whose reply is still held is not applied again and is never acknowledged
before the write is durable; a failed ``fdatasync`` (the ``FAISSX_TEST_FAIL_SYNC`` hook of
storage.py, which makes the committer's N-th sync fail with EIO) acknowledges nothing, breaks
the index and refuses its snapshots; and snapshots racing writes never sync a closed log.
No timing is asserted.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
import uuid
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

import faissx_client as fx

from .conftest import ServerProcess, restarted_after_kill_9

D = 16
#: Bound on any one reply: a loaded 2-core machine is slow, a lost reply must still fail.
BOUND = 60.0
_ids = itertools.count(1)


class Peer:
    """One DEALER socket speaking raw frames, so requests can be pipelined and counted."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(
        self,
        op: str,
        index: str | None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        idem: str | None = None,
        rid: int | None = None,
    ) -> int:
        rid = next(_ids) if rid is None else rid
        descs, frames = [], []
        for name, arr in (arrays or {}).items():
            descs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
            frames.append(np.ascontiguousarray(arr).tobytes())
        header = {"v": 1, "id": rid, "op": op, "args": args or {}, "arrays": descs}
        header |= {"index": index} if index is not None else {}
        header |= {"idem": idem} if idem else {}
        self.sock.send_multipart([msgpack.packb(header, use_bin_type=True), *frames])
        return rid

    def recv(self, timeout: float = BOUND) -> dict[str, Any] | None:
        """The next reply's header, or None when none came within ``timeout``."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        reply = msgpack.unpackb(self.sock.recv_multipart()[0], raw=False)
        if reply.get("working"):  # a heartbeat of a long request, not its answer
            return self.recv(timeout)
        return reply

    def call(self, op: str, index: str | None, **kw: Any) -> dict[str, Any]:
        rid = self.send(op, index, **kw)
        reply = self.recv()
        assert reply is not None and reply["id"] == rid, reply
        return reply

    def close(self) -> None:
        self.sock.close(0)


def create_flat(peer: Peer, name: str, idmap: bool = False) -> None:
    spec: dict[str, Any] = {"type": "IndexFlatL2", "params": {"d": D}}
    if idmap:
        spec = {"type": "IndexIDMap2", "params": {"index": spec}}
    reply = peer.call("create", name, args={"spec": spec})
    assert reply["ok"], reply


def durable_server(start_server, tmp_path, mode: str, *extra: str) -> ServerProcess:
    return start_server("--data-dir", str(tmp_path / "d"), "--fsync", mode, *extra)


@pytest.mark.parametrize("mode", ["always", "batch"])
def test_pipelined_one_row_adds_are_answered_in_order(start_server, tmp_path, mode):
    """200 one-row adds sent back to back on one connection: each reply comes in send order,
    reports the ntotal its row made (so its id), and the rows are stored in that order, also
    after ``kill -9`` and a restart."""
    srv = durable_server(start_server, tmp_path, mode)
    rows = np.random.default_rng(1).standard_normal((200, D)).astype("float32")
    peer = Peer(srv.endpoint)
    try:
        create_flat(peer, "piped")
        sent = [
            peer.send("add", "piped", arrays={"x": rows[i : i + 1]}, idem=uuid.uuid4().hex)
            for i in range(200)
        ]
        replies = [peer.recv() for _ in sent]
    finally:
        peer.close()
    assert all(r is not None and r["ok"] for r in replies), replies
    assert [r["id"] for r in replies] == sent  # type: ignore[index]
    assert [r["result"]["ntotal"] for r in replies] == list(range(1, 201))  # type: ignore[index]
    with restarted_after_kill_9(srv, timeout=BOUND):
        again = fx.open_index("piped")
        assert again.ntotal == 200
        np.testing.assert_array_equal(again.reconstruct_n(0, 200), rows)


@pytest.mark.parametrize("mode", ["always", "batch"])
def test_concurrent_acknowledged_adds_survive_kill_9(start_server, tmp_path, mode):
    """Four clients add one row at a time (four in flight each) to one index; the server is
    killed right after the 400th acknowledgement, with writes still in flight. Every
    acknowledged row is there after the restart, with its vector."""
    srv = durable_server(start_server, tmp_path, mode)
    clients, per_client, window = 4, 400, 4
    data = np.random.default_rng(2).standard_normal((clients, per_client, D)).astype("float32")
    setup = Peer(srv.endpoint)
    create_flat(setup, "shared", idmap=True)
    setup.close()
    acked: list[list[int]] = [[] for _ in range(clients)]
    count = threading.Semaphore(0)
    errors: list[Any] = []

    killed = threading.Event()

    def client(c: int) -> None:
        deadline = time.monotonic() + 4 * BOUND
        peer = Peer(srv.endpoint)
        inflight: dict[int, int] = {}  # request id -> row
        nxt = 0
        try:
            while nxt < per_client or inflight:
                while nxt < per_client and len(inflight) < window:
                    ids = np.array([c * 100_000 + nxt], dtype="int64")
                    x = data[c, nxt : nxt + 1]
                    rid = peer.send(
                        "add_with_ids", "shared", arrays={"x": x, "ids": ids}, idem=uuid.uuid4().hex
                    )
                    inflight[rid] = nxt
                    nxt += 1
                reply = peer.recv(timeout=0.2)
                if reply is None:
                    if killed.is_set() or time.monotonic() > deadline:
                        return  # the server is gone: what is in flight stays unacknowledged
                    continue
                row = inflight.pop(reply["id"])
                if not reply["ok"]:
                    errors.append(reply)
                    return
                acked[c].append(row)
                count.release()
        finally:
            peer.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for _ in range(400):
        assert count.acquire(timeout=BOUND), "acknowledgements stopped coming"
    srv.stop(signal.SIGKILL)  # right after the 400th acknowledgement
    killed.set()
    for t in threads:
        t.join(BOUND)
    assert not errors, errors[:3]
    total = sum(len(a) for a in acked)
    assert total >= 400
    srv.start()
    fx.configure(server=srv.endpoint, timeout=BOUND)
    try:
        again = fx.open_index("shared")
        assert again.ntotal >= total  # unacknowledged ones may be there too
        for c in range(clients):
            for row in acked[c]:
                np.testing.assert_array_equal(again.reconstruct(c * 100_000 + row), data[c, row])
    finally:
        fx.disconnect()


def test_a_retry_of_a_held_request_is_applied_once(start_server, tmp_path):
    """The same add (same key) sent twice back to back: the second arrives while the first's
    reply is held for its fdatasync (or just after). It is not applied again, and both get the
    first's result."""
    srv = durable_server(start_server, tmp_path, "always")
    row = np.random.default_rng(3).standard_normal((1, D)).astype("float32")
    peer = Peer(srv.endpoint)
    try:
        create_flat(peer, "retried")
        key = uuid.uuid4().hex
        first = peer.send("add", "retried", arrays={"x": row}, idem=key)
        again = peer.send("add", "retried", arrays={"x": row}, idem=key)
        replies = {r["id"]: r for r in (peer.recv(), peer.recv()) if r is not None}
        assert set(replies) == {first, again}
        assert replies[first]["ok"] and replies[again]["ok"], replies
        assert (
            replies[first]["result"]
            == replies[again]["result"]
            == {
                "ntotal": 1,
                "is_trained": True,
            }
        )
        assert peer.call("info", "retried")["result"]["ntotal"] == 1
    finally:
        peer.close()


def test_failed_fdatasync_acknowledges_nothing_and_breaks_the_index(tmp_path):
    """The committer's first fdatasync fails (EIO, by the test hook). The add it covers and a
    retry of it sent while its reply is held both get a typed error, never an ok; the index is
    broken (writes and snapshots refused). After a restart the retry is applied exactly once
    (or answered, if the record had reached the disk after all)."""
    srv = ServerProcess(
        "--data-dir", str(tmp_path / "d"), "--fsync", "always", env={"FAISSX_TEST_FAIL_SYNC": "1"}
    ).start()
    row = np.random.default_rng(4).standard_normal((1, D)).astype("float32")
    key = uuid.uuid4().hex
    peer = Peer(srv.endpoint)
    try:
        create_flat(peer, "failing")
        first = peer.send("add", "failing", arrays={"x": row}, idem=key)
        retry = peer.send("add", "failing", arrays={"x": row}, idem=key)
        replies = {r["id"]: r for r in (peer.recv(), peer.recv()) if r is not None}
        assert set(replies) == {first, retry}
        for reply in replies.values():
            assert not reply["ok"], reply
            assert reply["error"]["code"] == "internal"
            assert "could not be synced" in reply["error"]["message"]
        info = peer.call("info", "failing")
        assert info["ok"] and info["result"]["state"] == "broken", info
        refused = peer.call("add", "failing", arrays={"x": row}, idem=uuid.uuid4().hex)
        assert not refused["ok"] and refused["error"]["code"] == "internal"
        snap = peer.call("snapshot", "failing")
        assert not snap["ok"], snap
        peer.close()
        srv.stop(signal.SIGKILL)
        srv.env = {}
        srv.start()
        peer = Peer(srv.endpoint)
        reply = peer.call("add", "failing", arrays={"x": row}, idem=key)
        assert reply["ok"] and reply["result"]["ntotal"] == 1, reply
        assert peer.call("info", "failing")["result"]["ntotal"] == 1
    finally:
        peer.close()
        srv.kill()


def test_snapshots_racing_writes_never_sync_a_closed_log(start_server, tmp_path):
    """Eight indices take one-row adds while another client snapshots all of them over and
    over: a snapshot closes a log the committer may be syncing. Every write is acknowledged
    (a sync of a closed descriptor would fail it with EBADF, or sync another file), and every
    row is there after ``kill -9``."""
    srv = durable_server(start_server, tmp_path, "batch")
    names = [f"race{i}" for i in range(8)]
    per_index = 150
    data = np.random.default_rng(5).standard_normal((len(names), per_index, D)).astype("float32")
    setup = Peer(srv.endpoint)
    for name in names:
        create_flat(setup, name)
    stop = threading.Event()
    errors: list[Any] = []

    def writer(i: int) -> None:
        peer = Peer(srv.endpoint)
        try:
            for r in range(per_index):
                reply = peer.call("add", names[i], arrays={"x": data[i, r : r + 1]})
                if not reply["ok"]:
                    errors.append(reply)
                    return
        finally:
            peer.close()

    def snapshotter() -> None:
        peer = Peer(srv.endpoint)
        try:
            deadline = time.monotonic() + 4 * BOUND
            while not stop.is_set() and time.monotonic() < deadline:
                reply = peer.call("snapshot", None)
                if not reply["ok"]:
                    errors.append(reply)
                    return
        finally:
            peer.close()

    snaps = threading.Thread(target=snapshotter)
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(len(names))]
    snaps.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(4 * BOUND)
    stop.set()
    snaps.join(BOUND)
    setup.close()
    assert not errors, errors[:3]
    with restarted_after_kill_9(srv, timeout=BOUND):
        for i, name in enumerate(names):
            again = fx.open_index(name)
            assert again.ntotal == per_index
            np.testing.assert_array_equal(again.reconstruct_n(0, per_index), data[i])


def test_a_log_is_never_closed_while_the_committer_syncs_it(tmp_path):
    """The race a snapshot or delete could lose: the committer has taken a log to sync, and
    its descriptor is closed before ``fdatasync`` runs (EBADF, or a sync of whatever file got
    the number next). ``retire`` waits for the sync under way; only then is the descriptor
    closed, and the records it held are settled as durable. Real file, real fdatasync; the
    sync is only made to wait until the retire has started."""
    import os

    from faissx_core.server.groupcommit import Committer, OpenLog

    fd = os.open(tmp_path / "wal-1.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    entered, go = threading.Event(), threading.Event()
    outcomes: list[str | None] = []

    def slow_sync(descriptor: int) -> None:
        entered.set()
        assert go.wait(BOUND)
        os.fdatasync(descriptor)  # EBADF if the descriptor were closed meanwhile

    committer = Committer(slow_sync)
    olog = OpenLog(("t", "i"), fd)
    os.write(fd, b"record")
    ticket = committer.written(olog)
    committer.when_durable(ticket, outcomes.append)
    assert entered.wait(BOUND), "the committer never started its sync"
    retired = threading.Event()

    def retire() -> None:
        committer.retire(olog)
        os.close(fd)  # what FileStore._switch does next
        retired.set()

    closer = threading.Thread(target=retire)
    closer.start()
    assert not retired.wait(0.3), "the log was retired while its sync was under way"
    go.set()
    closer.join(BOUND)
    assert retired.is_set()
    assert committer.settle(BOUND)
    assert outcomes == [None]  # durable: the sync ran on the open descriptor
    assert olog.failed is None and olog.state(ticket.seq) is True
    committer.close()


def test_an_empty_add_on_a_durable_index_is_logged_as_a_no_op(start_server, tmp_path):
    """faiss takes a zero-row add as a no-op; so does a durable index (its log record has an
    empty array, which once failed to encode: ``internal``), and the log replays after it."""
    srv = durable_server(start_server, tmp_path, "always")
    row = np.random.default_rng(6).standard_normal((1, D)).astype("float32")
    peer = Peer(srv.endpoint)
    try:
        create_flat(peer, "empty")
        reply = peer.call("add", "empty", arrays={"x": np.zeros((0, D), "float32")})
        assert reply["ok"] and reply["result"]["ntotal"] == 0, reply
        assert peer.call("add", "empty", arrays={"x": row})["result"]["ntotal"] == 1
    finally:
        peer.close()
    srv.stop(signal.SIGKILL)
    srv.start()
    peer = Peer(srv.endpoint)
    try:
        assert peer.call("info", "empty")["result"]["ntotal"] == 1
    finally:
        peer.close()
