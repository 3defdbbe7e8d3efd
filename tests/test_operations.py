"""Operating a server: Prometheus metrics, JSON request logs, request ids, health and status."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import faissx_client as fx
from faissx_core.errors import IndexNotFound, InvalidArgument
from faissx_core.progress import progress

from .conftest import FAISSX, free_port, ping, server_env

D = 8
X = np.random.default_rng(5).standard_normal((300, D)).astype("float32")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def families(port: int) -> set[str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {family.name for family in text_string_to_metric_families(body.decode())}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAISSX), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**server_env(), "COLUMNS": "200"},
    )


@pytest.fixture
def observed(start_server, tmp_path):
    """A durable server with metrics on, every request logged as JSON."""
    metrics_port = free_port()
    srv = start_server(
        "--data-dir",
        str(tmp_path / "data"),
        "--metrics-port",
        str(metrics_port),
        "--log-format",
        "json",
        "--log-requests",
        "all",
    )
    srv.metrics_port = metrics_port
    return srv


def test_metrics_move_with_real_traffic(observed):
    before = scrape(observed.metrics_port)
    assert value(before, "faissx_build_info", version=fx.__version__) == 1
    fx.configure(server=observed.endpoint)
    try:
        index = fx.IndexFlatL2(D, name="docs")
        index.add(X)
        index.search(X[:5], 3)
        index.search(X[:5], 3)
        with pytest.raises(InvalidArgument):
            index.search(np.zeros((2, D + 1), "float32"), 3)
        fx.get_client().call("snapshot", "docs")
        after = scrape(observed.metrics_port)
    finally:
        fx.disconnect()

    t = "default"
    assert (
        value(after, "faissx_requests_total", op="search", outcome="ok", tenant=t)
        - value(before, "faissx_requests_total", op="search", outcome="ok", tenant=t)
        == 2
    )
    assert (
        value(after, "faissx_requests_total", op="search", outcome="invalid_argument", tenant=t)
        == 1
    )
    assert value(after, "faissx_requests_total", op="add", outcome="ok", tenant=t) == 1
    # the latency histogram counted every search, and its buckets are cumulative
    assert value(after, "faissx_request_duration_seconds_count", op="search") == 3
    assert value(after, "faissx_request_duration_seconds_sum", op="search") > 0
    assert value(after, "faissx_request_duration_seconds_bucket", op="search", le="+Inf") == 3
    # bytes: the add carried 300 x 8 float32 values, its reply far less
    assert value(after, "faissx_request_bytes_total", op="add", tenant=t) > X.nbytes
    assert 0 < value(after, "faissx_response_bytes_total", op="add", tenant=t) < X.nbytes
    assert value(after, "faissx_response_bytes_total", op="search", tenant=t) > 0
    # state read at scrape time
    assert value(after, "faissx_index_vectors", tenant=t, index="docs") == 300
    assert value(after, "faissx_index_memory_bytes", tenant=t, index="docs") >= X.nbytes
    assert value(after, "faissx_tenant_vectors", tenant=t) == 300
    assert value(after, "faissx_tenant_indices", tenant=t) == 1
    # durability: the add was logged and fsynced, then the snapshot emptied the log
    assert value(after, "faissx_wal_fsync_duration_seconds_count") >= 1
    assert value(after, "faissx_snapshots_total", outcome="ok") >= 1  # the snapshot call
    assert value(after, "faissx_snapshot_duration_seconds_count") >= 1
    assert value(after, "faissx_wal_bytes", tenant=t, index="docs") == 0
    assert value(after, "faissx_connections") >= 1
    assert value(after, "faissx_connections_accepted_total") >= 1
    assert value(after, "faissx_start_time_seconds") <= time.time()


def test_every_metric_is_documented(start_server, tmp_path):
    """docs/operations.md has a row for each family a busy durable server exposes."""
    port = free_port()
    srv = start_server(
        "--data-dir", str(tmp_path / "data"), "--metrics-port", str(port), "--max-memory", "64"
    )
    fx.configure(server=srv.endpoint)
    try:
        fx.IndexFlatL2(D, name="documented").add(X[:10])
        exposed = families(port)
    finally:
        fx.disconnect()
    doc = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    rows = {line.split("`")[1] for line in doc.splitlines() if line.startswith("| `faissx_")}
    assert len(exposed) >= 20
    # counters are exposed as NAME_total; the parser names their family NAME
    assert {name if name in rows else f"{name}_total" for name in exposed} == rows


def test_retries_answered_by_idempotency_key_are_counted(observed):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(observed.endpoint)
    ids = iter(range(1, 100))

    def call(
        op: str, args: dict | None = None, idem: str | None = None, x: np.ndarray | None = None
    ) -> dict:
        arrays = [] if x is None else [{"name": "x", "dtype": "float32", "shape": list(x.shape)}]
        header = {
            "v": 1,
            "id": next(ids),
            "op": op,
            "index": "dedup",
            "args": args or {},
            "idem": idem,
            "arrays": arrays,
        }
        sock.send_multipart([msgpack.packb(header), *([] if x is None else [x])])
        assert sock.poll(30_000), "no reply"
        return msgpack.unpackb(sock.recv_multipart()[0])

    try:
        assert call("create", {"spec": {"type": "IndexFlatL2", "params": {"d": D}}})["ok"]
        key = uuid.uuid4().hex
        first, again = call("add", idem=key, x=X[:10]), call("add", idem=key, x=X[:10])
        assert first["result"] == again["result"] and first["result"]["ntotal"] == 10
    finally:
        sock.close(0)
    # a request is counted just after its reply leaves: give the last one a moment to land
    deadline = time.monotonic() + 10
    samples = scrape(observed.metrics_port)
    while (
        value(samples, "faissx_requests_deduplicated_total", op="add", tenant="default") < 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        samples = scrape(observed.metrics_port)
    assert value(samples, "faissx_requests_deduplicated_total", op="add", tenant="default") == 1
    assert value(samples, "faissx_requests_total", op="add", outcome="ok", tenant="default") == 2
    assert value(samples, "faissx_index_vectors", tenant="default", index="dedup") == 10


def test_json_request_log_names_each_request_and_never_a_key(start_server, tmp_path):
    keys = tmp_path / "keys.json"
    secret = "sk-very-secret-" + uuid.uuid4().hex
    keys.write_text(json.dumps({secret: "acme"}))
    srv = start_server(
        "--enable-auth", "--auth-file", str(keys), "--log-format", "json", "--log-requests", "all"
    )
    fx.configure(server=srv.endpoint, api_key=secret)
    try:
        index = fx.IndexFlatL2(D, name="logged")
        index.add(X[:20])
        with pytest.raises(IndexNotFound) as caught:
            fx.open_index("missing")
    finally:
        fx.disconnect()
    error = caught.value
    assert error.request_id is not None and len(error.request_id) == 16
    assert f"[request {error.request_id}]" in str(error)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the log line follows the reply
        lines = [json.loads(line) for line in srv.lines() if line.startswith("{")]
        requests = [e for e in lines if e["logger"] == "faissx.requests"]
        if any(e["request_id"] == error.request_id for e in requests):
            break
        time.sleep(0.1)
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in lines)
    failed = next(e for e in requests if e["request_id"] == error.request_id)
    assert failed["outcome"] == "index_not_found" and failed["level"] == "warning"
    assert failed["tenant"] == "acme" and failed["index"] == "missing"
    add = next(e for e in requests if e["op"] == "add")
    assert add["outcome"] == "ok" and add["index"] == "logged" and add["tenant"] == "acme"
    assert add["duration_ms"] >= 0 and add["bytes_in"] > X[:20].nbytes
    assert len({e["request_id"] for e in requests}) == len(requests)
    assert secret not in srv.output()


def test_a_server_on_a_reused_port_reads_only_its_own_log(start_server):
    """The harness's log is per server, not per port: the request-log test above once read an
    earlier test's server's lines when its port came round again."""
    first = start_server("--log-format", "json", "--log-requests", "all")
    logged = '"logger": "faissx.requests"'
    deadline = time.monotonic() + 20
    while logged not in first.output() and time.monotonic() < deadline:
        ping(first.endpoint)  # the readiness pings are requests too; their lines follow replies
        time.sleep(0.1)
    assert logged in first.output()
    first.kill()
    second = start_server(port=first.port)
    assert second.log != first.log
    assert ping(second.endpoint) and logged not in second.output()


def test_a_port_taken_before_the_server_binds_it_is_replaced(monkeypatch):
    """Test files run in two processes: the port the harness picked can be taken by another
    process's server or connection before this server binds it. A port the harness picked is
    then replaced; a port the test asked for is not."""
    from . import conftest

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy])
        monkeypatch.setattr(conftest, "free_port", lambda: next(picks, None) or free_port())
        srv = conftest.ServerProcess()
        assert srv.port == busy
        try:
            srv.start()
            assert srv.port != busy and srv.endpoint.endswith(f":{srv.port}")
            assert ping(srv.endpoint)
            assert "already in use" in srv.output()  # the first try's refusal, kept in its log
        finally:
            srv.kill()
        with pytest.raises(RuntimeError, match="already in use"):
            conftest.ServerProcess(port=busy).start()


def test_health_exit_codes_live_and_dead(server):
    live = cli("health", "--server", server.endpoint, "--timeout", "10")
    assert live.returncode == 0, live.stdout + live.stderr
    assert live.stdout.startswith("ok: faissx ") and len(live.stdout.splitlines()) == 1

    dead_endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    dead = cli("health", "--server", dead_endpoint, "--timeout", "0.5")
    assert dead.returncode == 1
    assert dead.stdout.strip() == f"unhealthy: no reply from {dead_endpoint} within 0.5s"

    bad = cli("health", "--server", "http://nope")
    assert bad.returncode == 1 and bad.stdout.startswith("unhealthy:")


def test_health_reports_a_server_that_dies(start_server):
    srv = start_server()
    assert cli("health", "--server", srv.endpoint, "--timeout", "10").returncode == 0
    srv.kill()
    assert cli("health", "--server", srv.endpoint, "--timeout", "0.5").returncode == 1


def test_status_shows_vitals_and_indices(start_server, tmp_path):
    srv = start_server("--data-dir", str(tmp_path / "data"))
    fx.configure(server=srv.endpoint)
    try:
        fx.IndexFlatL2(D, name="shown").add(X[:42])
        stats = fx.get_client().call("stats")[0]
    finally:
        fx.disconnect()
    assert stats["indexes"] == [
        {
            "name": "shown",
            "type": "IndexFlatL2",
            "ntotal": 42,
            "memory_bytes": stats["indexes"][0]["memory_bytes"],
            "log_bytes": stats["indexes"][0]["log_bytes"],
        }
    ]
    assert stats["indexes"][0]["log_bytes"] > X[:42].nbytes  # the add is in the log
    assert stats["durable"] and stats["fsync"] == "always" and stats["uptime_s"] > 0
    assert stats["requests"] >= 3  # touch, create, add (this stats call is counted after)
    assert stats["server"]["indexes"] == 1
    out = cli("status", "--server", srv.endpoint)
    assert out.returncode == 0, out.stdout + out.stderr
    for text in (
        "version",
        "uptime",
        "connections",
        "answered",
        "shown",
        "IndexFlatL2",
        "42",
        "fsync=always",
    ):
        assert text in out.stdout
    raw = json.loads(cli("status", "--server", srv.endpoint, "--json").stdout)
    assert raw["indexes"][0]["ntotal"] == 42


def test_read_only_key_sees_its_tenant_only_in_status(start_server, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key": "reader-key", "tenant": "acme", "role": "read"}]}))
    srv = start_server("--enable-auth", "--auth-file", str(keys))
    out = cli("status", "--server", srv.endpoint, "--api-key", "reader-key", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    stats = json.loads(out.stdout)
    assert stats["tenant"] == "acme" and "server" not in stats


def test_metrics_are_off_unless_asked(server):
    fx.configure(server=server.endpoint)  # the shared server: started without --metrics-port
    try:
        assert fx.get_client().call("stats")[0]["metrics_port"] is None
    finally:
        fx.disconnect()


def test_metrics_port_serves_on_the_bind_address(start_server):
    port = free_port()
    start_server("--metrics-port", str(port))
    with pytest.raises(OSError):  # bound to 127.0.0.1 only: not another local address
        urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5)
    assert value(scrape(port), "faissx_connections") >= 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    plain = io.StringIO()
    with progress("backup", 2, "indices", stream=plain) as steps:
        steps.advance(1, "acme/docs")
        steps.advance(1, "acme/faq")
    lines = plain.getvalue().splitlines()
    assert lines[:3] == [
        "backup: started (2 indices)",
        "backup: 1/2 indices acme/docs",
        "backup: 2/2 indices acme/faq",
    ]
    assert lines[3].startswith("backup: done in ") and len(lines) == 4
    assert "\x1b" not in plain.getvalue()  # no control characters in a log

    term = _Terminal()
    with progress("import docs", 1 << 20, "bytes", stream=term) as steps:
        steps.advance(1 << 20, "sent")
    assert "━" in term.getvalue() and "1.0/1.0 MiB" in term.getvalue()


def test_admin_commands_report_progress(start_server, tmp_path):
    srv = start_server("--data-dir", str(tmp_path / "data"))
    fx.configure(server=srv.endpoint)
    try:
        for name in ("one", "two"):
            fx.IndexFlatL2(D, name=name).add(X[:10])
    finally:
        fx.disconnect()
    snap = cli("snapshot", "--server", srv.endpoint)
    assert snap.returncode == 0, snap.stderr
    assert "snapshot: 1/2 indices one" in snap.stderr
    assert "snapshot: 2/2 indices two" in snap.stderr
    assert "snapshotted: one, two" in snap.stdout
    exported = tmp_path / "one.faiss"
    out = cli("indexes", "export", "one", str(exported), "--server", srv.endpoint)
    assert out.returncode == 0 and "export one: started" in out.stderr
    out = cli("indexes", "import", str(exported), "three", "--server", srv.endpoint)
    assert out.returncode == 0 and "import three: started (" in out.stderr, out.stderr
    out = cli("backup", str(tmp_path / "data"), str(tmp_path / "bk"))
    assert out.returncode == 0 and "backup: 3/3 indices" in out.stderr, out.stderr
    out = cli("restore", str(tmp_path / "bk"), str(tmp_path / "restored"))
    assert out.returncode == 0 and "restore: 3/3 indices" in out.stderr, out.stderr
