"""HNSW and IDMap families: the same program on local faiss and through a real server.

Determinism. Older faiss built HNSW graphs with OpenMP threads racing on shared locks, so the
graph could depend on thread scheduling. faiss 1.15 builds with ``hnsw_add_vertices_deterministic``
(phase A links against a frozen snapshot, phase B merges reverse links in a fixed order): the
graph depends only on the data, not on how many threads the server process runs with.
``test_graph_build_does_not_depend_on_thread_count`` checks that premise locally, and the
differential tests then demand bit-identical ids, distances and even serialized bytes. On a
faiss without the deterministic build, searches on graphs built by the same adds are compared
by overlap of the returned ids instead (``MIN_OVERLAP``), while everything that runs on one
graph (searches on an uploaded local graph, reconstruction, ids) stays exact.

Training: SQ computes min/max, PQ runs k-means with faiss's fixed seed; both give identical
codebooks on identical data, so trained indices are compared exactly too.
"""

from __future__ import annotations

import contextlib
import pickle

import faiss
import numpy as np
import pytest

D = 16
RNG = np.random.default_rng(2024)
TRAIN = RNG.standard_normal((2500, D)).astype("float32")
BASE = RNG.standard_normal((1200, D)).astype("float32")
QUERIES = RNG.standard_normal((15, D)).astype("float32")
#: External ids: neither positions nor contiguous, so a mix-up with positions shows.
IDS = np.arange(len(BASE), dtype="int64") * 7 + 1000
K = 10

#: faiss >= 1.15 builds HNSW graphs deterministically whatever the thread count.
DETERMINISTIC_BUILD = hasattr(faiss, "hnsw_add_vertices_deterministic")
#: Without it: fraction of top-K ids both sides must share, per query on average. Racing threads
#: perturb the insertion order. Inserting these 1200 vectors in a random permutation instead
#: (a larger perturbation) kept 0.94 of the top-10 at M=16 and 0.99 at M=32 (efSearch=16), so
#: 0.85 leaves room for noise and still fails on a real divergence (a wrong graph shares ~0).
MIN_OVERLAP = 0.85

SQ8 = faiss.ScalarQuantizer.QT_8bit
FP16 = faiss.ScalarQuantizer.QT_fp16
IP = faiss.METRIC_INNER_PRODUCT

#: (class name, constructor args): each is built the same way locally and remotely.
HNSW_CASES = [
    ("IndexHNSWFlat", (D, 16)),
    ("IndexHNSWFlat", (D, 32, IP)),
    ("IndexHNSWSQ", (D, SQ8, 16)),
    ("IndexHNSWSQ", (D, FP16, 16, IP)),
    ("IndexHNSWPQ", (D, 4, 16, 6)),
    ("IndexHNSWPQ", (D, 8, 12, 4, IP)),
]
CASE_IDS = [f"{c}{a[1:]}" for c, a in HNSW_CASES]


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_local_thread():
    """Build local graphs on one thread (the server keeps its own thread count).

    The deterministic build runs many small OpenMP regions; on a 2-core box, threads in this
    process and the server's compete and a 1200-vector add takes 20x longer. One local thread
    also sharpens the comparison: 1 thread here, the server's default there, same bytes.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def pair(remote, cls_name: str, *args):
    """(local faiss index, remote proxy) built from the same constructor call."""
    local = getattr(faiss, cls_name)(*args)
    proxy = getattr(remote, cls_name)(*args)
    assert not isinstance(proxy, faiss.Index), "remote mode must not build a local index"
    return local, proxy


def wrapped(remote, wrapper: str, inner: str, *args):
    """(local, remote) ``wrapper(inner(*args))``: the inner proxy travels as its spec."""
    local = getattr(faiss, wrapper)(getattr(faiss, inner)(*args))
    proxy = getattr(remote, wrapper)(getattr(remote, inner)(*args))
    assert not isinstance(proxy, faiss.Index)
    return local, proxy


def upload(remote, local):
    """A remote copy of a local index: the very same graph on the server."""
    return remote.deserialize_index(faiss.serialize_index(local))


def same(remote_out, local_out):
    """Bit-identical arrays (tuples of arrays compared element-wise), dtypes included."""
    if not isinstance(local_out, tuple):
        remote_out, local_out = (remote_out,), (local_out,)
    assert len(remote_out) == len(local_out)
    for r, loc in zip(remote_out, local_out, strict=True):
        assert r.dtype == loc.dtype and r.shape == loc.shape
        np.testing.assert_array_equal(r, loc)


def same_graph_search(local, proxy, queries=QUERIES, k=K, **kw):
    """Search results of graphs built by the same adds: exact, or overlap on old faiss."""
    Dl, Il = local.search(queries, k, **kw)
    Dr, Ir = proxy.search(queries, k, **kw)
    if DETERMINISTIC_BUILD:
        same((Dr, Ir), (Dl, Il))
        return
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(Il, Ir, strict=True)])
    assert overlap >= MIN_OVERLAP, f"remote and local top-{k} share only {overlap:.2%}"


def same_graph(local, proxy):
    """The strongest check: the server holds byte for byte the index faiss built here."""
    if DETERMINISTIC_BUILD:
        np.testing.assert_array_equal(proxy.serialize(), faiss.serialize_index(local))


def both(local, proxy, method: str, *args, **kwargs):
    """Call ``method`` on each side; return (remote result, local result)."""
    return getattr(proxy, method)(*args, **kwargs), getattr(local, method)(*args, **kwargs)


def raises_like_local(exc_type, local_call, remote_call):
    with pytest.raises(exc_type):
        local_call()
    with pytest.raises(exc_type):
        remote_call()


def train_and_fill(local, proxy, ids=None):
    assert proxy.is_trained == local.is_trained
    if not local.is_trained:
        local.train(TRAIN)
        proxy.train(TRAIN)
        assert proxy.is_trained and local.is_trained
    for chunk in np.array_split(np.arange(len(BASE)), 3):  # several adds, as users do
        if ids is None:
            local.add(BASE[chunk])
            proxy.add(BASE[chunk])
        else:
            local.add_with_ids(BASE[chunk], ids[chunk])
            proxy.add_with_ids(BASE[chunk], ids[chunk])
    assert proxy.ntotal == local.ntotal == len(BASE)


# -- HNSW: building and searching ----------------------------------------------------------


def test_graph_build_does_not_depend_on_thread_count():
    """The premise of exact comparison: the server's OpenMP threads cannot change the graph."""
    if not DETERMINISTIC_BUILD:
        pytest.skip("this faiss builds HNSW graphs with racing threads; overlap is used instead")
    built = []
    try:
        for threads in (1, 3):
            faiss.omp_set_num_threads(threads)
            index = faiss.IndexHNSWFlat(D, 16)
            index.add(BASE)
            built.append(faiss.serialize_index(index))
    finally:
        faiss.omp_set_num_threads(1)  # what _one_local_thread set
    np.testing.assert_array_equal(built[0], built[1])


