"""The processes a benchmark run starts: servers, the echo server, worker pools, the old venv.

Everything here is started by the run and stopped by it (see :class:`Processes`), whatever
happens in between.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

DRIVER = Path(__file__).with_name("driver.py")


class WorkerError(RuntimeError):
    """A command failed in a worker (the worker is still usable)."""


class WorkerDied(RuntimeError):
    """A worker timed out or exited; it has been killed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(*, isolated: bool = False) -> dict[str, str]:
    """This environment without FAISSX_* settings (and without PYTHONPATH for another venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
    if isolated:
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
    return env


class Worker:
    """``driver.py worker`` (or another ``script`` speaking its JSON lines, such as the peer
    benchmark's agent) in a subprocess."""

    def __init__(
        self,
        python: str,
        log: Path,
        *,
        isolated: bool = False,
        cwd: Path | None = None,
        script: Path = DRIVER,
    ) -> None:
        cmd = [python, *(["-I"] if isolated else []), str(script), "worker"]
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=clean_env(isolated=isolated),
            cwd=str(cwd) if cwd else None,
        )
        self._buf = bytearray()
        self._pending = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, cmd: str, **args: Any) -> None:
        if not self.alive:
            raise WorkerDied(f"worker exited with {self.proc.returncode}")
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        self._pending = True

    def receive(self, timeout: float) -> Any:
        """The answer to the last command; WorkerDied (after killing it) past ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    self.kill()
                    raise WorkerDied(f"no answer within {timeout:g}s (see {self.log})")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = self.proc.wait()
                    raise WorkerDied(f"worker exited with {code} (see {self.log})")
                self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        self._pending = False
        answer = json.loads(line)
        if not answer["ok"]:
            raise WorkerError(answer["error"])
        return answer["result"]

    def call(self, cmd: str, timeout: float = 120.0, **args: Any) -> Any:
        self.send(cmd, **args)
        return self.receive(timeout)

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.alive:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, WorkerDied, subprocess.TimeoutExpired):
                self.kill()
        self._log.close()


class Pool:
    """``n`` workers in one interpreter; commands to several run at the same time."""

    def __init__(
        self,
        python: str,
        n: int,
        log_dir: Path,
        tag: str,
        *,
        isolated: bool = False,
        cwd: Path | None = None,
        script: Path = DRIVER,
    ) -> None:
        self.python, self.isolated, self.cwd, self.script = python, isolated, cwd, script
        self.log_dir, self.tag = log_dir, tag
        self.workers = [self._spawn(i) for i in range(n)]

    def _spawn(self, i: int) -> Worker:
        return Worker(
            self.python,
            self.log_dir / f"{self.tag}-worker{i}.log",
            isolated=self.isolated,
            cwd=self.cwd,
            script=self.script,
        )

    def __getitem__(self, i: int) -> Worker:
        return self.workers[i]

    def __len__(self) -> int:
        return len(self.workers)

    def hello(self, mode: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        return self.all("hello", [{"mode": mode}] * len(self.workers), timeout)

    def all(self, cmd: str, args: list[dict[str, Any]], timeout: float) -> list[Any]:
        """Send ``cmd`` to the first ``len(args)`` workers, then collect every answer."""
        workers = self.workers[: len(args)]
        for worker, kw in zip(workers, args, strict=True):
            worker.send(cmd, **kw)
        results, error = [], None
        for worker in workers:
            try:
                results.append(worker.receive(timeout))
            except (WorkerError, WorkerDied) as exc:
                error = error or exc
                results.append(None)
        if error is not None:
            raise error
        return results

    def revive(self) -> None:
        """Replace dead workers (their state is lost)."""
        for i, worker in enumerate(self.workers):
            if not worker.alive:
                worker.close()
                self.workers[i] = self._spawn(i)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def ping_faissx(endpoint: str, timeout: float = 0.5) -> bool:
    """True when a FAISSx server answers a ping on ``endpoint``."""
    from faissx_core.messages import PROTOCOL_VERSION

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": PROTOCOL_VERSION, "id": 1, "op": "ping", "arrays": []}))
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(0)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A long-running subprocess with a log file; ``stop`` sends SIGTERM, then kills."""

    def __init__(
        self,
        cmd: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.cmd, self.log = cmd, log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            cwd=str(cwd) if cwd else None,
        )

    def wait_until(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {self.proc.returncode}:\n"
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{what} did not start within {timeout:g}s (see {self.log})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_faissx(tmp: Path, log_dir: Path) -> tuple[Service, str, str]:
    """``faissx serve`` on a free loopback port and an ipc socket: (service, tcp, ipc)."""
    port = free_port()
    sock = tmp / "faissx.sock"
    exe = Path(sys.executable).with_name("faissx")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "faissx_core.cli"]
    cmd = [
        *base,
        "serve",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--ipc",
        str(sock),
        "--log-level",
        "WARNING",
    ]
    service = Service(cmd, log_dir / "faissx-server.log")
    tcp, ipc = f"tcp://127.0.0.1:{port}", f"ipc://{sock}"
    service.wait_until(lambda: ping_faissx(tcp) and ping_faissx(ipc), 60, "faissx serve")
    return service, tcp, ipc


def start_echo(tmp: Path, log_dir: Path) -> tuple[Service, str, str]:
    """The bare pyzmq echo server on a free port and an ipc socket: (service, tcp, ipc)."""
    port = free_port()
    tcp, ipc = f"tcp://127.0.0.1:{port}", f"ipc://{tmp / 'echo.sock'}"
    service = Service([sys.executable, str(DRIVER), "echo", tcp, ipc], log_dir / "echo.log")
    service.wait_until(
        lambda: "ready" in service.log.read_text(errors="replace"), 30, "echo server"
    )
    return service, tcp, ipc


# -- the original faissx from PyPI ---------------------------------------------------------------


def original_venv(cache: Path, version: str, console: Any = None) -> Path:
    """A virtualenv with ``faissx==version`` from the package index; its python's path.

    Built once under ``cache`` (a marker file records the installed version).
    """
    venv = cache / "orig-venv"
    python = venv / "bin" / "python"
    marker = venv / f".installed-{version}"
    if marker.exists() and python.exists():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    cache.mkdir(parents=True, exist_ok=True)
    if console is not None:
        console.print(f"[dim]installing the original faissx=={version} into {venv} ...[/]")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"faissx=={version}",
        ],
    ]
    for step in steps:
        done = subprocess.run(
            step,
            capture_output=True,
            text=True,
            timeout=900,
            env=clean_env(isolated=True),
            cwd=str(cache),
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{' '.join(step[:4])} failed: {' / '.join(tail)}")
    marker.touch()
    return python


def start_original(python: Path, cache: Path, log_dir: Path) -> tuple[Service, str]:
    """The original package's server (``faissx.server run``) on a free loopback port."""
    port = free_port()
    script = python.with_name("faissx.server")
    base = [str(script)] if script.exists() else [str(python), "-I", "-m", "faissx.server.cli"]
    cmd = [
        *base,
        "run",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--log-level",
        "WARNING",
    ]
    service = Service(cmd, log_dir / "original-server.log", env=clean_env(isolated=True), cwd=cache)
    service.wait_until(lambda: port_open(port), 60, "original faissx server")
    return service, f"tcp://127.0.0.1:{port}"
