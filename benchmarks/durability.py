"""Add throughput under --fsync always|batch|off, against an in-memory server.

Run: ``.venv/bin/python -m benchmarks.durability [--batches N] [--writers W]``. Each
configuration gets a fresh server; W threads share one client and each adds N batches of
1000x128 float32 vectors to its own named index (unnamed indices are never logged). Prints
vectors/s and MB/s per mode and the ratio to in-memory, and writes
``durability.json`` in ``benchmarks/out/`` (``FAISSX_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    opts = parser.parse_args()
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
