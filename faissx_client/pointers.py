"""``faiss.swig_ptr`` in remote mode: the arrays behind recent pointers, for the client to send.

faiss code passes raw pointers to C++ (``IDSelectorArray(n, faiss.swig_ptr(ids))``). A remote
selector must send the ids themselves, and a SWIG pointer does not lead back to its numpy
array; so, in remote mode, :func:`swig_ptr` remembers the array behind each pointer it hands
out (the latest :data:`KEEP` of them, by address), and :meth:`PointerMemory.array` finds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

#: Pointers remembered: enough for the arguments of any one call.
KEEP = 64


class PointerMemory:
    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._arrays: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, ptr: Any, array: np.ndarray) -> None:
        with self._lock:
            self._arrays[int(ptr)] = array
            self._arrays.move_to_end(int(ptr))
            while len(self._arrays) > self._keep:
                self._arrays.popitem(last=False)

    def array(self, ptr: Any) -> np.ndarray | None:
        """The array ``ptr`` points into (from one of the latest ``swig_ptr`` calls), or None."""
        if type(ptr).__name__ != "SwigPyObject":
            return None
        with self._lock:
            return self._arrays.get(int(ptr))


pointers = PointerMemory()
