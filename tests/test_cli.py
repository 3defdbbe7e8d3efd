"""The CLI: flags, environment variables, the seed's spellings, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import faissx_client as fx
from faissx_core import __version__
from faissx_core.errors import PermissionDenied, Unauthenticated

from .conftest import FAISSX, ServerProcess, free_port, ping, server_env

BIN = Path(sys.executable).parent


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**server_env(), **(env or {})},
    )


def test_version_both_spellings():
    for exe in ("faissx", "faissx.server"):
        out = run_cli(str(BIN / exe), "--version")
        assert out.returncode == 0
        assert __version__ in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--enable-auth"], "needs --auth-keys or --auth-file"),
        (["--auth-keys", "nocolon"], "key:tenant"),
        (["--auth-keys", "k:../evil"], "invalid tenant id"),
        (["--auth-keys", "k:t", "--auth-file", "/nonexistent.json"], "not both"),
        (["--port", "0"], "port"),
        (["--plugins", "flat,nosuchplugin"], "nosuchplugin"),
        (["--log-level", "LOUD"], "LOUD"),
    ],
)
def test_bad_flags_are_refused_with_a_reason(args, message):
    out = run_cli(str(FAISSX), "serve", "--port", str(free_port()), *args)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout


def test_settings_from_environment_variables(tmp_path):
    port = free_port()
    env = {
        "FAISSX_PORT": str(port),
        "FAISSX_BIND_ADDRESS": "127.0.0.1",
        "FAISSX_DATA_DIR": str(tmp_path / "d"),
        "FAISSX_PLUGINS": "flat",
    }
    proc = subprocess.Popen(
        [str(FAISSX), "serve"],
        env={**server_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ping(f"tcp://127.0.0.1:{port}") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
        assert (tmp_path / "d" / "tenants").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "flat" in out and "stopped" in out


def test_seed_spelling_faissx_server_run():
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "faissx.server"), "run", "--port", str(port)],
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ping(f"tcp://127.0.0.1:{port}"):
            assert time.monotonic() < deadline and proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_seed_python_api_configure_and_run():
    port = free_port()
    code = textwrap.dedent(f"""
        from faissx import server
        server.configure(port={port}, bind_address="127.0.0.1",
                         auth_keys={{"secret-1": "tenant-1"}}, enable_auth=True)
        server.run()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not ping(endpoint):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        fx.configure(server=endpoint, api_key="secret-1", tenant_id="tenant-1")
        index = fx.IndexFlatL2(4)
        index.add(np.eye(4, dtype="float32"))
        assert index.ntotal == 4
    finally:
        fx.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_auth_flags_are_enforced(start_server, tmp_path):
    auth_file = tmp_path / "auth.json"
    auth_file.write_text('{"file-key": "t-file"}')
    inline = start_server("--enable-auth", "--auth-keys", "k1:t1,k2:t2")
    from_file = start_server("--enable-auth", "--auth-file", str(auth_file))
    try:
        with pytest.raises(Unauthenticated):
            fx.configure(server=inline.endpoint)
        with pytest.raises(PermissionError):
            fx.configure(server=inline.endpoint, api_key="wrong")
        with pytest.raises(PermissionDenied):
            fx.configure(server=inline.endpoint, api_key="k1", tenant_id="t2")
        fx.configure(server=inline.endpoint, api_key="k1")
        fx.IndexFlatL2(4, name="mine").add(np.eye(4, dtype="float32"))
        fx.configure(server=inline.endpoint, api_key="k2")
        assert fx.list_indexes() == []
        fx.configure(server=from_file.endpoint, api_key="file-key", tenant_id="t-file")
        assert fx.list_indexes() == []
    finally:
        fx.disconnect()
    for srv in (inline, from_file):
        log = srv.output()
        assert "listening" in log
        assert "file-key" not in log and "k1:t1" not in log, "API keys are never logged"


def test_sigterm_finishes_in_flight_work_and_exits_zero(start_server):
    srv: ServerProcess = start_server()
    fx.configure(server=srv.endpoint)
    try:
        index = fx.IndexFlatL2(8, name="x")
        index.add(np.random.default_rng(0).random((1000, 8), dtype="float32"))
    finally:
        fx.disconnect()
    assert srv.stop(signal.SIGTERM) == 0
    assert "stopped" in srv.output()


def test_make_serve_defaults_are_documented_in_the_makefile():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "--bind-address $(BIND)" in makefile and "PORT   ?= 45678" in makefile
    assert os.path.exists(FAISSX)


def test_serve_does_not_load_the_client():
    """``faissx serve`` resolves without importing the drop-in client (its import cost every
    server start about a second, and patches faiss's classes); the client's admin commands
    load it when they are used, and ``--help`` lists them all."""
    script = textwrap.dedent(
        """
        import sys
        from faissx.cli import main
        ctx = main.make_context("faissx", ["serve"], resilient_parsing=True)
        assert main.get_command(ctx, "serve") is not None
        print("after serve:", any(m.startswith("faissx_client") for m in sys.modules))
        assert main.get_command(ctx, "indexes").name == "indexes"
        print("after indexes:", "faissx_client.admin" in sys.modules)
        print("listed:", " ".join(main.list_commands(ctx)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "after serve: False" in out
    assert "after indexes: True" in out
    listed = out.split("listed:")[1].split()
    assert {"serve", "keys", "plugins", "indexes", "snapshot", "health", "status"} <= set(listed)
