"""faissx_core/server/removal.py leaves exactly the state faiss's ``remove_ids`` leaves on
``IndexIDMap2`` over a flat index: the same ``ntotal``, codes, id map (order included), reverse
map (``reconstruct`` of every id), search results with their tie order, and removed count -
compared with local faiss over random removals (ids present, absent, repeated, negative; ranges,
nothing, everything; after a reset). Through a real server: tests/test_remove_ids.py.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from faissx_core.server import removal
from faissx_core.server.removal import Removal

D = 8
N = 600


def data(seed: int, n: int = N, d: int = D) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype("float32")
    x[n // 6 : n // 6 + n // 12] = x[: n // 12]  # repeated vectors: ties in every search
    return x


def build(kind: str, x: np.ndarray, ids: np.ndarray) -> faiss.Index:
    d = x.shape[1]
    flat = {
        "L2": lambda: faiss.IndexFlatL2(d),
        "IP": lambda: faiss.IndexFlatIP(d),
        "L1": lambda: faiss.IndexFlat(d, faiss.METRIC_L1),
    }
    base, _, wrap = kind.partition("/")
    inner = flat[base]()
    if not wrap:
        inner.add(x)
        return inner
    index = faiss.IndexIDMap2(inner) if wrap == "IDMap2" else faiss.IndexIDMap(inner)
    index.add_with_ids(x, ids)
    return index


def state(index: faiss.Index, queries: np.ndarray, ids: np.ndarray) -> dict:
    """Everything faiss lets a caller observe about the index after a removal."""
    outer = faiss.downcast_index(index)
    flat = faiss.downcast_index(outer.index) if hasattr(outer, "id_map") else outer
    Dist, Ids = index.search(queries, 20)
    out = {
        "ntotal": (index.ntotal, flat.ntotal),
        "bytes": faiss.serialize_index(index).tobytes(),  # codes, id map, ntotal
        "codes": flat.codes.size(),
        "D": Dist,
        "I": Ids,
    }
    if hasattr(outer, "id_map"):
        out["id_map"] = faiss.vector_to_array(outer.id_map)
    if isinstance(outer, faiss.IndexIDMap2):  # the reverse map: reconstruct by every id
        found = {}
        for key in np.unique(ids).tolist():
            try:
                found[key] = index.reconstruct(key).tobytes()
            except RuntimeError:
                found[key] = None
        out["rev"] = found
    elif not hasattr(outer, "id_map") and index.ntotal:
        out["rec"] = index.reconstruct_n(0, index.ntotal).tobytes()
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def faiss_remove(index: faiss.Index, what: Removal) -> int:
    if what.ids is None:
        return index.remove_ids(faiss.IDSelectorRange(what.imin, what.imax))
    return index.remove_ids(np.ascontiguousarray(what.ids, dtype="int64"))


def random_removal(rng: np.random.Generator, ids: np.ndarray, ntotal: int) -> Removal:
    pick = int(rng.integers(0, 7))
    if pick == 0:  # present ids, in any order
        return Removal(ids=rng.choice(ids, int(rng.integers(1, 40))).astype("int64"))
    if pick == 1:  # present, absent, repeated, negative
        got = np.concatenate(
            [
                rng.choice(ids, 5),
                rng.choice(ids, 3).repeat(3),
                [-1, -(1 << 40), 1 << 62, int(ids.max()) + 1],
                rng.integers(-1000, 1000, 10),
            ]
        )
        return Removal(ids=got.astype("int64"))
    if pick == 2:  # nothing at all
        return Removal(ids=np.empty(0, dtype="int64"))
    if pick == 3:  # a range over the ids (or positions), possibly empty or reversed
        lo = int(rng.integers(-50, 700))
        return Removal(imin=lo, imax=lo + int(rng.integers(-20, 120)))
    if pick == 4:  # absent ids only
        return Removal(ids=np.array([-7, 1 << 61, -(1 << 62)], dtype="int64"))
    if pick == 5:  # one contiguous block of present ids, plus the first and last rows
        start = int(rng.integers(0, max(1, len(ids) - 30)))
        block = np.concatenate([ids[start : start + 30], ids[:1], ids[-1:]])
        return Removal(ids=block.astype("int64"))
    return Removal(imin=-(1 << 63), imax=(1 << 63) - 1)  # everything


KINDS = ["L2", "IP", "L1"]


def ours_remove(index: faiss.Index, what: Removal) -> int:
    """What the server's remove_ids op does: removal.py where it applies, faiss otherwise."""
    got = removal.remove(index, what, threads=2, parallel_bytes=0)
    return faiss_remove(index, what) if got is None else got


