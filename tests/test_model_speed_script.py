"""``scripts/gpu_model_speed.py`` on the CPU (its ``--tiny --cpu`` smoke mode): every method patched into a small
random Llama, timed, its sparsity measured and written to the CSV; bad options refused before a model is built."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_model_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--cpu", *args], capture_output=True, text=True,
                          timeout=600)


def test_model_speed_smoke_writes_every_method(tmp_path):
    out = tmp_path / "speed.csv"
    proc = _run("--out", str(out), "--plain-backend", "math")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["plain", "full", "dash", "nsa", "infllmv2"]
    by = {r["method"]: r for r in rows}
    assert float(by["plain"]["prefill_x_plain"]) == 1.0 and by["plain"]["params"] == "sdpa (math), not patched"
    assert float(by["full"]["sparsity"]) == 0.0
    for method in ("dash", "nsa", "infllmv2"):  # each routed a part of the causal pairs away
        assert 0.0 < float(by[method]["sparsity"]) < 1.0, by[method]
        assert float(by[method]["prefill_ms"]) > 0 and float(by[method]["decode_ms"]) > 0
    assert "scale=" in by["dash"]["params"]  # calibrated
    assert "| dash | 96 |" in proc.stdout


def test_model_speed_refuses_bad_options():
    for args, says in ((("--methods", "full,sparse"), "--methods: unknown ['sparse']"),
                       (("--plain-backend", "fast"), "--plain-backend: 'fast'"),
                       (("--dash-sparsity", "1.5"), "--dash-sparsity must lie in (0, 1)"),
                       (("--shape", "nope"), "--shape: 'nope' is neither")):
        proc = _run(*args)
        assert proc.returncode != 0 and says in proc.stderr, (args, proc.stderr[-500:])
