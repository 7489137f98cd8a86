"""The sweep loop with a stand-in cell runner (no model): results directory, leaderboard columns,
resuming, shards, failed cells, interruption, reports. The real model runs in test_sweep_e2e.py."""

from __future__ import annotations

import csv
import json

import pytest
from dash_eval.evals.leaderboard import RESULT_COLUMNS, TIMING_COLUMNS
from dash_eval.evals.report import write_reports
from dash_eval.evals.sweep import CellResult, SweepSummary, run_sweep
from dash_eval.evals.sweep_cells import expand_cells
from dash_eval.evals.sweep_config import parse_config
from dash_eval.evals.sweep_store import ResultsStore


def _config(output, **extra):
    raw = {
        "name": "fake",
        "model": {"pretrained": "default"},
        "tasks": [{"task": "niah_single", "lengths": [512, 1024], "samples": 3, "seed": 0}],
        "methods": [
            {"method": "full"},
            {"method": "dash", "grid": {"scale": [0.5, 8.0]}, "init_blocks": 1, "local_blocks": 2},
            {"method": "nsa", "grid": {"topk": [2]}, "window": 64},
            {"method": "dash", "target_sparsity": 0.75},
        ],
        "output": str(output),
        **extra,
    }
    return parse_config(raw, check_model=False)


class FakeRunner:
    """Deterministic figures from the parameters: sparsity rises with scale and falls with topk."""

    device_name = "fake-device"

    def __init__(self, fail_on=None, interrupt_on=None):
        self.calls = []
        self.fail_on = fail_on
        self.interrupt_on = interrupt_on

    @staticmethod
    def sparsity(method, params, length):
        if method == "full":
            return 0.0
        if "scale" in params:
            return 1 - 1 / (1 + params["scale"]) * 512 / length
        return 1 - (params["topk"] + 3) * 64 / length

    def run_cell(self, cell, on_samples):
        self.calls.append(cell.index)
        if cell.index == self.fail_on:
            raise RuntimeError("CUDA out of memory (injected)")
        if cell.index == self.interrupt_on:
            raise KeyboardInterrupt
        params = dict(cell.params)
        calibration = None
        if cell.target_sparsity is not None:
            params["scale"] = 3.0
            calibration = {"parameter": "scale", "value": 3.0, "sparsity": 0.75, "reached": True, "time_s": 0.5}
        s = self.sparsity(cell.method, params, cell.length)
        for _ in range(cell.samples):
            on_samples(1)
        acc = round(1 - s * s, 6)
        return CellResult(
            metrics={
                "accuracy": acc,
                "accuracy_stderr": 0.01,
                "sparsity": s,
                "active_blocks_mean": 3.5,
                "active_blocks_p10": 2,
                "active_blocks_p50": 3,
                "active_blocks_p90": 5,
                "decode_sparsity": s,
                "wall_time_s": 0.1 * len(self.calls),
                "tokens_per_s": 1000.0,
                "metric": "score",
            },
            params=params,
            predictions=[{"doc_id": i, "prediction": "x", "score": acc} for i in range(cell.samples)],
            lm_eval_results={"results": {"dash_niah_single": {"score,none": acc}}},
            command="lm_eval --model dash ...",
            calibration=calibration,
        )


def _rows(path, drop_timing=True):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if drop_timing:
        for r in rows:
            for c in TIMING_COLUMNS:
                r.pop(c, None)
    return rows


def _sweep(config, runner, **kw):
    return run_sweep(config, runner_factory=lambda cfg, store: runner, progress=False, log=lambda s: None, **kw)


