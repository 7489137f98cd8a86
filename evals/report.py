"""Reports of a results directory: accuracy-vs-sparsity tables, Pareto frontiers, iso-sparsity accuracy,
and a PNG plot. Everything is rebuilt from the cells' metrics files, so any number of shards merge.

A method's Pareto frontier is the set of its cells that no other cell of the same method beats on both
axes (higher or equal sparsity and higher or equal accuracy, one of them strictly). Along the frontier,
sorted by sparsity, accuracy never rises; iso-sparsity accuracy is the linear interpolation of the
frontier at a given sparsity, which is how "a better Pareto frontier" is compared between methods.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dash_eval.evals.leaderboard import write_leaderboard
from dash_eval.evals.sweep_store import ResultsStore, atomic_write_bytes, atomic_write_text, row_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ISO_SPARSITIES = (0.5, 0.75, 0.875, 0.9375)
# A frontier that ends this close to a target sparsity is read at its end point rather than left blank
# (calibrated top-k methods land a hair away from round sparsities).
ISO_TOLERANCE = 0.01


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated ``(sparsity, accuracy)`` points (both higher is better), by rising sparsity.
    Duplicates collapse to one point."""
    best = -math.inf
    frontier: list[tuple[float, float]] = []
    for s, a in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if a > best:
            frontier.append((s, a))
            best = a
    return frontier[::-1]


def interpolate_frontier(
    frontier: Sequence[tuple[float, float]], sparsity: float, tolerance: float = ISO_TOLERANCE
) -> float | None:
    """Accuracy along a frontier (from ``pareto_frontier``) at ``sparsity``: linear between its points, flat
    below its least sparse point (which reaches that accuracy at a higher sparsity already, so it covers
    every lower target), and ``None`` beyond its sparsest point (plus
    ``tolerance``), which the method never reached."""
    if not frontier:
        return None
    lo_s, lo_a = frontier[0]
    hi_s, hi_a = frontier[-1]
    if sparsity < lo_s:
        return lo_a
    if sparsity > hi_s:
        return hi_a if sparsity - hi_s <= tolerance else None
    for (s0, a0), (s1, a1) in zip(frontier, frontier[1:]):
        if s0 <= sparsity <= s1:
            if s1 == s0:
                return max(a0, a1)
            return a0 + (a1 - a0) * (sparsity - s0) / (s1 - s0)
    return lo_a  # a single-point frontier exactly at ``sparsity``


def _num(v) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def group_rows(rows: list[dict]) -> dict[tuple[str, object], list[dict]]:
    """Rows by ``(task, length)``, in first-seen order."""
    groups: dict[tuple[str, object], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["length"]), []).append(row)
    return groups


def series(row: dict) -> str:
    """The series a row belongs to: its method entry's label (e.g. ``dash-fitted``), else its method."""
    return row.get("label") or row["method"]


