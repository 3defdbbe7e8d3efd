"""Binary indices over the raw wire: every read answers faiss's result or a typed error.

Found by an attacker (issue 12, item 8): a Hamming radius past a C int, any
``search_and_reconstruct`` and ``reconstruct_batch`` on an ``IndexBinaryIVF`` answered
``internal`` (a TypeError or AttributeError escaping from faiss's Python layer). Each is
compared here with local faiss's own answer, called through the C++ signature where faiss's
Python wrapper does not expose it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from tests.test_wire import Wire, assert_error, header

D = 64  # bits
RNG = np.random.default_rng(8)
BASE = RNG.integers(0, 256, (300, D // 8), dtype=np.uint8)
QUERIES = BASE[:4].copy()
SPECS = {
    "flat": {"type": "IndexBinaryFlat", "params": {"d": D}},
    "ivf": {
        "type": "IndexBinaryIVF",
        "params": {
            "quantizer": {"type": "IndexBinaryFlat", "params": {"d": D}},
            "d": D,
            "nlist": 4,
        },
    },
}


def local(kind: str) -> Any:
    if kind == "flat":
        index = faiss.IndexBinaryFlat(D)
    else:
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(D), D, 4)
        index.train(BASE)
    index.add(BASE)
    return index


@pytest.fixture
def wire(server: Any) -> Iterator[Wire]:
    w = Wire(server.endpoint)
    yield w
    w.close()


def remote(wire: Wire, kind: str) -> str:
    name = f"bin-{kind}-{uuid.uuid4().hex[:8]}"
    wire.ok(header("create", index=name, args={"spec": SPECS[kind]}))
    if kind == "ivf":
        wire.ok(header("train", index=name), {"x": BASE})
    wire.ok(header("add", index=name), {"x": BASE})
    return name


def arrays_of(reply: tuple[dict[str, Any], list[bytes]]) -> dict[str, np.ndarray]:
    h, frames = reply
    assert h["ok"] is True, h
    return {
        d["name"]: np.frombuffer(f, dtype=d["dtype"]).reshape(d["shape"])
        for d, f in zip(h["arrays"], frames, strict=True)
    }


@pytest.mark.parametrize("radius", [1 << 31, 1 << 40, -(1 << 31) - 1])
def test_a_radius_past_a_c_int_is_a_typed_error(wire: Wire, radius: int) -> None:
    with pytest.raises(TypeError):  # what faiss itself does with it
        local("flat").range_search(QUERIES, radius)
    name = remote(wire, "flat")
    rid = 77
    error = assert_error(
        wire.call(wire_msg("range_search", name, {"radius": radius}, rid)), "wrong_type", rid
    )
    assert "32-bit" in error["message"]


def test_the_largest_c_int_radius_finds_everything(wire: Wire) -> None:
    name = remote(wire, "flat")
    got = arrays_of(wire.call(wire_msg("range_search", name, {"radius": (1 << 31) - 1})))
    lims, D_, I = local("flat").range_search(QUERIES, (1 << 31) - 1)
    np.testing.assert_array_equal(got["lims"], lims)
    np.testing.assert_array_equal(got["I"], I)
    np.testing.assert_array_equal(got["D"], D_)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_search_and_reconstruct_equals_faiss_cpp(wire: Wire, kind: str) -> None:
    index, k = local(kind), 5
    n = len(QUERIES)
    D_ = np.empty((n, k), dtype=np.int32)
    I = np.empty((n, k), dtype=np.int64)
    R = np.empty((n, k, D // 8), dtype=np.uint8)
    if kind == "ivf":
        index.make_direct_map()
    index.search_and_reconstruct(
        n,
        faiss.swig_ptr(QUERIES),
        k,
        faiss.swig_ptr(D_),
        faiss.swig_ptr(I),
        faiss.swig_ptr(R),
        None,
    )
    name = remote(wire, kind)
    if kind == "ivf":
        wire.ok(header("set_direct_map_type", index=name, args={"type": 1}))
    got = arrays_of(wire.call(wire_msg("search_and_reconstruct", name, {"k": k})))
    np.testing.assert_array_equal(got["D"], D_)
    np.testing.assert_array_equal(got["I"], I)
    np.testing.assert_array_equal(got["R"], R)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_reconstruct_batch_equals_reconstruct_per_key(wire: Wire, kind: str) -> None:
    index = local(kind)
    if kind == "ivf":
        index.make_direct_map()
    keys = np.array([5, 0, 299, 5], dtype=np.int64)
    want = np.stack([index.reconstruct(int(k)) for k in keys])
    name = remote(wire, kind)
    if kind == "ivf":
        wire.ok(header("set_direct_map_type", index=name, args={"type": 1}))
    h = header("reconstruct_batch", index=name)
    got = arrays_of(wire.call(_message(h, {"ids": keys})))
    np.testing.assert_array_equal(got["x"], want)


def test_reconstruct_batch_without_a_direct_map_is_a_typed_error(wire: Wire) -> None:
    name = remote(wire, "ivf")
    h = header("reconstruct_batch", index=name, rid=91)
    assert_error(
        wire.call(_message(h, {"ids": np.array([1], dtype=np.int64)})),
        ("faiss_error", "unsupported_operation"),
        91,
    )


def wire_msg(op: str, name: str, args: dict[str, Any], rid: int | None = None) -> list[bytes]:
    return _message(header(op, index=name, args=args, rid=rid), {"x": QUERIES})


def _message(h: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[bytes]:
    from tests.test_wire import message

    return message(h, arrays)