@pytest.mark.parametrize(("cls_name", "args"), HNSW_CASES, ids=CASE_IDS)
def test_same_training_and_adds_give_the_same_index(remote, cls_name, args):
    local, proxy = pair(remote, cls_name, *args)
    assert type(proxy).__name__ == cls_name and isinstance(proxy, getattr(remote, cls_name))
    assert proxy.d == local.d == D
    assert proxy.metric_type == local.metric_type
    train_and_fill(local, proxy)
    same_graph(local, proxy)
    for k in (1, K):
        same_graph_search(local, proxy, k=k)
    local.hnsw.efSearch = 64
    proxy.hnsw.efSearch = 64
    same_graph_search(local, proxy)
    if DETERMINISTIC_BUILD:
        same(*both(local, proxy, "assign", QUERIES, 3))


def test_k_beyond_ntotal_is_padded_like_faiss(remote):
    local, proxy = pair(remote, "IndexHNSWFlat", D, 16)
    same(*both(local, proxy, "search", QUERIES, 4))  # empty index
    local.add(BASE[:3])
    proxy.add(BASE[:3])
    Dr, Ir = proxy.search(QUERIES, 5)
    same((Dr, Ir), local.search(QUERIES, 5))
    assert (Ir[:, 3:] == -1).all()


@pytest.mark.parametrize(
    ("cls_name", "args"),
    [
        ("IndexHNSWFlat", (D, 16)),
        ("IndexHNSWSQ", (D, SQ8, 16)),
        ("IndexHNSWPQ", (D, 4, 16, 6)),
    ],
    ids=["Flat", "SQ8", "PQ"],
)
def test_uploaded_graph_answers_every_read_exactly(remote, cls_name, args):
    """One graph, built here, served there: every read op must match bit for bit."""
    local = getattr(faiss, cls_name)(*args)
    if not local.is_trained:
        local.train(TRAIN)
    local.add(BASE)
    local.hnsw.efSearch = 48
    proxy = upload(remote, local)
    assert type(proxy).__name__ == cls_name
    assert proxy.ntotal == len(BASE) and proxy.is_trained
    assert proxy.hnsw.efSearch == 48, "efSearch travels inside the faiss bytes"
    assert proxy._runtime_params() == {
        "efSearch": "hnsw.efSearch",
        "efConstruction": "hnsw.efConstruction",
    }
    same(*both(local, proxy, "search", QUERIES, K))
    same(*both(local, proxy, "assign", QUERIES, 4))
    lims_r, D_r, I_r = proxy.range_search(QUERIES, 9.0)
    lims_l, D_l, I_l = local.range_search(QUERIES, 9.0)
    assert lims_l[-1] > 0, "the radius should find something, or the test proves nothing"
    same((lims_r, D_r, I_r), (lims_l, D_l, I_l))
    same(*both(local, proxy, "search_and_reconstruct", QUERIES, 3))
    same(*both(local, proxy, "reconstruct", 17))
    same(*both(local, proxy, "reconstruct_n", 100, 50))
    keys = np.array([5, 1, 1199, 5], dtype="int64")
    same(*both(local, proxy, "reconstruct_batch", keys))
    with pytest.raises(RuntimeError):  # both check the key (faiss: RuntimeError)
        local.reconstruct(len(BASE))
    with pytest.raises(RuntimeError):
        proxy.reconstruct(len(BASE))


