"""Drop-in fidelity of an index's structure: parts shared between indices, members assigned,
members downcast, and selectors faiss builds from an index or a Python function.

Each test runs the same code on plain faiss and through ``faissx.client`` configured against a
real server and compares what comes back. Where faiss lets code do something the server must
not (mark an index trained whose scalar ranges are missing, hand a quantizer more centroids
than lists), the remote side raises a typed error and the index is left as it was.
"""

from __future__ import annotations

import signal
import sys

import faiss
import numpy as np
import pytest

import faissx_client as fx
from faissx_core.errors import InvalidArgument, NotTrained, UnsupportedOperation

from .conftest import restarted_after_kill_9

D = 16
NLIST = 8


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(11)
    return {
        "xt": rs.rand(800, D).astype("float32"),
        "xb": rs.rand(300, D).astype("float32"),
        "xq": rs.rand(12, D).astype("float32"),
    }


def same(local, proxy, xq, k=5, lparams=None, rparams=None):
    Dl, Il = local.search(xq, k, params=lparams)
    Dr, Ir = proxy.search(xq, k, params=rparams)
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5, atol=1e-6)


# -- a part handed to a constructor is that index's member -------------------------------------


def shared_quantizer(f, data):
    quantizer = f.IndexFlatL2(D)
    first = f.IndexIVFFlat(quantizer, D, NLIST)
    first.train(data["xt"])
    second = f.IndexIVFFlat(quantizer, D, NLIST)  # faiss: the same, trained, quantizer
    return quantizer, first, second


def test_a_quantizer_trained_through_its_ivf_serves_the_next_ivf(remote, data):
    lq, l1, l2 = shared_quantizer(faiss, data)
    rq, r1, r2 = shared_quantizer(remote, data)
    assert l2.is_trained and r2.is_trained
    assert lq.ntotal == rq.ntotal == NLIST
    for local, proxy in ((l1, r1), (l2, r2)):
        local.add(data["xb"])
        proxy.add(data["xb"])
        local.nprobe = proxy.nprobe = 3
        same(local, proxy, data["xq"])
    same(lq, rq, data["xq"], k=2)  # the quantizer itself, searched as faiss users do


def test_a_rebound_index_variable_keeps_the_quantizer_it_trained(remote, data):
    """``index = IVF(q, ...)`` twice: the first index goes away before the second exists."""
    for f in (faiss, remote):
        quantizer = f.IndexFlatL2(D)
        index = f.IndexIVFFlat(quantizer, D, NLIST)
        index.train(data["xt"])
        index = f.IndexIVFFlat(quantizer, D, NLIST)
        assert index.is_trained, f


def test_an_idmaps_inner_index_holds_what_was_added_through_it(remote, data):
    ids = np.arange(300, dtype="int64") + 1000
    sides = []
    for f in (faiss, remote):
        sub = f.IndexFlatL2(D)
        index = f.IndexIDMap2(sub)
        index.add_with_ids(data["xb"], ids)
        sides.append((sub, index))
    (lsub, lidx), (rsub, ridx) = sides
    assert lsub.ntotal == rsub.ntotal == 300
    lims_l, Dl, Il = lsub.range_search(data["xb"][:2], 0.5)
    lims_r, Dr, Ir = rsub.range_search(data["xb"][:2], 0.5)
    np.testing.assert_array_equal(lims_l, lims_r)
    np.testing.assert_array_equal(Il, Ir)
    np.testing.assert_allclose(Dl, Dr, rtol=1e-5)
    same(lidx, ridx, data["xq"])


def side_by_side(f, data):
    """FAISS's TestIndependentQuantizer.test_sidebyside, smaller: an IVF's quantizer, read
    back as ``index.quantizer`` and wrapped, is the coarse quantizer of another index that
    sees each vector twice, side by side."""
    from faiss.contrib.inspect_tools import make_LinearTransform_matrix

    index = f.index_factory(D, "IVF8,SQ8")
    index.train(data["xt"])
    index.add(data["xb"])
    index.nprobe = 3
    first = make_LinearTransform_matrix(np.eye(2 * D, dtype="float32")[:D])
    last = make_LinearTransform_matrix(np.eye(2 * D, dtype="float32")[D:])
    quantizer = f.IndexPreTransform(first, index.quantizer)
    return index, f.IndexIVFIndependentQuantizer(quantizer, index, last)


