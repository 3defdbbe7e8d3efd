"""``python -m benchmarks [--quick] [--no-original] [--out DIR] [--cache DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from benchmarks import report, runner
from benchmarks.config import CACHE_DIR, FULL, OUT_DIR, QUICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="FAISSx vs local faiss vs a bare pyzmq echo vs the original faissx: "
        "prints figures, ratios and goals; writes JSON and a PNG chart.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (seconds; for the smoke test), not for reporting",
    )
    parser.add_argument(
        "--no-original", action="store_true", help="leave out the original faissx package from PyPI"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR,
        help="where latest.json, <date>.json and latest.png go (default "
        "benchmarks/out, ignored by git; or FAISSX_BENCH_OUT)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=CACHE_DIR,
        help="the original faissx's virtualenv and the run logs (default "
        "~/.cache/faissx-bench; or FAISSX_BENCH_CACHE)",
    )
    args = parser.parse_args(argv)

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    results = runner.run(
        QUICK if args.quick else FULL,
        original=not args.no_original,
        cache=args.cache,
        console=console,
    )
    results.update(report.derive(results))
    report.print_report(results, console)
    for path in report.write_json(results, args.out):
        console.print(f"wrote {path}")
    problem = report.draw_chart(results, args.out / "latest.png")
    if problem:
        console.print(problem, style="yellow", markup=False)
    else:
        console.print(f"wrote {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
