"""IndexShards and IndexReplicas (float, binary, IVF) held by the client over remote indices.

faiss cannot serialize these wrappers (``write_index`` says "don't know how to serialize"), so
the server could not snapshot one. They own no vectors either: every vector lives in a
sub-index. So in remote mode the wrapper lives where faiss's own lives, in the program that
made it, and its sub-indices live on the server (or stay local faiss objects, if the program
made them before ``configure()``). This module reproduces faiss's ``ThreadedIndex`` family rule
for rule, so a program sees what faiss would show it:

* sub-indices: ``add_shard``/``add_replica``/``addIndex`` check the dimension, the metric and
  duplicates as faiss does (replicas also ``ntotal`` and training); the first one fixes ``d``
  when the wrapper was made without one. ``ntotal``, ``is_trained`` and ``metric_type`` are
  *cached* and re-read from the sub-indices exactly when faiss re-reads them
  (``syncWithSubIndexes``: after adding or removing a sub-index, ``train``, ``add``, ``reset``).
* shards: ``add`` cuts the rows into ``count()`` consecutive slices (slice ``s`` is rows
  ``s*n//count`` to ``(s+1)*n//count``); without ``successive_ids`` the rows get the ids
  ``ntotal + i`` (``add_with_ids``), with it the sub-indices number their own rows and a search
  shifts each shard's ids by the ``ntotal`` of the shards before it. Every shard answers its own
  top-k and the lists merge with faiss's ``merge_knn_results``, the same heap merge
  ``IndexShards`` runs, so distances and the order of ties are faiss's.
* replicas: writes go to every replica; a search cuts the queries into ``count()`` slices of
  ``ceil(n / count)`` and each replica answers one.
* ``IndexShardsIVF``: one coarse quantizer for all shards; a search probes it once and every
  shard scans the lists it chose (``search_preassigned``), and ``train`` trains it and hands
  its centroids to every shard's quantizer.
* what faiss cannot do on these wrappers (``reconstruct``/``remove_ids``/``range_search`` on
  shards, ``remove_ids``/``range_search`` on replicas, search parameters on replicas) raises
  ``UnsupportedOperation``, a RuntimeError as faiss's own error is.

``threaded=True`` runs the sub-indices' calls concurrently on a small thread pool kept by the
wrapper (each remote call waits on its own socket without holding the GIL); ``False`` runs them
one after another, as faiss does.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, ClassVar

import faiss
import numpy as np

from faissx_client.proxy import RemoteIndex
from faissx_core.errors import FaissError, InvalidArgument, UnsupportedOperation


def _state(index: Any) -> tuple[int, bool, int]:
    """(ntotal, is_trained, metric_type) of a sub-index, in one round trip for a proxy."""
    fetch = getattr(index, "_fetch", None)
    if fetch is not None:  # a RemoteIndex: one ``info`` answers all three
        info = fetch()
        return int(info["ntotal"]), bool(info["is_trained"]), int(info["metric_type"])
    return int(index.ntotal), bool(index.is_trained), int(index.metric_type)


def _acknowledged(fn: Callable[[int, Any], Any], i: int, sub: Any) -> Any:
    """``fn(i, sub)`` on a pool thread, then its deferred writes (``write_window``) waited for:
    a pool thread's connection is its own, and the caller reads the sub-indices next from its
    thread (ntotal numbers the next add), which would not wait for them."""
    try:
        return fn(i, sub)
    finally:
        if isinstance(sub, RemoteIndex):
            sub._client.flush()


def merge_knn(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], translations: Sequence[int], keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the shards' sorted top-k lists as ``IndexShards::search`` does.

    Ids are shifted by their shard's translation (padding ``-1`` stays). Float distances go
    through faiss's own ``merge_knn_results``; integer ones (Hamming) through a stable sort of
    the shard-major candidates, which for sorted lists is the same heap merge: ties go to the
    lower shard (the higher one when larger is better, as faiss's max-heap breaks them), then
    to the rank within the shard, and padding comes last.
    """
    Dall = np.ascontiguousarray(np.stack([d for d, _ in parts]))
    Iall = np.stack([np.asarray(i, dtype=np.int64) for _, i in parts])
    shift = np.asarray(translations, dtype=np.int64)[:, None, None]
    Iall = np.ascontiguousarray(np.where(Iall >= 0, Iall + shift, Iall))
    if Dall.dtype == np.float32:
        return faiss.merge_knn_results(Dall, Iall, keep_max=keep_max)
    nshard, nq, k = Dall.shape
    if keep_max:  # faiss's CMax heap pops the higher shard first on a tie
        Dall, Iall = Dall[::-1], Iall[::-1]
    D = np.moveaxis(Dall, 0, 1).reshape(nq, nshard * k)
    I = np.moveaxis(Iall, 0, 1).reshape(nq, nshard * k)
    key = -D.astype(np.int64) if keep_max else D.astype(np.int64)
    key = np.where(I < 0, np.iinfo(np.int64).max, key)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return (
        np.ascontiguousarray(np.take_along_axis(D, order, 1)),
        np.ascontiguousarray(np.take_along_axis(I, order, 1)),
    )