def test_sweep_writes_cells_leaderboard_and_reports(tmp_path):
    config = _config(tmp_path / "out")
    runner = FakeRunner()
    summary = _sweep(config, runner)
    n = len(expand_cells(config))
    assert n == 10 and summary.done == n and summary.failed == 0 and summary.exit_status == 0
    root = tmp_path / "out"
    cells = sorted((root / "cells").iterdir())
    assert len(cells) == n
    for d in cells:
        assert {p.name for p in d.iterdir()} == {
            "cell.json",
            "predictions.jsonl",
            "lm_eval_results.json",
            "metrics.json",
        }
        record = json.loads((d / "cell.json").read_text())
        assert record["cell"] == d.name and record["spec"]["model"]["pretrained"] == "default"
    with open(root / "leaderboard.csv") as f:
        header = next(csv.reader(f))
    params = [
        "alpha",
        "block_size",
        "init_blocks",
        "kernel_size",
        "kernel_stride",
        "local_blocks",
        "scale",
        "score_precision",
        "sigma",
        "topk",
        "window",
    ]
    assert header == ["model", "method", "label", *params, *RESULT_COLUMNS]
    rows = _rows(root / "leaderboard.csv")
    assert [r["method"] for r in rows[:2]] == ["full", "full"]
    assert rows[0]["sparsity"] == "0.0" and rows[0]["scale"] == "" and rows[0]["block_size"] == "64"
    targeted = [r for r in rows if r["target_sparsity"]]
    assert len(targeted) == 2 and all(r["scale"] == "3.0" and r["calibration_sparsity"] == "0.75" for r in targeted)
    assert {r["device"] for r in rows} == {"fake-device"}
    report = (root / "report.md").read_text()
    assert "## niah_single at 512 tokens (3 samples)" in report and "## Iso-sparsity accuracy" in report
    assert (root / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    iso = _rows(root / "iso_sparsity.csv")
    assert {r["method"] for r in iso} == {"full", "dash", "nsa"}


def test_resume_recomputes_nothing(tmp_path):
    config = _config(tmp_path / "out")
    _sweep(config, FakeRunner())
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "cells").rglob("metrics.json")}
    made = []
    summary = run_sweep(config, runner_factory=lambda cfg, store: made.append(1), progress=False, log=lambda s: None)
    assert made == []  # no cell to run: no runner (no model load) at all
    assert summary.skipped == summary.total == 10 and summary.done == 0
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "cells").rglob("metrics.json")}


def test_shards_merge_into_the_same_leaderboard(tmp_path):
    whole = _config(tmp_path / "whole")
    _sweep(whole, FakeRunner())
    split = _config(tmp_path / "split")
    runners = [FakeRunner(), FakeRunner()]
    for i, runner in enumerate(runners, 1):
        _sweep(split, runner, shard=(i, 2))
    assert sorted(runners[0].calls + runners[1].calls) == list(range(10))
    assert not set(runners[0].calls) & set(runners[1].calls)
    write_reports(tmp_path / "split")
    assert _rows(tmp_path / "split" / "leaderboard.csv") == _rows(tmp_path / "whole" / "leaderboard.csv")


def test_reports_leave_out_cells_of_an_earlier_config(tmp_path):
    """More samples per task make new cells; the old ones stay on disk but out of the tables, unless asked for."""
    old = _config(tmp_path / "out")
    _sweep(old, FakeRunner())
    raw = dict(old.raw, tasks=[{"task": "niah_single", "lengths": [512, 1024], "samples": 5, "seed": 0}])
    new = parse_config(raw, check_model=False)
    _sweep(new, FakeRunner())
    store = ResultsStore(tmp_path / "out")
    assert len(list((tmp_path / "out" / "cells").iterdir())) == 20
    assert {r["samples"] for r in store.rows()} == {5} and len(store.rows()) == 10
    assert len(store.rows(include_stale=True)) == 20 and len(store.stale_cells()) == 10
    assert {int(r["samples"]) for r in _rows(tmp_path / "out" / "leaderboard.csv")} == {5}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "(5 samples)" in report and "(3 samples)" not in report
    assert "10 complete cell(s) in cells/ belong to an earlier version of the config" in report
    write_reports(tmp_path / "out", include_stale=True)
    assert {int(r["samples"]) for r in _rows(tmp_path / "out" / "leaderboard.csv")} == {3, 5}


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = _config(tmp_path / "out")
    summary = _sweep(config, FakeRunner(fail_on=3))
    assert summary.failed == 1 and summary.done == 9 and summary.exit_status == 3
    store = ResultsStore(tmp_path / "out")
    [failure] = store.failures()
    assert "CUDA out of memory (injected)" in failure["error"] and "Traceback" in failure["traceback"]
    assert "## Failed cells" in (tmp_path / "out" / "report.md").read_text()
    assert len(_rows(tmp_path / "out" / "leaderboard.csv")) == 9
    # a rerun retries only the failed cell and then matches an uninterrupted sweep
    runner = FakeRunner()
    summary = _sweep(config, runner)
    assert runner.calls == [3] and summary.failed == 0 and store.failures() == []
    _sweep(_config(tmp_path / "clean"), FakeRunner())
    assert _rows(tmp_path / "out" / "leaderboard.csv") == _rows(tmp_path / "clean" / "leaderboard.csv")


