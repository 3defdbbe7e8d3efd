"""Fault injection against real server processes: restarts, crashes, freezes, many threads.

What each test proves:

* searches survive a ``kill -9`` and restart of the server: calls caught in the outage are
  retried and succeed once it is back, and ``on_reconnect`` callbacks run;
* an ``add`` the server applied and logged, but whose reply was lost to a crash, is applied once
  when the client retries it against the restarted server (its idempotency key comes back from
  the write-ahead log), whether the transport or ``with_retry`` does the retrying;
* a repeated idempotency key is answered from memory on a live server, also while the first
  request is still running;
* a frozen (SIGSTOP) or vanished server ends a call with ``ServerUnavailable`` (a
  ``ConnectionError`` naming server, op and attempts) in bounded time: through heartbeats and
  the retry budget well before the call's timeout, or at the timeout when retries are plenty;
* 16 threads sharing one client get their own replies, and one thread's long call does not hold
  the others up.

"Applied but reply lost" is made deterministic with the server's test hook
``FAISSX_TEST_CRASH_AFTER_WRITES=N`` (see faissx_core/server/idempotency.py): the server exits
right after logging its N-th keyed write, before replying.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq

import faissx_client as fx
from faissx_client import recovery
from faissx_core.errors import ServerUnavailable

from .conftest import HOOK_EXIT, ServerProcess, recovery_policy_kept, restart_when_hooked

D = 16
RNG = np.random.default_rng(2024)
BASE = RNG.standard_normal((2000, D), dtype="float32")


class Server(ServerProcess):
    """A server whose environment a test sets (the shared harness strips FAISSX_* variables)."""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
def servers():
    """Start servers of this test's own; all are killed (and thawed first) afterwards."""
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        srv = Server(*args, env=env).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.alive:
            srv.signal(signal.SIGCONT)
        srv.kill()


@pytest.fixture(autouse=True)
def clean_client():
    """Every test leaves local mode, the default retry policy and no callbacks behind."""
    with recovery_policy_kept():
        try:
            yield
        finally:
            fx.disconnect()


@pytest.fixture
def reconnects():
    """Count on_reconnect callbacks during the test."""
    calls: list[float] = []

    def count() -> None:
        calls.append(time.monotonic())

    recovery.on_reconnect(count)
    yield calls
    recovery.remove_reconnect_callback(count)


# -- the recovery API ------------------------------------------------------------------------


def test_recovery_is_importable_at_the_seeds_path():
    import faissx.client.recovery as seed_path
    from faissx.client.recovery import configure_recovery, on_reconnect, with_retry

    assert seed_path is recovery
    assert (configure_recovery, on_reconnect, with_retry) == (
        fx.configure_recovery,
        fx.on_reconnect,
        fx.with_retry,
    )


