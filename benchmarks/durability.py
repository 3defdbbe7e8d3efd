"""Add throughput under --fsync always|batch|off, against an in-memory server.

Run: ``.venv/bin/python -m benchmarks.durability [--batches N] [--writers W]``. Each
configuration gets a fresh server; W threads share one client and each adds N batches of
1000x128 float32 vectors to its own named index (unnamed indices are never logged). Prints
vectors/s and MB/s per mode and the ratio to in-memory, and writes
``durability.json`` in ``benchmarks/out/`` (``FAISSX_BENCH_OUT``).

``--one-row`` measures durable one-row adds instead (issue 17: LlamaIndex adds one vector per
call): C threads sharing one client each add R single rows to one shared named index, for
every ``--fsync`` mode, dimension and client count given, and the table shows the median
latency of one add, adds/s, and log fdatasyncs per add (from the server's metrics: below 1
when writers share a sync). ``--compare LABEL=PATH`` (repeatable) runs other builds' ``faissx``
executables too, taking turns with this one for ``--rounds`` rounds in the same run, so a
before/after comparison sees the same machine load; ``durability-one-row.json`` holds every
round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.config import OUT_DIR

FAISSX = Path(sys.executable).parent / "faissx"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_mode(mode: str | None, batches: int, writers: int, batch: np.ndarray) -> float:
    import faissx_client as fx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(FAISSX), "serve", "--port", str(port), "--log-level", "WARNING"]
        if mode is not None:
            args += ["--data-dir", tmp, "--fsync", mode]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    fx.configure(server=f"tcp://127.0.0.1:{port}", timeout=120)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            indices = [fx.IndexFlatL2(batch.shape[1], name=f"w{i}") for i in range(writers)]

            def write(index: object) -> None:
                for _ in range(batches):
                    index.add(batch)  # type: ignore[attr-defined]

            threads = [threading.Thread(target=write, args=(ix,)) for ix in indices]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
            fx.disconnect()
        finally:
            server.terminate()
            server.wait(30)
    return writers * batches * len(batch) / elapsed


def _fsyncs(metrics_port: int) -> float:
    """Log fdatasyncs the server has run so far (its Prometheus histogram's count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    match = re.search(r"^faissx_wal_fsync_duration_seconds_count(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _add_rows(index: Any, rows: np.ndarray, latencies: list[float]) -> None:
    """One ``add`` per row, each timed."""
    for i in range(len(rows)):
        start = time.perf_counter()
        index.add(rows[i : i + 1])
        latencies.append(time.perf_counter() - start)


def one_row_server(
    faissx: str, mode: str, dims: list[int], clients: list[int], rows: int, tag: str
) -> dict[str, dict[str, float]]:
    """One fresh server of build ``faissx`` with ``--fsync mode``: for each dimension and
    client count, a new shared index, 50 warm-up adds, then ``clients`` threads x ``rows``
    one-row adds. Returns {"d=..,c=..": {p50_ms, adds_per_s, fsyncs_per_add}}."""
    import faissx_client as fx

    port, metrics_port = _free_port(), _free_port()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("FAISSX_BENCH_DATA")) as tmp:
        args = [faissx, "serve", "--port", str(port), "--log-level", "WARNING"]
        args += ["--data-dir", tmp, "--fsync", mode, "--metrics-port", str(metrics_port)]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    fx.configure(server=f"tcp://127.0.0.1:{port}", timeout=120)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            rng = np.random.default_rng(0)
            for d in dims:
                for c in clients:
                    index = fx.IndexFlatL2(d, name=f"{tag}-d{d}-c{c}")
                    data = rng.standard_normal((c, rows, d)).astype("float32")
                    for i in range(50):
                        index.add(data[0, i : i + 1])
                    latencies: list[list[float]] = [[] for _ in range(c)]

                    threads = [
                        threading.Thread(target=_add_rows, args=(index, data[t], latencies[t]))
                        for t in range(c)
                    ]
                    syncs = _fsyncs(metrics_port)
                    start = time.perf_counter()
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                    elapsed = time.perf_counter() - start
                    syncs = _fsyncs(metrics_port) - syncs
                    every = [x for lat in latencies for x in lat]
                    out[f"d={d},c={c}"] = {
                        "p50_ms": statistics.median(every) * 1000,
                        "adds_per_s": len(every) / elapsed,
                        "fsyncs_per_add": syncs / len(every),
                    }
            fx.disconnect()
        finally:
            server.terminate()
            server.wait(60)
    return out


