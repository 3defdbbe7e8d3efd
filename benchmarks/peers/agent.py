"""The measuring end of the peer benchmark: one worker process inside one system's virtualenv.

Self-contained on purpose (numpy and psutil, plus whatever the adapter imports): it runs with
``python -I`` in ``benchmarks/peers/.venvs/<system>`` where neither this repository nor another
system's packages are importable, so that Chroma's, LanceDB's, Milvus's ... dependencies never
mix. It speaks the JSON-lines protocol of ``benchmarks/driver.py worker`` (one command a line on
stdin, ``{"ok": ..., "result"|"error": ...}`` a line on stdout), so the orchestrator drives it
with the same :class:`benchmarks.procs.Worker` / :class:`benchmarks.procs.Pool`.

The adapter is the file ``adapters/<system>.py`` next to this one, loaded by path (it is named
after the system, so putting its folder on ``sys.path`` would shadow the system's package). Every
timing loop lives here, once: what differs between systems is only the adapter's calls.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ADAPTERS = Path(__file__).resolve().with_name("adapters")


def rss_bytes() -> int:
    """This process's resident set size (psutil where installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the true k nearest neighbours found among the k returned (ids < 0 are misses)."""
    hits = 0
    for row, true_row in zip(found, truth, strict=True):
        hits += len(set(int(i) for i in row[:k] if i >= 0) & set(int(i) for i in true_row[:k]))
    return hits / (len(truth) * k)


