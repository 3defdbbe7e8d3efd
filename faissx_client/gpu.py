"""GPU placement of local indices: ``configure(gpu=True)`` or ``FAISSX_GPU=1``.

In local mode, indices built through the drop-in module (its index classes, ``index_factory``,
``read_index``, ``deserialize_index``) are moved to a GPU with faiss's own ``index_cpu_to_gpu``
when the mode is on. Types faiss cannot put on a GPU (HNSW, most binary indices, ...) stay on
the CPU, with a log line saying so. A faiss build without GPU support (``faiss-cpu``) makes the
mode an error, raised by :func:`enable` (that is, by ``configure(gpu=True)``) or, for
``FAISSX_GPU=1``, by the first index built, never a silent CPU fallback. Remote indices are
the server's business: start it with ``faissx serve --gpu``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import faiss

from faissx_core.errors import UnsupportedOperation

log = logging.getLogger("faissx.client")

_state: dict[str, Any] = {"enabled": None, "device": 0, "resources": None}
_mutex = threading.Lock()


def gpu_count() -> int:
    """GPUs this faiss build can use (0 for faiss-cpu)."""
    getter = getattr(faiss, "get_num_gpus", None)
    return int(getter()) if getter is not None else 0


def _require() -> None:
    if gpu_count() == 0 or not hasattr(faiss, "StandardGpuResources"):
        raise UnsupportedOperation(
            f"GPU mode needs a GPU build of faiss (faiss-gpu) and a visible GPU; the faiss "
            f"{faiss.__version__} installed here sees {gpu_count()} GPU(s). Unset FAISSX_GPU "
            "or call configure(gpu=False) to stay on the CPU"
        )


def enable(device: int = 0) -> None:
    """Move local indices built from now on to GPU ``device``; raise if there is none."""
    _require()
    if not 0 <= device < gpu_count():
        raise UnsupportedOperation(f"no GPU {device}: faiss sees {gpu_count()}")
    with _mutex:
        _state.update(enabled=True, device=device)


def disable() -> None:
    with _mutex:
        _state["enabled"] = False


def enabled() -> bool:
    """On after :func:`enable`, or when ``FAISSX_GPU`` is set to 1/true/yes and never disabled."""
    value = _state["enabled"]
    if value is None:
        return os.environ.get("FAISSX_GPU", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def resources() -> Any:
    with _mutex:
        if _state["resources"] is None:
            _state["resources"] = faiss.StandardGpuResources()
        return _state["resources"]


def is_gpu(index: Any) -> bool:
    return type(index).__name__.startswith("Gpu")


def to_gpu(index: Any) -> Any:
    """``index`` on the GPU when GPU mode is on and faiss supports its type, else unchanged."""
    if not enabled():
        return index
    _require()
    try:
        return faiss.index_cpu_to_gpu(resources(), _state["device"], index)
    except (RuntimeError, AttributeError) as exc:
        log.info(
            "%s stays on the CPU: faiss cannot put it on a GPU (%s)", type(index).__name__, exc
        )
        return index


def to_cpu(index: Any) -> Any:
    """A CPU copy of a GPU index (for saving, or as a part of another index); others as-is."""
    return faiss.index_gpu_to_cpu(index) if is_gpu(index) else index
