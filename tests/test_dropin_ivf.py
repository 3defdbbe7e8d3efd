"""IVF inverted-list surgery on remote indices, remote against local faiss, value for value.

``copy_subset_to`` (a durable write to the destination, committed whole like a merge),
``search_preassigned`` / ``range_search_preassigned`` (reads), ``update_vectors`` (a logged
write), ``nprobe = 0`` (taken, then refused by the search as faiss does), inverted-list
wrappers built on the server, and ``faiss.cvar.indexIVF_stats`` counting remote searches.
Each behaviour runs the same code on plain faiss and through ``faissx.client`` against a real
server; where faiss itself would crash or corrupt memory, the server refuses with a typed error
and changes nothing. The durability tests kill a server with a data directory (``kill -9`` and
the storage's commit-point crash hook) and check the write is there whole or not at all.
"""

from __future__ import annotations

import signal

import faiss
import numpy as np
import pytest

from faissx_core.errors import (
    FaissxError,
    FaissxWarning,
    InvalidArgument,
    OutOfRange,
    QuotaExceeded,
    UnsupportedOperation,
)
from tests.conftest import ServerProcess, no_retries

D = 16
NLIST = 8


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(11)
    return {
        "xt": rs.rand(800, D).astype("float32"),
        "xb": rs.rand(400, D).astype("float32"),
        "xq": rs.rand(12, D).astype("float32"),
    }


def trained(f, key: str, data) -> object:
    index = f.index_factory(D, key)
    index.train(data["xt"])
    return index


def lists_of(index) -> list[list[int]]:
    """Every inverted list's ids, sorted: what a copy of a subset must reproduce."""
    il = index.invlists
    return [
        sorted(faiss.rev_swig_ptr(il.get_ids(i), il.list_size(i)).tolist()) for i in range(NLIST)
    ]


def remote_lists(proxy) -> list[list[int]]:
    il = proxy.invlists
    return [sorted(np.asarray(il.get_ids(i)).tolist()) for i in range(NLIST)]


# -- copy_subset_to --------------------------------------------------------------------------

#: faiss's subset types: 0 id range, 1 id modulo, 2 element range, 3 list fraction, 4 list range
SUBSETS = {
    "id-range": (0, 100, 250),
    "id-mod": (1, 3, 1),
    "elements": (2, 50, 300),
    "list-fraction": (3, 3, 2),
    "list-range": (4, 2, 6),
}


@pytest.mark.parametrize("key", ["IVF8,Flat", "IVF8,PQ4np"])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_copy_subset_to_copies_what_faiss_copies(remote, data, key, subset):
    kind, a1, a2 = SUBSETS[subset]
    results = []
    for f in (faiss, remote):
        source = trained(f, key, data)
        dest = f.clone_index(source)  # trained, empty
        source.add(data["xb"])
        source.copy_subset_to(dest, kind, a1, a2)
        assert source.ntotal == 400  # the source is only read
        results.append((dest, dest.ntotal, dest.search(data["xq"], 5)))
    (ldest, ln, (Dl, Il)), (rdest, rn, (Dr, Ir)) = results
    assert 0 < rn == ln < 400
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_allclose(Dr, Dl, rtol=1e-5)
    assert remote_lists(rdest) == lists_of(ldest)


def test_split_by_copy_subset_reassembles_the_index(remote, data):
    """FAISS's own split/merge use: three disjoint subsets searched together answer as the
    whole index (the shards' results merged here by distance)."""
    index = trained(remote, "IVF8,Flat", data)
    parts = [remote.clone_index(index) for _ in range(3)]
    index.add(data["xb"])
    Dref, Iref = index.search(data["xq"], 10)
    for i, part in enumerate(parts):
        index.copy_subset_to(part, 0, 400 * i // 3, 400 * (i + 1) // 3)
    assert sum(p.ntotal for p in parts) == 400
    found = [p.search(data["xq"], 10) for p in parts]
    Dall = np.hstack([d for d, _ in found])
    Iall = np.hstack([i for _, i in found])
    order = np.argsort(Dall, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(np.take_along_axis(Dall, order, 1), Dref, rtol=1e-6)
    assert {tuple(sorted(r)) for r in np.take_along_axis(Iall, order, 1)} == {
        tuple(sorted(r)) for r in Iref
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1, 0, 0), InvalidArgument),  # faiss divides by a1: the server would die
        ((3, 0, 1), InvalidArgument),
        ((2, 10, 5), OutOfRange),  # faiss makes ntotal negative
        ((2, 0, 401), OutOfRange),  # faiss reads past its lists
    ],
)
def test_copy_subset_to_refuses_what_would_crash_faiss(remote, data, args, error):
    source = trained(remote, "IVF8,Flat", data)
    dest = remote.clone_index(source)
    source.add(data["xb"])
    with pytest.raises(error):
        source.copy_subset_to(dest, *args)
    assert dest.ntotal == 0 and source.ntotal == 400
    source.copy_subset_to(dest, 0, 0, 10)  # the server is alive and the index usable
    assert dest.ntotal == 10


