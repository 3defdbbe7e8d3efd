"""Workload sizes: the full run (issue 7's workloads) and a quick one for the smoke test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Where a run writes its figures: ignored by git, so ``make bench`` never rewrites the results
#: published in ``benchmarks/results/`` (copy a run there on purpose to publish it).
OUT_DIR = Path(os.environ.get("FAISSX_BENCH_OUT") or Path(__file__).resolve().parent / "out")
#: The original package's virtualenv (about 170 MB) and the run logs: outside the tree.
CACHE_DIR = Path(
    os.environ.get("FAISSX_BENCH_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "faissx-bench"
)

#: The release of the original package compared against (installed from the package index).
ORIGINAL_VERSION = "0.20260422.2"


@dataclass(frozen=True)
class Sizes:
    d: int = 128
    k: int = 10
    #: (a) nq=1 latency and (d) concurrent QPS run over a flat index of this many vectors.
    n_small: int = 10_000
    #: (b) the nq=1000 search and (c) the one-call add use this many; so does the IVF index.
    n_large: int = 100_000
    #: HNSW builds are slow (about 30 s per 100k on 2 cores, three times per run): smaller.
    n_hnsw: int = 50_000
    n_queries: int = 10_000
    nq_batch: int = 1000
    ivf: str = "IVF256,Flat"
    nprobe: int = 16
    hnsw: str = "HNSW32"

    #: (a): rounds x calls per system per round; the systems take turns every round.
    latency_rounds: int = 5
    latency_reps: int = 400
    latency_warmup: int = 20
    #: (b): one search per system per round.
    batch_rounds: int = 9
    #: (c): one add of n_large per system per round; then batch_add_n vectors in batch_add calls.
    add_rounds: int = 15
    batch_add: int = 1000
    batch_add_n: int = 20_000
    #: (d): clients x seconds, repeated qps_rounds times in turn; nq cycles 1..nq_max.
    clients: tuple[int, ...] = (1, 2, 4)
    qps_seconds: float = 1.5
    qps_rounds: int = 3
    qps_start_delay: float = 0.3
    nq_max: int = 16

    #: The original package is 100-1000x slower: fewer repetitions keep the run short.
    orig_latency_reps: int = 20
    orig_batch_reps: int = 2
    orig_add_rounds: int = 2
    orig_batch_add_n: int = 10_000
    orig_qps_seconds: float = 3.0


FULL = Sizes()

QUICK = Sizes(
    d=32,
    n_small=500,
    n_large=2000,
    n_hnsw=1000,
    n_queries=400,
    nq_batch=50,
    ivf="IVF16,Flat",
    nprobe=4,
    latency_rounds=2,
    latency_reps=20,
    latency_warmup=3,
    batch_rounds=2,
    add_rounds=2,
    batch_add=100,
    batch_add_n=500,
    clients=(1, 2),
    qps_seconds=0.15,
    qps_rounds=1,
    qps_start_delay=0.1,
    nq_max=4,
    orig_latency_reps=3,
    orig_batch_reps=1,
    orig_add_rounds=1,
    orig_batch_add_n=200,
    orig_qps_seconds=0.3,
)
