"""Qdrant's local mode: the form of Qdrant that installs here.

Qdrant's server is a separate binary that PyPI does not carry; ``qdrant-client`` alone runs
"local mode", which its docs describe as for development and testing: points kept in Python
dicts, every search an exact numpy scan (an ``hnsw_config`` is accepted and ignored), so Qdrant
appears in the exact (Flat) rows only. With ``path=`` it persists each point as its own SQLite
transaction (``qdrant_client/local/persistence.py``; the fsync probe counts 4 fdatasyncs per
point): 17 s for 1000 points in one upsert on this machine, about 30 minutes for 100k. The
run therefore uses ``location=":memory:"`` (``config["path"]`` of ``":memory:"``);
``benchmarks.peers.fsync_probe`` measures the persistent form's one-row inserts. One process
may open a local store at a time, so its concurrent clients are threads in one process.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        path = config["path"]
        self.client = (
            QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        )
        self.name = ""

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"qdrant-client": version("qdrant-client"), "mode": "local"}

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        if kind != "flat":
            raise NotImplementedError(
                "qdrant-client local mode has no HNSW: it searches "
                "exactly whatever hnsw_config says"
            )
        self.name = name
        m = self.models
        if self.client.collection_exists(name):
            self.client.delete_collection(name)
        self.client.create_collection(
            name, vectors_config=m.VectorParams(size=d, distance=m.Distance.EUCLID)
        )

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.client.upsert(
            self.name, points=self.models.Batch(ids=ids.tolist(), vectors=x), wait=True
        )

    def finish_load(self) -> None:
        pass

    def count(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def attach(self, name: str, d: int, kind: str) -> None:
        self.name = name

    def set_search(self, params: dict[str, Any]) -> None:
        pass

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        points = self.client.query_points(self.name, query=x[0], limit=k).points
        return np.array([p.id for p in points], dtype=np.int64)

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        requests = [self.models.QueryRequest(query=row, limit=k) for row in x]
        out = np.full((len(x), k), -1, dtype=np.int64)
        for i, res in enumerate(self.client.query_batch_points(self.name, requests=requests)):
            ids = [p.id for p in res.points]
            out[i, : len(ids)] = ids
        return out

    def delete(self, ids: np.ndarray) -> None:
        self.client.delete(
            self.name, points_selector=self.models.PointIdsList(points=ids.tolist()), wait=True
        )

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def close(self) -> None:
        self.client.close()
