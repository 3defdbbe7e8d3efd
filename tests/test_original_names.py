"""The original FAISSx's public names (github.com/muxi-ai/faissx) as aliases of ours.

Code written for the original imports ``faissx.client.indices.<module>.<Class>``,
``from faissx import configure``, ``FaissXClient`` / ``get_client()`` and calls its methods by
index name, ``index.set_nprobe()``, ``merge_indices``/``split_index`` with its keywords. Each is
checked for behaviour, against local faiss where it returns results; remote behaviour against
the real server. Also: ``from faissx import client`` never loads server code (a fresh
interpreter proves it), and ``faissx.server`` is the same module object under both names.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from faissx_core.errors import InvalidArgument, NotConfigured, UnsupportedOperation

D = 8
RNG = np.random.default_rng(7)
XB = RNG.standard_normal((200, D)).astype("float32")
XQ = RNG.standard_normal((5, D)).astype("float32")


@pytest.fixture(params=["local", "remote"])
def fx(request, server):
    from faissx import client

    if request.param == "remote":
        client.configure(server=server.endpoint, timeout=20)
    try:
        yield client
    finally:
        client.disconnect()


def remote(index) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


# -- the client never loads the server ---------------------------------------------------------

SERVER_MODULES = (
    "faissx_core.server",
    "faissx_core.server.storage",
    "faissx_core.server.auth",
    "faissx_core.server.limits",
)


def _fresh(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    "statement",
    [
        "from faissx import client",
        "import faissx.client.recovery, faissx.client.optimization, faissx.client.modification",
        "from faissx.client.indices.flat import IndexFlatL2",
        "from faissx.client.client import FaissXClient, get_client",
        "import faissx; faissx.IndexFlatL2; faissx.configure",
    ],
)
def test_client_imports_no_server_code(statement):
    loaded = _fresh(f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))").split()
    assert "faissx_client" in loaded
    leaked = [
        m
        for m in loaded
        if m == "faissx.server" or any(m == s or m.startswith(s + ".") for s in SERVER_MODULES)
    ]
    assert leaked == []


def test_server_alias_is_the_same_module_when_asked():
    out = _fresh(
        "import sys, faissx\n"
        "assert 'faissx_core.server' not in sys.modules\n"
        "from faissx import server\n"
        "import faissx.server, faissx_core.server, faissx.server.app, faissx_core.server.app\n"
        "assert server is faissx.server is faissx_core.server is sys.modules['faissx.server']\n"
        "assert sys.modules['faissx.server.app'] is faissx_core.server.app\n"
        "assert faissx_core.server.__spec__.name == 'faissx_core.server'\n"
        "import faissx.client.recovery as a, faissx_client.recovery as b\n"
        "assert a is b and sys.modules['faissx.client'] is sys.modules['faissx_client']\n"
        "print('ok')"
    )
    assert out.strip() == "ok"


def test_unknown_names_still_fail():
    import faissx

    with pytest.raises(AttributeError):
        faissx.no_such_name  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("faissx.client.indices.no_such_module")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("faissx.client.no_such_module")


# -- module layout -------------------------------------------------------------------------------

ORIGINAL_CLASSES = {
    "faissx.client.indices.flat": ["IndexFlatL2"],
    "faissx.client.indices.hnsw_flat": ["IndexHNSWFlat"],
    "faissx.client.indices.ivf_flat": ["IndexIVFFlat"],
    "faissx.client.indices.pq": ["IndexPQ"],
    "faissx.client.indices.ivf_pq": ["IndexIVFPQ"],
    "faissx.client.indices.scalar_quantizer": ["IndexScalarQuantizer"],
    "faissx.client.indices.ivf_sq": ["IndexIVFScalarQuantizer"],
    "faissx.client.indices.ivf_scalar_quantizer": ["IndexIVFScalarQuantizer"],
    "faissx.client.indices.id_map": ["IndexIDMap", "IndexIDMap2"],
    "faissx.client.indices.binary_flat": ["IndexBinaryFlat"],
    "faissx.client.indices.binary_ivf": ["IndexBinaryIVF"],
    "faissx.client.indices.binary_hash": ["IndexBinaryHash"],
    "faissx.client.indices.pre_transform": ["IndexPreTransform"],
    "faissx.client.indices.factory": ["index_factory"],
    "faissx.client.indices.io": ["read_index", "write_index"],
    "faissx.client.index": ["IndexFlatL2", "IndexIVFPQ", "IndexScalarQuantizer"],
    "faissx.client.indices": ["IndexFlatL2", "IndexIDMap2", "read_index", "index_factory"],
}


@pytest.mark.parametrize("module", sorted(ORIGINAL_CLASSES))
def test_original_modules_hold_our_objects(module):
    import faissx_client
    from faissx_client import modification

    mod = importlib.import_module(module)
    assert sys.modules[module] is mod
    for name in ORIGINAL_CLASSES[module]:
        assert getattr(mod, name) is getattr(faissx_client, name)
    if module == "faissx.client.indices":
        assert mod.merge_indices is modification.merge_indices
        assert mod.split_index is modification.split_index


def test_indices_modification_module():
    from faissx.client.indices.modification import merge_indices, split_index

    from faissx_client import modification

    assert (merge_indices, split_index) == (modification.merge_indices, modification.split_index)


def test_class_from_original_module_searches_like_faiss(fx):
    from faissx.client.indices.flat import IndexFlatL2
    from faissx.client.indices.ivf_flat import IndexIVFFlat

    index = IndexFlatL2(D)
    assert remote(index) == fx.is_remote()
    index.add(XB)
    ref = faiss.IndexFlatL2(D)
    ref.add(XB)
    np.testing.assert_array_equal(index.search(XQ, 4)[1], ref.search(XQ, 4)[1])

    ivf = IndexIVFFlat(IndexFlatL2(D), D, 4)
    ivf.train(XB)
    ivf.add(XB)
    ivf.set_nprobe(4)  # the original's spelling; all lists: exact
    assert ivf.nprobe == 4
    np.testing.assert_array_equal(ivf.search(XQ, 4)[1], ref.search(XQ, 4)[1])


def test_set_nprobe_validates_and_is_refused_where_there_is_none(fx):
    from faissx.client.index import IndexIVFFlat

    ivf = IndexIVFFlat(fx.IndexFlatL2(D), D, 4)
    with pytest.raises(ValueError):
        ivf.set_nprobe(-1)
    flat = fx.IndexFlatL2(D)
    with pytest.raises(AttributeError, match="nprobe"):
        flat.set_nprobe(3)


# -- top level -----------------------------------------------------------------------------------


def test_top_level_names(server):
    import faissx
    import faissx_client

    for name in (
        "IndexFlatL2",
        "IndexIVFFlat",
        "IndexHNSWFlat",
        "IndexPQ",
        "IndexIVFPQ",
        "IndexScalarQuantizer",
        "IndexIDMap",
        "IndexIDMap2",
    ):
        assert getattr(faissx, name) is getattr(faissx_client, name)
        assert name in faissx.__all__
    from faissx import configure

    try:
        client = configure(url=server.endpoint, request_timeout=15000, connection_timeout=2000)
        assert faissx_client.get_client() is client
        assert client.settings.timeout == 15.0
        index = faissx.IndexFlatL2(D)
        assert remote(index)
        index.add(XB[:10])
        assert index.ntotal == 10
        with pytest.raises(InvalidArgument):
            configure(url=server.endpoint, timeout=3, request_timeout=1000)
    finally:
        faissx_client.disconnect()


# -- FaissXClient --------------------------------------------------------------------------------


def test_get_client_is_none_locally_and_a_faissx_client_remotely(server):
    from faissx.client.client import FaissXClient, get_client

    import faissx_client

    assert get_client() is None
    faissx_client.configure(server=server.endpoint, timeout=20)
    try:
        client = get_client()
        assert isinstance(client, FaissXClient) and client.mode == "remote"
        assert client.get_client() is client
        assert client.call("ping")[0] is not None  # our API too
    finally:
        faissx_client.disconnect()


def test_faissx_client_by_name_against_faiss(server):
    from faissx.client.client import FaissXClient

    client = FaissXClient()
    assert client.mode == "local" and client.get_client() is None
    with pytest.raises(NotConfigured):
        client.add_vectors("x", XB)
    client.configure(server=server.endpoint, timeout=20)
    name = "orig-fxc-flat"
    try:
        made = client.create_index(name, D, "L2")
        assert made["success"] and made["index_id"] == name and made["dimension"] == D
        added = client.add_vectors(name, XB[:150])
        assert (added["count"], added["total"]) == (150, 150)
        added = client.batch_add_vectors(name, XB[150:], batch_size=7)
        assert (added["count"], added["total"]) == (50, 200)
        ref = faiss.IndexFlatL2(D)
        ref.add(XB)
        dist, ids = ref.search(XQ, 3)
        found = client.search(name, XQ, k=3)
        assert found["success"] and len(found["results"]) == len(XQ)
        assert [r["indices"] for r in found["results"]] == ids.tolist()
        np.testing.assert_allclose([r["distances"] for r in found["results"]], dist, rtol=1e-5)
        batched = client.batch_search(name, XQ, k=3, batch_size=2)
        assert [r["indices"] for r in batched["results"]] == ids.tolist()
        lims, _, rids = ref.range_search(XQ, 6.0)
        ranged = client.batch_range_search(name, XQ, 6.0, batch_size=2)["results"]
        assert [r["query_index"] for r in ranged] == list(range(len(XQ)))
        for i, r in enumerate(ranged):
            assert sorted(r["indices"]) == sorted(rids[lims[i] : lims[i + 1]].tolist())
        assert client.reconstruct(name, 17)["vector"] == pytest.approx(XB[17].tolist())
        many = client.reconstruct_n(name, 20, 5)["vectors"]
        np.testing.assert_allclose(many, XB[20:25])
        sr = client.search_and_reconstruct(name, XQ[:2], k=2)["results"]
        np.testing.assert_allclose(sr[0]["vectors"], XB[ids[0, :2]])
        stats = client.get_index_stats(name)
        assert (stats["dimension"], stats["ntotal"]) == (D, 200)
        assert name in {i["name"] for i in client.list_indexes()["indexes"]}
        with pytest.raises(UnsupportedOperation, match="_send_request"):
            client._send_request({"action": "ping"})
    finally:
        client.delete_index(name)
        assert name not in {i["name"] for i in client.list_indexes()["indexes"]}
        client.close()
    assert client.mode == "local"


def test_faissx_client_index_types_and_search_params(server):
    from faissx_client.original import FaissXClient, factory_description

    assert factory_description("IVF4_SQ8") == ("IVF4,SQ8", faiss.METRIC_L2, False)
    assert factory_description("IDMap2:L2") == ("IDMap2,Flat", faiss.METRIC_L2, False)
    assert factory_description("HNSW16_IP") == ("HNSW16", faiss.METRIC_INNER_PRODUCT, False)
    assert factory_description("NORM,L2") == ("L2norm,Flat", faiss.METRIC_L2, False)
    assert factory_description("BINARY_FLAT") == ("BFlat", faiss.METRIC_L2, True)
    client = FaissXClient()
    client.configure(server=server.endpoint, timeout=20)
    try:
        client.create_index("orig-fxc-ivf", D, "IVF4_IP")
        client.train_index("orig-fxc-ivf", XB)
        client.add_vectors("orig-fxc-ivf", XB)
        ref = faiss.index_factory(D, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
        ref.train(XB)
        ref.add(XB)
        ref.nprobe = 4
        found = client.search("orig-fxc-ivf", XQ, k=3, params={"nprobe": 4})["results"]
        assert [r["indices"] for r in found] == ref.search(XQ, 3)[1].tolist()
        # the parameter was for that search only
        assert client.get_index_stats("orig-fxc-ivf")["ntotal"] == len(XB)
        assert client._index("orig-fxc-ivf").nprobe == 1

        client.create_index("orig-fxc-bin", 64, "BINARY_FLAT")  # bits, as in faiss
        codes = RNG.integers(0, 256, (20, 8), dtype=np.uint8)
        client.add_vectors("orig-fxc-bin", codes)
        bref = faiss.IndexBinaryFlat(64)
        bref.add(codes)
        got = client.search("orig-fxc-bin", codes[:3], k=2)["results"]
        assert [r["indices"] for r in got] == bref.search(codes[:3], 2)[1].tolist()
    finally:
        for name in ("orig-fxc-ivf", "orig-fxc-bin"):
            client.delete_index(name)
        client.close()


def test_faissx_client_merge_indices_keeps_sources(server):
    from faissx_client.original import FaissXClient

    client = FaissXClient()
    client.configure(server=server.endpoint, timeout=20)
    names = ["orig-m-target", "orig-m-a", "orig-m-b"]
    try:
        for name in names:
            client.create_index(name, D, "L2")
        client.add_vectors("orig-m-a", XB[:30])
        client.add_vectors("orig-m-b", XB[30:70])
        merged = client.merge_indices("orig-m-target", ["orig-m-a", "orig-m-b"])
        assert merged["success"] and merged["ntotal"] == 70
        assert client.get_index_stats("orig-m-a")["ntotal"] == 30  # sources unchanged
        ref = faiss.IndexFlatL2(D)
        ref.add(XB[:70])
        got = client.search("orig-m-target", XQ, k=4)["results"]
        assert [r["indices"] for r in got] == ref.search(XQ, 4)[1].tolist()
    finally:
        for name in names:
            client.delete_index(name)
        client.close()


# -- recovery and server -------------------------------------------------------------------------


def test_on_disconnect_and_is_connected(start_server):
    from faissx.client import recovery

    from faissx_client import configure, disconnect

    events: list[str] = []
    down = recovery.on_disconnect(lambda: events.append("down"))
    up = recovery.on_reconnect(lambda: events.append("up"))
    assert recovery.is_connected() is False  # local mode
    proc = start_server()
    try:
        configure(server=proc.endpoint, timeout=30)
        recovery.configure_recovery(max_retries=50, initial_backoff=0.05, max_backoff=0.2)
        index = __import__("faissx_client").IndexFlatL2(D)
        index.add(XB[:5])
        assert recovery.is_connected() is True and events == []
        port = proc.port
        proc.kill()
        start_server(port=port)
        __import__("faissx_client").get_client().call("touch")  # retried until it answers
        assert events == ["down", "up"]
        assert recovery.is_connected() is True  # (start_server stops it after the goodbye)
    finally:
        recovery.remove_disconnect_callback(down)
        recovery.remove_reconnect_callback(up)
        recovery.reset_recovery()
        disconnect()
    with pytest.raises(TypeError):
        recovery.on_disconnect("not callable")


def test_server_get_config_and_home_in_data_dir(tmp_path, monkeypatch):
    from faissx import server

    monkeypatch.setenv("HOME", str(tmp_path))
    server.configure(port=45999, data_dir="~/faissx-data", auth_keys={"secret-key-1": "t1"})
    try:
        config = server.get_config()
        assert config["port"] == 45999
        assert config["data_dir"] == str(tmp_path / "faissx-data")
        assert list(config["auth_keys"].values()) == ["t1"]
        assert "secret-key-1" not in repr(config)
        config["port"] = 1  # a copy
        assert server.get_config()["port"] == 45999
    finally:
        server.configure()


def test_cli_expands_home_in_data_dir(tmp_path, monkeypatch):
    """``--data-dir=~/x`` (no shell expansion after '=') lands in the home directory."""
    from tests.conftest import ServerProcess

    monkeypatch.setenv("HOME", str(tmp_path))
    proc = ServerProcess("--data-dir=~/fx-data")
    proc.env = {"HOME": str(tmp_path)}
    proc.start()
    try:
        from faissx_client import configure, disconnect

        configure(server=proc.endpoint, timeout=20)
        index = __import__("faissx_client").IndexFlatL2(D, name="home-dir")
        index.add(XB[:3])
        disconnect()
        assert (tmp_path / "fx-data").is_dir()
        assert not Path("~").exists()
        assert any((tmp_path / "fx-data").rglob("*"))
    finally:
        proc.kill()


# -- merge / split keywords ----------------------------------------------------------------------


def _three(fx):
    flat = fx.IndexFlatL2(D)
    flat.add(XB[:10])
    idmap = fx.IndexIDMap(fx.IndexFlatL2(D))
    idmap.add_with_ids(XB[10:20], np.arange(100, 110))
    idmap2 = fx.IndexIDMap2(fx.IndexFlatL2(D))
    idmap2.add_with_ids(XB[20:30], np.arange(200, 210))
    return flat, idmap, idmap2


def test_merge_different_wrapper_types(fx):
    from faissx.client.indices import merge_indices

    flat, idmap, idmap2 = _three(fx)
    merged = merge_indices([flat, idmap, idmap2])  # positional result: ids by position
    assert remote(merged) == fx.is_remote() and merged.ntotal == 30
    ref = faiss.IndexFlatL2(D)
    ref.add(XB[:30])
    np.testing.assert_array_equal(merged.search(XQ, 5)[1], ref.search(XQ, 5)[1])

    merged = merge_indices([idmap2, flat, idmap])  # an IDMap2 result keeps ids
    assert merged.ntotal == 30
    ref = faiss.IndexIDMap2(faiss.IndexFlatL2(D))
    ref.add_with_ids(XB[20:30], np.arange(200, 210))
    ref.add_with_ids(XB[:10], np.arange(10, 20))  # positions in the merged index
    ref.add_with_ids(XB[10:20], np.arange(100, 110))
    np.testing.assert_array_equal(merged.search(XQ, 5)[1], ref.search(XQ, 5)[1])
    assert (flat.ntotal, idmap.ntotal, idmap2.ntotal) == (10, 10, 10)  # inputs unchanged


def test_merge_id_map_keywords_and_batch_size(fx):
    from faissx.client.indices import merge_indices

    flat, idmap, idmap2 = _three(fx)
    merged = merge_indices([flat, idmap, idmap2], id_map2=True, batch_size=4)
    ref = faiss.IndexIDMap2(faiss.IndexFlatL2(D))
    ref.add_with_ids(XB[:10], np.arange(10))
    ref.add_with_ids(XB[10:20], np.arange(100, 110))
    ref.add_with_ids(XB[20:30], np.arange(200, 210))
    np.testing.assert_array_equal(merged.search(XQ, 6)[1], ref.search(XQ, 6)[1])
    np.testing.assert_allclose(merged.reconstruct(205), XB[25])  # IDMap2 reconstructs by id

    merged = merge_indices([flat, idmap], "Flat", True)  # IDMap over "Flat", ids kept
    assert merged.ntotal == 20
    np.testing.assert_array_equal(merged.search(XB[12:13], 1)[1], [[102]])
    np.testing.assert_array_equal(merged.search(XB[3:4], 1)[1], [[3]])
    with pytest.raises(InvalidArgument):
        merge_indices([flat], batch_size=0)
    with pytest.raises(InvalidArgument):
        merge_indices([flat], id_map=True, output_type=faiss.IndexFlatL2(D))


def test_split_keywords(fx):
    from faissx.client.indices import split_index

    index = fx.IndexIDMap2(fx.IndexFlatL2(D))
    ids = np.arange(1000, 1000 + len(XB))
    index.add_with_ids(XB, ids)

    def by_parity(x):
        return [int(i) % 2 for i in range(len(x))]

    parts = split_index(
        index, num_parts=2, split_method="custom", custom_split_fn=by_parity, batch_size=16
    )
    assert [p.ntotal for p in parts] == [100, 100]
    np.testing.assert_allclose(parts[1].reconstruct(1001), XB[1])  # ids kept

    parts = split_index(index, 2, preserve_ids=False)
    assert [p.ntotal for p in parts] == [100, 100]
    np.testing.assert_allclose(parts[1].reconstruct(0), XB[100])  # renumbered from 0

    parts = split_index(index, 2, output_type="IVF2,Flat", batch_size=50)
    assert [p.ntotal for p in parts] == [100, 100]
    assert all(remote(p) == fx.is_remote() for p in parts)
    for part, rows in zip(parts, (slice(0, 100), slice(100, 200)), strict=True):
        part.nprobe = 2
        ref = faiss.IndexFlatL2(D)
        ref.add(XB[rows])
        _, want = ref.search(XQ, 3)
        _, got = part.search(XQ, 3)
        np.testing.assert_array_equal(got, ids[rows][want])  # the IVF keeps the ids
    with pytest.raises(InvalidArgument):
        split_index(index, 2, "custom", by_parity, custom_fn=by_parity)
    with pytest.raises(InvalidArgument):
        split_index(index, 2, preserve_ids="yes")


def test_recovery_switches_and_force_reconnect(start_server):
    from faissx.client import recovery

    from faissx_client import configure, disconnect, get_client
    from faissx_core.errors import ServerUnavailable

    with pytest.raises(ValueError, match="auto_reconnect"):
        recovery.configure_recovery(auto_reconnect=False)
    with pytest.raises(NotConfigured):
        recovery.force_reconnect()
    events: list[str] = []
    down = recovery.on_disconnect(lambda: events.append("down"))
    up = recovery.on_reconnect(lambda: events.append("up"))
    proc = start_server()
    try:
        configure(server=proc.endpoint, timeout=10)
        policy = recovery.configure_recovery(max_retries=7, enabled=True, auto_reconnect=True)
        assert (policy.retries, policy.enabled) == (7, True)
        recovery.force_reconnect()
        assert events == ["down", "up"] and recovery.is_connected()
        policy = recovery.configure_recovery(enabled=False, initial_backoff=0.01)
        assert (policy.max_retries, policy.retries) == (7, 0)
        proc.kill()
        with pytest.raises(ServerUnavailable, match="after 1 attempt"):
            get_client().call("touch", timeout=5)
    finally:
        recovery.remove_disconnect_callback(down)
        recovery.remove_reconnect_callback(up)
        recovery.reset_recovery()
        disconnect()


def test_faissx_client_original_details(server):
    from faissx_client.original import FaissXClient, factory_description

    assert factory_description("IVF") == ("IVF100,Flat", faiss.METRIC_L2, False)
    assert factory_description("HNSW") == ("HNSW32", faiss.METRIC_L2, False)
    client = FaissXClient()
    with pytest.raises(NotConfigured):
        client.connect()
    client.configure(server=server.endpoint)
    try:
        client.create_index("orig-details", D, "L2")
        added = client.add_vectors("orig-details", XB[:4])
        assert added["ntotal"] == added["total"] == 4
        assert client._index("orig-details").index_id == "orig-details"
        client.connect()  # reconnects with the same settings
        assert client.get_index_stats("orig-details")["ntotal"] == 4
    finally:
        client.delete_index("orig-details")
        client.close()
