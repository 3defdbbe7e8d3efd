"""Optimization controls, memory management, the vector cache and GPU mode, in both modes.

Every control is exercised on local faiss objects (``faissx.client`` before ``configure()``) and
on proxies of a real server started through the CLI, and compared with what plain faiss does:
runtime parameters must change search results exactly as the same faiss attribute does, batched
calls must return exactly the unbatched answers, and memory figures must match faiss's own sizes.
Rejected names and values must raise the typed errors and leave the index as it was.
"""

from __future__ import annotations

import pickle
import subprocess
import uuid
from typing import Any

import faiss
import numpy as np
import pytest

from faissx_client import gpu as gpu_mode
from faissx_client import optimization
from faissx_client.cache import vector_cache
from faissx_client.optimization import memory_manager
from faissx_core.errors import InvalidArgument, QuotaExceeded, UnknownParameter
from faissx_core.introspect import index_bytes

from .conftest import FAISSX, server_env

D = 16
K = 5
RNG = np.random.default_rng(808)
TRAIN = RNG.standard_normal((1200, D)).astype("float32")
BASE = RNG.standard_normal((1000, D)).astype("float32")
QUERIES = RNG.standard_normal((40, D)).astype("float32")
CODES = RNG.integers(0, 256, (600, D // 2), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _clean_settings():
    """Options, defaults, GPU mode and cache are process-wide: leave them as found."""
    yield
    memory_manager.reset()
    optimization._defaults.update(batch_size=0, progress=None)
    gpu_mode._state["enabled"] = None
    vector_cache.reset_stats()


@pytest.fixture(params=["local", "remote"])
def fx(request, server):
    """``faissx.client`` in local mode, or configured against the shared server (in a tenant
    of its own, so memory figures count only this test's indices)."""
    from faissx import client

    if request.param == "remote":
        client.configure(
            server=server.endpoint, tenant_id=f"opt-{uuid.uuid4().hex[:12]}", timeout=120
        )
    try:
        yield client
    finally:
        client.disconnect()


def is_remote(index: Any) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


def counting(monkeypatch, fx, index) -> list[str]:
    """The ops one index sends (remote), or the faiss calls it makes (local): one per chunk."""
    calls: list[str] = []
    if is_remote(index):
        real, real_pipeline = index._client.call, index._client.pipeline

        def call(op, *args, **kwargs):
            calls.append(op)
            return real(op, *args, **kwargs)

        def pipeline(op, index, parts, *args, **kwargs):
            calls.extend(op for _ in parts)  # one request per part
            return real_pipeline(op, index, parts, *args, **kwargs)

        monkeypatch.setattr(index._client, "call", call)
        monkeypatch.setattr(index._client, "pipeline", pipeline)
    else:  # below FAISSx's wrapper: the calls that reach faiss's own method
        originals = optimization._ORIGINALS[type(index)]
        for name, real_method in list(originals.items()):

            def method(self, *args, _name=name, _real=real_method, **kwargs):
                calls.append(_name)
                return _real(self, *args, **kwargs)

            monkeypatch.setitem(originals, name, method)
    return calls


# -- runtime parameters --------------------------------------------------------------------------

#: case -> (builder given the module, [(parameter, value, attribute path)])
PARAM_CASES = {
    "IVFFlat": (
        lambda m: m.IndexIVFFlat(m.IndexFlatL2(D), D, 16),
        [("nprobe", 7, "nprobe"), ("max_codes", 300, "max_codes")],
    ),
    "HNSWFlat": (
        lambda m: m.IndexHNSWFlat(D, 8),
        [("efSearch", 33, "hnsw.efSearch"), ("efConstruction", 12, "hnsw.efConstruction")],
    ),
    "IDMap2-HNSW": (
        lambda m: m.IndexIDMap2(m.IndexHNSWFlat(D, 8)),
        [("efSearch", 21, "index.hnsw.efSearch")],
    ),
    "IVFPQ": (
        lambda m: m.IndexIVFPQ(m.IndexFlatL2(D), D, 16, 4, 8),
        [("nprobe", 3, "nprobe"), ("polysemous_ht", 20, "polysemous_ht")],
    ),
    "PQ": (
        lambda m: m.IndexPQ(D, 4, 8),
        [("search_type", faiss.IndexPQ.ST_polysemous, "search_type")],
    ),
    "Refine": (lambda m: m.index_factory(D, "IVF16,PQ4x4,RFlat"), [("k_factor", 4.0, "k_factor")]),
    "BinaryIVF": (
        lambda m: m.IndexBinaryIVF(m.IndexBinaryFlat(D * 4), D * 4, 8),
        [("nprobe", 5, "nprobe")],
    ),
    "BinaryHash": (lambda m: m.IndexBinaryHash(D * 4, 12), [("nflip", 2, "nflip")]),
}


def attribute(index: Any, path: str) -> Any:
    for part in path.split("."):
        index = getattr(index, part)
        if isinstance(index, faiss.Index):
            index = faiss.downcast_index(index)
    return index


@pytest.mark.parametrize("case", PARAM_CASES)
def test_set_and_get_every_declared_parameter(fx, case):
    build, params = PARAM_CASES[case]
    index = build(fx)
    assert is_remote(index) == fx.is_remote()
    for name, value, path in params:
        index.set_parameter(name, value)
        assert index.get_parameter(name) == value
        assert attribute(index, path) == value, "the attribute reads the same value"
        assert optimization.get_parameter(index, name) == value
        optimization.set_parameter(index, name, value)
    names = optimization.parameter_names(index)
    assert {n for n, _, _ in params} | {"batch_size"} <= set(names)
    assert set(optimization.parameters(index)) == set(names)


def test_parameters_change_results_exactly_like_faiss(fx):
    """nprobe set through set_parameter = faiss's attribute: the same ids and distances."""
    plain = faiss.IndexIVFFlat(faiss.IndexFlatL2(D), D, 16)
    index = fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 16)
    for ix in (plain, index):
        ix.train(TRAIN)
        ix.add(BASE)
    answers = set()
    for nprobe in (1, 4, 16):
        plain.nprobe = nprobe
        index.set_parameter("nprobe", nprobe)
        Dp, Ip = plain.search(QUERIES, K)
        Dx, Ix = index.search(QUERIES, K)
        np.testing.assert_array_equal(Ix, Ip)
        np.testing.assert_array_equal(Dx, Dp)
        answers.add(Ix.tobytes())
    assert len(answers) > 1, "nprobe made no difference: the test would prove nothing"


def test_k_factor_reranks_like_faiss(fx):
    plain = faiss.index_factory(D, "IVF16,PQ4x4,RFlat")
    index = fx.index_factory(D, "IVF16,PQ4x4,RFlat")
    for ix in (plain, index):
        ix.train(TRAIN)
        ix.add(BASE)
    for k_factor in (1.0, 8.0):
        plain.k_factor = k_factor
        index.set_parameter("k_factor", k_factor)
        Dp, Ip = plain.search(QUERIES, K)
        Dx, Ix = index.search(QUERIES, K)
        np.testing.assert_array_equal(Ix, Ip)
        np.testing.assert_allclose(Dx, Dp, rtol=1e-5)


#: (parameter, bad value) pairs each index must refuse, with the error class.
BAD_VALUES = [
    ("nprobe", -1, InvalidArgument),
    ("nprobe", 1.5, InvalidArgument),
    ("nprobe", "8", InvalidArgument),
    ("nprobe", True, InvalidArgument),
    ("max_codes", -1, InvalidArgument),
    ("batch_size", -5, InvalidArgument),
    ("batch_size", 2.5, InvalidArgument),
    ("efSearch", 16, UnknownParameter),
    ("k_factor", 2.0, UnknownParameter),
    ("no_such_knob", 1, UnknownParameter),
]


@pytest.mark.parametrize(
    ("name", "value", "error"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES]
)
def test_bad_names_and_values_are_refused_and_change_nothing(fx, name, value, error):
    index = fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 16)
    index.train(TRAIN)
    index.add(BASE)
    index.set_parameter("nprobe", 3)
    index.set_parameter("batch_size", 100)
    before = index.search(QUERIES, K)
    with pytest.raises(error) as info:
        index.set_parameter(name, value)
    assert isinstance(info.value, ValueError if error is InvalidArgument else AttributeError)
    if error is UnknownParameter:
        assert "nprobe" in str(info.value) and "batch_size" in str(info.value), (
            "the message lists the known names"
        )
        with pytest.raises(UnknownParameter):
            index.get_parameter(name)
    with pytest.raises(error):
        optimization.set_parameter(index, name, value)
    assert index.get_parameter("nprobe") == 3 and index.get_parameter("batch_size") == 100
    after = index.search(QUERIES, K)
    np.testing.assert_array_equal(after[1], before[1])