def test_copy_subset_to_refusals_name_the_reason(remote, data):
    source = trained(remote, "IVF8,Flat", data)
    source.add(data["xb"])
    with pytest.raises(InvalidArgument, match="itself"):
        source.copy_subset_to(source, 0, 0, 10)
    with pytest.raises(InvalidArgument, match="nlist"):
        source.copy_subset_to(trained(remote, "IVF4,Flat", data), 0, 0, 10)
    with pytest.raises(UnsupportedOperation, match="IVF"):
        source.copy_subset_to(remote.IndexFlatL2(D), 0, 0, 10)
    fast = trained(remote, "IVF8,PQ4x4fs", data)  # block lists: faiss corrupts memory
    fast.add(data["xb"])
    with pytest.raises(UnsupportedOperation, match="fast-scan"):
        fast.copy_subset_to(remote.clone_index(trained(remote, "IVF8,PQ4x4fs", data)), 0, 0, 9)
    with pytest.raises(InvalidArgument, match="same server"):
        source.copy_subset_to(trained(faiss, "IVF8,Flat", data), 0, 0, 10)
    assert source.ntotal == 400


def test_copy_subset_to_is_bounded_by_the_tenant_quota_before_it_copies(start_server, data):
    """The subset can be as large as the source, so that much is held against the tenant's
    quota first: over it, QuotaExceeded, and the destination is as it was."""
    from faissx import client

    srv = start_server("--tenant-max-vectors", "600")
    try:
        client.configure(server=srv.endpoint, timeout=60)
        source = trained(client, "IVF8,Flat", data)
        dest = client.clone_index(source)
        source.add(data["xb"])  # 400 of the tenant's 600
        with pytest.raises(QuotaExceeded, match="tenant quota"):
            source.copy_subset_to(dest, 0, 0, 10)
        assert dest.ntotal == 0
        source.remove_ids(np.arange(250, 400, dtype="int64"))  # 250 + 250 fit
        source.copy_subset_to(dest, 0, 0, 10)
        assert dest.ntotal == 10
    finally:
        client.disconnect()


# -- search_preassigned ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["IVF8,Flat", "IVF8,SQ8", "IVF8,PQ4x4np", "IVF8,PQ4x4fs"])
def test_search_preassigned_matches_faiss(remote, data, key):
    out = []
    for f in (faiss, remote):
        index = trained(f, key, data)
        index.add(data["xb"])
        index.nprobe = 3
        Dq, Iq = index.quantizer.search(data["xq"], 3)
        D, I = index.search_preassigned(data["xq"], 5, Iq, Dq)
        np.testing.assert_array_equal(I, index.search(data["xq"], 5)[1])
        out.append((D, I, Iq, Dq))
    np.testing.assert_array_equal(out[1][1], out[0][1])
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
    np.testing.assert_array_equal(out[1][2], out[0][2])


def test_range_search_preassigned_matches_faiss(remote, data):
    out = []
    for f in (faiss, remote):
        index = trained(f, "IVF8,Flat", data)
        index.add(data["xb"])
        index.nprobe = 4
        Dq, Iq = index.quantizer.search(data["xq"], 4)
        radius = 0.9
        lims, Dr, Ir = index.range_search_preassigned(data["xq"], radius, Iq, Dq)
        ref = index.range_search(data["xq"], radius)
        np.testing.assert_array_equal(lims, ref[0])
        out.append((lims, Dr, Ir))
        # without coarse distances (None), as faiss allows: the same lists are visited
        again = index.range_search_preassigned(data["xq"], radius, Iq, None)
        np.testing.assert_array_equal(again[0], lims)
    assert out[0][0][-1] > 10  # something was found
    for q in range(len(data["xq"])):
        lo, hi = out[0][0][q], out[0][0][q + 1]
        assert sorted(out[0][2][lo:hi]) == sorted(out[1][2][lo:hi])


