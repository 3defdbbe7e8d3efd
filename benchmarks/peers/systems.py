"""The systems compared: where each one's Python lives, how its server starts, what it offers.

Each system runs in its own virtualenv (``benchmarks/peers/.venvs/<name>``, made by
:mod:`benchmarks.peers.venvs`) so that their dependencies never meet; FAISSx and local faiss
use this repository's ``.venv``. A server is started the way the system's docs say, bound to
127.0.0.1 on a free port, with a fresh data directory, through :class:`benchmarks.procs.Service`
(SIGTERM, then kill), and is measured from outside: the resident memory of its process tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procs

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
REPO = HERE.parent.parent
#: Every command needs an answer within this; a server this long to start has failed.
START_TIMEOUT = 120.0


def venv_python(name: str | None) -> Path:
    """The interpreter of a system's virtualenv (None: this repository's, running us)."""
    if name is None:
        return Path(sys.executable)
    return VENVS / name / "bin" / "python"


# -- process-tree memory, from /proc (no psutil in this repository's venv) ------------------------


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _smaps_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as smaps:
            for line in smaps:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int) -> dict[str, int]:
    """Bytes resident in ``root``'s process tree: RSS summed, and PSS summed (shared pages
    counted once across the tree: what a multi-process server like PostgreSQL really holds)."""
    pids = tree_pids(root)
    return {
        "rss": sum(_smaps_kib(p, "Rss") for p in pids) * 1024,
        "pss": sum(_smaps_kib(p, "Pss") for p in pids) * 1024,
        "processes": len(pids),
    }


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (as ``du`` counts them)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walked
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# -- systems ------------------------------------------------------------------------------------


@dataclass
class Running:
    """One started system: what its agents need to connect, and its server (if it has one)."""

    config: dict[str, Any]
    data_dir: Path
    service: procs.Service | None = None
    restart_fn: Any = None

    def memory(self) -> dict[str, int] | None:
        if self.service is None or self.service.proc.poll() is not None:
            return None
        return tree_memory(self.service.proc.pid)

    def restart(self) -> None:
        if self.restart_fn is None:
            raise RuntimeError("this system has no server to restart")
        self.stop()
        self.service = self.restart_fn()

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


@dataclass(frozen=True)
class System:
    key: str
    label: str
    adapter: str
    venv: str | None
    kinds: tuple[str, ...]
    #: "processes": each concurrent client is its own process; "threads": one process may
    #: open the store, so the concurrent clients are threads in it.
    concurrency: str
    durability: str
    note: str = ""
    fsync: str | None = None  # FAISSx's --fsync (None: in memory)
    #: The FAISSx configuration with the same durability, that this system is compared with.
    match: str = ""
    #: False: only the write rows (load, one-row inserts, delete, memory, disk) are measured;
    #: the search rows would repeat another configuration's (searches never touch the log).
    searches: bool = True

    @property
    def python(self) -> Path:
        return venv_python(self.venv)

    @property
    def embedded(self) -> bool:
        return self.key in ("local", "lancedb", "qdrant")

    def start(self, work: Path, logs: Path) -> Running:
        data = work / f"{self.key}-data"
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        starter = getattr(self, f"_start_{self.adapter}")
        return starter(data, logs)

    # -- one starter per adapter ---------------------------------------------------------------
    def _start_faiss(self, data: Path, logs: Path) -> Running:
        if self.key == "local":
            return Running({}, data)
        port = procs.free_port()
        exe = Path(sys.executable).with_name("faissx")
        cmd = [
            str(exe),
            "serve",
            "--port",
            str(port),
            "--bind-address",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ]
        if self.fsync is not None:
            cmd += ["--data-dir", str(data), "--fsync", self.fsync]
        endpoint = f"tcp://127.0.0.1:{port}"

        def launch() -> procs.Service:
            service = procs.Service(cmd, logs / f"{self.key}-server.log")
            service.wait_until(lambda: procs.ping_faissx(endpoint), START_TIMEOUT, "faissx serve")
            return service

        return Running({"endpoint": endpoint}, data, launch(), launch)

    def _start_milvus(self, data: Path, logs: Path) -> Running:
        port = procs.free_port()
        exe = VENVS / "milvus" / "bin" / "milvus-lite"
        cmd = [
            str(exe),
            "server",
            "--data-dir",
            str(data),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]

        def launch() -> procs.Service:
            service = procs.Service(
                cmd, logs / "milvus-server.log", env=procs.clean_env(isolated=True)
            )
            service.wait_until(lambda: procs.port_open(port), START_TIMEOUT, "milvus-lite server")
            return service

        return Running({"port": port}, data, launch(), launch)

    def _start_chroma(self, data: Path, logs: Path) -> Running:
        port = procs.free_port()
        exe = VENVS / "chroma" / "bin" / "chroma"
        cmd = [str(exe), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
        env = {**procs.clean_env(isolated=True), "ANONYMIZED_TELEMETRY": "False"}

        def launch() -> procs.Service:
            service = procs.Service(cmd, logs / "chroma-server.log", env=env)
            service.wait_until(lambda: procs.port_open(port), START_TIMEOUT, "chroma run")
            return service

        return Running({"port": port}, data, launch(), launch)

    def _start_pgvector(self, data: Path, logs: Path) -> Running:
        return start_postgres(data, logs)

    def _start_lancedb(self, data: Path, logs: Path) -> Running:
        return Running({"path": str(data)}, data)

    def _start_qdrant(self, data: Path, logs: Path) -> Running:
        return Running({"path": ":memory:" if self.fsync == "memory" else str(data)}, data)


# -- PostgreSQL from the pgserver wheel --------------------------------------------------------


def _pg_bin() -> Path:
    site = next((VENVS / "pgvector" / "lib").glob("python3*/site-packages"))
    return site / "pgserver" / "pginstall" / "bin"


def _as_pg_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as a ``pgserver`` system user (the
    user pgserver itself creates for this), through ``setpriv`` (which execs, so the server's
    pid is the one we stop)."""
    if os.geteuid() != 0:
        return []
    if subprocess.run(["id", "-u", "pgserver"], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", "pgserver"],
            check=True,
            capture_output=True,
        )
    return ["setpriv", "--reuid=pgserver", "--regid=pgserver", "--init-groups"]


