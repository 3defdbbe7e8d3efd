"""Binary and PreTransform families: the same program on local faiss and on a real server.

Every comparison runs the same calls on a plain ``faiss`` object and on a proxy from
``faissx.client`` configured against the shared test server, and compares what comes back.

Determinism, checked empirically with faiss 1.15 (1, 2 and 4 OpenMP threads):
- binary Flat/Hash search and range search are exact computations: asserted bit-identical;
- binary IVF training (binary k-means, seeded) gave identical centroids whatever the thread
  count: asserted exact, down to the serialized bytes;
- PCAMatrix training (covariance + LAPACK eigendecomposition) and RandomRotationMatrix (seeded)
  are deterministic: asserted exact;
- OPQMatrix training runs k-means whose reductions depend on the OpenMP thread count (2000
  training points gave different rotations with 1, 2 and 4 threads), so a server trained OPQ is
  compared by top-10 overlap (>= 0.9; a PCA projection of the same data scores ~0.6 and a random
  rotation ~0.06, so 0.9 still proves the same training), and exactness is shown by training
  locally and uploading the trained index.
Queries are 17 at a time, below faiss's BLAS threshold (20), like the Flat differential suite.
"""

from __future__ import annotations

import pickle

import faiss
import numpy as np
import pytest

import faissx_client
from faissx_client.proxy import RemoteComponent

# -- data ---------------------------------------------------------------------------------------

BITS = 32
NBYTES = BITS // 8
RNG = np.random.default_rng(2024)
CODES = RNG.integers(0, 256, (2000, NBYTES), dtype=np.uint8)
CODE_QUERIES = RNG.integers(0, 256, (17, NBYTES), dtype=np.uint8)
#: P(Hamming distance <= 9 over 32 random bits) ~ 1%: ~20 hits per query among 2000 codes
RADIUS = 9
NLIST = 16

D = 16
FLOAT_TRAIN = RNG.standard_normal((500, D)).astype("float32")
FLOAT_BASE = RNG.standard_normal((1000, D)).astype("float32")
FLOAT_QUERIES = RNG.standard_normal((17, D)).astype("float32")

IVF_FAMILY = faissx_client.IndexIVFFlat is not faiss.IndexIVFFlat
IVF_PARAMS = faissx_client.SearchParametersIVF is not faiss.SearchParametersIVF


def binary_flat(mod):
    return mod.IndexBinaryFlat(BITS)


def binary_ivf(mod):
    return mod.IndexBinaryIVF(mod.IndexBinaryFlat(BITS), BITS, NLIST)


def binary_hash(mod):
    return mod.IndexBinaryHash(BITS, 8)


BINARY = {"flat": binary_flat, "ivf": binary_ivf, "hash": binary_hash}


def pair(remote, make, train=None, base=None):
    """(local faiss index, remote proxy) from the same constructor code, same training and adds."""
    local, proxy = make(faiss), make(remote)
    assert isinstance(proxy, remote.RemoteIndex), "remote mode must not build a local index"
    for index in (local, proxy):
        if train is not None:
            index.train(train)
        if base is not None:
            for batch in np.array_split(base, 3):
                index.add(batch)
    return local, proxy


def assert_same(local_result, remote_result):
    for lo, re in zip(local_result, remote_result, strict=True):
        assert re.dtype == lo.dtype
        np.testing.assert_array_equal(re, lo)


def assert_same_search(local, proxy, queries, k, **kw):
    assert_same(local.search(queries, k, **kw), proxy.search(queries, k, **kw))


def same_error(call_local, call_remote, kind=RuntimeError):
    """Both sides refuse; the remote error is of the kind faiss raised locally."""
    with pytest.raises(kind) as local_err:
        call_local()
    with pytest.raises(kind) as remote_err:
        call_remote()
    assert isinstance(remote_err.value, type(local_err.value))
    return remote_err.value


# == binary family ==============================================================================


