"""Bulk-load throughput, two code trees side by side in one run (issue 17).

``python -m benchmarks.bulkload [--tree NAME=PATH ...] [--shapes 768x100000,128x1000000]
[--reps 3] [--pattern calls|one]``

For each shape, each repetition runs every configuration once, trees alternating, each in a
fresh process (server and client started from that tree via ``PYTHONPATH``):

* ``local``: plain faiss in the process (the anchor: copying the rows into faiss);
* ``memory``: ``faissx serve`` in memory, the index unnamed;
* ``off``: ``faissx serve --data-dir --fsync off``, the index named (every add logged).

``--pattern calls`` inserts as the peer benchmark does (``add_with_ids`` on ``IDMap2,Flat``,
5000 rows a call); ``one`` makes one ``add`` of all the rows to ``Flat`` (the client splits it
into pipelined parts). The figure is the seconds from the first add to the last one's return,
the median over the repetitions, with the load average before and after the run. Speed is a
ratio within this run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALL_ROWS = 5000


def _cpu(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) process ``pid`` has used, a figure the other work on a
    shared machine disturbs far less than the wall clock, and its page faults (minor)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def _data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((args.n, args.d), dtype=np.float32), np.arange(args.n)


def _serve(args: argparse.Namespace, tmp: str) -> tuple[Any, str]:
    """``faissx serve`` from the tree on ``PYTHONPATH``, in memory or ``--fsync off``:
    (its service, its endpoint), once it answers."""
    from benchmarks import procs

    port = procs.free_port()
    cmd = [sys.executable, "-m", "faissx_core.cli", "serve", "--port", str(port),
           "--bind-address", "127.0.0.1", "--log-level", "WARNING"]  # fmt: skip
    if args.mode == "off":
        cmd += ["--data-dir", str(Path(tmp) / "data"), "--fsync", "off"]
    cmd += args.server_args.split()
    endpoint = f"tcp://127.0.0.1:{port}"
    server = procs.Service(cmd, Path(tmp) / "server.log", env=dict(os.environ))
    server.wait_until(lambda: procs.ping_faissx(endpoint), 60, "faissx serve")
    return server, endpoint


def _index(lib: Any, args: argparse.Namespace) -> Any:
    """The index the pattern loads: named (so logged) under ``--fsync off``."""
    named = {"name": "bulk"} if args.mode == "off" else {}
    return lib.index_factory(args.d, "IDMap2,Flat" if args.pattern == "calls" else "Flat", **named)


def _load_rows(index: Any, x: np.ndarray, ids: np.ndarray, pattern: str) -> None:
    if pattern == "calls":
        for lo in range(0, len(x), CALL_ROWS):
            index.add_with_ids(x[lo : lo + CALL_ROWS], ids[lo : lo + CALL_ROWS])
    else:
        index.add(x)


def _child(args: argparse.Namespace) -> None:
    """One configuration, one load, in this process (and its server): prints the seconds."""
    x, ids = _data(args)
    server = None
    with tempfile.TemporaryDirectory(prefix="faissx-bulkload-") as tmp:
        try:
            if args.mode == "local":
                import faiss as lib
            else:
                server, endpoint = _serve(args, tmp)
                from faissx import client as lib

                lib.configure(server=endpoint, timeout=600)
            index = _index(lib, args)
            server_cpu, faults = _cpu(server.proc.pid) if server is not None else (0.0, 0)
            client_cpu = time.process_time()
            t0 = time.perf_counter()
            _load_rows(index, x, ids, args.pattern)
            seconds = time.perf_counter() - t0
            client_cpu = time.process_time() - client_cpu
            if server is not None:
                cpu_after, faults_after = _cpu(server.proc.pid)
                server_cpu, faults = cpu_after - server_cpu, faults_after - faults
            assert index.ntotal == args.n, index.ntotal
        finally:
            if server is not None:
                server.stop()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "server_cpu": server_cpu,
                "client_cpu": client_cpu,
                "server_faults": faults,
            }
        )
    )


#: Steps of the server's add path: (label, a frame that marks it in a sampled stack).
STEPS = (
    ("zmq I/O thread (receive from the socket)", "libzmq"),
    ("decode_request (header, descriptors)", "decode_request"),
    ("limits (admission)", "Limits.admit"),
    ("vectors(): dtype/shape/finiteness check", "vectors (faissx_core/server/ops.py"),
    ("  of which all_finite", "all_finite (faissx_core/finite.py"),
    ("LocalBackend.reserve (--max-memory)", "LocalBackend.reserve"),
    ("faiss add (copy into the index, growth)", "run_faiss (faissx_core/server/ops.py"),
    ("  of which grow_storage", "grow_storage"),
    ("FileStore.append (log record)", "FileStore.append"),
    ("  of which encode_record (crc32)", "encode_record"),
    ("  of which writev", "writev"),
    ("snapshot past --snapshot-every-mb", "_threshold_snapshot"),
    ("  of which write_index", "write_index"),
    ("  of which fsync", "fsync"),
    ("idempotency table", "IdempotencyTable"),
    ("reply (_finish)", "Server._finish"),
)


def summarise_steps(raw: Path) -> str:
    """Share of the server's working samples in each step of :data:`STEPS` (inclusive)."""
    from benchmarks.peers.profile import WAITS

    total = 0
    hits = {label: 0 for label, _ in STEPS}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or any(w in stack for w in WAITS):
            continue
        total += int(count)
        for label, marker in STEPS:
            if marker in stack:
                hits[label] += int(count)
    lines = [f"{total} working samples; share of them in each step (inclusive):"]
    lines += [f"  {100 * hits[label] / max(total, 1):5.1f}%  {label}" for label, _ in STEPS]
    return "\n".join(lines)


