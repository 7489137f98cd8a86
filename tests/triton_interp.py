"""Imports the Triton kernels on the CPU interpreter for the ``test_triton_*`` modules.

``TRITON_INTERPRET=1`` is set only while the kernel modules are imported (Triton picks the interpreter
when it decorates a kernel), then the previous value is restored, so other tests see the environment
they started with. ``triton_available`` is False where Triton cannot be imported.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

_MODULES = (
    "dash_eval.kernels._triton.selection",
    "dash_eval.kernels._triton.block_sparse",
    "dash_eval.kernels.dash.triton_routing",
    "dash_eval.kernels.dash.triton_attention",
    "dash_eval.kernels.triton_backend",
)


def _load() -> bool:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        try:
            importlib.import_module("triton")
        except ImportError:
            return False
        for name in _MODULES:
            importlib.import_module(name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    launch = importlib.import_module("dash_eval.kernels._triton.launch")
    if not launch.interpreting():
        raise RuntimeError(
            "the Triton kernels were imported before tests/triton_interp.py could select the CPU interpreter; "
            "import them only through this module in CPU tests"
        )
    return True


triton_available = _load()


def rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-12))


@pytest.fixture
def interpret_env(monkeypatch):
    """Keep ``TRITON_INTERPRET=1`` while a kernel test runs (Triton consults it lazily too)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def assert_triton_matches_reference(q, k, v, method: str, tol: float, **params) -> None:
    """The Triton backend against the reference on the same inputs: the output (dtype, no NaN, relative
    error below ``tol``) and the stats (attended and causal pairs, routing scores, active blocks, per-row counts)."""
    from dash_eval.kernels import sparse_attention

    out, stats = sparse_attention(q, k, v, method, backend="triton", return_stats=True, **params)
    ref, ref_stats = sparse_attention(q, k, v, method, backend="reference", return_stats=True, **params)
    assert out.dtype == q.dtype and not torch.isnan(out).any()
    assert rel_err(out, ref) < tol
    assert stats.attended_pairs == ref_stats.attended_pairs
    assert stats.causal_pairs == ref_stats.causal_pairs
    assert stats.routing_scores == ref_stats.routing_scores
    assert torch.equal(stats.active_blocks, ref_stats.active_blocks)
    # per batch row (lm-eval's per-request sparsity reads these)
    assert torch.equal(torch.as_tensor(stats.attended_per_row).cpu(), torch.as_tensor(ref_stats.attended_per_row).cpu())
    assert torch.equal(torch.as_tensor(stats.causal_per_row).cpu(), torch.as_tensor(ref_stats.causal_per_row).cpu())
