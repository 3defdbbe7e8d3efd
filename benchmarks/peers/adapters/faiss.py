"""FAISSx through its real client, or plain local faiss (the anchor): the same faiss calls.

``config["endpoint"]`` set: ``from faissx import client as faiss`` + ``configure(server=...)``,
the one-import switch a user makes, against a ``faissx serve`` the orchestrator started. Unset:
``import faiss`` in this process. Exact search is ``IDMap2,Flat`` (ids as the peers get them,
and deletable); HNSW is ``HNSW<M>`` with ``efConstruction`` set before the add (faiss's HNSW
cannot remove vectors, so ``delete`` there raises faiss's own error, reported as such).

Local faiss searches one query with one OpenMP thread (as FAISSx's server does for small
reads): on a loaded 2-core machine an OpenMP team for one query waits for a descheduled thread
(``IDMap2`` opens one to translate ids) and its p50 went from 16 µs to 24 ms; batches keep
every thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        self.endpoint = config.get("endpoint")
        if self.endpoint:
            from faissx import client

            client.configure(server=self.endpoint, timeout=600)
            self.faiss = client
        else:
            import faiss

            self.faiss = faiss
        self.index: Any = None
        self.kind = "flat"

    def versions(self) -> dict[str, str]:
        import faiss

        out = {"faiss": faiss.__version__}
        if self.endpoint:
            import faissx

            out["faissx"] = getattr(faissx, "__version__", "?")
        return out

    def _named(self) -> dict[str, Any]:
        return {"name": self.name} if self.endpoint else {}

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        self.name, self.kind = name, kind
        if kind == "flat":
            self.index = self.faiss.index_factory(d, "IDMap2,Flat", **self._named())
        else:
            self.index = self.faiss.index_factory(d, f"HNSW{build['M']}", **self._named())
            self.index.hnsw.efConstruction = int(build["ef_construction"])

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        if self.kind == "flat":
            self.index.add_with_ids(x, ids)
        else:
            self.index.add(x)  # HNSW numbers rows 0..n-1: the ids the run inserts

    def finish_load(self) -> None:
        pass  # an add is searchable when it returns

    def count(self) -> int:
        return int(self.index.ntotal)

    def attach(self, name: str, d: int, kind: str) -> None:
        if not self.endpoint:
            raise RuntimeError("local faiss indices live in one process: nothing to attach")
        self.name, self.kind = name, kind
        self.index = self.faiss.open_index(name)

    def set_search(self, params: dict[str, Any]) -> None:
        if self.kind == "hnsw" and "ef" in params:
            self.index.hnsw.efSearch = int(params["ef"])

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        if self.endpoint:
            return self.index.search(x, k)[1][0]
        threads = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(1)
        try:
            return self.index.search(x, k)[1][0]
        finally:
            self.faiss.omp_set_num_threads(threads)

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(x, k)[1]

    def delete(self, ids: np.ndarray) -> None:
        self.index.remove_ids(ids)

    def drop(self, name: str) -> None:
        if self.endpoint:
            self.faiss.delete_index(name)
        self.index = None

    def close(self) -> None:
        if self.endpoint:
            self.faiss.disconnect()
