"""A light tenant's search latency with and without a heavy tenant on the same server.

Run: ``.venv/bin/python -m benchmarks.fairness [--seconds S] [--heavy-clients N]``. One server
(``--workers 2``); tenant ``light`` searches a 10k x 32 flat index one query at a time (k=10)
in a loop; tenant ``heavy`` has N clients each sending, back to back, IVF searches of 500
queries with a per-call ``nprobe`` that scans every list (the requests issue 13 saw starve
everyone: about a second of work each, in a frame small enough to look cheap). Prints the light
tenant's searches and p50/p99 latency alone and under load, and writes
``benchmarks/results/fairness-<light queries>q.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from faissx_core.protocol import encode, recv_reply

HERE = Path(__file__).parent
FAISSX = Path(sys.executable).parent / "faissx"
D = 32


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """A bare DEALER of one tenant (the wire protocol, no retries: latencies are raw)."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, tenant: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.tenant = tenant

    def call(
        self,
        op: str,
        index: str,
        args: dict | None = None,
        arrays: dict | None = None,
        timeout: float = 120.0,
    ) -> dict:
        rid = next(self._ids)
        header = {
            "v": 1,
            "id": rid,
            "op": op,
            "index": index,
            "args": args or {},
            "tenant": self.tenant,
            "idem": f"{self.tenant}-{rid}" if op in ("add", "train") else None,
        }
        self.sock.send_multipart(encode(header, arrays))
        while True:
            if not self.sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"{op}: no reply in {timeout}s")
            reply, out = recv_reply(self.sock)
            if reply.id == rid and not reply.working:
                if not reply.ok:
                    raise RuntimeError(reply.error)
                return out

    def close(self) -> None:
        self.sock.close(0)


def _setup(endpoint: str) -> None:
    rng = np.random.default_rng(0)
    heavy, light = Client(endpoint, "heavy"), Client(endpoint, "light")
    quantizer = {"type": "IndexFlatL2", "params": {"d": D}}
    heavy.call(
        "create",
        "big",
        {"spec": {"type": "IndexIVFFlat", "params": {"quantizer": quantizer, "d": D, "nlist": 64}}},
    )
    data = rng.random((100_000, D), dtype=np.float32)
    heavy.call("train", "big", arrays={"x": data[:5000]})
    heavy.call("add", "big", arrays={"x": data})
    light.call("create", "small", {"spec": quantizer})
    light.call("add", "small", arrays={"x": rng.random((10_000, D), dtype=np.float32)})
    heavy.close()
    light.close()


def _light_loop(endpoint: str, seconds: float, queries: int) -> list[float]:
    client = Client(endpoint, "light")
    x = np.random.default_rng(1).random((queries, D), dtype=np.float32)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        client.call("search", "small", {"k": 10}, {"x": x})
        latencies.append(time.perf_counter() - start)
    client.close()
    return latencies


def _heavy_loop(endpoint: str, stop: threading.Event, done: list[int]) -> None:
    client = Client(endpoint, "heavy")
    args = {"k": 10, "params": {"type": "SearchParametersIVF", "params": {"nprobe": 64}}}
    x = np.random.default_rng(2).random((500, D), dtype=np.float32)
    while not stop.is_set():
        client.call("search", "big", args, {"x": x})
        done.append(1)
    client.close()


def _summary(latencies: list[float], seconds: float) -> dict[str, Any]:
    ms = np.array(latencies) * 1000
    return {
        "searches": len(ms),
        "per_s": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--heavy-clients", type=int, default=4)
    parser.add_argument(
        "--light-queries",
        type=int,
        default=1,
        help="queries per light search: 1 is answered on the socket thread, "
        "100 (32M components of work) goes through the pool's fair queue",
    )
    opts = parser.parse_args()
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(FAISSX), "serve", "--port", str(port), "--log-level", "WARNING", "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        for _ in range(60):
            try:
                _setup(endpoint)
                break
            except TimeoutError:
                time.sleep(0.5)
        alone = _summary(_light_loop(endpoint, opts.seconds, opts.light_queries), opts.seconds)
        stop, done = threading.Event(), []
        threads = [
            threading.Thread(target=_heavy_loop, args=(endpoint, stop, done))
            for _ in range(opts.heavy_clients)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # the heavy tenant's queue fills up
        loaded = _summary(_light_loop(endpoint, opts.seconds, opts.light_queries), opts.seconds)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "alone": alone,
        "with_heavy_tenant": loaded,
        "heavy_searches": len(done),
        "heavy_clients": opts.heavy_clients,
        "light_queries": opts.light_queries,
        "p99_factor": round(loaded["p99_ms"] / max(alone["p99_ms"], 1e-9), 1),
        "machine": platform.platform(),
        "seconds": opts.seconds,
    }
    print(json.dumps(result, indent=2))
    out = HERE / "results" / f"fairness-{opts.light_queries}q.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
