"""Work on one index does not hold up another; one client serves many threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def test_long_search_does_not_block_other_indices(remote):
    rng = np.random.default_rng(5)
    big = remote.IndexFlatL2(64)
    big.add(rng.standard_normal((100_000, 64), dtype="float32"))
    small = remote.IndexFlatL2(8)
    small.add(np.eye(8, dtype="float32"))
    queries = rng.standard_normal((3000, 64), dtype="float32")

    big_done = threading.Event()
    small_finished_first = []

    def long_search():
        big.search(queries, 10)
        big_done.set()

    thread = threading.Thread(target=long_search)
    thread.start()
    try:
        for _ in range(20):
            small.search(np.eye(8, dtype="float32")[:1], 1)
            small_finished_first.append(not big_done.is_set())
    finally:
        thread.join(60)
    assert big_done.is_set()
    assert all(small_finished_first), "small searches waited for the long one"


def test_threads_share_one_client_without_crossed_replies(remote):
    index = remote.IndexFlatL2(16)
    base = np.random.default_rng(9).standard_normal((2000, 16), dtype="float32")
    index.add(base)
    extra = remote.IndexFlatL2(16)

    def worker(seed: int) -> int:
        rng = np.random.default_rng(seed)
        for _ in range(30):
            ids = rng.integers(0, len(base), size=int(rng.integers(1, 6)))
            _, found = index.search(base[ids], 1)
            assert found[:, 0].tolist() == ids.tolist(), "a thread got another thread's reply"
            extra.add(base[ids[:1]])
        return seed

    with ThreadPoolExecutor(12) as pool:
        assert sorted(pool.map(worker, range(12))) == list(range(12))
    assert extra.ntotal == 12 * 30
