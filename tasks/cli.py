"""``dash-eval tasks``: list the tasks and haystacks, write samples as RULER-format JSONL.

dash-eval tasks list
dash-eval tasks sample niah_single --length 4096 --n 20 --seed 0 --tokenizer default --output niah.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TOKENIZER_ACCEPTED = (
    "a local tokenizer or model directory, a hub id already in the local cache, or 'default' (the embedded "
    "model); this project runs offline"
)


def load_tokenizer(name: str) -> Any:
    """The tokenizer that ``--tokenizer`` names, or a one-line ValueError naming the flag and what it accepts."""
    from dash_eval.dash_models.loading import looks_like_path
    from dash_eval.tasks import resolve_tokenizer

    path = Path(name).expanduser()
    if looks_like_path(name) and not path.exists():  # a path, not a hub id: no lookup
        raise ValueError(f"--tokenizer {name!r}: no such directory; accepted: {TOKENIZER_ACCEPTED}")
    try:
        return resolve_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - any failure to read the tokenizer is an argument error here
        if name != "default" and not path.exists():
            reason = "no such directory, and no hub id of that name in the local cache"
        else:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = f"cannot load a tokenizer from it ({type(exc).__name__}: {lines[0] if lines else ''})"
        raise ValueError(f"--tokenizer {name!r}: {reason}; accepted: {TOKENIZER_ACCEPTED}") from exc


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the tasks, what each probes, its haystacks and options")
    sample = sub.add_parser("sample", help="write samples of one task as RULER-format JSONL")
    sample.add_argument("name", help="task name (see 'dash-eval tasks list')")
    sample.add_argument("--length", type=int, required=True, help="target length in tokens (prompt + answer budget)")
    sample.add_argument("--n", type=int, required=True, help="number of samples")
    sample.add_argument("--seed", type=int, default=0, help="samples are deterministic by seed (default 0)")
    sample.add_argument("--tokenizer", required=True, help=f"the model's tokenizer: {TOKENIZER_ACCEPTED}")
    sample.add_argument("--output", required=True, help="JSONL file to write (atomically)")
    sample.add_argument("--haystack", default=None, help="haystack (default: the task's own)")
    sample.add_argument("--chat-template", action="store_true", help="size prompts inside the chat template")
    sample.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option, e.g. --option value_type=uuids --option num_keys=8 (repeatable)",
    )


def _list() -> int:
    from dash_eval.tasks import haystack_names, task_info, task_names
    from dash_eval.tasks.haystacks import HAYSTACKS

    for name in task_names():
        info = task_info(name)
        haystacks = ", ".join(info["haystacks"]) or "-"
        default = info["default_haystack"] or "-"
        print(f"{name:16s} {info['description']}")
        print(f"{'':16s} metric={info['metric']} haystacks={haystacks} (default {default})")
        print(f"{'':16s} options={json.dumps(info['options'])}")
    print()
    for name in haystack_names():
        print(f"haystack {name:8s} {HAYSTACKS.get(name).description}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    from dash_eval.tasks import generate_samples, write_jsonl
    from dash_eval.tasks.registry import UnknownNameError

    from dash_eval.file_modes import output_file_problem

    if (problem := output_file_problem(args.output)) is not None:  # before any sample is generated
        print(f"dash-eval tasks sample: --output {args.output!r}: {problem}", file=sys.stderr)
        return 2
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        samples = generate_samples(
            args.name,
            length=args.length,
            n=args.n,
            seed=args.seed,
            tokenizer=tokenizer,
            haystack=args.haystack,
            chat_template=args.chat_template,
            **dict(args.option),
        )
    except (ValueError, UnknownNameError) as err:
        print(f"dash-eval tasks sample: {err}", file=sys.stderr)
        return 2
    path = write_jsonl(samples, args.output)
    tokens = [s.metadata["token_count"] for s in samples]
    print(
        f"wrote {len(samples)} {args.name} samples to {path} "
        f"(prompt tokens {min(tokens)}-{max(tokens)}, answer budget {samples[0].max_new_tokens}, "
        f"length {args.length})"
    )
    return 0