def test_reset_then_reuse(remote):
    local, proxy = pair(remote, "IndexHNSWFlat", D, 16)
    for index in (local, proxy):
        index.add(BASE)
        index.reset()
    assert proxy.ntotal == local.ntotal == 0
    local.add(BASE[:300])
    proxy.add(BASE[:300])
    same_graph(local, proxy)
    same_graph_search(local, proxy)


def test_operations_hnsw_lacks_fail_as_in_faiss(remote):
    local, proxy = pair(remote, "IndexHNSWFlat", D, 16)
    local.add(BASE[:200])
    proxy.add(BASE[:200])
    ids = np.arange(10, dtype="int64")
    raises_like_local(
        RuntimeError,
        lambda: local.add_with_ids(BASE[:10], ids),
        lambda: proxy.add_with_ids(BASE[:10], ids),
    )
    raises_like_local(RuntimeError, lambda: local.remove_ids(ids), lambda: proxy.remove_ids(ids))
    raises_like_local(
        RuntimeError,
        lambda: local.remove_ids(faiss.IDSelectorRange(0, 5)),
        lambda: proxy.remove_ids(remote.IDSelectorRange(0, 5)),
    )
    other_local, other_proxy = pair(remote, "IndexHNSWFlat", D, 16)
    other_local.add(BASE[:5])
    other_proxy.add(BASE[:5])
    raises_like_local(
        RuntimeError, lambda: local.merge_from(other_local), lambda: proxy.merge_from(other_proxy)
    )
    assert proxy.ntotal == local.ntotal == 200 and other_proxy.ntotal == 5


# -- HNSW: runtime parameters ------------------------------------------------------------------


def test_runtime_params_read_and_set_like_faiss(remote):
    local, proxy = pair(remote, "IndexHNSWFlat", D, 16)
    assert proxy.hnsw.efSearch == local.hnsw.efSearch == 16
    assert proxy.hnsw.efConstruction == local.hnsw.efConstruction == 40
    # efConstruction shapes the graph built by later adds: the same on both sides
    local.hnsw.efConstruction = 12
    proxy.hnsw.efConstruction = 12
    assert proxy.hnsw.efConstruction == 12 and proxy.get_parameter("efConstruction") == 12
    local.add(BASE)
    proxy.add(BASE)
    same_graph(local, proxy)
    # attribute path, by name, and through ParameterSpace: all reach hnsw.efSearch
    proxy.hnsw.efSearch = 64
    assert proxy.hnsw.efSearch == 64 and proxy.efSearch == 64
    proxy.set_parameter("efSearch", 24)
    assert proxy.get_parameter("efSearch") == 24 == proxy.hnsw.efSearch
    faiss.ParameterSpace().set_index_parameter(local, "efSearch", 33)
    remote.ParameterSpace().set_index_parameter(proxy, "efSearch", 33)
    assert proxy.hnsw.efSearch == local.hnsw.efSearch == 33
    same_graph_search(local, proxy)
    faiss.ParameterSpace().set_index_parameters(local, "efSearch=20,efConstruction=30")
    remote.ParameterSpace().set_index_parameters(proxy, "efSearch=20,efConstruction=30")
    assert (proxy.hnsw.efSearch, proxy.hnsw.efConstruction) == (20, 30)
    assert (local.hnsw.efSearch, local.hnsw.efConstruction) == (20, 30)
    same_graph_search(local, proxy)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("efSearch", 0),
        ("efSearch", -1),
        ("efSearch", 1.5),
        ("efSearch", "many"),
        ("efSearch", True),
        ("efSearch", (1 << 16) + 1),
        ("efConstruction", 0),
        ("efConstruction", -40),
    ],
)
def test_bad_runtime_values_are_value_errors(remote, name, value):
    """faiss stores efSearch=0 and then returns no results; the server refuses it instead."""
    proxy = remote.IndexHNSWFlat(D, 16)
    before = proxy.get_parameter(name)
    with pytest.raises(ValueError):
        setattr(proxy.hnsw, name, value)
    with pytest.raises(ValueError):
        proxy.set_parameter(name, value)
    assert proxy.get_parameter(name) == before


