"""The results directory of a sweep: one directory per cell, written atomically.

Layout::

    <output>/
      config.yaml              the sweep config as given (each shard writes the same file)
      cells.json               the config's cells (name -> identity hash), all shards': the reports
                               leave out complete cells of earlier versions of the config
      cells/<cell name>/
        cell.json              the exact cell config, with the equivalent hand-typed lm_eval command
        predictions.jsonl      one line per sample: prompt length, target, prediction, score, sparsity
        lm_eval_results.json   lm-eval's results dict for the cell's task
        metrics.json           the leaderboard row; written last, so its presence marks the cell complete
        error.json             only for a failed cell: the error and its traceback (removed on success)
      calibration/<key>.json   calibrated parameter values, reused when a sweep resumes or evaluates more
                             samples (the key leaves out the task's samples and seed)
      leaderboard.csv, report.md, iso_sparsity.csv, accuracy_vs_sparsity.png

Every file is written to a temporary name in its directory and renamed into place, so a killed sweep
never leaves a half-written file that looks complete. Files get the mode the process umask gives (0644 under
umask 022), not the temporary file's 0600: results directories are shared.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from dash_eval.file_modes import atomic_write_bytes

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
CELL_FILE = "cell.json"
PREDICTIONS_FILE = "predictions.jsonl"
LM_EVAL_FILE = "lm_eval_results.json"
MANIFEST_FILE = "cells.json"
# What the reports read of a leaderboard row: a metrics file without them is damaged, not complete.
REQUIRED_METRICS = ("cell", "config_hash", "method", "task", "sparsity", "accuracy", "length")

logger = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()


def _warn_once(path: Path, reason: str) -> None:
    key = (str(path), reason)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("%s: %s; the cell counts as not run (a sweep runs it again)", path, reason)


def row_order(row: dict) -> tuple:
    """The fixed order of leaderboard rows: the config's cell order, then the cell's name."""
    return row.get("cell_index", 0), row.get("cell", "")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy and torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def to_json(obj: Any) -> str:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return _finite(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


class ResultsStore:
    """Reads and writes one sweep's results directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def cell_dir(self, cell_name: str) -> Path:
        return self.cells_dir / cell_name

    def is_complete(self, cell_name: str, cell_hash: str) -> bool:
        """A cell is complete when its metrics file parses and belongs to the same cell spec."""
        row = self.read_metrics(cell_name)
        return row is not None and row.get("config_hash") == cell_hash

    def read_metrics(self, cell_name: str) -> dict | None:
        """The cell's leaderboard row, or None for a cell not run. A damaged cell (a metrics file that is not
        a JSON object with the reports' fields, or its predictions gone) also reads as None, with a warning
        naming the file once: a sweep runs it again instead of stopping on it."""
        d = self.cell_dir(cell_name)
        path = d / METRICS_FILE
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            _warn_once(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if not isinstance(row, dict):
            _warn_once(path, f"holds a JSON {type(row).__name__}, not an object")
            return None
        missing = [key for key in REQUIRED_METRICS if key not in row]
        if missing:
            _warn_once(path, f"lacks {', '.join(missing)}")
            return None
        if not (d / PREDICTIONS_FILE).is_file():
            _warn_once(d / PREDICTIONS_FILE, "is missing")
            return None
        return row

    def write_cell(
        self, cell_name: str, *, cell: dict, predictions: list[dict], lm_eval_results: dict, metrics: dict
    ) -> None:
        d = self.cell_dir(cell_name)
        atomic_write_json(d / CELL_FILE, cell)
        atomic_write_text(
            d / PREDICTIONS_FILE,
            "".join(json.dumps(_finite(p), default=_json_default, allow_nan=False) + "\n" for p in predictions),
        )
        atomic_write_json(d / LM_EVAL_FILE, lm_eval_results)
        # metrics last: its presence is what marks the cell complete
        atomic_write_json(d / METRICS_FILE, metrics)
        try:
            (d / ERROR_FILE).unlink()
        except FileNotFoundError:
            pass

    def write_failure(self, cell_name: str, *, cell: dict, error: dict) -> None:
        d = self.cell_dir(cell_name)
        atomic_write_json(d / CELL_FILE, cell)
        atomic_write_json(d / ERROR_FILE, error)

    def write_manifest(self, cells: dict[str, str]) -> None:
        """Record the current config's cells (name -> identity hash), every shard's."""
        atomic_write_json(self.root / MANIFEST_FILE, {"cells": cells})

    def manifest(self) -> dict[str, str] | None:
        """The current config's cells, or None for a directory written before manifests existed (or whose
        manifest is damaged: every cell then counts as current, and the next sweep writes it again)."""
        try:
            cells = json.loads((self.root / MANIFEST_FILE).read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError, TypeError):  # ValueError: bad JSON or UTF-8
            return None
        if not isinstance(cells, dict):
            return None
        return {str(k): v for k, v in cells.items()}

    @staticmethod
    def _current(cells: dict[str, str] | None, name: str, cell_hash: str | None) -> bool:
        return cells is None or (name in cells and (cell_hash is None or cells[name] == cell_hash))

    def partition_rows(self) -> tuple[list[dict], list[dict]]:
        """Leaderboard rows of the complete cells (all shards), in a fixed order, split into those the
        current config (``cells.json``) defines and the stale rest, left by an earlier version of it
        (another sample count, a dropped method). Every cell counts as current without a manifest."""
        current, stale = [], []
        cells = self.manifest()
        if self.cells_dir.is_dir():
            for d in sorted(self.cells_dir.iterdir()):
                row = self.read_metrics(d.name) if d.is_dir() else None
                if row is not None:
                    (current if self._current(cells, d.name, row.get("config_hash")) else stale).append(row)
        return sorted(current, key=row_order), sorted(stale, key=row_order)

    def rows(self, include_stale: bool = False) -> list[dict]:
        """The current config's rows (``partition_rows``), or every complete cell's with ``include_stale``."""
        current, stale = self.partition_rows()
        if not include_stale:
            return current
        return sorted(current + stale, key=row_order)

    def stale_cells(self) -> list[str]:
        """Complete cells in the directory that the current config does not define."""
        return sorted(r.get("cell", "") for r in self.partition_rows()[1])

    def failures(self, include_stale: bool = False) -> list[dict]:
        """Failed cells (an error file and no metrics) of the current config, for the report."""
        out = []
        cells = None if include_stale else self.manifest()
        if self.cells_dir.is_dir():
            for d in sorted(self.cells_dir.iterdir()):
                err = d / ERROR_FILE
                if d.is_dir() and err.is_file() and not (d / METRICS_FILE).is_file():
                    if not self._current(cells, d.name, None):
                        continue
                    try:
                        record = json.loads(err.read_text(encoding="utf-8"))
                    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                        record = None
                    if not isinstance(record, dict):
                        record = {"error": "unreadable error.json"}
                    out.append({**record, "cell": d.name})
        return out

    def calibration_path(self, key: str) -> Path:
        return self.root / "calibration" / f"{key}.json"

    def read_calibration(self, key: str) -> dict | None:
        """The calibration record of ``key``; None when there is none or it cannot be used (not JSON, not an
        object, no finite ``value``, ``sparsity`` and ``target``, a per-layer one without its multipliers): the
        cell then calibrates again and rewrites it, where a damaged record failed the cell on every run."""
        try:
            record = json.loads(self.calibration_path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict):
            return None
        for field in ("value", "sparsity", "target"):
            v = record.get(field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
        if record.get("per_layer") and not (isinstance(record.get("layer_scales"), dict) and record["layer_scales"]):
            return None
        return record

    def write_calibration(self, key: str, record: dict) -> None:
        atomic_write_json(self.calibration_path(key), record)
