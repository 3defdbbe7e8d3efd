"""Code written for the original FAISSx runs unchanged: its constructor defaults, attribute
names, transforms module and error classes, each checked against local faiss in both modes.

``scripts/original_suite.py`` runs the original's own tests and examples; this file holds our
own differential tests for what that run needed (docs/client.md, "The original FAISSx's names",
has the table of what is provided, refused, and out of scope).
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

D = 16
RNG = np.random.default_rng(11)
XB = RNG.standard_normal((300, D)).astype("float32")
XQ = RNG.standard_normal((4, D)).astype("float32")


@pytest.fixture(params=["local", "remote"])
def fx(request, server):
    from faissx import client

    if request.param == "remote":
        client.configure(server=server.endpoint, timeout=60)
    try:
        yield client
    finally:
        client.disconnect()


def is_remote(index) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


def same_search(index, ref, k: int = 5) -> None:
    dist, ids = index.search(XQ, k)
    want_d, want_i = ref.search(XQ, k)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5)


# -- constructor defaults the original had ---------------------------------------------------------


def test_pq_defaults_and_attribute_names(fx):
    index = fx.IndexPQ(D, 4)  # the original's nbits=8
    assert is_remote(index) == fx.is_remote()
    assert (index.M, index.nbits) == (4, 8)
    ref = faiss.IndexPQ(D, 4, 8)
    assert (ref.M, ref.nbits) == (4, 8)  # faiss's own objects get the names too
    for i in (index, ref):
        i.train(XB)
        i.add(XB)
    same_search(index, ref)
    assert (fx.IndexPQ(D).M, fx.IndexPQ(D).nbits) == (8, 8)
    with pytest.raises(AttributeError):
        index.M = 2  # read-only, as the structure it names


def test_ivfpq_attribute_names(fx):
    index = fx.IndexIVFPQ(fx.IndexFlatL2(D), D, 4, 2, 6)
    assert (index.M, index.nbits, index.nlist) == (2, 6, 4)
    assert fx.IndexIVFPQ(fx.IndexFlatL2(D), D, 4, 8, 4).M == 8


def test_scalar_quantizer_defaults(fx):
    qt8 = faiss.ScalarQuantizer.QT_8bit
    for index in (fx.IndexScalarQuantizer(D), fx.IndexScalarQuantizer(D, None)):
        assert is_remote(index) == fx.is_remote()
        index.train(XB)
        index.add(XB)
        ref = faiss.IndexScalarQuantizer(D, qt8)
        ref.train(XB)
        ref.add(XB)
        same_search(index, ref)
    ivf = fx.IndexIVFScalarQuantizer(fx.IndexFlatL2(D), D, 4)
    ref = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(D), D, 4, qt8)
    for i in (ivf, ref):
        i.train(XB)
        i.add(XB)
        i.nprobe = 4
    same_search(ivf, ref)
    # faiss's full spelling is untouched
    four = fx.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_4bit)
    four.train(XB)
    assert (
        four.sa_code_size()
        == faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_4bit).sa_code_size()
    )


def test_hnsw_flat_default_degree(fx):
    index = fx.IndexHNSWFlat(D)
    ref = faiss.IndexHNSWFlat(D, 32)
    for i in (index, ref):
        i.add(XB)
    same_search(index, ref)


# -- the by-name API on an index made with the classes ---------------------------------------------


def test_index_id_of_a_fresh_index_addresses_it_by_name(remote):
    """The original's examples make ``IndexFlatL2(d)`` and pass ``index.index_id`` to
    ``get_client().add_vectors`` before anything else: the id must name an existing index."""
    index = remote.IndexFlatL2(D)
    client = remote.get_client()
    client.add_vectors(index.index_id, XB[:100])
    client.batch_add_vectors(index.index_id, XB[100:], batch_size=64)
    assert index.ntotal == len(XB)
    ref = faiss.IndexFlatL2(D)
    ref.add(XB)
    same_search(index, ref)
    found = client.search(index.index_id, XQ, k=5)["results"]
    assert [r["indices"] for r in found] == ref.search(XQ, 5)[1].tolist()


# -- the original's parameter and memory methods --------------------------------------------------


def test_training_parameters_set_faiss_clustering(fx):
    """``set_parameter("n_iter", k)`` is faiss's ``cp.niter``: the trained centroids equal a local
    faiss index trained with the same clustering parameters."""
    index = fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 8)
    index.set_parameter("n_iter", 3)
    index.set_parameter("min_points_per_centroid", 2)
    assert (index.get_parameter("n_iter"), index.cp.niter) == (3, 3)
    assert index.get_parameter("min_points_per_centroid") == 2
    ref = faiss.IndexIVFFlat(faiss.IndexFlatL2(D), D, 8)
    ref.cp.niter = 3
    ref.cp.min_points_per_centroid = 2
    for i in (index, ref):
        i.train(XB)
        i.add(XB)
        i.nprobe = 3
    same_search(index, ref)
    with pytest.raises(ValueError):
        index.set_parameter("n_iter", 0)
    with pytest.raises(AttributeError, match="IVF"):
        fx.IndexFlatL2(D).set_parameter("n_iter", 3)


def test_get_parameters_and_estimate_memory_usage(fx):
    from faissx_client.optimization import memory_manager, parameters

    index = fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 4)
    index.train(XB)
    index.add(XB)
    index.set_nprobe(3)
    got = index.get_parameters()
    assert got == parameters(index) and got["nprobe"] == 3
    assert index.estimate_memory_usage() == memory_manager.index_memory(index) > XB.nbytes
    ref = faiss.IndexIVFFlat(faiss.IndexFlatL2(D), D, 4)  # faiss's own objects have them too
    assert ref.get_parameters()["nprobe"] == 1 and ref.estimate_memory_usage() > 0


def test_auto_unload_option_is_always_on():
    from faissx.client.optimization import memory_manager

    try:
        memory_manager.set_option("auto_unload_unused_indices", True)
        assert memory_manager.get_option("auto_unload_unused_indices") is True
        with pytest.raises(ValueError, match="idle-ttl"):
            memory_manager.set_option("auto_unload_unused_indices", False)
        assert memory_manager.get_option("auto_unload_unused_indices") is True
        memory_manager.set_option("index_cache_size", 5)
        assert memory_manager.get_all_options() == memory_manager.options()
        assert memory_manager.get_all_options()["index_cache_size"] == 5
        memory_manager.reset_options()
        assert memory_manager.options() == memory_manager.DEFAULTS
    finally:
        memory_manager.reset()


# -- faissx.client.transforms and IndexPreTransform(index, transforms) ---------------------------


def test_transforms_module_is_faiss_transforms(fx):
    """The original's transforms computed in the client in both modes; so do these."""
    from faissx.client.transforms import L2NormTransform, PCATransform, RemapDimensionsTransform

    x = XB[:50]
    np.testing.assert_allclose(
        L2NormTransform(D).apply(x), faiss.NormalizationTransform(D, 2.0).apply(x)
    )
    pca, ref = PCATransform(D, 4), faiss.PCAMatrix(D, 4)
    for t in (pca, ref):
        t.train(XB)
    np.testing.assert_allclose(pca.apply(x), ref.apply(x), rtol=1e-5, atol=1e-6)
    assert pca.reverse_transform(pca.apply(x)).shape == x.shape
    remap = RemapDimensionsTransform(D, 3, [5, 0, -1])
    np.testing.assert_array_equal(remap.apply(x), np.c_[x[:, 5], x[:, 0], np.zeros(len(x))])
    assert RemapDimensionsTransform(D, 4).apply(x).shape == (len(x), 4)
    with pytest.raises(ValueError):
        RemapDimensionsTransform(D, 2, [0, D])


