"""A newcomer's first hour (issue 18): every failure says what happened and what to do.

Each test is one moment a new user met: a real server started through the real CLI, the real
client or the real command, and the message the user sees. Nothing may end in a traceback, a
pydantic report or a process abort.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import faiss as real_faiss
import numpy as np
import pytest

from faissx import client as faiss
from faissx_core.errors import FaissxWarning, InvalidArgument, QuotaExceeded, ServerUnavailable

from .conftest import FAISSX, ServerProcess, free_port, no_retries, server_env

ROOT = Path(__file__).parents[1]


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    env = {**server_env(), "COLUMNS": "200", **kw.pop("env", {})}  # fewer wrapped lines
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def python(
    code: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, as a user's script would run."""
    return run(sys.executable, "-c", textwrap.dedent(code), timeout=timeout, env=env or {})


def one_message(out: subprocess.CompletedProcess[str]) -> str:
    """The command failed cleanly: non-zero exit, no traceback, no abort."""
    text = out.stdout + out.stderr
    assert out.returncode not in (0, -6, 134), text  # -6/134: SIGABRT
    assert "Traceback" not in text, text
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())  # rich-click's error panel


@pytest.fixture(scope="module")
def small_messages_server():
    """A server whose messages are at most 1 MiB, so 'large' uploads stay small here; shared
    (a server start costs seconds on a loaded machine): each test uses indices of its own."""
    srv = ServerProcess("--max-message-mb", "1").start()
    yield srv
    srv.stop()


@pytest.fixture
def small_messages(small_messages_server):
    try:
        faiss.configure(server=small_messages_server.endpoint, timeout=30)
        yield small_messages_server
    finally:
        faiss.disconnect()


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d), dtype="float32")


# -- 1. uploads over the message limit ------------------------------------------------------------


def test_read_index_larger_than_a_message_is_uploaded_in_parts(small_messages, tmp_path):
    x = vectors(6000, 64)  # 1.5 MiB of vectors: over the 1 MiB limit
    local = real_faiss.IndexFlatL2(64)
    local.add(x)
    path = tmp_path / "big.index"
    real_faiss.write_index(local, str(path))
    assert path.stat().st_size > 1 << 20
    remote = faiss.read_index(str(path))
    assert remote.ntotal == 6000
    D, I = remote.search(x[:5], 3)
    Dl, Il = local.search(x[:5], 3)
    np.testing.assert_array_equal(I, Il)
    np.testing.assert_array_equal(D, Dl)


def test_large_batch_size_is_split_to_fit_the_message_limit(small_messages):
    x = vectors(6000, 64)
    index = faiss.IndexFlatL2(64)
    index.batch_size = 6000  # one 1.5 MiB request as asked: split to fit instead
    index.add(x)
    assert index.ntotal == 6000


def test_a_single_message_over_the_limit_is_a_typed_error_naming_the_flag(small_messages):
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(64), 64, 4)
    with pytest.raises(QuotaExceeded, match=r"--max-message-mb.*nothing was sent"):
        index.train(vectors(6000, 64))  # training is one request
    assert not index.is_trained  # the server is still there, and nothing changed