def test_a_member_read_back_is_a_part_of_another_index(remote, data):
    xq2 = np.hstack([data["xq"]] * 2)
    for f in (faiss, remote):
        index, doubled = side_by_side(f, data)
        D_ref, I_ref = index.search(data["xq"], 5)
        D_new, I_new = doubled.search(xq2, 5)
        np.testing.assert_array_equal(I_ref, I_new)
        np.testing.assert_array_equal(D_ref, D_new)
        doubled.reset()
        doubled.add(np.hstack([data["xb"]] * 2))
        D_new, I_new = doubled.search(xq2, 5)
        np.testing.assert_array_equal(I_ref, I_new)
        np.testing.assert_array_equal(D_ref, D_new)


# -- members assigned: pq, sq, quantizer, polysemous_training, flags ----------------------------


def merge_by_shared_pq(f, data):
    quantizer = f.IndexFlatL2(D)
    master = f.IndexIVFPQ(quantizer, D, NLIST, 4, 4)
    master.train(data["xt"])
    shard = f.IndexIVFPQ(quantizer, D, NLIST, 4, 4)
    shard.pq = master.pq
    shard.is_trained = True
    shard.add(data["xb"])
    shard.nprobe = 4
    return shard


def test_pq_and_is_trained_assigned_from_another_index(remote, data):
    same(merge_by_shared_pq(faiss, data), merge_by_shared_pq(remote, data), data["xq"])


def pq_from_python(f, data):
    pq = f.ProductQuantizer(D, 4, 4)  # a local faiss object in both modes
    pq.train(data["xt"])
    index = f.IndexPQ(D, 4, 4)
    index.pq = pq
    index.is_trained = True
    index.add(data["xb"])
    return index, pq


def test_a_local_product_quantizer_is_sent_to_a_remote_index(remote, data):
    local, lpq = pq_from_python(faiss, data)
    proxy, _ = pq_from_python(remote, data)
    same(local, proxy, data["xq"])
    np.testing.assert_array_equal(
        faiss.vector_to_array(lpq.centroids), remote.vector_to_array(proxy.pq.centroids)
    )


def test_a_product_quantizer_of_another_shape_is_refused(remote, data):
    index = remote.IndexPQ(D, 4, 4)
    wrong = faiss.ProductQuantizer(D, 8, 4)
    with pytest.raises(InvalidArgument, match="M=8"):
        index.pq = wrong
    assert index.pq.M == 4 and not index.is_trained


def sq_with_extra_columns(f, data):
    """FAISS's add2col recipe: a trained SQ's ranges copied, widened, into a new index."""
    index = f.IndexIVFScalarQuantizer(f.IndexFlatL2(D), D, NLIST, faiss.ScalarQuantizer.QT_8bit)
    index.train(data["xt"])
    trained = f.vector_to_array(index.sq.trained).reshape(2, -1)
    wide = np.hstack((trained, np.zeros((2, 2), dtype="float32")))
    wide[1, D:] = 1.0
    centroids = f.vector_float_to_array(f.downcast_index(index.quantizer).codes)
    quantizer2 = f.IndexFlatL2(D + 2)
    quantizer2.add(
        np.hstack((centroids.view("float32").reshape(NLIST, D), np.zeros((NLIST, 2), "float32")))
    )
    index2 = f.IndexIVFScalarQuantizer(quantizer2, D + 2, NLIST, faiss.ScalarQuantizer.QT_8bit)
    f.copy_array_to_vector(wide.ravel(), index2.sq.trained)
    index2.is_trained = True
    index2.add(np.hstack((data["xb"], np.zeros((300, 2), dtype="float32"))))
    index2.nprobe = 4
    return index2


def test_copy_array_to_vector_fills_a_remote_scalar_quantizer(remote, data):
    xq = np.hstack((data["xq"], np.zeros((12, 2), dtype="float32")))
    same(sq_with_extra_columns(faiss, data), sq_with_extra_columns(remote, data), xq)