def test_unknown_attributes_are_attribute_errors(remote):
    local, proxy = pair(remote, "IndexHNSWFlat", D, 16)
    for index in (local, proxy):
        with pytest.raises(AttributeError):
            index.efSearsh = 3  # a typo must not pass silently
        with pytest.raises(AttributeError):
            _ = index.efSearsh
    with pytest.raises(AttributeError):
        _ = local.hnsw.efSearsh
    with pytest.raises(AttributeError):
        _ = proxy.hnsw.efSearsh
    with pytest.raises(AttributeError):
        proxy.hnsw.efSearsh = 3
    with pytest.raises(AttributeError):
        proxy.get_parameter("nprobe")
    with pytest.raises(AttributeError):
        proxy.set_parameter("nprobe", 3)
    with pytest.raises(AttributeError):
        proxy.ntotal = 5
    assert proxy.hnsw.efSearch == 16


# -- HNSW: SearchParametersHNSW ----------------------------------------------------------------


def test_search_parameters_hnsw_and_selectors_match_local(remote):
    local = faiss.IndexHNSWFlat(D, 16)
    local.add(BASE)
    proxy = upload(remote, local)
    cases = [
        ({"efSearch": 8}, None),
        ({"efSearch": 100}, ("range", 200, 700)),
        ({}, ("batch", np.arange(0, 1200, 3, dtype="int64"))),
        (
            {"efSearch": 40, "check_relative_distance": False},
            ("array", np.arange(50, 400, dtype="int64")),
        ),
    ]
    for kwargs, sel in cases:
        if sel is None:
            sel_l = sel_r = None
        elif sel[0] == "range":
            sel_l, sel_r = faiss.IDSelectorRange(*sel[1:]), remote.IDSelectorRange(*sel[1:])
        elif sel[0] == "batch":
            sel_l, sel_r = faiss.IDSelectorBatch(sel[1]), remote.IDSelectorBatch(sel[1])
        else:
            sel_l, sel_r = faiss.IDSelectorArray(sel[1]), remote.IDSelectorArray(sel[1])
        extra = {} if sel is None else {"sel": sel_l}
        params_l = faiss.SearchParametersHNSW(**kwargs, **extra)
        params_r = remote.SearchParametersHNSW(**kwargs, **({} if sel is None else {"sel": sel_r}))
        Dr, Ir = proxy.search(QUERIES, K, params=params_r)
        same((Dr, Ir), local.search(QUERIES, K, params=params_l))
        if sel is not None:
            allowed = {i for i in range(len(BASE)) if sel_l.is_member(i)}
            assert set(Ir[Ir >= 0].tolist()) <= allowed
        same(
            proxy.range_search(QUERIES, 12.0, params=params_r),
            local.range_search(QUERIES, 12.0, params=params_l),
        )
    # efSearch in the params wins over the index's, as in faiss
    proxy.hnsw.efSearch = 300
    local.hnsw.efSearch = 300
    same(
        proxy.search(QUERIES, K, params=remote.SearchParametersHNSW(efSearch=4)),
        local.search(QUERIES, K, params=faiss.SearchParametersHNSW(efSearch=4)),
    )


def test_search_parameters_hnsw_component_attributes(remote):
    local = faiss.SearchParametersHNSW(efSearch=12)
    params = remote.SearchParametersHNSW(efSearch=12)
    assert not isinstance(params, faiss.SearchParameters)
    assert params.efSearch == local.efSearch == 12
    assert params.check_relative_distance is local.check_relative_distance is True
    assert params.bounded_queue is local.bounded_queue is True
    params.efSearch = 32
    local.efSearch = 32
    assert params.efSearch == local.efSearch == 32
    with pytest.raises(ValueError, match="efSearch"):
        params.efSearch = 0
    with pytest.raises(ValueError, match="efSearch"):
        remote.SearchParametersHNSW(efSearch=-3)
    with pytest.raises(AttributeError):
        params.nprobe = 3
    raises_like_local(
        AssertionError,
        lambda: faiss.SearchParametersHNSW(nprobe=2),
        lambda: remote.SearchParametersHNSW(nprobe=2),
    )
    assert params.efSearch == 32


# -- HNSW: constructors and persistence --------------------------------------------------------


def test_constructors_take_faiss_positional_order(remote):
    for cls_name, args in HNSW_CASES:
        local, proxy = pair(remote, cls_name, *args)
        assert (proxy.d, proxy.metric_type) == (local.d, local.metric_type)
        assert proxy.is_trained == local.is_trained
    pq = remote.IndexHNSWPQ(D, 4, 16, pq_nbits=6, metric=IP)  # keywords too, remotely
    assert pq.spec.params["pq_nbits"] == 6 and pq.metric_type == IP
    # faiss has no default for M (a TypeError); code written for the original FAISSx omits
    # it and got M=32, which the client keeps (faissx_client/original.py, docs/client.md)
    with pytest.raises(TypeError):
        faiss.IndexHNSWFlat(D)
    assert remote.IndexHNSWFlat(D).hnsw.nb_neighbors(1) == faiss.IndexHNSWFlat(
        D, 32
    ).hnsw.nb_neighbors(1)


