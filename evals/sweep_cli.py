"""``dash-eval sweep CONFIG.yaml``: run a sweep of methods x grids x tasks x lengths into a leaderboard.

The config is validated whole first (every problem listed, nothing run). Complete cells are skipped,
so running the same command again resumes a killed sweep. The exit status is the number of failed
cells (at most 100); 2 with no cell run means the config or the arguments were rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dash_eval.evals.sweep_cells import expand_cells, parse_shard, shard_cells
from dash_eval.evals.sweep_config import ConfigError, load_config
from dash_eval.evals.sweep_store import ResultsStore


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="sweep YAML file (see docs/sweeps.md)")
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N (1-based): a deterministic subset, so N processes, GPUs or array jobs "
        "share one sweep and one results directory; 'dash-eval report' merges them",
    )
    parser.add_argument("--output", help="results directory (default: the config's 'output')")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate the config, list the cells and whether each is complete"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="do not print the Markdown report at the end")
    parser.add_argument("--verbose", action="store_true", help="keep lm-eval's own log messages and progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"dash-eval sweep: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"dash-eval sweep: {exc}", file=sys.stderr)
        return 2
    if args.output:
        config = dataclasses.replace(config, output=args.output)
    if args.dry_run:
        store = ResultsStore(config.output)
        cells = shard_cells(expand_cells(config), shard)
        for cell in cells:
            name = cell.name(config)
            state = "complete" if store.is_complete(name, cell.hash(config)) else "to run"
            print(f"{cell.index:4d}  {state:8s}  {name}")
        sys.stdout.flush()
        print(f"{len(cells)} cells -> {config.output}", file=sys.stderr)
        return 0

    from dash_eval.evals.sweep import run_sweep
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner

    def runner_factory(cfg, store):
        return LmEvalRunner(cfg, store, verbose=args.verbose)

    summary = run_sweep(config, runner_factory=runner_factory, shard=shard, progress=not args.no_progress)
    if not args.quiet:
        print((ResultsStore(config.output).root / "report.md").read_text())
    print(summary.text(), file=sys.stderr)
    return summary.exit_status
