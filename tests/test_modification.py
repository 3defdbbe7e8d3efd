"""merge_indices / split_index against doing the same with faiss by hand, in both modes.

"By hand" is what a faiss user writes: ``clone_index`` + ``merge_from`` to merge,
``clone_index`` + ``remove_ids`` to cut a part out. FAISSx must give exactly those indices
(same ids, same distances) locally, and the remote functions exactly what the local ones give,
with every index involved living on the server. Round trips (split, then merge the parts) must
answer searches as the original did.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import pytest

from faissx_client.modification import merge_indices, split_index
from faissx_core.errors import InvalidArgument

D = 16
K = 6
RNG = np.random.default_rng(4242)
TRAIN = RNG.standard_normal((1500, D)).astype("float32")
BASE = RNG.standard_normal((900, D)).astype("float32")
QUERIES = RNG.standard_normal((30, D)).astype("float32")
IDS = RNG.permutation(100_000)[: len(BASE)].astype(np.int64)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_local_faiss():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(params=["local", "remote"])
def fx(request, server):
    from faissx import client

    if request.param == "remote":
        client.configure(server=server.endpoint, timeout=120)
    try:
        yield client
    finally:
        client.disconnect()


def is_remote(index: Any) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


#: structure -> (builder given the module, whether the vectors go in with ids)
KINDS = {
    "Flat": (lambda m: m.IndexFlatL2(D), False),
    "IDMap2": (lambda m: m.IndexIDMap2(m.IndexFlatL2(D)), True),
    "IVFFlat": (lambda m: m.IndexIVFFlat(m.IndexFlatL2(D), D, 16), False),
    "IVFPQ-ids": (lambda m: m.IndexIVFPQ(m.IndexFlatL2(D), D, 16, 4, 4), True),
}


def filled(module: Any, kind: str, rows: slice = slice(None), trained_from: Any = None) -> Any:
    """An index of ``kind`` holding BASE[rows]; IVF trained on TRAIN (deterministically)."""
    build, with_ids = KINDS[kind]
    index = build(module)
    if not index.is_trained:
        index.train(TRAIN)
    if with_ids:
        index.add_with_ids(BASE[rows], IDS[rows])
    else:
        index.add(BASE[rows])
    return index


def shards(module: Any, kind: str) -> list[Any]:
    """Three indices holding thirds of BASE. IVF shards are copies of one trained, empty index,
    so they share their coarse quantizer (what faiss's merge_from requires)."""
    cuts = [slice(0, 300), slice(300, 650), slice(650, 900)]
    build, with_ids = KINDS[kind]
    if not kind.startswith("IVF"):
        return [filled(module, kind, cut) for cut in cuts]
    empty = build(module)
    empty.train(TRAIN)
    data = module.serialize_index(empty)
    out = []
    for cut in cuts:
        shard = module.deserialize_index(data)
        if with_ids:
            shard.add_with_ids(BASE[cut], IDS[cut])
        else:
            shard.add(BASE[cut])
        out.append(shard)
    return out


def by_hand_merge(parts: list[faiss.Index]) -> faiss.Index:
    merged = faiss.clone_index(parts[0])
    for part in parts[1:]:
        merged.merge_from(faiss.clone_index(part), 0)
    return merged


def same_search(a: Any, b: Any, queries: np.ndarray = QUERIES) -> None:
    for index in (a, b):
        if "nprobe" in dir(index) or (is_remote(index) and "nprobe" in index._runtime_params()):
            index.nprobe = 16  # every list: results do not depend on list membership order
    Da, Ia = a.search(queries, K)
    Db, Ib = b.search(queries, K)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, rtol=1e-6)


def plain(index: Any) -> faiss.Index:
    """A plain faiss copy of a local or remote index (the faiss bytes)."""
    data = index.serialize() if is_remote(index) else faiss.serialize_index(index)
    return faiss.deserialize_index(np.asarray(data))


# -- merge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_merge_equals_faiss_merge_from_by_hand(fx, kind):
    parts = shards(fx, kind)
    before = [p.ntotal for p in parts]
    merged = merge_indices(parts)
    assert is_remote(merged) == fx.is_remote()
    assert merged.ntotal == len(BASE) and [p.ntotal for p in parts] == before, "inputs unchanged"
    reference = by_hand_merge([plain(p) for p in parts])
    same_search(merged, reference)
    if fx.is_remote():
        assert merged.name in {
            i["name"] for i in fx.get_client().call("list", args={"all": True})[0]["indexes"]
        }, "the merged index lives on the server"


