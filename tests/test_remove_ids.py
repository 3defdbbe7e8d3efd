"""``remove_ids`` through a real server leaves what local faiss's leaves: the same removed
counts, ``ntotal``, search results (tie order included: repeated vectors) and ``reconstruct``
by id (IndexIDMap2's reverse map, rebuilt after every removal), for ids present, absent,
repeated and negative, ranges and batch selectors; and a restart replays the logged removals
to the same index.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from .conftest import restarted_after_kill_9

D = 8


def data(seed: int, n: int, d: int = D) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype("float32")
    x[n // 6 : n // 6 + n // 12] = x[: n // 12]  # repeated vectors: ties in every search
    return x


def test_remote_removals_match_local_faiss(remote):
    """IDMap2,Flat (9 MB of codes, repeated vectors) removed from by ids present, absent and
    repeated, a range and a batch selector, like local faiss."""
    d, n = 256, 9000
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, d)).astype("float32")
    x[100:200] = x[:100]
    ids = (rng.permutation(n) * 7 - 50).astype("int64")
    local = faiss.index_factory(d, "IDMap2,Flat")
    proxy = remote.index_factory(d, "IDMap2,Flat")
    local.add_with_ids(x, ids)
    proxy.add_with_ids(x, ids)
    queries = x[:8]
    for step in range(6):
        gone = np.concatenate([rng.choice(ids, 100), [-3, 1 << 50]]).astype("int64")
        assert proxy.remove_ids(gone) == local.remove_ids(gone), step
    lo = int(np.sort(ids)[n // 2])
    assert proxy.remove_ids(remote.IDSelectorRange(lo, lo + 400)) == local.remove_ids(
        faiss.IDSelectorRange(lo, lo + 400)
    )
    batch = rng.choice(ids, 50).astype("int64")
    assert proxy.remove_ids(remote.IDSelectorBatch(batch)) == local.remove_ids(
        faiss.IDSelectorBatch(batch)
    )
    assert proxy.ntotal == local.ntotal
    for k in (1, 10, 50):
        Dr, Ir = proxy.search(queries, k)
        Dl, Il = local.search(queries, k)
        np.testing.assert_array_equal(Ir, Il)
        np.testing.assert_array_equal(Dr, Dl)
    kept = faiss.vector_to_array(local.id_map)
    np.testing.assert_array_equal(proxy.reconstruct_batch(kept), local.reconstruct_batch(kept))
    with pytest.raises(Exception, match="not found"):
        proxy.reconstruct(int(np.setdiff1d(ids, kept)[0]))


def test_repeated_ids_in_the_map_match_local_faiss(remote):
    """An id held by several rows: a removal takes every one, reconstruct finds the last."""
    x, ids = data(14, n=300), np.arange(300, dtype="int64") % 100
    local, proxy = faiss.index_factory(D, "IDMap2,Flat"), remote.index_factory(D, "IDMap2,Flat")
    local.add_with_ids(x, ids)
    proxy.add_with_ids(x, ids)
    gone = np.array([4, 4, 50, 1000], dtype="int64")
    assert proxy.remove_ids(gone) == local.remove_ids(gone) == 6
    left = np.setdiff1d(ids, gone)
    np.testing.assert_array_equal(proxy.reconstruct_batch(left), local.reconstruct_batch(left))
    np.testing.assert_array_equal(proxy.search(x[:5], 12)[1], local.search(x[:5], 12)[1])


def test_plain_flat_removals_match_local_faiss(remote):
    x = data(12, n=300)
    local, proxy = faiss.IndexFlatIP(D), remote.IndexFlatIP(D)
    local.add(x)
    proxy.add(x)
    for gone in ([0, 5, 5, 299, 400, -1], [], list(range(10, 60))):
        ids = np.array(gone, dtype="int64")
        assert proxy.remove_ids(ids) == local.remove_ids(ids)
    assert proxy.remove_ids(remote.IDSelectorRange(100, 130)) == local.remove_ids(
        faiss.IDSelectorRange(100, 130)
    )
    np.testing.assert_array_equal(
        proxy.reconstruct_n(0, proxy.ntotal), local.reconstruct_n(0, local.ntotal)
    )
    np.testing.assert_array_equal(proxy.search(x[:5], 10)[1], local.search(x[:5], 10)[1])


def test_logged_removals_replay_to_the_same_index(start_server, tmp_path):
    """A restart replays the logged removals through the same code: the recovered index is
    still the one local faiss has."""
    from faissx import client as fx

    srv = start_server("--data-dir", str(tmp_path / "d"))
    x, ids = data(13, n=400), (np.arange(400, dtype="int64") * 5)
    local = faiss.index_factory(D, "IDMap2,Flat")
    local.add_with_ids(x, ids)
    fx.configure(server=srv.endpoint)
    try:
        proxy = fx.index_factory(D, "IDMap2,Flat", name="gone")
        proxy.add_with_ids(x, ids)
        for gone in ([0, 5, 1995, 7], list(range(100, 700, 5)), [3, 4]):
            arr = np.array(gone, dtype="int64")
            assert proxy.remove_ids(arr) == local.remove_ids(arr)
    finally:
        fx.disconnect()
    with restarted_after_kill_9(srv):
        again = fx.open_index("gone")
        assert again.ntotal == local.ntotal
        np.testing.assert_array_equal(again.search(x[:6], 10)[1], local.search(x[:6], 10)[1])
        kept = faiss.vector_to_array(local.id_map)
        np.testing.assert_array_equal(again.reconstruct_batch(kept), local.reconstruct_batch(kept))
