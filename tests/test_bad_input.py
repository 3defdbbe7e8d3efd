"""Bad input through the real client: a typed error, nothing changed, the server still serving.

Every case builds a remote index holding known vectors, makes one bad call, and then checks the
exception class (FAISSx's own, which is also the built-in exception a FAISS user catches for the
same mistake), that ``ntotal`` and the search results are exactly what they were, and that the
server answered the follow-up calls. Where local faiss raises for the same call, the remote error
must be catchable by the same ``except`` clause. Inputs faiss converts (float64, Fortran order,
strided views) must be accepted and give local faiss's answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import pytest

from faissx_core.errors import (
    FaissxError,
    IndexNotFound,
    InvalidArgument,
    OutOfRange,
    UnknownParameter,
    UnsupportedOperation,
)

D = 16
K = 4
RNG = np.random.default_rng(20260)
BASE = RNG.standard_normal((40, D)).astype("float32")
QUERIES = RNG.standard_normal((6, D)).astype("float32")


def _with(value: float) -> np.ndarray:
    x = BASE[:3].copy()
    x[1, 5] = value
    return x


class Loaded:
    """A remote IndexFlatL2 holding BASE, with the answers it gave before the bad call."""

    def __init__(self, remote: Any) -> None:
        self.index = remote.IndexFlatL2(D)
        assert not isinstance(self.index, faiss.Index), "remote mode must build a proxy"
        self.index.add(BASE)
        self.before = self.index.search(QUERIES, K)
        assert self.index.ntotal == len(BASE)

    def assert_unchanged(self) -> None:
        assert self.index.ntotal == len(BASE)
        Dn, In = self.index.search(QUERIES, K)
        np.testing.assert_array_equal(In, self.before[1])
        np.testing.assert_array_equal(Dn, self.before[0])
        np.testing.assert_array_equal(self.index.reconstruct_n(0, len(BASE)), BASE)


@pytest.fixture
def loaded(remote: Any, server: Any) -> Loaded:
    assert server.alive
    return Loaded(remote)


def local_loaded() -> faiss.Index:
    index = faiss.IndexFlatL2(D)
    index.add(BASE)
    return index


# (case id, the bad call, FAISSx class or None for numpy's own refusal, built-ins it must be)
Call = Callable[[Any], Any]
CASES: list[tuple[str, Call, type[FaissxError] | None, tuple[type[BaseException], ...]]] = [
    (
        "add-wrong-dim",
        lambda ix: ix.add(np.zeros((3, D // 2), "float32")),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "add-too-wide",
        lambda ix: ix.add(np.zeros((3, D + 1), "float32")),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    ("add-1d", lambda ix: ix.add(np.zeros(D, "float32")), InvalidArgument, (ValueError,)),
    (
        "search-wrong-dim",
        lambda ix: ix.search(np.zeros((2, D * 2), "float32"), K),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "add_with_ids-wrong-dim",
        lambda ix: ix.add_with_ids(np.zeros((3, D - 1), "float32"), np.arange(3)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    ("add-nan", lambda ix: ix.add(_with(np.nan)), InvalidArgument, (ValueError, AssertionError)),
    ("add-inf", lambda ix: ix.add(_with(np.inf)), InvalidArgument, (ValueError, AssertionError)),
    (
        "add-neg-inf",
        lambda ix: ix.add(_with(-np.inf)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "search-nan",
        lambda ix: ix.search(_with(np.nan), K),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "search-inf",
        lambda ix: ix.search(_with(np.inf), K),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    ("k-0", lambda ix: ix.search(QUERIES, 0), InvalidArgument, (ValueError, AssertionError)),
    ("k-minus-1", lambda ix: ix.search(QUERIES, -1), InvalidArgument, (ValueError, AssertionError)),
    (
        "ids-too-few",
        lambda ix: ix.add_with_ids(BASE[:5], np.arange(4)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "ids-too-many",
        lambda ix: ix.add_with_ids(BASE[:5], np.arange(6)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "ids-2d",
        lambda ix: ix.add_with_ids(BASE[:5], np.arange(5).reshape(5, 1)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "ids-scalar",
        lambda ix: ix.add_with_ids(BASE[:1], np.int64(7)),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "reconstruct-ntotal",
        lambda ix: ix.reconstruct(len(BASE)),
        OutOfRange,
        (RuntimeError, ValueError),
    ),
    ("reconstruct-huge", lambda ix: ix.reconstruct(10**12), OutOfRange, (RuntimeError, ValueError)),
    ("reconstruct-negative", lambda ix: ix.reconstruct(-1), OutOfRange, (RuntimeError, ValueError)),
    (
        "reconstruct_n-beyond",
        lambda ix: ix.reconstruct_n(0, len(BASE) + 1),
        OutOfRange,
        (RuntimeError, ValueError),
    ),
    (
        "reconstruct_n-offset-beyond",
        lambda ix: ix.reconstruct_n(len(BASE) - 2, 5),
        OutOfRange,
        (RuntimeError, ValueError),
    ),
    (
        "reconstruct_n-start-past-end",
        lambda ix: ix.reconstruct_n(len(BASE) + 3),
        InvalidArgument,
        (ValueError, AssertionError),
    ),
    (
        "set_parameter-unknown",
        lambda ix: ix.set_parameter("nprobe", 4),
        UnknownParameter,
        (AttributeError,),
    ),
    (
        "set_parameter-nonsense",
        lambda ix: ix.set_parameter("no_such_knob", 1),
        UnknownParameter,
        (AttributeError,),
    ),
    ("strings-add", lambda ix: ix.add(np.array([["a"] * D] * 2)), None, (ValueError,)),
    ("strings-search", lambda ix: ix.search(np.array([["x"] * D]), K), None, (ValueError,)),
]


@pytest.mark.parametrize(
    ("call", "cls", "builtins"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_bad_call_is_typed_and_changes_nothing(loaded, call, cls, builtins):
    with pytest.raises(builtins[0]) as info:
        call(loaded.index)
    if cls is not None:
        assert isinstance(info.value, cls), f"got {type(info.value).__name__}: {info.value}"
        assert str(info.value), "the error must say what was wrong"
    for builtin in builtins:
        assert isinstance(info.value, builtin)
    loaded.assert_unchanged()


# -- the same except clause works local and remote ---------------------------------------------

#: Cases where local faiss raises too (it accepts NaN/inf and reads garbage for key -1).
_PARITY_OK = {
    "add-wrong-dim",
    "add-too-wide",
    "add-1d",
    "search-wrong-dim",
    "add_with_ids-wrong-dim",
    "k-0",
    "k-minus-1",
    "ids-too-few",
    "ids-too-many",
    "ids-2d",
    "ids-scalar",
    "reconstruct-ntotal",
    "reconstruct-huge",
    "reconstruct_n-beyond",
    "reconstruct_n-offset-beyond",
    "reconstruct_n-start-past-end",
    "strings-add",
    "strings-search",
}

PARITY = [
    *(pytest.param(c[0], c[1], id=c[0]) for c in CASES if c[0] in _PARITY_OK),
    pytest.param(
        "setattr-unknown", lambda ix: setattr(ix, "no_such_attribute", 3), id="setattr-unknown"
    ),
    pytest.param(
        "reconstruct_batch-beyond",
        lambda ix: ix.reconstruct_batch(np.array([0, len(BASE)])),
        id="reconstruct_batch-beyond",
    ),
]


@pytest.mark.parametrize(("case", "call"), PARITY)
def test_remote_error_is_caught_by_what_faiss_raises(loaded, case, call):
    local = local_loaded()
    with pytest.raises(Exception) as local_info:  # whichever class faiss picks
        call(local)
    assert local.ntotal == len(BASE)
    expected = type(local_info.value)
    assert expected in (AssertionError, ValueError, RuntimeError, AttributeError), expected
    try:
        call(loaded.index)
    except expected:
        pass
    except Exception as exc:  # the remote error slipped past the user's except clause
        loaded.assert_unchanged()
        pytest.fail(
            f"{case}: faiss raises {expected.__name__}, remote raised "
            f"{type(exc).__name__} ({exc}), which `except {expected.__name__}` misses"
        )
    else:
        pytest.fail(f"{case}: remote accepted what faiss refuses")
    loaded.assert_unchanged()


def test_add_with_ids_on_flat_is_unsupported_like_faiss(loaded):
    """Control for the add_with_ids cases: with valid input the refusal is faiss's own."""
    with pytest.raises(RuntimeError) as info:
        loaded.index.add_with_ids(BASE[:3], np.arange(3))
    assert type(info.value) is UnsupportedOperation
    assert "add_with_ids" in str(info.value)
    with pytest.raises(RuntimeError):
        local_loaded().add_with_ids(BASE[:3], np.arange(3))
    loaded.assert_unchanged()


