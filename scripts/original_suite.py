"""Run the original FAISSx's own tests and examples against this server.

Code written for the original FAISSx (github.com/muxi-ai/faissx) should run unchanged here. This
script measures that: it takes the original's source tree (never copied into this repo), and for
each of its test files and examples starts a fresh ``faissx serve`` (the real CLI, loopback,
in memory) and runs the file with ``import faissx`` resolving to *this* package, then prints
per-file pass counts and the failures grouped by message.

    make original-suite ORIGINAL_SRC=/path/to/faissx     # or:
    python scripts/original_suite.py /path/to/faissx [--files test_ntotal.py ...] [--failures]
    python scripts/original_suite.py SRC --baseline /venv/with/original/bin/python

Every failure the project expects is listed in :data:`EXPECTED` / :data:`EXPECTED_EXAMPLES`
with its reason and kind, and counted apart from the unexpected ones:

* ``refused``: the test relies on one of the original's behaviours this project deliberately
  does not copy (docs/client.md, "The original FAISSx's names", says which and why);
* ``internal``: the test exercises the original's server or client internals, not its public
  API (out of scope for a drop-in of that API);
* ``broken``: it fails on the original too, for a reason of its own;
* ``resources``: it needs more memory than the cap this script sets (``--memory-gib``).

The original's CI runs its tests with ``FAISSX_SERVER`` set, and so does this script: files
that never call ``configure()`` run against the server too.

``--baseline PYTHON`` runs the same files a second time with a Python whose ``faissx`` is the
original package itself, against the original's own server, for a side-by-side column: a test
that fails there too is broken in the original.

The original's tests and examples hard-code ``tcp://localhost:45678`` (and one starts its own
``faissx.server run`` on port 45679), so the servers here use port 45678 when it is free; the
script says so when it has to use another port, and those tests then fail. The console scripts of
the interpreter's environment come first on ``PATH`` for the files run, so ``faissx.server`` is
this package's. Nothing is written into the original's tree (no bytecode, no pytest cache); each
file runs in a temporary working directory.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fnmatch
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

#: The port the original's tests and examples hard-code.
ORIGINAL_PORT = 45678

#: Reasons shared by several entries below (docs/client.md lists them too).
BYTES = "binary dimensions in bytes: IndexBinaryFlat(16) is 16 bits here, as in faiss"
IMPLICIT_TRAIN = (
    "adds to an untrained IndexScalarQuantizer: the original trained it on the first batch "
    "added; faiss and this client raise (train() first)"
)
SEND_REQUEST = (
    "FaissXClient._send_request: the original server's wire messages ({}); this client speaks "
    "docs/protocol.md"
)

#: Expected failures: ``"<file>::<test>"`` pattern (fnmatch) -> (kind, reason). A whole file is
#: ``"<file>"``. Kinds: ``refused`` (a documented deliberate difference), ``internal`` (tests
#: of the original's internals or packaging, out of scope), ``broken`` (fails on the original
#: too, for a reason of its own).
EXPECTED: dict[str, tuple[str, str]] = {
    "test_server_data_dir_persistence.py": (
        "internal",
        "imports the original server's FaissIndex class (faissx.server.server) and reads its "
        "private indexes dict; our server's durability is tested in tests/test_durability.py",
    ),
    "test_client_timeout.py": (
        "internal",
        "drives the original client's own REQ socket (client.socket, client.context) and "
        "faissx.client.timeout's thread-interrupting decorator; our calls are bounded by "
        "configure(timeout=) and raise ServerUnavailable",
    ),
    "test_specialized_ops.py::test_optimize_index": (
        "refused",
        SEND_REQUEST.format("'train_index', 'optimize_index'"),
    ),
    "test_specialized_ops.py::test_clustering": (
        "refused",
        SEND_REQUEST.format("'compute_clustering'"),
    ),
    "test_specialized_ops.py::test_batch_add_with_ids": (
        "refused",
        SEND_REQUEST.format("'batch_add_with_ids'"),
    ),
    "test_specialized_ops.py::test_hybrid_search": (
        "refused",
        SEND_REQUEST.format("'hybrid_search'"),
    ),
    "test_specialized_ops.py::test_merge_indices": (
        "refused",
        SEND_REQUEST.format("'merge_indices'; FaissXClient.merge_indices(target, sources) works"),
    ),
    "client_indices/test_binary_flat.py::test_binary_*": ("refused", BYTES),
    "client_indices/test_binary_flat.py::test_comparison_with_faiss*": ("refused", BYTES),
    "client_indices/test_scalar_quantizer*.py::test_local_mode": ("refused", IMPLICIT_TRAIN),
    "client_indices/test_scalar_quantizer*.py::test_remote_mode": (
        "refused",
        IMPLICIT_TRAIN + "; it also passes qtype as the string 'SQ8' (fails on the original too)",
    ),
    "client_indices/test_ivf_*_optimized.py::test_ivf_*_local_mode": (
        "refused",
        "reconstructs from an IVF index without make_direct_map(): faiss raises; the original "
        "returned a client-side copy of the added vectors, or zeros when it had none",
    ),
    "client_indices/test_pre_transform.py::test_vector_caching": (
        "refused",
        "expects IndexPreTransform.reconstruct to return the added vectors exactly (the "
        "original cached them in the client); faiss reconstructs through the PCA, lossily",
    ),
    "client_indices/test_pre_transform.py::test_prepend_transform": (
        "refused",
        "expects ValueError from prepend_transform with mismatched dimensions; faiss's "
        "IndexPreTransform.prepend_transform raises RuntimeError",
    ),
}

#: Expected example failures: file name -> (kind, reason).
EXPECTED_EXAMPLES: dict[str, tuple[str, str]] = {
    "batch_operations_example.py": (
        "resources",
        "range-searches 1000 queries with radius 40 over 100000 unit vectors (every vector is "
        "in range: 10^8 results, over 10 GB as the Python lists it builds); stopped by the "
        "memory cap (--memory-gib)",
    ),
    "index_idmap_example.py": (
        "refused",
        "IndexIDMap.reconstruct(id): faiss's IndexIDMap keeps no id-to-row map and cannot "
        "reconstruct (IndexIDMap2 can); the original looked ids up in the client",
    ),
    "index_ivfpq_example.py": (
        "broken",
        "calls IndexIVFPQ(quantizer, d, M, nbits, nlist): arguments out of faiss's (and the "
        "original's) order, so nbits=100; fails on the original too",
    ),
    "index_scalar_quantizer_example.py": ("refused", IMPLICIT_TRAIN),
    "optimization_example.py": (
        "refused",
        "set_parameter('k_factor') on an IndexFlatL2: faiss's k_factor belongs to IndexRefine; "
        "the original's was a client-side oversampling, with no effect on an exact index",
    ),
}

#: Server options for an example, where the example expects a particular server. simple_client.py
#: uses the API key that server_example.py configures.
EXAMPLE_SERVER_ARGS: dict[str, list[str]] = {
    "simple_client.py": ["--enable-auth", "--auth-keys", "test-key-1:tenant-1,test-key-2:tenant-2"],
}

#: Examples that are servers: run until they answer on the port, then stopped.
SERVER_EXAMPLES = ("server_example.py",)

#: A pytest plugin loaded into every test run: it checks that ``faissx`` is the package under
#: test before any test file imports it (a stray ``faissx`` on the path would measure nothing).
CHECK = '''
"""pytest plugin (written by scripts/original_suite.py): which faissx is this?"""
import os
import faissx

_want = os.environ["ORIGINAL_SUITE_FAISSX"]
if os.path.realpath(os.path.dirname(faissx.__file__)) != os.path.realpath(_want):
    raise SystemExit(f"faissx comes from {faissx.__file__}, not from {_want}")
'''


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Target:
    """The Python whose ``faissx`` is measured, and how it starts its server."""

    python: Path
    label: str
    package: Path  # the faissx package directory that must be imported
    server: list[str]  # command, port appended as "--port N"

    @classmethod
    def ours(cls) -> Target:
        python = Path(sys.executable)
        import faissx

        return cls(
            python,
            "ours",
            Path(faissx.__file__).parent,
            [str(python.parent / "faissx"), "serve", "--bind-address", "127.0.0.1"],
        )

    @classmethod
    def original(cls, python: Path) -> Target:
        found = subprocess.run(
            [str(python), "-I", "-c", "import faissx, os; print(os.path.dirname(faissx.__file__))"],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            check=True,
        )
        script = python.parent / "faissx.server"
        return cls(
            python,
            "original",
            Path(found.stdout.strip()),
            [str(script), "run", "--bind-address", "127.0.0.1", "--log-level", "WARNING"],
        )

    def env(self, work: Path, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAISSX_", "PYTHON"))}
        env["PATH"] = os.pathsep.join([str(self.python.parent), env.get("PATH", "")])
        env["PYTHONPATH"] = str(work)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"  # a file stopped at its timeout still shows its output
        env["OMP_WAIT_POLICY"] = env.get("OMP_WAIT_POLICY", "PASSIVE")
        env["ORIGINAL_SUITE_FAISSX"] = str(self.package)
        env["FAISSX_SERVER"] = f"tcp://localhost:{port}"
        return env


class Server:
    """The target's server on ``port``, stopped on exit."""

    def __init__(self, target: Target, port: int, log: Path, extra: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
        self.port = port
        self.logfile = log.open("wb")
        self.proc = subprocess.Popen(
            [*target.server, "--port", str(port), *extra],
            env=env,
            cwd=log.parent,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if port_open(self.port):
                return self
            time.sleep(0.2)
        raise RuntimeError("server did not start within 120 s")

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self.logfile.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_cap(gib: float) -> object:
    """A ``preexec_fn`` capping the child's address space, so that one example asking for more
    than the machine can spare fails alone (MemoryError) instead of starving everything else."""

    def cap() -> None:
        limit = int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def expected(name: str, table: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    for pattern, why in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return why
    return None


@dataclass
class Result:
    passed: int = 0
    skipped: int = 0
    #: test id -> message, by how it is classified
    unexpected: dict[str, str] = field(default_factory=dict)
    known: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (kind, reason)
    #: known failures that passed (the table is stale for them)
    stale: list[str] = field(default_factory=list)


def classify(result: Result, test: str, failed: bool, message: str) -> None:
    why = expected(test, EXPECTED) or expected(test.split("::")[0], EXPECTED)
    if not failed:
        result.passed += 1
        if why is not None:
            result.stale.append(test)
    elif why is not None:
        result.known[test] = why
    else:
        result.unexpected[test] = message


def run_tests(src: Path, rel: str, target: Target, work: Path, port: int, timeout: float) -> Result:
    """One pytest process on one of the original's test files, its own fresh server."""
    path = src / "tests" / rel
    xml = work / f"{rel.replace('/', '_')}-{target.label}.xml"
    xml.unlink(missing_ok=True)
    cmd = [
        str(target.python),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "original_suite_check",
        "-o",
        "addopts=",
        f"--rootdir={src}",
        f"--junitxml={xml}",
        str(path),
    ]
    result = Result()
    with (
        Server(target, port, work / f"{xml.stem}-server.log", []),
        contextlib.suppress(subprocess.TimeoutExpired),
    ):
        subprocess.run(
            cmd,
            cwd=work / "cwd",
            env=target.env(work, port),
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if not xml.exists():
        classify(result, rel, True, "no result (crash or timeout)")
        return result
    for case in ET.parse(xml).iter("testcase"):
        kinds = {child.tag for child in case}
        name = case.get("name") or "?"
        test = f"{rel}::{name}" if case.get("classname") else rel  # collection error: no class
        if "skipped" in kinds:
            result.skipped += 1
            continue
        failure = next((c for c in case if c.tag in ("failure", "error")), None)
        message = ""
        if failure is not None:
            message = failure.get("message") or failure.text or ""
        classify(result, test, failure is not None, first_line(message))
    return result


def run_example(
    src: Path,
    name: str,
    target: Target,
    work: Path,
    port: int,
    timeout: float,
    memory_gib: float,
) -> tuple[bool, str]:
    """(passed, why not) for one example: exit status 0, and no traceback or error printed
    (the original's examples catch exceptions, log them and carry on)."""
    path = src / "examples" / name
    env = target.env(work, port)
    out = work / f"example-{path.stem}-{target.label}.out"
    with out.open("wb") as sink:
        if name in SERVER_EXAMPLES:
            return run_server_example(path, target, env, sink, port, timeout)
        with Server(
            target, port, work / f"{out.stem}-server.log", EXAMPLE_SERVER_ARGS.get(name, [])
        ):
            try:
                done = subprocess.run(
                    [str(target.python), str(path)],
                    cwd=work / "cwd",
                    env=env,
                    timeout=timeout,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=memory_cap(memory_gib),
                )
            except subprocess.TimeoutExpired:
                return False, f"no exit within {timeout:.0f} s"
    text = out.read_text(errors="replace")
    if done.returncode != 0:
        return False, f"exit {done.returncode}: {last_error(text)}"
    if "Traceback (most recent call last)" in text or ERROR_LINE.search(text):
        return False, f"exit 0 but printed an error: {last_error(text)}"
    return True, ""


def run_server_example(
    path: Path, target: Target, env: dict[str, str], sink: object, port: int, timeout: float
) -> tuple[bool, str]:
    """A server example passes when it answers on its port; it binds the address it
    configures, so it runs only where that is the loopback (a network namespace of its own)."""
    if shutil.which("unshare") is None:
        return False, "not run: it binds 0.0.0.0 and `unshare` is missing to isolate it"
    # In a new network namespace only the loopback exists: 0.0.0.0 reaches nothing else.
    script = (
        'ip link set lo up && "$0" "$1" & pid=$!; '
        f"for i in $(seq 1 {int(timeout * 5)}); do "
        f'if "$0" -c "import socket,sys; s=socket.socket(); '
        f"sys.exit(s.connect_ex(('127.0.0.1', {port})))\"; then kill $pid; wait $pid; exit 0; fi; "
        "kill -0 $pid 2>/dev/null || exit 3; sleep 0.2; done; kill $pid; exit 4"
    )
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script, str(target.python), str(path)],
        cwd=path.parent.parent,
        env=env,
        stdout=sink,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=timeout + 30,
    )
    if done.returncode == 0:
        return True, ""
    return False, {3: "exited before answering", 4: "did not answer"}.get(
        done.returncode, f"could not run it isolated (exit {done.returncode})"
    )


#: How the original's examples report an error they caught: a log record at ERROR level, or a
#: printed line starting with "Error"/"❌".
ERROR_LINE = re.compile(r"(?m) - ERROR - |^ERROR[: ]|^\s*(Error|❌)")


def first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "?"
    line = re.sub(r"\[request [0-9a-f]+\]", "", line)
    return re.sub(r"0x[0-9a-f]+|anon-\S+|\d+\.\d+s", "…", line).strip()[:200]


def last_error(text: str) -> str:
    """The exception a traceback ended with, else the last line that reports an error."""
    if "Traceback (most recent call last)" in text:
        tail = text.rsplit("Traceback (most recent call last)", 1)[1].splitlines()
        raised = [line for line in tail[1:] if line.strip() and not line.startswith(" ")]
        if raised:
            return first_line(raised[0])
    lines = [
        line
        for line in text.splitlines()
        if re.search(r"Error|Exception|error:|❌", line) or ERROR_LINE.search(line)
    ]
    return first_line(lines[-1]) if lines else "no error line printed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the original FAISSx's source tree")
    parser.add_argument("--files", nargs="+", help="test files (relative to tests/) or examples")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-examples", action="store_true")
    parser.add_argument("--baseline", type=Path, help="a Python with the original faissx installed")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file")
    parser.add_argument("--failures", action="store_true", help="list every failure")
    parser.add_argument(
        "--out",
        type=Path,
        help="keep each file's output, JUnit XML and server log here (default: a temporary "
        "directory, removed at the end)",
    )
    parser.add_argument(
        "--memory-gib", type=float, default=6, help="address-space cap of each example (GiB)"
    )
    args = parser.parse_args(argv)
    src = args.src.resolve()
    if not (src / "faissx" / "client").is_dir() or not (src / "tests").is_dir():
        parser.error(f"{src} is not the original FAISSx's source tree")
    targets = [Target.ours()]
    if args.baseline:
        targets.append(Target.original(args.baseline))
    port = ORIGINAL_PORT
    if not port_free(port):
        port = free_port()
        print(
            f"warning: port {ORIGINAL_PORT} is taken; using {port}: tests and examples that "
            f"hard-code tcp://localhost:{ORIGINAL_PORT} will fail"
        )
    tests = sorted(str(p.relative_to(src / "tests")) for p in (src / "tests").rglob("test_*.py"))
    examples = sorted(p.name for p in (src / "examples").glob("*.py"))
    if args.files:
        tests = [t for t in tests if t in args.files or Path(t).name in args.files]
        examples = [e for e in examples if e in args.files]
    if args.no_tests:
        tests = []
    if args.no_examples:
        examples = []
    for target in targets:
        print(f"{target.label}: faissx from {target.package}")

    totals: dict[str, collections.Counter[str]] = {t.label: collections.Counter() for t in targets}
    groups: dict[str, list[str]] = collections.defaultdict(list)
    known: dict[str, tuple[str, str]] = {}
    stale: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.out is not None:
            work = args.out.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faissx-original-")))
        (work / "cwd").mkdir(exist_ok=True)
        (work / "original_suite_check.py").write_text(CHECK)
        header = "".join(f"{t.label:>22}" for t in targets)
        if tests:
            print(f"\n{'test file':46}{header}   (passed/failed/expected-to-fail/skipped)")
        for rel in tests:
            cells = []
            for target in targets:
                r = run_tests(src, rel, target, work, port, args.timeout)
                c = totals[target.label]
                c.update(
                    passed=r.passed, failed=len(r.unexpected), known=len(r.known), skipped=r.skipped
                )
                cells.append(f"{r.passed}/{len(r.unexpected)}/{len(r.known)}/{r.skipped}")
                if target.label == "ours":
                    for test, message in r.unexpected.items():
                        groups[message].append(test)
                    known.update(r.known)
                    stale += r.stale
            print(f"{rel:46}" + "".join(f"{c:>22}" for c in cells), flush=True)
        if examples:
            print(f"\n{'example':46}{header}")
        for name in examples:
            cells = []
            for target in targets:
                ok, why = run_example(src, name, target, work, port, args.timeout, args.memory_gib)
                c = totals[target.label]
                exp = EXPECTED_EXAMPLES.get(name)
                c.update(examples=1, examples_ok=ok)
                cells.append("ok" if ok else "FAIL")
                if target.label == "ours" and not ok:
                    if exp:
                        known[f"examples/{name}"] = exp
                    else:
                        groups[why].append(f"examples/{name}")
                elif target.label == "ours" and exp:
                    stale.append(f"examples/{name}")
            print(f"{name:46}" + "".join(f"{c:>22}" for c in cells), flush=True)

    print()
    for target in targets:
        c = totals[target.label]
        print(
            f"{target.label}: tests {c['passed']} passed, {c['failed']} failed unexpectedly, "
            f"{c['known']} expected to fail, {c['skipped']} skipped; "
            f"examples {c['examples_ok']}/{c['examples']} ok"
        )
    if known:
        print("\nexpected failures (see EXPECTED in this script and docs/client.md):")
        by_reason: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for test, why in known.items():
            by_reason[why].append(test)
        for (kind, reason), names in sorted(by_reason.items()):
            print(f"  [{kind}] {len(names)}: {reason}")
            for test in names[: None if args.failures else 3]:
                print(f"      {test}")
    if stale:
        print("\nlisted as expected to fail but passed (update EXPECTED):")
        for test in stale:
            print(f"  {test}")
    if groups:
        print("\nunexpected failures, grouped by message:")
        for message, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"  [{len(names)}] {message}")
            for test in names[: None if args.failures else 6]:
                print(f"      {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
