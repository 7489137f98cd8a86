"""Reference NSA, training-free form (METHODS.md, "nsa"): compressed-key scores summed over the group,
overlap-weighted onto selection blocks, forced + top-k blocks, and one softmax over the selected
blocks merged with the sliding window (``g_cmp = 0``)."""

from __future__ import annotations

import torch
from dash_eval.kernels.compression import kernel_topk_attention
from dash_eval.kernels.infllmv2.naive import pooled_topk_select
from dash_eval.kernels.stats import AttentionStats


def _overlap_pool(per_block: torch.Tensor, vis: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    return (per_block * vis * overlap.to(per_block.dtype)).sum(-1)  # invisible kernels add 0


def nsa_select(qg: torch.Tensor, kc: torch.Tensor, positions: torch.Tensor, nk: int, **kw) -> torch.Tensor:
    return pooled_topk_select(qg, kc, positions, nk, _overlap_pool, False, **kw)


def nsa_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int = 64,
    kernel_size: int = 32,
    kernel_stride: int = 16,
    init_blocks: int = 1,
    local_blocks: int = 2,
    topk: int = 13,
    window: int = 512,
    score_precision: str = "float32",
    softmax_scale: float | None = None,
    return_stats: bool = False,
) -> tuple[torch.Tensor, AttentionStats | None]:
    return kernel_topk_attention(
        q, k, v, nsa_select, block_size=block_size, kernel_size=kernel_size, kernel_stride=kernel_stride,
        init_blocks=init_blocks, local_blocks=local_blocks, topk=topk, window=window,
        score_precision=score_precision, softmax_scale=softmax_scale, return_stats=return_stats,
    )
