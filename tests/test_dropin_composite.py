"""Drop-in fidelity of composites: IndexShards / IndexReplicas (float, binary, IVF) over remote
sub-indices, held by the client (faissx_client/shards.py), against faiss's own wrappers over
local sub-indices: the same adds, the same merged results (ties included), the same flags, and
the same refusals.
"""

from __future__ import annotations

import gc
import pickle
import signal

import faiss
import numpy as np
import pytest

from faissx_client.proxy import RemoteIndex
from faissx_core.errors import FaissError, FaissxWarning, InvalidArgument, UnsupportedOperation

D = 16


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(11)
    xb = rs.rand(300, D).astype("float32")
    xb[150:160] = xb[:10]  # exact duplicates in another shard: ties the merge must order
    return {
        "xt": rs.rand(600, D).astype("float32"),
        "xb": xb,
        "xq": np.vstack([xb[:5], rs.rand(15, D).astype("float32")]),
    }


def assert_same(local: tuple[np.ndarray, np.ndarray], remote: tuple[np.ndarray, np.ndarray]):
    np.testing.assert_array_equal(local[1], remote[1])
    np.testing.assert_allclose(local[0], remote[0], rtol=1e-5, atol=1e-6)


def fill(index, data):
    if not index.is_trained:
        index.train(data["xt"])
    index.add(data["xb"])
    return index


def sharded(f, make, nshard, *args, fill=None):
    """A wrapper of module ``f`` over ``nshard`` sub-indices from ``make(f)``; ``fill(sub, s)``
    adds to each before it is handed over. The subs are kept alive with the wrapper."""
    wrapper = f.IndexShards(*args) if args else f.IndexShards(D)
    subs = [make(f) for _ in range(nshard)]
    for s, sub in enumerate(subs):
        if fill is not None:
            fill(sub, s)
        wrapper.add_shard(sub)
    return wrapper, subs


# -- IndexShards -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT])
@pytest.mark.parametrize("threaded", [False, True])
def test_shards_merge_like_faiss(remote, data, metric, threaded):
    """Shards filled separately, successive ids: same merged ids and distances, ties in
    faiss's order (the duplicated rows sit in two shards)."""
    xb = data["xb"]

    def fill(sub, s):
        sub.add(xb[s * 100 : (s + 1) * 100])

    local, _keep = sharded(faiss, lambda f: f.IndexFlat(D, metric), 3, D, threaded, fill=fill)
    proxy, subs = sharded(remote, lambda f: f.IndexFlat(D, metric), 3, D, threaded, fill=fill)
    assert all(isinstance(s, RemoteIndex) for s in subs)
    assert isinstance(proxy, remote.IndexShards) and not isinstance(proxy, faiss.IndexShards)
    assert (proxy.ntotal, proxy.metric_type, proxy.is_trained) == (300, metric, True)
    assert_same(local.search(data["xq"], 7), proxy.search(data["xq"], 7))
    assert_same(local.search(data["xq"], 250), proxy.search(data["xq"], 250))  # -1 padding


def test_shards_add_splits_rows_like_faiss(remote, data):
    """``add`` cuts the rows into consecutive slices; without successive ids the wrapper
    numbers them (``add_with_ids`` on id maps), and a second add continues the numbering."""

    def make(f):
        return f.IndexIDMap(f.IndexFlatL2(D))

    local, lsubs = sharded(faiss, make, 3, D, False, False)
    proxy, rsubs = sharded(remote, make, 3, D, True, False)
    for x in (data["xb"][:200], data["xb"][200:]):
        local.add(x)
        proxy.add(x)
    assert [s.ntotal for s in lsubs] == [s.ntotal for s in rsubs] == [99, 100, 101]
    assert proxy.ntotal == local.ntotal == 300
    assert_same(local.search(data["xq"], 10), proxy.search(data["xq"], 10))


