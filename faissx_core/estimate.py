"""What an index will cost before it is built, and what a ``train`` will need while it runs.

``--max-memory`` must refuse a 121-byte request that would make faiss allocate gigabytes, so the
refusal has to come from the spec, before faiss runs: ``IndexIVFFlat(nlist=2**24)`` allocates an
empty inverted list per ``nlist`` at construction, a PQ with 16-bit codes ``d x 2**16`` floats of
centroids, and ``index_factory("IVF40000000,Flat")`` the same as the first with no bound at all.
The figures here follow faiss's own structure rules (what each constructor allocates); after the
build the server measures the real object (:func:`faissx_core.introspect.index_bytes`), which
counts the same containers, so the reported ``memory_bytes`` agrees with what was reserved.

Only what grows with a parameter is counted: a constructor's fixed few hundred bytes are not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from faissx_core.errors import InvalidArgument
from faissx_core.specs import REF_TYPE, SERIALIZED

#: Bytes faiss's ``ArrayInvertedLists`` spends on each empty list (a code vector and an id
#: vector, each an owning-or-borrowed vector wrapper); measured: 160 bytes per list at
#: ``nlist`` = 10^5 and 10^6 with faiss 1.9 (RSS growth / nlist).
IVF_LIST_BYTES = 160
#: Specs nest shallowly (an IDMap around a pre-transform around an IVF with a quantizer); a
#: deeper one is refused rather than walked past, so nothing inside it escapes the checks.
MAX_SPEC_DEPTH = 32
#: ``index_factory`` tokens whose numbers allocate at construction.
_IVF = re.compile(r"IVF(\d+)")
_IMI = re.compile(r"IMI(\d+)x(\d+)")
_PQ = re.compile(r"(?<![A-Za-z])(?:PQ|RQ|LSQ|PRQ|PLSQ)(\d+)(?:x(\d+))?")
_PCA = re.compile(r"(?:PCAW?R?|OPQ|RR|ITQ)(\d+)(?:_(\d+))?")
_HNSW = re.compile(r"HNSW(\d+)")
_NUMBER = re.compile(r"\d+")
#: faiss's default bits per code where a factory string gives none.
_DEFAULT_NBITS = 8


def walk(spec: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """Every spec inside ``spec`` (itself included) as ``(params, type)``, at any depth, in
    any container (maps and lists, under any key); InvalidArgument past MAX_SPEC_DEPTH.

    Iterative, so a hostile nesting cannot exhaust the interpreter's stack.
    """
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    stack: list[tuple[Any, int]] = [(spec, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list):
            stack.extend((item, depth) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        kind, params = node.get("type"), node.get("params")
        if isinstance(kind, str) and isinstance(params, dict):
            if depth >= MAX_SPEC_DEPTH:
                raise InvalidArgument(f"index spec nested deeper than {MAX_SPEC_DEPTH} levels")
            yield params, kind
            stack.extend((value, depth + 1) for value in params.values())
        else:
            stack.extend((value, depth + 1) for value in node.values())


def refs(spec: Any) -> list[str]:
    """The names of existing indices ``spec`` copies, each occurrence once; a name that is
    not a string is InvalidArgument (it would otherwise be neither found nor counted)."""
    names = []
    for params, kind in walk(spec):
        if kind == REF_TYPE:
            name = params.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidArgument(
                    f"a ref names an index by a non-empty string, got "
                    f"{type(name).__name__} {name!r:.40}"
                )
            names.append(name)
    return names


def _int(value: Any, default: int = 0) -> int:
    return value if type(value) is int and value > 0 else default


def build_bytes(spec: Any) -> int:
    """Bytes faiss allocates building ``spec`` (refs excluded: the caller counts the indices
    they copy). An estimate from the parameters, never below what the constructors take."""
    total = 0
    for params, kind in walk(spec):
        if kind == REF_TYPE:
            continue
        if kind == SERIALIZED.name:  # faiss builds about what the bytes hold
            data = params.get("data")
            total += len(data) * 3 // 4 if isinstance(data, str) else 0
            continue
        d = _int(params.get("d"), 1)
        total += _int(params.get("nlist")) * IVF_LIST_BYTES
        m = _int(params.get("M")) if "nbits" in params else _int(params.get("pq_m"))
        nbits = _int(params.get("nbits")) or _int(params.get("pq_nbits"))
        if m and nbits:  # a product quantizer: d x 2^nbits float centroids
            total += d * (1 << min(nbits, 24)) * 4
        description = params.get("description")
        if isinstance(description, str):
            total += factory_bytes(d, description)
    return total


def factory_bytes(d: int, description: str) -> int:
    """What ``index_factory(d, description)`` allocates at construction, read from the tokens
    that allocate: inverted lists (``IVFn``, ``IMImxb``), quantizer codebooks (``PQm[xb]`` and
    its additive relatives), transform matrices (``PCAn``, ``OPQm_n``, ...)."""
    total = 0
    for match in _IVF.finditer(description):
        total += int(match.group(1)) * IVF_LIST_BYTES
    for match in _IMI.finditer(description):
        m, bits = int(match.group(1)), min(int(match.group(2)), 32)
        total += (1 << (bits * m)) * IVF_LIST_BYTES + d * (1 << bits) * 4
    for match in _PQ.finditer(description):
        nbits = min(int(match.group(2) or _DEFAULT_NBITS), 24)
        total += d * (1 << nbits) * 4
    for match in _PCA.finditer(description):
        out = int(match.group(2) or match.group(1))
        total += (d + 1) * max(out, d) * 4
    for match in _HNSW.finditer(description):
        total += int(match.group(1)) * 64  # per-level neighbour tables: small until vectors come
    # a number no rule above reads (a new faiss token) still cannot pass unbounded
    largest = max((int(n) for n in _NUMBER.findall(description)), default=0)
    return max(total, largest * IVF_LIST_BYTES if largest > 1 << 20 else 0)


def train_bytes(index: Any, rows: int) -> int:
    """Bytes a ``train`` on ``rows`` vectors takes beyond its input: the centroids it keeps
    (an IVF's ``nlist x d`` in its quantizer, a PQ's codebooks, IVFPQ's precomputed table) and
    k-means' working buffers (an assignment and a distance per row, a copy of sampled rows)."""
    import faiss

    from faissx_core.specs import downcast

    idx = downcast(index)
    d = int(idx.d)
    total = rows * (8 + 4 + d * 4)
    while not hasattr(idx, "nlist") and isinstance(getattr(idx, "index", None), faiss.Index):
        idx = downcast(idx.index)
    nlist = int(getattr(idx, "nlist", 0) or 0)
    total += nlist * d * 4
    pq = getattr(idx, "pq", None)
    if pq is not None and nlist:
        table = nlist * int(pq.M) * int(pq.ksub) * 4
        total += min(table, int(getattr(faiss, "precomputed_table_max_bytes", 1 << 31)))
    return total
