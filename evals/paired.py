"""Prompt-by-prompt comparison of two series of a sweep (``dash-eval report DIR --paired SERIES``).

Needle tasks at a dozen prompts a cell have a standard error of 0.1-0.15, so two accuracies that differ by
one or two prompts say little. Every series of a sweep answers the same prompts (same task, length, sample
count and seed), so the honest comparison is paired: on how many prompts one series scores higher than the
other, and how likely that split is if neither is better: one-sided sign tests both ways (better, worse),
ties dropped.

A cell is paired with the baseline series' cell of the same task and length that has the same target
sparsity; when the baseline has a single cell there (``full``, or one calibrated point), every cell pairs
with it. A cell for which the baseline has several such cells (a grid: several cells without a target) pairs
with none of them, and the report names it.
"""

from __future__ import annotations

import json
import math

from dash_eval.evals.report import _fmt, group_rows, series
from dash_eval.evals.sweep_store import PREDICTIONS_FILE, ResultsStore


def sign_test_p(gained: int, lost: int) -> float:
    """One-sided sign test: the chance of ``gained`` or more wins out of ``gained + lost`` if each is a coin flip."""
    n = gained + lost
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(gained, n + 1)) / 2**n


def _fmt_p(p: float) -> str:
    """A p-value to three decimals; below 0.001 as ``<0.001``, not a misleading 0.000."""
    return "<0.001" if p < 0.0005 else f"{p:.3f}"


def prompt_scores(store: ResultsStore, cell_name: str) -> dict[int, float]:
    """``{doc_id: score}`` of a complete cell (its ``predictions.jsonl``). A damaged file is a ``ValueError``
    that names it and the line."""
    path = store.cell_dir(cell_name) / PREDICTIONS_FILE
    out: dict[int, float] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                out[int(rec["doc_id"])] = float(rec["score"])
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(
                    f"{path}, line {n}: not a prediction with a doc_id and a score ({type(exc).__name__}: {exc}); "
                    "remove the cell's directory and run the sweep again to redo it"
                ) from None
    return out


def paired_rows(rows: list[dict], store: ResultsStore, baseline: str, unpaired: list[dict] | None = None) -> list[dict]:
    """One record per cell that has a baseline cell to pair with (see the module's docstring). The cells of a
    task and length where the baseline has cells but none to pair with go to ``unpaired``, when given."""
    out: list[dict] = []
    for (task, length), group in group_rows(rows).items():
        base = [r for r in group if series(r) == baseline]
        if not base:
            continue
        by_target: dict[object, list[dict]] = {}
        for b in base:
            by_target.setdefault(b.get("target_sparsity"), []).append(b)
        for r in group:
            if series(r) == baseline:
                continue
            # the baseline's only cell here, else its only cell at this target: a grid of the baseline (several
            # cells without a target) has no one cell to pair with
            same = base if len(base) == 1 else by_target.get(r.get("target_sparsity"), [])
            b = same[0] if len(same) == 1 else None
            if b is None or (r.get("samples"), r.get("seed")) != (b.get("samples"), b.get("seed")):
                if unpaired is not None:
                    unpaired.append({"task": task, "length": length, "series": series(r), "cell": r.get("cell")})
                continue
            mine, theirs = prompt_scores(store, r["cell"]), prompt_scores(store, b["cell"])
            docs = sorted(set(mine) & set(theirs))
            gained = sum(mine[d] > theirs[d] for d in docs)
            lost = sum(mine[d] < theirs[d] for d in docs)
            out.append({
                "task": task, "length": length, "series": series(r), "target_sparsity": r.get("target_sparsity"),
                "sparsity": r.get("sparsity"), "accuracy": r.get("accuracy"),
                "baseline": baseline, "baseline_sparsity": b.get("sparsity"), "baseline_accuracy": b.get("accuracy"),
                "prompts": len(docs), "gained": gained, "lost": lost, "p_better": sign_test_p(gained, lost),
                "p_worse": sign_test_p(lost, gained),
            })
    return out


def paired_markdown(records: list[dict], baseline: str, unpaired: list[dict] | None = None) -> str:
    lines = [
        f"## Paired against {baseline}",
        "",
        f"Prompt by prompt on the same prompts: 'gained' counts prompts a series scores higher on than {baseline}, "
        "'lost' lower, of the prompts both cells scored; 'p better' and 'p worse' are the one-sided sign tests "
        f"that the series is better, or worse, than {baseline} (ties dropped; twice the smaller is the two-sided p).",
        "",
        f"| task | length | series | sparsity | accuracy | {baseline} | prompts | gained | lost | p better | p worse |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in records:
        base = f"{_fmt(rec['baseline_accuracy'])} ({_fmt(rec['baseline_sparsity'], pct=True)})"
        lines.append(
            f"| {rec['task']} | {rec['length']} | {rec['series']} | {_fmt(rec['sparsity'], pct=True)} | "
            f"{_fmt(rec['accuracy'])} | {base} | {rec['prompts']} | {rec['gained']} | {rec['lost']} | "
            f"{_fmt_p(rec['p_better'])} | {_fmt_p(rec['p_worse'])} |"
        )
    if not records:
        lines.append("| (no cell pairs with it) | | | | | | | | | | |")
    lines.append("")
    if unpaired:
        lines += [
            f"Not paired ({len(unpaired)} cell(s)): {baseline} has no single cell with the same task, length, "
            "target sparsity, sample count and seed (a grid of it has several): "
            + ", ".join(f"{u['series']} {u['cell']}" for u in unpaired) + ".",
            "",
        ]
    return "\n".join(lines)


def check_baseline(rows: list[dict], baseline: str) -> None:
    names = sorted({series(r) for r in rows})
    if baseline not in names:
        accepted = ", ".join(names) or "(none)"
        raise ValueError(f"--paired {baseline!r}: no such series in these results; accepted: {accepted}")
