"""Imports the Triton kernels on the CPU interpreter for the ``test_triton_*`` modules.

``TRITON_INTERPRET=1`` is set only while the kernel modules are imported (Triton picks the interpreter
when it decorates a kernel), then the previous value is restored, so other tests see the environment
they started with. ``triton_available`` is False where Triton cannot be imported.
"""

from __future__ import annotations

import importlib
import os

import pytest

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