def test_backoff_grows_is_capped_and_jittered():
    policy = recovery.configure_recovery(4, 0.1, 3.0, 1.0, jitter=0.5)
    assert policy.max_retries == 4
    for retry, base in [(1, 0.1), (2, 0.3), (3, 0.9), (4, 1.0), (9, 1.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(base * 0.5 <= d <= base + 1e-9 for d in delays), (retry, min(delays))
        assert len(set(delays)) > 1, "no jitter"
    assert recovery.configure_recovery(jitter=0).delay(2) == pytest.approx(0.3)
    for bad in ({"max_retries": -1}, {"backoff_factor": 0.5}, {"jitter": 2.0}):
        with pytest.raises(ValueError):
            recovery.configure_recovery(**bad)


def test_with_retry_repeats_keys_and_gives_up_with_the_last_error():
    recovery.configure_recovery(max_retries=2, initial_backoff=0.0)
    runs: list[list[str]] = []

    def flaky() -> str:
        keys = [recovery.new_idempotency_key(), recovery.new_idempotency_key()]
        runs.append(keys)
        if len(runs) < 3:
            raise ServerUnavailable("down", attempts=1)
        return "done"

    assert recovery.with_retry(flaky) == "done"
    assert runs[0] == runs[1] == runs[2], "a rerun must reuse its writes' keys"
    assert recovery.new_idempotency_key() not in runs[0], "outside with_retry keys are fresh"
    failures: list[int] = []

    def always_down() -> None:
        failures.append(1)
        raise ServerUnavailable("still down")

    with pytest.raises(ServerUnavailable, match="still down"):
        recovery.with_retry(always_down)
    assert len(failures) == 3, "one run plus max_retries reruns"
    with pytest.raises(KeyError):  # anything but a ConnectionError passes through at once
        recovery.with_retry(lambda: {}["missing"])


# -- restarts and crashes --------------------------------------------------------------------


def test_searches_survive_kill_and_restart(servers, tmp_path, reconnects):
    srv = servers("--data-dir", str(tmp_path / "data"))
    fx.configure(server=srv.endpoint, timeout=20, heartbeat=0.2)
    recovery.configure_recovery(
        max_retries=100, initial_backoff=0.05, backoff_factor=2, max_backoff=0.5
    )
    index = fx.IndexFlatL2(D, name="docs")
    index.add(BASE)
    stop = threading.Event()
    calls: dict[int, list[tuple[float, float, str]]] = {t: [] for t in range(4)}

    def searcher(thread: int) -> None:
        rng = np.random.default_rng(thread)
        while not stop.is_set():
            ids = rng.integers(0, len(BASE), 3)
            begin = time.monotonic()
            try:
                _, found = index.search(BASE[ids], 1)
                outcome = "ok" if found[:, 0].tolist() == ids.tolist() else "wrong"
            except ServerUnavailable:
                outcome = "unavailable"
            except Exception as exc:  # anything else (a bare zmq error, say) fails the test
                outcome = f"{type(exc).__name__}: {exc}"
            calls[thread].append((begin, time.monotonic(), outcome))

    threads = [threading.Thread(target=searcher, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        srv.stop(signal.SIGKILL)
        time.sleep(0.5)
        restart = time.monotonic()
        srv.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            sum(end > restart and out == "ok" for _, end, out in c) >= 20 for c in calls.values()
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a search hung"
    for thread, record in calls.items():
        outcomes = {out for _, _, out in record}
        assert outcomes <= {"ok", "unavailable"}, outcomes
        assert all(end - begin <= 20 + 2 for begin, end, _ in record), "past the timeout"
        across = [c for c in record if c[0] < restart < c[1] and c[2] == "ok"]
        assert across, f"thread {thread}: no search caught in the outage came through"
        assert sum(end > restart and out == "ok" for _, end, out in record) >= 20
    assert reconnects, "on_reconnect did not run"


@pytest.mark.parametrize("op", ["add", "add_with_ids"])
def test_write_applied_but_reply_lost_is_applied_once(servers, tmp_path, op, reconnects):
    data = tmp_path / "data"
    srv = servers("--data-dir", str(data), env={"FAISSX_TEST_CRASH_AFTER_WRITES": "2"})
    fx.configure(server=srv.endpoint, timeout=30, heartbeat=0.2)
    recovery.configure_recovery(max_retries=100, initial_backoff=0.05, max_backoff=0.5)
    first, second = BASE[:300], BASE[300:500]
    ids = np.arange(1000, 1500, dtype="int64")  # add_with_ids: ids far from positions
    if op == "add":
        index = fx.IndexFlatL2(D, name="once")
        write = index.add
        index.add(first)  # keyed write 1
    else:
        index = fx.IndexIDMap2(fx.IndexFlatL2(D), name="once")
        write = lambda x: index.add_with_ids(x, ids[300:500])  # noqa: E731
        index.add_with_ids(first, ids[:300])
    outcome: list[object] = []
    writer = threading.Thread(target=lambda: outcome.append(_attempt(write, second)))
    writer.start()  # keyed write 2: applied and logged, then the server exits unanswered
    assert srv.proc.wait(15) == HOOK_EXIT, "the test hook did not fire"
    assert writer.is_alive(), "the client must still be retrying the lost write"
    srv.env = {}
    srv.start()  # same port, same data directory, no hook
    writer.join(30)
    assert not writer.is_alive() and outcome == [None], outcome
    assert index.ntotal == 500, "the retried write was applied twice (or not at all)"
    _, found = index.search(second, 2)
    expected = np.arange(300, 500) if op == "add" else ids[300:500]
    assert found[:, 0].tolist() == expected.tolist()
    assert not (found[:, 0] == found[:, 1]).any(), "a vector is stored twice"
    if op == "add":
        np.testing.assert_array_equal(index.reconstruct_n(0, 500), BASE[:500])
    assert reconnects


def test_with_retry_reruns_a_failed_write_without_applying_it_twice(servers, tmp_path):
    srv = servers("--data-dir", str(tmp_path / "data"), env={"FAISSX_TEST_CRASH_AFTER_WRITES": "1"})
    # Each call gives up after 1 s, and the server stays away longer: the transport's own
    # retries fail, and with_retry must run the function again.
    fx.configure(server=srv.endpoint, timeout=1.0, heartbeat=0.2)
    index = fx.IndexFlatL2(D, name="rerun")
    recovery.configure_recovery(max_retries=50, initial_backoff=0.1, max_backoff=0.3)
    runs: list[int] = []
    problems: list[str] = []

    def add_once() -> None:
        runs.append(1)
        index.add(BASE[:100])

    restarter = restart_when_hooked(srv, problems, wait=15, pause=1.5)
    recovery.with_retry(add_once)
    restarter.join(30)
    assert not problems, problems
    assert len(runs) >= 2, "the first run should have failed: its server crashed"
    assert index.ntotal == 100, "a rerun applied the write again"


def test_repeated_key_is_answered_from_memory(server):
    """On a live server: a repeat while the first runs, and one after it finished."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    name = "hnsw"
    ids = iter(range(1, 100))

    def send(op, args=None, arrays=None, idem=None):
        header = {
            "v": 1,
            "id": next(ids),
            "op": op,
            "index": name,
            "args": args or {},
            "tenant": tenant,
            "idem": idem,
        }
        descs, frames = [], []
        for key, arr in (arrays or {}).items():
            descs.append({"name": key, "dtype": str(arr.dtype), "shape": list(arr.shape)})
            frames.append(arr)
        sock.send_multipart([msgpack.packb({**header, "arrays": descs}), *frames])
        return header["id"]

    def replies(count):
        got = {}
        while len(got) < count:
            assert sock.poll(30_000), "no reply"
            reply = msgpack.unpackb(sock.recv_multipart()[0])
            got[reply["id"]] = reply
        return got

    try:
        send("create", {"spec": {"type": "IndexHNSWFlat", "params": {"d": D, "M": 16}}})
        replies(1)
        x = np.random.default_rng(3).standard_normal((20000, D), dtype="float32")
        key = uuid.uuid4().hex
        # HNSW insertion takes a while: the repeat arrives while the first is running
        a, b = send("add", arrays={"x": x}, idem=key), send("add", arrays={"x": x}, idem=key)
        got = replies(2)
        assert got[a]["ok"] and got[a]["result"] == got[b]["result"]
        assert got[a]["result"]["ntotal"] == 20000
        c = send("add", arrays={"x": x}, idem=key)  # long after: remembered
        assert replies(1)[c]["result"]["ntotal"] == 20000
        d = send("reset", idem=key)  # the same key for another request is refused
        assert replies(1)[d]["error"]["code"] == "invalid_argument"
        e = send("info")
        assert replies(1)[e]["result"]["ntotal"] == 20000
    finally:
        sock.close(0)


# -- a server that stays away ----------------------------------------------------------------


def test_frozen_server_fails_fast_then_recovers(servers, reconnects):
    srv = servers()
    fx.configure(server=srv.endpoint, timeout=30, heartbeat=0.2)
    recovery.configure_recovery(
        max_retries=2, initial_backoff=0.1, backoff_factor=2, max_backoff=0.5
    )
    index = fx.IndexFlatL2(D)
    index.add(BASE)
    srv.signal(signal.SIGSTOP)
    begin = time.monotonic()
    with pytest.raises(ServerUnavailable) as caught:
        index.search(BASE[:2], 1)
    elapsed = time.monotonic() - begin
    # heartbeats notice the silence and the retry budget runs out long before the 30 s timeout
    assert elapsed < 10, elapsed
    error = caught.value
    assert isinstance(error, ConnectionError)
    assert error.details["attempts"] == 3 and error.details["op"] == "search"
    assert srv.endpoint in str(error) and "'search'" in str(error) and "3 attempt" in str(error)
    srv.signal(signal.SIGCONT)
    _, found = index.search(BASE[:2], 1)  # the thawed server is found again
    assert found[:, 0].tolist() == [0, 1]
    assert reconnects, "on_reconnect did not run"


def test_dead_server_fails_within_the_timeout(servers):
    srv = servers()
    fx.configure(server=srv.endpoint, timeout=2, heartbeat=0.2)
    recovery.configure_recovery(max_retries=1000, initial_backoff=0.05, max_backoff=0.2)
    index = fx.IndexFlatL2(D)
    index.add(BASE[:10])
    srv.stop(signal.SIGKILL)
    for call in (lambda: index.search(BASE[:1], 1), lambda: index.add(BASE[:1])):
        begin = time.monotonic()
        with pytest.raises(ServerUnavailable) as caught:
            call()
        assert time.monotonic() - begin < 2 + 1.5
        assert caught.value.details["attempts"] > 1, "it should have retried meanwhile"


# -- many threads, one client ----------------------------------------------------------------


def test_sixteen_threads_share_one_client(remote):
    shared = remote.IndexFlatL2(D)
    shared.add(BASE)
    sink = remote.IndexFlatL2(D)
    big = remote.IndexFlatL2(64)
    big.add(RNG.standard_normal((100_000, 64), dtype="float32"))
    long_queries = RNG.standard_normal((2000, 64), dtype="float32")
    long_done = threading.Event()
    during_long: list[int] = []
    errors: list[str] = []

    def long_search() -> None:
        try:
            big.search(long_queries, 10)
        finally:
            long_done.set()

    def worker(thread: int) -> None:
        rng = np.random.default_rng(100 + thread)
        own = remote.IndexFlatL2(D)
        mine = rng.standard_normal((30, D), dtype="float32") + 10 * (thread + 1)
        try:
            for step in range(30):
                ids = rng.integers(0, len(BASE), int(rng.integers(1, 5)))
                _, found = shared.search(BASE[ids], 1)
                if found[:, 0].tolist() != ids.tolist():
                    errors.append(f"thread {thread}: got another thread's search reply")
                own.add(mine[step : step + 1])
                sink.add(mine[step : step + 1])
                _, found = own.search(mine[step : step + 1], 1)
                if found[0, 0] != step or own.ntotal != step + 1:
                    errors.append(f"thread {thread}: its own index answered wrongly")
                if not long_done.is_set():
                    during_long.append(thread)
        except Exception as exc:
            errors.append(f"thread {thread}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=long_search)]
    threads += [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    begin = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, 60 - (time.monotonic() - begin)))
    assert not any(thread.is_alive() for thread in threads), "deadlock: threads still running"
    assert not errors, errors[:5]
    assert sink.ntotal == 16 * 30, "a write was lost or applied twice"
    assert during_long, "every thread waited for one thread's long search"


def _attempt(fn, *args):
    try:
        fn(*args)
    except Exception as exc:
        return exc
    return None
