"""Drop-in fidelity: what FAISS's own tests use, remote against local faiss, value for value.

Each test runs the same code on plain faiss and through ``faissx.client`` configured against a
real server, and compares what comes back: clones, index classes only the generic family serves,
structural attributes read as remote views (``nlist``, ``invlists``, ``pq``, ``hnsw``,
``quantizer``, ``storage``, ``chain``), knobs written through them, selector combinations and
nested search parameters. Where faiss trains (k-means), both sides train on the same data with
the same seed and thread count, so results match exactly unless stated.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from faissx_core.errors import InvalidArgument, UnsupportedOperation

D = 16


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(7)
    return {
        "xt": rs.rand(600, D).astype("float32"),
        "xb": rs.rand(300, D).astype("float32"),
        "xq": rs.rand(10, D).astype("float32"),
    }


def both(remote, build):
    """(local faiss object, remote proxy) built by the same function of a faiss module."""
    return build(faiss), build(remote)


def fill(index, data, ids=None):
    if not index.is_trained:
        index.train(data["xt"])
    if ids is None:
        index.add(data["xb"])
    else:
        index.add_with_ids(data["xb"], ids)
    return index


def assert_same_search(local, proxy, xq, k=5):
    Dl, Il = local.search(xq, k)
    Dr, Ir = proxy.search(xq, k)
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5)


# -- clone_index ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["Flat", "IVF8,Flat", "IDMap2,Flat", "PCA8,IVF4,PQ4x4"])
def test_clone_is_a_server_side_copy(remote, data, key):
    ids = np.arange(300, dtype="int64") * 7 if "IDMap" in key else None
    local, proxy = both(remote, lambda f: fill(f.index_factory(D, key), data, ids))
    lclone, rclone = faiss.clone_index(local), remote.clone_index(proxy)
    assert isinstance(rclone, remote.RemoteIndex) and rclone.name != proxy.name
    assert rclone.ntotal == lclone.ntotal == 300
    assert_same_search(lclone, rclone, data["xq"])
    proxy.reset()  # the copy is independent of its source, as in faiss
    assert rclone.ntotal == 300


def test_clone_of_a_local_index_stays_faiss(remote):
    copy = remote.clone_index(faiss.IndexFlatL2(D))
    assert isinstance(copy, faiss.IndexFlatL2)


# -- classes only the generic family serves ------------------------------------------------

GENERIC = {
    "IndexLSH": lambda f: f.IndexLSH(D, 32),
    "IndexRefineFlat": lambda f: f.IndexRefineFlat(f.IndexLSH(D, 32)),
    "IndexPQFastScan": lambda f: f.IndexPQFastScan(D, 4, 4),
    "IndexResidualQuantizer": lambda f: f.IndexResidualQuantizer(D, 2, 4),
    "IndexNNDescentFlat": lambda f: f.IndexNNDescentFlat(D, 8),
    "IndexIVFResidualQuantizer": lambda f: f.IndexIVFResidualQuantizer(
        f.IndexFlatL2(D), D, 4, 2, 4
    ),
}


@pytest.mark.parametrize("name", sorted(GENERIC))
def test_generic_family_builds_on_the_server(remote, data, name):
    local, proxy = both(remote, lambda f: fill(GENERIC[name](f), data))
    assert isinstance(proxy, remote.RemoteIndex)
    assert type(proxy).__name__ == name and isinstance(proxy, getattr(remote, name))
    assert proxy.spec.type == "faiss_index" and proxy.spec.params["cls"] == name
    if name == "IndexNNDescentFlat":  # graph construction is randomised per thread
        assert proxy.ntotal == local.ntotal
        return
    assert_same_search(local, proxy, data["xq"])


def test_generic_binary_hnsw(remote):
    codes = np.random.RandomState(3).randint(0, 256, (200, 8)).astype("uint8")
    local, proxy = both(remote, lambda f: f.IndexBinaryHNSW(64, 8))
    for index in (local, proxy):
        index.add(codes)
    Dl, Il = local.search(codes[:5], 3)
    Dr, Ir = proxy.search(codes[:5], 3)
    np.testing.assert_array_equal(Dl, Dr)
    np.testing.assert_array_equal(Il[:, 0], Ir[:, 0])


def test_factory_result_is_typed_after_its_faiss_class(remote):
    proxy = remote.index_factory(D, "LSH")
    assert type(proxy).__name__ == "IndexLSH" and isinstance(proxy, remote.IndexLSH)


def test_generic_refuses_what_faiss_cannot_serialize(remote):
    with pytest.raises(UnsupportedOperation, match="cannot serialize"):
        remote.IndexSplitVectors(D, False).ntotal  # noqa: B018 (the first use creates it)
    # IndexShards / IndexReplicas are held by the client instead (tests/test_dropin_composite.py)


def test_generic_bounds_and_class_checks(remote):
    with pytest.raises(InvalidArgument, match="outside"):
        remote.IndexLSH(D, 1 << 30).ntotal  # noqa: B018
    client = remote.get_client()
    for params in (
        {"cls": "IDSelectorRange", "args": [0, 1]},
        {"cls": "GpuIndexFlatL2", "args": [D]},
    ):
        with pytest.raises(InvalidArgument):
            client.call(
                "create",
                "nope",
                {"spec": {"type": "faiss_index", "params": params}, "ephemeral": False},
            )


def test_undeclared_class_in_remote_mode_never_builds_locally(remote):
    proxy = remote.IndexLSH(D, 16)
    assert not isinstance(proxy, faiss.Index)


# -- structural attributes as remote views -------------------------------------------------


def ivfpq(f, data):
    index = f.IndexIVFPQ(f.IndexFlatL2(D), D, 8, 4, 4)
    index.cp.min_points_per_centroid = 5  # a knob written through a view
    return fill(index, data)


def test_ivf_views_match_faiss(remote, data):
    local, proxy = both(remote, lambda f: ivfpq(f, data))
    assert proxy.cp.min_points_per_centroid == local.cp.min_points_per_centroid == 5
    assert proxy.nlist == local.nlist and proxy.code_size == local.code_size
    assert (proxy.pq.M, proxy.pq.nbits) == (local.pq.M, local.pq.nbits)
    np.testing.assert_array_equal(
        remote.vector_to_array(proxy.pq.centroids), faiss.vector_to_array(local.pq.centroids)
    )
    linv, rinv = local.invlists, proxy.invlists
    for i in range(local.nlist):
        n = linv.list_size(i)
        assert rinv.list_size(i) == n
        np.testing.assert_array_equal(
            remote.rev_swig_ptr(rinv.get_ids(i), n), faiss.rev_swig_ptr(linv.get_ids(i), n)
        )
    lq, rq = faiss.downcast_index(local.quantizer), remote.downcast_index(proxy.quantizer)
    assert isinstance(rq, remote.IndexFlatL2) and rq.ntotal == lq.ntotal == 8
    np.testing.assert_array_equal(rq.search(data["xq"], 2)[1], lq.search(data["xq"], 2)[1])
    np.testing.assert_array_equal(rq.reconstruct_n(0, 8), lq.reconstruct_n(0, 8))
    assert remote.extract_index_ivf(proxy) is proxy


def test_hnsw_and_storage_views(remote, data):
    local, proxy = both(remote, lambda f: fill(f.IndexHNSWFlat(D, 8), data))
    np.testing.assert_array_equal(
        remote.vector_to_array(proxy.hnsw.levels), faiss.vector_to_array(local.hnsw.levels)
    )
    np.testing.assert_array_equal(
        remote.vector_to_array(proxy.hnsw.neighbors), faiss.vector_to_array(local.hnsw.neighbors)
    )
    assert proxy.hnsw.max_level == local.hnsw.max_level
    storage = remote.downcast_index(proxy.storage)
    assert isinstance(storage, remote.IndexFlatL2) and storage.ntotal == 300
    storage.sync_l2norms()  # the norms cache: results unchanged
    assert_same_search(local, proxy, data["xq"])
    storage.clear_l2norms()
    assert storage.sa_code_size() == faiss.downcast_index(local.storage).sa_code_size()


def test_chain_and_ivf_inside_a_pretransform(remote, data):
    local, proxy = both(remote, lambda f: fill(f.index_factory(D, "PCA8,IVF4,Flat"), data))
    assert proxy.chain.size() == local.chain.size() == 1
    pca = proxy.chain.at(0)
    assert pca.faiss_class == "PCAMatrix" and (pca.d_in, pca.d_out) == (D, 8)
    lpca = faiss.downcast_VectorTransform(local.chain.at(0))
    np.testing.assert_allclose(remote.vector_to_array(pca.A), faiss.vector_to_array(lpca.A))
    livf, rivf = faiss.extract_index_ivf(local), remote.extract_index_ivf(proxy)
    assert rivf.nlist == livf.nlist == 4
    livf.nprobe = rivf.nprobe = 3
    assert rivf.nprobe == 3
    assert_same_search(local, proxy, data["xq"])


def test_view_writes_go_to_the_server_and_are_checked(remote, data):
    proxy = remote.IndexIVFFlat(remote.IndexFlatL2(D), D, 4)
    proxy.train(data["xt"])
    proxy.metric_type = faiss.METRIC_INNER_PRODUCT
    assert proxy.metric_type == faiss.METRIC_INNER_PRODUCT
    proxy.by_residual = False
    assert proxy.by_residual is False
    for attr in ("code_size", "nlist", "own_fields"):  # sizes and pointers stay the server's
        with pytest.raises(AttributeError, match="cannot be set"):
            setattr(proxy, attr, 1)
    with pytest.raises(AttributeError, match="read-only"):
        proxy.d = 3
    with pytest.raises(InvalidArgument, match="METRIC"):
        proxy.metric_type = 12345
    with pytest.raises(AttributeError):
        proxy.no_such_member  # noqa: B018
    assert not hasattr(proxy, "id_map")


def test_view_paths_refuse_methods_and_internals(remote):
    proxy = remote.IndexFlatL2(D)
    proxy.add(np.zeros((1, D), "float32"))
    for path in ("__class__", "a..b", "x" * 70, ".".join(["codes"] * 9)):  # not paths
        with pytest.raises(InvalidArgument):
            proxy._call("get_attr", {"path": path})
    for path in ("train", "this", "nprobe"):  # a method, SWIG's pointer, another class's
        with pytest.raises(AttributeError, match="no data member"):
            proxy._call("get_attr", {"path": path})
    with pytest.raises(AttributeError):
        proxy.nprobe = 2  # a flat index has no inverted lists to probe
    with pytest.raises(InvalidArgument, match="read-only method"):
        proxy._call("call_attr", {"path": "", "method": "reset", "args": []})
    with pytest.raises(UnsupportedOperation, match="tuning knob"):
        proxy._call("set_attr", {"path": "ntotal", "value": 5})
    assert proxy.ntotal == 1


# -- selectors -----------------------------------------------------------------------------


def selector_cases(f, nb):
    rs = np.random.RandomState(5)
    a = rs.choice(nb, 60, replace=False).astype("int64")
    b = rs.choice(nb, 40, replace=False).astype("int64")
    bitmap = np.zeros(nb, dtype=bool)
    bitmap[a] = True
    return {
        "not": f.IDSelectorNot(f.IDSelectorBatch(a)),
        "and": f.IDSelectorAnd(f.IDSelectorBatch(a), f.IDSelectorArray(b)),
        "or": f.IDSelectorOr(f.IDSelectorRange(10, 50), f.IDSelectorBatch(b)),
        "xor": f.IDSelectorXOr(f.IDSelectorBatch(a), f.IDSelectorBatch(b)),
        "bitmap": f.IDSelectorBitmap(np.packbits(bitmap, bitorder="little")),
        "nested": f.IDSelectorNot(f.IDSelectorOr(f.IDSelectorRange(0, 100), f.IDSelectorArray(b))),
    }


@pytest.mark.parametrize("kind", ["not", "and", "or", "xor", "bitmap", "nested"])
def test_selector_combinations_filter_like_faiss(remote, data, kind):
    local, proxy = both(remote, lambda f: fill(f.IndexFlatL2(D), data))
    lsel = selector_cases(faiss, 300)[kind]
    rsel = selector_cases(remote, 300)[kind]
    Dl, Il = local.search(data["xq"], 8, params=faiss.SearchParameters(sel=lsel))
    Dr, Ir = proxy.search(data["xq"], 8, params=remote.SearchParameters(sel=rsel))
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5)
    assert rsel.is_member(int(Ir[0, 0])) and lsel.is_member(int(Il[0, 0]))
    assert proxy.remove_ids(rsel) == local.remove_ids(lsel)


def test_local_readable_selectors_cross_the_wire(remote, data):
    """A bitmap / array / range selector built by faiss itself (before configure) is read."""
    bitmap = np.packbits(np.arange(300) % 3 == 0, bitorder="little")
    lsel = faiss.IDSelectorOr(faiss.IDSelectorBitmap(bitmap), faiss.IDSelectorRange(0, 5))
    local, proxy = both(remote, lambda f: fill(f.IndexFlatL2(D), data))
    Dl, Il = local.search(data["xq"], 6, params=faiss.SearchParameters(sel=lsel))
    Dr, Ir = proxy.search(data["xq"], 6, params=remote.SearchParameters(sel=lsel))
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5)
    with pytest.raises(InvalidArgument, match="cannot be sent"):
        proxy.remove_ids(faiss.IDSelectorBatch(np.arange(3)))  # a C++ hash set: unreadable


@pytest.mark.parametrize("imin,imax", [(10, 20), (-10, 20), (12, 92), (40, 50)])
def test_find_sorted_ids_bounds(remote, imin, imax):
    ids = np.sort(np.random.RandomState(1).choice(30, 100).astype("int64"))
    out = {}
    for name, f in (("local", faiss), ("remote", remote)):
        j01 = np.zeros(2, dtype="uint64")
        f.IDSelectorRange(imin, imax, True).find_sorted_ids_bounds(
            len(ids), f.swig_ptr(ids), f.swig_ptr(j01[:1]), f.swig_ptr(j01[1:])
        )
        out[name] = j01.tolist()
    assert out["local"] == out["remote"]


def test_selector_array_from_swig_ptr(remote, data):
    """``IDSelectorArray(n, faiss.swig_ptr(ids))``, as FAISS's tests write it."""
    local, proxy = both(remote, lambda f: fill(f.IndexFlatL2(D), data))
    ids = np.arange(0, 60, 3, dtype="int64")
    for f, index in ((faiss, local), (remote, proxy)):
        assert index.remove_ids(f.IDSelectorArray(10, f.swig_ptr(ids))) == 10
    with pytest.raises(AssertionError):  # faiss takes ids as a 1-d array only ...
        local.remove_ids(np.array(200, dtype="int64"))
    with pytest.raises(InvalidArgument, match="1-d"):  # ... and so does the proxy
        proxy.remove_ids(np.array(200, dtype="int64"))
    assert proxy.ntotal == local.ntotal == 290
    assert_same_search(local, proxy, data["xq"])


