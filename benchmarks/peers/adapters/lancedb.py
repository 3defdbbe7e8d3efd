"""LanceDB, embedded (``lancedb.connect(dir)``), as its docs set up a vector table.

Rows are appended with ``table.add`` (each call a new Lance version on disk). Exact search is
a table without a vector index (LanceDB then scans every row: its documented brute-force kNN);
HNSW is ``create_index(config=HnswFlat(m, ef_construction, num_partitions=1))``: one IVF
partition holding one HNSW graph over full-precision vectors, built after the load, searched
with ``.ef(ef)``. Several processes can open the same directory, so the concurrent clients are
processes, as with the servers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        import lancedb
        import pyarrow as pa

        self.lancedb, self.pa = lancedb, pa
        self.db = lancedb.connect(config["path"])
        self.table: Any = None
        self.kind = "flat"
        self.ef: int | None = None
        self.d = 0

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"lancedb": version("lancedb"), "pyarrow": self.pa.__version__}

    def _batch(self, x: np.ndarray, ids: np.ndarray) -> Any:
        pa = self.pa
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        return pa.table({"id": pa.array(ids), "vector": vectors})

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        self.kind, self.build, self.d = kind, build, d
        schema = self.pa.schema(
            [("id", self.pa.int64()), ("vector", self.pa.list_(self.pa.float32(), d))]
        )
        self.table = self.db.create_table(name, schema=schema, mode="overwrite")

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.table.add(self._batch(x, ids))

    def finish_load(self) -> None:
        if self.kind == "hnsw":
            from lancedb.index import HnswFlat

            self.table.create_index(
                "vector",
                config=HnswFlat(
                    distance_type="l2",
                    num_partitions=1,
                    m=int(self.build["M"]),
                    ef_construction=int(self.build["ef_construction"]),
                ),
            )

    def count(self) -> int:
        return int(self.table.count_rows())

    def attach(self, name: str, d: int, kind: str) -> None:
        self.kind, self.d = kind, d
        self.table = self.db.open_table(name)

    def set_search(self, params: dict[str, Any]) -> None:
        self.ef = int(params["ef"]) if "ef" in params else None

    def _query(self, x: Any, k: int) -> Any:
        q = self.table.search(x).distance_type("l2").select(["id"]).limit(k)
        if self.kind == "hnsw" and self.ef:
            q = q.ef(self.ef)
        return q

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        return self._query(x[0], k).to_arrow()["id"].to_numpy()

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        res = self._query(list(x), k).to_arrow()
        out = np.full((len(x), k), -1, dtype=np.int64)
        qi = res["query_index"].to_numpy()
        ids = res["id"].to_numpy()
        fill = np.zeros(len(x), dtype=np.int64)
        for q, i in zip(qi, ids, strict=True):  # rows come grouped by query, nearest first
            if fill[q] < k:
                out[q, fill[q]] = i
                fill[q] += 1
        return out

    def delete(self, ids: np.ndarray) -> None:
        self.table.delete(f"id IN ({', '.join(map(str, ids.tolist()))})")

    def drop(self, name: str) -> None:
        self.db.drop_table(name)

    def close(self) -> None:
        self.table = None
