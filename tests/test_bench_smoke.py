"""The benchmark still runs: ``python -m benchmarks --quick --no-original`` end to end.

Tiny sizes, real processes (a ``faissx serve``, the echo server, client workers). Only the shape
of the JSON is checked: timings are never asserted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .conftest import run_module

SYSTEMS = {"local", "tcp", "ipc", "echo-tcp", "echo-ipc", "original"}


def test_quick_benchmark_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_module(
        "benchmarks",
        *("--quick", "--no-original", "--out", str(out), "--cache", str(tmp_path / "cache")),
        timeout=180,
    )
    assert "Ratios and goals" in done.stdout
    # every phase says what it is doing as it goes (a full run takes minutes)
    for phase in (
        "building",
        "built locally; now on FAISSx",
        "flat adds: round 1/",
        "nq=1 latency",
    ):
        assert phase in done.stdout, phase

    results = json.loads((out / "latest.json").read_text())
    assert {
        "meta",
        "machine",
        "sizes",
        "workloads",
        "ratios",
        "goals",
        "summary",
        "vs_original",
    } <= set(results)
    assert results["meta"]["quick"] is True
    assert {"cpu_count", "platform", "python", "faiss", "pyzmq"} <= set(results["machine"])
    assert len(list(out.glob("*.json"))) == 2  # latest.json and the dated copy

    workloads = results["workloads"]
    assert set(workloads) == {"flat", "ivf", "hnsw"}
    for kind, workload in workloads.items():
        assert {"latency", "batch_search", "build", "qps"} <= set(workload), kind
        for system in ("local", "tcp", "ipc", "echo-tcp", "echo-ipc"):
            assert "p50_us" in workload["latency"]["systems"][system], (kind, system)
            assert "p50_ms" in workload["batch_search"]["systems"][system], (kind, system)
        for system in ("local", "tcp", "ipc"):
            assert set(workload["qps"]["systems"][system]) == {"1", "2"}, (kind, system)
        assert workload["latency"]["systems"]["original"] == {"skipped": "--no-original"}
    for workload in ("add", "add_batches"):
        assert set(workloads["flat"][workload]["systems"]) == SYSTEMS
        assert "mb_s" in workloads["flat"][workload]["systems"]["tcp"]

    assert {g["goal"] for g in results["goals"]} == {"a", "b", "c", "d"}
    assert set(results["summary"]) == {"a", "b", "c", "d"}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in done.stdout
    else:
        assert (out / "latest.png").stat().st_size > 0


def test_one_row_durability_benchmark_writes_its_json(tmp_path: Path) -> None:
    """``python -m benchmarks.durability --one-row`` at tiny sizes, against this build twice
    (``--compare``): the table and the JSON have every configuration and build."""
    faissx = f"again={Path(sys.executable).parent / 'faissx'}"
    sizes = ["--rows", "3", "--blocks", "2", "--dims", "8", "--clients", "1,2", "--modes", "batch"]
    done = run_module(
        "benchmarks.durability",
        *("--one-row", *sizes, "--compare", faissx),
        timeout=240,
        env={"FAISSX_BENCH_OUT": str(tmp_path)},
    )
    assert "load average" in done.stdout and "fsync/add" in done.stdout
    results = json.loads((tmp_path / "durability-one-row.json").read_text())["results"]
    assert set(results) == {"batch"}
    for configs in results.values():
        assert set(configs) == {"d=8,c=1", "d=8,c=2"}
        for per_build in configs.values():
            assert set(per_build) == {"this", "again"}
            for figures in per_build.values():
                assert set(figures) == {"p50_ms", "p99_ms", "adds_per_s", "fsyncs_per_add"}
