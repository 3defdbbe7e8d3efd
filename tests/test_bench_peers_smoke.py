"""The peer benchmark still runs: ``python -m benchmarks.peers --quick`` for the systems that
live in this repository's virtualenv (FAISSx with ``--data-dir --fsync always``, local faiss),
end to end through its agents, on 1k vectors.

The other peers need their own virtualenvs (``make bench-peers`` builds them); here the
harness itself is checked: real ``faissx serve`` with a data directory, real agent processes,
the JSON and the report. Figures that are facts (counts, exact recall, deleted ids gone) are
asserted; timings never are.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_module


def test_quick_peer_benchmark_runs_faissx_and_local(tmp_path: Path) -> None:
    run_module(
        "benchmarks.peers",
        *("--quick", "--systems", "faissx-always,local", "--no-anchors"),
        *("--cache", str(tmp_path / "cache")),
        timeout=300,
    )
    out = tmp_path / "cache" / "quick"
    results = json.loads((out / "latest.json").read_text())
    assert "load average" in results["meta"]["uptime_before"]
    kinds = results["shapes"]["d32-n1000"]["kinds"]
    for kind in ("flat", "hnsw"):
        for system in ("faissx-always", "local"):
            case = kinds[kind][system]
            assert "error" not in case, (kind, system, case.get("error"))
            assert case["load"]["count"] == 1000, (kind, system)
            assert case["recall"] >= 0.95, (kind, system)
            assert {"p50_ms", "p99_ms"} <= set(case["latency"]), (kind, system)
            assert case["qps_concurrent"]["clients"] == 4, (kind, system)
            assert case["add_row"]["n"] == 20, (kind, system)
    for system in ("faissx-always", "local"):
        flat = kinds["flat"][system]
        assert flat["recall"] == 1.0, system  # exact search
        # 1000 loaded + 20 one-row inserts, then 10 ids deleted
        assert (flat["delete"]["count_before"], flat["delete"]["count_after"]) == (1020, 1010)
        assert flat["delete"]["deleted_still_found"] == 0, system
        # faiss's HNSW cannot remove: the error is faiss's, reported, for both
        assert "remove_ids" in kinds["hnsw"][system]["delete"]["error"], system
    durable = kinds["flat"]["faissx-always"]
    assert durable["disk_bytes"] > 1000 * 32 * 4  # the vectors reached the data directory
    assert kinds["flat"]["faissx-always"]["memory"]["where"] == "server"
    assert kinds["flat"]["local"]["memory"]["where"] == "client process"
    assert kinds["hnsw"]["faissx-always"]["search_params"]["ef"] >= 16
    text = (out / "latest.md").read_text()
    assert "FAISSx --fsync always" in text and "local faiss (anchor)" in text