@pytest.mark.parametrize("kind", KINDS)
def test_random_removals_match_faiss(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    taken = 0
    for trial in range(15):
        x = data(trial)
        if trial % 3 == 0:  # ids far apart, negative and huge included
            ids = rng.choice(np.arange(-(1 << 20), 1 << 20), N, replace=False) << 20
        elif trial % 3 == 1:  # repeated ids: faiss removes every row holding one
            ids = rng.integers(0, N // 3, N)
        else:
            ids = np.arange(N) * 3 + 1
        ids = ids.astype("int64")
        ours, theirs = build(f"{kind}/IDMap2", x, ids), build(f"{kind}/IDMap2", x, ids)
        if trial % 5 == 4:  # faiss's reset keeps the old reverse map; a removal rebuilds it
            for index in (ours, theirs):
                index.reset()
                index.add_with_ids(x[: N // 2], ids[N // 4 : N // 4 + N // 2])
        queries = np.concatenate([x[:5], rng.standard_normal((5, D)).astype("float32")])
        for _ in range(4):
            what = random_removal(rng, ids, theirs.ntotal)
            expected = faiss_remove(theirs, what)
            got = removal.remove(ours, what, threads=2, parallel_bytes=0)
            if got is None:  # declined (nothing selected): the op calls faiss, as here
                got = faiss_remove(ours, what)
            else:
                taken += 1
            assert got == expected, (kind, trial, what)
            assert_same(state(ours, queries, ids), state(theirs, queries, ids))
        if len(np.unique(ids)) == N and trial % 5 != 4:
            ours.check_consistency()  # faiss's own check of the reverse map
    assert taken > 20  # most removals took the new path


def test_removal_counts_match_faiss():
    x, ids = data(4), np.arange(N, dtype="int64") % 200  # every id on three rows
    ours, theirs = build("L2/IDMap2", x, ids), build("L2/IDMap2", x, ids)
    by_ids = Removal(ids=np.array([3, 3, 5, 900], dtype="int64"))
    assert ours_remove(ours, by_ids) == faiss_remove(theirs, by_ids) == 6
    by_range = Removal(imin=10, imax=20)
    assert ours_remove(ours, by_range) == faiss_remove(theirs, by_range) == 30
    assert_same(state(ours, x[:4], ids), state(theirs, x[:4], ids))


def test_removing_everything_then_adding_again_matches_faiss():
    x, ids = data(5), np.arange(N, dtype="int64")
    ours, theirs = build("L2/IDMap2", x, ids), build("L2/IDMap2", x, ids)
    everything = Removal(ids=ids)
    assert removal.remove(ours, everything, 2, parallel_bytes=0) == faiss_remove(theirs, everything)
    assert ours.ntotal == 0
    ours.add_with_ids(x[:10], ids[:10] + 5)
    theirs.add_with_ids(x[:10], ids[:10] + 5)
    assert_same(state(ours, x[:3], ids + 5), state(theirs, x[:3], ids + 5))


def test_what_it_leaves_to_faiss():
    """One thread, a small index, nothing selected, or another type: None, nothing changed."""
    x, ids = data(6), np.arange(N, dtype="int64")
    three = Removal(ids=np.arange(3, dtype="int64"))
    index = build("L2/IDMap2", x, ids)
    before = faiss.serialize_index(index).tobytes()
    assert removal.remove(index, three, threads=1, parallel_bytes=0) is None
    assert removal.remove(index, three, threads=2) is None  # 19 KB of codes: not worth it
    assert removal.remove(index, Removal(ids=np.array([-4], dtype="int64")), 2, 0) is None
    assert faiss.serialize_index(index).tobytes() == before
    others = [
        build("L2", x, ids),
        build("IP/IDMap", x, ids),
        faiss.IndexHNSWFlat(D, 8),
        faiss.IndexIDMap2(faiss.IndexHNSWFlat(D, 8)),
        faiss.IndexIDMap2(faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit)),
        faiss.IndexFlat1D(),
    ]
    for other in others:
        assert removal.remove(other, three, 2, 0) is None
    binary = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(64))
    binary.add_with_ids(np.zeros((4, 8), dtype="uint8"), np.arange(4, dtype="int64"))
    assert removal.remove(binary, three, 2, 0) is None
    assert binary.ntotal == 4


def test_selectors_that_are_not_a_set_or_range_are_left_to_faiss():
    from faissx_core.selectors import SelectorSpec

    ids = np.arange(4, dtype="int64")
    negated = SelectorSpec(kind="not", children=[SelectorSpec(kind="range")])
    assert removal.removal_of(negated, None, {}) is None
    assert removal.removal_of(SelectorSpec(kind="bitmap"), None, {"sel_ids": ids}) is None
    got = removal.removal_of(SelectorSpec(kind="batch"), None, {"sel_ids": ids})
    assert got is not None and got.ids is ids
    got = removal.removal_of(SelectorSpec(kind="range", imin=3, imax=9), None, {})
    assert got == Removal(imin=3, imax=9)
