"""``dash-eval report RESULTS_DIR``: rebuild the leaderboard, tables and plot of a results directory
from its cells (every shard's), and print the Markdown report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dash_eval.evals.report import ISO_SPARSITIES, write_reports


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(x) for x in text.split(","))
    except ValueError:
        levels = ()
    if not levels or not all(0.0 < x < 1.0 for x in levels):
        raise argparse.ArgumentTypeError(
            f"--iso: bad value {text!r}; accepted: comma-separated sparsities in (0, 1), e.g. 0.5,0.75"
        )
    return levels


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", help="a sweep's output directory (the one holding cells/)")
    parser.add_argument(
        "--iso",
        type=_levels,
        default=ISO_SPARSITIES,
        help="sparsity levels of the iso-sparsity table (default: 0.5,0.75,0.875,0.9375)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="also the complete cells of earlier versions of the config (by default only the cells the "
        "last sweep's config defines, cells.json)",
    )
    parser.add_argument(
        "--paired",
        metavar="SERIES",
        help="add a prompt-by-prompt comparison of every series with this one (a label such as "
        "dash-mean-pooled, or a method): prompts gained and lost, and a one-sided sign test",
    )
    parser.add_argument("--quiet", action="store_true", help="write the files but print only their paths")


def run(args: argparse.Namespace) -> int:
    root = Path(args.results_dir)
    if not (root / "cells").is_dir():
        print(
            f"dash-eval report: {str(root)!r} is not a sweep results directory (no cells/ folder in it); "
            "give the 'output' directory of a sweep",
            file=sys.stderr,
        )
        return 2
    try:
        paths = write_reports(root, levels=args.iso, include_stale=args.all, paired=args.paired)
    except ValueError as exc:
        print(f"dash-eval report: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(paths["report"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0
