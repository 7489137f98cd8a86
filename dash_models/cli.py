"""``dash-eval models``: model utilities.

``dash-eval models path default`` prints the directory of the converted embedded model (converting it
first, once, if needed), so that anything that wants a model path or a tokenizer path can be given one,
for example lm-eval's own RULER tasks: ``--metadata tokenizer=$(dash-eval models path default)``.
``dash-eval models path DIR`` prints DIR resolved, after checking that it holds a model config.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from dash_eval.dash_models.embedded import DEFAULT_MODEL_NAME, embedded_model_path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    path = sub.add_parser(
        "path",
        help="print the directory of a model ('default': the embedded model, converted first if needed)",
        description="Print the directory of a model. 'default' is the embedded SmolLM2-135M-Instruct, "
        "converted into the cache folder on first use ($DASH_EVAL_CACHE or ~/.cache/dash-eval).",
    )
    path.add_argument("model", help=f"'{DEFAULT_MODEL_NAME}' or a local model directory")


def _model_path(name: str) -> Path:
    if name == DEFAULT_MODEL_NAME:
        # Conversion messages go to stderr: stdout carries only the path, for $(dash-eval models path ...).
        with contextlib.redirect_stdout(sys.stderr):
            return embedded_model_path()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model {name!r}: not '{DEFAULT_MODEL_NAME}' and not a directory with a config.json; "
            f"accepted: '{DEFAULT_MODEL_NAME}' or a local Hugging Face model directory"
        )
    return path.resolve()


def run(args: argparse.Namespace) -> int:
    if args.action == "path":
        try:
            path = _model_path(args.model)
        except (ValueError, RuntimeError) as exc:
            print(f"dash-eval models path: {exc}", file=sys.stderr)
            return 2
        print(path)
        return 0
    raise ValueError(f"dash-eval models: unknown action {args.action!r}; accepted: path")
