"""``python -m benchmarks.peers [--quick|--large] [--systems a,b] [--kinds k] [--no-anchors]``."""

from __future__ import annotations

import argparse
import calendar
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.peers import report, run
from benchmarks.peers.systems import HERE, SYSTEMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1k vectors at d=32: a smoke test of every adapter, not figures",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="d=128/1M and d=768/100k under per-phase budgets (run.LARGE); writes large.*",
    )
    parser.add_argument(
        "--name",
        default="",
        help="basename of the JSON/markdown/chart written (default: latest; --large: large)",
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--kinds", default="flat,hnsw")
    parser.add_argument(
        "--shapes", default="", help="DxN[,DxN...] (default: 128x100000,768x20000; quick: 32x1000)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0,
        help="seconds per (shape, system, kind) before it is cut off",
    )
    parser.add_argument(
        "--phase-budgets",
        default="",
        metavar="LOAD,SEARCH,WRITE",
        help="seconds per phase of each case before it is reported as not finished",
    )
    parser.add_argument(
        "--no-anchors",
        action="store_true",
        help="skip the echo anchors (single-query and one-row-add gaps)",
    )
    parser.add_argument(
        "--until", default="", help="HH:MM (UTC): start no case after it (later ones: skipped)"
    )
    parser.add_argument("--out", type=Path, default=HERE.parent / "out" / "peers")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="redo latest.md and latest.png (next to it) from a run's JSON",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="with --report-only: first join these runs' JSONs (one shape each, run one after "
        "the other; a checkpoint's .partial.json counts) into the --report-only file",
    )
    args = parser.parse_args(argv)
    if args.merge:
        if not args.report_only:
            parser.error("--merge needs --report-only (the JSON to write)")
        parts = [json.loads(path.read_text()) for path in args.merge]
        args.report_only.write_text(json.dumps(run.merge(parts), indent=1, default=str))
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        results["derived"] = report.derive(results)
        args.report_only.write_text(json.dumps(results, indent=1, default=str))
        base = args.report_only.with_suffix("")
        base.with_suffix(".md").write_text(report.markdown(results))
        print(report.chart(results, base.with_suffix(".png")) or "chart written")
        return 0

    plan = run.QUICK if args.quick else run.LARGE if args.large else run.FULL
    name = args.name or ("large" if args.large else "latest")
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    plan = replace(plan, systems=tuple(args.systems.split(",")), kinds=tuple(args.kinds.split(",")))
    if args.shapes:
        plan = replace(
            plan,
            shapes=tuple(
                run.Shape(*(int(v) for v in s.split("x"))) for s in args.shapes.split(",")
            ),
        )
    if args.budget:
        plan = replace(plan, budget_s=args.budget)
    if args.phase_budgets:
        load_s, search_s, write_s = (float(v) for v in args.phase_budgets.split(","))
        plan = replace(plan, load_budget_s=load_s, search_budget_s=search_s, write_budget_s=write_s)

    def progress(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line, flush=True)

    from benchmarks.peers import venvs

    unavailable = {}
    for key in plan.systems:
        venv = SYSTEMS[key].venv
        if venv is not None:
            error = venvs.ensure(venv, log=progress)
            if error is not None:
                unavailable[key] = error
                progress(f"{key}: NOT INSTALLED: {error}")
    anchors = None
    if not args.no_anchors:
        from benchmarks.peers import anchors as anchor_mod

        anchors = anchor_mod.runner(quick=args.quick, progress=progress)
    until = None
    if args.until:
        hour, minute = (int(v) for v in args.until.split(":"))
        now = time.gmtime()
        until = calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hour, minute, 0))
    out = args.cache / "quick" if args.quick else args.out  # smoke output is not a result
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{name}.json"
    partial = out / f"{name}.partial.json"

    def checkpoint(so_far: dict) -> None:
        partial.write_text(json.dumps(so_far, indent=1, default=str))

    results = run.run(
        plan,
        cache=args.cache,
        progress=progress,
        anchors=anchors,
        unavailable=unavailable,
        until=until,
        checkpoint=checkpoint,
    )
    raw.write_text(json.dumps(results, indent=1, default=str))  # first: nothing below loses it
    partial.unlink(missing_ok=True)
    results["derived"] = report.derive(results)
    raw.write_text(json.dumps(results, indent=1, default=str))
    text = report.markdown(results)
    (out / f"{name}.md").write_text(text)
    print(text)
    problem = report.chart(results, out / f"{name}.png")
    print(problem or f"wrote {out / f'{name}.png'}")
    print(f"wrote {raw} and {out / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
