"""The leaderboard: one CSV row per complete cell, columns in a fixed order.

Columns: ``model, method, label`` (the series a report draws the row in: the method entry's ``label``,
default the method's name), then every parameter of every method in the sweep (blank where a method has
no such parameter), ``target_sparsity``, then the fixed columns below. Parameters are those of the
methods' parameter dataclasses with defaults filled in; a calibrated parameter holds its calibrated value.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable

from dash_eval.evals.sweep_store import atomic_write_text

LEAD_COLUMNS = ("model", "method", "label")
RESULT_COLUMNS = (
    "target_sparsity",
    "task",
    "length",
    "samples",
    "accuracy",
    "accuracy_stderr",
    "sparsity",
    "active_blocks_mean",
    "active_blocks_p10",
    "active_blocks_p50",
    "active_blocks_p90",
    "decode_sparsity",
    "wall_time_s",
    "tokens_per_s",
    "device",
    "seed",
    "dash_eval_version",
    "lm_eval_version",
    "config_hash",
    # beyond the list: what a reader needs to trace a row back
    "metric",
    "router",
    "layer_scales",
    "decode_active_blocks_mean",
    "calibration_sparsity",
    "calibration_reached",
    "calibration_layer_miss",  # calibrate_per_layer: the worst layer's distance from the target
    "calibration_time_s",
    "prompt_tokens_mean",
    "cell",
)
# Columns whose values differ between two runs of the same cell; everything else is reproducible.
TIMING_COLUMNS = ("wall_time_s", "tokens_per_s", "calibration_time_s")
FIXED_COLUMNS = set(LEAD_COLUMNS) | set(RESULT_COLUMNS)


def param_column(name: str) -> str:
    """A parameter named like a fixed column gets a prefix instead of overwriting it."""
    return f"param_{name}" if name in FIXED_COLUMNS else name


def columns_for(rows: Iterable[dict]) -> list[str]:
    params: list[str] = []
    for row in rows:
        for name in row.get("params", {}):
            col = param_column(name)
            if col not in params:
                params.append(col)
    return [*LEAD_COLUMNS, *sorted(params), *RESULT_COLUMNS]


def flatten(row: dict) -> dict:
    """A metrics record (as stored in a cell's metrics.json) -> one flat leaderboard row."""
    flat = {k: v for k, v in row.items() if k != "params"}
    for name, value in row.get("params", {}).items():
        flat[param_column(name)] = value
    return flat


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def leaderboard_csv(rows: list[dict]) -> str:
    cols = columns_for(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        flat = flatten(row)
        writer.writerow([_cell_text(flat.get(c)) for c in cols])
    return buf.getvalue()


def write_leaderboard(rows: list[dict], path: str | os.PathLike) -> None:
    atomic_write_text(path, leaderboard_csv(rows))