@pytest.mark.parametrize("kind", BINARY)
def test_binary_search_matches_local(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    assert proxy.ntotal == local.ntotal == len(CODES)
    assert (
        (proxy.d, proxy.metric_type, proxy.is_trained)
        == (local.d, local.metric_type, local.is_trained)
        == (BITS, faiss.METRIC_L2, True)
    )
    for k in (1, 10, 50):
        assert_same_search(local, proxy, CODE_QUERIES, k)
    D_, _ = proxy.search(CODE_QUERIES, 5)
    assert D_.dtype == np.int32  # Hamming distances, as faiss returns them


@pytest.mark.parametrize("kind", BINARY)
def test_binary_range_search_with_integer_radius(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    lims_l, D_l, I_l = local.range_search(CODE_QUERIES, RADIUS)
    lims_r, D_r, I_r = proxy.range_search(CODE_QUERIES, RADIUS)
    assert lims_l[-1] > 0, "the radius should find something, or the test proves nothing"
    assert_same((lims_l, D_l, I_l), (lims_r, D_r, I_r))
    assert D_r.max() <= RADIUS


def test_binary_ivf_training_is_exact_and_serializes_identically(remote):
    local, proxy = pair(remote, binary_ivf)
    assert proxy.is_trained is local.is_trained is False
    local.train(CODES)
    proxy.train(CODES)
    assert proxy.is_trained and local.is_trained
    # identical centroids: the whole index serializes to the same faiss bytes
    np.testing.assert_array_equal(proxy.serialize(), faiss.serialize_index_binary(local))
    local.add(CODES)
    proxy.add(CODES)
    np.testing.assert_array_equal(
        remote.serialize_index_binary(proxy), faiss.serialize_index_binary(local)
    )
    assert_same((local.assign(CODE_QUERIES, 4),), (proxy.assign(CODE_QUERIES, 4),))


def test_binary_ivf_nprobe_runtime_param(remote):
    local, proxy = pair(remote, binary_ivf, train=CODES, base=CODES)
    assert proxy.nprobe == local.nprobe == 1
    for nprobe in (1, 4, NLIST):
        local.nprobe = nprobe
        proxy.nprobe = nprobe
        assert proxy.nprobe == nprobe
        assert_same_search(local, proxy, CODE_QUERIES, 10)
    proxy.set_parameter("nprobe", 3)
    local.nprobe = 3
    assert proxy.get_parameter("nprobe") == 3
    assert_same_search(local, proxy, CODE_QUERIES, 10)
    assert remote.extract_index_ivf(proxy) is proxy
    with pytest.raises(ValueError, match="nprobe"):
        proxy.nprobe = -1
    assert proxy.nprobe == 3
    with pytest.raises(AttributeError):
        proxy.nprobes = 2  # a typo must not pass silently
    with pytest.raises(AttributeError):
        proxy.get_parameter("efSearch")
    with pytest.raises(AttributeError):
        proxy.d = 64


@pytest.mark.skipif(not IVF_PARAMS, reason="SearchParametersIVF comes with the ivf family")
def test_binary_ivf_search_parameters_ivf(remote):
    local, proxy = pair(remote, binary_ivf, train=CODES, base=CODES)
    assert_same(
        local.search(CODE_QUERIES, 10, params=faiss.SearchParametersIVF(nprobe=6)),
        proxy.search(CODE_QUERIES, 10, params=remote.SearchParametersIVF(nprobe=6)),
    )
    assert proxy.nprobe == 1  # per-call parameters leave the index's own setting alone


def test_binary_hash_nflip_runtime_param(remote):
    local, proxy = pair(remote, binary_hash, base=CODES)
    assert proxy.nflip == local.nflip == 0
    for nflip in (0, 1, 2):
        local.nflip = nflip
        proxy.nflip = nflip
        assert proxy.get_parameter("nflip") == nflip
        assert_same_search(local, proxy, CODE_QUERIES, 10)
        assert_same(
            local.range_search(CODE_QUERIES, RADIUS), proxy.range_search(CODE_QUERIES, RADIUS)
        )
    proxy.set_parameter("nflip", 1)
    assert proxy.nflip == 1
    with pytest.raises(ValueError):
        proxy.nflip = -1
    with pytest.raises(AttributeError):
        proxy.nprobe = 2  # a hash index has no inverted lists to probe


def test_binary_flat_params_with_selectors(remote):
    local, proxy = pair(remote, binary_flat, base=CODES)
    assert_same(
        local.search(
            CODE_QUERIES, 10, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(100, 900))
        ),
        proxy.search(
            CODE_QUERIES, 10, params=remote.SearchParameters(sel=remote.IDSelectorRange(100, 900))
        ),
    )
    ids = np.arange(0, 2000, 7, dtype="int64")
    D_l, I_l = local.search(
        CODE_QUERIES, 10, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids))
    )
    D_r, I_r = proxy.search(
        CODE_QUERIES, 10, params=remote.SearchParameters(sel=remote.IDSelectorBatch(ids))
    )
    assert_same((D_l, I_l), (D_r, I_r))
    assert np.isin(I_r, ids).all()
    assert_same(
        local.range_search(
            CODE_QUERIES, RADIUS, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, 1000))
        ),
        proxy.range_search(
            CODE_QUERIES,
            RADIUS,
            params=remote.SearchParameters(sel=remote.IDSelectorRange(0, 1000)),
        ),
    )


