"""The ``dash-eval`` command line: one sub-command per module, imported only when it is used.

A sub-command module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Adding a command is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what the shell reports for a program whose reader went away

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("dash_eval.evals.sweep_cli", "run a YAML sweep of methods x tasks x lengths into a leaderboard"),
    "report": ("dash_eval.evals.report_cli", "rebuild tables and plots of a results directory"),
    "tasks": ("dash_eval.tasks.cli", "list tasks and write task samples as RULER-format JSONL"),
    "models": ("dash_eval.dash_models.cli", "model utilities (path of the converted embedded model)"),
    "bench": ("dash_eval.kernels.bench", "check and time the attention kernels against dense baselines (GPU)"),
    "fit-router": ("dash_eval.dash_models.router_fit_cli", "fit DashAttention routers on a frozen dense model"),
}


def _top_level_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: dash-eval COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'dash-eval COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: the usage goes to stderr, and the exit code says it was not run
        print(_top_level_help(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0
    if argv[0] == "--version":
        from dash_eval import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dash-eval: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dash-eval {name}", description=help_)
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that left early (`| head`) is met here, not at exit
    except BrokenPipeError:
        # `dash-eval tasks list | head`: the reader has what it wanted. Stop quietly, as a program killed by
        # SIGPIPE would, instead of a traceback (and Python's own complaint when it flushes stdout at exit).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
