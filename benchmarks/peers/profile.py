"""Where a FAISSx row goes: py-spy on a ``faissx serve`` this starts, cProfile on the client.

``python -m benchmarks.peers.profile WORKLOAD [--fsync off|batch|always] [--seconds S]``
with WORKLOAD one of:

  add1          one-row ``add`` calls on a Flat index (the one-row-insert row; LlamaIndex)
  search1-flat  one-query searches on IDMap2,Flat (``--n`` vectors)
  search1-hnsw  one-query searches on HNSW16 (``--n`` vectors, ``--ef``)
  load-hnsw     the bulk load of ``--n`` vectors into HNSW16 in 5000-row calls
  batch-flat    searches of ``--nq`` queries at a time on IDMap2,Flat (the batch-QPS row)
  load-flat     the bulk load of ``--n`` vectors into IDMap2,Flat in 5000-row calls
  delete        ``remove_ids`` of 100 random present ids at a time on IDMap2,Flat (``--n``
                vectors; the peer benchmark's "delete 100 ids" row)

``--d`` sets the width (128 by default); a run at another ``--n`` or ``--d`` than the default
names its file after them (``profile-search1-flat-n1000000.txt``).

The server is sampled by ``py-spy record --native`` (CPU samples of every busy thread, the
faiss C++ frames included; native sampling pauses the server for each sample, so the per-call
time printed here is slower than the benchmark's) for the timed loop only; the client loop
runs in this process under cProfile. Both summaries (self and inclusive samples per function)
are printed and written to ``benchmarks/results/peers/profile-<workload>[-<fsync>].txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs

OUT = Path(__file__).resolve().parent.parent / "results" / "peers"


#: A sampled stack holding one of these is a thread waiting (for a request, a job, a lock),
#: not working: left out of the summary (py-spy's --native samples every thread).
WAITS = (
    "PyThread_acquire_lock_timed",
    "poll (libc",
    "epoll_wait",
    "Poller.poll",
    "Condition.wait",
    "select (libc",
    "zmq_poll",
)


def summarise_raw(path: Path, top: int = 25) -> str:
    """py-spy's raw (collapsed) stacks -> the functions with the most self / inclusive samples
    among threads that were working (not in one of :data:`WAITS`). A stripped library's frames
    have no names (``0x7f... (libc.so.6)``): "self samples by nearest named frame" charges them
    to the closest caller that has one (libc's memmove to the faiss function that called it)."""
    self_c: Counter[str] = Counter()
    named: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        if any(w in stack for w in WAITS):
            waiting += n
            continue
        total += n
        self_c[frames[-1]] += n
        named[next((f for f in reversed(frames) if not f.startswith("0x")), frames[-1])] += n
        for frame in set(frames):
            incl[frame] += n
    lines = [
        f"{total} samples of working server threads ({waiting} more of waiting ones left out)",
        "",
        "self samples:",
    ]
    lines += [f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in self_c.most_common(top)]
    lines += ["", "self samples by nearest named frame:"]
    lines += [f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in named.most_common(top)]
    lines += ["", "inclusive samples:"]
    lines += [
        f"  {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in incl.most_common(top + 25)
    ]
    return "\n".join(lines)


def client_loop(
    workload: str,
    seconds: float,
    endpoint: str,
    n: int,
    ef: int,
    durable: bool,
    d: int = 128,
    nq: int = 1,
    ef_construction: int = 64,
) -> Any:
    """Set the workload up against ``endpoint``; return the loop to time and profile, which
    runs until ``seconds`` pass (or the load ends) and returns (calls, elapsed)."""
    from faiss.contrib.datasets import SyntheticDataset

    from faissx import client

    client.configure(server=endpoint, timeout=600)
    ds = SyntheticDataset(d, 0, max(n, 1000), 1000, seed=3)
    xb, xq = ds.get_database(), ds.get_queries()
    name = {"name": f"profile-{workload}"} if durable else {}
    if workload == "add1":
        index = client.index_factory(d, "Flat", **name)
        rows = [np.ascontiguousarray(xb[i : i + 1]) for i in range(1000)]

        def adds() -> tuple[int, float]:
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                index.add(rows[calls % 1000])
                calls += 1
            return calls, time.perf_counter() - t0

        return adds
    if workload in ("load-hnsw", "load-flat"):
        if workload == "load-hnsw":
            index = client.index_factory(d, "HNSW16", **name)
            index.hnsw.efConstruction = ef_construction
        else:
            index = client.index_factory(d, "IDMap2,Flat", **name)

        def load() -> tuple[int, float]:
            calls, t0 = 0, time.perf_counter()
            for start in range(0, n, 5000):
                rows = np.ascontiguousarray(xb[start : start + 5000])
                if workload == "load-flat":
                    index.add_with_ids(rows, np.arange(start, start + len(rows)))
                else:
                    index.add(rows)
                calls += 1
            return calls, time.perf_counter() - t0

        return load
    if workload == "delete":
        index = client.index_factory(d, "IDMap2,Flat", **name)
        for start in range(0, n, 50_000):
            index.add_with_ids(xb[start : start + 50_000], np.arange(start, min(start + 50_000, n)))
        order = np.random.default_rng(0).permutation(n)

        def deletes() -> tuple[int, float]:
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds and (calls + 1) * 100 <= n:
                index.remove_ids(order[calls * 100 : (calls + 1) * 100])
                calls += 1
            return calls, time.perf_counter() - t0

        return deletes
    factory = "IDMap2,Flat" if workload in ("search1-flat", "batch-flat") else "HNSW16"
    index = client.index_factory(d, factory, **name)
    if factory == "HNSW16":
        index.hnsw.efConstruction = ef_construction
        index.add(xb[:n])
        index.hnsw.efSearch = ef
    else:
        index.add_with_ids(xb[:n], np.arange(n))
    size = nq if workload == "batch-flat" else 1
    rows = [np.ascontiguousarray(xq[i : i + size]) for i in range(0, 1000 - size + 1, size)]

    def searches() -> tuple[int, float]:
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            index.search(rows[calls % len(rows)], 10)
            calls += 1
        return calls, time.perf_counter() - t0

    return searches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.profile")
    parser.add_argument(
        "workload",
        choices=(
            "add1",
            "search1-flat",
            "search1-hnsw",
            "load-hnsw",
            "batch-flat",
            "load-flat",
            "delete",
        ),
    )
    parser.add_argument(
        "--fsync",
        choices=("off", "batch", "always"),
        default=None,
        help="run the server with --data-dir and this --fsync (else in memory)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--ef", type=int, default=32)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--nq", type=int, default=100, help="queries per batch (batch-flat)")
    parser.add_argument("--ef-construction", type=int, default=64)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")

    tag = args.workload + (f"-{args.fsync}" if args.fsync else "")
    tag += (f"-n{args.n}" if args.n != 100_000 else "") + (f"-d{args.d}" if args.d != 128 else "")
    tag += f"-efc{args.ef_construction}" if args.ef_construction != 64 else ""
    with tempfile.TemporaryDirectory(prefix="faissx-profile-") as tmp:
        work = Path(tmp)
        port = procs.free_port()
        cmd = [
            str(Path(sys.executable).with_name("faissx")),
            "serve",
            "--port",
            str(port),
            "--bind-address",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ]
        if args.fsync:
            cmd += ["--data-dir", str(work / "data"), "--fsync", args.fsync]
        endpoint = f"tcp://127.0.0.1:{port}"
        server = procs.Service(cmd, work / "server.log")
        try:
            server.wait_until(lambda: procs.ping_faissx(endpoint), 60, "faissx serve")
            loop = client_loop(
                args.workload,
                args.seconds,
                endpoint,
                args.n,
                args.ef,
                bool(args.fsync),
                args.d,
                args.nq,
                args.ef_construction,
            )
            raw = work / "server.raw"
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--rate",
                    str(args.rate),
                    "--native",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)
            profiler = cProfile.Profile()
            profiler.enable()
            calls, elapsed = loop()
            profiler.disable()
            recorder.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            try:
                _, err = recorder.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                _, err = recorder.communicate()
            server_text = (
                summarise_raw(raw)
                if raw.exists()
                else f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}"
            )
        finally:
            server.stop()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)
    client_text = "\n".join(stream.getvalue().splitlines()[:45])
    report = (
        f"# {tag}: {calls} calls in {elapsed:.2f} s = {elapsed / max(calls, 1) * 1e6:.0f} "
        f"µs per call\n\n## server (py-spy --native)\n\n{server_text}\n\n"
        f"## client (cProfile, by own time)\n\n{client_text}\n"
    )
    print(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"profile-{tag}.txt").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