# -- attributes and parameters -----------------------------------------------------------------


def test_unknown_attribute(loaded):
    with pytest.raises(AttributeError) as info:
        loaded.index.no_such_attribute = 3
    assert "no_such_attribute" in str(info.value)
    with pytest.raises(AttributeError):
        _ = loaded.index.no_such_attribute
    assert not hasattr(loaded.index, "no_such_attribute")
    loaded.assert_unchanged()


@pytest.mark.parametrize("attr", ["ntotal", "d"])
def test_read_only_attributes_cannot_be_set(loaded, attr):
    before = getattr(loaded.index, attr)
    with pytest.raises(AttributeError):
        setattr(loaded.index, attr, 99)
    assert getattr(loaded.index, attr) == before
    loaded.assert_unchanged()


def test_is_trained_takes_a_bool_only(loaded):
    """faiss lets ``is_trained`` be written (tests/test_dropin_attrs.py), with a bool only."""
    before = loaded.index.is_trained
    with pytest.raises(TypeError, match="bool"):
        loaded.index.is_trained = 99
    assert loaded.index.is_trained == before
    loaded.assert_unchanged()


def test_metric_type_takes_only_faiss_metrics(loaded, remote):
    """faiss lets ``metric_type`` be set (FAISS's own tests do); a value that is no
    ``faiss.METRIC_*`` is refused and changes nothing."""
    before = loaded.index.metric_type
    with pytest.raises(remote.InvalidArgument, match="METRIC"):
        loaded.index.metric_type = 99
    assert loaded.index.metric_type == before
    loaded.assert_unchanged()


