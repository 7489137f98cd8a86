"""scripts/gpu_fuzz.py (the compiled kernels against the reference on random cases, on a GPU) runs here on the
Triton interpreter at small shapes: its cases pass, and a kernel that is wrong is reported as a failure."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("gpu_fuzz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_cases_pass_on_the_interpreter(fuzz, capsys):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert fuzz.main(["--device", "cpu", "--max-tokens", "96", "--cases", "3", "--seed", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln[:4] for ln in lines[1:4]] == ["ok  "] * 3, lines
    assert lines[-1].startswith("# 3 cases in") and "0 failed" in lines[-1]


def test_a_wrong_kernel_is_a_failure(fuzz, capsys, monkeypatch):
    import dash_eval.kernels as kernels

    real = kernels.sparse_attention

    def off_by_a_little(q, k, v, method, backend="auto", **kwargs):
        out, stats = real(q, k, v, method, backend=backend, **kwargs)
        return (out * 1.01 if backend == "triton" else out), stats

    monkeypatch.setattr(kernels, "sparse_attention", off_by_a_little)
    case = fuzz.draw(7, 80)
    case["dtype"] = "float32"
    ok, what = fuzz.check(case, "cpu")
    assert not ok and "rel err 1.00e-02 > 1e-04" in what, what