def test_cli_import_larger_than_a_message(small_messages, tmp_path):
    local = real_faiss.IndexFlatL2(64)
    local.add(vectors(6000, 64))
    path = tmp_path / "big.index"
    real_faiss.write_index(local, str(path))
    out = run(
        str(FAISSX), "indexes", "import", str(path), "big", "--server", small_messages.endpoint
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6000 vectors" in out.stdout
    assert faiss.open_index("big").ntotal == 6000
    # the server keeps nothing on disk: the import says so
    assert "will not survive a server restart" in " ".join(out.stdout.split())


def test_an_upload_over_max_memory_is_refused_before_its_parts_are_sent(tmp_path):
    srv = ServerProcess("--max-message-mb", "1", "--max-memory", "1").start()
    try:
        faiss.configure(server=srv.endpoint, timeout=30)
        local = real_faiss.IndexFlatL2(64)
        local.add(vectors(6000, 64))
        path = tmp_path / "big.index"
        real_faiss.write_index(local, str(path))
        with pytest.raises(QuotaExceeded, match="--max-memory"):
            faiss.read_index(str(path))
        assert faiss.list_indexes() == []
    finally:
        faiss.disconnect()
        srv.stop()


# -- 2. the seed's spellings ----------------------------------------------------------------------


def _ivf_without_quantizer() -> tuple[str, list[list[int]], str, list[list[int]]]:
    x = vectors(400, 16)
    ivf = faiss.IndexIVFFlat(16, nlist=8)  # the seed README's tuning example
    ivf.train(x)
    ivf.add(x)
    ivf.nprobe = 8
    hnsw = faiss.IndexHNSW(16, 16)  # from the seed's list of index types
    hnsw.add(x)
    return (
        type(ivf).__name__,
        ivf.search(x[:4], 3)[1].tolist(),
        type(hnsw).__name__,
        hnsw.search(x[:4], 3)[1].tolist(),
    )


def test_seed_spellings_work_locally_and_remotely(server):
    local = _ivf_without_quantizer()
    faiss.configure(server=server.endpoint, timeout=30)
    try:
        remote = _ivf_without_quantizer()
    finally:
        faiss.disconnect()
    assert local == remote
    assert local[0] == "IndexIVFFlat" and local[2] == "IndexHNSWFlat"


def test_ivf_without_quantizer_takes_the_metric_and_refuses_unknown_keywords():
    index = faiss.IndexIVFFlat(8, 4, real_faiss.METRIC_INNER_PRODUCT)
    assert index.metric_type == real_faiss.METRIC_INNER_PRODUCT
    assert index.quantizer.metric_type == real_faiss.METRIC_INNER_PRODUCT
    with pytest.raises(TypeError, match="nlists"):
        faiss.IndexIVFFlat(8, nlists=4)


# -- 3. memory mapping then add --------------------------------------------------------------------


def test_add_to_a_memory_mapped_ivf_never_aborts(tmp_path):
    out = python(f"""
        import faiss, numpy as np
        from faissx import client as fx
        from faissx.client.optimization import memory_manager
        x = np.random.default_rng(0).random((3000, 8), dtype="float32")
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4)
        ivf.train(x); ivf.add(x)
        faiss.write_index(ivf, "{tmp_path}/ivf.index")
        flat = faiss.IndexFlatL2(8); flat.add(x)
        faiss.write_index(flat, "{tmp_path}/flat.index")
        memory_manager.set_option("use_memory_mapping", True)
        index = fx.read_index("{tmp_path}/ivf.index")
        index.add(x)                                   # copy-on-write: the lists move to memory
        index.add_with_ids(x, np.arange(3000) + 10000)
        index.remove_ids(np.arange(10))
        print("ntotal", index.ntotal)
        mapped = fx.read_index("{tmp_path}/flat.index")
        try:
            mapped.add(x)
        except fx.UnsupportedOperation as exc:
            print("refused:", exc)
        print("file", faiss.read_index("{tmp_path}/ivf.index").ntotal)
    """)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ntotal 8990" in out.stdout
    assert "refused: add on this IndexFlatL2: it was read with use_memory_mapping" in out.stdout
    assert "file 3000" in out.stdout  # the mapped file itself is never changed


# -- 4. one clear line instead of a traceback -----------------------------------------------------


def test_port_in_use_is_one_message(server):
    port = server.endpoint.rpartition(":")[2]
    text = one_message(run(str(FAISSX), "serve", "--port", port))
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in text
    assert "--port" in text
    seed = one_message(
        run(str(Path(sys.executable).parent / "faissx.server"), "run", "--port", port)
    )
    assert "already in use" in seed


def test_unusable_data_dir_is_one_message():
    text = one_message(
        run(str(FAISSX), "serve", "--port", str(free_port()), "--data-dir", "/proc/nope")
    )
    assert "/proc/nope" in text


def test_importing_a_file_that_is_not_faiss_is_one_message(server, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an index\n")
    text = one_message(
        run(str(FAISSX), "indexes", "import", str(path), "notes", "--server", server.endpoint)
    )
    assert "is not a faiss index file" in text


# -- 6. unsafe or surprising settings are said out loud -------------------------------------------


def _startup_log(*args: str) -> str:
    srv = ServerProcess(*args).start()
    srv.stop()
    return srv.output()


def test_keys_without_enable_auth_warn():
    log = _startup_log("--auth-keys", "k:t")
    assert "WARNING" in log and "--enable-auth was not: the keys are NOT enforced" in log


def test_in_memory_server_says_so_and_named_indices_warn(server):
    log = _startup_log()
    assert "kept in memory only" in log
    faiss.configure(server=server.endpoint, timeout=30)
    try:
        with pytest.warns(FaissxWarning, match="will not survive a server restart"):
            faiss.IndexFlatL2(8, name="newcomer-volatile")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # unnamed indices are not meant to survive: no hint
            faiss.IndexFlatL2(8).add(vectors(2, 8))
    finally:
        faiss.delete_index("newcomer-volatile")
        faiss.disconnect()


def test_durable_server_gives_no_volatility_hint(tmp_path):
    srv = ServerProcess("--data-dir", str(tmp_path / "data")).start()
    try:
        faiss.configure(server=srv.endpoint, timeout=30)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            faiss.IndexFlatL2(8, name="kept")
    finally:
        faiss.disconnect()
        srv.stop()
    assert "kept in memory only" not in srv.output()


def test_exposed_without_auth_or_curve_warns():
    # --plugins nosuch stops the server after its start-up notices and before it binds: the
    # warning is shown by the real command without exposing anything
    out = run(
        str(FAISSX),
        "serve",
        "--port",
        str(free_port()),
        "--bind-address",
        "0.0.0.0",
        "--plugins",
        "nosuch",
    )
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "nosuch" in text
    assert "listening on 0.0.0.0 with neither --enable-auth nor --curve-secret-key" in text
    out = run(
        str(FAISSX),
        "serve",
        "--port",
        str(free_port()),
        "--bind-address",
        "0.0.0.0",
        "--enable-auth",
        "--auth-keys",
        "k:t",
        "--plugins",
        "nosuch",
    )
    assert "with neither --enable-auth" not in out.stdout + out.stderr


# -- 7. an unreachable or mistyped server ---------------------------------------------------------


def test_unreachable_server_fails_within_the_timeout_and_says_what_to_check():
    port = free_port()
    with pytest.raises(ServerUnavailable) as caught:
        faiss.configure(server=f"tcp://127.0.0.1:{port}", timeout=2)
    message = str(caught.value)
    assert f"check that a FAISSx server is running at tcp://127.0.0.1:{port}" in message
    assert f"faissx serve --port {port}" in message


def test_endpoint_without_scheme_is_taken_as_tcp(server):
    bare = server.endpoint.removeprefix("tcp://")
    client = faiss.configure(server=bare, timeout=30)
    try:
        assert client.server == server.endpoint
    finally:
        faiss.disconnect()


@pytest.mark.parametrize(
    ("server_arg", "message"),
    [
        ("tcp://localhost", "has no port: write it as tcp://HOST:PORT"),
        ("http://localhost:45678", "is not a ZeroMQ endpoint"),
        ("tcp://localhost:99999", "not in 1-65535"),
    ],
)
def test_bad_endpoints_are_one_line_at_configure(server_arg, message):
    with pytest.raises(InvalidArgument) as caught:
        faiss.configure(server=server_arg, timeout=30)
    text = str(caught.value)
    assert message in text
    assert "pydantic" not in text and "\n" not in text
    assert not faiss.is_remote()


# -- 8. a partial add interrupted by a server stop -------------------------------------------------


def test_interrupted_add_says_what_was_acknowledged(tmp_path):
    srv = ServerProcess(env={"FAISSX_TEST_CRASH_AFTER_WRITES": "5"}).start()
    try:
        faiss.configure(server=srv.endpoint, timeout=3)
        index = faiss.IndexFlatL2(16)
        index.batch_size = 100
        with pytest.raises(ServerUnavailable) as caught, no_retries():
            index.add(vectors(2000, 16))  # 20 parts; the server dies after the 5th write
        message = str(caught.value)
        found = re.search(
            r"acknowledged (\d+) of 20 parts \(([\d,]+) rows\), and ntotal was "
            r"([\d,]+) after the last acknowledged part",
            message,
        )
        assert found, message
        parts, rows, ntotal = (int(g.replace(",", "")) for g in found.groups())
        assert 1 <= parts < 20 and rows == 100 * parts and ntotal == rows
        assert "read index.ntotal once the server is back" in message
        assert caught.value.details["rows_acknowledged"] == rows
    finally:
        faiss.disconnect()
        srv.kill()


# -- 9. training progress --------------------------------------------------------------------------


def test_train_progress_locally_and_remotely(server):
    code = f"""
        import numpy as np
        from faissx import client as faiss
        x = np.random.default_rng(0).random((500, 8), dtype="float32")
        faiss.IndexIVFFlat(8, 4).train(x, progress=True)
        faiss.configure(server="{server.endpoint}")
        remote = faiss.IndexIVFFlat(8, 4)
        remote.train(x, progress=True)
        print("trained", remote.is_trained)
    """
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert "trained True" in out.stdout
    assert out.stderr.count("train IndexIVFFlat on 500 vectors: done in") == 2, out.stderr


def test_upload_parts_out_of_order_are_refused_and_change_nothing(small_messages):
    client = faiss.get_client()
    local = real_faiss.IndexFlatL2(8)
    local.add(vectors(100, 8))
    data = real_faiss.serialize_index(local)
    total, half = int(data.nbytes), int(data.nbytes) // 2
    args = {"ephemeral": False, "total": total}
    with pytest.raises(InvalidArgument, match="no upload in progress"):
        client.call("import", "parts", {**args, "offset": half}, {"data": data[half:]})
    client.call("import", "parts", {**args, "offset": 0}, {"data": data[:half]})
    with pytest.raises(InvalidArgument, match="send it again from offset 0"):
        client.call("import", "parts", {**args, "offset": half + 1}, {"data": data[half + 1 :]})
    # nothing exists until the last byte is in (the shared server holds other tests' indices)
    assert "parts" not in [i["name"] for i in faiss.list_indexes()]
    client.call("import", "parts", {**args, "offset": 0}, {"data": data[:half]})
    info = client.call("import", "parts", {**args, "offset": half}, {"data": data[half:]})[0]
    assert info["ntotal"] == 100