def test_unknown_parameter_is_refused_by_the_server_too(loaded, remote):
    """The client's own check is bypassed: the server must refuse the name itself."""
    client = remote.get_client()
    for op, args in (
        ("set_parameter", {"name": "nprobe", "value": 4}),
        ("get_parameter", {"name": "efSearch"}),
    ):
        with pytest.raises(AttributeError) as info:
            client.call(op, loaded.index.name, args)
        assert type(info.value) is UnknownParameter
    loaded.assert_unchanged()


# -- index names -------------------------------------------------------------------------------


def test_unknown_index_name(remote, loaded):
    missing = f"nope-{uuid.uuid4().hex}"
    names = {i["name"] for i in remote.list_indexes()}
    for call in (remote.open_index, remote.delete_index):
        with pytest.raises(KeyError) as info:
            call(missing)
        assert type(info.value) is IndexNotFound
        assert missing in str(info.value)
    assert {i["name"] for i in remote.list_indexes()} == names
    loaded.assert_unchanged()


BAD_NAMES = [
    "../x",
    "/abs",
    "a/../../b",
    "a\x00b",
    "n" * 300,
    "..",
    ".hidden",
    "a b",
    "",
    "x" * 129,
    "tenants/../../etc",
]


@pytest.mark.parametrize(
    "bad",
    [n for n in BAD_NAMES if n],
    ids=lambda n: repr(n if len(n) < 20 else f"{n[:8]}...x{len(n)}"),
)
def test_invalid_index_name_is_refused(remote, loaded, bad):
    names = {i["name"] for i in remote.list_indexes()}
    with pytest.raises(ValueError) as info:
        remote.IndexFlatL2(8, name=bad)
    assert type(info.value) is InvalidArgument
    assert isinstance(info.value, AssertionError)
    for call in (remote.open_index, remote.delete_index):
        with pytest.raises(InvalidArgument):
            call(bad)
    assert {i["name"] for i in remote.list_indexes()} == names
    loaded.assert_unchanged()


