"""Whether an array of floats holds only finite numbers, at the speed of one read of it.

The server refuses NaN and infinity before faiss sees them (faiss would store them and return
NaN distances), and the client checks an add it splits into parts before sending the first
one, so that such an add changes nothing rather than stopping part-way. Both read every
number of every add, so the check must cost no more than reading them: ``np.isfinite`` over
the whole array allocates a bool per number (75 MB of fresh pages for a 300 MB add, and a
second pass over them), and ``min`` then ``max`` of the whole array read it from memory twice.
Here min and max run block by block, each block small enough to stay in the core's cache
between the two: one pass from memory, no allocation, and a stop at the first block that holds
a bad number. A NaN makes min and max NaN, an infinity makes one of them infinite; any other
float keeps both finite.
"""

from __future__ import annotations

import math

import numpy as np

#: Numbers per block (256 KiB of float32: within any core's L2 cache).
BLOCK = 1 << 16


def all_finite(x: np.ndarray) -> bool:
    """Whether no entry of the float array ``x`` is NaN or infinite (True when empty)."""
    if x.size <= BLOCK or not x.flags.c_contiguous:  # one block: one isfinite pass costs
        return bool(np.isfinite(x).all())  # least (a one-query search pays it every time)
    flat = x.reshape(-1)  # a view of a C-contiguous array
    lowest, highest = np.minimum.reduce, np.maximum.reduce
    for start in range(0, flat.size, BLOCK):
        block = flat[start : start + BLOCK]
        if not (math.isfinite(lowest(block)) and math.isfinite(highest(block))):
            return False
    return True


def first_bad_row(x: np.ndarray) -> int:
    """The first row of the 2-d array ``x`` holding a NaN or an infinity (-1: none); for an
    error message, so it may take its time."""
    bad = ~np.isfinite(x).all(axis=1)
    return int(bad.argmax()) if bad.any() else -1