# -- nested search parameters --------------------------------------------------------------


def test_search_parameters_ivf_with_quantizer_params(remote, data):
    def build(f):
        return fill(f.IndexIVFFlat(f.IndexHNSWFlat(D, 8), D, 16), data)

    local, proxy = both(remote, build)
    for ef in (2, 16):
        lp = faiss.SearchParametersIVF(
            nprobe=4, quantizer_params=faiss.SearchParametersHNSW(efSearch=ef)
        )
        rp = remote.SearchParametersIVF(
            nprobe=4, quantizer_params=remote.SearchParametersHNSW(efSearch=ef)
        )
        np.testing.assert_array_equal(
            local.search(data["xq"], 5, params=lp)[1], proxy.search(data["xq"], 5, params=rp)[1]
        )


# -- distance computers and refine parameters ----------------------------------------------

DC_INDICES = {
    "Flat": lambda f: f.IndexFlatL2(D),
    "SQ8": lambda f: f.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit),
    "PQ": lambda f: f.IndexPQ(D, 4, 4),
}


@pytest.mark.parametrize("key", sorted(DC_INDICES))
@pytest.mark.parametrize("flat", [False, True])
def test_distance_computer_matches_faiss(remote, data, key, flat):
    local, proxy = both(remote, lambda f: fill(DC_INDICES[key](f), data))
    get = "get_FlatCodesDistanceComputer" if flat else "get_distance_computer"
    dl, dr = getattr(local, get)(), getattr(proxy, get)()
    assert dr.this.own()
    xq = data["xq"]
    dl.set_query(faiss.swig_ptr(xq[2]))
    dr.set_query(remote.swig_ptr(xq[2]))
    np.testing.assert_allclose([dr(i) for i in range(5)], [dl(i) for i in range(5)], rtol=1e-5)
    np.testing.assert_allclose(dr.distances(range(5)), [dl(i) for i in range(5)], rtol=1e-5)
    if key != "PQ":  # faiss's PQ computer has no symmetric distance ('sdc' failed) ...
        assert dr.symmetric_dis(1, 2) == pytest.approx(dl.symmetric_dis(1, 2), rel=1e-5)
    else:  # ... and the remote one says so the same way
        with pytest.raises(RuntimeError, match="sdc"):
            dr.symmetric_dis(1, 2)
    with pytest.raises(Exception, match="out of range"):
        dr(300)


