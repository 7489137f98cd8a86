"""The ``triton`` backend: importing this module registers the Triton kernels of ``dash``, ``nsa`` and
``infllmv2`` with ``register_backend`` (``sparse_attention`` imports it lazily for ``backend="triton"``
and for ``"auto"`` on CUDA tensors). ``full`` stays on PyTorch's SDPA, which is already a fused kernel: its
``triton`` backend is its reference.

Forward only. Inputs the kernels do not take (float64, block sizes other than 16/32/64/128, head dims
above 256) are computed by each method's reference implementation instead.
"""

from __future__ import annotations

import torch
import triton  # noqa: F401  (fail the import, and so the backend, where Triton is missing)
from dash_eval.kernels._triton.launch import kernel_supports
from dash_eval.kernels._triton.topk_attention import topk_unsupported
from dash_eval.kernels.dash.triton_attention import dash_attention_triton
from dash_eval.kernels.infllmv2.triton_attention import infllmv2_attention_triton
from dash_eval.kernels.nsa.triton_attention import nsa_attention_triton
from dash_eval.kernels.registry import get_backend, get_method, register_backend

_KERNELS = {
    "dash": dash_attention_triton,
    "nsa": nsa_attention_triton,
    "infllmv2": infllmv2_attention_triton,
}

# Why a method's kernels would hand these inputs to the reference (None: the kernels run them).
_UNSUPPORTED = {
    "dash": lambda q, params: kernel_supports(q, params.block_size),
    "nsa": topk_unsupported,
    "infllmv2": topk_unsupported,
}


def triton_unsupported(method: str, q: torch.Tensor, params) -> str | None:
    """Why ``backend="triton"`` would compute ``method`` on queries like ``q`` (any device, ``meta`` included) with
    ``params`` by its reference instead of a kernel; None when a kernel runs them."""
    if method not in _UNSUPPORTED:
        return f"method {method!r} (kernels: {', '.join(_UNSUPPORTED)})"
    return _UNSUPPORTED[method](q, params)


for _name, _fn in _KERNELS.items():
    if get_backend(_name, "triton") is None:
        register_backend(_name, "triton")(_fn)
# full's fused kernel is PyTorch's SDPA: backend="triton" runs it as "reference" does, so that a model patched with
# backend="triton" also runs its dense baseline's decode steps and padded batches (which reach sparse_attention).
if get_backend("full", "triton") is None:
    register_backend("full", "triton")(get_method("full").reference)
