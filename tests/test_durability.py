"""Durability: every acknowledged write survives kill -9; torn logs never load garbage.

The crash test streams acknowledged writes to a server with a data directory, kills it with
SIGKILL at a random moment, restarts it on the same directory and checks that every write the
client saw acknowledged is there. A write in flight at the kill may or may not have landed (it
was never acknowledged), so counts are checked as "at least" and contents exactly.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import faiss
import numpy as np
import pytest

import faissx_client as fx
from faissx_core.server.storage import LogRecord, encode_record, read_records

from .conftest import no_retries, restarted_after_kill_9

D = 16
BATCH = 50


def current_log(folder):
    """The write-ahead log of the generation meta.json names (older ones are removed)."""
    (log,) = folder.glob("wal-*.log")
    return log


def family_cases():
    # (factory string, binary, trains, uses ids, approximate)
    return [
        ("Flat", False, False, False, False),
        ("IVF16,Flat", False, True, False, True),
        ("HNSW16", False, False, False, True),
        # 4-bit codes: "PQ8" (8 bits) adds polysemous training, 40 s on a loaded machine
        ("PQ8x4", False, True, False, True),
        ("BFlat", True, False, False, False),
        ("IDMap2,Flat", False, False, True, False),
    ]


def vectors(rng, n, binary):
    if binary:
        return rng.integers(0, 256, (n, D // 8 * 4), dtype="uint8")
    return rng.standard_normal((n, D)).astype("float32")


def make(description, binary, name):
    if binary:
        return fx.index_binary_factory(D * 4, description, name=name)
    return fx.index_factory(D, description, name=name)


#: Two crashes per family, the first soon after writes start streaming, the second later and
#: into the store the first restart recovered (one server, one train: each costs seconds on a
#: loaded machine). Each lands once this many batches of the round were acknowledged, at a
#: random moment of the next write: a count, not a time, so an idle machine (which streams
#: hundreds of batches a second) does not make the check after it quadratically longer.
KILL_AFTER_BATCHES = (10, 40)


@pytest.mark.parametrize(
    ("description", "binary", "trains", "with_ids", "approx"),
    family_cases(),
    ids=[c[0] for c in family_cases()],
)
def test_acknowledged_writes_survive_kill_9(
    start_server, tmp_path, description, binary, trains, with_ids, approx
):
    rng = np.random.default_rng(len(description))
    data_dir = tmp_path / "data"
    srv = start_server("--data-dir", str(data_dir))
    fx.configure(server=srv.endpoint, timeout=180)  # the train, on a loaded machine
    acked: list[tuple[np.ndarray, np.ndarray]] = []
    removed: list[int] = []
    uncertain: list[int] = []
    try:
        index = make(description, binary, "crashme")
        if trains:
            index.train(vectors(rng, 2000, binary))
        fx.disconnect()
        start_id = 0
        for batches in KILL_AFTER_BATCHES:
            # no retries while writes stream: the call in flight at the kill fails at once (its
            # connection drops) instead of waiting out its timeout, which can then be generous
            # (a write that stalls on a loaded machine must not end the stream early)
            fx.configure(server=srv.endpoint, timeout=15)
            with no_retries():
                stopped_at = _stream_until_killed(
                    srv, rng, binary, with_ids, batches, start_id, acked, removed, uncertain
                )
            fx.disconnect()
            srv.start()  # same port, same data directory
            fx.configure(server=srv.endpoint, timeout=30)
            ntotal = _check_recovered(description, with_ids, approx, acked, removed, uncertain)
            fx.disconnect()
            # the batch in flight at the kill may have landed: the next round's ids skip it,
            # and positions (no ids) continue from what the server holds
            start_id = stopped_at + BATCH if with_ids else ntotal
    finally:
        fx.disconnect()
        srv.kill()


def _stream_until_killed(
    srv, rng, binary, with_ids, batches, start_id, acked, removed, uncertain
) -> int:
    """Stream acknowledged adds (and some removes) into "crashme" until ``kill -9`` lands,
    while the write after the ``batches``-th acknowledged one is under way; returns the next
    id."""
    index = fx.open_index("crashme")
    stop = threading.Event()
    already = len(acked)
    next_id = [start_id]

    def stream():
        start_id = next_id[0]
        while not stop.is_set():
            x = vectors(rng, BATCH, binary)
            ids = np.arange(start_id, start_id + BATCH, dtype="int64") * 7 + 3
            try:
                if with_ids:
                    index.add_with_ids(x, ids)
                else:
                    index.add(x)
            except Exception:
                return  # the server died: this batch was not acknowledged
            acked.append((x, ids if with_ids else np.arange(start_id, start_id + BATCH)))
            if with_ids and start_id and start_id % (4 * BATCH) == 0:  # and some removes
                gone = int(acked[0][1][start_id // BATCH % BATCH])
                uncertain.append(gone)  # until acknowledged, it may or may not be gone
                try:
                    if index.remove_ids(np.array([gone], dtype="int64")) == 1:
                        removed.append(gone)
                        uncertain.remove(gone)
                except Exception:
                    return
            start_id += BATCH
            next_id[0] = start_id

    writer = threading.Thread(target=stream)
    writer.start()
    # the kill lands while writes stream (bounded in time: a loaded machine is slow)
    deadline = time.monotonic() + 60
    while len(acked) < already + batches and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(random.uniform(0, 0.01))
    srv.stop(signal.SIGKILL)
    stop.set()
    writer.join(30)
    assert not writer.is_alive()
    assert len(acked) >= already + batches, "too few writes before the kill: it proves little"
    return next_id[0]


def _check_recovered(description, with_ids, approx, acked, removed, uncertain) -> int:
    """Every acknowledged add is found and no acknowledged remove came back; returns ntotal."""
    again = fx.open_index("crashme")
    total_acked = sum(len(x) for x, _ in acked)
    assert again.ntotal >= total_acked - len(removed) - len(uncertain)
    xs = np.concatenate([x for x, _ in acked])
    ids = np.concatenate([i for _, i in acked])
    keep = ~np.isin(ids, removed + uncertain)
    if approx:
        faiss_params = {"IVF16,Flat": ("nprobe", 16), "HNSW16": ("efSearch", 256)}
        if description in faiss_params:
            again.set_parameter(*faiss_params[description])
    _, found = again.search(xs[keep], 1)
    hits = found[:, 0] == ids[keep]
    # exact indices find every vector; approximate ones (PQ codes can tie, HNSW may miss)
    # still find nearly all: a lost batch would show as a whole missing run of ids
    assert hits.mean() >= (1.0 if not approx else 0.97), hits.mean()
    if with_ids and removed:
        _, found = again.search(xs[~keep], 1)
        assert not np.isin(found[:, 0], removed).any(), "a removed id came back"
    return again.ntotal


def test_torn_and_corrupt_log_tails_are_dropped(start_server, tmp_path):
    data_dir = tmp_path / "data"
    srv = start_server("--data-dir", str(data_dir))
    fx.configure(server=srv.endpoint)
    x = np.random.default_rng(1).standard_normal((30, D)).astype("float32")
    try:
        index = fx.IndexFlatL2(D, name="torn")
        for part in np.split(x, 3):
            index.add(part)
    finally:
        fx.disconnect()
    srv.stop(signal.SIGKILL)
    log_path = current_log(data_dir / "tenants" / "default" / "torn")
    data = log_path.read_bytes()
    records, good, dropped = read_records(memoryview(data))
    assert len(records) == 3 and good == len(data) and dropped is None
    # a torn append: half of a fourth record
    fourth = b"".join(
        bytes(p)
        for p in encode_record(LogRecord("add", {}, {"x": np.ones((1, D), dtype="float32")}))
    )
    log_path.write_bytes(data + fourth[: len(fourth) // 2])
    srv.start()
    fx.configure(server=srv.endpoint)
    try:
        assert fx.open_index("torn").ntotal == 30, "the torn record must not be replayed"
    finally:
        fx.disconnect()
    srv.stop(signal.SIGKILL)
    assert "torn record" in srv.output()
    # now corrupt one byte inside the third record: records 1-2 survive, 3 is dropped
    data = log_path.read_bytes()
    assert len(data) == good, "recovery cut the torn tail off the log"
    corrupt = bytearray(data)
    corrupt[-5] ^= 0xFF
    log_path.write_bytes(bytes(corrupt))
    srv.start()
    fx.configure(server=srv.endpoint)
    try:
        index = fx.open_index("torn")
        assert index.ntotal == 20
        np.testing.assert_array_equal(index.reconstruct_n(0, 20), x[:20])
    finally:
        fx.disconnect()
    assert "checksum mismatch" in srv.output()


@pytest.mark.parametrize("mode", ["always", "batch", "off"])
def test_fsync_modes_all_recover_after_kill(start_server, tmp_path, mode):
    srv = start_server("--data-dir", str(tmp_path / "d"), "--fsync", mode)
    x = np.random.default_rng(2).standard_normal((200, D)).astype("float32")
    fx.configure(server=srv.endpoint)
    try:
        index = fx.IndexFlatL2(D, name="modes")
        threads = [threading.Thread(target=index.add, args=(part,)) for part in np.split(x, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert index.ntotal == 200
    finally:
        fx.disconnect()
    with restarted_after_kill_9(srv):
        again = fx.open_index("modes")
        assert again.ntotal == 200
        _, found = again.search(x, 1)
        stored = again.reconstruct_n(0, 200)
        np.testing.assert_array_equal(np.sort(stored, axis=0), np.sort(x, axis=0))
        assert (found[:, 0] >= 0).all()


def test_a_durable_hnsw_index_is_checked_without_swig_leak_warnings(start_server, tmp_path):
    """Keeping an index named makes the server check that its snapshot would load back
    (attrs.check_storable). Reading every property of an ``IndexHNSW`` for that made SWIG copy
    faiss 1.15's ``std::optional<bool> use_visited_hashset`` into an object it cannot free:
    "swig/python detected a memory leak" in the server's log at each create."""
    srv = start_server("--data-dir", str(tmp_path / "d"))
    x = np.random.default_rng(3).standard_normal((50, D)).astype("float32")
    fx.configure(server=srv.endpoint)
    try:
        flat = fx.IndexHNSWFlat(D, 16, name="hnsw-flat")
        flat.add(x)
        sq = fx.index_factory(D, "HNSW16,SQ8", name="hnsw-sq")
        sq.train(x)
        sq.add(x)
        assert (flat.ntotal, sq.ntotal) == (50, 50)
    finally:
        fx.disconnect()
    assert "swig/python detected a memory leak" not in srv.output()