def test_refine_search_parameters_nest_the_base_params(remote, data):
    def build(f):
        index = f.IndexRefineFlat(f.IndexIVFFlat(f.IndexFlatL2(D), D, 8))
        return fill(index, data)

    local, proxy = both(remote, build)
    for k_factor, nprobe in ((1.0, 1), (2.0, 8)):
        lp = faiss.IndexRefineSearchParameters(
            k_factor=k_factor, base_index_params=faiss.IVFSearchParameters(nprobe=nprobe)
        )
        rp = remote.IndexRefineSearchParameters(
            k_factor=k_factor, base_index_params=remote.IVFSearchParameters(nprobe=nprobe)
        )
        Dl, Il = local.search(data["xq"], 5, params=lp)
        Dr, Ir = proxy.search(data["xq"], 5, params=rp)
        np.testing.assert_array_equal(Il, Ir)
        np.testing.assert_allclose(Dl, Dr, rtol=1e-5)


def test_search_and_return_codes_and_standalone_codec(remote, data):
    local, proxy = both(remote, lambda f: fill(f.index_factory(D, "IVF8,PQ4x4np"), data))
    local.nprobe = proxy.nprobe = 4
    xq = data["xq"]
    Dl, Il, Cl = local.search_and_return_codes(xq, 5, include_listnos=True)
    Dr, Ir, Cr = proxy.search_and_return_codes(xq, 5, include_listnos=True)
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_array_equal(Cl, Cr)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5)
    np.testing.assert_array_equal(proxy.sa_encode(xq), local.sa_encode(xq))
    np.testing.assert_array_equal(proxy.sa_decode(Cr[0]), local.sa_decode(Cl[0]))
    with pytest.raises(InvalidArgument, match="uint8 codes"):
        proxy.sa_decode(np.zeros((2, 99), dtype="uint8"))
    with pytest.raises(InvalidArgument, match="out of bounds"):
        proxy.search_and_return_codes(xq, 1 << 21)