def _methods(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if series(r) not in seen:
            seen.append(series(r))
    return seen


def frontiers(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per series (method or label), the Pareto frontier of its rows (rows without both figures are left
    out)."""
    out = {}
    for method in _methods(rows):
        pts = [(_num(r["sparsity"]), _num(r["accuracy"])) for r in rows if series(r) == method]
        out[method] = pareto_frontier([p for p in pts if None not in p])
    return out


def iso_sparsity_rows(rows: list[dict], levels: Sequence[float] = ISO_SPARSITIES) -> list[dict]:
    """One record per (task, length, method): the frontier's accuracy at each sparsity level."""
    out = []
    for (task, length), group in group_rows(rows).items():
        for method, front in frontiers(group).items():
            rec = {"task": task, "length": length, "method": method, "frontier_points": len(front)}
            for level in levels:
                rec[f"accuracy_at_{level:g}"] = interpolate_frontier(front, level)
            out.append(rec)
    return out


def setting_text(row: dict) -> str:
    """The parameters the config set for this cell (the rest are the method's defaults)."""
    params = row.get("params", {})
    parts = [f"{k}={_short(params[k])}" for k in row.get("explicit", []) if k in params]
    if row.get("target_sparsity") is not None:
        calibrated = row.get("calibrated")
        cal = f" -> {calibrated}={_short(params.get(calibrated))}" if calibrated else ""
        if row.get("calibration_reached") is False:
            miss = row.get("calibration_layer_miss")
            layer = f"; a layer {_short(miss)} off" if isinstance(miss, (int, float)) else ""
            cal += f" (not reached: {_short(row.get('calibration_sparsity'))} on calibration samples{layer})"
        parts.append(f"target={row['target_sparsity']:g}{cal}")
    return ", ".join(parts) or "-"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fmt(v, digits: int = 3, pct: bool = False) -> str:
    f = _num(v)
    if f is None:
        return "-"
    return f"{100 * f:.1f}%" if pct else f"{f:.{digits}f}"


def markdown_report(
    rows: list[dict],
    failures: list[dict] | None = None,
    levels: Sequence[float] = ISO_SPARSITIES,
    title: str = "Sweep report",
    stale: Sequence[str] = (),
) -> str:
    lines = [f"# {title}", ""]
    if not rows:
        lines += ["No complete cells yet.", ""]
    if stale:
        lines += [
            f"{len(stale)} complete cell(s) in cells/ belong to an earlier version of the config (another "
            "sample count, seed or method list) and are left out; `dash-eval report --all` includes them.",
            "",
        ]
    models = sorted({str(r.get("model")) for r in rows})
    if models:
        lines += [
            f'Model: {", ".join(models)}. Sparsity is measured (METHODS.md, "Measured sparsity"): the '
            "fraction of causal query-key pairs of prefill that the fine stage skipped. A * marks a cell "
            "on its method's Pareto frontier.",
            "",
        ]
    for (task, length), group in group_rows(rows).items():
        front = {m: set(f) for m, f in frontiers(group).items()}
        lines += [
            f"## {task} at {length} tokens{_samples_text([r.get('samples') for r in group])}",
            "",
            "| method | setting | sparsity | accuracy | active blocks mean (p10/p50/p90) "
            "| decode sparsity | tokens/s | |",
            "|---|---|---:|---:|---|---:|---:|---|",
        ]
        ordered = sorted(group, key=lambda r: (_methods(group).index(series(r)), _num(r["sparsity"]) or 0.0))
        for r in ordered:
            point = (_num(r["sparsity"]), _num(r["accuracy"]))
            star = "*" if point in front.get(series(r), set()) else ""
            acc = _fmt(r["accuracy"])
            if _num(r.get("accuracy_stderr")) is not None:
                acc += f" ± {_fmt(r['accuracy_stderr'])}"
            blocks = (
                f"{_fmt(r.get('active_blocks_mean'), 1)} ({_fmt(r.get('active_blocks_p10'), 0)}/"
                f"{_fmt(r.get('active_blocks_p50'), 0)}/{_fmt(r.get('active_blocks_p90'), 0)})"
            )
            lines.append(
                f"| {series(r)} | {setting_text(r)} | {_fmt(r['sparsity'], pct=True)} | {acc} | "
                f"{blocks} | {_fmt(r.get('decode_sparsity'), pct=True)} | "
                f"{_fmt(r.get('tokens_per_s'), 0)} | {star} |"
            )
        lines.append("")
    iso = iso_sparsity_rows(rows, levels)
    if iso:
        head = " | ".join(f"{100 * lv:g}%" for lv in levels)
        lines += [
            "## Iso-sparsity accuracy",
            "",
            "Each method's accuracy interpolated along its Pareto frontier (flat below its least sparse point); "
            "'-' where the frontier does "
            f"not reach that sparsity (within {ISO_TOLERANCE:g}).",
            "",
            f"| task | length | method | {head} |",
            "|---|---:|---|" + "---:|" * len(levels),
        ]
        for rec in iso:
            vals = " | ".join(_fmt(rec[f"accuracy_at_{lv:g}"]) for lv in levels)
            lines.append(f"| {rec['task']} | {rec['length']} | {rec['method']} | {vals} |")
        lines.append("")
    if failures:
        lines += ["## Failed cells", "", "| cell | error |", "|---|---|"]
        for f in failures:
            msg = str(f.get("error", "")).replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {f['cell']} | {msg} |")
        lines.append("")
    return "\n".join(lines)


def _samples_text(counts: list) -> str:
    """The sample counts of a table's cells: one, or each of them (``--all`` mixes in cells of an earlier
    config, say one with fewer samples)."""
    known = sorted({n for n in counts if isinstance(n, int)})
    if not known:
        return ""
    text = " or ".join(str(n) for n in known)
    return f" ({text} sample{'' if known == [1] else 's'})"


def iso_sparsity_csv(rows: list[dict], levels: Sequence[float] = ISO_SPARSITIES) -> str:
    import csv
    import io

    iso = iso_sparsity_rows(rows, levels)
    cols = ["task", "length", "method", "frontier_points"] + [f"accuracy_at_{lv:g}" for lv in levels]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for rec in iso:
        w.writerow(["" if rec[c] is None else (repr(rec[c]) if isinstance(rec[c], float) else rec[c]) for c in cols])
    return buf.getvalue()


def plot_png(rows: list[dict]) -> bytes:
    """``plot_figure`` as PNG bytes, grown to take in the legend below the panels."""
    import io

    buf = io.BytesIO()
    # "tight" grows the image to take in the legend, so no entry is clipped
    plot_figure(rows).savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def plot_figure(rows: list[dict]) -> Figure:
    """Accuracy against sparsity, one panel per task and length, one colour per method, with each
    method's Pareto frontier drawn as a line, and one legend for the figure below the panels. A
    ``matplotlib.figure.Figure`` on the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(group_rows(rows).items()) or [(("no cells", ""), [])]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    width, height = 5.2 * ncols, 4.2 * nrows
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    methods = _methods(rows)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = _markers(methods)
    for k, ((task, length), group) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for method in methods:
            pts = [(_num(r["sparsity"]), _num(r["accuracy"])) for r in group if series(r) == method]
            pts = [p for p in pts if None not in p]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, color=colors[method], marker=markers[method], alpha=0.55, s=28)
            front = pareto_frontier(pts)
            fx, fy = zip(*front)
            if max(xs) == 0.0:  # a dense method: its accuracy is the reference line for the others
                ax.axhline(fy[0], color=colors[method], ls="--", lw=1.0, alpha=0.7)
            ax.plot(fx, fy, color=colors[method], marker=markers[method], lw=1.8)
        for lv in ISO_SPARSITIES:
            ax.axvline(lv, color="0.85", lw=0.8, zorder=0)
        ax.set_xlim(-0.02, 1.02)  # a cell at 99% sparsity shows its whole marker
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("measured sparsity (fraction of causal pairs skipped)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task} @ {length} tokens" if length != "" else task)
        ax.grid(alpha=0.3)
    # fixed margins (in inches) instead of tight_layout, which costs more than the drawing itself
    fig.subplots_adjust(
        left=0.7 / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.4 / height, wspace=0.3, hspace=0.45
    )
    if methods:
        _figure_legend(fig, methods, colors, markers, width)
    return fig


def _markers(methods: list[str]) -> dict[str, str]:
    """A marker per series; it shifts each time the ten colours come round again, so that no two of up to a
    hundred series share both colour and marker."""
    shapes = "osD^v<>ph*"
    return {m: shapes[(i + i // 10) % len(shapes)] for i, m in enumerate(methods)}


def _figure_legend(
    fig: Figure, methods: list[str], colors: dict[str, str], markers: dict[str, str], width: float
) -> None:
    """One legend for the whole figure, below the panels (inside one, it hides points), each series once, in
    as many columns as fit the figure's width with the longest label (9-point text: about 0.075 inch a
    character, plus the handle)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker=markers[m], lw=1.8, label=m) for m in methods]
    entry = max(2.4, 0.9 + 0.075 * max(len(m) for m in methods))
    ncol = min(len(methods), max(1, int(width // entry)))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=9, frameon=False)


def sweep_name(results_dir: str | os.PathLike) -> str:
    """The ``name`` of the config that the sweep wrote into its results directory (``config.yaml``), else
    the directory's own name (no such file, or one that cannot be read)."""
    import yaml

    root = Path(results_dir)
    try:
        raw = yaml.safe_load((root / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return root.name
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and name else root.name


def write_reports(
    results_dir: str | os.PathLike,
    levels: Sequence[float] = ISO_SPARSITIES,
    title: str | None = None,
    include_stale: bool = False,
    paired: str | None = None,
) -> dict[str, Path]:
    """Rebuild leaderboard.csv, report.md, iso_sparsity.csv and accuracy_vs_sparsity.png of a results
    directory from its cells (every shard's): those of the current config, or all with ``include_stale``.
    With ``paired`` (a series), the report adds a prompt-by-prompt comparison of every series with it
    (``evals.paired``). Returns the written paths."""
    store = ResultsStore(results_dir)
    rows, stale_rows = store.partition_rows()
    if include_stale:
        rows, stale_rows = sorted(rows + stale_rows, key=row_order), []
    paired_text = ""
    if paired is not None:
        from dash_eval.evals.paired import check_baseline, paired_markdown, paired_rows

        check_baseline(rows, paired)  # before anything is written
        unpaired: list[dict] = []
        paired_text = paired_markdown(paired_rows(rows, store, paired, unpaired), paired, unpaired)
    stale = [r.get("cell", "") for r in stale_rows]
    root = Path(results_dir)
    paths = {
        "leaderboard": root / "leaderboard.csv",
        "report": root / "report.md",
        "iso_sparsity": root / "iso_sparsity.csv",
        "plot": root / "accuracy_vs_sparsity.png",
    }
    write_leaderboard(rows, paths["leaderboard"])
    atomic_write_text(
        paths["report"],
        markdown_report(
            rows, store.failures(include_stale), levels, title or f"Sweep report: {sweep_name(root)}", stale
        )
        + ("\n" + paired_text if paired_text else ""),
    )
    atomic_write_text(paths["iso_sparsity"], iso_sparsity_csv(rows, levels))
    atomic_write_bytes(paths["plot"], plot_png(rows))
    return paths
