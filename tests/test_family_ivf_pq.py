"""IVF and PQ families: the same program on local faiss and through a real server.

Covers ``IndexIVFFlat``, ``IndexIVFPQ``, ``IndexIVFScalarQuantizer`` (plugin ``ivf``) and
``IndexPQ``, ``IndexScalarQuantizer`` (plugin ``pq``), their runtime parameters and their
per-call ``SearchParametersIVF`` / ``SearchParametersPQ``.

Determinism: these indices are trained by k-means (coarse quantizer, PQ sub-quantizers) or by
range statistics (scalar quantizers). faiss seeds its k-means (seed 1234) and its sampling, and
the parallel parts (assignment, per-centroid updates) do not depend on thread scheduling, so the
server process, training the same data, ends with the very same index. That was verified
empirically (``serialize_index`` of the local and the remote index are byte-identical), and it
is asserted here: every comparison below is exact, with no tolerance.
"""

from __future__ import annotations

import pickle

import faiss
import numpy as np
import pytest

D = 16
NLIST = 32
K = 10
RNG = np.random.default_rng(2024)
# 2500 >= 39 * 64: enough points that neither the coarse k-means (32 lists) nor 6-bit PQ
# (64 centroids per sub-quantizer) warns about too few training points.
TRAIN = RNG.standard_normal((2500, D)).astype("float32")
BASE = RNG.standard_normal((2000, D)).astype("float32")
QUERIES = RNG.standard_normal((20, D)).astype("float32")
QT = faiss.ScalarQuantizer
IP = faiss.METRIC_INNER_PRODUCT

