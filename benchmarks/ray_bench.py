"""``make bench-ray``: what the Ray backend costs and what shards and replicas buy, on this machine.

One Ray head node (``ray.cluster_utils.Cluster`` on 127.0.0.1) and two servers on the same
data: ``faissx serve`` (one process) and ``faissx serve --backend ray`` joined to that node.
For each placement (1, 2, 4 shards x 1, 2 replicas) an IndexFlatL2 is filled and searched through
the real client; the same calls on the single-process server are the baseline. Besides
throughput it measures the hops the scaling model in docs/distributed.md is built from: a
bare Ray actor call, one small search through each server.

Results go to ``<--out>/ray.json`` (``make bench-ray``: benchmarks/out, ignored by git) and are
printed as a table; the run quoted in docs/distributed.md is kept in
benchmarks/results/ray.json. Timings are medians of repeated calls; the machine's load
(``os.getloadavg``) is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.procs import clean_env, free_port

FAISSX = Path(sys.executable).with_name("faissx")
PLACEMENTS = [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)]


class Server:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.log = open(f"/tmp/faissx-ray-bench-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(FAISSX),
                "serve",
                "--port",
                str(self.port),
                "--bind-address",
                "127.0.0.1",
                "--log-level",
                "WARNING",
                *args,
            ],
            env=clean_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 180.0) -> None:
        from faissx import client as fx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            try:
                fx.configure(server=self.endpoint, timeout=2)
                fx.disconnect()
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"server did not answer within {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    endpoint: str,
    name: str,
    xb: np.ndarray,
    xq: np.ndarray,
    batch: int,
    placement: tuple[int, int] | None,
) -> dict[str, float]:
    from faissx import client as fx

    fx.configure(server=endpoint, timeout=300)
    try:
        kw = {} if placement is None else {"shards": placement[0], "replicas": placement[1]}
        index = fx.IndexFlatL2(xb.shape[1], name=name, **kw)
        start = time.perf_counter()
        for lo in range(0, len(xb), batch):
            index.add(xb[lo : lo + batch])
        add_s = time.perf_counter() - start
        one = xq[:1]
        index.search(one, 10)  # warm
        single = timed(lambda: index.search(one, 10), 30)
        many = timed(lambda: index.search(xq, 10), 5)
        fx.delete_index(name)
        return {
            "add_vectors_per_s": len(xb) / add_s,
            "add_batch_ms": 1e3 * add_s * batch / len(xb),
            "search1_ms": 1e3 * single,
            "search1_qps": 1 / single,
            "search_batch_ms": 1e3 * many,
            "search_batch_qps": len(xq) / many,
        }
    finally:
        fx.disconnect()


def actor_hop(address: str) -> float:
    """Median seconds of one call to a trivial Ray actor on the cluster: the bare hop."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, x):
            return x

    echo = Echo.remote()
    payload = np.zeros((1, 64), dtype=np.float32)
    ray.get(echo.echo.remote(payload))
    hop = timed(lambda: ray.get(echo.echo.remote(payload)), 50)
    ray.kill(echo)
    return hop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--nq", type=int, default=100)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("out"))
    args = parser.parse_args()
    from faissx_core.server.ray_loopback import keep_loopback

    keep_loopback("127.0.0.1")
    import ray
    from ray.cluster_utils import Cluster

    from faissx_core.server.ray_backend import cluster_config

    rng = np.random.default_rng(0)
    xb = rng.random((args.n, args.d), dtype=np.float32)
    xq = rng.random((args.nq, args.d), dtype=np.float32)
    load_before = os.getloadavg()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            # replicas at niceness 0, as the server's own cluster runs them (cluster_config)
            "_system_config": cluster_config(),
        },
    )
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    servers = []
    try:
        local = Server()
        servers.append(local)
        on_ray = Server("--backend", "ray", "--ray-address", cluster.address)
        servers.append(on_ray)
        local.wait()
        on_ray.wait()
        rows = {"local server": measure(local.endpoint, "bench-local", xb, xq, args.batch, None)}
        for shards, replicas in PLACEMENTS:
            rows[f"ray {shards}x{replicas}"] = measure(
                on_ray.endpoint,
                f"bench-{shards}x{replicas}",
                xb,
                xq,
                args.batch,
                (shards, replicas),
            )
        hop = actor_hop(cluster.address)
    finally:
        for server in servers:
            server.stop()
        ray.shutdown()
        cluster.shutdown()
    base = rows["local server"]
    report = {
        "n": args.n,
        "d": args.d,
        "nq": args.nq,
        "batch": args.batch,
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "ray_actor_hop_ms": 1e3 * hop,
        "ray_overhead_search1_ms": rows["ray 1x1"]["search1_ms"] - base["search1_ms"],
        "rows": rows,
    }
    results = args.out / "ray.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2))
    print(
        f"n={args.n} d={args.d} nq={args.nq} add batch={args.batch}; "
        f"{os.cpu_count()} cores, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"bare Ray actor call: {1e3 * hop:.2f} ms; Ray 1x1 over the local server, one "
        f"1-query search: +{report['ray_overhead_search1_ms']:.2f} ms"
    )
    header = (
        "placement",
        "add vec/s",
        "add ms/batch",
        "1-query ms",
        "batch qps",
        "x local (add)",
        "x local (batch)",
    )
    print(" | ".join(f"{h:>14}" for h in header))
    for label, row in rows.items():
        print(
            " | ".join(
                f"{v:>14}"
                for v in (
                    label,
                    f"{row['add_vectors_per_s']:,.0f}",
                    f"{row['add_batch_ms']:.1f}",
                    f"{row['search1_ms']:.2f}",
                    f"{row['search_batch_qps']:,.0f}",
                    f"{row['add_vectors_per_s'] / base['add_vectors_per_s']:.2f}",
                    f"{row['search_batch_qps'] / base['search_batch_qps']:.2f}",
                )
            )
        )
    print(f"written to {results}")


if __name__ == "__main__":
    main()
