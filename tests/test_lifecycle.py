"""Remote index lifecycle: named indices persist and re-attach; unnamed ones leak nothing."""

from __future__ import annotations

import gc
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq

import faissx_client as fx
from faissx_core.errors import IndexExists, IndexNotFound

X = np.random.default_rng(7).standard_normal((200, 16)).astype("float32")


def unique(prefix: str = "idx") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def server_has(name: str) -> bool:
    try:
        fx.get_client().call("info", name)
        return True
    except IndexNotFound:
        return False


def test_named_index_is_shared_and_reattachable(remote, server):
    name = unique()
    index = remote.IndexFlatL2(16, name=name)
    assert server_has(name), "a named index is created at once"
    index.add(X)
    assert name in [i["name"] for i in remote.list_indexes()]
    remote.disconnect()
    remote.configure(server=server.endpoint)  # a different client process would see the same
    again = remote.open_index(name)
    assert type(again).__name__ == "IndexFlatL2" and isinstance(again, remote.IndexFlatL2)
    assert again.ntotal == 200 and again.d == 16
    np.testing.assert_array_equal(again.search(X[:3], 2)[1][:, 0], [0, 1, 2])
    with pytest.raises(IndexExists):
        remote.IndexFlatL2(16, name=name)
    remote.delete_index(name)
    with pytest.raises(KeyError):
        remote.open_index(name)
    with pytest.raises(IndexNotFound):
        again.search(X[:1], 1)


def test_unnamed_index_is_created_lazily_and_dropped_on_gc(remote):
    index = remote.IndexFlatIP(16)
    name = index.name
    assert not server_has(name), "nothing exists on the server before the first call"
    index.add(X)
    assert server_has(name)
    assert name not in [i["name"] for i in remote.list_indexes()], "unnamed indices are private"
    del index
    gc.collect()
    deadline = time.monotonic() + 5
    while server_has(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server_has(name), "collecting the proxy drops the server-side index"


def test_disconnect_drops_unnamed_indices(remote, server):
    kept = remote.IndexFlatL2(16)
    kept.add(X)
    name = kept.name
    remote.disconnect()
    remote.configure(server=server.endpoint)
    assert not server_has(name)


def raw_call(endpoint: str, header: dict) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"v": 1, "id": 1, "arrays": [], **header}))
        assert sock.poll(5000), "no reply"
        return msgpack.unpackb(sock.recv_multipart()[0])
    finally:
        sock.close(0)


def test_idle_expiry_reclaims_indices_of_a_vanished_client(start_server):
    srv = start_server("--idle-ttl", "1")
    spec = {"type": "IndexFlatL2", "params": {"d": 4}}
    reply = raw_call(
        srv.endpoint,
        {
            "op": "create",
            "index": "orphan",
            "session": "gone",
            "args": {"spec": spec, "ephemeral": True},
        },
    )
    assert reply["ok"], reply
    assert raw_call(srv.endpoint, {"op": "info", "index": "orphan", "session": "gone"})["ok"]
    # Probe from outside the session (which would keep it alive): the name stays taken
    # until the server reclaims the orphan, then a durable index may be created under it.
    claim = {"op": "create", "index": "orphan", "args": {"spec": spec}}
    assert raw_call(srv.endpoint, claim)["error"]["code"] == "index_exists"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = raw_call(srv.endpoint, claim)
        if reply["ok"]:
            break
        time.sleep(0.2)
    assert reply["ok"], reply


def test_tenants_do_not_see_each_other(server):
    name = unique("same-name")
    fx.configure(server=server.endpoint, tenant_id="team-a")
    try:
        a = fx.IndexFlatL2(16, name=name)
        a.add(X[:10])
        fx.configure(server=server.endpoint, tenant_id="team-b")
        assert name not in [i["name"] for i in fx.list_indexes()]
        with pytest.raises(IndexNotFound) as err:
            fx.open_index(name)
        assert "team-a" not in str(err.value)
        b = fx.IndexFlatL2(16, name=name)  # the same name is free in another tenant
        b.add(X[:3])
        assert b.ntotal == 3
        fx.delete_index(name)
        fx.configure(server=server.endpoint, tenant_id="team-a")
        assert fx.open_index(name).ntotal == 10
        fx.delete_index(name)
    finally:
        fx.disconnect()


def test_named_index_survives_clean_restart_with_data_dir(start_server, tmp_path):
    srv = start_server("--data-dir", str(tmp_path / "data"))
    fx.configure(server=srv.endpoint)
    try:
        named = fx.IndexFlatL2(16, name="kept")
        named.add(X)
        expected = named.search(X[:5], 3)
        fx.IndexFlatL2(16).add(X)  # unnamed: must not be persisted
        fx.disconnect()
        assert srv.stop() == 0
        srv.start()
        fx.configure(server=srv.endpoint)
        assert [i["name"] for i in fx.list_indexes()] == ["kept"]
        again = fx.open_index("kept")
        assert again.ntotal == 200
        for got, want in zip(again.search(X[:5], 3), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        fx.delete_index("kept")
        assert not (tmp_path / "data" / "tenants" / "default" / "kept").exists()
    finally:
        fx.disconnect()


def test_remote_mode_never_builds_local_indices(remote):
    import faiss

    index = remote.IndexFlat(16, faiss.METRIC_INNER_PRODUCT)
    assert not isinstance(index, faiss.Index)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert remote.normalize_L2 is faiss.normalize_L2  # non-index names pass through
    assert remote.METRIC_L2 == faiss.METRIC_L2


def test_local_backend_refuses_shards(remote):
    """shards=/replicas= need --backend ray: the single-process server says so, creates nothing."""
    with pytest.raises(fx.UnsupportedOperation, match="--backend ray"):
        remote.IndexFlatL2(16, name="not-sharded", shards=2)
    assert "not-sharded" not in [i["name"] for i in remote.list_indexes()]
    with pytest.raises(ValueError, match="shards must be a positive int"):
        remote.IndexFlatL2(16, name="not-sharded", shards=0)
