"""Every Triton kernel the benchmark launches compiles for an sm_90 GPU (CPU only: Triton's own compiler and
ptxas, no device), with the GPU's launch options, programmatic dependent launch included. The CPU
interpreter, which the other kernel tests use, accepts programs the compiler rejects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.triton_interp import triton_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not triton_available, reason="triton is not importable")
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_sm90.py")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "none failed" in out
    for kernel in ("_sparse_attn_fwd_kernel", "_combine_kernel", "_tile_union_kernel", "_topk_route_kernel",
                   "_decode_select_kernel", "_dash_route_kernel", "_dash_select_kernel", "_kernel_keys_kernel",
                   "_block_summary_kernel"):
        assert kernel in out, f"{kernel} was not compiled"