def test_client_parameters_as_attributes_on_proxies(remote):
    index = remote.IndexFlatL2(D)
    assert index.batch_size == 0
    index.batch_size = 64
    assert index.get_parameter("batch_size") == 64
    with pytest.raises(InvalidArgument):
        index.batch_size = 0.5
    assert index.batch_size == 64


def test_faiss_classes_gain_only_two_methods_and_keep_their_identity():
    from faissx import client

    plain = faiss.IndexFlatL2(D)  # built by faiss itself, not by FAISSx
    index = client.IndexIVFFlat(client.IndexFlatL2(D), D, 8)
    assert type(index) is faiss.IndexIVFFlat and isinstance(index, faiss.Index)
    assert faiss.Index.set_parameter is optimization._method_set_parameter
    with pytest.raises(UnknownParameter):
        plain.set_parameter("nprobe", 2)
    plain.set_parameter("batch_size", 10)
    index.train(TRAIN)
    index.set_parameter("nprobe", 4)
    index.add(BASE)
    again = pickle.loads(pickle.dumps(index))  # faiss's own pickling still works
    assert type(again) is faiss.IndexIVFFlat and again.nprobe == 4 and again.ntotal == len(BASE)


# -- batching and progress ----------------------------------------------------------------------


def test_batch_size_streams_add_and_search_in_chunks(fx, monkeypatch):
    index = fx.IndexFlatL2(D)
    reference = faiss.IndexFlatL2(D)
    reference.add(BASE)
    index.set_parameter("batch_size", 300)
    calls = counting(monkeypatch, fx, index)
    index.add(BASE)
    assert calls.count("add") == 4  # 300 + 300 + 300 + 100
    Dx, Ix = index.search(QUERIES, K)
    assert calls.count("search") == 1  # 40 queries fit one chunk of 300
    index.set_parameter("batch_size", 15)
    Db, Ib = index.search(QUERIES, K)
    assert calls.count("search") == 1 + 3
    Dr, Ir = reference.search(QUERIES, K)
    for Dn, In in ((Dx, Ix), (Db, Ib)):
        np.testing.assert_array_equal(In, Ir)
        np.testing.assert_array_equal(Dn, Dr)
    assert index.ntotal == len(BASE)


