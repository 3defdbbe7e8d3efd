"""Test harness: real servers started through the real CLI, real clients talking to them.

``tests/plugin_site`` holds a third-party plugin installed the way pip would leave it (a module
plus a ``.dist-info`` with an entry point). It is put on the path of this process and of every
server subprocess, so both sides discover it through ``importlib.metadata``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# On a loaded machine (more runnable threads than cores) OpenMP threads that spin while they wait
# for each other turn a small multi-threaded faiss call into seconds: OPQ training measured 44 s
# spinning against 7 s passive, on a 2-core machine running other work. Tests and the servers
# they start (which inherit this environment) wait passively; results are unchanged. Set before
# anything loads faiss's OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The suite starts a few hundred Python subprocesses (servers, their restarts, `faissx`
# commands). Under PYTHONDONTWRITEBYTECODE each of them compiles every faissx module from source
# again: a fifth of a server's start-up CPU, measured. Where the caller asked for no bytecode
# files, the subprocesses keep theirs in a cache outside the source tree instead (the tree stays
# clean, which is what the variable is for); results are unchanged.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault(
        "PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / f"faissx-pycache-{os.getuid()}")
    )

#: The test servers' log files: one folder per test run, removed when the run ends (a log a
#: failing test needs is in its assertion message by then).
SERVER_LOGS = Path(tempfile.mkdtemp(prefix="faissx-test-logs-"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SERVER_LOGS, ignore_errors=True)


PLUGIN_SITE = Path(__file__).parent / "plugin_site"
sys.path.insert(0, str(PLUGIN_SITE))

import msgpack  # noqa: E402
import zmq  # noqa: E402

FAISSX = Path(sys.executable).parent / "faissx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(log: str) -> bool:
    """Whether a server's output says its port was taken (``faissx serve`` prints the reason in
    a box whose lines may wrap anywhere)."""
    return "the address is already in use" in " ".join(log.replace("│", " ").split())


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_SITE), env.get("PYTHONPATH")]))
    return env


def run_module(
    module: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository root without the caller's FAISSX_*
    variables (plus ``env``), as a user runs a benchmark; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=Path(__file__).resolve().parent.parent,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def ping(endpoint: str, timeout: float = 0.5) -> bool:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # A refused connect is retried every RECONNECT_IVL (100 ms by default): a server that has
    # just bound its port answers this probe within 10 ms instead of 50 on average.
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": 1, "id": 1, "op": "ping", "arrays": []}))
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(0)


class ServerProcess:
    """A ``faissx serve`` subprocess on a free loopback port."""

    def __init__(
        self, *args: str, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = list(args)
        #: Extra environment for the server (the harness strips the caller's FAISSX_* ones).
        self.env = env or {}
        #: Whether the harness picked the port: one taken before the first start binds it is
        #: then replaced (see :meth:`start`); a port the test asked for is its to keep.
        self._picked = port is None
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        # One file per server object, appended across its own restarts: never one per port,
        # or a server on a reused port would read an earlier server's lines as its own (a CI
        # run found another test's request log in one that counts its requests).
        fd, name = tempfile.mkstemp(prefix=f"server-{self.port}-", suffix=".log", dir=SERVER_LOGS)
        os.close(fd)
        self.log = Path(name)

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start and wait until it answers. Generous: a loaded 2-core machine took more than
        30 s to import faiss and the server (the wait ends as soon as it answers)."""
        cmd = [
            str(FAISSX),
            "serve",
            "--port",
            str(self.port),
            "--bind-address",
            "127.0.0.1",
            "--log-level",
            "DEBUG",
            *self.args,
        ]
        self._logfile = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, env={**server_env(), **self.env}, stdout=self._logfile, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._picked and _port_taken(self.output()[-3000:]):
                    # Another process took the port between free_port() and this bind (the
                    # test files run in two processes): the first start takes another one.
                    self._picked = False
                    self._logfile.close()
                    self.port = free_port()
                    self.endpoint = f"tcp://127.0.0.1:{self.port}"
                    return self.start(max(deadline - time.monotonic(), 1.0))
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready():
                self._picked = False  # a restart keeps the port its clients know
                return self
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.output()}")

    def ready(self) -> bool:
        """Whether the server answers yet (subclasses with other transports override it)."""
        return ping(self.endpoint)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self) -> list[str]:
        """The log's complete lines: a server still running may be half-way through one."""
        text = self.output()
        return text[: text.rfind("\n") + 1].splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server ignored signal {sig}:\n{self.output()}") from None
        self._logfile.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One shared in-memory server with every discovered plugin."""
    proc = ServerProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def start_server() -> Iterator:
    """Factory for servers with their own flags; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, port: int | None = None) -> ServerProcess:
        proc = ServerProcess(*args, port=port).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def remote(server: ServerProcess) -> Iterator:
    """``faissx.client`` configured against the shared server, back to local mode afterwards."""
    from faissx import client as faiss

    # generous: a remote train on a loaded 2-core machine can take tens of seconds
    faiss.configure(server=server.endpoint, timeout=120)
    try:
        yield faiss
    finally:
        faiss.disconnect()


@contextlib.contextmanager
def recovery_policy_kept() -> Iterator[None]:
    """The client's retry policy in force before comes back afterwards, whatever a test sets
    inside (the policy is process-wide)."""
    from faissx_client import recovery

    before = recovery.current_policy()
    try:
        yield
    finally:
        recovery.configure_recovery(**dataclasses.asdict(before))


@contextlib.contextmanager
def no_retries() -> Iterator[None]:
    """Client calls inside are not retried: for a call that kills its server on purpose (a
    crash hook), whose retries would only wait out their backoff and connection waits (seconds)
    against a server that stays dead. The policy in force before comes back afterwards."""
    from faissx_client import recovery

    with recovery_policy_kept():
        recovery.configure_recovery(enabled=False)
        yield


#: The exit status of a server the test crash hooks stopped (``os._exit(75)``).
HOOK_EXIT = 75


def restart_when_hooked(
    proc: ServerProcess, problems: list[str], wait: float, pause: float = 0.0
) -> threading.Thread:
    """A started thread that waits up to ``wait`` seconds for ``proc`` to exit through a crash
    hook, then, ``pause`` seconds later, starts it again without the hook; what went wrong is
    appended to ``problems`` (a thread's exception would be lost) for the test to assert on."""

    def restart() -> None:
        try:
            assert proc.proc is not None
            code = proc.proc.wait(wait)
            if code != HOOK_EXIT:
                problems.append(f"the test hook did not fire (exit {code})")
            time.sleep(pause)
            proc.env = {}
            proc.start()
        except Exception as exc:
            problems.append(repr(exc))

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


@contextlib.contextmanager
def restarted_after_kill_9(proc: ServerProcess, timeout: float | None = None) -> Iterator[None]:
    """Kill ``proc`` with SIGKILL (no clean shutdown: only what is on disk survives), start it
    again on the same port and data, and keep ``faissx.client`` configured against it inside:
    every durability test reopens its indices this way."""
    from faissx import client as faiss

    proc.stop(signal.SIGKILL)
    proc.start()
    faiss.configure(server=proc.endpoint, **({} if timeout is None else {"timeout": timeout}))
    try:
        yield
    finally:
        faiss.disconnect()
