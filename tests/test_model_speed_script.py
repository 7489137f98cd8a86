"""``scripts/gpu_model_speed.py`` on the CPU (its ``--tiny --cpu`` smoke mode): every method patched into a small
random Llama, timed, its sparsity measured and written to the CSV, ``dash`` calibrated to the target (or flagged
where it cannot reach it); bad options refused before a model is built."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_model_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--cpu", *args], capture_output=True, text=True,
                          timeout=600)


def test_model_speed_smoke_writes_every_method(tmp_path):
    out = tmp_path / "speed.csv"
    # plain listed last: it is still measured first, since the other rows' ratios need it
    proc = _run("--out", str(out), "--plain-backend", "math", "--dash-sparsity", "0.3",
                "--methods", "full,dash,nsa,infllmv2,plain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["plain", "full", "dash", "nsa", "infllmv2"]
    by = {r["method"]: r for r in rows}
    assert float(by["plain"]["prefill_x_plain"]) == 1.0 and by["plain"]["params"] == "sdpa (math), not patched"
    assert float(by["full"]["sparsity"]) == 0.0
    for method in ("dash", "nsa", "infllmv2"):  # each routed a part of the causal pairs away
        assert 0.0 < float(by[method]["sparsity"]) < 1.0, by[method]
        assert float(by[method]["prefill_ms"]) > 0 and float(by[method]["decode_ms"]) > 0
        assert float(by[method]["prefill_x_plain"]) > 0
    assert abs(float(by["dash"]["sparsity"]) - 0.3) <= 0.02 and by["dash"]["note"] == "", by["dash"]  # calibrated
    assert "| dash | 96 |" in proc.stdout


def test_model_speed_flags_a_target_it_cannot_reach(tmp_path):
    """96 tokens in blocks of 16: the early queries have too few blocks for 90% over all queries."""
    out = tmp_path / "speed.csv"
    proc = _run("--out", str(out), "--dash-sparsity", "0.9", "--methods", "dash")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = csv.DictReader(out.open())
    assert float(row["sparsity"]) < 0.88 and row["note"].startswith("calibration missed"), row
    assert "calibration missed" in proc.stdout


def test_model_speed_refuses_bad_options(tmp_path):
    bad_config = tmp_path / "glm.json"
    bad_config.write_text(json.dumps({"hidden_size": 4096, "num_attention_heads": 32, "multi_query_group_num": 2}))
    for args, says in ((("--methods", "full,sparse"), "unknown ['sparse']"),
                       (("--plain-backend", "fast"), "invalid choice: 'fast'"),
                       (("--dash-sparsity", "1.5"), "must lie in (0, 1)"),
                       (("--tokens", "8k"), "expected comma-separated integers"),
                       (("--layers", "0"), "expected positive integers"),
                       (("--tokenz", "5"), "unrecognized arguments: --tokenz"),
                       (("--token", "5"), "unrecognized arguments: --token"),
                       (("--shape", "nope"), "--shape: 'nope' is neither"),
                       (("--shape", str(bad_config)), "has no intermediate_size, num_key_value_heads, vocab_size"),
                       (("--out", str(tmp_path / "no" / "x.csv")), "--out: the folder")):
        proc = _run(*args)
        assert proc.returncode != 0 and says in proc.stderr, (args, proc.stderr[-500:])
        assert "random Llama" not in proc.stdout  # refused before a model was built