def test_shards_pass_search_parameters_and_caller_ids(remote, data):
    """``search(params=...)`` reaches every shard; ``add_with_ids`` without successive ids
    keeps the caller's ids (split like the rows)."""
    ids = np.arange(300, dtype="int64") * 3 + 7
    sel = (np.arange(300) % 2 == 0).nonzero()[0] * 3 + 7  # keep every other stored id

    def run(f):
        # faiss 1.15's threaded IndexShards crashes on a search with params: its reference is
        # unthreaded, the wrapper over remote shards threaded
        index = f.IndexShards(D, f is remote, False)
        subs = [f.IndexIDMap2(f.IndexFlatL2(D)) for _ in range(3)]
        for sub in subs:
            index.add_shard(sub)
        index.add_with_ids(data["xb"], ids)
        selector = f.IDSelectorBatch(sel.astype("int64"))  # kept alive: params points to it
        params = f.SearchParameters(sel=selector)
        return (subs, selector), index.search(data["xq"], 6, params=params)

    _lk, lfound = run(faiss)
    _rk, rfound = run(remote)
    assert_same(lfound, rfound)
    assert set(rfound[1].ravel().tolist()) <= set(sel.tolist())


def test_a_failing_shard_fails_the_call_after_all_ran(remote, data):
    """A sub-index's error is the wrapper's (threaded or not); the others still ran."""
    for threaded in (False, True):
        index = remote.IndexShards(D, threaded, False)
        subs = [remote.IndexFlatL2(D), remote.IndexIDMap(remote.IndexFlatL2(D))]
        for sub in subs:
            index.add_shard(sub)
        with pytest.raises(RuntimeError, match="add_with_ids"):
            index.add(data["xb"][:10])  # a flat index takes no ids: faiss refuses it too
        assert subs[1].ntotal == 5 and subs[0].ntotal == 0


def test_shards_flags_follow_faiss(remote, data):
    """faiss's test_shard_flag_propagation: training and ntotal propagate; removing a shard
    takes its vectors out of ntotal."""

    def run(f):
        subs = [f.IndexIVFFlat(f.IndexFlatL2(D), D, 4) for _ in range(2)]
        index = f.IndexShards(D, True)
        for sub in subs:
            index.add_shard(sub)
        seen = [index.is_trained]
        index.train(data["xt"])
        seen += [index.is_trained, index.ntotal]
        index.add(data["xb"])
        seen.append(index.ntotal)
        index.remove_shard(subs[1])
        seen.append(index.ntotal)
        index.remove_shard(subs[0])
        seen += [index.ntotal, index.count()]
        return seen

    assert run(remote) == run(faiss) == [False, True, 0, 300, 150, 0, 0]


def test_shards_refuse_what_faiss_refuses(remote, data):
    local, _lk = sharded(faiss, lambda f: f.IndexFlatL2(D), 2)
    proxy, subs = sharded(remote, lambda f: f.IndexFlatL2(D), 2)
    for index in (local, proxy):
        index.add(data["xb"])
        with pytest.raises(RuntimeError, match="single pass"):  # successive ids: one add
            index.add(data["xb"])
        with pytest.raises(RuntimeError, match="shifted"):
            index.add_with_ids(data["xb"], np.arange(300))
        with pytest.raises(RuntimeError, match="not implemented"):
            index.remove_ids(np.array([1], dtype="int64"))
        with pytest.raises(RuntimeError, match="not implemented"):
            index.reconstruct(1)
        with pytest.raises(RuntimeError, match="already in the collection"):
            index.add_shard(index.at(0))
    with pytest.raises(RuntimeError, match="dimension mismatch"):
        local.add_shard(faiss.IndexFlatL2(D + 1))
    with pytest.raises(FaissError, match="dimension mismatch"):
        proxy.add_shard(remote.IndexFlatL2(D + 1))
    assert proxy.count() == 2 and proxy.at(1) is subs[1]
    with pytest.raises(UnsupportedOperation, match="cannot be serialized"):
        remote.serialize_index(proxy)
    with pytest.raises(RuntimeError, match="clone not supported"):
        faiss.clone_index(local)
    with pytest.raises(UnsupportedOperation, match="clone not supported"):
        remote.clone_index(proxy)
    with pytest.raises(UnsupportedOperation, match="cannot be pickled"):
        pickle.dumps(proxy)
    with pytest.raises(FaissError, match="no sub-index"):  # faiss aborts the process here
        remote.IndexShards(D).search(data["xq"], 3)


