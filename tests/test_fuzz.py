"""Property-based fuzzing of a live, authenticated server (hypothesis), for a bounded time.

Random frames, random and half-valid headers, descriptors that lie about their frames, mutated
and replayed captures of real requests are thrown at a real ``faissx serve --enable-auth`` with
a data directory. The fuzzer holds three credentials of its own: none or a wrong key, a *read*
key of the tenant that owns the reference indices, and a *write* key of another tenant, where it
may create and change whatever it manages to. It never holds a key that may write the owner's
indices.

Properties: every reply is a well-formed reply (``ok``, or a typed error code from the table);
nothing hangs (each batch is answered or dropped within a bound, the server keeps answering
pings); and afterwards a normal client finds the owner's indices exactly as they were, the
owner's listing unchanged, no file outside the data directory, no invalid name inside it, and
no key in the log. The number of messages tried is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import faissx_client as fx
from faissx_core.errors import ERRORS
from faissx_core.operations import OPERATIONS
from faissx_core.server.auth import hash_key
from faissx_core.tenancy import check_name

from .conftest import ServerProcess

#: Seconds of fuzzing (FAISSX_FUZZ_SECONDS overrides, e.g. for a longer local run): an idle
#: machine sends thousands of messages in them (the count is printed).
BUDGET = float(os.environ.get("FAISSX_FUZZ_SECONDS", "10"))
#: ... and at least this many, however loaded the machine (about 1,200 in 10 s at load 7),
#: within a bound of its own.
MIN_MESSAGES = 1000
MAX_SECONDS = 6 * BUDGET
#: Seconds a batch's replies may take before the rest count as dropped.
REPLY_BOUND = 3.0
SERVER_CODES = set(ERRORS) - {"unavailable", "not_configured"}
#: Internal errors of a known bug outside this test's subject (see
#: test_create_delete_race_on_a_durable_index): a named index's create and delete running at
#: once on two workers break its files. Counted and reported, not failed on.
KNOWN_RACE = re.compile(
    r"FileNotFoundError|has no snapshot to log against|could not open .*"
    r"for writing"
)
D = 8
RNG = np.random.default_rng(77)
BASE = RNG.standard_normal((60, D)).astype("float32")
QUERIES = RNG.standard_normal((5, D)).astype("float32")
ALL_OPS = sorted(OPERATIONS)
NAMES = [
    "target",
    "target-ivf",
    "fz",
    "fz2",
    "../x",
    "/abs",
    "a/../../b",
    "a\x00b",
    "..",
    ".hidden",
    "n" * 300,
    "tenants",
    "x" * 129,
    "../../../tmp/owned",
    "anon-1",
]
DTYPES = ["float32", "uint8", "int64", "uint64", "int32", "float64", "object", "<f4", "V8"]
ARRAY_NAMES = ["x", "ids", "sel_ids", "data", "D", "I", "y"]
SPECS = [
    {"type": "IndexFlatL2", "params": {"d": D}},
    {"type": "IndexFlatIP", "params": {"d": 4}},
    {"type": "index_factory", "params": {"d": D, "description": "IVF4,Flat"}},
    {"type": "index_factory", "params": {"d": D, "description": "HNSW8"}},
    {"type": "IndexBinaryFlat", "params": {"d": 64}},
    {"type": "IndexIDMap", "params": {"index": {"type": "IndexFlatL2", "params": {"d": D}}}},
    {"type": "IndexIDMap", "params": {"index": {"type": "ref", "params": {"name": "target"}}}},
]


class Creds:
    def __init__(self, folder: Path) -> None:
        self.owner_write = "owner-w-" + uuid.uuid4().hex
        self.owner_read = "owner-r-" + uuid.uuid4().hex
        self.fuzz_write = "fuzz-w-" + uuid.uuid4().hex
        self.wrong = "wrong-" + uuid.uuid4().hex
        self.file = folder / "auth.json"
        self.file.write_text(
            json.dumps(
                {
                    "keys": [
                        {
                            "key_hash": hash_key(self.owner_write),
                            "tenant": "owner",
                            "role": "write",
                        },
                        {"key": self.owner_read, "tenant": "owner", "role": "read"},
                        {"key": self.fuzz_write, "tenant": "fuzz", "role": "write"},
                    ]
                }
            )
        )

    @property
    def fuzzer_keys(self) -> list[str | None]:
        return [None, "", self.wrong, self.owner_read, self.fuzz_write]

    @property
    def secrets(self) -> list[str]:
        return [self.owner_write, self.owner_read, self.fuzz_write, self.wrong]


# -- strategies --------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(NAMES),
    st.sampled_from(ALL_OPS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)
arg_maps = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "k",
                "radius",
                "key",
                "n0",
                "ni",
                "name",
                "value",
                "selector",
                "params",
                "spec",
                "ephemeral",
                "other",
                "add_id",
                "all",
            ]
        ),
        values,
        max_size=4,
    ),
    st.fixed_dictionaries({"k": st.integers(-5, 2**21)}),
    st.fixed_dictionaries({"spec": st.sampled_from(SPECS)}, optional={"ephemeral": st.booleans()}),
    st.fixed_dictionaries({"n0": st.integers(-3, 100), "ni": st.integers(-3, 2**40)}),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["nprobe", "efSearch", "x"]),
            "value": st.one_of(st.integers(-5, 2**40), st.floats()),
        }
    ),
    st.fixed_dictionaries({"other": st.sampled_from(NAMES)}),
    values,
)


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` three times in four: deep enough to get past the header checks."""
    return st.one_of(usual, usual, usual, odd)