def test_interrupted_sweep_resumes_to_the_same_leaderboard(tmp_path):
    config = _config(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        _sweep(config, FakeRunner(interrupt_on=5))
    assert len(ResultsStore(tmp_path / "out").rows()) == 5
    runner = FakeRunner()
    _sweep(config, runner)
    assert runner.calls == list(range(5, 10))
    _sweep(_config(tmp_path / "clean"), FakeRunner())
    assert _rows(tmp_path / "out" / "leaderboard.csv") == _rows(tmp_path / "clean" / "leaderboard.csv")


def test_exit_status_tells_failed_cells_from_rejected_configs():
    assert SweepSummary(done=3, skipped=2).exit_status == 0
    # any number of failed cells gives 3, never 2 (a rejected config or arguments) nor a signal's 128+
    assert {SweepSummary(failed=n).exit_status for n in (1, 2, 7, 130, 300)} == {3}


class PairedRunner(FakeRunner):
    """Per-prompt scores: full attention answers every prompt; dash at scale 0.5 answers prompts 0-2, at
    scale 8 only prompt 3, and the calibrated dash cell prompts 0 and 4."""

    ANSWERS = {("full", None): {0, 1, 2, 3, 4}, ("dash", 0.5): {0, 1, 2}, ("dash", 8.0): {3},
               ("dash", None): {0, 4}}

    def run_cell(self, cell, on_samples):
        result = super().run_cell(cell, on_samples)
        right = self.ANSWERS.get((cell.method, cell.params.get("scale")), set())
        result.predictions = [{"doc_id": i, "prediction": "x", "score": float(i in right)}
                              for i in range(cell.samples)]
        result.metrics["accuracy"] = len(right & set(range(cell.samples))) / cell.samples
        return result


def test_paired_report_counts_prompts_gained_and_lost(tmp_path, capsys):
    from dash_eval.evals.paired import paired_rows, sign_test_p

    from dash_eval.cli import main

    task = {"task": "niah_single", "lengths": [512], "samples": 5, "seed": 0}
    raw = dict(_config(tmp_path / "out").raw, tasks=[task],
               methods=[{"method": "full"}, {"method": "dash", "grid": {"scale": [0.5, 8.0]}},
                        {"method": "dash", "label": "calibrated", "target_sparsity": 0.75}])
    config = parse_config(raw, check_model=False)
    _sweep(config, PairedRunner())
    store = ResultsStore(tmp_path / "out")
    # against full (a single cell, so every cell pairs with it): only losses
    got = sorted((r["series"], r["accuracy"], r["gained"], r["lost"]) for r in paired_rows(store.rows(), store, "full"))
    assert got == [("calibrated", 0.4, 0, 3), ("dash", 0.2, 0, 4), ("dash", 0.6, 0, 2)], got
    # against the single calibrated cell: {3} vs {0,4} gains 3, loses 0 and 4; {0,1,2} vs {0,4} gains 1 and
    # 2, loses 4; full gains 1, 2, 3
    got = sorted((r["accuracy"], r["gained"], r["lost"]) for r in paired_rows(store.rows(), store, "calibrated"))
    assert got == [(0.2, 1, 2), (0.6, 2, 1), (1.0, 3, 0)], got
    # a baseline with several cells pairs by target sparsity
    raw["methods"] = [{"method": "dash", "label": "a", "target_sparsity": [0.5, 0.75]},
                      {"method": "dash", "label": "b", "alpha": 2.0, "target_sparsity": [0.75, 0.5]}]
    raw["output"] = str(tmp_path / "targets")
    _sweep(parse_config(raw, check_model=False), PairedRunner())
    store_t = ResultsStore(tmp_path / "targets")
    pairs = paired_rows(store_t.rows(), store_t, "a")
    assert sorted(r["target_sparsity"] for r in pairs) == [0.5, 0.75] and all(r["prompts"] == 5 for r in pairs)
    assert sign_test_p(5, 0) == pytest.approx(1 / 32) and sign_test_p(0, 0) == 1.0
    assert sign_test_p(2, 1) == pytest.approx(0.5)

    assert main(["report", str(tmp_path / "out"), "--paired", "full", "--quiet"]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Paired against full" in report and "| 0 | 4 |" in report
    # both one-sided tests: 0 gained and 4 lost against full is p better 1, p worse 1/16
    assert "| 5 | 0 | 4 | 1.000 | 0.062 |" in report, report
    from dash_eval.evals.paired import _fmt_p

    assert _fmt_p(sign_test_p(12, 0)) == "<0.001" and _fmt_p(0.0312) == "0.031"
    assert main(["report", str(tmp_path / "out"), "--paired", "nope"]) == 2
    assert "--paired 'nope': no such series" in capsys.readouterr().err
