"""PostgreSQL + pgvector (from PyPI's ``pgserver`` wheel) over TCP with psycopg 3.

As pgvector's README does it: a ``vector(d)`` column, rows loaded with binary ``COPY``, exact
search as a plain ``ORDER BY embedding <-> q LIMIT k`` (a sequential scan), approximate search
through ``CREATE INDEX ... USING hnsw (embedding vector_l2_ops) WITH (m, ef_construction)``
built after the load (the README's advice for bulk loads) and ``SET hnsw.ef_search``. Each
insert call is one committed transaction (``synchronous_commit=on``: acknowledged after its WAL
fsync). A batch search is the queries sent in psycopg's pipeline mode: one round trip's worth
of latency for all of them, as close to a batch call as SQL offers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Adapter:
    def __init__(self, config: dict[str, Any]) -> None:
        import psycopg
        from pgvector.psycopg import register_vector

        self.psycopg = psycopg
        self.conn = psycopg.connect(
            host=config["host"],
            port=config["port"],
            user=config["user"],
            dbname="postgres",
            autocommit=True,
        )
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self.conn)
        self.table = ""
        self.kind = "flat"
        self.build: dict[str, Any] = {}

    def versions(self) -> dict[str, str]:
        pg = self.conn.execute("SHOW server_version").fetchone()[0]
        vec = self.conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()[0]
        settings = {
            name: self.conn.execute(f"SHOW {name}").fetchone()[0]
            for name in (
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "shared_buffers",
                "max_parallel_maintenance_workers",
            )
        }
        return {"postgresql": pg, "pgvector": vec, "psycopg": self.psycopg.__version__, **settings}

    def create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> None:
        self.table, self.kind, self.build = name.replace("-", "_"), kind, build
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.conn.execute(
            f"CREATE TABLE {self.table} (id bigint PRIMARY KEY, embedding vector({d}))"
        )

    def insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        with (
            self.conn.transaction(),
            self.conn.cursor() as cur,
            cur.copy(f"COPY {self.table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "vector"])
            for i, row in zip(ids.tolist(), x, strict=True):
                copy.write_row((i, row))

    def finish_load(self) -> None:
        if self.kind == "hnsw":
            self.conn.execute("SET maintenance_work_mem = '2GB'")
            self.conn.execute(
                f"CREATE INDEX ON {self.table} USING hnsw (embedding vector_l2_ops) "
                f"WITH (m = {int(self.build['M'])}, "
                f"ef_construction = {int(self.build['ef_construction'])})"
            )
        self.conn.execute(f"ANALYZE {self.table}")

    def count(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def attach(self, name: str, d: int, kind: str) -> None:
        self.table, self.kind = name.replace("-", "_"), kind

    def set_search(self, params: dict[str, Any]) -> None:
        if "ef" in params:
            self.conn.execute(f"SET hnsw.ef_search = {int(params['ef'])}")

    def _sql(self, k: int) -> str:
        return f"SELECT id FROM {self.table} ORDER BY embedding <-> %s LIMIT {int(k)}"

    def search_one(self, x: np.ndarray, k: int) -> np.ndarray:
        rows = self.conn.execute(self._sql(k), (x[0],), prepare=True).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def search_batch(self, x: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(x), k), -1, dtype=np.int64)
        sql = self._sql(k)
        with self.conn.pipeline():
            cursors = [self.conn.execute(sql, (row,), prepare=True) for row in x]
        for i, cur in enumerate(cursors):
            ids = [r[0] for r in cur.fetchall()]
            out[i, : len(ids)] = ids
        return out

    def delete(self, ids: np.ndarray) -> None:
        self.conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (ids.tolist(),))

    def drop(self, name: str) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {name.replace('-', '_')}")

    def close(self) -> None:
        self.conn.close()