shapes = mostly(
    st.lists(st.sampled_from([0, 1, 2, 3, D, 64]), min_size=1, max_size=2),
    st.lists(
        st.one_of(
            st.integers(0, 12),
            st.sampled_from([2**34, 2**40, -1]),
            st.integers(-(2**63), 2**64 - 1),
        ),
        max_size=4,
    ),
)
descriptors = mostly(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(ARRAY_NAMES[:4]),
            "dtype": st.sampled_from(["float32", "int64", "uint8"]),
            "shape": shapes,
        }
    ),
    st.one_of(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(ARRAY_NAMES),
                "dtype": st.sampled_from(DTYPES),
                "shape": shapes,
            }
        ),
        values,
    ),
)


def frame_for(desc: Any, draw: Any) -> bytes:
    """Bytes for a descriptor: usually the size it announces (when small), else random."""
    try:
        count = int(np.prod(desc["shape"], dtype=object)) if desc["shape"] else 1
        size = count * np.dtype(desc["dtype"]).itemsize
    except Exception:
        size = -1
    if 0 <= size <= 1 << 16 and draw(st.integers(0, 3)):
        if desc.get("dtype") == "float32" and size % 4 == 0:
            return RNG.standard_normal(size // 4).astype("float32").tobytes()
        return draw(st.binary(min_size=size, max_size=size)) if size <= 256 else bytes(size)
    return draw(st.binary(max_size=64))


@st.composite
def structured(draw: Any, creds: Creds) -> list[bytes]:
    """A header built field by field, each field valid, plausible or absurd."""
    h: dict[str, Any] = {}
    fields = {
        "v": mostly(st.just(1), st.sampled_from([0, 2, "1", True, None, 1.0])),
        "id": mostly(
            st.integers(0, 2**63 - 1), st.one_of(st.integers(-(2**63), 2**64 - 1), values)
        ),
        "op": mostly(st.sampled_from(ALL_OPS), st.one_of(st.text(max_size=70), values)),
        "index": mostly(st.sampled_from(NAMES), st.one_of(st.text(max_size=20), values)),
        "args": arg_maps,
        "api_key": mostly(st.sampled_from(creds.fuzzer_keys), st.text(max_size=30)),
        "tenant": mostly(
            st.sampled_from([None, "owner", "fuzz"]),
            st.one_of(st.sampled_from(["../owner", "t" * 200]), values),
        ),
        "session": st.one_of(st.none(), st.sampled_from(["s1", "s2"]), st.text(max_size=130)),
        "idem": st.one_of(st.none(), st.text(max_size=20), st.text(min_size=129, max_size=130)),
    }
    for name, strategy in fields.items():
        if name in ("v", "id", "op", "api_key") or draw(st.integers(0, 3)):
            h[name] = draw(strategy)
    descs = draw(st.lists(descriptors, max_size=4))
    h["arrays"] = descs
    if draw(st.integers(0, 19)) == 0:
        h[draw(st.text(min_size=1, max_size=8))] = draw(values)
    frames = [
        frame_for(d, draw)
        if isinstance(d, dict) and "shape" in d and "dtype" in d and isinstance(d["shape"], list)
        else draw(st.binary(max_size=32))
        for d in descs
    ]
    if draw(st.integers(0, 5)) == 0:  # a frame more or less than described
        frames = frames[:-1] if frames and draw(st.booleans()) else [*frames, b"\x00" * 8]
    return [msgpack.packb(h, use_bin_type=draw(st.booleans())), *frames]


def mutate(frames: list[bytes], draw: Any) -> list[bytes]:
    """Truncate, flip, splice, drop or duplicate: what a broken or hostile peer sends."""
    frames = list(frames)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(
            st.sampled_from(["truncate", "flip", "insert", "drop", "dup", "swap", "extend"])
        )
        i = draw(st.integers(0, len(frames) - 1))
        data = bytearray(frames[i])
        if kind == "truncate" and data:
            frames[i] = bytes(data[: draw(st.integers(0, len(data) - 1))])
        elif kind == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
            frames[i] = bytes(data)
        elif kind == "insert":
            pos = draw(st.integers(0, len(data)))
            frames[i] = bytes(data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:])
        elif kind == "drop" and len(frames) > 1:
            del frames[i]
        elif kind == "dup":
            frames.insert(i, frames[i])
        elif kind == "swap" and len(frames) > 1:
            frames[0], frames[-1] = frames[-1], frames[0]
        elif kind == "extend":
            frames.append(draw(st.binary(max_size=128)))
    return frames


