"""``infllmv2`` on the Triton backend: max-pooled kernel scores, on-chip top-k, block-sparse fine stage."""

from __future__ import annotations

import torch
from dash_eval.kernels._triton.kernel_keys import KernelKeys
from dash_eval.kernels._triton.topk_attention import topk_attention_triton
from dash_eval.kernels._triton.topk_routing import POOL_MAX
from dash_eval.kernels.stats import AttentionStats


def infllmv2_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, *, softmax_scale: float, return_stats: bool,
    kernel_keys: KernelKeys | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """InfLLM-V2 forward (METHODS.md "infllmv2"); unsupported inputs go to the reference.
    ``kernel_keys`` may carry a decode cache's kernel keys (``kernel_keys.update_kernel_keys``); otherwise
    they are computed from ``k``."""
    return topk_attention_triton(
        "infllmv2", q, k, v, params, pool=POOL_MAX, window=0, softmax_scale=softmax_scale, return_stats=return_stats,
        kernel_keys=kernel_keys,
    )
