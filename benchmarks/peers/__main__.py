"""``python -m benchmarks.peers [--quick] [--systems a,b] [--kinds flat,hnsw] [--no-anchors]``."""

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
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        results["derived"] = report.derive(results)
        args.report_only.write_text(json.dumps(results, indent=1, default=str))
        (args.report_only.parent / "latest.md").write_text(report.markdown(results))
        print(report.chart(results, args.report_only.parent / "latest.png") or "chart written")
        return 0

    plan = run.QUICK if args.quick else run.FULL
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

    def progress(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line, flush=True)

    from benchmarks.peers import venvs

    unavailable = {}
    for key in plan.systems:
        name = SYSTEMS[key].venv
        if name is not None:
            error = venvs.ensure(name, log=progress)
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
    results = run.run(
        plan,
        cache=args.cache,
        progress=progress,
        anchors=anchors,
        unavailable=unavailable,
        until=until,
    )
    out = args.cache / "quick" if args.quick else args.out  # smoke output is not a result
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "latest.json"
    raw.write_text(json.dumps(results, indent=1, default=str))  # first: nothing below loses it
    results["derived"] = report.derive(results)
    raw.write_text(json.dumps(results, indent=1, default=str))
    text = report.markdown(results)
    (out / "latest.md").write_text(text)
    print(text)
    problem = report.chart(results, out / "latest.png")
    print(problem or f"wrote {out / 'latest.png'}")
    print(f"wrote {raw} and {out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
