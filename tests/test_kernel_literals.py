"""Float literals in Triton kernels stay inside float32's normal range: Triton types a literal outside it
(1e-38, say) as float64, which silently promotes everything computed from it (on the GPU, float64 math; in
the CPU interpreter, a float64 -> bfloat16 cast that returns zeros)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _jit_functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr == "jit":
                    yield node


def test_kernel_float_literals_are_float32_normals():
    tiny, big = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
    files = sorted((ROOT / "kernels").rglob("*.py"))
    kernels, bad = 0, []
    for path in files:
        for fn in _jit_functions(ast.parse(path.read_text())):
            kernels += 1
            for node in ast.walk(fn):
                if isinstance(node, ast.Constant) and isinstance(node.value, float):
                    x = abs(node.value)
                    if x != 0.0 and x != float("inf") and not tiny <= x <= big:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {fn.name}: {node.value!r}")
    assert kernels > 20  # the scan found the kernels
    assert not bad, "float literals Triton would type as float64:\n" + "\n".join(bad)