@st.composite
def messages(draw: Any, creds: Creds, captured: list[list[bytes]]) -> list[bytes]:
    kind = draw(
        st.sampled_from(["random", "structured", "structured", "mutated", "mutated", "replay"])
    )
    if kind == "random":
        return draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    if kind == "structured":
        return draw(structured(creds))
    original = draw(st.sampled_from(captured))
    return original if kind == "replay" else mutate(original, draw)


# -- the run -----------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.sent = self.replies = self.dropped = self.batches = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self.internal: list[str] = []


def check_reply(frames: list[bytes], tally: Tally) -> None:
    reply = msgpack.unpackb(frames[0], raw=False)
    assert isinstance(reply, dict) and reply.get("v") == 1, reply
    assert type(reply.get("id")) is int and reply["id"] >= 0, reply
    assert isinstance(reply.get("ok"), bool), reply
    descs = reply.get("arrays", [])
    assert len(descs) == len(frames) - 1, reply
    if reply["ok"]:
        tally.codes["ok"] += 1
        return
    error = reply["error"]
    assert error["code"] in SERVER_CODES, error
    assert isinstance(error["message"], str) and error["message"], error
    assert descs == [], reply
    tally.codes[error["code"]] += 1
    if error["code"] == "internal":
        tally.internal.append(error["message"])


