"""Small writes answered on the socket thread: same results, same order, same durability.

A one-row ``add`` on an index whose reply waits for no disk flush (in memory, unnamed, or
``--fsync off``) runs on the server's socket thread instead of hopping to the pool and back, when
no earlier write of that index is still queued. These tests check what a user can see: the
vectors and their ids are what local faiss gives for the same calls, in the order they were
sent, also when pooled writes (a large add, another client's adds) are mixed in; acknowledged
writes survive ``kill -9`` right after their acks; and the server's request log says which
requests took the inline path (so each test knows it exercised it). No timing is asserted.
"""

from __future__ import annotations

import json
import signal
import threading

import faiss
import numpy as np
import pytest

import faissx_client as fx

from .conftest import ServerProcess

D = 16
#: Named in-memory indices warn that they will not survive a restart: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:index .* is named")


def request_lines(server) -> list[dict]:
    """The server's JSON request-log records (``--log-format json --log-requests all``)."""
    out = []
    for line in server.lines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "op" in entry and "outcome" in entry:
                out.append(entry)
    return out


def inline_adds(server, index: str) -> int:
    return sum(
        1
        for e in request_lines(server)
        if e["op"] in ("add", "add_with_ids") and e.get("index") == index and e.get("inline")
    )


@pytest.fixture(scope="module")
def logged():
    """An in-memory server that logs every request as JSON, shared by the tests that only add
    to indices of their own names (a server start costs seconds on a loaded machine)."""
    srv = ServerProcess("--log-format", "json", "--log-requests", "all").start()
    yield srv
    srv.kill()


@pytest.fixture
def rng():
    return np.random.default_rng(17)


def test_one_row_adds_match_local_faiss_in_order(logged, rng):
    """One-row adds (inline) around a large add (pooled): the same ids and results as faiss."""
    rows = rng.standard_normal((60, D)).astype("float32")
    big = rng.standard_normal((1500, D)).astype("float32")  # 96 KB: past the inline bound
    queries = rng.standard_normal((5, D)).astype("float32")
    local = faiss.IndexFlatL2(D)
    fx.configure(server=logged.endpoint, timeout=60)
    try:
        remote = fx.IndexFlatL2(D, name="rows")
        for x in (rows[:30], big, rows[30:]):
            parts = [x] if len(x) > 100 else [x[i : i + 1] for i in range(len(x))]
            for part in parts:
                remote.add(part)
                local.add(part)
        assert remote.ntotal == local.ntotal == 1560
        np.testing.assert_array_equal(remote.reconstruct_n(0, 1560), local.reconstruct_n(0, 1560))
        distances, ids = remote.search(queries, 7)
        want_d, want_i = local.search(queries, 7)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_allclose(distances, want_d, rtol=1e-5)
    finally:
        fx.disconnect()
    assert inline_adds(logged, "rows") >= 30, "no one-row add took the inline path"


def test_one_row_adds_with_ids_on_an_ivf_match_local_faiss(logged, rng):
    train = rng.standard_normal((400, D)).astype("float32")
    rows = rng.standard_normal((40, D)).astype("float32")
    ids = rng.choice(10_000, size=40, replace=False).astype("int64")
    local = faiss.IndexIDMap2(faiss.index_factory(D, "IVF8,Flat"))
    local.train(train)
    fx.configure(server=logged.endpoint, timeout=60)
    try:
        remote = fx.index_factory(D, "IDMap2,IVF8,Flat", name="ivf-rows")
        remote.train(train)
        for i in range(40):
            remote.add_with_ids(rows[i : i + 1], ids[i : i + 1])
            local.add_with_ids(rows[i : i + 1], ids[i : i + 1])
        remote.nprobe = 8
        faiss.ParameterSpace().set_index_parameter(local, "nprobe", 8)
        got = remote.search(rows, 3)
        want = local.search(rows, 3)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[1][:, 0], ids)  # each row finds itself, by its id
    finally:
        fx.disconnect()
    assert inline_adds(logged, "ivf-rows") >= 20


def test_concurrent_one_row_adds_keep_every_vector(logged, rng):
    """Several clients' one-row adds on one index (inline or pooled, whichever is free):
    every vector is stored once, and each client's own vectors keep their relative order."""
    per_client, clients = 40, 3
    data = rng.standard_normal((clients, per_client, D)).astype("float32")
    data[:, :, 0] = np.arange(clients)[:, None]  # which client sent a row
    data[:, :, 1] = np.arange(per_client)[None, :]  # its position in that client's stream
    fx.configure(server=logged.endpoint, timeout=60)
    try:
        fx.IndexFlatL2(D, name="shared")
        errors: list[BaseException] = []

        def stream(c: int) -> None:
            try:
                index = fx.open_index("shared")
                for i in range(per_client):
                    index.add(data[c, i : i + 1])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        index = fx.open_index("shared")
        stored = index.reconstruct_n(0, index.ntotal)
    finally:
        fx.disconnect()
    assert stored.shape == (clients * per_client, D)
    for c in range(clients):
        mine = stored[stored[:, 0] == c]
        np.testing.assert_array_equal(mine, data[c])  # all of them, in the order sent


