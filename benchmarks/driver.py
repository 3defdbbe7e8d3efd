"""The measuring end of the benchmark: a worker process, and the bare pyzmq echo server.

This file is self-contained on purpose (numpy, pyzmq and, per mode, faiss or a ``faissx``
client): it runs both in this project's virtualenv and, with ``python -I``, in the separate
virtualenv that holds the original ``faissx`` package from PyPI, where this repository must not
be importable. The same loops therefore time every system, and what differs between systems is
only the index-like object they call ``search``/``add`` on.

``python driver.py worker`` reads one JSON command per line on stdin and answers one JSON line on
stdout (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``); anything a library
prints goes to stderr. ``python driver.py echo ENDPOINT...`` runs the echo server.

Modes (what an index handle is):
  local  a real faiss index in this process
  ours   a FAISSx proxy (``from faissx import client``; this repository's package)
  orig   a proxy of the original ``faissx`` package (its own virtualenv and server)
  echo   a DEALER socket to the echo server: sends the request's bytes, gets the reply's size back
"""

from __future__ import annotations

import gc
import json
import os
import platform
import signal
import struct
import sys
import time
from typing import Any

import numpy as np
import zmq

#: Messages at least this large are sent by reference, as FAISSx does (copying small ones is
#: cheaper than tracking them).
ZERO_COPY_FROM = 1 << 16
#: Echo request header: sizes of the reply frames to send back, then padding up to the length of
#: a real FAISSx request header (the benchmark measures and passes it).
_ECHO_HEAD = struct.Struct("<IIII")


# -- the echo server -----------------------------------------------------------------------------


