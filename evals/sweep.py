"""Running a sweep: expand the config into cells, skip the complete ones, run the rest one by one,
record each as it finishes (or fails), and rebuild the reports after every cell.

The model-facing work lives in a *cell runner* (``sweep_lm_eval.LmEvalRunner`` runs cells through
lm-eval with one loaded model); this module only orders, records and reports, so it is tested with a
stand-in runner and no model.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from dash_eval.evals.report import write_reports
from dash_eval.evals.sweep_cells import Cell, expand_cells, shard_cells
from dash_eval.evals.sweep_config import SweepConfig
from dash_eval.evals.sweep_store import ResultsStore, atomic_write_text

from dash_eval.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED  # noqa: F401 (the sweep's exit statuses)

# Exit statuses of ``dash-eval sweep`` (docs/sweeps.md, "Exit status").
EXIT_OK = 0  # every cell to run is complete
EXIT_USAGE = 2  # the config or the arguments were rejected; no cell ran
EXIT_CELLS_FAILED = 3  # the sweep ran to its end but some cells failed; a rerun retries them
# EXIT_INTERRUPTED (130, Ctrl-C) and EXIT_TERMINATED (143, SIGTERM: Slurm's time limit, kill), from
# dash_eval.interrupts: finished cells are kept and a rerun resumes


@dataclass
class CellResult:
    """What a runner returns for one cell. ``metrics`` holds the measured figures of the leaderboard
    (accuracy, accuracy_stderr, sparsity, active_blocks_*, decode_sparsity, wall_time_s, tokens_per_s,
    samples, ...); ``params`` the method's parameters as run (a calibrated one filled in)."""

    metrics: dict[str, Any]
    params: dict[str, Any]
    predictions: list[dict] = field(default_factory=list)
    lm_eval_results: dict = field(default_factory=dict)
    command: str = ""  # the equivalent hand-typed lm_eval command
    calibration: dict | None = None


class CellRunner(Protocol):
    device_name: str

    def run_cell(self, cell: Cell, on_samples: Callable[[int], None]) -> CellResult: ...


@dataclass
class SweepSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_cells: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    output: str = ""
    report_error: str = ""  # why the last rebuild of the report files failed ("" when it worked)

    @property
    def exit_status(self) -> int:
        return EXIT_CELLS_FAILED if self.failed else EXIT_OK

    def text(self) -> str:
        lines = [
            f"sweep: {self.total} cells: {self.done} done, {self.skipped} skipped (already complete), "
            f"{self.failed} failed, in {self.wall_time_s:.1f} s; results in {self.output}"
        ]
        lines += [f"  failed: {name}" for name in self.failed_cells]
        if self.report_error:
            lines.append(
                f"  report files not rebuilt ({self.report_error}); 'dash-eval report {self.output}' rebuilds them"
            )
        return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import dash_eval

    try:
        lm_eval_version = version("lm_eval")
    except PackageNotFoundError:
        lm_eval_version = ""
    return {"dash_eval_version": dash_eval.__version__, "lm_eval_version": lm_eval_version}


def cell_record(cell: Cell, config: SweepConfig, cell_name: str) -> dict:
    """The exact configuration of a cell, as written to its ``cell.json``."""
    return {
        "cell": cell_name,
        "cell_index": cell.index,
        "config_hash": cell.hash(config),
        "sweep": {"name": config.name, "config_hash": config.hash()},
        "spec": cell.spec(config),
    }


def metrics_row(cell: Cell, config: SweepConfig, cell_name: str, result: CellResult, device: str) -> dict:
    """The leaderboard row of a finished cell (stored as its ``metrics.json``)."""
    row: dict[str, Any] = {
        "model": config.model.pretrained,
        "router": cell.effective_router(config),
        "layer_scales": cell.layer_scales,
        "method": cell.method,
        "label": cell.series,
        "params": result.params,
        "explicit": list(cell.explicit),
        "target_sparsity": cell.target_sparsity,
        "calibrated": cell.calibrate,
        "task": cell.task,
        "length": cell.length,
        "samples": cell.samples,
        "seed": cell.seed,
        "device": device,
        **versions(),
        "config_hash": cell.hash(config),
        "cell": cell_name,
        "cell_index": cell.index,
    }
    row.update(result.metrics)
    if result.calibration is not None:
        row.update(calibration_columns(result.calibration))
    return row