@pytest.mark.parametrize("mode", ["off", "always"])
def test_acknowledged_one_row_adds_survive_kill_9(start_server, tmp_path, rng, mode):
    """Acked one-row adds are in the log when the server dies right after the acks: inline
    with ``--fsync off`` (the record is written before the ack) and with ``always`` (written
    inline, the ack held until the committer's fdatasync: group commit)."""
    args = ("--data-dir", str(tmp_path / "d"), "--fsync", mode)
    srv = start_server(*args, "--log-format", "json", "--log-requests", "all")
    rows = rng.standard_normal((80, D)).astype("float32")
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        index = fx.IndexFlatL2(D, name="durable-rows")
        for i in range(80):
            index.add(rows[i : i + 1])  # acknowledged when this returns
    finally:
        fx.disconnect()
    srv.stop(signal.SIGKILL)  # no clean shutdown: no snapshot, only the log
    assert inline_adds(srv, "durable-rows") >= 40
    srv.start()
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        again = fx.open_index("durable-rows")
        assert again.ntotal == 80
        np.testing.assert_array_equal(again.reconstruct_n(0, 80), rows)
    finally:
        fx.disconnect()


def test_one_row_adds_across_snapshot_thresholds_survive_kill_9(start_server, tmp_path, rng):
    """With a tiny ``--snapshot-every-mb`` the log keeps reaching its threshold: the write
    that crosses it goes to the pool (a snapshot must not stall the socket thread), and
    nothing acknowledged is lost whichever path each add took."""
    srv = start_server(
        "--data-dir",
        str(tmp_path / "d"),
        "--fsync",
        "off",
        "--snapshot-every-mb",
        "0.1",
        "--log-format",
        "json",
        "--log-requests",
        "all",
    )
    rows = rng.standard_normal((1300, D)).astype("float32")  # ~200 KB of log records
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        index = fx.IndexFlatL2(D, name="threshold")
        for i in range(1300):
            index.add(rows[i : i + 1])
    finally:
        fx.disconnect()
    srv.stop(signal.SIGKILL)
    lines = [e for e in request_lines(srv) if e["op"] == "add" and e.get("index") == "threshold"]
    assert any(e.get("inline") for e in lines) and not all(e.get("inline") for e in lines)
    srv.start()
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        again = fx.open_index("threshold")
        assert again.ntotal == 1300
        np.testing.assert_array_equal(again.reconstruct_n(0, 1300), rows)
    finally:
        fx.disconnect()


def listed_memory(name: str) -> int:
    listing = fx.get_client().call("list")[0]
    return {i["name"]: i["memory_bytes"] for i in listing["indexes"]}[name]


def test_memory_of_one_row_adds_stays_true(logged, rng):
    """Adds are accounted by rows x bytes per vector between full measurements: exact for a
    flat index, and within 1/16 of what faiss holds for an HNSW (random levels)."""
    from faissx_core.introspect import index_bytes

    rows = rng.standard_normal((300, D)).astype("float32")
    fx.configure(server=logged.endpoint, timeout=60)
    try:
        flat = fx.IndexFlatL2(D, name="mem-flat")
        hnsw = fx.index_factory(D, "HNSW8", name="mem-hnsw")
        for i in range(300):
            flat.add(rows[i : i + 1])
            hnsw.add(rows[i : i + 1])
            if i in (0, 7, 99, 299):
                assert listed_memory("mem-flat") == (i + 1) * D * 4
        exact = index_bytes(faiss.deserialize_index(fx.serialize_index(hnsw)))
        assert abs(listed_memory("mem-hnsw") - exact) <= exact / 16
    finally:
        fx.disconnect()
    assert inline_adds(logged, "mem-hnsw") >= 100


def test_max_memory_still_refuses_one_row_adds(start_server, rng):
    """``--max-memory`` sees every inline one-row add: the one that would cross is refused,
    and nothing past the limit is stored."""
    from faissx_core.errors import QuotaExceeded

    srv = start_server("--max-memory", "0.0625")  # 65,536 bytes: 1,024 rows of 64 B
    rows = rng.standard_normal((1100, D)).astype("float32")
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        index = fx.IndexFlatL2(D, name="capped")
        added = 0
        with pytest.raises(QuotaExceeded, match="--max-memory"):
            for i in range(1100):
                index.add(rows[i : i + 1])
                added += 1
        assert added == 1024
        assert index.ntotal == 1024
        np.testing.assert_array_equal(index.reconstruct_n(0, 1024), rows[:1024])
    finally:
        fx.disconnect()


def test_an_inline_write_never_waits_for_or_jumps_the_index_lock():
    """The socket thread takes an index's write lock only when nobody holds or wants it."""
    from faissx_core.server.locks import RWLock

    lock = RWLock()
    assert lock.acquire_write(blocking=False)
    assert not lock.acquire_write(blocking=False) and not lock.acquire_read(blocking=False)
    lock.release_write()
    assert lock.acquire_read(blocking=False)
    assert not lock.acquire_write(blocking=False)  # a search is running on it
    waiting = threading.Thread(target=lock.acquire_write)
    waiting.start()  # a pooled writer queues behind the reader
    while lock._waiting_writers == 0:
        threading.Event().wait(0.001)
    assert not lock.acquire_write(blocking=False)  # never ahead of a queued writer
    lock.release_read()
    waiting.join(10)
    assert not lock.acquire_write(blocking=False)  # the pooled writer got it first