class ThreadedIndex(ABC):
    """What IndexShards and IndexReplicas share (faiss's ``ThreadedIndex``)."""

    #: faiss's class this one stands for (for isinstance, errors and repr).
    faiss_name: ClassVar[str] = "ThreadedIndex"
    #: Whether the sub-indices are binary (codes of d bits as uint8 rows).
    binary: ClassVar[bool] = False

    def __init__(self, d: int, threaded: bool) -> None:
        self.d = int(d)
        self.ntotal = 0
        self.is_trained = True  # faiss's Index default, until a sub-index says otherwise
        self.metric_type = faiss.METRIC_L2
        self.metric_arg = 0.0
        self.verbose = False
        #: faiss deletes owned sub-indices with the wrapper; here Python's references decide.
        self.own_indices = False
        self._threaded = bool(threaded)
        self._subs: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- sub-indices -----------------------------------------------------------------------
    def addIndex(self, index: Any) -> None:
        """Add a sub-index (faiss's checks: dimension, metric, not already held)."""
        d = int(index.d)  # first: a proxy not yet on the server is created here
        if self.binary != _is_binary(index):
            kind = "binary" if self.binary else "float"
            raise InvalidArgument(f"{self.faiss_name} holds {kind} indices, not {index!r}")
        if not self._subs and self.d == 0:
            self.d = d
        if d != self.d:
            raise FaissError(
                "addIndex: dimension mismatch for newly added index; expecting dim "
                f"{self.d}, new index has dim {d}"
            )
        if self._subs:
            if int(index.metric_type) != int(self._subs[0].metric_type):
                raise FaissError(
                    "addIndex: newly added index is of different metric type than old index"
                )
            if any(sub is index for sub in self._subs):
                raise FaissError(
                    "addIndex: attempting to add index that is already in the collection"
                )
        self._subs.append(index)
        try:
            self._after_add(index)
        except Exception:
            self._subs.pop()
            raise

    def removeIndex(self, index: Any) -> None:
        for i, sub in enumerate(self._subs):
            if sub is index:
                del self._subs[i]
                self.syncWithSubIndexes()
                return
        raise FaissError(f"{self.faiss_name}::removeIndex: index not found")

    def at(self, i: int) -> Any:
        """The ``i``-th sub-index: the object that was added."""
        if not 0 <= int(i) < len(self._subs):
            raise FaissError(f"{self.faiss_name}::at: index {i} out of bounds")
        return self._subs[int(i)]

    def count(self) -> int:
        return len(self._subs)

    def _after_add(self, index: Any) -> None:
        self.syncWithSubIndexes()

    @abstractmethod
    def syncWithSubIndexes(self) -> None:
        """Re-read ``ntotal``, ``is_trained`` and ``metric_type`` from the sub-indices."""

    def _states(self) -> list[tuple[int, bool, int]]:
        return self._run(lambda _i, sub: _state(sub))

    # -- running on every sub-index -----------------------------------------------------------
    def _run(self, fn: Callable[[int, Any], Any], subs: Sequence[Any] | None = None) -> list[Any]:
        """``fn(i, sub)`` for every sub-index, in order or concurrently (``threaded``); the
        results in order. Every call finishes before the first failure is raised, as faiss's
        ``runOnIndex`` waits for all its workers."""
        subs = self._subs if subs is None else subs
        if not self._threaded or len(subs) < 2:
            results, errors = [], []
            for i, sub in enumerate(subs):
                try:
                    results.append(fn(i, sub))
                except Exception as exc:  # faiss runs the others to completion too
                    errors.append(exc)
            if errors:
                raise errors[0]
            return results
        pool = self._executor(len(subs))
        futures = [pool.submit(_acknowledged, fn, i, sub) for i, sub in enumerate(subs)]
        wait(futures)  # every call finishes before one's error is raised
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _executor(self, workers: int) -> ThreadPoolExecutor:
        """One pool per wrapper, grown to one thread per sub-index: its threads (and their
        sockets) are reused from call to call, and go when the wrapper is collected."""
        with self._pool_lock:
            pool = self._pool
            if pool is None or pool._max_workers < workers:
                if pool is not None:
                    pool.shutdown(wait=False)
                pool = ThreadPoolExecutor(workers, thread_name_prefix=self.faiss_name)
                weakref.finalize(self, pool.shutdown, wait=False)
                self._pool = pool
            return pool

    # -- arguments ---------------------------------------------------------------------------
    def _rows(self, x: Any) -> np.ndarray:
        """Rows as faiss's wrappers take them: float32, or uint8 codes of d bits."""
        if self.binary:
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
                raise InvalidArgument("binary codes must be an ndarray of dtype uint8")
            width = (self.d + 7) // 8
        else:
            x = np.asarray(x, dtype="float32")
            width = self.d
        if x.ndim != 2 or x.shape[1] != width:
            raise InvalidArgument(f"expected rows of width {width}, got shape {x.shape}")
        return np.ascontiguousarray(x)

    @staticmethod
    def _k(k: Any) -> int:
        if int(k) != k or k <= 0:
            raise InvalidArgument(f"k must be a positive integer, got {k!r}")
        return int(k)

    def _need_subs(self, what: str) -> None:
        if not self._subs:  # faiss aborts the process here; a clear error is kinder
            raise FaissError(f"{self.faiss_name}.{what}: it holds no sub-index yet")

    # -- faiss methods common to both -------------------------------------------------------------
    @property
    def code_size(self) -> int:
        """Bytes per code (binary wrappers)."""
        if not self.binary:
            raise AttributeError(f"{self.faiss_name!r} object has no attribute 'code_size'")
        return (self.d + 7) // 8

    def train(self, x: Any) -> None:
        x = self._rows(x)
        self._run(lambda _i, sub: sub.train(x))
        self.syncWithSubIndexes()

    def reset(self) -> None:
        self._run(lambda _i, sub: sub.reset())
        self.syncWithSubIndexes()

    def assign(self, x: Any, k: int, labels: np.ndarray | None = None) -> np.ndarray:
        _, I = self.search(x, k)
        if labels is not None:
            labels[...] = I
            return labels
        return I

    def _unsupported(self, what: str) -> UnsupportedOperation:
        return UnsupportedOperation(
            f"{what} not implemented for {self.faiss_name} (faiss does not implement it either)"
        )

    def remove_ids(self, x: Any) -> int:
        raise self._unsupported("remove_ids")

    def range_search(self, x: Any, thresh: float, *, params: Any = None) -> Any:
        raise self._unsupported("range search")

    @abstractmethod
    def search(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of each row of ``x``, as faiss's wrapper finds them."""

    def __reduce__(self) -> Any:
        raise UnsupportedOperation(
            f"{self.faiss_name} cannot be pickled (faiss cannot serialize it either): "
            "pickle its sub-indices (index.at(i)) one by one"
        )

    def __repr__(self) -> str:
        return f"<{self.faiss_name} of {len(self._subs)} sub-indices, d={self.d}>"


def _is_binary(index: Any) -> bool:
    """Whether ``index`` holds binary codes: a faiss IndexBinary, a binary proxy or wrapper."""
    if isinstance(index, RemoteIndex):
        return index._binary()
    if isinstance(index, ThreadedIndex):
        return index.binary
    return isinstance(index, faiss.IndexBinary)


class IndexShards(ThreadedIndex):
    """faiss's ``IndexShards`` over any indices: each holds a slice of the vectors."""

    faiss_name = "IndexShards"

    def __init__(self, d: int = 0, threaded: bool = False, successive_ids: bool = True) -> None:
        super().__init__(d, threaded)
        self.successive_ids = bool(successive_ids)

    add_shard = ThreadedIndex.addIndex
    remove_shard = ThreadedIndex.removeIndex

    def syncWithSubIndexes(self) -> None:
        """faiss's rule: all shards share the metric, ``d`` and training state; the wrapper's
        ``ntotal`` is their sum."""
        if not self._subs:
            self.is_trained, self.ntotal = False, 0
            return
        states = self._states()
        ntotal, trained, metric = states[0]
        for n, t, m in states[1:]:
            if m != metric or t != trained:
                raise FaissError(
                    f"{self.faiss_name}: every shard must have the same metric and training "
                    f"state (shard 0: metric {metric}, trained {trained}; another: {m}, {t})"
                )
            ntotal += n
        self.metric_type, self.is_trained, self.ntotal = metric, trained, ntotal

    def add(self, x: Any) -> None:
        self._add(self._rows(x), None)

    def add_with_ids(self, x: Any, ids: Any) -> None:
        x = self._rows(x)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) != len(x):
            raise InvalidArgument(f"ids has {len(ids)} ids for {len(x)} vectors")
        self._add(x, ids)

    def _add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        if self.successive_ids:
            if ids is not None:
                raise FaissError("It makes no sense to pass in ids and request them to be shifted")
            if self.ntotal != 0:
                raise FaissError(
                    "when adding to IndexShards with successive_ids, only add() in a single "
                    "pass is supported"
                )
        elif ids is None:
            ids = np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64)
        n, nshard = len(x), len(self._subs)

        def add(no: int, sub: Any) -> None:
            i0, i1 = no * n // nshard, (no + 1) * n // nshard
            if ids is not None:
                sub.add_with_ids(x[i0:i1], ids[i0:i1])
            else:
                sub.add(x[i0:i1])

        self._run(add)
        self.syncWithSubIndexes()

    def _translations(self, totals: Sequence[int]) -> list[int]:
        if not self.successive_ids:
            return [0] * len(totals)
        return [int(t) for t in np.concatenate([[0], np.cumsum(totals)[:-1]])]

    def search(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's top-k, merged; ids shifted by the shards before when
        ``successive_ids`` (each shard's ``ntotal`` read as it is searched, as faiss does)."""
        x, k = self._rows(x), self._k(k)
        self._need_subs("search")
        succ = self.successive_ids

        def one(_i: int, sub: Any) -> tuple[int, np.ndarray, np.ndarray]:
            total = _state(sub)[0] if succ else 0
            d, i = sub.search(x, k) if params is None else sub.search(x, k, params=params)
            return total, d, i

        parts = self._run(one)
        Dm, Im = merge_knn(
            [(d, i) for _, d, i in parts],
            self._translations([t for t, _, _ in parts]),
            keep_max=self._keep_max(),
        )
        return _into(D, Dm), _into(I, Im)

    def _keep_max(self) -> bool:
        similar = faiss.is_similarity_metric  # type: ignore[attr-defined]  # faiss's stubs lack it
        return not self.binary and bool(similar(int(self.metric_type)))

    def reconstruct(self, key: int, x: np.ndarray | None = None) -> np.ndarray:
        raise self._unsupported("reconstruct")

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: np.ndarray | None = None) -> np.ndarray:
        raise self._unsupported("reconstruct")


class IndexReplicas(ThreadedIndex):
    """faiss's ``IndexReplicas`` over any indices: each holds all the vectors."""

    faiss_name = "IndexReplicas"

    def __init__(self, d: int = 0, threaded: bool = True) -> None:
        super().__init__(d, threaded)

    add_replica = ThreadedIndex.addIndex
    remove_replica = ThreadedIndex.removeIndex

    def _after_add(self, index: Any) -> None:
        if len(self._subs) == 1:
            self.syncWithSubIndexes()
            return
        first, new = _state(self._subs[0]), _state(index)
        if new[0] != first[0]:
            raise FaissError(
                "IndexReplicas: newly added index does not have same number of vectors as "
                f"prior index; prior index has {first[0]} vectors, new index has {new[0]}"
            )
        if new[1] != first[1]:
            raise FaissError(
                "IndexReplicas: newly added index does not have same train status as prior index"
            )

    def syncWithSubIndexes(self) -> None:
        """faiss's rule: the wrapper reports its first replica."""
        if not self._subs:
            self.is_trained, self.ntotal = False, 0
            return
        self.ntotal, self.is_trained, self.metric_type = _state(self._subs[0])

    def add(self, x: Any) -> None:
        x = self._rows(x)
        self._run(lambda _i, sub: sub.add(x))
        self.syncWithSubIndexes()

    def add_with_ids(self, x: Any, ids: Any) -> None:
        x = self._rows(x)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) != len(x):
            raise InvalidArgument(f"ids has {len(ids)} ids for {len(x)} vectors")
        self._run(lambda _i, sub: sub.add_with_ids(x, ids))
        self.syncWithSubIndexes()

    def search(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The queries in ``count()`` slices of ``ceil(n / count)``, one slice per replica."""
        if params is not None:
            raise UnsupportedOperation("search params not supported for this index")
        x, k = self._rows(x), self._k(k)
        self._need_subs("search")
        n = len(x)
        per = -(-n // len(self._subs)) if n else 0
        slices = [(i * per, min(n, (i + 1) * per)) for i in range(len(self._subs))]
        busy = [(lo, hi, sub) for (lo, hi), sub in zip(slices, self._subs, strict=True) if lo < hi]
        parts = self._run(
            lambda i, sub: sub.search(x[busy[i][0] : busy[i][1]], k), [s for _, _, s in busy]
        )
        dtype = np.int32 if self.binary else np.float32
        Dout = np.concatenate([d for d, _ in parts]) if parts else np.empty((0, k), dtype)
        Iout = np.concatenate([i for _, i in parts]) if parts else np.empty((0, k), np.int64)
        return _into(D, Dout), _into(I, Iout)

    def reconstruct(self, key: int, x: np.ndarray | None = None) -> np.ndarray:
        """From the first replica, as faiss does."""
        self._need_subs("reconstruct")
        return _into(x, self._subs[0].reconstruct(int(key)))

    def reconstruct_n(self, n0: int = 0, ni: int = -1, x: np.ndarray | None = None) -> np.ndarray:
        self._need_subs("reconstruct_n")
        if ni == -1:
            ni = self.ntotal - n0
        return _into(x, self._subs[0].reconstruct_n(n0, ni))


class IndexShardsIVF(IndexShards):
    """faiss's ``IndexShardsIVF``: IVF shards that share one coarse quantizer.

    A search probes the wrapper's quantizer once and every shard scans the lists it chose
    (``search_preassigned``); ``add`` assigns every vector with that quantizer too (a local
    faiss shard takes the assignment with ``add_core``; a remote shard assigns with its own
    quantizer, so ``add`` first checks that it holds the shared centroids). ``train``
    trains the quantizer (k-means with ``cp`` unless it already holds ``nlist`` centroids) and
    gives every shard the same centroids.
    """

    faiss_name = "IndexShardsIVF"

    def __init__(
        self, quantizer: Any, nlist: int, threaded: bool = False, successive_ids: bool = True
    ) -> None:
        super().__init__(int(quantizer.d), threaded, successive_ids)
        self.quantizer = quantizer
        self.nlist = int(nlist)
        self.cp = _level1_cp()
        self.quantizer_trains_alone = 0
        self.metric_type = int(quantizer.metric_type)
        self.is_trained = bool(quantizer.is_trained) and int(quantizer.ntotal) == self.nlist

    def addIndex(self, index: Any) -> None:
        try:
            nlist = int(index.nlist)
        except AttributeError:
            raise FaissError("IndexShardsIVF: can only add IndexIVFs") from None
        if nlist != self.nlist:
            raise FaissError(
                f"IndexShardsIVF: the shard has nlist={nlist}, the wrapper {self.nlist}"
            )
        super().addIndex(index)

    add_shard = addIndex

    # -- training: the shared quantizer, then every shard ---------------------------------------
    def train(self, x: Any) -> None:
        x = self._rows(x)
        self._train_quantizer(x)
        centroids = np.ascontiguousarray(self.quantizer.reconstruct_n(0, self.nlist))

        def finish(no: int, sub: Any) -> None:
            if isinstance(sub, RemoteIndex):
                self._train_remote_shard(no, sub, x, centroids)
                return
            quantizer = faiss.extract_index_ivf(sub).quantizer
            if not quantizer.is_trained:
                quantizer.train(centroids)
            quantizer.add(centroids)
            sub.train(x)

        self._run(finish)
        self.syncWithSubIndexes()
        self.is_trained = True

    def _train_quantizer(self, x: np.ndarray) -> None:
        """faiss's ``Level1Quantizer::train_q1`` on whatever the quantizer is."""
        q = self.quantizer
        if bool(q.is_trained) and int(q.ntotal) == self.nlist:
            return
        if self.quantizer_trains_alone == 1:
            q.train(x)
            return
        if self.quantizer_trains_alone != 0:
            raise UnsupportedOperation(
                f"IndexShardsIVF with quantizer_trains_alone={self.quantizer_trains_alone} "
                "is not supported over remote indices"
            )
        if isinstance(q, faiss.Index):  # a local faiss quantizer: faiss's k-means here
            q.reset()
            faiss.Clustering(self.d, self.nlist, self.cp).train(x, q)
            q.is_trained = True
            return
        if not isinstance(q, RemoteIndex):
            raise UnsupportedOperation(
                f"IndexShardsIVF cannot train its quantizer {q!r}: a part of another remote "
                "index is trained with that index (train it, or give a quantizer of its own)"
            )
        q.reset()
        q.add(self._remote_kmeans(q, x))

    def _remote_kmeans(self, q: RemoteIndex, x: np.ndarray) -> np.ndarray:
        """faiss's k-means with ``cp``, run on the server: a scratch remote IVF over a copy of
        the quantizer trains (that is ``train_q1``) and hands back its centroids."""
        import faissx_client  # the drop-in classes (the package imports this module)

        ivf_class: Any = vars(faissx_client)["IndexIVFFlat"]  # generated at import
        scratch = ivf_class(q, self.d, self.nlist, int(q.metric_type))
        self._copy_cp(scratch)
        scratch.train(x)
        return np.ascontiguousarray(scratch.quantizer.reconstruct_n(0, self.nlist))

    def _copy_cp(self, ivf: RemoteIndex) -> None:
        """Give a remote IVF the wrapper's clustering parameters (a member the server may not
        set, such as ``init_method``, is refused if it differs)."""
        remote_cp = ivf.cp
        for name in _cp_fields(self.cp):
            mine = getattr(self.cp, name)
            if getattr(remote_cp, name) != mine:
                setattr(remote_cp, name, mine)

    def _train_remote_shard(
        self, no: int, sub: RemoteIndex, x: np.ndarray, centroids: np.ndarray
    ) -> None:
        """A remote shard's quantizer lives on the server, where nothing but training fills
        it: the shard trains on the same rows with the wrapper's clustering parameters, so
        its k-means finds the same centroids -- which is checked, so that a shard never
        searches lists other than the ones the shared quantizer chose."""
        quantizer = sub.quantizer
        if not (bool(quantizer.is_trained) and int(quantizer.ntotal) == self.nlist):
            self._copy_cp(sub)
        sub.train(x)
        self._check_centroids(no, sub, centroids, "trained to")

    def _check_centroids(self, no: int, sub: RemoteIndex, centroids: np.ndarray, did: str) -> None:
        """FaissError unless the remote shard's quantizer holds the shared centroids: it assigns
        what it adds itself, so it must assign as the shared quantizer would."""
        quantizer = sub.quantizer
        same = int(quantizer.ntotal) == self.nlist and np.array_equal(
            np.asarray(quantizer.reconstruct_n(0, self.nlist)), centroids
        )
        if not same:
            raise FaissError(
                f"IndexShardsIVF: remote shard {no} {did} other centroids than the shared "
                "quantizer; a remote shard assigns the vectors it adds with its own quantizer, "
                "so they must agree (train the wrapper, or build the shards over the trained "
                "quantizer, e.g. IndexIVFFlat(quantizer, d, nlist))"
            )

    # -- add and search through the shared quantizer ----------------------------------------------
    def _add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        if not all(isinstance(sub, RemoteIndex) or hasattr(sub, "add_core") for sub in self._subs):
            super()._add(x, ids)  # faiss's rule: add_core only when every shard is an IndexIVF
            return
        if self.successive_ids and ids is not None:
            raise FaissError("It makes no sense to pass in ids and request them to be shifted")
        if self.successive_ids and self.ntotal != 0:
            raise FaissError(
                "when adding to IndexShards with successive_ids, only add() in a single "
                "pass is supported"
            )
        if ids is None and not self.successive_ids:
            ids = np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64)
        local = [sub for sub in self._subs if not isinstance(sub, RemoteIndex)]
        Iq = np.ascontiguousarray(self.quantizer.assign(x, 1).reshape(-1)) if local else None
        if len(local) < len(self._subs):
            if int(self.quantizer.ntotal) != self.nlist:
                raise FaissError(
                    f"IndexShardsIVF: the shared quantizer holds {int(self.quantizer.ntotal)} "
                    f"centroids for {self.nlist} lists: train it first"
                )
            centroids = np.asarray(self.quantizer.reconstruct_n(0, self.nlist))
            self._run(
                lambda no, sub: (
                    self._check_centroids(no, sub, centroids, "holds")
                    if isinstance(sub, RemoteIndex)
                    else None
                )
            )
        n, nshard = len(x), len(self._subs)

        def add(no: int, sub: Any) -> None:
            i0, i1 = no * n // nshard, (no + 1) * n // nshard
            part = np.ascontiguousarray(x[i0:i1])
            part_ids = None if ids is None else np.ascontiguousarray(ids[i0:i1])
            if isinstance(sub, RemoteIndex):
                if part_ids is None:
                    sub.add(part)
                else:
                    sub.add_with_ids(part, part_ids)
                return
            assert Iq is not None
            assigned = np.ascontiguousarray(Iq[i0:i1])
            sub.add_core(
                i1 - i0,
                faiss.swig_ptr(part),
                None if part_ids is None else faiss.swig_ptr(part_ids),
                faiss.swig_ptr(assigned),
            )

        self._run(add)
        self.syncWithSubIndexes()

    def search(
        self,
        x: Any,
        k: int,
        *,
        params: Any = None,
        D: np.ndarray | None = None,
        I: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        x, k = self._rows(x), self._k(k)
        self._need_subs("search")
        nprobe = int(params.nprobe if params is not None else self._subs[0].nprobe)
        Dq, Iq = self.quantizer.search(x, nprobe)
        Dq = np.ascontiguousarray(Dq, dtype=np.float32)
        Iq = np.ascontiguousarray(Iq, dtype=np.int64)
        succ = self.successive_ids

        def one(_i: int, sub: Any) -> tuple[int, np.ndarray, np.ndarray]:
            total = _state(sub)[0] if succ else 0
            extra = {} if params is None else {"params": params}
            d, i = sub.search_preassigned(x, k, Iq, Dq, **extra)
            return total, d, i

        parts = self._run(one)
        Dm, Im = merge_knn(
            [(d, i) for _, d, i in parts],
            self._translations([t for t, _, _ in parts]),
            keep_max=self._keep_max(),
        )
        return _into(D, Dm), _into(I, Im)


def _cp_fields(cp: Any) -> list[str]:
    return [n for n in dir(cp) if not n.startswith("_") and n not in ("this", "thisown")]


def _level1_cp() -> Any:
    """A copy of the clustering parameters faiss's IVF quantizers start with (``niter`` is 10
    there, not ClusteringParameters' 25), read from faiss rather than restated."""
    level1 = faiss.Level1Quantizer(faiss.IndexFlatL2(1), 1)  # type: ignore[attr-defined]  # faiss's stubs lack it
    cp = faiss.ClusteringParameters()
    for name in _cp_fields(cp):
        setattr(cp, name, getattr(level1.cp, name))
    return cp


class IndexBinaryShards(IndexShards):
    faiss_name = "IndexBinaryShards"
    binary = True


class IndexBinaryReplicas(IndexReplicas):
    faiss_name = "IndexBinaryReplicas"
    binary = True


def _into(dest: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """Honour faiss's optional output arrays (``D=``, ``I=``, ``x=``)."""
    if dest is None:
        return result
    if dest.shape != result.shape:
        raise InvalidArgument(f"output array has shape {dest.shape}, result is {result.shape}")
    dest[...] = result
    return dest


#: faiss's wrapper classes this module stands in for, by name.
WRAPPERS: dict[str, type[ThreadedIndex]] = {
    cls.faiss_name: cls
    for cls in (IndexShards, IndexReplicas, IndexShardsIVF, IndexBinaryShards, IndexBinaryReplicas)
}


class WrapperDropIn(type):
    """Metaclass of the drop-in names: faiss's own class in local mode, the wrapper of this
    module in remote mode; ``isinstance`` accepts either."""

    _faiss_cls: type
    _wrapper: type[ThreadedIndex]
    _current: Callable[[], Any]

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls._current() is None:
            return cls._faiss_cls(*args, **kwargs)
        if cls._wrapper is not IndexShardsIVF and args and isinstance(args[0], bool):
            args = (0, *args)  # faiss's overload without d: the first sub-index sets it
        return cls._wrapper(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._faiss_cls | cls._wrapper)

    def __getattr__(cls, name: str) -> Any:
        value = getattr(type.__getattribute__(cls, "_faiss_cls"), name, None)
        if not name.startswith("_") and isinstance(value, int | float | str):
            return value
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")


def drop_in(name: str, current: Callable[[], Any]) -> type:
    """The drop-in class ``name`` (``IndexShards``...); ``current()`` is the remote client or
    None in local mode."""
    wrapper = WRAPPERS[name]
    return WrapperDropIn(
        name,
        (),
        {
            "_faiss_cls": getattr(faiss, name),
            "_wrapper": wrapper,
            "_current": staticmethod(current),
            "__doc__": wrapper.__doc__,
            "__module__": "faissx_client",
        },
    )
