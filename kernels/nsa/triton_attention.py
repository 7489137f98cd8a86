"""``nsa`` (training-free form) on the Triton backend: overlap-weighted kernel scores, on-chip top-k, and
one block-sparse softmax over the selected blocks merged with the sliding window."""

from __future__ import annotations

import torch
from dash_eval.kernels._triton.kernel_keys import KernelKeys
from dash_eval.kernels._triton.topk_attention import topk_attention_triton
from dash_eval.kernels._triton.topk_routing import POOL_WEIGHTED
from dash_eval.kernels.stats import AttentionStats


def nsa_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params, *, softmax_scale: float, return_stats: bool,
    kernel_keys: KernelKeys | None = None,
) -> tuple[torch.Tensor, AttentionStats | None]:
    """NSA forward (METHODS.md "nsa", ``g_cmp = 0``); unsupported inputs go to the reference.
    ``kernel_keys`` may carry a decode cache's kernel keys (``kernel_keys.update_kernel_keys``); otherwise
    they are computed from ``k``."""
    return topk_attention_triton(
        "nsa", q, k, v, params, pool=POOL_WEIGHTED, window=params.window, softmax_scale=softmax_scale,
        return_stats=return_stats, kernel_keys=kernel_keys,
    )