def test_merge_into_a_factory_type_equals_training_by_hand(fx):
    parts = [filled(fx, "Flat", cut) for cut in (slice(0, 450), slice(450, 900))]
    merged = merge_indices(parts, "IVF8,Flat")
    reference = faiss.index_factory(D, "IVF8,Flat")
    reference.train(BASE)  # the merged vectors are the training set
    reference.add_with_ids(BASE, np.arange(len(BASE), dtype=np.int64))
    assert merged.ntotal == len(BASE) and is_remote(merged) == fx.is_remote()
    same_search(merged, reference)


def test_merge_of_hnsw_adds_vectors_faiss_cannot_merge(fx):
    parts = [fx.IndexHNSWFlat(D, 16) for _ in range(2)]
    parts[0].add(BASE[:400])
    parts[1].add(BASE[400:])
    merged = merge_indices(parts)
    assert merged.ntotal == len(BASE)
    merged.hnsw.efSearch = 256
    _, found = merged.search(BASE[::10], 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(0, len(BASE), 10))


def test_merge_refuses_mismatched_inputs(fx):
    with pytest.raises(InvalidArgument):
        merge_indices([])
    with pytest.raises(InvalidArgument, match="does not match"):
        merge_indices([fx.IndexFlatL2(D), fx.IndexFlatL2(D + 1)])
    with pytest.raises(InvalidArgument, match="does not match"):
        merge_indices([fx.IndexFlatL2(D), fx.IndexFlatIP(D)])
    with pytest.raises(InvalidArgument, match="output_type"):
        merge_indices([fx.IndexFlatL2(D)], 42)
    if fx.is_remote():
        local = faiss.IndexFlatL2(D)
        with pytest.raises(InvalidArgument, match="mix local and remote"):
            merge_indices([fx.IndexFlatL2(D), local])


# -- split ---------------------------------------------------------------------------------------


def by_hand_split(index: faiss.Index, groups: list[np.ndarray]) -> list[faiss.Index]:
    """clone + remove_ids of everything not in the group, per group."""
    ids = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else None
    if ids is None and hasattr(index, "invlists"):
        ids = np.sort(
            np.concatenate(
                [
                    faiss.rev_swig_ptr(index.invlists.get_ids(lst), index.invlists.list_size(lst))
                    for lst in range(index.nlist)
                    if index.invlists.list_size(lst)
                ]
            )
        )
    if ids is None:
        ids = np.arange(index.ntotal, dtype=np.int64)
    out = []
    for group in groups:
        part = faiss.clone_index(index)
        part.remove_ids(np.setdiff1d(ids, group))
        out.append(part)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_split_equals_remove_ids_by_hand(fx, kind):
    index = filled(fx, kind)
    parts = split_index(index, 3)
    assert [p.ntotal for p in parts] == [300, 300, 300] and index.ntotal == len(BASE)
    assert all(is_remote(p) == fx.is_remote() for p in parts)
    reference = plain(index)
    if KINDS[kind][1]:
        stored = (
            faiss.vector_to_array(faiss.downcast_index(reference).id_map)
            if kind == "IDMap2"
            else np.sort(IDS)
        )
    else:
        stored = np.arange(len(BASE))
    groups = np.array_split(stored, 3)
    for part, expected in zip(
        parts, by_hand_split(faiss.downcast_index(reference), groups), strict=True
    ):
        same_search(part, expected)