@pytest.mark.parametrize(
    ("cls_name", "args", "match"),
    [
        ("IndexHNSWFlat", (D, 1), "M"),  # faiss: assertion abort
        ("IndexHNSWFlat", (D, 0), "M"),  # faiss: segfault
        ("IndexHNSWFlat", (D, 16, 999), "metric"),
        ("IndexHNSWSQ", (D, SQ8, 16, faiss.METRIC_L1), "metric"),  # faiss: abort in add
        ("IndexHNSWSQ", (D, faiss.ScalarQuantizer.QT_0bit, 16), "qtype"),  # faiss: abort in add
        ("IndexHNSWSQ", (D, 99, 16), "qtype"),
        ("IndexHNSWPQ", (D, 5, 16), "multiple"),  # faiss: RuntimeError
        ("IndexHNSWPQ", (D, 4, 16, 0), "pq_nbits"),  # faiss: segfault
        ("IndexHNSWPQ", (D, 4, 16, 8, faiss.METRIC_L1), "metric"),  # faiss: silently L2
    ],
)
def test_constructor_arguments_that_break_faiss_are_refused(remote, cls_name, args, match):
    with pytest.raises(ValueError, match=match):
        getattr(remote, cls_name)(*args)
    proxy = remote.IndexHNSWFlat(D, 16)  # the server is unharmed
    proxy.add(BASE[:10])
    assert proxy.ntotal == 10


def test_pickle_round_trips_a_graph(remote):
    local, proxy = pair(remote, "IndexHNSWSQ", D, SQ8, 16)
    train_and_fill(local, proxy)
    proxy.hnsw.efSearch = 72
    again = pickle.loads(pickle.dumps(proxy))
    assert type(again).__name__ == "IndexHNSWSQ" and again.name != proxy.name
    assert again.hnsw.efSearch == 72 and again.ntotal == len(BASE)
    same(again.search(QUERIES, K), proxy.search(QUERIES, K))
    np.testing.assert_array_equal(again.serialize(), proxy.serialize())
    data = pickle.dumps(again)
    expected = again.search(QUERIES, K)
    remote.disconnect()  # unpickled in local mode it is plain faiss
    plain = pickle.loads(data)
    assert isinstance(plain, faiss.IndexHNSWSQ) and plain.hnsw.efSearch == 72
    same(plain.search(QUERIES, K), expected)


# -- IDMap / IDMap2 ---------------------------------------------------------------------------

WRAPPERS = ["IndexIDMap", "IndexIDMap2"]


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_idmap_over_flat_matches_local(remote, wrapper):
    local, proxy = wrapped(remote, wrapper, "IndexFlatL2", D)
    assert type(proxy).__name__ == wrapper
    assert (proxy.d, proxy.metric_type, proxy.is_trained) == (D, faiss.METRIC_L2, True)
    assert proxy.spec.params["index"]["type"] == "IndexFlatL2"
    train_and_fill(local, proxy, IDS)
    Dr, Ir = proxy.search(QUERIES, K)
    same((Dr, Ir), local.search(QUERIES, K))
    assert np.isin(Ir, IDS).all(), "results carry the external ids"
    same(*both(local, proxy, "assign", QUERIES, 3))
    same(*both(local, proxy, "range_search", QUERIES, 9.0))
    # a selector over external ids: faiss translates it for the inner index
    sel = (int(IDS[100]), int(IDS[400]))
    same(
        proxy.search(QUERIES, K, params=remote.SearchParameters(sel=remote.IDSelectorRange(*sel))),
        local.search(QUERIES, K, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(*sel))),
    )
    raises_like_local(RuntimeError, lambda: local.add(BASE[:3]), lambda: proxy.add(BASE[:3]))
    assert proxy.ntotal == local.ntotal == len(BASE)


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_idmap_over_hnsw_matches_local_and_exposes_ef(remote, wrapper):
    local, proxy = wrapped(remote, wrapper, "IndexHNSWFlat", D, 16)
    assert proxy._runtime_params() == {
        "efSearch": "index.hnsw.efSearch",
        "efConstruction": "index.hnsw.efConstruction",
    }
    train_and_fill(local, proxy, IDS)
    same_graph(local, proxy)
    same_graph_search(local, proxy)
    inner = faiss.downcast_index(local.index)
    assert proxy.efSearch == proxy.get_parameter("efSearch") == inner.hnsw.efSearch == 16
    faiss.ParameterSpace().set_index_parameter(local, "efSearch", 64)
    remote.ParameterSpace().set_index_parameter(proxy, "efSearch", 64)
    assert proxy.efSearch == inner.hnsw.efSearch == 64
    same_graph_search(local, proxy)
    proxy.set_parameter("efSearch", 20)
    inner.hnsw.efSearch = 20
    same_graph_search(local, proxy)
    with pytest.raises(ValueError, match="efSearch"):
        proxy.efSearch = 0
    chosen = IDS[::4]
    params_l = faiss.SearchParametersHNSW(efSearch=50, sel=faiss.IDSelectorBatch(chosen))
    params_r = remote.SearchParametersHNSW(efSearch=50, sel=remote.IDSelectorBatch(chosen))
    Dl, Il = local.search(QUERIES, K, params=params_l)
    Dr, Ir = proxy.search(QUERIES, K, params=params_r)
    assert np.isin(Ir[Ir >= 0], chosen).all()
    if DETERMINISTIC_BUILD:
        same((Dr, Ir), (Dl, Il))


