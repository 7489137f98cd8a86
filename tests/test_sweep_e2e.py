"""A small sibling of configs/demo.yaml end to end on the embedded model (CPU): a sweep killed after its
first cell and run again, a resumed sweep that recomputes nothing, two shards merged by ``dash-eval
report``, the leaderboard's values, the plot, and a cell checked against the hand-typed lm-eval command
recorded in its cell.json."""

from __future__ import annotations

import csv
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dash_eval.evals.leaderboard import TIMING_COLUMNS
from dash_eval.evals.sweep import run_sweep
from dash_eval.evals.sweep_cells import expand_cells
from dash_eval.evals.sweep_config import load_config

pytestmark = pytest.mark.slow

FORCED = {"block_size": 32, "init_blocks": 1, "local_blocks": 2}
CONFIG = {
    "name": "e2e",
    "model": {"pretrained": "default", "dtype": "float32", "device": "cpu"},
    "tasks": [{"task": "niah_single", "lengths": [512], "samples": 2, "seed": 0, "haystack": "noise"}],
    "methods": [
        {"method": "full"},
        {"method": "dash", "grid": {"scale": [1.0, 16.0]}, **FORCED},
        {"method": "nsa", "topk": 1, "window": 0, **FORCED},
        {"method": "infllmv2", "target_sparsity": 0.5, **FORCED},
    ],
    "calibration": {"samples": 1, "seed": 99},
}
N_CELLS = 5


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dash_eval.cli", *args]


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in TIMING_COLUMNS:
            r.pop(c)
    return rows