@pytest.mark.parametrize("kind", ["ivf", "hash"])
def test_binary_selectors_refused_like_faiss(remote, kind):
    """faiss's binary IVF and hash indices reject search parameters: so does the server."""
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    same_error(
        lambda: local.search(
            CODE_QUERIES, 5, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, 9))
        ),
        lambda: proxy.search(
            CODE_QUERIES, 5, params=remote.SearchParameters(sel=remote.IDSelectorRange(0, 9))
        ),
    )
    same_error(
        lambda: local.range_search(CODE_QUERIES, RADIUS, params=faiss.SearchParameters()),
        lambda: proxy.range_search(CODE_QUERIES, RADIUS, params=remote.SearchParameters()),
    )


def test_binary_add_with_ids(remote):
    ids = np.arange(10_000, 10_000 + len(CODES), dtype="int64")
    for make in (binary_ivf, binary_hash):
        local, proxy = pair(remote, make, train=CODES)
        local.add_with_ids(CODES, ids)
        proxy.add_with_ids(CODES, ids)
        assert proxy.ntotal == local.ntotal == len(CODES)
        assert_same_search(local, proxy, CODE_QUERIES, 10)
    # IndexBinaryFlat numbers vectors itself: faiss refuses, and so does the server
    local, proxy = pair(remote, binary_flat)
    err = same_error(
        lambda: local.add_with_ids(CODES[:5], ids[:5]),
        lambda: proxy.add_with_ids(CODES[:5], ids[:5]),
    )
    assert "add_with_ids" in str(err)
    assert proxy.ntotal == 0


