"""Run FAISS's own Python tests on local faiss and through the FAISSx client in remote mode.

A drop-in is judged by code nobody here wrote. This script takes FAISS's source tree (the tag of
the installed faiss version; its tests are never copied into this repo), runs a chosen set of its
test files once against plain faiss and once with ``import faiss`` resolving to
``faissx_client`` configured against a live ``faissx serve`` that the script starts itself (the
real CLI, loopback, a free port, in memory), and prints pass counts per file side by side.

    make faiss-suite FAISS_SRC=/path/to/faiss           # or:
    python scripts/faiss_suite.py /path/to/faiss [--files test_index.py ...] [--failures]

How the remote run swaps the module: a pytest plugin written to a temporary directory (the
"shim") imports ``faissx_client`` -- which imports and keeps the *real* faiss for its own use --
calls ``configure()`` and then installs ``sys.modules["faiss"] = faissx_client``. Submodules
such as ``faiss.contrib.datasets`` still load from the real faiss package (a path finder points
``faiss.*`` at its directory), and when they ``import faiss`` they get the drop-in, as a user's
code would.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

#: FAISS test files that exercise only the public Python API of indices (no C++ internals,
#: GPU, torch, SIMD dispatch, contrib-only tools or packaging checks), and why each is in.
FILES: dict[str, str] = {
    "test_index.py": "the core index classes: flat, IVF, PQ, HNSW, LSH, search/range/reconstruct",
    "test_index_accuracy.py": "recall of IVF/PQ/SQ/flat variants on synthetic data",
    "test_search_params.py": "per-call SearchParameters and ID selectors on every family",
    "test_merge_index.py": "merge_from, remove_ids and ID maps across index types",
    "test_index_binary.py": "binary flat, IVF, HNSW and hash indices",
    "test_index_composite.py": "IDMap, pre-transforms, shards/replicas, IVF direct maps",
    "test_meta_index.py": "IndexShards and IndexReplicas around plain indices",
    "test_clone.py": "clone_index of every family",
    "test_factory.py": "index_factory strings and the structure of what they build",
    "test_binary_factory.py": "index_binary_factory strings",
    "test_refine.py": "IndexRefine / IndexRefineFlat over approximate bases",
}

SHIM = '''
"""pytest plugin (written by scripts/faiss_suite.py): ``import faiss`` is the FAISSx client."""
import importlib.machinery
import os
import sys

import faiss as _real_faiss  # the client keeps this module for its own calls
import faissx_client

faissx_client.configure(
    server=os.environ["FAISSX_SUITE_SERVER"],
    timeout=120,
    write_window=int(os.environ.get("FAISSX_SUITE_WRITE_WINDOW", "0")),
)


class _RealSubmodules:
    """``faiss.contrib...`` and friends load from the real faiss package directory."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if not name.startswith("faiss.") or name in sys.modules:
            return None
        parent = name.rpartition(".")[0]
        where = _real_faiss.__path__ if parent == "faiss" else sys.modules[parent].__path__
        return importlib.machinery.PathFinder.find_spec(name, where)


sys.meta_path.insert(0, _RealSubmodules)
sys.modules["faiss"] = faissx_client
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``faissx serve`` in memory on a free loopback port, stopped on exit."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        faissx = Path(sys.executable).parent / "faissx"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
        self.logfile = log.open("wb")
        self.proc = subprocess.Popen(
            [str(faissx), "serve", "--port", str(self.port), "--bind-address", "127.0.0.1"],
            env=env,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"faissx serve exited with {self.proc.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.2)
        raise RuntimeError("faissx serve did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logfile.close()


Result = collections.namedtuple("Result", "passed failed errors skipped failures")


def run_file(
    path: Path,
    work: Path,
    remote: str | None,
    timeout: float,
    select: str | None,
    write_window: int = 0,
) -> Result:
    """One pytest process on one FAISS test file; counts from its JUnit XML."""
    xml = work / f"{path.stem}-{'remote' if remote else 'local'}.xml"
    xml.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"--rootdir={path.parent}",
        f"--junitxml={xml}",
        str(path),
    ]
    if select:
        cmd += ["-k", select]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    if remote:
        cmd[3:3] = ["-p", "faissx_suite_shim"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")]))
        env["FAISSX_SUITE_SERVER"] = remote
        env["FAISSX_SUITE_WRITE_WINDOW"] = str(write_window)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a hung file counts what it wrote
        subprocess.run(
            cmd,
            cwd=path.parent,
            env=env,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if not xml.exists():
        return Result(0, 0, 1, 0, [("<whole file>", "no result (crash or timeout)")])
    passed = failed = errors = skipped = 0
    failures = []
    for case in ET.parse(xml).iter("testcase"):
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            skipped += 1
        elif kinds & {"failure", "error"}:
            failed += "failure" in kinds
            errors += "failure" not in kinds
            node = next(c for c in case if c.tag in ("failure", "error"))
            failures.append(
                (
                    f"{case.get('classname')}.{case.get('name')}",
                    _first_line(node.get("message") or node.text or ""),
                )
            )
        else:
            passed += 1
    return Result(passed, failed, errors, skipped, failures)


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "?"
    return re.sub(r"0x[0-9a-f]+|anon-\S+", "…", line)[:160]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faiss_src", type=Path, help="FAISS source tree (holds tests/)")
    parser.add_argument("--files", nargs="+", default=list(FILES), help="test files to run")
    parser.add_argument("--mode", choices=("both", "local", "remote"), default="both")
    parser.add_argument("-k", dest="select", help="pytest -k expression")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per file and mode")
    parser.add_argument(
        "--failures",
        action="store_true",
        help="list remote failures (grouped by message) after the table",
    )
    parser.add_argument(
        "--write-window",
        type=int,
        default=0,
        help="the remote client's configure(write_window=N): FAISS's tests as the judge of "
        "the deferred adds' barrier (every read must see the adds before it)",
    )
    args = parser.parse_args(argv)
    tests = args.faiss_src / "tests"
    if not (tests / "common_faiss_tests.py").exists():
        parser.error(f"{tests} is not FAISS's tests directory")
    import faiss

    print(f"faiss {faiss.__version__} from {faiss.__file__}; tests from {tests}")
    totals = collections.Counter()
    groups: dict[str, list[str]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="faissx-suite-") as tmp:
        work = Path(tmp)
        (work / "faissx_suite_shim.py").write_text(textwrap.dedent(SHIM))
        print(f"{'file':34} {'local':>7} {'remote':>7}   (passed; remote failed+errors)")
        for name in args.files:
            path = tests / name
            local = (
                run_file(path, work, None, args.timeout, args.select)
                if args.mode != "remote"
                else None
            )
            remote = None
            if args.mode != "local":
                with Server(work / f"{path.stem}-server.log") as server:
                    remote = run_file(
                        path, work, server.endpoint, args.timeout, args.select, args.write_window
                    )
                for test, message in remote.failures:
                    groups[message].append(test)
            totals["local"] += local.passed if local else 0
            totals["remote"] += remote.passed if remote else 0
            print(
                f"{name:34} {local.passed if local else '-':>7} "
                f"{remote.passed if remote else '-':>7}   "
                f"{'' if remote is None else remote.failed + remote.errors}",
                flush=True,
            )
    share = f"{100 * totals['remote'] / totals['local']:.0f}%" if totals["local"] else "-"
    print(f"{'total':34} {totals['local']:>7} {totals['remote']:>7}   remote/local = {share}")
    if args.failures:
        for message, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"\n[{len(names)}] {message}")
            for test in names[:6]:
                print(f"    {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