def test_wrappers_are_faiss_before_configure():
    from faissx import client

    assert client.get_client() is None
    shards = client.IndexShards(D, False, False)
    assert type(shards) is faiss.IndexShards and isinstance(shards, client.IndexShards)
    assert type(client.IndexBinaryReplicas(False)) is faiss.IndexBinaryReplicas


def test_wrappers_over_local_subindices_in_remote_mode(remote, data):
    """Sub-indices the program made before configure() stay local; the wrapper holds them."""
    local_subs = [faiss.IndexFlatL2(D) for _ in range(2)]
    ref, _keep = sharded(faiss, lambda f: f.IndexFlatL2(D), 2)
    proxy = remote.IndexShards(D)
    for sub in local_subs:
        proxy.add_shard(sub)
    ref.add(data["xb"])
    proxy.add(data["xb"])
    assert_same(ref.search(data["xq"], 5), proxy.search(data["xq"], 5))


# -- IndexReplicas ---------------------------------------------------------------------------


@pytest.mark.parametrize("threaded", [False, True])
def test_replicas_like_faiss(remote, data, threaded):
    """Every replica gets every vector; queries are cut into slices, one per replica; the
    first replica reconstructs."""

    def run(f):
        index = f.IndexReplicas(threaded)  # no d: the first replica sets it
        subs = [f.IndexFlatL2(D) for _ in range(3)]
        for sub in subs:
            index.add_replica(sub)
        index.add(data["xb"])
        found = index.search(data["xq"], 6)
        return index, subs, found

    local, lsubs, lfound = run(faiss)
    proxy, rsubs, rfound = run(remote)
    assert proxy.d == D and proxy.ntotal == local.ntotal == 300
    assert [s.ntotal for s in rsubs] == [300] * 3
    assert_same(lfound, rfound)
    np.testing.assert_array_equal(local.reconstruct(7), proxy.reconstruct(7))
    np.testing.assert_array_equal(local.reconstruct_n(3, 4), proxy.reconstruct_n(3, 4))
    with pytest.raises(RuntimeError, match="search params"):
        proxy.search(data["xq"], 2, params=remote.SearchParameters())
    proxy.remove_replica(rsubs[0])
    local.remove_replica(lsubs[0])
    assert proxy.ntotal == local.ntotal == 300
    proxy.reset()
    assert proxy.ntotal == 0 and [s.ntotal for s in rsubs[1:]] == [0, 0]


def test_replica_flags_and_checks(remote, data):
    def run(f):
        subs = [f.IndexIVFFlat(f.IndexFlatL2(D), D, 4) for _ in range(2)]
        index = f.IndexReplicas(D, True)
        for sub in subs:
            index.add_replica(sub)
        seen = [index.is_trained]
        index.train(data["xt"])
        index.add(data["xb"])
        seen += [index.is_trained, index.ntotal]
        index.remove_replica(subs[1])
        seen.append(index.ntotal)
        index.remove_replica(subs[0])
        seen.append(index.ntotal)
        return seen

    assert run(remote) == run(faiss) == [False, True, 300, 300, 0]
    proxy = remote.IndexReplicas(D)
    full = remote.IndexFlatL2(D)
    full.add(data["xb"][:10])
    proxy.add_replica(full)
    with pytest.raises(FaissError, match="same number of vectors"):
        proxy.add_replica(remote.IndexFlatL2(D))
    assert proxy.count() == 1


