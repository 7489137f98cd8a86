"""The GPU developer scripts (scripts/gpu_*.py that parse their arguments by hand): ``--help`` prints what the script
does, and on a machine without CUDA they stop with one line and exit status 2, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HAND_PARSED = ["gpu_host_profile", "gpu_fine_bandwidth", "gpu_variants", "gpu_decode_profile", "gpu_route_phases"]


def _run(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", HAND_PARSED)
def test_help_prints_the_docstring(name):
    done = _run(name, "--help")
    assert done.returncode == 0, done.stderr
    first = (SCRIPTS / f"{name}.py").read_text().split('"""')[1].strip().splitlines()[0]
    assert done.stdout.startswith(first) and "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message needs a machine without CUDA")
@pytest.mark.parametrize("name", HAND_PARSED)
def test_without_a_gpu_one_line_and_status_2(name):
    done = _run(name, "nsa-decode-128k-kv2")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0] and "needs a CUDA GPU" in done.stderr
