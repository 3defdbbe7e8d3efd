"""A client-side LRU cache of vectors reconstructed from remote indices.

``reconstruct`` and ``reconstruct_batch`` on a remote index cost a round trip each; a program
that reconstructs the same vectors again (re-ranking, showing search hits) can keep them here.
The cache is off until ``memory_manager.set_option("index_cache_size", n)`` gives it room for
``n`` vectors (all remote indices together). Any mutation of an index made through this client
(``add``, ``add_with_ids``, ``train``, ``remove_ids``, ``reset``, ``merge_from``, deleting it)
drops that index's entries first, so this client never reads back a vector it has changed.
Changes made by *other* clients to a shared named index are not seen: keep the cache off for
indices others write to, or empty it with :meth:`VectorCache.clear`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

IndexKey = Hashable


class VectorCache:
    """LRU of ``(index key, vector id) -> vector``, with hit and miss counters."""

    def __init__(self, capacity: int = 0) -> None:
        self._entries: OrderedDict[tuple[IndexKey, int], np.ndarray] = OrderedDict()
        self._by_index: dict[IndexKey, set[int]] = {}  # invalidation without a full scan
        self._generation: dict[IndexKey, int] = {}  # bumped by every invalidation
        self._mutex = threading.Lock()
        self.capacity = capacity
        self.hits = 0
        self.misses = 0

    def resize(self, capacity: int) -> None:
        """Room for ``capacity`` vectors (0 turns the cache off and empties it)."""
        with self._mutex:
            self.capacity = capacity
            self._evict()

    def get_many(self, index: IndexKey, ids: np.ndarray) -> list[np.ndarray | None]:
        """The cached vector of each id, or None; every lookup counts as a hit or a miss."""
        if self.capacity <= 0:
            return [None] * len(ids)
        out: list[np.ndarray | None] = []
        with self._mutex:
            for key in ids.tolist():
                vector = self._entries.get((index, key))
                if vector is None:
                    self.misses += 1
                else:
                    self._entries.move_to_end((index, key))
                    self.hits += 1
                out.append(vector)
        return out

    def generation(self, index: IndexKey) -> int:
        """Take this before fetching: :meth:`put_many` drops what a mutation made stale since."""
        with self._mutex:
            return self._generation.get(index, 0)

    def put_many(
        self, index: IndexKey, ids: np.ndarray, vectors: np.ndarray, generation: int | None = None
    ) -> None:
        if self.capacity <= 0:
            return
        with self._mutex:
            if generation is not None and generation != self._generation.get(index, 0):
                return  # the index changed while these vectors were on their way
            keys = self._by_index.setdefault(index, set())
            for key, vector in zip(ids.tolist(), vectors, strict=True):
                self._entries[(index, key)] = np.array(vector, copy=True)
                self._entries.move_to_end((index, key))
                keys.add(key)
            self._evict()

    def invalidate(self, index: IndexKey) -> int:
        """Forget every vector of one index; returns how many were dropped."""
        with self._mutex:
            self._generation[index] = self._generation.get(index, 0) + 1
            doomed = self._by_index.pop(index, set())
            for key in doomed:
                del self._entries[(index, key)]
        return len(doomed)

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()
            self._by_index.clear()

    def reset_stats(self) -> None:
        with self._mutex:
            self.hits = self.misses = 0

    def stats(self) -> dict[str, Any]:
        with self._mutex:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._entries),
                "capacity": self.capacity,
            }

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        while len(self._entries) > max(self.capacity, 0):
            (index, key), _ = self._entries.popitem(last=False)
            keys = self._by_index[index]
            keys.discard(key)
            if not keys:
                del self._by_index[index]


#: The one cache every remote index of this process uses.
vector_cache = VectorCache()