def _config_file(tmp: Path, output: Path) -> Path:
    path = tmp / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "output": str(output)}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run the sweep as a subprocess, SIGKILL it once its first cell is complete, run it again."""
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "whole"
    cfg = _config_file(tmp, out)
    proc = subprocess.Popen(
        _cli("sweep", str(cfg), "--no-progress", "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    try:
        while not list(out.glob("cells/*/metrics.json")):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.time() < deadline, "no cell finished in 10 minutes"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = len(list(out.glob("cells/*/metrics.json")))
    assert 1 <= done_before < N_CELLS
    result = subprocess.run(_cli("sweep", str(cfg), "--no-progress"), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "tmp": tmp,
        "out": out,
        "cfg": cfg,
        "done_before": done_before,
        "stdout": result.stdout,
        "stderr": result.stderr,
    }


def test_killed_sweep_resumes_and_completes(killed_and_resumed):
    r = killed_and_resumed
    assert f"{r['done_before']} already complete" in r["stderr"]
    assert f"{N_CELLS - r['done_before']} to run" in r["stderr"]
    assert "## niah_single at 512 tokens" in r["stdout"]  # the report is printed
    assert len(_rows(r["out"] / "leaderboard.csv")) == N_CELLS


def test_leaderboard_values(killed_and_resumed):
    with open(killed_and_resumed["out"] / "leaderboard.csv") as f:
        timed = list(csv.DictReader(f))
    assert all(float(r["wall_time_s"]) > 0 and float(r["tokens_per_s"]) > 0 for r in timed)
    rows = _rows(killed_and_resumed["out"] / "leaderboard.csv")
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
        accuracy = float(row["accuracy"])
        assert 0.0 <= accuracy <= 1.0
        assert row["task"] == "niah_single" and row["length"] == "512" and row["samples"] == "2"
        assert row["device"].startswith("cpu") and row["seed"] == "0" and row["lm_eval_version"]
        for col in ("active_blocks_mean", "active_blocks_p10", "active_blocks_p50", "active_blocks_p90"):
            assert float(row[col]) >= 1.0
    [full] = by_method["full"]
    assert float(full["sparsity"]) == 0.0 and float(full["decode_sparsity"]) == 0.0
    assert float(full["accuracy"]) == 1.0  # the embedded model finds a single needle at 512 tokens
    sparse = [row for m in ("dash", "nsa", "infllmv2") for row in by_method[m]]
    assert len(sparse) == 4
    for row in sparse:
        assert 0.0 < float(row["sparsity"]) < 1.0, row
    dash = sorted(by_method["dash"], key=lambda r: float(r["scale"]))
    assert float(dash[0]["sparsity"]) < float(dash[1]["sparsity"])  # a larger scale routes fewer blocks
    [calibrated] = by_method["infllmv2"]
    assert calibrated["target_sparsity"] == "0.5" and calibrated["topk"] != ""
    assert calibrated["calibration_sparsity"] != "" and calibrated["calibration_reached"] in ("true", "false")
    for name in ("leaderboard.csv", "report.md", "iso_sparsity.csv", "accuracy_vs_sparsity.png"):
        assert (killed_and_resumed["out"] / name).is_file()


def test_plot_is_a_valid_png(killed_and_resumed):
    import matplotlib.image

    path = killed_and_resumed["out"] / "accuracy_vs_sparsity.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_resumed_sweep_recomputes_nothing(killed_and_resumed):
    config = load_config(killed_and_resumed["cfg"])
    before = {p: p.stat().st_mtime_ns for p in killed_and_resumed["out"].rglob("cells/*/*")}

    def no_model(*_):
        raise AssertionError("a complete sweep must not load the model")

    summary = run_sweep(config, runner_factory=no_model, progress=False, log=lambda s: None)
    assert summary.skipped == N_CELLS and summary.done == 0 and summary.failed == 0
    assert before == {p: p.stat().st_mtime_ns for p in killed_and_resumed["out"].rglob("cells/*/*")}


def test_shards_merge_into_the_same_leaderboard(killed_and_resumed):
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner

    from dash_eval.cli import main

    tmp = killed_and_resumed["tmp"]
    out = tmp / "sharded"
    config = load_config(_config_file(tmp, out))
    ran = []
    for shard in ((1, 2), (2, 2)):
        summary = run_sweep(config, runner_factory=LmEvalRunner, shard=shard, progress=False, log=lambda s: None)
        assert summary.failed == 0
        ran.append(summary.done)
    assert sorted(ran) == [N_CELLS // 2, N_CELLS - N_CELLS // 2]
    (out / "leaderboard.csv").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    assert _rows(out / "leaderboard.csv") == _rows(killed_and_resumed["out"] / "leaderboard.csv")


def test_cell_matches_the_hand_typed_lm_eval_command(killed_and_resumed):
    """The command in cell.json, run the way lm-eval's CLI runs it, gives the leaderboard's numbers."""
    from lm_eval import simple_evaluate

    config = load_config(killed_and_resumed["cfg"])
    cell = next(c for c in expand_cells(config) if c.method == "dash" and c.params["scale"] == 16.0)
    cell_dir = killed_and_resumed["out"] / "cells" / cell.name(config)
    record = json.loads((cell_dir / "cell.json").read_text())
    row = json.loads((cell_dir / "metrics.json").read_text())
    argv = shlex.split(record["lm_eval_command"])
    arg = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert argv[:3] == ["lm_eval", "--model", "dash"]
    model_args = arg["--model_args"]
    metadata = json.loads(arg["--metadata"])
    # lm_eval's CLI: the model is built from the model_args string, which also joins the task metadata
    from lm_eval.utils import simple_parse_args_string

    results = simple_evaluate(
        model="dash",
        model_args=model_args,
        tasks=[arg["--tasks"]],
        batch_size=int(arg["--batch_size"]),
        device=arg["--device"],
        metadata={**simple_parse_args_string(model_args), **metadata},
    )
    task = results["results"][arg["--tasks"]]
    assert task[row["metric"]] == pytest.approx(row["accuracy"], abs=0)
    assert task["sparsity,prefill"] == pytest.approx(row["sparsity"], rel=1e-9)
    assert task["active_blocks_mean,prefill"] == pytest.approx(row["active_blocks_mean"], rel=1e-9)