# -- binary ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codes() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(5)
    xb = rs.randint(0, 256, size=(200, 4)).astype("uint8")
    return {"xb": xb, "xq": np.vstack([xb[:5], rs.randint(0, 256, (20, 4)).astype("uint8")])}


def test_binary_shards_like_faiss(remote, codes):
    def run(f):
        index = f.IndexBinaryShards(32)
        subs = [f.IndexBinaryFlat(32) for _ in range(5)]
        for s, sub in enumerate(subs):
            sub.add(codes["xb"][s * 40 : (s + 1) * 40])
            index.add_shard(sub)
        return index, subs, index.search(codes["xq"], 10)

    local, _lk, lfound = run(faiss)
    proxy, _rk, rfound = run(remote)
    assert proxy.code_size == local.code_size == 4 and proxy.ntotal == 200
    assert rfound[0].dtype == lfound[0].dtype == np.int32
    np.testing.assert_array_equal(lfound[0], rfound[0])
    np.testing.assert_array_equal(lfound[1], rfound[1])  # Hamming ties in faiss's order


def test_binary_replicas_like_faiss(remote, codes):
    def run(f):
        index = f.IndexBinaryReplicas(False)
        subs = [f.IndexBinaryFlat(32) for _ in range(5)]
        for sub in subs:
            index.addIndex(sub)
        index.add(codes["xb"])
        return index, subs, index.search(codes["xq"], 10)

    local, _lk, lfound = run(faiss)
    proxy, _rk, rfound = run(remote)
    assert proxy.code_size == local.code_size == 4
    np.testing.assert_array_equal(lfound[0], rfound[0])
    np.testing.assert_array_equal(lfound[1], rfound[1])
    with pytest.raises(ValueError, match="binary"):
        proxy.add_replica(remote.IndexFlatL2(32))


# -- IndexShardsIVF --------------------------------------------------------------------------

needs_preassigned = pytest.mark.skipif(
    not hasattr(RemoteIndex, "search_preassigned"),
    reason="remote search_preassigned is another branch's work (h/ivf)",
)


def test_shards_ivf_remote_shards_must_share_the_centroids(remote, data):
    """A remote shard assigns what it adds with its own quantizer, so ``add`` checks that it
    holds the shared centroids: shards built over the trained quantizer take the rows as
    faiss's would; a shard with centroids of its own is refused before anything is added."""
    quantizer = remote.IndexFlatL2(D)
    quantizer.add(data["xt"][:8])
    good = [remote.IndexIVFFlat(quantizer, D, 8) for _ in range(2)]  # copies of it, trained
    index = remote.IndexShardsIVF(quantizer, 8, True, False)
    for sub in good:
        index.add_shard(sub)
    assert index.is_trained
    index.add(data["xb"])
    assert index.ntotal == 300 and [s.ntotal for s in good] == [150, 150]

    other = remote.IndexFlatL2(D)
    other.add(data["xt"][8:16])
    stranger = remote.IndexIVFFlat(other, D, 8)
    mixed = remote.IndexShardsIVF(quantizer, 8, False, False)
    mixed.add_shard(remote.IndexIVFFlat(quantizer, D, 8))
    mixed.add_shard(stranger)
    with pytest.raises(FaissError, match="remote shard 1 holds other centroids"):
        mixed.add(data["xb"])
    assert mixed.ntotal == 0 and stranger.ntotal == 0


@needs_preassigned
def test_shards_ivf_train_add_search_like_faiss(remote, data):
    """One shared quantizer: trained once, its centroids given to every shard; a search
    probes it once. Changing its centroids changes the results, as in faiss."""

    def run(f):
        quantizer = f.IndexFlatL2(D)
        index = f.IndexShardsIVF(quantizer, 8, False, False)
        subs = [f.index_factory(D, "IVF8,Flat") for _ in range(3)]
        for sub in subs:
            index.add_shard(sub)
        index.train(data["xt"])
        index.add(data["xb"])
        for sub in subs:
            sub.nprobe = 3
        first = index.search(data["xq"], 5)
        centroids = quantizer.reconstruct_n(0, 8)[::-1].copy()
        quantizer.reset()
        quantizer.add(centroids)
        return index, first, index.search(data["xq"], 5)

    local, lfirst, lthen = run(faiss)
    proxy, rfirst, rthen = run(remote)
    assert proxy.is_trained and proxy.ntotal == local.ntotal == 300
    assert_same(lfirst, rfirst)
    assert_same(lthen, rthen)
    assert not np.array_equal(rfirst[1], rthen[1])


