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
from typing import Any, Protocol

import yaml
from dash_eval.evals.report import write_reports
from dash_eval.evals.sweep_cells import Cell, expand_cells, shard_cells
from dash_eval.evals.sweep_config import SweepConfig
from dash_eval.evals.sweep_store import ResultsStore, atomic_write_text

# Exit statuses of ``dash-eval sweep`` (docs/sweeps.md, "Exit status").
EXIT_OK = 0  # every cell to run is complete
EXIT_USAGE = 2  # the config or the arguments were rejected; no cell ran
EXIT_CELLS_FAILED = 3  # the sweep ran to its end but some cells failed; a rerun retries them
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C: 128 + SIGINT); finished cells are kept and a rerun resumes


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

    @property
    def exit_status(self) -> int:
        return EXIT_CELLS_FAILED if self.failed else EXIT_OK

    def text(self) -> str:
        lines = [
            f"sweep: {self.total} cells: {self.done} done, {self.skipped} skipped (already complete), "
            f"{self.failed} failed, in {self.wall_time_s:.1f} s; results in {self.output}"
        ]
        lines += [f"  failed: {name}" for name in self.failed_cells]
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
        row["calibration_sparsity"] = result.calibration.get("sparsity")
        row["calibration_reached"] = result.calibration.get("reached")
        row["calibration_time_s"] = result.calibration.get("time_s")
    return row


class _Progress:
    """One bar over the samples of the cells still to run (so its rate and time left cover the whole
    sweep), labelled with the cell counts."""

    def __init__(self, total_samples: int, total_cells: int, enabled: bool):
        from tqdm.auto import tqdm

        self.total_cells = total_cells
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
        self.label = label
        self.bar.set_description(f"cell {k}/{self.total_cells}")
        self.status("")

    def status(self, text: str) -> None:
        """What the cell is doing before its samples run (calibrating a target sparsity, say)."""
        extra = f" | {text}" if text else ""
        self.bar.set_postfix_str(f"{self.label}{extra} | done {self.counts['done']} failed {self.counts['failed']}")

    def samples(self, n: int) -> None:
        self.bar.update(n)

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
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> SweepSummary:
    """Run every incomplete cell of ``config`` (of one shard, when given) and return the summary.
    The runner is made only when a cell needs it, so a complete sweep loads no model."""
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
    log(
        f"sweep {config.name}{shard_text}: {len(cells)} cells, {summary.skipped} already complete, "
        f"{len(pending)} to run -> {store.root}"
    )
    runner: CellRunner | None = None
    bar = _Progress(sum(_expected_samples(c) for c in pending), len(pending), progress and bool(pending))
    try:
        for k, cell in enumerate(pending, 1):
            name = names[cell.index]
            bar.start_cell(k, f"{cell.series} {cell.task}@{cell.length}")
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
                bar.counts["done"] += 1
            except Exception as exc:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
                _release_memory()
                summary.failed += 1
                summary.failed_cells.append(name)
                bar.counts["failed"] += 1
                store.write_failure(
                    name,
                    cell=record,
                    error={
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                log(f"cell {name} failed: {type(exc).__name__}: {exc}")
            if reported < _expected_samples(cell):
                bar.samples(_expected_samples(cell) - reported)
            write_reports(store.root)
    finally:
        bar.close()
    if not pending:
        write_reports(store.root)
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