def exchange(endpoint: str, batch: list[list[bytes]], tally: Tally) -> None:
    """Send a batch on a fresh DEALER, then read replies until all came or none for a while."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for frames in batch:
            sock.send_multipart(frames)
        tally.sent += len(batch)
        tally.batches += 1
        got = 0
        while got < len(batch) and sock.poll(int(REPLY_BOUND * 1000)):
            check_reply(sock.recv_multipart(), tally)
            got += 1
        assert not sock.poll(0), "more replies than requests"
        tally.replies += got
        tally.dropped += len(batch) - got
    finally:
        sock.close(0)


def ping(endpoint: str) -> bool:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"v": 1, "id": 9, "op": "ping"}))
        return bool(sock.poll(5000))
    finally:
        sock.close(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    creds = Creds(root)
    data = root / "data"
    srv = ServerProcess(
        "--enable-auth",
        "--auth-file",
        str(creds.file),
        "--data-dir",
        str(data),
        "--fsync",
        "off",
        "--rate-limit",
        "0",
        "--workers",
        "2",
        "--tenant-max-indices",
        "40",
        "--tenant-max-vectors",
        "100000",
        "--max-message-mb",
        "4",
        "--max-request-vectors",
        "20000",
    ).start()
    yield root, data, creds, srv
    srv.stop()


def owner_state(endpoint: str, creds: Creds) -> dict[str, Any]:
    fx.configure(server=endpoint, api_key=creds.owner_write, timeout=20)
    try:
        listing = sorted((i["name"], i["ntotal"], i["is_trained"]) for i in fx.list_indexes())
        flat, ivf = fx.open_index("target"), fx.open_index("target-ivf")
        ivf.nprobe = 2
        return {
            "list": listing,
            "flat": flat.search(QUERIES, 5),
            "ivf": ivf.search(QUERIES, 5),
            "bytes": fx.serialize_index(flat).tobytes(),
        }
    finally:
        fx.disconnect()


def capture(endpoint: str, creds: Creds) -> list[list[bytes]]:
    """Real requests (frames as a client sends them) to replay and mutate."""

    def msg(
        op: str,
        key: str,
        index: str | None = None,
        args: dict | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        **more: Any,
    ) -> list[bytes]:
        h = {
            "v": 1,
            "id": int(RNG.integers(1, 1 << 40)),
            "op": op,
            "index": index,
            "args": args or {},
            "api_key": key,
            "session": "fuzz-session",
            **more,
        }
        descs, frames = [], []
        for name, arr in (arrays or {}).items():
            descs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
            frames.append(arr.tobytes())
        return [msgpack.packb({**h, "arrays": descs}, use_bin_type=True), *frames]

    r, w = creds.owner_read, creds.fuzz_write
    ivf_data = np.frombuffer(faiss.serialize_index(faiss.IndexFlatL2(D)), dtype=np.uint8)
    return [
        msg("search", r, "target", {"k": 3}, {"x": QUERIES}),
        msg(
            "search",
            r,
            "target-ivf",
            {"k": 3, "params": {"type": "SearchParametersIVF", "params": {"nprobe": 2}}},
            {"x": QUERIES},
        ),
        msg("range_search", r, "target", {"radius": 4.0}, {"x": QUERIES[:2]}),
        msg("reconstruct_batch", r, "target", {}, {"ids": np.arange(4)}),
        msg("reconstruct_n", r, "target", {"n0": 0, "ni": 5}),
        msg("info", r, "target"),
        msg("list", r),
        msg("serialize", r, "target"),
        # writes a read key must be refused, whatever is done to them
        msg("add", r, "target", {}, {"x": BASE[:3]}),
        msg("remove_ids", r, "target", {"selector": {"kind": "range", "imin": 0, "imax": 9}}),
        msg("reset", r, "target-ivf"),
        msg("delete", r, "target"),
        msg("merge_from", r, "target", {"other": "target-ivf"}),
        # the fuzz tenant's own writes, which may succeed
        msg("create", w, "fz", {"spec": SPECS[0]}),
        msg("create", w, "fz2", {"spec": SPECS[2]}),
        msg("add", w, "fz", {}, {"x": BASE[:4]}),
        msg("train", w, "fz2", {}, {"x": BASE}),
        msg("add_with_ids", w, "fz", {}, {"x": BASE[:2], "ids": np.arange(2)}),
        msg("import", w, "fz3", {"ephemeral": True}, {"data": ivf_data}),
        msg("merge_from", w, "fz", {"other": "fz2"}),
        msg("set_parameter", w, "fz2", {"name": "nprobe", "value": 3}),
        msg("delete", w, "fz2"),
        msg("bye", w),
    ]


def test_fuzz_live_server(world, record_property):
    root, data, creds, srv = world
    fx.configure(server=srv.endpoint, api_key=creds.owner_write, timeout=20)
    try:
        flat = fx.IndexFlatL2(D, name="target")
        flat.add(BASE)
        ivf = fx.index_factory(D, "IVF4,Flat", name="target-ivf")
        ivf.train(BASE)
        ivf.add(BASE)
    finally:
        fx.disconnect()
    before = owner_state(srv.endpoint, creds)
    captured = capture(srv.endpoint, creds)
    tally = Tally()
    batches = st.lists(messages(creds, captured), min_size=1, max_size=12)

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=batches)
    def run(batch: list[list[bytes]]) -> None:
        exchange(srv.endpoint, batch, tally)

    start = time.monotonic()
    rounds = 0
    while time.monotonic() - start < BUDGET or (
        tally.sent < MIN_MESSAGES and time.monotonic() - start < MAX_SECONDS
    ):
        run()
        rounds += 1
        assert srv.alive and ping(srv.endpoint), "the server stopped answering"
    # frames past --max-message-mb (4 MiB): the connection is dropped, nothing else happens
    big = [
        msgpack.packb(
            {
                "v": 1,
                "id": 5,
                "op": "add",
                "index": "target",
                "api_key": creds.owner_read,
                "arrays": [{"name": "x", "dtype": "float32", "shape": [(5 << 20) // 32, D]}],
            }
        ),
        bytes(5 << 20),
    ]
    exchange(srv.endpoint, [big, [big[0][:40], bytes(5 << 20)]], tally)
    elapsed = time.monotonic() - start
    known = [m for m in tally.internal if KNOWN_RACE.search(m)]
    record_property("fuzz_messages", tally.sent)
    record_property("fuzz_replies", tally.replies)
    print(
        f"\nfuzz: {tally.sent} messages in {tally.batches} batches ({rounds} hypothesis runs) "
        f"in {elapsed:.1f}s: {tally.replies} replies, {tally.dropped} dropped; "
        f"{dict(tally.codes.most_common())}; internal errors of the known create/delete "
        f"race: {len(known)}"
    )

    # afterwards: the server serves a normal client, and nothing of the owner's changed
    assert srv.alive and ping(srv.endpoint)
    assert tally.sent > 500 and tally.replies > 0.9 * tally.sent
    assert tally.internal == [], "an unexpected exception reached a reply"
    after = owner_state(srv.endpoint, creds)
    assert after["list"] == before["list"]
    for key in ("flat", "ivf"):
        np.testing.assert_array_equal(after[key][0], before[key][0])
        np.testing.assert_array_equal(after[key][1], before[key][1])
    assert after["bytes"] == before["bytes"]
    fx.configure(server=srv.endpoint, api_key=creds.fuzz_write, timeout=20)
    try:
        fresh = fx.IndexFlatL2(D)
        fresh.add(BASE[:5])
        assert fresh.search(BASE[:5], 1)[1].ravel().tolist() == list(range(5))
    finally:
        fx.disconnect()
    # the file system: nothing outside the data directory, only valid names inside it
    outside = [
        p for p in root.rglob("*") if p != data and data not in p.parents and p != creds.file
    ]
    assert outside == [], outside
    for tenant in (data / "tenants").iterdir():
        check_name(tenant.name, "tenant id")
        for index in tenant.iterdir():
            check_name(index.name)
    # a set, not a list: ["owner"] <= ["fuzz", "owner"] compares the lists element by element
    assert {p.name for p in (data / "tenants").iterdir()} <= {"fuzz", "owner"}
    log = srv.output()
    for key in creds.secrets:
        assert key not in log


def test_create_delete_race_on_a_durable_index(start_server, tmp_path):
    """What the fuzzer found, made deterministic: pipelined create/delete/create/add of one
    name must give typed errors (index_exists, index_not_found) or success, never internal."""
    srv = start_server("--data-dir", str(tmp_path / "data"), "--fsync", "off", "--workers", "4")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.endpoint)
    spec = {"spec": {"type": "IndexFlatL2", "params": {"d": D}}}
    codes: collections.Counter[str] = collections.Counter()
    try:
        for i in range(100):
            batch = [
                ("create", spec, {}),
                ("delete", {}, {}),
                ("create", spec, {}),
                ("add", {}, {"x": BASE[:2]}),
                ("delete", {}, {}),
            ]
            for n, (op, args, arrays) in enumerate(batch):
                descs = [
                    {"name": k, "dtype": "float32", "shape": list(v.shape)}
                    for k, v in arrays.items()
                ]
                sock.send_multipart(
                    [
                        msgpack.packb(
                            {
                                "v": 1,
                                "id": i * 10 + n + 1,
                                "op": op,
                                "index": "race",
                                "args": args,
                                "arrays": descs,
                            }
                        ),
                        *(v.tobytes() for v in arrays.values()),
                    ]
                )
            for _ in batch:
                assert sock.poll(10_000)
                reply = msgpack.unpackb(sock.recv_multipart()[0])
                codes["ok" if reply["ok"] else reply["error"]["code"]] += 1
    finally:
        sock.close(0)
    assert codes["internal"] == 0, dict(codes)


# -- the new bounds, one by one ----------------------------------------------------------------


def test_oversized_header_is_refused_without_parsing(world):
    """A header frame over 1 MiB is refused from its length alone (no msgpack parse)."""
    _, _, creds, srv = world
    huge = msgpack.packb(
        {
            "v": 1,
            "id": 77,
            "op": "info",
            "index": "target",
            "api_key": creds.owner_read,
            "args": {"pad": "x" * (2 << 20)},
        }
    )
    tally = Tally()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(srv.endpoint)
    try:
        sock.send(huge)
        assert sock.poll(5000)
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    check_reply(frames, tally)
    reply = msgpack.unpackb(frames[0])
    assert (
        reply["error"]["code"] == "protocol_error" and "header frame" in reply["error"]["message"]
    )
    assert reply["id"] == 0, "the id of an unparsed header is not read"


def test_client_checks_reply_sizes_before_allocating():
    """A lying server: descriptors announcing terabytes, frames of a few bytes. The client's
    recv_reply refuses each reply without allocating, drains it, and reads the next one."""
    from faissx_core.errors import ProtocolError
    from faissx_core.protocol import recv_reply

    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        dealer.send(b"hello")
        ident, _ = router.recv_multipart()

        def reply(descs: list[dict[str, Any]], *frames: bytes, rid: int = 1) -> None:
            router.send_multipart(
                [
                    ident,
                    msgpack.packb({"v": 1, "id": rid, "ok": True, "result": {}, "arrays": descs}),
                    *frames,
                ]
            )

        lies = [
            ([{"name": "D", "dtype": "float32", "shape": [1 << 20, 1 << 14]}], b"\x00" * 8),
            ([{"name": "I", "dtype": "int64", "shape": [1 << 17, 1 << 17]}], b""),
            ([{"name": "x", "dtype": "float32", "shape": [1 << 34, 1 << 34]}], b"\x00" * 4),
            ([{"name": "D", "dtype": "float32", "shape": [2, 2]}],),  # frame missing
            ([], b"\x00" * 16),  # frame extra
        ]
        start = time.monotonic()
        for descs, *frames in lies:
            reply(descs, *frames)
            assert dealer.poll(5000)
            with pytest.raises(ProtocolError):
                recv_reply(dealer)
        router.send_multipart([ident, b"\xc1 not msgpack", b"\x00" * 64])
        assert dealer.poll(5000)
        with pytest.raises(ProtocolError):
            recv_reply(dealer)
        assert time.monotonic() - start < 5
        # the socket is still in step: an honest reply reads back exactly
        good = np.arange(6, dtype=np.float32).reshape(2, 3)
        reply([{"name": "D", "dtype": "float32", "shape": [2, 3]}], good.tobytes(), rid=9)
        assert dealer.poll(5000)
        header, arrays = recv_reply(dealer)
        assert header.id == 9 and arrays["D"].flags.writeable
        np.testing.assert_array_equal(arrays["D"], good)
    finally:
        router.close(0)
        dealer.close(0)