def test_quantizer_parameters_char_flags_and_hashtable_removal(remote, data):
    def build(f):
        index = f.IndexIVFFlat(f.IndexHNSWFlat(D, 8), D, 8)
        index.quantizer_trains_alone = 2  # a C++ char member (2: k-means, then fill it)
        return fill(index, data)

    local, proxy = both(remote, build)
    assert proxy.quantizer_trains_alone == local.quantizer_trains_alone == "\x02"
    faiss.ParameterSpace().set_index_parameter(local, "quantizer_efSearch", 5)
    remote.ParameterSpace().set_index_parameter(proxy, "quantizer_efSearch", 5)
    assert remote.downcast_index(proxy.quantizer).hnsw.efSearch == 5
    lq = faiss.downcast_index(local.quantizer)
    assert proxy.quantizer.hnsw.nb_neighbors(0) == lq.hnsw.nb_neighbors(0) == 16
    for index in (local, proxy):
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        assert index.remove_ids(np.arange(0, 30, 3, dtype="int64")) == 10
    assert_same_search(local, proxy, data["xq"])


def test_ivf_early_termination_params_and_opq_knobs(remote, data):
    for f in (faiss, remote):
        p = f.SearchParametersIVF(nprobe=4)
        assert (p.max_lists_num, p.ensure_topk_full, p.max_empty_result_buckets) == (0, False, 0)
        p.max_lists_num, p.ensure_topk_full = 2, True
        assert (p.max_lists_num, p.ensure_topk_full) == (2, True)

    def build(f):
        opq = f.OPQMatrix(D, 4)
        opq.niter, opq.niter_pq = 3, 2
        return fill(f.IndexPreTransform(opq, f.IndexIVFFlat(f.IndexFlatL2(D), D, 8)), data)

    local, proxy = both(remote, build)
    assert proxy.chain.at(0).niter == 3
    lp = faiss.SearchParametersIVF(nprobe=8, max_lists_num=2, ensure_topk_full=True)
    rp = remote.SearchParametersIVF(nprobe=8, max_lists_num=2, ensure_topk_full=True)
    np.testing.assert_array_equal(
        local.search(data["xq"], 5, params=lp)[1], proxy.search(data["xq"], 5, params=rp)[1]
    )


def test_view_writes_and_clones_survive_a_restart(start_server, tmp_path, data):
    """set_attr is a logged write: a knob faiss does not serialize (ClusteringParameters) is
    replayed from the log; a named clone is durable like any named index."""
    from faissx import client as fx

    data_dir = tmp_path / "data"
    srv = start_server("--data-dir", str(data_dir))
    fx.configure(server=srv.endpoint, timeout=60)
    try:
        index = fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 4, name="knobs")
        index.cp.min_points_per_centroid = 7
        index.train(data["xt"])
        index.add(data["xb"])
        fx.clone_index(index, name="knobs-copy")
        srv.kill()
        srv = start_server("--data-dir", str(data_dir))
        fx.configure(server=srv.endpoint, timeout=60)
        again = fx.open_index("knobs")
        assert again.cp.min_points_per_centroid == 7
        copy = fx.open_index("knobs-copy")
        assert copy.ntotal == again.ntotal == 300
        np.testing.assert_array_equal(copy.search(data["xq"], 3)[1], again.search(data["xq"], 3)[1])
    finally:
        fx.disconnect()
