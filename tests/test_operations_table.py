"""The one table of operations and the one pipeline every request walks.

The contract (faissx_core/operations.py) is the only list of operation names: the server's
dispatch, authorization, ordering and idempotency, and the client's retry rules, all read it.
These tests pin that down, and check that every answered request, whatever path it took, ends
in exactly one completion event (what metrics and request logs hook into).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from faissx_client import recovery
from faissx_core import operations
from faissx_core.operations import OPERATIONS
from faissx_core.server.app import Server
from faissx_core.server.ops import OPS
from faissx_core.server.pipeline import RequestEvent
from faissx_core.settings import ServerSettings
from tests.conftest import free_port

D = 8


def test_every_declared_operation_has_exactly_one_implementation() -> None:
    server = Server(ServerSettings(workers=1))
    try:
        control, index_ops = set(server.control), set(server.index_ops)
    finally:
        server.pool.shutdown()
        server.ctx.term()
    assert control | index_ops == set(OPERATIONS)
    assert not control & index_ops
    assert index_ops == set(OPS)
    assert {n for n, o in OPERATIONS.items() if o.target == "control"} == control


def test_client_retry_rules_come_from_the_table() -> None:
    for name, decl in OPERATIONS.items():
        assert recovery.retry_safe(name) is decl.retry_safe
        assert recovery.keyed(name) is decl.keyed
    # the rule that had drifted: export is a read, so safe to resend
    assert recovery.retry_safe("export")
    assert not recovery.retry_safe("no-such-op")
    assert recovery.keyed("add") and recovery.keyed("merge_from")
    assert not recovery.keyed("search") and not recovery.keyed("snapshot")


def test_an_op_without_a_declaration_cannot_be_registered() -> None:
    from faissx_core.server.ops import op

    with pytest.raises(LookupError, match="declare it"):
        op("no_such_operation")


def test_every_mutating_operation_needs_a_write_key_and_is_keyed() -> None:
    for decl in OPERATIONS.values():
        if decl.mutates:
            assert decl.access == "write" and decl.keyed, decl.name
        if decl.logged:
            assert decl.target == "index" and decl.mutates and decl.ordered, decl.name


def test_the_contract_imports_without_the_server() -> None:
    code = (
        "import sys, faissx_core.operations; "
        "bad = [m for m in sys.modules if m.startswith('faissx_core.server')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- one completion event per answered request ----------------------------------------------


class _Running:
    """A Server in a thread of this process (so its observers can be read), on loopback."""

    def __init__(self) -> None:
        self.events: list[RequestEvent] = []
        self.server = Server(ServerSettings(port=free_port(), bind_address="127.0.0.1", workers=2))
        self.server.observers.add(self.events.append)
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(ready.set,), daemon=True
        )
        self.thread.start()
        assert ready.wait(30)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{self.server.settings.port}")
        self.ids = iter(range(1, 1 << 30))

    def call(
        self,
        op: str,
        index: str | None = None,
        args: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        **header: Any,
    ) -> dict[str, Any]:
        arrays = arrays or {}
        head = {
            "v": 1,
            "id": next(self.ids),
            "op": op,
            "index": index,
            "args": args or {},
            "session": "s1",
            "arrays": [
                {"name": n, "dtype": str(a.dtype), "shape": list(a.shape)}
                for n, a in arrays.items()
            ],
            **header,
        }
        before = len(self.events)
        self.sock.send_multipart([msgpack.packb(head), *(a.tobytes() for a in arrays.values())])
        assert self.sock.poll(30_000), f"no reply to {op}"
        reply = msgpack.unpackb(self.sock.recv_multipart()[0], raw=False)
        # the event follows the reply out (from whichever thread sent it): wait for exactly one
        deadline = time.monotonic() + 10
        while len(self.events) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.02)  # a second event for the same request would land by now
        assert len(self.events) == before + 1, self.events[before:]
        return reply

    def close(self) -> None:
        self.sock.close(0)
        self.server.stop()
        self.thread.join(30)


@pytest.fixture
def running() -> Any:
    r = _Running()
    yield r
    r.close()


def test_each_request_ends_in_one_event_whatever_its_path(running: _Running) -> None:
    x = np.random.default_rng(0).standard_normal((20, D)).astype("float32")
    spec = {"type": "IndexFlatL2", "params": {"d": D}}
    assert running.call("ping")["ok"]
    assert running.call("create", "ev", {"spec": spec}, idem="k-create")["ok"]
    assert running.call("add", "ev", arrays={"x": x}, idem="k1")["ok"]
    assert running.call("add", "ev", arrays={"x": x}, idem="k1")["ok"]  # a retry: not applied
    assert running.call("search", "ev", {"k": 3}, arrays={"x": x[:2]})["ok"]  # small: inline
    assert (
        running.call("search", "nope", {"k": 3}, arrays={"x": x[:2]})["error"]["code"]
        == "index_not_found"
    )
    assert running.call("frobnicate")["error"]["code"] == "protocol_error"
    assert running.call("info", "ev")["result"]["ntotal"] == 20
    seen = [(e.op, e.outcome, e.deduplicated) for e in running.events]
    assert seen == [
        ("ping", "ok", False),
        ("create", "ok", False),
        ("add", "ok", False),
        ("add", "ok", True),
        ("search", "ok", False),
        ("search", "index_not_found", False),
        ("?", "protocol_error", False),
        ("info", "ok", False),
    ]
    search = running.events[4]
    assert search.inline and search.index == "ev" and search.bytes_out > 2 * 3 * 8
    assert running.events[2].bytes_in >= x.nbytes
    assert all(e.duration_s >= 0 for e in running.events)


def test_operations_module_lists_each_name_once() -> None:
    names = [o.name for o in operations._TABLE]
    assert len(names) == len(set(names))