def test_binary_reconstruct(remote):
    local, proxy = pair(remote, binary_flat, base=CODES)
    assert_same((local.reconstruct(42),), (proxy.reconstruct(42),))
    np.testing.assert_array_equal(proxy.reconstruct(42), CODES[42])
    assert_same((local.reconstruct_n(10, 30),), (proxy.reconstruct_n(10, 30),))
    assert_same((local.reconstruct_n(),), (proxy.reconstruct_n(),))

    local, proxy = pair(remote, binary_ivf, train=CODES, base=CODES)
    assert_same((local.reconstruct_n(0, 50),), (proxy.reconstruct_n(0, 50),))
    # no direct map: faiss cannot look a single id up
    same_error(lambda: local.reconstruct(3), lambda: proxy.reconstruct(3))

    local, proxy = pair(remote, binary_hash, base=CODES)
    same_error(lambda: local.reconstruct(3), lambda: proxy.reconstruct(3))
    same_error(lambda: local.reconstruct_n(0, 5), lambda: proxy.reconstruct_n(0, 5))


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_binary_reconstruct_batch_and_search_and_reconstruct_fail_like_faiss(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    keys = np.array([1, 2], dtype="int64")
    same_error(
        lambda: local.reconstruct_batch(keys), lambda: proxy.reconstruct_batch(keys), AttributeError
    )
    same_error(
        lambda: local.search_and_reconstruct(CODE_QUERIES, 3),
        lambda: proxy.search_and_reconstruct(CODE_QUERIES, 3),
        TypeError,
    )


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_binary_remove_ids(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    ids = np.array([0, 3, 7, 400, 1999], dtype="int64")
    assert proxy.remove_ids(ids) == local.remove_ids(ids) == 5
    assert (
        proxy.remove_ids(remote.IDSelectorRange(100, 150))
        == local.remove_ids(faiss.IDSelectorRange(100, 150))
        == 50
    )
    assert proxy.ntotal == local.ntotal == len(CODES) - 55
    assert_same_search(local, proxy, CODE_QUERIES, 10)


def test_binary_hash_remove_ids_unsupported_like_faiss(remote):
    local, proxy = pair(remote, binary_hash, base=CODES)
    ids = np.array([1, 2], dtype="int64")
    err = same_error(lambda: local.remove_ids(ids), lambda: proxy.remove_ids(ids))
    assert "remove_ids" in str(err)
    assert proxy.ntotal == len(CODES)


@pytest.mark.parametrize("kind", BINARY)
def test_binary_reset(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    local.reset()
    proxy.reset()
    assert proxy.ntotal == local.ntotal == 0
    assert proxy.is_trained == local.is_trained
    local.add(CODES[:300])
    proxy.add(CODES[:300])
    assert_same_search(local, proxy, CODE_QUERIES, 5)


def test_binary_ivf_merge_from_remote_into_remote(remote):
    local_a, proxy_a = pair(remote, binary_ivf, train=CODES, base=CODES[:1200])
    local_b, proxy_b = pair(remote, binary_ivf, train=CODES, base=CODES[1200:])
    local_a.merge_from(local_b, 1200)
    proxy_a.merge_from(proxy_b, 1200)
    assert proxy_a.ntotal == local_a.ntotal == len(CODES)
    assert proxy_b.ntotal == local_b.ntotal == 0  # faiss moves the vectors out of the source
    for nprobe in (1, 5):
        local_a.nprobe = proxy_a.nprobe = nprobe
        assert_same_search(local_a, proxy_a, CODE_QUERIES, 10)


@pytest.mark.parametrize("kind", ["flat", "hash"])
def test_binary_merge_from_unsupported_like_faiss(remote, kind):
    local_a, proxy_a = pair(remote, BINARY[kind], base=CODES[:100])
    local_b, proxy_b = pair(remote, BINARY[kind], base=CODES[100:200])
    err = same_error(lambda: local_a.merge_from(local_b), lambda: proxy_a.merge_from(proxy_b))
    assert "merge_from" in str(err)
    assert proxy_a.ntotal == 100 and proxy_b.ntotal == 100


@pytest.mark.parametrize("kind", BINARY)
def test_binary_pickle_round_trip(remote, kind):
    local, proxy = pair(remote, BINARY[kind], train=CODES, base=CODES)
    if kind == "ivf":
        local.nprobe = proxy.nprobe = 3
    again = pickle.loads(pickle.dumps(proxy))
    assert isinstance(again, remote.RemoteIndex) and again.name != proxy.name
    assert again.ntotal == len(CODES)
    assert_same_search(local, again, CODE_QUERIES, 10)
    if kind == "ivf":
        assert again.nprobe == 3
    data = pickle.dumps(again)
    remote.disconnect()  # unpickled without a server: the plain faiss binary index
    plain = pickle.loads(data)
    assert isinstance(plain, faiss.IndexBinary)
    assert_same_search(local, plain, CODE_QUERIES, 10)


@pytest.mark.parametrize("description", ["BFlat", "BIVF16"])
def test_index_binary_factory_matches_local(remote, description):
    local = faiss.index_binary_factory(BITS, description)
    proxy = remote.index_binary_factory(BITS, description)
    assert isinstance(proxy, remote.RemoteIndex)
    for index in (local, proxy):
        index.train(CODES)
        index.add(CODES)
    assert proxy.ntotal == local.ntotal and proxy.d == local.d == BITS
    assert_same_search(local, proxy, CODE_QUERIES, 10)
    assert_same(local.range_search(CODE_QUERIES, RADIUS), proxy.range_search(CODE_QUERIES, RADIUS))
    if description == "BIVF16":  # the IVF's nprobe, found through the factory's structure
        faiss.downcast_IndexBinary(local).nprobe = 4
        proxy.nprobe = 4
        assert proxy.nprobe == 4
        assert_same_search(local, proxy, CODE_QUERIES, 10)
    else:
        with pytest.raises(AttributeError):
            proxy.nprobe = 4


def test_binary_wrong_byte_width_is_refused_and_nothing_changes(remote):
    local, proxy = pair(remote, binary_flat, base=CODES)
    wide = RNG.integers(0, 256, (3, NBYTES + 1), dtype=np.uint8)
    with pytest.raises(AssertionError):
        local.search(wide, 3)  # faiss's own check
    for call in (
        lambda: proxy.search(wide, 3),
        lambda: proxy.add(wide),
        lambda: proxy.range_search(wide, RADIUS),
        lambda: proxy.assign(wide, 2),
        lambda: proxy.add(CODES[:, :2].copy()),
    ):
        with pytest.raises(ValueError, match="expects"):
            call()
    with pytest.raises(ValueError):
        proxy.add(CODES[0])  # one code, not a 2-d batch
    assert proxy.ntotal == len(CODES)
    assert_same_search(local, proxy, CODE_QUERIES, 5)


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_binary_wrong_dtype_is_refused_and_nothing_changes(remote, dtype):
    local, proxy = pair(remote, binary_flat, base=CODES)
    with pytest.raises(TypeError):
        local.add(CODES[:5].astype(dtype))  # faiss: "must be ndarray of dtype uint8"
    try:
        with pytest.raises(ValueError):
            proxy.add(CODES[:5].astype(dtype))
        with pytest.raises(ValueError):
            proxy.search(CODE_QUERIES.astype(dtype), 3)
    finally:
        assert proxy.ntotal == len(CODES)


def test_binary_fractional_radius_is_refused(remote):
    local, proxy = pair(remote, binary_flat, base=CODES)
    with pytest.raises(TypeError):
        local.range_search(CODE_QUERIES, RADIUS + 0.5)
    with pytest.raises((TypeError, ValueError)):
        proxy.range_search(CODE_QUERIES, RADIUS + 0.5)


def test_binary_constructor_arguments_are_checked(remote):
    with pytest.raises(RuntimeError):
        faiss.IndexBinaryFlat(12)  # faiss: 'd_ % 8 == 0' failed
    with pytest.raises(ValueError, match="multiple of 8"):
        remote.IndexBinaryFlat(12)
    with pytest.raises(ValueError, match="quantizer has d=16"):
        remote.IndexBinaryIVF(remote.IndexBinaryFlat(16), BITS, 4)
    with pytest.raises(ValueError):
        remote.IndexBinaryHash(BITS, 40)  # more hash bits than the code has
    with pytest.raises(TypeError):
        remote.IndexBinaryIVF(remote.IndexBinaryFlat(BITS), BITS, 4, True, 1)
    # a float index is no binary quantizer: refused when the server builds it
    bad = remote.IndexBinaryIVF(remote.IndexFlatL2(BITS), BITS, 4)
    with pytest.raises(ValueError, match="binary quantizer"):
        bad.train(CODES)


def test_binary_ivf_add_before_train_fails_like_faiss(remote):
    local, proxy = pair(remote, binary_ivf)
    same_error(lambda: local.add(CODES), lambda: proxy.add(CODES))


# == pretransform family ========================================================================


def pca(mod):
    return mod.IndexPreTransform(mod.PCAMatrix(D, 8), mod.IndexFlatL2(8))


def pca_whitened_rotated(mod):
    return mod.IndexPreTransform(mod.PCAMatrix(D, 8, -0.5, True), mod.IndexFlatL2(8))


def normalized(mod):
    return mod.IndexPreTransform(mod.NormalizationTransform(D), mod.IndexFlatIP(D))


def rotated(mod):
    return mod.IndexPreTransform(mod.RandomRotationMatrix(D, 12), mod.IndexFlatL2(12))


def bare(mod):
    return mod.IndexPreTransform(mod.IndexFlatL2(D))


def chain(mod):
    """Two transforms: normalise, then PCA (faiss applies the outer wrapper's first)."""
    return mod.IndexPreTransform(
        mod.NormalizationTransform(D),
        mod.IndexPreTransform(mod.PCAMatrix(D, 8), mod.IndexFlatL2(8)),
    )


def opq(mod):
    return mod.IndexPreTransform(mod.OPQMatrix(D, 4, 8), mod.IndexFlatL2(8))


EXACT = {
    "pca": pca,
    "pca_whitened_rotated": pca_whitened_rotated,
    "normalized": normalized,
    "rotated": rotated,
    "bare": bare,
    "chain": chain,
}


@pytest.mark.parametrize("kind", EXACT)
def test_pretransform_training_and_search_match_local(remote, kind):
    local, proxy = pair(remote, EXACT[kind])
    assert proxy.is_trained is local.is_trained
    assert (proxy.d, proxy.metric_type) == (local.d, local.metric_type)
    local.train(FLOAT_TRAIN)
    proxy.train(FLOAT_TRAIN)  # trains the transform on the server, then the wrapped index
    assert proxy.is_trained is local.is_trained is True
    for index in (local, proxy):
        index.add(FLOAT_BASE)
    assert proxy.ntotal == local.ntotal == len(FLOAT_BASE)
    for k in (1, 10):
        assert_same_search(local, proxy, FLOAT_QUERIES, k)
    assert_same((local.assign(FLOAT_QUERIES, 3),), (proxy.assign(FLOAT_QUERIES, 3),))


def test_pretransform_single_argument_form(remote):
    proxy = bare(remote)
    assert proxy.spec.params["transform"] is None
    assert proxy.spec.params["index"] == {"type": "IndexFlatL2", "params": {"d": D}}


def test_pretransform_opq_trained_on_the_server(remote):
    local, proxy = pair(remote, opq, train=FLOAT_TRAIN, base=FLOAT_BASE)
    assert proxy.is_trained
    _, I_l = local.search(FLOAT_QUERIES, 10)
    _, I_r = proxy.search(FLOAT_QUERIES, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I_l, I_r, strict=True)])
    assert overlap >= 0.9, f"top-10 overlap {overlap:.2f}"  # tolerance: see module docstring


def test_pretransform_opq_trained_locally_is_exact_remotely(remote):
    local = opq(faiss)
    local.train(FLOAT_TRAIN)
    local.add(FLOAT_BASE)
    proxy = remote.deserialize_index(faiss.serialize_index(local))
    assert_same_search(local, proxy, FLOAT_QUERIES, 10)
    more = FLOAT_QUERIES * 2  # adds after the upload go through the same trained rotation
    local.add(more)
    proxy.add(more)
    assert_same_search(local, proxy, FLOAT_QUERIES, 10)


def test_pretransform_range_search_and_params(remote):
    local, proxy = pair(remote, pca, train=FLOAT_TRAIN, base=FLOAT_BASE)
    lims, _, _ = res_l = local.range_search(FLOAT_QUERIES, 3.0)
    assert lims[-1] > 0
    assert_same(res_l, proxy.range_search(FLOAT_QUERIES, 3.0))
    assert_same(
        local.search(
            FLOAT_QUERIES, 10, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(200, 700))
        ),
        proxy.search(
            FLOAT_QUERIES, 10, params=remote.SearchParameters(sel=remote.IDSelectorRange(200, 700))
        ),
    )
    ids = np.arange(1, 1000, 3, dtype="int64")
    assert_same(
        local.range_search(
            FLOAT_QUERIES, 3.0, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids))
        ),
        proxy.range_search(
            FLOAT_QUERIES, 3.0, params=remote.SearchParameters(sel=remote.IDSelectorBatch(ids))
        ),
    )