def test_is_trained_is_refused_where_the_state_is_incomplete(remote, data):
    index = remote.IndexIVFScalarQuantizer(
        remote.IndexFlatL2(D), D, NLIST, faiss.ScalarQuantizer.QT_8bit
    )
    with pytest.raises(UnsupportedOperation, match="trained values"):
        index.is_trained = True  # faiss would then read ranges it does not have
    assert not index.is_trained
    with pytest.raises(InvalidArgument, match="holds 32 values"):
        remote.copy_array_to_vector(np.ones(5, dtype="float32"), index.sq.trained)
    lsh = remote.IndexLSH(D, 8, True, True)
    with pytest.raises(UnsupportedOperation, match="cannot check"):
        lsh.is_trained = True
    big = remote.IndexFlatL2(D)
    big.add(data["xt"][: 2 * NLIST])
    ivf = remote.IndexIVFFlat(big, D, NLIST)  # faiss: untrained, 16 centroids for 8 lists
    assert not ivf.is_trained
    with pytest.raises(UnsupportedOperation, match="16 centroids for 8 lists"):
        ivf.is_trained = True  # its list numbers would run past the lists
    untrained = remote.IndexIVFPQ(remote.IndexFlatL2(D), D, NLIST, 4, 4)
    with pytest.raises(NotTrained, match="precomputed table"):
        untrained.use_precomputed_table = 1
    with pytest.raises(NotTrained):
        untrained.precompute_table()


def polysemous(f, data):
    index = f.IndexIVFPQ(f.IndexFlatL2(D), D, NLIST, 4, 4)
    index.do_polysemous_training = True
    pt = f.PolysemousTraining()
    pt.n_iter = 2000
    pt.n_redo = 1
    index.polysemous_training = pt
    return index


def test_polysemous_training_parameters_are_assigned(remote, data):
    local, proxy = polysemous(faiss, data), polysemous(remote, data)
    assert local.polysemous_training.n_iter == proxy.polysemous_training.n_iter == 2000
    assert proxy.polysemous_training.n_redo == 1
    local.train(data["xt"])
    proxy.train(data["xt"])
    assert proxy.is_trained


def precomputed(f, data, mode):
    index = f.IndexIVFPQ(f.IndexFlatL2(D), D, NLIST, 4, 4)
    index.train(data["xt"])
    index.add(data["xb"])
    index.nprobe = 4
    index.use_precomputed_table = mode
    index.precompute_table()
    return index


@pytest.mark.parametrize("mode", [0, 1])
def test_use_precomputed_table(remote, data, mode):
    local, proxy = precomputed(faiss, data, mode), precomputed(remote, data, mode)
    assert local.use_precomputed_table == proxy.use_precomputed_table
    same(local, proxy, data["xq"])
    with pytest.raises(InvalidArgument, match="MultiIndexQuantizer"):
        proxy.use_precomputed_table = 2


def replaced_quantizer(f, data):
    index = f.IndexIVFFlat(f.IndexFlatL2(D), D, NLIST)
    index.train(data["xt"])
    centroids = index.quantizer.reconstruct_n(0, NLIST)
    quantizer2 = f.IndexFlatL2(D)
    quantizer2.add(centroids[::-1].copy())  # the same centroids, lists renumbered
    index.quantizer = quantizer2
    index.add(data["xb"])
    index.nprobe = 2
    return index, quantizer2


def test_an_ivfs_quantizer_is_replaced(remote, data):
    local, _ = replaced_quantizer(faiss, data)
    proxy, _ = replaced_quantizer(remote, data)
    same(local, proxy, data["xq"])
    too_many = remote.IndexFlatL2(D)
    too_many.add(data["xt"][: NLIST + 1])
    with pytest.raises(InvalidArgument, match="9 centroids for 8 lists"):
        proxy.quantizer = too_many  # its ids would index lists that do not exist
    other_d = remote.IndexFlatL2(D + 1)
    with pytest.raises(InvalidArgument, match="d=17"):
        proxy.quantizer = other_d
    same(local, proxy, data["xq"])


