"""Optimization controls: runtime parameters, batched and observable calls, memory management.

Also reachable as ``faissx.client.optimization`` (the same module object).

**Parameters.** ``index.set_parameter(name, value)`` / ``index.get_parameter(name)`` (or the
module functions :func:`set_parameter` / :func:`get_parameter`, which take the index first) work
on remote proxies and on the local faiss objects of local mode alike. The names are

* every runtime parameter a plugin declares for the index's structure (``nprobe``,
  ``max_codes``, ``efSearch``, ``efConstruction``, ``nflip``, ``search_type``,
  ``polysemous_ht``; through wrappers too, so an ``IndexIDMap`` over an HNSW has ``efSearch``),
  plus ``k_factor`` on an ``IndexRefine`` (faiss's own attribute, for ``...,RFlat`` factory
  strings);
* the client-side ``batch_size``: rows per request for ``add``, ``add_with_ids`` and ``search``
  (0, the default, sends a remote call of more than 8 MiB of vectors in even parts of about a
  quarter of it, between 4 and 16 MiB, three in flight at once, and does not split local calls).
  Remote parts are always pipelined.

An unknown name raises ``UnknownParameter`` (an ``AttributeError``) listing the known ones; a bad
value raises ``InvalidArgument`` (a ``ValueError``) with the allowed range. Values read and write
as attributes too: ``index.nprobe = 16`` and ``index.hnsw.efSearch`` are faiss's own on local
objects and go to the server on proxies; ``batch_size`` is an attribute of proxies only (faiss
objects refuse attributes they do not have).

Local faiss objects have no ``set_parameter`` method of their own. Importing the drop-in module
adds two methods, ``set_parameter`` and ``get_parameter``, to ``faiss.Index`` and
``faiss.IndexBinary`` (:func:`install_faiss_methods`). Indices the drop-in module builds in
local mode (its classes, ``index_factory``, ``read_index``, ``deserialize_index``) are the very
objects faiss builds (``type(index) is faiss.IndexFlatL2``); the first time it builds one of a
class, that class's ``add``, ``add_with_ids`` and ``search`` are wrapped (:func:`_patch_class`) so
that, for the objects FAISSx built, they honour ``batch_size``, take ``progress=True`` and check
``max_memory_usage_mb`` before calling faiss's own method; ``train`` (``progress=True``),
``remove_ids``, ``reset`` and ``merge_from`` are wrapped too, for the copy-on-write of
memory-mapped indices (:func:`before_write`). Any other object of the class (built
by plain ``faiss``, or a new wrapper from ``downcast_index``) calls straight through to faiss.
No other faiss attribute changes, and nothing is patched until the drop-in module is imported.

**Progress.** ``index.add(x, progress=True)`` (and ``search``, ``add_with_ids``) shows a rich
progress bar on stderr, one step per chunk; ``set_default("progress", True)`` or
``FAISSX_PROGRESS=1`` turns it on for every call.

**Memory** (:data:`memory_manager`): ``max_memory_usage_mb`` refuses, with ``QuotaExceeded``,
an add (or the creation of an index) that would take this client's indices past the limit,
before anything is sent or changed; ``use_memory_mapping`` makes local ``read_index`` map the file
(faiss's ``IO_FLAG_MMAP``: IVF lists; ``IO_FLAG_MMAP_IFC``: flat codes) instead of copying it;
``index_cache_size`` gives the remote vector cache (:mod:`faissx_client.cache`) room for that
many vectors. Sizes come from faiss's own containers (:mod:`faissx_core.introspect`) locally,
and from the server's ``memory_bytes`` remotely.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from faissx_client import gpu as _gpu
from faissx_client.cache import vector_cache
from faissx_core.errors import (
    InvalidArgument,
    QuotaExceeded,
    UnknownParameter,
    UnsupportedOperation,
)
from faissx_core.introspect import bytes_per_vector, core_params, index_bytes
from faissx_core.specs import RuntimeParam, params_by_structure

__all__ = [
    "CLIENT_PARAMS",
    "TRAINING_PARAMS",
    "MemoryManager",
    "get_default",
    "get_parameter",
    "install_faiss_methods",
    "memory_manager",
    "parameter_names",
    "parameters",
    "set_default",
    "set_parameter",
]

BATCH_SIZE = RuntimeParam(
    name="batch_size",
    path="batch_size",
    kind="int",
    ge=0,
    le=float(1 << 40),
    doc="rows per request for add/add_with_ids/search (0: automatic)",
)
#: Parameters the client keeps itself: they shape calls, not the index.
CLIENT_PARAMS: dict[str, RuntimeParam] = {BATCH_SIZE.name: BATCH_SIZE}

#: The original FAISSx's names for training knobs of an IVF index: name -> (attribute path,
#: lowest value). The original stored them without applying them; here they set faiss's
#: clustering parameters, read when the index is trained (a remote index's go to the server).
TRAINING_PARAMS: dict[str, tuple[str, int]] = {
    "n_iter": ("cp.niter", 1),
    "min_points_per_centroid": ("cp.min_points_per_centroid", 1),
}


def set_training_param(index: Any, name: str, value: Any) -> None:
    """``index.set_parameter("n_iter", 20)``: ``index.cp.niter = 20``, where the index has it."""
    low = TRAINING_PARAMS[name][1]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise InvalidArgument(f"{name} must be an integer >= {low}, got {value!r}")
    owner, attr = _training_owner(index, name)
    setattr(owner, attr, int(value))


def get_training_param(index: Any, name: str) -> int:
    owner, attr = _training_owner(index, name)
    return int(getattr(owner, attr))


def _training_owner(index: Any, name: str) -> tuple[Any, str]:
    path = TRAINING_PARAMS[name][0]
    *steps, attr = path.split(".")
    owner = index
    try:
        for step in steps:
            owner = getattr(owner, step)
    except AttributeError:
        raise UnknownParameter(
            f"{type(index).__name__} has no parameter {name!r}: it is an IVF index's "
            f"training parameter ({path})"
        ) from None
    return owner, attr


#: Automatic chunking in remote mode: a call with more than this many bytes of vectors...
PIPELINE_FROM = 8 << 20
#: ... goes in even parts, this many in flight at once, so that sending one part overlaps the
#: server's work on the one before (a lone 50 MB add spends as long in transfer as in faiss).
#: A part is about a quarter of the call (the window, plus the part being applied), but...
PIPELINE_WINDOW = 3
#: ... no smaller than this (each request has fixed costs, and each part of an add grows the
#: index's storage by a step)...
PIPELINE_PART_LEAST = 4 << 20
#: ... and no larger than this, nor than a quarter of the server's ``--max-message-mb``
#: (:func:`pipeline_part`). 16 MiB parts loaded 100k x 768 floats with less server CPU than 4 MiB
#: ones (19 requests, not 75), and stay below glibc's 32 MiB mmap threshold, so the server's
#: receive buffers are reused rather than mapped afresh for each part.
PIPELINE_PART_BYTES = 16 << 20
#: At most this many results (queries x k) per search request.
AUTO_RESULTS = 1 << 22
#: A progress bar without an explicit batch size shows about this many steps.
PROGRESS_STEPS = 100

_INDEX: tuple[type[Any], ...] = (faiss.Index, faiss.IndexBinary)  # methods are added


# -- client-wide defaults ------------------------------------------------------------------------

_defaults: dict[str, Any] = {"batch_size": 0, "progress": None}


def set_default(name: str, value: Any) -> None:
    """Client-wide default: ``batch_size`` (for indices without their own) or ``progress``."""
    if name == "batch_size":
        _defaults[name] = BATCH_SIZE.coerce(value)
    elif name == "progress":
        if not isinstance(value, bool):
            raise InvalidArgument(f"progress must be True or False, got {value!r}")
        _defaults[name] = value
    else:
        raise UnknownParameter(f"no client default {name!r} (known: batch_size, progress)")


def get_default(name: str) -> Any:
    if name == "progress" and _defaults["progress"] is None:
        return os.environ.get("FAISSX_PROGRESS", "").strip().lower() in ("1", "true", "yes")
    if name not in _defaults:
        raise UnknownParameter(f"no client default {name!r} (known: batch_size, progress)")
    return _defaults[name]


# -- parameters --------------------------------------------------------------------------------

#: Client-side parameter values of local faiss objects (they have no room for our attributes).
_local_values: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_remote(index: Any) -> bool:
    from faissx_client.proxy import RemoteIndex

    return isinstance(index, RemoteIndex)


def _check_index(index: Any) -> None:
    if not (_is_remote(index) or isinstance(index, _INDEX)):
        raise InvalidArgument(
            f"expected a faiss index or a remote index, got {type(index).__name__}"
        )


def local_params(index: Any) -> dict[str, RuntimeParam]:
    """The runtime parameters of a local faiss index, as the server would find them."""
    from faissx_client import _registry

    found = {p.name: p for p in params_by_structure(index, _registry.types)}
    name = type(index).__name__
    if name.startswith("Gpu") and name[3:] in _registry.types:  # GpuIndexIVFFlat: nprobe
        found.update((p.name, p) for p in _registry.types[name[3:]].runtime_params)
    for param in core_params(index):
        found.setdefault(param.name, param)
    return found


def parameter_names(index: Any) -> list[str]:
    """Every name :func:`set_parameter` accepts for ``index``."""
    _check_index(index)
    names = index._runtime_params() if _is_remote(index) else local_params(index)
    return sorted({*names, *CLIENT_PARAMS})


def unknown(index: Any, name: str, known: Any) -> UnknownParameter:
    listed = ", ".join(sorted({*known, *CLIENT_PARAMS}))
    return UnknownParameter(f"{type(index).__name__} has no parameter {name!r} (known: {listed})")


def set_parameter(index: Any, name: str, value: Any) -> None:
    """``index.set_parameter(name, value)`` for a local faiss index or a remote proxy."""
    _check_index(index)
    if _is_remote(index):
        index.set_parameter(name, value)
    elif name in TRAINING_PARAMS:
        set_training_param(index, name, value)
    elif name in CLIENT_PARAMS:
        _local_values.setdefault(index, {})[name] = CLIENT_PARAMS[name].coerce(value)
    else:
        params = local_params(index)
        if name not in params:
            raise unknown(index, name, params)
        params[name].write(index, value)


def get_parameter(index: Any, name: str) -> Any:
    _check_index(index)
    if _is_remote(index):
        return index.get_parameter(name)
    if name in TRAINING_PARAMS:
        return get_training_param(index, name)
    if name in CLIENT_PARAMS:
        return _local_values.get(index, {}).get(name, _defaults.get(name, 0))
    params = local_params(index)
    if name not in params:
        raise unknown(index, name, params)
    return params[name].read(index)


def parameters(index: Any) -> dict[str, Any]:
    """Every parameter of ``index`` with its current value."""
    return {name: get_parameter(index, name) for name in parameter_names(index)}


def _method_set_parameter(self: Any, name: str, value: Any) -> None:
    """Set a runtime parameter (``nprobe``, ``efSearch``, ``batch_size``, ...) by name.

    Added by FAISSx (faissx_client.optimization); validates the name and the value."""
    set_parameter(self, name, value)


def _method_set_nprobe(self: Any, nprobe: int) -> None:
    """``set_parameter("nprobe", nprobe)``: the original FAISSx's spelling. Added by FAISSx."""
    set_parameter(self, "nprobe", nprobe)