class Agent:
    def __init__(self) -> None:
        self.adapter: Any = None
        self.arrays: dict[str, np.ndarray] = {}
        self.rss_start = rss_bytes()

    def data(self, path: str) -> np.ndarray:
        arr = self.arrays.get(path)
        if arr is None:
            arr = self.arrays[path] = np.load(path, mmap_mode="r")
        return arr

    # -- commands ----------------------------------------------------------------------------
    def cmd_hello(self, adapter: str, config: dict[str, Any]) -> dict[str, Any]:
        """Load ``adapters/<adapter>.py`` and connect it as ``config`` says."""
        spec = importlib.util.spec_from_file_location(
            f"peer_adapter_{adapter}", ADAPTERS / f"{adapter}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.adapter = module.Adapter(config)
        return {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "versions": self.adapter.versions(),
            "rss": rss_bytes(),
        }

    def cmd_create(self, name: str, d: int, kind: str, build: dict[str, Any]) -> dict[str, Any]:
        before = rss_bytes()
        t0 = time.perf_counter()
        self.adapter.create(name, d, kind, build)
        return {"seconds": time.perf_counter() - t0, "rss_before": before}

    def cmd_load(
        self,
        data: str,
        batch: int,
        start: int = 0,
        stop: int | None = None,
        n: int | None = None,
        finish: bool = True,
    ) -> dict[str, Any]:
        """Insert rows ``start``..``stop``-1 (id = row number; ``n``: rows 0..n-1) in
        ``batch``-row calls; with ``finish``, then make them searchable (an index build, a
        flush: whatever the system needs), timed apart."""
        xb = self.data(data)
        stop = n if stop is None else stop
        assert stop is not None
        before = rss_bytes()
        t0 = time.perf_counter()
        for first in range(start, stop, batch):
            last = min(first + batch, stop)
            self.adapter.insert(
                np.ascontiguousarray(xb[first:last], dtype=np.float32),
                np.arange(first, last, dtype=np.int64),
            )
        inserted = time.perf_counter() - t0
        out = {"insert_s": inserted, "rss_before": before, "rss": rss_bytes()}
        if finish:
            built = self.cmd_finish_load()
            out.update(
                seconds=inserted + built["seconds"], index_s=built["seconds"], count=built["count"]
            )
        return out

    def cmd_finish_load(self) -> dict[str, Any]:
        """Make what was inserted searchable; seconds, and the count the system reports."""
        t0 = time.perf_counter()
        self.adapter.finish_load()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "count": int(self.adapter.count()), "rss": rss_bytes()}

    def cmd_add_rows(self, data: str, rows: int, first_id: int) -> list[float]:
        """Seconds per one-row insert (the rows of ``data``, ids from ``first_id``): how an
        application that adds one document at a time (LlamaIndex, LangChain) writes."""
        x = self.data(data)
        clock = time.perf_counter
        times = []
        for i in range(rows):
            row = np.ascontiguousarray(x[i : i + 1], dtype=np.float32)
            ids = np.array([first_id + i], dtype=np.int64)
            t0 = clock()
            self.adapter.insert(row, ids)
            times.append(clock() - t0)
        return times

    def cmd_attach(self, name: str, d: int, kind: str, search: dict[str, Any]) -> dict[str, Any]:
        """Open a collection another agent built (the concurrent clients)."""
        self.adapter.attach(name, d, kind)
        self.adapter.set_search(search)  # a restart it asks for has happened: the value holds
        return {"rss": rss_bytes()}

    def cmd_set_search(self, search: dict[str, Any]) -> dict[str, Any]:
        """Set search-time parameters; ``{"restart": true}`` when the system applies them only
        after a server restart (then :meth:`cmd_reconnect` follows it)."""
        return self.adapter.set_search(search) or {}

    def cmd_reconnect(self) -> dict[str, Any]:
        self.adapter.reconnect()
        return {}

    def cmd_recall(self, queries: str, truth: str, k: int, nq: int) -> dict[str, Any]:
        """One batch search of ``nq`` queries: recall@k against exact ground truth, seconds."""
        xq = np.ascontiguousarray(self.data(queries)[:nq], dtype=np.float32)
        t0 = time.perf_counter()
        found = np.asarray(self.adapter.search_batch(xq, k))
        seconds = time.perf_counter() - t0
        return {
            "recall": recall_at_k(found, self.data(truth)[:nq], k),
            "seconds": seconds,
            "qps": nq / seconds,
        }

    def cmd_latency(self, queries: str, k: int, reps: int, warmup: int) -> list[float]:
        """Seconds per one-query search, ``reps`` of them after ``warmup`` untimed."""
        xq = self.data(queries)
        rows = [np.ascontiguousarray(xq[i : i + 1], dtype=np.float32) for i in range(len(xq))]
        for i in range(warmup):
            self.adapter.search_one(rows[i % len(rows)], k)
        clock = time.perf_counter
        times = []
        for i in range(reps):
            x = rows[(warmup + i) % len(rows)]
            t0 = clock()
            self.adapter.search_one(x, k)
            times.append(clock() - t0)
        return times

    def cmd_qps(
        self, queries: str, k: int, start_at: float, duration: float, threads: int = 1
    ) -> dict[str, Any]:
        """One-query searches in a loop from ``start_at`` (wall clock) for ``duration`` s.

        ``threads`` > 1 runs that many loops in this process (for an embedded store that one
        process alone may open); otherwise this process is one client of several.
        """
        xq = self.data(queries)
        rows = [np.ascontiguousarray(xq[i : i + 1], dtype=np.float32) for i in range(len(xq))]
        self.adapter.search_one(rows[0], k)
        counts = [0] * threads
        elapsed = [0.0] * threads

        def loop(slot: int) -> None:
            clock = time.perf_counter
            delay = start_at - time.time()
            if delay > 0:
                time.sleep(delay)
            t0 = clock()
            end = t0 + duration
            now, done = t0, 0
            while now < end:
                self.adapter.search_one(rows[(slot * 7919 + done) % len(rows)], k)
                done += 1
                now = clock()
            counts[slot], elapsed[slot] = done, now - t0

        if threads == 1:
            loop(0)
        else:
            workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        return {
            "requests": sum(counts),
            "qps": sum(c / e for c, e in zip(counts, elapsed, strict=True) if e),
        }

    def cmd_delete(self, ids: list[int], queries: str, k: int) -> dict[str, Any]:
        """Delete ``ids``; then check that a search for 20 of the deleted vectors' own rows no
        longer returns any deleted id (the probes are the deleted rows, from ``queries``)."""
        before = int(self.adapter.count())
        t0 = time.perf_counter()
        self.adapter.delete(np.asarray(ids, dtype=np.int64))
        seconds = time.perf_counter() - t0
        probes = np.ascontiguousarray(self.data(queries)[ids[:20]], dtype=np.float32)
        found = np.asarray(self.adapter.search_batch(probes, k))
        still = int(np.isin(found, np.asarray(ids)).sum())
        return {
            "seconds": seconds,
            "count_before": before,
            "count_after": int(self.adapter.count()),
            "deleted_still_found": still,
        }

    def cmd_rss(self) -> dict[str, Any]:
        return {"rss": rss_bytes(), "rss_start": self.rss_start}

    def cmd_drop(self, name: str) -> dict[str, Any]:
        self.adapter.drop(name)
        return {}

    def cmd_close(self) -> dict[str, Any]:
        if self.adapter is not None:
            self.adapter.close()
            self.adapter = None
        return {}


def worker_loop() -> None:
    """Answer JSON commands from stdin; keep stdout for answers only."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    agent = Agent()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.pop("cmd")
        if op == "quit":
            break
        try:
            answer = {"ok": True, "result": getattr(agent, f"cmd_{op}")(**command)}
        except Exception as exc:  # every failure is reported, none kills the agent
            message = " ".join(str(exc).split())[:600]
            answer = {"ok": False, "error": f"{type(exc).__name__}: {message}"}
        answers.write(json.dumps(answer) + "\n")
    answers.flush()
    try:
        if agent.adapter is not None:
            agent.adapter.close()
    finally:
        os._exit(0)  # skip interpreter teardown: some clients hang in atexit


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        raise SystemExit("usage: agent.py worker")
    worker_loop()