def test_binary_ivf_preassigned_searches_match_faiss(remote):
    codes = np.random.RandomState(1).randint(0, 256, (500, 8)).astype("uint8")
    out = []
    for f in (faiss, remote):
        index = f.IndexBinaryIVF(f.IndexBinaryFlat(64), 64, NLIST)
        index.train(codes)
        index.add(codes)
        index.nprobe = 3
        Dq, Iq = index.quantizer.search(codes[:5], 3)
        D, I = index.search_preassigned(codes[:5], 4, Iq, Dq)
        lims, _, Ir = index.range_search_preassigned(codes[:5], 20, Iq, Dq)
        out.append((D, I, lims, np.sort(Ir)))
    for local, there in zip(out[0], out[1], strict=True):
        np.testing.assert_array_equal(there, local)


def test_search_preassigned_refuses_lists_faiss_would_read_past(remote, data):
    index = trained(remote, "IVF8,Flat", data)
    index.add(data["xb"])
    index.nprobe = 2
    xq = data["xq"][:2]
    with pytest.raises(InvalidArgument, match="nprobe"):  # faiss's stride is nprobe
        index.search_preassigned(xq, 5, np.zeros((2, 3), "int64"), None)
    with pytest.raises(OutOfRange, match="list numbers"):
        index.search_preassigned(xq, 5, np.array([[0, NLIST]] * 2, "int64"), None)
    with pytest.raises(InvalidArgument, match="params"):
        index.search_preassigned(xq, 5, np.zeros((2, 2), "int64"), None, params=object())
    with pytest.raises(UnsupportedOperation, match="IVF"):
        remote.IndexFlatL2(D).search_preassigned(xq, 5, np.zeros((2, 2), "int64"), None)
    _, I = index.search_preassigned(xq, 5, np.array([[0, -1]] * 2, "int64"), None)
    assert I.shape == (2, 5)  # -1: a list slot left empty, as in faiss


# -- update_vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("map_type", ["Array", "Hashtable"])
def test_update_vectors_matches_faiss(remote, data, map_type):
    keys = np.arange(0, 60, dtype="int64")
    new = data["xb"][keys[::-1]].copy()
    seen = []
    for f in (faiss, remote):
        index = trained(f, "IVF8,Flat", data)
        index.add(data["xb"])
        index.nprobe = NLIST
        index.set_direct_map_type(getattr(faiss.DirectMap, map_type))
        index.update_vectors(keys, new)
        assert index.ntotal == 400
        recons = np.vstack([index.reconstruct(int(i)) for i in keys])
        np.testing.assert_array_equal(recons, new)
        seen.append(index.search(data["xq"], 5))
    np.testing.assert_array_equal(seen[1][1], seen[0][1])
    np.testing.assert_allclose(seen[1][0], seen[0][0], rtol=1e-5)


def test_update_vectors_checks_every_id_first(remote, data):
    index = trained(remote, "IVF8,Flat", data)
    index.add(data["xb"])
    x = data["xb"][:3]
    with pytest.raises(InvalidArgument, match="direct map"):
        index.update_vectors(np.arange(3, dtype="int64"), x)
    index.make_direct_map()
    before = index.reconstruct(1)
    with pytest.raises(OutOfRange):  # the first two would change before faiss throws
        index.update_vectors(np.array([1, 2, 400], "int64"), x[::-1].copy())
    np.testing.assert_array_equal(index.reconstruct(1), before)
    with pytest.raises(InvalidArgument, match="distinct"):
        index.update_vectors(np.array([1, 1, 2], "int64"), x)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    with pytest.raises(OutOfRange, match="id 999"):
        index.update_vectors(np.array([1, 999, 2], "int64"), x)
    assert index.ntotal == 400
    np.testing.assert_array_equal(index.reconstruct(1), before)


# -- inverted-list wrappers and replace_invlists ---------------------------------------------


def _filled(f, data, key="IVF8,Flat"):
    index = trained(f, key, data)
    index.add(data["xb"])
    index.nprobe = 4
    return index