def test_add_with_ids_in_chunks_keeps_ids(fx, monkeypatch):
    index = fx.IndexIDMap(fx.IndexFlatL2(D))
    index.set_parameter("batch_size", 250)
    calls = counting(monkeypatch, fx, index)
    ids = np.arange(len(BASE), dtype=np.int64) * 7 + 3
    index.add_with_ids(BASE, ids)
    assert calls.count("add_with_ids") == 4
    _, I = index.search(BASE[:20], 1)
    np.testing.assert_array_equal(I[:, 0], ids[:20])


def test_remote_add_is_chunked_automatically(remote, monkeypatch):
    """Without a batch size, a large add is still cut into bounded, pipelined messages (here the
    bounds are lowered so 1000 vectors count as large)."""
    monkeypatch.setattr(optimization, "PIPELINE_FROM", 500 * D * 4)
    monkeypatch.setattr(optimization, "PIPELINE_PART_BYTES", 200 * D * 4)
    index = remote.IndexFlatL2(D)
    calls = counting(monkeypatch, remote, index)
    index.add(BASE)
    assert calls.count("add") == 5
    reference = faiss.IndexFlatL2(D)
    reference.add(BASE)
    np.testing.assert_array_equal(index.search(QUERIES, K)[1], reference.search(QUERIES, K)[1])