def test_snapshot_threshold_truncates_the_log(start_server, tmp_path):
    data_dir = tmp_path / "d"
    srv = start_server("--data-dir", str(data_dir), "--snapshot-every-mb", "0.0625")
    x = np.random.default_rng(3).standard_normal((3000, D)).astype("float32")
    fx.configure(server=srv.endpoint)
    try:
        index = fx.IndexFlatL2(D, name="snap")
        for part in np.split(x, 30):
            index.add(part)
    finally:
        fx.disconnect()
    log_size = current_log(data_dir / "tenants" / "default" / "snap").stat().st_size
    assert log_size < 64 * 1024 + 8 * 1024, "the log was snapshotted and emptied on the way"
    with restarted_after_kill_9(srv):
        again = fx.open_index("snap")
        np.testing.assert_array_equal(again.reconstruct_n(0, 3000), x)
        local = faiss.IndexFlatL2(D)
        local.add(x)
        np.testing.assert_array_equal(again.search(x[:5], 3)[1], local.search(x[:5], 3)[1])


def test_snapshot_interrupted_before_its_commit_is_ignored(start_server, tmp_path):
    """A crash after writing snapshot G+1 but before meta.json names it: G + its log win."""
    data_dir = tmp_path / "d"
    srv = start_server("--data-dir", str(data_dir))
    x = np.random.default_rng(4).standard_normal((40, D)).astype("float32")
    fx.configure(server=srv.endpoint)
    try:
        index = fx.IndexFlatL2(D, name="gen")
        index.add(x[:20])
        index.add(x[20:])
    finally:
        fx.disconnect()
    srv.stop(signal.SIGKILL)
    folder = data_dir / "tenants" / "default" / "gen"
    # what an interrupted snapshot leaves: the next generation's files, uncommitted
    partial = faiss.IndexFlatL2(D)
    partial.add(x)
    faiss.write_index(partial, str(folder / "snapshot-2.faiss"))
    (folder / "wal-2.log").write_bytes(b"")
    srv.start()
    fx.configure(server=srv.endpoint)
    try:
        again = fx.open_index("gen")
        assert again.ntotal == 40, "the log must not be replayed on top of a newer snapshot"
        np.testing.assert_array_equal(again.reconstruct_n(0, 40), x)
    finally:
        fx.disconnect()
    assert not (folder / "snapshot-2.faiss").exists(), "uncommitted leftovers are cleaned up"