def test_pretransform_reconstruct_family(remote):
    local, proxy = pair(remote, pca, train=FLOAT_TRAIN, base=FLOAT_BASE)
    # reconstruction maps the stored 8-d codes back through the PCA: d=16 floats out
    assert_same((local.reconstruct(42),), (proxy.reconstruct(42),))
    assert proxy.reconstruct(42).shape == (D,)
    assert_same((local.reconstruct_n(10, 30),), (proxy.reconstruct_n(10, 30),))
    keys = np.array([5, 1, 999, 5], dtype="int64")
    assert_same((local.reconstruct_batch(keys),), (proxy.reconstruct_batch(keys),))
    assert_same(
        local.search_and_reconstruct(FLOAT_QUERIES, 4),
        proxy.search_and_reconstruct(FLOAT_QUERIES, 4),
    )


def test_pretransform_add_with_ids_follows_the_wrapped_index(remote):
    local, proxy = pair(remote, pca, train=FLOAT_TRAIN)
    ids = np.arange(len(FLOAT_BASE), dtype="int64") + 100
    err = same_error(
        lambda: local.add_with_ids(FLOAT_BASE, ids), lambda: proxy.add_with_ids(FLOAT_BASE, ids)
    )
    assert "add_with_ids" in str(err)
    assert proxy.ntotal == 0