def test_custom_split_gets_the_vectors_and_ids(fx):
    index = filled(fx, "IDMap2")
    seen = {}

    def by_sign(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        seen["rows"], seen["ids"] = len(vectors), ids
        return (vectors[:, 0] > 0).astype(int)

    low, high = split_index(index, 2, "custom", by_sign)
    assert seen["rows"] == len(BASE) and set(seen["ids"]) == set(IDS)
    assert low.ntotal == int((BASE[:, 0] <= 0).sum()) and low.ntotal + high.ntotal == len(BASE)
    _, found = high.search(BASE[BASE[:, 0] > 0][:10], 1)
    np.testing.assert_array_equal(found[:, 0], IDS[BASE[:, 0] > 0][:10])


@pytest.mark.parametrize("kind", ["Flat", "IDMap2", "IVFFlat", "IVFPQ-ids"])
@pytest.mark.parametrize("method", ["sequential", "cluster", "custom"])
def test_split_then_merge_answers_as_the_original(fx, kind, method):
    if kind == "Flat" and method != "sequential":
        pytest.skip("Flat renumbers by position: only an in-order split merges back to its ids")
    index = filled(fx, kind)
    custom = (lambda v: np.arange(len(v)) % 4) if method == "custom" else None
    parts = split_index(index, 4, method, custom)
    assert sum(p.ntotal for p in parts) == len(BASE)
    merged = merge_indices(parts)
    same_search(merged, index)
    same_search(merged, index, BASE[:50])


def test_hnsw_split_rebuilds_parts_faiss_cannot_cut(fx):
    index = fx.IndexHNSWFlat(D, 16)
    index.add(BASE)
    parts = split_index(index, 2)
    assert [p.ntotal for p in parts] == [450, 450]
    for part, rows in zip(parts, (BASE[:450], BASE[450:]), strict=True):
        part.hnsw.efSearch = 128
        _, found = part.search(rows[::15], 1)
        np.testing.assert_array_equal(found[:, 0], np.arange(0, len(rows), 15))


def test_split_refuses_bad_arguments(fx):
    index = filled(fx, "Flat")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgument, match="num_parts"):
            split_index(index, bad)
    with pytest.raises(InvalidArgument, match="split_method"):
        split_index(index, 2, "random")
    with pytest.raises(InvalidArgument, match="custom_fn"):
        split_index(index, 2, "custom")
    with pytest.raises(InvalidArgument, match="custom_fn"):
        split_index(index, 2, "sequential", lambda v: v)
    with pytest.raises(InvalidArgument, match="part numbers"):
        split_index(index, 2, "custom", lambda v: np.full(len(v), 5))
    with pytest.raises(InvalidArgument, match="part numbers"):
        split_index(index, 2, "custom", lambda v: np.zeros(3, dtype=int))
    assert index.ntotal == len(BASE)


def test_remote_parts_can_be_named(remote):
    index = filled(remote, "IDMap2")
    names = [f"part-{i}-{id(index)}" for i in range(2)]
    parts = split_index(index, 2, names=names)
    listed = {i["name"]: i["ntotal"] for i in remote.list_indexes()}
    assert {n: listed[n] for n in names} == {names[0]: 450, names[1]: 450}
    merged = merge_indices(parts, name=f"merged-{id(index)}")
    assert remote.open_index(merged.name).ntotal == len(BASE)
    for name in [*names, merged.name]:
        remote.delete_index(name)


@pytest.mark.parametrize("kind", KINDS)
def test_export_in_pages_is_the_whole_in_order(fx, kind, monkeypatch):
    """``export`` (what remote merge/split read) pages through the index: the pages put
    together are the whole, in stored order, locally and over the wire alike."""
    from faissx_client import modification
    from faissx_core.introspect import export_vectors

    monkeypatch.setattr(modification, "EXPORT_PAGE_BYTES", 128 * (D * 4 + 8))  # 8 pages
    index = filled(fx, kind)
    ids, x, kept = modification._export(index, True)
    whole_ids, whole_x = export_vectors(plain(index))
    np.testing.assert_array_equal(ids, whole_ids)
    np.testing.assert_array_equal(x, whole_x)
    assert kept == KINDS[kind][1] or kind == "IVFFlat"
    page_ids, page_x = export_vectors(plain(index), True, 100, 250)
    np.testing.assert_array_equal(page_ids, whole_ids[100:350])
    np.testing.assert_array_equal(page_x, whole_x[100:350])
    if kind != "IVFPQ-ids":  # the others give each vector back exactly, with its own id
        row_of = {int(i): row for row, i in enumerate(IDS)}
        rows = [row_of[int(i)] for i in ids] if KINDS[kind][1] else ids
        np.testing.assert_array_equal(x, BASE[rows])
