"""Multi-tenant security against real servers: keys, roles, isolation, CURVE, quotas, rates.

Every server here is the real CLI (``faissx serve --enable-auth ...``) on a free loopback port;
clients are the drop-in client or a bare DEALER speaking the wire format. Each refusal must be
the typed error for it, and must change nothing.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import msgpack
import numpy as np
import pytest
import zmq

import faissx_client as fx
from faissx_client.settings import ClientSettings
from faissx_core.errors import (
    IndexNotFound,
    PermissionDenied,
    QuotaExceeded,
    ServerUnavailable,
    Unauthenticated,
)
from faissx_core.operations import OPERATIONS
from faissx_core.security import configure_dealer
from faissx_core.server.auth import hash_key

from .conftest import FAISSX, ServerProcess, server_env
from .test_wire import Wire, assert_error, header, message

D = 8
RNG = np.random.default_rng(5)
BASE = RNG.standard_normal((40, D)).astype("float32")
QUERIES = RNG.standard_normal((3, D)).astype("float32")

#: Clear keys that must never reach a log line (filled in as keys are made).
SECRETS: list[str] = []


def cli(*args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [str(FAISSX), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={**server_env(), "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


class Keys:
    """The auth file of the main server, made with ``faissx keys`` where possible."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "auth.json"
        # `faissx keys add`: a generated key; only its scrypt hash (with its id) is written
        self.alpha_write = cli(
            "keys", "add", "--tenant", "alpha", "--role", "write", "--file", str(self.file)
        ).strip()
        # `faissx keys hash` from stdin: a hand-chosen key, hashed with PBKDF2, no key id
        self.alpha_read = "alpha-reader-" + uuid.uuid4().hex
        read_hash = cli(
            "keys", "hash", "--algorithm", "pbkdf2_sha256", stdin=self.alpha_read + "\n"
        ).strip()
        data = json.loads(self.file.read_text())
        data["keys"] += [
            {"key_hash": read_hash, "tenant": "alpha", "role": "read"},
            # a clear key in the rich form, and an admin key of a third tenant
            {"key": (beta := "beta-clear-" + uuid.uuid4().hex), "tenant": "beta", "role": "write"},
            {
                "key_hash": hash_key(gamma := "gamma-" + uuid.uuid4().hex),
                "tenant": "gamma",
                "role": "admin",
            },
        ]
        self.file.write_text(json.dumps(data))
        self.beta, self.gamma = beta, gamma
        self.wrong = "wrong-" + uuid.uuid4().hex
        SECRETS.extend([self.alpha_write, self.alpha_read, beta, gamma, self.wrong])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("authdata") / "data"