def test_assignments_are_logged_and_replayed(start_server, tmp_path, data):
    srv = start_server("--data-dir", str(tmp_path / "d"))
    fx.configure(server=srv.endpoint, timeout=120)
    try:
        master = fx.IndexIVFPQ(fx.IndexFlatL2(D), D, NLIST, 4, 4)
        master.train(data["xt"])
        index = fx.IndexIVFPQ(fx.IndexFlatL2(D), D, NLIST, 4, 4, name="assigned")
        index.quantizer = master.quantizer
        index.pq = master.pq
        index.is_trained = True
        index.add(data["xb"])
        before = index.search(data["xq"], 5)
        centroids = fx.vector_to_array(master.pq.centroids)
    finally:
        fx.disconnect()
    with restarted_after_kill_9(srv, timeout=120):
        again = fx.open_index("assigned")
        assert again.is_trained
        np.testing.assert_array_equal(fx.vector_to_array(again.pq.centroids), centroids)
        after = again.search(data["xq"], 5)
        np.testing.assert_array_equal(before[1], after[1])
        srv.stop(signal.SIGKILL)


def test_an_index_faiss_would_snapshot_incompletely_is_not_stored_named(start_server, tmp_path):
    """faiss writes an untrained IndexIVFPQR incompletely (read back, its refine quantizer is
    empty and training it divides by zero): unnamed it is kept as built, named it is refused."""
    srv = start_server("--data-dir", str(tmp_path / "d"))
    fx.configure(server=srv.endpoint, timeout=120)
    try:
        with pytest.raises(UnsupportedOperation, match=r"IndexIVFPQR .*incomplete"):
            fx.IndexIVFPQR(fx.IndexFlatL2(D), D, NLIST, 4, 4, 4, 4, name="pqr")
        unnamed = fx.IndexIVFPQR(fx.IndexFlatL2(D), D, NLIST, 4, 4, 4, 4)
        unnamed.train(np.random.RandomState(0).rand(400, D).astype("float32"))
        assert unnamed.is_trained
    finally:
        fx.disconnect()
        srv.stop(signal.SIGKILL)


# -- members downcast to their own class -------------------------------------------------------


def test_downcast_member_is_its_own_class_and_reaches_the_member(remote, data):
    local = faiss.index_factory(D, "IVF8_HNSW32,Flat")
    proxy = remote.index_factory(D, "IVF8_HNSW32,Flat")
    for index in (local, proxy):
        index.train(data["xt"])
    lq = faiss.downcast_index(local.quantizer)
    rq = remote.downcast_index(proxy.quantizer)
    assert type(lq) is faiss.IndexHNSWFlat and type(rq) is remote.IndexHNSWFlat
    assert isinstance(rq, remote.IndexHNSW) and rq.ntotal == lq.ntotal == NLIST
    assert rq.hnsw.nb_neighbors(1) == lq.hnsw.nb_neighbors(1)
    rq.hnsw.efSearch = 77
    assert remote.downcast_index(proxy.quantizer).hnsw.efSearch == 77
    same(lq, rq, data["xq"], k=3)
    np.testing.assert_array_equal(lq.reconstruct(2), rq.reconstruct(2))
    with pytest.raises(UnsupportedOperation, match="through the index that holds it"):
        rq.add(data["xq"])


@pytest.mark.parametrize(
    ("key", "path", "cls"),
    [
        ("IVF8(LSHr),Flat", "quantizer", "IndexLSH"),
        ("IDMap,PQ4x4fs,RFlat", "index", "IndexRefineFlat"),
    ],
)
def test_downcast_class_identity_as_in_faiss(remote, key, path, cls):
    local_index, proxy_index = faiss.index_factory(D, key), remote.index_factory(D, key)
    local = faiss.downcast_index(getattr(local_index, path))  # faiss: valid while the index is
    proxy = remote.downcast_index(getattr(proxy_index, path))
    assert type(local) is getattr(faiss, cls)
    assert proxy.__class__ is getattr(remote, cls)


def test_faiss_refusing_a_factory_string_is_a_runtime_error(remote):
    for f in (faiss, remote):
        with pytest.raises(RuntimeError):
            f.index_factory(10, "PQ4")
    with pytest.raises(ValueError, match="multiple"):  # and still the ValueError it was
        remote.index_factory(10, "PQ4")