def test_pretransform_takes_the_original_order(fx):
    from faissx.client.transforms import L2NormTransform, PCATransform

    index = fx.IndexPreTransform(fx.IndexFlatL2(8), [PCATransform(D, 8), L2NormTransform(8)])
    assert is_remote(index) == fx.is_remote()
    assert (index.d_in, index.is_trained) == (D, False)
    ref = faiss.IndexPreTransform(faiss.IndexFlatL2(8))  # PCA first, then normalisation
    ref.prepend_transform(faiss.NormalizationTransform(8, 2.0))
    ref.prepend_transform(faiss.PCAMatrix(D, 8))
    for i in (index, ref):
        i.train(XB)
        i.add(XB)
    same_search(index, ref)
    chain = index.transform_chain
    assert len(chain) == 2
    if not fx.is_remote():
        assert [type(t).__name__ for t in chain] == ["PCAMatrix", "NormalizationTransform"]
    else:
        assert [t.faiss_class for t in chain] == ["PCAMatrix", "NormalizationTransform"]
        assert (chain[0].d_in, chain[0].d_out) == (D, 8)
    if fx.is_remote():
        trained = PCATransform(D, 8)
        trained.train(XB)
        with pytest.raises(ValueError, match="trained"):
            fx.IndexPreTransform(fx.IndexFlatL2(8), trained)
    single = fx.IndexPreTransform(fx.IndexFlatL2(D), L2NormTransform(D))
    single.add(XB)
    ref = faiss.IndexPreTransform(faiss.NormalizationTransform(D, 2.0), faiss.IndexFlatL2(D))
    ref.add(XB)
    same_search(single, ref)


def test_get_vectors_is_reconstruct_n(fx):
    index = fx.IndexPQ(D, 4, 6)
    ref = faiss.IndexPQ(D, 4, 6)
    for i in (index, ref):
        i.train(XB)
        i.add(XB[:40])
    np.testing.assert_allclose(index.get_vectors(), ref.reconstruct_n(0, 40), rtol=1e-5)
    np.testing.assert_allclose(ref.get_vectors(), ref.reconstruct_n(0, 40))
    ivf = fx.IndexIVFScalarQuantizer(fx.IndexFlatL2(D), D, 4)
    ref = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(D), D, 4, faiss.ScalarQuantizer.QT_8bit)
    for i in (ivf, ref):
        i.train(XB)
        i.add(XB[:10])
    np.testing.assert_allclose(ivf.get_vectors(), ref.reconstruct_n(0, 10), rtol=1e-5)


def test_out_of_range_is_also_an_index_error(remote):
    """A key past the end: faiss raises RuntimeError, Python (and the original) IndexError; a
    remote index raises one error that is both, and still a ValueError like every bad argument."""
    from faissx_core.errors import OutOfRange

    index = remote.IndexBinaryFlat(64)
    with pytest.raises(IndexError):
        index.reconstruct(10)
    flat = remote.IndexFlatL2(D)
    flat.add(XB[:3])
    with pytest.raises(OutOfRange) as caught:
        flat.reconstruct(3)
    assert all(isinstance(caught.value, c) for c in (IndexError, RuntimeError, ValueError))
    assert flat.ntotal == 3