@pytest.fixture(scope="module")
def secured(keys: Keys, data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        "--enable-auth",
        "--auth-file",
        str(keys.file),
        "--data-dir",
        str(data_dir),
        "--fsync",
        "off",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def as_key(secured: ServerProcess) -> Iterator[Any]:
    """``as_key(key, tenant=None)``: configure the drop-in client with that key."""

    def connect(key: str | None, tenant: str | None = None, **more: Any) -> Any:
        fx.configure(server=secured.endpoint, api_key=key, tenant_id=tenant, timeout=10, **more)
        return fx

    yield connect
    fx.disconnect()


def raw(key: str | None, **fields: Any) -> dict[str, Any]:
    return {"api_key": key, **fields} if key is not None else fields


@pytest.fixture(scope="module")
def alpha_docs(secured: ServerProcess, keys: Keys) -> str:
    """A named index of tenant alpha, with BASE in it."""
    fx.configure(server=secured.endpoint, api_key=keys.alpha_write, timeout=10)
    try:
        index = fx.IndexFlatL2(D, name="docs")
        index.add(BASE)
    finally:
        fx.disconnect()
    return "docs"


def expected_search() -> tuple[np.ndarray, np.ndarray]:
    local = faiss.IndexFlatL2(D)
    local.add(BASE)
    return local.search(QUERIES, 4)


def assert_docs_unchanged(endpoint: str, key: str) -> None:
    w = Wire(endpoint)
    try:
        info, _ = w.ok(header("info", index="docs", **raw(key)))
        assert info["ntotal"] == len(BASE)
        _, out = w.ok(header("search", index="docs", args={"k": 4}, **raw(key)), {"x": QUERIES})
        want = expected_search()
        np.testing.assert_array_equal(out["I"], want[1])
        np.testing.assert_array_equal(out["D"], want[0])
        listing, _ = w.ok(header("list", **raw(key)))
        assert [i["name"] for i in listing["indexes"]] == ["docs"]
    finally:
        w.close()


# -- who you are -------------------------------------------------------------------------------


def test_no_key_wrong_key_and_claimed_tenant_are_refused(secured, keys, alpha_docs, as_key):
    with pytest.raises(Unauthenticated, match="requires an API key"):
        as_key(None)
    with pytest.raises(Unauthenticated, match="unknown API key"):
        as_key(keys.wrong)
    with pytest.raises(Unauthenticated):  # a hashed key's id with the wrong secret
        as_key(keys.alpha_write[:-4] + "AAAA")
    with pytest.raises(PermissionDenied, match="does not belong"):
        as_key(keys.alpha_write, tenant="beta")
    with pytest.raises(PermissionDenied):
        as_key(keys.beta, tenant="alpha")
    # the same refusals on the wire, for every op that is authenticated
    w = Wire(secured.endpoint)
    try:
        for op in ("touch", "list", "info", "search", "create", "delete"):
            h = header(op, index="docs", args={"k": 1} if op == "search" else {})
            assert_error(w.call(message(h, {})), "unauthenticated", h["id"])
            h = header(op, index="docs", api_key=keys.wrong)
            assert_error(w.call(message(h, {})), "unauthenticated", h["id"])
            h = header(op, index="docs", api_key=keys.beta, tenant="alpha")
            assert_error(w.call(message(h, {})), "permission_denied", h["id"])
        assert w.ok(header("ping"))[0]["protocol"] == 1  # only ping needs no key
    finally:
        w.close()
    assert_docs_unchanged(secured.endpoint, keys.alpha_write)


def test_hashed_and_clear_keys_resolve_to_their_tenant_and_role(secured, keys, alpha_docs, as_key):
    # scrypt hash with a key id (keys add), PBKDF2 without one (keys hash), a clear key
    for key, tenant in (
        (keys.alpha_write, "alpha"),
        (keys.alpha_read, "alpha"),
        (keys.beta, "beta"),
        (keys.gamma, "gamma"),
    ):
        client = as_key(key)
        assert client.get_client().hello()["tenant"] == tenant
        assert as_key(key, tenant=tenant).get_client().hello()["tenant"] == tenant
    reader = as_key(keys.alpha_read)
    docs = reader.open_index("docs")
    np.testing.assert_array_equal(docs.search(QUERIES, 4)[1], expected_search()[1])
    stored = json.loads(keys.file.read_text())
    assert keys.alpha_write not in keys.file.read_text()
    assert all(
        e["key_hash"].startswith(("scrypt$", "pbkdf2_sha256$"))
        for e in stored["keys"]
        if e["tenant"] != "beta"
    )


# -- what a read key may do ---------------------------------------------------------------------


def test_read_key_may_not_run_any_mutating_op(secured, keys, alpha_docs):
    # from the contract's table, so a new operation is not missed
    mutating = {name for name, op in OPERATIONS.items() if op.access == "write"}
    assert {
        "add",
        "add_with_ids",
        "train",
        "remove_ids",
        "reset",
        "set_parameter",
        "create",
        "import",
        "delete",
        "merge_from",
        "bye",
    } <= mutating
    data = faiss.serialize_index(faiss.IndexFlatL2(D))
    arrays = {
        "add": {"x": BASE[:2]},
        "add_with_ids": {"x": BASE[:2], "ids": np.arange(2)},
        "train": {"x": BASE[:2]},
        "remove_ids": {"ids": np.arange(5)},
        "import": {"data": data},
    }
    args = {
        "create": {"spec": {"type": "IndexFlatL2", "params": {"d": D}}},
        "merge_from": {"other": "docs"},
        "set_parameter": {"name": "x", "value": 1},
    }
    w = Wire(secured.endpoint)
    try:
        for op in sorted(mutating):
            index = "new-one" if op in ("create", "import") else "docs"
            h = header(
                op,
                index=index,
                args=args.get(op, {}),
                api_key=keys.alpha_read,
                session=uuid.uuid4().hex,
            )
            error = assert_error(
                w.call(message(h, arrays.get(op, {}))), "permission_denied", h["id"]
            )
            assert "read key" in error["message"], (op, error)
        # and what it may do, it can
        for op in ("info", "list", "touch", "serialize"):
            w.ok(header(op, index="docs", api_key=keys.alpha_read))
    finally:
        w.close()
    assert_docs_unchanged(secured.endpoint, keys.alpha_write)


def test_read_key_through_the_drop_in_client(keys, alpha_docs, as_key):
    reader = as_key(keys.alpha_read)
    docs = reader.open_index("docs")
    for call in (
        lambda: docs.add(BASE[:1]),
        docs.reset,
        lambda: docs.remove_ids(np.arange(3)),
        lambda: reader.delete_index("docs"),
        lambda: reader.IndexFlatL2(D, name="mine"),
        lambda: reader.IndexFlatL2(D).add(BASE[:1]),
    ):
        with pytest.raises(PermissionError) as info:
            call()
        assert type(info.value) is PermissionDenied
    assert docs.ntotal == len(BASE)


# -- where you are: tenants never meet -------------------------------------------------------


def test_tenants_cannot_list_open_or_touch_each_others_indices(secured, keys, alpha_docs, as_key):
    beta = as_key(keys.beta)
    assert beta.list_indexes() == []
    for call in (lambda: beta.open_index("docs"), lambda: beta.delete_index("docs")):
        with pytest.raises(IndexNotFound) as info:
            call()
        assert "alpha" not in str(info.value)
    # the same name in beta is beta's own, empty index
    own = beta.IndexFlatL2(D, name="docs")
    assert own.ntotal == 0
    own.add(BASE[:3])
    w = Wire(secured.endpoint)
    try:
        other = f"private-{uuid.uuid4().hex[:6]}"
        w.ok(
            header(
                "create",
                index=other,
                api_key=keys.alpha_write,
                args={"spec": {"type": "IndexFlatL2", "params": {"d": D}}},
            )
        )
        cases = [
            header("info", index=other, api_key=keys.beta),
            header("search", index=other, args={"k": 1}, api_key=keys.beta),
            header("delete", index=other, api_key=keys.beta),
            header("merge_from", index="docs", args={"other": other}, api_key=keys.beta),
            header("serialize", index=other, api_key=keys.beta),
            # a new index may copy an existing one by reference: only from its own tenant
            header(
                "create",
                index="copy",
                api_key=keys.beta,
                args={
                    "spec": {
                        "type": "IndexIDMap",
                        "params": {"index": {"type": "ref", "params": {"name": other}}},
                    }
                },
            ),
        ]
        for h in cases:
            arrays = {"x": QUERIES} if h["op"] == "search" else {}
            error = assert_error(w.call(message(h, arrays)), "index_not_found", h["id"])
            # exactly what a name that exists nowhere gets: nothing about tenant alpha
            assert error["message"] == f"no index named {other!r}", error
        listing, _ = w.ok(header("list", args={"all": True}, api_key=keys.beta))
        assert [i["name"] for i in listing["indexes"]] == ["docs"]
        w.ok(header("delete", index=other, api_key=keys.alpha_write))
    finally:
        w.close()
    beta.delete_index("docs")
    assert_docs_unchanged(secured.endpoint, keys.alpha_write)


def test_clear_keys_are_never_logged(secured, keys, data_dir, alpha_docs):
    # a few more refusals so the log has had every chance to show a key
    w = Wire(secured.endpoint)
    try:
        for key in SECRETS:
            w.call(message(header("touch", api_key=key, tenant="nobody"), {}))
    finally:
        w.close()
    time.sleep(0.2)
    log = secured.output()
    assert "listening" in log and "auth: on" in log
    for key in SECRETS:
        assert key not in log, "an API key reached the server log"
    on_disk = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    for key in SECRETS:
        assert key.encode() not in on_disk, "an API key reached the data directory"


def test_bad_auth_files_stop_the_server_without_echoing_keys(tmp_path):
    secret = "do-not-print-" + uuid.uuid4().hex
    cases = {
        "bad tenant": {"keys": [{"key": secret, "tenant": "../up", "role": "write"}]},
        "bad role": {"keys": [{"key": secret, "tenant": "t", "role": "root"}]},
        "two keys": {
            "keys": [{"key": secret, "key_hash": hash_key(secret), "tenant": "t", "role": "read"}]
        },
        "bad hash": {"keys": [{"key_hash": "scrypt$n=3$xx$yy", "tenant": "t", "role": "read"}]},
        "old form": {secret: "../up"},
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        out = subprocess.run(
            [str(FAISSX), "serve", "--port", "1", "--enable-auth", "--auth-file", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            env=server_env(),
        )
        assert out.returncode != 0, name
        assert "auth file" in out.stderr + out.stdout, (name, out.stderr)
        assert secret not in out.stderr + out.stdout, name
    out = subprocess.run(
        [str(FAISSX), "serve", "--auth-keys", f"{secret}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=server_env(),
    )
    assert out.returncode != 0 and "key:tenant" in out.stderr and secret not in out.stderr


# -- CURVE -------------------------------------------------------------------------------------


class CurveServer(ServerProcess):
    """A server with CURVE on: ready when a CURVE client's ping is answered."""

    def __init__(self, *args: str, server_public: str, client: tuple[str, str] | None = None):
        super().__init__(*args)
        self.server_public, self.client = server_public, client

    @property
    def settings(self) -> ClientSettings:
        """A CURVE client's settings for this server (its endpoint as of now: the harness
        replaces a picked port that was taken before the server bound it)."""
        return ClientSettings(
            server=self.endpoint,
            server_public_key=self.server_public,
            client_public_key=self.client[0] if self.client else None,
            client_secret_key=self.client[1] if self.client else None,
        )

    def ready(self) -> bool:
        return curve_ping(self.settings)


def curve_ping(settings: ClientSettings, timeout: float = 0.5) -> bool:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        configure_dealer(sock, settings)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(settings.server)
        sock.send(msgpack.packb({"v": 1, "id": 1, "op": "ping", "arrays": []}))
        return bool(sock.poll(int(timeout * 1000)))
    finally:
        sock.close(0)


@pytest.fixture(scope="module")
def curve_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Key pairs made with ``faissx keys curve``: the server's, an allowed and another client's."""
    folder = tmp_path_factory.mktemp("curve")
    pairs = {}
    for name in ("server", "allowed", "stranger"):
        cli("keys", "curve", "--out", str(folder / name))
        pairs[name] = ((folder / f"{name}.pub").read_text().strip(), folder / f"{name}.key")
    assert oct((folder / "server.key").stat().st_mode & 0o777) == "0o600"
    allow = folder / "allow.txt"
    allow.write_text(f"# the clients that may connect\n{pairs['allowed'][0]}\n")
    return {"pairs": pairs, "allow": allow}


def test_curve_encrypts_and_refuses_clients_without_the_server_key(curve_keys, tmp_path):
    server_pub, server_key = curve_keys["pairs"]["server"]
    stranger_pub = curve_keys["pairs"]["stranger"][0]
    srv = CurveServer(
        "--enable-auth",
        "--auth-keys",
        "curve-key-1:c1",
        "--curve-secret-key",
        str(server_key),
        server_public=server_pub,
    ).start()
    try:
        assert server_pub in srv.output(), "the server logs its public key for clients"
        for what, extra in (
            ("no server key", {}),
            ("a wrong server key", {"server_public_key": stranger_pub}),
        ):
            start = time.monotonic()
            with pytest.raises(ServerUnavailable):
                fx.configure(server=srv.endpoint, api_key="curve-key-1", timeout=1.5, **extra)
            assert time.monotonic() - start < 6, f"{what}: the failure must be bounded"
        assert not plain_socket_answers(srv.endpoint), "a plain socket gets nothing back"
        fx.configure(
            server=srv.endpoint, api_key="curve-key-1", timeout=10, server_public_key=server_pub
        )
        index = fx.IndexFlatL2(D, name="secret-docs")
        index.add(BASE)
        np.testing.assert_array_equal(index.search(QUERIES, 4)[1], expected_search()[1])
        # the API key is still what decides the tenant
        with pytest.raises(Unauthenticated):
            fx.configure(
                server=srv.endpoint, api_key="nope", timeout=10, server_public_key=server_pub
            )
    finally:
        fx.disconnect()
        srv.stop()
    assert "curve-key-1" not in srv.output()


def plain_socket_answers(endpoint: str) -> bool:
    w = Wire(endpoint)
    try:
        w.send(message(header("ping"), {}))
        return bool(w.sock.poll(1000))
    finally:
        w.close()


def test_curve_allow_list_admits_only_listed_client_keys(curve_keys):
    server_pub, server_key = curve_keys["pairs"]["server"]
    allowed_pub, allowed_key = curve_keys["pairs"]["allowed"]
    stranger_pub, stranger_key = curve_keys["pairs"]["stranger"]
    srv = CurveServer(
        "--curve-secret-key",
        str(server_key),
        "--curve-allow-keys",
        str(curve_keys["allow"]),
        server_public=server_pub,
        client=(allowed_pub, str(allowed_key)),
    ).start()
    try:
        for client in (
            {},
            {"client_public_key": stranger_pub, "client_secret_key": str(stranger_key)},
        ):
            start = time.monotonic()
            with pytest.raises(ServerUnavailable):
                fx.configure(
                    server=srv.endpoint, timeout=1.5, server_public_key=server_pub, **client
                )
            assert time.monotonic() - start < 6
        fx.configure(
            server=srv.endpoint,
            timeout=10,
            server_public_key=server_pub,
            client_public_key=allowed_pub,
            client_secret_key=str(allowed_key),
        )
        index = fx.IndexFlatL2(D)
        index.add(BASE[:5])
        assert index.ntotal == 5
    finally:
        fx.disconnect()
        srv.stop()
    assert "refused a connection from an unlisted CURVE key" in srv.output()
    assert stranger_key.read_text().strip() not in srv.output()


# -- quotas and rates --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(keys: Keys) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        "--enable-auth",
        "--auth-file",
        str(keys.file),
        "--tenant-max-vectors",
        "100",
        "--tenant-max-indices",
        "3",
        "--tenant-max-mb",
        str(3000 / (1 << 20)),
        "--max-request-vectors",
        "50",
        "--max-dimension",
        "64",
    ).start()
    yield proc
    proc.stop()


def quota_refused(call: Any, match: str) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded, match=match) as info:
        call()
    assert isinstance(info.value, RuntimeError)
    return info.value


def test_tenant_quotas_refuse_and_change_nothing(limited, keys):
    x4 = RNG.standard_normal((120, 4)).astype("float32")
    fx.configure(server=limited.endpoint, api_key=keys.alpha_write, timeout=10)
    try:
        a = fx.IndexFlatL2(4, name="a")
        a.add(x4[:45])
        a.add(x4[45:90])
        quota_refused(lambda: a.add(x4[90:101]), "over its limit of 100")  # 90 + 11 > 100
        assert a.ntotal == 90
        a.add(x4[90:100])
        assert a.ntotal == 100
        quota_refused(lambda: a.add(x4[:1]), "vectors")
        # an import counts its vectors too; a create counts an index
        b = fx.IndexFlatL2(4, name="b")
        quota_refused(lambda: fx.deserialize_index(faiss.serialize_index(_flat(x4[:5]))), "vectors")
        a.remove_ids(np.arange(50))
        assert a.ntotal == 50
        b.add(x4[:50])  # room again after the removal
        fx.IndexFlatL2(4, name="c")
        quota_refused(lambda: fx.IndexFlatL2(4, name="d"), "indices")
        quota_refused(lambda: fx.IndexFlatL2(4).ntotal, "indices")  # unnamed ones count too
        assert sorted(i["name"] for i in fx.list_indexes()) == ["a", "b", "c"]
        assert (a.ntotal, b.ntotal) == (50, 50)
        for name in ("a", "b", "c"):
            fx.delete_index(name)
        # the byte quota: 3000 bytes are 46 float vectors of d=16 (64 bytes each)
        x16 = RNG.standard_normal((60, 16)).astype("float32")
        e = fx.IndexFlatL2(16, name="e")
        e.add(x16[:40])
        quota_refused(lambda: e.add(x16[40:50]), "bytes")
        assert e.ntotal == 40
        fx.delete_index("e")
    finally:
        fx.disconnect()


def _flat(x: np.ndarray) -> Any:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index


def test_per_request_limits(limited, keys):
    fx.configure(server=limited.endpoint, api_key=keys.beta, timeout=10)
    try:
        big = RNG.standard_normal((60, D)).astype("float32")
        quota_refused(lambda: fx.IndexFlatL2(128, name="wide"), "dimension 128")
        quota_refused(lambda: fx.index_factory(65, "Flat"), "dimension")
        index = fx.IndexFlatL2(D, name="r")
        client = fx.get_client()
        # one request of 60 vectors is refused, and changes nothing...
        quota_refused(lambda: client.call("add", "r", {}, {"x": big}), "at most 50")
        assert index.ntotal == 0
        # ... while the client's add sends them in requests the server takes (50 + 10)
        index.add(big)
        assert index.ntotal == 60
        np.testing.assert_array_equal(index.reconstruct_n(50, 10), big[50:])
        index.reset()
        index.add(big[:50])
        # 20 queries x k=5 reconstructed vectors: a reply of 100 vectors
        quota_refused(lambda: index.search_and_reconstruct(big[:20], 5), "reply of 100 vectors")
        assert index.reconstruct_n(0, 50).shape == (50, D)
        quota_refused(
            lambda: fx.deserialize_index(faiss.serialize_index(faiss.IndexFlatL2(100))), "dimension"
        )
        assert [i["name"] for i in fx.list_indexes()] == ["r"]
        assert index.ntotal == 50
        fx.delete_index("r")
    finally:
        fx.disconnect()


def test_concurrent_adds_cannot_overshoot_a_quota(limited, keys):
    fx.configure(server=limited.endpoint, api_key=keys.gamma, timeout=10)
    try:
        index = fx.IndexFlatL2(2, name="race")
        x = RNG.standard_normal((30, 2)).astype("float32")
        outcomes: list[str] = []

        def add() -> None:
            try:
                index.add(x)
                outcomes.append("ok")
            except QuotaExceeded:
                outcomes.append("refused")

        threads = [threading.Thread(target=add) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("ok") == 3 and outcomes.count("refused") == 5, outcomes
        assert index.ntotal == 90
        fx.delete_index("race")
    finally:
        fx.disconnect()


def test_rate_limit_per_key(keys):
    srv = ServerProcess(
        "--enable-auth", "--auth-file", str(keys.file), "--rate-limit", "1", "--rate-burst", "3"
    ).start()
    try:
        w = Wire(srv.endpoint)
        other = Wire(srv.endpoint)
        refused = []
        created = header(
            "create",
            index="rated",
            api_key=keys.beta,
            args={"spec": {"type": "IndexFlatL2", "params": {"d": D}}},
        )
        w.ok(created)
        for _ in range(8):
            h = header("add", index="rated", api_key=keys.beta)
            reply, _ = w.call(message(h, {"x": BASE[:1]}))
            if not reply["ok"]:
                assert reply["error"]["code"] == "quota_exceeded", reply
                assert reply["error"]["details"]["retry_after"] > 0
                refused.append(h["id"])
        # a burst of 3 and one more per second: most of 9 quick requests are refused
        assert len(refused) >= 3, refused
        for _ in range(3):  # another key has a bucket of its own
            other.ok(header("touch", api_key=keys.alpha_read))
        time.sleep(1.2)  # a token comes back each second; the refused adds changed nothing
        info, _ = w.ok(header("info", index="rated", api_key=keys.beta))
        assert info["ntotal"] == 8 - len(refused)
        w.close()
        other.close()
    finally:
        srv.stop()