def test_flat_1d_searches_as_flat_1d(remote):
    rs = np.random.RandomState(5)
    xb = rs.uniform(size=(50, 1)).astype("float32")
    xq = rs.uniform(size=(20, 1)).astype("float32")
    local, proxy = faiss.IndexFlat1D(), remote.IndexFlat1D()
    for index in (local, proxy):
        index.add(xb)
    same(local, proxy, xq)


# -- selectors ---------------------------------------------------------------------------------


def idmap_sq(f, data, ids):
    index = f.index_factory(D, "IDMap,SQ8")
    index.train(data["xt"])
    index.add_with_ids(data["xb"], ids)
    return index


def test_id_selector_translated(remote, data):
    ids = np.random.RandomState(3).choice(10000, size=300, replace=False).astype("int64")
    valid = ids[ids % 2 == 0]
    local, proxy = idmap_sq(faiss, data, ids), idmap_sq(remote, data, ids)
    lsel = faiss.IDSelectorTranslated(local, faiss.IDSelectorBatch(valid))
    rsel = remote.IDSelectorTranslated(proxy, remote.IDSelectorBatch(valid))
    same(
        local,
        proxy,
        data["xq"],
        lparams=faiss.SearchParameters(sel=lsel),
        rparams=remote.SearchParameters(sel=rsel),
    )
    other = idmap_sq(remote, data, ids)
    with pytest.raises(InvalidArgument, match="translates through the id map"):
        other.search(data["xq"], 5, params=remote.SearchParameters(sel=rsel))


def test_py_callback_selector_is_evaluated_here(remote, data):
    subset = np.random.RandomState(4).choice(300, 40, replace=False)

    def is_member(i):
        return i in subset

    local = faiss.index_factory(D, "IVF8,Flat")
    proxy = remote.index_factory(D, "IVF8,Flat")
    for index in (local, proxy):
        index.train(data["xt"])
        index.add(data["xb"])
    same(
        local,
        proxy,
        data["xq"],
        lparams=faiss.SearchParametersIVF(sel=faiss.PyCallbackIDSelector(is_member), nprobe=4),
        rparams=remote.SearchParametersIVF(sel=remote.PyCallbackIDSelector(is_member), nprobe=4),
    )
    removed_l = local.remove_ids(faiss.PyCallbackIDSelector(is_member))
    removed_r = proxy.remove_ids(remote.PyCallbackIDSelector(is_member))
    assert removed_l == removed_r == 40 and local.ntotal == proxy.ntotal


def test_search_parameters_keep_their_selector_alive(remote):
    sel = remote.IDSelectorBatch(np.arange(50))
    assert sel.this.own()
    params = remote.SearchParameters(sel=sel)
    before = sys.getrefcount(sel)
    del params
    assert sys.getrefcount(sel) == before - 1


def imi(f, data):
    """FAISS's test_IMI recipe: a trained MultiIndexQuantizer's pq moved into a
    MultiIndexQuantizer2 over explicit sub-quantizers, which then replaces the IVF's."""
    nbits = 3
    coarse = f.MultiIndexQuantizer(D, 2, nbits)
    index = f.IndexIVFPQ(coarse, D, (1 << nbits) ** 2, 4, 4)
    index.quantizer_trains_alone = 1
    index.train(data["xt"])
    pq = coarse.pq
    centroids = f.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    sub = []
    for half in centroids:
        flat = f.IndexFlatL2(pq.dsub)
        flat.add(half)
        sub.append(flat)
    coarse2 = f.MultiIndexQuantizer2(D, nbits, sub[0], sub[1])
    coarse2.pq = pq
    coarse2.is_trained = True
    index.quantizer = coarse2
    index.add(data["xb"])
    index.nprobe = 16
    return index, (coarse2, sub)


def test_a_multi_index_quantizer_is_rebuilt_and_swapped_in(remote, data):
    local, keep = imi(faiss, data)  # faiss: the index points into these, kept alive here
    proxy, _ = imi(remote, data)
    same(local, proxy, data["xq"])
    assert keep[0].d == proxy.quantizer.d == D
    assert faiss.downcast_index(local.quantizer).pq.M == proxy.quantizer.pq.M == 2
