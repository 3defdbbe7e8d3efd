"""One run of every system on every workload: start, load, tune, time, measure, stop.

For each data shape, each system and each index kind it offers, the run starts the system
afresh (a new server and data directory), starts its client processes (agents, in its own
virtualenv), and in order: creates the collection and bulk-loads it (timed until searchable),
tunes the search parameter up a ladder until recall@10 >= the target on the 1k queries,
times the batch search, one-query searches, and one-query searches from 4 concurrent clients,
reads the server's (or the embedded process's) resident memory and the data directory's size,
deletes a few ids and checks they are gone, then stops everything.

Time is bounded per phase (load, search, write) and per case: past a phase's budget the agents
and the server are killed, the case is marked "did not finish <phase> in N s" with what it had
completed (the rows inserted so far and their rate, the phases done), and the run goes on. A
case the plan leaves out (``Plan.skip``) is recorded as skipped with the reason, never dropped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.peers.systems import HERE, SYSTEMS, Running, System, disk_bytes

AGENT = HERE / "agent.py"


@dataclass(frozen=True)
class Shape:
    d: int
    n: int
    nq: int = 1000

    @property
    def key(self) -> str:
        return f"d{self.d}-n{self.n}"


@dataclass(frozen=True)
class Plan:
    shapes: tuple[Shape, ...]
    systems: tuple[str, ...] = tuple(SYSTEMS)
    kinds: tuple[str, ...] = ("flat", "hnsw")
    k: int = 10
    insert_batch: int = 5000
    #: HNSW build parameters, the same for every system that lets them be set.
    M: int = 16
    ef_construction: int = 64
    ef_ladder: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    target_recall: float = 0.95
    latency_reps: int = 200
    latency_warmup: int = 20
    #: Fewer one-query searches where each takes long (exact search over many rows).
    latency_budget_s: float = 15.0
    batch_reps: int = 5
    batch_budget_s: float = 25.0
    #: Queries in the batch that times one query before sizing the batches.
    probe_nq: int = 20
    clients: int = 4
    qps_seconds: float = 3.0
    delete_n: int = 100
    #: One-row inserts after the searches (ids past the base rows).
    add_rows: int = 200
    #: The whole (shape, system, kind), and each phase of it (load: inserts and index build;
    #: search: tuning, batch, one-query and concurrent searches; write: one-row inserts and
    #: the delete). A phase past its budget ends the case as "did not finish".
    budget_s: float = 900.0
    load_budget_s: float = 600.0
    search_budget_s: float = 300.0
    write_budget_s: float = 150.0
    #: Rows per load command to the agent: the orchestrator learns the rows inserted so far
    #: between commands, so a load cut off by its budget still reports its progress.
    load_chunk: int = 50_000
    #: Cases left out, as ``shape/kind/system`` patterns (fnmatch: ``d128-n1000000/hnsw/local``,
    #: ``*/hnsw/faissx``), each recorded as skipped with ``skip_reason``.
    skip: tuple[str, ...] = ()
    skip_reason: str = ""
    seed: int = 1338


#: 1M at d=128 does not fit (HNSW builds alone take ~15 min per system on this box); d=768
#: at 5k keeps the whole run near 35 minutes.
FULL = Plan(shapes=(Shape(128, 100_000), Shape(768, 5_000)))
#: The large shapes (``--large``), sized to end within ~75 minutes on the shared 2-core box:
#: lighter HNSW (M=16, efConstruction=32, the same for every system, ef_search tuned to
#: recall@10 >= 0.95 on a coarser ladder), a bounded load per system, and HNSW run with the
#: FAISSx configuration every durable peer is compared with (``--fsync always``) but not the
#: in-memory and ``--fsync off`` builds (nor local faiss at 1M), whose HNSW build is the same
#: faiss call (their 100k figures are in the d=128/100k report).
LARGE = Plan(
    shapes=(Shape(128, 1_000_000), Shape(768, 100_000)),
    M=16,
    ef_construction=32,
    ef_ladder=(32, 64, 96, 128, 192, 256, 384, 512),
    load_budget_s=300.0,
    search_budget_s=180.0,
    # a batch cut below 1000 queries changes faiss 1.15's exact-search kernel (at 1M rows,
    # 1000 queries run as BLAS GEMMs, 910 or fewer as one-pair-at-a-time scans: 9x slower)
    batch_budget_s=60.0,
    write_budget_s=90.0,
    budget_s=600.0,
    skip=("*/hnsw/faissx", "*/hnsw/faissx-off", "d128-n1000000/hnsw/local"),
    skip_reason=(
        "left out of the large HNSW runs to fit the time: the same faiss build as FAISSx "
        "--fsync always (the 100k report has all of them)"
    ),
)
QUICK = Plan(
    shapes=(Shape(32, 1000, nq=100),),
    latency_reps=30,
    latency_warmup=3,
    batch_reps=1,
    qps_seconds=0.5,
    delete_n=10,
    add_rows=20,
    budget_s=300.0,
    ef_ladder=(16, 64, 256),
)


class OutOfTime(RuntimeError):
    """A phase of this (shape, system, kind), or the case, used up its budget."""

    def __init__(self, phase: str, budget_s: float) -> None:
        super().__init__(f"did not finish {phase} in {budget_s:g} s")
        self.phase, self.budget_s = phase, budget_s


class LoadSampler:
    """The machine's 1-minute load average every ``every`` seconds, on a thread, for the run's
    record (the box is shared: a figure means little without the load it was taken under)."""

    def __init__(self, every: float = 15.0) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.mark()
            if self._stop.wait(self.every):
                return

    def mark(self) -> None:
        """One sample now (a case's start and end, besides the periodic ones)."""
        self.samples.append((time.time(), os.getloadavg()[0]))

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> dict[str, float] | None:
        values = [v for t, v in self.samples if t0 <= t <= t1]
        if not values:
            return None
        return {
            "min": round(min(values), 2),
            "median": round(float(np.median(values)), 2),
            "max": round(max(values), 2),
            "samples": len(values),
        }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_data(shape: Shape, k: int, seed: int, out: Path) -> dict[str, str]:
    """faiss's SyntheticDataset: base, queries and exact ground truth, saved for the agents."""
    from faiss.contrib.datasets import SyntheticDataset

    ds = SyntheticDataset(shape.d, 0, shape.n, shape.nq, seed=seed)
    paths = {}
    for key, arr in (
        ("xb", ds.get_database()),
        ("xq", ds.get_queries()),
        ("gt", ds.get_groundtruth(k)),
    ):
        path = out / f"{shape.key}-{key}.npy"
        np.save(path, np.ascontiguousarray(arr))
        paths[key] = str(path)
    return paths


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3


class Case:
    """One (shape, system, kind): its processes, its clock, its figures."""

    def __init__(
        self,
        plan: Plan,
        shape: Shape,
        system: System,
        kind: str,
        data: dict[str, str],
        work: Path,
        logs: Path,
        progress: Any,
    ) -> None:
        self.plan, self.shape, self.system, self.kind = plan, shape, system, kind
        self.data, self.work, self.logs, self.progress = data, work, logs, progress
        self.case_deadline = time.monotonic() + plan.budget_s
        self.deadline = self.case_deadline
        self.phase_name, self.phase_budget = "the case", plan.budget_s
        self.out: dict[str, Any] = {"phases_s": {}}
        self.running: Running | None = None
        self.pool: procs.Pool | None = None
        self.name = f"peers_{kind}_{shape.d}"

    @contextlib.contextmanager
    def phase(self, name: str, budget_s: float) -> Iterator[None]:
        """Run a phase under ``budget_s`` (and the case's own budget); its time is recorded."""
        t0 = time.monotonic()
        if t0 + budget_s < self.case_deadline:
            self.deadline, self.phase_name, self.phase_budget = t0 + budget_s, name, budget_s
        else:
            self.deadline = self.case_deadline
            self.phase_name, self.phase_budget = f"{name} (the case's)", self.plan.budget_s
        yield
        self.out["phases_s"][name] = round(time.monotonic() - t0, 1)
        self.deadline, self.phase_name = self.case_deadline, "the case"

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise OutOfTime(self.phase_name, self.phase_budget)
        return remaining

    def call(self, worker: procs.Worker, cmd: str, **args: Any) -> Any:
        try:
            return worker.call(cmd, timeout=self.left(), **args)
        except procs.WorkerDied:
            if time.monotonic() >= self.deadline:  # killed for the budget, not a crash
                raise OutOfTime(self.phase_name, self.phase_budget) from None
            raise

    def memory(self, rss_before: int | None = None) -> dict[str, Any]:
        """The server's process tree, or (embedded) the agent's growth since ``rss_before``."""
        assert self.running is not None and self.pool is not None
        tree = self.running.memory()
        if tree is not None:
            return {"where": "server", "bytes": tree["pss"], **tree}
        rss = self.call(self.pool[0], "rss")["rss"]
        return {"where": "client process", "rss": rss, "bytes": rss - (rss_before or 0)}

    def run(self) -> dict[str, Any]:
        try:
            try:
                self._run()
            except procs.WorkerDied:
                if time.monotonic() >= self.deadline:  # a pool's wait, killed for the budget
                    raise OutOfTime(self.phase_name, self.phase_budget) from None
                raise
        except OutOfTime as exc:
            self.out["dnf"] = {
                "phase": exc.phase,
                "budget_s": exc.budget_s,
                "completed": list(self.out["phases_s"]),
            }
            self.out["error"] = str(exc)
        except (procs.WorkerError, procs.WorkerDied, RuntimeError, OSError) as exc:
            self.out["error"] = f"{type(exc).__name__}: {exc}"[:800]
        finally:
            if self.pool is not None:
                self.pool.close()
            if self.running is not None:
                self.running.stop()
                shutil.rmtree(self.running.data_dir, ignore_errors=True)
        return self.out

    def _run(self) -> None:
        plan, shape, system = self.plan, self.shape, self.system
        self.running = system.start(self.work, self.logs)
        clients = plan.clients if system.concurrency == "processes" else 1
        self.pool = procs.Pool(
            str(system.python),
            clients,
            self.logs,
            f"{shape.key}-{system.key}-{self.kind}",
            isolated=True,
            cwd=self.work,
            script=AGENT,
        )
        w0 = self.pool[0]
        hello = self.call(w0, "hello", adapter=system.adapter, config=self.running.config)
        self.out["versions"] = hello["versions"]
        mem0 = self.running.memory()
        disk0 = disk_bytes(self.running.data_dir)
        build = {
            "M": plan.M,
            "ef_construction": plan.ef_construction,
            "ef_search": plan.ef_ladder[0],
        }
        created = self.call(w0, "create", name=self.name, d=shape.d, kind=self.kind, build=build)
        rss_before = created["rss_before"]
        self.progress(f"  load {shape.n} x {shape.d}")
        with self.phase("load", plan.load_budget_s):
            self._load(w0)
        self.out["memory_after_load"] = self.memory(rss_before)
        if system.searches:
            with self.phase("search", plan.search_budget_s):
                search = self._tune(w0)
                self.out["search_params"] = search
                self._batch(w0)
                self._latency(w0)
                self._qps(search)
        mem = self.memory(rss_before)
        if mem0 is not None:
            mem["growth"] = mem["bytes"] - mem0["pss"]
        else:
            mem["growth"] = mem["bytes"]
        self.out["memory"] = mem
        self.out["disk_bytes"] = disk_bytes(self.running.data_dir) - disk0
        with self.phase("write", plan.write_budget_s):
            self._add_rows(w0)
            self._delete(w0)

    def _load(self, w0: procs.Worker) -> None:
        """Insert in ``load_chunk``-row commands (each inserting ``insert_batch`` rows a call),
        then make the rows searchable; ``load_progress`` holds what is done at each step."""
        plan, n = self.plan, self.shape.n
        progress = self.out["load_progress"] = {"rows": 0, "of": n, "insert_s": 0.0}
        for start in range(0, n, plan.load_chunk):
            stop = min(start + plan.load_chunk, n)
            got = self.call(
                w0,
                "load",
                data=self.data["xb"],
                start=start,
                stop=stop,
                batch=plan.insert_batch,
                finish=False,
            )
            progress["rows"] = stop
            progress["insert_s"] += got["insert_s"]
            progress["rows_per_s"] = round(stop / max(progress["insert_s"], 1e-9), 1)
        progress["index"] = "started"
        done = self.call(w0, "finish_load")
        progress["index"] = "done"
        self.out["load"] = {
            "seconds": progress["insert_s"] + done["seconds"],
            "insert_s": progress["insert_s"],
            "index_s": done["seconds"],
            "count": done["count"],
        }

    def _set_search(self, w0: procs.Worker, search: dict[str, Any]) -> None:
        answer = self.call(w0, "set_search", search=search)
        if answer.get("restart"):
            assert self.running is not None
            t0 = time.perf_counter()
            self.running.restart()
            self.call(w0, "reconnect")
            self.out.setdefault("restarts_s", []).append(round(time.perf_counter() - t0, 2))

    def _tune(self, w0: procs.Worker) -> dict[str, Any]:
        """The smallest ``ef`` on the ladder whose recall@k reaches the target (exact: none)."""
        plan = self.plan
        ladder: list[dict[str, Any]] = []
        self.out["tuning"] = ladder
        candidates = plan.ef_ladder if self.kind == "hnsw" else (None,)
        chosen: dict[str, Any] = {}
        self.nq = self.shape.nq
        for step, ef in enumerate(candidates):
            search = {} if ef is None else {"ef": ef}
            self._set_search(w0, search)
            if step == 0:
                self._size_batch(w0)
            got = self.call(
                w0,
                "recall",
                queries=self.data["xq"],
                truth=self.data["gt"],
                k=plan.k,
                nq=self.nq,
            )
            ladder.append(
                {**search, "recall": got["recall"], "batch_s": got["seconds"], "nq": self.nq}
            )
            self.progress(
                f"  {search or 'exact'}: recall@{plan.k} {got['recall']:.4f} "
                f"({got['seconds']:.2f} s)"
            )
            chosen = search
            if got["recall"] >= plan.target_recall:
                break
        self.out["recall"] = ladder[-1]["recall"]
        self.out["recall_met"] = ladder[-1]["recall"] >= plan.target_recall
        return chosen

    def _size_batch(self, w0: procs.Worker) -> None:
        """Fewer queries per batch where one batch of all of them would outrun the budget
        (exact search scanning every row in Python or SQL): timed on ``probe_nq`` first."""
        plan = self.plan
        probe_nq = min(plan.probe_nq, self.shape.nq)
        got = self.call(
            w0, "recall", queries=self.data["xq"], truth=self.data["gt"], k=plan.k, nq=probe_nq
        )
        per_query = got["seconds"] / probe_nq
        if per_query * self.shape.nq > plan.batch_budget_s:
            self.nq = max(probe_nq, int(plan.batch_budget_s / per_query) // 10 * 10)
            self.progress(f"  {per_query * 1e3:.0f} ms a query: batches of {self.nq} queries")

    def _batch(self, w0: procs.Worker) -> None:
        plan = self.plan
        times = [self.out["tuning"][-1]["batch_s"]]  # the tuning's last run is the first rep
        while len(times) < plan.batch_reps and sum(times) < plan.batch_budget_s:
            times.append(
                self.call(
                    w0,
                    "recall",
                    queries=self.data["xq"],
                    truth=self.data["gt"],
                    k=plan.k,
                    nq=self.nq,
                )["seconds"]
            )
        best = float(np.median(times))
        self.out["batch"] = {
            "nq": self.nq,
            "median_s": best,
            "qps": self.nq / best,
            "runs_s": [round(t, 4) for t in times],
        }

    def _latency(self, w0: procs.Worker) -> None:
        plan = self.plan
        per_query = self.out["batch"]["median_s"] / self.nq
        reps = int(min(plan.latency_reps, max(30, plan.latency_budget_s / max(per_query, 1e-6))))
        self.progress(f"  {reps} one-query searches")
        times = self.call(
            w0, "latency", queries=self.data["xq"], k=plan.k, reps=reps, warmup=plan.latency_warmup
        )
        self.out["latency"] = {
            "p50_ms": _ms(times, 50),
            "p99_ms": _ms(times, 99),
            "mean_ms": float(np.mean(times)) * 1e3,
            "n": len(times),
        }

    def _qps(self, search: dict[str, Any]) -> None:
        plan = self.plan
        assert self.pool is not None
        self.progress(f"  {plan.clients} concurrent clients, {plan.qps_seconds:g} s")
        common = {"queries": self.data["xq"], "k": plan.k, "duration": plan.qps_seconds}
        if len(self.pool) == 1:
            start_at = time.time() + 0.5
            answer = self.call(
                self.pool[0], "qps", start_at=start_at, threads=plan.clients, **common
            )
            self.out["qps_concurrent"] = {
                "clients": plan.clients,
                "as": "threads in one process",
                "qps": answer["qps"],
            }
            return
        for worker in self.pool.workers[1:]:
            worker.send("hello", adapter=self.system.adapter, config=self.running.config)
        for worker in self.pool.workers[1:]:
            worker.receive(self.left())
        for worker in self.pool.workers[1:]:
            worker.send("attach", name=self.name, d=self.shape.d, kind=self.kind, search=search)
        for worker in self.pool.workers[1:]:
            worker.receive(self.left())
        start_at = time.time() + 1.0
        answers = self.pool.all(
            "qps", [{**common, "start_at": start_at}] * plan.clients, timeout=self.left()
        )
        self.out["qps_concurrent"] = {
            "clients": plan.clients,
            "as": "processes",
            "qps": sum(a["qps"] for a in answers),
            "per_client": [round(a["qps"], 1) for a in answers],
        }

    def _add_rows(self, w0: procs.Worker) -> None:
        times = self.call(
            w0, "add_rows", data=self.data["xq"], rows=self.plan.add_rows, first_id=self.shape.n
        )
        self.out["add_row"] = {
            "p50_ms": _ms(times, 50),
            "p99_ms": _ms(times, 99),
            "rows_s": len(times) / sum(times),
            "n": len(times),
        }

    def _delete(self, w0: procs.Worker) -> None:
        ids = np.random.default_rng(0).choice(self.shape.n, self.plan.delete_n, replace=False)
        try:
            got = self.call(
                w0,
                "delete",
                ids=sorted(int(i) for i in ids),
                queries=self.data["xb"],
                k=self.plan.k,
            )
            self.out["delete"] = {"ids": len(ids), **got}
        except procs.WorkerError as exc:
            self.out["delete"] = {"ids": len(ids), "error": str(exc)[:300]}


def run(
    plan: Plan,
    *,
    cache: Path,
    progress: Any = print,
    anchors: Any = None,
    unavailable: dict[str, str] | None = None,
    until: float | None = None,
    checkpoint: Any = None,
) -> dict[str, Any]:
    """Every shape x system x kind of ``plan``, and ``anchors(work, logs)`` (if given) after
    the first shape. ``unavailable``: systems whose virtualenv did not install, with the
    error; ``until``: a wall-clock time (epoch s) past which no case starts (marked skipped);
    ``checkpoint(results)``: called after every case with the figures so far."""
    unavailable = unavailable or {}
    started = datetime.now(timezone.utc)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "uptime_before": uptime(),
        "plan": {**asdict(plan), "shapes": [asdict(s) for s in plan.shapes]},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "systems": {
            key: {
                "label": s.label,
                "durability": s.durability,
                "note": s.note,
                "concurrency": s.concurrency,
                "kinds": list(s.kinds),
                "adapter": s.adapter,
                "match": s.match,
                "searches": s.searches,
            }
            for key, s in SYSTEMS.items()
            if key in plan.systems
        },
    }
    results: dict[str, Any] = {"meta": meta, "shapes": {}}
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sampler = LoadSampler().start()
    with tempfile.TemporaryDirectory(prefix="faissx-peers-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        for shape in plan.shapes:
            progress(f"data: SyntheticDataset d={shape.d} n={shape.n} nq={shape.nq}")
            data = make_data(shape, plan.k, plan.seed, work)
            table: dict[str, Any] = {kind: {} for kind in plan.kinds}
            results["shapes"][shape.key] = {"shape": asdict(shape), "kinds": table}
            for kind in plan.kinds:  # every system's flat, then every system's HNSW
                for key in plan.systems:
                    system = SYSTEMS[key]
                    if kind not in system.kinds:
                        table[kind][key] = {"not_offered": system.note or "not offered"}
                        continue
                    if key in unavailable:
                        table[kind][key] = {"not_installed": unavailable[key]}
                        continue
                    pattern = f"{shape.key}/{kind}/{key}"
                    if any(fnmatch.fnmatchcase(pattern, p) for p in plan.skip):
                        table[kind][key] = {"skipped": plan.skip_reason or "left out of the plan"}
                        continue
                    if until is not None and time.time() > until:
                        table[kind][key] = {"error": "skipped: the run's end time had passed"}
                        progress(f"{shape.key} {kind}: {system.label}: skipped (out of time)")
                        continue
                    progress(f"{shape.key} {kind}: {system.label}")
                    t0, wall0 = time.monotonic(), time.time()
                    case = Case(plan, shape, system, kind, data, work, logs, progress)
                    load_before = os.getloadavg()[0]
                    sampler.mark()
                    got = table[kind][key] = case.run()
                    sampler.mark()
                    got["case_s"] = round(time.monotonic() - t0, 1)
                    got["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                    during = sampler.between(wall0, time.time())
                    if during is not None:
                        got["loadavg_during"] = during
                    if "error" in got:
                        progress(f"  FAILED: {got['error']}")
                    if checkpoint is not None:
                        meta["loadavg_samples"] = [[round(t), v] for t, v in sampler.samples]
                        checkpoint(results)
            for path in data.values():
                Path(path).unlink(missing_ok=True)
            if anchors is not None and "anchors" not in results:
                results["anchors"] = anchors(work, logs)
    sampler.stop()
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["uptime_after"] = uptime()
    meta["loadavg_samples"] = [[round(t), v] for t, v in sampler.samples]
    meta["loadavg_during"] = sampler.between(0, time.time())
    return results


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs made one after the other (a run cut short between shapes, and the run of the
    shapes it had not reached) as one result: the first's meta, every part's shapes, each
    part's own start, end, plan and uptime kept under ``meta["parts"]``, the load-average
    samples joined. A part without ``finished`` (a checkpoint) ends at its last sample."""
    merged: dict[str, Any] = {"meta": dict(parts[0]["meta"]), "shapes": {}}
    meta = merged["meta"]
    meta["parts"], samples = [], []
    for part in parts:
        info = part["meta"]
        part_samples = info.get("loadavg_samples", [])
        finished = info.get("finished")
        if finished is None and part_samples:
            last = part_samples[-1][0]
            finished = datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="seconds")
        meta["parts"].append(
            {
                "started": info["started"],
                "finished": finished,
                "uptime_before": info.get("uptime_before"),
                "uptime_after": info.get("uptime_after"),
                "plan": info["plan"],
                "shapes": list(part["shapes"]),
            }
        )
        samples += part_samples
        meta["systems"] = {**info["systems"], **meta["systems"]}
        for key, shape in part["shapes"].items():
            if key not in merged["shapes"]:
                merged["shapes"][key] = shape
                continue
            # a later part re-ran some cases of this shape: its cases replace those
            for kind, cases in shape["kinds"].items():
                for system, case in cases.items():
                    if not {"not_offered", "not_installed", "skipped"} & set(case):
                        merged["shapes"][key]["kinds"].setdefault(kind, {})[system] = {
                            **case,
                            "rerun": info["started"],
                        }
    meta["finished"] = meta["parts"][-1]["finished"]
    meta["uptime_after"] = meta["parts"][-1]["uptime_after"] or meta.get("uptime_after")
    meta["loadavg_samples"] = samples
    values = [v for _, v in samples]
    if values:
        meta["loadavg_during"] = {
            "min": round(min(values), 2),
            "median": round(float(np.median(values)), 2),
            "max": round(max(values), 2),
            "samples": len(values),
        }
    return merged