def test_invalid_names_never_touch_the_filesystem(start_server, tmp_path):
    from faissx import client as fx

    data = tmp_path / "data"
    proc = start_server("--data-dir", str(data))
    fx.configure(server=proc.endpoint, timeout=10)
    try:
        good = fx.IndexFlatL2(8, name="good-name")
        good.add(BASE[:3, :8])
        for bad in ("../x", "/abs", "a/../../b", "a\x00b", "n" * 300, "../../../tmp/owned"):
            with pytest.raises(InvalidArgument):
                fx.IndexFlatL2(8, name=bad)
        assert [i["name"] for i in fx.list_indexes()] == ["good-name"]
        assert good.ntotal == 3
    finally:
        fx.disconnect()
    outside = sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if data not in p.parents and p != data
    )
    assert outside == []
    inside = {p.name for p in data.rglob("*")}
    assert "good-name" in inside
    assert inside.isdisjoint({"x", "b", "abs", "owned", "n" * 300, "a", "a\x00b"}), inside
    assert not any(p.exists() for p in (tmp_path / "x", tmp_path / "b", data / "x", data / "b"))


# -- drop-in parity: what faiss converts is accepted and answered the same ---------------------


def _fortran(x: np.ndarray) -> np.ndarray:
    out = np.asfortranarray(x)
    assert not out.flags.c_contiguous
    return out


def _strided(x: np.ndarray) -> np.ndarray:
    wide = np.zeros((x.shape[0], x.shape[1] * 2), dtype=x.dtype)
    wide[:, ::2] = x
    out = wide[:, ::2]
    assert not out.flags.c_contiguous and out.base is not None
    return out


def _reversed_rows(x: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(x[::-1])[::-1]  # same values, negative row stride
    assert not out.flags.c_contiguous
    return out


CONVERSIONS = {
    "float64": lambda x: x.astype("float64"),
    "fortran": _fortran,
    "strided": _strided,
    "negative-stride": _reversed_rows,
    "fortran-float64": lambda x: _fortran(x.astype("float64")),
    "int32": lambda x: np.rint(x * 10).astype("int32"),
}


@pytest.mark.parametrize("convert", list(CONVERSIONS.values()), ids=list(CONVERSIONS))
def test_converted_arrays_match_local_faiss(remote, convert):
    local = faiss.IndexFlatL2(D)
    proxy = remote.IndexFlatL2(D)
    base, queries = convert(BASE), convert(QUERIES)
    assert base.dtype != np.float32 or not base.flags.c_contiguous
    local.add(base)
    proxy.add(base)
    assert proxy.ntotal == local.ntotal == len(BASE)
    Dl, Il = local.search(queries, K)
    Dr, Ir = proxy.search(queries, K)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    assert (Dr.dtype, Ir.dtype) == (Dl.dtype, Il.dtype) == (np.float32, np.int64)
    np.testing.assert_array_equal(
        proxy.reconstruct_n(0, len(BASE)), local.reconstruct_n(0, len(BASE))
    )


@pytest.mark.parametrize("op", ["add", "search"])
def test_strings_are_a_value_error_local_and_remote(loaded, op):
    strings = np.array([[str(i) + "x" for i in range(D)]] * 2)
    local = local_loaded()
    calls = {"add": lambda ix: ix.add(strings), "search": lambda ix: ix.search(strings, K)}
    with pytest.raises(ValueError):
        calls[op](local)
    with pytest.raises(ValueError):
        calls[op](loaded.index)
    assert local.ntotal == len(BASE)
    loaded.assert_unchanged()


def test_server_still_serves_after_bad_input(remote, server, loaded):
    for bad in (
        lambda: loaded.index.add(_with(np.nan)),
        lambda: loaded.index.search(QUERIES, 0),
        lambda: remote.open_index(f"nope-{uuid.uuid4().hex}"),
    ):
        with pytest.raises(FaissxError):
            bad()
    fresh = remote.IndexFlatL2(D)
    fresh.add(BASE[:7])
    _, ids = fresh.search(BASE[:7], 1)
    assert ids.ravel().tolist() == list(range(7))
    assert server.alive
    loaded.assert_unchanged()