def start_postgres(data: Path, logs: Path) -> Running:
    """``initdb`` then ``postgres -h 127.0.0.1 -p PORT``: the pgserver wheel's binaries, started
    the way PostgreSQL's docs start a server, with its default durability (``fsync=on``,
    ``synchronous_commit=on``)."""
    bin_dir, prefix = _pg_bin(), _as_pg_user()
    if prefix:
        for parent in (data.parent, data):
            parent.chmod(0o755)
        shutil.chown(data, "pgserver", "pgserver")
    init = subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
        ],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        env=procs.clean_env(isolated=True),
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-800:]}")
    port = procs.free_port()
    cmd = [
        *prefix,
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(data),
    ]

    def ready() -> bool:
        done = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
            capture_output=True,
        )
        return done.returncode == 0

    def launch() -> procs.Service:
        service = procs.Service(cmd, logs / "postgres.log", env=procs.clean_env(isolated=True))
        service.wait_until(ready, START_TIMEOUT, "postgres")
        time.sleep(0.2)
        return service

    return Running({"host": "127.0.0.1", "port": port, "user": "postgres"}, data, launch(), launch)


SYSTEMS: dict[str, System] = {
    s.key: s
    for s in (
        System(
            "faissx",
            "FAISSx (in memory)",
            "faiss",
            None,
            ("flat", "hnsw"),
            "processes",
            "in memory: nothing on disk",
        ),
        System(
            "faissx-off",
            "FAISSx --fsync off",
            "faiss",
            None,
            ("flat", "hnsw"),
            "processes",
            "--data-dir, --fsync off: acknowledged once the OS has the write",
            "write rows only: its searches are the in-memory server's",
            fsync="off",
            searches=False,
        ),
        System(
            "faissx-always",
            "FAISSx --fsync always",
            "faiss",
            None,
            ("flat", "hnsw"),
            "processes",
            "--data-dir, --fsync always (fsync probe: 1 fdatasync per insert)",
            fsync="always",
        ),
        System(
            "local",
            "local faiss (anchor)",
            "faiss",
            None,
            ("flat", "hnsw"),
            "threads",
            "in memory, in the process",
            "no server: the floor",
            match="",
        ),
        System(
            "milvus",
            "Milvus Lite (server)",
            "milvus",
            "milvus",
            ("flat", "hnsw"),
            "processes",
            "WAL written, fsynced only at close (sync_mode='close', its default; "
            "fsync probe: 0 syncs per insert)",
            match="faissx-off",
        ),
        System(
            "chroma",
            "Chroma (server)",
            "chroma",
            "chroma",
            ("hnsw",),
            "processes",
            "SQLite, synchronous (fsync probe: 8 fsyncs per insert)",
            "no exact index",
            match="faissx-always",
        ),
        System(
            "lancedb",
            "LanceDB (embedded)",
            "lancedb",
            "lancedb",
            ("flat", "hnsw"),
            "processes",
            "a Lance file per add, not fsynced (fsync probe: 0 syncs per insert)",
            match="faissx-off",
        ),
        System(
            "qdrant",
            "Qdrant local mode (:memory:)",
            "qdrant",
            "qdrant",
            ("flat",),
            "threads",
            "in memory (with path=: one SQLite commit per point, 4 fdatasyncs each: see the "
            "adapter)",
            "local mode: exact search only",
            fsync="memory",
            match="faissx",
        ),
        System(
            "pgvector",
            "PostgreSQL 16 + pgvector",
            "pgvector",
            "pgvector",
            ("flat", "hnsw"),
            "processes",
            "fsync=on, synchronous_commit=on (fsync probe: 1 fdatasync per insert)",
            match="faissx-always",
        ),
    )
}
#: The FAISSx configurations (the rest are the anchor and the peers).
OURS = ("faissx", "faissx-off", "faissx-always")
