"""The sharding rules of ``--backend ray`` (``faissx_core/server/shards.py``), without Ray.

tests/test_ray.py checks each index family end to end on a real cluster at one shard count;
the rules that do not depend on the family -- how ids are split, how per-shard answers merge --
are checked here for every shard count against faiss's own ``IndexShards``, cheaply enough to
run in ``make test``.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from faissx_core.server.shards import Placement, merge_knn, merge_range, shard_of, split

D = 8


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("hashed", [False, True])
def test_split_puts_every_row_on_exactly_one_shard_in_order(shards, hashed):
    ids = np.arange(1000, dtype=np.int64) * 3 + 11 if hashed else np.arange(1000, dtype=np.int64)
    parts = split(ids, shards, hashed)
    assert len(parts) == shards
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(1000))  # each row once
    for s, part in enumerate(parts):
        assert np.all(np.diff(part) > 0)  # faiss adds in order: so does each shard
        assert np.all(shard_of(ids[part], shards, hashed) == s)
        if shards > 1:  # a patterned id sequence still spreads: no shard is starved
            assert len(part) > 1000 / shards / 2


def test_positional_ids_follow_the_modulo_rule():
    """Ids a Flat index assigns itself (ntotal + i) live on shard id % shards."""
    ids = np.arange(20, dtype=np.int64)
    np.testing.assert_array_equal(shard_of(ids, 3, hashed=False), ids % 3)


@pytest.mark.parametrize("shards", [2, 3, 4])
@pytest.mark.parametrize("metric", [faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT])
def test_merge_knn_equals_index_shards(shards, metric):
    rng = np.random.default_rng(shards)
    # a coarse grid makes equal distances common: ties must go faiss's way
    xb = rng.integers(0, 3, (300, D)).astype(np.float32)
    xq = rng.integers(0, 3, (10, D)).astype(np.float32)
    subs = [faiss.IndexIDMap2(faiss.IndexFlat(D, metric)) for _ in range(shards)]
    ids = np.arange(300, dtype=np.int64)
    for s, rows in enumerate(split(ids, shards, False)):
        subs[s].add_with_ids(xb[rows], ids[rows])
    reference = faiss.IndexShards(D, False, False)
    for sub in subs:
        reference.add_shard(sub)
    got = merge_knn([sub.search(xq, 7) for sub in subs], metric == faiss.METRIC_INNER_PRODUCT)
    want = reference.search(xq, 7)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("shards", [2, 3])
def test_merge_knn_of_hamming_distances_equals_index_binary_shards(shards):
    rng = np.random.default_rng(7)
    xb = rng.integers(0, 256, (200, 4), dtype=np.uint8)
    xq = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    subs = [faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(32)) for _ in range(shards)]
    ids = np.arange(200, dtype=np.int64)
    for s, rows in enumerate(split(ids, shards, False)):
        subs[s].add_with_ids(xb[rows], ids[rows])
    reference = faiss.IndexBinaryShards(32, False, False)
    for sub in subs:
        reference.add_shard(sub)
    got = merge_knn([sub.search(xq, 9) for sub in subs], False)
    want = reference.search(xq, 9)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_merge_range_equals_one_flat_index():
    rng = np.random.default_rng(3)
    xb = rng.random((400, D), dtype=np.float32)
    xq = rng.random((5, D), dtype=np.float32)
    one = faiss.IndexFlatL2(D)
    one.add(xb)
    ids = np.arange(400, dtype=np.int64)
    parts = []
    for rows in split(ids, 3, False):
        sub = faiss.IndexIDMap2(faiss.IndexFlatL2(D))
        sub.add_with_ids(xb[rows], ids[rows])
        lims, dist, found = sub.range_search(xq, 0.5)
        parts.append({"lims": lims, "D": dist, "I": found})
    merged = merge_range(parts, len(xq))
    lims, dist, found = one.range_search(xq, 0.5)
    np.testing.assert_array_equal(merged["lims"], lims)
    np.testing.assert_array_equal(merged["I"], found)
    np.testing.assert_allclose(merged["D"], dist, rtol=1e-6)


@pytest.mark.parametrize(("shards", "replicas"), [(0, 1), (257, 1), (1, 0), (1, 17)])
def test_placement_bounds(shards, replicas):
    with pytest.raises(ValueError, match="shards must be"):
        Placement(shards, replicas)
