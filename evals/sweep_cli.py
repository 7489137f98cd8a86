"""``dash-eval sweep CONFIG.yaml``: run a sweep of methods x grids x tasks x lengths into a leaderboard.

The config is validated whole first (every problem listed, nothing run). Complete cells are skipped,
so running the same command again resumes a killed or interrupted sweep. The exit statuses are those of
``EXIT_HELP`` (the ``--help`` epilog; docs/sweeps.md, "Exit status").
"""

from __future__ import annotations

import argparse
import sys

from dash_eval.evals.sweep import (
    EXIT_CELLS_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    run_sweep,
)
from dash_eval.evals.sweep_cells import expand_cells, parse_shard, shard_cells
from dash_eval.evals.sweep_config import ConfigError, SweepConfig, load_config
from dash_eval.evals.sweep_store import ResultsStore

from dash_eval.interrupts import interrupted_status, sigterm_raises

EXIT_HELP = f"""exit status:
  {EXIT_OK}    every cell is complete (run now or by an earlier run)
  {EXIT_USAGE}    the config or the arguments were rejected; no cell ran
  {EXIT_CELLS_FAILED}    the sweep ran to its end but some cells failed (error.json); a rerun retries them
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C; {EXIT_TERMINATED} on SIGTERM, e.g. a Slurm time limit); \
finished cells are kept and the same command resumes"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar: one line per finished cell instead"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="do not print the Markdown report at the end (nor, with --no-progress, a line per finished cell)",
    )
    parser.add_argument("--verbose", action="store_true", help="keep lm-eval's own log messages and progress bars")


def _cell_states(config: SweepConfig, shard: tuple[int, int] | None) -> list[tuple[int, str, bool]]:
    """Each cell of the sweep (of one shard, when given): its index, its name and whether it is complete."""
    store = ResultsStore(config.output)
    states = []
    for cell in shard_cells(expand_cells(config), shard):
        name = cell.name(config)
        states.append((cell.index, name, store.is_complete(name, cell.hash(config))))
    return states


def run(args: argparse.Namespace) -> int:
    with sigterm_raises():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"dash-eval sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output is not None and not args.output.strip():
        print("dash-eval sweep: --output is empty; give a results directory, or leave --output out for the "
              "config's 'output'", file=sys.stderr)
        return EXIT_USAGE
    try:
        # --output replaces the config's results directory before the check, so it is checked in its place
        config = load_config(args.config, output=args.output) if args.output else load_config(args.config)
    except ConfigError as exc:
        print(f"dash-eval sweep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("dash-eval sweep: interrupted while checking the config; no cell ran", file=sys.stderr)
        return interrupted_status(exc)
    if args.dry_run:
        states = _cell_states(config, shard)
        for index, name, complete in states:
            print(f"{index:4d}  {'complete' if complete else 'to run':8s}  {name}")
        sys.stdout.flush()
        print(f"{len(states)} cells -> {config.output}", file=sys.stderr)
        return EXIT_OK

    from dash_eval.evals.sweep_lm_eval import LmEvalRunner

    def runner_factory(cfg, store):
        return LmEvalRunner(cfg, store, verbose=args.verbose)

    try:
        summary = run_sweep(
            config,
            runner_factory=runner_factory,
            shard=shard,
            progress=not args.no_progress,
            cell_lines=not args.quiet,
        )
    except KeyboardInterrupt as exc:
        states = _cell_states(config, shard)
        done, total = sum(complete for _, _, complete in states), len(states)
        print(
            f"dash-eval sweep: interrupted: {done} of {total} cells complete (in {config.output}); "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return interrupted_status(exc)
    if not args.quiet and not summary.report_error:  # a report that failed to rebuild would be out of date
        print((ResultsStore(config.output).root / "report.md").read_text())
    print(summary.text(), file=sys.stderr)
    return summary.exit_status