def echo_server(endpoints: list[str]) -> None:
    """One ROUTER on every endpoint; each request is answered with frames of the sizes it asks.

    The reply buffers are allocated once per size, so the server does no work per request beyond
    ZeroMQ's own: this is the floor any request/reply server over the same sockets sits on.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    for endpoint in endpoints:
        sock.bind(endpoint)
    buffers: dict[int, bytes] = {}

    def buffer(size: int) -> bytes:
        buf = buffers.get(size)
        if buf is None:
            buf = buffers[size] = bytes(size)
        return buf

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        if not sock.poll(200):
            continue
        frames = sock.recv_multipart(copy=False)
        try:
            head_bytes, d_bytes, i_bytes, _ = _ECHO_HEAD.unpack_from(frames[1].buffer)
        except (IndexError, struct.error):
            print(f"ignored a malformed request of {len(frames)} frames", file=sys.stderr)
            continue
        reply = [frames[0], buffer(head_bytes)]
        if d_bytes or i_bytes:
            reply += [buffer(d_bytes), buffer(i_bytes)]
        sock.send_multipart(reply, copy=d_bytes + i_bytes < ZERO_COPY_FROM)
    sock.close(0)
    ctx.term()


class EchoIndex:
    """Looks like an index to the timing loops; every call is one echo round trip.

    A search sends the query vectors and gets back frames the size of the real ``D`` and ``I``;
    an add sends the vectors and gets back a header-sized frame, as FAISSx answers an add.
    """

    is_trained = True

    def __init__(self, endpoint: str, d: int, request_header: int, reply_header: int) -> None:
        self.d = d
        self.ntotal = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        pad = max(request_header - _ECHO_HEAD.size, 0)
        self._reply_header = reply_header
        self._pad = b"\0" * pad

    def _round_trip(self, x: np.ndarray, d_bytes: int, i_bytes: int) -> list[Any]:
        head = _ECHO_HEAD.pack(self._reply_header, d_bytes, i_bytes, 0) + self._pad
        self._sock.send_multipart([head, x], copy=x.nbytes < ZERO_COPY_FROM)
        return self._sock.recv_multipart(copy=False)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[0]
        frames = self._round_trip(x, n * k * 4, n * k * 8)
        dist = np.frombuffer(frames[-2].buffer, dtype=np.float32).reshape(n, k)
        ids = np.frombuffer(frames[-1].buffer, dtype=np.int64).reshape(n, k)
        return dist, ids

    def add(self, x: np.ndarray) -> None:
        self._round_trip(x, 0, 0)
        self.ntotal += x.shape[0]

    def reset(self) -> None:
        self.ntotal = 0

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


# -- the worker ---------------------------------------------------------------------------------


class Handle:
    """One index this worker can time: its mode, where it lives, and the live object."""

    def __init__(
        self,
        mode: str,
        obj: Any,
        endpoint: str | None = None,
        name: str | None = None,
        generation: int = 0,
    ) -> None:
        self.mode = mode
        self.obj = obj
        self.endpoint = endpoint
        self.name = name
        self.generation = generation


class Worker:
    def __init__(self) -> None:
        self.handles: dict[str, Handle] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self._ours: Any = None
        self._ours_endpoint: tuple[str, int] | None = None
        self._ours_generation = 0
        self._orig: Any = None
        self._faiss: Any = None
        self._echo: dict[str, Any] = {}

    # -- modules and connections -------------------------------------------------------------
    @property
    def faiss(self) -> Any:
        if self._faiss is None:
            import faiss

            self._faiss = faiss
        return self._faiss

    def ours(self, endpoint: str, write_window: int = 0) -> Any:
        """This repository's client, configured for ``endpoint`` (one server at a time) with
        ``configure(write_window=...)``."""
        if self._ours is None:
            from faissx import client

            self._ours = client
        if self._ours_endpoint != (endpoint, write_window):
            self._ours.configure(server=endpoint, timeout=300, write_window=write_window)
            self._ours_endpoint = (endpoint, write_window)
            self._ours_generation += 1
        return self._ours

    def orig(self, endpoint: str) -> Any:
        """The original package's client (it keeps one global connection)."""
        if self._orig is None:
            from faissx import client

            client.configure(server=endpoint, timeout=300)
            self._orig = client
        return self._orig

    def data(self, path: str) -> np.ndarray:
        arr = self.arrays.get(path)
        if arr is None:
            arr = self.arrays[path] = np.load(path, mmap_mode="r")
        return arr

    def index(self, key: str) -> Any:
        """The live object behind ``key``; an ``ours`` proxy is reopened after a reconnect."""
        handle = self.handles[key]
        if handle.mode == "ours":
            client = self.ours(handle.endpoint or "")
            if handle.generation != self._ours_generation:
                handle.obj = client.open_index(handle.name)
                handle.generation = self._ours_generation
        return handle.obj

    def new_index(
        self,
        mode: str,
        d: int,
        factory: str,
        endpoint: str | None,
        name: str | None = None,
        echo: dict[str, int] | None = None,
        write_window: int = 0,
    ) -> Any:
        if mode == "local":
            return self.faiss.index_factory(d, factory)
        if mode == "ours":
            client = self.ours(endpoint or "", write_window)
            return client.index_factory(d, factory, name=name)
        if mode == "orig":
            return self.orig(endpoint or "").index_factory(d, factory)
        if mode == "echo":
            echo = echo or {}
            return EchoIndex(
                endpoint or "", d, echo.get("request_header", 0), echo.get("reply_header", 0)
            )
        raise ValueError(f"unknown mode {mode!r}")

    def set_params(self, mode: str, obj: Any, params: dict[str, Any]) -> None:
        for name, value in (params or {}).items():
            if mode == "local":
                self.faiss.ParameterSpace().set_index_parameter(obj, name, value)
            elif mode != "echo":
                setattr(obj, name, value)

    # -- commands ----------------------------------------------------------------------------
    def cmd_hello(self, mode: str = "local") -> dict[str, Any]:
        info: dict[str, Any] = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "pid": os.getpid(),
        }
        if mode in ("local", "ours", "orig"):
            info["faiss"] = self.faiss.__version__
            info["omp_threads"] = self.faiss.omp_get_max_threads()
        if mode in ("ours", "orig"):
            import faissx

            info["faissx"] = getattr(faissx, "__version__", "?")
        return info

    def cmd_build(
        self,
        key: str,
        mode: str,
        d: int,
        factory: str,
        data: str,
        n: int,
        train_n: int = 0,
        endpoint: str | None = None,
        name: str | None = None,
        params: dict[str, Any] | None = None,
        save: str | None = None,
        echo: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Create an index, train it if it needs it, add ``n`` vectors in one call."""
        xb = self.data(data)
        obj = self.new_index(mode, d, factory, endpoint, name=name, echo=echo)
        train_s = 0.0
        if not obj.is_trained:
            xt = np.ascontiguousarray(xb[: train_n or n])
            t0 = time.perf_counter()
            obj.train(xt)
            train_s = time.perf_counter() - t0
        x = np.ascontiguousarray(xb[:n])
        t0 = time.perf_counter()
        obj.add(x)
        add_s = time.perf_counter() - t0
        self.set_params(mode, obj, params or {})
        handle = Handle(mode, obj, endpoint, name, self._ours_generation)
        self.handles[key] = handle
        if save and mode == "local":
            self.faiss.write_index(obj, save)
        result: dict[str, Any] = {"train_s": train_s, "add_s": add_s, "ntotal": int(obj.ntotal)}
        if mode == "orig":
            result["index_id"] = obj.index_id
        return result

    def cmd_attach(
        self,
        key: str,
        mode: str,
        d: int = 0,
        factory: str = "",
        endpoint: str | None = None,
        name: str | None = None,
        index_id: str | None = None,
        ntotal: int = 0,
        path: str | None = None,
        params: dict[str, Any] | None = None,
        echo: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Reach an index built elsewhere: by name (ours), by id (orig), from a file (local)."""
        if mode == "ours":
            obj = self.ours(endpoint or "").open_index(name)
        elif mode == "local":
            obj = self.faiss.read_index(path)
            self.set_params(mode, obj, params or {})
        elif mode == "orig":
            # The original client has no "open"; its proxies address the server by index_id.
            obj = self.orig(endpoint or "").index_factory(d, factory)
            obj.index_id = index_id
            obj.ntotal = ntotal
            self.set_params(mode, obj, params or {})
        else:
            obj = self.new_index(mode, d, factory, endpoint, echo=echo)
        self.handles[key] = Handle(mode, obj, endpoint, name, self._ours_generation)
        return {"ntotal": int(obj.ntotal)}

    def cmd_drop(self, key: str) -> dict[str, Any]:
        handle = self.handles.pop(key, None)
        if handle is not None and handle.mode == "echo":
            handle.obj.close()
        return {}

    def _queries(self, queries: str, nq: int, count: int) -> list[np.ndarray]:
        """``count`` distinct contiguous query blocks of ``nq`` rows (cycled through)."""
        xq = self.data(queries)
        count = max(1, min(count, xq.shape[0] // max(nq, 1)))
        return [np.ascontiguousarray(xq[i * nq : (i + 1) * nq]) for i in range(count)]

    def cmd_search(
        self, key: str, queries: str, nq: int, k: int, reps: int, warmup: int = 0
    ) -> list[float]:
        """Seconds per ``search`` call, ``reps`` calls of ``nq`` queries each."""
        index = self.index(key)
        blocks = self._queries(queries, nq, min(reps + warmup, 256))
        for i in range(warmup):
            index.search(blocks[i % len(blocks)], k)
        times = []
        clock = time.perf_counter
        for i in range(reps):
            x = blocks[i % len(blocks)]
            t0 = clock()
            index.search(x, k)
            times.append(clock() - t0)
        return times

    def cmd_add(
        self,
        mode: str,
        d: int,
        factory: str,
        data: str,
        n: int,
        batch: int,
        reps: int,
        endpoint: str | None = None,
        echo: dict[str, int] | None = None,
        write_window: int = 0,
    ) -> list[float]:
        """Seconds per ``add`` of ``batch`` vectors, adding ``n`` vectors in all per repetition.

        Every repetition starts from a fresh, empty index (created before the clock starts), so
        each timed call appends to an index of known size. With a ``write_window`` (``ours``)
        the last add's time includes the ``flush()`` that waits for every acknowledgement, so
        the times still add up to the time until all the adds were acknowledged.
        """
        xb = self.data(data)
        blocks = [np.ascontiguousarray(xb[i : i + batch]) for i in range(0, n, batch)]
        times = []
        for _ in range(reps):
            index = self.new_index(mode, d, factory, endpoint, echo=echo, write_window=write_window)
            if mode == "ours":
                index.is_trained  # noqa: B018 - creates the server-side index before the clock
            gc.collect()
            for x in blocks:
                t0 = time.perf_counter()
                index.add(x)
                times.append(time.perf_counter() - t0)
            if mode == "ours" and write_window:
                t0 = time.perf_counter()
                self.ours(endpoint or "", write_window).flush()
                times[-1] += time.perf_counter() - t0
            if mode == "echo":
                index.close()
            elif mode == "orig":
                try:
                    index.reset()  # the original recreates the index empty: frees its memory
                except Exception as exc:  # best effort cleanup
                    print(f"reset failed: {exc}", file=sys.stderr)
            del index
        return times

    def cmd_qps(
        self, key: str, queries: str, start_at: float, duration: float, nq_max: int, k: int
    ) -> dict[str, Any]:
        """Search in a loop from ``start_at`` (wall clock) for ``duration`` s, nq = 1..nq_max."""
        index = self.index(key)
        blocks = [self._queries(queries, nq, 8) for nq in range(1, nq_max + 1)]
        index.search(blocks[0][0], k)  # connect and warm before the window opens
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        requests = queries_done = 0
        clock = time.perf_counter
        t0 = clock()
        end = t0 + duration
        now = t0
        while now < end:
            nq_index = requests % nq_max
            block = blocks[nq_index]
            index.search(block[(requests // nq_max) % len(block)], k)
            requests += 1
            queries_done += nq_index + 1
            now = clock()
        return {
            "requests": requests,
            "queries": queries_done,
            "elapsed": now - t0,
            "late_s": max(0.0, -delay),
        }


def worker_loop() -> None:
    """Answer JSON commands from stdin; keep stdout for answers only."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        op = command.pop("cmd")
        if op == "quit":
            break
        try:
            result = getattr(worker, f"cmd_{op}")(**command)
            answer = {"ok": True, "result": result}
        except Exception as exc:  # every failure is reported, none kills us
            message = " ".join(str(exc).split())[:400]
            answer = {"ok": False, "error": f"{type(exc).__name__}: {message}"}
        answers.write(json.dumps(answer) + "\n")
    answers.flush()
    os._exit(0)  # skip interpreter teardown: some clients hang in atexit on a dead server


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"]:
        worker_loop()
    elif argv[:1] == ["echo"]:
        echo_server(argv[1:])
    else:
        raise SystemExit("usage: driver.py worker | driver.py echo ENDPOINT...")


if __name__ == "__main__":
    main(sys.argv[1:])
