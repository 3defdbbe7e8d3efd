"""The example third-party plugin under examples/ installs with pip and works remotely.

It is installed into a temporary target directory (not this virtualenv), and both the server
and a client script run with that directory on their path: exactly what a user who
``pip install``s the package gets, without changing the environment of the other tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import FAISSX, ServerProcess, server_env

EXAMPLE = Path(__file__).parents[1] / "examples" / "faissx-cosine"


@pytest.fixture(scope="module")
def cosine_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # pip builds in the source tree (build/, *.egg-info): build a copy, so the test leaves
    # examples/ as it found it
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return target


def env_with(site: Path) -> dict[str, str]:
    env = server_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return env


def test_installing_the_example_leaves_no_build_folders_in_the_tree(cosine_site):
    assert (cosine_site / "faissx_cosine").exists() or any(cosine_site.iterdir())
    left = [p.name for p in EXAMPLE.rglob("*") if p.name == "build" or p.suffix == ".egg-info"]
    assert left == [], f"pip left {left} in {EXAMPLE}"


def test_installed_example_is_listed(cosine_site):
    out = subprocess.run(
        [str(FAISSX), "plugins"],
        capture_output=True,
        text=True,
        env=env_with(cosine_site),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "cosine" in out.stdout and "IndexFlatCosine" in out.stdout
    assert "faissx-cosine" in out.stdout


def test_installed_example_serves_cosine_search(cosine_site, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", env_with(cosine_site)["PYTHONPATH"])
    server = ServerProcess().start()
    try:
        script = textwrap.dedent(f"""
            import numpy as np
            from faissx import client as faiss

            rng = np.random.default_rng(0)
            x = rng.standard_normal((200, 16)).astype("float32") * 5
            q = x[:4] * 3  # same directions, other lengths
            faiss.configure(server="{server.endpoint}")
            index = faiss.IndexFlatCosine(16)
            assert type(index).__name__ == "IndexFlatCosine", type(index)
            index.add(x)
            D, I = index.search(q, 3)
            assert I[:, 0].tolist() == [0, 1, 2, 3], I
            assert np.allclose(D[:, 0], 1.0, atol=1e-5), D
            unit = x / np.linalg.norm(x, axis=1, keepdims=True)
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            want = np.sort(qn @ unit.T, axis=1)[:, ::-1][:, :3]
            assert np.allclose(D, want, atol=1e-5), (D, want)
            faiss.disconnect()
            local = faiss.IndexFlatCosine(16)  # local mode: the plugin builds it in-process
            local.add(x)
            assert local.search(q, 3)[1].tolist() == I.tolist()
            print("ok")
        """)
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env_with(cosine_site),
            timeout=120,
        )
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    finally:
        server.stop()
