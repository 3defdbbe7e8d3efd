"""Large adds: how the client splits them, and what the server checks before faiss sees them.

A remote ``add`` above 8 MiB goes in pipelined parts sized from the server's limits (learnt at
``configure()``): no part is over a quarter of ``--max-message-mb`` nor has more rows than
``--max-request-vectors``. NaN and infinity are refused by the server for each request, wherever
they sit in it (the check runs block by block), and by the client before the first part of a
split add is sent, so such an add changes nothing. Results are compared with local faiss.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from faissx_client import optimization
from faissx_core.errors import InvalidArgument
from faissx_core.finite import BLOCK, all_finite, first_bad_row
from faissx_core.server.storage import _after

from .conftest import ServerProcess

D = 64
RNG = np.random.default_rng(2417)


def rows(n: int, d: int = D) -> np.ndarray:
    return RNG.standard_normal((n, d), dtype=np.float32)


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    """Messages of at most 1 MiB and 3,000 vectors a request: 'large' stays small here."""
    srv = ServerProcess("--max-message-mb", "1", "--max-request-vectors", "3000").start()
    yield srv
    srv.stop()


@pytest.fixture
def client_of() -> Iterator[Any]:
    from faissx import client

    def configure(server: ServerProcess) -> Any:
        client.configure(server=server.endpoint, timeout=120)
        return client

    try:
        yield configure
    finally:
        client.disconnect()


def sent_parts(monkeypatch: pytest.MonkeyPatch, index: Any) -> list[dict[str, np.ndarray]]:
    """The arrays of every request ``index`` sends, recorded on their way to the real client."""
    seen: list[dict[str, np.ndarray]] = []
    real_call, real_pipeline = index._client.call, index._client.pipeline

    def call(op: str, name: Any = None, args: Any = None, arrays: Any = None, **kw: Any) -> Any:
        if op in ("add", "add_with_ids"):
            seen.append(dict(arrays or {}))
        return real_call(op, name, args, arrays, **kw)

    def pipeline(op: str, name: Any, parts: Any, *args: Any, **kw: Any) -> Any:
        seen.extend(dict(arrays) for _, arrays in parts)
        return real_pipeline(op, name, parts, *args, **kw)

    monkeypatch.setattr(index._client, "call", call)
    monkeypatch.setattr(index._client, "pipeline", pipeline)
    return seen


def assert_same_search(remote: Any, local: Any, queries: np.ndarray) -> None:
    D_r, I_r = remote.search(queries, 5)
    D_l, I_l = local.search(queries, 5)
    np.testing.assert_array_equal(I_r, I_l)
    np.testing.assert_array_equal(D_r, D_l)


# -- the finiteness check and the log's short-write views, as functions -----------------------


@pytest.mark.parametrize("size", [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7])
def test_all_finite_finds_a_bad_number_anywhere(size: int) -> None:
    x = RNG.standard_normal(size).astype(np.float32)
    x[::97] = np.float32(3.4e38)  # huge but finite: min/max stay finite
    assert all_finite(x) and all_finite(x.reshape(1, -1))
    places = {0, size - 1, size // 2} | {b + o for b in range(0, size, BLOCK) for o in (-1, 0, 1)}
    for place in sorted(p for p in places if 0 <= p < size):
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[place] = bad
            assert not all_finite(y), (size, place, bad)
            assert first_bad_row(y.reshape(1, -1)) == 0
    assert all_finite(np.zeros(0, np.float32))


def test_all_finite_on_strided_and_double_arrays() -> None:
    x = RNG.standard_normal((3 * BLOCK // 8, 16))
    assert all_finite(x) and all_finite(x[:, ::3]) and all_finite(x.astype(np.float32).T)
    x[-1, 15] = np.nan
    assert not all_finite(x) and not all_finite(x[:, ::3]) and not all_finite(x.T)
    assert first_bad_row(x) == len(x) - 1


def test_after_is_the_unwritten_rest_as_views() -> None:
    payload = np.arange(200, dtype=np.uint8)
    parts = [b"head", b"", memoryview(payload).cast("B"), b"tail"]
    whole = b"".join(bytes(p) for p in parts)
    for done in range(len(whole) + 1):
        rest = _after(parts, done)
        assert b"".join(bytes(v) for v in rest) == whole[done:]
        assert all(isinstance(v, memoryview) and v.nbytes for v in rest)
    middle = _after(parts, 10)[0]  # inside the payload: a view of its memory, not a copy
    assert middle.obj is payload or np.shares_memory(np.frombuffer(middle, np.uint8), payload)


def test_automatic_parts_follow_the_call_and_the_server_limit() -> None:
    default = optimization.pipeline_part(256 << 20)
    assert default == optimization.PIPELINE_PART_BYTES == 16 << 20
    assert optimization.pipeline_part(1 << 20) == 256 << 10  # a quarter of a small limit
    assert optimization.pipeline_part(None) == optimization.PIPELINE_PART_BYTES

    def part_bytes(n: int, row: int, limit: int = 256 << 20) -> int:
        got = optimization.chunk_rows(
            n, row, 0, remote=True, progress=False, part_bytes=optimization.pipeline_part(limit)
        )
        return got * row

    assert part_bytes(2000, 3072) == 2000 * 3072  # 6 MB: one request
    # 15 MB (the peer benchmark's 5000 rows at d=768): four parts, so sending overlaps work
    assert 5000 * 3072 / 4 <= part_bytes(5000, 3072) <= 4 << 20
    # 307 MB: 16 MiB parts, even (19 of 5,264 rows), not 75 of 4 MiB
    assert part_bytes(100_000, 3072) == 5264 * 3072 <= 16 << 20
    assert part_bytes(100_000, 3072, limit=1 << 20) <= 256 << 10


# -- through a real server ----------------------------------------------------------------------


def test_parts_follow_the_servers_message_limit(small_server, client_of, monkeypatch) -> None:
    remote = client_of(small_server)
    index = remote.IndexFlatL2(D)
    parts = sent_parts(monkeypatch, index)
    x = rows(2048)  # 512 KiB: over a quarter of the 1 MiB limit
    index.add(x)
    sizes = [p["x"].nbytes for p in parts]
    assert len(sizes) == 2 and max(sizes) <= 256 << 10, sizes
    local = faiss.IndexFlatL2(D)
    local.add(x)
    assert_same_search(index, local, x[:20])


def test_parts_never_hold_more_rows_than_the_server_takes(small_server, client_of) -> None:
    """4,000 rows of d=8 are 125 KiB, far under every byte limit, but over the server's 3,000
    vectors a request: sent whole, the add was refused."""
    remote = client_of(small_server)
    x = rows(4000, 8)
    ids = np.arange(4000, dtype=np.int64) * 3
    index = remote.IndexIDMap(remote.IndexFlatL2(8))
    index.add_with_ids(x, ids)
    local = faiss.IndexIDMap(faiss.IndexFlatL2(8))
    local.add_with_ids(x, ids)
    assert index.ntotal == 4000
    assert_same_search(index, local, x[:20])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_number_late_in_a_split_add_changes_nothing(
    small_server, client_of, monkeypatch, bad
) -> None:
    remote = client_of(small_server)
    index = remote.IndexFlatL2(D)
    first = rows(100)
    index.add(first)
    parts = sent_parts(monkeypatch, index)
    x = rows(2900)  # 725 KiB: three parts
    x[2777, 5] = bad
    with pytest.raises(InvalidArgument, match=r"row 2,777\); nothing was sent"):
        index.add(x)
    assert parts == [] and index.ntotal == 100
    local = faiss.IndexFlatL2(D)
    local.add(first)
    assert_same_search(index, local, first[:10])


@pytest.mark.parametrize("place", [0, BLOCK // D, 3 * BLOCK // D + 1, 4 * BLOCK // D - 1])
def test_a_bad_number_anywhere_in_one_large_request_applies_nothing(
    server, client_of, monkeypatch, place
) -> None:
    """One request of 1 MiB (four of the server's check blocks): refused whichever block holds
    the NaN, before faiss or the log saw any of it."""
    remote = client_of(server)
    index = remote.IndexIDMap2(remote.IndexFlatL2(D))
    first = rows(10)
    index.add_with_ids(first, np.arange(10, dtype=np.int64))
    parts = sent_parts(monkeypatch, index)
    x = rows(4 * BLOCK // D)
    x[place, D - 1] = np.nan
    with pytest.raises(InvalidArgument, match=rf"x contains NaN or infinity \(row {place:,}\)"):
        index.add_with_ids(x, np.arange(10, 10 + len(x), dtype=np.int64))
    assert len(parts) == 1, "one request: the server's check, not the client's"
    assert index.ntotal == 10
    np.testing.assert_array_equal(index.reconstruct(9), first[9])