def calibration_columns(cal: dict) -> dict:
    """A calibration record's leaderboard columns. ``calibrate_per_layer`` promises every layer at the target, not
    only their mean: such a record is reached only where every layer is, and gives the worst layer's miss."""
    out = {"calibration_sparsity": cal.get("sparsity"), "calibration_reached": cal.get("reached")}
    if cal.get("per_layer"):
        layers = [v for v in (cal.get("layer_sparsity") or {}).values() if isinstance(v, (int, float))]
        target = cal.get("target")
        if layers and isinstance(target, (int, float)):
            out["calibration_layer_miss"] = max(abs(v - target) for v in layers)
        out["calibration_reached"] = bool(cal.get("reached")) and bool(cal.get("layers_reached"))
    out["calibration_time_s"] = cal.get("time_s")
    return out


def cell_label(cell: Cell, config: SweepConfig) -> str:
    """A short label of a cell for progress output: its series, the grid values and target that tell it from
    the entry's other cells, and its task at its length (``dash scale=2 niah_single@1024``; a JSONL task's
    length is ``file``, its prompts' own)."""
    grid = config.methods[cell.entry].grid
    parts = [cell.series]
    parts += [
        f"{k}={_value_text(cell.params[k])}" for k, values in grid.items() if len(values) > 1 and k in cell.params
    ]
    if cell.target_sparsity is not None:
        parts.append(f"target={cell.target_sparsity:g}")
    parts.append(f"{cell.task}@{'file' if cell.length is None else cell.length}")
    return " ".join(parts)


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _figure_text(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


class _Progress:
    """One bar over the samples of the cells still to run (so its rate and time left cover the whole
    sweep), labelled with the cell counts. Without the bar, one line per finished cell instead (unless
    ``cell_lines`` is off); a failed cell always gets a line, above the bar."""

    def __init__(
        self, total_samples: int, total_cells: int, enabled: bool, log: Callable[[str], None], cell_lines: bool
    ):
        from tqdm.auto import tqdm

        self.total_cells = total_cells
        self.log = log
        self.cell_lines = cell_lines and not enabled
        self.bar = tqdm(
            total=total_samples,
            unit="sample",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            desc="sweep",
        )
        self.counts = {"done": 0, "failed": 0}

    def start_cell(self, k: int, label: str) -> None:
        self.k, self.label, self.t0 = k, label, time.perf_counter()
        self.bar.set_description(f"cell {k}/{self.total_cells}")
        self.status("")

    def status(self, text: str) -> None:
        """What the cell is doing before its samples run (calibrating a target sparsity, say)."""
        extra = f" | {text}" if text else ""
        self.bar.set_postfix_str(f"{self.label}{extra} | done {self.counts['done']} failed {self.counts['failed']}")

    def samples(self, n: int) -> None:
        self.bar.update(n)

    def cell_done(self, row: dict) -> None:
        self.counts["done"] += 1
        if self.cell_lines:
            self.log(
                f"{self._cell_text()}: accuracy {_figure_text(row.get('accuracy'), '.3f')}, "
                f"sparsity {_figure_text(row.get('sparsity'), '.1%')} ({time.perf_counter() - self.t0:.1f} s)"
            )

    def cell_failed(self, error: str, name: str) -> None:
        self.counts["failed"] += 1
        self.write(f"{self._cell_text()}: failed: {error} (cells/{name}/error.json)")

    def write(self, text: str) -> None:
        """``log`` a line on its own, above the bar (tqdm clears the bar, and draws it again after)."""
        with self.bar.external_write_mode(file=sys.stderr):
            self.log(text)

    def _cell_text(self) -> str:
        return f"cell {self.k}/{self.total_cells} {self.label}"

    def close(self) -> None:
        self.bar.close()


def _expected_samples(cell: Cell) -> int:
    return cell.samples if cell.samples is not None else 1


def run_sweep(
    config: SweepConfig,
    *,
    runner_factory: Callable[[SweepConfig, ResultsStore], CellRunner],
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    cell_lines: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> SweepSummary:
    """Run every incomplete cell of ``config`` (of one shard, when given) and return the summary.
    The runner is made only when a cell needs it, so a complete sweep loads no model. Progress is a bar
    (``progress``), else one ``log`` line per finished cell (``cell_lines``); failed cells and report
    files that cannot be rebuilt are logged either way."""
    t0 = time.perf_counter()
    store = ResultsStore(config.output)
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.root / "config.yaml", yaml.safe_dump(config.raw, sort_keys=False))
    every_cell = expand_cells(config)
    store.write_manifest({c.name(config): c.hash(config) for c in every_cell})
    cells = shard_cells(every_cell, shard)
    names = {c.index: c.name(config) for c in cells}
    pending = [c for c in cells if not store.is_complete(names[c.index], c.hash(config))]
    summary = SweepSummary(total=len(cells), skipped=len(cells) - len(pending), output=str(store.root))
    shard_text = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    if shard and not cells:
        log(
            f"sweep {config.name}{shard_text}: this shard has no cells: the sweep has {len(every_cell)} cells, "
            f"so only shards 1 to {len(every_cell)} of {shard[1]} get any; nothing to run"
        )
    else:
        log(
            f"sweep {config.name}{shard_text}: {len(cells)} cells, {summary.skipped} already complete, "
            f"{len(pending)} to run -> {store.root}"
        )
    runner: CellRunner | None = None
    bar = _Progress(
        sum(_expected_samples(c) for c in pending), len(pending), progress and bool(pending), log, cell_lines
    )
    try:
        for k, cell in enumerate(pending, 1):
            name = names[cell.index]
            bar.start_cell(k, cell_label(cell, config))
            record = cell_record(cell, config, name)
            reported = 0

            def on_samples(n: int) -> None:
                nonlocal reported
                reported += n
                bar.samples(n)

            try:
                if runner is None:
                    runner = runner_factory(config, store)
                if hasattr(runner, "on_status"):
                    runner.on_status = bar.status
                result = runner.run_cell(cell, on_samples)
                record["lm_eval_command"] = result.command
                if result.calibration is not None:
                    record["calibration"] = result.calibration
                row = metrics_row(cell, config, name, result, runner.device_name)
                store.write_cell(
                    name,
                    cell=record,
                    predictions=result.predictions,
                    lm_eval_results=result.lm_eval_results,
                    metrics=row,
                )
                summary.done += 1
                bar.cell_done(row)
            except Exception as exc:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
                _release_memory()
                summary.failed += 1
                summary.failed_cells.append(name)
                store.write_failure(
                    name,
                    cell=record,
                    error={
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                bar.cell_failed(f"{type(exc).__name__}: {exc}", name)
            if reported < _expected_samples(cell):
                bar.samples(_expected_samples(cell) - reported)
            summary.report_error = _rebuild_reports(store.root, bar.write, summary.report_error)
    finally:
        bar.close()
    if not pending:
        summary.report_error = _rebuild_reports(store.root, log, "")
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def _rebuild_reports(root: Path, warn: Callable[[str], None], last_error: str) -> str:
    """Rebuild the report files of ``root``; return why that failed ("" when it worked). A failure only
    warns (once while it repeats): the cells' results are on disk already, and the sweep goes on."""
    try:
        write_reports(root)
    except Exception as exc:  # noqa: BLE001 - reports are derived from the cells; 'dash-eval report' rebuilds them
        error = f"{type(exc).__name__}: {exc}"
        if error != last_error:
            warn(f"sweep: warning: the report files could not be rebuilt ({error}); the cells' results are saved")
        return error
    return ""


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
