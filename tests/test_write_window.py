"""The write window: one-row adds that return once sent, acknowledged at the next barrier.

With ``configure(write_window=N)`` a one-request ``add`` / ``add_with_ids`` returns once its
request is sent (faissx_client/window.py). What a user can see must not change otherwise: the
same ids and search results as local faiss, in the order the adds were made, across indices;
a failed add surfaces (late, as its own type) and stops the adds after it, as a loop of plain
adds would have stopped; ``flush()`` means durable; a server killed with writes in flight loses
none and applies none twice. ``write_window=0`` (the default) is one round trip per add.
Real servers, real client; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

import faissx_client as fx
from faissx_client import recovery
from faissx_client.client import Client
from faissx_client.settings import ClientSettings
from faissx_client.window import WINDOW_BYTES
from faissx_core.errors import FaissError, IndexNotFound, InvalidArgument

from .conftest import (
    ServerProcess,
    recovery_policy_kept,
    restart_when_hooked,
    restarted_after_kill_9,
)

D = 8
N = 300
#: Named in-memory indices warn that they will not survive a restart: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:index .* is named")


@pytest.fixture(autouse=True)
def local_mode_after() -> Iterator[None]:
    """Every test leaves local mode and the retry policy it found."""
    with recovery_policy_kept():
        try:
            yield
        finally:
            # a test that left a failed deferred write has asserted on it already
            with contextlib.suppress(Exception):
                fx.disconnect()


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype("float32")


def pending(index: Any) -> int:
    """Deferred writes of this thread not yet acknowledged (the window's own count)."""
    conn = getattr(index._client.transport._local, "conn", None)
    return 0 if conn is None else len(conn.window)


def add_rows(remote: Any, local: Any, x: np.ndarray, ids: np.ndarray | None) -> None:
    """One row per call through one reused buffer, as a loop over a stream of vectors does:
    the window must have copied each row before its add returned."""
    row = np.empty((1, D), dtype="float32")
    for i in range(len(x)):
        row[:] = x[i]
        if ids is None:
            remote.add(row)
            local.add(row)
        else:
            remote.add_with_ids(row, ids[i : i + 1])
            local.add_with_ids(row, ids[i : i + 1])


def refused_later(name: str) -> None:
    """A deferred add the server refuses (a row of the wrong d), written below the proxy, whose
    own checks refuse it at the add: it stands for the refusals a client cannot foresee (a
    quota, an index deleted by another client)."""
    client = fx.get_client()
    assert client is not None
    client.transport.write("add", name, {"x": np.ones((1, D + 1), dtype="float32")})


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IDMap2,Flat", "IDMap2,IVF8,Flat"])
def test_windowed_adds_match_local_faiss(server: ServerProcess, factory: str) -> None:
    fx.configure(server=server.endpoint, timeout=120, write_window=16)
    remote, local = fx.index_factory(D, factory), faiss.index_factory(D, factory)
    if "IVF" in factory:
        train = rows(400, seed=1)
        remote.train(train)
        local.train(train)
    x = rows(N)
    ids = np.random.default_rng(2).choice(100_000, N, replace=False) if "IDMap" in factory else None
    add_rows(remote, local, x, ids)
    assert 0 < pending(remote) <= 16, "the adds were not deferred (or not bounded)"
    queries = rows(10, seed=3)
    if "IVF" in factory:
        remote.set_parameter("nprobe", 8)  # every list: no ties left to the probe order
        faiss.extract_index_ivf(local).nprobe = 8
    got_d, got_i = remote.search(queries, 10)  # the barrier: every add is acknowledged first
    want_d, want_i = local.search(queries, 10)
    assert pending(remote) == 0
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    assert remote.ntotal == local.ntotal == N


def test_two_indices_interleaved_keep_each_ones_order(server: ServerProcess) -> None:
    fx.configure(server=server.endpoint, timeout=120, write_window=16)
    a, b = fx.IndexFlatL2(D), fx.IndexIDMap2(fx.IndexFlatL2(D))
    xa, xb = rows(150, seed=4), rows(150, seed=5)
    ids = np.arange(1000, 1150, dtype="int64")
    for i in range(150):
        a.add(xa[i : i + 1])
        b.add_with_ids(xb[i : i + 1], ids[i : i + 1])
    assert pending(a) > 0
    np.testing.assert_array_equal(a.reconstruct_n(0, 150), xa)
    assert b.ntotal == 150
    np.testing.assert_array_equal(np.stack([b.reconstruct(int(i)) for i in ids[::15]]), xb[::15])
    _, found = b.search(xb, 1)
    assert found[:, 0].tolist() == ids.tolist()


def test_a_failed_deferred_add_surfaces_at_the_next_call_and_stops_the_rest(
    server: ServerProcess,
) -> None:
    """A write the server refuses between good ones: the adds around it return, the next call
    raises the server's InvalidArgument, named as a deferred add with its request id, and is
    not performed; the adds after it were not applied, as a loop would have stopped there; the
    index works afterwards. (The bad row is written below the proxy, whose own checks would
    refuse it at the add: it stands for any refusal the client cannot foresee.)"""
    fx.configure(server=server.endpoint, timeout=120, write_window=32)
    index = fx.IndexFlatL2(D, name="window-bad-row")
    x = rows(20, seed=6)
    for i in range(5):
        index.add(x[i : i + 1])
    refused_later("window-bad-row")  # returns: no one has read its reply yet
    for i in range(5, 10):
        index.add(x[i : i + 1])
    with pytest.raises(InvalidArgument) as caught:
        index.search(x[:1], 1)
    exc = caught.value
    assert exc.details["deferred"] is True and exc.details["index"] == "window-bad-row"
    assert exc.details["not_applied"] == 5, exc
    assert exc.request_id and exc.request_id in str(exc)
    assert "deferred add to 'window-bad-row'" in str(exc) and "5 later" in str(exc)
    assert index.ntotal == 5, "an add after the failed one was applied"
    np.testing.assert_array_equal(index.reconstruct_n(0, 5), x[:5])
    for i in range(10, 20):  # usable again: the window starts afresh
        index.add(x[i : i + 1])
    fx.flush()
    np.testing.assert_array_equal(index.reconstruct_n(0, 15), np.vstack([x[:5], x[10:20]]))


def test_what_the_client_can_tell_is_refused_at_the_add_itself(server: ServerProcess) -> None:
    """The mistakes faiss raises at the add (a wrong d, ``add`` on an IDMap, NaN) are raised by
    a deferred add too, as the same types the server's refusal has, and nothing is sent: the
    window holds no failure for a later call to find (FAISS's own test_factory caught this)."""
    fx.configure(server=server.endpoint, timeout=120, write_window=32)
    flat = fx.IndexFlatL2(D, name="window-early-flat")
    idmap = fx.index_factory(D, "IDMap,Flat", name="window-early-idmap")
    x = rows(4, seed=12)
    with pytest.raises(InvalidArgument, match="expects"):
        flat.add(np.ones((1, D + 1), dtype="float32"))
    nan = x[:1].copy()
    nan[0, 3] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        flat.add(nan)
    with pytest.raises(FaissError, match="add_with_ids") as caught:
        idmap.add(x[:1])
    assert isinstance(caught.value, RuntimeError)  # what faiss raises, and FAISS's tests catch
    flat.add(x[:1])
    idmap.add_with_ids(x[:2], np.array([7, 9]))
    fx.flush()  # no deferred failure was left behind
    assert flat.ntotal == 1 and idmap.ntotal == 2
    local = faiss.IndexIDMap(faiss.IndexFlatL2(D))
    with pytest.raises(RuntimeError, match="add_with_ids"):
        local.add(x[:1])  # faiss refuses the same call


def test_an_index_deleted_mid_window_fails_its_deferred_adds(server: ServerProcess) -> None:
    """Another client deletes the index while adds to it are unacknowledged: flush() raises
    IndexNotFound (a KeyError, as the type says), as a deferred add to that index."""
    fx.configure(server=server.endpoint, timeout=120, write_window=64)
    index = fx.IndexFlatL2(D, name="window-deleted")
    other = Client(ClientSettings(server=server.endpoint, timeout=120))
    try:
        x = rows(40, seed=7)
        for i in range(20):
            index.add(x[i : i + 1])
        fx.flush()
        other.call("delete", "window-deleted")
        for i in range(20, 40):
            index.add(x[i : i + 1])
        with pytest.raises(IndexNotFound) as caught:
            fx.flush()
        assert caught.value.details["deferred"] is True
        assert caught.value.details["not_applied"] == 19, caught.value
        fx.flush()  # reported once: nothing is owed any more
    finally:
        other.close()


def test_window_holds_a_bounded_number_of_bytes(server: ServerProcess) -> None:
    """Adds of 400 KiB each (16 MiB in all) under a window of 64: the window holds up to
    WINDOW_BYTES unacknowledged, never more."""
    fx.configure(server=server.endpoint, timeout=120, write_window=64)
    index = fx.IndexFlatL2(1024)
    x = np.random.default_rng(8).standard_normal((4000, 1024)).astype("float32")
    held = []
    buf = np.empty((100, 1024), dtype="float32")  # reused: sent by reference when this large
    for lo in range(0, 4000, 100):
        buf[:] = x[lo : lo + 100]
        index.add(buf)
        held.append(index._client.transport._local.conn.window.bytes)
    assert WINDOW_BYTES // 2 < max(held) <= WINDOW_BYTES, held
    assert index.ntotal == 4000
    np.testing.assert_array_equal(index.reconstruct_n(0, 4000), x)


def test_flush_waits_for_the_writes_of_a_thread_that_ended(server: ServerProcess) -> None:
    fx.configure(server=server.endpoint, timeout=120, write_window=32)
    index = fx.IndexFlatL2(D, name="window-thread")
    x = rows(60, seed=9)
    worker = threading.Thread(target=lambda: [index.add(x[i : i + 1]) for i in range(60)])
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    fx.flush()  # this thread owes nothing; the ended thread's window is drained here
    transport = index._client.transport
    assert not transport._windows, "the ended thread's deferred writes were not drained"
    np.testing.assert_array_equal(index.reconstruct_n(0, 60), x)


def test_flush_means_durable(start_server: Any, tmp_path: Path) -> None:
    srv = start_server("--data-dir", str(tmp_path / "data"), "--fsync", "always")
    fx.configure(server=srv.endpoint, timeout=120, write_window=32)
    index = fx.IndexIDMap2(fx.IndexFlatL2(D), name="window-durable")
    x, ids = rows(200, seed=10), np.arange(500, 700, dtype="int64")
    for i in range(200):
        index.add_with_ids(x[i : i + 1], ids[i : i + 1])
    assert pending(index) > 0
    fx.flush()
    assert pending(index) == 0
    with restarted_after_kill_9(srv, timeout=120):
        again = fx.open_index("window-durable")
        assert again.ntotal == 200
        _, found = again.search(x, 1)
        assert found[:, 0].tolist() == ids.tolist()


def test_kill_9_with_writes_in_flight_loses_none_and_doubles_none(tmp_path: Path) -> None:
    """The server exits abruptly (the crash hook: like kill -9) after the 40th of 120 deferred
    one-row adds, unanswered, with more in flight; it is restarted on the same data. The
    client sends the unacknowledged ones again with their keys: after flush() every row is
    there exactly once, in order."""
    srv = ServerProcess(
        "--data-dir",
        str(tmp_path / "data"),
        "--fsync",
        "always",
        env={"FAISSX_TEST_CRASH_AFTER_WRITES": "40"},
    ).start()
    problems: list[str] = []
    try:
        fx.configure(server=srv.endpoint, timeout=120, heartbeat=0.2, write_window=64)
        recovery.configure_recovery(max_retries=400, initial_backoff=0.05, max_backoff=0.5)
        index = fx.IndexFlatL2(D, name="window-crash")  # the create is write 1
        x = rows(120, seed=11)
        restarter = restart_when_hooked(srv, problems, wait=60)
        for i in range(120):
            index.add(x[i : i + 1])
        fx.flush()
        restarter.join(120)
        assert not problems, problems
        assert index.ntotal == 120, "a retried add was applied twice, or one was lost"
        np.testing.assert_array_equal(index.reconstruct_n(0, 120), x)
    finally:
        srv.kill()


def test_window_0_is_one_round_trip_per_add(start_server: Any) -> None:
    """The default: every add is its own request, answered before it returns, so a failing
    add raises at the add itself; the window changes when, not what, is sent."""
    srv = start_server("--log-format", "json", "--log-requests", "all")
    x = rows(30, seed=12)
    for window in (0, 8):
        fx.configure(server=srv.endpoint, timeout=120, write_window=window)
        index = fx.IndexFlatL2(D, name=f"window-{window}")
        for i in range(30):
            index.add(x[i : i + 1])
            if window == 0:
                assert pending(index) == 0
        bad = np.ones((1, D + 1), dtype="float32")
        if window == 0:
            with pytest.raises(InvalidArgument) as caught:
                index.add(bad)
            assert "deferred" not in caught.value.details
        else:
            refused_later(f"window-{window}")
            with pytest.raises(InvalidArgument):
                fx.flush()
        fx.disconnect()

    def logged_adds() -> dict[int, int]:
        adds = {0: 0, 8: 0}
        for line in srv.lines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("op") == "add" and "outcome" in entry:
                    adds[int(entry["index"].rpartition("-")[2])] += 1
        return adds

    # A request's log line is written after its reply is sent: the last may trail the client.
    deadline = time.monotonic() + 20
    while min(logged_adds().values()) < 31 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged_adds() == {0: 31, 8: 31}


def test_the_setting_flows_like_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAISSX_WRITE_WINDOW", raising=False)
    assert ClientSettings.from_env().write_window == 0
    monkeypatch.setenv("FAISSX_WRITE_WINDOW", "24")
    assert ClientSettings.from_env().write_window == 24
    assert ClientSettings.from_env(write_window=0).write_window == 0
    monkeypatch.setenv("FAISSX_WRITE_WINDOW", "-1")
    with pytest.raises(InvalidArgument, match="write_window"):
        ClientSettings.from_env()


def test_interpreter_exit_waits_for_deferred_writes(server: ServerProcess) -> None:
    """A script that adds under a window and exits without flush(): its adds are all there,
    and a deferred add that failed is logged at exit, naming the index."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from faissx import client as fx
        fx.configure(server={server.endpoint!r}, timeout=60, write_window=64)
        index = fx.IndexFlatL2({D}, name="window-exit")
        for i in range(50):
            index.add(np.full((1, {D}), i, dtype="float32"))
        other = fx.IndexFlatL2({D}, name="window-exit-bad")
        # the server refuses it (written below the proxy, which would refuse it at the add)
        bad = {{"x": np.ones((1, {D} + 1), dtype="float32")}}
        fx.get_client().transport.write("add", "window-exit-bad", bad)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAISSX_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "window-exit-bad" in done.stderr and "deferred add" in done.stderr, done.stderr
    fx.configure(server=server.endpoint, timeout=120)
    index = fx.open_index("window-exit")
    assert index.ntotal == 50
    assert index.reconstruct(49)[0] == 49
    fx.delete_index("window-exit")
    fx.delete_index("window-exit-bad")


def test_threaded_shards_see_their_own_windowed_adds(server: ServerProcess) -> None:
    """A threaded IndexShards adds on its pool's threads, then reads every sub-index's ntotal
    from the caller's thread (and numbers the next add from it): the adds made on the pool
    must be acknowledged by then, or the ids would repeat."""
    fx.configure(server=server.endpoint, timeout=120, write_window=16)
    shards, local = fx.IndexShards(D, True, False), faiss.IndexShards(D, True, False)
    subs = [fx.IndexIDMap2(fx.IndexFlatL2(D)) for _ in range(3)]
    local_subs = [faiss.IndexIDMap2(faiss.IndexFlatL2(D)) for _ in range(3)]
    for remote_sub, local_sub in zip(subs, local_subs, strict=True):
        shards.add_shard(remote_sub)
        local.add_shard(local_sub)
    x = rows(120, seed=13)
    for lo in range(0, 120, 6):  # two rows per shard per call: one request each
        shards.add(x[lo : lo + 6])
        local.add(x[lo : lo + 6])
    assert shards.ntotal == local.ntotal == 120
    got_d, got_i = shards.search(x[:10], 5)
    want_d, want_i = local.search(x[:10], 5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)


def test_disconnect_waits_and_raises_a_deferred_failure_once_closed(server: ServerProcess) -> None:
    fx.configure(server=server.endpoint, timeout=120, write_window=8)
    index = fx.IndexFlatL2(D, name="window-disconnect")
    x = rows(6, seed=14)
    for i in range(6):
        index.add(x[i : i + 1])
    refused_later("window-disconnect")
    with pytest.raises(InvalidArgument, match="deferred add to 'window-disconnect'"):
        fx.disconnect()
    assert fx.get_client() is None, "the client was not closed"
    fx.configure(server=server.endpoint, timeout=120)
    np.testing.assert_array_equal(fx.open_index("window-disconnect").reconstruct_n(0, 6), x)
    fx.delete_index("window-disconnect")
