"""Pipelined large calls: parts in flight, applied in order, stopped at the first failure.

A remote ``add`` or ``search`` larger than its batch size goes as several requests with a few in
flight at once. What must hold is that nothing about the result shows it: the vectors land in
the order given (so sequential ids match local faiss), a failing part leaves the parts before it
added and the ones after it not (as a loop of calls would), and search results are the arrays
one call returns. Underneath, the server applies each index's writes in arrival order and skips
a write whose ``after`` key names a write that did not succeed.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pytest

from faissx_core.errors import InvalidArgument
from faissx_core.server.ordering import SerialQueues

from .test_wire import Wire, assert_error, header, message

D = 16
K = 5
RNG = np.random.default_rng(77)
BASE = RNG.standard_normal((1000, D)).astype("float32")
QUERIES = RNG.standard_normal((200, D)).astype("float32")


def test_pipelined_add_lands_in_order(remote):
    index = remote.IndexFlatL2(D)
    index.set_parameter("batch_size", 7)  # 143 parts, three in flight
    index.add(BASE)
    assert index.ntotal == len(BASE)
    np.testing.assert_array_equal(index.reconstruct_n(0, len(BASE)), BASE)

    reference = faiss.IndexFlatL2(D)
    reference.add(BASE)
    D_remote, I_remote = index.search(QUERIES, K)
    D_local, I_local = reference.search(QUERIES, K)
    np.testing.assert_array_equal(I_remote, I_local)
    np.testing.assert_allclose(D_remote, D_local, rtol=1e-6)


def test_pipelined_add_with_ids(remote):
    index = remote.IndexIDMap(remote.IndexFlatL2(D))
    index.set_parameter("batch_size", 64)
    ids = np.arange(len(BASE), dtype=np.int64)[::-1] * 3 + 11
    index.add_with_ids(BASE, ids)
    reference = faiss.IndexIDMap(faiss.IndexFlatL2(D))
    reference.add_with_ids(BASE, ids)
    np.testing.assert_array_equal(index.search(QUERIES, K)[1], reference.search(QUERIES, K)[1])


def test_a_failing_part_stops_the_parts_after_it(remote):
    """Part 6 of 10 carries a NaN: parts 1-5 stay added, 7-10 (valid, already in flight) not.
    (The parts go through the client's pipeline as ``add`` would send them: ``add`` itself
    refuses a NaN before sending anything, test_bulk_add.py.)"""
    bad = BASE.copy()
    bad[550, 3] = np.nan
    index = remote.IndexFlatL2(D)
    index.add(BASE[:1])
    index.reset()  # the index exists on the server, empty
    parts = [({"reserve": len(bad) - lo}, {"x": bad[lo : lo + 100]}) for lo in range(0, 1000, 100)]
    with pytest.raises(InvalidArgument, match="NaN"):
        index._client.pipeline("add", index._name, parts, 3)
    assert index.ntotal == 500
    np.testing.assert_array_equal(index.reconstruct_n(0, 500), BASE[:500])
    index.add(BASE[500:])  # the index is not left poisoned
    np.testing.assert_array_equal(index.reconstruct_n(0, len(BASE)), BASE)


def test_pipelined_search_matches_one_call(remote):
    index = remote.IndexFlatL2(D)
    index.add(BASE)
    whole = index.search(QUERIES, K)
    index.set_parameter("batch_size", 13)
    parts = index.search(QUERIES, K)
    np.testing.assert_array_equal(parts[1], whole[1])
    np.testing.assert_array_equal(parts[0], whole[0])

    # a selector's id array travels with every part
    keep = np.arange(0, len(BASE), 3, dtype=np.int64)
    reference = faiss.IndexFlatL2(D)
    reference.add(BASE)
    local = reference.search(
        QUERIES, K, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(keep))
    )
    got = index.search(QUERIES, K, params=remote.SearchParameters(sel=remote.IDSelectorBatch(keep)))
    np.testing.assert_array_equal(got[1], local[1])


# -- the wire underneath ------------------------------------------------------------------------


@pytest.fixture
def wire(server):
    w = Wire(server.endpoint)
    yield w
    w.close()


def _add(name: str, x: np.ndarray, **extra) -> list[bytes]:
    return message(header("add", index=name, idem=uuid.uuid4().hex, **extra), {"x": x})


def test_writes_on_one_index_apply_in_arrival_order(wire):
    """Fifty one-vector adds sent back to back, none awaited: the rows land in send order."""
    name = f"order-{uuid.uuid4().hex[:8]}"
    wire.ok(
        header("create", index=name, args={"spec": {"type": "IndexFlatL2", "params": {"d": D}}})
    )
    for row in BASE[:50]:
        wire.send(_add(name, row[None, :]))
    replies = [wire.recv() for _ in range(50)]
    assert all(h["ok"] for h, _ in replies), replies
    _, out = wire.ok(header("reconstruct_n", index=name, args={"n0": 0, "ni": 50}))
    np.testing.assert_array_equal(out["x"], BASE[:50])


def test_after_names_the_write_that_must_have_succeeded(wire):
    name = f"after-{uuid.uuid4().hex[:8]}"
    wire.ok(
        header("create", index=name, args={"spec": {"type": "IndexFlatL2", "params": {"d": D}}})
    )
    first = uuid.uuid4().hex
    wire.ok(header("add", index=name, idem=first), {"x": BASE[:10]})
    wire.ok(header("add", index=name, idem=uuid.uuid4().hex, after=first), {"x": BASE[10:20]})

    never_sent = uuid.uuid4().hex
    h = header("add", index=name, idem=uuid.uuid4().hex, after=never_sent)
    assert_error(wire.call(message(h, {"x": BASE[20:30]})), "aborted", h["id"])

    failed = uuid.uuid4().hex
    nan = BASE[20:30].copy()
    nan[0, 0] = np.inf
    h = header("add", index=name, idem=failed)
    assert_error(wire.call(message(h, {"x": nan})), "invalid_argument", h["id"])
    h = header("add", index=name, idem=uuid.uuid4().hex, after=failed)
    assert_error(wire.call(message(h, {"x": BASE[20:30]})), "aborted", h["id"])

    info, _ = wire.ok(header("info", index=name))
    assert info["ntotal"] == 20


# -- the queue itself ---------------------------------------------------------------------------


def test_serial_queues_keep_order_per_key_and_run_keys_side_by_side():
    with ThreadPoolExecutor(4) as pool:
        queues = SerialQueues(pool)
        seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
        for i in range(300):
            key = "abc"[i % 3]

            def job(key: str = key, i: int = i) -> None:
                time.sleep(0.0005 * (i % 2))  # uneven jobs, as writes are
                seen[key].append(i)

            queues.submit(key, job)
        # two keys in parallel: each job waits for the other's, which only works side by side
        both = threading.Barrier(2, timeout=5)
        met: list[str] = []
        queues.submit("x", lambda: met.append(f"x{both.wait()}"))
        queues.submit("y", lambda: met.append(f"y{both.wait()}"))
        deadline = time.monotonic() + 10
        while queues.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert queues.pending() == 0
    for key, order in seen.items():
        assert order == sorted(order) and len(order) == 100, key
    assert len(met) == 2


def test_reserve_makes_room_without_adding(wire):
    """``reserve`` is a hint: storage grows ahead, ntotal and contents are only what was sent."""
    name = f"reserve-{uuid.uuid4().hex[:8]}"
    wire.ok(
        header("create", index=name, args={"spec": {"type": "IndexFlatL2", "params": {"d": D}}})
    )
    for lo in range(0, 300, 100):
        wire.ok(
            header("add", index=name, idem=uuid.uuid4().hex, args={"reserve": 1000 - lo}),
            {"x": BASE[lo : lo + 100]},
        )
    info, _ = wire.ok(header("info", index=name))
    assert info["ntotal"] == 300
    _, out = wire.ok(header("reconstruct_n", index=name, args={"n0": 0, "ni": 300}))
    np.testing.assert_array_equal(out["x"], BASE[:300])

    h = header("add", index=name, idem=uuid.uuid4().hex, args={"reserve": -1})
    assert_error(wire.call(message(h, {"x": BASE[:1]})), "invalid_argument", h["id"])
    info, _ = wire.ok(header("info", index=name))
    assert info["ntotal"] == 300