def test_capped_invlists_read_and_serve_as_in_faiss(remote, data):
    out = []
    for f in (faiss, remote):
        index = _filled(f, data)
        il = index.invlists
        sizes = [il.list_size(i) for i in range(NLIST)]
        cap = max(sizes) // 2
        il2 = f.CappedInvertedLists(il, cap)
        assert [il2.list_size(i) for i in range(NLIST)] == [min(s, cap) for s in sizes]
        assert [il2.real_list_size(i) for i in range(NLIST)] == sizes
        index.own_invlists = False
        index.replace_invlists(il2, False)
        capped = index.search(data["xq"], 5)
        index.add(data["xb"][:10])  # writes pass through the cap, as in faiss
        assert index.ntotal == 410
        index.replace_invlists(il, True)
        out.append((capped, index.search(data["xq"], 5)))
    for (lc, lf), (rc, rf) in [(out[0], out[1])]:
        np.testing.assert_array_equal(rc[1], lc[1])
        np.testing.assert_array_equal(rf[1], lf[1])
    assert not np.array_equal(out[1][0][1], out[1][1][1])  # the cap changed the results


def test_stop_words_hide_long_lists_as_in_faiss(remote, data):
    xq = data["xq"][:1]
    for f in (faiss, remote):
        index = _filled(f, data)
        Iref = index.search(xq, 10)[1]
        il = index.invlists
        longest = max(il.list_size(i) for i in range(NLIST))
        il2 = f.StopWordsInvertedLists(il, longest + 1)
        index.own_invlists = False
        index.replace_invlists(il2, False)
        np.testing.assert_array_equal(index.search(xq, 10)[1], Iref)
        index.replace_invlists(il, False)
        i = int(Iref[0, 0])
        index.add(np.vstack([data["xb"][i]] * (longest + 10)))  # one list now too long
        index.replace_invlists(il2, False)
        assert i not in index.search(xq, 10)[1].ravel()
        if f is remote:  # faiss aborts the process on a write through read-only lists
            with pytest.raises(UnsupportedOperation, match="read-only"):
                index.add(data["xb"][:3])
            other = _filled(remote, data)
            with pytest.raises(UnsupportedOperation, match="read-only"):
                other.merge_from(index)
            assert other.ntotal == 400
        index.replace_invlists(il, True)
        assert i in index.search(xq, 10)[1].ravel()


def test_invlist_wrappers_refused_where_they_cannot_be_served(remote, data, tmp_path):
    index = _filled(remote, data)
    other = _filled(remote, data)
    with pytest.raises(UnsupportedOperation, match="copy_subset_to"):
        remote.SliceInvertedLists(index.invlists, 0, 4)
    with pytest.raises(UnsupportedOperation, match="own lists"):
        other.replace_invlists(remote.CappedInvertedLists(index.invlists, 3))
    with pytest.raises(UnsupportedOperation, match="OnDiskInvertedLists"):
        index.replace_invlists(
            remote.OnDiskInvertedLists(NLIST, index.code_size, str(tmp_path / "lists"))
        )
    with pytest.warns(FaissxWarning, match="memory only"):
        named = remote.index_factory(D, "IVF8,Flat", name="ivf-wrapped-named")
    try:
        named.train(data["xt"])
        with pytest.raises(UnsupportedOperation, match="snapshot"):
            named.replace_invlists(remote.CappedInvertedLists(named.invlists, 3))
    finally:
        remote.delete_index("ivf-wrapped-named")
    with pytest.raises(InvalidArgument):
        remote.CappedInvertedLists(index.invlists, -1)
    assert index.ntotal == 400
    # a wrapped index dropped while wrapped frees its lists once: the server lives on
    for wrapper in (remote.StopWordsInvertedLists, remote.CappedInvertedLists) * 2:
        doomed = _filled(remote, data)
        doomed.replace_invlists(wrapper(doomed.invlists, 5))
        remote.delete_index(doomed.name)
    fresh = _filled(remote, data)  # new faiss objects are sound (a double free broke them)
    assert fresh.search(data["xq"], 3)[1].shape == (len(data["xq"]), 3)
    assert index.search(data["xq"], 3)[1].shape == (len(data["xq"]), 3)


# -- small fidelity items ----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["float", "binary"])
def test_nprobe_zero_is_taken_and_the_search_refused(remote, data, family):
    """faiss accepts ``nprobe = 0`` and fails the search with RuntimeError; so do we."""
    for f in (faiss, remote):
        if family == "float":
            index = trained(f, "IVF8,Flat", data)
            xq = data["xq"]
            index.add(data["xb"])
        else:
            codes = (data["xt"][:, :4] * 255).astype("uint8")
            index = f.IndexBinaryIVF(f.IndexBinaryFlat(32), 32, 4)
            index.train(codes)
            index.add(codes)
            xq = codes[:3]
        index.nprobe = 0
        assert index.nprobe == 0
        with pytest.raises(RuntimeError):
            index.search(xq, 3)
        index.nprobe = 2
        assert index.search(xq, 3)[1].shape == (len(xq), 3)
    with pytest.raises(InvalidArgument):
        index.nprobe = -1


