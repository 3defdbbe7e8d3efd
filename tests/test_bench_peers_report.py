"""The peer benchmark's bookkeeping for bounded runs: a case cut off by its budget is reported
with what it completed (never dropped), a load FAISSx did not finish against a peer that did is a
loss (and the reverse a win), and runs made one after the other merge into one result.

Pure data in, text and figures out: the figures are a run's JSON as ``run.run`` writes it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from benchmarks.peers import report, run


def _meta(started: str = "2026-12-01T07:00:00+00:00") -> dict[str, Any]:
    systems = {
        "faissx-always": {"label": "FAISSx --fsync always", "match": "", "searches": True},
        "pgvector": {"label": "pgvector", "match": "faissx-always", "searches": True},
        "lancedb": {"label": "LanceDB", "match": "faissx-off", "searches": True},
    }
    for info in systems.values():
        info.update(durability="d", concurrency="processes", note="")
    return {
        "started": started,
        "uptime_before": "load average: 1.00",
        "plan": asdict(run.LARGE),
        "machine": {"cpus": 2, "platform": "linux"},
        "systems": systems,
        "loadavg_samples": [[1, 2.0], [2, 4.0]],
    }


def _dnf_load(rows: int) -> dict[str, Any]:
    return {
        "dnf": {"phase": "load", "budget_s": 300.0, "completed": []},
        "error": "did not finish load in 300 s",
        "load_progress": {"rows": rows, "of": 1000, "insert_s": 290.0, "rows_per_s": rows / 290},
    }


def _results() -> dict[str, Any]:
    return {
        "meta": _meta(),
        "shapes": {
            "d8-n1000": {
                "shape": {"d": 8, "n": 1000, "nq": 100},
                "kinds": {
                    "hnsw": {
                        "faissx-always": _dnf_load(600),
                        "pgvector": {"load": {"seconds": 250.0}, "latency": {"p50_ms": 2.0}},
                        "lancedb": _dnf_load(1000),
                    }
                },
            }
        },
    }


def test_a_load_faissx_did_not_finish_is_a_loss_with_a_bound() -> None:
    derived = report.derive(_results())
    cell = derived["ratios"]["d8-n1000"]["hnsw"]["pgvector"]["rows"]["load_s"]
    assert cell["bound"] == ">" and not cell["faissx_ahead"]
    assert abs(cell["ratio"] - 300.0 / 250.0) < 1e-9
    assert [(loss["peer"], loss["row"]) for loss in derived["losses"]] == [("pgvector", "load_s")]
    # both cut off (LanceDB against the --fsync always stand-in): no ratio, no loss
    assert "lancedb" not in derived["ratios"]["d8-n1000"]["hnsw"]


def test_a_peer_that_did_not_finish_is_a_win_with_a_bound() -> None:
    results = _results()
    kinds = results["shapes"]["d8-n1000"]["kinds"]["hnsw"]
    kinds["faissx-always"] = {"load": {"seconds": 30.0}}
    derived = report.derive(results)
    cell = derived["ratios"]["d8-n1000"]["hnsw"]["lancedb"]["rows"]["load_s"]
    assert cell == {
        "ratio": 30.0 / 300.0,
        "faissx_ahead": True,
        "faissx": "faissx-always",  # a write row stands in only with more durability
        "bound": "<",
    }


def test_the_markdown_names_every_cut_off_case_and_what_it_did() -> None:
    text = report.markdown(_results())
    assert "DNF: 600 rows in 300 s" in text
    assert "did not finish load in 300 s; inserted 600 of 1,000 rows" in text
    assert "did not finish in 300 s vs pgvector 250 (ratio >1.20)" in text


def test_runs_made_one_after_the_other_merge_and_a_rerun_replaces_its_cases() -> None:
    first = _results()
    second = _results()
    second["meta"] = _meta("2026-12-01T08:00:00+00:00")
    second["meta"]["finished"] = "2026-12-01T08:05:00+00:00"
    second["shapes"]["d8-n1000"]["kinds"]["hnsw"] = {"faissx-always": {"load": {"seconds": 9.0}}}
    merged = run.merge([first, second])
    cases = merged["shapes"]["d8-n1000"]["kinds"]["hnsw"]
    assert cases["faissx-always"]["load"] == {"seconds": 9.0}
    assert cases["faissx-always"]["rerun"] == "2026-12-01T08:00:00+00:00"
    assert "dnf" in cases["lancedb"]  # not re-run: kept
    meta = merged["meta"]
    assert [p["started"] for p in meta["parts"]] == [
        "2026-12-01T07:00:00+00:00",
        "2026-12-01T08:00:00+00:00",
    ]
    assert meta["finished"] == "2026-12-01T08:05:00+00:00"
    assert meta["loadavg_during"] == {"min": 2.0, "median": 3.0, "max": 4.0, "samples": 4}