def one_row(opts: argparse.Namespace) -> None:
    builds = {"this": str(FAISSX)}
    for item in opts.compare:
        label, _, path = item.partition("=")
        builds[label] = path
    modes = opts.modes.split(",")
    dims = [int(x) for x in opts.dims.split(",")]
    clients = [int(x) for x in opts.clients.split(",")]
    load = [os.getloadavg()]
    rounds: list[dict[str, Any]] = []
    for r in range(opts.rounds):
        order = list(builds.items()) if r % 2 == 0 else list(builds.items())[::-1]
        for mode in modes:
            for label, path in order:
                got = one_row_server(path, mode, dims, clients, opts.rows, f"r{r}")
                rounds.append({"round": r, "build": label, "mode": mode, "results": got})
    load.append(os.getloadavg())
    print(f"load average at start {load[0][0]:.2f}, at end {load[1][0]:.2f} (1 min)")
    print(f"{'mode':<7} {'config':<12} {'build':<8} {'p50 ms':>8} {'adds/s':>9} {'fsync/add':>9}")
    for mode in modes:
        for config in rounds[0]["results"]:
            for label in builds:
                runs = [
                    x["results"][config]
                    for x in rounds
                    if x["mode"] == mode and x["build"] == label
                ]
                p50 = statistics.median(x["p50_ms"] for x in runs)
                rate = statistics.median(x["adds_per_s"] for x in runs)
                syncs = statistics.median(x["fsyncs_per_add"] for x in runs)
                print(f"{mode:<7} {config:<12} {label:<8} {p50:8.3f} {rate:9.0f} {syncs:9.2f}")
    out = OUT_DIR / "durability-one-row.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_average": load,
                "rows_per_client": opts.rows,
                "builds": builds,
                "rounds": rounds,
            },
            indent=2,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--one-row", action="store_true", help="durable one-row adds instead")
    parser.add_argument("--modes", default="always,batch", help="--one-row: fsync modes")
    parser.add_argument("--dims", default="128,768", help="--one-row: dimensions")
    parser.add_argument("--clients", default="1,4", help="--one-row: concurrent clients")
    parser.add_argument("--rows", type=int, default=300, help="--one-row: adds per client")
    parser.add_argument("--rounds", type=int, default=2, help="--one-row: turns per build")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="--one-row: another build's faissx executable to take turns with",
    )
    opts = parser.parse_args()
    if opts.one_row:
        one_row(opts)
        return
    batch = np.random.default_rng(0).standard_normal((1000, 128)).astype("float32")
    results = {}
    for label, mode in (
        ("in-memory", None),
        ("off", "off"),
        ("batch", "batch"),
        ("always", "always"),
    ):
        results[label] = run_mode(mode, opts.batches, opts.writers, batch)
    base = results["in-memory"]
    print(f"{'mode':<10} {'vectors/s':>12} {'MB/s':>8} {'vs memory':>10}")
    for label, rate in results.items():
        print(f"{label:<10} {rate:12.0f} {rate * 512 / 1e6:8.1f} {rate / base:10.2f}")
    out = OUT_DIR / "durability.json"  # ignored by git: the published figures stay as they are
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "batches": opts.batches,
                "writers": opts.writers,
                "batch_shape": list(batch.shape),
                "vectors_per_second": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
