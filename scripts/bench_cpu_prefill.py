"""CPU prefill time of the embedded model with each method, as a ratio to `full` (issue: the CPU
path must be usable for real work: `dash` at its defaults within 2x of `full` at 4,096 tokens).

    python scripts/bench_cpu_prefill.py --tokens 4096 --repeats 3

Not a test: timings depend on the machine. Prints a table and the ratio of each method to `full`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from dash_eval.dash_models import apply_attention, get_tally, load_model


def build_parser() -> argparse.ArgumentParser:
    # the docstring's first paragraph (its first line alone stopped mid-sentence in --help)
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length of the timed prefill (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed prefills per method; the median is shown "
                        "(default 3)")
    parser.add_argument("--methods", default="full,dash,infllmv2,nsa",
                        help="comma-separated methods, each at its defaults; the ratios are to the first "
                        "(default full,dash,infllmv2,nsa)")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    model, _ = load_model("default", method="full")
    ids = torch.randint(100, 40000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    rows = []
    for method in args.methods.split(","):
        apply_attention(model, method)
        with torch.no_grad():
            model(ids[:, :256])  # warm-up
            times = []
            for _ in range(args.repeats):
                get_tally(model).reset()
                start = time.perf_counter()
                model(ids, use_cache=False)
                times.append(time.perf_counter() - start)
        rows.append((method, statistics.median(times), get_tally(model).summary("prefill")["sparsity"]))
    base = rows[0][1]
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.tokens} tokens, median of {args.repeats}")
    print(f"| method | prefill s | ratio to {rows[0][0]} | sparsity |")
    print("|---|---|---|---|")
    for method, seconds, sparsity in rows:
        print(f"| {method} | {seconds:.2f} | {seconds / base:.2f} | {sparsity:.3f} |")


if __name__ == "__main__":
    main()
