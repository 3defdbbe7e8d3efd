"""Index modification: merge several indices into one, split one into several.

Also reachable as ``faissx.client.modification`` (the same module object).

Both functions leave their inputs unchanged and return new indices of the same kind as the
inputs: local faiss objects in local mode, remote indices in remote mode. Remote inputs are
merged and split on the server, with the server's own operations: a copy of an index is made by
downloading its faiss bytes once and importing them (``serialize`` / ``import``), vectors move
between indices with ``merge_from``, parts are cut with ``remove_ids``, and ``export`` lists the
stored ids (and, where needed, vectors). Nothing runs on a local faiss copy. The one exception,
stated rather than silent: ``split_method="cluster"`` runs faiss's k-means in this process on
the vectors it fetched, to decide which part each vector goes to.

**Ids.** As with faiss's ``merge_from``: index types that store ids (id maps, IVF lists) keep
them, so parts split from one index merge back to it exactly; positional types (Flat, PQ, SQ,
HNSW) number the merged vectors in input order, and each part of a split renumbers its own
vectors from 0, in the original order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np

from faissx_client import gpu as _gpu
from faissx_client import optimization as _opt
from faissx_core.errors import InvalidArgument, UnsupportedOperation
from faissx_core.introspect import export_vectors, index_bytes, keeps_ids

__all__ = ["merge_indices", "split_index"]

SPLIT_METHODS = ("sequential", "cluster", "custom")
#: Largest reply of one ``export`` request (ids and vectors) when fetching a remote index.
EXPORT_PAGE_BYTES = 32 << 20
#: k-means of ``split_method="cluster"``: fixed seed, so a split is reproducible.
KMEANS_SEED = 1234
KMEANS_ITERATIONS = 20

_LOCAL = (faiss.Index, faiss.IndexBinary)


def _remote(index: Any) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


def _cpu(index: Any) -> Any:
    return _gpu.to_cpu(index) if _gpu.is_gpu(index) else index


def _binary(index: Any) -> bool:
    if _remote(index):
        return index._binary()
    return isinstance(_cpu(index), faiss.IndexBinary)


# -- the primitives, local or remote ---------------------------------------------------------


def _copy(index: Any, name: str | None = None) -> Any:
    """A new index with the same contents (remote: on the server, named ``name`` if given)."""
    if _remote(index):
        from faissx_client import _upload

        spec = index.spec.model_dump() if index.spec.type != "ref" else None
        return _upload(index._client, index.serialize(), name, spec)
    cpu = _cpu(index)
    _opt.memory_manager.check_create(index_bytes(cpu))
    clone = faiss.clone_binary_index if isinstance(cpu, faiss.IndexBinary) else faiss.clone_index  # type: ignore[attr-defined]  # faiss's stubs lack it
    return _opt.adopt_local(clone(cpu))


def _export(index: Any, vectors: bool) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(ids, vectors or None, whether the index keeps its ids): introspect.export_vectors,
    run where the index lives."""
    if _remote(index):  # in pages of at most EXPORT_PAGE_BYTES each
        row = (index.d // 8 if _binary(index) else index.d * 4) if vectors else 0
        page = max(1, EXPORT_PAGE_BYTES // (row + 8))
        ids, xs, start, kept, total = [], [], 0, False, None
        while total is None or start < total:
            result, arrays = index._call(
                "export", {"vectors": vectors, "start": start, "count": page}
            )
            total, kept = int(result["ntotal"]), bool(result["keeps_ids"])
            ids.append(arrays["ids"])
            if vectors:
                xs.append(arrays["x"])
            start += page
        return (np.concatenate(ids), np.concatenate(xs) if vectors else None, kept)
    cpu = _cpu(index)
    return (*export_vectors(cpu, vectors), keeps_ids(cpu))


def _not_supported(exc: Exception) -> bool:
    if isinstance(exc, UnsupportedOperation):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("not implemented" in text or "not supported" in text)


def _incompatible(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "same type" in text or "check_compatible_for_merge" in text
    )


def _merge_from(target: Any, source: Any) -> None:
    """faiss's ``target.merge_from(source)`` (which empties ``source``)."""
    target.merge_from(source, 0)


def _add(target: Any, x: np.ndarray, ids: np.ndarray, batch_size: int | None = None) -> None:
    """Add with the given ids where the target stores ids; by position otherwise; in requests
    of at most ``batch_size`` rows when given (else the index's own batching applies)."""
    step = batch_size or max(len(x), 1)
    for start in range(0, len(x), step):
        part, part_ids = x[start : start + step], ids[start : start + step]
        try:
            target.add_with_ids(part, part_ids)
        except Exception as exc:
            if not _not_supported(exc):
                raise
            target.add(part)  # a positional type: the vectors take the next positions


def _kind(index: Any) -> str:
    """The faiss class an index is (``IndexIDMap2``, ``IndexFlatL2``, ...): faiss merges only
    indices of one class (its ``check_compatible_for_merge``)."""
    if _remote(index):
        info = index._info or index._fetch()
        return str(info.get("faiss_class") or type(index).__name__)
    cpu = _cpu(index)
    down = (
        faiss.downcast_IndexBinary(cpu)
        if isinstance(cpu, faiss.IndexBinary)
        else faiss.downcast_index(cpu)
    )
    return type(down).__name__


def _is_id_map(index: Any) -> bool:
    return _kind(index) in ("IndexIDMap", "IndexIDMap2", "IndexBinaryIDMap", "IndexBinaryIDMap2")


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise InvalidArgument(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def merge_into(target: Any, sources: Sequence[Any], batch_size: int | None = None) -> None:
    """Add the vectors of ``sources`` (left unchanged) to ``target``, in place.

    A source of the target's faiss class is merged with faiss's ``merge_from`` (of a copy, on
    the server for remote indices), which keeps stored ids; any other source, or one whose type
    faiss cannot merge (HNSW), has its vectors added: with its own ids where it stores ids,
    else numbered by position after the vectors already there (as the original FAISSx did for
    an id-mapped result)."""
    sources = list(sources)
    _check_same([target, *sources])
    kind = _kind(target)
    for source in sources:
        if _kind(source) == kind:
            copy = _copy(source)
            try:
                _merge_from(target, copy)
                continue
            except Exception as exc:
                # faiss checks compatibility before it moves anything: an IndexFlat and the
                # IndexFlatL2 its bytes load as are "not the same type" to it
                if not (_not_supported(exc) or _incompatible(exc)):
                    raise
            finally:
                del copy  # a remote copy is dropped from the server when collected
        ids, x, kept = _export(source, True)
        assert x is not None  # asked for the vectors
        _add(target, x, ids if kept else ids + target.ntotal, batch_size)


def _check_same(indices: Sequence[Any]) -> None:
    if not indices:
        raise InvalidArgument("merge_indices needs at least one index")
    for index in indices:
        if not (_remote(index) or isinstance(index, _LOCAL)):
            raise InvalidArgument(f"expected faiss or remote indices, got {type(index).__name__}")
    kinds = {_remote(i) for i in indices}
    if len(kinds) > 1:
        raise InvalidArgument(
            "merge_indices cannot mix local and remote indices; copy one side "
            "over first (serialize_index / deserialize_index)"
        )
    first = indices[0]
    for number, index in enumerate(indices[1:], 1):
        if _remote(index) and index._client is not first._client:
            raise InvalidArgument("remote indices to merge must be on the same server")
        if (index.d, index.metric_type, _binary(index)) != (
            first.d,
            first.metric_type,
            _binary(first),
        ):
            raise InvalidArgument(
                f"index {number} (d={index.d}, metric={index.metric_type}) does not match index "
                f"0 (d={first.d}, metric={first.metric_type})"
            )


# -- merge -------------------------------------------------------------------------------------


def merge_indices(
    indices: Sequence[Any],
    output_type: Any = None,
    id_map: bool = False,
    id_map2: bool = False,
    batch_size: int | None = None,
    *,
    name: str | None = None,
) -> Any:
    """A new index holding the vectors of every index in ``indices`` (which stay unchanged).

    ``output_type=None``: the result has the structure of the first index (a copy of it, into
    which the others go as :func:`merge_into` says: faiss's ``merge_from`` for indices of the
    first one's class, their vectors added for other classes, such as a flat index merged
    with id maps). IVF indices merged with ``merge_from`` must share their coarse quantizer
    (parts of one split do). ``output_type`` may instead be an ``index_factory`` description
    (``"IVF256,PQ16"``; trained on the merged vectors when it needs training) or an index
    object to fill. ``name`` names a remote result.

    The original FAISSx's keywords: ``id_map=True`` / ``id_map2=True`` wrap the result in an
    ``IndexIDMap`` / ``IndexIDMap2`` that keeps the inputs' ids (vectors of inputs without
    ids are numbered by their position in the result); when ``output_type`` is None and the
    first index already is an id map, the result is of its class and these are not needed.
    ``batch_size`` is the most rows sent in one add request where vectors are added.
    """
    indices = list(indices)
    _check_same(indices)
    batch_size = _check_batch_size(batch_size)
    if (id_map or id_map2) and not (output_type is None and _is_id_map(indices[0])):
        return _merge_into(
            indices, _id_map_target(indices[0], output_type, id_map2, name), None, batch_size
        )
    if output_type is None:
        result = _copy(indices[0], name)
        merge_into(result, indices[1:], batch_size)
        return result
    return _merge_into(indices, output_type, name, batch_size)


def _id_map_target(first: Any, output_type: Any, id_map2: bool, name: str | None) -> Any:
    """An empty IndexIDMap(2) over ``output_type`` (default: the first index's structure)."""
    import faissx_client

    if output_type is None:
        base = _copy(first)
        base.reset()  # the structure and training of the first index, without its vectors
    elif isinstance(output_type, str):
        base = (
            faissx_client.index_binary_factory(first.d, output_type)
            if _binary(first)
            else faissx_client.index_factory(first.d, output_type, first.metric_type)
        )
    else:
        raise InvalidArgument(
            "with id_map / id_map2, output_type must be None or an "
            f"index_factory description, not {type(output_type).__name__}"
        )
    wrapper: Any  # a faissx_client index class
    if _binary(first):
        wrapper = faissx_client.IndexBinaryIDMap2 if id_map2 else faissx_client.IndexBinaryIDMap
    else:
        wrapper = faissx_client.IndexIDMap2 if id_map2 else faissx_client.IndexIDMap
    named = {"name": name} if name is not None and _remote(first) else {}
    return wrapper(base, **named)


def _merge_into(
    indices: list[Any], output_type: Any, name: str | None, batch_size: int | None = None
) -> Any:
    first = indices[0]
    if isinstance(output_type, str):
        from faissx_client import index_binary_factory, index_factory

        remote_name: dict[str, Any] = {"name": name} if _remote(first) else {}
        if _binary(first):
            target = index_binary_factory(first.d, output_type, **remote_name)
        else:
            target = index_factory(first.d, output_type, first.metric_type, **remote_name)
    elif _remote(output_type) or isinstance(output_type, _LOCAL):
        target = output_type
        if _remote(target) != _remote(first):
            raise InvalidArgument("output index and inputs must all be local or all remote")
    else:
        raise InvalidArgument(
            f"output_type must be None, an index_factory description or an "
            f"index, not {type(output_type).__name__}"
        )
    exported, offset = [], 0
    for index in indices:
        ids, x, kept = _export(index, True)
        exported.append((ids if kept else ids + offset, x))
        offset += len(ids)
    all_x = np.concatenate([x for _, x in exported])
    if not target.is_trained:
        target.train(all_x)
    _add(target, all_x, np.concatenate([ids for ids, _ in exported]), batch_size)
    return target


# -- split -------------------------------------------------------------------------------------


def split_index(
    index: Any,
    num_parts: int = 2,
    split_method: str = "sequential",
    custom_split_fn: Callable[..., Any] | None = None,
    output_type: str | None = None,
    preserve_ids: bool = True,
    batch_size: int | None = None,
    *,
    custom_fn: Callable[..., Any] | None = None,
    names: Sequence[str] | None = None,
) -> list[Any]:
    """``num_parts`` new indices that share out the vectors of ``index`` (left unchanged).

    ``split_method``:

    * ``"sequential"``: contiguous runs of nearly equal size, in stored order (insertion order;
      ascending ids for IVF).
    * ``"cluster"``: k-means with ``num_parts`` centroids over the vectors (faiss's ``Kmeans``,
      seeded, run in this process); each vector goes to its nearest centroid's part.
    * ``"custom"``: ``custom_fn(vectors)`` or ``custom_fn(vectors, ids)`` returns the part
      number (0 to num_parts - 1) of each vector, given in stored order.

    Each part is a copy of ``index`` (same structure and training) with the other parts'
    vectors removed; ``names`` names remote parts.

    The original FAISSx's keywords: ``custom_split_fn`` is ``custom_fn`` (the function to
    split with); ``output_type`` (an ``index_factory`` description) makes each part an index of
    that type instead, trained on all the vectors of ``index`` (so the parts share their
    training); ``preserve_ids=False`` numbers each part's vectors from 0 even where the index
    stores ids; ``batch_size`` is the most rows sent in one add request.
    """
    if custom_split_fn is not None:
        if custom_fn is not None:
            raise InvalidArgument("give custom_fn or custom_split_fn, not both")
        custom_fn = custom_split_fn
    batch_size = _check_batch_size(batch_size)
    if not isinstance(preserve_ids, bool | np.bool_):
        raise InvalidArgument(f"preserve_ids must be True or False, got {preserve_ids!r}")
    if output_type is not None and not isinstance(output_type, str):
        raise InvalidArgument(
            "output_type must be None or an index_factory description, not "
            f"{type(output_type).__name__}"
        )
    if not (_remote(index) or isinstance(index, _LOCAL)):
        raise InvalidArgument(f"expected a faiss or remote index, got {type(index).__name__}")
    if isinstance(num_parts, bool) or not isinstance(num_parts, int | np.integer) or num_parts < 1:
        raise InvalidArgument(f"num_parts must be an integer >= 1, got {num_parts!r}")
    if split_method not in SPLIT_METHODS:
        raise InvalidArgument(
            f"split_method must be one of {', '.join(SPLIT_METHODS)}, got {split_method!r}"
        )
    if (split_method == "custom") != (custom_fn is not None):
        raise InvalidArgument("custom_fn goes with split_method='custom', and only with it")
    if names is not None and (not _remote(index) or len(names) != num_parts):
        raise InvalidArgument("names: one name per part, for remote indices")
    exported = _export(index, vectors=split_method != "sequential")
    ids = exported[0]
    labels = _labels(split_method, int(num_parts), ids, exported[1], custom_fn)

    def with_vectors() -> tuple[np.ndarray, np.ndarray | None, bool]:
        nonlocal exported
        if exported[1] is None:
            exported = _export(index, vectors=True)
        return exported

    parts = []
    if output_type is not None or not preserve_ids:
        _, x, kept = with_vectors()
        assert x is not None
        template = _split_template(index, output_type, x)
        for part in range(int(num_parts)):
            copy = _copy(template, names[part] if names is not None else None)
            keep = labels == part
            part_ids = ids[keep] if kept and preserve_ids else np.arange(int(keep.sum()))
            _add(copy, x[keep], part_ids.astype(np.int64), batch_size)
            parts.append(copy)
        return parts
    for part in range(int(num_parts)):
        copy = _copy(index, names[part] if names is not None else None)
        if (labels != part).any():
            _remove(copy, ids, labels == part, with_vectors, batch_size)
        parts.append(copy)
    return parts


def _split_template(index: Any, output_type: str | None, x: np.ndarray) -> Any:
    """An empty, trained index each part of a split is a copy of."""
    if output_type is None:
        template = _copy(index)
        template.reset()
        return template
    import faissx_client

    if _binary(index):
        template = faissx_client.index_binary_factory(index.d, output_type)
    else:
        template = faissx_client.index_factory(index.d, output_type, index.metric_type)
    if _remote(template) != _remote(index):
        raise InvalidArgument("split_index of a remote index needs remote mode (configure())")
    if not template.is_trained:
        template.train(x)
    return template


def _labels(
    method: str,
    num_parts: int,
    ids: np.ndarray,
    x: np.ndarray | None,
    custom_fn: Callable[..., Any] | None,
) -> np.ndarray:
    n = len(ids)
    if method == "sequential":
        labels = np.empty(n, dtype=np.int64)
        for part, run in enumerate(np.array_split(np.arange(n), num_parts)):
            labels[run] = part
        return labels
    assert x is not None
    if method == "cluster":
        if n < num_parts:
            raise InvalidArgument(f"cannot cluster {n} vectors into {num_parts} parts")
        data = (
            np.unpackbits(x, axis=1).astype(np.float32)
            if x.dtype == np.uint8
            else np.ascontiguousarray(x, dtype=np.float32)
        )
        kmeans = faiss.Kmeans(
            data.shape[1],
            num_parts,
            niter=KMEANS_ITERATIONS,
            seed=KMEANS_SEED,
            min_points_per_centroid=1,
        )
        kmeans.train(data)
        return kmeans.index.search(data, 1)[1].ravel()
    assert custom_fn is not None
    try:
        takes_ids = len(inspect.signature(custom_fn).parameters) >= 2
    except (TypeError, ValueError):
        takes_ids = False
    labels = np.asarray(custom_fn(x, ids) if takes_ids else custom_fn(x))
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(
            f"custom_fn must return {n} integer part numbers, got "
            f"{labels.dtype} array of shape {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num_parts):
        raise InvalidArgument(f"custom_fn returned part numbers outside [0, {num_parts})")
    return labels.astype(np.int64)


def _remove(
    copy: Any,
    ids: np.ndarray,
    keep: np.ndarray,
    exported: Callable[[], tuple[np.ndarray, np.ndarray | None, bool]],
    batch_size: int | None = None,
) -> None:
    """Cut a part out of a full copy: ``remove_ids`` of the other parts' ids, or, where faiss
    cannot remove (HNSW), empty the copy and add the part's vectors back."""
    try:
        copy.remove_ids(np.ascontiguousarray(ids[~keep]))
        return
    except Exception as exc:
        if not _not_supported(exc):
            raise
    _, x, kept = exported()
    assert x is not None
    copy.reset()
    part_ids = ids[keep]
    _add(copy, x[keep], part_ids if kept else np.arange(len(part_ids), dtype=np.int64), batch_size)
