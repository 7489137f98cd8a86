"""Plain ``lm_eval --model dash`` as a user types it, in the environment the package is installed in (CI
installs it into a fresh virtual environment): lm-eval's own RULER needle task, offline, at 1,024 tokens,
with the embedded model; sparsity in the results file and in the logged samples; errors that name the bad
model_args value."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LM_EVAL = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _embedded_model_dir() -> str:
    from dash_eval.dash_models import embedded_model_path

    return str(embedded_model_path())


def _lm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert LM_EVAL, "the lm_eval console script is not installed next to this Python"
    return subprocess.run(
        [LM_EVAL, *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env={**os.environ, **OFFLINE},
    )


def _results(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    (results_file,) = output.rglob("results_*.json")
    samples = {}
    for path in output.rglob("samples_*.jsonl"):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(results_file.read_text()), samples


def _niah_single_1(tmp_path: Path, model_args: str, *extra: str) -> tuple[dict, dict]:
    metadata = json.dumps({"tokenizer": _embedded_model_dir(), "max_seq_lengths": [1024]})
    done = _lm_eval(
        "--model", "dash", "--model_args", model_args, "--tasks", "niah_single_1", "--metadata", metadata,
        "--device", "cpu", "--output_path", str(tmp_path / "out"), "--log_samples", *extra,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return _results(tmp_path / "out")


@pytest.mark.slow
def test_full_attention_finds_the_needle_offline(tmp_path):
    results, samples = _niah_single_1(
        tmp_path, "pretrained=default,method=full", "--limit", "2", "--gen_kwargs", "max_gen_toks=10"
    )
    row = results["results"]["niah_single_1"]
    assert row["1024,none"] == 1.0
    assert row["sparsity,prefill"] == 0.0 and row["sparsity,decode"] == 0.0
    assert results["dash_attention"]["method"] == "full"
    assert results["dash_attention"]["tasks"]["niah_single_1"]["samples_measured"] == 2
    assert results["config"]["dash_attention"]["method"] == "full"
    logged = samples["niah_single_1"]
    assert len(logged) == 2
    for sample in logged:
        assert sample["dash_attention"]["prefill"]["sparsity"] == 0.0
        assert 1000 < sample["dash_attention"]["prefill"]["causal_pairs"]


@pytest.mark.slow
def test_dash_reports_measured_sparsity(tmp_path):
    results, samples = _niah_single_1(
        tmp_path,
        "pretrained=default,method=dash,alpha=1.5,block_size=64,scale=2.0",
        "--limit", "1", "--gen_kwargs", "max_gen_toks=4",
    )  # fmt: skip
    row = results["results"]["niah_single_1"]
    assert 0.0 < row["sparsity,prefill"] < 1.0
    assert 0.0 < row["sparsity,decode"] < 1.0
    assert (
        1.0 <= row["active_blocks_p10,prefill"] <= row["active_blocks_p50,prefill"] <= row["active_blocks_p90,prefill"]
    )
    assert results["dash_attention"]["params"]["scale"] == 2.0
    (sample,) = samples["niah_single_1"]
    assert sample["dash_attention"]["prefill"]["sparsity"] == pytest.approx(row["sparsity,prefill"])


def test_bad_value_is_named_on_the_command_line(tmp_path):
    done = _lm_eval(
        "--model", "dash", "--model_args", "pretrained=default,method=dash,alpha=7", "--tasks", "niah_single_1",
        "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "alpha=7 must be a number in (1, 2]" in done.stderr
