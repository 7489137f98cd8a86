"""``scripts/bench_cpu_prefill.py`` (the README's CPU prefill figures): its ``--help`` says what it does in full
and what each flag means. The timing itself is not a test (it depends on the machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_cpu_prefill.py"


def test_help_describes_the_script_and_every_flag():
    spec = importlib.util.spec_from_file_location("bench_cpu_prefill", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    help_text = " ".join(mod.build_parser().format_help().split())
    # the whole first paragraph, not its first line cut at "(issue: the CPU"
    assert "`dash` at its defaults within 2x of `full` at 4,096 tokens)." in help_text
    for flag, words in [("--tokens", "prompt length"), ("--repeats", "median"), ("--methods", "the first")]:
        assert f"{flag} {flag.removeprefix('--').upper()} " in help_text and words in help_text