def test_pretransform_remove_ids_and_reset(remote):
    local, proxy = pair(remote, normalized, train=FLOAT_TRAIN, base=FLOAT_BASE)
    ids = np.array([0, 5, 999], dtype="int64")
    assert proxy.remove_ids(ids) == local.remove_ids(ids) == 3
    assert (
        proxy.remove_ids(remote.IDSelectorRange(10, 20))
        == local.remove_ids(faiss.IDSelectorRange(10, 20))
        == 10
    )
    assert proxy.ntotal == local.ntotal == len(FLOAT_BASE) - 13
    assert_same_search(local, proxy, FLOAT_QUERIES, 10)
    local.reset()
    proxy.reset()
    assert proxy.ntotal == local.ntotal == 0
    assert proxy.is_trained  # reset keeps the trained transform, as in faiss
    local.add(FLOAT_BASE[:100])
    proxy.add(FLOAT_BASE[:100])
    assert_same_search(local, proxy, FLOAT_QUERIES, 5)


def test_pretransform_merge_from_remote_into_remote(remote):
    local_a, proxy_a = pair(remote, pca, train=FLOAT_TRAIN, base=FLOAT_BASE[:600])
    local_b, proxy_b = pair(remote, pca, train=FLOAT_TRAIN, base=FLOAT_BASE[600:])
    local_a.merge_from(local_b)
    proxy_a.merge_from(proxy_b)  # the PCA matrices match: both trained on the same data
    assert proxy_a.ntotal == local_a.ntotal == len(FLOAT_BASE)
    # faiss empties the wrapped index of the source but leaves the wrapper's own ntotal stale
    assert proxy_b.ntotal == local_b.ntotal
    assert_same_search(local_a, proxy_a, FLOAT_QUERIES, 10)
    assert_same_search(local_b, proxy_b, FLOAT_QUERIES, 3)  # finds nothing on either side
    # differently trained transforms cannot merge, in faiss and remotely
    local_c, proxy_c = pair(remote, pca, train=FLOAT_BASE, base=FLOAT_BASE[:10])
    err = same_error(lambda: local_a.merge_from(local_c), lambda: proxy_a.merge_from(proxy_c))
    assert "must match" in str(err)
    assert proxy_a.ntotal == len(FLOAT_BASE) and proxy_c.ntotal == 10


