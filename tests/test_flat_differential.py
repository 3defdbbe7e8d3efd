"""The same Flat program on local faiss and through a real server gives the same answers.

Flat search is deterministic, so ids and distances must be bit-identical, not merely close.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

D = 24
RNG = np.random.default_rng(1234)
BASE = RNG.standard_normal((500, D)).astype("float32")
QUERIES = RNG.standard_normal((17, D)).astype("float32")


def pair(remote, cls_name: str, *args):
    """(local faiss index, remote proxy) built from the same constructor call."""
    local = getattr(faiss, cls_name)(*args)
    proxy = getattr(remote, cls_name)(*args)
    assert not isinstance(proxy, faiss.Index), "remote mode must not build a local index"
    return local, proxy


def assert_same_search(local, proxy, queries, k):
    Dl, Il = local.search(queries, k)
    Dr, Ir = proxy.search(queries, k)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    assert Dr.dtype == Dl.dtype and Ir.dtype == Il.dtype
    assert Dr.flags.writeable and Ir.flags.writeable  # faiss hands back ordinary arrays


METRICS = [
    ("IndexFlatL2", (D,)),
    ("IndexFlatIP", (D,)),
    ("IndexFlat", (D, faiss.METRIC_L2)),
    ("IndexFlat", (D, faiss.METRIC_INNER_PRODUCT)),
    ("IndexFlat", (D, faiss.METRIC_L1)),
]


@pytest.mark.parametrize(("cls_name", "args"), METRICS, ids=lambda v: str(v))
def test_search_matches_local(remote, cls_name, args):
    local, proxy = pair(remote, cls_name, *args)
    for batch in np.array_split(BASE, 3):
        local.add(batch)
        proxy.add(batch)
    assert proxy.ntotal == local.ntotal == len(BASE)
    assert proxy.d == local.d and proxy.metric_type == local.metric_type
    assert proxy.is_trained is True
    for k in (1, 10, 64):
        assert_same_search(local, proxy, QUERIES, k)


@pytest.mark.parametrize("cls_name", ["IndexFlatL2", "IndexFlatIP"])
def test_k_larger_than_ntotal_is_padded_like_faiss(remote, cls_name):
    local, proxy = pair(remote, cls_name, D)
    local.add(BASE[:5])
    proxy.add(BASE[:5])
    assert_same_search(local, proxy, QUERIES, 12)
    _, I = proxy.search(QUERIES, 12)
    assert (I[:, 5:] == -1).all()


def test_empty_index_search(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    assert_same_search(local, proxy, QUERIES[:3], 4)


@pytest.mark.parametrize(("cls_name", "radius"), [("IndexFlatL2", 30.0), ("IndexFlatIP", 2.5)])
def test_range_search_matches_local(remote, cls_name, radius):
    local, proxy = pair(remote, cls_name, D)
    local.add(BASE)
    proxy.add(BASE)
    lims_l, D_l, I_l = local.range_search(QUERIES, radius)
    lims_r, D_r, I_r = proxy.range_search(QUERIES, radius)
    assert lims_r.dtype == lims_l.dtype
    np.testing.assert_array_equal(lims_r, lims_l)
    assert lims_l[-1] > 0, "the radius should find something, or the test proves nothing"
    # faiss returns each query's hits in an order that is deterministic for Flat
    np.testing.assert_array_equal(I_r, I_l)
    np.testing.assert_array_equal(D_r, D_l)


def test_remove_ids_then_search(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    local.add(BASE)
    proxy.add(BASE)
    ids = np.array([0, 3, 7, 400, 499], dtype="int64")
    assert proxy.remove_ids(ids) == local.remove_ids(ids) == 5
    sel_local = faiss.IDSelectorRange(100, 150)
    sel_remote = remote.IDSelectorRange(100, 150)
    assert proxy.remove_ids(sel_remote) == local.remove_ids(sel_local) == 50
    batch = np.array([10, 11, 12, 10_000], dtype="int64")
    assert (
        proxy.remove_ids(remote.IDSelectorBatch(batch))
        == local.remove_ids(faiss.IDSelectorBatch(batch))
        == 3
    )
    assert proxy.ntotal == local.ntotal == len(BASE) - 58
    assert_same_search(local, proxy, QUERIES, 10)
    np.testing.assert_array_equal(
        proxy.reconstruct_n(0, proxy.ntotal), local.reconstruct_n(0, local.ntotal)
    )


def test_remove_ids_accepts_a_faiss_range_selector(remote):
    _, proxy = pair(remote, "IndexFlatL2", D)
    proxy.add(BASE[:20])
    assert proxy.remove_ids(faiss.IDSelectorRange(0, 5)) == 5
    assert proxy.ntotal == 15


def test_local_batch_selector_is_refused_with_a_clear_error(remote):
    _, proxy = pair(remote, "IndexFlatL2", D)
    proxy.add(BASE[:20])
    with pytest.raises(ValueError, match="cannot be sent"):
        proxy.remove_ids(faiss.IDSelectorBatch(np.arange(3, dtype="int64")))
    assert proxy.ntotal == 20


def test_reconstruct_family_matches_local(remote):
    local, proxy = pair(remote, "IndexFlatIP", D)
    local.add(BASE)
    proxy.add(BASE)
    np.testing.assert_array_equal(proxy.reconstruct(42), local.reconstruct(42))
    np.testing.assert_array_equal(proxy.reconstruct_n(10, 30), local.reconstruct_n(10, 30))
    np.testing.assert_array_equal(proxy.reconstruct_n(), local.reconstruct_n())
    keys = np.array([5, 1, 499, 5], dtype="int64")
    np.testing.assert_array_equal(proxy.reconstruct_batch(keys), local.reconstruct_batch(keys))
    out = np.zeros(D, dtype="float32")
    assert proxy.reconstruct(7, out) is out
    np.testing.assert_array_equal(out, BASE[7])


def test_search_into_given_arrays(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    local.add(BASE)
    proxy.add(BASE)
    Dout = np.empty((len(QUERIES), 5), dtype="float32")
    Iout = np.empty((len(QUERIES), 5), dtype="int64")
    Dr, Ir = proxy.search(QUERIES, 5, D=Dout, I=Iout)
    assert Dr is Dout and Ir is Iout
    Dl, Il = local.search(QUERIES, 5)
    np.testing.assert_array_equal(Iout, Il)
    np.testing.assert_array_equal(Dout, Dl)


def test_reset_and_reuse(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    for index in (local, proxy):
        index.add(BASE)
        index.reset()
    assert proxy.ntotal == 0
    local.add(BASE[:50])
    proxy.add(BASE[:50])
    assert_same_search(local, proxy, QUERIES, 3)


def test_search_and_reconstruct_and_assign(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    local.add(BASE)
    proxy.add(BASE)
    Dl, Il, Rl = local.search_and_reconstruct(QUERIES, 4)
    Dr, Ir, Rr = proxy.search_and_reconstruct(QUERIES, 4)
    np.testing.assert_array_equal(Dr, Dl)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Rr, Rl)
    np.testing.assert_array_equal(proxy.assign(QUERIES, 3), local.assign(QUERIES, 3))


def test_add_with_ids_unsupported_like_faiss(remote):
    local, proxy = pair(remote, "IndexFlatL2", D)
    ids = np.arange(10, dtype="int64")
    with pytest.raises(RuntimeError) as local_err:
        local.add_with_ids(BASE[:10], ids)
    with pytest.raises(RuntimeError) as remote_err:
        proxy.add_with_ids(BASE[:10], ids)
    assert "add_with_ids" in str(remote_err.value)
    assert type(local_err.value) is RuntimeError
    assert proxy.ntotal == 0


def test_same_program_local_and_remote(server):
    """The README's quick start, run twice: once local, once after configure()."""
    from faissx import client as fx

    def program():
        index = fx.IndexFlatL2(D)
        index.add(BASE)
        return index, index.search(QUERIES, 5)

    local_index, (Dl, Il) = program()
    assert isinstance(local_index, faiss.IndexFlatL2)  # the genuine faiss object
    fx.configure(server=server.endpoint)
    try:
        remote_index, (Dr, Ir) = program()
        assert isinstance(remote_index, fx.RemoteIndex)
        assert isinstance(remote_index, fx.IndexFlatL2) and isinstance(local_index, fx.IndexFlatL2)
    finally:
        fx.disconnect()
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
