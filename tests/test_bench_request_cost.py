"""``python -m benchmarks.peers.request_cost`` still runs end to end: a real ``faissx serve``
and the echo server as subprocesses, this test's subprocess as the client of both.

Facts are asserted (the remote index answers as local faiss does, every request was counted,
the ratios are the arithmetic of the figures beside them); timings never are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_module


def test_request_cost_takes_one_flat_query_apart(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    done = run_module(
        "benchmarks.peers.request_cost",
        *("--kind", "flat", "--rounds", "2", "--reps", "20", "--out", str(out)),
        timeout=300,
    )
    (result,) = json.loads(out.read_text())
    assert result["ids_as_local"] == 1.0  # exact search: the same ids as local faiss
    assert result["requests"] == 40
    for system in ("faissx", "echo"):
        figures = result[system]
        assert figures["p50_us"] > 0
        assert figures["client_cpu_us"] >= 0 and figures["server_socket_thread_cpu_us"] >= 0
    local, echo, ratio = result["local"], result["echo"]["p50_us"], result["ratio"]
    hot, gap = local["hot_p50_us"], local["after_gap_p50_us"]
    assert ratio["floor"] == pytest.approx(1 + (gap - hot) / echo)
    assert ratio["anchor"] == pytest.approx((result["faissx"]["p50_us"] - hot) / echo)
    assert "floor for a server adding no work" in done.stdout
