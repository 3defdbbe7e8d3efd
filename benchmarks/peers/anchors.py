"""The two gaps issue 17 names against our own anchors, measured with ``make bench``'s parts.

(a) one-query search overhead: (FAISSx p50 - local faiss p50) / bare-echo p50, for flat, IVF
    and HNSW (goal <= 1.3);
(b) one-row adds (LlamaIndex adds one vector per call): FAISSx's bandwidth / the echo's, i.e.
    echo time per one-row round trip / FAISSx time per one-row add (goal: close to 1); and the
    same adds with ``configure(write_window=N)`` (``--write-window``, default 32; 0: not run),
    timed until ``flush()`` returns: adds/s of each, and each one's ratio to the echo's.

Everything is reused from :mod:`benchmarks.procs` / :mod:`benchmarks.runner`: the ``faissx
serve`` and echo servers, the ``driver.py`` worker and its ``build``/``search``/``add``
commands, the summaries. The systems take turns round by round, as in ``make bench``.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.runner import latency_summary

#: kind -> (factory, vectors, search parameters)
INDICES = {
    "flat": ("Flat", 10_000, {}),
    "ivf": ("IVF256,Flat", 20_000, {"nprobe": 16}),
    "hnsw": ("HNSW32", 20_000, {"efSearch": 64}),
}
SYSTEMS = ("local", "tcp", "echo-tcp")
#: The write window of the one-row-add variant (``configure(write_window=...)``).
WRITE_WINDOW = 32


def runner(*, quick: bool, progress: Any = print, **sizes_given: int) -> Any:
    """A function of (work dir, log dir) that measures the anchors, for :func:`run.run`;
    ``sizes_given`` (rounds, reps, adds, write_window) override the defaults."""
    sizes = (
        {"d": 32, "scale": 0.05, "rounds": 2, "reps": 30, "adds": 100, "write_window": 32}
        if quick
        else {
            "d": 128,
            "scale": 1.0,
            "rounds": 5,
            "reps": 300,
            "adds": 2000,
            "write_window": WRITE_WINDOW,
        }
    )
    sizes.update(sizes_given)

    def measure(work: Path, logs: Path) -> dict[str, Any]:
        try:
            return _measure(work, logs, sizes, progress)
        except (procs.WorkerError, procs.WorkerDied, RuntimeError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:800]}

    return measure


def _measure(work: Path, logs: Path, sz: dict[str, Any], progress: Any) -> dict[str, Any]:
    from faiss.contrib.datasets import SyntheticDataset

    d = sz["d"]
    n_max = max(int(n * sz["scale"]) for _, n, _ in INDICES.values())
    ds = SyntheticDataset(d, 0, n_max, 1000, seed=7)
    xb, xq = work / "anchors-xb.npy", work / "anchors-xq.npy"
    np.save(xb, ds.get_database())
    np.save(xq, ds.get_queries())
    out: dict[str, Any] = {"sizes": sz, "latency": {}, "one_row_add": {}}
    with ExitStack() as stack:
        progress("anchors: faissx serve, the echo server, one driver.py worker")
        server, tcp, _ = procs.start_faissx(work, logs)
        stack.callback(server.stop)
        echo, echo_tcp, _ = procs.start_echo(work, logs)
        stack.callback(echo.stop)
        pool = procs.Pool(sys.executable, 1, logs, "anchors")
        stack.callback(pool.close)
        w0 = pool[0]
        wire = wire_sizes(d)
        w0.call("attach", key="echo-tcp", mode="echo", d=d, endpoint=echo_tcp, echo=wire)
        for kind, (factory, n, params) in INDICES.items():
            n = int(n * sz["scale"])
            progress(f"anchors: {kind} ({factory}, {n} vectors): nq=1 latency")
            common = {
                "d": d,
                "factory": factory,
                "data": str(xb),
                "n": n,
                "train_n": n,
                "params": params,
            }
            w0.call("build", timeout=600, key=f"{kind}@local", mode="local", **common)
            w0.call(
                "build",
                timeout=600,
                key=f"{kind}@tcp",
                mode="ours",
                endpoint=tcp,
                name=f"anchor-{kind}",
                **common,
            )
            times: dict[str, list[float]] = {s: [] for s in SYSTEMS}
            for r in range(sz["rounds"]):
                for system in SYSTEMS[r % 3 :] + SYSTEMS[: r % 3]:
                    key = system if system.startswith("echo") else f"{kind}@{system}"
                    times[system] += w0.call(
                        "search",
                        timeout=600,
                        key=key,
                        queries=str(xq),
                        nq=1,
                        k=10,
                        reps=sz["reps"],
                        warmup=20,
                    )
            got = {s: latency_summary(t, sz["rounds"]) for s, t in times.items()}
            for s in got.values():
                s.pop("round_p50_us", None)
            local, remote, bare = (got[s]["p50_us"] for s in SYSTEMS)
            one_thread = _local_one_thread(
                factory, ds.get_database()[:n], params, ds.get_queries(), sz["reps"] * sz["rounds"]
            )
            out["latency"][kind] = {
                **got,
                "overhead_over_echo": (remote - local) / bare,
                "goal": 1.3,
                "local_1thread_p50_us": one_thread,
                "overhead_over_echo_vs_1thread": (remote - one_thread) / bare,
            }
            for system in ("local", "tcp"):
                w0.call("drop", key=f"{kind}@{system}")
        window = int(sz.get("write_window") or 0)
        # system -> (driver mode, endpoint, write window)
        add_systems = {"tcp": ("ours", tcp, 0), "echo-tcp": ("echo", echo_tcp, 0)}
        if window:
            add_systems[f"tcp-window{window}"] = ("ours", tcp, window)
        names = list(add_systems)
        progress(f"anchors: {sz['adds']} one-row adds, {', '.join(names)}, in turns")
        adds: dict[str, list[float]] = {s: [] for s in names}
        totals: dict[str, float] = dict.fromkeys(names, 0.0)
        for r in range(sz["rounds"]):
            for system in names[r % len(names) :] + names[: r % len(names)]:
                mode, endpoint, w = add_systems[system]
                got = w0.call(
                    "add",
                    timeout=600,
                    mode=mode,
                    endpoint=endpoint,
                    d=d,
                    factory="Flat",
                    data=str(xb),
                    n=sz["adds"],
                    batch=1,
                    reps=1,
                    echo=wire,
                    write_window=w,
                )
                adds[system] += got
                totals[system] += sum(got)
        p50 = {s: float(np.median(t)) * 1e6 for s, t in adds.items()}
        # until every add is acknowledged (the window's flush included): what a loader sees
        per_s = {s: len(adds[s]) / totals[s] for s in names}
        out["one_row_add"] = {
            "p50_us": p50,
            "n": {s: len(t) for s, t in adds.items()},
            "bandwidth_vs_echo": p50["echo-tcp"] / p50["tcp"],
            "adds_per_s": per_s,
            "adds_per_s_vs_echo": {s: v / per_s["echo-tcp"] for s, v in per_s.items()},
            "write_window": window,
        }
    return out


def _local_one_thread(
    factory: str, xb: np.ndarray, params: dict[str, Any], xq: np.ndarray, count: int
) -> float:
    """p50 (µs) of one-query searches on local faiss run with one OpenMP thread, in this
    process: what the server's inline path runs (it sets one thread for small reads).

    The plain local anchor uses faiss's default team (every core): at one query, waking it
    can cost more than the search (flat here: ~300 µs with two threads, ~90 µs with one), which
    hides FAISSx's fixed per-request cost in the flat ratio and not in the IVF/HNSW ones. The
    ratio against this figure shows the request path's cost the same way for every kind.
    """
    import faiss

    index = faiss.index_factory(xb.shape[1], factory)
    index.train(xb)
    index.add(xb)
    for name, value in params.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    rows = [np.ascontiguousarray(xq[i : i + 1]) for i in range(len(xq))]
    return float(np.median(local_times(index, rows, count))) * 1e6


def local_times(index: Any, rows: list[np.ndarray], count: int, gap: float = 0.0) -> list[float]:
    """Seconds of ``count`` one-query searches of ``index`` (over ``rows`` in turn) with one
    OpenMP thread, what the server's inline path runs; each after sleeping ``gap`` seconds (0:
    a tight loop; ``request_cost.py`` sleeps one echo round trip, as a server's search waits)."""
    import time

    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for i in range(20):
            index.search(rows[i % len(rows)], 10)
        times = []
        for i in range(count):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            index.search(rows[i % len(rows)], 10)
            times.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    return times