def test_pretransform_pickle_round_trip(remote):
    local, proxy = pair(remote, chain, train=FLOAT_TRAIN, base=FLOAT_BASE)
    again = pickle.loads(pickle.dumps(proxy))
    assert isinstance(again, remote.RemoteIndex) and again.ntotal == len(FLOAT_BASE)
    assert_same_search(local, again, FLOAT_QUERIES, 10)
    data = pickle.dumps(again)
    remote.disconnect()
    plain = pickle.loads(data)
    assert isinstance(plain, faiss.IndexPreTransform)
    assert_same_search(local, plain, FLOAT_QUERIES, 10)


def test_pretransform_without_knobs_has_no_runtime_params(remote):
    proxy = pca(remote)
    proxy.train(FLOAT_TRAIN)
    with pytest.raises(AttributeError):
        proxy.nprobe = 3
    with pytest.raises(AttributeError):
        proxy.set_parameter("nprobe", 3)
    with pytest.raises(AttributeError):
        proxy.get_parameter("nprobe")
    with pytest.raises(AttributeError):
        proxy.ntotal = 5


@pytest.mark.skipif(not IVF_FAMILY, reason="the wrapped IVF needs the ivf family's plugin")
def test_pretransform_reaches_the_wrapped_ivf_nprobe(remote):
    def make(mod):
        return mod.IndexPreTransform(
            mod.PCAMatrix(D, 8), mod.IndexIVFFlat(mod.IndexFlatL2(8), 8, NLIST)
        )

    local, proxy = pair(remote, make, train=FLOAT_TRAIN, base=FLOAT_BASE)
    assert proxy.nprobe == 1
    proxy.nprobe = NLIST  # every list: the IVF search is exhaustive, whatever its centroids
    assert proxy.get_parameter("nprobe") == NLIST
    faiss.extract_index_ivf(local).nprobe = NLIST
    assert_same_search(local, proxy, FLOAT_QUERIES, 10)
    proxy.index.nprobe = 1  # faiss's spelling: the wrapped index's attribute
    assert proxy.nprobe == 1
    proxy.set_parameter("nprobe", 2)
    assert proxy.index.nprobe == 2


