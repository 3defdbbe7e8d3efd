"""What one "delete 100 ids" costs, and where, and (``--baseline``) a server before and after a
change, in the same run.

``python -m benchmarks.peers.delete_cost [--shapes 1000000x128,100000x768] [--reps 7]
[--baseline DIR] [--fsync off]``

In this process, on ``IDMap2,Flat``: faiss's own ``remove_ids`` of 100 random present ids,
the two parts of that call measured alone (the flat index's removal of 100 rows,
``construct_rev_map``), and the two run at once on two threads (what overlapping them, which
faiss's semantics allow, would give: see profile-delete.txt).

With ``--baseline DIR`` (a source tree of the code before, e.g. ``git archive <commit> | tar
-x -C DIR``), two ``faissx serve`` processes, that tree's and this one's, each load the same
``IDMap2,Flat`` through the real client and take turns deleting the same 100 ids: the
client-measured time of the whole call. Medians and the load average are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any

import faiss
import numpy as np

from benchmarks import procs


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def local(n: int, d: int, reps: int, rng: np.random.Generator) -> dict[str, list[float]]:
    x = rng.standard_normal((n, d), dtype=np.float32)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    index: Any = faiss.IndexIDMap2(faiss.IndexFlatL2(d))
    index.add_with_ids(x, ids)
    parts: Any = faiss.IndexFlatL2(d)  # faiss's flat-index removal alone (positions as ids)
    parts.add(x)
    del x
    times: dict[str, list[float]] = {
        "faiss remove_ids": [],
        "  of which IndexFlat.remove_ids": [],
        "  of which construct_rev_map": [],
        "  the two parts on two threads at once": [],
    }
    alive = ids
    for _ in range(reps):
        gone = rng.choice(alive, 100, replace=False)
        alive = np.setdiff1d(alive, gone)
        t0 = time.perf_counter()
        assert index.remove_ids(gone) == 100
        times["faiss remove_ids"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        parts.remove_ids(rng.choice(parts.ntotal, 100, replace=False).astype(np.int64))
        times["  of which IndexFlat.remove_ids"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.construct_rev_map()
        times["  of which construct_rev_map"].append(time.perf_counter() - t0)
        rows = rng.choice(parts.ntotal, 100, replace=False).astype(np.int64)
        t0 = time.perf_counter()
        rebuild = threading.Thread(target=index.construct_rev_map)  # faiss releases the GIL
        rebuild.start()
        parts.remove_ids(rows)
        rebuild.join()
        times["  the two parts on two threads at once"].append(time.perf_counter() - t0)
    return times


def _serve(tree: Path | None, work: Path, tag: str, fsync: str | None) -> tuple[Any, str]:
    port = procs.free_port()
    # the baseline tree's packages, not this checkout's: its editable-install finder (on
    # sys.meta_path, ahead of PYTHONPATH) is taken out first
    boot = "import sys; from faissx.cli import main; sys.exit(main())"
    if tree is not None:
        boot = (
            "import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            f"getattr(f, '__module__', '')]; sys.path.insert(0, {str(tree)!r}); " + boot
        )
    cmd = [sys.executable, "-c", boot]
    cmd += ["serve", "--port", str(port), "--bind-address", "127.0.0.1", "--log-level", "WARNING"]
    if fsync:
        cmd += ["--data-dir", str(work / f"data-{tag}"), "--fsync", fsync]
    env = procs.clean_env()
    endpoint = f"tcp://127.0.0.1:{port}"
    service = procs.Service(cmd, work / f"{tag}.log", env=env)
    service.wait_until(lambda: procs.ping_faissx(endpoint), 120, f"faissx serve ({tag})")
    return service, endpoint


def served(
    n: int, d: int, reps: int, rng: np.random.Generator, baseline: Path, fsync: str | None
) -> dict[str, list[float]]:
    from faissx import client as fx  # one configured server at a time: switched per call

    x = rng.standard_normal((n, d), dtype=np.float32)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    tags = ("before", "after")
    times: dict[str, list[float]] = {f"server {tag}": [] for tag in tags}
    with tempfile.TemporaryDirectory(prefix="faissx-delete-") as tmp:
        work = Path(tmp)
        services, endpoints = [], []
        try:
            for tag, tree in zip(tags, (baseline, None), strict=True):
                service, endpoint = _serve(tree, work, tag, fsync)
                services.append(service)
                endpoints.append(endpoint)
                fx.configure(server=endpoint, timeout=600)
                index = fx.index_factory(d, "IDMap2,Flat", name="delete")
                for start in range(0, n, 50_000):
                    index.add_with_ids(x[start : start + 50_000], ids[start : start + 50_000])
            alive = ids
            for rep in range(reps):
                gone = rng.choice(alive, 100, replace=False)
                alive = np.setdiff1d(alive, gone)
                for which in (0, 1) if rep % 2 == 0 else (1, 0):
                    fx.configure(server=endpoints[which], timeout=600)
                    index = fx.open_index("delete")
                    t0 = time.perf_counter()
                    assert index.remove_ids(gone) == 100
                    times[f"server {tags[which]}"].append(time.perf_counter() - t0)
            found = []
            for endpoint in endpoints:
                fx.configure(server=endpoint, timeout=600)
                found.append(fx.open_index("delete").search(x[:4], 10)[1])
            np.testing.assert_array_equal(found[0], found[1])
        finally:
            fx.disconnect()
            for service in services:
                service.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.delete_cost")
    parser.add_argument("--shapes", default="1000000x128,100000x768")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--fsync", choices=("off", "batch", "always"), default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*in memory only.*")  # a named in-memory index
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.split("x"))
        print(f"# {n} x {d}, IDMap2,Flat, 100 ids per delete, {args.reps} deletes")
        print(f"load average before: {_load()}")
        results = local(n, d, args.reps, rng)
        if args.baseline is not None:
            results.update(served(n, d, args.reps, rng, args.baseline, args.fsync))
        for name, values in results.items():
            ms = sorted(v * 1e3 for v in values)
            print(f"  {name:34s} median {median(ms):7.1f} ms  min {ms[0]:7.1f}  max {ms[-1]:7.1f}")
        print(f"load average after: {_load()}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