def test_ivf_stats_count_this_clients_searches_as_faiss_does(remote, data):
    """``faiss.cvar.indexIVF_stats`` after a remote search holds that search's counts (the
    server's own global would mix every tenant's); with every list probed, the distances
    computed are queries x stored vectors, and a selector keeping half of them halves that."""
    keep = np.arange(0, 400, 2, dtype="int64")
    seen = []
    for f in (faiss, remote):
        index = _filled(f, data)
        index.nprobe = NLIST
        stats = f.cvar.indexIVF_stats
        stats.reset()
        index.search(data["xq"], 5)
        plain = (stats.nq, stats.ndis)
        stats.reset()
        params = f.SearchParametersIVF(nprobe=NLIST, sel=f.IDSelectorBatch(keep))
        index.search(data["xq"], 5, params=params)
        seen.append((plain, (stats.nq, stats.ndis), stats.nheap_updates > 0))
    assert seen[0] == seen[1] == ((12, 12 * 400), (12, 12 * 200), True)
    assert remote.cvar.hnsw_stats is not None  # other globals are faiss's own


# -- durability ------------------------------------------------------------------------------


def _named_pair(client, data, tag: str):
    source = client.index_factory(D, "IVF8,Flat", name=f"src-{tag}")
    source.train(data["xt"])
    source.add(data["xb"])
    dest = client.index_factory(D, "IVF8,Flat", name=f"dst-{tag}")
    dest.train(data["xt"])
    return source, dest


@pytest.mark.parametrize("point", ["save:prepared:1", "save:committed:1"])
def test_copy_subset_to_is_whole_or_absent_after_a_crash(tmp_path, data, point):
    """The server dies at each commit point of the copy's snapshot; after a restart the
    destination holds all of the subset or none of it, and the source is untouched."""
    from faissx import client

    srv = ServerProcess(
        "--data-dir", str(tmp_path), "--log-level", "INFO", env={"FAISSX_TEST_CRASH_AT": point}
    ).start()
    try:
        client.configure(server=srv.endpoint, timeout=20)
        source, dest = _named_pair(client, data, "c")
        with pytest.raises(FaissxError), no_retries():
            source.copy_subset_to(dest, 0, 0, 150)
        srv.proc.wait(30)
        client.disconnect()
        srv.env = {}
        srv.start()
        client.configure(server=srv.endpoint, timeout=60)
        dest, source = client.open_index("dst-c"), client.open_index("src-c")
        assert source.ntotal == 400
        assert dest.ntotal in (0, 150), dest.ntotal
        if dest.ntotal == 0:
            source.copy_subset_to(dest, 0, 0, 150)
        ids = np.sort(np.concatenate(remote_lists(dest)))
        np.testing.assert_array_equal(ids, np.arange(150))
    finally:
        client.disconnect()
        srv.kill()


def test_copy_and_update_survive_kill_9(tmp_path, data):
    from faissx import client

    srv = ServerProcess("--data-dir", str(tmp_path), "--log-level", "INFO").start()
    try:
        client.configure(server=srv.endpoint, timeout=60)
        source, dest = _named_pair(client, data, "k")
        source.copy_subset_to(dest, 1, 2, 0)  # the even ids
        source.make_direct_map()
        new = data["xb"][:20][::-1].copy()
        source.update_vectors(np.arange(20, dtype="int64"), new)
        Iref = source.search(data["xq"], 5)[1]
        client.disconnect()
        srv.stop(signal.SIGKILL)
        srv.start()
        client.configure(server=srv.endpoint, timeout=60)
        dest, source = client.open_index("dst-k"), client.open_index("src-k")
        assert dest.ntotal == 200
        assert all(i % 2 == 0 for lst in remote_lists(dest) for i in lst)
        np.testing.assert_array_equal(source.reconstruct(3), new[3])
        np.testing.assert_array_equal(source.search(data["xq"], 5)[1], Iref)
    finally:
        client.disconnect()
        srv.kill()