def _profile(args: argparse.Namespace) -> str:
    """py-spy on the server (native frames) and cProfile on the client, for one load."""
    import cProfile
    import io
    import pstats
    import shutil

    from benchmarks.peers.profile import summarise_raw

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    x, ids = _data(args)
    with tempfile.TemporaryDirectory(prefix="faissx-bulkload-") as tmp:
        server, endpoint = _serve(args, tmp)
        try:
            from faissx import client

            client.configure(server=endpoint, timeout=600)
            index = _index(client, args)
            raw = Path(tmp) / "server.raw"
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(server.proc.pid), "--rate", "250", "--native",
                 "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)
            profiler = cProfile.Profile()
            t0 = time.perf_counter()
            profiler.enable()
            _load_rows(index, x, ids, args.pattern)
            profiler.disable()
            seconds = time.perf_counter() - t0
            recorder.send_signal(2)
            recorder.communicate(timeout=60)
            steps = summarise_steps(raw)
            functions = summarise_raw(raw, top=20)
        finally:
            server.stop()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
    client_text = "\n".join(stream.getvalue().splitlines()[:30])
    what = (
        "add_with_ids in 5000-row calls to IDMap2,Flat"
        if args.pattern == "calls"
        else ("one add to Flat")
    )
    return (
        f"## {args.d}x{args.n}, {what}, server {args.mode} {args.server_args}".rstrip() + "\n\n"
        f"{seconds:.2f} s under the profilers (py-spy --native pauses the server for each "
        f"sample: slower than unprofiled); load average {_load()}\n\n"
        f"### server steps\n\n{steps}\n\n### server functions\n\n{functions}\n\n"
        f"### client (cProfile, by own time)\n\n{client_text}\n"
    )


#: What ``--profile-all`` runs: (mode, pattern, d, n).
PROFILES = (
    ("memory", "one", 768, 100_000),
    ("off", "one", 768, 100_000),
    ("off", "calls", 768, 100_000),
    ("off", "calls", 128, 1_000_000),
)

