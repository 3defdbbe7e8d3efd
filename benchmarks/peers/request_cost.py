"""Where one query's time goes: the single-query gap of issue 17, taken apart in one run.

``python -m benchmarks.peers.request_cost [--kind ivf|hnsw|flat] [--rounds R] [--reps N]``

The anchor ratio ``(FAISSx p50 - local p50) / echo p50`` (``anchors.py``) mixes three things.
This measures them separately, the systems taking turns round by round:

* **CPU per request on each side.** This process is the client of ``faissx serve`` and of the
  bare pyzmq echo server (``driver.py echo``); for both, the server's CPU time per request is
  read from ``/proc`` for its socket thread and for everything else (ZeroMQ's I/O thread), and
  the client's from :func:`time.process_time`. What FAISSx costs beyond the echo on each side
  is the request path's own work (Python, faiss, the extra ZeroMQ frames).
* **local faiss, hot and after an idle gap.** The local anchor is a tight loop: the search's
  data and code stay in cache, and the CPU never idles. A server's search always follows a
  wait of at least a round trip. The same local search after sleeping one echo round trip
  shows what the wait alone costs the search (on a virtual machine, a halted vCPU loses its
  caches and clock; on this box it more than doubled an IVF search).
* **the floor.** ``1 + (local after the gap - local hot) / echo`` is the anchor ratio a server
  that added no work at all (no decoding, no checks, no Python) would score against the hot
  local anchor, with its search paying only the wait. A goal below it cannot be met by making
  the request path cheaper.

Figures are printed as a table and as JSON (``--out``). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.driver import EchoIndex
from benchmarks.peers.anchors import INDICES, local_times, wire_sizes

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from ``/proc``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def timed_loop(
    search: Callable[[np.ndarray], Any], rows: list[np.ndarray], reps: int, server_pid: int
) -> dict[str, Any]:
    """``reps`` one-query searches: wall times, client CPU, the server's CPU by thread."""
    for i in range(20):
        search(rows[i % len(rows)])
    before, cpu0 = thread_cpu(server_pid), time.process_time()
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        search(rows[i % len(rows)])
        times.append(time.perf_counter() - t0)
    cpu1, after = time.process_time(), thread_cpu(server_pid)
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    socket_thread = spent.pop(server_pid, 0.0)  # the main thread runs the socket loop
    return {
        "times": times,
        "client_cpu": cpu1 - cpu0,
        "server_socket_cpu": socket_thread,
        "server_other_cpu": sum(spent.values()),
    }


def median_us(values: list[float]) -> float:
    return float(np.median(values)) * 1e6


