"""How a sharded index splits writes and merges reads: pure functions, no Ray in here.

The rules are faiss's own, so that a sharded index answers as one index would:

* Ids. An index that numbers its vectors itself (Flat, IVF, HNSW, PQ, ...) gives the i-th added
  vector the id ``ntotal + i``; the front end assigns those ids, so every shard stores global
  ids and a search needs no translation. Such a vector lives on shard ``id % shards``. An index
  that takes the caller's ids (``IndexIDMap``/``IDMap2``) routes each id by a hash of it, so
  ids that share a pattern still spread evenly.
* k-NN. Each shard answers its own sorted top-k; they merge with ``faiss.merge_knn_results``,
  the function ``IndexShards`` calls, so distances and the order of ties are faiss's (a tie
  goes to the lower shard first).
* Range search. Each shard's hits for a query are concatenated, then ordered by id per query:
  a Flat index scans in id order, so that is exactly a single Flat index's answer; for other
  types the set of hits is the single index's and the order is a stable, documented one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

#: splitmix64's multiplier: a cheap, well-mixing hash of an int64 id (no Python loop).
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Placement:
    """How many pieces an index is cut into, and how many copies each piece has."""

    shards: int = 1
    replicas: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 256 or not 1 <= self.replicas <= 16:
            raise ValueError(
                f"shards must be 1..256 and replicas 1..16, got {self.shards} and {self.replicas}"
            )


def shard_of(ids: np.ndarray, shards: int, hashed: bool) -> np.ndarray:
    """The shard each id lives on: ``id % shards``, or a hash of the id for caller ids."""
    ids = np.asarray(ids, dtype=np.int64)
    if shards == 1:
        return np.zeros(len(ids), dtype=np.int64)
    if not hashed:
        return ids % shards
    with np.errstate(over="ignore"):
        h = ids.astype(np.uint64) * _MIX
        h ^= h >> np.uint64(31)
    return (h % np.uint64(shards)).astype(np.int64)


def split(ids: np.ndarray, shards: int, hashed: bool) -> list[np.ndarray]:
    """Row positions going to each shard, in their original order (faiss adds in order)."""
    owner = shard_of(ids, shards, hashed)
    return [np.flatnonzero(owner == s) for s in range(shards)]


def merge_knn(
    parts: list[tuple[np.ndarray, np.ndarray]], keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (D, I) of one query batch exactly as ``faiss.IndexShards`` does."""
    if len(parts) == 1:
        return parts[0]
    Dall = np.ascontiguousarray(np.stack([d for d, _ in parts]))
    Iall = np.ascontiguousarray(np.stack([i for _, i in parts]).astype(np.int64, copy=False))
    if Dall.dtype != np.float32:  # faiss's merge is for float distances; Hamming is int32
        return _merge_int(Dall, Iall, keep_max)
    return faiss.merge_knn_results(Dall, Iall, keep_max=keep_max)


def _merge_int(Dall: np.ndarray, Iall: np.ndarray, keep_max: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integer distances: a stable sort over shard-major candidates keeps faiss's tie order
    (lower shard, then rank within the shard) and drops the -1 padding last."""
    nshard, nq, k = Dall.shape
    D = np.moveaxis(Dall, 0, 1).reshape(nq, nshard * k)
    I = np.moveaxis(Iall, 0, 1).reshape(nq, nshard * k)
    key = -D.astype(np.int64) if keep_max else D.astype(np.int64)
    key = np.where(I < 0, np.iinfo(np.int64).max, key)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def merge_range(parts: list[dict[str, np.ndarray]], nq: int) -> dict[str, np.ndarray]:
    """Merge per-shard ``range_search`` answers (lims, D, I): per query, hits ordered by id."""
    lims = np.zeros(nq + 1, dtype=np.uint64)
    Ds: list[np.ndarray] = []
    Is: list[np.ndarray] = []
    for q in range(nq):
        d = np.concatenate([p["D"][p["lims"][q] : p["lims"][q + 1]] for p in parts])
        i = np.concatenate([p["I"][p["lims"][q] : p["lims"][q + 1]] for p in parts])
        order = np.argsort(i, kind="stable")
        Ds.append(d[order])
        Is.append(i[order])
        lims[q + 1] = lims[q] + len(i)
    dtype = parts[0]["D"].dtype if parts else np.float32
    return {
        "lims": lims,
        "D": np.concatenate(Ds).astype(dtype, copy=False) if Ds else np.empty(0, dtype),
        "I": np.concatenate(Is).astype(np.int64, copy=False) if Is else np.empty(0, np.int64),
    }


def keep_max(index: Any) -> bool:
    """Whether larger distances are better (inner product), as faiss's result handlers ask."""
    return int(index.metric_type) == faiss.METRIC_INNER_PRODUCT and not isinstance(
        index, faiss.IndexBinary
    )


def takes_ids(index: Any) -> bool:
    """Whether the index stores the caller's ids (an id map): then ids route by hash."""
    return isinstance(
        faiss.downcast_index(index) if isinstance(index, faiss.Index) else index,
        faiss.IndexIDMap | faiss.IndexIDMap2,
    )