def test_transforms_are_components_described_by_the_client(remote):
    t = remote.PCAMatrix(D, 8)
    assert not isinstance(t, faiss.VectorTransform)
    assert (t.d_in, t.d_out, t.eigen_power, t.random_rotation) == (D, 8, 0.0, False)
    # faiss's keyword spellings work too
    assert (
        remote.PCAMatrix(din=D, dout=4, eigen_power_in=-0.5).spec
        == remote.PCAMatrix(D, 4, -0.5).spec
    )
    assert remote.OPQMatrix(D, M_in=4).spec.params == {
        "d": D,
        "M": 4,
        "d2": -1,
        "niter": 50,
        "niter_pq": 4,
    }
    assert remote.NormalizationTransform(D).norm == 2.0
    t.eigen_power = -0.5  # attributes write like faiss's
    assert t.spec.params["eigen_power"] == -0.5
    with pytest.raises(AttributeError):
        t.no_such_thing = 1
    assert isinstance(remote.RandomRotationMatrix(D, 8), RemoteComponent)


def test_pretransform_constructor_arguments_are_checked(remote):
    with pytest.raises(RuntimeError):
        faiss.IndexPreTransform(faiss.PCAMatrix(D, 8), faiss.IndexFlatL2(4))
    with pytest.raises(ValueError, match="outputs 8 dimensions"):
        remote.IndexPreTransform(remote.PCAMatrix(D, 8), remote.IndexFlatL2(4))
    with pytest.raises(ValueError, match="outputs 8 dimensions"):  # checked along a chain too
        remote.IndexPreTransform(
            remote.PCAMatrix(D, 8),
            remote.IndexPreTransform(remote.PCAMatrix(4, 2), remote.IndexFlatL2(2)),
        )
    with pytest.raises(ValueError, match="multiple of M"):
        remote.OPQMatrix(D, 5)
    with pytest.raises(ValueError):
        remote.PCAMatrix(D, 32)
    # a local faiss transform travels as faiss's bytes (tests/test_dropin_composite.py); the
    # server checks its dimensions when it builds the wrapper, at the first use
    with pytest.raises(ValueError, match="IndexPreTransform"):
        remote.IndexPreTransform(faiss.PCAMatrix(D, 8), remote.IndexFlatL2(4)).ntotal  # noqa: B018
    with pytest.raises(ValueError, match="index to wrap"):
        remote.IndexPreTransform()
    with pytest.raises(ValueError, match="index to wrap"):
        remote.IndexPreTransform(remote.PCAMatrix(D, 8))  # faiss has no transform-only form
    # a binary index or a second index where the transform goes: refused as the server builds
    with pytest.raises(ValueError, match="float index"):
        remote.IndexPreTransform(remote.IndexBinaryFlat(BITS)).train(FLOAT_TRAIN)
    with pytest.raises(ValueError, match="vector transform"):
        remote.IndexPreTransform(remote.IndexFlatL2(D), remote.IndexFlatL2(D)).train(FLOAT_TRAIN)


def test_pretransform_add_before_train_fails_like_faiss(remote):
    local, proxy = pair(remote, pca)
    same_error(lambda: local.add(FLOAT_BASE), lambda: proxy.add(FLOAT_BASE))
    assert proxy.ntotal == 0


def test_components_and_classes_work_in_local_mode():
    """Without configure() every class here is faiss's own, with faiss's overloads."""
    from faissx import client as fx

    assert not fx.is_remote()
    index = chain(fx)
    assert isinstance(index, faiss.IndexPreTransform)
    assert isinstance(fx.PCAMatrix(D, 8), faiss.PCAMatrix)
    assert isinstance(binary_ivf(fx), faiss.IndexBinaryIVF)
    assert isinstance(fx.index_binary_factory(BITS, "BIVF16"), faiss.IndexBinaryIVF)
