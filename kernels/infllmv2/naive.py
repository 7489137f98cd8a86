"""Reference InfLLM-V2 (METHODS.md, "infllmv2"): mean-pooled kernel keys, group-summed kernel
softmax, max-pooled onto blocks, forced + top-k block selection, then plain sparse softmax."""

from __future__ import annotations

import torch
from dash_eval.kernels.common import forced_blocks, num_blocks, topk_recent
from dash_eval.kernels.compression import gather_block_kernels, kernel_probs, kernel_topk_attention, pooled_kernels
from dash_eval.kernels.stats import AttentionStats


def topk_block_select(
    block_scores: torch.Tensor, positions: torch.Tensor, nblocks: int, *, block_size: int, init_blocks: int,
    local_blocks: int, topk: int,
) -> torch.Tensor:
    """Forced blocks plus the ``topk`` best other past blocks: ``[B, Hkv, L, nblocks]`` bool."""
    qblock = positions // block_size
    forced = forced_blocks(qblock, nblocks, init_blocks, local_blocks)
    past = torch.arange(nblocks, device=positions.device)[None, :] < qblock[:, None]
    eligible = (past & ~forced).expand_as(block_scores)
    return forced | topk_recent(block_scores, eligible, topk)


def pooled_topk_select(
    qg: torch.Tensor, kc: torch.Tensor, positions: torch.Tensor, nk: int, pool, max_pool: bool, *, block_size: int,
    kernel_size: int, kernel_stride: int, init_blocks: int, local_blocks: int, topk: int, softmax_scale: float,
) -> torch.Tensor:
    """The selection shared by InfLLM-V2 and NSA: kernel probabilities summed over the group's query heads,
    pooled onto blocks by ``pool(per_block, visible, overlap) -> [B, Hkv, L, nblocks]`` over the kernels
    ``compression.pooled_kernels(max_pool, ...)`` gives, then forced blocks plus the top-k others."""
    probs, visible = kernel_probs(qg, kc, positions, kernel_size, kernel_stride, softmax_scale)
    scores = probs.sum(2)  # summed over the group's query heads: [B, Hkv, L, M]
    lead = pooled_kernels(max_pool, kernel_size, kernel_stride)
    per_block, vis, overlap = gather_block_kernels(scores, visible, nk, block_size, kernel_size, kernel_stride, lead)
    return topk_block_select(
        pool(per_block, vis, overlap), positions, num_blocks(nk, block_size), block_size=block_size,
        init_blocks=init_blocks, local_blocks=local_blocks, topk=topk,
    )


def _max_pool(per_block: torch.Tensor, vis: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    neg = torch.full((), float("-inf"), device=per_block.device)
    return torch.where(vis, per_block, neg).amax(-1)  # max-pool; -inf where no kernel is visible


def infllmv2_select(qg: torch.Tensor, kc: torch.Tensor, positions: torch.Tensor, nk: int, **kw) -> torch.Tensor:
    return pooled_topk_select(qg, kc, positions, nk, _max_pool, True, **kw)


def infllmv2_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int = 64,
    kernel_size: int = 32,
    kernel_stride: int = 16,
    init_blocks: int = 1,
    local_blocks: int = 32,
    topk: int = 63,
    score_precision: str = "float32",
    softmax_scale: float | None = None,
    return_stats: bool = False,
) -> tuple[torch.Tensor, AttentionStats | None]:
    return kernel_topk_attention(
        q, k, v, infllmv2_select, block_size=block_size, kernel_size=kernel_size, kernel_stride=kernel_stride,
        init_blocks=init_blocks, local_blocks=local_blocks, topk=topk, score_precision=score_precision,
        softmax_scale=softmax_scale, return_stats=return_stats,
    )