def _method_get_parameter(self: Any, name: str) -> Any:
    """Read a runtime parameter by name. Added by FAISSx (faissx_client.optimization)."""
    return get_parameter(self, name)


def install_faiss_methods() -> None:
    """Give faiss's ``Index`` and ``IndexBinary`` the seed's ``set_parameter`` /
    ``get_parameter`` methods and the original FAISSx's ``set_nprobe`` (three new attributes;
    nothing existing is replaced)."""
    for cls in _INDEX:
        if "set_parameter" not in cls.__dict__:
            cls.set_parameter = _method_set_parameter
        if "get_parameter" not in cls.__dict__:
            cls.get_parameter = _method_get_parameter
        if "set_nprobe" not in cls.__dict__:
            cls.set_nprobe = _method_set_nprobe


# -- chunking and progress -----------------------------------------------------------------------


def batch_size_of(values: dict[str, Any] | None) -> int:
    """An index's own batch size, else the client default (0: automatic)."""
    own = (values or {}).get("batch_size")
    return int(own) if own else int(_defaults["batch_size"])


def progress_wanted(progress: bool | None) -> bool:
    return bool(get_default("progress")) if progress is None else bool(progress)


def pipeline_part(max_message: int | None) -> int:
    """Most bytes of an automatic part for a server whose frames may hold ``max_message``
    bytes (None or 0: no limit): :data:`PIPELINE_PART_BYTES`, or a quarter of the limit if
    less, which leaves room for the header and keeps the parts in flight within it."""
    if not max_message:
        return PIPELINE_PART_BYTES
    return max(1, min(PIPELINE_PART_BYTES, max_message // 4))


def chunk_rows(
    n: int,
    row_bytes: int,
    batch_size: int,
    *,
    remote: bool,
    progress: bool,
    k: int | None = None,
    part_bytes: int | None = None,
) -> int:
    """Rows per request for a call on ``n`` rows; ``part_bytes``: the most bytes of an
    automatic part (:func:`pipeline_part`; default :data:`PIPELINE_PART_BYTES`)."""
    if batch_size:
        rows = batch_size
    elif remote:
        row_bytes = max(row_bytes, 1)
        most = PIPELINE_PART_BYTES if part_bytes is None else max(1, part_bytes)
        total = n * row_bytes
        if total <= min(PIPELINE_FROM, most):
            rows = n
        else:  # even parts: no small last part paying a request's fixed costs for little
            part = min(most, max(PIPELINE_PART_LEAST, total // (PIPELINE_WINDOW + 1)))
            widest = max(1, part // row_bytes)  # rows that fit a part
            rows = -(-n // -(-n // widest))  # as many as needed, as even as can be
        if k:
            rows = min(rows, max(1, AUTO_RESULTS // k))
        if progress:
            rows = min(rows, max(1, -(-n // PROGRESS_STEPS)))
    else:
        rows = max(1, -(-n // PROGRESS_STEPS)) if progress else max(n, 1)
    return max(1, int(rows))


@contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr counting ``total`` rows (a no-op when not enabled)."""
    if not enabled:
        yield lambda _rows: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda rows: bar.advance(task, rows)


@contextmanager
def progress_spinner(label: str, enabled: bool) -> Iterator[None]:
    """A spinner with the time elapsed, on stderr, for one long call whose share done nobody
    can report (``train``: faiss's k-means runs as one call, locally or on the server); it
    ends with the time the call took."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        start = time.monotonic()
        yield
        bar.update(task, completed=1, total=1)
    console.print(f"{label}: done in {time.monotonic() - start:.1f}s")


def for_chunks(
    n: int, rows: int, label: str, progress: bool, step: Callable[[int, int], None]
) -> None:
    """``step(lo, hi)`` for each run of ``rows`` rows of ``n``, advancing the progress bar."""
    with progress_bar(n, label, progress) as advance:
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            step(lo, hi)
            advance(hi - lo)


def stack_results(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))


# -- local faiss objects built by the drop-in module -------------------------------------------


def _row_bytes(x: np.ndarray) -> int:
    return int(x.itemsize * (x.shape[1] if x.ndim == 2 else 1))


def _local_add(
    index: Any, method: Callable, x: Any, ids: Any, args: tuple, kwargs: dict, progress: bool | None
) -> None:
    n = int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 0
    memory_manager.check_add(index, n)
    show = progress_wanted(progress)
    rows = chunk_rows(
        n,
        _row_bytes(np.asarray(x[:1])) if n else 0,
        batch_size_of(_local_values.get(index)),
        remote=False,
        progress=show,
    )
    if rows >= n and not show:
        extra = () if ids is None else (ids,)
        return method(index, x, *extra, *args, **kwargs)
    if ids is not None:
        ids = np.asarray(ids)

    def step(lo: int, hi: int) -> None:
        extra = () if ids is None else (ids[lo:hi],)
        method(index, x[lo:hi], *extra, *args, **kwargs)

    for_chunks(n, rows, "add", show, step)
    return None


def _local_search(
    index: Any, method: Callable, x: Any, k: Any, args: tuple, kwargs: dict, progress: bool | None
) -> Any:
    show = progress_wanted(progress)
    n = int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 0
    rows = chunk_rows(
        n, 0, batch_size_of(_local_values.get(index)), remote=False, progress=show, k=k
    )
    if rows >= n and not show:
        return method(index, x, k, *args, **kwargs)
    outputs = {name: kwargs.pop(name) for name in ("D", "I") if kwargs.get(name) is not None}
    parts: list[tuple[np.ndarray, ...]] = []
    for_chunks(
        n,
        rows,
        "search",
        show,
        lambda lo, hi: parts.append(tuple(method(index, x[lo:hi], k, *args, **kwargs))),
    )
    D, I = stack_results(parts)
    for name, array in (("D", D), ("I", I)):
        if name in outputs:
            outputs[name][...] = array
    return outputs.get("D", D), outputs.get("I", I)


#: Local indices the drop-in module built: the ones the patched methods below act on.
_adopted: weakref.WeakSet = weakref.WeakSet()
#: faiss's own add/add_with_ids/search of each patched class, by class and name.
_ORIGINALS: dict[type, dict[str, Callable]] = {}
_patch_mutex = threading.Lock()


def _patched_method(cls: type, name: str) -> Callable:
    def method(self: Any, *args: Any, progress: bool | None = None, **kwargs: Any) -> Any:
        original = _ORIGINALS[cls][name]
        if self not in _adopted:  # not built by FAISSx: exactly faiss's own call
            if progress is not None:
                kwargs["progress"] = progress  # refused by faiss as it would be
            return original(self, *args, **kwargs)
        if name in WRITES and name != "train":  # training leaves mapped lists alone
            before_write(self, name)
        if name == "train":
            n = len(args[0]) if args and hasattr(args[0], "__len__") else 0
            with progress_spinner(
                f"train {type(self).__name__} on {n:,} vectors", progress_wanted(progress)
            ):
                return original(self, *args, **kwargs)
        if name not in ("search", "add", "add_with_ids"):
            if progress is not None:
                raise TypeError(f"{name}() takes no progress argument")
            return original(self, *args, **kwargs)
        if name == "search":
            (x, k), rest = _take(args, kwargs, ("x", "k"))
            return _local_search(self, original, x, k, rest, kwargs, progress)
        if name == "add_with_ids":
            (x, ids), rest = _take(args, kwargs, ("x", "ids"))
            return _local_add(self, original, x, ids, rest, kwargs, progress)
        (x,), rest = _take(args, kwargs, ("x",))
        return _local_add(self, original, x, None, rest, kwargs, progress)

    original = getattr(cls, name)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = (original.__doc__ or "") + (
        "\n\nFAISSx: on indices built by faissx.client, honours batch_size, takes "
        "progress=True and checks max_memory_usage_mb (faissx_client.optimization)."
    )
    return method


def _take(args: tuple, kwargs: dict, names: tuple[str, ...]) -> tuple[list[Any], tuple]:
    """The leading arguments ``names``, positional or by keyword (removed from ``kwargs``)."""
    values = list(args[: len(names)])
    for name in names[len(values) :]:
        if name not in kwargs:
            raise TypeError(f"missing required argument {name!r}")
        values.append(kwargs.pop(name))
    return values, tuple(args[len(names) :])


def _patch_class(cls: type) -> None:
    """Wrap ``search`` and the :data:`WRITES` of one faiss class (once). The wrappers are set on
    ``cls`` itself, so no other class changes; objects the drop-in module did not build call
    straight through to faiss's method."""
    with _patch_mutex:
        if cls in _ORIGINALS:
            return
        originals = {
            name: getattr(cls, name)
            for name in ("search", *WRITES)
            if callable(getattr(cls, name, None))
        }
        _ORIGINALS[cls] = originals
        for name in originals:
            setattr(cls, name, _patched_method(cls, name))


#: Methods that change an index: a memory-mapped one is copied into memory first
#: (:func:`before_write`); ``train`` also takes ``progress=True``.
WRITES = ("add", "add_with_ids", "remove_ids", "reset", "merge_from", "train")
#: Local indices read with ``use_memory_mapping``: faiss maps their file read-only.
_mapped: weakref.WeakSet = weakref.WeakSet()


def mark_mapped(index: Any) -> None:
    """Remember that ``index`` was read memory-mapped (see :func:`before_write`)."""
    _mapped.add(index)


def before_write(index: Any, op: str) -> None:
    """Copy-on-write for a memory-mapped index, before ``op`` changes it.

    faiss maps a file read-only and aborts the whole process (a C++ exception thrown in an
    OpenMP thread) when a mapped index is changed. The first write to an index read with
    ``use_memory_mapping`` therefore copies its mapped inverted lists into memory, once; the
    file is never touched. A mapped index whose contents faiss cannot copy like that (flat
    codes mapped with ``IO_FLAG_MMAP_IFC``) refuses the write with ``UnsupportedOperation``.
    """
    if index not in _mapped:
        return
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    lists = ivf.invlists if ivf is not None else None
    if lists is None or not isinstance(
        faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists
    ):
        raise UnsupportedOperation(
            f"{op} on this {type(index).__name__}: it was read with use_memory_mapping, and "
            "faiss maps its file read-only and cannot change it; read it with "
            "memory_manager.set_option('use_memory_mapping', False) to change it"
        )
    nbytes = sum(lists.list_size(i) * (lists.code_size + 8) for i in range(lists.nlist))
    memory_manager.check_create(nbytes)
    copy = faiss.ArrayInvertedLists(lists.nlist, lists.code_size)
    for i in range(lists.nlist):
        n = lists.list_size(i)
        if n:
            copy.add_entries(i, n, lists.get_ids(i), lists.get_codes(i))
    assert ivf is not None  # lists came from it
    ivf.replace_invlists(copy, True)
    copy.this.disown()  # type: ignore[attr-defined]  # faiss's stubs lack it; the index owns it
    _mapped.discard(index)


def adopt_local(index: Any) -> Any:
    """What the drop-in module hands out for a local index it built: on the GPU in GPU mode,
    with the batching wrappers, counted by the memory manager."""
    if not isinstance(index, _INDEX):
        return index
    index = _gpu.to_gpu(index)
    _patch_class(type(index))
    _adopted.add(index)
    memory_manager.track(index)
    return index


def build_local(build: Callable[[tuple, dict], Any], args: tuple, kwargs: dict) -> Any:
    """The local construction path of the drop-in classes (``classes.local_hook``)."""
    memory_manager.check_create()
    parts = [a for a in (*args, *kwargs.values()) if isinstance(a, _INDEX)]
    if any(_gpu.is_gpu(p) for p in parts):  # faiss's CPU constructors want CPU parts
        args = tuple(_gpu.to_cpu(a) if isinstance(a, _INDEX) else a for a in args)
        kwargs = {k: _gpu.to_cpu(v) if isinstance(v, _INDEX) else v for k, v in kwargs.items()}
    index = build(args, kwargs)
    for part in parts:  # a quantizer or inner index is now counted inside its owner
        memory_manager.untrack(part)
    return adopt_local(index)


# -- memory ----------------------------------------------------------------------------------


def _mb(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):.2f} MiB"


class MemoryManager:
    """Memory options and accounting for this client's indices (``memory_manager``).

    Options: ``max_memory_usage_mb`` (None: no limit), ``use_memory_mapping`` (bool),
    ``index_cache_size`` (vectors the remote reconstruct cache keeps; 0: off), and the original
    FAISSx's ``auto_unload_unused_indices``, which is always on here: True is accepted, False
    refused (the server frees an unnamed index once its client has been silent for
    ``--idle-ttl``, and local indices are freed by Python when nothing refers to them).
    """

    DEFAULTS: dict[str, Any] = {
        "max_memory_usage_mb": None,
        "use_memory_mapping": False,
        "index_cache_size": 0,
        "auto_unload_unused_indices": True,
    }

    def __init__(self) -> None:
        self._options = dict(self.DEFAULTS)
        self._tracked: weakref.WeakSet = weakref.WeakSet()
        self._mutex = threading.Lock()

    # -- options ---------------------------------------------------------------------------
    def set_option(self, name: str, value: Any) -> None:
        if name not in self._options:
            raise UnknownParameter(
                f"no memory option {name!r} (known: {', '.join(sorted(self._options))})"
            )
        if name == "max_memory_usage_mb":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise InvalidArgument(
                    f"max_memory_usage_mb must be a positive number of MiB or None, got {value!r}"
                )
            value = None if value is None else float(value)
        elif name == "use_memory_mapping":
            if not isinstance(value, bool):
                raise InvalidArgument(f"use_memory_mapping must be True or False, got {value!r}")
        elif name == "index_cache_size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(
                    f"index_cache_size must be an integer >= 0 (vectors), got {value!r}"
                )
            vector_cache.resize(value)
        elif name == "auto_unload_unused_indices" and value is not True:
            raise InvalidArgument(
                "auto_unload_unused_indices is always on: the server frees an unnamed index "
                "once its client has been silent for --idle-ttl, and local indices are freed "
                f"when nothing refers to them (got {value!r}; only True is accepted)"
            )
        self._options[name] = value

    def get_option(self, name: str) -> Any:
        if name not in self._options:
            raise UnknownParameter(
                f"no memory option {name!r} (known: {', '.join(sorted(self._options))})"
            )
        return self._options[name]

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def get_all_options(self) -> dict[str, Any]:
        """The original FAISSx's name for :meth:`options`."""
        return self.options()

    def reset_options(self) -> None:
        """The original FAISSx's name for :meth:`reset`."""
        self.reset()

    def reset(self) -> None:
        """Back to the defaults (no limit, no mapping, cache off)."""
        self._options = dict(self.DEFAULTS)
        vector_cache.resize(0)

    # -- accounting ------------------------------------------------------------------------
    def track(self, index: Any) -> None:
        with self._mutex:
            self._tracked.add(index)

    def untrack(self, index: Any) -> None:
        with self._mutex:
            self._tracked.discard(index)

    def index_memory(self, index: Any) -> int:
        """Bytes ``index`` holds: faiss's container sizes locally, the server's figure remotely."""
        _check_index(index)
        if _is_remote(index):
            return int(index._fetch().get("memory_bytes", 0))
        return index_bytes(_gpu.to_cpu(index) if _gpu.is_gpu(index) else index)

    def usage(self) -> dict[str, Any]:
        """Bytes held by this client's indices in the current mode, and the limit.

        Local mode: the indices built through the drop-in module that are still alive. Remote
        mode: the indices this client sees on the server (its tenant's named indices and its own
        unnamed ones, as ``list`` reports them), plus the tenant's total and the server's limit.
        """
        from faissx_client import get_client

        client = get_client()
        limit = self._limit_bytes()
        if client is None:
            with self._mutex:
                tracked = list(self._tracked)
            sizes = [self.index_memory(i) for i in tracked]
            return {
                "mode": "local",
                "bytes": sum(sizes),
                "indices": len(sizes),
                "limit_bytes": limit,
            }
        return self._remote_usage(client)

    def _remote_usage(self, client: Any) -> dict[str, Any]:
        reply = client.call("list", args={"all": True})[0]
        indexes = reply.get("indexes", [])
        return {
            "mode": "remote",
            "bytes": sum(int(i.get("memory_bytes", 0)) for i in indexes),
            "indices": len(indexes),
            "limit_bytes": self._limit_bytes(),
            "tenant_bytes": reply.get("memory_bytes"),
            "server_limit_bytes": reply.get("memory_limit_bytes"),
            "server_free_bytes": reply.get("memory_free_bytes"),
        }

    def _limit_bytes(self) -> int | None:
        limit = self._options["max_memory_usage_mb"]
        return None if limit is None else int(limit * (1 << 20))

    def check_add(self, index: Any, n: int, chunked: bool = False) -> None:
        """QuotaExceeded if adding ``n`` vectors to ``index`` would cross the limit.

        A remote add sent in several requests (``chunked``) is also checked against the
        server's ``--max-memory`` headroom first, so it is refused whole rather than after
        some of its chunks (each request is checked by the server anyway)."""
        limit = self._limit_bytes()
        remote = _is_remote(index)
        if n <= 0 or (limit is None and not (remote and chunked)):
            return
        if remote:
            info = index._info or index._create()
            needed = n * int(info.get("vector_bytes") or index.d * 4)
            usage = self._remote_usage(index._client)
            used, free = int(usage["bytes"]), usage["server_free_bytes"]
            if chunked and free is not None and needed > free:
                raise QuotaExceeded(
                    f"adding {n} vectors to {type(index).__name__} needs {_mb(needed)}; the "
                    f"server's --max-memory leaves {_mb(free)}; nothing was sent",
                    needed=needed,
                    free=free,
                )
        else:
            cpu = _gpu.to_cpu(index) if _gpu.is_gpu(index) else index
            needed = n * bytes_per_vector(cpu)
            with self._mutex:
                tracked = {id(i): i for i in self._tracked}
            tracked[id(index)] = index
            used = sum(self.index_memory(i) for i in tracked.values())
        if limit is not None and used + needed > limit:
            raise QuotaExceeded(
                f"adding {n} vectors to {type(index).__name__} needs {_mb(needed)}; this "
                f"client's indices hold {_mb(used)} of max_memory_usage_mb="
                f"{self._options['max_memory_usage_mb']:g}",
                used=used,
                limit=limit,
                needed=needed,
            )

    def check_create(self, nbytes: int = 0, client: Any = None) -> None:
        """QuotaExceeded if a new index of ``nbytes`` would not fit (or nothing more fits)."""
        limit = self._limit_bytes()
        if limit is None:
            return
        if client is not None:  # a remote index, on that client's server
            used = int(self._remote_usage(client)["bytes"])
        else:
            with self._mutex:
                tracked = list(self._tracked)
            used = sum(self.index_memory(i) for i in tracked)
        if used + nbytes > limit or used >= limit:
            raise QuotaExceeded(
                f"a new index ({_mb(nbytes)}) does not fit: this client's indices hold "
                f"{_mb(used)} of max_memory_usage_mb={self._options['max_memory_usage_mb']:g}",
                used=used,
                limit=limit,
                needed=nbytes,
            )

    # -- memory mapping ---------------------------------------------------------------------
    def io_flags(self, path: Any) -> int:
        """faiss IO flags for reading ``path`` as ``use_memory_mapping`` asks: IVF lists are
        mapped with ``IO_FLAG_MMAP``, flat code arrays with ``IO_FLAG_MMAP_IFC``; types with
        neither load as usual. A mapped index is read-only, as faiss makes it."""
        if not self._options["use_memory_mapping"]:
            return 0
        try:
            with open(path, "rb") as src:
                fourcc = src.read(4)
        except (OSError, TypeError):
            return 0
        if fourcc.startswith(b"Iw"):  # IndexIVF* files: lists mapped as OnDiskInvertedLists
            return faiss.IO_FLAG_MMAP
        return getattr(faiss, "IO_FLAG_MMAP_IFC", 0)

    def cache_stats(self) -> dict[str, Any]:
        """Hits, misses, size and capacity of the remote vector cache."""
        return vector_cache.stats()


#: The seed's ``from faissx.client.optimization import memory_manager``.
memory_manager = MemoryManager()
