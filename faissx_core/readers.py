"""faiss's index readers, with the size of what they read as the bound on what they allocate.

Before faiss reads a stored vector it reads the vector's length, allocates (and zeroes) that many
elements, and only then reads them. Its only check is a process-wide byte limit, 1 TB by default,
so a few hundred bytes sent as an ``import`` or as a ``serialized`` part that announce a 100 GB
vector make the server allocate 100 GB before faiss notices the bytes are missing.

A vector stored in a payload cannot be larger than the payload. The tables faiss *computes*
while reading (a product quantizer's distance tables, an IVFPQ's precomputed table, a Hadamard
rotation) can be, and faiss checks those against the same limit, so a payload from a client is
read with the limit set to its own size or :data:`UNTRUSTED_FLOOR`, whichever is larger. Our own
bytes (snapshots, copies of an index the server holds, a Ray replica's state) are read with
faiss's limit as it is.

faiss's limit is one value for the whole process, so every read here holds one lock: a copy of a
large index must not run while a client's payload has lowered the limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

#: faiss has the limit from 1.15 on; an older faiss reads a client's payload unbounded.
BOUNDED = hasattr(faiss, "set_deserialization_vector_byte_limit")

#: The least limit a client's payload is read with: room for the tables faiss computes while
#: reading (an IVFPQ over 4096 lists of 64 sub-quantizers precomputes 256 MiB).
UNTRUSTED_FLOOR = 256 << 20


class _ReaderLimit:
    """faiss's process-wide deserialization byte limit, changed only under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def at_most(self, limit: int | None) -> Iterator[None]:
        """Hold the lock; with ``limit``, faiss refuses any vector or table larger meanwhile."""
        with self._lock:
            if limit is None or not BOUNDED:
                yield
                return
            before = faiss.get_deserialization_vector_byte_limit()
            faiss.set_deserialization_vector_byte_limit(min(before, limit))
            try:
                yield
            finally:
                faiss.set_deserialization_vector_byte_limit(before)


_limit = _ReaderLimit()  # one per process, as faiss's limit is


def untrusted_limit(nbytes: int) -> int:
    """The byte limit a client's payload of ``nbytes`` is read with."""
    return max(int(nbytes), UNTRUSTED_FLOOR)


def read_index(data: Any, *, binary: bool, trusted: bool = False) -> Any:
    """``faiss.deserialize_index`` (or ``_binary``) of ``data`` (bytes or a uint8 array)."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    read = faiss.deserialize_index_binary if binary else faiss.deserialize_index
    limit = None if trusted else untrusted_limit(raw.nbytes)
    with _limit.at_most(limit), _said(limit, raw.nbytes):
        return read(raw)


@contextmanager
def _said(limit: int | None, nbytes: int) -> Iterator[None]:
    """faiss's refusal as what it means: the payload announced more than it could hold."""
    try:
        yield
    except RuntimeError as exc:
        if limit is None or "deserialization" not in str(exc):
            raise
        raise RuntimeError(
            f"its {nbytes} bytes announce more than they can hold (a vector or table over "
            f"{limit} bytes)"
        ) from None


def read_transform(data: np.ndarray) -> Any:
    """A client's ``VectorTransform`` from faiss's bytes (``faiss.read_VectorTransform``)."""
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(data, reader.data)
    limit = untrusted_limit(data.nbytes)
    with _limit.at_most(limit), _said(limit, data.nbytes):
        return faiss.read_VectorTransform(reader)  # type: ignore[arg-type]  # faiss's stubs lack the IOReader overload


def read_index_file(path: Path, *, binary: bool) -> Any:
    """One of our own snapshots (``faiss.read_index``)."""
    read = faiss.read_index_binary if binary else faiss.read_index
    with _limit.at_most(None):
        return read(str(path))


def copy_through_bytes(index: Any) -> Any:
    """A copy of an index the server holds, made by faiss's writer and reader."""
    binary = isinstance(index, faiss.IndexBinary)
    write = faiss.serialize_index_binary if binary else faiss.serialize_index
    return read_index(write(index), binary=binary, trusted=True)
