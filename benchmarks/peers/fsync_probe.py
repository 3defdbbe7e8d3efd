"""How durable each system's acknowledged write is, counted rather than read from docs.

``python -m benchmarks.peers.fsync_probe [--inserts N]``: each system is started as in the
benchmark, one agent creates a collection and makes ``N`` one-row inserts while ``strace -f -c``
watches every thread of the process that writes (the server's process tree, or the embedded
agent) for fsync, fdatasync, sync_file_range, syncfs and msync. Fsyncs per insert near 1 or
more: each write is on disk when acknowledged; 0: the write is left to the OS. Writes
``benchmarks/results/peers/fsync.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import procs
from benchmarks.peers.run import AGENT
from benchmarks.peers.systems import SYSTEMS, tree_pids

OUT = Path(__file__).resolve().parent.parent / "results" / "peers" / "fsync.json"
CALLS = "fsync,fdatasync,sync_file_range,syncfs,msync"


def _threads(pids: list[int]) -> list[int]:
    tids = []
    for pid in pids:
        with contextlib.suppress(OSError):  # exited meanwhile
            tids += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return tids


def _counts(path: Path) -> dict[str, int]:
    """strace -c's table: syscall -> calls."""
    counts = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in CALLS.split(",") and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


#: Qdrant's local mode with ``path=`` (the benchmark runs it ``:memory:``: see its adapter).
PROBED = {**SYSTEMS, "qdrant-path": replace(SYSTEMS["qdrant"], key="qdrant-path", fsync=None)}


def probe(key: str, inserts: int, work: Path, logs: Path) -> dict[str, Any]:
    system = PROBED[key]
    kind = system.kinds[0]
    running = system.start(work, logs)
    pool = procs.Pool(
        str(system.python), 1, logs, f"fsync-{key}", isolated=True, cwd=work, script=AGENT
    )
    try:
        w0 = pool[0]
        hello = w0.call("hello", timeout=120, adapter=system.adapter, config=running.config)
        w0.call(
            "create",
            timeout=120,
            name=f"probe_{kind}",
            d=16,
            kind=kind,
            build={"M": 16, "ef_construction": 64, "ef_search": 16},
        )
        xb = work / "probe.npy"
        np.save(xb, np.random.default_rng(0).random((inserts, 16), dtype=np.float32))
        w0.call("add_rows", timeout=120, data=str(xb), rows=1, first_id=10**6)  # warm
        root = running.service.proc.pid if running.service else hello["pid"]
        out = work / f"{key}.strace"
        tids = _threads(tree_pids(root))
        tracer = subprocess.Popen(
            [
                "strace",
                "-f",
                "-c",
                "-e",
                f"trace={CALLS}",
                "-o",
                str(out),
                *[a for t in tids for a in ("-p", str(t))],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        times = w0.call("add_rows", timeout=300, data=str(xb), rows=inserts, first_id=0)
        time.sleep(0.5)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        counts = _counts(out)
        total = sum(counts.values())
        return {
            "inserts": inserts,
            "syncs": counts,
            "syncs_per_insert": total / inserts,
            "insert_p50_ms": sorted(times)[len(times) // 2] * 1e3,
            "traced": "server process tree" if running.service else "embedded process",
        }
    finally:
        pool.close()
        running.stop()
        shutil.rmtree(running.data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.fsync_probe")
    parser.add_argument("--inserts", type=int, default=50)
    parser.add_argument("--systems", default=",".join(k for k in PROBED if k != "local"))
    args = parser.parse_args(argv)
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (apt-get install strace)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="faissx-fsync-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        logs = work / "logs"
        logs.mkdir()
        for key in args.systems.split(","):
            try:
                results[key] = probe(key, args.inserts, work, logs)
            except (procs.WorkerError, procs.WorkerDied, RuntimeError, OSError) as exc:
                results[key] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(key, json.dumps(results[key]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