#: name -> (faiss class, constructor arguments given the module: faiss or faissx.client).
#: Quantizers are built from the same module as the index: a local IndexFlatL2 for faiss, a
#: (never separately created) proxy for the remote index.
CASES = {
    "IVFFlat-L2": ("IndexIVFFlat", lambda m: (m.IndexFlatL2(D), D, NLIST)),
    "IVFFlat-IP": ("IndexIVFFlat", lambda m: (m.IndexFlatIP(D), D, NLIST, IP)),
    "IVFPQ": ("IndexIVFPQ", lambda m: (m.IndexFlatL2(D), D, NLIST, 4, 6)),
    "IVFSQ8": ("IndexIVFScalarQuantizer", lambda m: (m.IndexFlatL2(D), D, NLIST, QT.QT_8bit)),
    "IVFSQ4-IP-direct": (
        "IndexIVFScalarQuantizer",
        lambda m: (m.IndexFlatIP(D), D, NLIST, QT.QT_4bit, IP, False),
    ),
    "PQ-L2": ("IndexPQ", lambda m: (D, 4, 6)),
    "PQ-IP": ("IndexPQ", lambda m: (D, 8, 4, IP)),
    "SQ8": ("IndexScalarQuantizer", lambda m: (D, QT.QT_8bit)),
    "SQfp16-IP": ("IndexScalarQuantizer", lambda m: (D, QT.QT_fp16, IP)),
    "SQ4": ("IndexScalarQuantizer", lambda m: (D, QT.QT_4bit)),
}
IVF_CASES = [c for c, (cls, _) in CASES.items() if cls.startswith("IndexIVF")]
CODE_CASES = [c for c, (cls, _) in CASES.items() if not cls.startswith("IndexIVF")]
IVF_CLASSES = {
    "IndexIVFFlat": lambda m: (m.IndexFlatL2(D), D, NLIST),
    "IndexIVFPQ": lambda m: (m.IndexFlatL2(D), D, NLIST, 4, 6),
    "IndexIVFScalarQuantizer": lambda m: (m.IndexFlatL2(D), D, NLIST, QT.QT_8bit),
}


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_local_faiss():
    """Local faiss on one OpenMP thread (the server keeps its own): the training results do
    not depend on the thread count, which the exact comparisons then also show, and spinning
    OpenMP threads on a loaded 2-core machine would multiply this module's run time."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def make(module, case: str):
    cls, args = CASES[case]
    return getattr(module, cls)(*args(module))


def pair(remote, case: str, *, train: bool = True, add: bool = True):
    """(local faiss index, remote proxy) built, trained and filled the same way."""
    local, proxy = make(faiss, case), make(remote, case)
    assert isinstance(proxy, remote.RemoteIndex) and not isinstance(proxy, faiss.Index)
    for index in (local, proxy):
        if train:
            index.train(TRAIN)
        if add:
            index.add(BASE)
    return local, proxy


def assert_same_search(local, proxy, k: int = K, queries=QUERIES, **kw):
    Dl, Il = local.search(queries, k, **{n: v[0] for n, v in kw.items()})
    Dr, Ir = proxy.search(queries, k, **{n: v[1] for n, v in kw.items()})
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    assert Dr.dtype == Dl.dtype and Ir.dtype == Il.dtype
    return Dl, Il


def server_names(remote) -> set[str]:
    indexes = remote.get_client().call("list", args={"all": True})[0]["indexes"]
    return {info["name"] for info in indexes}


# -- train / add / search ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_train_add_search_match_local(remote, case):
    local, proxy = pair(remote, case, train=False, add=False)
    assert proxy.is_trained == local.is_trained
    assert proxy.d == local.d == D and proxy.metric_type == local.metric_type
    assert type(proxy).__name__ == type(local).__name__
    local.train(TRAIN)
    proxy.train(TRAIN)
    assert proxy.is_trained is True and local.is_trained
    for batch in np.array_split(BASE, 3):
        local.add(batch)
        proxy.add(batch)
    assert proxy.ntotal == local.ntotal == len(BASE)
    if hasattr(local, "nprobe"):
        local.nprobe = proxy.nprobe = 8
    for k in (1, K, 70):
        assert_same_search(local, proxy, k)
    # the strongest form of "same index": faiss's own bytes are identical
    np.testing.assert_array_equal(proxy.serialize(), faiss.serialize_index(local))


@pytest.mark.parametrize("case", CASES)
def test_range_search_matches_local(remote, case):
    local, proxy = pair(remote, case)
    Dk, _ = local.search(QUERIES, 5)
    radius = float(np.median(Dk[:, -1]))  # about five hits per query, for either metric
    lims_l, D_l, I_l = local.range_search(QUERIES, radius)
    lims_r, D_r, I_r = proxy.range_search(QUERIES, radius)
    assert lims_l[-1] > 0, "the radius should find something, or the test proves nothing"
    np.testing.assert_array_equal(lims_r, lims_l)
    np.testing.assert_array_equal(I_r, I_l)
    np.testing.assert_array_equal(D_r, D_l)


@pytest.mark.parametrize("case", CASES)
def test_assign_matches_local(remote, case):
    local, proxy = pair(remote, case)
    np.testing.assert_array_equal(proxy.assign(QUERIES, 3), local.assign(QUERIES, 3))


@pytest.mark.parametrize("case", ["IVFFlat-L2", "IVFPQ", "IVFSQ8", "PQ-L2", "SQ8"])
def test_add_before_train_fails_and_changes_nothing(remote, case):
    local, proxy = pair(remote, case, train=False, add=False)
    with pytest.raises(RuntimeError, match="is_trained"):
        local.add(BASE[:10])
    # today FAISSx raises ValueError here, faiss RuntimeError: the xfail below holds the kind
    with pytest.raises((RuntimeError, ValueError), match="trained"):
        proxy.add(BASE[:10])
    assert proxy.ntotal == local.ntotal == 0


@pytest.mark.parametrize("method", ["add", "add_with_ids"])
def test_add_before_train_raises_runtime_error_like_faiss(remote, method):
    local, proxy = pair(remote, "IVFFlat-L2", train=False, add=False)
    ids = np.arange(10, dtype="int64")
    args = (BASE[:10],) if method == "add" else (BASE[:10], ids)
    with pytest.raises(RuntimeError):
        getattr(local, method)(*args)
    with pytest.raises(RuntimeError):
        getattr(proxy, method)(*args)


@pytest.mark.parametrize("case", IVF_CASES)
def test_add_with_ids_matches_local(remote, case):
    local, proxy = pair(remote, case, add=False)
    ids = np.arange(len(BASE), dtype="int64") * 3 + 7
    local.add_with_ids(BASE, ids)
    proxy.add_with_ids(BASE, ids)
    local.nprobe = proxy.nprobe = 4
    _, found = assert_same_search(local, proxy)
    assert set(found.ravel()) <= set(ids) | {-1}


@pytest.mark.parametrize("case", CODE_CASES)
def test_add_with_ids_unsupported_like_faiss(remote, case):
    local, proxy = pair(remote, case, add=False)
    ids = np.arange(10, dtype="int64")
    with pytest.raises(RuntimeError):
        local.add_with_ids(BASE[:10], ids)
    with pytest.raises(RuntimeError, match="add_with_ids"):
        proxy.add_with_ids(BASE[:10], ids)
    assert proxy.ntotal == local.ntotal == 0


def test_k_beyond_ntotal_is_padded_like_faiss(remote):
    local, proxy = pair(remote, "IVFFlat-L2", add=False)
    local.add(BASE[:5])
    proxy.add(BASE[:5])
    local.nprobe = proxy.nprobe = NLIST
    _, found = assert_same_search(local, proxy, 8)
    assert (found[:, 5:] == -1).all()


# -- reconstruction ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CODE_CASES)
def test_reconstruct_family_matches_local_for_flat_codes(remote, case):
    local, proxy = pair(remote, case)
    np.testing.assert_array_equal(proxy.reconstruct(42), local.reconstruct(42))
    np.testing.assert_array_equal(proxy.reconstruct_n(10, 30), local.reconstruct_n(10, 30))
    keys = np.array([5, 1, 1999, 5], dtype="int64")
    np.testing.assert_array_equal(proxy.reconstruct_batch(keys), local.reconstruct_batch(keys))
    Dl, Il, Rl = local.search_and_reconstruct(QUERIES, 4)
    Dr, Ir, Rr = proxy.search_and_reconstruct(QUERIES, 4)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    np.testing.assert_array_equal(Rr, Rl)
    with pytest.raises(RuntimeError):
        local.reconstruct(len(BASE))
    with pytest.raises(RuntimeError):
        proxy.reconstruct(len(BASE))


@pytest.mark.parametrize("case", IVF_CASES)
def test_ivf_reconstruct_without_direct_map_like_faiss(remote, case):
    """reconstruct_n and search_and_reconstruct scan the lists; single keys need a direct map."""
    local, proxy = pair(remote, case)
    np.testing.assert_array_equal(proxy.reconstruct_n(10, 30), local.reconstruct_n(10, 30))
    local.nprobe = proxy.nprobe = 4
    Dl, Il, Rl = local.search_and_reconstruct(QUERIES, 4)
    Dr, Ir, Rr = proxy.search_and_reconstruct(QUERIES, 4)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    np.testing.assert_array_equal(Rr, Rl)
    keys = np.array([1, 2], dtype="int64")
    for fn in (lambda ix: ix.reconstruct(3), lambda ix: ix.reconstruct_batch(keys)):
        with pytest.raises(RuntimeError, match="direct map"):
            fn(local)
        with pytest.raises(RuntimeError, match="direct map"):
            fn(proxy)


def test_ivf_with_direct_map_reconstructs_when_uploaded(remote):
    """An IVF index with a direct map (built locally) keeps it on the server."""
    local = make(faiss, "IVFSQ8")
    local.train(TRAIN)
    local.add(BASE)
    local.make_direct_map()
    proxy = remote.deserialize_index(faiss.serialize_index(local))
    assert isinstance(proxy, remote.IndexIVFScalarQuantizer)
    np.testing.assert_array_equal(proxy.reconstruct(3), local.reconstruct(3))
    keys = np.array([7, 1999, 0], dtype="int64")
    np.testing.assert_array_equal(proxy.reconstruct_batch(keys), local.reconstruct_batch(keys))
    proxy.nprobe = local.nprobe = 3  # an uploaded IVF has its family's runtime parameters
    assert_same_search(local, proxy)


def test_make_direct_map_then_reconstruct(remote):
    local, proxy = pair(remote, "IVFFlat-L2")
    local.make_direct_map()
    proxy.make_direct_map()
    np.testing.assert_array_equal(proxy.reconstruct(3), local.reconstruct(3))


# -- remove / reset / merge ------------------------------------------------------------------


@pytest.mark.parametrize("case", ["IVFFlat-L2", "IVFPQ", "IVFSQ8", "PQ-L2", "SQ8"])
def test_remove_ids_then_search(remote, case):
    local, proxy = pair(remote, case)
    ids = np.array([0, 3, 7, 400, 1999], dtype="int64")
    assert proxy.remove_ids(ids) == local.remove_ids(ids) == 5
    assert (
        proxy.remove_ids(remote.IDSelectorRange(100, 150))
        == local.remove_ids(faiss.IDSelectorRange(100, 150))
        == 50
    )
    batch = np.array([10, 11, 12, 10_000], dtype="int64")
    assert (
        proxy.remove_ids(remote.IDSelectorBatch(batch))
        == local.remove_ids(faiss.IDSelectorBatch(batch))
        == 3
    )
    assert proxy.ntotal == local.ntotal == len(BASE) - 58
    if hasattr(local, "nprobe"):
        local.nprobe = proxy.nprobe = 6
    assert_same_search(local, proxy)


@pytest.mark.parametrize("case", ["IVFPQ", "SQ8"])
def test_reset_keeps_training_and_reuses(remote, case):
    local, proxy = pair(remote, case)
    local.reset()
    proxy.reset()
    assert proxy.ntotal == local.ntotal == 0
    assert proxy.is_trained and local.is_trained
    local.add(BASE[:300])
    proxy.add(BASE[:300])
    assert_same_search(local, proxy)


@pytest.mark.parametrize(
    ("case", "add_id"),
    [("IVFFlat-L2", 1000), ("IVFSQ8", 0), ("IVFPQ", 5000), ("PQ-L2", 0), ("SQ8", 0)],
)
def test_merge_from_remote_into_remote(remote, case, add_id):
    local_a, proxy_a = pair(remote, case, add=False)
    local_b, proxy_b = pair(remote, case, add=False)
    for a, b in ((local_a, local_b), (proxy_a, proxy_b)):
        a.add(BASE[:1000])
        b.add(BASE[1000:])
        a.merge_from(b, add_id)
    assert proxy_b.ntotal == local_b.ntotal == 0  # faiss moves the vectors out of the source
    assert proxy_a.ntotal == local_a.ntotal == len(BASE)
    if hasattr(local_a, "nprobe"):
        local_a.nprobe = proxy_a.nprobe = 8
    assert_same_search(local_a, proxy_a)


def test_merge_with_add_id_unsupported_by_flat_codes_like_faiss(remote):
    local_a, proxy_a = pair(remote, "PQ-L2", add=False)
    local_b, proxy_b = pair(remote, "PQ-L2", add=False)
    with pytest.raises(RuntimeError):
        local_a.merge_from(local_b, 5)
    with pytest.raises(RuntimeError, match="cannot set ids"):
        proxy_a.merge_from(proxy_b, 5)


def test_merge_incompatible_code_sizes_like_faiss(remote):
    local_a, proxy_a = pair(remote, "SQ8", add=False)
    local_b, proxy_b = pair(remote, "SQ4", add=False)
    with pytest.raises(RuntimeError):
        local_a.merge_from(local_b)
    with pytest.raises(RuntimeError, match="code_size"):
        proxy_a.merge_from(proxy_b)


# -- per-call search parameters ----------------------------------------------------------------


@pytest.mark.parametrize("case", IVF_CASES)
def test_search_parameters_ivf_with_selectors(remote, case):
    local, proxy = pair(remote, case)
    plain_l = faiss.SearchParametersIVF(nprobe=5)
    plain_r = remote.SearchParametersIVF(nprobe=5)
    assert plain_r.nprobe == 5 and plain_r.max_codes == 0 and plain_r.sel is None
    _, I5 = assert_same_search(local, proxy, params=(plain_l, plain_r))
    _, I1 = assert_same_search(local, proxy)  # the index's own nprobe (1) is untouched
    assert proxy.nprobe == 1 and not np.array_equal(I5, I1)

    rng_l = faiss.SearchParametersIVF(nprobe=8, max_codes=400, sel=faiss.IDSelectorRange(100, 1500))
    rng_r = remote.SearchParametersIVF(
        nprobe=8, max_codes=400, sel=remote.IDSelectorRange(100, 1500)
    )
    _, found = assert_same_search(local, proxy, params=(rng_l, rng_r))
    assert ((found == -1) | ((found >= 100) & (found < 1500))).all()

    ids = np.arange(0, len(BASE), 7, dtype="int64")
    batch_l = faiss.SearchParametersIVF(nprobe=NLIST, sel=faiss.IDSelectorBatch(ids))
    batch_r = remote.SearchParametersIVF(nprobe=NLIST)
    batch_r.sel = remote.IDSelectorBatch(ids)  # set like a faiss attribute
    _, found = assert_same_search(local, proxy, params=(batch_l, batch_r))
    assert np.isin(found, ids).all()

    Dk, _ = local.search(QUERIES, 5)
    radius = float(np.median(Dk[:, -1]))
    lims_l, D_l, I_l = local.range_search(QUERIES, radius, params=batch_l)
    lims_r, D_r, I_r = proxy.range_search(QUERIES, radius, params=batch_r)
    assert lims_l[-1] > 0
    np.testing.assert_array_equal(lims_r, lims_l)
    np.testing.assert_array_equal(I_r, I_l)
    np.testing.assert_array_equal(D_r, D_l)


def test_ivf_refuses_plain_search_parameters_like_faiss(remote):
    local, proxy = pair(remote, "IVFFlat-L2")
    with pytest.raises(RuntimeError):
        local.search(QUERIES, K, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, 9)))
    with pytest.raises(RuntimeError, match="incorrect type"):
        proxy.search(QUERIES, K, params=remote.SearchParameters(sel=remote.IDSelectorRange(0, 9)))


def test_search_parameters_ivf_bad_values_are_value_errors(remote):
    with pytest.raises(ValueError, match="nprobe"):
        remote.SearchParametersIVF(nprobe=0)
    params = remote.SearchParametersIVF(nprobe=3)
    with pytest.raises(ValueError, match="nprobe"):
        params.nprobe = "many"
    with pytest.raises(ValueError, match="max_codes"):
        params.max_codes = -1
    assert params.nprobe == 3
    with pytest.raises(AttributeError):
        params.efSearch = 3
    _, proxy = pair(remote, "IVFFlat-L2", add=False)
    with pytest.raises(ValueError, match="cannot be sent"):
        proxy.search(QUERIES, K, params=faiss.SearchParametersIVF(nprobe=2))


def test_scalar_quantizer_honours_a_selector(remote):
    local, proxy = pair(remote, "SQ8")
    ids = np.arange(3, len(BASE), 5, dtype="int64")
    _, found = assert_same_search(
        local,
        proxy,
        params=(
            faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids)),
            remote.SearchParameters(sel=remote.IDSelectorBatch(ids)),
        ),
    )
    assert np.isin(found, ids).all()


def test_search_parameters_pq(remote):
    local, proxy = pair(remote, "PQ-L2")
    he_l = faiss.SearchParametersPQ(search_type=faiss.IndexPQ.ST_HE)
    he_r = remote.SearchParametersPQ(search_type=faiss.IndexPQ.ST_HE)
    dist, _ = assert_same_search(local, proxy, params=(he_l, he_r))
    assert (np.round(dist) == dist).all()  # Hamming distances: the parameter reached faiss
    # IndexPQ.search refuses a selector; its range_search honours one
    sel_l = faiss.SearchParametersPQ(sel=faiss.IDSelectorRange(0, 1000))
    sel_r = remote.SearchParametersPQ(sel=remote.IDSelectorRange(0, 1000))
    with pytest.raises(RuntimeError):
        local.search(QUERIES, K, params=sel_l)
    with pytest.raises(RuntimeError, match="selector not supported"):
        proxy.search(QUERIES, K, params=sel_r)
    Dk, _ = local.search(QUERIES, 5)
    radius = float(np.median(Dk[:, -1]))
    lims_l, D_l, I_l = local.range_search(QUERIES, radius, params=sel_l)
    lims_r, D_r, I_r = proxy.range_search(QUERIES, radius, params=sel_r)
    assert lims_l[-1] > 0 and (I_l < 1000).all()
    np.testing.assert_array_equal(lims_r, lims_l)
    np.testing.assert_array_equal(I_r, I_l)
    np.testing.assert_array_equal(D_r, D_l)
    with pytest.raises(ValueError, match="search_type"):
        remote.SearchParametersPQ(search_type=99)


# -- runtime parameters ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IVF_CLASSES)
def test_nprobe_as_attribute_and_parameter(remote, cls):
    local = getattr(faiss, cls)(*IVF_CLASSES[cls](faiss))
    proxy = getattr(remote, cls)(*IVF_CLASSES[cls](remote))
    for index in (local, proxy):
        index.train(TRAIN)
        index.add(BASE)
    assert proxy.nprobe == local.nprobe == 1
    assert proxy.max_codes == local.max_codes == 0
    local.nprobe = 8
    proxy.nprobe = 8
    assert proxy.nprobe == 8 and proxy.get_parameter("nprobe") == 8
    assert_same_search(local, proxy)
    proxy.set_parameter("nprobe", 16)
    faiss.ParameterSpace().set_index_parameter(local, "nprobe", 16)
    assert proxy.nprobe == 16
    assert_same_search(local, proxy)
    local.max_codes = proxy.max_codes = 50  # stops each query early, the same way
    assert proxy.get_parameter("max_codes") == 50
    assert_same_search(local, proxy)
    proxy.set_parameter("max_codes", 0)
    local.max_codes = 0
    assert_same_search(local, proxy)


@pytest.mark.parametrize("bad", [-1, -3, 2.5, True, 1 << 40, "abc", "", None, [4]])
def test_bad_nprobe_is_rejected_and_nothing_changes(remote, bad):
    _, proxy = pair(remote, "IVFFlat-L2", add=False)
    proxy.nprobe = 8
    # a number out of range names the parameter; a non-number fails the wire's type check
    match = "nprobe" if isinstance(bad, int | float) else None
    with pytest.raises(ValueError, match=match):
        proxy.nprobe = bad
    with pytest.raises(ValueError, match=match):
        proxy.set_parameter("nprobe", bad)
    with pytest.raises(ValueError, match=match):
        remote.ParameterSpace().set_index_parameter(proxy, "nprobe", bad)
    assert proxy.nprobe == 8


def test_numeric_string_nprobe_is_rejected(remote):
    _, proxy = pair(remote, "IVFFlat-L2", add=False)
    proxy.nprobe = 8
    try:
        with pytest.raises(ValueError):
            proxy.nprobe = "16"
    finally:
        assert proxy.nprobe == 8


def test_extract_index_ivf_and_parameter_space(remote):
    local, proxy = pair(remote, "IVFPQ")
    faiss.extract_index_ivf(local).nprobe = 4
    remote.extract_index_ivf(proxy).nprobe = 4
    assert proxy.nprobe == 4
    assert_same_search(local, proxy)
    faiss.ParameterSpace().set_index_parameter(local, "nprobe", 5)
    remote.ParameterSpace().set_index_parameter(proxy, "nprobe", 5)
    assert proxy.nprobe == 5
    assert_same_search(local, proxy)
    remote.ParameterSpace().set_index_parameters(proxy, "nprobe=7,max_codes=300")
    faiss.ParameterSpace().set_index_parameters(local, "nprobe=7,max_codes=300")
    assert (proxy.nprobe, proxy.max_codes) == (7, 300)
    assert_same_search(local, proxy)
    local_pq, proxy_pq = pair(remote, "PQ-L2", add=False)
    with pytest.raises(RuntimeError):
        faiss.extract_index_ivf(local_pq)
    with pytest.raises(RuntimeError, match="not an IVF"):
        remote.extract_index_ivf(proxy_pq)


def test_ivfpq_polysemous_threshold(remote):
    args = (D, NLIST, 4, 8)  # polysemous filtering needs 8-bit codes
    local = faiss.IndexIVFPQ(faiss.IndexFlatL2(D), *args)
    proxy = remote.IndexIVFPQ(remote.IndexFlatL2(D), *args)
    for index in (local, proxy):
        index.train(TRAIN)
        index.add(BASE)
        index.nprobe = 8
    assert proxy.polysemous_ht == local.polysemous_ht == 0
    local.polysemous_ht = proxy.polysemous_ht = 20
    assert proxy.polysemous_ht == 20
    assert_same_search(local, proxy)
    with pytest.raises(ValueError, match="polysemous_ht"):
        proxy.polysemous_ht = -1
    assert proxy.get_parameter("polysemous_ht") == 20


def test_parameter_space_speaks_faiss_names(remote):
    local, proxy = pair(remote, "IVFPQ", add=False)
    faiss.ParameterSpace().set_index_parameter(local, "ht", 12)
    remote.ParameterSpace().set_index_parameter(proxy, "ht", 12)
    assert proxy.polysemous_ht == local.polysemous_ht == 12
    local_sq, proxy_sq = pair(remote, "SQ8", add=False)
    with pytest.raises(RuntimeError):
        faiss.ParameterSpace().set_index_parameter(local_sq, "nprobe", 3)
    with pytest.raises(RuntimeError):
        remote.ParameterSpace().set_index_parameter(proxy_sq, "nprobe", 3)


def test_index_pq_search_type(remote):
    local, proxy = pair(remote, "PQ-L2")
    assert proxy.search_type == local.search_type == faiss.IndexPQ.ST_PQ
    assert proxy.polysemous_ht == local.polysemous_ht
    local.search_type = faiss.IndexPQ.ST_HE
    proxy.search_type = faiss.IndexPQ.ST_HE
    assert proxy.get_parameter("search_type") == faiss.IndexPQ.ST_HE
    assert_same_search(local, proxy)
    # faiss would read past its tables for an unknown search type; FAISSx refuses it
    with pytest.raises(ValueError, match="search_type"):
        proxy.search_type = 6
    proxy.set_parameter("polysemous_ht", 7)
    local.polysemous_ht = 7
    assert proxy.polysemous_ht == 7
    assert proxy.search_type == faiss.IndexPQ.ST_HE
    assert_same_search(local, proxy)


@pytest.mark.parametrize("case", ["IVFSQ8", "PQ-L2", "SQ8"])
def test_unknown_attributes_raise_attribute_error(remote, case):
    local, proxy = pair(remote, case, train=False, add=False)
    for index in (local, proxy):
        with pytest.raises(AttributeError):
            index.nprobes = 3
        with pytest.raises(AttributeError):
            _ = index.efSearch
    with pytest.raises(AttributeError):
        proxy.set_parameter("efSearch", 3)
    with pytest.raises(AttributeError):
        proxy.d = 3  # read-only remotely
    if case == "SQ8":  # no runtime parameters at all, like faiss has no nprobe there
        with pytest.raises(AttributeError):
            _ = local.nprobe
        with pytest.raises(AttributeError):
            _ = proxy.nprobe
        with pytest.raises(AttributeError):
            proxy.nprobe = 3


# -- constructors and plugins --------------------------------------------------------------------


def test_quantizer_proxy_never_becomes_a_server_index(remote):
    before = server_names(remote)
    quantizer = remote.IndexFlatL2(D)
    index = remote.IndexIVFFlat(quantizer, D, NLIST)
    assert index.spec.params["quantizer"] == {"type": "IndexFlatL2", "params": {"d": D}}
    index.train(TRAIN)
    index.add(BASE[:100])
    after = server_names(remote)
    assert after - before == {index.name}
    assert quantizer.name not in after
    assert index.ntotal == 100


def test_local_quantizer_travels_as_a_copy_in_remote_mode(remote):
    """A quantizer the program built locally is sent as faiss's bytes (a copy, as any part
    handed to a remote constructor; tests/test_dropin_composite.py compares the results)."""
    index = remote.IndexIVFFlat(faiss.IndexFlatL2(D), D, NLIST)
    assert isinstance(index, remote.RemoteIndex)
    assert (index.is_trained, index.ntotal) == (False, 0)


@pytest.mark.parametrize(
    ("cls", "args", "match"),
    [
        ("IndexIVFPQ", lambda m: (m.IndexFlatL2(D), D, NLIST, 5, 8), "multiple of M"),
        ("IndexIVFPQ", lambda m: (m.IndexFlatL2(D), D, NLIST, 4, 0), "nbits"),
        ("IndexIVFFlat", lambda m: (m.IndexFlatL2(D), D, 0), "nlist"),
        ("IndexIVFScalarQuantizer", lambda m: (m.IndexFlatL2(D), D, NLIST, QT.QT_count), "qtype"),
        ("IndexScalarQuantizer", lambda m: (D, 12345), "qtype"),
        ("IndexPQ", lambda m: (D, 3, 8), "multiple of M"),
        ("IndexPQ", lambda m: (D, 4, 0), "nbits"),
        ("IndexPQ", lambda m: (D, 4, 8, 99), "metric"),
    ],
)
def test_bad_constructor_arguments_are_value_errors(remote, cls, args, match):
    """Refused before the server builds anything (faiss would crash on nbits=0 or QT_count)."""
    with pytest.raises(ValueError, match=match):
        getattr(remote, cls)(*args(remote))


def test_quantizer_dimension_mismatch_is_a_value_error(remote):
    with pytest.raises(RuntimeError):
        faiss.IndexIVFFlat(faiss.IndexFlatL2(D // 2), D, NLIST)
    index = remote.IndexIVFFlat(remote.IndexFlatL2(D // 2), D, NLIST)
    with pytest.raises(ValueError, match="quantizer has d=8"):
        index.train(TRAIN)


def test_keyword_arguments_bind_like_the_signature(remote):
    index = remote.IndexIVFScalarQuantizer(
        quantizer=remote.IndexFlatL2(D), d=D, nlist=NLIST, qtype=QT.QT_6bit, by_residual=False
    )
    assert index.spec.params["by_residual"] is False
    assert index.spec.params["metric"] == faiss.METRIC_L2
    local = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatL2(D), D, NLIST, QT.QT_6bit, faiss.METRIC_L2, False
    )
    for ix in (local, index):
        ix.train(TRAIN)
        ix.add(BASE)
    np.testing.assert_array_equal(index.serialize(), faiss.serialize_index(local))


def test_ivf_refused_by_a_server_without_the_ivf_plugin(start_server):
    from faissx import client as fx
    from faissx_core.errors import UnknownIndexType

    srv = start_server("--plugins", "flat")
    fx.configure(server=srv.endpoint, timeout=120)
    try:
        before = server_names(fx)
        quantizer = fx.IndexFlatL2(D)
        index = fx.IndexIVFFlat(quantizer, D, NLIST)
        with pytest.raises(UnknownIndexType) as err:
            index.train(TRAIN)
        assert isinstance(err.value, ValueError)
        assert "'ivf'" in str(err.value) and err.value.details.get("plugin") == "ivf"
        with pytest.raises(UnknownIndexType, match="'ivf'"):
            fx.IndexIVFFlat(fx.IndexFlatL2(D), D, NLIST, name="needs-ivf")
        with pytest.raises(UnknownIndexType, match="'pq'"):
            fx.IndexPQ(D, 4, 6).train(TRAIN)
        assert server_names(fx) == before  # neither the IVF nor its quantizer exists there
        assert quantizer.name not in server_names(fx)
    finally:
        fx.disconnect()


def test_prefilled_quantizer_keeps_its_centroids(remote):
    centroids = TRAIN[:NLIST]
    local_q = faiss.IndexFlatL2(D)
    local_q.add(centroids)
    local = faiss.IndexIVFFlat(local_q, D, NLIST)
    remote_q = remote.IndexFlatL2(D)
    remote_q.add(centroids)
    proxy = remote.IndexIVFFlat(remote_q, D, NLIST)
    assert local.is_trained
    assert proxy.is_trained == local.is_trained
    local.add(BASE)
    proxy.add(BASE)
    assert_same_search(local, proxy)


# -- pickling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["IVFFlat-L2", "IVFPQ", "PQ-L2", "SQ8"])
def test_pickle_round_trip(remote, case):
    local, proxy = pair(remote, case)
    if hasattr(local, "nprobe"):
        local.nprobe = proxy.nprobe = 6
    blob = pickle.dumps(proxy)
    restored = pickle.loads(blob)  # remote mode: a new unnamed index on the server
    assert isinstance(restored, remote.RemoteIndex) and restored.name != proxy.name
    assert type(restored).__name__ == type(local).__name__
    assert restored.ntotal == local.ntotal
    if hasattr(local, "nprobe"):
        assert restored.nprobe == 6  # faiss serializes nprobe with the index
    assert_same_search(local, restored)
    remote.disconnect()
    plain = pickle.loads(blob)  # local mode: the same bytes are a plain faiss index
    assert type(plain).__name__ == type(local).__name__
    assert_same_search(local, plain)