def test_progress_bar_on_request_and_by_default(fx, capsys):
    index = fx.IndexFlatL2(D)
    index.add(BASE, progress=True)
    err = capsys.readouterr().err
    assert "add" in err and f"{len(BASE)}/{len(BASE)}" in err
    index.search(QUERIES, K)
    assert "search" not in capsys.readouterr().err, "no bar unless asked"
    optimization.set_default("progress", True)
    index.search(QUERIES, K)
    assert f"{len(QUERIES)}/{len(QUERIES)}" in capsys.readouterr().err
    with pytest.raises(InvalidArgument):
        optimization.set_default("progress", "yes")


# -- memory ------------------------------------------------------------------------------------


def test_memory_options_are_validated():
    assert memory_manager.get_option("max_memory_usage_mb") is None
    memory_manager.set_option("max_memory_usage_mb", 512)
    memory_manager.set_option("use_memory_mapping", True)
    memory_manager.set_option("index_cache_size", 10)
    assert memory_manager.options() == {
        "max_memory_usage_mb": 512.0,
        "use_memory_mapping": True,
        "index_cache_size": 10,
        "auto_unload_unused_indices": True,
    }
    for name, value in (
        ("max_memory_usage_mb", 0),
        ("max_memory_usage_mb", -1),
        ("max_memory_usage_mb", "1GB"),
        ("use_memory_mapping", 1),
        ("index_cache_size", -1),
        ("index_cache_size", 1.5),
    ):
        with pytest.raises(InvalidArgument):
            memory_manager.set_option(name, value)
    with pytest.raises(UnknownParameter):
        memory_manager.set_option("max_memory", 1)
    with pytest.raises(UnknownParameter):
        memory_manager.get_option("nope")
    assert memory_manager.get_option("max_memory_usage_mb") == 512.0


@pytest.mark.parametrize("description", ["Flat", "IVF16,Flat", "HNSW8", "IVF16,SQ8", "PQ4x4"])
def test_memory_accounting_matches_faiss_sizes_in_both_modes(fx, description):
    plain = faiss.index_factory(D, description)
    index = fx.index_factory(D, description)
    for ix in (plain, index):
        ix.train(TRAIN)
        ix.add(BASE)
    serialized = len(faiss.serialize_index(plain))
    measured = memory_manager.index_memory(index)
    assert abs(measured - serialized) <= 0.05 * serialized + 4096, (measured, serialized)
    if fx.is_remote():  # the server reports what the same accounting finds locally
        assert measured == index_bytes(plain)
        usage = memory_manager.usage()
        assert usage["mode"] == "remote" and usage["bytes"] >= measured


def test_client_limit_refuses_what_would_cross_it(fx):
    """max_memory_usage_mb: an add that would cross the limit, and a new index once the limit
    is reached, raise QuotaExceeded before anything changes; existing indices are intact."""
    small = BASE[:400]  # 400 x 16 x 4 = 25.6 kB each
    already = memory_manager.usage()["bytes"]  # whatever this mode holds from elsewhere
    budget = (already + 3 * small.nbytes) / (1 << 20)  # room for three such adds (exact)
    first = fx.IndexFlatL2(D)
    first.add(small)
    memory_manager.set_option("max_memory_usage_mb", budget)
    second = fx.IndexFlatL2(D)
    second.add(small)
    third = fx.IndexFlatL2(D)
    third.add(small[:300])
    with pytest.raises(QuotaExceeded) as info:
        third.add(small[:200])  # 100 more would fit, 200 do not
    assert isinstance(info.value, RuntimeError) and "max_memory_usage_mb" in str(info.value)
    assert third.ntotal == 300
    third.add(small[:100])  # exactly up to the limit is allowed
    with pytest.raises(QuotaExceeded):
        fx.IndexFlatL2(D).add(small[:1])
    if not fx.is_remote():  # a local index is built at once: the constructor refuses
        with pytest.raises(QuotaExceeded):
            fx.IndexFlatL2(D)
    for index in (first, second):
        assert index.ntotal == len(small)
        _, I = index.search(small[:10], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(10))
    memory_manager.set_option("max_memory_usage_mb", None)
    third.add(small)  # no limit, no refusal
    assert third.ntotal == 800


