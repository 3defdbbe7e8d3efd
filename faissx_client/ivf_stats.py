"""``faiss.cvar.indexIVF_stats`` for remote searches: what the server's searches counted.

faiss counts an IVF search's work (queries, lists visited, distances computed, heap updates,
times) in a process-wide ``indexIVF_stats``. A remote index searches in the server's process,
where that global mixes every tenant's searches, so it is not read. Instead, once a program
reads ``faiss.cvar.indexIVF_stats`` in remote mode, this client asks the server for each of its
IVF searches' own counts (the search runs as faiss's quantizer search plus
``search_preassigned`` with a stats object of its own, which gives the same results) and adds
them to :class:`IVFStats`, which reads and resets as faiss's does. Programs that never read
the stats change nothing on the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import faiss

#: faiss's ``IndexIVFStats`` fields, in its order.
FIELDS = ("nq", "nlist", "ndis", "nheap_updates", "quantization_time", "search_time")


class IVFStats:
    """The counts of this client's remote IVF searches since the last ``reset()``."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: Set on the first read through ``faiss.cvar``: searches then ask for their counts.
        self.wanted = False
        self.reset()

    def reset(self) -> None:
        with self._mutex:
            self.nq = self.nlist = self.ndis = self.nheap_updates = 0
            self.quantization_time = self.search_time = 0.0

    def add(self, other: Any) -> None:
        """Add another's counts (a map from a reply, or an ``IndexIVFStats``)."""
        get = other.get if isinstance(other, dict) else lambda k, d=0: getattr(other, k, d)
        with self._mutex:
            for name in FIELDS:
                setattr(self, name, getattr(self, name) + get(name, 0))

    def __repr__(self) -> str:
        return "<remote IndexIVFStats " + ", ".join(f"{f}={getattr(self, f)}" for f in FIELDS) + ">"


class CVar:
    """``faiss.cvar``: faiss's own, except ``indexIVF_stats`` in remote mode."""

    def __init__(self, current: Callable[[], Any]) -> None:
        object.__setattr__(self, "_current", current)

    def __getattr__(self, name: str) -> Any:
        client = self._current() if name == "indexIVF_stats" else None
        if client is None:
            return getattr(faiss.cvar, name)
        client.ivf_stats.wanted = True
        return client.ivf_stats

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(faiss.cvar, name, value)

    def __dir__(self) -> list[str]:
        return dir(faiss.cvar)
