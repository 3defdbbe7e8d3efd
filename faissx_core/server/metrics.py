"""Prometheus metrics of one server: counted where requests finish, measured where data lives.

One :class:`Metrics` object belongs to one :class:`~faissx_core.server.app.Server` and owns its
own ``CollectorRegistry`` (no process-wide registry: two servers in one process, as in tests,
count apart). Three sources feed it:

* **Requests**: :meth:`Metrics.observe` is called once per answered request, from the one place
  the request pipeline finishes, with its ``RequestEvent`` (``pipeline.py``). It adds to plain
  counters and a latency histogram under one lock (:class:`RequestCounts`), about a microsecond;
  the Prometheus families are built from them when scraped.
* **Storage**: the write-ahead log's fsync latency and each snapshot's duration arrive through
  :meth:`Metrics.storage_timing`, which the server hands to the store (``FileStore.timings``).
* **State**: vectors and memory per index and tenant, log sizes, remembered idempotency keys,
  connections and uptime are read from the backend when Prometheus scrapes (a custom collector),
  so serving a request never pays for them.

``--metrics-port`` serves the registry over HTTP (``prometheus_client``'s WSGI server) on the
server's own bind address; without it nothing listens, but the counters still run, and
``faissx status`` reads the same numbers through the ``stats`` operation.

``prometheus_client`` is imported only where it is used (the registry, built on the first
:attr:`Metrics.registry`, and the families built at scrape time): a server without
``--metrics-port`` starts without loading it (about 5% of a start). The collectors below are
plain objects with ``collect`` and ``describe``, which is all a registry asks of one.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import zmq

from faissx_core import __version__
from faissx_core.server.pipeline import RequestEvent

#: Request latency buckets (seconds): a small search is tens of microseconds, a large train
#: or import can take minutes.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: fsync of a log: from a page-cache flush (tens of microseconds) to a slow disk (a second).
FSYNC_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
SNAPSHOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The server's counters and the collector that reads its state at scrape time."""

    def __init__(self, backend: Any, idempotency: Any = None) -> None:
        self.started = time.time()
        self.connections = Connections()
        self.requests = RequestCounts()
        self.storage = StorageCounts()
        self._state = _StateCollector(self, backend, idempotency)
        self._registry: Any = None
        self._http: Any = None

    @property
    def registry(self) -> Any:
        """This server's ``CollectorRegistry``, built (and ``prometheus_client`` imported) on
        first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=True)
            for collector in (self.requests, self.storage, self._state):
                registry.register(collector)
            self._registry = registry
        return self._registry

    # -- the request pipeline's hook ---------------------------------------------------------
    def observe(self, event: RequestEvent) -> None:
        """Count one answered request (called once per request, from the pipeline's end)."""
        self.requests.add(event)

    # -- storage -----------------------------------------------------------------------------
    def storage_timing(self, what: str, seconds: float, ok: bool = True) -> None:
        """``what`` is ``"fsync"`` or ``"snapshot"``; called by the store as each finishes."""
        self.storage.add(what, seconds, ok)

    # -- serving -----------------------------------------------------------------------------
    def serve(self, address: str, port: int) -> int:
        """Serve ``/metrics`` on ``address:port`` in a daemon thread; returns the bound port."""
        from prometheus_client.exposition import start_wsgi_server

        host = "0.0.0.0" if address in ("*", "0.0.0.0") else address
        httpd, _ = start_wsgi_server(port, host, registry=self.registry)
        self._http = httpd
        return int(httpd.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.connections.close()

    def uptime(self) -> float:
        return time.time() - self.started


class RequestCounts:
    """Per-request counters and the latency histogram, kept as plain numbers under one lock.

    ``prometheus_client``'s labelled metrics cost several microseconds a request (a lock and a
    label lookup per metric); a small read is answered in tens of microseconds, so the request
    path only adds to a few integers here, and the families are built when Prometheus scrapes.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: (op, outcome, tenant) -> [requests, bytes in, bytes out]
        self._counts: dict[tuple[str, str, str], list[int]] = {}
        #: op -> [count per bucket (non-cumulative; the last is +Inf), sum of seconds]
        self._latency: dict[str, list[float]] = {}
        #: (op, tenant) -> retries answered from the idempotency table
        self._deduplicated: dict[tuple[str, str], int] = {}

    def add(self, event: RequestEvent) -> None:
        tenant = event.tenant or ""
        key = (event.op, event.outcome, tenant)
        bucket = bisect_left(LATENCY_BUCKETS, event.duration_s)
        with self._mutex:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0, 0, 0]
            counts[0] += 1
            counts[1] += event.bytes_in
            counts[2] += event.bytes_out
            latency = self._latency.get(event.op)
            if latency is None:
                latency = self._latency[event.op] = [0] * (len(LATENCY_BUCKETS) + 2)
            latency[bucket] += 1
            latency[-1] += event.duration_s
            if event.deduplicated:
                dedup = (event.op, tenant)
                self._deduplicated[dedup] = self._deduplicated.get(dedup, 0) + 1

    def total(self) -> int:
        """Requests answered since start."""
        with self._mutex:
            return sum(counts[0] for counts in self._counts.values())

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with self._mutex:
            counts = {key: list(value) for key, value in self._counts.items()}
            latency = {op: list(value) for op, value in self._latency.items()}
            deduplicated = dict(self._deduplicated)
        requests = CounterMetricFamily(
            "faissx_requests",
            "Requests answered, by operation, outcome (ok or the error code) and tenant.",
            labels=["op", "outcome", "tenant"],
        )
        bytes_in = CounterMetricFamily(
            "faissx_request_bytes",
            "Bytes received in requests (header and arrays), by operation and tenant.",
            labels=["op", "tenant"],
        )
        bytes_out = CounterMetricFamily(
            "faissx_response_bytes",
            "Bytes sent in replies (header and arrays), by operation and tenant.",
            labels=["op", "tenant"],
        )
        sums_in: dict[tuple[str, str], int] = {}
        sums_out: dict[tuple[str, str], int] = {}
        for (op, outcome, tenant), (count, n_in, n_out) in sorted(counts.items()):
            requests.add_metric([op, outcome, tenant], count)
            sums_in[(op, tenant)] = sums_in.get((op, tenant), 0) + n_in
            sums_out[(op, tenant)] = sums_out.get((op, tenant), 0) + n_out
        for labels, total in sorted(sums_in.items()):
            bytes_in.add_metric(list(labels), total)
        for labels, total in sorted(sums_out.items()):
            bytes_out.add_metric(list(labels), total)
        histogram = HistogramMetricFamily(
            "faissx_request_duration_seconds",
            "Seconds from a request's arrival to its reply, by operation.",
            labels=["op"],
        )
        for op, values in sorted(latency.items()):
            histogram.add_metric([op], _cumulative(LATENCY_BUCKETS, values), values[-1])
        dedup = CounterMetricFamily(
            "faissx_requests_deduplicated",
            "Retried writes answered from the idempotency table instead of being applied again.",
            labels=["op", "tenant"],
        )
        for labels, count in sorted(deduplicated.items()):
            dedup.add_metric(list(labels), count)
        yield from (requests, histogram, bytes_in, bytes_out, dedup)


class StorageCounts:
    """The write-ahead log's fsync latency and the snapshots, as plain numbers (see above)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._fsync: list[float] = [0] * (len(FSYNC_BUCKETS) + 2)
        self._snapshot_time: list[float] = [0] * (len(SNAPSHOT_BUCKETS) + 2)
        self._snapshots = {"ok": 0, "failed": 0}

    def add(self, what: str, seconds: float, ok: bool) -> None:
        with self._mutex:
            if what == "fsync":
                self._fsync[bisect_left(FSYNC_BUCKETS, seconds)] += 1
                self._fsync[-1] += seconds
            elif what == "snapshot":
                self._snapshots["ok" if ok else "failed"] += 1
                if ok:
                    self._snapshot_time[bisect_left(SNAPSHOT_BUCKETS, seconds)] += 1
                    self._snapshot_time[-1] += seconds

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with self._mutex:
            fsync, snapshot_time = list(self._fsync), list(self._snapshot_time)
            snapshots = dict(self._snapshots)
        yield HistogramMetricFamily(
            "faissx_wal_fsync_duration_seconds",
            "Seconds one fsync of a write-ahead log took.",
            buckets=_cumulative(FSYNC_BUCKETS, fsync),
            sum_value=fsync[-1],
        )
        count = CounterMetricFamily(
            "faissx_snapshots", "Snapshots written, by outcome (ok, failed).", labels=["outcome"]
        )
        for outcome, n in snapshots.items():
            count.add_metric([outcome], n)
        yield count
        yield HistogramMetricFamily(
            "faissx_snapshot_duration_seconds",
            "Seconds one snapshot (write, fsync, rename, commit) took.",
            buckets=_cumulative(SNAPSHOT_BUCKETS, snapshot_time),
            sum_value=snapshot_time[-1],
        )


def _cumulative(bounds: tuple[float, ...], values: list[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le``, cumulative count) from per-bucket counts (last: +Inf, then
    the sum, which is left out)."""
    from prometheus_client.utils import floatToGoString

    total, buckets = 0.0, []
    for bound, count in zip((*bounds, float("inf")), values[:-1], strict=True):
        total += count
        buckets.append((floatToGoString(bound), total))
    return buckets


class Connections:
    """Open client connections, from the ROUTER socket's monitor events.

    The monitor is a PAIR socket of its own, read on a thread of its own, so the socket thread
    does nothing for it. Only connects and disconnects are reported, which are rare.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

    def __init__(self) -> None:
        self._open = 0
        self._accepted = 0
        self._source: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def open(self) -> int:
        return int(self._source.open if self._source is not None else self._open)

    @property
    def accepted(self) -> int:
        return int(self._source.accepted if self._source is not None else self._accepted)

    def follow(self, count: Any) -> None:
        """Read the counts of ``--max-connections``'s ``ConnectionCount`` instead of watching.

        A ZeroMQ socket has one monitor: a second ``get_monitor_socket`` silently takes the
        events from the first, which would blind the connection limit."""
        self._source = count

    def watch(self, router: zmq.Socket) -> None:
        """Start counting ``router``'s connections (call on the thread that owns ``router``)."""
        monitor = router.get_monitor_socket(self.EVENTS)
        self._thread = threading.Thread(
            target=self._run, args=(monitor,), daemon=True, name="faissx-connections"
        )
        self._thread.start()

    def _run(self, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(200):
                    continue
                frames = monitor.recv_multipart()
                event = int.from_bytes(frames[0][:2], "little")
                if event == zmq.EVENT_ACCEPTED:
                    self._accepted += 1
                    self._open += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    self._open = max(0, self._open - 1)
                elif event == zmq.EVENT_MONITOR_STOPPED:
                    break
        except zmq.ZMQError:
            pass  # the context is terminating: the server is stopping
        finally:
            monitor.close(0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class _StateCollector:
    """Gauges read from the backend when scraped: what the server holds, not what it did."""

    def __init__(self, metrics: Metrics, backend: Any, idempotency: Any) -> None:
        self.metrics = metrics
        self.backend = backend
        self.idempotency = idempotency

    def describe(self) -> Iterator[Any]:
        return iter(())  # unchecked: the families depend on what exists at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        info = GaugeMetricFamily(
            "faissx_build_info", "The server's version (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "faissx_start_time_seconds", "Unix time the server started.", value=m.started
        )
        yield GaugeMetricFamily(
            "faissx_connections", "Client connections open now.", value=m.connections.open
        )
        yield CounterMetricFamily(
            "faissx_connections_accepted",
            "Client connections accepted since start.",
            value=m.connections.accepted,
        )
        yield from index_families(self.backend)
        if self.idempotency is not None:
            yield GaugeMetricFamily(
                "faissx_idempotency_keys",
                "Idempotency keys remembered (recent writes a retry would be answered from).",
                value=len(self.idempotency),
            )


def index_families(backend: Any) -> Iterator[Any]:
    """Per index and per tenant: vectors, bytes held, log bytes; the memory limit if set."""
    from prometheus_client.core import GaugeMetricFamily

    vectors = GaugeMetricFamily(
        "faissx_index_vectors", "Vectors in a named index.", labels=["tenant", "index"]
    )
    memory = GaugeMetricFamily(
        "faissx_index_memory_bytes",
        "Bytes a named index holds (as last measured after a write).",
        labels=["tenant", "index"],
    )
    wal = GaugeMetricFamily(
        "faissx_wal_bytes",
        "Bytes in a durable index's write-ahead log since its last snapshot.",
        labels=["tenant", "index"],
    )
    indices = GaugeMetricFamily(
        "faissx_tenant_indices", "Indices of a tenant, named and unnamed.", labels=["tenant"]
    )
    t_vectors = GaugeMetricFamily(
        "faissx_tenant_vectors",
        "Vectors in all of a tenant's indices, unnamed ones included.",
        labels=["tenant"],
    )
    t_memory = GaugeMetricFamily(
        "faissx_tenant_memory_bytes", "Bytes all of a tenant's indices hold.", labels=["tenant"]
    )
    per_tenant: dict[str, list[int]] = {}
    store = backend.store
    for managed in backend:
        ntotal = int(managed.index.ntotal)
        totals = per_tenant.setdefault(managed.tenant, [0, 0, 0])
        totals[0] += 1
        totals[1] += ntotal
        totals[2] += managed.memory_bytes
        if managed.ephemeral:  # random names, short lives: counted in the tenant's totals only
            continue
        labels = [managed.tenant, managed.name]
        vectors.add_metric(labels, ntotal)
        memory.add_metric(labels, managed.memory_bytes)
        if store is not None:
            wal.add_metric(labels, store.log_bytes(managed.tenant, managed.name))
    for tenant, (count, ntotal, nbytes) in sorted(per_tenant.items()):
        indices.add_metric([tenant], count)
        t_vectors.add_metric([tenant], ntotal)
        t_memory.add_metric([tenant], nbytes)
    yield from (vectors, memory, wal, indices, t_vectors, t_memory)
    if backend.max_memory_bytes is not None:
        yield GaugeMetricFamily(
            "faissx_memory_limit_bytes",
            "--max-memory: bytes all indices together may hold.",
            value=backend.max_memory_bytes,
        )