def test_server_max_memory_refuses_creates_and_adds(start_server):
    from faissx import client

    srv = start_server("--max-memory", "0.5")  # 524,288 bytes
    client.configure(server=srv.endpoint, timeout=120)
    try:
        a = client.IndexFlatL2(D, name="a")
        a.add(BASE[: 4000 // 8])  # 32 kB
        big = np.tile(BASE, (8, 1))  # 8000 x 64 B = 512 kB: would cross
        before = a.search(QUERIES, K)
        with pytest.raises(QuotaExceeded) as info:
            a.add(big)
        assert "--max-memory" in str(info.value)
        b = client.IndexFlatL2(D, name="b")
        b.set_parameter("batch_size", 1000)  # several requests: refused whole, up front
        with pytest.raises(QuotaExceeded):
            b.add(big)
        assert b.ntotal == 0 and a.ntotal == 500
        np.testing.assert_array_equal(a.search(QUERIES, K)[1], before[1])
        filled = faiss.IndexFlatL2(D)
        filled.add(big)
        with pytest.raises(QuotaExceeded):  # an import is a create too
            client.deserialize_index(faiss.serialize_index(filled))
        listing = client.get_client().call("list")[0]
        sizes = {i["name"]: i["memory_bytes"] for i in listing["indexes"]}
        assert sizes == {"a": 500 * D * 4, "b": 0}
        assert listing["memory_bytes"] == 500 * D * 4
        assert listing["memory_limit_bytes"] == 1 << 19
        assert listing["memory_free_bytes"] == (1 << 19) - 500 * D * 4
        client.delete_index("a")
        b.add(big[:7000])  # the freed room is usable
        assert b.ntotal == 7000
    finally:
        client.disconnect()


def test_memory_mapped_read_index(tmp_path):
    from faissx import client

    memory_manager.set_option("use_memory_mapping", True)
    for description in ("Flat", "IVF16,Flat"):
        plain = faiss.index_factory(D, description)
        plain.train(TRAIN)
        plain.add(BASE)
        path = str(tmp_path / f"{description}.faiss")
        faiss.write_index(plain, path)
        mapped = client.read_index(path)
        np.testing.assert_array_equal(mapped.search(QUERIES, K)[1], plain.search(QUERIES, K)[1])
        inner = faiss.downcast_index(mapped)
        if description == "Flat":
            assert not inner.codes.is_owned, "the codes are the mapped file, not a copy"
        else:
            invlists = faiss.downcast_InvertedLists(inner.invlists)
            assert type(invlists).__name__ == "OnDiskInvertedLists"
    memory_manager.set_option("use_memory_mapping", False)
    copied = client.read_index(str(tmp_path / "Flat.faiss"))  # keep the owner alive
    assert faiss.downcast_index(copied).codes.is_owned


# -- vector cache --------------------------------------------------------------------------------


def test_reconstruct_cache_counts_hits_and_is_invalidated_by_mutations(remote):
    index = remote.IndexFlatL2(D)
    index.add(BASE)
    index.reconstruct(5)
    assert memory_manager.cache_stats()["hits"] == 0 == memory_manager.cache_stats()["misses"]
    memory_manager.set_option("index_cache_size", 4)
    np.testing.assert_array_equal(index.reconstruct(5), BASE[5])
    np.testing.assert_array_equal(index.reconstruct(5), BASE[5])
    assert memory_manager.cache_stats() == {"hits": 1, "misses": 1, "size": 1, "capacity": 4}
    batch = index.reconstruct_batch(np.array([5, 6, 7, 5]))
    np.testing.assert_array_equal(batch, BASE[[5, 6, 7, 5]])
    stats = memory_manager.cache_stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (3, 3, 3)
    index.remove_ids(np.array([0]))  # positions shift: vector 5 is now BASE[6]
    np.testing.assert_array_equal(index.reconstruct(5), BASE[6])
    assert memory_manager.cache_stats()["misses"] == 4
    for key in (1, 2, 3, 4, 5):  # capacity 4: least recently used go first
        index.reconstruct(key)
    assert memory_manager.cache_stats()["size"] == 4
    for mutate in (lambda: index.add(BASE[:1]), index.reset):
        index.reconstruct(1)
        assert memory_manager.cache_stats()["size"] > 0
        mutate()
        assert vector_cache.invalidate(index._cache_key()) == 0, "the mutation emptied it"


# -- GPU -----------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(gpu_mode.gpu_count() == 0, reason="faiss here has no GPU")
needs_cpu_faiss = pytest.mark.skipif(gpu_mode.gpu_count() > 0, reason="faiss here has a GPU")


@needs_cpu_faiss
def test_gpu_mode_without_a_gpu_is_a_clear_error(monkeypatch):
    from faissx import client
    from faissx_core.errors import UnsupportedOperation

    with pytest.raises(UnsupportedOperation, match="GPU build of faiss"):
        client.configure(gpu=True)
    assert not client.is_remote() and not gpu_mode.enabled()
    monkeypatch.setenv("FAISSX_GPU", "1")
    with pytest.raises(UnsupportedOperation, match="FAISSX_GPU"):
        client.IndexFlatL2(D)
    monkeypatch.delenv("FAISSX_GPU")
    assert type(client.IndexFlatL2(D)) is faiss.IndexFlatL2


@needs_cpu_faiss
def test_server_gpu_flag_without_a_gpu_stops_with_a_clear_error():
    proc = subprocess.run(
        [str(FAISSX), "serve", "--port", "1", "--gpu"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "GPU build of faiss" in proc.stderr


@needs_gpu
def test_local_gpu_mode_matches_cpu_search():  # pragma: no cover - needs a GPU
    from faissx import client

    client.configure(gpu=True)
    index = client.IndexFlatL2(D)
    assert gpu_mode.is_gpu(index)
    index.add(BASE)
    plain = faiss.IndexFlatL2(D)
    plain.add(BASE)
    np.testing.assert_array_equal(index.search(QUERIES, K)[1], plain.search(QUERIES, K)[1])


@needs_gpu
def test_server_gpu_search_matches_cpu(start_server):  # pragma: no cover - needs a GPU
    from faissx import client

    srv = start_server("--gpu")
    client.configure(server=srv.endpoint, timeout=120)
    try:
        index = client.IndexFlatL2(D)
        index.add(BASE)
        plain = faiss.IndexFlatL2(D)
        plain.add(BASE)
        np.testing.assert_array_equal(index.search(QUERIES, K)[1], plain.search(QUERIES, K)[1])
    finally:
        client.disconnect()


def test_binary_parameters_local_and_remote(fx):
    index = fx.IndexBinaryIVF(fx.IndexBinaryFlat(D * 4), D * 4, 8)
    index.train(CODES)
    index.add(CODES)
    plain = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(D * 4), D * 4, 8)
    plain.train(CODES)
    plain.add(CODES)
    index.set_parameter("nprobe", 4)
    plain.nprobe = 4
    np.testing.assert_array_equal(index.search(CODES[:20], K)[1], plain.search(CODES[:20], K)[1])


def test_gpu_is_refused_for_a_remote_configure(server):
    from faissx import client

    with pytest.raises(InvalidArgument, match="faissx serve --gpu"):
        client.configure(server=server.endpoint, gpu=True)
    assert not client.is_remote()


def test_seed_spellings_are_the_same_modules():
    import faissx.client.cache
    import faissx.client.modification
    import faissx.client.optimization
    from faissx.client.optimization import memory_manager as seed_manager

    import faissx_client.cache
    import faissx_client.modification

    assert faissx.client.optimization is optimization
    assert faissx.client.modification is faissx_client.modification
    assert faissx.client.cache is faissx_client.cache
    assert seed_manager is memory_manager
