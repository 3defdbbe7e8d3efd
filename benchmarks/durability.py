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


def _add_rows(client: Any, name: str, rows: np.ndarray, latencies: list[float]) -> None:
    """One ``add`` request per row, each timed (the client's own call: retries, keys)."""
    for i in range(len(rows)):
        start = time.perf_counter()
        client.call("add", name, {}, {"x": rows[i : i + 1]})
        latencies.append(time.perf_counter() - start)


class OneRowServer:
    """A fresh ``faissx serve`` of one build with a data directory and metrics, and a client."""

    def __init__(self, faissx: str, mode: str) -> None:
        from faissx_client.client import Client
        from faissx_client.settings import ClientSettings

        self.tmp = tempfile.TemporaryDirectory(dir=os.environ.get("FAISSX_BENCH_DATA"))
        port, self.metrics_port = _free_port(), _free_port()
        args = [faissx, "serve", "--port", str(port), "--log-level", "WARNING"]
        args += ["--data-dir", self.tmp.name, "--fsync", mode]
        args += ["--metrics-port", str(self.metrics_port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client = Client(ClientSettings(server=f"tcp://127.0.0.1:{port}", timeout=120))
                self.client.hello()
                break
            except Exception:
                self.client.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def fsyncs(self) -> float:
        return _fsyncs(self.metrics_port)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(60)
        self.tmp.cleanup()


def one_row(opts: argparse.Namespace) -> None:
    """Every build gets a server per mode, all running at once; for each dimension and client
    count, the builds take turns every block of adds, so each sees the same machine load
    (other work on the machine and on its disk changes by the second)."""
    builds = {"this": str(FAISSX)}
    for item in opts.compare:
        label, _, path = item.partition("=")
        builds[label] = path
    dims = [int(x) for x in opts.dims.split(",")]
    clients = [int(x) for x in opts.clients.split(",")]
    load = [os.getloadavg()]
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    rng = np.random.default_rng(0)
    for mode in opts.modes.split(","):
        servers = {label: OneRowServer(path, mode) for label, path in builds.items()}
        try:
            for d in dims:
                for c in clients:
                    name = f"d{d}-c{c}"
                    spec = {"type": "IndexFlatL2", "params": {"d": d}}
                    data = rng.standard_normal((opts.blocks, c, opts.rows, d)).astype("float32")
                    lat: dict[str, list[list[float]]] = {b: [] for b in builds}
                    spent = dict.fromkeys(builds, 0.0)
                    syncs = dict.fromkeys(builds, 0.0)
                    for srv in servers.values():
                        srv.client.call("create", name, {"spec": spec})
                        _add_rows(srv.client, name, data[0, 0, :50], [])  # warm-up
                    for block in range(opts.blocks):
                        order = list(servers.items())
                        for label, srv in order if block % 2 == 0 else order[::-1]:
                            mine: list[list[float]] = [[] for _ in range(c)]
                            threads = [
                                threading.Thread(
                                    target=_add_rows,
                                    args=(srv.client, name, data[block, t], mine[t]),
                                )
                                for t in range(c)
                            ]
                            before = srv.fsyncs()
                            start = time.perf_counter()
                            for thread in threads:
                                thread.start()
                            for thread in threads:
                                thread.join()
                            spent[label] += time.perf_counter() - start
                            syncs[label] += srv.fsyncs() - before
                            lat[label] += mine
                    for label in builds:
                        every = [x for part in lat[label] for x in part]
                        results.setdefault(mode, {}).setdefault(f"d={d},c={c}", {})[label] = {
                            "p50_ms": statistics.median(every) * 1000,
                            "p99_ms": float(np.percentile(every, 99)) * 1000,
                            "adds_per_s": len(every) / spent[label],
                            "fsyncs_per_add": syncs[label] / len(every),
                        }
        finally:
            for srv in servers.values():
                srv.close()
    load.append(os.getloadavg())
    print(f"load average at start {load[0][0]:.2f}, at end {load[1][0]:.2f} (1 min)")
    head = f"{'mode':<7} {'config':<12} {'build':<8} {'p50 ms':>8} {'p99 ms':>8} {'adds/s':>8}"
    print(f"{head} {'fsync/add':>9}")
    for mode, configs in results.items():
        for config, per_build in configs.items():
            for label, r in per_build.items():
                print(
                    f"{mode:<7} {config:<12} {label:<8} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
                    f"{r['adds_per_s']:8.0f} {r['fsyncs_per_add']:9.2f}"
                )
    out = OUT_DIR / "durability-one-row.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_average": load,
                "blocks": opts.blocks,
                "rows_per_client_per_block": opts.rows,
                "builds": builds,
                "results": results,
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
    parser.add_argument("--rows", type=int, default=100, help="--one-row: adds per client/block")
    parser.add_argument("--blocks", type=int, default=6, help="--one-row: turns per build")
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