HEADER = """\
# Where a bulk load's time goes (issue 17): {when}

`python -m benchmarks.bulkload --profile-all` (py-spy --native on the server, cProfile on the
client; each section says its load average: the machine is shared, 2 cores).

The payload of an add (the vectors; ids are 1/d of it for add_with_ids), pass by pass:

- split (client): `x[lo:hi]` views; `encode` puts the arrays in the frames as they are. None.
- NaN check of a split add (client): `faissx_core.finite.all_finite`, block by block. A read.
- send (client): `send_multipart(copy=False)`; the kernel copies from the array. Copy 1.
- receive (server's I/O thread): libzmq reads a large message straight into its own buffer.
  Copy 2 (kernel).
- decode: `np.frombuffer` over the `zmq.Frame`. None.
- validation (`ops.vectors`): dtype, shape, `all_finite` (no temporary array). A read.
- faiss add: `memcpy` into the flat codes. Copy 3. Growth: `std::vector` reallocation copies
  what is there (amortised < 1 copy; `grow_storage` reserves ahead for a split `add`).
- log record (`encode_record`): crc32 over the received frames (a read), then `os.writev` of
  them. Copy 4 (kernel, into the page cache).
- snapshot, each `--snapshot-every-mb` (256) of log: `write_index` of the whole index, fsync.

Nothing of ours copies the payload: the four copies are the two socket ends, faiss's storage
and the log. The steps below are shares of the server's working samples; "faiss add" includes
the page faults of the index's new memory, "writev" those of the page cache (on this VM the
first touch of memory runs at ~0.25 GB/s against ~5 GB/s for memory touched before).

"""


def _profile_all() -> str:
    """Every profile of :data:`PROFILES`, each in a fresh server, into one text."""
    sections = []
    for mode, pattern, d, n in PROFILES:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bulkload", "--profile", "--mode", mode,
             "--pattern", pattern, "--d", str(d), "--n", str(n)],
            cwd=ROOT, capture_output=True, text=True, timeout=900, check=True,
        )  # fmt: skip
        sections.append(out.stdout)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return HEADER.format(when=when) + "\n".join(sections)


def _load() -> str:
    return os.getloadavg().__repr__()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulkload")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a code tree")
    parser.add_argument("--shapes", default="768x100000,128x1000000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pattern", choices=("calls", "one"), default="calls")
    parser.add_argument("--modes", default="local,memory,off")
    parser.add_argument("--server-args", default="", help="more `faissx serve` options")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="profile one load (--mode ...)")
    parser.add_argument(
        "--profile-all",
        action="store_true",
        help="profile the loads of PROFILES into benchmarks/results/peers/profile-bulkload.txt",
    )
    parser.add_argument("--mode", default="memory", help="with --profile: memory or off")
    parser.add_argument("--d", type=int, default=768, help="with --profile")
    parser.add_argument("--n", type=int, default=100_000, help="with --profile")
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if args.profile:
        print(_profile(args))
        return 0
    if args.profile_all:
        text = _profile_all()
        out = ROOT / "benchmarks" / "results" / "peers" / "profile-bulkload.txt"
        out.write_text(text)
        print(text)
        return 0
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(ROOT)}
    modes = args.modes.split(",")
    print(f"# bulk load, pattern {args.pattern}; load average before: {_load()}", flush=True)
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for shape in args.shapes.split(","):
        d, n = (int(v) for v in shape.split("x"))
        for rep in range(args.reps):
            for mode in modes:
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                for tree in order if mode != "local" else order[:1]:
                    env = {**os.environ, "PYTHONPATH": trees[tree]}
                    env = {k: v for k, v in env.items() if not k.startswith("FAISSX_")}
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", "--mode", mode,
                         "--d", str(d), "--n", str(n), "--pattern", args.pattern,
                         f"--server-args={args.server_args}"],
                        env=env, cwd=trees[tree], capture_output=True, text=True, timeout=900,
                    )  # fmt: skip
                    if out.returncode:
                        print(out.stdout, out.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{tree} {mode} {shape} failed")
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    key = (shape, mode, tree if mode != "local" else "-")
                    results.setdefault(key, []).append(got)
                    print(
                        f"  {shape} {mode:6} {key[2]:8} rep {rep}: {got['seconds']:.3f} s, "
                        f"server CPU {got['server_cpu']:.2f} s, client CPU "
                        f"{got['client_cpu']:.2f} s, server page faults "
                        f"{got['server_faults']:,}, load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    print(f"# load average after: {_load()}")
    print(
        "| shape | configuration | tree | wall s, median | wall s, min | server CPU s, median "
        "| client CPU s, median | MB/s (median wall) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (shape, mode, tree), runs in results.items():
        d, n = (int(v) for v in shape.split("x"))
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        server = statistics.median(r["server_cpu"] for r in runs)
        client = statistics.median(r["client_cpu"] for r in runs)
        print(
            f"| {shape} | {mode} | {tree} | {med:.3f} | {min(secs):.3f} | {server:.2f} "
            f"| {client:.2f} | {d * n * 4 / med / 1e6:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
