"""Chroma in server mode: ``chroma run --path D --host 127.0.0.1 --port P`` (the orchestrator
starts it) and ``chromadb.HttpClient`` in each client process, as Chroma's client-server docs do.

Chroma has one vector index, HNSW (``configuration={"hnsw": {...}}``: ``max_neighbors`` is M,
``ef_construction``, ``ef_search``); it offers no exact mode, so it appears in the HNSW rows
only. Embeddings are passed in, no embedding function. A changed ``ef_search`` takes effect
only once the server reloads the collection (found while building this: ``modify`` is
accepted, searches keep the old value until a restart), so :meth:`set_search` asks the
orchestrator to restart the server when the value changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        import chromadb

        self.chromadb = chromadb
        self.port = int(config["port"])
        self.client = self._connect()
        self.collection: Any = None
        self.name = ""
        self.ef: int | None = None

    def _connect(self) -> Any:
        from chromadb.config import Settings

        return self.chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=Settings(anonymized_telemetry=False)
        )

    def versions(self) -> dict[str, str]:
        return {"chromadb": self.chromadb.__version__}

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        if kind != "hnsw":
            raise NotImplementedError("Chroma offers no exact (flat) index: HNSW only")
        self.name = name
        if name in {c.name for c in self.client.list_collections()}:
            self.client.delete_collection(name)
        self.collection = self.client.create_collection(
            name,
            embedding_function=None,
            configuration={
                "hnsw": {
                    "space": "l2",
                    "max_neighbors": int(build["M"]),
                    "ef_construction": int(build["ef_construction"]),
                    "ef_search": int(build.get("ef_search", 10)),
                }
            },
        )
        self.ef = int(build.get("ef_search", 10))

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.collection.add(ids=[str(i) for i in ids.tolist()], embeddings=x)

    def finish_load(self) -> None:
        pass

    def count(self) -> int:
        return int(self.collection.count())

    def attach(self, name: str, d: int, kind: str) -> None:
        self.name = name
        self.collection = self.client.get_collection(name, embedding_function=None)
        hnsw = self.collection.configuration_json.get("hnsw") or {}
        self.ef = hnsw.get("ef_search")  # set_search then changes nothing if it matches

    def set_search(self, params: dict[str, Any]) -> dict[str, Any]:
        ef = params.get("ef")
        if ef is None or ef == self.ef:
            return {}
        self.collection.modify(configuration={"hnsw": {"ef_search": int(ef)}})
        self.ef = int(ef)
        return {"restart": True}

    def reconnect(self) -> None:
        self.client = self._connect()
        self.collection = self.client.get_collection(self.name, embedding_function=None)

    def _ids(self, x: np.ndarray, k: int) -> list[list[str]]:
        return self.collection.query(query_embeddings=x, n_results=k, include=[])["ids"]

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        return np.array([int(i) for i in self._ids(x, k)[0]], dtype=np.int64)

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(x), k), -1, dtype=np.int64)
        for i, ids in enumerate(self._ids(x, k)):
            out[i, : len(ids)] = [int(j) for j in ids]
        return out

    def delete(self, ids: np.ndarray) -> None:
        self.collection.delete(ids=[str(i) for i in ids.tolist()])

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def close(self) -> None:
        self.collection = None
