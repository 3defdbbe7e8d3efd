"""``--backend ray`` on a real Ray cluster: sharded results equal faiss's, faults lose nothing.

One two-node Ray cluster (``ray.cluster_utils.Cluster``, on 127.0.0.1, one CPU per node) and
one ``faissx serve --backend ray`` joined to it serve the whole module: starting Ray costs
tens of seconds on a loaded machine. This process is a Ray driver too, so it can find a replica
actor (by the name the backend gives it), read its process id and node, and take its state.

Differential tests: for Flat, IVF, HNSW, PQ and IDMap2 at 2 and 4 shards, the remote sharded
index is compared with (a) one local faiss index over the same data (exactly where faiss is
exact) and (b) faiss's own ``IndexShards`` over the same shards, exactly (ties included).

Fault tests: ``kill -9`` of a replica's process in a stream of acknowledged adds and searches;
a replica killed for good; a whole node removed. Nothing acknowledged is lost, and every
search during an outage is either the full answer or a ``ShardUnavailable`` naming the shard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from faissx_core.server.ray_loopback import keep_loopback

keep_loopback("127.0.0.1")  # this process and the servers it starts join a loopback cluster
ray = pytest.importorskip("ray")

import faiss  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import faissx_client as fx  # noqa: E402
from faissx_core.errors import ShardUnavailable, UnsupportedOperation  # noqa: E402
from faissx_core.server.ray_backend import NAMESPACE, cluster_config, niced  # noqa: E402
from faissx_core.server.shards import split  # noqa: E402
from tests.conftest import FAISSX, ServerProcess, server_env  # noqa: E402

D = 16
NB = 400
NQ = 12
K = 5
#: Ray's own waits on a loaded 2-core machine: generous, and every wait is bounded.
START = 180.0


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, both on loopback, no dashboard."""
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    # A dead node is declared after `failure_threshold` missed health checks `period_ms`
    # apart: Ray's 5 x 3 s would make the node-loss test wait 15 s for nothing. A check still
    # only fails after its own 10 s timeout, so a slow (loaded) raylet is not declared dead.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    # The backend's own settings for a cluster it starts: replicas at the server's niceness,
    # not Ray's 15 (on a loaded machine that alone made every actor start 4-5x slower).
    config = {**health, **cluster_config()}
    c = Cluster(
        initialize_head=True,
        head_node_args={**node, "include_dashboard": False, "_system_config": config},
    )
    worker = c.add_node(**node)
    ray.init(
        address=c.address,
        namespace=NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    c, _ = cluster
    data = tmp_path_factory.mktemp("ray-data")
    proc = ServerProcess(
        "--backend", "ray", "--ray-address", c.address, "--data-dir", str(data)
    ).start(timeout=START)
    try:
        yield proc
    finally:
        proc.stop(timeout=60)


@pytest.fixture
def remote(served):
    fx.configure(server=served.endpoint, timeout=120)
    try:
        yield fx
    finally:
        fx.disconnect()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    return (
        rng.random((NB, D), dtype=np.float32),
        rng.random((NQ, D), dtype=np.float32),
        rng.random((300, D), dtype=np.float32),
    )


def replicas(name: str) -> dict[tuple[int, int], dict]:
    """(shard, replica) -> status (pid, node, seq, ntotal) of the index's replica actors."""
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        parts = entry["name"].split("/")
        if entry.get("namespace") == NAMESPACE and len(parts) == 4 and parts[2] == name:
            handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
            try:
                status = ray.get(handle.status.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue
            found[(status["shard"], status["replica"])] = {**status, "handle": handle}
    return found


def wait_gone(pid: int, timeout: float = START) -> None:
    """Until process ``pid`` (a replica on this machine) has exited. ``ray.kill`` only asks
    Ray to end an actor: until its process is gone it still answers the calls made to it (a
    loaded run searched in the 60 ms between the kill and the process's end, and got an answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):  # exited, not yet reaped
            return
        time.sleep(0.05)
    raise AssertionError(f"replica process {pid} still runs {timeout} s after ray.kill")


def trained_template(name: str):
    """The trained, still empty index a replica holds right after ``train`` (inside its id
    map): the quantizer every shard shares, to build the local references from."""
    handle = replicas(name)[(0, 0)]["handle"]
    state, _ = ray.get(handle.export_state.remote(), timeout=60)
    outer = faiss.deserialize_index(np.frombuffer(state, dtype=np.uint8))  # owns the index
    inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexIDMap2) else outer
    return faiss.clone_index(inner)  # a copy that outlives ``outer``


# -- differential ------------------------------------------------------------------------------

CASES = {
    # name: (remote constructor, local constructor, trains, exact against one index)
    "Flat": (lambda fx, **kw: fx.IndexFlatL2(D, **kw), lambda: faiss.IndexFlatL2(D), False, True),
    "IVF": (lambda fx, **kw: fx.IndexIVFFlat(fx.IndexFlatL2(D), D, 8, **kw), None, True, True),
    "HNSW": (
        lambda fx, **kw: fx.IndexHNSWFlat(D, 8, **kw),
        lambda: faiss.IndexHNSWFlat(D, 8),
        False,
        False,
    ),
    "PQ": (lambda fx, **kw: fx.IndexPQ(D, 4, 6, **kw), None, True, True),
    "IDMap2": (
        lambda fx, **kw: fx.IndexIDMap2(fx.IndexFlatL2(D), **kw),
        lambda: faiss.IndexIDMap2(faiss.IndexFlatL2(D)),
        False,
        True,
    ),
}


#: Each family at one shard count (Flat at two), 2, 3 and 4 all covered: a sharded index costs
#: shards x replicas actor processes, and on a loaded 2-core machine each case takes 4-8 s (it
#: took 22-47 s while Ray ran replicas at niceness 15), so the full family x count product would
#: cost minutes and test nothing more: how ids are split does not depend on the family
#: (shards.split has its own tests below).
SHARDED = [("Flat", 2), ("Flat", 4), ("IVF", 3), ("HNSW", 2), ("PQ", 4), ("IDMap2", 3)]


@pytest.mark.parametrize(("case", "shards"), SHARDED)
def test_sharded_equals_one_index_and_index_shards(remote, data, case, shards):
    """Then, on the same index (each sharded index costs seconds of actor start-up): removes
    route to the shard holding each id (IDMap2), and Flat refuses a remove that would renumber."""
    make_remote, make_local, trains, exact = CASES[case]
    xb, xq, xt = data
    faiss.omp_set_num_threads(1)  # replicas build HNSW graphs single-threaded, as here
    name = f"diff-{case.lower()}-{shards}"
    index = make_remote(remote, name=name, shards=shards)
    try:
        if trains:
            index.train(xt)
            template = trained_template(name)
            make_local = lambda: faiss.clone_index(template)  # noqa: E731
        hashed = case == "IDMap2"
        ids = (np.arange(NB, dtype=np.int64) * 7 + 1000) if hashed else np.arange(NB)
        single = make_local()
        subs = [
            faiss.IndexIDMap2(make_local()) if not hashed else make_local() for _ in range(shards)
        ]
        # two adds, so ids assigned by the front end continue across calls as faiss's do
        for lo, hi in ((0, NB // 3), (NB // 3, NB)):
            x, batch_ids = xb[lo:hi], ids[lo:hi]
            if hashed:
                index.add_with_ids(x, batch_ids)
                single.add_with_ids(x, batch_ids)
            else:
                index.add(x)
                single.add(x)
            for s, rows in enumerate(split(batch_ids, shards, hashed)):
                subs[s].add_with_ids(x[rows], batch_ids[rows])
        if case == "IVF":
            index.nprobe = 3
            for target in (single, *(faiss.downcast_index(s.index) for s in subs)):
                target.nprobe = 3
        assert index.ntotal == NB
        reference = faiss.IndexShards(D, False, False)  # not threaded, ids kept as stored
        for sub in subs:
            reference.add_shard(sub)
        got_D, got_I = index.search(xq, K)
        ref_D, ref_I = reference.search(xq, K)
        np.testing.assert_array_equal(got_I, ref_I)
        np.testing.assert_array_equal(got_D, ref_D)
        one_D, one_I = single.search(xq, K)
        if exact:
            np.testing.assert_allclose(got_D, one_D, rtol=1e-6)
            if case != "PQ":  # PQ codes tie often: equal distances, faiss's own tie order
                np.testing.assert_array_equal(got_I, one_I)
        else:  # HNSW: one graph per shard is a different (approximate) search than one graph
            recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(got_I, one_I, strict=True)])
            assert recall >= 0.8
        if case in ("Flat", "IDMap2", "IVF"):
            lims, dist, found = index.range_search(xq[:4], 0.6)
            lims1, dist1, found1 = single.range_search(xq[:4], 0.6)
            assert np.array_equal(lims, lims1)
            for q in range(4):
                a, b = slice(lims[q], lims[q + 1]), slice(lims1[q], lims1[q + 1])
                order = np.argsort(found1[b], kind="stable")
                np.testing.assert_array_equal(found[a], found1[b][order])
                np.testing.assert_allclose(dist[a], dist1[b][order], rtol=1e-6)
        if case in ("Flat", "IDMap2"):
            key = int(ids[NB - 3])
            np.testing.assert_array_equal(index.reconstruct(key), single.reconstruct(key))
        if case == "IDMap2":  # removes route to the shard that holds each id
            gone = ids[::5]
            assert index.remove_ids(gone) == single.remove_ids(gone) == len(gone)
            assert index.ntotal == single.ntotal == NB - len(gone)
            np.testing.assert_array_equal(index.search(xq, K)[1], single.search(xq, K)[1])
        if case == "Flat":  # a remove would renumber the other shards' rows: refused, no change
            with pytest.raises(UnsupportedOperation, match="renumbers"):
                index.remove_ids(np.array([1, 2], dtype=np.int64))
            assert index.ntotal == NB
            np.testing.assert_array_equal(index.search(xq, K)[1], ref_I)
    finally:
        remote.delete_index(name)


# -- faults ------------------------------------------------------------------------------------


def _expected(xb_acked: np.ndarray, xq: np.ndarray):
    ref = faiss.IndexFlatL2(D)
    ref.add(xb_acked)
    return ref.search(xq, K)


def test_kill_minus_9_during_adds_and_searches(cluster, served, remote, data):
    """A replica's process killed mid-stream: Ray restarts it, it reloads its snapshot + log,
    the front end re-sends the write it was in; searches meanwhile are answered in full by the
    other replica or refused with ShardUnavailable, and no acknowledged add is lost. Then
    `faissx cluster status` shows one live row per replica, the restarted one included (on this
    index: each sharded index costs seconds of actor start-up)."""
    c, _ = cluster
    xb, xq, _ = data
    name = "kill9"
    index = remote.IndexFlatL2(D, name=name, shards=2, replicas=2)
    try:
        started = replicas(name)
        # replicas run at this process's priority (Ray's default niceness, 15, starves them),
        # report it, and the server has nothing to warn about
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert {os.getpriority(os.PRIO_PROCESS, st["pid"]) for st in started.values()} == {mine}
        assert {st["niceness"] for st in started.values()} == {mine}
        assert niced(list(started.values()), mine) == []
        assert "replicas run at niceness" not in served.output()
        victim = started[(1, 0)]
        acked = 0
        outcomes = {"full": 0, "refused": 0}
        for step in range(8):
            rows = xb[acked : acked + 50]
            if step == 3:
                os.kill(victim["pid"], signal.SIGKILL)
            index.add(rows)  # returns only once every replica of its shards applied it
            acked += len(rows)
            want = _expected(xb[:acked], xq)
            try:
                got = index.search(xq, K)
            except ShardUnavailable as exc:
                assert exc.details["shard"] in (0, 1)
                outcomes["refused"] += 1
                continue
            np.testing.assert_array_equal(got[1], want[1])  # never a partial answer
            outcomes["full"] += 1
        assert index.ntotal == acked
        now = replicas(name)
        assert now[(1, 0)]["pid"] != victim["pid"], "Ray did not restart the killed replica"
        assert now[(1, 0)]["ntotal"] == now[(1, 1)]["ntotal"]  # the restarted copy caught up
        np.testing.assert_array_equal(index.search(xq, K)[1], _expected(xb[:acked], xq)[1])
        out = subprocess.run(
            [str(FAISSX), "cluster", "status", "--ray-address", c.address],
            capture_output=True,
            text=True,
            timeout=START,
            env=server_env(),
        )
        assert out.returncode == 0, out.stderr
        rows = [line for line in out.stdout.splitlines() if f"default/{name}" in line]
        assert len(rows) == 4, out.stdout
        assert all("ALIVE" in row for row in rows)
    finally:
        remote.delete_index(name)


def test_shard_with_no_replica_is_refused_by_name(remote, data):
    """A shard whose only replica is gone for good: searches fail naming it, unless the caller
    asks for a partial answer, which then says which shards it lacks; writes are refused."""
    xb, xq, _ = data
    name = "noreplica"
    index = remote.IndexFlatL2(D, name=name, shards=2)
    try:
        index.add(xb)
        victim = replicas(name)[(1, 0)]
        ray.kill(victim["handle"], no_restart=True)
        wait_gone(victim["pid"])
        with pytest.raises(ShardUnavailable, match="shard 1") as caught:
            index.search(xq, K)
        assert caught.value.details["shard"] == 1
        result, arrays = remote.get_client().call(
            "search", name, {"k": K, "partial": True}, {"x": xq}
        )
        assert result["missing_shards"] == [1]
        on_zero = split(np.arange(NB), 2, False)[0]
        ref = faiss.IndexIDMap2(faiss.IndexFlatL2(D))
        ref.add_with_ids(xb[on_zero], on_zero.astype(np.int64))
        np.testing.assert_array_equal(arrays["I"], ref.search(xq, K)[1])
        with pytest.raises(ShardUnavailable):
            index.add(xb[:2])
    finally:
        remote.delete_index(name)


def test_niced_names_replicas_below_the_server():
    """The check behind the server's warning about a cluster whose workers run at Ray's
    default niceness: only nicenesses above the server's own count, each once, sorted."""
    states = [{"niceness": 15}, {"niceness": 0}, {"niceness": 15}, {"niceness": 5}, {}]
    assert niced(states, 0) == [5, 15]
    assert niced(states, 5) == [15]
    assert niced(states, 15) == []


def test_an_index_faiss_would_snapshot_incompletely_is_not_stored_named(remote):
    """As with the local backend: faiss writes an untrained IndexIVFPQR incompletely, so its
    replicas' snapshots would come back broken after a restart; named, it is refused before
    any replica starts."""
    with pytest.raises(UnsupportedOperation, match=r"IndexIVFPQR .*incomplete"):
        remote.IndexIVFPQR(remote.IndexFlatL2(D), D, 4, 4, 4, 4, 4, name="pqr", shards=2)
    assert "pqr" not in [i["name"] for i in remote.list_indexes()]


def test_whole_node_removed(cluster, remote, data):
    """Remove the worker node: its replicas restart on the head node from their own files;
    searches during the outage are full answers or ShardUnavailable; nothing acked is lost."""
    c, worker = cluster
    xb, xq, _ = data
    name = "nodeloss"
    index = remote.IndexFlatL2(D, name=name, shards=2, replicas=2)
    try:
        index.add(xb[:200])
        before = replicas(name)
        # the two copies of each shard are on different nodes: one of each on the worker
        for shard in (0, 1):
            assert {before[(shard, r)]["node"] for r in (0, 1)} == {
                c.head_node.node_id,
                worker.node_id,
            }, {key: st["node"] for key, st in before.items()}
        c.remove_node(worker, allow_graceful=False)
        acked = 200
        for _ in range(3):
            try:
                got = index.search(xq, K)
                np.testing.assert_array_equal(got[1], _expected(xb[:acked], xq)[1])
            except ShardUnavailable as exc:
                assert exc.details["shard"] in (0, 1)
            index.add(xb[acked : acked + 50])
            acked += 50
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            now = replicas(name)
            if len(now) == 4 and all(st["node"] != worker.node_id for st in now.values()):
                break
            time.sleep(1)
        assert len(now) == 4 and all(
            st["ntotal"] == now[(st["shard"], 0)]["ntotal"] for st in now.values()
        )
        assert index.ntotal == acked
        np.testing.assert_array_equal(index.search(xq, K)[1], _expected(xb[:acked], xq)[1])
    finally:
        remote.delete_index(name)


def test_restarted_front_end_reloads_shards(served, data):
    """The server itself killed and restarted on the same data directory: replicas come back
    from their own snapshots and logs with every acknowledged vector. It is the module's server,
    restarted on its port (a front end costs seconds to join the cluster): later tests use it."""
    xb, xq, _ = data
    try:
        fx.configure(server=served.endpoint, timeout=120)
        index = fx.IndexFlatL2(D, name="again", shards=2)
        index.add(xb)
        fx.disconnect()
        served.kill()  # SIGKILL: the replicas end with their owner
        served.start(timeout=START)
        fx.configure(server=served.endpoint, timeout=120)
        again = fx.open_index("again")
        assert again.ntotal == NB
        np.testing.assert_array_equal(again.search(xq, K)[1], _expected(xb, xq)[1])
        fx.delete_index("again")
    finally:
        fx.disconnect()


def test_replica_without_files_is_copied_from_its_peer(remote, data):
    """A replica without files: a replica Ray restarts has lost its vectors and says so. Reads
    go to its peer (never to the empty copy); the next write copies the peer over it, so both
    hold everything acknowledged. The index is unnamed: its session owns it and no files are
    kept for it, as for every index of a server without --data-dir (the replica is given no
    store either way), so the module's server serves (a front end costs seconds to start)."""
    xb, xq, _ = data
    index = remote.IndexFlatL2(D, replicas=2)
    index.add(xb[:100])
    name = index.name
    victim = replicas(name)[(0, 1)]
    assert not victim["lost"]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        back = replicas(name).get((0, 1))
        if back is not None and back["pid"] != victim["pid"]:
            break
        time.sleep(0.5)
    assert back["lost"] and back["ntotal"] == 0  # restarted empty, and knows it
    for _ in range(4):  # round-robin would pick the empty copy for some of these
        np.testing.assert_array_equal(index.search(xq, K)[1], _expected(xb[:100], xq)[1])
    index.add(xb[100:150])
    healed = replicas(name)
    assert not healed[(0, 1)]["lost"]
    assert healed[(0, 1)]["ntotal"] == healed[(0, 0)]["ntotal"] == 150
    for _ in range(4):
        np.testing.assert_array_equal(index.search(xq, K)[1], _expected(xb[:150], xq)[1])