@needs_preassigned
def test_shards_ivf_over_clones_like_faiss(remote, data):
    """faiss's test_shards_ivf: shards cloned from one trained IVF, the wrapper over its
    quantizer (a remote view of it here), successive ids."""

    def run(f):
        ref = f.index_factory(D, "IVF8,SQ8")
        ref.train(data["xt"])
        index = f.IndexShardsIVF(ref.quantizer, ref.nlist, False, True)
        subs = []
        for s in range(3):
            sub = f.clone_index(ref)
            sub.add(data["xb"][s * 100 : (s + 1) * 100])
            subs.append(sub)
            index.add_shard(sub)
        return ref, subs, index.search(data["xq"], 10)

    *_lk, lfound = run(faiss)
    *_rk, rfound = run(remote)
    assert_same(lfound, rfound)


# -- faiss's IOWriter / IOReader with remote indices ------------------------------------------


def test_write_index_to_a_vector_writer_and_back(remote, data):
    """write_index into a VectorIOWriter gives faiss's bytes; read_index from a VectorIOReader
    uploads them (faiss's test_serialize_to_vector)."""
    local, proxy = faiss.IndexFlatL2(D), remote.IndexFlatL2(D)
    local.add(data["xb"])
    proxy.add(data["xb"])
    lw, rw = faiss.VectorIOWriter(), faiss.VectorIOWriter()
    faiss.write_index(local, lw)
    remote.write_index(proxy, rw)
    np.testing.assert_array_equal(faiss.vector_to_array(lw.data), faiss.vector_to_array(rw.data))
    reader = faiss.VectorIOReader()
    reader.data.swap(rw.data)
    copy = remote.read_index(reader)
    assert isinstance(copy, RemoteIndex) and copy.name != proxy.name
    assert_same(local.search(data["xq"], 5), copy.search(data["xq"], 5))


def test_binary_index_through_io_objects(remote, codes):
    proxy = remote.IndexBinaryFlat(32)
    proxy.add(codes["xb"])
    writer = faiss.VectorIOWriter()
    remote.write_index_binary(proxy, writer)
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(faiss.vector_to_array(writer.data), reader.data)
    copy = remote.read_index_binary(reader)
    np.testing.assert_array_equal(proxy.search(codes["xq"], 4)[1], copy.search(codes["xq"], 4)[1])


# -- a transform inside a remote index, applied through its view ------------------------------


def test_transform_view_applies_like_faiss(remote, data):
    """``index.chain.at(i).apply_py(x)`` runs faiss's transform on the server (faiss's
    test_chain); the width and the training are checked first."""

    def run(f):
        index = f.index_factory(D, "L2norm,PCA4,L2norm,Flat")
        pca = f.downcast_VectorTransform(index.chain.at(1))
        trained_before = pca.is_trained
        index.train(data["xt"])
        return index, pca, trained_before, pca.apply_py(data["xq"])

    _lkeep, lpca, lbefore, lout = run(faiss)  # the index owns the transform: keep it alive
    _rkeep, rpca, rbefore, rout = run(remote)
    assert lbefore is rbefore is False
    np.testing.assert_allclose(lout, rout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        lpca.reverse_transform(lout), rpca.reverse_transform(rout), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="width"):
        rpca.apply_py(data["xq"][:, :5])
    untrained = remote.index_factory(D, "PCA4,Flat").chain.at(0)
    with pytest.raises(RuntimeError, match="trained"):
        untrained.apply_py(data["xq"])


