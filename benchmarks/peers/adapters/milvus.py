"""Milvus Lite, as a server: ``milvus-lite server --data-dir D --host 127.0.0.1 --port P``
(the orchestrator starts it) and pymilvus's ``MilvusClient(uri="http://127.0.0.1:P")``.

Milvus Lite 3 is Milvus's embedded edition (a Python engine, faiss for its HNSW) behind the
same gRPC API as Milvus; its server command lets several client processes share a store,
which ``MilvusClient("file.db")`` does not. The load follows Milvus's docs for bulk data:
create the collection, insert in batches, ``flush`` (seal the segments), ``create_index``
(``FLAT`` for exact search, ``HNSW`` with M and efConstruction), ``load_collection``; searches
pass ``ef`` in ``search_params``. Its write-ahead log is fsynced only at close by default
(``sync_mode="close"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient

        self.DataType = DataType
        self.client = MilvusClient(uri=f"http://127.0.0.1:{config['port']}")
        self.name = ""
        self.kind = "flat"
        self.search_params: dict[str, Any] = {"metric_type": "L2", "params": {}}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {
            "milvus-lite": version("milvus-lite"),
            "pymilvus": version("pymilvus"),
            "faiss-cpu (inside milvus-lite)": version("faiss-cpu"),
        }

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        self.name, self.kind, self.build = name, kind, build
        if self.client.has_collection(name):
            self.client.drop_collection(name)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", self.DataType.INT64, is_primary=True)
        schema.add_field("vector", self.DataType.FLOAT_VECTOR, dim=d)
        self.client.create_collection(name, schema=schema)

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.client.insert(
            self.name,
            [{"id": int(i), "vector": row} for i, row in zip(ids.tolist(), x, strict=True)],
        )

    def finish_load(self) -> None:
        self.client.flush(self.name)
        index = self.client.prepare_index_params()
        if self.kind == "flat":
            index.add_index("vector", index_type="FLAT", metric_type="L2")
        else:
            index.add_index(
                "vector",
                index_type="HNSW",
                metric_type="L2",
                params={
                    "M": int(self.build["M"]),
                    "efConstruction": int(self.build["ef_construction"]),
                },
            )
        self.client.create_index(self.name, index)
        self.client.load_collection(self.name)

    def count(self) -> int:
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def attach(self, name: str, d: int, kind: str) -> None:
        self.name, self.kind = name, kind

    def set_search(self, params: dict[str, Any]) -> None:
        self.search_params = {
            "metric_type": "L2",
            "params": ({"ef": int(params["ef"])} if "ef" in params else {}),
        }

    def _search(self, x: np.ndarray, k: int) -> list[Any]:
        return self.client.search(
            self.name, data=list(x), limit=k, search_params=self.search_params, output_fields=[]
        )

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        return np.array([hit["id"] for hit in self._search(x, k)[0]], dtype=np.int64)

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(x), k), -1, dtype=np.int64)
        for i, hits in enumerate(self._search(x, k)):
            ids = [hit["id"] for hit in hits]
            out[i, : len(ids)] = ids
        return out

    def delete(self, ids: np.ndarray) -> None:
        self.client.delete(self.name, ids=ids.tolist())

    def drop(self, name: str) -> None:
        self.client.drop_collection(name)

    def close(self) -> None:
        self.client.close()