@pytest.mark.parametrize(
    "inner", [("IndexFlatL2", (D,)), ("IndexHNSWFlat", (D, 16))], ids=["Flat", "HNSW"]
)
def test_idmap2_reconstructs_by_external_id(remote, inner):
    local, proxy = wrapped(remote, "IndexIDMap2", inner[0], *inner[1])
    train_and_fill(local, proxy, IDS)
    same(*both(local, proxy, "reconstruct", int(IDS[5])))
    np.testing.assert_array_equal(proxy.reconstruct(int(IDS[5])), BASE[5])
    keys = IDS[[7, 0, 1199, 7]]
    same(*both(local, proxy, "reconstruct_batch", keys))
    out = np.zeros(D, dtype="float32")
    assert proxy.reconstruct(int(IDS[9]), out) is out
    np.testing.assert_array_equal(out, BASE[9])
    Dr, Ir, Rr = proxy.search_and_reconstruct(QUERIES, 3)
    if DETERMINISTIC_BUILD or inner[0] == "IndexFlatL2":
        same((Dr, Ir, Rr), local.search_and_reconstruct(QUERIES, 3))
    np.testing.assert_array_equal(Rr, BASE[(Ir - 1000) // 7])  # rows are the hits' vectors
    for missing in (0, 1001):  # a position, and an id never added
        raises_like_local(
            RuntimeError,
            lambda m=missing: local.reconstruct(m),
            lambda m=missing: proxy.reconstruct(m),
        )
    raises_like_local(
        RuntimeError,
        lambda: local.reconstruct_batch(np.array([IDS[0], 3], dtype="int64")),
        lambda: proxy.reconstruct_batch(np.array([IDS[0], 3], dtype="int64")),
    )


def test_idmap2_reconstruct_n_where_keys_are_ids(remote):
    """reconstruct_n(n0, ni) reads ids n0..n0+ni-1 on an IDMap2: fine when they all exist."""
    local, proxy = wrapped(remote, "IndexIDMap2", "IndexFlatL2", D)
    ids = np.arange(len(BASE), dtype="int64")
    train_and_fill(local, proxy, ids)
    same(*both(local, proxy, "reconstruct_n", 40, 25))
    same(*both(local, proxy, "reconstruct_n", 0, len(BASE)))


def test_idmap_without_reverse_map_cannot_reconstruct(remote):
    local, proxy = wrapped(remote, "IndexIDMap", "IndexFlatL2", D)
    train_and_fill(local, proxy, IDS)
    key = int(IDS[3])
    raises_like_local(RuntimeError, lambda: local.reconstruct(key), lambda: proxy.reconstruct(key))
    raises_like_local(
        RuntimeError,
        lambda: local.reconstruct_batch(IDS[:2]),
        lambda: proxy.reconstruct_batch(IDS[:2]),
    )
    raises_like_local(
        RuntimeError,
        lambda: local.search_and_reconstruct(QUERIES, 2),
        lambda: proxy.search_and_reconstruct(QUERIES, 2),
    )


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_remove_ids_matches_local(remote, wrapper):
    local, proxy = wrapped(remote, wrapper, "IndexFlatL2", D)
    train_and_fill(local, proxy, IDS)
    by_ids = np.array([IDS[0], IDS[10], IDS[11], 5, 999_999], dtype="int64")  # 2 not present
    assert proxy.remove_ids(by_ids) == local.remove_ids(by_ids) == 3
    rng = (int(IDS[100]), int(IDS[150]))
    assert (
        proxy.remove_ids(remote.IDSelectorRange(*rng))
        == local.remove_ids(faiss.IDSelectorRange(*rng))
        == 50
    )
    batch = IDS[[500, 501, 502, 0]]  # IDS[0] is gone already
    assert (
        proxy.remove_ids(remote.IDSelectorBatch(batch))
        == local.remove_ids(faiss.IDSelectorBatch(batch))
        == 3
    )
    arr = IDS[[600, 601]]
    assert (
        proxy.remove_ids(remote.IDSelectorArray(arr))
        == local.remove_ids(faiss.IDSelectorArray(arr))
        == 2
    )
    assert proxy.ntotal == local.ntotal == len(BASE) - 58
    same(*both(local, proxy, "search", QUERIES, K))
    same(*both(local, proxy, "range_search", QUERIES, 9.0))
    if wrapper == "IndexIDMap2":
        raises_like_local(
            RuntimeError,
            lambda: local.reconstruct(int(IDS[10])),
            lambda: proxy.reconstruct(int(IDS[10])),
        )
        same(*both(local, proxy, "reconstruct", int(IDS[12])))


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_remove_ids_over_hnsw_fails_as_in_faiss(remote, wrapper):
    local, proxy = wrapped(remote, wrapper, "IndexHNSWFlat", D, 16)
    train_and_fill(local, proxy, IDS)
    raises_like_local(
        RuntimeError, lambda: local.remove_ids(IDS[:3]), lambda: proxy.remove_ids(IDS[:3])
    )
    raises_like_local(
        RuntimeError,
        lambda: local.remove_ids(faiss.IDSelectorRange(0, 2000)),
        lambda: proxy.remove_ids(remote.IDSelectorRange(0, 2000)),
    )
    assert proxy.ntotal == local.ntotal == len(BASE)


@pytest.mark.parametrize(
    ("wrapper", "add_id"), [("IndexIDMap", 0), ("IndexIDMap", 50_000), ("IndexIDMap2", 0)]
)
def test_merge_from_remote_into_remote_matches_local(remote, wrapper, add_id):
    target_l, target_r = wrapped(remote, wrapper, "IndexFlatL2", D)
    source_l, source_r = wrapped(remote, wrapper, "IndexFlatL2", D)
    for index, ids in ((target_l, IDS), (target_r, IDS)):
        index.add_with_ids(BASE[:700], ids[:700])
    for index in (source_l, source_r):
        index.add_with_ids(BASE[700:], IDS[700:] + 1)
    target_l.merge_from(source_l, add_id)
    target_r.merge_from(source_r, add_id)
    assert target_r.ntotal == target_l.ntotal == len(BASE)
    assert source_r.ntotal == source_l.ntotal == 0, "faiss empties the source"
    Dr, Ir = target_r.search(QUERIES, K)
    same((Dr, Ir), target_l.search(QUERIES, K))
    moved = IDS[700:] + 1 + add_id  # faiss shifts the source's ids by add_id
    assert np.isin(Ir, np.concatenate([IDS[:700], moved])).all() and np.isin(Ir, moved).any()
    if wrapper == "IndexIDMap2":
        merged_id = int(IDS[900] + 1)
        same(*both(target_l, target_r, "reconstruct", merged_id))
        np.testing.assert_array_equal(target_r.reconstruct(merged_id), BASE[900])


def test_merge_from_over_hnsw_fails_as_in_faiss(remote):
    target_l, target_r = wrapped(remote, "IndexIDMap", "IndexHNSWFlat", D, 16)
    source_l, source_r = wrapped(remote, "IndexIDMap", "IndexHNSWFlat", D, 16)
    for index in (target_l, target_r, source_l, source_r):
        index.add_with_ids(BASE[:50], IDS[:50])
    raises_like_local(
        RuntimeError, lambda: target_l.merge_from(source_l), lambda: target_r.merge_from(source_r)
    )
    assert target_r.ntotal == source_r.ntotal == 50


@pytest.mark.parametrize(
    ("wrapper", "inner", "args"),
    [
        ("IndexIDMap2", "IndexHNSWSQ", (D, SQ8, 16)),
        ("IndexIDMap", "IndexHNSWPQ", (D, 4, 16, 6)),
    ],
    ids=["IDMap2-HNSWSQ", "IDMap-HNSWPQ"],
)
def test_idmap_trains_the_index_it_wraps(remote, wrapper, inner, args):
    local, proxy = wrapped(remote, wrapper, inner, *args)
    assert proxy.is_trained is local.is_trained is False
    train_and_fill(local, proxy, IDS)
    same_graph(local, proxy)
    same_graph_search(local, proxy)


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_idmap_reset_forgets_ids(remote, wrapper):
    local, proxy = wrapped(remote, wrapper, "IndexFlatL2", D)
    train_and_fill(local, proxy, IDS)
    local.reset()
    proxy.reset()
    assert proxy.ntotal == local.ntotal == 0
    same(*both(local, proxy, "search", QUERIES, 2))
    local.add_with_ids(BASE[:20], IDS[:20] + 3)
    proxy.add_with_ids(BASE[:20], IDS[:20] + 3)
    same(*both(local, proxy, "search", QUERIES, 4))
    if wrapper == "IndexIDMap2":
        same(*both(local, proxy, "reconstruct", int(IDS[4] + 3)))


def test_idmap2_over_hnsw_pickles_with_ids_and_knobs(remote):
    local, proxy = wrapped(remote, "IndexIDMap2", "IndexHNSWFlat", D, 16)
    train_and_fill(local, proxy, IDS)
    proxy.set_parameter("efSearch", 30)
    again = pickle.loads(pickle.dumps(proxy))
    assert type(again).__name__ == "IndexIDMap2"
    assert again.efSearch == 30 and again.ntotal == len(BASE)
    same(again.search(QUERIES, K), proxy.search(QUERIES, K))
    same(again.reconstruct(int(IDS[77])), local.reconstruct(int(IDS[77])))


def test_idmap_attributes_and_knobs_it_lacks(remote):
    local, proxy = wrapped(remote, "IndexIDMap", "IndexFlatL2", D)
    for index in (local, proxy):
        with pytest.raises(AttributeError):
            _ = index.efSearch  # a Flat inside has no efSearch
        with pytest.raises(AttributeError):
            index.efSearch = 3
    with pytest.raises(AttributeError):
        proxy.set_parameter("efSearch", 3)
    local.metric_type = proxy.metric_type = IP  # faiss lets it be set; so does the proxy
    assert proxy.metric_type == local.metric_type == IP
    assert proxy._runtime_params() == {}


def test_idmap_refuses_what_is_not_a_float_index(remote):
    with pytest.raises(ValueError, match="wraps an index"):
        _ = remote.IndexIDMap(remote.SearchParametersHNSW(efSearch=3)).ntotal
    # a local faiss index travels as faiss's bytes, a copy (tests/test_dropin_composite.py)
    assert isinstance(remote.IndexIDMap2(faiss.IndexFlatL2(D)), remote.RemoteIndex)
    raises_like_local(
        (TypeError, ValueError),
        lambda: faiss.IndexIDMap(faiss.IndexBinaryFlat(64)),
        lambda: remote.IndexIDMap(remote.index_binary_factory(64, "BFlat")).ntotal,
    )


# -- gaps that need the core (see the report) ----------------------------------------------


@contextlib.contextmanager
def own_server(start_server):
    """A server of this test's own, for requests that may kill it, and a short timeout."""
    from faissx import client as fx

    server = start_server()
    fx.configure(server=server.endpoint, timeout=1.0)
    try:
        yield fx, server
    finally:
        fx.disconnect()


def test_reconstruct_n_on_an_idmap_does_not_kill_the_server(start_server):
    with own_server(start_server) as (fx, own):
        proxy = fx.IndexIDMap(fx.IndexFlatL2(D))
        proxy.add_with_ids(BASE[:20], IDS[:20])
        with pytest.raises(RuntimeError):  # locally the same call aborts the process
            proxy.reconstruct_n(0, 5)
        assert own.alive


def test_range_search_on_an_empty_graph_does_not_kill_the_server(start_server):
    with own_server(start_server) as (fx, own):
        proxy = fx.IndexHNSWFlat(D, 16)
        lims, dist, ids = proxy.range_search(QUERIES, 1.0)  # locally: the process aborts
        assert lims.tolist() == [0] * (len(QUERIES) + 1) and ids.size == dist.size == 0
        assert own.alive


def test_wrapping_a_trained_remote_index_keeps_its_training(remote):
    local_inner = faiss.IndexHNSWSQ(D, SQ8, 16)
    remote_inner = remote.IndexHNSWSQ(D, SQ8, 16)
    local_inner.train(TRAIN)
    remote_inner.train(TRAIN)
    local = faiss.IndexIDMap(local_inner)
    proxy = remote.IndexIDMap(remote_inner)
    assert local.is_trained
    assert proxy.is_trained


def test_downcast_inner_index_idiom_reaches_ef_search(remote):
    local, proxy = wrapped(remote, "IndexIDMap2", "IndexHNSWFlat", D, 16)
    faiss.downcast_index(local.index).hnsw.efSearch = 77
    remote.downcast_index(proxy.index).hnsw.efSearch = 77
    assert proxy.efSearch == 77


def test_add_before_training_fails_as_in_faiss(remote):
    local, proxy = pair(remote, "IndexHNSWPQ", D, 4, 16)
    with pytest.raises(RuntimeError):
        local.add(BASE[:10])
    with pytest.raises(RuntimeError):
        proxy.add(BASE[:10])


def test_parameter_space_unknown_parameter_fails_as_in_faiss(remote):
    local, proxy = wrapped(remote, "IndexIDMap", "IndexFlatL2", D)
    with pytest.raises(RuntimeError):
        faiss.ParameterSpace().set_index_parameter(local, "efSearch", 8)
    with pytest.raises(RuntimeError):
        remote.ParameterSpace().set_index_parameter(proxy, "efSearch", 8)