# -- local faiss objects handed to a remote index ----------------------------------------------


def select_first(d_in: int, d_out: int):
    """A trained LinearTransform keeping the first ``d_out`` components (faiss's
    make_LinearTransform_matrix, built on local faiss as faiss's tests build it)."""
    lt = faiss.LinearTransform(d_in, d_out, False)
    faiss.copy_array_to_vector(np.eye(d_in, dtype="float32")[:d_out].ravel(), lt.A)
    lt.is_trained = True
    lt.set_is_orthonormal()
    return lt


def test_local_transform_in_a_remote_pretransform(remote, data):
    """A LinearTransform the program built and trained locally travels as faiss's bytes
    (faiss's test_half_store)."""

    def run(f):
        ivf = f.index_factory(D // 2, "IVF8,Flat")
        ivf.nprobe = 4
        index = f.IndexPreTransform(select_first(D, D // 2), ivf)
        fill(index, data)
        return index, index.search(data["xq"], 5)

    local, lfound = run(faiss)
    proxy, rfound = run(remote)
    assert isinstance(proxy, RemoteIndex)
    assert_same(lfound, rfound)
    np.testing.assert_array_equal(
        faiss.vector_to_array(faiss.downcast_VectorTransform(local.chain.at(0)).A),
        remote.vector_to_array(proxy.chain.at(0).A),
    )


def test_local_transform_in_an_independent_quantizer(remote, data):
    def run(f):
        ivf = f.index_factory(D // 2, "IVF8,Flat")
        ivf.nprobe = 4
        index = f.IndexIVFIndependentQuantizer(f.IndexFlatL2(D), ivf, select_first(D, D // 2))
        fill(index, data)
        return index, index.search(data["xq"], 5)

    _lk, lfound = run(faiss)
    _rk, rfound = run(remote)
    assert_same(lfound, rfound)


def test_local_trained_quantizer_in_a_remote_ivf(remote, data):
    """A quantizer filled locally gives the remote IVF its centroids: no k-means runs."""
    centroids = data["xt"][:8].copy()

    def run(f, quantizer):
        index = f.IndexIVFFlat(quantizer, D, 8)
        trained = index.is_trained
        index.add(data["xb"])
        index.nprobe = 2
        return trained, index.search(data["xq"], 5)

    quantizers = []
    for _ in range(2):
        q = faiss.IndexFlatL2(D)
        q.add(centroids)
        quantizers.append(q)
    ltrained, lfound = run(faiss, quantizers[0])
    rtrained, rfound = run(remote, quantizers[1])
    assert ltrained is rtrained is True
    assert_same(lfound, rfound)
    assert quantizers[1].ntotal == 8  # the program's own object is untouched


def test_local_objects_too_large_or_unreadable(remote):
    big = faiss.IndexFlatL2(D)
    big.add(np.zeros((9000, D), dtype="float32"))  # 576 KB of vectors
    with pytest.raises(InvalidArgument, match=r"too large.*deserialize_index"):
        remote.IndexIVFFlat(big, D, 8)
    untrained = faiss.ITQTransform(D, D)  # faiss cannot read one back before training
    ivf = remote.IndexPreTransform(untrained, remote.IndexFlatL2(D))
    with pytest.raises(InvalidArgument, match="serialized"):
        ivf.add(np.zeros((1, D), "float32"))
    with pytest.raises(InvalidArgument, match="cannot be sent"):  # still no bytes for these
        remote.IndexFlatL2(D).search(
            np.zeros((1, D), "float32"), 1, params=faiss.SearchParameters()
        )


def test_hostile_serialized_parts_are_refused(remote):
    """A ``serialized`` spec that is not base64, not faiss's bytes, or of an unknown kind is a
    typed error, and nothing is created."""
    client = remote.get_client()
    flat = {"type": "IndexFlatL2", "params": {"d": D}}
    bad = [
        {"kind": "VectorTransform", "faiss_class": "X", "data": "not base64!"},
        {"kind": "VectorTransform", "faiss_class": "X", "data": "AAAAAAAA"},
        {"kind": "Index", "faiss_class": "X", "data": "QUJDRA=="},
        {"kind": "Selector", "faiss_class": "X", "data": ""},
    ]
    before = {i["name"] for i in remote.list_indexes()}
    for n, params in enumerate(bad):
        spec = {
            "type": "IndexPreTransform",
            "params": {"transform": {"type": "serialized", "params": params}, "index": flat},
        }
        with pytest.raises(InvalidArgument):
            client.call("create", f"hostile-{n}", {"spec": spec, "ephemeral": False})
    assert {i["name"] for i in remote.list_indexes()} == before


# -- IndexIVFSpectralHash.replace_vt ----------------------------------------------------------


def test_replace_vt_like_faiss(remote, data):
    """faiss's test_replace_vt: the index takes (and owns) a new transform; then it trains,
    adds and searches as faiss's does."""

    def run(f):
        index = f.IndexIVFSpectralHash(f.IndexFlatL2(D), D, 4, 16, 1.0)
        index.replace_vt(f.ITQTransform(D, 16))
        gc.collect()
        shape = (index.vt.d_in, index.vt.d_out, index.is_trained)
        index.train(data["xt"])
        index.add(data["xb"])
        index.nprobe = 2
        return shape, index.search(data["xq"], 5)

    lshape, lfound = run(faiss)
    rshape, rfound = run(remote)
    assert lshape == rshape == (D, 16, False)
    np.testing.assert_array_equal(lfound[1], rfound[1])
    np.testing.assert_array_equal(lfound[0], rfound[0])


def test_replace_vt_refusals(remote):
    index = remote.IndexIVFSpectralHash(remote.IndexFlatL2(D), D, 4, 16, 1.0)
    with pytest.raises(ValueError, match="needs 16 -> 16"):
        index.replace_vt(remote.RandomRotationMatrix(D, 8))
    with pytest.raises(ValueError, match="vector transform"):
        index.replace_vt(remote.IndexFlatL2(D))
    with pytest.raises(RuntimeError, match="no replace_vt"):
        remote.IndexFlatL2(D).replace_vt(remote.ITQTransform(D, 16))
    with pytest.warns(FaissxWarning, match="memory only"):
        named = remote.IndexIVFSpectralHash(remote.IndexFlatL2(D), D, 4, 16, 1.0, name="sh-nm")
    try:
        with pytest.raises(ValueError, match="could not read it back"):
            named.replace_vt(remote.ITQTransform(D, 16))  # its snapshot would not load
        named.replace_vt(remote.RandomRotationMatrix(D, 16))
        assert named.vt.faiss_class == "RandomRotationMatrix"
    finally:
        remote.delete_index("sh-nm")


def test_replace_vt_survives_kill_9(start_server, tmp_path, data):
    """The write is logged: after kill -9 the index has the new transform, trained as before."""
    from faissx import client as remote

    srv = start_server("--data-dir", str(tmp_path / "data"))
    remote.configure(server=srv.endpoint, timeout=120)
    try:
        index = remote.IndexIVFSpectralHash(remote.IndexFlatL2(D), D, 4, 16, 1.0, name="sh")
        pca = faiss.PCAMatrix(D, 16)
        pca.train(data["xt"])  # a local trained transform: it travels as faiss's bytes
        index.replace_vt(pca)
        index.train(data["xt"])
        index.add(data["xb"])
        before = index.search(data["xq"], 5)
        srv.stop(signal.SIGKILL)
        srv = start_server("--data-dir", str(tmp_path / "data"), port=srv.port)
        remote.configure(server=srv.endpoint, timeout=120)
        again = remote.open_index("sh")
        assert again.vt.faiss_class == "PCAMatrix"
        assert_same(before, again.search(data["xq"], 5))
    finally:
        remote.disconnect()
