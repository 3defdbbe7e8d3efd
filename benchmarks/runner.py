"""Run the workloads and collect the raw figures; :mod:`benchmarks.report` derives the ratios.

Layout of one run: a ``faissx serve`` subprocess (tcp and ipc), the bare echo server (tcp and
ipc), and a pool of worker processes (``driver.py worker``) that hold local faiss indices,
FAISSx proxies and echo sockets side by side. Worker 0 times the single-client workloads, the
systems taking turns round by round so that the machine's drift spreads over all of them; the
whole pool runs the concurrent-client workloads. The original ``faissx`` runs last, in its own
virtualenv, server and worker pool.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.config import ORIGINAL_VERSION, Sizes

#: Systems timed by worker 0 on the single-client workloads, in their first round's order.
SINGLE = ("local", "tcp", "ipc", "echo-tcp", "echo-ipc")
#: Systems timed with 1, 2, 4 client processes (the echo: what the sockets alone allow).
MULTI = ("local", "tcp", "ipc", "echo-tcp")
KINDS = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class Plan:
    """An index the run builds once and then times."""

    key: str
    factory: str
    n: int
    train_n: int = 0
    params: dict[str, Any] = field(default_factory=dict)


def plans(sizes: Sizes) -> dict[str, Plan]:
    return {
        p.key: p
        for p in (
            Plan("flat10k", "Flat", sizes.n_small),
            Plan("flat100k", "Flat", sizes.n_large),
            Plan(
                "ivf",
                sizes.ivf,
                sizes.n_large,
                train_n=sizes.n_large,
                params={"nprobe": sizes.nprobe},
            ),
            Plan("hnsw", sizes.hnsw, sizes.n_hnsw),
        )
    }


#: kind -> (index for nq=1 latency and QPS, index for the nq=nq_batch search)
KIND_PLANS = {"flat": ("flat10k", "flat100k"), "ivf": ("ivf", "ivf"), "hnsw": ("hnsw", "hnsw")}


def hkey(plan: str, system: str) -> str:
    """The worker-side handle name of ``plan`` on ``system`` (one echo socket per transport)."""
    return system if system.startswith("echo") else f"{plan}@{system}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency_summary(times: list[float], rounds: int = 1) -> dict[str, Any]:
    per_round = np.array_split(np.asarray(times), rounds)
    return {
        "p50_us": percentile(times, 50) * 1e6,
        "p99_us": percentile(times, 99) * 1e6,
        "mean_us": float(np.mean(times)) * 1e6,
        "n": len(times),
        "round_p50_us": [round(float(np.median(r)) * 1e6, 1) for r in per_round if len(r)],
    }


def batch_summary(times: list[float], rounds: int = 1) -> dict[str, Any]:
    return {
        "p50_ms": percentile(times, 50) * 1e3,
        "min_ms": min(times) * 1e3,
        "n": len(times),
        "samples_ms": [round(t * 1e3, 2) for t in times],
    }


def add_summary(times: list[float], nbytes: int) -> dict[str, Any]:
    p50 = percentile(times, 50)
    return {
        "p50_ms": p50 * 1e3,
        "min_ms": min(times) * 1e3,
        "mb_s": nbytes / p50 / 1e6,
        "n": len(times),
        "samples_ms": [round(t * 1e3, 2) for t in times],
    }


def batch_add_summary(times: list[float], nbytes: int) -> dict[str, Any]:
    p50 = percentile(times, 50)
    return {
        "p50_us": p50 * 1e6,
        "p99_us": percentile(times, 99) * 1e6,
        "mb_s": nbytes / p50 / 1e6,
        "n": len(times),
    }


def failed(exc: BaseException | str) -> dict[str, str]:
    text = str(exc) if not isinstance(exc, str) else exc
    return {"failed": " ".join(text.split())[:300]}


class Progress:
    def __init__(self, console: Any) -> None:
        self.console = console
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f}s  {message}[/]")


class Run:
    def __init__(self, sizes: Sizes, *, original: bool, cache: Path, console: Any) -> None:
        self.sizes = sizes
        self.original = original
        self.cache = cache
        self.console = console
        self.progress = Progress(console)
        self.plans = plans(sizes)
        self.results: dict[str, Any] = {
            kind: {
                "latency": {"desc": "", "systems": {}},
                "batch_search": {"desc": "", "systems": {}},
                "build": {"desc": "", "systems": {}},
                "qps": {"desc": "", "systems": {}},
            }
            for kind in KINDS
        }
        self.results["flat"]["add"] = {"desc": "", "systems": {}}
        self.results["flat"]["add_batches"] = {"desc": "", "systems": {}}
        self._describe()

    def _describe(self) -> None:
        s, r = self.sizes, self.results
        for kind in KINDS:
            small, big = (self.plans[p] for p in KIND_PLANS[kind])
            what = {"flat": "Flat", "ivf": f"{s.ivf} nprobe={s.nprobe}", "hnsw": s.hnsw}[kind]
            r[kind]["latency"]["desc"] = f"nq=1 k={s.k} search, {what}, {small.n} x {s.d}"
            r[kind]["batch_search"]["desc"] = (
                f"nq={s.nq_batch} k={s.k} search, {what}, {big.n} x {s.d}"
            )
            r[kind]["build"]["desc"] = f"train + one add of {big.n} x {s.d}, {what}"
            r[kind]["qps"]["desc"] = (
                f"searches/s of {'/'.join(map(str, s.clients))} client "
                f"processes, nq=1..{s.nq_max} k={s.k}, {what}, "
                f"{small.n} x {s.d}"
            )
        r["flat"]["add"]["desc"] = f"one add of {s.n_large} x {s.d} float32"
        r["flat"]["add"]["bytes"] = s.n_large * s.d * 4
        r["flat"]["add_batches"]["desc"] = (
            f"adds of {s.batch_add} x {s.d} ({s.batch_add_n} vectors per round)"
        )
        r["flat"]["add_batches"]["bytes_per_call"] = s.batch_add * s.d * 4

    def put(self, kind: str, workload: str, system: str, value: dict[str, Any]) -> None:
        self.results[kind][workload]["systems"][system] = value

    # -- the run -------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        started = datetime.now(timezone.utc)
        load_before = os.getloadavg()
        with ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix="fxb-"))
            stack.callback(shutil.rmtree, tmp, True)
            logs = self._log_dir()
            self.data = self._make_data(tmp)
            versions = self._ours(stack, tmp, logs)
            if self.original:
                versions["original_faissx"] = self._original(stack, logs)
            else:
                self._skip_original("--no-original")
        finished = datetime.now(timezone.utc)
        return {
            "schema": 1,
            "meta": {
                "started": started.isoformat(timespec="seconds"),
                "finished": finished.isoformat(timespec="seconds"),
                "duration_s": round((finished - started).total_seconds(), 1),
                "quick": self.sizes != Sizes(),
                "original": self.original,
                "original_version": ORIGINAL_VERSION,
                "logs": str(logs),
            },
            "machine": self._machine(versions, load_before),
            "sizes": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.sizes).items()
            },
            "workloads": self.results,
        }

    def _log_dir(self) -> Path:
        root = self.cache / "logs"
        root.mkdir(parents=True, exist_ok=True)
        old = sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)
        for stale in old[:-5]:
            shutil.rmtree(stale, ignore_errors=True)
        logs = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        logs.mkdir()
        return logs

    def _make_data(self, tmp: Path) -> dict[str, str]:
        s = self.sizes
        rng = np.random.default_rng(20260422)
        n = max(s.n_large, s.n_small, s.n_hnsw, s.batch_add_n)
        xb, xq = tmp / "xb.npy", tmp / "xq.npy"
        np.save(xb, rng.standard_normal((n, s.d), dtype=np.float32))
        np.save(xq, rng.standard_normal((s.n_queries, s.d), dtype=np.float32))
        return {"xb": str(xb), "xq": str(xq)}

    def _machine(self, versions: dict[str, Any], load_before: tuple[float, ...]) -> dict[str, Any]:
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:
            usable = os.cpu_count()
        model = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return {
            "cpu_count": os.cpu_count(),
            "usable_cpus": usable,
            "cpu_model": model,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            **versions,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        }

    @staticmethod
    def _wire_sizes(d: int, k: int) -> dict[str, int]:
        """Header bytes of a real FAISSx search request and reply, for the echo to mimic."""
        from faissx_client.settings import ClientSettings
        from faissx_client.transport import Transport
        from faissx_core.messages import PROTOCOL_VERSION
        from faissx_core.protocol import encode

        transport = Transport(ClientSettings(server="tcp://127.0.0.1:9"))
        try:
            header = transport.header("search", "bench-flat10k", {"k": k})
        finally:
            transport.close()
        request = encode(header, {"x": np.zeros((1, d), np.float32)})[0]
        reply = encode(
            {"v": PROTOCOL_VERSION, "id": header["id"], "ok": True, "result": {}},
            {"D": np.zeros((1, k), np.float32), "I": np.zeros((1, k), np.int64)},
        )[0]
        return {"request_header": len(request), "reply_header": len(reply)}

    # -- FAISSx, local faiss and the echo ----------------------------------------------------
    def _ours(self, stack: ExitStack, tmp: Path, logs: Path) -> dict[str, Any]:
        s = self.sizes
        self.progress(
            "starting faissx serve (tcp + ipc), the echo server and "
            f"{max(s.clients)} worker processes"
        )
        server, tcp, ipc = procs.start_faissx(tmp, logs)
        stack.callback(server.stop)
        echo, echo_tcp, echo_ipc = procs.start_echo(tmp, logs)
        stack.callback(echo.stop)
        pool = procs.Pool(sys.executable, max(s.clients), logs, "ours")
        stack.callback(pool.close)
        hello = pool.hello("ours")[0]
        import faissx_core

        versions = {
            "faiss": hello["faiss"],
            "faiss_omp_threads": hello["omp_threads"],
            "numpy": hello["numpy"],
            "pyzmq": hello["pyzmq"],
            "libzmq": hello["libzmq"],
            "faissx": faissx_core.__version__,
        }
        self.echo = {"request_header": 0, "reply_header": 0, **self._wire_sizes(s.d, s.k)}
        self.where = {
            "local": ("local", None),
            "tcp": ("ours", tcp),
            "ipc": ("ours", ipc),
            "echo-tcp": ("echo", echo_tcp),
            "echo-ipc": ("echo", echo_ipc),
        }
        w0 = pool[0]
        for plan in self.plans.values():
            self.progress(
                f"building {plan.key} ({plan.factory}, {plan.n} vectors): local, then FAISSx"
            )
            common = {
                "d": s.d,
                "factory": plan.factory,
                "data": self.data["xb"],
                "n": plan.n,
                "train_n": plan.train_n,
                "params": plan.params,
            }
            local = w0.call(
                "build",
                timeout=900,
                key=hkey(plan.key, "local"),
                mode="local",
                save=str(tmp / f"{plan.key}.index"),
                **common,
            )
            self.progress(f"  {plan.key}: built locally; now on FAISSx")
            remote = w0.call(
                "build",
                timeout=900,
                key=hkey(plan.key, "tcp"),
                mode="ours",
                endpoint=tcp,
                name=f"bench-{plan.key}",
                **common,
            )
            w0.call(
                "attach",
                key=hkey(plan.key, "ipc"),
                mode="ours",
                endpoint=ipc,
                name=f"bench-{plan.key}",
            )
            for kind, (_, big) in KIND_PLANS.items():
                if big == plan.key:
                    self.put(kind, "build", "local", local)
                    self.put(kind, "build", "tcp", remote)
        for system in ("echo-tcp", "echo-ipc"):
            w0.call(
                "attach",
                key=system,
                mode="echo",
                d=s.d,
                endpoint=self.where[system][1],
                echo=self.echo,
            )
        if len(pool) > 1:
            self.progress("opening the indices in the other client processes")
            attached = set()
            for plan_key in {small for small, _ in KIND_PLANS.values()}:
                for system in MULTI:
                    if hkey(plan_key, system) in attached:
                        continue
                    attached.add(hkey(plan_key, system))
                    args = {
                        "key": hkey(plan_key, system),
                        "mode": self.where[system][0],
                        "endpoint": self.where[system][1],
                        "name": f"bench-{plan_key}",
                        "path": str(tmp / f"{plan_key}.index"),
                        "params": self.plans[plan_key].params,
                        "d": s.d,
                        "echo": self.echo,
                    }
                    for worker in pool.workers[1:]:
                        worker.send("attach", **args)
                    for worker in pool.workers[1:]:
                        worker.receive(300)

        for kind in KINDS:
            small, big = KIND_PLANS[kind]
            self.progress(
                f"{kind}: nq=1 latency ({s.latency_rounds} rounds x "
                f"{s.latency_reps} searches per system)"
            )
            self._searches(
                w0,
                kind,
                "latency",
                small,
                1,
                s.latency_rounds,
                s.latency_reps,
                s.latency_warmup,
                latency_summary,
            )
            self.progress(f"{kind}: nq={s.nq_batch} searches ({s.batch_rounds} rounds)")
            self._searches(
                w0, kind, "batch_search", big, s.nq_batch, s.batch_rounds, 1, 1, batch_summary
            )
        self.progress(f"flat: adds of {s.n_large} vectors and of {s.batch_add} vectors")
        self._adds(w0)
        for kind in KINDS:
            self.progress(
                f"{kind}: QPS of {'/'.join(map(str, s.clients))} client processes "
                f"({s.qps_rounds} rounds x {s.qps_seconds:g} s)"
            )
            self._qps(pool, kind)
        return versions

    def _searches(
        self,
        w0: procs.Worker,
        kind: str,
        workload: str,
        plan: str,
        nq: int,
        rounds: int,
        reps: int,
        warmup: int,
        summary: Any,
    ) -> None:
        samples: dict[str, list[float]] = {system: [] for system in SINGLE}
        for r in range(rounds):
            if rounds > 1:  # a phase may take a minute: say where it is
                self.progress(f"  {kind} {workload.replace('_', ' ')}: round {r + 1}/{rounds}")
            order = SINGLE[r % len(SINGLE) :] + SINGLE[: r % len(SINGLE)]
            for system in order:
                samples[system] += w0.call(
                    "search",
                    timeout=600,
                    key=hkey(plan, system),
                    queries=self.data["xq"],
                    nq=nq,
                    k=self.sizes.k,
                    reps=reps,
                    warmup=warmup,
                )
        for system, times in samples.items():
            self.put(kind, workload, system, summary(times, rounds))

    def _adds(self, w0: procs.Worker) -> None:
        s = self.sizes
        big: dict[str, list[float]] = {system: [] for system in SINGLE}
        small: dict[str, list[float]] = {system: [] for system in SINGLE}
        for r in range(s.add_rounds):
            self.progress(f"  flat adds: round {r + 1}/{s.add_rounds}")
            order = SINGLE[r % len(SINGLE) :] + SINGLE[: r % len(SINGLE)]
            for system in order:
                mode, endpoint = self.where[system]
                common = {
                    "mode": mode,
                    "endpoint": endpoint,
                    "d": s.d,
                    "factory": "Flat",
                    "data": self.data["xb"],
                    "reps": 1,
                    "echo": self.echo,
                }
                big[system] += w0.call("add", timeout=600, n=s.n_large, batch=s.n_large, **common)
                small[system] += w0.call(
                    "add", timeout=600, n=s.batch_add_n, batch=s.batch_add, **common
                )
        for system in SINGLE:
            self.put("flat", "add", system, add_summary(big[system], s.n_large * s.d * 4))
            self.put(
                "flat",
                "add_batches",
                system,
                batch_add_summary(small[system], s.batch_add * s.d * 4),
            )

    def _qps(self, pool: procs.Pool, kind: str, systems: tuple[str, ...] = MULTI) -> None:
        s = self.sizes
        plan = KIND_PLANS[kind][0]
        rates: dict[str, dict[int, list[dict[str, float]]]] = {
            system: {n: [] for n in s.clients} for system in systems
        }
        for r in range(s.qps_rounds):
            for system in systems[r % len(systems) :] + systems[: r % len(systems)]:
                for n in s.clients:
                    rates[system][n].append(
                        self._qps_once(pool, n, hkey(plan, system), s.qps_seconds)
                    )
        for system in systems:
            self.put(
                kind,
                "qps",
                system,
                {str(n): _qps_summary(runs) for n, runs in rates[system].items()},
            )

    def _qps_once(
        self, pool: procs.Pool, clients: int, key: str, seconds: float
    ) -> dict[str, float]:
        s = self.sizes
        args = {
            "key": key,
            "queries": self.data["xq"],
            "duration": seconds,
            "nq_max": s.nq_max,
            "k": s.k,
            "start_at": time.time() + s.qps_start_delay + 0.05 * clients,
        }
        answers = pool.all("qps", [args] * clients, timeout=seconds + 300)
        return {
            "qps": sum(a["requests"] / a["elapsed"] for a in answers),
            "queries_s": sum(a["queries"] / a["elapsed"] for a in answers),
            "late_s": max(a["late_s"] for a in answers),
        }

    # -- the original faissx -------------------------------------------------------------------
    def _skip_original(self, reason: str) -> None:
        for kind in KINDS:
            for workload in self.results[kind].values():
                workload["systems"]["original"] = {"skipped": reason}

    def _fail_original(self, reason: str, kinds: tuple[str, ...] = KINDS) -> None:
        for kind in kinds:
            for workload in self.results[kind].values():
                workload["systems"].setdefault("original", failed(reason))

    def _original(self, stack: ExitStack, logs: Path) -> str:
        s = self.sizes
        try:
            python = procs.original_venv(self.cache, ORIGINAL_VERSION, self.console)
        except Exception as exc:  # no original, no comparison; the rest stands
            self._fail_original(f"install: {exc}")
            return "not installed"
        self.progress(
            f"original faissx {ORIGINAL_VERSION}: starting its server and "
            f"{max(s.clients)} client processes"
        )
        try:
            server, endpoint = procs.start_original(python, self.cache, logs)
        except Exception as exc:
            self._fail_original(f"server: {exc}")
            return ORIGINAL_VERSION
        stack.callback(server.stop)
        pool = procs.Pool(
            str(python), max(s.clients), logs, "original", isolated=True, cwd=self.cache
        )
        stack.callback(pool.close)
        try:
            pool.hello("orig")
        except Exception as exc:
            self._fail_original(f"client: {exc}")
            return ORIGINAL_VERSION
        w0 = pool[0]
        built: dict[str, dict[str, Any]] = {}
        for plan in self.plans.values():
            self.progress(f"original: building {plan.key} ({plan.factory}, {plan.n} vectors)")
            try:
                built[plan.key] = w0.call(
                    "build",
                    timeout=1200,
                    key=hkey(plan.key, "orig"),
                    mode="orig",
                    d=s.d,
                    factory=plan.factory,
                    data=self.data["xb"],
                    n=plan.n,
                    train_n=plan.train_n,
                    params=plan.params,
                    endpoint=endpoint,
                )
            except (procs.WorkerError, procs.WorkerDied) as exc:
                built[plan.key] = failed(exc)
                pool.revive()

        def search(plan: str, nq: int, reps: int, warmup: int) -> list[float]:
            return w0.call(
                "search",
                timeout=600,
                key=hkey(plan, "orig"),
                queries=self.data["xq"],
                nq=nq,
                k=s.k,
                reps=reps,
                warmup=warmup,
            )

        for kind, (small, big) in KIND_PLANS.items():
            self.put(kind, "build", "original", built[big])
            for workload, plan, nq, reps, warmup, summary in (
                ("latency", small, 1, s.orig_latency_reps, 2, latency_summary),
                ("batch_search", big, s.nq_batch, s.orig_batch_reps, 0, batch_summary),
            ):
                if "failed" in built[plan]:
                    self.put(kind, workload, "original", built[plan])
                    continue
                self.progress(f"original: {kind} {workload.replace('_', ' ')}")
                self.put(
                    kind,
                    workload,
                    "original",
                    self._attempt(
                        pool, lambda f=summary, a=(plan, nq, reps, warmup): f(search(*a))
                    ),
                )
        self.progress("original: flat adds")
        common = {
            "mode": "orig",
            "endpoint": endpoint,
            "d": s.d,
            "factory": "Flat",
            "data": self.data["xb"],
            "reps": s.orig_add_rounds,
        }
        self.put(
            "flat",
            "add",
            "original",
            self._attempt(
                pool,
                lambda: add_summary(
                    w0.call("add", timeout=900, n=s.n_large, batch=s.n_large, **common),
                    s.n_large * s.d * 4,
                ),
            ),
        )
        self.put(
            "flat",
            "add_batches",
            "original",
            self._attempt(
                pool,
                lambda: batch_add_summary(
                    w0.call("add", timeout=900, n=s.orig_batch_add_n, batch=s.batch_add, **common),
                    s.batch_add * s.d * 4,
                ),
            ),
        )
        for kind, (small, _) in KIND_PLANS.items():
            if "failed" in built[small]:
                self.put(kind, "qps", "original", built[small])
                continue
            self.progress(f"original: {kind} QPS of {'/'.join(map(str, s.clients))} clients")
            self.put(
                kind,
                "qps",
                "original",
                self._attempt(
                    pool,
                    lambda small=small: self._original_qps(pool, small, built[small], endpoint),
                ),
            )
        return ORIGINAL_VERSION

    def _original_qps(
        self, pool: procs.Pool, plan_key: str, built: dict[str, Any], endpoint: str
    ) -> dict[str, Any]:
        s = self.sizes
        plan = self.plans[plan_key]
        key = hkey(plan_key, "orig")
        if len(pool) > 1:
            args = {
                "key": key,
                "mode": "orig",
                "d": s.d,
                "factory": plan.factory,
                "endpoint": endpoint,
                "index_id": built["index_id"],
                "ntotal": built["ntotal"],
                "params": plan.params,
            }
            for worker in pool.workers[1:]:
                worker.call("attach", timeout=300, **args)
        return {
            str(n): _qps_summary([self._qps_once(pool, n, key, s.orig_qps_seconds)])
            for n in s.clients
        }

    @staticmethod
    def _attempt(pool: procs.Pool, fn: Any) -> dict[str, Any]:
        try:
            return fn()
        except (procs.WorkerError, procs.WorkerDied) as exc:
            pool.revive()
            return failed(exc)


def _qps_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "qps": float(np.median([r["qps"] for r in runs])),
        "queries_s": float(np.median([r["queries_s"] for r in runs])),
        "runs": [round(r["qps"], 1) for r in runs],
        "late_s": round(max(r["late_s"] for r in runs), 3),
    }


def run(sizes: Sizes, *, original: bool, cache: Path, console: Any = None) -> dict[str, Any]:
    return Run(sizes, original=original, cache=cache, console=console).execute()