def wire_sizes(d: int) -> dict[str, int]:
    """The echo mimics a real FAISSx request and reply header (as ``make bench`` does)."""
    from benchmarks.runner import Run

    return {"request_header": 0, "reply_header": 0, **Run._wire_sizes(d, 10)}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.peers.anchors``: only the anchors, without the peers' venvs.

    The anchors move with every change to the request path, and the full peers run takes an
    hour; this measures them alone in a minute or two and prints the JSON.
    """
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.anchors")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per system (default 5; quick 2)")
    parser.add_argument("--reps", type=int, help="searches per round (default 300; quick 30)")
    parser.add_argument("--adds", type=int, help="one-row adds per round (default 2000)")
    parser.add_argument(
        "--write-window",
        type=int,
        help=f"also time the one-row adds with configure(write_window=N) (default "
        f"{WRITE_WINDOW}; 0: not)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("rounds", "reps", "adds") if getattr(args, k)}
    if args.write_window is not None:
        given["write_window"] = args.write_window
    measure = runner(quick=args.quick, progress=lambda line: print(line, file=sys.stderr), **given)
    with tempfile.TemporaryDirectory(prefix="faissx-anchors-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        got = measure(work, work / "logs")
    text = json.dumps(got, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)  # make's BENCH_OUT may not exist yet
        args.out.write_text(text)
    print(text)
    return 1 if "error" in got else 0


if __name__ == "__main__":
    sys.exit(main())
