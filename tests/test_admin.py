"""Admin commands, backup/restore, and the persistence API's round trips."""

from __future__ import annotations

import json
import subprocess
import threading

import faiss
import numpy as np
import pytest

import faissx_client as fx

from .conftest import FAISSX, ServerProcess, restarted_after_kill_9, server_env

D = 16
X = np.random.default_rng(11).standard_normal((500, D)).astype("float32")
Q = X[:7] + 0.01


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # wide enough that rich never wraps a message across lines
    out = subprocess.run(
        [str(FAISSX), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**server_env(), "COLUMNS": "400"},
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture
def durable(start_server, tmp_path) -> ServerProcess:
    return start_server("--data-dir", str(tmp_path / "data"))


def test_indexes_commands(durable, tmp_path):
    fx.configure(server=durable.endpoint)
    try:
        index = fx.index_factory(D, "IVF8,Flat", name="docs")
        index.train(X)
        index.add(X)
        expected = index.search(Q, 5)
    finally:
        fx.disconnect()
    endpoint = ["--server", durable.endpoint]
    assert "docs" in cli("indexes", "list", *endpoint).stdout
    info = json.loads(cli("indexes", "info", "docs", *endpoint).stdout)
    assert info["ntotal"] == 500 and info["faiss_class"] == "IndexIVFFlat"

    exported = tmp_path / "docs.faiss"
    cli("indexes", "export", "docs", str(exported), *endpoint)
    local = faiss.read_index(str(exported))  # plain faiss opens what the server wrote
    for got, want in zip(local.search(Q, 5), expected, strict=True):
        np.testing.assert_array_equal(got, want)

    cli("indexes", "import", str(exported), "docs-copy", *endpoint)
    fx.configure(server=durable.endpoint)
    try:
        copy = fx.open_index("docs-copy")
        for got, want in zip(copy.search(Q, 5), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        fx.disconnect()

    folder = tmp_path / "data" / "tenants" / "default" / "docs"
    assert "docs" in cli("snapshot", "docs", *endpoint).stdout
    (log,) = folder.glob("wal-*.log")
    assert log.stat().st_size == 0, "a snapshot empties the log"
    assert json.loads((folder / "meta.json").read_text())["generation"] >= 2

    refused = cli("indexes", "delete", "nope", "--yes", *endpoint, check=False)
    assert refused.returncode != 0 and "IndexNotFound" in refused.stderr
    cli("indexes", "delete", "docs", "--yes", *endpoint)
    assert not folder.exists()
    assert "docs-copy" in cli("indexes", "list", *endpoint).stdout


def test_backup_while_writing_then_restore(durable, tmp_path, start_server):
    fx.configure(server=durable.endpoint)
    stop = threading.Event()
    try:
        index = fx.IndexFlatL2(D, name="busy")
        index.add(X[:100])

        def writer() -> None:
            for part in np.array_split(X[100:], 40):
                if stop.is_set():
                    return
                index.add(part)

        thread = threading.Thread(target=writer)
        thread.start()
        cli("backup", str(tmp_path / "data"), str(tmp_path / "bk"))
        stop.set()
        thread.join(60)
    finally:
        fx.disconnect()
    restored_dir = tmp_path / "restored"
    assert "restored 1" in cli("restore", str(tmp_path / "bk"), str(restored_dir)).stdout
    second = start_server("--data-dir", str(restored_dir))
    fx.configure(server=second.endpoint)
    try:
        copy = fx.open_index("busy")
        n = copy.ntotal
        assert 100 <= n <= 500
        np.testing.assert_array_equal(copy.reconstruct_n(0, n), X[:n])  # a prefix of history
    finally:
        fx.disconnect()
    refused = cli("restore", str(tmp_path / "bk"), str(restored_dir), check=False)
    assert refused.returncode != 0 and "in use" in refused.stderr


def test_two_servers_cannot_share_a_data_dir(durable, tmp_path):
    other = ServerProcess("--data-dir", str(tmp_path / "data"))
    with pytest.raises(RuntimeError, match="in use"):
        other.start()  # it exits with the reason; the wait ends then
    assert durable.alive


def test_write_index_and_read_index_round_trip(durable, tmp_path):
    local = faiss.IndexHNSWFlat(D, 16)
    local.add(X)
    path = tmp_path / "hnsw.faiss"
    faiss.write_index(local, str(path))
    fx.configure(server=durable.endpoint)
    try:
        uploaded = fx.read_index(str(path), name="hnsw")  # local file -> remote index
        assert type(uploaded).__name__ == "IndexHNSWFlat" and uploaded.ntotal == 500
        for got, want in zip(uploaded.search(Q, 4), local.search(Q, 4), strict=True):
            np.testing.assert_array_equal(got, want)
        back = tmp_path / "back.faiss"
        fx.write_index(uploaded, str(back))  # remote index -> local file
    finally:
        fx.disconnect()
    assert back.read_bytes() == path.read_bytes(), "byte-for-byte the same faiss file"
    with restarted_after_kill_9(durable):
        assert fx.open_index("hnsw").ntotal == 500, "an uploaded index is durable too"