def measure(kind: str, rounds: int, reps: int) -> dict[str, Any]:
    """One index kind of :data:`anchors.INDICES` (d=128): FAISSx and the echo in turns for
    ``rounds`` rounds of ``reps`` one-query searches, local faiss hot and after the gap in each
    round; per-request figures and the ratios built from their medians."""
    import faiss
    from faiss.contrib.datasets import SyntheticDataset

    import faissx_client

    factory, n, params = INDICES[kind]
    d = 128
    ds = SyntheticDataset(d, 0, n, 1000, seed=7)
    xb = ds.get_database()
    rows = [np.ascontiguousarray(q[None]) for q in ds.get_queries()]
    local = faiss.index_factory(d, factory)
    local.train(xb)
    local.add(xb)
    for name, value in params.items():
        faiss.ParameterSpace().set_index_parameter(local, name, value)
    wire = wire_sizes(d)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="request-cost-")))
        server, tcp, _ = procs.start_faissx(tmp, tmp)
        stack.callback(server.stop)
        echo_service, echo_tcp, _ = procs.start_echo(tmp, tmp)
        stack.callback(echo_service.stop)
        faissx_client.configure(server=tcp)
        stack.callback(faissx_client.disconnect)
        remote = faissx_client.index_factory(d, factory)
        remote.train(xb)
        remote.add(xb)
        for name, value in params.items():
            faissx_client.ParameterSpace().set_index_parameter(remote, name, value)
        # the same answers as local faiss (exact for a flat index), or the timings mean nothing
        probe = ds.get_queries()[:20]
        agree = float(np.mean(remote.search(probe, 10)[1] == local.search(probe, 10)[1]))
        echo = EchoIndex(echo_tcp, d, wire["request_header"], wire["reply_header"])
        stack.callback(echo.close)
        systems: dict[str, tuple[Callable[[np.ndarray], Any], int]] = {
            "faissx": (lambda x: remote.search(x, 10), server.proc.pid),
            "echo": (lambda x: echo.search(x, 10), echo_service.proc.pid),
        }
        got: dict[str, dict[str, Any]] = {
            s: {"times": [], "client_cpu": 0.0, "server_socket_cpu": 0.0, "server_other_cpu": 0.0}
            for s in systems
        }
        hot: list[float] = []
        gapped: list[float] = []
        for r in range(rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for system in order:
                search, pid = systems[system]
                one = timed_loop(search, rows, reps, pid)
                got[system]["times"] += one.pop("times")
                for key, value in one.items():
                    got[system][key] += value
            hot += local_times(local, rows, reps, 0.0)
            gapped += local_times(local, rows, reps, median_us(got["echo"]["times"]) / 1e6)
    count = rounds * reps
    out: dict[str, Any] = {
        "kind": kind,
        "factory": factory,
        "n": n,
        "params": params,
        "requests": count,
        "ids_as_local": agree,
    }
    for system, one in got.items():
        out[system] = {
            "p50_us": median_us(one["times"]),
            "client_cpu_us": one["client_cpu"] / count * 1e6,
            "server_socket_thread_cpu_us": one["server_socket_cpu"] / count * 1e6,
            "server_other_threads_cpu_us": one["server_other_cpu"] / count * 1e6,
        }
    local_hot, local_gap = median_us(hot), median_us(gapped)
    bare, ours = out["echo"]["p50_us"], out["faissx"]["p50_us"]
    out["local"] = {"hot_p50_us": local_hot, "after_gap_p50_us": local_gap}
    out["ratio"] = {
        "anchor": (ours - local_hot) / bare,
        "floor": 1 + (local_gap - local_hot) / bare,
        "against_local_after_gap": (ours - local_gap) / bare,
        "goal": 1.3,
    }
    out["load"] = os.getloadavg()
    return out


def table(result: dict[str, Any]) -> str:
    ours, bare, local = result["faissx"], result["echo"], result["local"]
    lines = [
        f"{result['kind']} ({result['factory']}, {result['n']:,} vectors, {result['params']}); "
        f"load {result['load'][0]:.1f}",
        "",
        "| per one-query request | FAISSx | echo | FAISSx - echo |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("p50_us", "round trip p50 (µs)"),
        ("client_cpu_us", "client CPU (µs)"),
        ("server_socket_thread_cpu_us", "server socket thread CPU (µs)"),
        ("server_other_threads_cpu_us", "server other threads CPU (µs)"),
    ):
        gap = ours[key] - bare[key]
        lines.append(f"| {label} | {ours[key]:.0f} | {bare[key]:.0f} | {gap:.0f} |")
    ratio = result["ratio"]
    lines += [
        "",
        f"local faiss, one thread: hot loop {local['hot_p50_us']:.0f} µs, after an idle gap of "
        f"one echo round trip {local['after_gap_p50_us']:.0f} µs",
        f"(FAISSx - local hot) / echo = {ratio['anchor']:.2f} (goal {ratio['goal']}); "
        f"floor for a server adding no work = {ratio['floor']:.2f}; "
        f"(FAISSx - local after the gap) / echo = {ratio['against_local_after_gap']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.request_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kind", default="ivf,hnsw", help=f"from {', '.join(INDICES)}")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = []
    for kind in args.kind.split(","):
        result = measure(kind, args.rounds, args.reps)
        results.append(result)
        print(table(result), end="\n\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
